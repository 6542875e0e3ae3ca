//! The pool's spawned tasks, and the one place it spawns them: a connect per reserved slot,
//! a reset per returned connection that needs one, and one maintenance task per pool. Every
//! one runs under the pool's panic policy ([`Panics::guard_task`](super::panics::Panics)),
//! and each reports its outcome to the machine even when dropped mid-way (see
//! `ARCHITECTURE.md`, "Tasks").

use std::future::Future;
use std::sync::{Arc, Weak};

use super::error::ConnectError;
use super::guard::release;
use super::instruments::{ConnectTimer, LentAt};
use super::runtime::{Manager, Runtime};
use super::shared::{Conn, ConnOf, Shared};
use super::util::{race, timeout};
use crate::machine::{Lease, Release, SlotId};

impl<M: Manager, R: Runtime> Shared<M, R> {
    /// Spawns one of the pool's tasks, under the panic policy.
    fn spawn_task(&self, task: &'static str, future: impl Future<Output = ()> + Send + 'static) {
        let guarded = self.panics.guard_task(task, future);
        self.runtime.spawn(async move {
            let _ = guarded.await;
        });
    }

    /// Spawns the task that opens a connection for the reserved `slot`.
    pub(crate) fn spawn_connect(self: &Arc<Self>, slot: SlotId) {
        self.spawn_task("the connect task", connect(Arc::clone(self), slot));
    }

    /// Spawns the task that resets a returned connection before it is released.
    pub(crate) fn spawn_reset(self: &Arc<Self>, lease: Lease, conn: ConnOf<M>) {
        self.spawn_task("the reset task", reset(Arc::clone(self), lease, conn));
    }

    /// Spawns the pool's maintenance task.
    pub(crate) fn spawn_maintenance(self: &Arc<Self>) {
        self.spawn_task("the maintenance task", maintain(Arc::downgrade(self)));
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
        /// When the connect began (for the create-time instrument).
        timer: ConnectTimer,
    }
    impl<M: Manager, R: Runtime> Drop for Report<M, R> {
        fn drop(&mut self) {
            let outcome = self.outcome.take().unwrap_or(Err(ConnectError::Aborted));
            let now = self.shared.runtime.now();
            let slot = self.slot;
            let pool = &*self.shared.name;
            let rejected = match outcome {
                Ok(raw) => {
                    let timer = std::mem::take(&mut self.timer);
                    self.shared.instruments.connected(timer, now);
                    tracing::debug!(pool, slot = slot.index(), "connection opened");
                    self.shared.transition(|state| {
                        state.metrics.connects_ok += 1;
                        state
                            .machine
                            .handle_connected(
                                slot,
                                Conn {
                                    raw: Box::new(raw),
                                    last_used: now,
                                },
                                now,
                            )
                            .err()
                    })
                }
                Err(error) => {
                    let failure = self.shared.classify(&error);
                    tracing::warn!(pool, slot = slot.index(), %error, ?failure, "connect failed");
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

    let timer = shared.instruments.connect_started(|| shared.runtime.now());
    let mut report = Report {
        shared,
        slot,
        outcome: None,
        timer,
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

/// Resets a returned connection in the background, then releases it (closing it if the
/// reset fails, times out, panics or is dropped).
async fn reset<M: Manager, R: Runtime>(shared: Arc<Shared<M, R>>, lease: Lease, conn: ConnOf<M>) {
    struct Pending<M: Manager, R: Runtime> {
        shared: Arc<Shared<M, R>>,
        inner: Option<(Lease, ConnOf<M>)>,
        how: Release,
    }
    impl<M: Manager, R: Runtime> Drop for Pending<M, R> {
        fn drop(&mut self) {
            if let Some((lease, conn)) = self.inner.take() {
                release(&self.shared, lease, conn, self.how, LentAt::default());
            }
        }
    }
    let mut pending = Pending {
        shared,
        inner: Some((lease, conn)),
        how: Release::Discard,
    };
    let Pending { shared, inner, .. } = &mut pending;
    let Some((_, conn)) = inner.as_mut() else {
        return;
    };
    let limit = shared.settings.reset_timeout;
    let resetting = shared
        .panics
        .guard_future("Manager::reset", shared.manager.reset(&mut conn.raw));
    let ok = match timeout(&shared.runtime, limit, resetting).await {
        Some(Some(result)) => result.map_err(|e| e.to_string()),
        Some(None) => Err("it panicked".to_owned()),
        None => Err(format!("timed out after {limit:?}")),
    };
    match ok {
        Ok(()) => pending.how = Release::Reuse,
        Err(error) => {
            tracing::warn!(pool = %shared.name, %error, "connection reset failed; closing it");
            pending.shared.lock().metrics.resets_failed += 1;
        }
    }
}

/// The pool's one maintenance task: calls `handle_timeout` at the machine's deadlines, and
/// hands parked connections to the machine so their idle timeout and lifetime apply. It
/// holds only a weak reference between rounds and ends when the pool is gone.
async fn maintain<M: Manager, R: Runtime>(weak: Weak<Shared<M, R>>) {
    loop {
        let Some(shared) = weak.upgrade() else { return };
        // Listen before reading the deadline, so a notification in between is not lost.
        let listener = shared.timer.listen();
        let now = shared.runtime.now();
        let next = shared.transition(|state| {
            if let Some(lane) = &shared.lane {
                shared.hand_over(lane, state);
            }
            state.machine.handle_timeout(now);
            let mut next = state.machine.poll_timeout();
            if let Some(due) = shared.hand_over_every.and_then(|d| now.checked_add(d)) {
                next = Some(next.map_or(due, |t| t.min(due)));
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
