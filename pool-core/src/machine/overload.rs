//! Overload: CoDel-style queue management (after Elixir's DBConnection) and the bound on the
//! number of waiters. See `ARCHITECTURE.md`, "Overload".
//!
//! With a `queue_target`, the machine watches how long acquires wait. Time is cut into
//! intervals of `queue_interval`, each ending at the first event at or after its end (a
//! waiter served, a connection going idle, an acquire leasing at once or queueing, a
//! `handle_timeout`), and while anybody waits also at its end, which the machine then asks
//! for as a deadline. Within an interval it keeps the shortest wait that ended in a
//! connection (an acquire served at once, or a connection going idle because nobody waits,
//! counts as a wait of zero). When the interval ends:
//!
//! - if that shortest wait exceeded the target, every wait in the interval did: the pool is
//!   **overloaded** for the next interval;
//! - if nobody was served at all, the oldest waiter's wait so far stands in for it (a queue
//!   that made no progress for a whole interval is overloaded once its head has waited
//!   longer than the target);
//! - otherwise (or if nobody waited) it is not.
//!
//! While overloaded, a waiter is **shed** (failed with [`AcquireError::Shed`]) as soon as it
//! has waited twice the target: `poll_timeout` includes that instant, and `handle_timeout`
//! sheds it. Shedding only removes waiters from the FIFO, so those that stay keep their
//! order; and since a waiter never waits while a connection is idle, no waiter is shed while
//! one could be served. Nothing here reads a clock: every input passes `now`.
//!
//! [`AcquireError::Shed`]: super::AcquireError::Shed

use std::time::{Duration, Instant};

use super::waiters::WaiterState;
use super::{Machine, Shed};

/// The state of the queue management; inert without a `queue_target`.
#[derive(Debug, Default)]
pub(super) struct Overload {
    /// When the current interval ends; `None` until the first event starts one.
    interval_end: Option<Instant>,
    /// The shortest wait that ended in a connection during the current interval.
    min_wait: Option<Duration>,
    /// The last interval's waits all exceeded the target: waiters are shed at twice it.
    overloaded: bool,
}

impl<C, E> Machine<C, E> {
    /// Whether the pool counts as overloaded (waiters are shed at twice the queue target).
    pub fn is_overloaded(&self) -> bool {
        self.overload.overloaded
    }

    /// How long a waiter may wait before it is shed, while the pool is overloaded.
    fn shed_after(&self) -> Option<Duration> {
        match self.config.queue_target {
            Some(target) if self.overload.overloaded => Some(target.saturating_mul(2)),
            _ => None,
        }
    }

    /// A task got a connection after waiting `wait` (zero if it never waited, or if the
    /// connection went idle because nobody waited).
    #[inline]
    pub(super) fn observe_wait(&mut self, now: Instant, wait: Duration) {
        if self.config.queue_target.is_none() {
            return;
        }
        self.roll_interval(now);
        let min = &mut self.overload.min_wait;
        *min = Some(min.map_or(wait, |m| m.min(wait)));
    }

    /// Ends the current interval if `now` is at or past its end, deciding whether the pool
    /// is overloaded for the next one; starts the first interval.
    pub(super) fn roll_interval(&mut self, now: Instant) {
        let (Some(target), interval) = (self.config.queue_target, self.config.queue_interval)
        else {
            return;
        };
        match self.overload.interval_end {
            Some(end) if now < end => return,
            Some(_) => {
                // With nobody served, the oldest waiter's wait so far stands in.
                let head = self
                    .queue
                    .head
                    .map(|i| now.saturating_duration_since(self.waiters[i as usize].enqueued));
                let observed = self.overload.min_wait.take().or(head);
                self.overload.overloaded = observed.is_some_and(|w| w > target);
            }
            None => {}
        }
        self.overload.interval_end = now.checked_add(interval);
        if self.queue.head.is_some() {
            self.note_overload_deadlines();
        }
    }

    /// Notes the end of the interval and, while overloaded, the earliest instant a queued
    /// waiter is due to be shed.
    fn note_overload_deadlines(&mut self) {
        if let Some(end) = self.overload.interval_end {
            self.note_deadline(end);
        }
        if let Some(after) = self.shed_after() {
            if let Some(t) = self.earliest_shed(after) {
                self.note_deadline(t);
            }
        }
    }

    /// The earliest instant a queued waiter reaches `after` of waiting.
    fn earliest_shed(&self, after: Duration) -> Option<Instant> {
        let mut earliest: Option<Instant> = None;
        let mut cursor = self.queue.head;
        while let Some(index) = cursor {
            let waiter = &self.waiters[index as usize];
            if let Some(t) = waiter.enqueued.checked_add(after) {
                earliest = Some(earliest.map_or(t, |e| e.min(t)));
            }
            cursor = match waiter.state {
                WaiterState::Queued { next, .. } => next,
                _ => None,
            };
        }
        earliest
    }

    /// After a waiter queued at `enqueued`: note the deadlines its wait brings.
    pub(super) fn note_waiter_overload_deadlines(&mut self, enqueued: Instant) {
        if self.config.queue_target.is_none() {
            return;
        }
        if let Some(end) = self.overload.interval_end {
            self.note_deadline(end);
        }
        if let Some(t) = self
            .shed_after()
            .and_then(|after| enqueued.checked_add(after))
        {
            self.note_deadline(t);
        }
    }

    /// The overload deadlines, for `earliest_deadline`: the interval's end while anybody
    /// waits, and each waiter's shedding instant while overloaded.
    pub(super) fn overload_deadline(&self) -> Option<Instant> {
        if self.config.queue_target.is_none() || self.queue.head.is_none() {
            return None;
        }
        let shed = self
            .shed_after()
            .and_then(|after| self.earliest_shed(after));
        match (self.overload.interval_end, shed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// While overloaded: fails every queued waiter that has waited twice the queue target,
    /// each reporting the pool as it was at this instant (itself counted as waiting). The
    /// others keep their places.
    pub(super) fn shed_waiters(&mut self, now: Instant) {
        let Some(after) = self.shed_after() else {
            return;
        };
        let status = self.status();
        self.resolve_queued(|waiter| {
            let waited = now.saturating_duration_since(waiter.enqueued);
            (waited >= after).then_some(WaiterState::Shed { waited, status })
        });
    }

    /// The error of a shed waiter.
    pub(super) fn shed_error(&self, waited: Duration, status: super::Status) -> Shed {
        Shed {
            waited,
            queue_target: self.config.queue_target.unwrap_or_default(),
            queue_interval: self.config.queue_interval,
            status,
        }
    }
}
