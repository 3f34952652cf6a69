//! ORDER BY keys of a row and their comparison: typed values, direction and NULL placement
//! per key; heap entries of the k-way merge order by keys, then by shard index (so equal
//! keys keep a deterministic order).

use std::cmp::Ordering;

use super::merger::Row;
use super::value::Value;

/// One sort key value of a row, carrying its direction.
#[derive(Debug)]
pub(crate) struct SortVal {
    pub v: Option<Value>,
    pub descending: bool,
    pub nulls_first: bool,
}

pub(crate) fn cmp_keys(a: &[SortVal], b: &[SortVal]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        let o = match (&x.v, &y.v) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) if x.nulls_first => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) if x.nulls_first => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(p), Some(q)) if x.descending => q.cmp(p),
            (Some(p), Some(q)) => p.cmp(q),
        };
        if o.is_ne() {
            return o;
        }
    }
    Ordering::Equal
}

/// A row waiting in the k-way merge heap.
#[derive(Debug)]
pub(crate) struct Entry {
    pub keys: Vec<SortVal>,
    pub shard: usize,
    pub row: Row,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Entry) -> bool {
        self.cmp(o).is_eq()
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Entry) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    /// Sort keys first; on ties the lower shard index goes first.
    fn cmp(&self, o: &Entry) -> Ordering {
        cmp_keys(&self.keys, &o.keys).then(self.shard.cmp(&o.shard))
    }
}
