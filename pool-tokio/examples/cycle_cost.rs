//! What one acquire/release cycle of an idle connection costs, on a current-thread tokio
//! runtime, under four configurations:
//!
//! - **lean**: the benchmark's settings (no acquire timeout, idle timeout, lifetime or
//!   checkout check), where the hot path reads no clock;
//! - **defaults**: the builder's defaults (30 s acquire timeout, 10 min idle timeout, 30 min
//!   lifetime, checkout check bypassed within 500 ms), where acquire and release each read
//!   the clock once;
//! - **leak detection**: the defaults plus a leak threshold, without backtraces (the machine
//!   must see every checkout, so cycles go through its lock rather than the return lane);
//! - **backtraces**: the same, capturing a backtrace at every acquire (so a report can say
//!   where the lease was taken).
//!
//! It also times a hand-off between two tasks sharing a lean pool of one connection (each
//! release goes to the other, waiting, task), and runs two OS threads, each on its own
//! current-thread runtime, cycling through one shared lean pool of two connections, printing
//! their combined cycles per second: what contention between cores on the pool's shared
//! state costs.
//!
//! Run with `cargo run --release -p pool-tokio --example cycle_cost`. An optional argument
//! sets the cycles per measurement (default 1,000,000); under
//! `valgrind --tool=callgrind` the difference between two counts gives the instructions
//! per cycle, which, unlike time, repeats exactly on a busy machine. For that, a second
//! argument runs one measurement alone, once: `lean` (the lean cycle in `block_on`, where
//! tokio names no task), `lean-task` (the same in a spawned task, which tokio names) or
//! `handoff` (the hand-off between two tasks):
//!
//! ```sh
//! valgrind --tool=callgrind target/release/examples/cycle_cost 100000 lean-task
//! valgrind --tool=callgrind target/release/examples/cycle_cost 200000 lean-task
//! ```

use std::time::{Duration, Instant};

struct Unit;

impl pool_tokio::Manager for Unit {
    type Connection = u64;
    type Error = std::io::Error;
    async fn connect(&self) -> Result<u64, std::io::Error> {
        Ok(0)
    }
}

type Builder = pool_tokio::Builder<Unit>;

async fn per_cycle(builder: Builder, n: u32) -> Duration {
    let pool = builder.max_size(1).build().expect("a valid configuration");
    drop(pool.get().await.expect("warm"));
    let start = Instant::now();
    for _ in 0..n {
        let mut conn = pool.get().await.expect("idle connection");
        *conn += 1;
    }
    start.elapsed() / n
}

fn lean() -> Builder {
    pool_tokio::Pool::builder(Unit)
        .acquire_timeout(None)
        .idle_timeout(None)
        .max_lifetime(None)
        .check_on_checkout(false)
}

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Some(only) = std::env::args().nth(2) {
        let took = match only.as_str() {
            "lean" => rt.block_on(per_cycle(lean(), n)),
            "lean-task" => rt
                .block_on(async { tokio::spawn(per_cycle(lean(), n)).await })
                .expect("the task"),
            "handoff" => rt.block_on(hand_off(n)),
            other => panic!("no measurement named {other}: lean, lean-task or handoff"),
        };
        println!("{only}: {took:?}/cycle");
        return;
    }
    let threshold = Some(Duration::from_secs(60));
    for round in 1..=3 {
        let (lean, defaults, leaks, traced) = rt.block_on(async {
            let lean = per_cycle(lean(), n).await;
            let defaults = per_cycle(pool_tokio::Pool::builder(Unit), n).await;
            let leaks = per_cycle(
                pool_tokio::Pool::builder(Unit)
                    .leak_threshold(threshold)
                    .leak_backtraces(false),
                n,
            )
            .await;
            let traced = per_cycle(
                pool_tokio::Pool::builder(Unit)
                    .leak_threshold(threshold)
                    .leak_backtraces(true),
                (n / 40).max(1),
            )
            .await;
            (lean, defaults, leaks, traced)
        });
        println!(
            "round {round}: lean {lean:?}/cycle, defaults {defaults:?}/cycle, leak detection {leaks:?}/cycle, with backtraces {traced:?}/cycle ({:.0}x defaults)",
            traced.as_secs_f64() / defaults.as_secs_f64()
        );
        let handoff = rt.block_on(hand_off(n));
        println!("round {round}: hand-off between two tasks (lean, pool of 1): {handoff:?}/cycle");
        let two = contended(2, n);
        println!(
            "round {round}: two threads contending (lean, pool of 2): {:.2} M cycles/s",
            two / 1e6
        );
    }
}

/// Time per cycle of two tasks on one current-thread runtime sharing a lean pool of one
/// connection: every release hands the connection to the other task, which was waiting,
/// so each cycle is a wake, a task switch and three transitions (release with hand-off,
/// take, and the next acquire joining the queue).
async fn hand_off(n: u32) -> Duration {
    let pool = lean().max_size(1).build().expect("a valid configuration");
    drop(pool.get().await.expect("warm"));
    let start = Instant::now();
    let task = |pool: pool_tokio::Pool<Unit>| async move {
        for _ in 0..n / 2 {
            let mut conn = pool.get().await.expect("a connection");
            *conn += 1;
            // Hold it across a yield, so the other task queues behind.
            tokio::task::yield_now().await;
        }
    };
    let (a, b) = (tokio::spawn(task(pool.clone())), tokio::spawn(task(pool)));
    let _ = (a.await, b.await);
    start.elapsed() / n
}

/// Cycles per second of `threads` OS threads, each on its own current-thread runtime,
/// cycling through one shared pool of `threads` connections (so none ever waits): the cost
/// of contention between cores on the pool's shared state.
fn contended(threads: usize, n: u32) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let pool = rt.block_on(async {
        let pool = lean()
            .max_size(threads)
            .build()
            .expect("a valid configuration");
        let mut held = Vec::with_capacity(threads);
        for _ in 0..threads {
            held.push(pool.get().await.expect("warm"));
        }
        drop(held);
        pool
    });
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            let pool = pool.clone();
            s.spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    for _ in 0..n {
                        let mut conn = pool.get().await.expect("idle connection");
                        *conn += 1;
                    }
                });
            });
        }
    });
    (threads as f64 * f64::from(n)) / start.elapsed().as_secs_f64()
}
