//! Shard keys and their canonical bytes: the one form the hash ring sees, whatever way a key
//! arrived (SQL literal, text-format or binary-format Bind parameter).
//!
//! | type   | canonical bytes                  | text input (as PostgreSQL's input function) | binary input           |
//! |--------|----------------------------------|---------------------------------------------|------------------------|
//! | bigint | 8 bytes, big-endian i64          | `42`, ` -7 `, `+5`, `1_000`, `0x2A`, `0o52`, `0b101010` | 2, 4 or 8 bytes big-endian two's complement (int2/int4/int8) |
//! | text   | the UTF-8 bytes                  | the value itself                             | the value itself       |
//! | uuid   | the 16 bytes                     | `a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11`, any case, `{...}`, 32 bare hex digits, a hyphen after any group of 4 digits | 16 bytes |
//!
//! "Text input" is the *value* of a literal: the caller removes SQL quoting (`'O''Brien'` is
//! `O'Brien`). Text keys are compared byte for byte: no trimming, no case folding, no collation.
//! The text parsers accept what PostgreSQL 16's `int8in` / `uuid_in` accept (a superset of
//! older versions), so the proxy never refuses a key the server would take.

use crate::config::KeyType;
use crate::protocol::sqlstate;
use std::fmt;

/// A parsed shard key. [`ShardKey::canonical`] gives the bytes the ring hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShardKey<'a> {
    /// A bigint (or int2/int4) key.
    Bigint(i64),
    /// A text key (valid UTF-8).
    Text(&'a str),
    /// A uuid key, its 16 bytes in network order.
    Uuid([u8; 16]),
}

/// The canonical bytes of a key, without allocating: 8 or 16 inline bytes, or the borrowed text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canonical<'a> {
    /// A bigint: 8 bytes big-endian.
    Bigint([u8; 8]),
    /// A text key: its UTF-8 bytes.
    Text(&'a [u8]),
    /// A uuid: its 16 bytes.
    Uuid([u8; 16]),
}

impl Canonical<'_> {
    /// The bytes to hash.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Canonical::Bigint(b) => b,
            Canonical::Text(b) => b,
            Canonical::Uuid(b) => b,
        }
    }
}

impl AsRef<[u8]> for Canonical<'_> {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// A key value that is not valid for its shard key type. `Display` gives a message in
/// PostgreSQL's words; [`KeyError::sqlstate`] the matching SQLSTATE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Text that does not spell a value of the type.
    #[error("invalid input syntax for type {type_name}: \"{value}\"")]
    InvalidSyntax {
        /// `bigint` or `uuid`.
        type_name: &'static str,
        /// The offending input (lossy UTF-8, cut at 64 characters).
        value: String,
    },
    /// A bigint outside the i64 range.
    #[error("value \"{value}\" is out of range for type bigint")]
    OutOfRange {
        /// The offending input (lossy UTF-8, cut at 64 characters).
        value: String,
    },
    /// A binary-format value of the wrong length.
    #[error(
        "incorrect binary data format for type {type_name}: expected {expected} bytes, got {got}"
    )]
    BinaryFormat {
        /// `bigint` or `uuid`.
        type_name: &'static str,
        /// Accepted lengths, e.g. `2, 4 or 8`.
        expected: &'static str,
        /// Length received.
        got: usize,
    },
    /// A text key that is not valid UTF-8.
    #[error("invalid byte sequence for encoding \"UTF8\" in text shard key")]
    InvalidUtf8,
}

impl KeyError {
    /// The SQLSTATE PostgreSQL uses for the same problem.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            KeyError::InvalidSyntax { .. } => sqlstate::INVALID_TEXT_REPRESENTATION,
            KeyError::OutOfRange { .. } => sqlstate::NUMERIC_VALUE_OUT_OF_RANGE,
            KeyError::BinaryFormat { .. } => sqlstate::INVALID_BINARY_REPRESENTATION,
            KeyError::InvalidUtf8 => sqlstate::CHARACTER_NOT_IN_REPERTOIRE,
        }
    }
}

/// The offending input for an error message: lossy UTF-8, at most 64 characters.
fn shown(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    match text.char_indices().nth(64) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.into_owned(),
    }
}

