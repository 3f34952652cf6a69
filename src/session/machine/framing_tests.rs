use bytes::BytesMut;

use super::{Extended, Framing};
use crate::fanout::wire::test_util::{complete, data_row, row_desc};
use crate::fanout::wire::{parse_data_row, RowDescription};
use crate::protocol::{split_frame, PgError};
use crate::session::machine::fan_out_read::FanOutRead;
use crate::session::machine::shard_stream::{ShardStream, Step};
use crate::sql::analyze::fanout::fan_out_query;

const INT8: u32 = 20;
const INT4: u32 = 23;

fn ext(parse: bool, describe: Option<u8>, formats: &[i16]) -> Extended {
    Extended {
        parse_complete: parse,
        describe,
        result_formats: formats.to_vec(),
        param_types: vec![INT4],
    }
}

/// The tags of the client's messages, and the messages.
fn messages(out: &mut BytesMut) -> (String, Vec<bytes::Bytes>) {
    let mut tags = String::new();
    let mut all = Vec::new();
    while let Some(f) = split_frame(out, usize::MAX).unwrap() {
        tags.push(f.tag as char);
        all.push(f.bytes);
    }
    (tags, all)
}

fn relay(f: &mut Framing, msgs: &[bytes::Bytes]) -> (String, Vec<bytes::Bytes>) {
    let mut merged = BytesMut::new();
    for m in msgs {
        merged.extend_from_slice(m);
    }
    let mut out = BytesMut::new();
    f.relay(&mut merged, &mut out).unwrap();
    messages(&mut out)
}

#[test]
fn parse_bind_describe_portal_come_before_the_rows() {
    let mut f = Framing::new(ext(true, Some(b'P'), &[]));
    assert!(!f.started());
    let t = row_desc(&[("id", INT8)]);
    let (tags, _) = relay(&mut f, &[t, data_row(&[Some("1")]), complete("SELECT 1")]);
    assert_eq!(tags, "12TDC");
    assert!(f.started());
}

#[test]
fn without_parse_or_describe_only_bind_complete_leads() {
    let mut f = Framing::new(ext(false, None, &[]));
    let (tags, _) = relay(
        &mut f,
        &[
            row_desc(&[("id", INT8)]),
            data_row(&[Some("1")]),
            complete("SELECT 1"),
        ],
    );
    assert_eq!(tags, "2DC");
}

#[test]
fn describe_statement_sends_parameters_then_unformatted_columns() {
    let mut f = Framing::new(ext(true, Some(b'S'), &[1]));
    let (tags, msgs) = relay(&mut f, &[row_desc(&[("id", INT8)]), complete("SELECT 0")]);
    assert_eq!(tags, "12tTC");
    let t = RowDescription::parse(&msgs[3]).unwrap();
    assert_eq!(
        t.fields[0].format, 0,
        "a statement's description has no format"
    );
    // The batch's parameter types when no shard sent a ParameterDescription.
    assert_eq!(&msgs[2][5..], &[0, 1, 0, 0, 0, 23]);
}

#[test]
fn a_shards_parameter_description_is_preferred() {
    let mut f = Framing::new(ext(false, Some(b'S'), &[]));
    let shard_t = bytes::Bytes::from_static(&[b't', 0, 0, 0, 10, 0, 1, 0, 0, 0, 20]);
    f.param_desc(shard_t.clone());
    f.param_desc(bytes::Bytes::from_static(&[b't', 0, 0, 0, 6, 0, 0]));
    let (_, msgs) = relay(&mut f, &[row_desc(&[("id", INT8)]), complete("SELECT 0")]);
    assert_eq!(msgs[1], shard_t);
}

#[test]
fn binary_results_are_converted_once_on_the_merged_rows() {
    let mut f = Framing::new(ext(false, Some(b'P'), &[1]));
    let (tags, msgs) = relay(
        &mut f,
        &[
            row_desc(&[("id", INT8)]),
            data_row(&[Some("258")]),
            data_row(&[None]),
            complete("SELECT 2"),
        ],
    );
    assert_eq!(tags, "2TDDC");
    let t = RowDescription::parse(&msgs[1]).unwrap();
    assert_eq!(t.fields[0].format, 1);
    let v = parse_data_row(&msgs[2], 1).unwrap();
    assert_eq!(v[0].as_deref(), Some(&258i64.to_be_bytes()[..]));
    assert_eq!(parse_data_row(&msgs[3], 1).unwrap()[0], None);
}

