//! `float4` / `float8` text output as Postgres 12+ prints it with the default
//! `extra_float_digits = 1`: the shortest digits that read back to the same value (Rust's
//! shortest formatting gives the same digits as Postgres's Ryu), in fixed notation for decimal
//! exponents from -4 up to (but excluding) 15 for `float8` and 6 for `float4`, otherwise as
//! `1.5e-05` / `1e+21`. A client that lowers `extra_float_digits` gets rounded output from
//! Postgres but shortest output from a merge.

/// `float8out`.
pub fn format_float8(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    pg_style(&format!("{v:e}"), 15)
}

/// `float4out`.
pub fn format_float4(v: f32) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    pg_style(&format!("{v:e}"), 6)
}

/// Rewrites Rust's shortest scientific form (`-1.25e-100`, `inf`) in Postgres's style.
fn pg_style(sci: &str, fixed_below: i32) -> String {
    let (neg, s) = match sci.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, sci),
    };
    let sign = if neg { "-" } else { "" };
    if s == "inf" {
        return format!("{sign}Infinity");
    }
    let (mantissa, exp) = s.split_once('e').unwrap_or((s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if digits == "0" {
        return format!("{sign}0");
    }
    let n = digits.len() as i32;
    if (-4..fixed_below).contains(&exp) {
        let body = if exp < 0 {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        } else if n <= exp + 1 {
            format!("{digits}{}", "0".repeat((exp + 1 - n) as usize))
        } else {
            let (int, frac) = digits.split_at((exp + 1) as usize);
            format!("{int}.{frac}")
        };
        return format!("{sign}{body}");
    }
    let (first, rest) = digits.split_at(1);
    let dot = if rest.is_empty() { "" } else { "." };
    let esign = if exp < 0 { '-' } else { '+' };
    format!("{sign}{first}{dot}{rest}e{esign}{:02}", exp.abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pairs checked against PostgreSQL 15 (`select x::float8, x::float4`).
    #[test]
    fn matches_postgres_output() {
        let cases: [(&str, &str, &str); 17] = [
            ("1e21", "1e+21", "1e+21"),
            ("1e15", "1e+15", "1e+15"),
            ("1e14", "100000000000000", "1e+14"),
            ("123456789012345.6", "123456789012345.6", "1.2345679e+14"),
            ("0.0001", "0.0001", "0.0001"),
            ("0.00001", "1e-05", "1e-05"),
            ("1.5e-5", "1.5e-05", "1.5e-05"),
            ("-0", "-0", "-0"),
            ("NaN", "NaN", "NaN"),
            ("-inf", "-Infinity", "-Infinity"),
            ("1e6", "1000000", "1e+06"),
            ("123456", "123456", "123456"),
            ("1234567", "1234567", "1.234567e+06"),
            ("0.1", "0.1", "0.1"),
            ("3.14159", "3.14159", "3.14159"),
            ("1e-45", "1e-45", "1e-45"),
            ("1e38", "1e+38", "1e+38"),
        ];
        for (input, f8, f4) in cases {
            let v: f64 = input.parse().unwrap();
            let w: f32 = input.parse().unwrap();
            assert_eq!(format_float8(v), f8, "float8 {input}");
            assert_eq!(format_float4(w), f4, "float4 {input}");
        }
        assert_eq!(format_float8(5e-324), "5e-324");
        assert_eq!(format_float8(f64::MAX), "1.7976931348623157e+308");
        assert_eq!(format_float8(-1.25e-100), "-1.25e-100");
        assert_eq!(format_float8(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(format_float8(f64::INFINITY), "Infinity");
    }
}
