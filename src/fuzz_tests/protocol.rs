//! Client bytes: framing, the startup packet, password / SASL messages and SCRAM, and the
//! extended-protocol messages (Parse, Bind, Describe, Close, Execute).

use bytes::BytesMut;
use proptest::prelude::*;

use super::{bounded, bytes, corrupted, cstring, fuzz, lying_i32, message};
use crate::auth::{md5_verify, ScramServer, ScramVerifier, Secret};
use crate::protocol::{
    bind_names, cstr, decode_password, param_oids, parse_body, rename_bind, split_frame,
    split_startup, target, FrameError, PasswordKind, MAX_STARTUP_LEN,
};
use crate::shard::route::Params;

/// Splits every frame off `input` (fed in chunks), checking what each call may return.
fn frames(input: &[u8], chunk: usize, max: usize) {
    let mut buf = BytesMut::new();
    let mut consumed = 0;
    for piece in input.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match split_frame(&mut buf, max) {
                Ok(Some(f)) => {
                    assert!(f.bytes.len() >= 5 && f.bytes.len() <= max);
                    let len = i32::from_be_bytes([f.bytes[1], f.bytes[2], f.bytes[3], f.bytes[4]]);
                    assert_eq!(len as usize + 1, f.bytes.len(), "frame length");
                    assert_eq!(f.body().len() + 5, f.bytes.len());
                    assert_eq!(&input[consumed..consumed + f.bytes.len()], &f.bytes[..]);
                    consumed += f.bytes.len();
                    assert_eq!(before - buf.len(), f.bytes.len());
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "Ok(None) consumes nothing");
                    break;
                }
                Err(FrameError::BadLength(_) | FrameError::TooLarge { .. }) => return,
            }
        }
    }
}

/// A stream of plausible client messages.
fn client_messages() -> impl Strategy<Value = Vec<u8>> + Clone {
    let one = prop_oneof![
        bytes(40).prop_map(|q| message(b'Q', &cstring(&q))),
        bytes(40).prop_map(|b| message(b'P', &b)),
        bytes(40).prop_map(|b| message(b'B', &b)),
        Just(message(b'S', b"")),
        Just(message(b'H', b"")),
        (any::<u8>(), bytes(20)).prop_map(|(t, b)| message(t, &b)),
    ];
    proptest::collection::vec(one, 0..6).prop_map(|v| v.concat())
}

#[test]
fn fuzz_split_frame() {
    let input = prop_oneof![bytes(300), corrupted(client_messages())];
    fuzz("split_frame", (input, 1usize..64), |(input, chunk)| {
        bounded(input.len(), 8, 24 * 1024, || frames(input, *chunk, 1 << 20));
        bounded(input.len(), 8, 24 * 1024, || frames(input, *chunk, 40));
        let mut s: &[u8] = input;
        while let Some(v) = bounded(input.len(), 1, 0, || cstr(&mut s)) {
            assert!(v.len() < input.len());
        }
    });
}

#[test]
fn regression_split_frame_reserves_no_announced_length() {
    // A header announcing 1 GiB reserves a bounded step, not the gigabyte.
    let mut buf = BytesMut::from(&[b'Q', 0x3f, 0xff, 0xff, 0xff, b's'][..]);
    let (r, allocated) = super::measure(|| split_frame(&mut buf, usize::MAX));
    assert!(matches!(r, Ok(None)));
    assert!(allocated <= 16 * 1024, "reserved {allocated} bytes");
}

/// A StartupMessage with these parameters (and version), or SSL / GSS / cancel requests.
fn startup_packets() -> impl Strategy<Value = Vec<u8>> + Clone {
    let startup = (
        prop_oneof![Just(196608i32), Just(196610), Just(131072), any::<i32>()],
        proptest::collection::vec((bytes(12), bytes(12)), 0..5),
        any::<bool>(),
    )
        .prop_map(|(version, params, terminated)| {
            let mut body = version.to_be_bytes().to_vec();
            for (k, v) in params {
                body.extend_from_slice(&cstring(&k));
                body.extend_from_slice(&cstring(&v));
            }
            if terminated {
                body.push(0);
            }
            let mut m = (body.len() as i32 + 4).to_be_bytes().to_vec();
            m.extend_from_slice(&body);
            m
        });
    let special = (
        prop_oneof![Just(80877103i32), Just(80877104), Just(80877102)],
        bytes(12),
    )
        .prop_map(|(code, tail)| {
            let mut m = ((tail.len() + 8) as i32).to_be_bytes().to_vec();
            m.extend_from_slice(&code.to_be_bytes());
            m.extend_from_slice(&tail);
            m
        });
    prop_oneof![startup, special]
}

