//! The `shardgate` binary: parses flags, sets up tracing, loads the config and calls the library.
#![warn(clippy::too_many_lines)]

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

use shardgate::config::Config;

#[derive(Parser)]
#[command(name = "shardgate", version, about = "SQL-aware PostgreSQL proxy")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (for `run`, `check` and `shard locate`).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate a config file and print each problem with its key path.
    Check,
    /// Start a throw-away local Postgres and the proxy in front of it.
    #[cfg(feature = "demo")]
    Demo {
        /// Proxy listen address (with --lb: HAProxy's).
        #[arg(long, default_value = "127.0.0.1:6432")]
        listen: String,
        /// Two instances behind HAProxy (TCP, health checks on /readyz), and a Prometheus
        /// scraping both when /usr/bin/prometheus is installed.
        #[arg(long)]
        lb: bool,
    },
    /// Shard map tools for DBAs: locate, plan (no database access), verify, rebalance.
    Shard {
        #[command(subcommand)]
        command: ShardCommand,
    },
}

#[derive(Subcommand)]
enum ShardCommand {
    /// Print the shard (and its servers) that owns a key of a table; needs --config.
    Locate {
        /// Logical database (default: the first one in the config).
        #[arg(long)]
        database: Option<String>,
        /// Table name.
        #[arg(long)]
        table: String,
        /// The key, as in SQL: 42, alice, a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11.
        #[arg(allow_hyphen_values = true)]
        key: String,
    },
    /// Print the share of the keyspace that moves between two shard maps.
    Plan {
        /// The config in force now.
        #[arg(long)]
        from: PathBuf,
        /// The config to move to.
        #[arg(long)]
        to: PathBuf,
        /// Logical database (default: the first one in the --from config).
        #[arg(long)]
        database: Option<String>,
    },
    /// Count rows sitting on a shard that does not own their key (exit 1 if any); needs
    /// --config.
    Verify {
        /// Logical database (default: the first one in the config).
        #[arg(long)]
        database: Option<String>,
    },
    /// Move the rows whose owner changed from the --from map to the --to map, in batches,
    /// each committed on both shards with two-phase commit.
    Rebalance {
        /// The config the rows follow now.
        #[arg(long)]
        from: PathBuf,
        /// The config to move to (its shards must already have the tables).
        #[arg(long)]
        to: PathBuf,
        /// Logical database (default: the first one in the --to config).
        #[arg(long)]
        database: Option<String>,
        /// Rows per batch.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
}

fn load(path: Option<PathBuf>) -> Result<Config, String> {
    let path = path.ok_or("--config FILE is required")?;
    load_file(&path)
}

fn load_file(path: &std::path::Path) -> Result<Config, String> {
    Config::load(path).map_err(|e| e.lines(path).join("\n"))
}

fn shard(config: Option<PathBuf>, command: ShardCommand) -> Result<(), String> {
    use shardgate::shard::tools;
    let report = match command {
        ShardCommand::Locate {
            database,
            table,
            key,
        } => {
            let config = load(config)?;
            tools::locate(&config, database.as_deref(), &table, &key)
                .map_err(|e| e.to_string())?
                .to_string()
        }
        ShardCommand::Plan { from, to, database } => {
            let (old, new) = (load_file(&from)?, load_file(&to)?);
            tools::plan(&old, &new, database.as_deref())
                .map_err(|e| e.to_string())?
                .to_string()
        }
        ShardCommand::Verify { database } => {
            let config = load(config)?;
            let rt = runtime(1).map_err(|e| e.to_string())?;
            let v = rt
                .block_on(shardgate::shard::maintenance::verify(
                    &config,
                    database.as_deref(),
                ))
                .map_err(|e| e.to_string())?;
            print!("{v}");
            if v.misplaced() > 0 {
                return Err(format!("{} rows sit on the wrong shard", v.misplaced()));
            }
            return Ok(());
        }
        ShardCommand::Rebalance {
            from,
            to,
            database,
            batch,
        } => {
            let (old, new) = (load_file(&from)?, load_file(&to)?);
            let rt = runtime(1).map_err(|e| e.to_string())?;
            rt.block_on(shardgate::shard::maintenance::rebalance(
                &old,
                &new,
                database.as_deref(),
                batch,
            ))
            .map_err(|e| e.to_string())?
            .to_string()
        }
    };
    print!("{report}");
    Ok(())
}

/// `workers = 1` runs everything on one thread with tokio's current-thread scheduler (no
/// work-stealing or cross-thread wakeups: the least CPU per transaction); otherwise a
/// multi-threaded runtime with that many workers (0 = one per core).
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if workers > 1 {
        b.worker_threads(workers);
    }
    b.enable_all().build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The log format is the config's (its errors are reported below, by the command).
    let format = cli
        .config
        .as_deref()
        .and_then(|p| Config::load(p).ok())
        .map(|c| c.proxy.log_format)
        .unwrap_or_default();
    shardgate::logging::init(format, std::io::stderr);
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Check => load(cli.config).map(|c| {
            println!(
                "config OK: {} user(s), {} database(s)",
                c.users.len(),
                c.databases.len()
            )
        }),
        Command::Run => load(cli.config.clone()).and_then(|config| {
            let rt = runtime(config.proxy.workers).map_err(|e| e.to_string())?;
            rt.block_on(async {
                let listener = shardgate::server::bind(&config.proxy.listen, config.proxy.reuse_port)
                    .await
                    .map_err(|e| format!("cannot listen on {}: {e}", config.proxy.listen))?;
                tracing::info!(listen = %config.proxy.listen, mode = ?config.proxy.pool_mode, "shardgate started");
                let state = shardgate::state::ProxyState::new(config);
                // SIGHUP and the console's RELOAD read it again.
                if let Some(path) = cli.config.clone() {
                    state.controls.set_source(path);
                }
                shardgate::server::run(listener, state, shardgate::server::shutdown_signal()).await;
                Ok(())
            })
        }),
        Command::Shard { command } => shard(cli.config, command),
        #[cfg(feature = "demo")]
        Command::Demo { listen, lb } => runtime(0)
            .map_err(|e| e.to_string())
            .and_then(|rt| {
                rt.block_on(shardgate::demo::run(shardgate::demo::DemoOptions { listen, lb }))
                    .map_err(|e| e.to_string())
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
