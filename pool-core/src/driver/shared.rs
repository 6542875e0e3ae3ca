//! The state shared by a pool's handles, guards and tasks, and the one-transition-per-lock
//! protocol around the machine.

use std::backtrace::Backtrace;
use std::fmt;
use std::sync::{Arc, Weak};
use std::task::Waker;
use std::time::{Duration, Instant};

use event_listener::Event;
use parking_lot::{Mutex, MutexGuard};

use super::error::ConnectError;
use super::lane::{Lane, Taken};
use super::panics::Panics;
use super::runtime::{Manager, Runtime};
use super::util::{race, timeout};
use super::Metrics;
use crate::machine::{
    Action, CloseReason, Config, Failure, Lease, LeaseId, Machine, Release, SlotId, Status,
    WaiterId,
};

/// A pooled connection as the machine holds it.
pub(crate) struct Conn<C> {
    pub(crate) raw: C,
    /// When it was last handed out or returned, for the check bypass window.
    pub(crate) last_used: Instant,
}

pub(crate) type ErrorOf<M> = Arc<ConnectError<<M as Manager>::Error>>;
pub(crate) type ConnOf<M> = Conn<<M as Manager>::Connection>;
/// A connection parked in the return lane, with the lease the machine still counts.
pub(crate) type Parked<M> = (Lease, ConnOf<M>);

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
    pub(crate) check_timeout: Duration,
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
/// | lend a connection from the return lane (no machine) | its lifetime; the driver: the check bypass window | `max_lifetime`, or a checkout check with a non-zero bypass window |
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
    /// Lending a connection from the return lane needs the time (its lifetime, the check
    /// bypass window; the machine, which would look at the rest, is not involved).
    pub(crate) on_lane_acquire: bool,
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
            on_lane_acquire: config.max_lifetime.is_some() || bypass,
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
    /// Connections the machine refused while under the lock, dropped after it.
    rejected: Vec<ConnOf<M>>,
}

impl<M: Manager> State<M> {
    pub(crate) fn new(machine: Machine<ConnOf<M>, ErrorOf<M>>) -> Self {
        Self {
            machine,
            wakers: Vec::new(),
            backtraces: Vec::new(),
            armed: None,
            metrics: Metrics::default(),
            rejected: Vec::new(),
        }
    }

    /// Remembers the task to wake for `waiter` (registered under the same lock as the
    /// machine's answer, so no wake-up can be missed).
    pub(crate) fn register(&mut self, waiter: WaiterId, waker: &Waker) {
        match self.waker_slot(waiter) {
            Some(w) if w.will_wake(waker) => {}
            slot => *slot = Some(waker.clone()),
        }
    }

    /// Registers the waker of a waiter that just queued, cloned before the lock was taken
    /// (so no waker code runs under it); returns what it replaced, to drop after the lock.
    pub(crate) fn register_owned(&mut self, waiter: WaiterId, waker: Waker) -> Option<Waker> {
        self.waker_slot(waiter).replace(waker)
    }

    /// Where `waiter`'s waker is kept, grown to fit.
    fn waker_slot(&mut self, waiter: WaiterId) -> &mut Option<Waker> {
        let i = waiter.index();
        if self.wakers.len() <= i {
            self.wakers.resize_with(i + 1, || None);
        }
        &mut self.wakers[i]
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
    /// Connections the machine refused, dropped with the rest of this work.
    rejected: Vec<Conn<C>>,
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
            rejected: Vec::new(),
        }
    }
}

/// What a pool's handles, guards and tasks share.
pub(crate) struct Shared<M: Manager, R: Runtime> {
    pub(crate) manager: M,
    pub(crate) runtime: R,
    pub(crate) settings: Settings,
    pub(crate) clock: Clock,
    /// Panics caught in user code (see `panics.rs`).
    pub(crate) panics: Panics,
    /// Returned connections lent again without the lock (see [`Lane`]); `None` when leak
    /// detection or reclaim needs the machine to see every checkout.
    lane: Option<Lane<Parked<M>>>,
    /// How often the maintenance task hands parked connections to the machine, so the
    /// idle timeout and the lifetime apply to them: a quarter of the shorter of the two.
    sweep: Option<Duration>,
    /// `min_idle` is set: every locked transition first hands parked connections to the
    /// machine, so its idle count includes them.
    min_idle: bool,
    state: Mutex<State<M>>,
    /// Wakes the maintenance task when its deadline moves earlier (and when the pool goes).
    timer: Event,
    /// Notified once the pool has drained after close.
    pub(crate) drained: Event,
}

