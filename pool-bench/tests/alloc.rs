//! The hot path allocates nothing: with a connection idle, an acquire/release cycle makes
//! no heap allocation, counted by an instrumented global allocator over 10,000 warm cycles
//! on a current-thread tokio runtime (so every allocation of the run is on this thread).
//!
//! Each pool gets three such runs and the best must count zero: an allocation per cycle
//! shows up as 10,000 in every run, while a one-off allocation of the runtime's (seen on a
//! heavily loaded machine: 4 allocations, 900 bytes, in one run of 10,000 cycles) does not
//! fail the test.

use std::alloc::System;

use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Connections that are plain counters.
struct Counters;

impl pool_tokio::Manager for Counters {
    type Connection = u64;
    type Error = std::io::Error;
    async fn connect(&self) -> Result<u64, std::io::Error> {
        Ok(0)
    }
}

const CYCLES: u64 = 10_000;

/// Warms `pool` up, then counts the allocations of `CYCLES` cycles.
async fn allocations_per_cycle(pool: &pool_tokio::Pool<Counters>) -> (u64, stats_alloc::Stats) {
    // Warm: open the connection and let every buffer (the runtime's included) reach its size.
    for _ in 0..1_000 {
        let conn = pool.get().await.expect("warm-up acquire");
        drop(conn);
    }
    let region = Region::new(GLOBAL);
    let mut touched = 0;
    for _ in 0..CYCLES {
        let mut conn = pool.get().await.expect("acquire");
        *conn += 1;
        touched += *conn;
        drop(conn);
    }
    let stats = region.change();
    assert!(touched > 0);
    (
        (stats.allocations + stats.reallocations) as u64 / CYCLES,
        stats,
    )
}

#[test]
fn no_heap_allocation_per_cycle_when_a_connection_is_idle() {
    // The counter counts: one allocation of our own shows up.
    let region = Region::new(GLOBAL);
    drop(std::hint::black_box(vec![0u8; 64]));
    assert!(
        region.change().allocations >= 1,
        "the allocator is not instrumented"
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // The benchmark's cheapest setting: no clock read on the hot path.
        let cheapest = pool_tokio::Pool::builder(Counters)
            .max_size(4)
            .acquire_timeout(None)
            .check_on_checkout(false)
            .idle_timeout(None)
            .max_lifetime(None)
            .build()
            .expect("pool");
        // The defaults: idle timeout, lifetime, acquire timeout, checkout check with a
        // bypass window (the clock is read; still nothing is allocated).
        let defaults = pool_tokio::Pool::builder(Counters)
            .max_size(4)
            .build()
            .expect("pool");
        for (name, pool) in [("cheapest", &cheapest), ("defaults", &defaults)] {
            best_of_three(name, pool).await;
        }
        // In a spawned task, which tokio names: every lend, use and give-back also records
        // who holds the connection (ARCHITECTURE.md, "A task waiting on itself").
        tokio::spawn(async move {
            assert!(tokio::task::try_id().is_some(), "a named task");
            for (name, pool) in [
                ("cheapest in a task", &cheapest),
                ("defaults in a task", &defaults),
            ] {
                best_of_three(name, pool).await;
            }
        })
        .await
        .expect("the spawned runs");
    });
}

/// Three runs of `CYCLES` cycles: the best must count no allocation.
async fn best_of_three(name: &str, pool: &pool_tokio::Pool<Counters>) {
    let mut runs = Vec::new();
    for _ in 0..3 {
        let (per_cycle, stats) = allocations_per_cycle(pool).await;
        println!("{name}: {CYCLES} cycles, {stats:?}");
        runs.push((stats.allocations + stats.reallocations, per_cycle, stats));
    }
    let (fewest, per_cycle, stats) = runs.iter().min_by_key(|r| r.0).expect("three runs");
    assert_eq!(
        *fewest, 0,
        "{name}: {per_cycle} allocations per cycle in the best of 3 runs ({stats:?})"
    );
}
