//! Date and time values in Postgres's ISO text output (`DateStyle = ISO`, the default), read as
//! numbers so they compare correctly where their text would not: years beyond 9999, BC dates,
//! and `timestamptz` values printed with different UTC offsets (the repeated hour when
//! daylight saving time ends). Other DateStyles are not understood (`None`).

/// Microseconds per second.
const USEC: i128 = 1_000_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (astronomical year: 1 BC = 0).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn number(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn infinity(s: &str) -> Option<i128> {
    match s {
        "infinity" => Some(i128::MAX),
        "-infinity" => Some(i128::MIN),
        _ => None,
    }
}

/// `YYYY-MM-DD` (year of four or more digits) in days; `bc` turns year y into 1 - y.
fn date_days(s: &str, bc: bool) -> Option<i64> {
    let mut it = s.split('-');
    let (y, m, d) = (
        number(it.next()?)?,
        number(it.next()?)?,
        number(it.next()?)?,
    );
    if it.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let y = if bc { 1 - y } else { y };
    Some(days_from_civil(y, m, d))
}

/// `HH:MM:SS[.ffffff]` in microseconds.
fn time_usec(s: &str) -> Option<i128> {
    let (hms, frac) = s.split_once('.').unwrap_or((s, ""));
    let mut it = hms.split(':');
    let (h, m, sec) = (
        number(it.next()?)?,
        number(it.next()?)?,
        number(it.next()?)?,
    );
    if it.next().is_some() || frac.len() > 6 || (!frac.is_empty() && number(frac).is_none()) {
        return None;
    }
    let micros = if frac.is_empty() {
        0
    } else {
        number(frac)? * 10i64.pow(6 - frac.len() as u32)
    };
    Some(((h * 60 + m) * 60 + sec) as i128 * USEC + micros as i128)
}

/// A UTC offset `+HH[:MM[:SS]]` in seconds.
fn offset_secs(s: &str) -> Option<i128> {
    let (neg, rest) = match s.as_bytes().first()? {
        b'+' => (false, &s[1..]),
        b'-' => (true, &s[1..]),
        _ => return None,
    };
    let mut secs = 0i128;
    let mut parts = 0;
    for (i, p) in rest.split(':').enumerate() {
        if i > 2 {
            return None;
        }
        secs += number(p)? as i128 * [3600, 60, 1][i];
        parts += 1;
    }
    (parts > 0).then_some(if neg { -secs } else { secs })
}

fn split_bc(s: &str) -> (&str, bool) {
    match s.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (s, false),
    }
}

/// A `date` as days since 1970-01-01 (`±infinity` as the extreme values).
pub fn parse_date(s: &str) -> Option<i128> {
    if let Some(v) = infinity(s) {
        return Some(v);
    }
    let (s, bc) = split_bc(s);
    date_days(s, bc).map(i128::from)
}

/// A `time` as microseconds since midnight.
pub fn parse_time(s: &str) -> Option<i128> {
    time_usec(s)
}

/// A `timestamp` (`with_tz = false`) or `timestamptz` as microseconds since 1970-01-01 UTC
/// (`±infinity` as the extreme values).
pub fn parse_timestamp(s: &str, with_tz: bool) -> Option<i128> {
    if let Some(v) = infinity(s) {
        return Some(v);
    }
    let (s, bc) = split_bc(s);
    let (date, time) = s.split_once(' ')?;
    let (time, offset) = if with_tz {
        let at = time.find(['+', '-'])?;
        (&time[..at], offset_secs(&time[at..])?)
    } else {
        (time, 0)
    };
    let days = date_days(date, bc)? as i128;
    Some(days * 86_400 * USEC + time_usec(time)? - offset * USEC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_order_across_eras() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2000-03-01"), Some(11_017));
        let bc = parse_date("0044-03-15 BC").unwrap();
        let ad = parse_date("0001-01-01").unwrap();
        let big = parse_date("10000-01-01").unwrap();
        assert!(bc < ad && ad < parse_date("9999-12-31").unwrap());
        assert!(parse_date("9999-12-31").unwrap() < big);
        assert_eq!(parse_date("0001-12-31 BC").unwrap() + 1, ad);
        assert!(parse_date("-infinity").unwrap() < bc);
        assert!(parse_date("infinity").unwrap() > big);
        assert_eq!(parse_date("01/02/2024"), None);
        assert_eq!(parse_date("2024-13-01"), None);
    }

    #[test]
    fn timestamps_compare_as_instants() {
        // The repeated hour in America/New_York, as Postgres prints it: text order is wrong.
        let first = parse_timestamp("2024-11-03 01:30:00-04", true).unwrap();
        let second = parse_timestamp("2024-11-03 01:10:00-05", true).unwrap();
        assert!(first < second);
        assert_eq!(
            parse_timestamp("2024-01-01 15:30:00+05:30", true),
            parse_timestamp("2024-01-01 10:00:00+00", true)
        );
        assert_eq!(
            parse_timestamp("1850-01-01 00:00:00-04:56:02", true).unwrap()
                - parse_timestamp("1850-01-01 00:00:00+00", true).unwrap(),
            (4 * 3600 + 56 * 60 + 2) * USEC
        );
        let a = parse_timestamp("2024-01-01 10:00:00", false).unwrap();
        let b = parse_timestamp("2024-01-01 10:00:00.5", false).unwrap();
        let c = parse_timestamp("2024-01-01 10:00:00.123456", false).unwrap();
        assert_eq!((b - a, c - a), (500_000, 123_456));
        assert!(
            parse_timestamp("0044-03-15 12:00:00-04:56:02 BC", true).unwrap()
                < parse_timestamp("1850-01-01 00:00:00-04:56:02", true).unwrap()
        );
        assert!(parse_timestamp("10000-01-01 00:00:00.5", false).unwrap() > c);
        assert_eq!(parse_timestamp("infinity", true), Some(i128::MAX));
        assert_eq!(parse_timestamp("2024-01-01 10:00:00", true), None);
        assert_eq!(parse_timestamp("Mon Jan 01 10:00:00 2024 PST", true), None);
        assert_eq!(parse_time("24:00:00"), Some(86_400 * USEC));
        assert_eq!(parse_time("10:00:00.25").unwrap() % USEC, 250_000);
    }
}
