//! Waiters: the FIFO of tasks waiting for a connection (an intrusive list through the
//! waiter slab), resolving them (granted, timed out, failed, closed), and failing those a
//! fatal connect error leaves without hope.

use std::time::{Duration, Instant};

use super::{Action, Caller, LeaseId, Machine, Status, WaiterId};

/// A task waiting for a connection (or holding its outcome until it collects it).
pub(super) struct Waiter {
    pub(super) serial: u64,
    pub(super) enqueued: Instant,
    pub(super) deadline: Option<Instant>,
    pub(super) state: WaiterState,
    /// The task that waits, if the driver named it (`selfwait.rs`).
    pub(super) caller: Option<Caller>,
    /// A lease its task held when it queued (a self-wait).
    pub(super) self_wait: Option<LeaseId>,
}

/// Where a waiter stands: in the FIFO, or resolved and waiting to be collected.
pub(super) enum WaiterState {
    Queued {
        prev: Option<u32>,
        next: Option<u32>,
    },
    Granted {
        slot: u32,
    },
    TimedOut {
        waited: Duration,
        status: Status,
    },
    /// Failed by a fatal connect error (the machine's `fatal_error`), with the pool as it
    /// was when the error arrived.
    Failed {
        status: Status,
    },
    /// Shed by overload management (`overload.rs`) after waiting this long, with the pool
    /// as it was then.
    Shed {
        waited: Duration,
        status: Status,
    },
    /// Failed by a certain deadlock (`selfwait.rs`): the lease its task holds, and the pool
    /// as it was then.
    Deadlocked {
        held: LeaseId,
        status: Status,
    },
    Closed,
}

/// The FIFO of waiters still waiting, as an intrusive list through the waiter slab.
#[derive(Default)]
pub(super) struct Queue {
    pub(super) head: Option<u32>,
    pub(super) tail: Option<u32>,
    pub(super) len: usize,
}

impl<C, E> Machine<C, E> {
    pub(super) fn waiter(&self, id: WaiterId) -> Option<&Waiter> {
        self.waiters
            .get(id.index as usize)
            .filter(|w| w.serial == id.serial)
    }

    pub(super) fn enqueue(
        &mut self,
        now: Instant,
        deadline: Option<Instant>,
        caller: Option<Caller>,
        self_wait: Option<LeaseId>,
    ) -> WaiterId {
        let serial = self.serial();
        let prev = self.queue.tail;
        let entry = self.waiters.vacant_entry();
        // The waiter slab never holds more than u32::MAX entries in practice: each is a task.
        let index = entry.key() as u32;
        entry.insert(Waiter {
            serial,
            enqueued: now,
            deadline,
            state: WaiterState::Queued { prev, next: None },
            caller,
            self_wait,
        });
        match prev {
            Some(p) => {
                if let WaiterState::Queued { next, .. } = &mut self.waiters[p as usize].state {
                    *next = Some(index);
                }
            }
            None => self.queue.head = Some(index),
        }
        self.queue.tail = Some(index);
        self.queue.len += 1;
        if let Some(deadline) = deadline {
            self.note_deadline(deadline);
        }
        WaiterId { index, serial }
    }

    /// Removes a queued waiter from the FIFO (its state is then set by the caller).
    pub(super) fn unlink(&mut self, index: u32) {
        let WaiterState::Queued { prev, next } = self.waiters[index as usize].state else {
            return;
        };
        match prev {
            Some(p) => {
                if let WaiterState::Queued { next: n, .. } = &mut self.waiters[p as usize].state {
                    *n = next;
                }
            }
            None => self.queue.head = next,
        }
        match next {
            Some(n) => {
                if let WaiterState::Queued { prev: p, .. } = &mut self.waiters[n as usize].state {
                    *p = prev;
                }
            }
            None => self.queue.tail = prev,
        }
        self.queue.len -= 1;
        // Mark it unlinked so a second unlink is a no-op.
        self.waiters[index as usize].state = WaiterState::Closed;
    }

    /// Gives an unlinked waiter its outcome and asks the driver to wake it.
    pub(super) fn resolve(&mut self, index: u32, state: WaiterState) {
        let waiter = &mut self.waiters[index as usize];
        waiter.state = state;
        let id = WaiterId {
            index,
            serial: waiter.serial,
        };
        self.actions.push_back(Action::Wake { waiter: id });
    }

    /// Whether a task that would be waiter number `position` (0 for the head) can only be
    /// served by a connect that cannot succeed now: the last connect failed fatally, the
    /// back-off runs with no connect in flight, and the connections in use (each of which
    /// may come back) are all spoken for by waiters ahead of it.
    pub(super) fn waiting_is_hopeless(&self, now: Instant, position: usize) -> bool {
        self.fatal
            && self.opening == 0
            && self.backoff_until.is_some_and(|t| now < t)
            && position >= self.in_use
    }

    /// After a fatal connect error: fails every queued waiter beyond the first `in_use`
    /// (those may still be served by a connection coming back), each reporting the pool as
    /// the error found it (itself still counted as waiting).
    pub(super) fn fail_hopeless_waiters(&mut self) {
        let status = self.status();
        let mut cursor = self.queue.head;
        let mut position = 0;
        while let Some(index) = cursor {
            cursor = match self.waiters[index as usize].state {
                WaiterState::Queued { next, .. } => next,
                _ => None,
            };
            if position >= self.in_use {
                self.unlink(index);
                self.resolve(index, WaiterState::Failed { status });
            }
            position += 1;
        }
    }

    pub(super) fn expire_waiters(&mut self, now: Instant) {
        // Every waiter timing out now reports the pool as it was at this instant.
        let status = self.status();
        self.resolve_queued(|waiter| {
            waiter.deadline.is_some_and(|d| d <= now).then(|| {
                let waited = now.saturating_duration_since(waiter.enqueued);
                WaiterState::TimedOut { waited, status }
            })
        });
    }

    /// Walks the queue in order and resolves each waiter `decide` gives an outcome, taking
    /// it out of the queue; the others keep their places.
    pub(super) fn resolve_queued(
        &mut self,
        mut decide: impl FnMut(&Waiter) -> Option<WaiterState>,
    ) {
        let mut cursor = self.queue.head;
        while let Some(index) = cursor {
            let waiter = &self.waiters[index as usize];
            cursor = match waiter.state {
                WaiterState::Queued { next, .. } => next,
                _ => None,
            };
            if let Some(outcome) = decide(waiter) {
                self.unlink(index);
                self.resolve(index, outcome);
            }
        }
    }
}
