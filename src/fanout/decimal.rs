//! Exact `numeric` arithmetic for merges: parse and print Postgres's text and binary forms,
//! compare, add, and divide by a row count the way Postgres's `avg` does.
//!
//! Values keep their display scale (`dscale`): `1.50 + 2` is `3.50`, as in Postgres. Division
//! copies `numeric_div`'s choice of result scale (`select_div_scale`: at least 16 significant
//! digits, never fewer fraction digits than the dividend, at most 1000) and its rounding (the
//! exact quotient truncated one digit past the scale, then rounded half away from zero), so
//! `avg` output matches Postgres digit for digit.

use std::cmp::Ordering;
use std::fmt;

/// A finite decimal: sign, coefficient digits (most significant first, no leading zeros,
/// empty for zero) and scale (how many of them are fraction digits; may exceed their count).
#[derive(Debug, Clone)]
pub struct Decimal {
    neg: bool,
    digits: Vec<u8>,
    scale: u32,
}

/// Postgres's `numeric`: a finite [`Decimal`], NaN, or ±Infinity. Ordered as Postgres orders
/// them: `-Infinity` < finite values < `Infinity` < `NaN` (NaN equals NaN).
#[derive(Debug, Clone)]
pub enum Numeric {
    /// `NaN`.
    NaN,
    /// `Infinity`.
    Infinity,
    /// `-Infinity`.
    NegInfinity,
    /// A finite value with its display scale.
    Finite(Decimal),
}

/// Postgres's `NUMERIC_MIN_SIG_DIGITS`, `NUMERIC_MAX_DISPLAY_SCALE` and `DEC_DIGITS`.
const MIN_SIG_DIGITS: i64 = 16;
const MAX_DISPLAY_SCALE: i64 = 1000;
const DEC_DIGITS: i64 = 4;

/// Binary sign words of the `numeric` send format.
const SIGN_POS: u16 = 0x0000;
const SIGN_NEG: u16 = 0x4000;
const SIGN_NAN: u16 = 0xC000;
const SIGN_PINF: u16 = 0xD000;
const SIGN_NINF: u16 = 0xF000;

fn strip_leading_zeros(mut d: Vec<u8>) -> Vec<u8> {
    let z = d.iter().take_while(|&&x| x == 0).count();
    d.drain(..z);
    d
}

/// Sum of two magnitudes (most significant digit first).
fn add_mag(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len().max(b.len()) + 1);
    let (mut i, mut j, mut carry) = (a.len(), b.len(), 0u8);
    while i > 0 || j > 0 || carry > 0 {
        let mut s = carry;
        if i > 0 {
            i -= 1;
            s += a[i];
        }
        if j > 0 {
            j -= 1;
            s += b[j];
        }
        out.push(s % 10);
        carry = s / 10;
    }
    out.reverse();
    strip_leading_zeros(out)
}

/// Difference of two magnitudes, `a >= b`.
fn sub_mag(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len());
    let (mut j, mut borrow) = (b.len(), 0i8);
    for i in (0..a.len()).rev() {
        let mut d = a[i] as i8 - borrow;
        if j > 0 {
            j -= 1;
            d -= b[j] as i8;
        }
        borrow = i8::from(d < 0);
        out.push((d + 10 * borrow) as u8);
    }
    out.reverse();
    strip_leading_zeros(out)
}

/// Compares magnitudes without leading zeros.
fn cmp_mag(a: &[u8], b: &[u8]) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

impl Decimal {
    fn new(neg: bool, digits: Vec<u8>, scale: u32) -> Decimal {
        let digits = strip_leading_zeros(digits);
        Decimal {
            neg: neg && !digits.is_empty(),
            digits,
            scale,
        }
    }

    /// An integer value (scale 0).
    pub fn from_i128(v: i128) -> Decimal {
        let digits = v
            .unsigned_abs()
            .to_string()
            .bytes()
            .map(|b| b - b'0')
            .collect();
        Decimal::new(v < 0, digits, 0)
    }

    /// True for zero (of any scale).
    pub fn is_zero(&self) -> bool {
        self.digits.is_empty()
    }

    /// The display scale: digits after the decimal point.
    pub fn scale(&self) -> u32 {
        self.scale
    }

