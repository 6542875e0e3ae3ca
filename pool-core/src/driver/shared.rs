//! The state shared by a pool's handles, guards and tasks, and the one-transition-per-lock
//! protocol around the machine.

use std::backtrace::Backtrace;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::Waker;
use std::time::{Duration, Instant};

use event_listener::Event;
use parking_lot::{Mutex, MutexGuard};

use super::error::ConnectError;
use super::runtime::{Manager, Runtime};
use super::util::{race, timeout};
use super::Metrics;
use crate::machine::{Action, CloseReason, Config, LeaseId, Machine, SlotId, WaiterId};

/// A pooled connection as the machine holds it.
pub(crate) struct Conn<C> {
    pub(crate) raw: C,
    /// When it was last handed out or returned, for the check bypass window.
    pub(crate) last_used: Instant,
}

pub(crate) type ErrorOf<M> = Arc<ConnectError<<M as Manager>::Error>>;
pub(crate) type ConnOf<M> = Conn<<M as Manager>::Connection>;

/// A lease held longer than the leak threshold.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LeakReport {
    /// The lease (see [`PooledConnection::lease_id`](super::PooledConnection::lease_id)).
    pub lease: LeaseId,
    /// How long it had been held when noticed.
    pub held_for: Duration,
    /// Where it was acquired, when leak detection captures backtraces.
    pub acquired_at: Option<Arc<Backtrace>>,
}

impl fmt::Display for LeakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connection lease {} held for {:?}, suspected leak",
            self.lease.serial(),
            self.held_for
        )?;
        if let Some(bt) = &self.acquired_at {
            write!(f, "; acquired at:\n{bt}")?;
        }
        Ok(())
    }
}

/// The user's hook for leak reports.
pub(crate) type LeakHook = Arc<dyn Fn(&LeakReport) + Send + Sync>;

/// The driver's own settings (the machine's are in its `Config`).
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) acquire_timeout: Option<Duration>,
    pub(crate) connect_timeout: Duration,
    pub(crate) check_on_checkout: bool,
    pub(crate) check_bypass: Duration,
    pub(crate) reset_timeout: Duration,
    pub(crate) leak_backtraces: bool,
    pub(crate) on_leak: Option<LeakHook>,
}

/// Which hot-path steps must read the clock, decided once from the configuration.
///
/// The machine takes `now` on every input, but on the hot path (an idle connection is
/// leased; a connection goes back) it only looks at it for features that are configured:
///
/// | step | reads `now` for | so the clock is read when |
/// |---|---|---|
/// | lease an idle connection | its lifetime (`max_lifetime`), the lease's start (leak detection, reclaim), the back-off of a `min_idle` replacement; the driver: the check bypass window | `max_lifetime`, `leak_detection`, `reclaim_after`, `min_idle > 0`, or a checkout check with a non-zero bypass window |
/// | give a connection back | its lifetime, when it became idle (`idle_timeout`); the driver: when it was last used (bypass window) | `max_lifetime`, `idle_timeout`, or a checkout check with a non-zero bypass window |
///
/// Everywhere else (waiting, time-outs, cancellation, connects, closes, maintenance) the
/// clock is always read. Where a step needs no time, the driver passes [`Clock::epoch`]
/// (the instant the pool was built) instead: no configured feature looks at the value, so
/// every timing behaviour is exactly what it is with a clock read, and the machine stays
/// pure (it never reads a clock itself).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    /// Leasing an idle connection needs the time.
    pub(crate) on_acquire: bool,
    /// Giving a connection back needs the time.
    pub(crate) on_release: bool,
    /// The instant passed where no configured feature reads it.
    pub(crate) epoch: Instant,
}

impl Clock {
    pub(crate) fn new(config: &Config, settings: &Settings, epoch: Instant) -> Self {
        let bypass = settings.check_on_checkout && !settings.check_bypass.is_zero();
        Self {
            on_acquire: config.max_lifetime.is_some()
                || config.leak_threshold.is_some()
                || config.reclaim_after.is_some()
                || config.min_idle > 0
                || bypass,
            on_release: config.max_lifetime.is_some() || config.idle_timeout.is_some() || bypass,
            epoch,
        }
    }
}

