//! [`FanOutCache`]: fan-out plans ([`FanOutQuery`]) cached by statement text, so a read run
//! on several shards is parsed by `sqlparser` for its plan once per text, not once per
//! execution (an extended-protocol statement keeps its text across executions; a simple
//! Query repeats it when its literals repeat).
//!
//! A plan is a pure function of the text, except when a bound parameter gives LIMIT or
//! OFFSET its value: those plans are computed every time and never cached. Refusals are not
//! cached either (they are rare and carry the hint for this text).

use std::num::NonZeroUsize;
use std::sync::Mutex;

use lru::LruCache;

use super::analyze::fanout::{fan_out_query_with, FanOutQuery, LimitParam};
use super::cache::MAX_CACHED_SHAPE_LEN;
use crate::fanout::MergeError;

/// How many texts' plans are kept.
const CAPACITY: usize = 1024;

/// Fan-out plans by statement text; shared by all sessions.
#[derive(Debug)]
pub struct FanOutCache {
    plans: Mutex<LruCache<String, FanOutQuery>>,
}

impl Default for FanOutCache {
    fn default() -> Self {
        FanOutCache::with_capacity(CAPACITY)
    }
}

impl FanOutCache {
    /// A cache of at most `capacity` plans (at least one).
    pub fn with_capacity(capacity: usize) -> FanOutCache {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        FanOutCache {
            plans: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// The plan of `sql` (see [`fan_out_query_with`]), from the cache when it has one.
    pub fn plan(&self, sql: &str, param: LimitParam) -> Result<FanOutQuery, MergeError> {
        if let Some(hit) = self.lock().get(sql) {
            return Ok(hit.clone());
        }
        let q = fan_out_query_with(sql, param)?;
        if q.limit_params.is_empty() && sql.len() <= MAX_CACHED_SHAPE_LEN {
            self.lock().put(sql.to_string(), q.clone());
        }
        Ok(q)
    }

    /// Plans cached now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no plan is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, FanOutQuery>> {
        self.plans.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::FanOutCache;

    #[test]
    fn a_text_is_planned_once_and_answers_as_uncached() {
        let c = FanOutCache::with_capacity(2);
        let sql = "SELECT a, count(*) FROM t GROUP BY a ORDER BY a LIMIT 5";
        let first = c.plan(sql, &|_| None).unwrap();
        assert_eq!(c.len(), 1);
        let second = c
            .plan(sql, &|_| panic!("a cached plan asks for no parameter"))
            .unwrap();
        assert_eq!(first.shard_sql, second.shard_sql);
        assert_eq!(format!("{:?}", first.spec), format!("{:?}", second.spec));
    }

    #[test]
    fn plans_that_depend_on_a_limit_parameter_are_not_cached() {
        let c = FanOutCache::default();
        let sql = "SELECT a FROM t ORDER BY a LIMIT $1";
        let q = c.plan(sql, &|n| (n == 1).then_some(3)).unwrap();
        assert_eq!(q.limit_params, [1]);
        assert!(c.is_empty());
        let q = c.plan(sql, &|n| (n == 1).then_some(7)).unwrap();
        assert_eq!(q.spec.limit, Some(7), "the new value is used");
    }

    #[test]
    fn refusals_are_not_cached_and_the_least_recent_plan_goes_first() {
        let c = FanOutCache::with_capacity(1);
        assert!(c
            .plan("SELECT string_agg(a, ',') FROM t", &|_| None)
            .is_err());
        assert!(c.is_empty());
        c.plan("SELECT a FROM t", &|_| None).unwrap();
        c.plan("SELECT b FROM t", &|_| None).unwrap();
        assert_eq!(c.len(), 1);
    }
}