#[test]
fn fuzz_split_startup() {
    let input = prop_oneof![bytes(64), corrupted(startup_packets())];
    fuzz("split_startup", input, |input| {
        let mut buf = BytesMut::from(&input[..]);
        bounded(input.len(), 16, 4096, || loop {
            let before = buf.len();
            match split_startup(&mut buf) {
                Ok(Some(_)) => assert!(buf.len() < before, "a packet consumes bytes"),
                Ok(None) => {
                    assert_eq!(buf.len(), before);
                    break;
                }
                Err(_) => break,
            }
        });
    });
}

/// The settings a client's startup packet asks for (its parameters and its `options`,
/// `-c name=value` with backslash escapes): no panic, bounded, every name a lowercase setting
/// name (one Postgres does not know, `-c user=x` say, is the server's to refuse), and the client's current settings start as that same shared copy.
#[test]
fn fuzz_startup_settings() {
    use crate::session::client_state::ClientState;
    use crate::sql::scan::is_setting_name;
    use std::collections::BTreeMap;
    let word = prop_oneof![
        proptest::sample::select(vec![
            "-c",
            "-c ",
            "--",
            "=",
            "\\",
            "\\ ",
            " ",
            "\t",
            "-",
            "_",
            ".",
            "a",
            "DateStyle",
            "search_path",
            "application_name",
            "user",
            "database",
            "options",
            "é",
        ])
        .prop_map(str::to_string),
        any::<char>().prop_map(|c| c.to_string()),
    ];
    let text = proptest::collection::vec(word, 0..16).prop_map(|v| v.concat());
    let params = proptest::collection::vec((text.clone(), text.clone()), 0..6);
    let input = (params, text);
    fuzz("startup settings", input, |(params, options)| {
        let mut map: BTreeMap<String, String> = params.iter().cloned().collect();
        map.insert("options".into(), options.clone());
        let len: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum();
        let c = bounded(len, 64, 4096, || ClientState::from_startup(&map));
        for k in c.startup.keys() {
            assert_eq!(*k, k.to_ascii_lowercase(), "{map:?}");
            assert!(is_setting_name(k), "{k:?} from {map:?}");
        }
        assert!(std::sync::Arc::ptr_eq(&c.startup, &c.settings));
    });
}

#[test]
fn regression_startup_params_need_their_terminator() {
    let mut body = 196608i32.to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0app\0");
    let mut m = (body.len() as i32 + 4).to_be_bytes().to_vec();
    m.extend_from_slice(&body);
    assert!(split_startup(&mut BytesMut::from(&m[..])).is_err());
    let mut huge = (MAX_STARTUP_LEN as i32 + 1).to_be_bytes().to_vec();
    huge.extend_from_slice(&196608i32.to_be_bytes());
    assert!(matches!(
        split_startup(&mut BytesMut::from(&huge[..])),
        Err(FrameError::TooLarge { .. })
    ));
}

/// Password, SASLInitialResponse and SASLResponse frames, their inner lengths free to lie.
fn password_frames() -> impl Strategy<Value = Vec<u8>> + Clone {
    prop_oneof![
        bytes(40).prop_map(|p| message(b'p', &cstring(&p))),
        (bytes(20), lying_i32(), bytes(40), any::<bool>()).prop_map(|(mech, n, data, honest)| {
            let mut body = cstring(&mech);
            let n = if honest { data.len() as i32 } else { n };
            body.extend_from_slice(&n.to_be_bytes());
            body.extend_from_slice(&data);
            message(b'p', &body)
        }),
        bytes(60).prop_map(|d| message(b'p', &d)),
    ]
}

#[test]
fn fuzz_decode_password() {
    let input = prop_oneof![bytes(80), corrupted(password_frames())];
    fuzz("decode_password", input, |input| {
        for kind in [
            PasswordKind::Password,
            PasswordKind::SaslInitial,
            PasswordKind::Sasl,
        ] {
            bounded(input.len(), 4, 256, || decode_password(input, kind));
        }
    });
}

