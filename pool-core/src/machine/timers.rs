//! Deadlines: noting them as inputs add them, recomputing the earliest, what happens when
//! they pass (leases scanned for leaks and reclaim, idle connections reaped), and the
//! back-off between failed connects.

use std::time::{Duration, Instant};

use super::slots::SlotState;
use super::waiters::WaiterState;
use super::{Action, CloseReason, LeaseId, Machine};

impl<C, E> Machine<C, E> {
    /// Notes the leak and reclaim deadlines of a lease starting at `now`, if configured.
    pub(super) fn note_lease_deadlines(&mut self, now: Instant) {
        if let Some(t) = self.config.leak_threshold.and_then(|d| now.checked_add(d)) {
            self.note_deadline(t);
        }
        if let Some(t) = self.config.reclaim_after.and_then(|d| now.checked_add(d)) {
            self.note_deadline(t);
        }
    }

    pub(super) fn scan_leases(&mut self, now: Instant) {
        let (leak, reclaim) = (self.config.leak_threshold, self.config.reclaim_after);
        if leak.is_none() && reclaim.is_none() {
            return;
        }
        for (index, slot) in &mut self.slots {
            let SlotState::Leased {
                lease,
                since,
                leak_reported,
            } = &mut slot.state
            else {
                continue;
            };
            let held_for = now.saturating_duration_since(*since);
            let id = LeaseId {
                index: index as u32,
                serial: *lease,
            };
            if reclaim.is_some_and(|limit| held_for >= limit) {
                if leak.is_some() && !*leak_reported {
                    self.actions.push_back(Action::LeakSuspected {
                        lease: id,
                        held_for,
                    });
                }
                slot.state = SlotState::Abandoned { lease: *lease };
                self.in_use -= 1;
                self.abandoned += 1;
                self.actions.push_back(Action::Reclaimed {
                    lease: id,
                    held_for,
                });
            } else if leak.is_some_and(|limit| held_for >= limit) && !*leak_reported {
                *leak_reported = true;
                self.actions.push_back(Action::LeakSuspected {
                    lease: id,
                    held_for,
                });
            }
        }
    }

    pub(super) fn reap_idle(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.idle.len() {
            let index = self.idle[i];
            let slot = &self.slots[index as usize];
            let since = match slot.state {
                SlotState::Idle { since, .. } => since,
                _ => now,
            };
            let reason = if slot.expires.is_some_and(|t| t <= now) {
                Some(CloseReason::MaxLifetime)
            } else if self.idle.len() > self.config.min_idle
                && self
                    .config
                    .idle_timeout
                    .is_some_and(|d| now.saturating_duration_since(since) >= d)
            {
                Some(CloseReason::IdleTimeout)
            } else {
                None
            };
            match reason {
                Some(reason) => {
                    self.idle.remove(i);
                    self.retire_idle(index, reason);
                }
                None => i += 1,
            }
        }
    }

    /// The exact earliest deadline, recomputed from scratch.
    pub(super) fn earliest_deadline(&self) -> Option<Instant> {
        let mut earliest: Option<Instant> = None;
        let mut note = |t: Option<Instant>| {
            if let Some(t) = t {
                earliest = Some(earliest.map_or(t, |e| e.min(t)));
            }
        };
        let mut cursor = self.queue.head;
        while let Some(index) = cursor {
            let waiter = &self.waiters[index as usize];
            note(waiter.deadline);
            cursor = match waiter.state {
                WaiterState::Queued { next, .. } => next,
                _ => None,
            };
        }
        let idle_reapable = self.idle.len() > self.config.min_idle;
        for (_, slot) in &self.slots {
            match slot.state {
                SlotState::Idle { since, .. } => {
                    note(slot.expires);
                    if idle_reapable {
                        note(self.config.idle_timeout.and_then(|d| since.checked_add(d)));
                    }
                }
                SlotState::Leased {
                    since,
                    leak_reported,
                    ..
                } => {
                    if !leak_reported {
                        note(
                            self.config
                                .leak_threshold
                                .and_then(|d| since.checked_add(d)),
                        );
                    }
                    note(self.config.reclaim_after.and_then(|d| since.checked_add(d)));
                }
                _ => {}
            }
        }
        if !self.closed {
            note(self.backoff_until);
        }
        note(self.overload_deadline());
        earliest
    }

    pub(super) fn note_deadline(&mut self, t: Instant) {
        self.next_timeout = Some(self.next_timeout.map_or(t, |e| e.min(t)));
    }

    pub(super) fn backoff_delay(&mut self) -> Duration {
        let base = self.config.backoff_base;
        let exp = self.failures.saturating_sub(1).min(31);
        let delay = base
            .checked_mul(1 << exp)
            .unwrap_or(Duration::MAX)
            .min(self.config.backoff_max);
        // "Equal jitter": between half the delay and the whole of it.
        let half = delay / 2;
        half + self.rng.below(delay - half)
    }
}
