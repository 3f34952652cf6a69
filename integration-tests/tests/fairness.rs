//! Measurement (not run by default): checkout wait under contention, 500 clients on 10 server
//! connections, with and without the FIFO gate in front of bb8. Prints p50/p99/max latency of a
//! short query per configuration.
//!
//! cargo test --release -p integration-tests --test fairness -- --ignored --nocapture

use integration_tests::{config_text, Proxy};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn measure(fifo: bool) -> Vec<Duration> {
    let proxy = Arc::new(Proxy::start(&config_text(
        "",
        &format!("size = 10\ncheckout_timeout_ms = 120000\nfifo_checkout = {fifo}"),
    )));
    let mut clients = Vec::new();
    for _ in 0..500 {
        clients.push(proxy.app("app").await);
    }
    let start = Arc::new(tokio::sync::Barrier::new(500));
    let mut tasks = Vec::new();
    for c in clients {
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let mut lat = Vec::new();
            for _ in 0..10 {
                let t = Instant::now();
                c.simple_query("select pg_sleep(0.001)").await.unwrap();
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run explicitly"]
async fn checkout_wait_fifo_vs_bb8_order() {
    for fifo in [false, true, false, true] {
        let lat = measure(fifo).await;
        let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
        println!(
            "fifo_checkout={fifo:5}: n={} p50={:?} p99={:?} max={:?}",
            lat.len(),
            pct(0.50),
            pct(0.99),
            lat[lat.len() - 1]
        );
    }
}