/// Everything behind the lock: the machine and what must change with it atomically.
pub(crate) struct State<M: Manager> {
    pub(crate) machine: Machine<ConnOf<M>, ErrorOf<M>>,
    /// The waker of each waiting task, keyed by waiter index.
    wakers: Vec<Option<Waker>>,
    /// Where each outstanding lease was acquired, keyed by lease index (leak detection).
    backtraces: Vec<Option<Arc<Backtrace>>>,
    /// The instant the maintenance task sleeps until.
    armed: Option<Instant>,
    pub(crate) metrics: Metrics,
}

impl<M: Manager> State<M> {
    pub(crate) fn new(machine: Machine<ConnOf<M>, ErrorOf<M>>) -> Self {
        Self {
            machine,
            wakers: Vec::new(),
            backtraces: Vec::new(),
            armed: None,
            metrics: Metrics::default(),
        }
    }

    /// Remembers the task to wake for `waiter` (registered under the same lock as the
    /// machine's answer, so no wake-up can be missed).
    pub(crate) fn register(&mut self, waiter: WaiterId, waker: &Waker) {
        let i = waiter.index();
        if self.wakers.len() <= i {
            self.wakers.resize_with(i + 1, || None);
        }
        match &mut self.wakers[i] {
            Some(w) if w.will_wake(waker) => {}
            slot => *slot = Some(waker.clone()),
        }
    }

    /// Forgets a waiter's waker; returned so it is dropped after the lock.
    pub(crate) fn unregister(&mut self, waiter: WaiterId) -> Option<Waker> {
        self.wakers.get_mut(waiter.index()).and_then(Option::take)
    }

    /// Records where a lease was acquired.
    pub(crate) fn set_backtrace(
        &mut self,
        lease: LeaseId,
        bt: Option<Arc<Backtrace>>,
    ) -> Option<Arc<Backtrace>> {
        let i = lease.index();
        if bt.is_none() && self.backtraces.len() <= i {
            return None;
        }
        if self.backtraces.len() <= i {
            self.backtraces.resize_with(i + 1, || None);
        }
        std::mem::replace(&mut self.backtraces[i], bt)
    }

    /// Whether the machine's next deadline moved earlier than the one the maintenance task
    /// sleeps until (and notes it as armed).
    fn rearm(&mut self) -> bool {
        let next = self.machine.poll_timeout();
        if next.is_some() && (self.armed.is_none() || next < self.armed) {
            self.armed = next;
            return true;
        }
        false
    }

    /// Drains the machine's actions (`first`, already polled, then the rest) into `out`,
    /// doing under the lock only what must be (taking wakers, counting), and noting whether
    /// the maintenance timer must move.
    fn collect(&mut self, first: Action<ConnOf<M>>, out: &mut Deferred<M::Connection>) {
        let mut next = Some(first);
        while let Some(action) = next.take().or_else(|| self.machine.poll_action()) {
            match action {
                Action::Open { slot } => out.opens.push(slot),
                Action::Close { slot, conn, reason } => {
                    self.metrics.closed.count(reason);
                    out.closes.push((slot, conn, reason));
                }
                Action::Wake { waiter } => {
                    if let Some(waker) = self.unregister(waiter) {
                        match out.wake {
                            None => out.wake = Some(waker),
                            Some(_) => out.wakes.push(waker),
                        }
                    }
                }
                Action::LeakSuspected { lease, held_for } => {
                    self.metrics.leaks_suspected += 1;
                    let acquired_at = self.backtraces.get(lease.index()).cloned().flatten();
                    out.leaks.push(LeakReport {
                        lease,
                        held_for,
                        acquired_at,
                    });
                }
                Action::Reclaimed { lease, held_for } => {
                    out.reclaims.push((lease, held_for));
                    // Its backtrace is kept: a late release still clears it.
                }
                Action::Drained => out.drained = true,
            }
        }
        out.move_timer = self.rearm();
    }
}

/// Work collected under the lock, done after it is released.
pub(crate) struct Deferred<C> {
    /// The common case is a single wake; it needs no allocation.
    wake: Option<Waker>,
    wakes: Vec<Waker>,
    opens: Vec<SlotId>,
    closes: Vec<(SlotId, Conn<C>, CloseReason)>,
    leaks: Vec<LeakReport>,
    reclaims: Vec<(LeaseId, Duration)>,
    move_timer: bool,
    drained: bool,
}