    /// The digit at decimal power `p` (0 = units, -1 = tenths).
    fn digit(&self, p: i64) -> u8 {
        let r = p + self.scale as i64;
        let len = self.digits.len() as i64;
        if (0..len).contains(&r) {
            self.digits[(len - 1 - r) as usize]
        } else {
            0
        }
    }

    /// Decimal power of the leading digit, `None` for zero.
    fn top_power(&self) -> Option<i64> {
        (!self.is_zero()).then(|| self.digits.len() as i64 - 1 - self.scale as i64)
    }

    /// The coefficient scaled to `scale` fraction digits, truncating or appending zeros.
    fn coefficient_at(&self, scale: u32) -> Vec<u8> {
        let mut d = self.digits.clone();
        if scale >= self.scale {
            d.resize(d.len() + (scale - self.scale) as usize, 0);
        } else {
            d.truncate(d.len().saturating_sub((self.scale - scale) as usize));
        }
        d
    }

    /// Weight and value of the first non-zero base-10000 digit, as Postgres stores numerics.
    fn nbase_lead(&self) -> (i64, u32) {
        match self.top_power() {
            None => (0, 0),
            Some(p) => {
                let w = p.div_euclid(DEC_DIGITS);
                let first = (0..DEC_DIGITS)
                    .rev()
                    .fold(0u32, |f, j| f * 10 + self.digit(DEC_DIGITS * w + j) as u32);
                (w, first)
            }
        }
    }

    /// Exact sum; the scale is the larger of the two.
    pub fn add(&self, o: &Decimal) -> Decimal {
        let scale = self.scale.max(o.scale);
        let (a, b) = (self.coefficient_at(scale), o.coefficient_at(scale));
        if self.neg == o.neg {
            return Decimal::new(self.neg, add_mag(&a, &b), scale);
        }
        match cmp_mag(&a, &b) {
            Ordering::Greater => Decimal::new(self.neg, sub_mag(&a, &b), scale),
            Ordering::Less => Decimal::new(o.neg, sub_mag(&b, &a), scale),
            Ordering::Equal => Decimal::new(false, Vec::new(), scale),
        }
    }

    /// `self / n` as Postgres's `numeric_div(self, n::numeric)` computes it (`n > 0`): the
    /// result scale of `select_div_scale`, rounded half away from zero.
    pub fn div_count(&self, n: u64) -> Decimal {
        let n = n.max(1);
        let (w1, f1) = self.nbase_lead();
        let (w2, f2) = Decimal::from_i128(n as i128).nbase_lead();
        let mut qweight = w1 - w2;
        if f1 <= f2 {
            qweight -= 1;
        }
        let rscale = (MIN_SIG_DIGITS - qweight * DEC_DIGITS)
            .max(self.scale as i64)
            .clamp(0, MAX_DISPLAY_SCALE) as u32;
        // floor(|self| * 10^(rscale+1) / n), then round on the last digit.
        let num = self.coefficient_at(rscale + 1);
        let (mut q, mut r) = (Vec::with_capacity(num.len()), 0u128);
        for &d in &num {
            r = r * 10 + d as u128;
            q.push((r / n as u128) as u8);
            r %= n as u128;
        }
        let last = q.pop().unwrap_or(0);
        let mut q = strip_leading_zeros(q);
        if last >= 5 {
            q = add_mag(&q, &[1]);
        }
        Decimal::new(self.neg, q, rscale)
    }

    /// The value with trailing fraction zeros removed, printed: equal values give equal text.
    pub fn canonical(&self) -> String {
        let mut d = self.clone();
        while d.scale > 0 && d.digits.last() == Some(&0) {
            d.digits.pop();
            d.scale -= 1;
        }
        if d.digits.is_empty() {
            d.scale = 0;
        }
        d.to_string()
    }
}

