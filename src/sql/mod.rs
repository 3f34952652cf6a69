//! SQL text analysis. `scan` is a fast single-pass lexer for the few decisions that need no
//! parse tree (statement boundaries, leading keywords, session-state commands).

pub mod scan;
