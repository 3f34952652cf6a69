//! GROUP BY and aggregates across shards: every shard row is folded into its group (in
//! memory); at the end each group becomes one merged row.

use std::collections::HashMap;

use bytes::Bytes;

use super::decimal::{Decimal, Numeric};
use super::error::MergeError;
use super::float::{format_float4, format_float8};
use super::plan::{Agg, Bound};
use super::value::{decode, ColType, Kind, Value};

/// A running sum, in the type of the shards' `sum` column.
#[derive(Debug, Clone)]
enum Total {
    Int(i128),
    Numeric(Numeric),
    Float4(f32),
    Float8(f64),
}

/// The state of one merged column within one group.
#[derive(Debug, Clone)]
enum Acc {
    /// A group key or dependent value: the first one seen (`None` until then).
    First(Option<Option<Bytes>>),
    Count(i64),
    Sum(Option<Total>),
    /// Min or max: the best value so far, decoded and raw.
    Extreme {
        max: bool,
        best: Option<(Value, Bytes)>,
    },
    Avg {
        sum: Option<Total>,
        count: i64,
    },
}

fn float_overflow() -> MergeError {
    MergeError::OutOfRange("double precision value")
}

impl Total {
    /// Starts a sum from a shard's value; avg sums of floats are kept in double precision.
    fn start(kind: Kind, v: &Value, for_avg: bool) -> Option<Total> {
        Some(match (kind, v) {
            (Kind::Int8, Value::Int(i)) => Total::Int(*i as i128),
            (Kind::Numeric, Value::Numeric(n)) => Total::Numeric(n.clone()),
            (Kind::Float4, Value::Float(f)) if !for_avg => Total::Float4(*f as f32),
            (Kind::Float4 | Kind::Float8, Value::Float(f)) => Total::Float8(*f),
            _ => return None,
        })
    }

    fn add(&mut self, v: &Value) -> Result<(), MergeError> {
        match (self, v) {
            (Total::Int(t), Value::Int(i)) => *t += *i as i128,
            (Total::Numeric(t), Value::Numeric(n)) => *t = t.add(n),
            (Total::Float4(t), Value::Float(f)) => {
                let s = *t + *f as f32;
                if s.is_infinite() && t.is_finite() && f.is_finite() {
                    return Err(float_overflow());
                }
                *t = s;
            }
            (Total::Float8(t), Value::Float(f)) => {
                let s = *t + *f;
                if s.is_infinite() && t.is_finite() && f.is_finite() {
                    return Err(float_overflow());
                }
                *t = s;
            }
            _ => {}
        }
        Ok(())
    }
}

fn int8_bytes(v: i64, t: ColType) -> Bytes {
    if t.binary {
        Bytes::copy_from_slice(&v.to_be_bytes())
    } else {
        Bytes::from(v.to_string())
    }
}

fn numeric_bytes(n: &Numeric, t: ColType) -> Bytes {
    if t.binary {
        let mut b = Vec::new();
        n.to_binary(&mut b);
        Bytes::from(b)
    } else {
        Bytes::from(n.to_string())
    }
}

fn float8_bytes(v: f64, t: ColType) -> Bytes {
    if t.binary {
        Bytes::copy_from_slice(&v.to_be_bytes())
    } else {
        Bytes::from(format_float8(v))
    }
}

/// Encodes a finished sum in its column's type and format.
fn total_bytes(total: &Total, t: ColType) -> Result<Bytes, MergeError> {
    Ok(match total {
        Total::Int(v) => {
            let v = i64::try_from(*v).map_err(|_| MergeError::OutOfRange("bigint"))?;
            int8_bytes(v, t)
        }
        Total::Numeric(n) => numeric_bytes(n, t),
        Total::Float4(v) if t.binary => Bytes::copy_from_slice(&v.to_be_bytes()),
        Total::Float4(v) => Bytes::from(format_float4(*v)),
        Total::Float8(v) => float8_bytes(*v, t),
    })
}

/// All groups seen so far.
#[derive(Debug, Default)]
pub(crate) struct Groups {
    index: HashMap<Vec<u8>, usize>,
    groups: Vec<Vec<Acc>>,
}

