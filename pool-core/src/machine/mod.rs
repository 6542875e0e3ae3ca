//! The pure pool state machine.
//!
//! [`Machine`] owns idle connections and the bookkeeping of every slot and waiter. It performs
//! no IO, reads no clock (every input that needs the time takes `now`), never yields, never
//! calls user code and never panics: every transition is synchronous and complete before the
//! caller regains control, so nothing can observe it half done (the bug of seed 003, where a
//! pool of 2 opened 3 connections because it yielded between connecting and counting).
//!
//! # Using a machine
//!
//! Its methods come in four groups, called in this order:
//!
//! 1. **Inputs**: a task asks ([`acquire`](Machine::acquire), [`try_acquire`](Machine::try_acquire)),
//!    collects ([`take`](Machine::take)) or gives up ([`cancel`](Machine::cancel)); a task gives
//!    back ([`release`](Machine::release), [`detach`](Machine::detach)); the driver reports
//!    ([`handle_connected`](Machine::handle_connected),
//!    [`handle_connect_failed`](Machine::handle_connect_failed),
//!    [`handle_closed`](Machine::handle_closed), [`handle_timeout`](Machine::handle_timeout)).
//! 2. **Commands**: [`close`](Machine::close), [`set_max_size`](Machine::set_max_size).
//! 3. **Outputs**, drained after every input or command, before the next:
//!    [`poll_action`](Machine::poll_action) until it returns `None`, then
//!    [`poll_timeout`](Machine::poll_timeout), the instant by which
//!    [`handle_timeout`](Machine::handle_timeout) must be called next.
//! 4. **Getters**: [`status`](Machine::status), [`is_closed`](Machine::is_closed),
//!    [`is_drained`](Machine::is_drained), [`config`](Machine::config).
//!
//! ```
//! use std::time::{Duration, Instant};
//! use pool_core::machine::{Action, Acquired, Config, Machine, Release};
//!
//! let mut pool: Machine<&str, String> = Machine::new(Config::new(1)).unwrap();
//! let now = Instant::now();
//! let Acquired::Waiting(waiter) = pool.acquire(now, None).unwrap() else { unreachable!() };
//! // The machine reserved a slot and asks for a connection for it.
//! let Some(Action::Open { slot }) = pool.poll_action() else { unreachable!() };
//! pool.handle_connected(slot, "conn #1", now).unwrap();
//! // ...which goes straight to the waiter.
//! assert!(matches!(pool.poll_action(), Some(Action::Wake { waiter: w }) if w == waiter));
//! let (lease, conn) = pool.take(waiter, now).unwrap().unwrap();
//! assert_eq!(pool.status().in_use, 1);
//! pool.release(lease, conn, Release::Reuse, now).unwrap();
//! assert_eq!(pool.status().idle, 1);
//! ```

mod config;
mod types;

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use slab::Slab;

pub use config::{Config, ConfigError, MAX_SIZE_LIMIT};
pub use types::{
    AcquireError, Acquired, Action, CloseReason, Failure, Lease, LeaseId, Rejected, Release,
    SlotId, Status, TimedOut, WaiterId,
};

/// The pool state machine, generic over the connection `C` and the connect error `E`.
///
/// See the [module documentation](self) for the calling protocol.
pub struct Machine<C, E> {
    config: Config,
    slots: Slab<Slot<C>>,
    waiters: Slab<Waiter>,
    /// The FIFO of waiters still waiting, as an intrusive list through `waiters`.
    queue: Queue,
    /// Indices of idle slots; the back is the most recently used (handed out first).
    idle: VecDeque<u32>,
    actions: VecDeque<Action<C>>,
    opening: usize,
    in_use: usize,
    closing: usize,
    abandoned: usize,
    next_serial: u64,
    closed: bool,
    drained_reported: bool,
    /// Failed connects since the last success, counted once per outage step: connects that
    /// were in flight together when one of them failed count as that one failure.
    failures: u32,
    /// The first slot serial a failure counts from: slots reserved before the last counted
    /// failure were in flight with it, and their failures are the same outage.
    outage_mark: u64,
    backoff_until: Option<Instant>,
    last_connect_error: Option<E>,
    /// The last connect failed with an error that waiting cannot heal ([`Failure::Fatal`]).
    fatal: bool,
    /// The last fatal connect error, kept for the waiters it failed until they collect it.
    fatal_error: Option<E>,
    /// A lower bound of the earliest deadline: exact after `handle_timeout`, lowered by every
    /// input that adds a deadline, never raised before the next `handle_timeout`.
    next_timeout: Option<Instant>,
    rng: SplitMix64,
}

