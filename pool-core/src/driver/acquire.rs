//! The acquire future.

use std::backtrace::Backtrace;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use super::error::{ConnectError, Error};
use super::guard::PooledConnection;
use super::runtime::{Manager, Runtime};
use super::shared::{ConnOf, Shared};
use super::util::timeout;
use super::Pool;
use crate::machine::{AcquireError, Acquired, Lease, Release, WaiterId};

type Checking<'a, M, R> =
    Pin<Box<dyn Future<Output = Option<PooledConnection<'a, M, R>>> + Send + 'a>>;

enum Stage<'a, M: Manager, R: Runtime> {
    Start,
    Waiting { waiter: WaiterId, since: Instant },
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
    deadline: Option<Instant>,
    backtrace: Option<Arc<Backtrace>>,
    stage: Stage<'a, M, R>,
}

impl<'a, M: Manager, R: Runtime> Acquire<'a, M, R> {
    pub(crate) fn new(pool: &'a Pool<M, R>, timeout: Option<Duration>) -> Self {
        Self {
            pool,
            timeout,
            deadline: None,
            backtrace: None,
            stage: Stage::Start,
        }
    }

    /// Turns a freshly leased connection into a guard, or starts its checkout check.
    fn got(
        &mut self,
        lease: Lease,
        conn: ConnOf<M>,
        now: Instant,
    ) -> Option<PooledConnection<'a, M, R>> {
        let shared: &'a Arc<Shared<M, R>> = &self.pool.shared;
        if let Some(bt) = &self.backtrace {
            let old = shared
                .lock()
                .set_backtrace(lease.id(), Some(Arc::clone(bt)));
            drop(old);
        }
        let settings = &shared.settings;
        // `now` is only a clock reading when the bypass window needs one (see `Clock`); with a
        // zero window the comparison is false whatever `now` is, so the check runs.
        let skip = !settings.check_on_checkout
            || now.saturating_duration_since(conn.last_used) < settings.check_bypass;
        let mut guard = PooledConnection::new(shared, lease, conn);
        // Never lend a connection the manager can already tell is broken (the server closed
        // it while it was idle): close it and acquire again. If this user code panics, the
        // guard is dropped while unwinding, which closes the connection.
        if shared.manager.has_broken(&mut guard) {
            guard.close(Release::Broken);
            self.stage = Stage::Start;
            return None;
        }
        if skip {
            return Some(guard);
        }
        self.stage = Stage::Checking(Box::pin(check(shared, guard)));
        None
    }
}

/// Runs the manager's checkout check; `None` (and the connection closed) if it fails.
async fn check<'a, M: Manager, R: Runtime>(
    shared: &'a Shared<M, R>,
    mut guard: PooledConnection<'a, M, R>,
) -> Option<PooledConnection<'a, M, R>> {
    // If this future is dropped mid-check, the connection's state is unknown: close it.
    guard.tainted = true;
    let limit = shared.settings.connect_timeout;
    let result = match timeout(&shared.runtime, limit, shared.manager.check(&mut guard)).await {
        Some(result) => result.map_err(|e| e.to_string()),
        None => Err(format!("timed out after {limit:?}")),
    };
    match result {
        Ok(()) => {
            guard.tainted = false;
            Some(guard)
        }
        Err(error) => {
            tracing::warn!(%error, "checkout check failed; closing the connection and trying again");
            shared.lock().metrics.checks_failed += 1;
            None
        }
    }
}

