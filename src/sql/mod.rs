//! SQL text analysis, no I/O.
//!
//! - [`scan`]: a fast single-pass lexer for the few decisions that need no parse tree
//!   (statement boundaries, leading keywords, session-state commands).
//! - [`mod@shape`]: replaces literals and `$n` parameters with a placeholder, keeping the values.
//! - [`analyze`]: classifies a statement with `sqlparser` (the only file that sees its AST);
//!   `patch` retries syntax the parser lacks, [`write_functions`] lists functions with side
//!   effects.
//! - [`hints`]: comment hints and `SET shardgate.*` proxy settings; [`hints::RouteFacts`].
//! - [`cache`]: [`AnalysisCache`], analyses cached by shape; the entry point for sessions.
//! - [`plan_cache`]: [`FanOutCache`], fan-out plans cached by statement text.

pub mod analyze;
pub mod cache;
pub mod hints;
mod patch;
pub mod plan_cache;
pub mod scan;
pub mod shape;
pub mod write_functions;

pub use analyze::{classify, Analysis, Kind};
pub use cache::AnalysisCache;
pub use plan_cache::FanOutCache;
pub use shape::{shape, shape_text_into, Literal, Shape};

#[cfg(test)]
mod tests;
