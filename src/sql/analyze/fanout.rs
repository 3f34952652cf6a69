//! Fan-out reads: the query each shard runs and how their answers merge
//! ([`crate::fanout::MergePlan`]).
//!
//! Rewrites (on the AST, printed back with sqlparser): `avg(x)` becomes `sum(x) AS avg` plus a
//! hidden `count(x)`; an ORDER BY expression that is not selected becomes a hidden column;
//! `LIMIT l OFFSET o` becomes `LIMIT l+o` on the shards (no LIMIT at all when aggregating,
//! since one group's rows may be spread over all shards). Everything a merge cannot answer
//! exactly is refused with [`MergeError::Unsupported`] (0A000 and a hint).
//!
//! This runs per fan-out execution on the concrete SQL (a parse, ~10-30 µs, next to several
//! shard round trips), so literal values such as LIMIT's are this statement's own.

use std::ops::ControlFlow;

use sqlparser::ast::{
    Distinct, Expr, FunctionArguments, GroupByExpr, Ident, LimitClause, ObjectName, OrderBy,
    OrderByKind, OrderBySort, Query, Select, SelectItem, SetExpr, Statement, Value, Visit, Visitor,
};

use crate::fanout::{Agg, AggFunc, MergeColumn, MergeError, MergePlan, SortKey};

/// What to send to every shard and how to merge.
#[derive(Debug, Clone)]
pub struct FanOutQuery {
    /// SQL for the shards (the original text when nothing needed rewriting).
    pub shard_sql: String,
    /// The merge, to be resolved against the shards' RowDescription.
    pub spec: PlanSpec,
    /// Parameters (1-based) that gave LIMIT or OFFSET their values; the shards' SQL may no
    /// longer mention them.
    pub limit_params: Vec<usize>,
}

/// The value of a bound parameter (`$n`, 1-based) used as LIMIT or OFFSET.
pub type LimitParam<'a> = &'a dyn Fn(usize) -> Option<u64>;

/// A sort key whose column may only be known from the RowDescription (`SELECT *`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Column index.
    Index(usize),
    /// Column name (resolved against the result's field names).
    Name(String),
}

/// A merge plan before the result's columns are known.
#[derive(Debug, Clone, Default)]
pub struct PlanSpec {
    /// Merged columns; None when the select list has `*` (identity, no aggregates).
    pub columns: Option<Vec<MergeColumn>>,
    /// (column, descending, nulls first).
    pub order_by: Vec<(Target, bool, Option<bool>)>,
    /// Group key column indices.
    pub group_by: Vec<usize>,
    /// SELECT DISTINCT.
    pub distinct: bool,
    /// LIMIT.
    pub limit: Option<u64>,
    /// OFFSET.
    pub offset: u64,
}

impl PlanSpec {
    /// The merge plan for a result with these field names.
    pub fn resolve(&self, fields: &[String]) -> Result<MergePlan, MergeError> {
        let mut order_by = Vec::new();
        for (t, desc, nulls) in &self.order_by {
            let column = match t {
                Target::Index(i) => *i,
                Target::Name(n) => fields.iter().position(|f| f == n).ok_or_else(|| {
                    MergeError::unsupported(
                        format!("ORDER BY {n}"),
                        "name the ORDER BY columns in the select list",
                    )
                })?,
            };
            let key = if *desc {
                SortKey::desc(column)
            } else {
                SortKey::asc(column)
            };
            order_by.push(match nulls {
                Some(n) => key.nulls_first(*n),
                None => key,
            });
        }
        let plan = MergePlan {
            columns: self.columns.clone().unwrap_or_default(),
            group_by: self.group_by.clone(),
            order_by,
            distinct: self.distinct,
            limit: self.limit,
            offset: self.offset,
        };
        plan.validate()?;
        Ok(plan)
    }
}

const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "bool_and",
    "bool_or",
    "every",
    "string_agg",
    "array_agg",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "xmlagg",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "corr",
    "covar_pop",
    "covar_samp",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "bit_and",
    "bit_or",
    "bit_xor",
];

fn func_name(name: &ObjectName) -> String {
    super::object_name(name)
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_string()
}

struct HasAggregate(bool);