impl<'a> ShardKey<'a> {
    /// Parses a SQL literal's value or a text-format Bind parameter.
    pub fn from_text(key_type: KeyType, value: &'a [u8]) -> Result<ShardKey<'a>, KeyError> {
        match key_type {
            KeyType::Bigint => parse_bigint(value).map(ShardKey::Bigint),
            KeyType::Text => text(value),
            KeyType::Uuid => parse_uuid(value).map(ShardKey::Uuid),
        }
    }

    /// Parses a binary-format Bind parameter: bigint as 2, 4 or 8 bytes big-endian two's
    /// complement (int2, int4, int8), text as its bytes, uuid as 16 bytes.
    pub fn from_binary(key_type: KeyType, value: &'a [u8]) -> Result<ShardKey<'a>, KeyError> {
        match key_type {
            KeyType::Bigint => match *value {
                [a, b] => Ok(ShardKey::Bigint(i16::from_be_bytes([a, b]).into())),
                [a, b, c, d] => Ok(ShardKey::Bigint(i32::from_be_bytes([a, b, c, d]).into())),
                _ => <[u8; 8]>::try_from(value)
                    .map(|b| ShardKey::Bigint(i64::from_be_bytes(b)))
                    .map_err(|_| KeyError::BinaryFormat {
                        type_name: "bigint",
                        expected: "2, 4 or 8",
                        got: value.len(),
                    }),
            },
            KeyType::Text => text(value),
            KeyType::Uuid => <[u8; 16]>::try_from(value)
                .map(ShardKey::Uuid)
                .map_err(|_| KeyError::BinaryFormat {
                    type_name: "uuid",
                    expected: "16",
                    got: value.len(),
                }),
        }
    }

    /// The type of this key.
    pub fn key_type(&self) -> KeyType {
        match self {
            ShardKey::Bigint(_) => KeyType::Bigint,
            ShardKey::Text(_) => KeyType::Text,
            ShardKey::Uuid(_) => KeyType::Uuid,
        }
    }

    /// The canonical bytes the ring hashes.
    pub fn canonical(&self) -> Canonical<'a> {
        match *self {
            ShardKey::Bigint(v) => Canonical::Bigint(v.to_be_bytes()),
            ShardKey::Text(s) => Canonical::Text(s.as_bytes()),
            ShardKey::Uuid(u) => Canonical::Uuid(u),
        }
    }
}

/// Shows the key as PostgreSQL prints it (uuid in lowercase hyphenated form).
impl fmt::Display for ShardKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShardKey::Bigint(v) => write!(f, "{v}"),
            ShardKey::Text(s) => f.write_str(s),
            ShardKey::Uuid(u) => {
                for (i, b) in u.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        f.write_str("-")?;
                    }
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    }
}

/// The name of a key type as PostgreSQL spells it: `bigint`, `text` or `uuid`.
pub fn key_type_name(key_type: KeyType) -> &'static str {
    match key_type {
        KeyType::Bigint => "bigint",
        KeyType::Text => "text",
        KeyType::Uuid => "uuid",
    }
}

fn text(value: &[u8]) -> Result<ShardKey<'_>, KeyError> {
    std::str::from_utf8(value)
        .map(ShardKey::Text)
        .map_err(|_| KeyError::InvalidUtf8)
}

/// PostgreSQL's `isspace` set for number input: space, \t, \n, \v, \f, \r.
fn is_pg_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// `int8in` of PostgreSQL 16: optional surrounding whitespace, an optional sign, then decimal
/// digits, or `0x`/`0o`/`0b` and hex/octal/binary digits; single underscores may separate
/// digits (not lead a decimal number, never trail).
fn parse_bigint(input: &[u8]) -> Result<i64, KeyError> {
    let start = input
        .iter()
        .position(|&b| !is_pg_space(b))
        .unwrap_or(input.len());
    let end = input
        .iter()
        .rposition(|&b| !is_pg_space(b))
        .map_or(start, |i| i + 1);
    let (negative, unsigned) = match &input[start..end] {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        s => (false, s),
    };
    let magnitude = magnitude(unsigned).ok_or_else(|| KeyError::InvalidSyntax {
        type_name: "bigint",
        value: shown(input),
    })?;
    let value = if negative { -magnitude } else { magnitude };
    i64::try_from(value).map_err(|_| KeyError::OutOfRange {
        value: shown(input),
    })
}

/// The value of unsigned digits with an optional radix prefix and underscores, or `None` on a
/// syntax error. It saturates just past the i64 range, so a too-large number is an out-of-range
/// error rather than a syntax error.
fn magnitude(s: &[u8]) -> Option<i128> {
    let (radix, body, prefixed) = match s {
        [b'0', b'x' | b'X', rest @ ..] => (16, rest, true),
        [b'0', b'o' | b'O', rest @ ..] => (8, rest, true),
        [b'0', b'b' | b'B', rest @ ..] => (2, rest, true),
        _ => (10, s, false),
    };
    const SATURATED: i128 = 1 << 64;
    let digit = |b: u8| char::from(b).to_digit(radix);
    let mut value: i128 = 0;
    let mut seen_digit = false;
    for (i, &b) in body.iter().enumerate() {
        if b == b'_' {
            // An underscore must be followed by a digit, and may start only a prefixed number.
            let followed = body.get(i + 1).copied().and_then(digit).is_some();
            if !followed || (!seen_digit && !prefixed) {
                return None;
            }
            continue;
        }
        let d = digit(b)?;
        value = (value * i128::from(radix) + i128::from(d)).min(SATURATED);
        seen_digit = true;
    }
    seen_digit.then_some(value)
}

