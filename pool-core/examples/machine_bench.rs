//! A micro-benchmark of the pool state machine alone: no driver, no lock, no runtime.
//!
//! It prints the cost in nanoseconds of one cycle of:
//!
//! - **(a)** `acquire` of an idle connection + `release` for reuse, with the default
//!   configuration (`Config::new(16)`: idle timeout and max lifetime on), and with idle timeout
//!   and max lifetime off;
//! - **(b)** a hand-off to a waiter: a pool of 1, one holder and one waiter; the holder
//!   releases, the connection is granted to the waiter (draining the `Wake` action), the
//!   waiter takes it, and the former holder acquires again and becomes the waiter;
//! - **(c)** `acquire` + `release` as in (a) with `leak_threshold` on.
//!
//! Every cycle also drains `poll_action`, as a driver does after every input. The clock is
//! read only to time batches: the machine is fed one `Instant` captured before the loop, plus
//! one microsecond per batch. Each case is warmed up, then timed over several repetitions of
//! about 0.3 s; the median is printed, with the fastest and slowest repetition.
//!
//! Run with `cargo run --release -p pool-core --example machine_bench`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use pool_core::machine::{Acquired, Action, Config, Lease, Machine, Release, WaiterId};

/// The machine under test: `u64` connections, `String` connect errors.
type M = Machine<u64, String>;

/// Cycles run between two reads of the real clock.
const BATCH: u32 = 10_000;
/// Timed repetitions per case.
const REPETITIONS: usize = 7;
/// The length of one repetition.
const REPETITION: Duration = Duration::from_millis(300);
/// The warm-up before the timed repetitions.
const WARM_UP: Duration = Duration::from_millis(200);

/// Nanoseconds per cycle: the median, fastest and slowest of the repetitions.
struct Figures {
    median: f64,
    min: f64,
    max: f64,
}

/// Runs `cycle` in batches for about `length`, returning nanoseconds per cycle. `cycle` is
/// given the virtual time, which advances by one microsecond per batch from `*now`.
fn run_for(cycle: &mut impl FnMut(Instant), now: &mut Instant, length: Duration) -> f64 {
    let start = Instant::now();
    let mut cycles: u64 = 0;
    loop {
        *now += Duration::from_micros(1);
        let at = black_box(*now);
        for _ in 0..BATCH {
            cycle(at);
        }
        cycles += u64::from(BATCH);
        let elapsed = start.elapsed();
        if elapsed >= length {
            return elapsed.as_nanos() as f64 / cycles as f64;
        }
    }
}

/// Warms `cycle` up, then times it over the repetitions.
fn measure(base: Instant, mut cycle: impl FnMut(Instant)) -> Figures {
    let mut now = base;
    run_for(&mut cycle, &mut now, WARM_UP);
    let mut runs: Vec<f64> = (0..REPETITIONS)
        .map(|_| run_for(&mut cycle, &mut now, REPETITION))
        .collect();
    runs.sort_by(f64::total_cmp);
    Figures {
        median: runs[REPETITIONS / 2],
        min: runs[0],
        max: runs[REPETITIONS - 1],
    }
}

/// Drains every queued action, as a driver does after each input.
fn drain(m: &mut M) {
    while let Some(action) = m.poll_action() {
        black_box(action);
    }
}

/// A machine of `config` with one connection opened and a task holding it.
fn with_one_holder(config: Config, now: Instant) -> (M, Lease, u64) {
    let mut m = M::new(config).expect("the benchmark's config is valid");
    let Ok(Acquired::Waiting(waiter)) = m.acquire(now, None) else {
        panic!("an empty pool makes the first acquirer wait");
    };
    let Some(Action::Open { slot }) = m.poll_action() else {
        panic!("the machine asks for a connection for the waiter");
    };
    m.handle_connected(slot, 1, now)
        .expect("the slot is opening");
    drain(&mut m);
    let Ok(Some((lease, conn))) = m.take(waiter, now) else {
        panic!("the waiter was granted the new connection");
    };
    (m, lease, conn)
}

/// (a) and (c): acquire an idle connection, release it for reuse.
fn acquire_release(config: Config) -> Figures {
    let base = Instant::now();
    let (mut m, lease, conn) = with_one_holder(config, base);
    m.release(lease, conn, Release::Reuse, base)
        .expect("the lease is outstanding");
    drain(&mut m);
    measure(base, |now| {
        let Ok(Acquired::Ready(lease, conn)) = m.acquire(now, None) else {
            panic!("a connection is idle");
        };
        let conn = black_box(conn);
        if m.release(lease, conn, Release::Reuse, now).is_err() {
            panic!("the lease is outstanding");
        }
        drain(&mut m);
    })
}

/// (b): a pool of 1 whose connection goes from a holder to a waiter and back.
fn hand_off(config: Config) -> Figures {
    let base = Instant::now();
    let (mut m, lease, conn) = with_one_holder(config, base);
    let Ok(Acquired::Waiting(waiter)) = m.acquire(base, None) else {
        panic!("the only connection is leased");
    };
    drain(&mut m);
    let mut holder: Option<(Lease, u64)> = Some((lease, conn));
    let mut waiter: WaiterId = waiter;
    measure(base, |now| {
        let Some((lease, conn)) = holder.take() else {
            panic!("someone holds the connection");
        };
        // The holder gives it back: granted to the waiter in the same transition.
        if m.release(lease, black_box(conn), Release::Reuse, now)
            .is_err()
        {
            panic!("the lease is outstanding");
        }
        drain(&mut m);
        // The waiter collects it...
        let Ok(Some(granted)) = m.take(waiter, now) else {
            panic!("the waiter was granted the connection");
        };
        holder = Some(granted);
        // ...and the former holder asks again, and waits.
        let Ok(Acquired::Waiting(next)) = m.acquire(now, None) else {
            panic!("the only connection is leased");
        };
        waiter = next;
        drain(&mut m);
    })
}

fn report(name: &str, figures: &Figures) {
    println!(
        "{name:<58} {:>7.1} ns/cycle  (fastest {:.1}, slowest {:.1})",
        figures.median, figures.min, figures.max
    );
}

fn main() {
    println!(
        "pool-core machine micro-benchmark: median of {REPETITIONS} runs of {REPETITION:?} \
         each, after a {WARM_UP:?} warm-up\n"
    );

    report(
        "(a) acquire + release, idle conn, Config::new(16)",
        &acquire_release(Config::new(16)),
    );

    let mut quiet = Config::new(16);
    quiet.idle_timeout = None;
    quiet.max_lifetime = None;
    quiet.max_lifetime_jitter = Duration::ZERO;
    report(
        "(a) acquire + release, idle conn, no idle timeout/lifetime",
        &acquire_release(quiet),
    );

    report(
        "(b) hand-off to a waiter (release, wake, take, re-acquire)",
        &hand_off(Config::new(1)),
    );

    let mut leak = Config::new(16);
    leak.leak_threshold = Some(Duration::from_secs(60));
    report(
        "(c) acquire + release, idle conn, leak_threshold 60s",
        &acquire_release(leak),
    );
}
