//! Deterministic scenario tests of the pool state machine, one behaviour per test.
//!
//! Most scenarios run on the virtual-time simulator ([`pool_core::sim::Sim`]), where time
//! jumps from event to event, so "exactly five seconds" means exactly that and nothing
//! flakes. Where the precise order of inputs and actions matters (a grant that has not been
//! taken yet, a stale id, a rejected report) the [`Machine`] is driven by hand instead.
//!
//! Tests named after a seed failure (`seed 002`, `seed 003`) pin down the bug reports the
//! design started from.

use std::time::{Duration, Instant};

use pool_core::machine::{
    AcquireError, Acquired, Action, CloseReason, Config, Failure, Lease, Machine, Release, SlotId,
    Status, WaiterId, MAX_SIZE_LIMIT,
};
use pool_core::sim::{Sim, SimConn, SimError, TaskState};

/// The machine as driven by hand in these tests: `u32` connections, `String` errors.
type M = Machine<u32, String>;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A config of `max_size` with idle timeout and max lifetime off, so that only the feature
/// under test acts on its own.
fn quiet_config(max_size: usize) -> Config {
    let mut config = Config::new(max_size);
    config.idle_timeout = None;
    config.max_lifetime = None;
    config.max_lifetime_jitter = Duration::ZERO;
    config
}

/// Every action the machine has queued, in order.
fn drain(m: &mut M) -> Vec<Action<u32>> {
    std::iter::from_fn(|| m.poll_action()).collect()
}

/// The one `Open` action expected in `actions`.
fn single_open(actions: &[Action<u32>]) -> SlotId {
    match actions {
        [Action::Open { slot }] => *slot,
        other => panic!("expected exactly one Open, got {other:?}"),
    }
}

/// Acquires on a machine with no idle connection: the id of the new waiter.
fn wait(m: &mut M, now: Instant) -> WaiterId {
    match m.acquire(now, None) {
        Ok(Acquired::Waiting(w)) => w,
        other => panic!("expected to wait, got {other:?}"),
    }
}

/// Takes a granted waiter's connection.
fn take_granted(m: &mut M, waiter: WaiterId, now: Instant) -> (Lease, u32) {
    match m.take(waiter, now) {
        Ok(Some(granted)) => granted,
        other => panic!("expected {waiter:?} to be granted, got {other:?}"),
    }
}

/// A machine of `config` with one connection (`1`) leased out: the lease and the connection.
fn machine_with_one_lease(config: Config, now: Instant) -> (M, Lease, u32) {
    let mut m = M::new(config).expect("valid config");
    let w = wait(&mut m, now);
    let slot = single_open(&drain(&mut m));
    m.handle_connected(slot, 1, now).expect("slot is opening");
    assert!(matches!(drain(&mut m)[..], [Action::Wake { waiter }] if waiter == w));
    let (lease, conn) = take_granted(&mut m, w, now);
    (m, lease, conn)
}

/// Lets virtual time run until `at` since the start of the simulation.
fn advance_to(sim: &mut Sim, at: Duration) {
    let now = sim.elapsed();
    assert!(at >= now, "cannot go back from {now:?} to {at:?}");
    sim.advance(at - now);
}

fn holding(sim: &Sim, task: usize) -> bool {
    matches!(sim.task(task), Some(TaskState::Holding { .. }))
}

fn waiting(sim: &Sim, task: usize) -> bool {
    matches!(sim.task(task), Some(TaskState::Waiting(_)))
}

fn failure(sim: &Sim, task: usize) -> &AcquireError<SimError> {
    match sim.task(task) {
        Some(TaskState::Failed(e)) => e,
        other => panic!("expected task {task} to have failed, it is {other:?}"),
    }
}

// ----- seed failures --------------------------------------------------------------------

/// Seed 003: the Ruby pool yielded between connecting and counting, so a pool of 2 opened 3.
#[test]
fn pool_of_two_never_opens_a_third_connection() {
    let mut sim = Sim::new(Config::new(2));
    sim.set_connect_latency(ms(100));
    for task in 0..3 {
        sim.acquire(task, Some(secs(5)));
    }
    // Slots are reserved in the same transition that asks for the connect.
    assert_eq!(sim.opens(), 2);
    assert_eq!(sim.machine.status().opening, 2);
    assert_eq!(sim.machine.status().waiting, 3);

    sim.advance(ms(100));
    assert!(holding(&sim, 0) && holding(&sim, 1));
    assert!(waiting(&sim, 2));
    assert_eq!(sim.opens(), 2);

    sim.advance(secs(1));
    let first = sim.conn_of(0).expect("task 0 holds a connection");
    sim.release(0);
    assert!(
        holding(&sim, 2),
        "the third task is served by the first release"
    );
    assert_eq!(sim.conn_of(2), Some(first));

    sim.release(1);
    sim.release(2);
    sim.settle(secs(60));
    assert_eq!(sim.opens(), 2, "never a third open");
    assert_eq!(sim.peak_size(), 2);
}

/// Seed 002: three tasks hold their connections forever; four more wait 5 s and must time
/// out at exactly 5 s of virtual time, saying what the pool looked like.
#[test]
fn seventh_acquirer_times_out_at_exactly_five_seconds_with_pool_state() {
    let mut sim = Sim::new(Config::new(3));
    for task in 0..7 {
        sim.acquire(task, Some(secs(5)));
    }
    assert_eq!(sim.opens(), 3);

    sim.advance(secs(5) - Duration::from_nanos(1));
    for task in 0..3 {
        assert!(holding(&sim, task), "task {task} holds");
    }
    for task in 3..7 {
        assert!(
            waiting(&sim, task),
            "task {task} still waits 1 ns before its deadline"
        );
    }

    sim.advance(Duration::from_nanos(1));
    assert_eq!(sim.elapsed(), secs(5));
    for task in 3..7 {
        let AcquireError::TimedOut(timed_out) = failure(&sim, task) else {
            panic!("task {task} should have timed out: {:?}", sim.task(task));
        };
        assert_eq!(timed_out.waited, secs(5));
        let Status {
            max_size,
            in_use,
            idle,
            opening,
            waiting,
            ..
        } = timed_out.status;
        assert_eq!((in_use, max_size, idle, opening), (3, 3, 0, 0));
        assert_eq!(
            waiting, 4,
            "every waiter reports the pool at the deadline, itself included"
        );
        assert_eq!(timed_out.last_connect_error, None);
        let text = failure(&sim, task).to_string();
        assert!(text.contains("timed out after 5s"), "{text}");
        assert!(text.contains("3 of 3 in use"), "{text}");
    }
    let AcquireError::TimedOut(first) = failure(&sim, 3) else {
        unreachable!("checked above")
    };
    assert_eq!(first.status.waiting, 4);
    assert_eq!(
        failure(&sim, 3).to_string(),
        "timed out after 5s waiting for a connection (3 of 3 in use, 0 idle, 0 opening, 4 waiting)"
    );
    assert_eq!(sim.machine.status().waiting, 0);
    assert_eq!(sim.opens(), 3);
}

/// Seed 002: a lease held past `leak_threshold` is reported, once, under the id it was issued.
#[test]
fn lease_held_past_threshold_is_reported_once_as_leak() {
    let mut config = quiet_config(2);
    config.leak_threshold = Some(secs(2));
    let mut sim = Sim::new(config);
    sim.acquire(0, None);
    sim.advance(ms(10));
    let lease = sim.lease_of(0).expect("task 0 holds a connection");

    // A short lease is never reported.
    sim.acquire(1, None);
    sim.advance(secs(1));
    sim.release(1);

    // Leased at 10 ms: reported at 2.01 s.
    advance_to(&mut sim, ms(2010) - Duration::from_nanos(1));
    assert!(sim.leaks().is_empty(), "not before the threshold");
    sim.advance(Duration::from_nanos(1));
    assert_eq!(sim.leaks(), [lease]);
    assert!(sim
        .log()
        .iter()
        .any(|line| line.contains(&format!("lease {} held for 2s", lease.serial()))));

    sim.advance(secs(3600));
    assert_eq!(sim.leaks(), [lease], "reported once");
    sim.release(0);
    assert!(
        sim.closes().is_empty(),
        "a leak report does not close the connection"
    );
    assert_eq!(sim.leaks(), [lease]);
}

// ----- fairness -------------------------------------------------------------------------

#[test]
fn released_connection_goes_to_the_oldest_waiter_not_a_newcomer() {
    let now = Instant::now();
    let (mut m, lease, conn) = machine_with_one_lease(Config::new(1), now);
    let w1 = wait(&mut m, now);
    let w2 = wait(&mut m, now);
    assert!(drain(&mut m).is_empty(), "no room for another connect");

    m.release(lease, conn, Release::Reuse, now)
        .expect("lease is ours");
    assert!(matches!(drain(&mut m)[..], [Action::Wake { waiter }] if waiter == w1));
    // w1 has not taken its connection yet; a newcomer must not barge in.
    let w3 = match m.acquire(now, None) {
        Ok(Acquired::Waiting(w)) => w,
        other => panic!("a newcomer barged in: {other:?}"),
    };
    assert!(matches!(
        m.try_acquire(now),
        Err(AcquireError::Exhausted(_))
    ));
    assert_eq!(m.status().idle, 0);
    assert!(matches!(m.take(w2, now), Ok(None)));
    let (lease, conn) = take_granted(&mut m, w1, now);
    assert_eq!(conn, 1);

    // And so on down the queue, in arrival order.
    m.release(lease, conn, Release::Reuse, now)
        .expect("lease is ours");
    assert!(matches!(drain(&mut m)[..], [Action::Wake { waiter }] if waiter == w2));
    let (lease, conn) = take_granted(&mut m, w2, now);
    m.release(lease, conn, Release::Reuse, now)
        .expect("lease is ours");
    assert!(matches!(drain(&mut m)[..], [Action::Wake { waiter }] if waiter == w3));
}

