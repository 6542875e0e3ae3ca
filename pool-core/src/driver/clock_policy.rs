//! When a hot-path step reads the clock: decided once, from the configuration, here.
//!
//! The machine takes `now` on every input, but on the hot path (an idle connection is
//! leased, a connection is lent from the return lane, a connection goes back, a waiting
//! acquire collects the connection granted to it) only configured features look at it.
//! Reading the clock costs as much as the rest of a lane cycle, so a step reads it only
//! when a configured feature needs the time; otherwise it passes the pool's epoch (the
//! instant it was built), which no configured feature looks at, so every timing behaviour
//! is exactly what it is with a clock read, and the machine stays pure (it never reads a
//! clock itself).
//!
//! [`ClockPolicy::new`] is the one place that decides which feature needs the time on which
//! step. It names every field of the configuration and of the driver's settings, so a new
//! setting does not compile until it is decided here too. [`ClockPolicy::now`] is the one
//! place those steps read the time. Everywhere else (joining the queue, time-outs,
//! cancellation, connects, checks, closes, maintenance) the clock is always read. The test
//! below runs each step under each feature with a runtime that counts its clock reads, and
//! fails when a step reads the time where the policy did not give it. See
//! `ARCHITECTURE.md`, "Time".

use std::time::Instant;

use super::runtime::Runtime;
use super::settings::Settings;
use crate::machine::Config;

/// A step of the hot path that reads the clock only when a configured feature needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Leasing an idle connection from the machine without waiting (`try_get`; `get` reads
    /// the clock before it goes to the machine, since it may have to wait). The machine
    /// reads the time for the connection's lifetime, the lease's start (leak detection,
    /// reclaim) and the back-off of a `min_idle` replacement.
    Lease,
    /// Lending a connection from the return lane, without the machine: its lifetime, and
    /// the checkout check's bypass window.
    LaneLend,
    /// Giving a connection back, into the lane or through the machine: its lifetime, when
    /// it became idle (`idle_timeout`), and when it was last used (the bypass window).
    GiveBack,
    /// An acquire that queued collecting the connection granted to it: the lease's start
    /// (leak detection, reclaim), the checkout check's bypass window, and the wait it
    /// measures (the wait times, the metrics' wait histogram). Its error paths (a time-out,
    /// a failed connect) always read the clock, to say how long it waited.
    Collect,
}

/// Which hot-path [`Step`]s read the clock, derived from the configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClockPolicy {
    lease: bool,
    lane_lend: bool,
    give_back: bool,
    collect: bool,
    /// The instant passed where no configured feature reads it.
    epoch: Instant,
}

impl ClockPolicy {
    /// The policy of a pool built with `config` and `settings` at `epoch`.
    pub(crate) fn new(config: &Config, settings: &Settings, epoch: Instant) -> Self {
        // Every setting is named, so adding one means deciding here which steps need the
        // time for it (`_`: none does).
        let Config {
            max_size: _,
            min_idle,
            idle_timeout,
            max_lifetime,
            max_lifetime_jitter: _, // applied once, at connect
            leak_threshold,
            reclaim_after,
            backoff_base: _, // connects and their failures always read the clock
            backoff_max: _,
            queue_target,
            queue_interval: _,  // only with a queue target
            max_waiters: _,     // counts waiters, never looks at the time
            self_wait_error: _, // compares tasks, never looks at the time
            fail_deadlocks: _,  // so does this
            seed: _,
        } = config;
        let Settings {
            name: _, // a label
            metrics,
            acquire_timeout: _, // a lend never waits; the full acquire always reads the clock
            connect_timeout: _,
            check_on_checkout,
            check_bypass,
            check_timeout: _,   // a check always reads the clock
            reset_timeout: _,   // so does a reset
            leak_backtraces: _, // only with a leak threshold
            on_leak: _,
            wait_times,
        } = settings;
        // The use-time histogram measures every lend, to its give-back (`instruments.rs`);
        // only ever set with the `metrics` feature.
        let use_time = *metrics;
        let lifetime = max_lifetime.is_some();
        // The bypass window compares the lend's time with the return's.
        let bypass = *check_on_checkout && !check_bypass.is_zero();
        Self {
            lease: lifetime
                || leak_threshold.is_some()
                || reclaim_after.is_some()
                || *min_idle > 0
                || bypass
                || use_time,
            lane_lend: lifetime || bypass || use_time,
            // Load shedding measures the wait of the waiter a returned connection goes to
            // (a connection going idle is a wait of zero, which needs no time, but the give-
            // back cannot know beforehand which it will be). A lease from the machine never
            // waited, and a lend from the lane never reaches the machine: neither needs it.
            give_back: lifetime
                || idle_timeout.is_some()
                || bypass
                || queue_target.is_some()
                || use_time,
            // Only configured features look at the time of a collected grant: the lifetime
            // was checked when the connection was granted, and `min_idle` is not touched.
            collect: leak_threshold.is_some()
                || reclaim_after.is_some()
                || bypass
                || use_time
                || *wait_times,
            epoch,
        }
    }

