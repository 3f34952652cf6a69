//! [`MergePlan`]: what the merge does with the shards' rows, and the checks that it can do it
//! exactly.
//!
//! Two index spaces: a plan lists *merged columns* ([`MergePlan::columns`]), each computed from
//! *shard columns* (the columns of the rewritten query the shards run). Sort keys, group keys
//! and DISTINCT refer to merged columns; a merged column may be hidden, so helper columns
//! (the `count` half of an `avg`, a sort key the client did not select) reach the merge but
//! not the client.

use super::error::MergeError;
use super::value::{oid, ColType, Kind};
use super::wire::{Field, RowDescription};

/// One ORDER BY key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortKey {
    /// Index of the merged column to sort by.
    pub column: usize,
    /// `DESC`.
    pub descending: bool,
    /// `NULLS FIRST` (Postgres's default: NULLS LAST for ASC, NULLS FIRST for DESC).
    pub nulls_first: bool,
}

impl SortKey {
    /// `column ASC` (NULLS LAST).
    pub fn asc(column: usize) -> SortKey {
        SortKey {
            column,
            descending: false,
            nulls_first: false,
        }
    }

    /// `column DESC` (NULLS FIRST).
    pub fn desc(column: usize) -> SortKey {
        SortKey {
            column,
            descending: true,
            nulls_first: true,
        }
    }

    /// Overrides the NULL placement (`NULLS FIRST` when `first`, else `NULLS LAST`).
    pub fn nulls_first(mut self, first: bool) -> SortKey {
        self.nulls_first = first;
        self
    }
}

/// How a merged column is computed from shard columns (indexes into the shards' rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    /// A shard column as it is. In an aggregating plan: a group key, or a value that is
    /// functionally dependent on the group keys (the first value seen is used).
    Value(usize),
    /// `count(...)`: the shards' `bigint` counts, summed. Never NULL.
    Count(usize),
    /// `sum(x)`: the shards' sums (`bigint`, `numeric`, `real`, `double precision`) added
    /// exactly (integers and numerics) or in the column's float type. NULL when all are NULL.
    Sum(usize),
    /// `min(x)` (also `bool_and` / `every` on booleans), compared by the column's type.
    Min(usize),
    /// `max(x)` (also `bool_or` on booleans), compared by the column's type.
    Max(usize),
    /// `avg(x)`, sent to the shards as `sum(x)` in `sum_col` and `count(x)` in `count_col`:
    /// the merged sum divided by the merged count, as `numeric` (Postgres's `avg` of integers
    /// and numerics) or `double precision` (when the sum is a float). The output column
    /// takes the name of `sum_col`, so the caller aliases it (`sum(x) AS avg`).
    Avg {
        /// Shard column holding `sum(x)`.
        sum_col: usize,
        /// Shard column holding `count(x)` (not `count(*)`: NULLs must not count).
        count_col: usize,
    },
}

impl Agg {
    /// True for the aggregate variants (everything but [`Agg::Value`]).
    pub fn is_aggregate(&self) -> bool {
        !matches!(self, Agg::Value(_))
    }

    fn sources(&self) -> [Option<usize>; 2] {
        match *self {
            Agg::Value(c) | Agg::Count(c) | Agg::Sum(c) | Agg::Min(c) | Agg::Max(c) => {
                [Some(c), None]
            }
            Agg::Avg { sum_col, count_col } => [Some(sum_col), Some(count_col)],
        }
    }
}

/// One merged column: how it is computed and whether the client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeColumn {
    /// How the value is computed.
    pub agg: Agg,
    /// A helper column (a sort or group key the client did not select): merged, not sent.
    pub hidden: bool,
}

impl MergeColumn {
    /// A visible column.
    pub fn new(agg: Agg) -> MergeColumn {
        MergeColumn { agg, hidden: false }
    }

    /// A hidden helper column.
    pub fn hidden(agg: Agg) -> MergeColumn {
        MergeColumn { agg, hidden: true }
    }
}

