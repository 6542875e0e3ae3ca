//! What leak detection costs per acquire/release cycle: off, on without backtraces, and on
//! with a backtrace captured at every acquire (so a report can say where the lease was
//! taken).
//!
//! Run with `cargo run --release -p pool-tokio --example leak_detection_cost`.

use std::time::{Duration, Instant};

struct Unit;

impl pool_tokio::Manager for Unit {
    type Connection = u64;
    type Error = std::io::Error;
    async fn connect(&self) -> Result<u64, std::io::Error> {
        Ok(0)
    }
}

async fn cycles(threshold: Option<Duration>, backtraces: bool, n: u32) -> Duration {
    let pool = pool_tokio::Pool::builder(Unit)
        .max_size(1)
        .leak_detection(threshold, backtraces)
        .build()
        .expect("a valid configuration");
    drop(pool.get().await.expect("warm"));
    let start = Instant::now();
    for _ in 0..n {
        let mut conn = pool.get().await.expect("idle connection");
        *conn += 1;
    }
    start.elapsed() / n
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let threshold = Some(Duration::from_secs(60));
        for round in 1..=3 {
            let off = cycles(None, false, 200_000).await;
            let on = cycles(threshold, false, 200_000).await;
            let traced = cycles(threshold, true, 5_000).await;
            println!(
                "round {round}: leak detection off {off:?}/cycle, on {on:?}/cycle, on with backtraces {traced:?}/cycle ({:.0}x off)",
                traced.as_secs_f64() / off.as_secs_f64()
            );
        }
    });
}