    /// Whether `step` reads the clock.
    #[inline]
    pub(crate) fn needs(&self, step: Step) -> bool {
        match step {
            Step::Lease => self.lease,
            Step::LaneLend => self.lane_lend,
            Step::GiveBack => self.give_back,
            Step::Collect => self.collect,
        }
    }

    /// The instant `step` passes for "now": the clock if a configured feature needs it,
    /// else the epoch.
    #[inline]
    pub(crate) fn now<R: Runtime>(&self, runtime: &R, step: Step) -> Instant {
        if self.needs(step) {
            runtime.now()
        } else {
            self.epoch
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};
    use std::time::{Duration, Instant};

    use super::Step;
    use crate::driver::{Builder, Manager, Pool, Runtime};

    /// A runtime that counts its clock reads. It runs a spawned task until it first waits
    /// and then drops it: the connects here finish at once, and the maintenance task is not
    /// needed.
    #[derive(Debug, Clone, Default)]
    struct CountingClock(Arc<AtomicUsize>);

    impl CountingClock {
        fn reads(&self) -> usize {
            self.0.swap(0, Ordering::SeqCst)
        }
    }

    impl Runtime for CountingClock {
        type Sleep = std::future::Pending<()>;

        fn current() -> Result<Self, String> {
            Ok(Self::default())
        }

        fn spawn<F>(&self, future: F)
        where
            F: Future<Output = ()> + Send + 'static,
        {
            let _ = pin!(future).poll(&mut Context::from_waker(Waker::noop()));
        }

        fn sleep_until(&self, _deadline: Instant) -> Self::Sleep {
            std::future::pending()
        }

        fn spawn_blocking<F, T>(&self, f: F) -> impl Future<Output = T> + Send + 'static
        where
            F: FnOnce() -> T + Send + 'static,
            T: Send + 'static,
        {
            std::future::ready(f())
        }

        fn now(&self) -> Instant {
            self.0.fetch_add(1, Ordering::SeqCst);
            Instant::now()
        }

        fn poll_budget(&self, _cx: &mut Context<'_>) -> Poll<()> {
            Poll::Ready(())
        }
    }

    struct Unit;

    impl Manager for Unit {
        type Connection = ();
        type Error = std::io::Error;
        async fn connect(&self) -> Result<(), std::io::Error> {
            Ok(())
        }
    }

    /// Polls `future` until it is ready: everything here finishes without waiting on time.
    fn block_on<F: Future>(future: F) -> F::Output {
        let mut future = pin!(future);
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..100 {
            if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                return out;
            }
        }
        panic!("a future that should finish at once kept waiting");
    }

    /// The hot path's reads of the clock: nothing configured that looks at the time.
    fn lean(rt: &CountingClock) -> Builder<Unit, CountingClock> {
        let builder = Pool::builder(Unit)
            .runtime(rt.clone())
            .max_size(2)
            .acquire_timeout(None)
            .idle_timeout(None)
            .max_lifetime(None)
            .check_on_checkout(false)
            .wait_times(false);
        // The instruments' use time reads the clock on every step (a row of its own below).
        #[cfg(feature = "metrics")]
        let builder = builder.metrics(false);
        builder
    }

