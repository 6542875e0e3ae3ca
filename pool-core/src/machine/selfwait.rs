//! A task waiting on itself: an acquire by a task that already holds a lease of this pool
//! (a self-wait), and the certain deadlock, when every lease out is held by a task that
//! waits. See `ARCHITECTURE.md`, "A task waiting on itself".
//!
//! The machine learns who asks with each acquire ([`Caller`], kept in the waiter) and asks
//! who holds each lease through a lookup the driver passes with the acquire: leases change
//! hands without the machine (the return lane lends them, a guard moves to another task), so
//! the driver keeps that record itself, lock-free, and the machine reads it only when a
//! named task is about to wait. The decision stays pure: the same state and the same inputs
//! give the same answer.
//!
//! A certain deadlock is decided only when a task that holds a lease is about to wait. It
//! can only begin then: a waiter whose task holds nothing adds no lease to those held by
//! waiting tasks, and every other input either frees capacity (a close, a failed connect,
//! a grown pool) or hands a connection on. Two ways in are not looked at, and so missed (a
//! missed report is better than a false failure): a lease moving to a task that already
//! waits, and a waiter being served while another waiter of its task still waits.

use super::slots::SlotState;
use super::waiters::WaiterState;
use super::{AcquireError, Caller, Deadlock, LeaseId, Machine, Status, WaiterId};

impl<C, E> Machine<C, E> {
    /// The lease a waiting task held when it queued, if it held one (a self-wait): the
    /// driver reports it. `None` for an unknown waiter too.
    pub fn self_wait(&self, waiter: WaiterId) -> Option<LeaseId> {
        self.waiter(waiter).and_then(|w| w.self_wait)
    }

    /// Before `caller` waits: whether it holds a lease (preferring one acquired in the
    /// context it would wait in), and whether waiting is a certain deadlock, or refused by
    /// `self_wait_error`. A certain deadlock also fails the queued waiters whose tasks hold
    /// leases.
    pub(super) fn self_wait_check(
        &mut self,
        caller: Caller,
        holders: &impl Fn(LeaseId) -> Option<Caller>,
    ) -> Result<Option<LeaseId>, AcquireError<E>> {
        let mut any = None;
        let mut same_context = None;
        for (index, slot) in &self.slots {
            let SlotState::Leased { lease, .. } = slot.state else {
                continue;
            };
            let id = LeaseId {
                index: index as u32,
                serial: lease,
            };
            let Some(holder) = holders(id).filter(|h| h.task == caller.task) else {
                continue;
            };
            any.get_or_insert(id);
            if holder.context.is_some() && holder.context == caller.context {
                same_context = Some(id);
                break;
            }
        }
        let Some(held) = same_context.or(any) else {
            return Ok(None);
        };
        let refuse = if self.config.fail_deadlocks && self.certain_deadlock(caller, holders) {
            let status = self.waiting_status();
            self.fail_deadlocked(holders, status);
            Some(true)
        } else if self.config.self_wait_error && same_context.is_some() {
            Some(false)
        } else {
            None
        };
        match refuse {
            Some(certain) => Err(AcquireError::Deadlock(Deadlock {
                held,
                certain,
                status: self.waiting_status(),
            })),
            None => Ok(Some(held)),
        }
    }

    /// The status with one more task counted as waiting (the one being refused).
    fn waiting_status(&self) -> Status {
        let mut status = self.status();
        status.waiting += 1;
        status
    }

    /// Whether, with `newcomer` waiting too, no lease can ever come back: the pool is open,
    /// at its size, with nothing opening, closing or idle, no lease can be reclaimed, and
    /// every slot is leased to a holder known in its context that waits (queued, or the
    /// newcomer) in that same context.
    pub(super) fn certain_deadlock(
        &self,
        newcomer: Caller,
        holders: &impl Fn(LeaseId) -> Option<Caller>,
    ) -> bool {
        if self.closed
            || self.config.reclaim_after.is_some()
            || self.opening > 0
            || self.closing > 0
            || !self.idle.is_empty()
            || self.in_use == 0
            || self.size() < self.config.max_size
        {
            return false;
        }
        self.slots.iter().all(|(index, slot)| {
            let SlotState::Leased { lease, .. } = slot.state else {
                return false;
            };
            let id = LeaseId {
                index: index as u32,
                serial: lease,
            };
            match holders(id) {
                Some(holder) if holder.context.is_some() => {
                    holder == newcomer || self.is_queued(holder)
                }
                _ => false,
            }
        })
    }

    /// Whether a waiter of `caller` (same task, same context) is queued.
    fn is_queued(&self, caller: Caller) -> bool {
        let mut cursor = self.queue.head;
        while let Some(index) = cursor {
            let waiter = &self.waiters[index as usize];
            if waiter.caller == Some(caller) {
                return true;
            }
            cursor = match waiter.state {
                WaiterState::Queued { next, .. } => next,
                _ => None,
            };
        }
        false
    }

    /// After a certain deadlock: fails every queued waiter whose caller holds a lease (the
    /// others are served once those tasks give their connections back).
    fn fail_deadlocked(&mut self, holders: &impl Fn(LeaseId) -> Option<Caller>, status: Status) {
        let mut cursor = self.queue.head;
        while let Some(index) = cursor {
            let waiter = &self.waiters[index as usize];
            cursor = match waiter.state {
                WaiterState::Queued { next, .. } => next,
                _ => None,
            };
            let Some(caller) = waiter.caller else {
                continue;
            };
            let held = self
                .slots
                .iter()
                .find_map(|(slot_index, slot)| match slot.state {
                    SlotState::Leased { lease, .. } => {
                        let id = LeaseId {
                            index: slot_index as u32,
                            serial: lease,
                        };
                        (holders(id) == Some(caller)).then_some(id)
                    }
                    _ => None,
                });
            if let Some(held) = held {
                self.unlink(index);
                self.resolve(index, WaiterState::Deadlocked { held, status });
            }
        }
    }
}
