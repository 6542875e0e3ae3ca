//! The acquire future.

use std::backtrace::Backtrace;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tracing::Span;

use super::clock_policy::Step;
use super::error::{ConnectError, DeadlockError, Error};
use super::guard::PooledConnection;
use super::holders::{context_of, Site};
use super::runtime::{Manager, Runtime};
use super::shared::{ConnOf, Shared};
use super::util::{race, Either};
use super::Pool;
use crate::machine::{AcquireError, Acquired, Caller, Lease, LeaseId, Release, TimedOut, WaiterId};

type Checking<'a, M, R> = Pin<Box<dyn Future<Output = Checked<'a, M, R>> + Send + 'a>>;

enum Stage<'a, M: Manager, R: Runtime> {
    Start,
    /// Queued in the machine since `since`, inside the `pool.wait` span (see
    /// [`wait_span`]).
    Waiting {
        waiter: WaiterId,
        since: Instant,
        span: Span,
    },
    Checking(Checking<'a, M, R>),
    Done,
}

/// The future of [`Pool::get`] and [`Pool::get_timeout`]: resolves to a connection, or to
/// an [`Error`] once the deadline passes or the pool closes.
///
/// # Cancel safety
/// Dropping it at any point loses nothing: a waiting task leaves the queue (its place is
/// lost); a connection already granted to it goes to the next waiter, or back to idle, in
/// the same transition; a connection being checked is closed, since its state is unknown.
#[must_use = "futures do nothing unless polled"]
pub struct Acquire<'a, M: Manager, R: Runtime> {
    pool: &'a Pool<M, R>,
    timeout: Option<Duration>,
    /// When the acquire first read the clock (the start of its wait), once it has.
    started: Option<Instant>,
    deadline: Option<Instant>,
    backtrace: Option<Arc<Backtrace>>,
    /// Where the acquire was made (for self-wait reports).
    site: Site,
    stage: Stage<'a, M, R>,
}

impl<'a, M: Manager, R: Runtime> Acquire<'a, M, R> {
    pub(crate) fn new(pool: &'a Pool<M, R>, timeout: Option<Duration>, site: Site) -> Self {
        Self {
            pool,
            timeout,
            started: None,
            deadline: None,
            backtrace: None,
            site,
            stage: Stage::Start,
        }
    }

