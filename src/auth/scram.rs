//! SCRAM-SHA-256 (RFC 5802 / RFC 7677) server side, as PostgreSQL implements it.

use std::fmt;
use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AuthError;

/// SASL mechanism name to offer in `AuthenticationSASL`.
pub const SCRAM_MECHANISM: &str = "SCRAM-SHA-256";

/// PBKDF2 iteration count for verifiers derived from plaintext (PostgreSQL's default).
pub const SCRAM_DEFAULT_ITERATIONS: u32 = 4096;

/// Salt length for verifiers derived from plaintext (PostgreSQL's default).
pub const SCRAM_DEFAULT_SALT_LEN: usize = 16;

/// Raw bytes in the server's part of the nonce (base64-encoded on the wire).
const SERVER_NONCE_LEN: usize = 18;

const VERIFIER_PREFIX: &str = "SCRAM-SHA-256$";

type HmacSha256 = Hmac<Sha256>;

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn decode_key(s: &str) -> Option<[u8; 32]> {
    B64.decode(s).ok()?.try_into().ok()
}

/// A SCRAM-SHA-256 verifier: what the server stores instead of the password.
///
/// `Debug` shows the iteration count and salt but not the keys.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// PBKDF2 salt (raw bytes).
    pub salt: Vec<u8>,
    /// `SHA256(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; 32],
}

impl ScramVerifier {
    /// Parses PostgreSQL's `pg_authid` format:
    /// `SCRAM-SHA-256$<iterations>:<salt-b64>$<StoredKey-b64>:<ServerKey-b64>`.
    ///
    /// Returns `None` unless the prefix is exact, the iteration count is a positive
    /// decimal, the salt is non-empty base64 and both keys are base64 of 32 bytes.
    pub fn parse(s: &str) -> Option<ScramVerifier> {
        let rest = s.strip_prefix(VERIFIER_PREFIX)?;
        let (iter_salt, keys) = rest.split_once('$')?;
        let (iterations, salt) = iter_salt.split_once(':')?;
        let (stored_key, server_key) = keys.split_once(':')?;
        if iterations.is_empty() || !iterations.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let iterations: u32 = iterations.parse().ok().filter(|&i| i > 0)?;
        let salt = B64.decode(salt).ok().filter(|s| !s.is_empty())?;
        Some(ScramVerifier {
            iterations,
            salt,
            stored_key: decode_key(stored_key)?,
            server_key: decode_key(server_key)?,
        })
    }

    /// Derives a verifier from a password with the given salt and iteration count
    /// (an iteration count of 0 is treated as 1).
    ///
    /// `SaltedPassword = PBKDF2-HMAC-SHA256(password, salt, iterations)`,
    /// `StoredKey = SHA256(HMAC(SaltedPassword, "Client Key"))`,
    /// `ServerKey = HMAC(SaltedPassword, "Server Key")`.
    ///
    /// SASLprep: the password's bytes are used as they are. That is exactly what
    /// SASLprep (with PostgreSQL's fall-back to the raw bytes) yields for ASCII
    /// passwords; a non-ASCII password that SASLprep would change (NFKC, non-ASCII
    /// spaces, soft hyphens…) derives a different verifier than PostgreSQL would.
    /// [`super::Secret::scram_verifier`] does full SASLprep and is what the proxy uses.
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> ScramVerifier {
        let iterations = iterations.max(1);
        let salted = pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password.as_bytes(), salt, iterations);
        let client_key = hmac_sha256(&salted, &[b"Client Key"]);
        ScramVerifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac_sha256(&salted, &[b"Server Key"]),
        }
    }

    /// Random salt, default iterations and full SASLprep (via postgres-protocol's
    /// password hashing, i.e. the same code libpq's `PQencryptPasswordConn` mirrors).
    pub(super) fn derive_with_random_salt(password: &str) -> ScramVerifier {
        let encoded = postgres_protocol::password::scram_sha_256(password.as_bytes());
        ScramVerifier::parse(&encoded).unwrap_or_else(|| {
            let salt: [u8; SCRAM_DEFAULT_SALT_LEN] = rand::random();
            ScramVerifier::from_password(password, &salt, SCRAM_DEFAULT_ITERATIONS)
        })
    }

    /// A verifier for a user that does not exist, so that the exchange looks the same as
    /// for a real user with a wrong password.
    ///
    /// Salt and keys are HMACs of `user` under a random per-process key: stable for a
    /// given user within one process (repeated probes see the same salt), unrelated to
    /// any password, and different across restarts. No proof can match, since that would
    /// need a SHA-256 preimage of a random `stored_key`.
    pub fn dummy(user: &str) -> ScramVerifier {
        static PROCESS_KEY: OnceLock<[u8; 32]> = OnceLock::new();
        let key = PROCESS_KEY.get_or_init(rand::random);
        let salt = hmac_sha256(key, &[b"salt\0", user.as_bytes()]);
        ScramVerifier {
            iterations: SCRAM_DEFAULT_ITERATIONS,
            salt: salt[..SCRAM_DEFAULT_SALT_LEN].to_vec(),
            stored_key: hmac_sha256(key, &[b"stored\0", user.as_bytes()]),
            server_key: hmac_sha256(key, &[b"server\0", user.as_bytes()]),
        }
    }
}

