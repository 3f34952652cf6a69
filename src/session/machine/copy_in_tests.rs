//! `COPY ... FROM STDIN` on two shards, step by step: what the client and each shard get.
//! Which shard a key goes to is computed with the map itself (the ring's golden tests pin it).

use std::sync::Arc;

use bytes::BytesMut;

use super::{CopyIn, FLUSH_AT};
use crate::config::KeyType;
use crate::protocol::{sqlstate, Frame};
use crate::session::machine::shard_stream::{ShardEnd, ShardStream, Step};
use crate::session::machine::test_frames::{error, msg, ready, seen, tag};
use crate::shard::copy::CopySplitter;
use crate::shard::route::ShardMap;
use crate::shard::ShardId;

fn map() -> Arc<ShardMap> {
    Arc::new(crate::shard::two_shard_map())
}

/// A COPY in text format into a table sharded by its first column (`by_key`), or, not, one
/// replicated on both shards.
fn copy(by_key: bool) -> CopyIn {
    let key = by_key.then_some((0, KeyType::Bigint));
    CopyIn::new(
        map(),
        CopySplitter::new(false, '\t', false, key),
        by_key,
        &[ShardId::new(0), ShardId::new(1)],
    )
}

/// A text-format CopyInResponse of two columns.
fn started() -> Frame {
    msg(b'G', &[0, 0, 2, 0, 0, 0, 0])
}

fn data(rows: &str) -> Frame {
    msg(b'd', rows.as_bytes())
}

fn done() -> Frame {
    msg(b'c', b"")
}

/// What happens.
#[derive(Clone)]
enum Ev {
    Shard(usize, Frame),
    Client(Frame),
    Lost(usize),
    Cancel,
}
use Ev::{Cancel, Client, Lost, Shard};

/// What the client and each shard got.
struct Seen {
    steps: Vec<Step>,
    client: Vec<String>,
    shards: [Vec<String>; 2],
}

fn run(c: &mut CopyIn, script: Vec<Ev>) -> Seen {
    let mut out = BytesMut::new();
    let mut to_shards = [BytesMut::new(), BytesMut::new()];
    let steps = script
        .into_iter()
        .map(|ev| {
            let step = match ev {
                Shard(i, f) => c.on_message(i, f, &mut out),
                Client(f) => c.on_client(f, &mut out),
                Lost(i) => c.on_lost(i, &mut out),
                Cancel => c.on_cancel_requested(),
            };
            c.take_outgoing(&mut to_shards);
            step
        })
        .collect();
    // The caller gives the answer once the COPY is over.
    if let Some(answer) = c.take_answer() {
        assert!(c.finished());
        out.extend_from_slice(&answer);
    }
    let [a, b] = &mut to_shards;
    Seen {
        steps,
        client: seen(&mut out),
        shards: [seen(a), seen(b)],
    }
}

/// Each of `shards` answers the CopyFail the COPY sent it: the error, then ReadyForQuery.
fn failed_copy(shards: &[usize]) -> Vec<Ev> {
    shards
        .iter()
        .flat_map(|&i| {
            [
                Shard(i, error(sqlstate::QUERY_CANCELED)),
                Shard(i, ready(b'I')),
            ]
        })
        .collect()
}

/// Keys 1..=n in rows `k\tv`, and the rows each shard should get.
fn rows(n: u32) -> (String, [String; 2]) {
    let m = map();
    let mut all = String::new();
    let mut per = [String::new(), String::new()];
    for k in 1..=n {
        let row = format!("{k}\tv{k}\n");
        all.push_str(&row);
        let s = m
            .shard_of_text(KeyType::Bigint, k.to_string().as_bytes())
            .unwrap();
        per[s.index()].push_str(&row);
    }
    assert!(
        !per[0].is_empty() && !per[1].is_empty(),
        "both shards get rows"
    );
    (all, per)
}

#[test]
fn the_client_is_told_to_send_once_every_shard_started() {
    let mut c = copy(true);
    assert!(!c.wants_client());
    let s = run(&mut c, vec![Shard(1, started())]);
    assert!(s.client.is_empty(), "one shard is not enough");
    assert!(!c.wants_client());
    let s = run(&mut c, vec![Shard(0, started())]);
    assert_eq!(s.client, ["G"]);
    assert!(c.wants_client());
    assert!(!c.finished());
}