    /// What to do with a freshly leased connection: lend it, or run its checkout check
    /// first, or (the manager knows it is broken: it is closed) acquire again.
    fn checkout(
        &self,
        lease: Lease,
        conn: ConnOf<M>,
        now: Instant,
        caller: Option<Caller>,
    ) -> Checkout<'a, M, R> {
        let shared: &'a Arc<Shared<M, R>> = &self.pool.shared;
        shared.holders.lent(lease.id(), caller, self.site);
        if let Some(bt) = &self.backtrace {
            let old = shared
                .lock()
                .set_backtrace(lease.id(), Some(Arc::clone(bt)));
            drop(old);
        }
        let settings = &shared.settings;
        // `now` is only a clock reading when the bypass window needs one (see
        // `ClockPolicy`); with a zero window the comparison is false whatever `now` is, so
        // the check runs.
        let skip = !settings.check_on_checkout
            || now.saturating_duration_since(conn.last_used) < settings.check_bypass;
        let lent_at = shared.instruments.lent_at(now);
        let mut guard = PooledConnection::new(shared, lease, conn, lent_at);
        // Never lend a connection the manager can already tell is broken (the server closed
        // it while it was idle): close it and acquire again. A panic there counts as broken.
        let broken = shared.panics.guard("Manager::has_broken", || {
            shared.manager.has_broken(guard.raw_mut())
        });
        if broken != Some(false) {
            guard.close(Release::Broken);
            return Checkout::Next(Stage::Start);
        }
        if skip {
            return Checkout::Lend(guard);
        }
        Checkout::Next(Stage::Checking(Box::pin(check(
            shared,
            guard,
            self.deadline,
        ))))
    }

    /// Carries out [`checkout`](Self::checkout)'s decision: a connection to lend ends the
    /// acquire (counted as served at `now`); otherwise the acquire goes on at the stage
    /// decided.
    #[inline]
    fn lend_or_go_on(
        &mut self,
        lease: Lease,
        conn: ConnOf<M>,
        now: Instant,
        caller: Option<Caller>,
    ) -> Option<PooledConnection<'a, M, R>> {
        match self.checkout(lease, conn, now, caller) {
            Checkout::Lend(guard) => {
                self.stage = Stage::Done;
                self.pool.shared.instruments.served(self.started, || now);
                Some(guard)
            }
            Checkout::Next(stage) => {
                self.stage = stage;
                None
            }
        }
    }

    /// The start of this acquire's wait, and its deadline, from the first clock reading.
    fn start_clock(&mut self, now: Instant) {
        if self.started.is_none() {
            self.started = Some(now);
            self.deadline = self.timeout.and_then(|t| now.checked_add(t));
        }
    }

    /// The error of an acquire whose deadline passed outside the machine's queue (during a
    /// checkout check, or right after one failed): how long it really waited, and the pool
    /// as it is now.
    fn timed_out(&self, now: Instant) -> Error<M::Error> {
        let shared = &self.pool.shared;
        let state = shared.lock();
        let mut status = shared.status(&state);
        status.waiting += 1;
        let last_connect_error = state.machine.last_connect_error().cloned();
        drop(state);
        shared.instruments.timed_out();
        Error::TimedOut(TimedOut {
            waited: self.waited(now),
            status,
            last_connect_error,
        })
    }

    /// Logs a self-wait: this acquire waits while its task holds `held` (see
    /// `ARCHITECTURE.md`, "A task waiting on itself").
    fn report_self_wait(&self, held: LeaseId) {
        let held_at = self.pool.shared.holders.site(held);
        tracing::warn!(
            pool = %self.pool.shared.name,
            lease = held.serial(),
            held_at = held_at.map(tracing::field::display),
            waiting_at = %self.site,
            "a task waits for a connection (at {}) while it holds one of the same pool (lease {}, \
             acquired at {}): if that one is not given back by another branch of the task, \
             this waits until its time-out, or forever; pass the held connection down instead",
            self.site,
            held.serial(),
            held_at.map_or_else(|| "an unrecorded site".to_owned(), |s| s.to_string()),
        );
    }

    /// Ends the wait in the queue with `outcome`: records it in its span, with the wait up
    /// to `now` (read only for a span that records), and returns the span (closed when
    /// dropped). The stage is left `Done` for the caller to replace.
    fn end_wait(&mut self, outcome: &'static str, now: impl FnOnce() -> Instant) -> Span {
        match std::mem::replace(&mut self.stage, Stage::Done) {
            Stage::Waiting { since, span, .. } => {
                // A disabled span records nothing, but with `tracing`'s `log` feature on
                // (as a dependency may turn it on) recording would still format for `log`.
                if !span.is_disabled() {
                    let waited = now().saturating_duration_since(since);
                    span.record("outcome", outcome);
                    span.record("waited_ms", waited.as_secs_f64() * 1e3);
                }
                span
            }
            _ => Span::none(),
        }
    }

    /// How long this acquire has waited by `now`.
    fn waited(&self, now: Instant) -> Duration {
        self.started
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }
}

/// The span of an acquire that has to wait, from the moment it queues until it is granted
/// a connection or fails (or is dropped): `pool.wait`, at INFO, with the pool's name and, at
/// its end, the `outcome` (`acquired`, `timed_out`, `shed`, `connect_failed`, `deadlock`,
/// `closed`, `cancelled`) and `waited_ms`. An acquire served at once gets none (see the
/// [`observability`](crate::observability) module).
///
/// Only a `tracing` subscriber that takes INFO gets it: with none (or a lower level), no span
/// is built, which keeps a waiting acquire's cost what it was without one (about 480
/// instructions per hand-off otherwise, `log` fallback included; see `ARCHITECTURE.md`,
/// "Hot-path cost").
fn wait_span(pool: &str) -> Span {
    if !tracing::level_enabled!(tracing::Level::INFO) {
        return Span::none();
    }
    tracing::info_span!(
        "pool.wait",
        pool,
        outcome = tracing::field::Empty,
        waited_ms = tracing::field::Empty,
    )
}

