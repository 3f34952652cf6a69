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
mod tests {
    use super::*;
    use crate::auth::Secret;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    use rand::{Rng, RngCore, SeedableRng};

    /// Computed independently with Python (hashlib.pbkdf2_hmac / hmac) for password
    /// "pencil", salt 00 01 .. 0f, 4096 iterations.
    const PENCIL_VERIFIER: &str = "SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw==$zHCdol2044/ZyWzPLi7oxApCkamKw9Z+E4U/QApd/5Y=:dd5peBOitVnLNFu7VmwP+HiDaaw4OUCv396eVCWhYiE=";

    fn pencil() -> ScramVerifier {
        ScramVerifier::parse(PENCIL_VERIFIER).unwrap()
    }

    /// Runs a full exchange with the postgres-protocol client; returns the server's
    /// result and, on success, whether the client accepted the server-final-message.
    fn exchange(
        verifier: ScramVerifier,
        password: &str,
        cb: ChannelBinding,
    ) -> Result<bool, AuthError> {
        let mut client = ScramSha256::new(password.as_bytes(), cb);
        let mut server = ScramServer::new(verifier);
        let server_first = server.handle_client_first(client.message())?;
        client
            .update(&server_first)
            .expect("client accepts server-first");
        let server_final = server.handle_client_final(client.message())?;
        Ok(client.finish(&server_final).is_ok())
    }

    #[test]
    fn known_verifier_round_trip() {
        let v = pencil();
        assert_eq!(v.iterations, 4096);
        assert_eq!(v.salt, (0u8..16).collect::<Vec<_>>());
        assert_eq!(v.to_string(), PENCIL_VERIFIER);
        assert_eq!(
            ScramVerifier::from_password("pencil", &v.salt, 4096),
            v,
            "derivation matches the independently computed verifier"
        );
        // Ours → PostgreSQL format → ours.
        let w = ScramVerifier::from_password("x", b"some salt", 10);
        assert_eq!(ScramVerifier::parse(&w.to_string()), Some(w));
        // postgres-protocol's (PostgreSQL-format) verifier parses and round-trips.
        let pp = postgres_protocol::password::scram_sha_256(b"pencil");
        let parsed = ScramVerifier::parse(&pp).unwrap();
        assert_eq!(parsed.to_string(), pp);
        assert_eq!(
            parsed,
            ScramVerifier::from_password("pencil", &parsed.salt, parsed.iterations)
        );
    }

    #[test]
    fn verifier_parse_rejects_garbage() {
        let k = B64.encode([0u8; 32]);
        let short = B64.encode([0u8; 31]);
        for s in [
            "".to_string(),
            "SCRAM-SHA-256$".into(),
            "SCRAM-SHA-256".into(),
            "scram-sha-256$4096:AAAA$".to_string() + &k + ":" + &k,
            format!("SCRAM-SHA-256$0:AAAA${k}:{k}"),
            format!("SCRAM-SHA-256$-1:AAAA${k}:{k}"),
            format!("SCRAM-SHA-256$+4096:AAAA${k}:{k}"),
            format!("SCRAM-SHA-256$99999999999:AAAA${k}:{k}"),
            format!("SCRAM-SHA-256$:AAAA${k}:{k}"),
            format!("SCRAM-SHA-256$4096:${k}:{k}"),
            format!("SCRAM-SHA-256$4096:!!!!${k}:{k}"),
            format!("SCRAM-SHA-256$4096:AAAA${short}:{k}"),
            format!("SCRAM-SHA-256$4096:AAAA${k}:{short}"),
            format!("SCRAM-SHA-256$4096:AAAA${k}"),
            format!("SCRAM-SHA-256$4096:AAAA${k}:{k}:"),
            format!("SCRAM-SHA-256$4096:AAAA${k}:{k}$"),
            format!("SCRAM-SHA-256$4096AAAA${k}:{k}"),
        ] {
            assert_eq!(ScramVerifier::parse(&s), None, "{s}");
        }
        assert!(ScramVerifier::parse(&format!("SCRAM-SHA-256$1:AAAA${k}:{k}")).is_some());
    }