#[test]
fn regression_sasl_initial_response_with_lying_length() {
    // The "advance out of bounds": a SASLInitialResponse announcing more data than
    // the message holds, or a negative length other than -1.
    for n in [1000i32, 6, 4, -2, i32::MAX, i32::MIN] {
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&n.to_be_bytes());
        body.extend_from_slice(b"n,,n=");
        let m = message(b'p', &body);
        assert_eq!(decode_password(&m, PasswordKind::SaslInitial), None, "{n}");
    }
    // A message length field that lies about the frame.
    let mut m = message(b'p', b"secret\0");
    m[4] = 200;
    assert_eq!(decode_password(&m, PasswordKind::Password), None);
    assert_eq!(decode_password(&[b'p', 0, 0, 0], PasswordKind::Sasl), None);
    // The honest forms still decode.
    let mut body = b"SCRAM-SHA-256\0".to_vec();
    body.extend_from_slice(&5i32.to_be_bytes());
    body.extend_from_slice(b"n,,n=");
    assert_eq!(
        decode_password(&message(b'p', &body), PasswordKind::SaslInitial),
        Some(crate::protocol::PasswordMessage::SaslInitial(
            "SCRAM-SHA-256".into(),
            b"n,,n=".to_vec()
        ))
    );
    let mut body = b"SCRAM-SHA-256\0".to_vec();
    body.extend_from_slice(&(-1i32).to_be_bytes());
    assert!(decode_password(&message(b'p', &body), PasswordKind::SaslInitial).is_some());
}

/// client-first and client-final messages, mostly well-formed.
fn scram_first() -> impl Strategy<Value = Vec<u8>> + Clone {
    prop_oneof![
        bytes(60),
        (
            prop_oneof![Just("n"), Just("y"), Just("p=x"), Just("")],
            prop_oneof![Just(""), Just("a=u")],
            "[ -~]{0,12}",
            "[ -~]{0,12}"
        )
            .prop_map(|(f, a, n, r)| format!("{f},{a},n={n},r={r}").into_bytes()),
    ]
}

fn scram_final() -> impl Strategy<Value = Vec<u8>> + Clone {
    prop_oneof![
        bytes(120),
        ("[ -~]{0,16}", "[ -~]{0,40}", "[A-Za-z0-9+/=]{0,48}")
            .prop_map(|(c, r, p)| format!("c={c},r={r},p={p}").into_bytes()),
    ]
}

#[test]
fn fuzz_scram_server() {
    let verifier = ScramVerifier::from_password("pencil", b"salt", 1);
    fuzz(
        "scram_server",
        (scram_first(), scram_final(), any::<bool>()),
        |(first, fin, keep_nonce)| {
            let mut s = ScramServer::new(verifier.clone());
            let server_first = bounded(first.len(), 8, 512, || s.handle_client_first(first));
            let mut fin = fin.clone();
            if let (Ok(sf), true) = (&server_first, keep_nonce) {
                // Splice the real nonce in, so the proof check itself is reached.
                let nonce = sf.split(|&b| b == b',').next().unwrap_or_default();
                fin = [b"c=biws,".as_slice(), nonce, b",", &fin].concat();
            }
            let _ = bounded(fin.len(), 8, 4096, || s.handle_client_final(&fin));
            let _ = s.handle_client_final(&fin);
        },
    );
}

#[test]
fn fuzz_secrets_and_md5() {
    fuzz("secrets", (bytes(120), bytes(40)), |(text, response)| {
        let text = String::from_utf8_lossy(text);
        bounded(text.len(), 8, 256, || ScramVerifier::parse(&text));
        let secret = bounded(text.len(), 8, 256, || Secret::parse("u", &text));
        if !matches!(secret, Secret::Plain(_)) || text.len() < 20 {
            md5_verify(&secret, "u", [1, 2, 3, 4], response);
        }
    });
}