/// What [`Acquire::checkout`] decided for a leased connection.
enum Checkout<'a, M: Manager, R: Runtime> {
    /// Lend it: the acquire is done.
    Lend(PooledConnection<'a, M, R>),
    /// Go on at this stage (its check, or a new acquire).
    Next(Stage<'a, M, R>),
}

/// What became of a checkout check.
enum Checked<'a, M: Manager, R: Runtime> {
    /// It passed: lend the connection.
    Passed(PooledConnection<'a, M, R>),
    /// It failed (or took longer than the check timeout): the connection was closed; try
    /// again.
    Failed,
    /// The acquire's deadline came first: the connection was closed (its state is
    /// unknown); the acquire fails.
    Deadline,
}

/// Runs the manager's checkout check, bounded by the check timeout and by the acquire's
/// `deadline`, whichever comes first. The connection is closed unless the check passed.
async fn check<'a, M: Manager, R: Runtime>(
    shared: &'a Shared<M, R>,
    mut guard: PooledConnection<'a, M, R>,
    deadline: Option<Instant>,
) -> Checked<'a, M, R> {
    // If this future is dropped mid-check, the connection's state is unknown: close it.
    guard.close_on_drop = true;
    let limit = shared.settings.check_timeout;
    let now = shared.runtime.now();
    let own = now.checked_add(limit);
    let (until, by_deadline) = match (own, deadline) {
        (Some(own), Some(deadline)) if deadline < own => (Some(deadline), true),
        (own, None) => (own, false),
        (Some(own), Some(_)) => (Some(own), false),
        (None, deadline) => (deadline, deadline.is_some()),
    };
    let checking = shared
        .panics
        .guard_future("Manager::check", shared.manager.check(guard.raw_mut()));
    let result = match until {
        Some(until) => match race(checking, shared.runtime.sleep_until(until)).await {
            Either::Left(result) => Some(result),
            Either::Right(_) => None,
        },
        None => Some(checking.await),
    };
    let error = match result {
        Some(Some(Ok(()))) => {
            guard.close_on_drop = false;
            // The check was part of the acquire (its wait), not of the borrower's use.
            if shared.instruments.enabled() {
                guard.lend_starts(shared.instruments.lent_at(shared.runtime.now()));
            }
            return Checked::Passed(guard);
        }
        Some(Some(Err(e))) => e.to_string(),
        Some(None) => "it panicked".to_owned(),
        None if by_deadline => return Checked::Deadline,
        None => format!("timed out after {limit:?}"),
    };
    tracing::warn!(
        pool = %shared.name,
        %error,
        "checkout check failed; closing the connection and trying again"
    );
    shared.lock().metrics.checks_failed += 1;
    Checked::Failed
}