impl<M: Manager, R: Runtime> Shared<M, R> {
    pub(crate) fn new(manager: M, runtime: R, settings: Settings, state: State<M>) -> Arc<Self> {
        let config = state.machine.config();
        let clock = Clock::new(config, &settings, runtime.now());
        let per_lease = config.leak_threshold.is_some()
            || config.reclaim_after.is_some()
            || settings.leak_backtraces;
        let lane = (!per_lease).then(|| Lane::new(config.max_size));
        let sweep = match (config.idle_timeout, config.max_lifetime) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
        .filter(|_| lane.is_some())
        .map(|t| (t / 4).max(Duration::from_millis(1)));
        Arc::new(Self {
            manager,
            runtime,
            settings,
            clock,
            panics: Panics::default(),
            lane,
            sweep,
            min_idle: config.min_idle > 0,
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
        // With `min_idle`, the machine counts idle connections to decide what to open: let
        // it see the parked ones as the idle connections they are.
        if let Some(lane) = self.lane.as_ref().filter(|_| self.min_idle) {
            if lane.len() > 0 {
                self.unpark(lane, &mut state);
            }
        }
        let out = f(&mut state);
        self.sync_lane(&mut state);
        let first = state.machine.poll_action();
        // The common cases build no list of deferred work: nothing to do but perhaps move
        // the timer, or a hand-off (a released connection granted to a waiter), which wakes
        // one task and does nothing else.
        if state.rejected.is_empty() {
            match first {
                None => {
                    if state.rearm() {
                        drop(state);
                        self.timer.notify(1);
                    }
                    return out;
                }
                Some(Action::Wake { waiter }) => {
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
                    drop(state);
                    self.act(deferred);
                    return out;
                }
                Some(_) => {}
            }
        }
        let mut deferred = Deferred::new();
        deferred.rejected = std::mem::take(&mut state.rejected);
        match first {
            Some(first) => state.collect(first, &mut deferred),
            None => deferred.move_timer = state.rearm(),
        }
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

    /// Lends a connection from the return lane, if it is open and holds one, with the
    /// instant to take for "now" (the clock only if a configured feature needs it). One past
    /// its lifetime goes to the machine, which retires it, and the next is tried. One popped
    /// just as the lane closed goes to the machine too (to the waiter that closed it), and
    /// the caller acquires through the machine.
    #[inline]
    pub(crate) fn lend_parked(self: &Arc<Self>) -> Option<(Lease, ConnOf<M>, Instant)> {
        let lane = self.lane.as_ref()?;
        loop {
            let (lease, conn) = match lane.take() {
                Taken::Lent(parked) => parked,
                Taken::Nothing => return None,
                Taken::HandBack((lease, conn)) => {
                    let now = self.now_if(self.clock.on_lane_acquire);
                    self.release(lease, conn, Release::Reuse, now);
                    return None;
                }
            };
            let now = self.now_if(self.clock.on_lane_acquire);
            if lease.expires().is_some_and(|t| t <= now) {
                self.release(lease, conn, Release::Reuse, now);
                continue;
            }
            return Some((lease, conn, now));
        }
    }

    /// Gives a connection back: parked in the return lane when the machine has nothing to
    /// decide, else through the machine. `now` is the instant `conn.last_used` was set to.
    pub(crate) fn release(
        self: &Arc<Self>,
        lease: Lease,
        conn: ConnOf<M>,
        how: Release,
        now: Instant,
    ) {
        let (lease, conn) = match &self.lane {
            Some(lane) if how == Release::Reuse && lease.expires().is_none_or(|t| t > now) => {
                match lane.offer((lease, conn)) {
                    None => return,
                    // The lane was closed or full, or closed while this one went in: the
                    // machine takes this one, or another parked one, instead.
                    Some(back) => back,
                }
            }
            _ => (lease, conn),
        };
        let leftovers = self.transition(|state| {
            let bt = if self.settings.leak_backtraces {
                state.set_backtrace(lease.id(), None)
            } else {
                None
            };
            let at = returned_at(&lease, &conn, || now);
            (state.machine.release(lease, conn, how, at).err(), bt)
        });
        // A rejected connection or a backtrace is dropped here, outside the lock.
        self.panics.drop_guarded("a connection's Drop", leftovers);
    }

    /// Under the lock, after every transition: opens the return lane if the machine has
    /// nothing to decide on a return, or closes it and hands the machine every connection
    /// parked there (see [`Lane`]).
    fn sync_lane(&self, state: &mut State<M>) {
        let Some(lane) = &self.lane else { return };
        loop {
            let may_open = state.machine.release_goes_idle();
            if lane.is_open() == may_open {
                return;
            }
            if may_open {
                // Opened once a connection goes idle in the machine, not merely when the
                // queue empties: in a stream of hand-offs (every release served a waiter,
                // and the next acquire queues again) the lane stays closed, at no cost.
                if state.machine.status().idle > 0 {
                    lane.open();
                }
                return;
            }
            lane.close();
            self.unpark(lane, state);
            // Handing them over may have served every waiter: look again.
        }
    }

    /// Under the lock: hands the machine every connection parked in the lane (to serve
    /// waiters, to close, or to idle), each with the instant it came back (see
    /// [`returned_at`]), reading the clock only for connections with a lifetime.
    fn unpark(&self, lane: &Lane<Parked<M>>, state: &mut State<M>) {
        let mut now = None;
        while let Some((lease, conn)) = lane.drain() {
            let at = returned_at(&lease, &conn, || {
                *now.get_or_insert_with(|| self.runtime.now())
            });
            if let Err(rejected) = state.machine.release(lease, conn, Release::Reuse, at) {
                state.rejected.extend(rejected.conn);
            }
        }
    }

    /// Under the lock, from the maintenance task: hands parked connections to the machine,
    /// which applies the idle timeout and the lifetime to them.
    fn sweep_lane(&self, state: &mut State<M>) {
        if let Some(lane) = &self.lane {
            self.unpark(lane, state);
        }
    }

    /// The pool's counts: the machine's, with connections parked in the return lane counted
    /// as idle rather than in use.
    pub(crate) fn status(&self, state: &State<M>) -> Status {
        let mut status = state.machine.status();
        if let Some(lane) = &self.lane {
            let parked = lane.len().min(status.in_use);
            status.idle += parked;
            status.in_use -= parked;
        }
        status
    }

    /// The pool's counters, acquires served from the return lane included.
    pub(crate) fn metrics(&self, state: &State<M>) -> Metrics {
        let mut metrics = state.metrics.clone();
        if let Some(lane) = &self.lane {
            metrics.acquired += lane.lent();
        }
        metrics.panics = self.panics.count();
        metrics
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
                self.panics.guard("the on_leak hook", || hook(&report));
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
        let rejected = std::mem::take(&mut d.rejected);
        self.panics.drop_guarded("a connection's Drop", rejected);
        if !d.closes.is_empty() {
            let mut closed = Vec::with_capacity(d.closes.len());
            for (slot, conn, reason) in d.closes.drain(..) {
                tracing::debug!(slot = slot.index(), %reason, "closing a connection");
                self.panics.drop_guarded("a connection's Drop", conn);
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

    /// Whether a failed connect can heal by waiting: the manager decides for its own errors
    /// (a panic there counts as transient); a time-out or an aborted connect is transient.
    fn classify(&self, error: &ConnectError<M::Error>) -> Failure {
        match error {
            ConnectError::Failed(e) => {
                match self
                    .panics
                    .guard("Manager::is_fatal", || self.manager.is_fatal(e))
                {
                    Some(true) => Failure::Fatal,
                    _ => Failure::Transient,
                }
            }
            _ => Failure::Transient,
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

/// The instant to report a connection's return to the machine at: when it last came back
/// (for one parked in the return lane, when it was parked, so the idle timeout counts from
/// then), or `now` if it has outlived its lifetime since, so the machine retires it. `now`
/// is only called for a connection with a lifetime.
fn returned_at<C>(lease: &Lease, conn: &Conn<C>, now: impl FnOnce() -> Instant) -> Instant {
    match lease.expires() {
        Some(expires) => {
            let now = now();
            if expires <= now {
                now
            } else {
                conn.last_used
            }
        }
        None => conn.last_used,
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
                    let failure = self.shared.classify(&error);
                    tracing::warn!(slot = slot.index(), %error, ?failure, "connect failed");
                    self.shared.transition(|state| {
                        state.metrics.connects_failed += 1;
                        state
                            .machine
                            .handle_connect_failed(slot, Arc::new(error), failure, now);
                        None
                    })
                }
            };
            self.shared
                .panics
                .drop_guarded("a connection's Drop", rejected);
        }
    }

    let mut report = Report {
        shared,
        slot,
        outcome: None,
    };
    let shared = &report.shared;
    let limit = shared.settings.connect_timeout;
    let connecting = shared
        .panics
        .guard_future("Manager::connect", shared.manager.connect());
    let outcome = match timeout(&shared.runtime, limit, connecting).await {
        Some(Some(result)) => result.map_err(ConnectError::Failed),
        Some(None) => Err(ConnectError::Aborted),
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
            shared.sweep_lane(state);
            state.machine.handle_timeout(now);
            let mut next = state.machine.poll_timeout();
            if let Some(sweep) = shared.sweep.and_then(|d| now.checked_add(d)) {
                next = Some(next.map_or(sweep, |t| t.min(sweep)));
            }
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
