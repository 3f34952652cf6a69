use super::*;
use crate::config::{Config, KeyType};
use crate::shard::ShardKey;

/// A database with the given (name, weight) shards and 256 virtual nodes.
fn db(shards: &[(&str, u32)]) -> DatabaseConfig {
    let mut text = String::from("[[databases]]\nname = \"app\"\n");
    for (i, (name, weight)) in shards.iter().enumerate() {
        text.push_str(&format!(
            "[[databases.shards]]\nname = \"{name}\"\nprimary = \"127.0.0.1:{}\"\nweight = {weight}\n",
            5432 + i
        ));
    }
    let mut config = Config::parse(&text, "test").unwrap();
    config.databases.remove(0)
}

fn three() -> DatabaseConfig {
    db(&[("s0", 1), ("s1", 1), ("s2", 1)])
}

fn bigint_bytes(v: i64) -> [u8; 8] {
    v.to_be_bytes()
}

/// Per-shard key counts for bigint keys 1..=n.
fn counts(ring: &Ring, n: i64) -> Vec<usize> {
    let mut counts = vec![0; ring.shard_names().len()];
    for k in 1..=n {
        counts[ring.shard_for(&bigint_bytes(k)).index()] += 1;
    }
    counts
}

#[test]
fn siphash_2_4_matches_the_reference_vectors() {
    // From the SipHash paper's appendix / reference `vectors.h`: key 00 01 .. 0f,
    // message 00 01 .. (n-1), output bytes.
    let vectors: [(usize, [u8; 8]); 5] = [
        (0, [0x31, 0x0e, 0x0e, 0xdd, 0x47, 0xdb, 0x6f, 0x72]),
        (1, [0xfd, 0x67, 0xdc, 0x93, 0xc5, 0x39, 0xf8, 0x74]),
        (7, [0x37, 0xd1, 0x01, 0x8b, 0xf5, 0x00, 0x02, 0xab]),
        (8, [0x62, 0x24, 0x93, 0x9a, 0x79, 0xf5, 0xf5, 0x93]),
        (15, [0xe5, 0x45, 0xbe, 0x49, 0x61, 0xca, 0x29, 0xa1]),
    ];
    let key: [u8; 16] = std::array::from_fn(|i| i as u8);
    let message: Vec<u8> = (0..64).collect();
    for (n, expected) in vectors {
        let got = SipHasher24::new_with_key(&key).hash(&message[..n]);
        assert_eq!(got, u64::from_le_bytes(expected), "message length {n}");
    }
}

#[test]
fn golden_hashes() {
    // The zero-key hash and the virtual-node encoding, pinned (and checked against an
    // independent implementation of the specification in the module docs).
    assert_eq!(hash64(b""), 0x1e924b9d737700d7);
    assert_eq!(hash64(&42i64.to_be_bytes()), 0x260d52c3dc8ae7ab);
    assert_eq!(vnode_point("s0", 0), 0x596b8de228538dd6);
    assert_eq!(vnode_point("s1", 255), 0x299835a09cc66ef1);
}

