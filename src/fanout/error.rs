//! [`MergeError`]: why a multi-shard result cannot be merged, with the SQLSTATE the client sees.

use crate::protocol::{sqlstate, PgError};

/// SQLSTATE `22003`: a merged sum left its type's range (as `bigint out of range`).
pub const NUMERIC_VALUE_OUT_OF_RANGE: &str = sqlstate::NUMERIC_VALUE_OUT_OF_RANGE;

/// Why a merge cannot produce the answer one database would give.
///
/// [`MergeError::Unsupported`] is the caller's cue to refuse the query up front (SQLSTATE
/// `0A000` with a hint); the other variants arise while merging and mean a caller bug, a
/// shard that broke the protocol, or a value the merge cannot represent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// The query needs something a merge of per-shard results cannot compute exactly.
    #[error("{what} is not supported in a query that runs on several shards")]
    Unsupported {
        /// What is unsupported, e.g. `aggregate string_agg`.
        what: String,
        /// What the user can do instead.
        hint: String,
    },
    /// The plan contradicts itself or the shards' columns (a bug in whoever built it).
    #[error("invalid merge plan: {0}")]
    InvalidPlan(String),
    /// A shard sent a message that is malformed or out of place.
    #[error("malformed result from shard {shard}: {reason}")]
    Malformed {
        /// Index of the shard (as passed to the merger).
        shard: usize,
        /// What is wrong.
        reason: String,
    },
    /// The shards answered differently in shape (columns, types, command tags).
    #[error("shard results do not match: {0}")]
    Mismatch(String),
    /// A merged value does not fit its type (e.g. a `bigint` sum beyond 2^63).
    #[error("{0} out of range")]
    OutOfRange(&'static str),
}

impl MergeError {
    /// An [`MergeError::Unsupported`] with a hint.
    pub fn unsupported(what: impl Into<String>, hint: impl Into<String>) -> MergeError {
        MergeError::Unsupported {
            what: what.into(),
            hint: hint.into(),
        }
    }

    /// The refusal for `ORDER BY` on an expression the plan cannot see in the shards' rows.
    pub fn order_by_not_selected(expr: &str) -> MergeError {
        MergeError::unsupported(
            format!("ORDER BY {expr}, which is not in the select list,"),
            "add the expression to the select list, or route the query to one shard",
        )
    }

    /// The refusal for `HAVING`, which filters whole groups that only exist after the merge.
    pub fn having() -> MergeError {
        MergeError::unsupported(
            "HAVING",
            "filter in an outer query, e.g. SELECT * FROM (SELECT ... GROUP BY ...) s WHERE ..., \
             or route the query to one shard",
        )
    }

    /// The SQLSTATE a client should see for this error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            MergeError::Unsupported { .. } => sqlstate::FEATURE_NOT_SUPPORTED,
            MergeError::OutOfRange(_) => NUMERIC_VALUE_OUT_OF_RANGE,
            MergeError::InvalidPlan(_) | MergeError::Malformed { .. } | MergeError::Mismatch(_) => {
                sqlstate::INTERNAL_ERROR
            }
        }
    }

    /// The ErrorResponse for the client (`ERROR` severity, with the hint when there is one).
    pub fn to_pg_error(&self) -> PgError {
        let e = PgError::error(self.sqlstate(), self.to_string());
        match self {
            MergeError::Unsupported { hint, .. } => e.with_hint(hint.clone()),
            _ => e,
        }
    }
}

/// Shorthand for a [`MergeError::Malformed`].
pub(crate) fn malformed(shard: usize, reason: impl Into<String>) -> MergeError {
    MergeError::Malformed {
        shard,
        reason: reason.into(),
    }
}
