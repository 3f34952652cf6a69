//! [`Merger`]: the streaming merge. Shard messages go in as they arrive; whatever can already
//! be sent to the client comes out of [`Merger::drain`].
//!
//! Without ORDER BY rows are forwarded as they arrive. With ORDER BY (and no aggregation) a
//! k-way merge holds the head row of every shard in a binary heap and sends the smallest as
//! soon as every unfinished shard has a row in the heap; rows wait only while some shard has
//! not shown its next one ([`Merger::buffered_rows`] lets the caller stop reading from a
//! shard that is far ahead). Aggregating plans fold rows into groups and send them when every
//! shard has finished (sorted in memory when there is an ORDER BY). DISTINCT, OFFSET and
//! LIMIT are applied on the way out, in that order.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet, VecDeque};

use bytes::{Bytes, BytesMut};

use super::aggregate::Groups;
use super::error::{malformed, MergeError};
use super::order::{cmp_keys, Entry, SortVal};
use super::plan::{Agg, Bound, MergePlan, SortKey};
use super::value::decode;
use super::wire::{encode_data_row, parse_data_row, CommandTag, RowDescription};

/// What one shard has sent so far.
#[derive(Debug, Default)]
struct Shard {
    desc: Option<RowDescription>,
    rows: VecDeque<Bytes>,
    /// Bytes of the DataRows in `rows`.
    row_bytes: usize,
    in_heap: bool,
    tag: Option<CommandTag>,
}

impl Shard {
    fn pop_row(&mut self) -> Option<Bytes> {
        let row = self.rows.pop_front()?;
        self.row_bytes -= row.len();
        Some(row)
    }

    fn clear_rows(&mut self) {
        self.rows.clear();
        self.row_bytes = 0;
    }
}

/// A merged row: values of all merged columns, and the shard's message when the plan
/// forwards rows unchanged.
#[derive(Debug)]
pub(crate) struct Row {
    pub values: Vec<Option<Bytes>>,
    pub raw: Option<Bytes>,
}

/// Duplicate detection for DISTINCT.
#[derive(Debug)]
enum Dedup {
    Off,
    /// Rows arrive sorted on every visible column: equal rows are adjacent.
    Adjacent(Option<Vec<u8>>),
    Seen(HashSet<Vec<u8>>),
}

/// How rows flow, chosen when the shards' columns are known.
#[derive(Debug)]
enum Mode {
    Stream,
    Ordered(BinaryHeap<Reverse<Entry>>),
    Aggregate(Groups),
}

/// Merges one statement's results from several shards into one result for the client.
///
/// Feed every shard's RowDescription, DataRow and CommandComplete messages to
/// [`Merger::push`] (in each shard's order; shards interleave freely) and call
/// [`Merger::drain`] to collect what is ready. The merge is complete when
/// [`Merger::is_finished`]; the output then holds one RowDescription (unless the merger was
/// made [`Merger::with_description`]), the merged DataRows and one CommandComplete. Other
/// messages (ErrorResponse, NoticeResponse, ReadyForQuery) are the caller's business.
#[derive(Debug)]
pub struct Merger {
    plan: MergePlan,
    shards: Vec<Shard>,
    described: bool,
    bound: Option<Bound>,
    mode: Mode,
    header: Option<RowDescription>,
    dedup: Dedup,
    skipped: u64,
    sent: u64,
    finished: bool,
}

impl Merger {
    /// A merger for `shards` shards, each of which sends a RowDescription before its rows (the
    /// simple query protocol, or Describe of a portal); the output starts with the merged
    /// RowDescription. A statement without rows (INSERT without RETURNING) sends none.
    pub fn new(plan: MergePlan, shards: usize) -> Result<Merger, MergeError> {
        plan.validate()?;
        if shards == 0 {
            return Err(MergeError::InvalidPlan("no shards to merge".into()));
        }
        Ok(Merger {
            plan,
            shards: (0..shards).map(|_| Shard::default()).collect(),
            described: false,
            bound: None,
            mode: Mode::Stream,
            header: None,
            dedup: Dedup::Off,
            skipped: 0,
            sent: 0,
            finished: false,
        })
    }

    /// A merger for an Execute whose columns the client already learned from an earlier
    /// Describe: the shards send rows without a RowDescription, and none is sent. `columns`
    /// is the rewritten statement's description with the Bind's result formats applied (see
    /// [`RowDescription::with_result_formats`]; when the rewrite added helper columns, the
    /// formats sent to the shards must cover them too).
    pub fn with_description(
        plan: MergePlan,
        shards: usize,
        columns: &RowDescription,
    ) -> Result<Merger, MergeError> {
        let mut m = Merger::new(plan, shards)?;
        m.described = true;
        m.bind(columns)?;
        m.header = None;
        Ok(m)
    }