#[test]
fn waiters_are_served_in_arrival_order() {
    let mut sim = Sim::new(Config::new(1));
    sim.acquire(0, None);
    sim.advance(ms(10));
    for task in 1..6 {
        sim.acquire(task, None);
        sim.advance(ms(1));
    }
    for task in 0..5 {
        assert!(holding(&sim, task));
        for later in task + 1..6 {
            assert!(
                waiting(&sim, later),
                "task {later} waits behind task {task}"
            );
        }
        sim.release(task);
    }
    assert!(holding(&sim, 5));
    assert_eq!(sim.opens(), 1);
}

#[test]
fn cancelling_a_granted_waiter_hands_its_connection_to_the_next_waiter() {
    let now = Instant::now();
    let (mut m, lease, conn) = machine_with_one_lease(Config::new(1), now);
    let w1 = wait(&mut m, now);
    let w2 = wait(&mut m, now);
    m.release(lease, conn, Release::Reuse, now)
        .expect("lease is ours");
    assert!(matches!(drain(&mut m)[..], [Action::Wake { waiter }] if waiter == w1));

    assert!(m.cancel(w1, now), "w1 was known");
    assert!(matches!(drain(&mut m)[..], [Action::Wake { waiter }] if waiter == w2));
    let (_lease, conn) = take_granted(&mut m, w2, now);
    assert_eq!(conn, 1);
    assert!(matches!(m.take(w1, now), Err(AcquireError::UnknownWaiter(w)) if w == w1));
    let status = m.status();
    assert_eq!((status.in_use, status.idle, status.waiting), (1, 0, 0));
}

#[test]
fn cancelling_a_granted_waiter_with_nobody_behind_returns_the_connection_to_idle() {
    let now = Instant::now();
    let (mut m, lease, conn) = machine_with_one_lease(Config::new(1), now);
    let w1 = wait(&mut m, now);
    m.release(lease, conn, Release::Reuse, now)
        .expect("lease is ours");
    assert!(matches!(drain(&mut m)[..], [Action::Wake { waiter }] if waiter == w1));
    assert!(m.cancel(w1, now));
    assert!(drain(&mut m).is_empty());
    assert_eq!(m.held_connections().copied().collect::<Vec<_>>(), [1]);
    let status = m.status();
    assert_eq!((status.in_use, status.idle, status.size), (0, 1, 1));
}

// ----- connect failures -----------------------------------------------------------------

/// The delays between failed attempts: attempt `n + 1` starts `delay` after attempt `n`
/// failed, and attempts fail `latency` after they start.
fn retry_delays(sim: &Sim, latency: Duration) -> Vec<Duration> {
    sim.opened_at()
        .windows(2)
        .map(|w| w[1] - w[0] - latency)
        .collect()
}

#[test]
fn failed_connects_back_off_exponentially_with_jitter_up_to_the_cap() {
    let mut config = Config::new(4);
    config.backoff_base = ms(100);
    config.backoff_max = secs(1);
    let latency = ms(10);
    let mut sim = Sim::new(config);
    sim.set_connect_latency(latency);
    sim.set_failing(true);
    sim.acquire(0, None);
    sim.advance(secs(20));

    let delays = retry_delays(&sim, latency);
    assert!(delays.len() >= 10, "{delays:?}");
    for (i, delay) in delays.iter().enumerate() {
        // Failure i + 1 backs off min(base * 2^i, max), jittered into [half, whole].
        let nominal = (ms(100) * (1u32 << i.min(10))).min(secs(1));
        assert!(
            nominal / 2 <= *delay && *delay <= nominal,
            "delay #{i} is {delay:?}, expected within [{:?}, {nominal:?}]",
            nominal / 2
        );
    }
    // The delays grow (each range is disjoint from the one two steps before)...
    assert!(delays[2] > delays[0] && delays[3] > delays[1] && delays[4] > delays[2]);
    // ...and are jittered, not all the same once capped.
    let capped = &delays[4..];
    assert!(capped.iter().any(|d| *d != capped[0]), "{capped:?}");
    assert_eq!(sim.peak_opening(), 1);
    assert!(waiting(&sim, 0));
    assert_eq!(
        sim.machine.last_connect_error(),
        Some(&SimError("connection refused".into()))
    );
}

#[test]
fn waiters_keep_their_place_through_failing_connects_and_time_out_with_the_last_error() {
    let mut sim = Sim::new(Config::new(4));
    sim.set_failing(true);
    sim.acquire(0, None);
    sim.advance(ms(15)); // the first attempt failed at 10 ms
    sim.acquire(1, None);
    sim.acquire(2, Some(secs(3)));
    sim.advance(secs(3));

    assert_eq!(sim.peak_opening(), 1, "one attempt at a time while failing");
    assert!(waiting(&sim, 0) && waiting(&sim, 1));
    let AcquireError::TimedOut(timed_out) = failure(&sim, 2) else {
        panic!("task 2 should have timed out: {:?}", sim.task(2));
    };
    assert_eq!(
        timed_out.last_connect_error,
        Some(SimError("connection refused".into()))
    );
    let text = failure(&sim, 2).to_string();
    assert!(text.contains("timed out after 3s"), "{text}");
    assert!(
        text.ends_with("; last connect error: connection refused)"),
        "{text}"
    );

    // The server comes back: the oldest waiter gets the first connection.
    sim.set_failing(false);
    sim.advance(secs(10));
    assert_eq!(sim.conn_of(0), Some(SimConn(1)));
    assert_eq!(sim.conn_of(1), Some(SimConn(2)));
    assert_eq!(sim.machine.last_connect_error(), None);
}

#[test]
fn a_successful_connect_resets_the_back_off() {
    let mut config = Config::new(4);
    config.backoff_base = ms(100);
    config.backoff_max = secs(1);
    let mut sim = Sim::new(config);
    sim.set_failing(true);
    sim.acquire(0, None);
    sim.advance(secs(10)); // well into the capped back-off
    sim.set_failing(false);
    sim.advance(secs(2));
    assert!(holding(&sim, 0));

    sim.set_failing(true);
    let before = sim.opens();
    sim.acquire(1, None);
    assert_eq!(
        sim.opens(),
        before + 1,
        "no back-off pending: connects at once"
    );
    sim.advance(secs(1));
    let delays = retry_delays(&sim, ms(10));
    let after_reset = delays[before];
    assert!(
        ms(50) <= after_reset && after_reset <= ms(100),
        "back to the base delay: {after_reset:?}"
    );
}

// ----- min_idle, idle timeout, lifetime -------------------------------------------------

#[test]
fn min_idle_connections_are_opened_at_start() {
    let mut config = Config::new(4);
    config.min_idle = 2;
    let mut sim = Sim::new(config);
    assert_eq!(sim.opens(), 2, "prefilled before any acquire");
    sim.advance(ms(10));
    assert_eq!(sim.machine.status().idle, 2);
    sim.advance(secs(60));
    assert_eq!(sim.opens(), 2);
}

#[test]
fn a_closed_connection_is_replaced_to_keep_min_idle() {
    let mut config = Config::new(2);
    config.min_idle = 2;
    let mut sim = Sim::new(config);
    sim.advance(ms(10));
    sim.acquire(0, None);
    assert!(holding(&sim, 0));
    assert_eq!(
        sim.opens(),
        2,
        "no room to replenish while the pool is full"
    );
    sim.release_as(0, Release::Broken);
    assert_eq!(
        sim.opens(),
        3,
        "replenished as soon as the close is reported"
    );
    sim.advance(ms(10));
    assert_eq!(sim.machine.status().idle, 2);
}

#[test]
fn taking_an_idle_connection_replenishes_min_idle() {
    let mut config = quiet_config(4);
    config.min_idle = 1;
    let mut sim = Sim::new(config);
    sim.advance(ms(10));
    assert_eq!(sim.machine.status().idle, 1);

    // Through acquire...
    sim.acquire(0, None);
    assert!(holding(&sim, 0));
    assert_eq!(sim.opens(), 2, "a replacement is asked for at once");
    sim.advance(ms(10));
    assert_eq!(sim.machine.status().idle, 1);

    // ...and through try_acquire alike.
    sim.try_acquire(1);
    assert!(holding(&sim, 1));
    assert_eq!(sim.opens(), 3, "a replacement is asked for at once");
    sim.advance(ms(10));
    assert_eq!(sim.machine.status().idle, 1);
}

#[test]
fn idle_timeout_closes_idle_connections_but_keeps_min_idle() {
    let mut config = Config::new(4);
    config.min_idle = 1;
    config.idle_timeout = Some(secs(10));
    config.max_lifetime = None;
    let mut sim = Sim::new(config);
    sim.advance(ms(10));
    for task in 0..4 {
        sim.acquire(task, None);
    }
    sim.advance(ms(10));
    assert!((0..4).all(|task| holding(&sim, task)));
    for task in 0..4 {
        sim.release(task);
    }
    assert_eq!(sim.machine.status().idle, 4);

    sim.advance(secs(10) - Duration::from_nanos(1));
    assert!(sim.closes().is_empty(), "not before the timeout");
    sim.advance(Duration::from_nanos(1));
    assert_eq!(sim.closes().len(), 3);
    assert!(sim
        .closes()
        .iter()
        .all(|(_, reason)| *reason == CloseReason::IdleTimeout));
    assert_eq!(sim.machine.status().idle, 1);

    sim.advance(secs(3600));
    assert_eq!(sim.closes().len(), 3, "never below min_idle");
    assert_eq!(sim.machine.status().idle, 1);
}

