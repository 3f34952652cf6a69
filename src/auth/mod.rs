//! Client-facing password authentication: SCRAM-SHA-256 and md5, as pure state machines (no I/O).
//!
//! The proxy authenticates its clients itself. A configured user `password` is one of:
//! - plaintext,
//! - a SCRAM verifier in PostgreSQL's `pg_authid` format
//!   (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`),
//! - an md5 hash `md5<32 hex>` = `"md5" || hex(md5(password || username))`.
//!
//! [`Secret::parse`] detects the format. For SCRAM, derive the verifier once at config
//! load with [`Secret::scram_verifier`] and run one [`ScramServer`] per login; unknown
//! users get [`ScramVerifier::dummy`] so that they are indistinguishable from wrong
//! passwords. For md5 use [`md5_verify`].

mod md5;
mod scram;

use std::fmt;

pub use self::md5::{md5_stored, md5_verify};
pub use self::scram::{
    ScramServer, ScramVerifier, SCRAM_DEFAULT_ITERATIONS, SCRAM_DEFAULT_SALT_LEN, SCRAM_MECHANISM,
};

/// A user's configured password, in whichever form the configuration gave it.
///
/// `Debug` never prints the password or hash.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// A plaintext password: usable for SCRAM (after derivation), md5 and towards Postgres.
    Plain(String),
    /// A SCRAM-SHA-256 verifier: usable for SCRAM only.
    Scram(ScramVerifier),
    /// The 16-byte digest `md5(password || username)` (the `md5<hex>` form, decoded):
    /// usable for md5 only.
    Md5([u8; 16]),
}

impl Secret {
    /// Detects the format of a configured password.
    ///
    /// - `SCRAM-SHA-256$…` that parses as a verifier → [`Secret::Scram`];
    ///   one that does not parse is treated as plaintext, as PostgreSQL does (config
    ///   validation should reject it with [`ScramVerifier::parse`]).
    /// - `md5` followed by exactly 32 hex digits (either case, matching
    ///   `config::is_hashed`) → [`Secret::Md5`].
    /// - anything else → [`Secret::Plain`].
    ///
    /// `user` is not needed to recognise any format (an md5 hash is already bound to its
    /// user; pass the same name to [`md5_verify`]); it is accepted for symmetry with
    /// [`md5_stored`].
    pub fn parse(user: &str, configured: &str) -> Secret {
        let _ = user;
        if configured.starts_with("SCRAM-SHA-256$") {
            if let Some(v) = ScramVerifier::parse(configured) {
                return Secret::Scram(v);
            }
        }
        if let Some(hex_part) = configured.strip_prefix("md5") {
            if hex_part.len() == 32 {
                let mut digest = [0u8; 16];
                if hex::decode_to_slice(hex_part, &mut digest).is_ok() {
                    return Secret::Md5(digest);
                }
            }
        }
        Secret::Plain(configured.to_owned())
    }

    /// The plaintext password, if the configuration gave one (for the proxy→server
    /// direction, or for md5).
    pub fn plaintext(&self) -> Option<&str> {
        match self {
            Secret::Plain(p) => Some(p),
            Secret::Scram(_) | Secret::Md5(_) => None,
        }
    }

    /// The SCRAM verifier to authenticate clients against; `None` for md5 hashes.
    ///
    /// For [`Secret::Plain`] this derives a fresh verifier with a random
    /// [`SCRAM_DEFAULT_SALT_LEN`]-byte salt and [`SCRAM_DEFAULT_ITERATIONS`] iterations
    /// (with full SASLprep, exactly as libpq/PostgreSQL store passwords). That costs a
    /// PBKDF2 run, so call it once per user at config load and cache the result.
    /// For [`Secret::Scram`] it returns a copy of the parsed verifier.
    pub fn scram_verifier(&self) -> Option<ScramVerifier> {
        match self {
            Secret::Plain(p) => Some(ScramVerifier::derive_with_random_salt(p)),
            Secret::Scram(v) => Some(v.clone()),
            Secret::Md5(_) => None,
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Plain(_) => f.write_str("Secret::Plain(<redacted>)"),
            Secret::Scram(v) => f.debug_tuple("Secret::Scram").field(v).finish(),
            Secret::Md5(_) => f.write_str("Secret::Md5(<redacted>)"),
        }
    }
}