struct Slot<C> {
    serial: u64,
    state: SlotState<C>,
    /// When the connection must be retired (its lifetime, jitter applied); set on connect.
    expires: Option<Instant>,
}

enum SlotState<C> {
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

struct Waiter {
    serial: u64,
    enqueued: Instant,
    deadline: Option<Instant>,
    state: WaiterState,
}

enum WaiterState {
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
    Closed,
}

#[derive(Default)]
struct Queue {
    head: Option<u32>,
    tail: Option<u32>,
    len: usize,
}

impl<C, E> Machine<C, E> {
    /// Builds a machine; it starts by asking for `min_idle` connections.
    ///
    /// # Errors
    /// The [`ConfigError`] of [`Config::validate`].
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        let capacity = config.max_size.min(1024);
        let mut machine = Self {
            rng: SplitMix64(config.seed),
            config,
            slots: Slab::with_capacity(capacity),
            waiters: Slab::with_capacity(capacity),
            queue: Queue::default(),
            idle: VecDeque::with_capacity(capacity),
            actions: VecDeque::with_capacity(capacity + 4),
            opening: 0,
            in_use: 0,
            closing: 0,
            abandoned: 0,
            next_serial: 1,
            closed: false,
            drained_reported: false,
            failures: 0,
            outage_mark: 0,
            backoff_until: None,
            last_connect_error: None,
            fatal: false,
            fatal_error: None,
            next_timeout: None,
        };
        machine.replenish(None);
        Ok(machine)
    }

    // ----- getters -------------------------------------------------------------------------

    /// The configuration in force (`max_size` follows [`set_max_size`](Self::set_max_size)).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The pool's counts right now.
    pub fn status(&self) -> Status {
        Status {
            max_size: self.config.max_size,
            size: self.size(),
            idle: self.idle.len(),
            in_use: self.in_use,
            opening: self.opening,
            closing: self.closing,
            waiting: self.queue.len,
            abandoned: self.abandoned,
        }
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether the machine is closed and no counted connection remains (opening, open or
    /// closing). Reclaimed leases that never came back do not hold it up.
    pub fn is_drained(&self) -> bool {
        self.closed && self.size() == 0
    }

    /// Whether a connection released now for reuse would simply go idle: nobody waits, the
    /// pool is open and not over its size (only the connection's own lifetime, or a
    /// reclaimed lease, could still close it). A driver may then keep returned connections
    /// outside the machine and lend them again itself, as long as this holds (see
    /// [`release`](Self::release)).
    pub fn release_goes_idle(&self) -> bool {
        self.queue.head.is_none() && !self.closed && self.live() <= self.config.max_size
    }

    /// The most recent connect error since the last successful connect.
    pub fn last_connect_error(&self) -> Option<&E> {
        self.last_connect_error.as_ref()
    }

    /// The connections the machine holds right now: idle ones, and ones granted to a waiter
    /// that has not taken them yet. For inspection and tests.
    pub fn held_connections(&self) -> impl Iterator<Item = &C> + '_ {
        self.slots.iter().filter_map(|(_, slot)| match &slot.state {
            SlotState::Idle { conn, .. } | SlotState::Granted { conn } => Some(conn),
            _ => None,
        })
    }

    fn size(&self) -> usize {
        self.idle.len() + self.in_use + self.opening + self.closing
    }

    /// The connections not on their way out: `size` less those closing. A pool over its
    /// `max_size` (after a shrink) closes only the live surplus.
    fn live(&self) -> usize {
        self.idle.len() + self.in_use + self.opening
    }

    // ----- inputs: tasks -------------------------------------------------------------------

    /// A task asks for a connection, waiting at most until `deadline`.
    ///
    /// An idle connection is leased at once ([`Acquired::Ready`]); otherwise the task joins
    /// the back of the FIFO as a waiter ([`Acquired::Waiting`]) and, if there is room, a slot
    /// is reserved and an [`Action::Open`] emitted for it.
    ///
    /// # Errors
    /// [`AcquireError::Closed`] after [`close`](Self::close); [`AcquireError::TimedOut`] if no
    /// connection is idle and `deadline` is not after `now`.
    pub fn acquire(
        &mut self,
        now: Instant,
        deadline: Option<Instant>,
    ) -> Result<Acquired<C>, AcquireError<E>>
    where
        E: Clone,
    {
        if self.closed {
            return Err(AcquireError::Closed);
        }
        if let Some((lease, conn)) = self.lease_idle(now) {
            if self.config.min_idle > 0 {
                self.replenish(Some(now));
            }
            return Ok(Acquired::Ready(lease, conn));
        }
        if deadline.is_some_and(|d| d <= now) {
            let mut status = self.status();
            status.waiting += 1;
            return Err(AcquireError::TimedOut(TimedOut {
                waited: Duration::ZERO,
                status,
                last_connect_error: self.last_connect_error.clone(),
            }));
        }
        if self.waiting_is_hopeless(now, self.queue.len) {
            if let Some(error) = self.fatal_error.clone() {
                let mut status = self.status();
                status.waiting += 1;
                return Err(AcquireError::ConnectFailed(error, status));
            }
        }
        let waiter = self.enqueue(now, deadline);
        self.replenish(Some(now));
        Ok(Acquired::Waiting(waiter))
    }

    /// Leases an idle connection if there is one; never waits and never opens one for the
    /// caller. Like [`acquire`](Self::acquire), taking an idle connection may ask for a
    /// replacement ([`Action::Open`]) to keep `min_idle`.
    ///
    /// # Errors
    /// [`AcquireError::Closed`] after [`close`](Self::close); [`AcquireError::Exhausted`] with
    /// the pool's status when no connection is idle.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(Lease, C), AcquireError<E>> {
        if self.closed {
            return Err(AcquireError::Closed);
        }
        let leased = self.lease_idle(now);
        if leased.is_some() && self.config.min_idle > 0 {
            self.replenish(Some(now));
        }
        leased.ok_or_else(|| AcquireError::Exhausted(self.status()))
    }

