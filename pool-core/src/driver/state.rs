//! Everything behind the pool's lock: the machine and what must change with it atomically.

use std::backtrace::Backtrace;
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use super::instruments::Counted;
use super::metrics::Metrics;
use super::runtime::Manager;
use super::shared::{ConnOf, ErrorOf};
use crate::machine::{LeaseId, Machine, WaiterId};

/// Everything behind the lock: the machine and what must change with it atomically.
pub(crate) struct State<M: Manager> {
    pub(crate) machine: Machine<ConnOf<M>, ErrorOf<M>>,
    /// The waker of each waiting task, keyed by waiter index.
    wakers: Vec<Option<Waker>>,
    /// Where each outstanding lease was acquired, keyed by lease index (leak detection).
    backtraces: Vec<Option<Arc<Backtrace>>>,
    /// The instant the maintenance task sleeps until.
    pub(crate) armed: Option<Instant>,
    pub(crate) metrics: Metrics,
    /// The connection counts last emitted to the instruments (see `instruments.rs`).
    pub(crate) counted: Counted,
    /// Connections the machine refused while under the lock, dropped after it.
    pub(crate) rejected: Vec<ConnOf<M>>,
}

impl<M: Manager> State<M> {
    pub(crate) fn new(machine: Machine<ConnOf<M>, ErrorOf<M>>) -> Self {
        Self {
            machine,
            wakers: Vec::new(),
            backtraces: Vec::new(),
            armed: None,
            metrics: Metrics::default(),
            counted: Counted::default(),
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

    /// Where the lease at `index` was acquired, if it was recorded.
    pub(crate) fn backtrace(&self, lease: LeaseId) -> Option<Arc<Backtrace>> {
        self.backtraces.get(lease.index()).cloned().flatten()
    }

    /// Whether the machine's next deadline moved earlier than the one the maintenance task
    /// sleeps until (and notes it as armed).
    pub(crate) fn rearm(&mut self) -> bool {
        let next = self.machine.poll_timeout();
        if next.is_some() && (self.armed.is_none() || next < self.armed) {
            self.armed = next;
            return true;
        }
        false
    }
}
