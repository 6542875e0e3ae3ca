//! What a hand-off costs, without the benchmark's window and counters: `tasks` tasks share a
//! pool of `size` connections and each holds its connection across a yield, so with more
//! tasks than connections every release goes to a waiting task. Each contender runs the same
//! loop ([`Contender::time_hand_offs`]), built as the benchmark builds it, interleaved, three
//! rounds.
//!
//! ```sh
//! # two tasks, one connection, a current-thread runtime (every cycle is a hand-off)
//! cargo run --release -p pool-bench --example handoff -- 1000000 2 1 0
//! # 64 tasks, 16 connections, a multi-thread runtime with 2 workers (the yield 64x16 cell)
//! cargo run --release -p pool-bench --example handoff -- 1000000 64 16 2
//! ```
//!
//! Arguments: cycles (default 1,000,000), tasks (2), size (1), worker threads (0 for a
//! current-thread runtime), then optionally the contenders to run, comma-separated
//! (default `pool/tokio,floor:semaphore,deadpool-unmanaged`; the benchmark's column names),
//! then optionally `touch` for the benchmark's other cycle, which holds the connection
//! across no yield (with one task, the uncontended cycle; qp runs only there, with no more
//! tasks than connections):
//!
//! ```sh
//! cargo run --release -p pool-bench --example handoff -- 1000000 1 1 0 pool/tokio,qp touch
//! ```
//! Under `valgrind --tool=callgrind`, run one contender at two cycle counts: the difference
//! gives the instructions per cycle, which, unlike time, repeats exactly on a busy machine.

use pool_bench::contenders::Contender;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num =
        |i: usize, default: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let (cycles, tasks, size, threads) = (num(0, 1_000_000), num(1, 2), num(2, 1), num(3, 0));
    let names = args.get(4).map_or(
        "pool/tokio,floor:semaphore,deadpool-unmanaged",
        String::as_str,
    );
    let contenders = names
        .split(',')
        .map(|name| Contender::from_name(name).ok_or(format!("no contender named {name}")))
        .collect::<Result<Vec<_>, _>>()?;
    let (size, tasks) = (size.max(1), tasks.max(1));
    // Every task runs the same number of cycles.
    let cycles = (cycles / tasks).max(1) * tasks;
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
    .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let yields = match args.get(5).map(String::as_str) {
        None | Some("yield") => true,
        Some("touch") => false,
        Some(other) => return Err(format!("the cycle is `yield` or `touch`, not `{other}`")),
    };
    let rounds = if contenders.len() > 1 { 3 } else { 1 };
    for round in 1..=rounds {
        for &contender in &contenders {
            let took = contender
                .time_hand_offs(&rt, size, tasks, cycles as u64, yields)
                .map_err(|e| format!("{}: {e}", contender.name()))?;
            let per = took.as_secs_f64() / cycles as f64;
            println!(
                "round {round}: {:<20} {:7.1} ns/cycle ({:.2} M cycles/s)",
                contender.name(),
                per * 1e9,
                1e-6 / per
            );
        }
    }
    Ok(())
}
