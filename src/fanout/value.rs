//! Typed column values: what a type OID and format code say about how values of a column
//! compare, group and add up.
//!
//! Supported types, in text and binary format: `int2`, `int4`, `int8`, `oid`, `float4`,
//! `float8`, `numeric`, `text`, `varchar`, `bpchar` (trailing blanks ignored, as Postgres does),
//! `name`, `bytea` (text output must be `bytea_output = hex`), `bool`, `date`, `time`,
//! `timestamp`, `timestamptz` (text must be `DateStyle = ISO`), and `uuid`.
//!
//! Strings compare byte by byte, which is Postgres's order under the `C` collation (and
//! code-point order in UTF-8). Shards that sort with a linguistic collation (`en_US`, ICU)
//! produce streams in another order; the caller must then sort with `COLLATE "C"` on the
//! shards or keep such queries on one shard.

use std::cmp::Ordering;

use super::datetime;
use super::decimal::Numeric;
use super::error::{malformed, MergeError};
use super::wire::{Field, FORMAT_BINARY};

/// Type OIDs the merge understands.
pub mod oid {
    /// `bool`
    pub const BOOL: u32 = 16;
    /// `bytea`
    pub const BYTEA: u32 = 17;
    /// `name`
    pub const NAME: u32 = 19;
    /// `int8`
    pub const INT8: u32 = 20;
    /// `int2`
    pub const INT2: u32 = 21;
    /// `int4`
    pub const INT4: u32 = 23;
    /// `text`
    pub const TEXT: u32 = 25;
    /// `oid`
    pub const OID: u32 = 26;
    /// `float4`
    pub const FLOAT4: u32 = 700;
    /// `float8`
    pub const FLOAT8: u32 = 701;
    /// `bpchar` (`char(n)`)
    pub const BPCHAR: u32 = 1042;
    /// `varchar`
    pub const VARCHAR: u32 = 1043;
    /// `date`
    pub const DATE: u32 = 1082;
    /// `time`
    pub const TIME: u32 = 1083;
    /// `timestamp`
    pub const TIMESTAMP: u32 = 1114;
    /// `timestamptz`
    pub const TIMESTAMPTZ: u32 = 1184;
    /// `numeric`
    pub const NUMERIC: u32 = 1700;
    /// `uuid`
    pub const UUID: u32 = 2950;
}

/// How a column's values are read, by type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Int2,
    Int4,
    Int8,
    Oid,
    Float4,
    Float8,
    Numeric,
    Text,
    Bpchar,
    Bytea,
    Bool,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    Uuid,
}

impl Kind {
    pub(crate) fn of(type_oid: u32) -> Option<Kind> {
        Some(match type_oid {
            oid::INT2 => Kind::Int2,
            oid::INT4 => Kind::Int4,
            oid::INT8 => Kind::Int8,
            oid::OID => Kind::Oid,
            oid::FLOAT4 => Kind::Float4,
            oid::FLOAT8 => Kind::Float8,
            oid::NUMERIC => Kind::Numeric,
            oid::TEXT | oid::VARCHAR | oid::NAME => Kind::Text,
            oid::BPCHAR => Kind::Bpchar,
            oid::BYTEA => Kind::Bytea,
            oid::BOOL => Kind::Bool,
            oid::DATE => Kind::Date,
            oid::TIME => Kind::Time,
            oid::TIMESTAMP => Kind::Timestamp,
            oid::TIMESTAMPTZ => Kind::TimestampTz,
            oid::UUID => Kind::Uuid,
            _ => return None,
        })
    }
}

/// A column's type as far as the merge cares: its kind and whether values are binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ColType {
    pub kind: Kind,
    pub binary: bool,
}

impl ColType {
    /// The type of a described column, `None` when the merge cannot interpret it.
    pub(crate) fn of(f: &Field) -> Option<ColType> {
        Some(ColType {
            kind: Kind::of(f.type_oid)?,
            binary: f.format == FORMAT_BINARY,
        })
    }
}

