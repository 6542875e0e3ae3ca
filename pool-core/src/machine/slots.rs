//! Slots: the units of `max_size`, their states and counts, leasing an idle connection,
//! handing an available one to a waiter or to idle, closing, and reserving slots for
//! connects (`replenish`).

use std::time::{Duration, Instant};

use super::{Action, CloseReason, Lease, LeaseId, Machine, SlotId, WaiterState};

/// One unit of `max_size`: a connection opening, open (idle, granted, leased) or closing.
pub(super) struct Slot<C> {
    pub(super) serial: u64,
    pub(super) state: SlotState<C>,
    /// When the connection must be retired (its lifetime, jitter applied); set on connect.
    pub(super) expires: Option<Instant>,
}

/// Where a slot's connection is; [`Machine::set_state`] keeps the counts in step with it.
pub(super) enum SlotState<C> {
    Opening,
    Idle {
        conn: C,
        since: Instant,
    },
    Granted {
        conn: C,
    },
    Leased {
        lease: u64,
        since: Instant,
        leak_reported: bool,
    },
    Abandoned {
        lease: u64,
    },
    Closing {
        counted: bool,
    },
}

impl<C, E> Machine<C, E> {
    pub(super) fn slot(&self, id: SlotId) -> Option<&Slot<C>> {
        self.slots
            .get(id.index as usize)
            .filter(|slot| slot.serial == id.serial)
    }

    /// The slot of an outstanding lease (leased or reclaimed).
    pub(super) fn lease_slot(&self, id: LeaseId) -> Option<u32> {
        match self.slots.get(id.index as usize)?.state {
            SlotState::Leased { lease, .. } | SlotState::Abandoned { lease, .. }
                if lease == id.serial =>
            {
                Some(id.index)
            }
            _ => None,
        }
    }

    /// Replaces a slot's state, keeping the counters in step; the one place they change
    /// (besides slot removal, which callers pair with the state they remove). Inlined: once
    /// the driver's connections were boxed, the compiler stopped inlining it on its own,
    /// which cost a hand-off about 140 instructions.
    #[inline]
    pub(super) fn set_state(&mut self, index: u32, state: SlotState<C>) -> SlotState<C> {
        let slot = &mut self.slots[index as usize];
        let old = std::mem::replace(&mut slot.state, state);
        match &old {
            SlotState::Opening => self.opening -= 1,
            SlotState::Idle { .. } => {} // the idle deque is maintained by its callers
            SlotState::Granted { .. } | SlotState::Leased { .. } => self.in_use -= 1,
            SlotState::Abandoned { .. } => self.abandoned -= 1,
            SlotState::Closing { counted } => {
                if *counted {
                    self.closing -= 1;
                }
            }
        }
        match &slot.state {
            SlotState::Opening => self.opening += 1,
            SlotState::Idle { .. } => {}
            SlotState::Granted { .. } | SlotState::Leased { .. } => self.in_use += 1,
            SlotState::Abandoned { .. } => self.abandoned += 1,
            SlotState::Closing { counted } => {
                if *counted {
                    self.closing += 1;
                }
            }
        }
        old
    }

    /// Removes a slot that is not idle, keeping the counters in step.
    pub(super) fn remove_slot(&mut self, index: u32) {
        self.set_state(index, SlotState::Closing { counted: false });
        self.slots.remove(index as usize);
    }

    /// Leases the most recently used idle connection, closing any found past their lifetime.
    pub(super) fn lease_idle(&mut self, now: Instant) -> Option<(Lease, C)> {
        while let Some(index) = self.idle.pop_back() {
            if self.slots[index as usize].expires.is_some_and(|t| t <= now) {
                self.retire_idle(index, CloseReason::MaxLifetime);
                self.replenish(Some(now));
                continue;
            }
            let serial = self.serial();
            let leased = SlotState::Leased {
                lease: serial,
                since: now,
                leak_reported: false,
            };
            // Idle to leased in one step (the hot path of every acquire): only `in_use`
            // changes, since idle connections are counted by the idle deque.
            let slot = &mut self.slots[index as usize];
            let expires = slot.expires;
            match std::mem::replace(&mut slot.state, leased) {
                SlotState::Idle { conn, .. } => {
                    self.in_use += 1;
                    self.note_lease_deadlines(now);
                    self.observe_wait(now, Duration::ZERO);
                    return Some((
                        Lease {
                            id: LeaseId { index, serial },
                            expires,
                        },
                        conn,
                    ));
                }
                // Only idle slots are in the idle deque.
                other => slot.state = other,
            }
        }
        None
    }

    /// Marks a slot (whose connection the caller now holds) as leased.
    pub(super) fn lease(&mut self, index: u32, now: Instant) -> Lease {
        let serial = self.serial();
        self.set_state(
            index,
            SlotState::Leased {
                lease: serial,
                since: now,
                leak_reported: false,
            },
        );
        self.note_lease_deadlines(now);
        Lease {
            id: LeaseId { index, serial },
            expires: self.slots[index as usize].expires,
        }
    }

