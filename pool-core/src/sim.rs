//! A deterministic virtual-time simulator: the [`Machine`] driven by a fake connector, with
//! time jumping to the next event, in the style of quinn-proto's test `Pair`.
//!
//! Tasks are named by small integers; each acquires, holds, releases or gives up through
//! the simulator, which plays the driver: it drains the machine's actions, completes connects
//! after a configurable latency (or fails them on request), reports closes, wakes waiters,
//! and calls `handle_timeout` at the machine's deadlines. Every step is recorded in a
//! human-readable [log](Sim::log). Nothing reads the real clock after [`Sim::new`].
//!
//! ```
//! use std::time::Duration;
//! use pool_core::machine::Config;
//! use pool_core::sim::{Sim, TaskState};
//!
//! let mut sim = Sim::new(Config::new(2));
//! sim.set_connect_latency(Duration::from_millis(100));
//! for task in 0..3 {
//!     sim.acquire(task, None);
//! }
//! sim.advance(Duration::from_millis(100));
//! assert_eq!(sim.opens(), 2); // never a third (seed 003)
//! assert!(matches!(sim.task(2), Some(TaskState::Waiting(_))));
//! sim.release(0);
//! assert!(matches!(sim.task(2), Some(TaskState::Holding { .. })));
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use crate::machine::{
    AcquireError, Acquired, Action, CloseReason, Config, ConfigError, Failure, Lease, LeaseId,
    Machine, Release, SlotId, WaiterId,
};

/// A fake connection: just a number, unique within a simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SimConn(pub u64);

/// A fake connect error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimError(pub String);

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a simulated task stands.
#[derive(Debug)]
pub enum TaskState {
    /// Waiting as this waiter.
    Waiting(WaiterId),
    /// Holding a connection.
    Holding {
        /// Its lease.
        lease: Lease,
        /// The connection.
        conn: SimConn,
        /// When it got it.
        since: Instant,
    },
    /// Its acquire failed.
    Failed(AcquireError<SimError>),
    /// It gave its connection back or gave up.
    Done,
}

enum Event {
    /// A connect finishes: `None` if it succeeds, else how it fails.
    Connect {
        slot: SlotId,
        failure: Option<Failure>,
    },
    Closed {
        slot: SlotId,
    },
}

/// The simulator: a machine, its fake driver and fake connector, on virtual time.
pub struct Sim {
    /// The machine under simulation.
    pub machine: Machine<SimConn, SimError>,
    start: Instant,
    now: Instant,
    tasks: BTreeMap<usize, TaskState>,
    waiters: BTreeMap<WaiterId, usize>,
    /// Scheduled driver events, kept in order of (time, sequence).
    events: BTreeMap<(Instant, u64), Event>,
    seq: u64,
    connect_latency: Duration,
    close_latency: Duration,
    fail_connects: VecDeque<Failure>,
    failing: Option<Failure>,
    next_conn: u64,
    opens: usize,
    /// Virtual time (since the start) of every `Open` action, in order.
    opened_at: Vec<Duration>,
    closes: Vec<(SimConn, CloseReason)>,
    /// Virtual time (since the start) of every `Close` action, parallel to `closes`.
    closed_at: Vec<Duration>,
    leaks: Vec<LeaseId>,
    reclaims: Vec<LeaseId>,
    drained: usize,
    peak_opening: usize,
    peak_size: usize,
    log: Vec<String>,
}

impl Sim {
    /// A simulation of a machine built from `config`.
    ///
    /// # Panics
    /// If `config` is invalid: the simulator is a test aid.
    pub fn new(config: Config) -> Self {
        #[allow(clippy::expect_used)] // documented: the simulator is a test aid
        let machine = Machine::new(config).expect("the simulation's config must be valid");
        let start = Instant::now();
        let mut sim = Self {
            machine,
            start,
            now: start,
            tasks: BTreeMap::new(),
            waiters: BTreeMap::new(),
            events: BTreeMap::new(),
            seq: 0,
            connect_latency: Duration::from_millis(10),
            close_latency: Duration::ZERO,
            fail_connects: VecDeque::new(),
            failing: None,
            next_conn: 1,
            opens: 0,
            opened_at: Vec::new(),
            closes: Vec::new(),
            closed_at: Vec::new(),
            leaks: Vec::new(),
            reclaims: Vec::new(),
            drained: 0,
            peak_opening: 0,
            peak_size: 0,
            log: Vec::new(),
        };
        sim.drive();
        sim
    }