impl Groups {
    /// Folds one shard row (all shard columns, `None` = NULL) into its group.
    pub(crate) fn add(
        &mut self,
        b: &Bound,
        group_by: &[usize],
        shard: usize,
        row: &[Option<Bytes>],
    ) -> Result<(), MergeError> {
        let read = |c: usize| -> Result<Option<Value>, MergeError> {
            match (&row[c], b.in_types[c]) {
                (None, _) => Ok(None),
                (Some(raw), Some(t)) => decode(t, raw, shard).map(Some),
                (Some(_), None) => Err(MergeError::InvalidPlan(format!(
                    "shard column {c} has a type the merge cannot read"
                ))),
            }
        };
        let mut key = Vec::new();
        for &g in group_by {
            if let Agg::Value(c) = b.columns[g].agg {
                match read(c)? {
                    None => key.push(0),
                    Some(v) => v.canonical(&mut key),
                }
            }
        }
        let next = self.groups.len();
        let at = *self.index.entry(key).or_insert(next);
        if at == next {
            self.groups
                .push(b.columns.iter().map(|c| new_acc(c.agg)).collect());
        }
        let group = &mut self.groups[at];
        for (acc, col) in group.iter_mut().zip(&b.columns) {
            match (acc, col.agg) {
                (Acc::First(first @ None), Agg::Value(c)) => *first = Some(row[c].clone()),
                (Acc::First(_), _) => {}
                (Acc::Count(n), Agg::Count(c)) => {
                    if let Some(Value::Int(v)) = read(c)? {
                        *n = n.checked_add(v).ok_or(MergeError::OutOfRange("bigint"))?;
                    }
                }
                (Acc::Sum(total), Agg::Sum(c)) => add_to(total, b.in_types[c], read(c)?, false)?,
                (Acc::Extreme { max, best }, Agg::Min(c) | Agg::Max(c)) => {
                    if let (Some(v), Some(raw)) = (read(c)?, &row[c]) {
                        let better = match best {
                            None => true,
                            Some((cur, _)) => {
                                let o = v.cmp(cur);
                                if *max {
                                    o.is_gt()
                                } else {
                                    o.is_lt()
                                }
                            }
                        };
                        if better {
                            *best = Some((v, raw.clone()));
                        }
                    }
                }
                (Acc::Avg { sum, count }, Agg::Avg { sum_col, count_col }) => {
                    if let Some(Value::Int(n)) = read(count_col)? {
                        *count = count
                            .checked_add(n)
                            .ok_or(MergeError::OutOfRange("bigint"))?;
                    }
                    add_to(sum, b.in_types[sum_col], read(sum_col)?, true)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The merged rows (all merged columns, hidden ones included), one per group; one row
    /// for a plan without GROUP BY even when no shard returned any.
    pub(crate) fn finish(
        mut self,
        b: &Bound,
        group_by: &[usize],
    ) -> Result<Vec<Vec<Option<Bytes>>>, MergeError> {
        if self.groups.is_empty() && group_by.is_empty() {
            self.groups
                .push(b.columns.iter().map(|c| new_acc(c.agg)).collect());
        }
        let mut rows = Vec::with_capacity(self.groups.len());
        for group in self.groups {
            let mut row = Vec::with_capacity(group.len());
            for (i, acc) in group.into_iter().enumerate() {
                row.push(finish_acc(acc, b.out_types[i])?);
            }
            rows.push(row);
        }
        Ok(rows)
    }
}

fn add_to(
    total: &mut Option<Total>,
    t: Option<ColType>,
    v: Option<Value>,
    for_avg: bool,
) -> Result<(), MergeError> {
    let (Some(v), Some(t)) = (v, t) else {
        return Ok(());
    };
    match total {
        Some(total) => total.add(&v),
        None => {
            *total = Total::start(t.kind, &v, for_avg);
            Ok(())
        }
    }
}

fn new_acc(agg: Agg) -> Acc {
    match agg {
        Agg::Value(_) => Acc::First(None),
        Agg::Count(_) => Acc::Count(0),
        Agg::Sum(_) => Acc::Sum(None),
        Agg::Min(_) => Acc::Extreme {
            max: false,
            best: None,
        },
        Agg::Max(_) => Acc::Extreme {
            max: true,
            best: None,
        },
        Agg::Avg { .. } => Acc::Avg {
            sum: None,
            count: 0,
        },
    }
}

fn finish_acc(acc: Acc, t: Option<ColType>) -> Result<Option<Bytes>, MergeError> {
    let typed = || t.ok_or_else(|| MergeError::InvalidPlan("aggregate of an unknown type".into()));
    Ok(match acc {
        Acc::First(v) => v.flatten(),
        Acc::Count(n) => Some(int8_bytes(n, typed()?)),
        Acc::Sum(None) | Acc::Extreme { best: None, .. } => None,
        Acc::Sum(Some(total)) => Some(total_bytes(&total, typed()?)?),
        Acc::Extreme {
            best: Some((_, raw)),
            ..
        } => Some(raw),
        Acc::Avg { count: 0, .. } | Acc::Avg { sum: None, .. } => None,
        Acc::Avg {
            sum: Some(sum),
            count,
        } => {
            let n = u64::try_from(count).map_err(|_| MergeError::OutOfRange("bigint"))?;
            let t = typed()?;
            Some(match sum {
                Total::Int(s) => {
                    numeric_bytes(&Numeric::Finite(Decimal::from_i128(s).div_count(n)), t)
                }
                Total::Numeric(s) => numeric_bytes(&s.div_count(n), t),
                Total::Float4(s) => float8_bytes(s as f64 / n as f64, t),
                Total::Float8(s) => float8_bytes(s / n as f64, t),
            })
        }
    })
}