impl Visitor for HasAggregate {
    type Break = ();
    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = e {
            if AGGREGATES.contains(&func_name(&f.name).as_str()) || f.over.is_some() {
                self.0 = true;
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }
}

fn has_aggregate(e: &Expr) -> bool {
    let mut v = HasAggregate(false);
    let _ = e.visit(&mut v);
    v.0
}

fn number(e: &Expr, param: LimitParam, used: &mut Vec<usize>) -> Option<u64> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse().ok(),
            Value::Placeholder(p) => {
                let n: usize = p.strip_prefix('$')?.parse().ok()?;
                let v = param(n)?;
                used.push(n);
                Some(v)
            }
            _ => None,
        },
        _ => None,
    }
}

fn unsupported(what: impl Into<String>, hint: &str) -> MergeError {
    MergeError::unsupported(what.into(), hint)
}

/// Plans a read that runs on every shard. `sql` must be one SELECT.
pub fn fan_out_query(sql: &str) -> Result<FanOutQuery, MergeError> {
    fan_out_query_with(sql, &|_| None)
}

/// [`fan_out_query`] for a statement with bound parameters: `param` gives the value of a
/// `$n` used as LIMIT or OFFSET.
pub fn fan_out_query_with(sql: &str, param: LimitParam) -> Result<FanOutQuery, MergeError> {
    let dialect = sqlparser::dialect::PostgreSqlDialect {};
    let mut stmts = sqlparser::parser::Parser::parse_sql(&dialect, sql).map_err(|e| {
        unsupported(
            format!("query the proxy cannot parse ({e})"),
            "route it to one shard with /* shardgate: shard=NAME */",
        )
    })?;
    let single = stmts.len() == 1;
    let Some(Statement::Query(query)) = stmts.first_mut().filter(|_| single) else {
        return Err(unsupported(
            "this statement on several shards",
            "route it to one shard",
        ));
    };
    let mut limit_params = Vec::new();
    plan_query(query, param, &mut limit_params).map(|(spec, changed)| FanOutQuery {
        shard_sql: if changed {
            query.to_string()
        } else {
            sql.to_string()
        },
        spec,
        limit_params,
    })
}

fn plan_query(
    q: &mut Query,
    param: LimitParam,
    used: &mut Vec<usize>,
) -> Result<(PlanSpec, bool), MergeError> {
    let hint =
        "route the query to one shard (a shard key condition, or /* shardgate: shard=NAME */)";
    if q.with.is_some() {
        return Err(unsupported("WITH queries over several shards", hint));
    }
    if q.fetch.is_some() {
        return Err(unsupported("FETCH FIRST over several shards", "use LIMIT"));
    }
    let mut changed = false;
    let mut spec = PlanSpec::default();
    limit_offset(q, param, used, &mut spec)?;
    let SetExpr::Select(select) = q.body.as_mut() else {
        return Err(unsupported(
            "set operations (UNION, INTERSECT, EXCEPT) over several shards",
            hint,
        ));
    };
    if select.having.is_some() {
        return Err(MergeError::having());
    }
    match &select.distinct {
        None | Some(Distinct::All) => {}
        Some(Distinct::Distinct) => spec.distinct = true,
        Some(Distinct::On(_)) => {
            return Err(unsupported("SELECT DISTINCT ON over several shards", hint))
        }
    }
    let SelectList {
        wildcard,
        mut columns,
        hidden,
        texts,
        names,
    } = select_list(select, &mut changed)?;
    let aggregate = columns.iter().any(|c| c.agg.is_aggregate())
        || !matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty());
    if wildcard && aggregate {
        return Err(unsupported(
            "SELECT * with aggregates over several shards",
            "list the columns",
        ));
    }
    // Where a GROUP BY / ORDER BY expression is in the select list.
    let find = |e: &Expr| -> Option<usize> {
        if let Some(n) = number(e, &|_| None, &mut Vec::new()) {
            return (n as usize).checked_sub(1);
        }
        let text = e.to_string();
        if let Some(i) = texts.iter().position(|t| *t == text) {
            return Some(i);
        }
        match e {
            Expr::Identifier(id) => names.iter().position(|n| *n == id.value.to_lowercase()),
            _ => None,
        }
    };
    match &select.group_by {
        GroupByExpr::Expressions(exprs, mods) if mods.is_empty() => {
            for e in exprs {
                let i = find(e).ok_or_else(|| {
                    unsupported(
                        format!("GROUP BY {e} that is not selected"),
                        "select the GROUP BY expressions",
                    )
                })?;
                spec.group_by.push(i);
            }
        }
        _ => return Err(unsupported("this GROUP BY form over several shards", hint)),
    }
    let visible = texts.len();
    let order_hidden = order_by(
        q.order_by.as_ref(),
        &find,
        OrderContext {
            wildcard,
            aggregate,
            hidden_from: visible + hidden.len(),
        },
        &mut spec,
    )?;
    changed |= add_hidden(select, &mut columns, visible, hidden, order_hidden);
    spec.columns = if wildcard { None } else { Some(columns) };
    // What the shards run: no LIMIT when aggregating, LIMIT limit+offset otherwise.
    if spec.limit.is_some() || spec.offset > 0 {
        let shard_limit = if aggregate {
            None
        } else {
            spec.limit.map(|l| l.saturating_add(spec.offset))
        };
        q.limit_clause = shard_limit.map(|l| LimitClause::LimitOffset {
            limit: Some(Expr::value(Value::Number(l.to_string(), false))),
            offset: None,
            limit_by: Vec::new(),
        });
        changed = true;
    }
    if aggregate && q.order_by.is_some() {
        q.order_by = None;
        changed = true;
    }
    Ok((spec, changed))
}

