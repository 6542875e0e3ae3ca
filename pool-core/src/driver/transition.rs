//! The one-transition-per-lock protocol: lock, change the machine, collect its actions,
//! unlock, then do the work they ask for ([`AfterUnlock`]). No `.await`, no user code, no
//! waker call and no connection drop happen under the lock (see `ARCHITECTURE.md`,
//! "Locking").

use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use super::leak::LeakReport;
use super::runtime::{Manager, Runtime};
use super::shared::{Conn, ConnOf, Shared};
use super::state::State;
use crate::machine::{Action, CloseReason, LeaseId, SlotId};

/// Work collected under the lock, done after it is released.
pub(crate) struct AfterUnlock<C> {
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

impl<C> AfterUnlock<C> {
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

impl<M: Manager> State<M> {
    /// Drains the machine's actions (`first`, already polled, then the rest) into `out`,
    /// doing under the lock only what must be (taking wakers, counting), and noting whether
    /// the maintenance timer must move.
    fn collect(&mut self, first: Action<ConnOf<M>>, out: &mut AfterUnlock<M::Connection>) {
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
                    let acquired_at = self.backtrace(lease);
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

impl<M: Manager, R: Runtime> Shared<M, R> {
    /// One transition: lock, let `f` change the machine, drain its actions, unlock, then act
    /// on them (wake, spawn, close, report). `f` must not call user code or drop connections.
    ///
    /// The hot path (nothing to wake, open, close or report, no timer to move) unlocks and
    /// returns without building the list of work for after the lock.
    pub(crate) fn transition<T>(self: &Arc<Self>, f: impl FnOnce(&mut State<M>) -> T) -> T {
        let mut state = self.lock();
        // With `min_idle`, the machine counts idle connections to decide what to open: let
        // it see the parked ones as the idle connections they are.
        if let Some(lane) = self.lane.as_ref().filter(|_| self.min_idle) {
            if lane.len() > 0 {
                self.hand_over(lane, &mut state);
            }
        }
        let out = f(&mut state);
        self.sync_lane(&mut state);
        // The counts this transition changed, emitted after the lock (nothing without the
        // `metrics` feature; see `instruments.rs`).
        let counts = {
            let state = &mut *state;
            let machine = &state.machine;
            state
                .counted
                .delta(self.instruments.enabled(), || machine.status())
        };
        let first = state.machine.poll_action();
        // The common cases build no list of work: nothing to do but perhaps move the timer,
        // or a hand-off (a released connection granted to a waiter), which wakes one task
        // and does nothing else.
        if state.rejected.is_empty() {
            match first {
                None => {
                    let move_timer = state.rearm();
                    drop(state);
                    self.instruments.emit(counts);
                    if move_timer {
                        self.timer.notify(1);
                    }
                    return out;
                }
                Some(Action::Wake { waiter }) => {
                    let waker = state.unregister(waiter);
                    let Some(next) = state.machine.poll_action() else {
                        let move_timer = state.rearm();
                        drop(state);
                        self.instruments.emit(counts);
                        if let Some(waker) = waker {
                            waker.wake();
                        }
                        if move_timer {
                            self.timer.notify(1);
                        }
                        return out;
                    };
                    let mut work = AfterUnlock::new();
                    work.wake = waker;
                    state.collect(next, &mut work);
                    drop(state);
                    self.instruments.emit(counts);
                    self.after_unlock(work);
                    return out;
                }
                Some(_) => {}
            }
        }
        let mut work = AfterUnlock::new();
        work.rejected = std::mem::take(&mut state.rejected);
        match first {
            Some(first) => state.collect(first, &mut work),
            None => work.move_timer = state.rearm(),
        }
        drop(state);
        self.instruments.emit(counts);
        self.after_unlock(work);
        out
    }

    /// Does the work a transition collected, after the lock: wakes, spawns connects, reports
    /// leaks and reclaims (calling the user's hook), drops connections (closing them) and
    /// reports their closes to the machine.
    fn after_unlock(self: &Arc<Self>, mut work: AfterUnlock<M::Connection>) {
        if let Some(waker) = work.wake.take() {
            waker.wake();
        }
        for waker in work.wakes.drain(..) {
            waker.wake();
        }
        for slot in work.opens.drain(..) {
            tracing::debug!(pool = %self.name, slot = slot.index(), "opening a connection");
            self.spawn_connect(slot);
        }
        for report in work.leaks.drain(..) {
            tracing::warn!(
                pool = %self.name,
                lease = report.lease.serial(),
                held_for = ?report.held_for,
                "{report}"
            );
            if let Some(hook) = &self.settings.on_leak {
                self.panics.guard("the on_leak hook", || hook(&report));
            }
        }
        for (lease, held_for) in work.reclaims.drain(..) {
            tracing::warn!(
                pool = %self.name,
                lease = lease.serial(),
                ?held_for,
                "lease reclaimed as abandoned: it no longer counts against max_size and its connection will be closed when it comes back"
            );
        }
        if work.move_timer {
            self.timer.notify(1);
        }
        if work.drained {
            tracing::debug!(pool = %self.name, "pool drained");
            self.drained.notify(usize::MAX);
        }
        let rejected = std::mem::take(&mut work.rejected);
        self.panics.drop_guarded("a connection's Drop", rejected);
        if !work.closes.is_empty() {
            let mut closed = Vec::with_capacity(work.closes.len());
            for (slot, conn, reason) in work.closes.drain(..) {
                tracing::debug!(pool = %self.name, slot = slot.index(), %reason, "closing a connection");
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
}