impl<'a, M: Manager, R: Runtime> Future for Acquire<'a, M, R> {
    type Output = Result<PooledConnection<'a, M, R>, Error<M::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let shared = &this.pool.shared;
        // Who asks: the task, and the context within it (see `holders.rs`).
        let caller = shared.runtime.current_task().map(|task| Caller {
            task,
            context: context_of(cx.waker()),
        });
        loop {
            match &mut this.stage {
                Stage::Start => {
                    // Yield for the cooperative budget before taking a connection, never after.
                    ready!(shared.runtime.poll_budget(cx));
                    // After a failed checkout check: the deadline may have passed meanwhile.
                    if let Some(deadline) = this.deadline {
                        let now = shared.runtime.now();
                        if now >= deadline {
                            this.stage = Stage::Done;
                            return Poll::Ready(Err(this.timed_out(now)));
                        }
                    }
                    // The hot path: a connection parked in the return lane, lent without
                    // the lock, reading the clock only if a configured feature needs the
                    // time (see `ClockPolicy`). Otherwise the full acquire below, which reads the
                    // clock, since waiting needs it.
                    if let Some((lease, conn, now)) = shared.lend_parked() {
                        if let Some(guard) = this.lend_or_go_on(lease, conn, now, caller) {
                            return Poll::Ready(Ok(guard));
                        }
                        // A checkout check started (or the connection was broken): the wait
                        // and the deadline run from here, as they would have from the clock
                        // read of the full acquire. (A check started before the clock was
                        // read is bounded by the check timeout alone; its retry is not.)
                        if this.started.is_none() {
                            this.start_clock(shared.runtime.now());
                        }
                        continue;
                    }
                    let now = shared.runtime.now();
                    if this.started.is_none() {
                        this.start_clock(now);
                        if shared.settings.leak_backtraces && this.backtrace.is_none() {
                            this.backtrace = Some(Arc::new(Backtrace::force_capture()));
                        }
                    }
                    let deadline = this.deadline;
                    // Cloned before the lock: a waker's code never runs under it. Unused (or
                    // replaced) wakers come back out and are dropped after it.
                    let waker = cx.waker().clone();
                    let holders = &shared.holders;
                    let (outcome, unused, self_wait) = shared.transition(move |state| {
                        let outcome = state
                            .machine
                            .acquire_by(now, deadline, caller, |lease| holders.holder(lease));
                        let mut self_wait = None;
                        let unused = match &outcome {
                            Ok(Acquired::Waiting(waiter)) => {
                                self_wait = state.machine.self_wait(*waiter);
                                if self_wait.is_some() {
                                    state.metrics.self_waits += 1;
                                }
                                state.register_owned(*waiter, waker)
                            }
                            Err(AcquireError::Deadlock(_)) => {
                                state.metrics.self_waits += 1;
                                state.metrics.deadlocks += 1;
                                Some(waker)
                            }
                            Ok(Acquired::Ready(..)) => {
                                state.metrics.acquired += 1;
                                Some(waker)
                            }
                            Err(AcquireError::TimedOut(_)) => {
                                state.metrics.timed_out += 1;
                                Some(waker)
                            }
                            Err(AcquireError::ConnectFailed(..)) => {
                                state.metrics.failed_fast += 1;
                                Some(waker)
                            }
                            Err(AcquireError::Exhausted(_)) => {
                                state.metrics.queue_full += 1;
                                Some(waker)
                            }
                            Err(_) => Some(waker),
                        };
                        (outcome, unused, self_wait)
                    });
                    drop(unused);
                    if let Some(held) = self_wait {
                        this.report_self_wait(held);
                    }
                    match outcome {
                        Ok(Acquired::Ready(lease, conn)) => {
                            if let Some(guard) = this.lend_or_go_on(lease, conn, now, caller) {
                                return Poll::Ready(Ok(guard));
                            }
                        }
                        Ok(Acquired::Waiting(waiter)) => {
                            this.stage = Stage::Waiting {
                                waiter,
                                since: now,
                                span: wait_span(&shared.name),
                            };
                            return Poll::Pending;
                        }
                        Err(e) => {
                            this.stage = Stage::Done;
                            let e = this.convert(e, now);
                            if let Error::Deadlock(_) = &e {
                                tracing::warn!(pool = %shared.name, "{e}");
                            }
                            return Poll::Ready(Err(e));
                        }
                    }
                }
                Stage::Waiting { waiter, since, .. } => {
                    let (waiter, since) = (*waiter, *since);
                    // A clock reading only if a configured feature looks at the time of a
                    // collected grant (see `ClockPolicy`); an error below reads the clock.
                    let now = shared.now(Step::Collect);
                    let wait_times = shared.settings.wait_times;
                    let outcome = shared.transition(|state| {
                        let outcome = state.machine.take(waiter, now);
                        match &outcome {
                            Ok(None) => state.register(waiter, cx.waker()),
                            Ok(Some(_)) => {
                                let m = &mut state.metrics;
                                m.acquired += 1;
                                m.acquired_after_wait += 1;
                                if wait_times {
                                    let waited = now.saturating_duration_since(since);
                                    m.wait_total += waited;
                                    m.wait_max = m.wait_max.max(waited);
                                    m.wait_times.record(waited);
                                }
                            }
                            Err(AcquireError::TimedOut(_)) => state.metrics.timed_out += 1,
                            Err(AcquireError::ConnectFailed(..)) => state.metrics.failed_fast += 1,
                            Err(AcquireError::Shed(_)) => state.metrics.shed += 1,
                            Err(AcquireError::Deadlock(_)) => state.metrics.deadlocks += 1,
                            Err(_) => {}
                        }
                        outcome
                    });
                    match outcome {
                        Ok(None) => return Poll::Pending,
                        Ok(Some((lease, conn))) => {
                            drop(this.end_wait("acquired", || shared.runtime.now()));
                            if let Some(guard) = this.lend_or_go_on(lease, conn, now, caller) {
                                return Poll::Ready(Ok(guard));
                            }
                        }
                        Err(e) => {
                            let now = shared.runtime.now();
                            let outcome = match &e {
                                AcquireError::TimedOut(_) => "timed_out",
                                AcquireError::Shed(_) => "shed",
                                AcquireError::ConnectFailed(..) => "connect_failed",
                                AcquireError::Deadlock(_) => "deadlock",
                                _ => "closed",
                            };
                            // The error's event belongs to the wait: inside its span.
                            let span = this.end_wait(outcome, || now);
                            let _in_span = span.enter();
                            let e = this.convert(e, now);
                            match &e {
                                Error::TimedOut(t) => tracing::warn!(pool = %shared.name, "{t}"),
                                Error::ConnectFailed(..) | Error::Deadlock(_) => {
                                    tracing::warn!(pool = %shared.name, "{e}")
                                }
                                // Overload sheds many at once: counted, logged quietly.
                                Error::Shed(_) => tracing::debug!(pool = %shared.name, "{e}"),
                                _ => {}
                            }
                            return Poll::Ready(Err(e));
                        }
                    }
                }
                Stage::Checking(checking) => match ready!(checking.as_mut().poll(cx)) {
                    Checked::Passed(guard) => {
                        this.stage = Stage::Done;
                        let now = || shared.runtime.now();
                        shared.instruments.served(this.started, now);
                        return Poll::Ready(Ok(guard));
                    }
                    // The check failed and the connection was closed: try again, same deadline.
                    Checked::Failed => this.stage = Stage::Start,
                    Checked::Deadline => {
                        this.stage = Stage::Done;
                        let e = this.timed_out(shared.runtime.now());
                        tracing::warn!(pool = %shared.name, "{e} (during the checkout check)");
                        return Poll::Ready(Err(e));
                    }
                },
                Stage::Done => panic!("`Acquire` polled after it completed"),
            }
        }
    }
}