    // ----- knobs ---------------------------------------------------------------------------

    /// How long every connect takes from now on.
    pub fn set_connect_latency(&mut self, latency: Duration) {
        self.connect_latency = latency;
    }

    /// How long every close takes from now on (zero reports it at once).
    pub fn set_close_latency(&mut self, latency: Duration) {
        self.close_latency = latency;
    }

    /// Makes the next `n` connects fail (after the connect latency), transiently.
    pub fn fail_next_connects(&mut self, n: usize) {
        self.fail_connects
            .extend(std::iter::repeat_n(Failure::Transient, n));
    }

    /// Makes every connect fail transiently until turned off (the server is down).
    pub fn set_failing(&mut self, failing: bool) {
        self.failing = failing.then_some(Failure::Transient);
    }

    /// Makes every connect fail as `failure` says until `None` (a wrong password is
    /// [`Failure::Fatal`]).
    pub fn set_failing_with(&mut self, failure: Option<Failure>) {
        self.failing = failure;
    }

    // ----- what tasks do -------------------------------------------------------------------

    /// Task `task` asks for a connection, waiting at most `timeout` if given.
    pub fn acquire(&mut self, task: usize, timeout: Option<Duration>) {
        let deadline = timeout.and_then(|t| self.now.checked_add(t));
        let state = match self.machine.acquire(self.now, deadline) {
            Ok(Acquired::Ready(lease, conn)) => {
                self.say(format!("task {task} acquires idle {conn:?}"));
                TaskState::Holding {
                    lease,
                    conn,
                    since: self.now,
                }
            }
            Ok(Acquired::Waiting(waiter)) => {
                self.say(format!("task {task} waits"));
                self.waiters.insert(waiter, task);
                TaskState::Waiting(waiter)
            }
            Err(e) => {
                self.say(format!("task {task} fails: {e}"));
                TaskState::Failed(e)
            }
        };
        self.tasks.insert(task, state);
        self.drive();
    }

    /// Task `task` takes an idle connection if there is one, without waiting
    /// ([`Machine::try_acquire`]); otherwise its attempt fails.
    pub fn try_acquire(&mut self, task: usize) {
        let state = match self.machine.try_acquire(self.now) {
            Ok((lease, conn)) => {
                self.say(format!("task {task} takes idle {conn:?}"));
                TaskState::Holding {
                    lease,
                    conn,
                    since: self.now,
                }
            }
            Err(e) => {
                self.say(format!("task {task} fails: {e}"));
                TaskState::Failed(e)
            }
        };
        self.tasks.insert(task, state);
        self.drive();
    }

    /// Task `task` gives its connection back for reuse.
    pub fn release(&mut self, task: usize) {
        self.release_as(task, Release::Reuse);
    }

    /// Task `task` gives its connection back as `how`. Does nothing if it holds none.
    pub fn release_as(&mut self, task: usize, how: Release) {
        if let Some(TaskState::Holding { .. }) = self.tasks.get(&task) {
            if let Some(TaskState::Holding { lease, conn, .. }) =
                self.tasks.insert(task, TaskState::Done)
            {
                self.say(format!("task {task} releases {conn:?} ({how:?})"));
                if let Err(rejected) = self.machine.release(lease, conn, how, self.now) {
                    self.say(format!("release rejected: {rejected:?}"));
                }
                self.drive();
            }
        }
    }

    /// Task `task` stops waiting (its acquire future is dropped). Does nothing unless it waits.
    pub fn cancel(&mut self, task: usize) {
        if let Some(TaskState::Waiting(waiter)) = self.tasks.get(&task) {
            let waiter = *waiter;
            self.waiters.remove(&waiter);
            self.tasks.insert(task, TaskState::Done);
            self.say(format!("task {task} gives up waiting"));
            self.machine.cancel(waiter, self.now);
            self.drive();
        }
    }

