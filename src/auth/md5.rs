//! PostgreSQL md5 password challenge/response (server side).

use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

use super::Secret;

fn md5_of(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// The stored md5 form of a password, as in `pg_authid`: `"md5"` followed by the lowercase
/// hex of `md5(password || user)`.
pub fn md5_stored(password: &str, user: &str) -> String {
    format!(
        "md5{}",
        hex::encode(md5_of(&[password.as_bytes(), user.as_bytes()]))
    )
}

/// Checks a client's md5 `PasswordMessage`.
///
/// `response` is the message body without its trailing NUL (a single trailing NUL is
/// tolerated), e.g. `b"md5" + 32 hex digits`; `salt` is the 4 random bytes sent in
/// `AuthenticationMD5Password`. The expected response is
/// `"md5" || hex(md5(hex(md5(password || user)) || salt))`, compared in constant time.
///
/// Works for [`Secret::Plain`] and [`Secret::Md5`] (whose hash must have been made for
/// this same `user`); returns `false` for [`Secret::Scram`], from which md5 cannot be
/// computed.
pub fn md5_verify(secret: &Secret, user: &str, salt: [u8; 4], response: &[u8]) -> bool {
    let stored = match secret {
        Secret::Plain(p) => md5_of(&[p.as_bytes(), user.as_bytes()]),
        Secret::Md5(d) => *d,
        Secret::Scram(_) => return false,
    };
    let outer = md5_of(&[hex::encode(stored).as_bytes(), &salt]);
    let expected = format!("md5{}", hex::encode(outer));
    let response = response.strip_suffix(b"\0").unwrap_or(response);
    // Length is public (always 35 for a well-formed response); contents are compared
    // in constant time.
    expected.as_bytes().ct_eq(response).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ScramVerifier;
    use postgres_protocol::authentication::md5_hash;

    #[test]
    fn matches_postgres_protocol_client() {
        let salt = [0xde, 0xad, 0xbe, 0xef];
        for (user, pass) in [("alice", "pencil"), ("bob", ""), ("ünï", "pässwörd ✓")] {
            let resp = md5_hash(user.as_bytes(), pass.as_bytes(), salt);
            let plain = Secret::parse(user, pass);
            let hashed = Secret::parse(user, &md5_stored(pass, user));
            assert!(matches!(hashed, Secret::Md5(_)));
            for s in [&plain, &hashed] {
                assert!(md5_verify(s, user, salt, resp.as_bytes()));
                let mut with_nul = resp.clone().into_bytes();
                with_nul.push(0);
                assert!(md5_verify(s, user, salt, &with_nul));
                // Wrong salt, user, password, or a mangled response: rejected.
                assert!(!md5_verify(s, user, [0, 0, 0, 0], resp.as_bytes()));
                let wrong = md5_hash(user.as_bytes(), b"wrong", salt);
                assert!(!md5_verify(s, user, salt, wrong.as_bytes()));
                assert!(!md5_verify(s, user, salt, resp.to_uppercase().as_bytes()));
                assert!(!md5_verify(s, user, salt, &resp.as_bytes()[..34]));
                assert!(!md5_verify(s, user, salt, b""));
                assert!(!md5_verify(s, user, salt, &[0xff; 35]));
            }
            // The plaintext is salted with the user name (a stored hash already is).
            assert!(!md5_verify(&plain, "mallory", salt, resp.as_bytes()));
        }
    }

    #[test]
    fn scram_secret_cannot_do_md5() {
        let salt = [1, 2, 3, 4];
        let v = ScramVerifier::from_password("pencil", b"salt", 4096);
        let resp = md5_hash(b"alice", b"pencil", salt);
        assert!(!md5_verify(
            &Secret::Scram(v),
            "alice",
            salt,
            resp.as_bytes()
        ));
    }
}