impl<M: Manager, R: Runtime> Acquire<'_, M, R> {
    /// The machine's answer as the caller's error; a time-out reports how long this acquire
    /// waited in all (a checkout check before it joined the queue included).
    fn convert(
        &self,
        e: AcquireError<Arc<ConnectError<M::Error>>>,
        now: Instant,
    ) -> Error<M::Error> {
        match e {
            AcquireError::TimedOut(mut t) => {
                self.pool.shared.instruments.timed_out();
                t.waited = self.waited(now);
                Error::TimedOut(t)
            }
            AcquireError::Exhausted(s) => Error::Exhausted(s),
            AcquireError::ConnectFailed(e, s) => Error::ConnectFailed(e, s),
            AcquireError::Shed(shed) => Error::Shed(shed),
            AcquireError::Deadlock(d) => Error::Deadlock(DeadlockError {
                lease: d.held,
                certain: d.certain,
                held_at: self.pool.shared.holders.site(d.held),
                waiting_at: self.site,
                status: d.status,
            }),
            // A waiter the machine no longer knows was resolved already; from the caller's
            // view the pool has nothing for it, which only happens once it is closed.
            _ => Error::Closed,
        }
    }
}

impl<M: Manager, R: Runtime> Drop for Acquire<'_, M, R> {
    #[inline]
    fn drop(&mut self) {
        if let Stage::Waiting { waiter, .. } = self.stage {
            self.cancel_wait(waiter);
        }
    }
}

impl<M: Manager, R: Runtime> Acquire<'_, M, R> {
    /// Leaves the queue (dropped while waiting). Out of line, so the drop of a completed
    /// acquire, on every cycle, stays a test of its stage.
    #[inline(never)]
    fn cancel_wait(&mut self, waiter: WaiterId) {
        let shared = &self.pool.shared;
        let now = shared.runtime.now();
        let waker = shared.transition(|state| {
            state.machine.cancel(waiter, now);
            state.unregister(waiter)
        });
        drop(waker);
        drop(self.end_wait("cancelled", || now));
    }
}

impl<M: Manager, R: Runtime> fmt::Debug for Acquire<'_, M, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stage = match &self.stage {
            Stage::Start => "start",
            Stage::Waiting { .. } => "waiting",
            Stage::Checking(_) => "checking",
            Stage::Done => "done",
        };
        f.debug_struct("Acquire")
            .field("stage", &stage)
            .field("deadline", &self.deadline)
            .finish()
    }
}
