//! Proxy-wide shared state: configuration, users with their derived secrets, pools, and the
//! cancel-key registry. Built once at start-up and shared by every session through an `Arc`.

use rand::Rng;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use subtle::ConstantTimeEq;

use crate::auth::{ScramVerifier, Secret};
use crate::config::{Config, UserConfig};
use crate::pool::Registry;

/// A configured user with secrets derived once at start-up.
#[derive(Debug)]
pub struct User {
    /// The user's config entry.
    pub config: UserConfig,
    /// Parsed password (plaintext, SCRAM verifier or md5 hash).
    pub secret: Secret,
    /// SCRAM verifier (derived from a plaintext password with a random salt), if possible.
    pub scram: Option<ScramVerifier>,
}

/// Where a client's running query is, for CancelRequest.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    /// Server address.
    pub addr: String,
    /// Server backend pid.
    pub pid: i32,
    /// Server backend secret.
    pub secret: Vec<u8>,
}

/// The server connection a client currently uses; `None` while it holds none.
pub type CancelSlot = Arc<tokio::sync::Mutex<Option<CancelTarget>>>;

/// Proxy-issued cancel keys: pid -> (secret, slot).
#[derive(Debug, Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<i32, (i32, CancelSlot)>>,
}

impl CancelRegistry {
    /// Issues a fresh (pid, secret) for a client and registers its slot.
    pub fn register(&self) -> (i32, i32, CancelSlot) {
        let slot: CancelSlot = Arc::default();
        let mut rng = rand::rng();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let pid = rng.random_range(1..i32::MAX);
            if let std::collections::hash_map::Entry::Vacant(e) = map.entry(pid) {
                let secret = rng.random::<i32>();
                e.insert((secret, slot.clone()));
                return (pid, secret, slot);
            }
        }
    }

    /// Forgets a client's key.
    pub fn unregister(&self, pid: i32) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pid);
    }

    /// The slot for a (pid, secret) pair; the secret is compared in constant time.
    pub fn find(&self, pid: i32, secret: &[u8]) -> Option<CancelSlot> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let (s, slot) = map.get(&pid)?;
        let ok: bool = s.to_be_bytes().ct_eq(secret).into();
        ok.then(|| slot.clone())
    }
}

/// Everything sessions share.
#[derive(Debug)]
pub struct ProxyState {
    /// The configuration in force.
    pub config: Config,
    /// Users by name.
    pub users: HashMap<String, User>,
    /// Server pools.
    pub registry: Registry,
    /// Cancel keys handed to clients.
    pub cancels: CancelRegistry,
}

impl ProxyState {
    /// Derives user secrets and builds the pools. Call inside a tokio runtime.
    pub fn new(config: Config) -> Arc<ProxyState> {
        let users = config
            .users
            .iter()
            .map(|u| {
                let secret = Secret::parse(&u.name, &u.password);
                let scram = secret.scram_verifier();
                (
                    u.name.clone(),
                    User {
                        config: u.clone(),
                        secret,
                        scram,
                    },
                )
            })
            .collect();
        let registry = Registry::build(&config);
        Arc::new(ProxyState {
            config,
            users,
            registry,
            cancels: CancelRegistry::default(),
        })
    }
}