    /// Collects a waiter's outcome: `Ok(None)` while it still waits; otherwise the waiter is
    /// done and its id becomes unknown.
    ///
    /// # Errors
    /// [`AcquireError::TimedOut`] once its deadline passed, [`AcquireError::Closed`] once the
    /// machine closed, [`AcquireError::UnknownWaiter`] for an id already taken or cancelled.
    pub fn take(
        &mut self,
        waiter: WaiterId,
        now: Instant,
    ) -> Result<Option<(Lease, C)>, AcquireError<E>>
    where
        E: Clone,
    {
        let Some(w) = self.waiter(waiter) else {
            return Err(AcquireError::UnknownWaiter(waiter));
        };
        match w.state {
            WaiterState::Queued { .. } => Ok(None),
            WaiterState::Granted { slot } => {
                self.waiters.remove(waiter.index as usize);
                let conn = match self.set_state(slot, SlotState::Opening) {
                    SlotState::Granted { conn } => conn,
                    // The machine keeps a granted waiter's slot Granted until it is taken or
                    // cancelled; anything else is a bug, which this never turns into a panic.
                    other => {
                        self.set_state(slot, other);
                        return Err(AcquireError::UnknownWaiter(waiter));
                    }
                };
                Ok(Some((self.lease(slot, now), conn)))
            }
            WaiterState::TimedOut { waited, status } => {
                self.waiters.remove(waiter.index as usize);
                Err(AcquireError::TimedOut(TimedOut {
                    waited,
                    status,
                    last_connect_error: self.last_connect_error.clone(),
                }))
            }
            WaiterState::Failed { status } => {
                self.waiters.remove(waiter.index as usize);
                match self.fatal_error.clone() {
                    Some(error) => Err(AcquireError::ConnectFailed(error, status)),
                    // A waiter is only failed with a fatal error kept here.
                    None => Err(AcquireError::Closed),
                }
            }
            WaiterState::Closed => {
                self.waiters.remove(waiter.index as usize);
                Err(AcquireError::Closed)
            }
        }
    }