    // ----- what the pool's owner does -------------------------------------------------------

    /// Closes the pool ([`Machine::close`]) and drives the resulting actions.
    pub fn close(&mut self) {
        self.say("close the pool".into());
        self.machine.close();
        self.drive();
    }

    /// Resizes the pool ([`Machine::set_max_size`]) and drives the resulting actions.
    ///
    /// # Errors
    /// The machine's [`ConfigError`], in which case nothing changed.
    pub fn set_max_size(&mut self, max_size: usize) -> Result<(), ConfigError> {
        self.say(format!("resize to {max_size}"));
        let result = self.machine.set_max_size(max_size, self.now);
        self.drive();
        result
    }

    // ----- time ----------------------------------------------------------------------------

    /// Lets `d` of virtual time pass, handling every event and deadline on the way in order.
    pub fn advance(&mut self, d: Duration) {
        let until = self.now + d;
        loop {
            let next_event = self.events.keys().next().map(|(t, _)| *t);
            let next_timeout = self.machine.poll_timeout();
            let next = [next_event, next_timeout].into_iter().flatten().min();
            match next {
                Some(t) if t <= until => {
                    self.now = self.now.max(t);
                    if next_event == Some(t) {
                        self.fire_event();
                    } else {
                        self.machine.handle_timeout(self.now);
                    }
                    self.drive();
                }
                _ => break,
            }
        }
        self.now = until;
    }

    /// Runs until nothing is scheduled (connects, closes and machine deadlines), or until
    /// `limit` of virtual time has passed.
    pub fn settle(&mut self, limit: Duration) {
        let until = self.now + limit;
        while self.now < until {
            let next_event = self.events.keys().next().map(|(t, _)| *t);
            let next = [next_event, self.machine.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= until => self.advance(t.saturating_duration_since(self.now)),
                _ => break,
            }
        }
    }

    // ----- observations --------------------------------------------------------------------

    /// Virtual time elapsed since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// The current virtual instant.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Where task `task` stands.
    pub fn task(&self, task: usize) -> Option<&TaskState> {
        self.tasks.get(&task)
    }

    /// How many connects the machine has asked for.
    pub fn opens(&self) -> usize {
        self.opens
    }

    /// The virtual time (since the start) at which each connect was asked for, in order.
    pub fn opened_at(&self) -> &[Duration] {
        &self.opened_at
    }

    /// Every connection closed so far, with its reason.
    pub fn closes(&self) -> &[(SimConn, CloseReason)] {
        &self.closes
    }

    /// The virtual time (since the start) at which each close in [`closes`](Self::closes)
    /// was asked for, index for index.
    pub fn closed_at(&self) -> &[Duration] {
        &self.closed_at
    }

    /// The lease of task `task`, if it holds a connection.
    pub fn lease_of(&self, task: usize) -> Option<LeaseId> {
        match self.tasks.get(&task) {
            Some(TaskState::Holding { lease, .. }) => Some(lease.id()),
            _ => None,
        }
    }

    /// The connection task `task` holds, if any.
    pub fn conn_of(&self, task: usize) -> Option<SimConn> {
        match self.tasks.get(&task) {
            Some(TaskState::Holding { conn, .. }) => Some(*conn),
            _ => None,
        }
    }

    /// The most connects ever in flight at once, as seen after each input was driven.
    pub fn peak_opening(&self) -> usize {
        self.peak_opening
    }

    /// The largest [`Status::size`](crate::machine::Status::size) ever seen after an input
    /// was driven (everything counted against `max_size`).
    pub fn peak_size(&self) -> usize {
        self.peak_size
    }

    /// Leases reported as suspected leaks.
    pub fn leaks(&self) -> &[LeaseId] {
        &self.leaks
    }

    /// Leases reclaimed as abandoned.
    pub fn reclaims(&self) -> &[LeaseId] {
        &self.reclaims
    }

    /// Whether the machine reported it had drained after close.
    pub fn drained(&self) -> bool {
        self.drained > 0
    }