/// A connection kept only because of `min_idle` starts its idle clock when it goes idle;
/// once other connections join it, it is reaped on time, not when the newcomers' timeouts
/// come due: `poll_timeout` may be early, never late.
#[test]
fn idle_timeout_of_a_connection_kept_for_min_idle_is_honoured_once_others_are_idle() {
    let mut config = Config::new(2);
    config.min_idle = 1;
    config.idle_timeout = Some(secs(10));
    config.max_lifetime = None;
    let mut sim = Sim::new(config);
    sim.advance(ms(10)); // the prefilled connection is idle from 10 ms
    let prefilled = SimConn(1);
    assert_eq!(
        sim.machine.held_connections().copied().collect::<Vec<_>>(),
        [prefilled]
    );

    advance_to(&mut sim, secs(1));
    sim.acquire(0, None); // takes the prefilled one; min_idle opens another...
    sim.acquire(1, None); // ...which goes to this waiter
    sim.advance(ms(10));
    let (kept, joining) = (sim.conn_of(1), sim.conn_of(0));
    assert_eq!(sim.opens(), 2);

    // The first goes back at 2 s, alone (kept for min_idle); the second joins it at 5 s.
    advance_to(&mut sim, secs(2));
    sim.release(1);
    advance_to(&mut sim, secs(5));
    sim.release(0);
    assert_eq!(sim.machine.status().idle, 2);

    sim.advance(secs(30));
    assert_eq!(sim.closes().len(), 1, "down to min_idle and no further");
    let (closed, reason) = sim.closes()[0];
    assert_eq!(reason, CloseReason::IdleTimeout);
    // The one idle since 2 s is reaped at 12 s, not when the newcomer's timeout is due.
    assert_eq!(Some(closed), kept);
    assert_eq!(sim.closed_at(), [secs(12)]);
    assert_eq!(
        sim.machine
            .held_connections()
            .copied()
            .map(Some)
            .collect::<Vec<_>>(),
        [joining]
    );
}

/// When the same pool is built from the same seed, its first four connections are retired
/// at these times (since the start).
fn lifetime_retirements(seed: u64) -> Vec<Duration> {
    let mut config = Config::new(4);
    config.idle_timeout = None;
    config.max_lifetime = Some(secs(60));
    config.max_lifetime_jitter = secs(10);
    config.seed = seed;
    let mut sim = Sim::new(config);
    for task in 0..4 {
        sim.acquire(task, None);
    }
    sim.advance(ms(10));
    for task in 0..4 {
        sim.release(task);
    }
    sim.advance(secs(120));
    assert_eq!(sim.closes().len(), 4);
    assert!(sim
        .closes()
        .iter()
        .all(|(_, reason)| *reason == CloseReason::MaxLifetime));
    assert_eq!(sim.opens(), 4, "min_idle is 0: nothing reopened");
    sim.closed_at().to_vec()
}

#[test]
fn connections_opened_together_expire_at_jittered_times_within_their_lifetime() {
    let retired = lifetime_retirements(7);
    let connected = ms(10);
    for at in &retired {
        let lived = *at - connected;
        assert!(
            secs(50) <= lived && lived <= secs(60),
            "lived {lived:?}, expected within [50s, 60s]"
        );
    }
    let mut distinct = retired.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "all different: {retired:?}");
}

#[test]
fn lifetime_jitter_replays_exactly_with_the_same_seed_and_differs_with_another() {
    assert_eq!(lifetime_retirements(7), lifetime_retirements(7));
    assert_ne!(lifetime_retirements(7), lifetime_retirements(8));
}

#[test]
fn an_idle_connection_is_retired_at_its_lifetime_even_after_timeouts_handled_while_leased() {
    let mut config = Config::new(1);
    config.idle_timeout = None;
    config.max_lifetime = Some(secs(60));
    config.max_lifetime_jitter = Duration::ZERO;
    let mut sim = Sim::new(config);
    sim.acquire(0, None);
    sim.advance(ms(10)); // connected at 10 ms: retired at 60.01 s
    let conn = sim.conn_of(0).expect("task 0 holds a connection");
    // A deadline handled while the connection is leased.
    sim.acquire(1, Some(secs(1)));
    sim.advance(secs(1));
    assert!(matches!(failure(&sim, 1), AcquireError::TimedOut(_)));
    sim.advance(secs(1));
    sim.release(0);

    sim.advance(secs(120));
    assert_eq!(sim.closes(), [(conn, CloseReason::MaxLifetime)]);
    assert_eq!(sim.closed_at(), [ms(60_010)]);
}

#[test]
fn a_leased_connection_past_its_lifetime_is_closed_on_release() {
    let mut config = Config::new(1);
    config.idle_timeout = None;
    config.max_lifetime = Some(secs(60));
    config.max_lifetime_jitter = secs(1);
    let mut sim = Sim::new(config);
    sim.acquire(0, None);
    sim.advance(ms(10));
    let old = sim.conn_of(0).expect("task 0 holds a connection");
    sim.advance(secs(30));
    sim.acquire(1, None);
    sim.advance(secs(31));
    assert!(
        sim.closes().is_empty(),
        "a leased connection is not closed under its holder"
    );

    sim.release(0);
    assert_eq!(sim.closes(), [(old, CloseReason::MaxLifetime)]);
    assert!(waiting(&sim, 1), "the expired connection is not handed on");
    sim.advance(ms(10));
    assert!(holding(&sim, 1));
    assert_ne!(sim.conn_of(1), Some(old));
    assert_eq!(sim.machine.status().idle, 0);
}

/// A lease names when its connection will be retired, so a driver that lends returned
/// connections again without the machine never lends one past its lifetime.
#[test]
fn a_lease_carries_its_connections_retirement_instant() {
    let t0 = Instant::now();
    let mut config = quiet_config(1);
    config.max_lifetime = Some(secs(60));
    let (mut m, lease, conn) = machine_with_one_lease(config, t0);
    assert_eq!(lease.expires(), Some(t0 + secs(60)));
    m.release(lease, conn, Release::Reuse, t0)
        .expect("outstanding");
    let (again, _) = m.try_acquire(t0 + secs(1)).expect("idle");
    assert_eq!(again.expires(), Some(t0 + secs(60)), "the same connection");
    let (m2, lease, _) = machine_with_one_lease(quiet_config(1), t0);
    assert_eq!(lease.expires(), None, "no lifetime configured");
    drop(m2);
}

