//! Splitting a multi-row INSERT into one INSERT per shard (literal rows, or bind parameters
//! renumbered per part).

use sqlparser::ast::{Expr, SetExpr, Statement, Value};

use crate::shard::ShardId;

/// Splits a multi-row `INSERT ... VALUES` into one INSERT per shard: `row_shards[i]` is the
/// shard of the i-th row. Returns (shard, SQL) in shard order. The SQL is printed back by
/// sqlparser from the parsed statement with only the VALUES rows filtered.
pub fn split_insert(sql: &str, row_shards: &[ShardId]) -> Result<Vec<(ShardId, String)>, String> {
    let dialect = sqlparser::dialect::PostgreSqlDialect {};
    let stmts = sqlparser::parser::Parser::parse_sql(&dialect, sql).map_err(|e| e.to_string())?;
    let [Statement::Insert(ins)] = stmts.as_slice() else {
        return Err("not a single INSERT".into());
    };
    let Some(src) = &ins.source else {
        return Err("INSERT without VALUES".into());
    };
    let SetExpr::Values(values) = src.body.as_ref() else {
        return Err("INSERT without VALUES".into());
    };
    if values.rows.len() != row_shards.len() {
        return Err("row count changed".into());
    }
    let mut shards = row_shards.to_vec();
    shards.sort_unstable();
    shards.dedup();
    let mut out = Vec::with_capacity(shards.len());
    for s in shards {
        let mut part = ins.clone();
        let mut body = (**src).clone();
        if let SetExpr::Values(v) = body.body.as_mut() {
            v.rows = values
                .rows
                .iter()
                .zip(row_shards)
                .filter(|(_, rs)| **rs == s)
                .map(|(r, _)| r.clone())
                .collect();
        }
        part.source = Some(Box::new(body));
        out.push((s, Statement::Insert(part).to_string()));
    }
    Ok(out)
}

/// [`split_insert`] for a statement with bound parameters: each part's `$n` are renumbered
/// from `$1` in order of appearance; returned with each part are the original (1-based)
/// numbers its parameters take their values from.
pub fn split_insert_params(
    sql: &str,
    row_shards: &[ShardId],
) -> Result<Vec<(ShardId, String, Vec<usize>)>, String> {
    let dialect = sqlparser::dialect::PostgreSqlDialect {};
    split_insert(sql, row_shards)?
        .into_iter()
        .map(|(shard, text)| {
            let mut stmts =
                sqlparser::parser::Parser::parse_sql(&dialect, &text).map_err(|e| e.to_string())?;
            let mut order: Vec<usize> = Vec::new();
            let _ = sqlparser::ast::visit_expressions_mut(&mut stmts, |e| {
                if let Expr::Value(v) = e {
                    if let Value::Placeholder(p) = &mut v.value {
                        if let Some(n) = p.strip_prefix('$').and_then(|n| n.parse().ok()) {
                            let new = match order.iter().position(|o| *o == n) {
                                Some(i) => i + 1,
                                None => {
                                    order.push(n);
                                    order.len()
                                }
                            };
                            *p = format!("${new}");
                        }
                    }
                }
                std::ops::ControlFlow::<()>::Continue(())
            });
            let text = stmts.first().map(|s| s.to_string()).unwrap_or(text);
            Ok((shard, text, order))
        })
        .collect()
}

#[cfg(test)]
mod split_tests {
    use super::{split_insert, split_insert_params};
    use crate::shard::ShardId;

    fn ids(indexes: &[usize]) -> Vec<ShardId> {
        indexes.iter().copied().map(ShardId::new).collect()
    }

    #[test]
    fn parameters_are_renumbered_per_part() {
        let sql = "INSERT INTO t (k, v) VALUES ($1, $2), ($3, $4), ($5, $2) RETURNING k, $6";
        let parts = split_insert_params(sql, &ids(&[1, 0, 1])).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].0, ShardId::new(0));
        assert_eq!(
            parts[0].1,
            "INSERT INTO t (k, v) VALUES ($1, $2) RETURNING k, $3"
        );
        assert_eq!(parts[0].2, [3, 4, 6]);
        assert_eq!(
            parts[1].1,
            "INSERT INTO t (k, v) VALUES ($1, $2), ($3, $2) RETURNING k, $4"
        );
        assert_eq!(parts[1].2, [1, 2, 5, 6]);
    }

    #[test]
    fn splits_rows_by_shard() {
        let parts = split_insert(
            "INSERT INTO t (id, v) VALUES (1, 'a'), (2, 'b'), (3, 'c') RETURNING id",
            &ids(&[1, 0, 1]),
        )
        .unwrap();
        assert_eq!(
            parts,
            [
                (
                    ShardId::new(0),
                    "INSERT INTO t (id, v) VALUES (2, 'b') RETURNING id".to_string()
                ),
                (
                    ShardId::new(1),
                    "INSERT INTO t (id, v) VALUES (1, 'a'), (3, 'c') RETURNING id".to_string()
                )
            ]
        );
        assert!(split_insert("INSERT INTO t SELECT 1", &ids(&[0])).is_err());
    }
}