    /// True once the CommandComplete has been written by [`Merger::drain`].
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// True when a plan without aggregation has sent LIMIT rows: later DataRows are
    /// discarded and need not be pushed (the shards' CommandComplete still must be).
    pub fn limit_reached(&self) -> bool {
        self.bound.as_ref().is_some_and(|b| !b.aggregate)
            && self.plan.limit.is_some_and(|l| self.sent >= l)
    }

    /// DataRows of shard `shard` pushed but not yet merged: a caller can pause reading from a
    /// shard while this is large (its rows wait for slower shards in an ORDER BY merge).
    pub fn buffered_rows(&self, shard: usize) -> usize {
        self.shards.get(shard).map_or(0, |s| s.rows.len())
    }

    /// Bytes of the DataRows counted by [`Merger::buffered_rows`].
    pub fn buffered_bytes(&self, shard: usize) -> usize {
        self.shards.get(shard).map_or(0, |s| s.row_bytes)
    }

    /// True when the merge keeps state that grows with the rows it has seen: groups of an
    /// aggregating plan, or the rows a DISTINCT without a matching ORDER BY has sent.
    pub fn accumulates(&self) -> bool {
        matches!(self.mode, Mode::Aggregate(_)) || matches!(self.dedup, Dedup::Seen(_))
    }

    /// Takes one message from shard `shard`: RowDescription ('T'), DataRow ('D') or
    /// CommandComplete ('C'), tag and length included. After an error from `push` or
    /// [`Merger::drain`] the merge is over: the client gets an ErrorResponse instead.
    pub fn push(&mut self, shard: usize, msg: Bytes) -> Result<(), MergeError> {
        let described = self.described;
        let s = self
            .shards
            .get_mut(shard)
            .ok_or_else(|| MergeError::InvalidPlan(format!("no shard {shard}")))?;
        if s.tag.is_some() {
            return Err(malformed(shard, "message after CommandComplete"));
        }
        match msg.first() {
            Some(b'T') if described || s.desc.is_some() => {
                Err(malformed(shard, "unexpected RowDescription"))
            }
            Some(b'T') => {
                s.desc = Some(RowDescription::parse(&msg).map_err(|e| malformed(shard, e))?);
                Ok(())
            }
            Some(b'D') if !described && s.desc.is_none() => {
                Err(malformed(shard, "DataRow before RowDescription"))
            }
            Some(b'D') => {
                s.row_bytes += msg.len();
                s.rows.push_back(msg);
                Ok(())
            }
            Some(b'C') => {
                s.tag = Some(CommandTag::parse(&msg).map_err(|e| malformed(shard, e))?);
                Ok(())
            }
            Some(&t) => Err(malformed(
                shard,
                format!("unexpected message '{}'", t as char),
            )),
            None => Err(malformed(shard, "empty message")),
        }
    }

    /// Appends to `out` everything that can be sent now.
    pub fn drain(&mut self, out: &mut BytesMut) -> Result<(), MergeError> {
        if self.finished {
            return Ok(());
        }
        if self.bound.is_none() && !self.try_bind()? {
            if self.shards.iter().all(|s| s.tag.is_some()) {
                self.finish(out)?;
            }
            return Ok(());
        }
        if let Some(h) = self.header.take() {
            h.encode(out);
        }
        let all_done = self.shards.iter().all(|s| s.tag.is_some());
        match self.mode {
            Mode::Stream => self.drain_stream(out)?,
            Mode::Ordered(_) => self.drain_ordered(out)?,
            Mode::Aggregate(_) => self.drain_aggregate(out, all_done)?,
        }
        let heap_empty = match &self.mode {
            Mode::Ordered(h) => h.is_empty(),
            _ => true,
        };
        if all_done && heap_empty && self.shards.iter().all(|s| s.rows.is_empty()) {
            self.finish(out)?;
        }
        Ok(())
    }

