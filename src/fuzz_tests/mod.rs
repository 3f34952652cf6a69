//! Property / fuzz tests for every function that reads client bytes, server bytes or SQL text
//! (issue 9, "no panic on any input").
//!
//! Each target runs on arbitrary bytes and on structured-but-corrupted inputs (valid messages
//! with lying length fields and counts, truncated, spliced) and asserts: no panic, the call
//! returns (a watchdog aborts with the input if one case runs longer than
//! `SHARDGATE_FUZZ_STALL_SECS`, default 60), and the bytes allocated are bounded by the bytes
//! given, never by a length read from them (a counting allocator, see [`alloc`]).
//!
//! `SHARDGATE_FUZZ_CASES` (default 100000) cases per target: half with a fixed seed, half with
//! a seed chosen per run; both are printed. `SHARDGATE_FUZZ_SEED=<n>` runs all cases with that
//! one seed, to reproduce a failure. The long run (README, "Fuzzing"):
//! `SHARDGATE_FUZZ_CASES=10000000 cargo test --profile fuzz --lib fuzz_tests -- --test-threads=2`.

mod admin;
mod alloc;
mod copy_in;
mod machine;
mod pipeline;
mod protocol;
mod server;
mod sql;

use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};

pub use alloc::measure;

/// The fixed seed every run starts with.
const FIXED_SEED: u64 = 0x5348_4152_4447_4154;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Cases per target.
fn cases() -> u32 {
    env_u64("SHARDGATE_FUZZ_CASES").map_or(100_000, |n| n.clamp(1, u32::MAX as u64) as u32)
}

/// The seeds of this run: (seed, cases, why) for `n` cases in all.
fn runs(n: u32) -> Vec<(u64, u32, &'static str)> {
    match env_u64("SHARDGATE_FUZZ_SEED") {
        Some(seed) => vec![(seed, n, "SHARDGATE_FUZZ_SEED")],
        None => {
            let random = rand::random::<u64>();
            vec![
                (FIXED_SEED, n / 2 + n % 2, "fixed"),
                (random, n / 2, "chosen for this run"),
            ]
        }
    }
}

/// Aborts the process, printing the input, when a case does not finish in time.
struct Watchdog<T> {
    ticks: Arc<AtomicU64>,
    current: Arc<Mutex<Option<T>>>,
    done: Arc<AtomicBool>,
}

impl<T: Debug + Send + 'static> Watchdog<T> {
    fn start(target: &'static str, seed: u64) -> Watchdog<T> {
        let w = Watchdog {
            ticks: Arc::new(AtomicU64::new(0)),
            current: Arc::new(Mutex::new(None)),
            done: Arc::new(AtomicBool::new(false)),
        };
        let (ticks, current, done) = (w.ticks.clone(), w.current.clone(), w.done.clone());
        let stall = Duration::from_secs(env_u64("SHARDGATE_FUZZ_STALL_SECS").unwrap_or(60));
        std::thread::spawn(move || {
            let (mut last, mut since) = (u64::MAX, Instant::now());
            while !done.load(Ordering::Relaxed) {
                // A watchdog polls by nature; it waits for nothing to become ready.
                std::thread::sleep(Duration::from_millis(200));
                let now = ticks.load(Ordering::Relaxed);
                if now != last {
                    (last, since) = (now, Instant::now());
                } else if since.elapsed() > stall {
                    let input = current.lock().map(|c| format!("{c:?}")).unwrap_or_default();
                    eprintln!(
                        "fuzz target {target} (seed {seed}): one case ran longer than {stall:?} \
                         (endless loop?); input: {input}"
                    );
                    std::process::abort();
                }
            }
        });
        w
    }

    fn tick(&self, v: &T)
    where
        T: Clone,
    {
        if let Ok(mut c) = self.current.lock() {
            *c = Some(v.clone());
        }
        self.ticks.fetch_add(1, Ordering::Relaxed);
    }
}