impl<C> Deferred<C> {
    fn new() -> Self {
        Self {
            wake: None,
            wakes: Vec::new(),
            opens: Vec::new(),
            closes: Vec::new(),
            leaks: Vec::new(),
            reclaims: Vec::new(),
            move_timer: false,
            drained: false,
        }
    }
}

/// What a pool's handles, guards and tasks share.
pub(crate) struct Shared<M: Manager, R: Runtime> {
    pub(crate) manager: M,
    pub(crate) runtime: R,
    pub(crate) settings: Settings,
    pub(crate) clock: Clock,
    /// Whether a connection was idle when the lock was last released: a hint (read without
    /// the lock) that lets an acquire skip the clock-free attempt when it would fail anyway.
    pub(crate) idle_hint: AtomicBool,
    state: Mutex<State<M>>,
    /// Wakes the maintenance task when its deadline moves earlier (and when the pool goes).
    timer: Event,
    /// Notified once the pool has drained after close.
    pub(crate) drained: Event,
}

impl<M: Manager, R: Runtime> Shared<M, R> {
    pub(crate) fn new(manager: M, runtime: R, settings: Settings, state: State<M>) -> Arc<Self> {
        let clock = Clock::new(state.machine.config(), &settings, runtime.now());
        Arc::new(Self {
            manager,
            runtime,
            settings,
            clock,
            idle_hint: AtomicBool::new(false),
            state: Mutex::new(state),
            timer: Event::new(),
            drained: Event::new(),
        })
    }

    /// The lock (it does not poison: no code under it panics).
    pub(crate) fn lock(&self) -> MutexGuard<'_, State<M>> {
        self.state.lock()
    }

    /// Non-blocking access for `Debug`.
    pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, State<M>>> {
        self.state.try_lock()
    }

    /// One transition: lock, let `f` change the machine, drain its actions, unlock, then act
    /// on them (wake, spawn, close, report). `f` must not call user code or drop connections.
    ///
    /// The hot path (nothing to wake, open, close or report, no timer to move) unlocks and
    /// returns without building the list of deferred work.
    pub(crate) fn transition<T>(self: &Arc<Self>, f: impl FnOnce(&mut State<M>) -> T) -> T {
        let mut state = self.lock();
        let out = f(&mut state);
        // Written only when it changes, so readers on other threads keep their cached copy.
        let idle = state.machine.status().idle > 0;
        if self.idle_hint.load(Ordering::Relaxed) != idle {
            self.idle_hint.store(idle, Ordering::Relaxed);
        }
        let Some(first) = state.machine.poll_action() else {
            if state.rearm() {
                drop(state);
                self.timer.notify(1);
            }
            return out;
        };
        // A hand-off (a released connection granted to a waiter) wakes one task and does
        // nothing else: it needs no list of deferred work either.
        let deferred = match first {
            Action::Wake { waiter } => {
                let waker = state.unregister(waiter);
                let Some(next) = state.machine.poll_action() else {
                    let move_timer = state.rearm();
                    drop(state);
                    if let Some(waker) = waker {
                        waker.wake();
                    }
                    if move_timer {
                        self.timer.notify(1);
                    }
                    return out;
                };
                let mut deferred = Deferred::new();
                deferred.wake = waker;
                state.collect(next, &mut deferred);
                deferred
            }
            first => {
                let mut deferred = Deferred::new();
                state.collect(first, &mut deferred);
                deferred
            }
        };
        drop(state);
        self.act(deferred);
        out
    }

    /// The instant to pass to a hot-path step: the clock if `needed`, else the epoch.
    #[inline]
    pub(crate) fn now_if(&self, needed: bool) -> Instant {
        if needed {
            self.runtime.now()
        } else {
            self.clock.epoch
        }
    }

    fn act(self: &Arc<Self>, mut d: Deferred<M::Connection>) {
        if let Some(waker) = d.wake.take() {
            waker.wake();
        }
        for waker in d.wakes.drain(..) {
            waker.wake();
        }
        for slot in d.opens.drain(..) {
            tracing::debug!(slot = slot.index(), "opening a connection");
            let shared = Arc::clone(self);
            self.runtime.spawn(connect(shared, slot));
        }
        for report in d.leaks.drain(..) {
            tracing::warn!(lease = report.lease.serial(), held_for = ?report.held_for, "{report}");
            if let Some(hook) = &self.settings.on_leak {
                hook(&report);
            }
        }
        for (lease, held_for) in d.reclaims.drain(..) {
            tracing::warn!(
                lease = lease.serial(),
                ?held_for,
                "lease reclaimed as abandoned: it no longer counts against max_size and its connection will be closed when it comes back"
            );
        }
        if d.move_timer {
            self.timer.notify(1);
        }
        if d.drained {
            tracing::debug!("pool drained");
            self.drained.notify(usize::MAX);
        }
        if !d.closes.is_empty() {
            let mut closed = Vec::with_capacity(d.closes.len());
            for (slot, conn, reason) in d.closes.drain(..) {
                tracing::debug!(slot = slot.index(), %reason, "closing a connection");
                drop(conn);
                closed.push(slot);
            }
            let now = self.runtime.now();
            self.transition(|state| {
                for slot in closed {
                    state.machine.handle_closed(slot, now);
                }
            });
        }
    }

    /// Wakes the maintenance task so it re-reads the deadline (and exits if the pool is gone).
    fn poke_timer(&self) {
        self.timer.notify(usize::MAX);
    }
}