    #[test]
    fn full_exchange_with_postgres_protocol_client() {
        for cb in [ChannelBinding::unsupported(), ChannelBinding::unrequested()] {
            assert_eq!(exchange(pencil(), "pencil", cb), Ok(true));
        }
        assert_eq!(
            exchange(pencil(), "pencil!", ChannelBinding::unsupported()),
            Err(AuthError::BadProof)
        );
        assert_eq!(
            exchange(pencil(), "", ChannelBinding::unrequested()),
            Err(AuthError::BadProof)
        );
    }

    #[test]
    fn plaintext_secret_exchange_including_saslprep() {
        // "I\u{00AD}X": SASLprep maps the soft hyphen to nothing ("IX"); libpq and
        // postgres-protocol's client both apply it, and so does Secret::scram_verifier.
        for pw in ["pencil", "pässwörd", "I\u{00AD}X", "a\u{2003}b", "\u{2168}"] {
            let v = Secret::parse("alice", pw).scram_verifier().unwrap();
            assert_eq!(
                exchange(v.clone(), pw, ChannelBinding::unsupported()),
                Ok(true),
                "{pw:?}"
            );
            assert_eq!(
                exchange(v, "wrong", ChannelBinding::unsupported()),
                Err(AuthError::BadProof)
            );
        }
    }

    #[test]
    fn dummy_verifier_always_fails_and_is_stable() {
        let d = ScramVerifier::dummy("ghost");
        assert_eq!(d, ScramVerifier::dummy("ghost"));
        assert_ne!(d.salt, ScramVerifier::dummy("ghost2").salt);
        assert_eq!(d.salt.len(), SCRAM_DEFAULT_SALT_LEN);
        assert_eq!(d.iterations, SCRAM_DEFAULT_ITERATIONS);
        for pw in ["", "ghost", "pencil"] {
            assert_eq!(
                exchange(d.clone(), pw, ChannelBinding::unsupported()),
                Err(AuthError::BadProof)
            );
        }
    }

    #[test]
    fn server_first_format() {
        let mut s = ScramServer::new(pencil());
        let sf = s.handle_client_first(b"n,,n=,r=abc,x=ext").unwrap();
        let sf = String::from_utf8(sf).unwrap();
        let rest = sf.strip_prefix("r=abc").unwrap();
        let (server_nonce, tail) = rest.split_once(',').unwrap();
        assert_eq!(server_nonce.len(), 24);
        assert_eq!(tail, "s=AAECAwQFBgcICQoLDA0ODw==,i=4096");
        // A second exchange gets a different nonce.
        let sf2 = ScramServer::new(pencil())
            .handle_client_first(b"n,,n=,r=abc")
            .unwrap();
        assert_ne!(sf.as_bytes(), &sf2[..]);
    }

    #[test]
    fn client_first_errors() {
        use AuthError::*;
        let cases: &[(&[u8], bool)] = &[
            (b"p=tls-server-end-point,,n=,r=abc", true),
            (b"n,a=bob,n=,r=abc", true),
            (b"n,,m=foo,n=,r=abc", true),
            (b"", false),
            (b"n", false),
            (b"n,", false),
            (b"n,,", false),
            (b"n,,n=", false),
            (b"n,,n=,r=", false),
            (b"n,,n=,r=a b", false),
            (b"n,,n=,r=\xff", false),
            (b"n,,n=,r=abc,", false),
            (b"n,,n=,r=abc,bogus", false),
            (b"n,,r=abc", false),
            (b"x,,n=,r=abc", false),
            (b"n,x,n=,r=abc", false),
            (b"SCRAM-SHA-256", false),
        ];
        for &(msg, unsupported) in cases {
            let err = ScramServer::new(pencil())
                .handle_client_first(msg)
                .unwrap_err();
            let ok = if unsupported {
                matches!(err, Unsupported(_))
            } else {
                matches!(err, Malformed(_))
            };
            assert!(ok, "{:?} -> {err:?}", String::from_utf8_lossy(msg));
        }
        // y,, and a non-empty (ignored) user name are fine.
        assert!(ScramServer::new(pencil())
            .handle_client_first(b"y,,n=someone,r=abc")
            .is_ok());
    }