/// Appends the columns the shards add after the `visible` ones: the counts of `avg` first,
/// then sort keys. Returns whether the select list changed.
fn add_hidden(
    select: &mut Select,
    columns: &mut Vec<MergeColumn>,
    visible: usize,
    hidden: Vec<Expr>,
    order_hidden: Vec<Expr>,
) -> bool {
    let changed = !hidden.is_empty() || !order_hidden.is_empty();
    let mut next = visible;
    for c in columns.iter_mut() {
        if let Agg::Avg { count_col, .. } = &mut c.agg {
            *count_col = next;
            next += 1;
        }
    }
    for (n, e) in hidden.into_iter().enumerate() {
        select.projection.push(SelectItem::ExprWithAlias {
            expr: e,
            alias: Ident::new(format!("_sg_count_{n}")),
        });
        columns.push(MergeColumn::hidden(Agg::Value(visible + n)));
    }
    for (n, e) in order_hidden.into_iter().enumerate() {
        let idx = next + n;
        select.projection.push(SelectItem::ExprWithAlias {
            expr: e,
            alias: Ident::new(format!("_sg_sort_{n}")),
        });
        columns.push(MergeColumn::hidden(Agg::Value(idx)));
    }
    changed
}

/// LIMIT / OFFSET into `spec` (a bind parameter by `param`, recorded in `used`).
fn limit_offset(
    q: &Query,
    param: LimitParam,
    used: &mut Vec<usize>,
    spec: &mut PlanSpec,
) -> Result<(), MergeError> {
    match &q.limit_clause {
        None => {}
        Some(LimitClause::LimitOffset {
            limit,
            offset,
            limit_by,
        }) if limit_by.is_empty() => {
            spec.limit = match limit {
                None => None,
                Some(e) => Some(number(e, param, used).ok_or_else(|| {
                    unsupported("a LIMIT that is not a number", "write LIMIT as a constant")
                })?),
            };
            spec.offset = match offset {
                None => 0,
                Some(o) => number(&o.value, param, used).ok_or_else(|| {
                    unsupported(
                        "an OFFSET that is not a number",
                        "write OFFSET as a constant",
                    )
                })?,
            };
        }
        Some(_) => return Err(unsupported("this LIMIT form", "use LIMIT n OFFSET m")),
    }
    Ok(())
}

/// The select list of a fan-out query, column by column.
struct SelectList {
    /// It has a `*`.
    wildcard: bool,
    /// How each column merges.
    columns: Vec<MergeColumn>,
    /// Columns the shards add (the counts of `avg`).
    hidden: Vec<Expr>,
    /// Each item's text (empty for `*`).
    texts: Vec<String>,
    /// Each item's output name, where known.
    names: Vec<String>,
}