#[test]
fn rows_go_to_their_shards_and_the_counts_add_up() {
    let (all, per) = rows(20);
    let mut c = copy(true);
    let s = run(
        &mut c,
        vec![
            Shard(0, started()),
            Shard(1, started()),
            Client(data(&all[..7])),
            Client(data(&all[7..])),
            Client(done()),
        ],
    );
    assert_eq!(s.client, ["G"]);
    // Small COPYs go out in one CopyData each, at the client's CopyDone.
    assert_eq!(s.shards[0], [format!("d:{}", per[0]), "c".into()]);
    assert_eq!(s.shards[1], [format!("d:{}", per[1]), "c".into()]);
    assert!(!c.wants_client());
    let n0 = per[0].lines().count();
    let n1 = per[1].lines().count();
    let s = run(
        &mut c,
        vec![
            Shard(1, tag(&format!("COPY {n1}"))),
            Shard(1, ready(b'I')),
            Shard(0, tag(&format!("COPY {n0}"))),
        ],
    );
    assert!(
        s.client.is_empty(),
        "no answer before the last shard is ready"
    );
    let s = run(&mut c, vec![Shard(0, ready(b'I'))]);
    assert_eq!(s.client, ["C:COPY 20"]);
    assert!(c.finished() && !c.progress().failed());
    assert!(s.steps.iter().all(|s| *s == Step::Continue));
}

#[test]
fn a_replicated_table_gets_every_row_on_every_shard_counted_once() {
    let mut c = copy(false);
    let s = run(
        &mut c,
        vec![
            Shard(0, started()),
            Shard(1, started()),
            Client(data("1\ta\n2\tb\n")),
            Client(done()),
            Shard(0, tag("COPY 2")),
            Shard(0, ready(b'I')),
            Shard(1, tag("COPY 2")),
            Shard(1, ready(b'I')),
        ],
    );
    for shard in &s.shards {
        assert_eq!(*shard, ["d:1\ta\n2\tb\n", "c"]);
    }
    assert_eq!(s.client, ["G", "C:COPY 2"]);
}

#[test]
fn full_buffers_go_out_before_the_end() {
    let row = format!("1\t{}\n", "x".repeat(1000));
    let mut c = copy(true);
    let mut script = vec![Shard(0, started()), Shard(1, started())];
    let rows_needed = FLUSH_AT / row.len() + 1;
    for _ in 0..rows_needed {
        script.push(Client(data(&row)));
    }
    let s = run(&mut c, script);
    let shard = map().shard_of_text(KeyType::Bigint, b"1").unwrap();
    assert_eq!(
        s.shards[shard.index()].len(),
        1,
        "one CopyData once {FLUSH_AT} bytes are held"
    );
    assert!(s.shards[1 - shard.index()].is_empty());
}

#[test]
fn a_shard_that_cannot_start_fails_the_copy_before_the_client_sends() {
    let mut c = copy(true);
    let s = run(
        &mut c,
        vec![
            Shard(0, started()),
            Shard(1, error(sqlstate::UNDEFINED_TABLE)),
        ],
    );
    assert_eq!(s.shards[0], ["f"], "the started shard's COPY is failed");
    assert!(s.client.is_empty());
    assert!(!c.wants_client(), "the client is never told to send");
    let s = run(&mut c, vec![Shard(1, ready(b'I'))]);
    assert!(s.client.is_empty(), "shard 0 has not answered");
    let s = run(&mut c, failed_copy(&[0]));
    assert_eq!(s.client, ["E:42P01"], "the first error is the answer");
    assert!(c.finished());
}

#[test]
fn a_shard_still_starting_is_cancelled_when_another_fails() {
    let mut c = copy(true);
    let s = run(&mut c, vec![Shard(0, error(sqlstate::UNDEFINED_TABLE))]);
    assert_eq!(s.steps, [Step::CancelOthers]);
    // Its CopyInResponse arriving later gets a CopyFail at once.
    let s = run(&mut c, vec![Shard(1, started())]);
    assert_eq!(s.shards[1], ["f"]);
    assert!(s.client.is_empty());
}

#[test]
fn a_shard_error_in_the_middle_stops_the_others_at_once() {
    let (all, _) = rows(20);
    let mut c = copy(true);
    let s = run(
        &mut c,
        vec![
            Shard(0, started()),
            Shard(1, started()),
            Client(data(&all)),
            Shard(1, error(sqlstate::UNIQUE_VIOLATION)),
            Shard(1, ready(b'I')),
        ],
    );
    assert_eq!(
        s.shards[0],
        ["f"],
        "rows held back are dropped, the COPY failed"
    );
    assert!(s.shards[1].is_empty(), "the failed shard gets nothing more");
    assert_eq!(s.steps.last(), Some(&Step::Continue));
    // The client's data up to its CopyDone is read and dropped; the answer comes after it.
    let s = run(
        &mut c,
        [failed_copy(&[0]), vec![Client(data(&all))]].concat(),
    );
    assert!(s.client.is_empty() && s.shards.iter().all(Vec::is_empty));
    assert!(!c.finished(), "the client is still sending");
    let s = run(&mut c, vec![Client(done())]);
    assert_eq!(s.client, ["E:23505"]);
    assert!(s.shards.iter().all(Vec::is_empty));
    assert!(c.finished());
}

#[test]
fn the_clients_copy_fail_fails_every_shard() {
    let mut c = copy(true);
    let s = run(
        &mut c,
        vec![
            Shard(0, started()),
            Shard(1, started()),
            Client(data("1\ta\n")),
            Client(msg(b'f', b"no more\0")),
        ],
    );
    assert_eq!(s.shards, [vec!["f".to_string()], vec!["f".to_string()]]);
    let s = run(&mut c, failed_copy(&[0, 1]));
    assert_eq!(s.client, ["E:57014"]);
    assert!(c.finished());
}

