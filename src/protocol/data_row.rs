//! The one DataRow ('D') decoder: a zero-copy view of a DataRow body's values, used by the
//! merge (which checks the row against its RowDescription) and by the proxy's own queries
//! (which read their values as text).

/// Why a DataRow body cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataRowError {
    /// It ends before its column count, a length or a value.
    Truncated,
    /// A value length below -1 (the NULL marker).
    NegativeLength,
    /// Bytes after the last value.
    Trailing,
}

impl DataRowError {
    /// What is wrong, for an error message.
    pub fn as_str(self) -> &'static str {
        match self {
            DataRowError::Truncated => "truncated DataRow",
            DataRowError::NegativeLength => "negative DataRow value length",
            DataRowError::Trailing => "trailing bytes after DataRow values",
        }
    }
}

/// The values of a DataRow body in order (`None`: SQL NULL), borrowed from the body. After
/// the last value (or an error) [`DataRowValues::finish`] says whether the body ended there.
#[derive(Debug, Clone)]
pub struct DataRowValues<'a> {
    rest: &'a [u8],
    left: usize,
    failed: bool,
}

impl<'a> DataRowValues<'a> {
    /// The values of DataRow `body` and their count (the message's own count field).
    pub fn new(body: &'a [u8]) -> Result<(usize, DataRowValues<'a>), DataRowError> {
        let (n, rest) = body
            .split_first_chunk::<2>()
            .ok_or(DataRowError::Truncated)?;
        let n = usize::try_from(i16::from_be_bytes(*n)).map_err(|_| DataRowError::Truncated)?;
        Ok((
            n,
            DataRowValues {
                rest,
                left: n,
                failed: false,
            },
        ))
    }

    /// Once every value was taken: whether the body ended with the last one.
    pub fn finish(&self) -> Result<(), DataRowError> {
        if self.left > 0 || self.failed {
            return Err(DataRowError::Truncated);
        }
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DataRowError::Trailing)
        }
    }
}

impl<'a> Iterator for DataRowValues<'a> {
    type Item = Result<Option<&'a [u8]>, DataRowError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 || self.failed {
            return None;
        }
        self.left -= 1;
        let value = (|| {
            let (len, tail) = self
                .rest
                .split_first_chunk::<4>()
                .ok_or(DataRowError::Truncated)?;
            let len = i32::from_be_bytes(*len);
            if len == -1 {
                self.rest = tail;
                return Ok(None);
            }
            let len = usize::try_from(len).map_err(|_| DataRowError::NegativeLength)?;
            if len > tail.len() {
                return Err(DataRowError::Truncated);
            }
            let (v, tail) = tail.split_at(len);
            self.rest = tail;
            Ok(Some(v))
        })();
        self.failed = value.is_err();
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = (values.len() as i16).to_be_bytes().to_vec();
        for v in values {
            match v {
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
            }
        }
        b
    }

    #[test]
    fn values_nulls_and_damage() {
        let body = row(&[Some(b"42"), None, Some(b"")]);
        let (n, mut it) = DataRowValues::new(&body).unwrap();
        assert_eq!(n, 3);
        let got: Vec<_> = it.by_ref().collect::<Result<_, _>>().unwrap();
        assert_eq!(got, [Some(&b"42"[..]), None, Some(&b""[..])]);
        assert_eq!(it.finish(), Ok(()));
        // Every cut is an error, at the value it cuts.
        for cut in 0..body.len() {
            let bad = DataRowValues::new(&body[..cut]).and_then(|(_, mut it)| {
                it.by_ref().collect::<Result<Vec<_>, _>>()?;
                it.finish()
            });
            assert_eq!(bad, Err(DataRowError::Truncated), "cut at {cut}");
        }
        let mut long = body.clone();
        long.push(0);
        let (_, mut it) = DataRowValues::new(&long).unwrap();
        it.by_ref().for_each(drop);
        assert_eq!(it.finish(), Err(DataRowError::Trailing));
        let mut neg = 1i16.to_be_bytes().to_vec();
        neg.extend_from_slice(&(-2i32).to_be_bytes());
        let (_, mut it) = DataRowValues::new(&neg).unwrap();
        assert_eq!(it.next(), Some(Err(DataRowError::NegativeLength)));
        assert_eq!(it.next(), None, "nothing after an error");
    }
}