impl<T> Drop for Watchdog<T> {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

/// Runs `check` on `cases()` values of `strategy`, with the seeds of [`runs`]. A panic in
/// `check` fails the test with the seed and the smallest failing input proptest finds.
pub fn fuzz<S>(target: &'static str, strategy: S, check: impl Fn(&S::Value))
where
    S: Strategy,
    S::Value: Clone + Debug + Send + 'static,
{
    fuzz_share(target, 1, strategy, check)
}

/// [`fuzz`] with `cases() / divisor` cases, for a target that is expensive per case and only
/// consumes what other targets decode at the full count.
pub fn fuzz_share<S>(target: &'static str, divisor: u32, strategy: S, check: impl Fn(&S::Value))
where
    S: Strategy,
    S::Value: Clone + Debug + Send + 'static,
{
    for (seed, n, why) in runs((cases() / divisor.max(1)).max(1)) {
        eprintln!(
            "fuzz {target}: {n} cases, seed {seed} ({why}); reproduce with \
             SHARDGATE_FUZZ_SEED={seed} SHARDGATE_FUZZ_CASES={n} cargo test --lib fuzz_tests::"
        );
        let config = Config {
            cases: n,
            rng_seed: RngSeed::Fixed(seed),
            failure_persistence: None,
            max_shrink_iters: 4096,
            ..Config::default()
        };
        let mut runner = TestRunner::new(config);
        let watchdog = Watchdog::start(target, seed);
        let result = runner.run(&strategy, |v| {
            watchdog.tick(&v);
            check(&v);
            Ok(())
        });
        drop(watchdog);
        if let Err(e) = result {
            panic!("fuzz target {target} failed (seed {seed}, {why}): {e}");
        }
    }
}

/// Asserts that `f` requested at most `per_byte * input_len + slack` bytes.
pub fn bounded<T>(input_len: usize, per_byte: usize, slack: usize, f: impl FnOnce() -> T) -> T {
    let (out, bytes) = measure(f);
    let limit = per_byte * input_len + slack;
    assert!(
        bytes <= limit,
        "allocated {bytes} bytes for {input_len} input bytes (limit {limit})"
    );
    out
}

/// Arbitrary bytes, mostly short.
pub fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> + Clone {
    proptest::collection::vec(any::<u8>(), 0..max)
}

/// Integers a lying length or count field likes to hold.
pub fn lying_i32() -> impl Strategy<Value = i32> + Clone {
    prop_oneof![
        Just(-1),
        Just(-2),
        Just(0),
        Just(1),
        Just(3),
        Just(4),
        Just(5),
        Just(i32::MAX),
        Just(i32::MIN),
        Just(0x7fff),
        Just(0x8000),
        Just(0xffff),
        Just(1 << 20),
        0..64i32,
        any::<i32>(),
    ]
}

/// One corruption of a valid message.
#[derive(Debug, Clone)]
pub enum Corruption {
    /// Cut after this many bytes (modulo the length).
    Truncate(usize),
    /// Overwrite 4 bytes at this offset with a big-endian integer.
    Lie(usize, i32),
    /// Overwrite 2 bytes at this offset with a big-endian integer.
    LieShort(usize, i16),
    /// Replace one byte.
    Byte(usize, u8),
    /// Append bytes.
    Append(Vec<u8>),
    /// Leave it valid.
    None,
}

pub fn corruption() -> impl Strategy<Value = Corruption> + Clone {
    prop_oneof![
        any::<usize>().prop_map(Corruption::Truncate),
        (any::<usize>(), lying_i32()).prop_map(|(at, v)| Corruption::Lie(at, v)),
        (any::<usize>(), lying_i32()).prop_map(|(at, v)| Corruption::LieShort(at, v as i16)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, v)| Corruption::Byte(at, v)),
        bytes(16).prop_map(Corruption::Append),
        Just(Corruption::None),
    ]
}

impl Corruption {
    /// Applies the corruption to `v`.
    pub fn apply(&self, mut v: Vec<u8>) -> Vec<u8> {
        let n = v.len();
        match self {
            Corruption::Truncate(at) => v.truncate(at % (n + 1)),
            Corruption::Lie(at, x) if n >= 4 => {
                let at = at % (n - 3);
                v[at..at + 4].copy_from_slice(&x.to_be_bytes());
            }
            Corruption::LieShort(at, x) if n >= 2 => {
                let at = at % (n - 1);
                v[at..at + 2].copy_from_slice(&x.to_be_bytes());
            }
            Corruption::Byte(at, x) if n > 0 => v[at % n] = *x,
            Corruption::Append(tail) => v.extend_from_slice(tail),
            _ => {}
        }
        v
    }
}

/// Valid messages (from `valid`), each corrupted up to twice.
pub fn corrupted(
    valid: impl Strategy<Value = Vec<u8>> + Clone,
) -> impl Strategy<Value = Vec<u8>> + Clone {
    (valid, corruption(), corruption()).prop_map(|(v, a, b)| b.apply(a.apply(v)))
}

/// A message: tag, length (counting itself), body.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// A NUL-terminated string.
pub fn cstring(s: &[u8]) -> Vec<u8> {
    let mut v: Vec<u8> = s.iter().copied().filter(|&b| b != 0).collect();
    v.push(0);
    v
}
