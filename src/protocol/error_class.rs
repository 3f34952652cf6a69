//! Whose fault an error is and whether trying again is safe, from its SQLSTATE: one table
//! for every error the proxy makes or relays (logs, the admin console and metrics read it).
//!
//! "Retry safe" means the error itself says the statement did not take effect and the same
//! statement may succeed later (serialization failures, deadlocks, no connection yet, the
//! server shutting down). An error that leaves the outcome unknown (a connection lost after
//! the statement was sent, `transaction_resolution_unknown`) is never retry safe.

use super::sqlstate;

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The client's statement or input (syntax, constraints, permissions, bad messages).
    Client,
    /// A server (or its state: shutdown, resources, conflicts with other sessions).
    Server,
    /// The proxy: what it cannot do exactly (0A000 refusals) and its own failures.
    Proxy,
}

impl Fault {
    /// Lowercase name, for logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Client => "client",
            Fault::Server => "server",
            Fault::Proxy => "proxy",
        }
    }
}

/// What an error means for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorClass {
    /// Who caused it.
    pub fault: Fault,
    /// The statement did not take effect and may succeed if sent again.
    pub retry_safe: bool,
}

impl ErrorClass {
    /// The class of a SQLSTATE (`code`, five characters; anything else is the client's
    /// and not retry safe).
    pub fn of(code: &str) -> ErrorClass {
        use Fault::{Client, Proxy, Server};
        let (fault, retry_safe) = match code {
            // Exact codes first.
            sqlstate::PROTOCOL_VIOLATION => (Client, false),
            sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION
            | sqlstate::SQLSERVER_REJECTED_ESTABLISHMENT_OF_SQLCONNECTION => (Server, true),
            sqlstate::TRANSACTION_RESOLUTION_UNKNOWN => (Server, false),
            sqlstate::T_R_SERIALIZATION_FAILURE | sqlstate::T_R_DEADLOCK_DETECTED => (Server, true),
            sqlstate::T_R_INTEGRITY_CONSTRAINT_VIOLATION => (Client, false),
            sqlstate::QUERY_CANCELED => (Client, false),
            sqlstate::ADMIN_SHUTDOWN | sqlstate::CRASH_SHUTDOWN | sqlstate::CANNOT_CONNECT_NOW => {
                (Server, true)
            }
            sqlstate::LOCK_NOT_AVAILABLE => (Server, true),
            sqlstate::SNAPSHOT_TOO_OLD => (Server, true),
            sqlstate::FEATURE_NOT_SUPPORTED | sqlstate::INTERNAL_ERROR => (Proxy, false),
            _ => match code.get(..2).unwrap_or("") {
                // Connection exceptions other than the above: the outcome is unknown.
                "08" => (Server, false),
                // Transaction rollback (the rest), resources, operator intervention, object
                // state, system errors, configuration, foreign servers, corruption.
                "40" | "53" | "55" | "57" | "58" | "F0" | "HV" | "XX" => {
                    (Server, code.starts_with("53"))
                }
                _ => (Client, false),
            },
        };
        ErrorClass { fault, retry_safe }
    }
}

/// SQLSTATE classes (two characters of `0-9A-Z`) counted one by one; any other goes to one
/// more slot, `other`.
const CLASSES: usize = 36 * 36;

/// Errors counted by SQLSTATE class (for `/metrics`): one relaxed addition per error.
#[derive(Debug)]
pub struct ClassCounts([std::sync::atomic::AtomicU64; CLASSES + 1]);

/// Errors the proxy made and sent to clients (counted where they become bytes, in
/// [`super::PgError::encode`]; process-wide).
pub static PROXY_ERRORS: ClassCounts = ClassCounts::new();

impl Default for ClassCounts {
    fn default() -> Self {
        ClassCounts::new()
    }
}

impl ClassCounts {
    pub const fn new() -> ClassCounts {
        ClassCounts([const { std::sync::atomic::AtomicU64::new(0) }; CLASSES + 1])
    }