impl<M: Manager, R: Runtime> Drop for Shared<M, R> {
    fn drop(&mut self) {
        self.poke_timer();
    }
}

/// The task that opens one connection for a reserved slot.
async fn connect<M: Manager, R: Runtime>(shared: Arc<Shared<M, R>>, slot: SlotId) {
    // Reports a failure if this task is dropped (runtime shut down) or the connect panics,
    // so the slot is never stranded as "opening".
    struct Report<M: Manager, R: Runtime> {
        shared: Arc<Shared<M, R>>,
        slot: SlotId,
        outcome: Option<Result<M::Connection, ConnectError<M::Error>>>,
    }
    impl<M: Manager, R: Runtime> Drop for Report<M, R> {
        fn drop(&mut self) {
            let outcome = self.outcome.take().unwrap_or(Err(ConnectError::Aborted));
            let now = self.shared.runtime.now();
            let slot = self.slot;
            let rejected = match outcome {
                Ok(raw) => {
                    tracing::debug!(slot = slot.index(), "connection opened");
                    self.shared.transition(|state| {
                        state.metrics.connects_ok += 1;
                        state
                            .machine
                            .handle_connected(
                                slot,
                                Conn {
                                    raw,
                                    last_used: now,
                                },
                                now,
                            )
                            .err()
                    })
                }
                Err(error) => {
                    tracing::warn!(slot = slot.index(), %error, "connect failed");
                    self.shared.transition(|state| {
                        state.metrics.connects_failed += 1;
                        state
                            .machine
                            .handle_connect_failed(slot, Arc::new(error), now);
                        None
                    })
                }
            };
            drop(rejected);
        }
    }

    let mut report = Report {
        shared,
        slot,
        outcome: None,
    };
    let shared = &report.shared;
    let limit = shared.settings.connect_timeout;
    let outcome = match timeout(&shared.runtime, limit, shared.manager.connect()).await {
        Some(result) => result.map_err(ConnectError::Failed),
        None => Err(ConnectError::TimedOut(limit)),
    };
    report.outcome = Some(outcome);
}

/// The pool's one maintenance task: calls `handle_timeout` at the machine's deadlines.
/// It holds only a weak reference between rounds and ends when the pool is gone.
pub(crate) async fn maintain<M: Manager, R: Runtime>(weak: Weak<Shared<M, R>>) {
    loop {
        let Some(shared) = weak.upgrade() else { return };
        // Listen before reading the deadline, so a notification in between is not lost.
        let listener = shared.timer.listen();
        let now = shared.runtime.now();
        let next = shared.transition(|state| {
            state.machine.handle_timeout(now);
            let next = state.machine.poll_timeout();
            state.armed = next;
            next
        });
        let sleep = next.map(|t| shared.runtime.sleep_until(t));
        drop(shared);
        match sleep {
            Some(sleep) => {
                race(listener, sleep).await;
            }
            None => listener.await,
        }
    }
}