/// Formats the verifier in PostgreSQL's `pg_authid` format (what `to_string()` returns).
impl fmt::Display for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{VERIFIER_PREFIX}{}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .field("salt", &B64.encode(&self.salt))
            .field("stored_key", &"<redacted>")
            .field("server_key", &"<redacted>")
            .finish()
    }
}

enum State {
    /// Waiting for the client-first-message.
    Initial,
    /// Server-first-message sent; waiting for the client-final-message.
    SentServerFirst {
        gs2_header: Vec<u8>,
        client_first_bare: Vec<u8>,
        server_first: Vec<u8>,
        nonce: Vec<u8>,
    },
    /// Proof verified, server-final-message produced.
    Done,
    /// An error occurred; every further call fails.
    Failed,
}

/// Server side of one SCRAM-SHA-256 exchange, as PostgreSQL does it.
///
/// No channel binding: the client's gs2 header must be `n,,` or `y,,` (`p=…`, i.e.
/// SCRAM-SHA-256-PLUS, is rejected with [`AuthError::Unsupported`], as are an
/// authorization identity and mandatory extensions). The user name in the
/// client-first-message is ignored (PostgreSQL clients send `n=`); the user is the one
/// from the startup packet, whose verifier is given to [`ScramServer::new`].
///
/// Messages must come in order; after any error the exchange is dead and every further
/// call returns an error.
pub struct ScramServer {
    verifier: ScramVerifier,
    state: State,
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Initial => "Initial",
            State::SentServerFirst { .. } => "SentServerFirst",
            State::Done => "Done",
            State::Failed => "Failed",
        };
        f.debug_struct("ScramServer")
            .field("verifier", &self.verifier)
            .field("state", &state)
            .finish()
    }
}

/// `attr=value` with a single ASCII letter `attr`: returns the value.
fn attr_value(field: &[u8], attr: u8) -> Option<&[u8]> {
    match field {
        [a, b'=', value @ ..] if *a == attr => Some(value),
        _ => None,
    }
}

/// An extension attribute: `<letter>=<anything>`.
fn is_attr(field: &[u8]) -> bool {
    matches!(field, [a, b'=', ..] if a.is_ascii_alphabetic())
}

/// RFC 5802 `printable`: `%x21-2B / %x2D-7E` (printable ASCII except `,`).
fn is_printable(s: &[u8]) -> bool {
    s.iter().all(|&b| (0x21..=0x7e).contains(&b) && b != b',')
}

impl ScramServer {
    /// Starts an exchange for the user whose verifier is given (use
    /// [`ScramVerifier::dummy`] for unknown users).
    pub fn new(verifier: ScramVerifier) -> ScramServer {
        ScramServer {
            verifier,
            state: State::Initial,
        }
    }

