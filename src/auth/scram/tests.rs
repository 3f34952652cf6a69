//! Unit tests of the SCRAM-SHA-256 exchange.

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

/// A server for "pencil" past the client-first message: (server, server-first, nonce).
fn start() -> (ScramServer, String, String) {
    let mut s = ScramServer::new(pencil());
    let sf = String::from_utf8(s.handle_client_first(b"n,,n=,r=cnonce").unwrap()).unwrap();
    let nonce = sf.split(',').next().unwrap()[2..].to_string();
    (s, sf, nonce)
}

#[test]
fn client_final_errors_and_tampering() {
    let v = pencil();

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
        Box::new(|sf, n| client_final("pencil", &v, "n=,r=cnonce", sf, &format!("c=biws,r={n}X"))),
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
        Box::new(|sf, n| client_final("pencil", &v, "n=,r=cnonce", sf, &format!("c=eSws,r={n}"))),
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
}

#[test]
fn client_final_with_a_wrong_proof_is_bad_proof() {
    let v = pencil();
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