impl<'a, M: Manager, R: Runtime> Future for Acquire<'a, M, R> {
    type Output = Result<PooledConnection<'a, M, R>, Error<M::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let shared = &this.pool.shared;
        loop {
            match &mut this.stage {
                Stage::Start => {
                    // Yield for the cooperative budget before taking a connection, never after.
                    ready!(shared.runtime.poll_budget(cx));
                    // The hot path: a connection parked in the return lane, lent without
                    // the lock, reading the clock only if a configured feature needs the
                    // time (see `Clock`). Otherwise the full acquire below, which reads the
                    // clock, since waiting needs it.
                    if let Some((lease, conn, now)) = shared.lend_parked() {
                        if let Some(guard) = this.got(lease, conn, now) {
                            this.stage = Stage::Done;
                            return Poll::Ready(Ok(guard));
                        }
                        // A checkout check started (or the connection was broken): the
                        // deadline runs from now, as it would have from the clock read of the
                        // full acquire.
                        if this.deadline.is_none() {
                            let now = shared.runtime.now();
                            this.deadline = this.timeout.and_then(|t| now.checked_add(t));
                        }
                        continue;
                    }
                    let now = shared.runtime.now();
                    if this.deadline.is_none() {
                        this.deadline = this.timeout.and_then(|t| now.checked_add(t));
                        if shared.settings.leak_backtraces && this.backtrace.is_none() {
                            this.backtrace = Some(Arc::new(Backtrace::force_capture()));
                        }
                    }
                    let deadline = this.deadline;
                    // Cloned before the lock: a waker's code never runs under it. Unused (or
                    // replaced) wakers come back out and are dropped after it.
                    let waker = cx.waker().clone();
                    let (outcome, unused) = shared.transition(move |state| {
                        let outcome = state.machine.acquire(now, deadline);
                        let unused = match &outcome {
                            Ok(Acquired::Waiting(waiter)) => state.register_owned(*waiter, waker),
                            Ok(Acquired::Ready(..)) => {
                                state.metrics.acquired += 1;
                                Some(waker)
                            }
                            Err(AcquireError::TimedOut(_)) => {
                                state.metrics.timed_out += 1;
                                Some(waker)
                            }
                            Err(_) => Some(waker),
                        };
                        (outcome, unused)
                    });
                    drop(unused);
                    match outcome {
                        Ok(Acquired::Ready(lease, conn)) => {
                            if let Some(guard) = this.got(lease, conn, now) {
                                this.stage = Stage::Done;
                                return Poll::Ready(Ok(guard));
                            }
                        }
                        Ok(Acquired::Waiting(waiter)) => {
                            this.stage = Stage::Waiting { waiter, since: now };
                            return Poll::Pending;
                        }
                        Err(e) => {
                            this.stage = Stage::Done;
                            return Poll::Ready(Err(convert(e)));
                        }
                    }
                }
                Stage::Waiting { waiter, since } => {
                    let (waiter, since) = (*waiter, *since);
                    let now = shared.runtime.now();
                    let outcome = shared.transition(|state| {
                        let outcome = state.machine.take(waiter, now);
                        match &outcome {
                            Ok(None) => state.register(waiter, cx.waker()),
                            Ok(Some(_)) => {
                                let waited = now.saturating_duration_since(since);
                                let m = &mut state.metrics;
                                m.acquired += 1;
                                m.acquired_after_wait += 1;
                                m.wait_total += waited;
                                m.wait_max = m.wait_max.max(waited);
                            }
                            Err(AcquireError::TimedOut(_)) => state.metrics.timed_out += 1,
                            Err(_) => {}
                        }
                        outcome
                    });
                    match outcome {
                        Ok(None) => return Poll::Pending,
                        Ok(Some((lease, conn))) => {
                            this.stage = Stage::Start;
                            if let Some(guard) = this.got(lease, conn, now) {
                                this.stage = Stage::Done;
                                return Poll::Ready(Ok(guard));
                            }
                        }
                        Err(e) => {
                            this.stage = Stage::Done;
                            let e = convert(e);
                            if let Error::TimedOut(t) = &e {
                                tracing::warn!("{t}");
                            }
                            return Poll::Ready(Err(e));
                        }
                    }
                }
                Stage::Checking(checking) => match ready!(checking.as_mut().poll(cx)) {
                    Some(guard) => {
                        this.stage = Stage::Done;
                        return Poll::Ready(Ok(guard));
                    }
                    // The check failed and the connection was closed: try again, same deadline.
                    None => this.stage = Stage::Start,
                },
                Stage::Done => return Poll::Pending,
            }
        }
    }
}

fn convert<E>(e: AcquireError<Arc<ConnectError<E>>>) -> Error<E> {
    match e {
        AcquireError::TimedOut(t) => Error::TimedOut(t),
        AcquireError::Exhausted(s) => Error::Exhausted(s),
        // A waiter the machine no longer knows was resolved already; from the caller's view
        // the pool has nothing for it, which only happens once it is closed.
        _ => Error::Closed,
    }
}

impl<M: Manager, R: Runtime> Drop for Acquire<'_, M, R> {
    fn drop(&mut self) {
        if let Stage::Waiting { waiter, .. } = self.stage {
            let shared = &self.pool.shared;
            let now = shared.runtime.now();
            let waker = shared.transition(|state| {
                state.machine.cancel(waiter, now);
                state.unregister(waiter)
            });
            drop(waker);
        }
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