    /// How many times the machine reported [`Action::Drained`] (it must be at most once).
    pub fn drained_reports(&self) -> usize {
        self.drained
    }

    /// Every step so far, one line each, stamped with virtual time.
    pub fn log(&self) -> &[String] {
        &self.log
    }

    // ----- the fake driver -----------------------------------------------------------------

    fn say(&mut self, line: String) {
        let ms = self.elapsed().as_secs_f64() * 1000.0;
        self.log.push(format!("{ms:>8.1} ms  {line}"));
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        self.seq += 1;
        self.events.insert((at, self.seq), event);
    }

    fn fire_event(&mut self) {
        let Some(((_, _), event)) = self.events.pop_first() else {
            return;
        };
        match event {
            Event::Connect {
                slot,
                failure: None,
            } => {
                let conn = SimConn(self.next_conn);
                self.next_conn += 1;
                self.say(format!("connect for slot {} done: {conn:?}", slot.index()));
                if let Err(rejected) = self.machine.handle_connected(slot, conn, self.now) {
                    self.say(format!("connect result rejected: {rejected:?}"));
                }
            }
            Event::Connect {
                slot,
                failure: Some(failure),
            } => {
                let error = SimError(match failure {
                    Failure::Transient => "connection refused".into(),
                    Failure::Fatal => "password authentication failed".into(),
                });
                self.say(format!("connect for slot {} failed: {error}", slot.index()));
                self.machine
                    .handle_connect_failed(slot, error, failure, self.now);
            }
            Event::Closed { slot } => {
                self.machine.handle_closed(slot, self.now);
            }
        }
    }

    /// Drains the machine's actions, as a driver does after every input.
    fn drive(&mut self) {
        while let Some(action) = self.machine.poll_action() {
            match action {
                Action::Open { slot } => {
                    self.opens += 1;
                    self.opened_at.push(self.elapsed());
                    let failure = self.fail_connects.pop_front().or(self.failing);
                    self.say(format!("open #{} for slot {}", self.opens, slot.index()));
                    self.schedule(
                        self.now + self.connect_latency,
                        Event::Connect { slot, failure },
                    );
                }
                Action::Close { slot, conn, reason } => {
                    self.say(format!("close {conn:?} ({reason})"));
                    self.closes.push((conn, reason));
                    self.closed_at.push(self.elapsed());
                    if self.close_latency.is_zero() {
                        self.machine.handle_closed(slot, self.now);
                    } else {
                        self.schedule(self.now + self.close_latency, Event::Closed { slot });
                    }
                }
                Action::Wake { waiter } => self.wake(waiter),
                Action::LeakSuspected { lease, held_for } => {
                    self.say(format!(
                        "suspected leak: lease {} held for {held_for:?}",
                        lease.serial()
                    ));
                    self.leaks.push(lease);
                }
                Action::Reclaimed { lease, held_for } => {
                    self.say(format!(
                        "reclaimed lease {} after {held_for:?}",
                        lease.serial()
                    ));
                    self.reclaims.push(lease);
                }
                Action::Drained => {
                    self.say("drained".into());
                    self.drained += 1;
                }
            }
        }
        let status = self.machine.status();
        self.peak_opening = self.peak_opening.max(status.opening);
        self.peak_size = self.peak_size.max(status.size);
    }

    fn wake(&mut self, waiter: WaiterId) {
        let Some(task) = self.waiters.remove(&waiter) else {
            return;
        };
        let state = match self.machine.take(waiter, self.now) {
            Ok(Some((lease, conn))) => {
                self.say(format!("task {task} gets {conn:?}"));
                TaskState::Holding {
                    lease,
                    conn,
                    since: self.now,
                }
            }
            Ok(None) => {
                self.waiters.insert(waiter, task);
                return;
            }
            Err(e) => {
                self.say(format!("task {task} fails: {e}"));
                TaskState::Failed(e)
            }
        };
        self.tasks.insert(task, state);
    }
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("elapsed", &self.elapsed())
            .field("status", &self.machine.status())
            .field("tasks", &self.tasks.len())
            .finish_non_exhaustive()
    }
}
