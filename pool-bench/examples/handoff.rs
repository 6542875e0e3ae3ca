//! What a hand-off costs: `tasks` tasks share a pool of `size` connections and each holds
//! its connection across a yield, so with more tasks than connections every release goes to
//! a waiting task. The same loop runs on this pool (lean settings), on a tokio `Semaphore`
//! with a `Mutex<Vec>` (the benchmark's `floor:semaphore`) and on deadpool's unmanaged pool,
//! interleaved, three rounds each.
//!
//! ```sh
//! # two tasks, one connection, a current-thread runtime (every cycle is a hand-off)
//! cargo run --release -p pool-bench --example handoff -- 1000000 2 1 0
//! # 64 tasks, 16 connections, a multi-thread runtime with 2 workers (the yield 64x16 cell)
//! cargo run --release -p pool-bench --example handoff -- 1000000 64 16 2
//! ```
//!
//! Arguments: cycles (default 1,000,000), tasks (2), size (1), worker threads (0 for a
//! current-thread runtime). Under `valgrind --tool=callgrind` the difference between two
//! cycle counts gives the instructions per cycle, which, unlike time, repeats exactly on a
//! busy machine; pass a fifth argument `ours`, `semaphore` or `deadpool` after the others
//! to run one contender once.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

struct Unit;

impl pool_tokio::Manager for Unit {
    type Connection = u64;
    type Error = std::io::Error;
    async fn connect(&self) -> Result<u64, std::io::Error> {
        Ok(0)
    }
}

/// Runs `tasks` tasks, every one built by `cycle`, to completion.
async fn run<F, Fut>(tasks: usize, cycle: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let handles: Vec<_> = (0..tasks).map(|_| tokio::spawn(cycle())).collect();
    for handle in handles {
        handle.await.expect("a cycling task panicked");
    }
}

async fn ours(cycles: u32, tasks: usize, size: usize) {
    let pool = pool_tokio::Pool::builder(Unit)
        .max_size(size)
        .acquire_timeout(None)
        .idle_timeout(None)
        .max_lifetime(None, Duration::ZERO)
        .check_on_checkout(false, Duration::ZERO)
        .build()
        .expect("a valid configuration");
    let mut warm = Vec::with_capacity(size);
    for _ in 0..size {
        warm.push(pool.get().await.expect("warm"));
    }
    drop(warm);
    let each = cycles / tasks as u32;
    run(tasks, || {
        let pool = pool.clone();
        async move {
            for _ in 0..each {
                let mut conn = pool.get().await.expect("a connection");
                *conn += 1;
                tokio::task::yield_now().await;
            }
        }
    })
    .await;
}

struct Floor {
    permits: tokio::sync::Semaphore,
    conns: Mutex<Vec<u64>>,
}

async fn semaphore(cycles: u32, tasks: usize, size: usize) {
    let floor = Arc::new(Floor {
        permits: tokio::sync::Semaphore::new(size),
        conns: Mutex::new(vec![0; size]),
    });
    let each = cycles / tasks as u32;
    run(tasks, || {
        let floor = Arc::clone(&floor);
        async move {
            for _ in 0..each {
                let permit = floor.permits.acquire().await.expect("never closed");
                let lock = || floor.conns.lock().unwrap_or_else(PoisonError::into_inner);
                let mut conn = lock().pop().expect("a permit comes with a connection");
                conn += 1;
                tokio::task::yield_now().await;
                lock().push(conn);
                drop(permit);
            }
        }
    })
    .await;
}

async fn deadpool(cycles: u32, tasks: usize, size: usize) {
    let pool = deadpool::unmanaged::Pool::from(vec![0u64; size]);
    let each = cycles / tasks as u32;
    run(tasks, || {
        let pool = pool.clone();
        async move {
            for _ in 0..each {
                let mut conn = pool.get().await.expect("a connection");
                *conn += 1;
                tokio::task::yield_now().await;
            }
        }
    })
    .await;
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num =
        |i: usize, default: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let cycles = u32::try_from(num(0, 1_000_000)).unwrap_or(u32::MAX);
    let (tasks, size, threads) = (num(1, 2).max(1), num(2, 1).max(1), num(3, 0));
    let rt = if threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .expect("a runtime");
    let only = args.get(4).map(String::as_str);
    let contenders = ["ours", "semaphore", "deadpool"];
    let rounds = if only.is_some() { 1 } else { 3 };
    for round in 1..=rounds {
        for name in contenders.iter().filter(|c| only.is_none_or(|o| o == **c)) {
            let start = Instant::now();
            rt.block_on(async {
                match *name {
                    "ours" => ours(cycles, tasks, size).await,
                    "semaphore" => semaphore(cycles, tasks, size).await,
                    _ => deadpool(cycles, tasks, size).await,
                }
            });
            let per = start.elapsed().as_secs_f64() / f64::from(cycles);
            println!(
                "round {round}: {name:<9} {:7.1} ns/cycle ({:.2} M cycles/s)",
                per * 1e9,
                1e-6 / per
            );
        }
    }
}