impl Ord for Decimal {
    fn cmp(&self, o: &Decimal) -> Ordering {
        let sign = |d: &Decimal| match (d.is_zero(), d.neg) {
            (true, _) => 0,
            (false, true) => -1,
            (false, false) => 1,
        };
        let (sa, sb) = (sign(self), sign(o));
        if sa != sb || sa == 0 {
            return sa.cmp(&sb);
        }
        let mag = match (self.top_power(), o.top_power()) {
            (Some(pa), Some(pb)) if pa == pb => {
                let low = -(self.scale.max(o.scale) as i64);
                (low..=pa)
                    .rev()
                    .map(|p| self.digit(p).cmp(&o.digit(p)))
                    .find(|c| c.is_ne())
                    .unwrap_or(Ordering::Equal)
            }
            (pa, pb) => pa.cmp(&pb),
        };
        if sa < 0 {
            mag.reverse()
        } else {
            mag
        }
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, o: &Decimal) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl PartialEq for Decimal {
    /// Numeric equality: `1.0 == 1.00`.
    fn eq(&self, o: &Decimal) -> bool {
        self.cmp(o).is_eq()
    }
}

impl Eq for Decimal {}

impl fmt::Display for Decimal {
    /// Postgres's `numeric_out`: all `scale` fraction digits, a leading `0` before the point.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = self.digits.len();
        let scale = self.scale as usize;
        let mut s = String::with_capacity(len + scale + 3);
        if self.neg {
            s.push('-');
        }
        let digit = |d: &u8| char::from(b'0' + d);
        if len > scale {
            s.extend(self.digits[..len - scale].iter().map(digit));
        } else {
            s.push('0');
        }
        if scale > 0 {
            s.push('.');
            s.extend(std::iter::repeat_n('0', scale.saturating_sub(len)));
            s.extend(self.digits[len.saturating_sub(scale)..].iter().map(digit));
        }
        f.write_str(&s)
    }
}