/// The aggregate functions a merge can combine, as [`AggFunc::classify`] reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggFunc {
    /// `count(*)`, `count(x)`.
    Count,
    /// `sum(x)`.
    Sum,
    /// `min(x)`, and `bool_and(x)` / `every(x)` (the minimum of booleans).
    Min,
    /// `max(x)`, and `bool_or(x)` (the maximum of booleans).
    Max,
    /// `avg(x)`: rewrite to `sum(x), count(x)` and use [`Agg::Avg`].
    Avg,
}

impl AggFunc {
    /// Decides whether a call of aggregate `name` (lower case, without schema) can be merged
    /// from per-shard results; `distinct` is `name(DISTINCT ...)`.
    pub fn classify(name: &str, distinct: bool) -> Result<AggFunc, MergeError> {
        let f = match name {
            "count" => AggFunc::Count,
            "sum" => AggFunc::Sum,
            "min" | "bool_and" | "every" => AggFunc::Min,
            "max" | "bool_or" => AggFunc::Max,
            "avg" => AggFunc::Avg,
            "string_agg" | "array_agg" | "json_agg" | "jsonb_agg" | "json_object_agg"
            | "jsonb_object_agg" | "xmlagg" => {
                return Err(MergeError::unsupported(
                    format!("aggregate {name}"),
                    "its result depends on row order across shards; aggregate on one shard, \
                     or fetch the rows and aggregate in the application",
                ))
            }
            _ => {
                return Err(MergeError::unsupported(
                    format!("aggregate {name}"),
                    "only count, sum, min, max, avg, bool_and, bool_or and every can be \
                     combined across shards; route the query to one shard or compute it in \
                     the application",
                ))
            }
        };
        if distinct && matches!(f, AggFunc::Count | AggFunc::Sum | AggFunc::Avg) {
            return Err(MergeError::unsupported(
                format!("{name}(DISTINCT ...)"),
                "the same value can occur on several shards; use SELECT count(*) FROM \
                 (SELECT DISTINCT ...) s, or route the query to one shard",
            ));
        }
        Ok(f)
    }
}

/// What to do with several shards' results for one statement, so the client gets what a
/// single database would have answered.
///
/// The shards run a rewritten statement: with the ORDER BY (so each stream is sorted), with
/// `LIMIT limit + offset` and without OFFSET when there is no aggregation (see
/// [`MergePlan::shard_limit`]), with `avg(x)` replaced by `sum(x), count(x)`, and with any
/// hidden helper columns added to the select list.
///
/// An empty `columns` list passes every shard column through as a visible
/// [`Agg::Value`]. A plan aggregates when it has a GROUP BY or an aggregate column; it then
/// yields one row per group (one row in total without GROUP BY, even when no shard has rows),
/// and ORDER BY, DISTINCT, OFFSET and LIMIT apply to those rows.
///
/// `SELECT bid, count(*), avg(abalance) FROM t GROUP BY bid ORDER BY bid LIMIT 5` runs on
/// the shards as `SELECT bid, count(*), sum(abalance) AS avg, count(abalance) FROM t GROUP
/// BY bid ORDER BY bid` (no LIMIT: a group's rows may be spread over shards) and merges with:
///
/// ```
/// use shardgate::fanout::{Agg, MergeColumn, MergePlan, SortKey};
///
/// let plan = MergePlan {
///     columns: vec![
///         MergeColumn::new(Agg::Value(0)),
///         MergeColumn::new(Agg::Count(1)),
///         MergeColumn::new(Agg::Avg { sum_col: 2, count_col: 3 }),
///     ],
///     group_by: vec![0],
///     order_by: vec![SortKey::asc(0)],
///     limit: Some(5),
///     ..MergePlan::default()
/// };
/// assert!(plan.validate().is_ok());
/// assert_eq!(plan.shard_limit(), None);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergePlan {
    /// The merged columns, in output order (hidden ones are dropped from the output).
    pub columns: Vec<MergeColumn>,
    /// GROUP BY keys: indexes of merged columns, each an [`Agg::Value`].
    pub group_by: Vec<usize>,
    /// ORDER BY keys, in order.
    pub order_by: Vec<SortKey>,
    /// SELECT DISTINCT: equal rows (by the visible columns' type equality) are sent once.
    pub distinct: bool,
    /// LIMIT, applied after the merge.
    pub limit: Option<u64>,
    /// OFFSET, applied after the merge.
    pub offset: u64,
}