    /// A waiter gives up. If a connection had already been granted to it, the connection goes
    /// to the next waiter (or back to idle) in this same call, so nothing is lost.
    ///
    /// Returns whether the id was known; cancelling an unknown id is a no-op.
    pub fn cancel(&mut self, waiter: WaiterId, now: Instant) -> bool {
        let Some(w) = self.waiter(waiter) else {
            return false;
        };
        match w.state {
            WaiterState::Queued { .. } => {
                self.unlink(waiter.index);
                self.waiters.remove(waiter.index as usize);
            }
            WaiterState::Granted { slot } => {
                self.waiters.remove(waiter.index as usize);
                match self.set_state(slot, SlotState::Opening) {
                    SlotState::Granted { conn } => self.dispatch(slot, conn, now),
                    other => {
                        self.set_state(slot, other);
                    }
                }
            }
            WaiterState::TimedOut { .. } | WaiterState::Failed { .. } | WaiterState::Closed => {
                self.waiters.remove(waiter.index as usize);
            }
        }
        self.after_change(now);
        true
    }

    /// A task gives a connection back. With [`Release::Reuse`] it goes to the oldest waiter, or
    /// to idle; it is closed instead if the pool is closed, the connection outlived
    /// `max_lifetime`, the pool is over its size, or its lease was reclaimed.
    ///
    /// # Errors
    /// [`Rejected`], carrying the connection back, if the lease is not one this machine has
    /// outstanding. A lease can only be handed back once (it is moved), so this means it
    /// came from another machine; ids are unique per machine only, so a lease from a second
    /// machine is not reliably detected: never mix machines' leases.
    ///
    /// `now` is when the connection came back. A driver that keeps returned connections
    /// outside the machine for a while (lending them again without it while nobody waits)
    /// may pass that earlier instant when it finally hands one over, so the idle timeout
    /// counts from the real return; the lifetime check then uses the same instant, so such
    /// a driver checks [`Lease::expires`] itself.
    pub fn release(
        &mut self,
        lease: Lease,
        conn: C,
        how: Release,
        now: Instant,
    ) -> Result<(), Rejected<C>> {
        let Some(index) = self.lease_slot(lease.id) else {
            return Err(Rejected { conn: Some(conn) });
        };
        // The hot path: reused, nobody waiting, nothing to retire. The general path below
        // reaches the same state through `dispatch`; this one skips its detour through
        // `Opening` and its checks for waiters and closing.
        if how == Release::Reuse && self.release_goes_idle() {
            let slot = &mut self.slots[index as usize];
            if let SlotState::Leased { .. } = slot.state {
                if slot.expires.is_none_or(|t| t > now) {
                    slot.state = SlotState::Idle { conn, since: now };
                    self.in_use -= 1;
                    self.park_idle(index, now);
                    return Ok(());
                }
            }
        }
        match self.set_state(index, SlotState::Opening) {
            SlotState::Leased { .. } => match how {
                Release::Reuse => self.dispatch(index, conn, now),
                Release::Broken => self.start_close(index, conn, CloseReason::Broken),
                Release::Discard => self.start_close(index, conn, CloseReason::Discarded),
            },
            SlotState::Abandoned { .. } => self.start_close(index, conn, CloseReason::Reclaimed),
            other => {
                // `lease_slot` only answers for Leased and Abandoned slots.
                self.set_state(index, other);
                return Err(Rejected { conn: Some(conn) });
            }
        }
        // Nothing more to do: a close still counts until `handle_closed`, so no capacity
        // was freed and the pool cannot have drained.
        Ok(())
    }

    /// A task keeps its connection for good: the slot is freed (and may be refilled) without
    /// the machine ever seeing the connection again.
    ///
    /// # Errors
    /// [`Rejected`] if the lease is not one this machine has outstanding.
    pub fn detach(&mut self, lease: Lease, now: Instant) -> Result<(), Rejected<C>> {
        let Some(index) = self.lease_slot(lease.id) else {
            return Err(Rejected { conn: None });
        };
        self.remove_slot(index);
        self.after_change(now);
        Ok(())
    }

    // ----- inputs: the driver --------------------------------------------------------------