    /// Binds the plan once every shard has described its columns. Returns false while some
    /// are missing, or when every shard finished without any (a statement without rows).
    fn try_bind(&mut self) -> Result<bool, MergeError> {
        let described = self.shards.iter().filter(|s| s.desc.is_some()).count();
        if described < self.shards.len() {
            let waiting = self
                .shards
                .iter()
                .any(|s| s.desc.is_none() && s.tag.is_none());
            if described > 0 && !waiting {
                return Err(MergeError::Mismatch(
                    "some shards returned rows and others did not".into(),
                ));
            }
            return Ok(false);
        }
        let first = self.shards[0].desc.clone().unwrap_or_default();
        for (i, s) in self.shards.iter().enumerate().skip(1) {
            let d = s.desc.as_ref().map(|d| &d.fields[..]).unwrap_or_default();
            let same = d.len() == first.fields.len()
                && d.iter()
                    .zip(&first.fields)
                    .all(|(a, b)| a.type_oid == b.type_oid && a.format == b.format);
            if !same {
                return Err(MergeError::Mismatch(format!(
                    "shard {i} returned other columns than shard 0"
                )));
            }
        }
        self.bind(&first)?;
        Ok(true)
    }

    fn bind(&mut self, desc: &RowDescription) -> Result<(), MergeError> {
        let b = self.plan.bind(desc)?;
        self.header = Some(RowDescription {
            fields: b.visible.iter().map(|&i| b.out_fields[i].clone()).collect(),
        });
        self.mode = if b.aggregate {
            Mode::Aggregate(Groups::default())
        } else if !self.plan.order_by.is_empty() {
            Mode::Ordered(BinaryHeap::with_capacity(self.shards.len()))
        } else {
            Mode::Stream
        };
        let sorted_cols: HashSet<usize> = self.plan.order_by.iter().map(|k| k.column).collect();
        self.dedup = match self.plan.distinct {
            false => Dedup::Off,
            true if b.visible.iter().all(|c| sorted_cols.contains(c)) => Dedup::Adjacent(None),
            true => Dedup::Seen(HashSet::new()),
        };
        self.bound = Some(b);
        Ok(())
    }

    /// A shard row in merged-column space (non-aggregating plans).
    fn row(&self, shard: usize, msg: Bytes) -> Result<Row, MergeError> {
        let b = self.bound_ref()?;
        let values = parse_data_row(&msg, b.in_types.len()).map_err(|e| malformed(shard, e))?;
        if b.identity {
            return Ok(Row {
                values,
                raw: Some(msg),
            });
        }
        let values = b
            .columns
            .iter()
            .map(|c| match c.agg {
                Agg::Value(s) => values[s].clone(),
                _ => None,
            })
            .collect();
        Ok(Row { values, raw: None })
    }

    fn bound_ref(&self) -> Result<&Bound, MergeError> {
        self.bound
            .as_ref()
            .ok_or_else(|| MergeError::InvalidPlan("merge used before columns are known".into()))
    }

    fn sort_keys(
        &self,
        shard: usize,
        values: &[Option<Bytes>],
    ) -> Result<Vec<SortVal>, MergeError> {
        let b = self.bound_ref()?;
        self.plan
            .order_by
            .iter()
            .map(
                |&SortKey {
                     column,
                     descending,
                     nulls_first,
                 }| {
                    let v = match (&values[column], b.out_types[column]) {
                        (Some(raw), Some(t)) => Some(decode(t, raw, shard)?),
                        _ => None,
                    };
                    Ok(SortVal {
                        v,
                        descending,
                        nulls_first,
                    })
                },
            )
            .collect()
    }

    fn drain_stream(&mut self, out: &mut BytesMut) -> Result<(), MergeError> {
        for i in 0..self.shards.len() {
            while let Some(msg) = self.shards[i].pop_row() {
                if self.limit_reached() {
                    break;
                }
                let row = self.row(i, msg)?;
                self.offer(row, i, out)?;
            }
        }
        if self.limit_reached() {
            self.discard_rest();
        }
        Ok(())
    }

    /// Moves shard `i`'s next row into the heap, if it has one and none is there yet.
    fn refill(&mut self, i: usize) -> Result<(), MergeError> {
        if self.shards[i].in_heap {
            return Ok(());
        }
        let Some(msg) = self.shards[i].pop_row() else {
            return Ok(());
        };
        let row = self.row(i, msg)?;
        let keys = self.sort_keys(i, &row.values)?;
        if let Mode::Ordered(heap) = &mut self.mode {
            heap.push(Reverse(Entry {
                keys,
                shard: i,
                row,
            }));
        }
        self.shards[i].in_heap = true;
        Ok(())
    }