/// A plan checked against the shards' columns: types resolved, ready to merge.
#[derive(Debug, Clone)]
pub(crate) struct Bound {
    /// The merged columns (the identity mapping when the plan lists none).
    pub columns: Vec<MergeColumn>,
    /// Types of the shard columns (`None`: a type the merge does not interpret).
    pub in_types: Vec<Option<ColType>>,
    /// Descriptions of the merged columns.
    pub out_fields: Vec<Field>,
    /// Types of the merged columns.
    pub out_types: Vec<Option<ColType>>,
    /// Indexes of the visible merged columns.
    pub visible: Vec<usize>,
    /// Merged rows are the shard rows unchanged (no aggregation, nothing hidden).
    pub identity: bool,
    /// Aggregating plan.
    pub aggregate: bool,
}

impl MergePlan {
    /// A plan that concatenates the shards' rows and sums their command tags.
    pub fn concat() -> MergePlan {
        MergePlan::default()
    }

    /// True when rows are grouped (a GROUP BY or any aggregate column).
    pub fn is_aggregate(&self) -> bool {
        !self.group_by.is_empty() || self.columns.iter().any(|c| c.agg.is_aggregate())
    }

    /// The LIMIT to send to each shard: `limit + offset` for a plan without aggregation
    /// (the shards must not apply the OFFSET), `None` otherwise.
    pub fn shard_limit(&self) -> Option<u64> {
        if self.is_aggregate() {
            return None;
        }
        self.limit.map(|l| l.saturating_add(self.offset))
    }

    /// Checks the plan's structure (before any shard has answered). Errors are
    /// [`MergeError::InvalidPlan`] for inconsistent plans and [`MergeError::Unsupported`] for
    /// queries a merge cannot answer exactly.
    pub fn validate(&self) -> Result<(), MergeError> {
        let invalid = |m: String| Err(MergeError::InvalidPlan(m));
        if self.columns.is_empty() {
            if !self.group_by.is_empty() {
                return invalid("GROUP BY without merged columns".into());
            }
            return Ok(());
        }
        let n = self.columns.len();
        for &g in &self.group_by {
            match self.columns.get(g) {
                Some(c) if !c.agg.is_aggregate() => {}
                Some(_) => return invalid(format!("group key {g} is an aggregate")),
                None => return invalid(format!("group key {g} out of range ({n} columns)")),
            }
        }
        for k in &self.order_by {
            let Some(c) = self.columns.get(k.column) else {
                return invalid(format!("sort key {} out of range ({n} columns)", k.column));
            };
            if self.distinct && c.hidden {
                return Err(MergeError::unsupported(
                    "SELECT DISTINCT with ORDER BY on a column that is not selected",
                    "for SELECT DISTINCT, ORDER BY expressions must appear in the select list",
                ));
            }
        }
        Ok(())
    }

    /// The RowDescription the client gets, given the shards' one (or the one a Describe of
    /// the rewritten statement returned): hidden columns removed, `avg` columns retyped.
    pub fn output_row_description(
        &self,
        shard: &RowDescription,
    ) -> Result<RowDescription, MergeError> {
        let b = self.bind(shard)?;
        Ok(RowDescription {
            fields: b.visible.iter().map(|&i| b.out_fields[i].clone()).collect(),
        })
    }