/// `uuid_in`: optional braces around 32 hex digits, with an optional hyphen after any group of
/// four digits (not after the last one).
fn parse_uuid(input: &[u8]) -> Result<[u8; 16], KeyError> {
    let syntax = || KeyError::InvalidSyntax {
        type_name: "uuid",
        value: shown(input),
    };
    let (mut s, braces) = match input {
        [b'{', rest @ ..] => (rest, true),
        _ => (input, false),
    };
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        let [hi, lo, rest @ ..] = s else {
            return Err(syntax());
        };
        let hex = |c: u8| char::from(c).to_digit(16).ok_or_else(syntax);
        *byte = (hex(*hi)? * 16 + hex(*lo)?) as u8;
        s = rest;
        if i % 2 == 1 && i < 15 {
            if let [b'-', rest @ ..] = s {
                s = rest;
            }
        }
    }
    if braces {
        match s {
            [b'}', rest @ ..] => s = rest,
            _ => return Err(syntax()),
        }
    }
    if s.is_empty() {
        Ok(out)
    } else {
        Err(syntax())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bigint(text: &str) -> Result<i64, KeyError> {
        match ShardKey::from_text(KeyType::Bigint, text.as_bytes())? {
            ShardKey::Bigint(v) => Ok(v),
            other => panic!("not a bigint: {other:?}"),
        }
    }

    fn uuid(text: &str) -> Result<[u8; 16], KeyError> {
        match ShardKey::from_text(KeyType::Uuid, text.as_bytes())? {
            ShardKey::Uuid(v) => Ok(v),
            other => panic!("not a uuid: {other:?}"),
        }
    }

    const UUID_BYTES: [u8; 16] = [
        0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a,
        0x11,
    ];

    #[test]
    fn bigint_text_forms() {
        assert_eq!(bigint("42"), Ok(42));
        assert_eq!(bigint("-7"), Ok(-7));
        assert_eq!(bigint("+5"), Ok(5));
        assert_eq!(bigint("0"), Ok(0));
        assert_eq!(bigint("-0"), Ok(0));
        assert_eq!(bigint("007"), Ok(7));
        assert_eq!(bigint("  42\t\n"), Ok(42));
        assert_eq!(bigint("1_000_000"), Ok(1_000_000));
        assert_eq!(bigint("0x2A"), Ok(42));
        assert_eq!(bigint("-0X_2a"), Ok(-42));
        assert_eq!(bigint("0o52"), Ok(42));
        assert_eq!(bigint("0b101010"), Ok(42));
        assert_eq!(bigint("9223372036854775807"), Ok(i64::MAX));
        assert_eq!(bigint("-9223372036854775808"), Ok(i64::MIN));
        assert_eq!(bigint("-0x8000000000000000"), Ok(i64::MIN));
    }

    #[test]
    fn bigint_bad_text_is_a_postgres_style_error() {
        for bad in [
            "", " ", "abc", "4 2", "42.0", "1e3", "- 5", "--5", "_1", "1_", "1__0", "0x", "0x_",
            "0b2", "0o8", "12abc", "+", "\u{0}1",
        ] {
            let err = bigint(bad).expect_err(bad);
            assert_eq!(err.sqlstate(), "22P02", "{bad:?}");
            assert_eq!(
                err.to_string(),
                format!("invalid input syntax for type bigint: \"{bad}\"")
            );
        }
        let err = bigint("9223372036854775808").unwrap_err();
        assert_eq!(err.sqlstate(), "22003");
        assert_eq!(
            err.to_string(),
            "value \"9223372036854775808\" is out of range for type bigint"
        );
        for big in [
            "-9223372036854775809",
            "99999999999999999999999999999999999999999999",
            "0x8000000000000000",
        ] {
            assert_eq!(bigint(big).unwrap_err().sqlstate(), "22003", "{big}");
        }
    }

    #[test]
    fn bigint_binary_widths_widen_with_sign() {
        fn bin(b: &[u8]) -> Result<ShardKey<'_>, KeyError> {
            ShardKey::from_binary(KeyType::Bigint, b)
        }
        assert_eq!(bin(&[0, 42]), Ok(ShardKey::Bigint(42)));
        assert_eq!(bin(&[0xff, 0xf9]), Ok(ShardKey::Bigint(-7)));
        assert_eq!(bin(&[0, 0, 0, 42]), Ok(ShardKey::Bigint(42)));
        assert_eq!(bin(&[0xff, 0xff, 0xff, 0xf9]), Ok(ShardKey::Bigint(-7)));
        assert_eq!(bin(&42i64.to_be_bytes()), Ok(ShardKey::Bigint(42)));
        assert_eq!(bin(&i64::MIN.to_be_bytes()), Ok(ShardKey::Bigint(i64::MIN)));
        for len in [0, 1, 3, 5, 7, 9, 16] {
            let err = bin(&vec![0; len]).unwrap_err();
            assert_eq!(err.sqlstate(), "22P03");
            assert!(err.to_string().contains(&format!("got {len}")), "{err}");
        }
    }

    #[test]
    fn same_bigint_same_bytes_whatever_the_form() {
        let expected = [0, 0, 0, 0, 0, 0, 0, 42];
        let forms = [
            ShardKey::from_text(KeyType::Bigint, b"42"),
            ShardKey::from_text(KeyType::Bigint, b"+42"),
            ShardKey::from_text(KeyType::Bigint, b" 0x2a "),
            ShardKey::from_binary(KeyType::Bigint, &[0, 42]),
            ShardKey::from_binary(KeyType::Bigint, &[0, 0, 0, 42]),
            ShardKey::from_binary(KeyType::Bigint, &expected),
        ];
        for key in forms {
            assert_eq!(key.unwrap().canonical().as_bytes(), &expected);
        }
        let minus_seven = (-7i64).to_be_bytes();
        for key in [
            ShardKey::from_text(KeyType::Bigint, b"-7"),
            ShardKey::from_binary(KeyType::Bigint, &(-7i16).to_be_bytes()),
            ShardKey::from_binary(KeyType::Bigint, &(-7i32).to_be_bytes()),
        ] {
            assert_eq!(key.unwrap().canonical().as_bytes(), &minus_seven);
        }
    }

    #[test]
    fn uuid_text_forms() {
        for form in [
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "{a0eebc999c0b4ef8bb6d6bb9bd380a11}",
            "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
            "a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11",
        ] {
            assert_eq!(uuid(form), Ok(UUID_BYTES), "{form}");
        }
    }

    #[test]
    fn uuid_bad_text_is_a_postgres_style_error() {
        for bad in [
            "",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0e-ebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            " a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "-a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "é0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
        ] {
            let err = uuid(bad).expect_err(bad);
            assert_eq!(err.sqlstate(), "22P02");
            assert_eq!(
                err.to_string(),
                format!("invalid input syntax for type uuid: \"{bad}\"")
            );
        }
    }

    #[test]
    fn same_uuid_same_bytes_whatever_the_form() {
        let text = ShardKey::from_text(KeyType::Uuid, b"{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}");
        let binary = ShardKey::from_binary(KeyType::Uuid, &UUID_BYTES);
        assert_eq!(text, binary);
        assert_eq!(text.unwrap().canonical().as_bytes(), &UUID_BYTES);
        assert_eq!(
            binary.unwrap().to_string(),
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        );
        let err = ShardKey::from_binary(KeyType::Uuid, &UUID_BYTES[..15]).unwrap_err();
        assert_eq!(err.sqlstate(), "22P03");
    }

    #[test]
    fn text_keys_are_their_utf8_bytes() {
        let key = ShardKey::from_text(KeyType::Text, "Zürich ".as_bytes()).unwrap();
        assert_eq!(key, ShardKey::Text("Zürich "));
        assert_eq!(key.canonical().as_bytes(), "Zürich ".as_bytes());
        assert_eq!(
            ShardKey::from_binary(KeyType::Text, "Zürich ".as_bytes()),
            Ok(key)
        );
        assert_eq!(
            ShardKey::from_text(KeyType::Text, b""),
            Ok(ShardKey::Text(""))
        );
        let err = ShardKey::from_text(KeyType::Text, b"\xff").unwrap_err();
        assert_eq!(err, KeyError::InvalidUtf8);
        assert_eq!(err.sqlstate(), "22021");
    }

    #[test]
    fn forms_of_different_types_differ() {
        // The bigint 42, the text "42" and a uuid never share canonical bytes by accident.
        let int = ShardKey::Bigint(42).canonical();
        let text = ShardKey::Text("42").canonical();
        assert_ne!(int.as_bytes(), text.as_bytes());
        assert_eq!(ShardKey::Bigint(42).key_type(), KeyType::Bigint);
    }

    #[test]
    fn long_bad_values_are_cut_in_messages() {
        let long = "x".repeat(1000);
        let msg = bigint(&long).unwrap_err().to_string();
        assert!(msg.len() < 120, "{msg}");
        assert!(msg.ends_with("...\""), "{msg}");
    }
}
