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

impl<'a> Params<'a> {
    /// Decodes a Bind message body.
    pub fn from_bind(body: &'a [u8]) -> Option<Params<'a>> {
        let mut b = body;
        let cstr = |b: &mut &'a [u8]| -> Option<()> {
            let end = b.iter().position(|&c| c == 0)?;
            *b = &b[end + 1..];
            Some(())
        };
        cstr(&mut b)?;
        cstr(&mut b)?;
        let i16_at = |b: &mut &'a [u8]| -> Option<i16> {
            let v = i16::from_be_bytes([*b.first()?, *b.get(1)?]);
            *b = &b[2..];
            Some(v)
        };
        let nf = i16_at(&mut b)?.max(0) as usize;
        // Capacity from the bytes at hand, never from the announced count.
        let mut formats = Vec::with_capacity(nf.min(b.len() / 2));
        for _ in 0..nf {
            formats.push(i16_at(&mut b)?);
        }
        let np = i16_at(&mut b)?.max(0) as usize;
        let mut values = Vec::with_capacity(np.min(b.len() / 4));
        for _ in 0..np {
            if b.len() < 4 {
                return None;
            }
            let len = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            b = &b[4..];
            if len < 0 {
                values.push(None);
                continue;
            }
            let len = len as usize;
            if b.len() < len {
                return None;
            }
            values.push(Some(&b[..len]));
            b = &b[len..];
        }
        Some(Params {
            formats,
            values,
            types: Vec::new(),
        })
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