#[test]
fn per_column_formats_convert_only_binary_columns() {
    let mut f = Framing::new(ext(false, None, &[0, 1]));
    let (_, msgs) = relay(
        &mut f,
        &[
            row_desc(&[("a", INT8), ("b", INT4)]),
            data_row(&[Some("7"), Some("7")]),
        ],
    );
    let v = parse_data_row(&msgs[1], 2).unwrap();
    assert_eq!(v[0].as_deref(), Some(&b"7"[..]));
    assert_eq!(v[1].as_deref(), Some(&7i32.to_be_bytes()[..]));
}

#[test]
fn a_format_count_that_does_not_match_the_columns_is_a_protocol_violation() {
    let mut f = Framing::new(ext(false, None, &[0, 1, 0]));
    let mut merged = BytesMut::from(&row_desc(&[("a", INT8)])[..]);
    let e = f.relay(&mut merged, &mut BytesMut::new()).unwrap_err();
    assert_eq!(e.code, "08P01");
    assert!(!f.started());
}

#[test]
fn a_type_without_a_binary_form_is_refused_with_0a000() {
    let mut f = Framing::new(ext(false, None, &[1]));
    let mut merged = BytesMut::new();
    merged.extend_from_slice(&row_desc(&[("x", 600)])); // point
    merged.extend_from_slice(&data_row(&[Some("(1,2)")]));
    let e = f.relay(&mut merged, &mut BytesMut::new()).unwrap_err();
    assert_eq!(e.code, "0A000");
    assert!(e.hint.is_some());
}

#[test]
fn a_write_without_rows_answers_no_data() {
    for (describe, want) in [(Some(b'S'), "12tnC"), (Some(b'P'), "12nC"), (None, "12C")] {
        let mut f = Framing::new(ext(true, describe, &[]));
        let (tags, _) = relay(&mut f, &[complete("INSERT 0 3")]);
        assert_eq!(tags, want);
        assert!(f.started());
    }
}

#[test]
fn an_error_goes_through_without_a_preamble() {
    let mut f = Framing::new(ext(true, Some(b'S'), &[]));
    let mut e = BytesMut::new();
    PgError::error("23505", "duplicate").encode(&mut e);
    let (tags, _) = relay(&mut f, &[e.freeze()]);
    assert_eq!(tags, "E");
    assert!(!f.started(), "a named statement is not registered");
}

#[test]
fn the_extended_machine_ignores_parse_and_bind_complete_and_frames_the_merge() {
    let spec = fan_out_query("SELECT id FROM t ORDER BY id").unwrap().spec;
    let mut m = FanOutRead::new(spec, 2, usize::MAX).extended(ext(true, Some(b'P'), &[1]));
    let mut out = BytesMut::new();
    let t = row_desc(&[("id", INT8)]);
    let one = |tag: u8| bytes::Bytes::from(vec![tag, 0, 0, 0, 4]);
    let script: Vec<(usize, bytes::Bytes)> = vec![
        (0, one(b'1')),
        (1, one(b'1')),
        (0, bytes::Bytes::from_static(&[b't', 0, 0, 0, 6, 0, 0])),
        (0, t.clone()),
        (1, t),
        (0, one(b'2')),
        (1, one(b'2')),
        (0, data_row(&[Some("2")])),
        (1, data_row(&[Some("1")])),
        (0, complete("SELECT 1")),
        (1, complete("SELECT 1")),
        (0, bytes::Bytes::from_static(b"Z\0\0\0\x05I")),
        (1, bytes::Bytes::from_static(b"Z\0\0\0\x05I")),
    ];
    for (i, msg) in script {
        let frame = crate::protocol::Frame {
            tag: msg[0],
            bytes: msg,
        };
        assert_eq!(m.on_message(i, frame, &mut out), Step::Continue);
    }
    assert!(m.parse_answered() && !m.progress().failed());
    let (tags, msgs) = messages(&mut out);
    assert_eq!(tags, "12TDDC");
    let first = parse_data_row(&msgs[3], 1).unwrap();
    assert_eq!(first[0].as_deref(), Some(&1i64.to_be_bytes()[..]));
}

#[test]
fn the_simple_protocol_machine_refuses_extended_answers() {
    let spec = fan_out_query("SELECT id FROM t").unwrap().spec;
    let mut m = FanOutRead::new(spec, 1, usize::MAX);
    let frame = crate::protocol::Frame {
        tag: b'1',
        bytes: bytes::Bytes::from_static(&[b'1', 0, 0, 0, 4]),
    };
    assert_eq!(m.on_message(0, frame, &mut BytesMut::new()), Step::Broken);
}