    /// Counts an error with SQLSTATE `code` (its first two bytes are its class).
    pub fn count(&self, code: &[u8]) {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some((c - b'0') as usize),
            b'A'..=b'Z' => Some((c - b'A') as usize + 10),
            _ => None,
        };
        let slot = match code {
            [a, b, ..] => digit(*a).zip(digit(*b)).map(|(a, b)| a * 36 + b),
            _ => None,
        };
        self.0[slot.unwrap_or(CLASSES)].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The classes counted so far and their counts (`other` for the rest), in class order.
    pub fn nonzero(&self) -> Vec<(String, u64)> {
        const DIGITS: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let mut out = Vec::new();
        for (i, n) in self.0.iter().enumerate() {
            let n = n.load(std::sync::atomic::Ordering::Relaxed);
            if n == 0 {
                continue;
            }
            let label = match i {
                CLASSES => "other".to_string(),
                _ => String::from_utf8_lossy(&[DIGITS[i / 36], DIGITS[i % 36]]).into_owned(),
            };
            out.push((label, n));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases = [
            (sqlstate::SYNTAX_ERROR, Fault::Client, false),
            (sqlstate::UNIQUE_VIOLATION, Fault::Client, false),
            (sqlstate::INVALID_PASSWORD, Fault::Client, false),
            (sqlstate::IN_FAILED_TRANSACTION, Fault::Client, false),
            (sqlstate::PROTOCOL_VIOLATION, Fault::Client, false),
            (sqlstate::QUERY_CANCELED, Fault::Client, false),
            (sqlstate::PROGRAM_LIMIT_EXCEEDED, Fault::Client, false),
            (sqlstate::T_R_SERIALIZATION_FAILURE, Fault::Server, true),
            (sqlstate::T_R_DEADLOCK_DETECTED, Fault::Server, true),
            (
                sqlstate::T_R_STATEMENT_COMPLETION_UNKNOWN,
                Fault::Server,
                false,
            ),
            (sqlstate::CANNOT_CONNECT, Fault::Server, true),
            (sqlstate::CONNECTION_FAILURE, Fault::Server, false),
            (
                sqlstate::TRANSACTION_RESOLUTION_UNKNOWN,
                Fault::Server,
                false,
            ),
            (sqlstate::TOO_MANY_CONNECTIONS, Fault::Server, true),
            (sqlstate::ADMIN_SHUTDOWN, Fault::Server, true),
            (sqlstate::LOCK_NOT_AVAILABLE, Fault::Server, true),
            (sqlstate::DISK_FULL, Fault::Server, true),
            (sqlstate::DATA_CORRUPTED, Fault::Server, false),
            (sqlstate::FEATURE_NOT_SUPPORTED, Fault::Proxy, false),
            (sqlstate::INTERNAL_ERROR, Fault::Proxy, false),
            ("", Fault::Client, false),
            ("0", Fault::Client, false),
        ];
        for (code, fault, retry_safe) in cases {
            assert_eq!(
                ErrorClass::of(code),
                ErrorClass { fault, retry_safe },
                "{code:?}"
            );
        }
    }

    #[test]
    fn no_outcome_unknown_error_is_retry_safe() {
        // Every connection exception but "never connected" leaves the outcome unknown.
        for code in [
            sqlstate::CONNECTION_EXCEPTION,
            sqlstate::CONNECTION_DOES_NOT_EXIST,
            sqlstate::CONNECTION_FAILURE,
            sqlstate::TRANSACTION_RESOLUTION_UNKNOWN,
            sqlstate::T_R_STATEMENT_COMPLETION_UNKNOWN,
        ] {
            assert!(!ErrorClass::of(code).retry_safe, "{code}");
        }
    }

    #[test]
    fn any_text_is_classified_without_panicking() {
        for code in ["é", "ééé", "08", "XX", "\u{0}\u{0}\u{0}\u{0}\u{0}", "4000"] {
            let _ = ErrorClass::of(code);
        }
    }

    #[test]
    fn errors_are_counted_by_class() {
        let c = ClassCounts::new();
        for code in ["22012", "22P02", "0A000", "XX000", "2", "a1000", ""] {
            c.count(code.as_bytes());
        }
        let want: Vec<(String, u64)> = [("0A", 1), ("22", 2), ("XX", 1), ("other", 3)]
            .iter()
            .map(|(k, n)| (k.to_string(), *n))
            .collect();
        assert_eq!(c.nonzero(), want);
    }
}