    /// Each hot-path step, under each feature that may need the time, reads the clock if and
    /// only if the policy gives that step the time: a step that reads the time without the
    /// policy's say-so (or a policy that gives a step the time for nothing) fails here.
    #[test]
    fn each_hot_path_step_reads_the_clock_exactly_when_the_policy_says() {
        type Configure = fn(Builder<Unit, CountingClock>) -> Builder<Unit, CountingClock>;
        const L: Step = Step::Lease;
        const N: Step = Step::LaneLend;
        const G: Step = Step::GiveBack;
        const C: Step = Step::Collect;
        // Each feature, and the steps that look at the time for it (the table this policy
        // derives; see `Step` for what each step reads the time for).
        #[allow(unused_mut)]
        let mut features: Vec<(&str, Configure, &[Step])> = vec![
            ("nothing", |b| b, &[]),
            (
                "max_lifetime",
                |b| b.max_lifetime(Some(Duration::from_secs(3600))),
                &[L, N, G],
            ),
            (
                "idle_timeout",
                |b| b.idle_timeout(Some(Duration::from_secs(3600))),
                &[G],
            ),
            ("min_idle", |b| b.min_idle(1), &[L]),
            (
                "leak_threshold",
                |b| b.leak_threshold(Some(Duration::from_secs(3600))),
                &[L, C],
            ),
            (
                "reclaim_after",
                |b| b.reclaim_after(Some(Duration::from_secs(3600))),
                &[L, C],
            ),
            (
                "a bypassed checkout check",
                |b| {
                    b.check_on_checkout(true)
                        .check_bypass(Duration::from_secs(3600))
                },
                &[L, N, G, C],
            ),
            (
                "the acquire timeout",
                |b| b.acquire_timeout(Some(Duration::from_secs(3600))),
                &[],
            ),
            (
                "load shedding",
                |b| b.queue_target(Some(Duration::from_millis(50))),
                &[G],
            ),
            ("a bound on waiters", |b| b.max_waiters(Some(4)), &[]),
            ("the wait times", |b| b.wait_times(true), &[C]),
        ];
        #[cfg(feature = "metrics")]
        features.push(("the metrics' use time", |b| b.metrics(true), &[L, N, G, C]));
        let mut reading = 0;
        for (feature, configure, needing) in features {
            let rt = CountingClock::default();
            let pool = configure(lean(&rt)).build().expect("a valid configuration");
            let policy = pool.shared.clock_policy;
            for step in [L, N, G, C] {
                assert_eq!(
                    policy.needs(step),
                    needing.contains(&step),
                    "with {feature}: does {step:?} need the time?"
                );
            }
            // Two connections open and in use (the full acquire always reads the clock).
            let first = block_on(pool.get()).expect("a first connection");
            let second = block_on(pool.get()).expect("a second connection");
            rt.reads();
            let mut seen = Vec::new();
            let mut check = |step: Step, what: &str| {
                let reads = rt.reads();
                assert_eq!(
                    reads > 0,
                    policy.needs(step),
                    "with {feature}: {what} read the clock {reads} times, but the policy says \
                     {step:?} {} the time",
                    if policy.needs(step) {
                        "needs"
                    } else {
                        "does not need"
                    },
                );
                reading += reads;
                seen.push(step);
            };
            // Through the machine, or into the lane once it opened.
            drop(first);
            check(Step::GiveBack, "a give-back");
            drop(second);
            check(Step::GiveBack, "a give-back");
            // From the lane while it holds one, then from the machine (which may have none
            // left: the attempt reads the time all the same).
            let mut held = Vec::new();
            for _ in 0..3 {
                let lent = pool.shared.lane_lent();
                held.push(pool.try_get().ok());
                if pool.shared.lane_lent() > lent {
                    check(Step::LaneLend, "a lend from the lane");
                } else {
                    check(Step::Lease, "a lease from the machine");
                }
            }
            drop(held);
            check(Step::GiveBack, "two give-backs");
            // An acquire that queues (always reading the clock), then collects the
            // connection a give-back granted it.
            let (a, b) = (pool.try_get(), pool.try_get());
            assert!(
                a.is_ok() && b.is_ok(),
                "with {feature}: both connections idle"
            );
            let mut waiting = std::pin::pin!(pool.get());
            let mut cx = Context::from_waker(Waker::noop());
            assert!(
                waiting.as_mut().poll(&mut cx).is_pending(),
                "with {feature}: queued"
            );
            drop(a);
            rt.reads();
            match waiting.as_mut().poll(&mut cx) {
                Poll::Ready(Ok(conn)) => {
                    check(Step::Collect, "collecting a granted connection");
                    drop(conn);
                }
                other => panic!("with {feature}: the waiter was not served: {other:?}"),
            }
            drop(b);
            let lane = pool.shared.lane_lent().is_some();
            assert!(seen.contains(&Step::Lease), "with {feature}: no lease");
            assert_eq!(
                seen.contains(&Step::LaneLend),
                lane,
                "with {feature}: a pool lends from its lane if it has one"
            );
        }
        assert!(reading > 0, "some feature needs the time on the hot path");
    }

    /// The lean configuration's hot path never reads the clock, in a loop of cycles through
    /// the lane and through the machine.
    #[test]
    fn the_lean_hot_path_never_reads_the_clock() {
        let rt = CountingClock::default();
        let pool = lean(&rt).build().expect("a valid configuration");
        // The first return goes through the machine and opens the lane; the second acquire
        // then goes through the machine too, and its return is the first into the lane.
        drop(block_on(pool.get()).expect("a connection"));
        drop(block_on(pool.get()).expect("the connection"));
        rt.reads();
        for _ in 0..100 {
            drop(block_on(pool.get()).expect("a lane cycle"));
            let a = pool.try_get().expect("one from the lane");
            drop(pool.try_get());
            drop(a);
        }
        assert_eq!(rt.reads(), 0);
    }
}