/// The shard of fixed keys under a fixed 3-shard map (s0, s1, s2, weight 1, 256 virtual
/// nodes). These must never change: every deployed cluster stores its rows by them.
#[test]
fn golden_shards() {
    let ring = Ring::new(&three());
    let bigints: [(&str, &str); 10] = [
        ("0", "s2"),
        ("1", "s2"),
        ("2", "s1"),
        ("3", "s1"),
        ("42", "s1"),
        ("-1", "s1"),
        ("1000", "s2"),
        ("123456789", "s0"),
        ("9223372036854775807", "s0"),
        ("-9223372036854775808", "s1"),
    ];
    let texts: [(&str, &str); 10] = [
        ("", "s2"),
        ("a", "s2"),
        ("alice", "s0"),
        ("bob", "s1"),
        ("carol@example.com", "s2"),
        ("Zürich", "s0"),
        ("customer-0001", "s1"),
        ("customer-0002", "s0"),
        ("42", "s0"),
        ("the quick brown fox jumps over the lazy dog", "s2"),
    ];
    let uuids: [(&str, &str); 10] = [
        ("00000000-0000-0000-0000-000000000000", "s0"),
        ("ffffffff-ffff-ffff-ffff-ffffffffffff", "s2"),
        ("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "s2"),
        ("123e4567-e89b-12d3-a456-426614174000", "s0"),
        ("550e8400-e29b-41d4-a716-446655440000", "s2"),
        ("6ba7b810-9dad-11d1-80b4-00c04fd430c8", "s0"),
        ("6ba7b811-9dad-11d1-80b4-00c04fd430c8", "s0"),
        ("f47ac10b-58cc-4372-a567-0e02b2c3d479", "s0"),
        ("01890a5d-ac96-774b-bcce-b302099a8057", "s0"),
        ("c232ab00-9414-11ec-b3c8-9f6bdeced846", "s2"),
    ];
    let mut failures = Vec::new();
    for (key_type, cases) in [
        (KeyType::Bigint, &bigints),
        (KeyType::Text, &texts),
        (KeyType::Uuid, &uuids),
    ] {
        for (key, expected) in cases.iter() {
            let key = ShardKey::from_text(key_type, key.as_bytes()).unwrap();
            let got = ring.shard_name_for(key.canonical().as_bytes());
            if got != *expected {
                failures.push(format!(
                    "{key_type:?} {key}: expected {expected}, got {got}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn order_of_shards_in_the_file_does_not_matter() {
    let orders = [
        db(&[("s0", 1), ("s1", 1), ("s2", 2)]),
        db(&[("s2", 2), ("s0", 1), ("s1", 1)]),
        db(&[("s1", 1), ("s2", 2), ("s0", 1)]),
    ];
    let rings: Vec<Ring> = orders.iter().map(Ring::new).collect();
    for k in 0..20_000 {
        let key = bigint_bytes(k);
        let name = rings[0].shard_name_for(&key);
        for ring in &rings[1..] {
            assert_eq!(ring.shard_name_for(&key), name, "key {k}");
        }
    }
    // Indexes follow each file's own order.
    assert_eq!(
        rings[1].shard_names()[rings[1].shard_for(&bigint_bytes(7)).index()],
        rings[0].shard_name_for(&bigint_bytes(7))
    );
}

#[test]
fn adding_a_fourth_shard_moves_a_quarter_of_the_keys_all_to_it() {
    let before = Ring::new(&three());
    let after = Ring::new(&db(&[("s0", 1), ("s1", 1), ("s2", 1), ("s3", 1)]));
    let n = 100_000;
    let mut moved = 0;
    for k in 1..=n {
        let key = bigint_bytes(k);
        let (old, new) = (before.shard_name_for(&key), after.shard_name_for(&key));
        if old != new {
            assert_eq!(new, "s3", "key {k} moved from {old} to {new}");
            moved += 1;
        }
    }
    let share = moved as f64 / n as f64;
    assert!((0.18..0.32).contains(&share), "moved {share}");
}

#[test]
fn three_equal_shards_share_keys_evenly() {
    let ring = Ring::new(&three());
    let n = 100_000;
    for (shard, count) in counts(&ring, n).into_iter().enumerate() {
        let share = count as f64 / n as f64;
        assert!(
            (share - 1.0 / 3.0).abs() <= 0.1 / 3.0,
            "shard {shard} has {share} of the keys"
        );
    }
    // Text and uuid-like keys too.
    let mut text_counts = [0usize; 3];
    for k in 0..30_000 {
        text_counts[ring.shard_for(format!("user-{k}").as_bytes()).index()] += 1;
    }
    for count in text_counts {
        assert!((9_000..11_000).contains(&count), "{text_counts:?}");
    }
}

#[test]
fn weight_two_gets_twice_the_share() {
    let ring = Ring::new(&db(&[("s0", 1), ("s1", 2), ("s2", 1)]));
    let c = counts(&ring, 100_000);
    let ratio = |a: usize, b: usize| a as f64 / b as f64;
    assert!((1.7..2.3).contains(&ratio(c[1], c[0])), "{c:?}");
    assert!((1.7..2.3).contains(&ratio(c[1], c[2])), "{c:?}");
}

#[test]
fn raising_a_weight_only_moves_keys_to_that_shard() {
    let before = Ring::new(&three());
    let after = Ring::new(&db(&[("s0", 1), ("s1", 2), ("s2", 1)]));
    for k in 0..20_000 {
        let key = bigint_bytes(k);
        let (old, new) = (before.shard_name_for(&key), after.shard_name_for(&key));
        assert!(old == new || new == "s1", "key {k}: {old} -> {new}");
    }
}

#[test]
fn points_agree_with_the_crate_ring() {
    let ring = Ring::new(&db(&[("s0", 1), ("s1", 3), ("s2", 1), ("b", 2)]));
    let points = ring.points();
    assert_eq!(points.len(), 7 * 256);
    assert!(points.windows(2).all(|w| w[0].at <= w[1].at));
    let by_points = |h: u64| {
        let i = points.partition_point(|p| p.at < h);
        points.get(i).unwrap_or(&points[0]).shard
    };
    for k in 0..50_000 {
        let key = bigint_bytes(k * 7_919);
        assert_eq!(by_points(hash64(&key)), ring.shard_for(&key), "key {k}");
    }
    // The wrap-around: past the last point belongs to the first.
    let last = points[points.len() - 1].at;
    assert_eq!(by_points(last.wrapping_add(1)), points[0].shard);
}

#[test]
fn a_single_shard_owns_everything_and_no_shard_is_not_a_panic() {
    let one = Ring::new(&db(&[("only", 1)]));
    assert!((0..1000).all(|k| one.shard_name_for(&bigint_bytes(k)) == "only"));
    let none = Ring::new(&db(&[]));
    assert_eq!(none.shard_for(b"x"), ShardId::new(0));
    assert_eq!(none.shard_name_for(b"x"), "");
    assert!(format!("{none:?}").contains("points: 0"));
}
