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
//! 1. **Inputs**: a task asks ([`acquire`](Machine::acquire), or
//!    [`acquire_by`](Machine::acquire_by) naming the task, [`try_acquire`](Machine::try_acquire)),
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
//!    [`is_drained`](Machine::is_drained), [`is_overloaded`](Machine::is_overloaded),
//!    [`self_wait`](Machine::self_wait), [`config`](Machine::config).
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
//!
//! # Layout
//!
//! This file holds the machine's state and its public interface; each concern behind it has
//! a file of its own: `slots.rs` (the units of `max_size` and their states), `waiters.rs`
//! (the FIFO of waiting tasks), `timers.rs` (deadlines and back-off), `overload.rs` (load
//! shedding and the bound on waiters), `selfwait.rs` (a task waiting on itself: self-waits
//! and certain deadlocks), `rng.rs` (jitter),
//! `config.rs` and `types.rs` (the vocabulary of the interface). The invariants the machine
//! keeps are listed, with the tests that check them, in `ARCHITECTURE.md`, "Invariants".

mod config;
mod overload;
mod rng;
mod selfwait;
mod slots;
mod timers;
mod types;
mod waiters;

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use slab::Slab;

use overload::Overload;
use rng::SplitMix64;
use slots::{Slot, SlotState};
use waiters::{Queue, Waiter, WaiterState};

