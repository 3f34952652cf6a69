//! Memory per client is bounded by caps, not by what a client sends: a client that writes
//! without ever reading its answers is simply not read any further. (Its own test binary: it
//! measures the resident size of this process, which runs the proxy.)

use integration_tests::raw::login_trust;
use integration_tests::{config_text, rss_kib, Proxy};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_megabytes_of_syncs_without_reading_stay_bounded() {
    let proxy = Proxy::start(&config_text("", "size = 2"));
    // Warm up: pools, caches and allocator arenas are in place before the baseline.
    let c = proxy.app("app").await;
    for _ in 0..20 {
        c.simple_query("select 1").await.unwrap();
    }
    let before = rss_kib();

    let mut s = login_trust(proxy.port, "trusty", "app").await;
    let chunk: Vec<u8> = [b'S', 0, 0, 0, 4].repeat(64 * 1024 / 5);
    let total = 20 * 1024 * 1024;
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while sent < total && Instant::now() < deadline {
        // Once the proxy stops reading, the socket buffers fill and the write blocks.
        match tokio::time::timeout(Duration::from_secs(2), s.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            _ => break,
        }
    }
    let grown_kib = rss_kib().saturating_sub(before);
    eprintln!("wrote {sent} bytes of Sync without reading; RSS grew by {grown_kib} KiB");
    // The bound is 16 MiB; what the caps give is far less (256 KiB of output per
    // direction plus what was read before the client was stopped), so hold that line.
    assert!(
        grown_kib < 4 * 1024,
        "RSS grew by {grown_kib} KiB after {sent} bytes of Sync"
    );
    // The proxy keeps serving everyone else.
    let rows = c.simple_query("select 2").await.unwrap();
    assert!(!rows.is_empty());
    drop(s);
}
