//! Decimal tests; expected values were produced by PostgreSQL 15.

use super::*;

fn num(s: &str) -> Numeric {
    Numeric::parse(s).unwrap_or_else(|| panic!("parse {s}"))
}

#[test]
fn parses_and_prints_like_numeric_out() {
    for s in [
        "0",
        "0.00",
        "-12.50",
        "3",
        "0.05",
        "123456789012345678901234567890.123",
        "NaN",
    ] {
        assert_eq!(num(s).to_string(), s);
    }
    assert_eq!(num("-0.00").to_string(), "0.00");
    assert_eq!(num("+7").to_string(), "7");
    assert_eq!(num(".5").to_string(), "0.5");
    assert_eq!(num("5.").to_string(), "5");
    assert_eq!(num("007.10").to_string(), "7.10");
    assert_eq!(num("-Infinity").to_string(), "-Infinity");
    assert_eq!(num("infinity").to_string(), "Infinity");
    for bad in ["", "-", ".", "1e5", "1.2.3", "abc", "1 2", "--1", "0x10"] {
        assert!(Numeric::parse(bad).is_none(), "{bad:?}");
    }
}

#[test]
fn compares_exactly_across_scales() {
    let ordered = [
        "-Infinity",
        "-100",
        "-12.50",
        "-12.499999999999999999999",
        "-0.001",
        "0",
        "0.0001",
        "0.05",
        "3",
        "3.0000000000000000000001",
        "10",
        "99999999999999999999999999",
        "Infinity",
        "NaN",
    ];
    for (i, a) in ordered.iter().enumerate() {
        for (j, b) in ordered.iter().enumerate() {
            assert_eq!(num(a).cmp(&num(b)), i.cmp(&j), "{a} vs {b}");
        }
    }
    assert_eq!(num("1.0"), num("1.000"));
    assert_eq!(num("-0.0"), num("0"));
    assert_eq!(num("NaN"), num("NaN"));
    assert_eq!(num("1.500").canonical(), "1.5");
    assert_eq!(num("0.000").canonical(), "0");
    assert_eq!(num("-20").canonical(), "-20");
}

#[test]
fn adds_exactly_keeping_display_scale() {
    let cases = [
        ("1.5", "-1.50", "0.00"),
        ("-0.5", "0.25", "-0.25"),
        ("999.99", "0.01", "1000.00"),
        ("-1", "1.000", "0.000"),
        ("12345678901234567890.1", "-12345678901234567890.2", "-0.1"),
        ("99999999999999999999", "1", "100000000000000000000"),
        ("-3.10", "0.5", "-2.60"),
        ("NaN", "1", "NaN"),
        ("Infinity", "-Infinity", "NaN"),
        ("Infinity", "-5", "Infinity"),
        ("-Infinity", "5", "-Infinity"),
    ];
    for (a, b, want) in cases {
        assert_eq!(num(a).add(&num(b)).to_string(), want, "{a} + {b}");
        assert_eq!(num(b).add(&num(a)).to_string(), want, "{b} + {a}");
    }
}

/// `s::numeric / c::numeric` in PostgreSQL 15, which is how `avg` finishes.
#[test]
fn divides_like_numeric_div() {
    let cases = [
        ("3", 2, "1.5000000000000000"),
        ("0", 2, "0.00000000000000000000"),
        ("-0.0000001", 3, "-0.000000033333333333333333"),
        ("1.50", 4, "0.37500000000000000000"),
        ("12345678901234567890123", 7, "1763668414462081127160"),
        ("99999", 1, "99999.000000000000"),
        ("10000", 3, "3333.3333333333333333"),
        ("9999", 3, "3333.0000000000000000"),
        ("-2", 3, "-0.66666666666666666667"),
        ("0.00", 5, "0.00000000000000000000"),
        ("1", 3, "0.33333333333333333333"),
        ("2", 3, "0.66666666666666666667"),
        ("1234.5678", 9, "137.1742000000000000"),
        (
            "5",
            9223372036854775807,
            "0.000000000000000000542101086242752217",
        ),
        (
            "0.0000000000000000000001",
            3,
            "0.0000000000000000000000333333333333333333",
        ),
        (
            "-0.000000000000000000000000000001",
            1,
            "-0.000000000000000000000000000001000000000000000000",
        ),
        ("123456789.123456789", 1000, "123456.789123456789"),
        ("9999.9999", 10000, "0.99999999000000000000"),
        ("13", 2, "6.5000000000000000"),
        ("100000", 1, "100000.000000000000"),
        ("10001", 2, "5000.5000000000000000"),
        ("NaN", 2, "NaN"),
        ("-Infinity", 2, "-Infinity"),
    ];
    for (s, c, want) in cases {
        assert_eq!(num(s).div_count(c).to_string(), want, "{s} / {c}");
    }
    assert_eq!(
        Decimal::from_i128(i128::MIN).to_string(),
        i128::MIN.to_string()
    );
}

/// Byte strings from `numeric_send` in PostgreSQL 15.
#[test]
fn binary_form_matches_numeric_send() {
    let cases: [(&str, &str); 11] = [
        ("0.00", "0000000000000002"),
        ("1", "00010000000000000001"),
        ("-12.50", "0002000040000002000c1388"),
        ("10000", "00010001000000000001"),
        ("0.0001", "0001ffff000000040001"),
        ("123456.789", "0003000100000003000c0d801ed2"),
        ("NaN", "00000000c0000000"),
        ("Infinity", "00000000d0000020"),
        ("-Infinity", "00000000f0000020"),
        ("0.05", "0001ffff0000000201f4"),
        ("100000000000000000000", "00010005000000000001"),
    ];
    for (text, hex) in cases {
        let bytes = hex::decode(hex).unwrap();
        let mut enc = Vec::new();
        num(text).to_binary(&mut enc);
        assert_eq!(hex::encode(&enc), hex, "encode {text}");
        assert_eq!(
            Numeric::from_binary(&bytes).unwrap().to_string(),
            text,
            "decode {hex}"
        );
    }
    // Digits past the display scale are truncated, like numeric_recv.
    let b = hex::decode("0002000000000001000c1388").unwrap();
    assert_eq!(Numeric::from_binary(&b).unwrap().to_string(), "12.5");
    for bad in [
        "",
        "0001",
        "000100000000000027",
        "0001000000000000ffff",
        "0000000012340000",
    ] {
        assert!(
            Numeric::from_binary(&hex::decode(bad).unwrap()).is_none(),
            "{bad}"
        );
    }
}