pub use config::{Config, ConfigError, MAX_SIZE_LIMIT};
pub use types::{
    AcquireError, Acquired, Action, Caller, CloseReason, Deadlock, Failure, Lease, LeaseId,
    Rejected, Release, Shed, SlotId, Status, TaskId, TimedOut, WaiterId,
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
    /// Load shedding (`overload.rs`), inert without a `queue_target`.
    overload: Overload,
    rng: SplitMix64,
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
            overload: Overload::default(),
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
    /// connection is idle and `deadline` is not after `now`; [`AcquireError::ConnectFailed`]
    /// if only a connect could serve it and the last one failed fatally (see
    /// [`handle_connect_failed`](Self::handle_connect_failed)); [`AcquireError::Exhausted`]
    /// if no connection is idle and [`Config::max_waiters`] tasks already wait.
    pub fn acquire(
        &mut self,
        now: Instant,
        deadline: Option<Instant>,
    ) -> Result<Acquired<C>, AcquireError<E>>
    where
        E: Clone,
    {
        self.acquire_by(now, deadline, None, |_| None)
    }

    /// [`acquire`](Self::acquire) by a known task (`caller`), with `holders` saying who holds
    /// each outstanding lease (the driver keeps that outside the machine, since leases
    /// change hands without it: see `ARCHITECTURE.md`, "A task waiting on itself").
    /// Whoever holds a lease is asked only when the caller would wait.
    ///
    /// If the caller would wait while it holds a lease (a **self-wait**), the waiter
    /// remembers the lease ([`self_wait`](Self::self_wait)), and:
    ///
    /// - if that makes a **certain deadlock** (with [`Config::fail_deadlocks`] on; it is off by default),
    ///   the acquire fails at once with
    ///   [`AcquireError::Deadlock`] (`certain`), and so does every queued waiter whose task
    ///   holds a lease: every lease out is held, in the context it was acquired in
    ///   ([`Caller::context`]), by a task that waits in that same context, nothing is
    ///   opening, closing or idle, the pool is at its size, and no lease can be reclaimed.
    ///   Nothing can then ever come back, and failing those waiters is what lets their
    ///   tasks give their connections back;
    /// - otherwise, with [`Config::self_wait_error`], when the caller holds a lease acquired
    ///   in the context it would wait in, it fails at once with [`AcquireError::Deadlock`]
    ///   (not `certain`);
    /// - otherwise it waits as usual.
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire), and [`AcquireError::Deadlock`] as above.
    pub fn acquire_by(
        &mut self,
        now: Instant,
        deadline: Option<Instant>,
        caller: Option<Caller>,
        holders: impl Fn(LeaseId) -> Option<Caller>,
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
        let self_wait = match caller {
            Some(caller) => self.self_wait_check(caller, &holders)?,
            None => None,
        };
        if self
            .config
            .max_waiters
            .is_some_and(|max| self.queue.len >= max)
        {
            return Err(AcquireError::Exhausted(self.status()));
        }
        self.roll_interval(now);
        let waiter = self.enqueue(now, deadline, caller, self_wait);
        self.note_waiter_overload_deadlines(now);
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
    /// [`AcquireError::TimedOut`] once its deadline passed, [`AcquireError::Shed`] once it
    /// was shed as the pool was overloaded, [`AcquireError::ConnectFailed`] once a fatal
    /// connect error failed it, [`AcquireError::Closed`] once the machine closed,
    /// [`AcquireError::Deadlock`] once a certain deadlock failed it (see
    /// [`acquire_by`](Self::acquire_by)), [`AcquireError::UnknownWaiter`] for an id already
    /// taken or cancelled.
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
            WaiterState::Shed { waited, status } => {
                self.waiters.remove(waiter.index as usize);
                Err(AcquireError::Shed(self.shed_error(waited, status)))
            }
            WaiterState::Failed { status } => {
                self.waiters.remove(waiter.index as usize);
                match self.fatal_error.clone() {
                    Some(error) => Err(AcquireError::ConnectFailed(error, status)),
                    // A waiter is only failed with a fatal error kept here.
                    None => Err(AcquireError::Closed),
                }
            }
            WaiterState::Deadlocked { held, status } => {
                self.waiters.remove(waiter.index as usize);
                Err(AcquireError::Deadlock(Deadlock {
                    held,
                    certain: true,
                    status,
                }))
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
            WaiterState::TimedOut { .. }
            | WaiterState::Failed { .. }
            | WaiterState::Shed { .. }
            | WaiterState::Deadlocked { .. }
            | WaiterState::Closed => {
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
                    self.observe_wait(now, Duration::ZERO);
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
    /// If the connect started after the last failure was counted, the outage is over: the
    /// back-off ends and connects are no longer made one at a time; a connect that was
    /// already in flight then does not end it (see
    /// [`handle_connect_failed`](Self::handle_connect_failed)).
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
        let Some(serial) = self.slot(slot).and_then(|s| match s.state {
            SlotState::Opening => Some(s.serial),
            _ => None,
        }) else {
            return Err(Rejected { conn: Some(conn) });
        };
        // Only a connect started after the last counted failure shows the server answers
        // now; one that was in flight when the outage began (the server accepted it just
        // before going away) leaves the back-off and the one-at-a-time probing as they are.
        if serial >= self.outage_mark {
            self.failures = 0;
            self.backoff_until = None;
            self.last_connect_error = None;
            self.fatal = false;
        }
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

    /// Time passed: resolves waiters past their deadline, ends the queue interval and sheds
    /// waiters while overloaded (see [`Config::queue_target`]), reports leaks, reclaims
    /// abandoned leases, closes connections past idle timeout (keeping `min_idle`) or max
    /// lifetime, and opens connections once a back-off has passed.
    ///
    /// A call before [`poll_timeout`](Self::poll_timeout)'s instant is a no-op.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.next_timeout {
            Some(t) if t <= now => {}
            _ => return,
        }
        self.expire_waiters(now);
        self.roll_interval(now);
        self.shed_waiters(now);
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

    // ----- internals shared by the concerns (see slots.rs, waiters.rs, timers.rs) --------

    fn serial(&mut self) -> u64 {
        let serial = self.next_serial;
        self.next_serial = self.next_serial.wrapping_add(1);
        serial
    }

    /// Follow-up common to inputs that may free capacity: open for demand, report drain.
    fn after_change(&mut self, now: Instant) {
        self.replenish(Some(now));
        self.check_drained();
    }

    fn check_drained(&mut self) {
        if self.closed && !self.drained_reported && self.size() == 0 {
            self.drained_reported = true;
            self.actions.push_back(Action::Drained);
        }
    }
}

impl<C, E> fmt::Debug for Machine<C, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Machine")
            .field("status", &self.status())
            .field("closed", &self.closed)
            .field("failures", &self.failures)
            .field("backoff_until", &self.backoff_until)
            .field("overloaded", &self.is_overloaded())
            .field("next_timeout", &self.next_timeout)
            .finish_non_exhaustive()
    }
}