impl Numeric {
    /// Parses `numeric_out` text (`-12.50`, `NaN`, `Infinity`, `-Infinity`; also a leading `+`
    /// and the other spellings `numeric_in` accepts for the special values).
    pub fn parse(s: &str) -> Option<Numeric> {
        let special = |t: &str| s.eq_ignore_ascii_case(t);
        if special("NaN") {
            return Some(Numeric::NaN);
        }
        if special("Infinity") || special("+Infinity") || special("inf") || special("+inf") {
            return Some(Numeric::Infinity);
        }
        if special("-Infinity") || special("-inf") {
            return Some(Numeric::NegInfinity);
        }
        let (neg, body) = match s.as_bytes().first()? {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let (int, frac) = body.split_once('.').unwrap_or((body, ""));
        let all_digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
        if int.len() + frac.len() == 0 || !all_digits(int) || !all_digits(frac) {
            return None;
        }
        let digits = int.bytes().chain(frac.bytes()).map(|b| b - b'0').collect();
        let scale = u32::try_from(frac.len()).ok()?;
        Some(Numeric::Finite(Decimal::new(neg, digits, scale)))
    }

    /// Decodes the binary (`numeric_send`) form. Digits beyond the display scale are
    /// truncated, as `numeric_recv` does.
    pub fn from_binary(b: &[u8]) -> Option<Numeric> {
        let word = |i: usize| Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]));
        let ndigits = word(0)? as i16;
        let weight = word(2)? as i16 as i64;
        let sign = word(4)?;
        let dscale = word(6)?;
        let ndigits = usize::try_from(ndigits).ok()?;
        if b.len() != 8 + 2 * ndigits || dscale > 0x3FFF {
            return None;
        }
        let neg = match sign {
            SIGN_NAN => return Some(Numeric::NaN),
            SIGN_PINF => return Some(Numeric::Infinity),
            SIGN_NINF => return Some(Numeric::NegInfinity),
            SIGN_POS => false,
            SIGN_NEG => true,
            _ => return None,
        };
        let mut nb = Vec::with_capacity(ndigits);
        for i in 0..ndigits {
            let d = word(8 + 2 * i)?;
            if d > 9999 {
                return None;
            }
            nb.push(d as u32);
        }
        let digit = |p: i64| -> u8 {
            let i = weight - p.div_euclid(DEC_DIGITS);
            match usize::try_from(i).ok().and_then(|i| nb.get(i)) {
                Some(&d) => ((d / 10u32.pow(p.rem_euclid(DEC_DIGITS) as u32)) % 10) as u8,
                None => 0,
            }
        };
        let top = DEC_DIGITS * weight + DEC_DIGITS - 1;
        let low = -(dscale as i64);
        let digits = if ndigits == 0 || top < low {
            Vec::new()
        } else {
            (low..=top).rev().map(digit).collect()
        };
        Some(Numeric::Finite(Decimal::new(neg, digits, dscale as u32)))
    }

    /// Appends the binary (`numeric_send`) form to `out`.
    pub fn to_binary(&self, out: &mut Vec<u8>) {
        let (sign, d) = match self {
            Numeric::NaN => (SIGN_NAN, None),
            Numeric::Infinity => (SIGN_PINF, None),
            Numeric::NegInfinity => (SIGN_NINF, None),
            Numeric::Finite(d) => (if d.neg { SIGN_NEG } else { SIGN_POS }, Some(d)),
        };
        let mut groups: Vec<u16> = Vec::new();
        let mut weight = 0i64;
        // Postgres 15 sends a display scale of 32 for the infinities (its header bits).
        let mut dscale = if d.is_none() && sign != SIGN_NAN {
            0x20
        } else {
            0
        };
        if let Some(d) = d {
            dscale = d.scale.min(0x3FFF) as u16;
            if let Some(p) = d.top_power() {
                weight = p.div_euclid(DEC_DIGITS);
                let low = (-(d.scale as i64)).div_euclid(DEC_DIGITS);
                for g in (low..=weight).rev() {
                    let v = (0..DEC_DIGITS)
                        .rev()
                        .fold(0u16, |v, j| v * 10 + d.digit(DEC_DIGITS * g + j) as u16);
                    groups.push(v);
                }
                while groups.last() == Some(&0) {
                    groups.pop();
                }
            }
        }
        out.extend_from_slice(&(groups.len() as u16).to_be_bytes());
        out.extend_from_slice(&(weight as i16).to_be_bytes());
        out.extend_from_slice(&sign.to_be_bytes());
        out.extend_from_slice(&dscale.to_be_bytes());
        for g in groups {
            out.extend_from_slice(&g.to_be_bytes());
        }
    }

    /// Postgres's `numeric` addition: NaN absorbs, `Infinity + -Infinity` is NaN.
    pub fn add(&self, o: &Numeric) -> Numeric {
        use Numeric::*;
        match (self, o) {
            (NaN, _) | (_, NaN) | (Infinity, NegInfinity) | (NegInfinity, Infinity) => NaN,
            (Infinity, _) | (_, Infinity) => Infinity,
            (NegInfinity, _) | (_, NegInfinity) => NegInfinity,
            (Finite(a), Finite(b)) => Finite(a.add(b)),
        }
    }

    /// `self / n` for `avg`: see [`Decimal::div_count`]; special values stay as they are.
    pub fn div_count(&self, n: u64) -> Numeric {
        match self {
            Numeric::Finite(d) => Numeric::Finite(d.div_count(n)),
            special => special.clone(),
        }
    }

    /// Text that is equal exactly for equal values (`1.0` and `1.00` give `1`).
    pub fn canonical(&self) -> String {
        match self {
            Numeric::Finite(d) => d.canonical(),
            special => special.to_string(),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Numeric::NegInfinity => 0,
            Numeric::Finite(_) => 1,
            Numeric::Infinity => 2,
            Numeric::NaN => 3,
        }
    }
}

impl Ord for Numeric {
    fn cmp(&self, o: &Numeric) -> Ordering {
        match (self, o) {
            (Numeric::Finite(a), Numeric::Finite(b)) => a.cmp(b),
            _ => self.rank().cmp(&o.rank()),
        }
    }
}

impl PartialOrd for Numeric {
    fn partial_cmp(&self, o: &Numeric) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl PartialEq for Numeric {
    /// Numeric equality (`1.0 == 1.00`, `NaN == NaN`), as Postgres's `=` on numeric.
    fn eq(&self, o: &Numeric) -> bool {
        self.cmp(o).is_eq()
    }
}

impl Eq for Numeric {}

impl fmt::Display for Numeric {
    /// Postgres's `numeric_out`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Numeric::NaN => f.write_str("NaN"),
            Numeric::Infinity => f.write_str("Infinity"),
            Numeric::NegInfinity => f.write_str("-Infinity"),
            Numeric::Finite(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
#[path = "decimal_tests.rs"]
mod tests;