    /// Takes the `SASLInitialResponse` data (the client-first-message) and returns the
    /// server-first-message (`r=<nonce>,s=<salt>,i=<iterations>`) to send in
    /// `AuthenticationSASLContinue`.
    pub fn handle_client_first(&mut self, data: &[u8]) -> Result<Vec<u8>, AuthError> {
        if !matches!(self.state, State::Initial) {
            self.state = State::Failed;
            return Err(AuthError::Malformed("unexpected client-first-message"));
        }
        self.state = State::Failed;

        // gs2-header = gs2-cbind-flag "," [ authzid ] ","
        let mut gs2 = data.splitn(3, |&b| b == b',');
        let flag = gs2.next().unwrap_or_default();
        let authzid = gs2
            .next()
            .ok_or(AuthError::Malformed("truncated gs2 header"))?;
        let bare = gs2
            .next()
            .ok_or(AuthError::Malformed("truncated gs2 header"))?;
        match flag {
            b"n" | b"y" => {}
            [b'p', b'=', ..] => {
                return Err(AuthError::Unsupported(
                    "channel binding (SCRAM-SHA-256-PLUS) is not supported",
                ))
            }
            _ => return Err(AuthError::Malformed("invalid channel-binding flag")),
        }
        if !authzid.is_empty() {
            return Err(if attr_value(authzid, b'a').is_some() {
                AuthError::Unsupported("authorization identity (a=) is not supported")
            } else {
                AuthError::Malformed("invalid authorization identity")
            });
        }
        let gs2_header = &data[..data.len() - bare.len()];

        // client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
        let mut fields = bare.split(|&b| b == b',');
        let first = fields.next().unwrap_or_default();
        if attr_value(first, b'm').is_some() {
            return Err(AuthError::Unsupported("mandatory SCRAM extension (m=)"));
        }
        // The user name is ignored: the user comes from the startup packet.
        attr_value(first, b'n').ok_or(AuthError::Malformed("expected user name (n=)"))?;
        let client_nonce = fields
            .next()
            .and_then(|f| attr_value(f, b'r'))
            .ok_or(AuthError::Malformed("expected nonce (r=)"))?;
        if client_nonce.is_empty() || !is_printable(client_nonce) {
            return Err(AuthError::Malformed("invalid client nonce"));
        }
        if !fields.all(is_attr) {
            return Err(AuthError::Malformed(
                "invalid attribute in client-first-message",
            ));
        }

        let server_nonce = B64.encode(rand::random::<[u8; SERVER_NONCE_LEN]>());
        let mut nonce = client_nonce.to_vec();
        nonce.extend_from_slice(server_nonce.as_bytes());

        let mut server_first = b"r=".to_vec();
        server_first.extend_from_slice(&nonce);
        server_first.extend_from_slice(
            format!(
                ",s={},i={}",
                B64.encode(&self.verifier.salt),
                self.verifier.iterations
            )
            .as_bytes(),
        );

        self.state = State::SentServerFirst {
            gs2_header: gs2_header.to_vec(),
            client_first_bare: bare.to_vec(),
            server_first: server_first.clone(),
            nonce,
        };
        Ok(server_first)
    }

    /// Takes the `SASLResponse` data (the client-final-message), checks the channel
    /// binding echo and nonce, verifies the proof in constant time, and returns the
    /// server-final-message (`v=<ServerSignature>`) to send in `AuthenticationSASLFinal`.
    ///
    /// A wrong proof gives [`AuthError::BadProof`].
    pub fn handle_client_final(&mut self, data: &[u8]) -> Result<Vec<u8>, AuthError> {
        let (gs2_header, client_first_bare, server_first, nonce) =
            match std::mem::replace(&mut self.state, State::Failed) {
                State::SentServerFirst {
                    gs2_header,
                    client_first_bare,
                    server_first,
                    nonce,
                } => (gs2_header, client_first_bare, server_first, nonce),
                _ => return Err(AuthError::Malformed("unexpected client-final-message")),
            };

        // client-final-message = channel-binding "," nonce ["," extensions] "," proof
        let comma = data
            .iter()
            .rposition(|&b| b == b',')
            .ok_or(AuthError::Malformed("truncated client-final-message"))?;
        let (without_proof, proof_field) = (&data[..comma], &data[comma + 1..]);
        let proof = attr_value(proof_field, b'p')
            .ok_or(AuthError::Malformed("expected proof (p=) at the end"))?;
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(AuthError::Malformed("invalid proof"))?;

        let mut fields = without_proof.split(|&b| b == b',');
        let cbind = fields
            .next()
            .and_then(|f| attr_value(f, b'c'))
            .ok_or(AuthError::Malformed("expected channel binding (c=)"))?;
        if B64.decode(cbind).ok().as_deref() != Some(&gs2_header[..]) {
            return Err(AuthError::Malformed(
                "channel binding (c=) does not match the gs2 header",
            ));
        }
        let final_nonce = fields
            .next()
            .and_then(|f| attr_value(f, b'r'))
            .ok_or(AuthError::Malformed("expected nonce (r=)"))?;
        if final_nonce != &nonce[..] {
            return Err(AuthError::Malformed("nonce mismatch"));
        }
        if !fields.all(is_attr) {
            return Err(AuthError::Malformed(
                "invalid attribute in client-final-message",
            ));
        }

        // AuthMessage = client-first-message-bare "," server-first-message ","
        //               client-final-message-without-proof
        let auth_message: &[&[u8]] =
            &[&client_first_bare, b",", &server_first, b",", without_proof];
        let client_signature = hmac_sha256(&self.verifier.stored_key, auth_message);
        let mut client_key = proof;
        for (k, s) in client_key.iter_mut().zip(client_signature) {
            *k ^= s;
        }
        if !bool::from(sha256(&client_key).ct_eq(&self.verifier.stored_key)) {
            return Err(AuthError::BadProof);
        }

        let server_signature = hmac_sha256(&self.verifier.server_key, auth_message);
        self.state = State::Done;
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

#[cfg(test)]
mod tests;