/// Plans the select list; `avg(x)` becomes `sum(x)` plus a hidden `count(x)` (`changed`).
fn select_list(select: &mut Select, changed: &mut bool) -> Result<SelectList, MergeError> {
    let hint =
        "route the query to one shard (a shard key condition, or /* shardgate: shard=NAME */)";
    let mut wildcard = false;
    let mut columns = Vec::new();
    let mut hidden = Vec::new();
    let mut texts = Vec::new();
    let mut names = Vec::new();
    for item in select.projection.iter_mut() {
        let (expr, alias) = match item {
            SelectItem::UnnamedExpr(e) => (e, None),
            SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias.value.clone())),
            _ => {
                wildcard = true;
                texts.push(String::new());
                names.push(String::new());
                continue;
            }
        };
        let i = texts.len();
        texts.push(expr.to_string());
        names.push(alias.clone().unwrap_or_else(|| match &*expr {
            Expr::Identifier(id) => id.value.to_lowercase(),
            Expr::CompoundIdentifier(p) => {
                p.last().map(|x| x.value.to_lowercase()).unwrap_or_default()
            }
            _ => String::new(),
        }));
        let Expr::Function(f) = &*expr else {
            if has_aggregate(expr) {
                return Err(unsupported(format!("{expr} over several shards"), "select the aggregates themselves; compute expressions over them in the application"));
            }
            columns.push(MergeColumn::new(Agg::Value(i)));
            continue;
        };
        let name = func_name(&f.name);
        if f.over.is_some() {
            return Err(unsupported("window functions over several shards", hint));
        }
        if !AGGREGATES.contains(&name.as_str()) {
            if has_aggregate(expr) {
                return Err(unsupported(
                    format!("{expr} over several shards"),
                    "select the aggregates themselves",
                ));
            }
            columns.push(MergeColumn::new(Agg::Value(i)));
            continue;
        }
        let distinct =
            matches!(&f.args, FunctionArguments::List(l) if l.duplicate_treatment.is_some());
        if f.filter.is_some() || !f.within_group.is_empty() {
            return Err(unsupported(
                format!("{name} with FILTER or WITHIN GROUP over several shards"),
                hint,
            ));
        }
        let agg = AggFunc::classify(&name, distinct)?;
        columns.push(MergeColumn::new(match agg {
            AggFunc::Count => Agg::Count(i),
            AggFunc::Sum => Agg::Sum(i),
            AggFunc::Min => Agg::Min(i),
            AggFunc::Max => Agg::Max(i),
            AggFunc::Avg => {
                let mut count = f.clone();
                count.name = ObjectName::from(vec![Ident::new("count")]);
                let mut sum = f.clone();
                sum.name = ObjectName::from(vec![Ident::new("sum")]);
                hidden.push(Expr::Function(count));
                let alias = Ident::new(alias.unwrap_or_else(|| "avg".into()));
                *item = SelectItem::ExprWithAlias {
                    expr: Expr::Function(sum),
                    alias,
                };
                *changed = true;
                Agg::Avg {
                    sum_col: i,
                    count_col: usize::MAX,
                }
            }
        }));
    }
    Ok(SelectList {
        wildcard,
        columns,
        hidden,
        texts,
        names,
    })
}

/// What ORDER BY planning needs to know of the select list.
#[derive(Clone, Copy)]
struct OrderContext {
    wildcard: bool,
    aggregate: bool,
    /// The index of the first sort column the shards may add.
    hidden_from: usize,
}

/// ORDER BY into `spec`; returns the sort keys the shards must add as hidden columns.
fn order_by(
    order: Option<&OrderBy>,
    find: &dyn Fn(&Expr) -> Option<usize>,
    cx: OrderContext,
    spec: &mut PlanSpec,
) -> Result<Vec<Expr>, MergeError> {
    let mut order_hidden = Vec::new();
    if let Some(ob) = order {
        let OrderByKind::Expressions(keys) = &ob.kind else {
            return Err(unsupported("ORDER BY ALL", "name the columns"));
        };
        for k in keys {
            let desc = matches!(k.options.sort, Some(OrderBySort::Desc));
            if matches!(k.options.sort, Some(OrderBySort::Using(_))) {
                return Err(unsupported("ORDER BY ... USING", "use ASC or DESC"));
            }
            let target = match find(&k.expr) {
                Some(i) => Target::Index(i),
                None if cx.wildcard => match &k.expr {
                    Expr::Identifier(id) => Target::Name(id.value.to_lowercase()),
                    Expr::CompoundIdentifier(p) => {
                        Target::Name(p.last().map(|x| x.value.to_lowercase()).unwrap_or_default())
                    }
                    _ => return Err(MergeError::order_by_not_selected(&k.expr.to_string())),
                },
                None if cx.aggregate || spec.distinct => {
                    return Err(MergeError::order_by_not_selected(&k.expr.to_string()))
                }
                None => {
                    // Sort on a hidden column the shards add.
                    let idx = cx.hidden_from + order_hidden.len();
                    order_hidden.push(k.expr.clone());
                    Target::Index(idx)
                }
            };
            spec.order_by.push((target, desc, k.options.nulls_first));
        }
    }
    Ok(order_hidden)
}

#[cfg(test)]
mod tests;