    /// The connect for `slot` succeeded. The connection goes to the oldest waiter, or to idle.
    ///
    /// # Errors
    /// [`Rejected`], carrying the connection back, if `slot` is not opening (a stale or
    /// repeated report).
    pub fn handle_connected(
        &mut self,
        slot: SlotId,
        conn: C,
        now: Instant,
    ) -> Result<(), Rejected<C>> {
        if !matches!(
            self.slot(slot),
            Some(Slot {
                state: SlotState::Opening,
                ..
            })
        ) {
            return Err(Rejected { conn: Some(conn) });
        }
        self.failures = 0;
        self.backoff_until = None;
        self.last_connect_error = None;
        self.fatal = false;
        let expires = self.config.max_lifetime.and_then(|lifetime| {
            let jitter = self.rng.below(self.config.max_lifetime_jitter);
            now.checked_add(lifetime - jitter)
        });
        self.slots[slot.index as usize].expires = expires;
        if let Some(expires) = expires {
            self.note_deadline(expires);
        }
        self.dispatch(slot.index, conn, now);
        self.after_change(now);
        Ok(())
    }

    /// The connect for `slot` failed: the slot is freed, and further connects wait for a
    /// capped exponential back-off with jitter, one at a time until one succeeds.
    ///
    /// The back-off grows once per outage step, not once per failed connect: connects that
    /// were in flight together when the first of them failed (all the connects a burst of
    /// demand started just before the server went away) count as that one failure, and
    /// their later failures neither lengthen nor restart the back-off.
    ///
    /// With [`Failure::Transient`], waiters keep their place (`error` is kept for their
    /// time-out reports). With [`Failure::Fatal`], waiting cannot help the waiters that only
    /// a connect could serve: every waiter beyond the number of connections in use (each of
    /// which may come back and serve one) fails at once with
    /// [`AcquireError::ConnectFailed`], and so do such acquires until a connect succeeds,
    /// while the back-off runs and no connect is in flight. After the back-off, the next
    /// acquire waits for one new attempt (so the pool heals once the cause is fixed,
    /// without retrying while nobody asks).
    ///
    /// Returns whether `slot` was opening; a stale or repeated report is ignored.
    pub fn handle_connect_failed(
        &mut self,
        slot: SlotId,
        error: E,
        failure: Failure,
        now: Instant,
    ) -> bool
    where
        E: Clone,
    {
        let Some(serial) = self.slot(slot).and_then(|s| match s.state {
            SlotState::Opening => Some(s.serial),
            _ => None,
        }) else {
            return false;
        };
        self.remove_slot(slot.index);
        if serial >= self.outage_mark {
            self.failures = self.failures.saturating_add(1);
            self.outage_mark = self.next_serial;
            let delay = self.backoff_delay();
            self.backoff_until = now.checked_add(delay);
        }
        self.fatal = failure == Failure::Fatal;
        if self.fatal {
            self.fatal_error = Some(error.clone());
            self.fail_hopeless_waiters();
        }
        self.last_connect_error = Some(error);
        self.after_change(now);
        true
    }

    /// The close of `slot`'s connection finished: the slot stops counting.
    ///
    /// Returns whether `slot` was closing; a stale or repeated report is ignored.
    pub fn handle_closed(&mut self, slot: SlotId, now: Instant) -> bool {
        if !matches!(
            self.slot(slot),
            Some(Slot {
                state: SlotState::Closing { .. },
                ..
            })
        ) {
            return false;
        }
        self.remove_slot(slot.index);
        self.after_change(now);
        true
    }

