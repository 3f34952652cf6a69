//! Building the proxy's state from a config, at start-up and at each reload. A reload makes a
//! new [`ProxyState`] that shares everything that outlives a config (clients, cancel keys,
//! statistics, the statement cache, the console's switches) and keeps the pools whose
//! settings did not change; clients that log in from then on get it.

use std::collections::HashMap;
use std::sync::Arc;

use super::{CancelRegistry, ProxyState, ShutdownBell, StatementCache, User};
use crate::auth::Secret;
use crate::config::Config;
use crate::pool::Registry;

impl ProxyState {
    /// Derives user secrets and builds the pools. Call inside a tokio runtime.
    pub fn new(config: Config) -> Arc<ProxyState> {
        let events = Arc::new(crate::admin::events::Events::default());
        crate::shard::recovery::spawn(&config, events.two_phase_recovered.clone());
        let queries = crate::admin::queries::QueryStats::new(config.proxy.query_stats_size);
        let controls =
            crate::admin::control::Controls::new(config.databases.iter().map(|d| d.name.as_str()));
        let shared = Shared {
            cancels: Arc::new(CancelRegistry::default()),
            statements: Arc::new(StatementCache::default()),
            hibernating: Default::default(),
            clients: Default::default(),
            consoles: Default::default(),
            events,
            queries: Arc::new(queries),
            slow: Default::default(),
            shutdown: Arc::new(ShutdownBell::default()),
            controls: Arc::new(controls),
        };
        let registry = Registry::build(&config);
        let state = Arc::new(assemble(config, registry, shared, &HashMap::new(), 0));
        state.controls.publish(&state);
        state
    }

    /// The state for a reloaded `config`: shares what outlives a config with `self`, keeps
    /// the pools whose settings stayed. (A database added by the reload cannot be paused by
    /// name, and its two-phase commit recovery starts with the next restart.)
    pub fn reloaded(&self, config: Config) -> Arc<ProxyState> {
        let shared = Shared {
            cancels: self.cancels.clone(),
            statements: self.statements.clone(),
            hibernating: self.hibernating.clone(),
            clients: self.clients.clone(),
            consoles: self.consoles.clone(),
            events: self.events.clone(),
            queries: self.queries.clone(),
            slow: self.slow.clone(),
            shutdown: self.shutdown.clone(),
            controls: self.controls.clone(),
        };
        let registry = Registry::rebuild(&config, Some(&self.registry));
        let generation = self.controls.generation() + 1;
        Arc::new(assemble(config, registry, shared, &self.stats, generation))
    }
}

/// What a reloaded state shares with the one before.
struct Shared {
    cancels: Arc<CancelRegistry>,
    statements: Arc<StatementCache>,
    hibernating: Arc<std::sync::atomic::AtomicUsize>,
    clients: Arc<std::sync::atomic::AtomicUsize>,
    consoles: Arc<std::sync::atomic::AtomicUsize>,
    events: Arc<crate::admin::events::Events>,
    queries: Arc<crate::admin::queries::QueryStats>,
    slow: Arc<crate::admin::slow::SlowLog>,
    shutdown: Arc<ShutdownBell>,
    controls: Arc<crate::admin::control::Controls>,
}

fn assemble(
    config: Config,
    registry: Registry,
    shared: Shared,
    old_stats: &HashMap<String, Arc<crate::admin::stats::DbStats>>,
    generation: u64,
) -> ProxyState {
    let users = (config.users.iter())
        .map(|u| {
            let secret = Secret::parse(&u.name, &u.password);
            let scram = secret.scram_verifier();
            let user = User {
                config: u.clone(),
                secret,
                scram,
            };
            (u.name.clone(), user)
        })
        .collect();
    let shard_maps = (config.databases.iter())
        .filter_map(|d| {
            crate::shard::route::ShardMap::new(d).map(|m| (d.name.clone(), Arc::new(m)))
        })
        .collect();
    let names = (config.users.iter().map(|u| u.name.as_str()))
        .chain(config.databases.iter().map(|d| d.name.as_str()))
        .map(Arc::from)
        .collect();
    let admin = &config.proxy.admin_password.0;
    let admin_scram = (!admin.is_empty())
        .then(|| Secret::parse(&config.proxy.admin_user, admin).scram_verifier())
        .flatten();
    let stats = (config.databases.iter())
        .map(|d| {
            (
                d.name.clone(),
                old_stats.get(&d.name).cloned().unwrap_or_default(),
            )
        })
        .collect();
    let Shared {
        cancels,
        statements,
        hibernating,
        clients,
        consoles,
        events,
        queries,
        slow,
        shutdown,
        controls,
    } = shared;
    ProxyState {
        generation,
        controls,
        stats,
        admin_scram,
        names,
        shard_maps,
        fan_out_plans: crate::sql::FanOutCache::default(),
        analysis: crate::sql::AnalysisCache::new(
            config.routing.analysis_cache_size,
            config.routing.write_functions.clone(),
        ),
        config,
        users,
        registry,
        cancels,
        statements,
        hibernating,
        clients,
        consoles,
        events,
        queries,
        slow,
        shutdown,
    }
}
