//! Seed 003 on virtual time: a pool of 2, three tasks at once, connects that take 100 ms.
//!
//! The Ruby pool yielded inside `new_connection` before its bookkeeping was updated, so a
//! third fiber saw room for one more and the pool of 2 opened 3 connections. Here the slot
//! is reserved in the same transition that asks for the connect, so the third task waits
//! for a release instead.
//!
//! Run with `cargo run -p pool-core --example seed003`.

use std::time::Duration;

use pool_core::machine::Config;
use pool_core::sim::Sim;

fn main() {
    let mut sim = Sim::new(Config::new(2));
    sim.set_connect_latency(Duration::from_millis(100));

    println!("A pool of max_size 2; three tasks acquire at once; each connect takes 100 ms.\n");
    for task in 0..3 {
        sim.acquire(task, Some(Duration::from_secs(5)));
    }
    sim.advance(Duration::from_millis(100));
    println!("status after the connects: {}", sim.machine.status());

    // Tasks 0 and 1 run a 1 s query each, then release; task 2 gets the first one back.
    sim.advance(Duration::from_secs(1));
    sim.release(0);
    sim.advance(Duration::from_secs(1));
    sim.release(1);
    sim.release(2);
    sim.advance(Duration::from_millis(1));

    println!("\nWhat happened:");
    for line in sim.log() {
        println!("{line}");
    }
    println!(
        "\nconnects opened: {} (the Ruby pool opened 3)",
        sim.opens()
    );
    println!("final status: {}", sim.machine.status());
}
