//! Where a compared value comes from: a literal of the shape, a `$n` parameter, or neither
//! (an expression the router cannot evaluate).

use super::*;

/// The source of the value `expr` (a literal or parameter, possibly under a value-preserving
/// cast), by its shape position.
pub(super) fn value_ref(expr: &Expr, pos: &Positions<'_>) -> ValueRef {
    match expr {
        Expr::Value(v) => match &v.value {
            // A parameter is a shape literal too (`$?`), and statements of one shape may
            // have a literal or a parameter there: refer to the shape position.
            Value::Placeholder(p) => match pos.literal(v) {
                Some(index) => ValueRef::Literal {
                    index,
                    negative: false,
                },
                None => p
                    .strip_prefix('$')
                    .and_then(|n| n.parse().ok())
                    .map_or(ValueRef::Other, ValueRef::Param),
            },
            Value::Null => ValueRef::Null,
            Value::Number(..)
            | Value::SingleQuotedString(_)
            | Value::EscapedStringLiteral(_)
            | Value::DollarQuotedString(_) => match pos.literal(v) {
                Some(index) => ValueRef::Literal {
                    index,
                    negative: false,
                },
                None => ValueRef::Other,
            },
            _ => ValueRef::Other,
        },
        Expr::TypedString(t) if value_preserving(&t.data_type) => match pos.literal(&t.value) {
            Some(index) => ValueRef::Literal {
                index,
                negative: false,
            },
            None => ValueRef::Other,
        },
        // A cast keeps the key's value only to the key types themselves (`'abc'::char(2)`
        // is `'ab'`, `4.6::int` is 5): other casts are not evaluated here.
        Expr::Cast {
            expr, data_type, ..
        } if value_preserving(data_type) => value_ref(expr, pos),
        Expr::Nested(expr) => value_ref(expr, pos),
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match value_ref(expr, pos) {
            ValueRef::Literal { index, negative } => ValueRef::Literal {
                index,
                negative: !negative,
            },
            _ => ValueRef::Other,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Plus,
            expr,
        } => value_ref(expr, pos),
        _ => ValueRef::Other,
    }
}

/// Whether a cast to this type leaves a key's text as it is (integer, text and uuid types
/// without a length): then the key is read from the literal under the cast.
fn value_preserving(t: &sqlparser::ast::DataType) -> bool {
    let name = t.to_string().to_ascii_lowercase();
    matches!(
        name.as_str(),
        "bigint"
            | "int8"
            | "integer"
            | "int"
            | "int4"
            | "smallint"
            | "int2"
            | "text"
            | "varchar"
            | "character varying"
            | "uuid"
    )
}