/// A decoded non-NULL value, ordered as Postgres orders values of its type.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    Int(i64),
    /// Floats: NaN sorts above everything and equals NaN; -0 equals 0.
    Float(f64),
    Numeric(Numeric),
    Bytes(bytes::Bytes),
    Bool(bool),
    /// Dates, times and timestamps as a count of days or microseconds.
    Time(i128),
}

fn float_cmp(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

impl Value {
    /// Compares two values of the same column (values of different kinds never meet).
    pub(crate) fn cmp(&self, o: &Value) -> Ordering {
        match (self, o) {
            (Value::Int(a), Value::Int(b)) => a.cmp(b),
            (Value::Float(a), Value::Float(b)) => float_cmp(*a, *b),
            (Value::Numeric(a), Value::Numeric(b)) => a.cmp(b),
            (Value::Bytes(a), Value::Bytes(b)) => a.cmp(b),
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (Value::Time(a), Value::Time(b)) => a.cmp(b),
            _ => Ordering::Equal,
        }
    }

    /// Appends bytes that are equal exactly when the values are equal (for GROUP BY and
    /// DISTINCT).
    pub(crate) fn canonical(&self, out: &mut Vec<u8>) {
        match self {
            Value::Int(v) => {
                out.push(1);
                out.extend_from_slice(&v.to_be_bytes());
            }
            Value::Float(v) => {
                out.push(2);
                let v = if v.is_nan() {
                    f64::NAN
                } else if *v == 0.0 {
                    0.0
                } else {
                    *v
                };
                out.extend_from_slice(&v.to_bits().to_be_bytes());
            }
            Value::Numeric(n) => {
                out.push(3);
                let s = n.canonical();
                out.extend_from_slice(&(s.len() as u32).to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            Value::Bytes(b) => {
                out.push(4);
                out.extend_from_slice(&(b.len() as u32).to_be_bytes());
                out.extend_from_slice(b);
            }
            Value::Bool(b) => out.extend_from_slice(&[5, u8::from(*b)]),
            Value::Time(t) => {
                out.push(6);
                out.extend_from_slice(&t.to_be_bytes());
            }
        }
    }
}

fn int<const N: usize>(b: &[u8]) -> Option<[u8; N]> {
    b.try_into().ok()
}

/// Why a value of type `t` could not be read: a server setting the merge does not read, or
/// a malformed value.
fn bad(t: ColType, raw: &[u8], shard: usize) -> MergeError {
    let setting = match t.kind {
        _ if t.binary => None,
        Kind::Date | Kind::Timestamp | Kind::TimestampTz => Some(("DateStyle", "ISO")),
        Kind::Bytea => Some(("bytea_output", "hex")),
        _ => None,
    };
    if let Some((name, value)) = setting {
        return MergeError::unsupported(
            format!("{name} other than {value} in a multi-shard ORDER BY, GROUP BY or aggregate"),
            format!("SET {name} = {value}"),
        );
    }
    let shown = String::from_utf8_lossy(&raw[..raw.len().min(40)]).into_owned();
    let fmt = if t.binary { "binary" } else { "text" };
    malformed(
        shard,
        format!("cannot read {fmt} {:?} value {shown:?}", t.kind),
    )
}

fn utf8(t: ColType, b: &[u8], shard: usize) -> Result<&str, MergeError> {
    std::str::from_utf8(b).map_err(|_| bad(t, b, shard))
}

/// Decodes a non-NULL value of column type `t` that shard `shard` sent.
pub(crate) fn decode(t: ColType, raw: &bytes::Bytes, shard: usize) -> Result<Value, MergeError> {
    let b = &raw[..];
    let text = |b| utf8(t, b, shard);
    let v = if t.binary {
        match t.kind {
            Kind::Int2 => int::<2>(b).map(|x| Value::Int(i16::from_be_bytes(x).into())),
            Kind::Int4 => int::<4>(b).map(|x| Value::Int(i32::from_be_bytes(x).into())),
            Kind::Int8 => int::<8>(b).map(|x| Value::Int(i64::from_be_bytes(x))),
            Kind::Oid => int::<4>(b).map(|x| Value::Int(u32::from_be_bytes(x).into())),
            Kind::Float4 => int::<4>(b).map(|x| Value::Float(f32::from_be_bytes(x).into())),
            Kind::Float8 => int::<8>(b).map(|x| Value::Float(f64::from_be_bytes(x))),
            Kind::Numeric => Numeric::from_binary(b).map(Value::Numeric),
            Kind::Text | Kind::Bytea | Kind::Uuid => Some(Value::Bytes(raw.clone())),
            Kind::Bpchar => Some(Value::Bytes(trim_blanks(raw))),
            Kind::Bool => match b {
                [x] => Some(Value::Bool(*x != 0)),
                _ => None,
            },
            Kind::Date => int::<4>(b).map(|x| {
                Value::Time(match i32::from_be_bytes(x) {
                    i32::MIN => i128::MIN,
                    i32::MAX => i128::MAX,
                    d => d.into(),
                })
            }),
            Kind::Time => int::<8>(b).map(|x| Value::Time(i64::from_be_bytes(x).into())),
            Kind::Timestamp | Kind::TimestampTz => int::<8>(b).map(|x| {
                Value::Time(match i64::from_be_bytes(x) {
                    i64::MIN => i128::MIN,
                    i64::MAX => i128::MAX,
                    t => t.into(),
                })
            }),
        }
    } else {
        match t.kind {
            Kind::Int2 | Kind::Int4 | Kind::Int8 | Kind::Oid => {
                text(b)?.parse::<i64>().ok().map(Value::Int)
            }
            Kind::Float4 => parse_float::<f32>(text(b)?).map(|v| Value::Float(v.into())),
            Kind::Float8 => parse_float::<f64>(text(b)?).map(Value::Float),
            Kind::Numeric => Numeric::parse(text(b)?).map(Value::Numeric),
            Kind::Text | Kind::Uuid => Some(Value::Bytes(raw.clone())),
            Kind::Bpchar => Some(Value::Bytes(trim_blanks(raw))),
            // Lower-case hex digits sort like the bytes they encode.
            Kind::Bytea => b.starts_with(b"\\x").then(|| Value::Bytes(raw.slice(2..))),
            Kind::Bool => match b {
                b"t" => Some(Value::Bool(true)),
                b"f" => Some(Value::Bool(false)),
                _ => None,
            },
            Kind::Date => datetime::parse_date(text(b)?).map(Value::Time),
            Kind::Time => datetime::parse_time(text(b)?).map(Value::Time),
            Kind::Timestamp => datetime::parse_timestamp(text(b)?, false).map(Value::Time),
            Kind::TimestampTz => datetime::parse_timestamp(text(b)?, true).map(Value::Time),
        }
    };
    v.ok_or_else(|| bad(t, b, shard))
}

fn trim_blanks(raw: &bytes::Bytes) -> bytes::Bytes {
    let end = raw.iter().rposition(|&c| c != b' ').map_or(0, |i| i + 1);
    raw.slice(..end)
}

/// Reads `float8out` / `float4out` text (`NaN`, `Infinity`, `-Infinity`, `1e+21`).
pub(crate) fn parse_float<F: std::str::FromStr>(s: &str) -> Option<F> {
    let s = match s {
        "Infinity" => "inf",
        "-Infinity" => "-inf",
        "NaN" => "NaN",
        _ if s.bytes().any(|c| c.is_ascii_alphabetic() && c != b'e') => return None,
        _ => s,
    };
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn val(kind: Kind, binary: bool, raw: &[u8]) -> Value {
        decode(ColType { kind, binary }, &Bytes::copy_from_slice(raw), 0).unwrap()
    }

    fn t(kind: Kind, s: &str) -> Value {
        val(kind, false, s.as_bytes())
    }

    #[test]
    fn typed_text_order() {
        use Ordering::*;
        let cases = [
            (Kind::Int4, "-10", "9", Less),
            (
                Kind::Int8,
                "9223372036854775807",
                "-9223372036854775808",
                Greater,
            ),
            (Kind::Numeric, "-12.50", "3", Less),
            (Kind::Numeric, "10.0", "9.99", Greater),
            (Kind::Numeric, "1.0", "1.000", Equal),
            (Kind::Numeric, "NaN", "Infinity", Greater),
            (Kind::Numeric, "-Infinity", "-99999999999999999999", Less),
            (Kind::Float8, "NaN", "Infinity", Greater),
            (Kind::Float8, "-0", "0", Equal),
            (Kind::Float8, "1e+21", "999999999999999900000", Greater),
            (Kind::Float4, "1.1", "1.1", Equal),
            (Kind::Text, "B", "a", Less),
            (Kind::Text, "ab", "abc", Less),
            (Kind::Bpchar, "ab  ", "ab", Equal),
            (Kind::Bytea, "\\x00ff", "\\x0100", Less),
            (Kind::Bool, "f", "t", Less),
            (Kind::Date, "2024-01-02", "10000-01-01", Less),
            (Kind::Time, "09:00:00", "10:00:00", Less),
            (
                Kind::Timestamp,
                "2024-01-01 00:00:00.5",
                "2024-01-01 00:00:00",
                Greater,
            ),
            (
                Kind::TimestampTz,
                "2024-11-03 01:30:00-04",
                "2024-11-03 01:10:00-05",
                Less,
            ),
            (
                Kind::Uuid,
                "0f000000-0000-0000-0000-000000000000",
                "a0000000-0000-0000-0000-000000000000",
                Less,
            ),
        ];
        for (kind, a, b, want) in cases {
            assert_eq!(t(kind, a).cmp(&t(kind, b)), want, "{kind:?} {a} vs {b}");
        }
    }

    #[test]
    fn binary_values() {
        assert_eq!(
            val(Kind::Int2, true, &(-5i16).to_be_bytes()).cmp(&Value::Int(-5)),
            Ordering::Equal
        );
        assert!(matches!(
            val(Kind::Int4, true, &(-7i32).to_be_bytes()),
            Value::Int(-7)
        ));
        assert!(matches!(
            val(Kind::Int8, true, &i64::MIN.to_be_bytes()),
            Value::Int(i64::MIN)
        ));
        assert!(matches!(
            val(Kind::Oid, true, &u32::MAX.to_be_bytes()),
            Value::Int(4294967295)
        ));
        assert!(matches!(val(Kind::Bool, true, &[1]), Value::Bool(true)));
        let bad = ColType {
            kind: Kind::Int4,
            binary: true,
        };
        assert!(decode(bad, &Bytes::from_static(&[0, 1]), 0).is_err());
        let bad = ColType {
            kind: Kind::Int4,
            binary: false,
        };
        assert!(decode(bad, &Bytes::from_static(b"12x"), 0).is_err());
        assert!(decode(bad, &Bytes::from_static(&[0xff]), 0).is_err());
    }

    #[test]
    fn canonical_keys_follow_equality() {
        let key = |v: Value| {
            let mut k = Vec::new();
            v.canonical(&mut k);
            k
        };
        assert_eq!(key(t(Kind::Numeric, "1.50")), key(t(Kind::Numeric, "1.5")));
        assert_ne!(key(t(Kind::Numeric, "1.5")), key(t(Kind::Numeric, "15")));
        assert_eq!(key(t(Kind::Float8, "-0")), key(t(Kind::Float8, "0")));
        assert_eq!(key(t(Kind::Bpchar, "x ")), key(t(Kind::Bpchar, "x")));
        assert_ne!(key(t(Kind::Text, "x ")), key(t(Kind::Text, "x")));
    }
}