    /// Builds a correct client-final-message for `server_first` by hand, so that tests
    /// can tamper with individual parts.
    fn client_final(
        verifier_password: &str,
        v: &ScramVerifier,
        client_first_bare: &str,
        server_first: &str,
        without_proof: &str,
    ) -> String {
        let salted = pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(
            verifier_password.as_bytes(),
            &v.salt,
            v.iterations,
        );
        let client_key = hmac_sha256(&salted, &[b"Client Key"]);
        let auth = format!("{client_first_bare},{server_first},{without_proof}");
        let sig = hmac_sha256(&sha256(&client_key), &[auth.as_bytes()]);
        let proof: Vec<u8> = client_key.iter().zip(sig).map(|(a, b)| a ^ b).collect();
        format!("{without_proof},p={}", B64.encode(proof))
    }

    #[test]
    fn client_final_errors_and_tampering() {
        let v = pencil();
        let start = || {
            let mut s = ScramServer::new(pencil());
            let sf = String::from_utf8(s.handle_client_first(b"n,,n=,r=cnonce").unwrap()).unwrap();
            let nonce = sf.split(',').next().unwrap()[2..].to_string();
            (s, sf, nonce)
        };

        // Hand-built message with an extension is accepted.
        let (mut s, sf, nonce) = start();
        let msg = client_final(
            "pencil",
            &v,
            "n=,r=cnonce",
            &sf,
            &format!("c=biws,r={nonce},x=1"),
        );
        assert!(s.handle_client_final(msg.as_bytes()).is_ok());
        // ... and the exchange is over afterwards.
        assert!(matches!(
            s.handle_client_final(msg.as_bytes()),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            s.handle_client_first(b"n,,n=,r=x"),
            Err(AuthError::Malformed(_))
        ));

        type Make<'a> = Box<dyn Fn(&str, &str) -> String + 'a>;
        let bad: Vec<Make> = vec![
            // wrong nonce (client part / server part / truncated)
            Box::new(|sf, n| {
                client_final(
                    "pencil",
                    &v,
                    "n=,r=cnonce",
                    sf,
                    &format!("c=biws,r=X{}", &n[1..]),
                )
            }),
            Box::new(|sf, n| {
                client_final("pencil", &v, "n=,r=cnonce", sf, &format!("c=biws,r={n}X"))
            }),
            Box::new(|sf, n| {
                client_final(
                    "pencil",
                    &v,
                    "n=,r=cnonce",
                    sf,
                    &format!("c=biws,r={}", &n[..n.len() - 1]),
                )
            }),
            // channel binding must echo the gs2 header "n,,"
            Box::new(|sf, n| {
                client_final("pencil", &v, "n=,r=cnonce", sf, &format!("c=eSws,r={n}"))
            }),
            Box::new(|sf, n| client_final("pencil", &v, "n=,r=cnonce", sf, &format!("c=,r={n}"))),
            Box::new(|sf, n| client_final("pencil", &v, "n=,r=cnonce", sf, &format!("r={n}"))),
            Box::new(|sf, n| {
                client_final(
                    "pencil",
                    &v,
                    "n=,r=cnonce",
                    sf,
                    &format!("c=biws,r={n},bogus"),
                )
            }),
            // proof missing / not last / wrong length / not base64
            Box::new(|_, n| format!("c=biws,r={n}")),
            Box::new(|_, n| format!("c=biws,r={n},p=")),
            Box::new(|_, n| format!("c=biws,r={n},p={},x=1", B64.encode([0u8; 32]))),
            Box::new(|_, n| format!("c=biws,r={n},p={}", B64.encode([0u8; 31]))),
            Box::new(|_, n| format!("c=biws,r={n},p=!!!!")),
            Box::new(|_, _| String::new()),
        ];
        for (i, make) in bad.iter().enumerate() {
            let (mut s, sf, nonce) = start();
            let msg = make(&sf, &nonce);
            let err = s.handle_client_final(msg.as_bytes()).unwrap_err();
            assert!(
                matches!(err, AuthError::Malformed(_)),
                "case {i}: {msg} -> {err:?}"
            );
            // Dead after an error.
            assert!(s.handle_client_final(msg.as_bytes()).is_err());
        }

        // Well-formed but wrong proof: BadProof; flipped proof bit: BadProof.
        let (mut s, sf, nonce) = start();
        let msg = client_final(
            "wrong",
            &v,
            "n=,r=cnonce",
            &sf,
            &format!("c=biws,r={nonce}"),
        );
        assert_eq!(
            s.handle_client_final(msg.as_bytes()),
            Err(AuthError::BadProof)
        );
        let (mut s, sf, nonce) = start();
        let msg = client_final(
            "pencil",
            &v,
            "n=,r=cnonce",
            &sf,
            &format!("c=biws,r={nonce}"),
        );
        let mut proof = B64.decode(msg.rsplit_once("p=").unwrap().1).unwrap();
        proof[7] ^= 1;
        let msg = format!("c=biws,r={nonce},p={}", B64.encode(proof));
        assert_eq!(
            s.handle_client_final(msg.as_bytes()),
            Err(AuthError::BadProof)
        );

        // Final before first.
        let mut s = ScramServer::new(pencil());
        assert!(matches!(
            s.handle_client_final(b"c=biws,r=x,p=AAAA"),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn random_and_truncated_inputs_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5ca1ab1e);

        // A real client's messages, truncated and mutated.
        let mut client = ScramSha256::new(b"pencil", ChannelBinding::unsupported());
        let first = client.message().to_vec();
        let mut server = ScramServer::new(pencil());
        let server_first = server.handle_client_first(&first).unwrap();
        client.update(&server_first).unwrap();
        let fin = client.message().to_vec();

        for cut in 0..first.len() {
            let _ = ScramServer::new(pencil()).handle_client_first(&first[..cut]);
        }
        for cut in 0..fin.len() {
            let mut s = ScramServer::new(pencil());
            s.handle_client_first(&first).unwrap();
            // The client nonce matches but the server nonce differs, so nothing passes.
            assert!(s.handle_client_final(&fin[..cut]).is_err());
        }

        let alphabet = b"npyacrmsixv=,+/0123456789ABCDEFabcdef \x00\xff\xc3";
        for i in 0..20_000 {
            let len = rng.random_range(0..64);
            let mut msg = vec![0u8; len];
            if i % 2 == 0 {
                rng.fill_bytes(&mut msg);
            } else {
                for b in &mut msg {
                    *b = alphabet[rng.random_range(0..alphabet.len())];
                }
            }
            // Mutations of valid messages, too.
            let mut first_m = first.clone();
            let mut fin_m = fin.clone();
            let j = rng.random_range(0..first_m.len());
            first_m[j] = rng.random();
            let j = rng.random_range(0..fin_m.len());
            fin_m[j] = rng.random();

            let mut s = ScramServer::new(pencil());
            let _ = s.handle_client_first(&msg);
            let _ = s.handle_client_final(&msg);

            let mut s = ScramServer::new(ScramVerifier::dummy("x"));
            if s.handle_client_first(&first_m).is_ok() {
                assert!(s.handle_client_final(&msg).is_err());
            }

            let mut s = ScramServer::new(pencil());
            if s.handle_client_first(&msg).is_ok() {
                assert!(s.handle_client_final(&fin_m).is_err());
            }
            let mut s = ScramServer::new(pencil());
            s.handle_client_first(&first).unwrap();
            assert!(s.handle_client_final(&fin_m).is_err());
        }
    }
}