#[test]
fn a_cancel_request_fails_the_copy_on_every_shard() {
    let mut c = copy(true);
    let s = run(
        &mut c,
        vec![Shard(0, started()), Shard(1, started()), Cancel],
    );
    assert_eq!(s.shards, [vec!["f".to_string()], vec!["f".to_string()]]);
    assert_eq!(
        s.steps.last(),
        Some(&Step::Continue),
        "no shard needs a cancel"
    );
    let s = run(
        &mut c,
        [failed_copy(&[0, 1]), vec![Client(done())]].concat(),
    );
    assert_eq!(s.client, ["E:57014"]);
    assert!(c.finished());
}

#[test]
fn a_lost_shard_fails_the_copy() {
    let mut c = copy(true);
    let s = run(
        &mut c,
        vec![Shard(0, started()), Shard(1, started()), Lost(1)],
    );
    assert_eq!(s.shards[0], ["f"]);
    assert!(s.shards[1].is_empty());
    assert_eq!(c.progress().shard_ends()[1], ShardEnd::Lost);
    let s = run(&mut c, [failed_copy(&[0]), vec![Client(done())]].concat());
    assert_eq!(s.client, ["E:08006"]);
}

#[test]
fn a_ready_for_query_in_the_middle_closes_that_shard() {
    let mut c = copy(true);
    let s = run(
        &mut c,
        vec![
            Shard(0, started()),
            Shard(1, started()),
            Shard(0, ready(b'I')),
        ],
    );
    assert_eq!(s.steps.last(), Some(&Step::Broken));
    assert_eq!(s.shards[1], ["f"], "the other shard's COPY is failed");
    assert!(s.shards[0].is_empty());
    let s = run(&mut c, [failed_copy(&[1]), vec![Client(done())]].concat());
    assert_eq!(s.client, ["E:08P01"]);
}

#[test]
fn an_unexpected_client_message_ends_the_copy_as_postgres_does() {
    let mut c = copy(true);
    let s = run(
        &mut c,
        vec![
            Shard(0, started()),
            Shard(1, started()),
            Client(msg(b'H', b"")),
            Client(msg(b'S', b"")),
            Client(msg(b'Q', b"SELECT 1\0")),
        ],
    );
    assert_eq!(s.shards, [vec!["f".to_string()], vec!["f".to_string()]]);
    assert!(
        !c.wants_client(),
        "the message after is not part of the COPY"
    );
    let s = run(&mut c, failed_copy(&[0, 1]));
    assert_eq!(s.client, ["E:08P01"]);
}

#[test]
fn a_row_without_a_valid_key_fails_the_copy() {
    let mut c = copy(true);
    let s = run(
        &mut c,
        vec![
            Shard(0, started()),
            Shard(1, started()),
            Client(data("not-a-number\tv\n")),
        ],
    );
    assert_eq!(s.shards, [vec!["f".to_string()], vec!["f".to_string()]]);
    let s = run(
        &mut c,
        [vec![Client(done())], failed_copy(&[0, 1])].concat(),
    );
    assert_eq!(s.client.len(), 1);
    assert!(
        s.client[0].starts_with("E:") && s.client[0] != "E:57014",
        "{:?}",
        s.client
    );
}

#[test]
fn shards_that_start_in_different_formats_fail_the_copy() {
    let mut c = copy(true);
    let s = run(
        &mut c,
        vec![
            Shard(0, started()),
            Shard(1, msg(b'G', &[1, 0, 2, 0, 1, 0, 1])),
        ],
    );
    assert_eq!(s.shards, [vec!["f".to_string()], vec!["f".to_string()]]);
    assert!(s.client.is_empty() && !c.wants_client());
}

#[test]
fn a_shard_that_answers_without_its_count_makes_the_copy_incomplete() {
    let mut c = copy(true);
    let s = run(
        &mut c,
        vec![
            Shard(0, started()),
            Shard(1, started()),
            Client(done()),
            Shard(0, tag("COPY 0")),
            Shard(0, ready(b'I')),
            Shard(1, ready(b'I')),
        ],
    );
    assert_eq!(s.client, ["G", "E:XX000"]);
}

#[test]
fn notices_reach_the_client_and_a_message_after_ready_closes_the_shard() {
    let mut c = copy(true);
    let notice = msg(b'N', b"SNOTICE\0\0");
    let s = run(
        &mut c,
        vec![
            Shard(0, notice),
            Shard(0, started()),
            Shard(1, started()),
            Client(done()),
            Shard(0, tag("COPY 0")),
            Shard(0, ready(b'I')),
            Shard(0, tag("COPY 0")),
        ],
    );
    assert_eq!(s.client, ["N", "G"]);
    assert_eq!(s.steps.last(), Some(&Step::Broken));
}