    fn drain_ordered(&mut self, out: &mut BytesMut) -> Result<(), MergeError> {
        if !self.limit_reached() {
            for i in 0..self.shards.len() {
                self.refill(i)?;
            }
            let mut ready = self.shards.iter().all(|s| s.in_heap || s.tag.is_some());
            while ready && !self.limit_reached() {
                let Mode::Ordered(heap) = &mut self.mode else {
                    break;
                };
                let Some(Reverse(top)) = heap.pop() else {
                    break;
                };
                let i = top.shard;
                self.shards[i].in_heap = false;
                self.offer(top.row, i, out)?;
                self.refill(i)?;
                ready = self.shards[i].in_heap || self.shards[i].tag.is_some();
            }
        }
        if self.limit_reached() {
            self.discard_rest();
        }
        Ok(())
    }

    fn drain_aggregate(&mut self, out: &mut BytesMut, all_done: bool) -> Result<(), MergeError> {
        let (Some(b), Mode::Aggregate(groups)) = (&self.bound, &mut self.mode) else {
            return Ok(());
        };
        for (i, s) in self.shards.iter_mut().enumerate() {
            while let Some(msg) = s.pop_row() {
                let values = parse_data_row(&msg, b.in_types.len()).map_err(|e| malformed(i, e))?;
                groups.add(b, &self.plan.group_by, i, &values)?;
            }
        }
        if !all_done {
            return Ok(());
        }
        let rows = std::mem::take(groups).finish(b, &self.plan.group_by)?;
        let mut keyed = Vec::with_capacity(rows.len());
        for values in rows {
            let keys = if self.plan.order_by.is_empty() {
                Vec::new()
            } else {
                self.sort_keys(0, &values)?
            };
            keyed.push((keys, Row { values, raw: None }));
        }
        keyed.sort_by(|a, b| cmp_keys(&a.0, &b.0));
        for (_, row) in keyed {
            self.offer(row, 0, out)?;
        }
        Ok(())
    }

    /// Drops everything queued once LIMIT is reached.
    fn discard_rest(&mut self) {
        if let Mode::Ordered(heap) = &mut self.mode {
            heap.clear();
        }
        for s in &mut self.shards {
            s.clear_rows();
            s.in_heap = false;
        }
    }

    /// DISTINCT, OFFSET and LIMIT, then the DataRow of the visible columns.
    fn offer(&mut self, row: Row, shard: usize, out: &mut BytesMut) -> Result<(), MergeError> {
        if self.plan.limit.is_some_and(|l| self.sent >= l) {
            return Ok(());
        }
        let b = self.bound_ref()?;
        if !matches!(self.dedup, Dedup::Off) {
            let mut key = Vec::new();
            for &c in &b.visible {
                match (&row.values[c], b.out_types[c]) {
                    (None, _) => key.push(0),
                    (Some(raw), Some(t)) => decode(t, raw, shard)?.canonical(&mut key),
                    (Some(raw), None) => key.extend_from_slice(raw),
                }
            }
            let dup = match &mut self.dedup {
                Dedup::Off => false,
                Dedup::Adjacent(last) if last.as_ref() == Some(&key) => true,
                Dedup::Adjacent(last) => {
                    *last = Some(key);
                    false
                }
                Dedup::Seen(seen) => !seen.insert(key),
            };
            if dup {
                return Ok(());
            }
        }
        if self.skipped < self.plan.offset {
            self.skipped += 1;
            return Ok(());
        }
        let b = self.bound_ref()?;
        match row.raw {
            Some(raw) => out.extend_from_slice(&raw),
            None => encode_data_row(out, b.visible.iter().map(|&c| row.values[c].as_deref())),
        }
        self.sent += 1;
        Ok(())
    }

    /// Writes the merged CommandComplete.
    fn finish(&mut self, out: &mut BytesMut) -> Result<(), MergeError> {
        let mut tags = self.shards.iter().filter_map(|s| s.tag.as_ref());
        let Some(first) = tags.next() else {
            return Err(MergeError::InvalidPlan("no CommandComplete".into()));
        };
        let mut merged = first.clone();
        for t in tags {
            if t.command != merged.command || t.rows.is_some() != merged.rows.is_some() {
                return Err(MergeError::Mismatch(format!(
                    "command tags \"{}\" and \"{}\" differ",
                    merged.text(),
                    t.text()
                )));
            }
            if let (Some(a), Some(b)) = (&mut merged.rows, t.rows) {
                *a = a
                    .checked_add(b)
                    .ok_or(MergeError::OutOfRange("row count"))?;
            }
        }
        let counts_rows = matches!(merged.command.as_str(), "SELECT" | "FETCH");
        if self.bound.is_some() && counts_rows && merged.rows.is_some() {
            merged.rows = Some(self.sent);
        }
        merged.encode(out);
        self.finished = true;
        Ok(())
    }
}
