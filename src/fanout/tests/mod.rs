//! Merge tests, one file per topic.

mod plan;