/// Why an authentication exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The client's message does not follow the protocol (or came out of order).
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client's proof is wrong: wrong password or unknown user.
    #[error("password authentication failed")]
    BadProof,
    /// The client asked for something this server does not do (channel binding,
    /// authorization identity, mandatory extensions).
    #[error("unsupported SCRAM feature: {0}")]
    Unsupported(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    const PENCIL_VERIFIER: &str = "SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw==$zHCdol2044/ZyWzPLi7oxApCkamKw9Z+E4U/QApd/5Y=:dd5peBOitVnLNFu7VmwP+HiDaaw4OUCv396eVCWhYiE=";

    #[test]
    fn parse_detects_formats() {
        assert_eq!(
            Secret::parse("alice", "hunter2"),
            Secret::Plain("hunter2".into())
        );
        match Secret::parse("alice", PENCIL_VERIFIER) {
            Secret::Scram(v) => assert_eq!(v.to_string(), PENCIL_VERIFIER),
            other => panic!("{other:?}"),
        }
        // md5("pencil" || "alice"), computed with Python's hashlib.
        let md5 = "md5ee69efad287c7423caf0b3229d71f567";
        assert_eq!(md5_stored("pencil", "alice"), md5);
        match Secret::parse("alice", md5) {
            Secret::Md5(d) => assert_eq!(hex::encode(d), &md5[3..]),
            other => panic!("{other:?}"),
        }
        match Secret::parse("alice", &md5.to_uppercase().replacen("MD5", "md5", 1)) {
            Secret::Md5(_) => {}
            other => panic!("{other:?}"),
        }
        // Not quite a hash / verifier: plaintext, like PostgreSQL.
        for s in [
            "md5",
            "md5ee69efad287c7423caf0b3229d71f56",
            "md5ee69efad287c7423caf0b3229d71f5677",
            "md5ee69efad287c7423caf0b3229d71f56g",
            "SCRAM-SHA-256$",
            "SCRAM-SHA-256$4096:AAAA$x:y",
            "",
        ] {
            assert_eq!(Secret::parse("alice", s), Secret::Plain(s.into()), "{s}");
        }
    }

    #[test]
    fn plaintext_and_verifier_accessors() {
        let plain = Secret::parse("alice", "pencil");
        assert_eq!(plain.plaintext(), Some("pencil"));
        let v = plain.scram_verifier().unwrap();
        assert_eq!(v.iterations, SCRAM_DEFAULT_ITERATIONS);
        assert_eq!(v.salt.len(), SCRAM_DEFAULT_SALT_LEN);
        assert_eq!(
            v,
            ScramVerifier::from_password("pencil", &v.salt, v.iterations)
        );
        // Random salt per derivation.
        assert_ne!(v.salt, plain.scram_verifier().unwrap().salt);

        let scram = Secret::parse("alice", PENCIL_VERIFIER);
        assert_eq!(scram.plaintext(), None);
        assert_eq!(scram.scram_verifier().unwrap().to_string(), PENCIL_VERIFIER);

        let md5 = Secret::parse("alice", &md5_stored("pencil", "alice"));
        assert_eq!(md5.plaintext(), None);
        assert_eq!(md5.scram_verifier(), None);
    }

    #[test]
    fn debug_redacts() {
        let s = format!(
            "{:?} {:?} {:?}",
            Secret::parse("alice", "pencil"),
            Secret::parse("alice", PENCIL_VERIFIER),
            Secret::parse("alice", &md5_stored("pencil", "alice"))
        );
        assert!(!s.contains("pencil"), "{s}");
        assert!(!s.contains("zHCdol"), "{s}");
        assert!(!s.contains("dd5peB"), "{s}");
        assert!(!s.contains("ee69ef"), "{s}");
    }
}