    /// Time passed: resolves waiters past their deadline, reports leaks, reclaims abandoned
    /// leases, closes connections past idle timeout (keeping `min_idle`) or max lifetime,
    /// and opens connections once a back-off has passed.
    ///
    /// A call before [`poll_timeout`](Self::poll_timeout)'s instant is a no-op.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.next_timeout {
            Some(t) if t <= now => {}
            _ => return,
        }
        self.expire_waiters(now);
        self.scan_leases(now);
        self.reap_idle(now);
        if self.backoff_until.is_some_and(|t| t <= now) {
            self.backoff_until = None;
        }
        self.after_change(now);
        self.next_timeout = self.earliest_deadline();
    }

    // ----- commands ------------------------------------------------------------------------

    /// Closes the pool for good: waiters fail with [`AcquireError::Closed`], idle
    /// connections are closed now, leased ones when they come back, opening ones when their
    /// connect finishes. [`Action::Drained`] follows once nothing counted remains. Calling it
    /// again does nothing.
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.backoff_until = None;
        while let Some(index) = self.queue.head {
            self.unlink(index);
            self.resolve(index, WaiterState::Closed);
        }
        // Revoke grants not yet taken: nothing is handed out after close (an allocation
        // here is fine, close happens once).
        let granted: Vec<(usize, u32)> = self
            .waiters
            .iter()
            .filter_map(|(i, w)| match w.state {
                WaiterState::Granted { slot } => Some((i, slot)),
                _ => None,
            })
            .collect();
        for (waiter, slot) in granted {
            self.waiters[waiter].state = WaiterState::Closed;
            if let SlotState::Granted { conn } = self.set_state(slot, SlotState::Opening) {
                self.start_close(slot, conn, CloseReason::PoolClosed);
            }
        }
        while let Some(index) = self.idle.pop_front() {
            self.retire_idle(index, CloseReason::PoolClosed);
        }
        self.check_drained();
    }

    /// Changes `max_size`. Growing serves waiters at once; shrinking closes surplus idle
    /// connections now and lets leased ones drain as they come back.
    ///
    /// # Errors
    /// A [`ConfigError`] if `max_size` is zero, too large, or below `min_idle`; the machine
    /// is left unchanged.
    pub fn set_max_size(&mut self, max_size: usize, now: Instant) -> Result<(), ConfigError> {
        let mut config = self.config.clone();
        config.max_size = max_size;
        config.validate()?;
        self.config = config;
        // A retired connection still counts in `size` until `handle_closed`: count the
        // surplus once, among live connections, or every idle one would be closed.
        for _ in 0..self.live().saturating_sub(self.config.max_size) {
            let Some(index) = self.idle.pop_front() else {
                break;
            };
            self.retire_idle(index, CloseReason::Surplus);
        }
        self.after_change(now);
        Ok(())
    }

    // ----- outputs -------------------------------------------------------------------------

    /// The next thing the driver must do, oldest first. Drain it after every input.
    pub fn poll_action(&mut self) -> Option<Action<C>> {
        self.actions.pop_front()
    }

    /// The instant by which [`handle_timeout`](Self::handle_timeout) must be called next, if
    /// any. It may be early (a call then is a cheap no-op), never late.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_timeout
    }

    // ----- internals -----------------------------------------------------------------------

    fn slot(&self, id: SlotId) -> Option<&Slot<C>> {
        self.slots
            .get(id.index as usize)
            .filter(|slot| slot.serial == id.serial)
    }

    fn waiter(&self, id: WaiterId) -> Option<&Waiter> {
        self.waiters
            .get(id.index as usize)
            .filter(|w| w.serial == id.serial)
    }

    /// The slot of an outstanding lease (leased or reclaimed).
    fn lease_slot(&self, id: LeaseId) -> Option<u32> {
        match self.slots.get(id.index as usize)?.state {
            SlotState::Leased { lease, .. } | SlotState::Abandoned { lease, .. }
                if lease == id.serial =>
            {
                Some(id.index)
            }
            _ => None,
        }
    }

    fn serial(&mut self) -> u64 {
        let serial = self.next_serial;
        self.next_serial = self.next_serial.wrapping_add(1);
        serial
    }

    /// Replaces a slot's state, keeping the counters in step; the one place they change
    /// (besides slot removal, which callers pair with the state they remove).
    fn set_state(&mut self, index: u32, state: SlotState<C>) -> SlotState<C> {
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
    fn remove_slot(&mut self, index: u32) {
        self.set_state(index, SlotState::Closing { counted: false });
        self.slots.remove(index as usize);
    }

    /// Leases the most recently used idle connection, closing any found past their lifetime.
    fn lease_idle(&mut self, now: Instant) -> Option<(Lease, C)> {
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
    fn lease(&mut self, index: u32, now: Instant) -> Lease {
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

    /// Notes the leak and reclaim deadlines of a lease starting at `now`, if configured.
    fn note_lease_deadlines(&mut self, now: Instant) {
        if let Some(t) = self.config.leak_threshold.and_then(|d| now.checked_add(d)) {
            self.note_deadline(t);
        }
        if let Some(t) = self.config.reclaim_after.and_then(|d| now.checked_add(d)) {
            self.note_deadline(t);
        }
    }

    /// A connection is available in slot `index` (whose state the caller has taken out):
    /// hand it to the oldest waiter, park it idle, or close it.
    fn dispatch(&mut self, index: u32, conn: C, now: Instant) {
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
            self.unlink(waiter);
            self.set_state(index, SlotState::Granted { conn });
            self.resolve(waiter, WaiterState::Granted { slot: index });
        } else {
            self.set_state(index, SlotState::Idle { conn, since: now });
            self.park_idle(index, now);
        }
    }

    /// Puts slot `index`, just set idle, at the back of the idle deque and notes the
    /// deadlines it brings (its lifetime, the idle timeout of the oldest idle connection).
    fn park_idle(&mut self, index: u32, now: Instant) {
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
    fn start_close(&mut self, index: u32, conn: C, reason: CloseReason) {
        let counted = reason != CloseReason::Reclaimed;
        self.set_state(index, SlotState::Closing { counted });
        let slot = SlotId {
            index,
            serial: self.slots[index as usize].serial,
        };
        self.actions.push_back(Action::Close { slot, conn, reason });
    }

    /// Closes an idle slot already removed from the idle deque.
    fn retire_idle(&mut self, index: u32, reason: CloseReason) {
        if let SlotState::Idle { conn, .. } = self.set_state(index, SlotState::Opening) {
            self.start_close(index, conn, reason);
        }
    }

    /// Follow-up common to inputs that may free capacity: open for demand, report drain.
    fn after_change(&mut self, now: Instant) {
        self.replenish(Some(now));
        self.check_drained();
    }

    /// Reserves slots and asks for connects while waiters or `min_idle` want them, within
    /// `max_size`, one at a time while connects are failing, none during a back-off.
    fn replenish(&mut self, now: Option<Instant>) {
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

    fn check_drained(&mut self) {
        if self.closed && !self.drained_reported && self.size() == 0 {
            self.drained_reported = true;
            self.actions.push_back(Action::Drained);
        }
    }

    fn enqueue(&mut self, now: Instant, deadline: Option<Instant>) -> WaiterId {
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
    fn unlink(&mut self, index: u32) {
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
    fn resolve(&mut self, index: u32, state: WaiterState) {
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
    fn waiting_is_hopeless(&self, now: Instant, position: usize) -> bool {
        self.fatal
            && self.opening == 0
            && self.backoff_until.is_some_and(|t| now < t)
            && position >= self.in_use
    }

    /// After a fatal connect error: fails every queued waiter beyond the first `in_use`
    /// (those may still be served by a connection coming back), each reporting the pool as
    /// the error found it (itself still counted as waiting).
    fn fail_hopeless_waiters(&mut self) {
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

    fn expire_waiters(&mut self, now: Instant) {
        // Every waiter timing out now reports the pool as it was at this instant.
        let status = self.status();
        let mut cursor = self.queue.head;
        while let Some(index) = cursor {
            let waiter = &self.waiters[index as usize];
            cursor = match waiter.state {
                WaiterState::Queued { next, .. } => next,
                _ => None,
            };
            if waiter.deadline.is_some_and(|d| d <= now) {
                let waited = now.saturating_duration_since(waiter.enqueued);
                self.unlink(index);
                self.resolve(index, WaiterState::TimedOut { waited, status });
            }
        }
    }

    fn scan_leases(&mut self, now: Instant) {
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

    fn reap_idle(&mut self, now: Instant) {
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
    fn earliest_deadline(&self) -> Option<Instant> {
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
        earliest
    }

    fn note_deadline(&mut self, t: Instant) {
        self.next_timeout = Some(self.next_timeout.map_or(t, |e| e.min(t)));
    }

    fn backoff_delay(&mut self) -> Duration {
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

impl<C, E> fmt::Debug for Machine<C, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Machine")
            .field("status", &self.status())
            .field("closed", &self.closed)
            .field("failures", &self.failures)
            .field("backoff_until", &self.backoff_until)
            .field("next_timeout", &self.next_timeout)
            .finish_non_exhaustive()
    }
}

/// A tiny seeded generator (SplitMix64) for jitter, so a run replays exactly.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniformly drawn duration in `[0, max]`.
    fn below(&mut self, max: Duration) -> Duration {
        let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.next_u64() % nanos.saturating_add(1))
    }
}
