//! The admin console: the virtual database `shardgate` (and `pgbouncer`, for existing tools)
//! answers PgBouncer's SHOW commands with PgBouncer's column names, order and types, plus
//! Shardgate's own (`SHOW SHARDS`). The commands are parsed here ([`parse`]), answered as
//! [`Table`]s ([`show`]), and the session that speaks the simple query protocol to the
//! console's client lives in `session::console`.

pub mod control;
pub mod dashboard;
pub mod events;
pub mod queries;
pub mod show;
pub mod slow;
pub mod stats;
pub mod table;

pub use table::{Column, Table};

/// The names clients may connect to for the console.
pub const CONSOLE_DATABASES: [&str; 2] = ["shardgate", "pgbouncer"];

/// What a SHOW command shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    Pools,
    Databases,
    Users,
    Lists,
    Config,
    Version,
    Shards,
    Help,
    Stats,
    StatsTotals,
    StatsAverages,
    Clients,
    Servers,
    Prepared,
    Queries,
    SlowQueries,
}

/// SHOW commands that exist and what they show, or why they are not answered yet.
const SHOWS: &[(&str, Option<Show>)] = &[
    ("POOLS", Some(Show::Pools)),
    ("DATABASES", Some(Show::Databases)),
    ("USERS", Some(Show::Users)),
    ("LISTS", Some(Show::Lists)),
    ("CONFIG", Some(Show::Config)),
    ("VERSION", Some(Show::Version)),
    ("SHARDS", Some(Show::Shards)),
    ("HELP", Some(Show::Help)),
    ("STATS", Some(Show::Stats)),
    ("STATS_TOTALS", Some(Show::StatsTotals)),
    ("STATS_AVERAGES", Some(Show::StatsAverages)),
    ("SERVERS", Some(Show::Servers)),
    ("CLIENTS", Some(Show::Clients)),
    ("QUERIES", Some(Show::Queries)),
    ("PREPARED", Some(Show::Prepared)),
    ("TRANSACTIONS", None),
    ("SLOW_QUERIES", Some(Show::SlowQueries)),
];

/// Commands that act on the proxy (they arrive with live changes).
const ACTIONS: &[&str] = &[
    "RELOAD",
    "PAUSE",
    "RESUME",
    "SUSPEND",
    "KILL",
    "KILL_CLIENT",
    "SHUTDOWN",
    "RECONNECT",
    "ENABLE",
    "DISABLE",
    "WAIT_CLOSE",
    "BAN",
    "UNBAN",
    "SET",
];

/// One statement of a console query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// An empty statement.
    Empty,
    /// A SHOW the console answers.
    Show(Show),
    /// A SHOW command that exists but is not answered yet (its name).
    NotYet(&'static str),
    /// A command that acts: its name and its argument (a database, client or server).
    Act(&'static str, Option<String>),
    /// Not a console command (the text).
    Unknown(String),
}

/// The statements of console query `sql` (separated by `;`), case-insensitive, as PgBouncer
/// reads them: a command word and its arguments.
pub fn parse(sql: &str) -> Vec<Command> {
    let mut out: Vec<Command> = sql.split(';').map(parse_one).collect();
    // `SHOW POOLS;` is one statement, not one and an empty one.
    if out.len() > 1 && out.last() == Some(&Command::Empty) {
        out.pop();
    }
    out
}

fn parse_one(statement: &str) -> Command {
    let mut words = statement.split_whitespace();
    let Some(first) = words.next() else {
        return Command::Empty;
    };
    let first = first.to_ascii_uppercase();
    if first == "SHOW" {
        let what = words.next().map(str::to_ascii_uppercase);
        return match (what, words.next()) {
            (Some(w), None) => match SHOWS.iter().find(|(n, _)| *n == w) {
                Some((_, Some(s))) => Command::Show(*s),
                Some((n, None)) => Command::NotYet(n),
                None => Command::Unknown(statement.trim().to_string()),
            },
            _ => Command::Unknown(statement.trim().to_string()),
        };
    }
    if first == "SET" {
        let rest = statement.trim_start()[3..].trim();
        return Command::Act("SET", Some(rest.to_string()));
    }
    let arg = words.next().map(str::to_string);
    match ACTIONS.iter().find(|a| **a == first) {
        Some(a) if words.next().is_none() => Command::Act(a, arg),
        _ => Command::Unknown(statement.trim().to_string()),
    }
}

/// The console's commands, for the error of an unknown one.
pub fn valid_commands() -> String {
    let shows = SHOWS
        .iter()
        .map(|(n, _)| format!("SHOW {n}"))
        .collect::<Vec<_>>();
    format!("{}, {}", shows.join(", "), ACTIONS.join(", "))
}

/// The lines of `SHOW HELP` (sent as notices, as PgBouncer does).
pub fn help_lines() -> Vec<String> {
    let mut lines = vec!["Console usage".to_string()];
    lines.extend(SHOWS.iter().map(|(n, s)| {
        let note = if s.is_none() { " (not yet)" } else { "" };
        format!("\tSHOW {n}{note}")
    }));
    lines.extend(ACTIONS.iter().map(|a| format!("\t{a}")));
    lines
}

#[cfg(test)]
mod tests;