    /// Resolves the plan against the shards' columns and checks every type it relies on.
    pub(crate) fn bind(&self, shard: &RowDescription) -> Result<Bound, MergeError> {
        self.validate()?;
        let input = &shard.fields;
        let in_types: Vec<Option<ColType>> = input.iter().map(ColType::of).collect();
        let columns = if self.columns.is_empty() {
            (0..input.len())
                .map(|i| MergeColumn::new(Agg::Value(i)))
                .collect()
        } else {
            self.columns.clone()
        };
        let aggregate = self.is_aggregate();
        let mut out_fields = Vec::with_capacity(columns.len());
        for (i, c) in columns.iter().enumerate() {
            for s in c.agg.sources().into_iter().flatten() {
                if s >= input.len() {
                    return Err(MergeError::InvalidPlan(format!(
                        "merged column {i} reads shard column {s}, but shards return {}",
                        input.len()
                    )));
                }
            }
            out_fields.push(output_field(c.agg, input, &in_types)?);
        }
        let out_types: Vec<Option<ColType>> = out_fields.iter().map(ColType::of).collect();
        let visible: Vec<usize> = (0..columns.len()).filter(|&i| !columns[i].hidden).collect();
        let identity = !aggregate
            && visible.len() == input.len()
            && columns
                .iter()
                .enumerate()
                .all(|(i, c)| c.agg == Agg::Value(i) && !c.hidden);

        let need = |i: usize, why: &str| -> Result<(), MergeError> {
            match out_types[i] {
                Some(_) => Ok(()),
                None => Err(unsupported_type(&out_fields[i], why)),
            }
        };
        for k in &self.order_by {
            if k.column >= columns.len() {
                return Err(MergeError::InvalidPlan(format!(
                    "sort key {} out of range ({} columns)",
                    k.column,
                    columns.len()
                )));
            }
            need(k.column, "ORDER BY")?;
        }
        for &g in &self.group_by {
            need(g, "GROUP BY")?;
        }
        if self.distinct {
            for &v in &visible {
                need(v, "SELECT DISTINCT")?;
            }
        }
        Ok(Bound {
            columns,
            in_types,
            out_fields,
            out_types,
            visible,
            identity,
            aggregate,
        })
    }
}

fn unsupported_type(f: &Field, why: &str) -> MergeError {
    MergeError::unsupported(
        format!("{why} on column \"{}\" of type OID {}", f.name, f.type_oid),
        "merging compares integers, floats, numeric, text, bool, bytea, date/time types and \
         uuid; cast the column to one of those, or route the query to one shard",
    )
}

/// The description of a merged column, with the type checks its aggregate needs.
fn output_field(agg: Agg, input: &[Field], types: &[Option<ColType>]) -> Result<Field, MergeError> {
    let kind = |c: usize| types[c].map(|t| t.kind);
    let is_int8 = |c: usize| kind(c) == Some(Kind::Int8);
    let is_sum = |c: usize| {
        matches!(
            kind(c),
            Some(Kind::Int8 | Kind::Numeric | Kind::Float4 | Kind::Float8)
        )
    };
    match agg {
        Agg::Value(c) => Ok(input[c].clone()),
        Agg::Count(c) if is_int8(c) => Ok(input[c].clone()),
        Agg::Count(c) => Err(MergeError::InvalidPlan(format!(
            "count column \"{}\" is not a bigint",
            input[c].name
        ))),
        Agg::Sum(c) if is_sum(c) => Ok(input[c].clone()),
        Agg::Sum(c) => Err(unsupported_type(&input[c], "sum()")),
        Agg::Min(c) | Agg::Max(c) if kind(c).is_some() => Ok(input[c].clone()),
        Agg::Min(c) | Agg::Max(c) => Err(unsupported_type(&input[c], "min()/max()")),
        Agg::Avg { sum_col, count_col } => {
            if !is_int8(count_col) {
                return Err(MergeError::InvalidPlan(format!(
                    "avg count column \"{}\" is not a bigint",
                    input[count_col].name
                )));
            }
            let (type_oid, type_len) = match kind(sum_col) {
                Some(Kind::Int8 | Kind::Numeric) => (oid::NUMERIC, -1),
                Some(Kind::Float4 | Kind::Float8) => (oid::FLOAT8, 8),
                _ => return Err(unsupported_type(&input[sum_col], "avg()")),
            };
            let s = &input[sum_col];
            Ok(Field {
                name: s.name.clone(),
                table_oid: 0,
                column: 0,
                type_oid,
                type_len,
                type_mod: -1,
                format: s.format,
            })
        }
    }
}