    /// A connection is available in slot `index` (whose state the caller has taken out):
    /// hand it to the oldest waiter, park it idle, or close it.
    pub(super) fn dispatch(&mut self, index: u32, conn: C, now: Instant) {
        let reason = if self.closed {
            Some(CloseReason::PoolClosed)
        } else if self.slots[index as usize].expires.is_some_and(|t| t <= now) {
            Some(CloseReason::MaxLifetime)
        } else if self.live() > self.config.max_size {
            Some(CloseReason::Surplus)
        } else {
            None
        };
        if let Some(reason) = reason {
            return self.start_close(index, conn, reason);
        }
        if let Some(waiter) = self.queue.head {
            // Only load shedding looks at the wait; measuring it (an `Instant` subtraction,
            // about as dear as the rest of the dispatch) is skipped without it.
            if self.config.queue_target.is_some() {
                let waited = now.saturating_duration_since(self.waiters[waiter as usize].enqueued);
                self.observe_wait(now, waited);
            }
            self.unlink(waiter);
            self.set_state(index, SlotState::Granted { conn });
            self.resolve(waiter, WaiterState::Granted { slot: index });
        } else {
            self.set_state(index, SlotState::Idle { conn, since: now });
            self.park_idle(index, now);
            self.observe_wait(now, Duration::ZERO);
        }
    }

    /// Puts slot `index`, just set idle, at the back of the idle deque and notes the
    /// deadlines it brings (its lifetime, the idle timeout of the oldest idle connection).
    pub(super) fn park_idle(&mut self, index: u32, now: Instant) {
        self.idle.push_back(index);
        // Its lifetime was noted at connect, but a `handle_timeout` since then (while it
        // was leased) recomputed the deadline without it: note it again now it is idle.
        if let Some(expires) = self.slots[index as usize].expires {
            self.note_deadline(expires);
        }
        if let Some(timeout) = self.config.idle_timeout {
            let len = self.idle.len();
            if len > self.config.min_idle {
                // Reaping starts with the oldest idle connection (the front), whose
                // deadline is the earliest; it may have been kept for `min_idle` until
                // now, with no deadline noted, so note its deadline, not this one's.
                let oldest = match self.idle.front() {
                    Some(&i) if len > 1 => match self.slots.get(i as usize) {
                        Some(Slot {
                            state: SlotState::Idle { since, .. },
                            ..
                        }) => (*since).min(now),
                        _ => now,
                    },
                    _ => now,
                };
                if let Some(t) = oldest.checked_add(timeout) {
                    self.note_deadline(t);
                }
            }
        }
    }

    /// Closes the connection of slot `index`, whose state the caller has taken out.
    pub(super) fn start_close(&mut self, index: u32, conn: C, reason: CloseReason) {
        let counted = reason != CloseReason::Reclaimed;
        self.set_state(index, SlotState::Closing { counted });
        let slot = SlotId {
            index,
            serial: self.slots[index as usize].serial,
        };
        self.actions.push_back(Action::Close { slot, conn, reason });
    }

    /// Closes an idle slot already removed from the idle deque.
    pub(super) fn retire_idle(&mut self, index: u32, reason: CloseReason) {
        if let SlotState::Idle { conn, .. } = self.set_state(index, SlotState::Opening) {
            self.start_close(index, conn, reason);
        }
    }

    /// Reserves slots and asks for connects while waiters or `min_idle` want them, within
    /// `max_size`, one at a time while connects are failing, none during a back-off.
    pub(super) fn replenish(&mut self, now: Option<Instant>) {
        if self.closed {
            return;
        }
        let wanted = self.queue.len + self.config.min_idle.saturating_sub(self.idle.len());
        if wanted <= self.opening {
            return;
        }
        if let Some(until) = self.backoff_until {
            if now.is_none_or(|now| now < until) {
                self.note_deadline(until);
                return;
            }
        }
        let mut room = self.config.max_size.saturating_sub(self.size());
        if self.failures > 0 {
            room = room.min(1usize.saturating_sub(self.opening));
        }
        for _ in 0..room.min(wanted - self.opening) {
            let serial = self.serial();
            let index = self.slots.insert(Slot {
                serial,
                state: SlotState::Opening,
                expires: None,
            });
            self.opening += 1;
            let Ok(index) = u32::try_from(index) else {
                // Unreachable: max_size is capped at MAX_SIZE_LIMIT, far below u32::MAX.
                self.opening -= 1;
                self.slots.remove(index);
                return;
            };
            self.actions.push_back(Action::Open {
                slot: SlotId { index, serial },
            });
        }
    }
}