/// Parse / Bind / Describe / Close / Execute bodies with counts and lengths free to lie.
fn extended_bodies() -> impl Strategy<Value = Vec<u8>> + Clone {
    let parse = (
        bytes(8),
        bytes(30),
        lying_i32(),
        proptest::collection::vec(any::<u32>(), 0..4),
    )
        .prop_map(|(name, q, n, oids)| {
            let mut b = cstring(&name);
            b.extend_from_slice(&cstring(&q));
            b.extend_from_slice(&(n as i16).to_be_bytes());
            for o in oids {
                b.extend_from_slice(&o.to_be_bytes());
            }
            b
        });
    let bind = (
        bytes(6),
        bytes(6),
        proptest::collection::vec(any::<i16>(), 0..4),
        proptest::collection::vec((lying_i32(), bytes(10)), 0..4),
        proptest::collection::vec(any::<i16>(), 0..4),
        (lying_i32(), lying_i32(), lying_i32(), any::<bool>()),
    )
        .prop_map(
            |(portal, stmt, formats, params, results, (nf, np, nr, honest))| {
                let mut b = cstring(&portal);
                b.extend_from_slice(&cstring(&stmt));
                let count = |real: usize, lie: i32| if honest { real as i16 } else { lie as i16 };
                b.extend_from_slice(&count(formats.len(), nf).to_be_bytes());
                for f in &formats {
                    b.extend_from_slice(&f.to_be_bytes());
                }
                b.extend_from_slice(&count(params.len(), np).to_be_bytes());
                for (len, v) in &params {
                    let len = if honest { v.len() as i32 } else { *len };
                    b.extend_from_slice(&len.to_be_bytes());
                    b.extend_from_slice(v);
                }
                b.extend_from_slice(&count(results.len(), nr).to_be_bytes());
                for r in &results {
                    b.extend_from_slice(&r.to_be_bytes());
                }
                b
            },
        );
    let target =
        (prop_oneof![Just(b'S'), Just(b'P'), any::<u8>()], bytes(10)).prop_map(|(kind, name)| {
            let mut b = vec![kind];
            b.extend_from_slice(&cstring(&name));
            b
        });
    let execute = (bytes(8), lying_i32()).prop_map(|(portal, n)| {
        let mut b = cstring(&portal);
        b.extend_from_slice(&n.to_be_bytes());
        b
    });
    prop_oneof![parse, bind, target, execute]
}

#[test]
fn fuzz_extended_messages() {
    let input = prop_oneof![bytes(80), corrupted(extended_bodies())];
    fuzz("extended", input, |body| {
        let n = body.len();
        if let Some(p) = bounded(n, 4, 64, || parse_body(body)) {
            assert!(p.rest.len() < n);
            let oids = bounded(n, 4, 64, || param_oids(p.rest));
            assert!(oids.len() * 4 <= p.rest.len());
            let again = crate::protocol::encode_parse("sg_1", p.rest);
            assert_eq!(parse_body(&again[5..]).map(|q| q.query), Some(p.query));
        }
        bounded(n, 4, 64, || param_oids(body));
        if let Some((_, _, at)) = bounded(n, 4, 64, || bind_names(body)) {
            assert!(at <= n);
            let mut renamed = bytes::BytesMut::new();
            assert!(
                rename_bind(&mut renamed, body, "sg_12345"),
                "names decoded once decode again"
            );
            assert_eq!(&renamed[renamed.len() - (n - at)..], &body[at..]);
        }
        bounded(n, 4, 64, || target(body));
        if let Some(p) = bounded(n, 24, 256, || Params::from_bind(body)) {
            assert!(p.values.len() * 4 <= n && p.formats.len() * 2 <= n);
        }
        if let Some(b) = bounded(n, 24, 256, || crate::protocol::BindParts::decode(body)) {
            // The parameter bytes follow the names; the result formats, when read, end the
            // body.
            let (_, _, at) = bind_names(body).expect("names of a decoded Bind");
            let end = at + b.params_bytes.len();
            assert_eq!(&body[at..end], b.params_bytes);
            if let Some(r) = b.result_formats {
                assert_eq!(end + 2 + 2 * r.len(), n);
            }
        }
    });
}

#[test]
fn regression_bind_counts_do_not_preallocate() {
    // A Bind announcing 32767 formats and parameters in 12 bytes allocates nothing like that.
    let mut b = b"\0\0".to_vec();
    b.extend_from_slice(&i16::MAX.to_be_bytes());
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
    let (p, allocated) = super::measure(|| Params::from_bind(&b));
    assert!(p.is_none());
    assert!(allocated < 1024, "allocated {allocated} bytes");
    let mut b = b"\0\0\0\0".to_vec();
    b.extend_from_slice(&i16::MAX.to_be_bytes());
    b.extend_from_slice(&[0, 0, 0, 1, b'x']);
    let (p, allocated) = super::measure(|| Params::from_bind(&b));
    assert!(p.is_none());
    assert!(allocated < 1024, "allocated {allocated} bytes");
}