/// A release reported late, with the instant the connection really came back (after
/// inputs at later instants), counts the idle timeout from that instant.
#[test]
fn a_release_reported_late_counts_idle_time_from_when_it_came_back() {
    let t0 = Instant::now();
    let mut config = quiet_config(2);
    config.idle_timeout = Some(secs(10));
    let (mut m, lease, conn) = machine_with_one_lease(config, t0);
    // Time moves on: another task queues at t0 + 5 s.
    let w = wait(&mut m, t0 + secs(5));
    m.cancel(w, t0 + secs(5));
    drain(&mut m);
    // The connection came back at t0 + 1 s; the driver reports it only now.
    m.release(lease, conn, Release::Reuse, t0 + secs(1))
        .expect("outstanding");
    assert_eq!(m.status().idle, 1);
    let due = m.poll_timeout().expect("the idle deadline is noted");
    assert!(due <= t0 + secs(11), "due by t0 + 11 s, not later: {due:?}");
    m.handle_timeout(t0 + secs(11));
    let closed: Vec<_> = drain(&mut m)
        .into_iter()
        .filter_map(|a| match a {
            Action::Close { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(closed, [CloseReason::IdleTimeout]);
}

// ----- leaks and stale reclaim ----------------------------------------------------------

#[test]
fn a_stale_lease_is_reclaimed_so_a_waiter_gets_a_replacement_and_closed_when_it_returns() {
    let mut config = quiet_config(1);
    config.leak_threshold = Some(secs(5));
    config.reclaim_after = Some(secs(30));
    let mut sim = Sim::new(config);
    sim.set_close_latency(ms(100));
    sim.acquire(0, None);
    sim.advance(ms(10));
    let lease = sim.lease_of(0).expect("task 0 holds a connection");
    let stale = sim.conn_of(0).expect("task 0 holds a connection");
    sim.advance(ms(990));
    sim.acquire(1, None);
    assert_eq!(sim.opens(), 1);

    // Leased at 10 ms: reclaimed at 30.01 s.
    advance_to(&mut sim, ms(30_010) - Duration::from_nanos(1));
    assert!(sim.reclaims().is_empty(), "not before reclaim_after");
    assert_eq!(sim.leaks(), [lease], "reported as a leak first");
    sim.advance(Duration::from_nanos(1));
    assert_eq!(sim.reclaims(), [lease]);
    let status = sim.machine.status();
    assert_eq!((status.abandoned, status.in_use, status.size), (1, 0, 1));
    assert_eq!(sim.opens(), 2, "a replacement opens for the waiter");
    sim.advance(ms(10));
    assert!(holding(&sim, 1));

    sim.advance(secs(1));
    sim.release(0);
    assert_eq!(sim.closes(), [(stale, CloseReason::Reclaimed)]);
    let status = sim.machine.status();
    assert_eq!(
        (status.abandoned, status.closing, status.in_use, status.size),
        (0, 0, 1, 1),
        "the reclaimed connection's close does not count"
    );
    sim.advance(secs(1));
    assert_eq!(sim.leaks(), [lease]);
    assert!(holding(&sim, 1));
    assert!(sim.peak_size() <= 1);
}

// ----- close ----------------------------------------------------------------------------

#[test]
fn close_is_sticky() {
    let mut sim = Sim::new(Config::new(2));
    sim.close();
    assert!(sim.machine.is_closed());
    sim.acquire(0, None);
    assert!(matches!(failure(&sim, 0), AcquireError::Closed));
    assert!(matches!(
        sim.machine.try_acquire(sim.now()),
        Err(AcquireError::Closed)
    ));
    sim.close();
    sim.advance(secs(60));
    assert!(sim.machine.is_closed());
    assert_eq!(sim.opens(), 0);
    assert_eq!(sim.drained_reports(), 1);
}

#[test]
fn close_fails_every_waiter_with_closed() {
    let mut sim = Sim::new(Config::new(1));
    sim.acquire(0, None);
    sim.advance(ms(10));
    sim.acquire(1, None);
    sim.acquire(2, Some(secs(5)));
    sim.close();
    assert!(matches!(failure(&sim, 1), AcquireError::Closed));
    assert!(matches!(failure(&sim, 2), AcquireError::Closed));
    assert!(
        holding(&sim, 0),
        "a holder keeps its connection until it returns it"
    );
    assert_eq!(sim.machine.status().waiting, 0);
}

#[test]
fn close_revokes_a_grant_not_yet_taken() {
    let now = Instant::now();
    let (mut m, lease, conn) = machine_with_one_lease(Config::new(1), now);
    let w = wait(&mut m, now);
    m.release(lease, conn, Release::Reuse, now)
        .expect("lease is ours");
    assert!(matches!(drain(&mut m)[..], [Action::Wake { waiter }] if waiter == w));
    m.close();
    let closed = drain(&mut m);
    assert!(
        matches!(
            closed[..],
            [Action::Close {
                conn: 1,
                reason: CloseReason::PoolClosed,
                ..
            }]
        ),
        "{closed:?}"
    );
    assert!(matches!(m.take(w, now), Err(AcquireError::Closed)));
    assert_eq!(m.held_connections().count(), 0);
}

#[test]
fn close_closes_idle_connections_at_once() {
    let mut sim = Sim::new(Config::new(2));
    sim.acquire(0, None);
    sim.acquire(1, None);
    sim.advance(ms(10));
    sim.release(0);
    sim.release(1);
    assert_eq!(sim.machine.status().idle, 2);
    sim.close();
    assert_eq!(sim.closes().len(), 2);
    assert!(sim
        .closes()
        .iter()
        .all(|(_, reason)| *reason == CloseReason::PoolClosed));
    assert_eq!(sim.machine.status().idle, 0);
    assert!(sim.drained());
}

#[test]
fn a_connection_returned_after_close_is_closed() {
    let mut sim = Sim::new(Config::new(1));
    sim.acquire(0, None);
    sim.advance(ms(10));
    let conn = sim.conn_of(0).expect("task 0 holds a connection");
    sim.close();
    assert!(sim.closes().is_empty());
    assert!(!sim.drained(), "a lease is still out");
    sim.release(0);
    assert_eq!(sim.closes(), [(conn, CloseReason::PoolClosed)]);
    assert_eq!(sim.machine.status().idle, 0);
    assert!(sim.drained());
}

#[test]
fn a_connect_finishing_after_close_is_closed() {
    let mut sim = Sim::new(Config::new(2));
    sim.set_connect_latency(ms(100));
    sim.acquire(0, None);
    sim.close();
    assert!(matches!(failure(&sim, 0), AcquireError::Closed));
    assert_eq!(sim.machine.status().opening, 1);
    assert!(!sim.drained(), "a connect is still in flight");
    sim.advance(ms(100));
    assert_eq!(sim.closes(), [(SimConn(1), CloseReason::PoolClosed)]);
    assert!(sim.drained());
    assert_eq!(sim.opens(), 1);
}

#[test]
fn a_connect_failing_after_close_lets_the_pool_drain_without_retrying() {
    let mut sim = Sim::new(Config::new(2));
    sim.set_connect_latency(ms(100));
    sim.fail_next_connects(1);
    sim.acquire(0, None);
    sim.close();
    sim.advance(ms(100));
    assert!(sim.drained());
    sim.advance(secs(60));
    assert_eq!(sim.opens(), 1, "no retry after close");
    assert_eq!(sim.machine.poll_timeout().filter(|t| *t > sim.now()), None);
}

#[test]
fn drained_is_reported_once_after_the_last_close_is_reported() {
    let mut sim = Sim::new(Config::new(2));
    sim.set_close_latency(ms(50));
    sim.acquire(0, None);
    sim.acquire(1, None);
    sim.advance(ms(10));
    sim.release(1);

    sim.close(); // closes the idle one
    assert_eq!(sim.closes().len(), 1);
    sim.advance(ms(50));
    assert!(!sim.drained(), "a lease is still out");
    sim.release(0);
    assert_eq!(sim.closes().len(), 2);
    sim.advance(ms(50) - Duration::from_nanos(1));
    assert!(!sim.drained(), "the last close is not reported yet");
    assert!(!sim.machine.is_drained());
    sim.advance(Duration::from_nanos(1));
    assert_eq!(sim.drained_reports(), 1);
    assert!(sim.machine.is_drained());

    sim.close();
    sim.advance(secs(60));
    assert_eq!(sim.drained_reports(), 1, "once");
}

// ----- resize ---------------------------------------------------------------------------

#[test]
fn growing_the_pool_serves_waiters_at_once() {
    let mut sim = Sim::new(Config::new(1));
    sim.acquire(0, None);
    sim.advance(ms(10));
    sim.acquire(1, None);
    sim.acquire(2, None);
    assert_eq!(sim.opens(), 1);
    sim.set_max_size(3).expect("3 is a valid size");
    assert_eq!(sim.opens(), 3, "connects for both waiters in the same call");
    assert_eq!(sim.opened_at()[1..], [ms(10), ms(10)]);
    sim.advance(ms(10));
    assert!(holding(&sim, 1) && holding(&sim, 2));
}

#[test]
fn shrinking_the_pool_closes_surplus_idle_and_lets_leases_drain() {
    let mut sim = Sim::new(Config::new(3));
    for task in 0..3 {
        sim.acquire(task, None);
    }
    sim.advance(ms(10));
    let idle_conn = sim.conn_of(2).expect("task 2 holds a connection");
    let surplus_conn = sim.conn_of(0).expect("task 0 holds a connection");
    sim.release(2);

    sim.set_max_size(1).expect("1 is a valid size");
    assert_eq!(sim.closes(), [(idle_conn, CloseReason::Surplus)]);
    assert!(
        holding(&sim, 0) && holding(&sim, 1),
        "leases are not revoked"
    );
    assert_eq!(sim.machine.status().size, 2);

    sim.release(0);
    assert_eq!(sim.closes()[1], (surplus_conn, CloseReason::Surplus));
    sim.release(1);
    assert_eq!(sim.closes().len(), 2, "the last one fits and stays");
    let status = sim.machine.status();
    assert_eq!((status.max_size, status.size, status.idle), (1, 1, 1));
}

#[test]
fn shrinking_closes_only_the_surplus_idle_connections() {
    let mut sim = Sim::new(quiet_config(4));
    sim.set_close_latency(ms(100)); // closes in flight still count
    for task in 0..4 {
        sim.acquire(task, None);
    }
    sim.advance(ms(10));
    let conns: Vec<_> = (0..4).map(|task| sim.conn_of(task)).collect();
    for task in 1..4 {
        sim.advance(ms(1));
        sim.release(task); // idle, oldest first: tasks 1, 2, 3
    }

    sim.set_max_size(2).expect("2 is a valid size");
    let closed: Vec<_> = sim.closes().iter().map(|(conn, _)| Some(*conn)).collect();
    assert_eq!(
        closed,
        [conns[1], conns[2]],
        "the two oldest idle, and only them"
    );
    assert!(sim
        .closes()
        .iter()
        .all(|(_, reason)| *reason == CloseReason::Surplus));
    let status = sim.machine.status();
    assert_eq!((status.idle, status.in_use, status.closing), (1, 1, 2));
    sim.advance(ms(100));
    assert_eq!(sim.machine.status().size, 2);
    assert_eq!(sim.closes().len(), 2);
}

#[test]
fn set_max_size_zero_is_an_error_and_changes_nothing() {
    let now = Instant::now();
    let (mut m, _lease, _conn) = machine_with_one_lease(Config::new(2), now);
    let _w = m.acquire(now, None);
    let _ = drain(&mut m);
    let (status, config, timeout) = (m.status(), m.config().clone(), m.poll_timeout());
    let error = m.set_max_size(0, now).expect_err("max_size 0 is invalid");
    assert_eq!(error.field(), "max_size");
    assert!(error.to_string().contains("`max_size`"), "{error}");
    assert_eq!(m.status(), status);
    assert_eq!(m.config(), &config);
    assert_eq!(m.poll_timeout(), timeout);
    assert!(drain(&mut m).is_empty());
}

// ----- stale ids ------------------------------------------------------------------------

#[test]
fn a_taken_waiter_id_is_unknown_and_not_confused_with_a_newer_waiter() {
    let now = Instant::now();
    let mut m = M::new(quiet_config(1)).expect("valid config");
    let old = wait(&mut m, now);
    let slot = single_open(&drain(&mut m));
    m.handle_connected(slot, 1, now).expect("slot is opening");
    let _ = drain(&mut m);
    let (_lease, _conn) = take_granted(&mut m, old, now);

    let new = wait(&mut m, now);
    assert_eq!(new.index(), old.index(), "the index is reused");
    assert_ne!(new, old);
    assert!(matches!(m.take(old, now), Err(AcquireError::UnknownWaiter(w)) if w == old));
    assert!(!m.cancel(old, now), "cancelling a taken id is a no-op");
    assert_eq!(m.status().waiting, 1, "the newer waiter is untouched");
    assert!(matches!(m.take(new, now), Ok(None)));

    // A cancelled id is just as dead.
    assert!(m.cancel(new, now));
    let newest = wait(&mut m, now);
    assert_eq!(newest.index(), new.index());
    assert!(matches!(
        m.take(new, now),
        Err(AcquireError::UnknownWaiter(_))
    ));
    assert!(!m.cancel(new, now));
    assert_eq!(m.status().waiting, 1);
    assert!(matches!(m.take(newest, now), Ok(None)));
}

#[test]
fn a_slot_reported_twice_is_ignored_and_not_confused_with_a_newer_slot() {
    let mut config = quiet_config(1);
    config.backoff_base = ms(10);
    let now = Instant::now();
    let mut m = M::new(config).expect("valid config");
    let w = wait(&mut m, now);
    let first = single_open(&drain(&mut m));
    assert!(m.handle_connect_failed(first, "refused".into(), Failure::Transient, now));
    assert!(
        !m.handle_connect_failed(first, "refused".into(), Failure::Transient, now),
        "repeated"
    );

    let later = now + ms(10);
    m.handle_timeout(later);
    let second = single_open(&drain(&mut m));
    assert_eq!(second.index(), first.index(), "the index is reused");
    assert_ne!(second, first);
    assert!(!m.handle_connect_failed(first, "stale".into(), Failure::Transient, later));
    assert!(!m.handle_closed(first, later));
    assert_eq!(m.status().opening, 1, "the newer slot is untouched");

    m.handle_connected(second, 7, later)
        .expect("second is opening");
    assert!(matches!(drain(&mut m)[..], [Action::Wake { waiter }] if waiter == w));
    let (lease, conn) = take_granted(&mut m, w, later);
    m.release(lease, conn, Release::Broken, later)
        .expect("lease is ours");
    assert!(matches!(
        drain(&mut m)[..],
        [Action::Close { slot, conn: 7, .. }] if slot == second
    ));
    assert!(m.handle_closed(second, later));
    assert!(!m.handle_closed(second, later), "repeated");
    assert_eq!(m.status().size, 0);
}

#[test]
fn a_connect_result_for_an_unknown_slot_is_rejected_with_its_connection() {
    let now = Instant::now();
    let mut m = M::new(quiet_config(1)).expect("valid config");
    let _w = wait(&mut m, now);
    let slot = single_open(&drain(&mut m));
    m.handle_connected(slot, 1, now).expect("slot is opening");
    let _ = drain(&mut m);
    let status = m.status();

    let rejected = m
        .handle_connected(slot, 2, now)
        .expect_err("the slot is no longer opening");
    assert_eq!(rejected.conn, Some(2), "the connection is handed back");
    assert_eq!(m.status(), status);
    assert!(drain(&mut m).is_empty());

    // A slot id from another machine is just as unknown.
    let mut other = M::new(quiet_config(4)).expect("valid config");
    let _ = wait(&mut other, now);
    let _ = wait(&mut other, now);
    let foreign = match drain(&mut other)[..] {
        [_, Action::Open { slot }] => slot,
        ref actions => panic!("expected two Opens, got {actions:?}"),
    };
    let rejected = m.handle_connected(foreign, 3, now).expect_err("unknown");
    assert_eq!(rejected.conn, Some(3));
    assert_eq!(m.status(), status);
}

// ----- configuration --------------------------------------------------------------------

#[test]
fn invalid_configs_are_errors_naming_the_field() {
    type Edit = fn(&mut Config);
    let cases: [(&str, Edit); 17] = [
        ("max_size", |c| c.max_size = 0),
        ("max_size", |c| c.max_size = MAX_SIZE_LIMIT + 1),
        ("min_idle", |c| c.min_idle = c.max_size + 1),
        ("idle_timeout", |c| c.idle_timeout = Some(Duration::ZERO)),
        ("max_lifetime", |c| c.max_lifetime = Some(Duration::ZERO)),
        ("leak_threshold", |c| {
            c.leak_threshold = Some(Duration::ZERO)
        }),
        ("reclaim_after", |c| c.reclaim_after = Some(Duration::ZERO)),
        ("backoff_base", |c| c.backoff_base = Duration::ZERO),
        ("max_lifetime_jitter", |c| {
            c.max_lifetime = Some(secs(60));
            c.max_lifetime_jitter = secs(60);
        }),
        ("max_lifetime_jitter", |c| {
            c.max_lifetime = Some(secs(60));
            c.max_lifetime_jitter = secs(61);
        }),
        ("reclaim_after", |c| {
            c.leak_threshold = Some(secs(10));
            c.reclaim_after = Some(secs(9));
        }),
        ("backoff_max", |c| {
            c.backoff_base = secs(2);
            c.backoff_max = secs(1);
        }),
        ("backoff_max", |c| c.backoff_max = Duration::ZERO),
        ("queue_target", |c| c.queue_target = Some(Duration::ZERO)),
        ("queue_target", |c| c.queue_target = Some(Duration::MAX)),
        ("queue_interval", |c| c.queue_interval = Duration::ZERO),
        ("max_waiters", |c| c.max_waiters = Some(0)),
    ];
    for (field, edit) in cases {
        let mut config = Config::new(4);
        edit(&mut config);
        let error = config.validate().expect_err(field);
        assert_eq!(error.field(), field, "{error}");
        let text = error.to_string();
        assert!(
            text.starts_with(&format!("invalid pool configuration: `{field}` ")),
            "{text}"
        );
        assert!(!error.reason().is_empty());
        let built = M::new(config);
        assert!(
            matches!(built, Err(ref e) if e.field() == field),
            "{built:?}"
        );
    }
    // The edge cases on the valid side.
    let mut config = Config::new(4);
    config.min_idle = 4;
    config.leak_threshold = Some(secs(10));
    config.reclaim_after = Some(secs(10));
    config.backoff_max = config.backoff_base;
    config.max_lifetime_jitter = secs(1799);
    config.queue_target = Some(Duration::from_nanos(1));
    config.queue_interval = Duration::from_nanos(1);
    config.max_waiters = Some(1);
    assert_eq!(config.validate(), Ok(()));
}

// ----- single inputs --------------------------------------------------------------------

#[test]
fn try_acquire_without_an_idle_connection_is_exhausted_with_status() {
    let now = Instant::now();
    let (mut m, _lease, _conn) = machine_with_one_lease(Config::new(2), now);
    let error = m.try_acquire(now).expect_err("nothing idle");
    let AcquireError::Exhausted(status) = &error else {
        panic!("expected Exhausted, got {error:?}");
    };
    assert_eq!((status.in_use, status.max_size, status.idle), (1, 2, 0));
    assert_eq!(
        error.to_string(),
        "no idle connection (1 of 2 in use, 0 idle, 0 opening, 0 waiting)"
    );
    assert!(drain(&mut m).is_empty(), "try_acquire never opens");
    assert_eq!(m.status().waiting, 0);
}

#[test]
fn acquire_with_a_past_deadline_and_no_idle_connection_times_out_at_once() {
    let now = Instant::now();
    let mut m = M::new(Config::new(2)).expect("valid config");
    let earlier = now.checked_sub(ms(1)).unwrap_or(now);
    for deadline in [now, earlier] {
        let error = match m.acquire(now, Some(deadline)) {
            Err(e) => e,
            Ok(acquired) => panic!("expected a time-out, got {acquired:?}"),
        };
        let AcquireError::TimedOut(timed_out) = &error else {
            panic!("expected TimedOut, got {error:?}");
        };
        assert_eq!(timed_out.waited, Duration::ZERO);
        assert_eq!(timed_out.status.waiting, 1, "counting itself");
        assert!(
            error.to_string().starts_with("timed out after 0ns"),
            "{error}"
        );
    }
    assert!(
        drain(&mut m).is_empty(),
        "nothing opened for a caller already gone"
    );
    assert_eq!(m.status().waiting, 0);
    assert_eq!(m.poll_timeout(), None);
}

#[test]
fn acquire_with_a_past_deadline_still_gets_an_idle_connection() {
    let now = Instant::now();
    let (mut m, lease, conn) = machine_with_one_lease(Config::new(1), now);
    m.release(lease, conn, Release::Reuse, now)
        .expect("lease is ours");
    assert!(matches!(
        m.acquire(now, Some(now)),
        Ok(Acquired::Ready(_, 1))
    ));
}

#[test]
fn a_broken_connection_is_closed_as_broken_and_replaced_for_a_waiter() {
    let mut sim = Sim::new(Config::new(1));
    sim.acquire(0, None);
    sim.advance(ms(10));
    let broken = sim.conn_of(0).expect("task 0 holds a connection");
    sim.acquire(1, None);
    sim.release_as(0, Release::Broken);
    assert_eq!(sim.closes(), [(broken, CloseReason::Broken)]);
    assert!(waiting(&sim, 1), "a broken connection is not handed on");
    sim.advance(ms(10));
    assert!(holding(&sim, 1));
    assert_ne!(sim.conn_of(1), Some(broken));
    assert_eq!(sim.opens(), 2);
}

#[test]
fn a_discarded_connection_is_closed_as_discarded() {
    let mut sim = Sim::new(Config::new(1));
    sim.acquire(0, None);
    sim.advance(ms(10));
    let conn = sim.conn_of(0).expect("task 0 holds a connection");
    sim.release_as(0, Release::Discard);
    assert_eq!(sim.closes(), [(conn, CloseReason::Discarded)]);
    assert_eq!(sim.machine.status().size, 0);
}

#[test]
fn detaching_frees_the_slot_and_a_waiter_gets_a_new_connection() {
    let now = Instant::now();
    let (mut m, lease, _kept) = machine_with_one_lease(quiet_config(1), now);
    let w = wait(&mut m, now);
    assert!(drain(&mut m).is_empty(), "no room yet");
    m.detach(lease, now).expect("lease is ours");
    let slot = single_open(&drain(&mut m));
    assert_eq!(
        m.status().size,
        1,
        "the detached connection no longer counts"
    );
    m.handle_connected(slot, 2, now).expect("slot is opening");
    assert!(matches!(drain(&mut m)[..], [Action::Wake { waiter }] if waiter == w));
    let (_lease, conn) = take_granted(&mut m, w, now);
    assert_eq!(conn, 2);
}

// ----- outages and fatal connect errors (ARCHITECTURE.md, "Connect failures") -------------

/// A restart: eight connections in use break together, 64 tasks want one, and the connects
/// the pool starts for them all fail while the server is down. Those failures are one
/// outage step, not eight: the pool probes again after the base back-off, one connect at a
/// time, and is serving within `backoff_max` of the server coming back, knocking at most
/// ten times a second meanwhile.
#[test]
fn a_restart_is_one_outage_and_the_pool_serves_within_the_backoff_cap_of_the_server_returning() {
    for down in [ms(200), secs(3)] {
        let config = Config::new(8);
        let (cap, base) = (config.backoff_max, config.backoff_base);
        let mut sim = Sim::new(config);
        let latency = ms(2);
        sim.set_connect_latency(latency);
        for task in 0..8 {
            sim.acquire(task, Some(secs(30)));
        }
        sim.settle(secs(1));
        assert!((0..8).all(|task| holding(&sim, task)));
        for task in 8..64 {
            sim.acquire(task, Some(secs(30)));
        }
        // The server goes away: every connection in use comes back broken.
        sim.set_failing(true);
        let opens_before = sim.opens();
        let went_down = sim.elapsed();
        for task in 0..8 {
            sim.release_as(task, Release::Broken);
        }
        sim.advance(down);
        let attempts = sim.opens() - opens_before;
        sim.set_failing(false);
        let came_back = sim.elapsed();
        sim.advance(cap + latency);

        let outage = came_back - went_down;
        // Eight at once when the server went, then one probe per back-off of at least
        // half the base, then at least half the cap.
        assert!(
            attempts <= 8 + 1 + outage.as_millis() as usize / (base / 2).as_millis() as usize,
            "{attempts} connect attempts in a {outage:?} outage"
        );
        let first_success = sim
            .opened_at()
            .iter()
            .filter(|t| **t >= came_back)
            .min()
            .copied();
        let served: usize = (8..64).filter(|t| holding(&sim, *t)).count();
        assert_eq!(served, 8, "eight waiters served once the server is back");
        let probe = first_success.map_or(Duration::ZERO, |t| t - came_back);
        assert!(
            probe <= cap,
            "the first connect after the server came back started {probe:?} later (cap {cap:?})"
        );
        // The probes while the server was down: after the burst when it went, one at a
        // time, each starting a back-off after the previous one failed.
        let probes: Vec<Duration> = sim
            .opened_at()
            .iter()
            .copied()
            .filter(|t| *t > went_down && *t < came_back)
            .collect();
        let retries: Vec<Duration> = probes.windows(2).map(|w| w[1] - w[0] - latency).collect();
        assert!(
            retries.iter().all(|d| *d >= base / 2),
            "retries closer than half the base back-off: {retries:?}"
        );
        assert!(
            (8..64).all(|t| holding(&sim, t) || waiting(&sim, t)),
            "no waiter failed: they wait to their deadline"
        );
    }
}

/// Connects that were in flight together when the first of them failed count as one
/// failure: the back-off after eight failed connects is the base, not 2^7 times it.
#[test]
fn connects_in_flight_together_count_as_one_failure() {
    let mut config = Config::new(8);
    config.backoff_base = ms(100);
    config.backoff_max = secs(10);
    let mut sim = Sim::new(config);
    sim.set_connect_latency(ms(10));
    sim.set_failing(true);
    for task in 0..8 {
        sim.acquire(task, None);
    }
    assert_eq!(sim.opens(), 8, "eight connects start together");
    sim.advance(ms(10)); // all eight fail
    sim.set_failing(false);
    sim.advance(ms(100) + ms(10));
    assert!(
        (0..8).all(|t| holding(&sim, t)),
        "served after one base back-off: {:?}",
        sim.log()
    );
    let probe = sim.opened_at()[8];
    assert!(
        probe >= ms(10 + 50) && probe <= ms(10 + 100),
        "the probe started at {probe:?}"
    );
}

/// A wrong password cannot heal by waiting: the waiters it leaves without hope fail at once
/// with the error (not at their deadline), and so do acquires during the back-off. After the
/// back-off the next acquire tries again, and once the cause is fixed the pool serves.
#[test]
fn a_fatal_connect_error_fails_waiters_at_once_and_the_pool_heals_when_fixed() {
    let mut sim = Sim::new(Config::new(4));
    sim.set_connect_latency(ms(5));
    sim.set_failing_with(Some(Failure::Fatal));
    sim.acquire(0, Some(secs(30)));
    sim.acquire(1, None);
    sim.advance(ms(5));
    for task in [0, 1] {
        let AcquireError::ConnectFailed(error, status) = failure(&sim, task) else {
            panic!("task {task}: {:?}", sim.task(task));
        };
        assert_eq!(error.0, "password authentication failed");
        assert_eq!(status.waiting, 2, "{status:?}");
    }
    assert_eq!(sim.opens(), 2, "one connect per waiter, no retry");
    // During the back-off, an acquire fails at once without a connect.
    sim.acquire(2, Some(secs(30)));
    assert!(matches!(failure(&sim, 2), AcquireError::ConnectFailed(..)));
    assert_eq!(sim.opens(), 2);
    // After it, the next acquire tries again (and fails again: still wrong)...
    sim.advance(Config::new(4).backoff_max);
    sim.acquire(3, Some(secs(30)));
    assert!(waiting(&sim, 3));
    assert_eq!(sim.opens(), 3);
    sim.advance(ms(5));
    assert!(matches!(failure(&sim, 3), AcquireError::ConnectFailed(..)));
    // ...and once the password is right, the next attempt serves.
    sim.set_failing_with(None);
    sim.advance(Config::new(4).backoff_max);
    sim.acquire(4, Some(secs(30)));
    sim.advance(ms(5));
    assert!(holding(&sim, 4), "{:?}", sim.log());
}

/// A fatal error fails only the waiters a connect would have had to serve: as many as there
/// are connections in use keep waiting, since each may come back.
#[test]
fn a_fatal_connect_error_spares_the_waiters_returning_connections_can_serve() {
    let mut sim = Sim::new(Config::new(4));
    sim.set_connect_latency(ms(5));
    sim.acquire(0, None);
    sim.advance(ms(5));
    assert!(holding(&sim, 0));
    // The pool is not full, so a waiter starts a connect; the password changed meanwhile.
    sim.set_failing_with(Some(Failure::Fatal));
    sim.acquire(1, None);
    sim.acquire(2, None);
    sim.advance(ms(5));
    assert!(waiting(&sim, 1), "the head waits for task 0's connection");
    assert!(matches!(failure(&sim, 2), AcquireError::ConnectFailed(..)));
    sim.release(0);
    assert!(holding(&sim, 1));
}

/// A transient error after a fatal one (the server restarting while a password is fixed)
/// makes waiting worthwhile again: waiters wait.
#[test]
fn a_transient_error_after_a_fatal_one_lets_waiters_wait_again() {
    let mut sim = Sim::new(Config::new(2));
    sim.set_connect_latency(ms(5));
    sim.set_failing_with(Some(Failure::Fatal));
    sim.acquire(0, None);
    sim.advance(ms(5));
    assert!(matches!(failure(&sim, 0), AcquireError::ConnectFailed(..)));
    sim.set_failing_with(Some(Failure::Transient));
    sim.advance(secs(1));
    sim.acquire(1, Some(secs(5)));
    sim.advance(ms(300));
    assert!(waiting(&sim, 1), "{:?}", sim.task(1));
    sim.set_failing_with(None);
    sim.advance(secs(1));
    assert!(holding(&sim, 1));
}

/// A connect that was in flight when the server went away may still succeed (the server
/// accepted it just before): that does not end the outage. Connects stay one at a time until
/// one started after the failure succeeds; then the rest open at once.
#[test]
fn a_success_in_flight_with_the_first_failure_does_not_end_the_outage() {
    let mut config = Config::new(8);
    config.backoff_base = ms(100);
    let mut sim = Sim::new(config);
    sim.set_connect_latency(ms(10));
    sim.fail_next_connects(1);
    for task in 0..3 {
        sim.acquire(task, None);
    }
    assert_eq!(sim.opens(), 3, "three connects in flight together");
    sim.advance(ms(10)); // the first fails, the other two succeed
    assert!(
        holding(&sim, 0) && holding(&sim, 1) && waiting(&sim, 2),
        "FIFO"
    );
    for task in 3..8 {
        sim.acquire(task, None);
    }
    assert_eq!(sim.opens(), 3, "no burst while the back-off runs");
    sim.advance(ms(200));
    // One probe after the back-off; once it succeeds (10 ms later), the other five at once.
    let opened = sim.opened_at();
    assert_eq!(opened.len(), 9, "{:?}", sim.log());
    let probe = opened[3];
    assert!(
        probe >= ms(10 + 50),
        "the probe waited for the back-off: {probe:?}"
    );
    assert!(
        opened[4..].iter().all(|t| *t == probe + ms(10)),
        "one probe, then the rest together: {:?}",
        sim.log()
    );
    assert!((0..8).all(|t| holding(&sim, t)));
}

// ----- overload (ARCHITECTURE.md, "Overload") ------------------------------------------------

/// What became of the requests of [`overload_run`].
#[derive(Debug, Default)]
struct OverloadOutcome {
    /// (arrival, wait) of each request that got a connection.
    served: Vec<(Duration, Duration)>,
    /// (arrival, wait) of each request that was shed.
    shed: Vec<(Duration, Duration)>,
    /// Arrivals of the requests that timed out.
    timed_out: Vec<Duration>,
    /// The most tasks waiting at once.
    peak_waiting: usize,
}

impl OverloadOutcome {
    /// The waits of the requests served that arrived at or after `from`, sorted.
    fn waits_from(&self, from: Duration) -> Vec<Duration> {
        let mut waits: Vec<Duration> = self
            .served
            .iter()
            .filter(|(at, _)| *at >= from)
            .map(|(_, wait)| *wait)
            .collect();
        waits.sort_unstable();
        waits
    }
}

/// The database falls behind: a pool of 4 whose every request holds its connection 100 ms
/// (40 a second at most), with a request arriving every 10 ms (100 a second) for 10 s, each
/// willing to wait 5 s; shedding on with a 50 ms queue target and a 1 s interval, or off.
fn overload_run(queue_target: Option<Duration>, max_waiters: Option<usize>) -> OverloadOutcome {
    const REQUESTS: usize = 1_000;
    let (every, hold, timeout) = (ms(10), ms(100), secs(5));
    let mut config = quiet_config(4);
    config.queue_target = queue_target;
    config.queue_interval = secs(1);
    config.max_waiters = max_waiters;
    let mut sim = Sim::new(config);
    sim.set_connect_latency(ms(10));
    let start = sim.now() - sim.elapsed();
    let arrival = |task: usize| every * u32::try_from(task).expect("few tasks");
    let mut outcome = OverloadOutcome::default();
    // Tasks that wait, and tasks that hold a connection until the instant given.
    let mut waiting: Vec<usize> = Vec::new();
    let mut holding: Vec<(usize, Duration)> = Vec::new();
    let mut next = 0;
    while next < REQUESTS || !waiting.is_empty() || !holding.is_empty() {
        // The next thing a task does: arrive, or give its connection back.
        let release = holding.iter().map(|(_, at)| *at).min();
        let at = match release {
            Some(r) if next >= REQUESTS || r <= arrival(next) => r,
            _ => arrival(next),
        };
        advance_to(&mut sim, at);
        if release == Some(at) {
            let i = holding.iter().position(|(_, t)| *t == at).expect("due");
            sim.release(holding.swap_remove(i).0);
        } else {
            sim.acquire(next, Some(timeout));
            waiting.push(next);
            next += 1;
        }
        outcome.peak_waiting = outcome.peak_waiting.max(sim.machine.status().waiting);
        // What became of the waiting tasks, everything due up to now having been handled.
        waiting.retain(|&task| match sim.task(task) {
            Some(TaskState::Waiting(_)) => true,
            Some(TaskState::Holding { since, .. }) => {
                let got = *since - start;
                outcome.served.push((arrival(task), got - arrival(task)));
                holding.push((task, got + hold));
                false
            }
            Some(TaskState::Failed(AcquireError::Shed(shed))) => {
                outcome.shed.push((arrival(task), shed.waited));
                false
            }
            Some(TaskState::Failed(AcquireError::TimedOut(_))) => {
                outcome.timed_out.push(arrival(task));
                false
            }
            Some(TaskState::Failed(AcquireError::Exhausted(_))) => false,
            other => panic!("task {task}: {other:?}"),
        });
    }
    outcome
}

/// The database is slower than the arrival rate. Without shedding the queue grows until
/// every wait runs to the 5 s time-out and callers fail together; with a 50 ms queue target,
/// from the second interval on the waits of the requests served are held between the target
/// and twice it, those that would have waited longer fail at once, none times out, and the
/// pool serves as many as it can (it never idles for want of a waiter).
#[test]
fn under_overload_shedding_holds_served_waits_near_the_target_instead_of_the_time_out() {
    let target = ms(50);
    let on = overload_run(Some(target), None);
    let off = overload_run(None, None);
    // The first interval (0-1 s) is served well (its first waits are the 10 ms connect), so
    // shedding starts when the second one ends, at 2 s; count from 2 s on.
    let (from, until) = (secs(2), secs(10));
    let (waits_on, waits_off) = (on.waits_from(from), off.waits_from(from));
    let median = |w: &[Duration]| w[w.len() / 2];
    let max = |w: &[Duration]| *w.last().expect("some served");

    // Without shedding: waits grow to the time-out, and callers time out.
    assert!(
        max(&waits_off) > secs(4) && median(&waits_off) > secs(3),
        "without shedding the waits reach the time-out: median {:?}, max {:?}",
        median(&waits_off),
        max(&waits_off)
    );
    assert!(
        off.timed_out.len() > 100,
        "{} timed out",
        off.timed_out.len()
    );
    assert!(off.shed.is_empty());

    // With shedding: every request served from 2 s on waited at most twice the target, and
    // most more than the target (the queue stays just long enough to keep the pool busy).
    assert!(
        max(&waits_on) <= target * 2,
        "served waits held at twice the target: max {:?}",
        max(&waits_on)
    );
    assert!(
        median(&waits_on) > target && median(&waits_on) <= target * 2,
        "served waits near the target: median {:?}",
        median(&waits_on)
    );
    // Nobody waits for the time-out: the shed fail after twice the target (those queued
    // before shedding started, at its start, after at most the 2 s they had waited).
    assert!(on.timed_out.is_empty(), "{} timed out", on.timed_out.len());
    assert!(on.shed.len() > 400, "{} shed", on.shed.len());
    for (at, waited) in &on.shed {
        assert!(
            *waited >= target * 2,
            "shed after {waited:?} (arrived at {at:?})"
        );
        assert!(
            *waited <= secs(2),
            "shed after {waited:?} (arrived at {at:?})"
        );
        if *at >= from {
            assert!(
                *waited <= target * 2 + ms(10),
                "shed at once, not later: {waited:?} (arrived at {at:?})"
            );
        }
    }
    // The pool stays busy: at 100 ms a request, 4 connections serve 40 a second.
    let served = |o: &OverloadOutcome| {
        o.served
            .iter()
            .filter(|(at, wait)| *at + *wait >= from && *at + *wait < until)
            .count()
    };
    assert!(
        served(&on) >= 8 * 40 * 95 / 100,
        "shedding leaves the pool busy: {} served from 2 s to 10 s",
        served(&on)
    );
    assert!(served(&off) >= 8 * 40 * 95 / 100, "{}", served(&off));
    // Every request is accounted for once.
    for o in [&on, &off] {
        assert_eq!(o.served.len() + o.shed.len() + o.timed_out.len(), 1_000);
    }
}

/// A queue that makes no progress for a whole interval (every connection held far longer
/// than the queue target) counts as overloaded once its oldest waiter has waited longer
/// than the target: at the end of that interval every waiter past twice the target is shed
/// at once, not at its deadline, and a later arrival is shed after twice the target.
#[test]
fn a_stalled_queue_sheds_its_old_waiters_at_the_end_of_the_interval() {
    let mut config = quiet_config(1);
    config.queue_target = Some(ms(50));
    config.queue_interval = secs(1);
    let mut sim = Sim::new(config);
    sim.set_connect_latency(ms(10));
    sim.acquire(0, None); // holds its connection throughout
    sim.advance(ms(10));
    assert!(holding(&sim, 0));
    for task in 1..=3 {
        sim.acquire(task, Some(secs(30)));
        sim.advance(ms(300));
    }
    // At 1 s the first interval ends: task 0's wait of 10 ms was within the target.
    advance_to(&mut sim, ms(1_000));
    assert!((1..=3).all(|t| waiting(&sim, t)), "{:?}", sim.log());
    assert!(!sim.machine.is_overloaded());
    // At 2 s the second ends with nobody served; the oldest waiter has waited 1.69 s.
    advance_to(&mut sim, ms(2_000));
    assert!(sim.machine.is_overloaded());
    for task in 1..=3 {
        match failure(&sim, task) {
            AcquireError::Shed(shed) => {
                assert_eq!(shed.waited, ms(2_000) - ms(10 + 300 * (task as u64 - 1)));
                assert_eq!(shed.status.waiting, 3);
                assert_eq!(shed.status.in_use, 1);
                let text = AcquireError::<SimError>::Shed(shed.clone()).to_string();
                assert!(
                    text.starts_with("shed after ") && text.contains("overloaded"),
                    "{text}"
                );
                assert!(text.contains("50ms queue target"), "{text}");
                assert!(text.contains("1 of 1 in use"), "{text}");
            }
            other => panic!("task {task}: {other:?}"),
        }
    }
    // A newcomer is shed after exactly twice the target while the pool stays overloaded.
    sim.acquire(4, Some(secs(30)));
    sim.advance(ms(99));
    assert!(waiting(&sim, 4));
    sim.advance(ms(1));
    assert!(matches!(failure(&sim, 4), AcquireError::Shed(s) if s.waited == ms(100)));
    // Once a connection comes back with nobody waiting (a wait of zero), the next interval
    // is not overloaded.
    sim.release(0);
    advance_to(&mut sim, ms(3_100));
    sim.acquire(5, None);
    assert!(holding(&sim, 5));
    assert!(!sim.machine.is_overloaded(), "{:?}", sim.log());
}

/// With `max_waiters`, an acquire that would queue beyond the bound is refused at once with
/// `Exhausted`, and the queue never grows past it; with shedding, the shed make room.
#[test]
fn max_waiters_refuses_acquires_beyond_the_bound_at_once() {
    let mut m = M::new({
        let mut c = quiet_config(1);
        c.max_waiters = Some(2);
        c
    })
    .expect("valid config");
    let now = Instant::now();
    let w1 = wait(&mut m, now);
    let _w2 = wait(&mut m, now);
    drain(&mut m);
    match m.acquire(now, Some(now + secs(5))) {
        Err(AcquireError::Exhausted(s)) => {
            assert_eq!((s.waiting, s.opening), (2, 1), "{s:?}");
        }
        other => panic!("expected Exhausted, got {other:?}"),
    }
    assert!(drain(&mut m).is_empty(), "a refusal changes nothing");
    assert_eq!(m.status().waiting, 2);
    // Room again once a waiter leaves.
    assert!(m.cancel(w1, now));
    let _w3 = wait(&mut m, now);

    // Under overload the queue is bounded and still drained by shedding.
    let bounded = overload_run(Some(ms(50)), Some(8));
    assert!(bounded.peak_waiting <= 8, "{}", bounded.peak_waiting);
    assert!(!bounded.shed.is_empty());
    assert!(bounded.timed_out.is_empty());
}

// ----- a task waiting on itself (ARCHITECTURE.md, "A task waiting on itself") ----------------

mod self_wait {
    use std::collections::BTreeMap;
    use std::num::NonZeroU64;

    use super::*;
    use pool_core::machine::{Caller, LeaseId, TaskId};

    /// Task `t` in context `c`.
    fn who(t: u64, c: u64) -> Caller {
        Caller {
            task: TaskId::new(t).expect("a small id"),
            context: NonZeroU64::new(c),
        }
    }

    /// The driver's record of who holds each lease, as these scenarios keep it.
    #[derive(Default)]
    struct Holders(BTreeMap<LeaseId, Caller>);

    impl Holders {
        fn acquire(
            &mut self,
            m: &mut M,
            now: Instant,
            caller: Caller,
        ) -> Result<Acquired<u32>, AcquireError<String>> {
            let out = m.acquire_by(now, None, Some(caller), |l| self.0.get(&l).copied());
            if let Ok(Acquired::Ready(lease, _)) = &out {
                self.0.insert(lease.id(), caller);
            }
            out
        }
    }

    /// A pool of `n` that fails certain deadlocks (opt-in), with every connection leased,
    /// lease `i` to `holders[i]`.
    fn full_pool(n: usize, holders: &[Caller], now: Instant) -> (M, Holders, Vec<(Lease, u32)>) {
        let mut config = quiet_config(n);
        config.fail_deadlocks = true;
        full_pool_of(config, holders, now)
    }

    /// A pool of `config` whose `max_size` connections are leased, lease `i` to `holders[i]`.
    fn full_pool_of(
        config: Config,
        holders: &[Caller],
        now: Instant,
    ) -> (M, Holders, Vec<(Lease, u32)>) {
        let mut m = M::new(config).expect("valid config");
        let mut record = Holders::default();
        let waiters: Vec<_> = holders
            .iter()
            .map(|h| match record.acquire(&mut m, now, *h) {
                Ok(Acquired::Waiting(w)) => w,
                other => panic!("expected to wait, got {other:?}"),
            })
            .collect();
        let slots: Vec<_> = drain(&mut m)
            .into_iter()
            .filter_map(|a| match a {
                Action::Open { slot } => Some(slot),
                _ => None,
            })
            .collect();
        for (i, slot) in slots.into_iter().enumerate() {
            m.handle_connected(slot, i as u32 + 1, now)
                .expect("opening");
        }
        drain(&mut m);
        let leases = waiters
            .iter()
            .zip(holders)
            .map(|(w, h)| {
                let (lease, conn) = take_granted(&mut m, *w, now);
                record.0.insert(lease.id(), *h);
                (lease, conn)
            })
            .collect();
        (m, record, leases)
    }

    /// bb8#154: a task holding the only connection asks for another, with no deadline. No
    /// connection can ever come back: it fails at once, naming the lease it holds.
    #[test]
    fn a_task_holding_the_only_connection_fails_at_once_instead_of_waiting_forever() {
        let now = Instant::now();
        let t = who(1, 10);
        let (mut m, mut record, leases) = full_pool(1, &[t], now);
        match record.acquire(&mut m, now, t) {
            Err(AcquireError::Deadlock(d)) => {
                assert!(d.certain);
                assert_eq!(d.held, leases[0].0.id());
                assert_eq!(
                    (d.status.in_use, d.status.waiting),
                    (1, 1),
                    "{:?}",
                    d.status
                );
                assert!(d.to_string().starts_with("deadlock: "), "{d}");
            }
            other => panic!("expected a deadlock, got {other:?}"),
        }
        assert_eq!(
            m.status().waiting,
            0,
            "the failed acquire left nothing queued"
        );
        // The same with the machine's plain `acquire` (no task named): it waits.
        let _w = wait(&mut m, now);
        // With `fail_deadlocks` off, it waits too, noted as a self-wait.
        let mut config = quiet_config(1);
        config.fail_deadlocks = false;
        let (mut m, mut record, leases) = full_pool_of(config, &[t], now);
        match record.acquire(&mut m, now, t) {
            Ok(Acquired::Waiting(w)) => assert_eq!(m.self_wait(w), Some(leases[0].0.id())),
            other => panic!("expected to wait, got {other:?}"),
        }
    }

    /// Two tasks each hold one connection of a pool of two and ask for another: the first
    /// waits (the second task may give its connection back), noted as a self-wait; when the
    /// second asks too, no connection can ever come back, and both fail at once.
    #[test]
    fn two_tasks_each_waiting_for_the_others_connection_both_fail() {
        let now = Instant::now();
        let (a, b) = (who(1, 10), who(2, 20));
        let (mut m, mut record, leases) = full_pool(2, &[a, b], now);
        let Ok(Acquired::Waiting(wa)) = record.acquire(&mut m, now, a) else {
            panic!("the first self-wait waits: the other task may give its connection back");
        };
        assert_eq!(m.self_wait(wa), Some(leases[0].0.id()));
        assert!(drain(&mut m).is_empty());
        match record.acquire(&mut m, now, b) {
            Err(AcquireError::Deadlock(d)) => {
                assert!(d.certain);
                assert_eq!(d.held, leases[1].0.id());
            }
            other => panic!("expected a deadlock, got {other:?}"),
        }
        assert!(matches!(drain(&mut m)[..], [Action::Wake { waiter }] if waiter == wa));
        match m.take(wa, now) {
            Err(AcquireError::Deadlock(d)) => {
                assert!(d.certain);
                assert_eq!(d.held, leases[0].0.id());
            }
            other => panic!("expected the first waiter to fail too, got {other:?}"),
        }
    }

    /// No failure while a release or a new connection can still come: another task (not
    /// waiting) holds a connection, a connect is in flight, or there is room.
    #[test]
    fn a_self_wait_waits_while_anything_can_still_serve_it() {
        let now = Instant::now();
        let (a, b) = (who(1, 10), who(2, 20));
        // Another task, not waiting, holds the other connection: served when it comes back.
        let (mut m, mut record, mut leases) = full_pool(2, &[a, b], now);
        let Ok(Acquired::Waiting(w)) = record.acquire(&mut m, now, a) else {
            panic!("waits");
        };
        let (lease, conn) = leases.remove(1);
        m.release(lease, conn, Release::Reuse, now)
            .expect("its lease");
        assert!(matches!(drain(&mut m)[..], [Action::Wake { waiter }] if waiter == w));
        let _ = take_granted(&mut m, w, now);
        // Room in the pool: a connect is started, and the self-wait waits for it.
        let (mut m, mut record, _leases) = full_pool(1, &[a], now);
        m.set_max_size(2, now).expect("valid");
        let Ok(Acquired::Waiting(w)) = record.acquire(&mut m, now, a) else {
            panic!("waits for the connect");
        };
        assert_eq!(m.self_wait(w).map(|l| l.index()), Some(0));
        let slot = single_open(&drain(&mut m));
        m.handle_connected(slot, 9, now).expect("opening");
        assert!(matches!(drain(&mut m)[..], [Action::Wake { waiter }] if waiter == w));
    }

    /// A lease acquired in another context of the task (a branch of a `FuturesUnordered`,
    /// which may give it back while this one waits), or moved to the task (only the task is
    /// known then), is a self-wait to report, never a certain deadlock.
    #[test]
    fn a_lease_from_another_context_or_moved_is_reported_never_failed() {
        let now = Instant::now();
        for holder in [who(1, 11), who(1, 0)] {
            let (mut m, mut record, leases) = full_pool(1, &[holder], now);
            match record.acquire(&mut m, now, who(1, 10)) {
                Ok(Acquired::Waiting(w)) => assert_eq!(m.self_wait(w), Some(leases[0].0.id())),
                other => panic!("expected a self-wait that waits, got {other:?}"),
            }
        }
    }

    /// A lease whose guard moved to another task (the record says so) is no self-wait of
    /// the task that acquired it.
    #[test]
    fn a_lease_moved_to_another_task_is_no_self_wait() {
        let now = Instant::now();
        let (a, b) = (who(1, 10), who(2, 0));
        let (mut m, mut record, leases) = full_pool(1, &[a], now);
        record.0.insert(leases[0].0.id(), b);
        match record.acquire(&mut m, now, a) {
            Ok(Acquired::Waiting(w)) => assert_eq!(m.self_wait(w), None),
            other => panic!("expected to wait, got {other:?}"),
        }
    }

    /// With `self_wait_error`, a self-wait in the context the lease was acquired in is
    /// refused at once (not `certain`: the other connection may come back); one from
    /// another context still waits.
    #[test]
    fn self_wait_error_refuses_a_same_context_self_wait() {
        let now = Instant::now();
        let (a, b) = (who(1, 10), who(2, 20));
        let mut config = quiet_config(2);
        config.self_wait_error = true;
        let (mut m, mut record, leases) = full_pool_of(config, &[a, b], now);
        match record.acquire(&mut m, now, a) {
            Err(AcquireError::Deadlock(d)) => {
                assert!(!d.certain);
                assert_eq!(d.held, leases[0].0.id());
                assert!(d.to_string().starts_with("refused to wait"), "{d}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(matches!(
            record.acquire(&mut m, now, who(1, 11)),
            Ok(Acquired::Waiting(_))
        ));
    }
}
