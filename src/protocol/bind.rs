//! The parameter values of a Bind message, as zero-copy views of its body.

/// Parameter values of a Bind: (format code, value) per parameter, NULL as None.
#[derive(Debug, Clone, Default)]
pub struct Params<'a> {
    /// Format code per parameter (0 text, 1 binary).
    pub formats: Vec<i16>,
    /// Values.
    pub values: Vec<Option<&'a [u8]>>,
    /// Parameter type OIDs from the Parse (0 or missing: unspecified).
    pub types: Vec<u32>,
}

/// A Bind body taken apart: the one Bind decoder (zero-copy views of its body).
#[derive(Debug, Clone)]
pub struct BindParts<'a> {
    /// The portal's name.
    pub portal: &'a str,
    /// The statement's name.
    pub statement: &'a str,
    /// The parameters' formats and values.
    pub params: Params<'a>,
    /// The parameter part as sent (format codes and values), to put after other names.
    pub params_bytes: &'a [u8],
    /// The result-format codes, if the body has them in full (and nothing after).
    pub result_formats: Option<Vec<i16>>,
}

/// Takes a big-endian i16 off the front of `b`.
fn i16_at(b: &mut &[u8]) -> Option<i16> {
    let (v, rest) = b.split_first_chunk::<2>()?;
    *b = rest;
    Some(i16::from_be_bytes(*v))
}

/// Takes `n` format codes off the front of `b` (capacity from the bytes at hand, never from
/// the announced count).
fn codes(b: &mut &[u8], n: usize) -> Option<Vec<i16>> {
    let mut v = Vec::with_capacity(n.min(b.len() / 2));
    for _ in 0..n {
        v.push(i16_at(b)?);
    }
    Some(v)
}

impl<'a> BindParts<'a> {
    /// Decodes a Bind message body up to its parameter values (`None` if it is malformed
    /// there); the result formats are read if they are there in full.
    pub fn decode(body: &'a [u8]) -> Option<BindParts<'a>> {
        let (portal, statement, at) = super::bind_names(body)?;
        let mut b = &body[at..];
        let start = b;
        let nf = i16_at(&mut b)?.max(0) as usize;
        let formats = codes(&mut b, nf)?;
        let np = i16_at(&mut b)?.max(0) as usize;
        let mut values = Vec::with_capacity(np.min(b.len() / 4));
        for _ in 0..np {
            let (len, rest) = b.split_first_chunk::<4>()?;
            b = rest;
            let Ok(len) = usize::try_from(i32::from_be_bytes(*len)) else {
                values.push(None);
                continue;
            };
            let (v, rest) = b.split_at_checked(len)?;
            values.push(Some(v));
            b = rest;
        }
        let params_bytes = &start[..start.len() - b.len()];
        let result_formats = i16_at(&mut b)
            .and_then(|nr| codes(&mut b, nr.max(0) as usize))
            .filter(|_| b.is_empty());
        Some(BindParts {
            portal,
            statement,
            params: Params {
                formats,
                values,
                types: Vec::new(),
            },
            params_bytes,
            result_formats,
        })
    }
}

impl<'a> Params<'a> {
    /// Decodes the parameters of a Bind message body.
    pub fn from_bind(body: &'a [u8]) -> Option<Params<'a>> {
        BindParts::decode(body).map(|b| b.params)
    }

    /// The format code of parameter `i` (one code for all, or one each; default text).
    pub fn format(&self, i: usize) -> i16 {
        match self.formats.len() {
            0 => 0,
            1 => self.formats[0],
            _ => self.formats.get(i).copied().unwrap_or(0),
        }
    }
}
