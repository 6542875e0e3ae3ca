//! Property tests of the sans-IO pool state machine ([`pool_core::machine::Machine`]).
//!
//! Each case draws a random valid [`Config`] and a random sequence of up to 100 [`Op`]s that
//! covers every input of the machine: acquire (with and without deadline), try_acquire, take,
//! cancel (also of waiters granted but not yet taken), release (reuse, broken, discard),
//! detach, connect success and failure for pending opens in any order, close reports in any
//! order and after any delay, time jumps (small, large, exactly to `poll_timeout()`, just
//! before it), `handle_timeout`, close, `set_max_size` (valid and invalid) and stale or
//! foreign ids.
//!
//! The test harness plays the driver and carries a small reference model: it knows where
//! every connection is (held by a task, idle or granted inside the machine, closing, closed,
//! detached), the FIFO of waiters and their deadlines, every lease and when it was taken,
//! pending opens and closes, the connect failure streak, and the load-shedding interval
//! (`ARCHITECTURE.md`, "Overload": the shortest wait served in it, whether the pool is
//! overloaded). From that it predicts each step's outcome (which waiter is woken and why,
//! whether an acquire is ready, waiting, refused for want of room, timed out or closed,
//! which waiters are shed, the reason of every close, leak and reclaim reports) and checks the
//! machine's status counts against its own. After every step it checks the eight invariants
//! of `ARCHITECTURE.md`, "Invariants" (see [`Harness::check_invariants`]) and that `poll_timeout()` is never later
//! than a deadline the model knows about. Every case then ends with a well-behaved driver
//! closing the pool and draining it, which must emit `Drained` exactly once.
//!
//! The number of cases is 10 000 unless `PROPTEST_CASES` says otherwise; shrunk failures are
//! persisted in `machine_props.proptest-regressions` beside this file and replayed first.
//! [`generator_reaches_every_event`] checks that the generator reaches every kind of event the
//! invariants are about (grants, time-outs, cancels of granted waiters, leaks, reclaims, every
//! close reason, back-off, shrinking below the size, drain...), and the `regression_*` tests
//! replay, by name, the machine bugs these properties found.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use pool_core::machine::{
    AcquireError, Acquired, Action, CloseReason, Config, Failure, Lease, Machine, Rejected,
    Release, SlotId, Status, WaiterId, MAX_SIZE_LIMIT,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::FileFailurePersistence;

type Conn = u64;
type Error = String;

/// Fails the current step with a formatted message unless the condition holds.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// The connections that are not on their way out: `size` less those closing.
fn live(s: &Status) -> usize {
    s.idle + s.in_use + s.opening
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// One input to the machine, with indices that select among what is live at that moment
/// (taken modulo the number of candidates; the op is skipped when there is none).
#[derive(Debug, Clone)]
enum Op {
    /// `acquire(now, deadline)`; `Some(0)` is a deadline that is already due.
    Acquire {
        deadline_ms: Option<u64>,
    },
    TryAcquire,
    /// `take` of any live waiter (queued, or woken and not yet taken).
    Take {
        sel: usize,
    },
    /// `take` of a woken waiter.
    TakeWoken {
        sel: usize,
    },
    /// `take` of a waiter already taken or cancelled.
    TakeStale {
        sel: usize,
    },
    Cancel {
        sel: usize,
    },
    /// `cancel` of a waiter granted a connection it has not taken.
    CancelGranted {
        sel: usize,
    },
    CancelStale {
        sel: usize,
    },
    Release {
        sel: usize,
        how: Release,
    },
    Detach {
        sel: usize,
    },
    /// `release` with a lease of another machine.
    ForeignRelease {
        churn: u8,
    },
    /// `detach` with a lease of another machine.
    ForeignDetach {
        churn: u8,
    },
    ConnectOk {
        sel: usize,
    },
    ConnectFail {
        sel: usize,
        fatal: bool,
    },
    /// `handle_connected` for a slot that is not opening.
    StaleConnected {
        sel: usize,
    },
    /// `handle_connect_failed` for a slot that is not opening.
    StaleConnectFailed {
        sel: usize,
    },
    /// `handle_closed` for a pending close.
    Closed {
        sel: usize,
    },
    /// `handle_closed` for a slot that is not closing.
    StaleClosed {
        sel: usize,
    },
    Advance {
        ms: u64,
    },
    /// Time jumps exactly to `poll_timeout()` (no `handle_timeout`).
    AdvanceToTimeout,
    /// Time jumps to 1 ns before `poll_timeout()`, then `handle_timeout` (a no-op).
    AdvanceJustBefore,
    HandleTimeout,
    /// What a driver does: jump to `poll_timeout()` and call `handle_timeout` there.
    Tick,
    Close,
    SetMaxSize {
        max: usize,
    },
}

/// Where a connection is, as the harness sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loc {
    /// Idle inside the machine.
    Idle,
    /// Inside the machine, granted to this waiter, not yet taken.
    Granted(WaiterId),
    /// Held by a task (in `Harness::tasks`).
    Task,
    /// Handed to the machine during the current step; its fate is decided by the step.
    InFlight,
    /// Emitted in a Close action, not yet reported closed.
    Closing,
    /// Reported closed.
    Closed,
    /// Kept by its task for good (`detach`).
    Detached,
}

#[derive(Debug)]
struct ConnInfo {
    slot: SlotId,
    connected_at: Instant,
    loc: Loc,
    idle_since: Instant,
}

#[derive(Debug)]
struct Task {
    lease: Lease,
    conn: Conn,
    since: Instant,
    leak_reported: bool,
    reclaimed: bool,
}

#[derive(Debug)]
struct PendingClose {
    slot: SlotId,
    conn: Conn,
    counted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WState {
    Queued,
    Granted(Conn),
    TimedOut {
        at: Instant,
    },
    /// Failed by a fatal connect error (it reports the newest), with the pool's waiting
    /// count then.
    Failed {
        waiting: usize,
    },
    /// Shed as the pool was overloaded, with the pool's waiting count then.
    Shed {
        at: Instant,
        waiting: usize,
    },
    Closed,
}

#[derive(Debug)]
struct WInfo {
    enqueued: Instant,
    deadline: Option<Instant>,
    state: WState,
}

/// What kind of input a step is: it decides what a Wake may mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Any input but the ones below: a Wake is a grant to the head of the FIFO.
    Plain,
    /// `handle_timeout`: a Wake is a time-out of a waiter past its deadline.
    Timeout,
    /// `close`: a Wake is the closing of a queued waiter.
    Close,
    /// `set_max_size`: no Wake at all.
    SetMax,
    /// A fatal connect failure: a Wake fails a waiter beyond the connections in use.
    Fatal,
}

/// What may become of a connection handed to the machine in a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Close(CloseReason),
    Granted,
    Idle,
}

/// The bookkeeping of one step.
#[derive(Debug)]
struct Ctx {
    kind: Kind,
    before: Status,
    pt_before: Option<Instant>,
    /// The step must change nothing: no action, same status, same `poll_timeout()`.
    expect_noop: bool,
    /// `handle_timeout` was called at this step's `now`.
    timeout_called: bool,
    /// The waiters the step must time out (or fail, after a fatal connect error), in this
    /// order.
    expect_timeouts: VecDeque<WaiterId>,
    /// The waiters `handle_timeout` must shed, after the time-outs, in this order, and the
    /// number waiting they report.
    expect_shed: VecDeque<WaiterId>,
    shed_waiting: usize,
    /// The connection handed to the machine and its acceptable fates.
    inflight: Option<(Conn, Vec<Fate>)>,
    fate: Option<Fate>,
    any_action: bool,
    opens: usize,
    grants: usize,
    closes: Vec<(Conn, CloseReason)>,
    /// The idle connections (oldest first) before the step.
    idle_before: Vec<Conn>,
    /// Set by acquire and try_acquire: which idle connection (if any) was leased.
    lease_idle: Option<Option<Conn>>,
}

/// The driver and the reference model.
struct Harness {
    m: Machine<Conn, Error>,
    config: Config,
    max_size: usize,
    t0: Instant,
    now: Instant,
    next_conn: Conn,
    next_bogus: Conn,
    conns: BTreeMap<Conn, ConnInfo>,
    /// Idle connections, in the machine's order: oldest at the front, next leased at the back.
    idle_order: Vec<Conn>,
    tasks: Vec<Task>,
    pending_opens: Vec<SlotId>,
    pending_closes: Vec<PendingClose>,
    /// Every slot id seen in an action, in order of appearance.
    all_slots: Vec<SlotId>,
    seen_slots: BTreeSet<SlotId>,
    /// Every connection ever emitted in a Close action.
    closed_conns: BTreeSet<Conn>,
    waiters: BTreeMap<WaiterId, WInfo>,
    /// The FIFO of queued waiters.
    queue: VecDeque<WaiterId>,
    /// Waiters taken or cancelled: their ids are stale.
    dead_waiters: Vec<WaiterId>,
    closed: bool,
    drained: u32,
    /// Connect failures since the last success, one per outage step: failures of connects
    /// opened before the last counted failure (in flight with it) do not count.
    streak: u32,
    /// `all_slots.len()` at the last counted failure: slots from there on count.
    outage_mark: usize,
    last_error: Option<Error>,
    /// The last connect failed fatally.
    fatal: bool,
    /// The last fatal connect error.
    fatal_error: Option<Error>,
    failures_total: u64,
    /// The earliest and latest instants the current back-off may end.
    backoff_floor: Option<Instant>,
    backoff_ceil: Option<Instant>,
    /// `handle_timeout` was called at or after `backoff_ceil` since the last failure.
    backoff_over: bool,
    /// Load shedding: when the current queue interval ends (`None` before the first), the
    /// shortest wait served in it, and whether the last interval left the pool overloaded.
    interval_end: Option<Instant>,
    min_wait: Option<Duration>,
    overloaded: bool,
    /// How often each kind of event happened, to check that the generator reaches them.
    stats: BTreeMap<&'static str, u64>,
}

impl Harness {
    fn new(config: Config) -> Result<Self, String> {
        let m = Machine::new(config.clone()).map_err(|e| format!("valid config refused: {e}"))?;
        let t0 = Instant::now();
        let mut h = Self {
            m,
            max_size: config.max_size,
            config,
            t0,
            now: t0,
            next_conn: 1,
            next_bogus: 1 << 40,
            conns: BTreeMap::new(),
            idle_order: Vec::new(),
            tasks: Vec::new(),
            pending_opens: Vec::new(),
            pending_closes: Vec::new(),
            all_slots: Vec::new(),
            seen_slots: BTreeSet::new(),
            closed_conns: BTreeSet::new(),
            waiters: BTreeMap::new(),
            queue: VecDeque::new(),
            dead_waiters: Vec::new(),
            closed: false,
            drained: 0,
            streak: 0,
            outage_mark: 0,
            last_error: None,
            fatal: false,
            fatal_error: None,
            failures_total: 0,
            backoff_floor: None,
            backoff_ceil: None,
            backoff_over: false,
            interval_end: None,
            min_wait: None,
            overloaded: false,
            stats: BTreeMap::new(),
        };
        let mut ctx = h.ctx(Kind::Plain);
        ctx.before = Status::default();
        h.drain(&mut ctx)?;
        ensure!(
            ctx.opens == h.config.min_idle,
            "a new machine asked for {} opens, min_idle is {}",
            ctx.opens,
            h.config.min_idle
        );
        h.finish_step(&mut ctx)?;
        Ok(h)
    }

    fn hit(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    fn ctx(&self, kind: Kind) -> Ctx {
        Ctx {
            kind,
            before: self.m.status(),
            pt_before: self.m.poll_timeout(),
            expect_noop: false,
            timeout_called: false,
            expect_timeouts: VecDeque::new(),
            expect_shed: VecDeque::new(),
            shed_waiting: 0,
            inflight: None,
            fate: None,
            any_action: false,
            opens: 0,
            grants: 0,
            closes: Vec::new(),
            idle_before: self.idle_order.clone(),
            lease_idle: None,
        }
    }

    // ----- model helpers -----------------------------------------------------------------

    fn conn(&self, c: Conn) -> Result<&ConnInfo, String> {
        self.conns
            .get(&c)
            .ok_or_else(|| format!("connection {c} was never handed to the machine"))
    }

    fn conn_mut(&mut self, c: Conn) -> Result<&mut ConnInfo, String> {
        self.conns
            .get_mut(&c)
            .ok_or_else(|| format!("connection {c} was never handed to the machine"))
    }

    /// Its lifetime may have ended (the jitter is unknown to the harness).
    fn possibly_expired(&self, c: Conn) -> bool {
        match (self.config.max_lifetime, self.conns.get(&c)) {
            (Some(l), Some(info)) => {
                self.now >= info.connected_at + l - self.config.max_lifetime_jitter
            }
            _ => false,
        }
    }

    /// Its lifetime has ended whatever the jitter.
    fn definitely_expired(&self, c: Conn) -> bool {
        match (self.config.max_lifetime, self.conns.get(&c)) {
            (Some(l), Some(info)) => self.now >= info.connected_at + l,
            _ => false,
        }
    }

    /// The fates of a healthy connection given back to the machine (its `dispatch`).
    fn dispatch_fates(&self, c: Conn, live_before: usize) -> Vec<Fate> {
        if self.closed {
            return vec![Fate::Close(CloseReason::PoolClosed)];
        }
        let mut fates = Vec::new();
        if self.possibly_expired(c) {
            fates.push(Fate::Close(CloseReason::MaxLifetime));
        }
        if self.definitely_expired(c) {
            return fates;
        }
        // Surplus means more live connections (closing ones are on their way out) than
        // max_size: a shrink closes only what is needed.
        if live_before > self.max_size {
            fates.push(Fate::Close(CloseReason::Surplus));
        } else if self.queue.is_empty() {
            fates.push(Fate::Idle);
        } else {
            fates.push(Fate::Granted);
        }
        fates
    }

    fn remove_waiter(&mut self, w: WaiterId) {
        self.waiters.remove(&w);
        self.queue.retain(|q| *q != w);
        self.dead_waiters.push(w);
    }

    fn live_waiters(&self, filter: impl Fn(&WState) -> bool) -> Vec<WaiterId> {
        self.waiters
            .iter()
            .filter(|(_, info)| filter(&info.state))
            .map(|(w, _)| *w)
            .collect()
    }

    /// How long waiters wait before they are shed, while the pool is overloaded.
    fn shed_after(&self) -> Option<Duration> {
        self.config
            .queue_target
            .filter(|_| self.overloaded)
            .map(|t| t * 2)
    }

    /// The model of the queue interval (`ARCHITECTURE.md`, "Overload"): an interval ends at
    /// the first served wait, queueing or `handle_timeout` at or after its end. It leaves the
    /// pool overloaded if the shortest wait served in it exceeded the target, or, with
    /// nobody served, if the oldest waiter (queued at `head`) had waited longer.
    fn roll(&mut self, head: Option<Instant>) {
        let Some(target) = self.config.queue_target else {
            return;
        };
        let now = self.now;
        match self.interval_end {
            Some(end) if now < end => return,
            Some(_) => {
                let observed = self.min_wait.take().or(head.map(|t| now - t));
                let was = self.overloaded;
                self.overloaded = observed.is_some_and(|w| w > target);
                match (was, self.overloaded) {
                    (false, true) if self.min_wait.is_none() && head.is_some() => {
                        self.hit("overloaded")
                    }
                    (true, false) => self.hit("overload over"),
                    _ => {}
                }
                if self.overloaded && observed != head.map(|t| now - t) {
                    self.hit("overloaded by served waits");
                }
            }
            None => {}
        }
        self.interval_end = Some(now + self.config.queue_interval);
    }

    /// A task got a connection after waiting `wait` (zero: at once, or it went idle).
    fn observe(&mut self, wait: Duration) {
        if self.config.queue_target.is_none() {
            return;
        }
        let head = self.queue.front().map(|w| self.waiters[w].enqueued);
        self.roll(head);
        self.min_wait = Some(self.min_wait.map_or(wait, |m| m.min(wait)));
    }

    fn pick<T: Copy>(items: &[T], sel: usize) -> Option<T> {
        if items.is_empty() {
            None
        } else {
            items.get(sel % items.len()).copied()
        }
    }

    /// A slot ever issued that passes `keep`, chosen by `sel`.
    fn pick_slot(&self, sel: usize, keep: impl Fn(&SlotId) -> bool) -> Option<SlotId> {
        let slots: Vec<SlotId> = self.all_slots.iter().copied().filter(|s| keep(s)).collect();
        Self::pick(&slots, sel)
    }

    fn bogus_conn(&mut self) -> Conn {
        self.next_bogus += 1;
        self.next_bogus
    }

    /// A lease of another machine, whose serial grows with `churn`.
    fn foreign_lease(&self, churn: u8) -> Result<Lease, String> {
        let now = self.now;
        let mut f: Machine<Conn, Error> =
            Machine::new(Config::new(1)).map_err(|e| e.to_string())?;
        let Ok(Acquired::Waiting(w)) = f.acquire(now, None) else {
            return Err("foreign machine: first acquire is not Waiting".into());
        };
        let Some(Action::Open { slot }) = f.poll_action() else {
            return Err("foreign machine: no Open".into());
        };
        f.handle_connected(slot, 0, now)
            .map_err(|_| "foreign machine: connect rejected".to_string())?;
        let Ok(Some((mut lease, mut c))) = f.take(w, now) else {
            return Err("foreign machine: take failed".into());
        };
        for _ in 0..churn {
            f.release(lease, c, Release::Reuse, now)
                .map_err(|_| "foreign machine: release rejected".to_string())?;
            while f.poll_action().is_some() {}
            let Ok(Acquired::Ready(l, c2)) = f.acquire(now, None) else {
                return Err("foreign machine: acquire not Ready".into());
            };
            (lease, c) = (l, c2);
        }
        Ok(lease)
    }

    // ----- one step ------------------------------------------------------------------------

    fn apply(&mut self, op: &Op) -> Result<(), String> {
        let mut ctx = self.ctx(Kind::Plain);
        let now = self.now;
        match *op {
            Op::Acquire { deadline_ms } => {
                let deadline = deadline_ms.map(|d| now + ms(d));
                let must_ready = self.idle_order.iter().any(|&c| !self.possibly_expired(c));
                let may_ready = self.idle_order.iter().any(|&c| !self.definitely_expired(c));
                match self.m.acquire(now, deadline) {
                    Err(AcquireError::Closed) => {
                        self.hit("acquire after close");
                        ensure!(self.closed, "acquire failed with Closed on an open pool");
                        ctx.expect_noop = true;
                    }
                    _ if self.closed => return Err("acquire succeeded after close".into()),
                    Ok(Acquired::Ready(lease, c)) => {
                        ensure!(
                            may_ready,
                            "acquire Ready({c}) but no idle connection could be"
                        );
                        self.take_idle(c, lease, &mut ctx)?;
                    }
                    Ok(Acquired::Waiting(w)) => {
                        ensure!(
                            !must_ready,
                            "acquire waits while a fresh idle connection exists"
                        );
                        let before = ctx.before;
                        ensure!(
                            !(self.fatal
                                && before.opening == 0
                                && before.waiting >= before.in_use
                                && self.backoff_floor.is_some_and(|t| now < t)),
                            "acquire waits although a fatal error left it no hope ({before:?})"
                        );
                        ensure!(
                            deadline.is_none_or(|d| d > now),
                            "acquire waits with a deadline already due"
                        );
                        ensure!(
                            !self.waiters.contains_key(&w) && !self.dead_waiters.contains(&w),
                            "acquire reused waiter id {w:?}"
                        );
                        ensure!(
                            self.config
                                .max_waiters
                                .is_none_or(|max| self.queue.len() < max),
                            "acquire waits with {} waiting, max_waiters {:?}",
                            self.queue.len(),
                            self.config.max_waiters
                        );
                        let head = self.queue.front().map(|w| self.waiters[w].enqueued);
                        self.roll(head);
                        self.waiters.insert(
                            w,
                            WInfo {
                                enqueued: now,
                                deadline,
                                state: WState::Queued,
                            },
                        );
                        self.hit(if deadline.is_some() {
                            "acquire waits with deadline"
                        } else {
                            "acquire waits"
                        });
                        self.queue.push_back(w);
                        ctx.lease_idle = Some(None);
                    }
                    Err(AcquireError::TimedOut(t)) => {
                        ensure!(
                            !must_ready,
                            "acquire timed out while a fresh idle connection exists"
                        );
                        ensure!(
                            deadline.is_some_and(|d| d <= now),
                            "acquire timed out at once with deadline {deadline:?}"
                        );
                        ensure!(
                            t.waited == Duration::ZERO,
                            "immediate time-out waited {:?}",
                            t.waited
                        );
                        self.hit("acquire times out at once");
                        let mut expected = self.m.status();
                        expected.waiting += 1;
                        ensure!(
                            t.status == expected,
                            "time-out status {:?}, expected {expected:?}",
                            t.status
                        );
                        ensure!(
                            t.last_connect_error == self.last_error,
                            "time-out reports error {:?}, expected {:?}",
                            t.last_connect_error,
                            self.last_error
                        );
                        ctx.lease_idle = Some(None);
                    }
                    Err(AcquireError::ConnectFailed(e, status)) => {
                        let before = ctx.before;
                        ensure!(
                            !must_ready,
                            "acquire failed fast while a fresh idle connection exists"
                        );
                        ensure!(
                            self.fatal
                                && before.opening == 0
                                && before.waiting >= before.in_use
                                && self.backoff_ceil.is_some_and(|t| now < t),
                            "acquire failed fast with {e:?}: fatal {}, {before:?}, back-off until +{:?}",
                            self.fatal,
                            self.backoff_ceil.map(|t| t - self.t0)
                        );
                        ensure!(
                            Some(&e) == self.fatal_error.as_ref(),
                            "failed fast with {e:?}, the last fatal error was {:?}",
                            self.fatal_error
                        );
                        ensure!(
                            status.waiting == before.waiting + 1,
                            "a fast failure reports {} waiting, expected {}",
                            status.waiting,
                            before.waiting + 1
                        );
                        self.hit("acquire fails fast");
                        ctx.lease_idle = Some(None);
                    }
                    Err(AcquireError::Exhausted(status)) => {
                        let before = ctx.before;
                        ensure!(
                            !must_ready,
                            "acquire refused while a fresh idle connection exists"
                        );
                        ensure!(
                            self.config
                                .max_waiters
                                .is_some_and(|max| self.queue.len() >= max),
                            "acquire refused with {} waiting, max_waiters {:?}",
                            self.queue.len(),
                            self.config.max_waiters
                        );
                        ensure!(
                            deadline.is_none_or(|d| d > now),
                            "a due deadline is a time-out, not a refusal"
                        );
                        ensure!(
                            status == self.m.status() && status.waiting == before.waiting,
                            "refusal reports {status:?}, the pool is {:?}",
                            self.m.status()
                        );
                        self.hit("acquire refused: queue full");
                        ctx.lease_idle = Some(None);
                    }
                    Err(e) => return Err(format!("acquire failed with {e:?}")),
                }
            }
            Op::TryAcquire => {
                let must_ready = self.idle_order.iter().any(|&c| !self.possibly_expired(c));
                let may_ready = self.idle_order.iter().any(|&c| !self.definitely_expired(c));
                match self.m.try_acquire(now) {
                    Err(AcquireError::Closed) => {
                        ensure!(
                            self.closed,
                            "try_acquire failed with Closed on an open pool"
                        );
                        ctx.expect_noop = true;
                    }
                    _ if self.closed => return Err("try_acquire succeeded after close".into()),
                    Ok((lease, c)) => {
                        ensure!(
                            may_ready,
                            "try_acquire got {c} but no idle connection could be"
                        );
                        self.take_idle(c, lease, &mut ctx)?;
                    }
                    Err(AcquireError::Exhausted(status)) => {
                        self.hit("try_acquire exhausted");
                        ensure!(
                            !must_ready,
                            "try_acquire exhausted while a fresh idle connection exists"
                        );
                        ensure!(
                            status == self.m.status(),
                            "Exhausted({status:?}) but status is {:?}",
                            self.m.status()
                        );
                        ctx.lease_idle = Some(None);
                    }
                    Err(e) => return Err(format!("try_acquire failed with {e:?}")),
                }
            }
            Op::Take { sel } | Op::TakeWoken { sel } => {
                let candidates = if matches!(op, Op::Take { .. }) {
                    self.live_waiters(|_| true)
                } else {
                    self.live_waiters(|s| *s != WState::Queued)
                };
                let Some(w) = Self::pick(&candidates, sel) else {
                    return Ok(());
                };
                self.take(w, &mut ctx)?;
            }
            Op::TakeStale { sel } => {
                let Some(w) = Self::pick(&self.dead_waiters, sel) else {
                    return Ok(());
                };
                match self.m.take(w, now) {
                    Err(AcquireError::UnknownWaiter(u)) if u == w => self.hit("stale take"),
                    other => return Err(format!("take of stale {w:?} gave {other:?}")),
                }
                ctx.expect_noop = true;
            }
            Op::Cancel { sel } | Op::CancelGranted { sel } => {
                let candidates = if matches!(op, Op::Cancel { .. }) {
                    self.live_waiters(|_| true)
                } else {
                    self.live_waiters(|s| matches!(s, WState::Granted(_)))
                };
                let Some(w) = Self::pick(&candidates, sel) else {
                    return Ok(());
                };
                let state = self.waiters[&w].state;
                ensure!(
                    self.m.cancel(w, now),
                    "cancel of live waiter {w:?} returned false"
                );
                self.remove_waiter(w);
                match state {
                    WState::Granted(c) => {
                        self.hit("cancel granted");
                        let fates = self.dispatch_fates(c, live(&ctx.before));
                        let info = self.conn_mut(c)?;
                        ensure!(
                            info.loc == Loc::Granted(w),
                            "granted {c} was at {:?}",
                            info.loc
                        );
                        info.loc = Loc::InFlight;
                        ctx.inflight = Some((c, fates));
                    }
                    // Not a no-op even for a resolved waiter: like every input that may
                    // free capacity, cancel opens for demand once a back-off is over.
                    WState::Queued
                    | WState::TimedOut { .. }
                    | WState::Failed { .. }
                    | WState::Shed { .. }
                    | WState::Closed => {}
                }
            }
            Op::CancelStale { sel } => {
                let Some(w) = Self::pick(&self.dead_waiters, sel) else {
                    return Ok(());
                };
                ensure!(
                    !self.m.cancel(w, now),
                    "cancel of stale {w:?} returned true"
                );
                self.hit("stale cancel");
                ctx.expect_noop = true;
            }
            Op::Release { sel, how } => {
                if self.tasks.is_empty() {
                    return Ok(());
                }
                let task = self.tasks.remove(sel % self.tasks.len());
                let c = task.conn;
                self.hit(if task.reclaimed {
                    "release reclaimed"
                } else {
                    "release"
                });
                let fates = if task.reclaimed {
                    vec![Fate::Close(CloseReason::Reclaimed)]
                } else {
                    match how {
                        Release::Reuse => self.dispatch_fates(c, live(&ctx.before)),
                        Release::Broken => vec![Fate::Close(CloseReason::Broken)],
                        Release::Discard => vec![Fate::Close(CloseReason::Discarded)],
                    }
                };
                if let Err(rejected) = self.m.release(task.lease, c, how, now) {
                    return Err(format!("release of {c} rejected: {rejected:?}"));
                }
                let info = self.conn_mut(c)?;
                ensure!(info.loc == Loc::Task, "released {c} was at {:?}", info.loc);
                info.loc = Loc::InFlight;
                ctx.inflight = Some((c, fates));
            }
            Op::Detach { sel } => {
                if self.tasks.is_empty() {
                    return Ok(());
                }
                let task = self.tasks.remove(sel % self.tasks.len());
                if let Err(rejected) = self.m.detach(task.lease, now) {
                    return Err(format!("detach of {} rejected: {rejected:?}", task.conn));
                }
                self.conn_mut(task.conn)?.loc = Loc::Detached;
                self.hit("detach");
            }
            Op::ForeignRelease { churn } | Op::ForeignDetach { churn } => {
                let lease = self.foreign_lease(churn)?;
                if self.tasks.iter().any(|t| t.lease.id() == lease.id()) {
                    self.hit("foreign lease collides");
                    // Same index and serial as one of ours: indistinguishable by design.
                    return Ok(());
                }
                if matches!(op, Op::ForeignRelease { .. }) {
                    let bogus = self.bogus_conn();
                    match self.m.release(lease, bogus, Release::Reuse, now) {
                        Err(Rejected { conn: Some(c) }) if c == bogus => {
                            self.hit("foreign release")
                        }
                        other => return Err(format!("foreign release gave {other:?}")),
                    }
                } else {
                    match self.m.detach(lease, now) {
                        Err(Rejected { conn: None }) => self.hit("foreign detach"),
                        other => return Err(format!("foreign detach gave {other:?}")),
                    }
                }
                ctx.expect_noop = true;
            }
            Op::ConnectOk { sel } => {
                if self.pending_opens.is_empty() {
                    return Ok(());
                }
                let slot = self.pending_opens.remove(sel % self.pending_opens.len());
                let c = self.next_conn;
                self.next_conn += 1;
                if let Err(rejected) = self.m.handle_connected(slot, c, now) {
                    return Err(format!(
                        "connect of pending {slot:?} rejected: {rejected:?}"
                    ));
                }
                self.conns.insert(
                    c,
                    ConnInfo {
                        slot,
                        connected_at: now,
                        loc: Loc::InFlight,
                        idle_since: now,
                    },
                );
                let fates = self.dispatch_fates(c, live(&ctx.before));
                ctx.inflight = Some((c, fates));
                let position = self.all_slots.iter().position(|s| *s == slot);
                if position.is_some_and(|p| p >= self.outage_mark) {
                    self.streak = 0;
                    self.last_error = None;
                    self.fatal = false;
                    self.backoff_floor = None;
                    self.backoff_ceil = None;
                    self.backoff_over = false;
                } else {
                    // In flight when the last failure was counted: the outage goes on.
                    self.hit("success of a connect in flight with the last failure");
                }
            }
            Op::ConnectFail { sel, fatal } => {
                if self.pending_opens.is_empty() {
                    return Ok(());
                }
                let slot = self.pending_opens.remove(sel % self.pending_opens.len());
                self.failures_total += 1;
                let error = format!("refused #{}", self.failures_total);
                let failure = if fatal {
                    // Every queued waiter beyond the connections in use fails, in order.
                    ctx.kind = Kind::Fatal;
                    ctx.expect_timeouts =
                        self.queue.iter().skip(ctx.before.in_use).copied().collect();
                    self.fatal_error = Some(error.clone());
                    self.hit(if ctx.expect_timeouts.is_empty() {
                        "fatal connect failure"
                    } else {
                        "fatal connect failure fails waiters"
                    });
                    Failure::Fatal
                } else {
                    Failure::Transient
                };
                self.fatal = fatal;
                ensure!(
                    self.m
                        .handle_connect_failed(slot, error.clone(), failure, now),
                    "failure of pending {slot:?} ignored"
                );
                self.last_error = Some(error);
                let position = self.all_slots.iter().position(|s| *s == slot);
                if position.is_none_or(|p| p < self.outage_mark) {
                    // In flight with the failure that started this outage step: the
                    // back-off neither grows nor restarts.
                    self.hit("failure of a connect in flight with the last");
                } else {
                    self.outage_mark = self.all_slots.len();
                    self.streak += 1;
                    let exp = (self.streak - 1).min(31);
                    let delay = self
                        .config
                        .backoff_base
                        .checked_mul(1 << exp)
                        .unwrap_or(Duration::MAX)
                        .min(self.config.backoff_max);
                    self.backoff_floor = Some(now + delay / 2);
                    self.backoff_ceil = Some(now + delay);
                    self.backoff_over = false;
                }
            }
            Op::StaleConnected { sel } => {
                let Some(slot) = self.pick_slot(sel, |s| !self.pending_opens.contains(s)) else {
                    return Ok(());
                };
                let bogus = self.bogus_conn();
                match self.m.handle_connected(slot, bogus, now) {
                    Err(Rejected { conn: Some(c) }) if c == bogus => self.hit("stale connect"),
                    other => return Err(format!("stale connect of {slot:?} gave {other:?}")),
                }
                ctx.expect_noop = true;
            }
            Op::StaleConnectFailed { sel } => {
                let Some(slot) = self.pick_slot(sel, |s| !self.pending_opens.contains(s)) else {
                    return Ok(());
                };
                ensure!(
                    !self
                        .m
                        .handle_connect_failed(slot, "stale".into(), Failure::Transient, now),
                    "stale connect failure of {slot:?} accepted"
                );
                self.hit("stale connect failure");
                ctx.expect_noop = true;
            }
            Op::Closed { sel } => {
                if self.pending_closes.is_empty() {
                    return Ok(());
                }
                let close = self.pending_closes.remove(sel % self.pending_closes.len());
                ensure!(
                    self.m.handle_closed(close.slot, now),
                    "close report of pending {:?} ignored",
                    close.slot
                );
                self.conn_mut(close.conn)?.loc = Loc::Closed;
            }
            Op::StaleClosed { sel } => {
                let Some(slot) =
                    self.pick_slot(sel, |s| !self.pending_closes.iter().any(|p| p.slot == *s))
                else {
                    return Ok(());
                };
                ensure!(
                    !self.m.handle_closed(slot, now),
                    "stale close report of {slot:?} accepted"
                );
                self.hit("stale close report");
                ctx.expect_noop = true;
            }
            Op::Advance { ms: d } => self.now += ms(d),
            Op::AdvanceToTimeout => {
                if let Some(t) = self.m.poll_timeout() {
                    self.now = self.now.max(t);
                }
            }
            Op::AdvanceJustBefore => {
                let Some(t) = self.m.poll_timeout() else {
                    return Ok(());
                };
                let just_before = t - Duration::from_nanos(1);
                if just_before <= self.now {
                    return Ok(());
                }
                self.now = just_before;
                self.handle_timeout(&mut ctx);
                ensure!(
                    ctx.expect_noop,
                    "handle_timeout before poll_timeout() not a no-op"
                );
            }
            Op::HandleTimeout => self.handle_timeout(&mut ctx),
            Op::Tick => {
                if let Some(t) = self.m.poll_timeout() {
                    self.now = self.now.max(t);
                }
                self.handle_timeout(&mut ctx);
            }
            Op::Close => {
                ctx.kind = Kind::Close;
                ctx.expect_noop = self.closed;
                self.m.close();
                self.closed = true;
                self.backoff_floor = None;
                self.backoff_ceil = None;
            }
            Op::SetMaxSize { max } => {
                let valid = max >= 1 && max >= self.config.min_idle && max <= MAX_SIZE_LIMIT;
                let result = self.m.set_max_size(max, now);
                ensure!(
                    result.is_ok() == valid,
                    "set_max_size({max}) gave {result:?} with min_idle {}",
                    self.config.min_idle
                );
                if valid {
                    ctx.kind = Kind::SetMax;
                    self.max_size = max;
                } else {
                    ctx.expect_noop = true;
                }
            }
        }
        self.drain(&mut ctx)?;
        self.finish_step(&mut ctx)
    }

    /// An acquire leased idle connection `c`.
    fn take_idle(&mut self, c: Conn, lease: Lease, ctx: &mut Ctx) -> Result<(), String> {
        ensure!(
            !self.definitely_expired(c),
            "leased {c} is past its max lifetime"
        );
        let info = self.conn_mut(c)?;
        ensure!(info.loc == Loc::Idle, "leased {c} was at {:?}", info.loc);
        info.loc = Loc::Task;
        self.idle_order.retain(|x| *x != c);
        self.push_task(lease, c)?;
        self.observe(Duration::ZERO);
        self.hit("lease idle");
        ctx.lease_idle = Some(Some(c));
        Ok(())
    }

    fn push_task(&mut self, lease: Lease, conn: Conn) -> Result<(), String> {
        ensure!(
            !self.tasks.iter().any(|t| t.lease.id() == lease.id()),
            "lease id {:?} issued twice",
            lease.id()
        );
        self.tasks.push(Task {
            lease,
            conn,
            since: self.now,
            leak_reported: false,
            reclaimed: false,
        });
        Ok(())
    }

    fn take(&mut self, w: WaiterId, ctx: &mut Ctx) -> Result<(), String> {
        let info = &self.waiters[&w];
        let (state, enqueued) = (info.state, info.enqueued);
        let result = self.m.take(w, self.now);
        match (result, state) {
            (Ok(None), WState::Queued) => ctx.expect_noop = true,
            (Ok(Some((lease, c))), WState::Granted(granted)) => {
                self.hit("take granted");
                ensure!(c == granted, "take gave {c}, {granted} was granted");
                let conn = self.conn_mut(c)?;
                ensure!(
                    conn.loc == Loc::Granted(w),
                    "granted {c} was at {:?}",
                    conn.loc
                );
                conn.loc = Loc::Task;
                self.remove_waiter(w);
                self.push_task(lease, c)?;
            }
            (Err(AcquireError::TimedOut(t)), WState::TimedOut { at }) => {
                self.hit("take timed out");
                ensure!(
                    t.waited == at.saturating_duration_since(enqueued),
                    "waited {:?}, expected {:?}",
                    t.waited,
                    at.saturating_duration_since(enqueued)
                );
                ensure!(
                    t.last_connect_error == self.last_error,
                    "time-out reports error {:?}, expected {:?}",
                    t.last_connect_error,
                    self.last_error
                );
                self.remove_waiter(w);
                ctx.expect_noop = true;
            }
            (Err(AcquireError::ConnectFailed(e, s)), WState::Failed { waiting }) => {
                self.hit("take failed by a fatal connect error");
                ensure!(
                    Some(&e) == self.fatal_error.as_ref(),
                    "failed with {e:?}, the newest fatal error is {:?}",
                    self.fatal_error
                );
                ensure!(
                    s.waiting == waiting,
                    "the failure reports {} waiting, {waiting} were",
                    s.waiting
                );
                self.remove_waiter(w);
                ctx.expect_noop = true;
            }
            (Err(AcquireError::Shed(shed)), WState::Shed { at, waiting }) => {
                self.hit("take shed");
                let waited = at.saturating_duration_since(enqueued);
                ensure!(
                    shed.waited == waited,
                    "shed after {:?}, expected {waited:?}",
                    shed.waited
                );
                ensure!(
                    Some(shed.queue_target) == self.config.queue_target
                        && shed.queue_interval == self.config.queue_interval,
                    "shed reports target {:?} and interval {:?}",
                    shed.queue_target,
                    shed.queue_interval
                );
                ensure!(
                    shed.status.waiting == waiting && shed.status.idle == 0,
                    "shed reports {:?}, {waiting} were waiting and none idle",
                    shed.status
                );
                self.remove_waiter(w);
                ctx.expect_noop = true;
            }
            (Err(AcquireError::Closed), WState::Closed) => {
                self.hit("take closed");
                self.remove_waiter(w);
                ctx.expect_noop = true;
            }
            (result, state) => {
                return Err(format!("take of {w:?} in state {state:?} gave {result:?}"));
            }
        }
        Ok(())
    }

    fn handle_timeout(&mut self, ctx: &mut Ctx) {
        let now = self.now;
        ctx.kind = Kind::Timeout;
        ctx.timeout_called = true;
        let runs = ctx.pt_before.is_some_and(|t| t <= now);
        if runs {
            self.hit("handle_timeout runs");
            ctx.expect_timeouts = self
                .queue
                .iter()
                .copied()
                .filter(|w| self.waiters[w].deadline.is_some_and(|d| d <= now))
                .collect();
            // Then the interval ends if it is due, judged by the waiters left, and while
            // overloaded every one that has waited twice the target is shed.
            let survivors: Vec<WaiterId> = self
                .queue
                .iter()
                .copied()
                .filter(|w| !ctx.expect_timeouts.contains(w))
                .collect();
            let head = survivors.first().map(|w| self.waiters[w].enqueued);
            self.roll(head);
            if let Some(after) = self.shed_after() {
                ctx.shed_waiting = survivors.len();
                ctx.expect_shed = survivors
                    .into_iter()
                    .filter(|w| now - self.waiters[w].enqueued >= after)
                    .collect();
            }
        } else {
            self.hit("handle_timeout no-op");
            ctx.expect_noop = true;
        }
        self.m.handle_timeout(now);
        if self.backoff_ceil.is_some_and(|t| t <= now) {
            self.backoff_over = true;
        }
    }

    // ----- actions -------------------------------------------------------------------------

    fn drain(&mut self, ctx: &mut Ctx) -> Result<(), String> {
        while let Some(action) = self.m.poll_action() {
            ctx.any_action = true;
            match action {
                Action::Open { slot } => self.on_open(slot, ctx)?,
                Action::Close { slot, conn, reason } => self.on_close(slot, conn, reason, ctx)?,
                Action::Wake { waiter } => self.on_wake(waiter, ctx)?,
                Action::LeakSuspected { lease, held_for } => {
                    ensure!(
                        ctx.kind == Kind::Timeout,
                        "leak reported outside handle_timeout"
                    );
                    let limit = self.config.leak_threshold;
                    let now = self.now;
                    let Some(task) = self.tasks.iter_mut().find(|t| t.lease.id() == lease) else {
                        return Err(format!("leak reported for unknown lease {lease:?}"));
                    };
                    ensure!(!task.leak_reported, "leak of {lease:?} reported twice");
                    ensure!(!task.reclaimed, "leak of reclaimed {lease:?} reported");
                    ensure!(
                        held_for == now - task.since,
                        "leak held_for {held_for:?} is wrong"
                    );
                    ensure!(
                        limit.is_some_and(|l| held_for >= l),
                        "leak after {held_for:?} with threshold {limit:?}"
                    );
                    task.leak_reported = true;
                    self.hit("leak suspected");
                }
                Action::Reclaimed { lease, held_for } => {
                    ensure!(ctx.kind == Kind::Timeout, "reclaim outside handle_timeout");
                    let limit = self.config.reclaim_after;
                    let leak = self.config.leak_threshold;
                    let now = self.now;
                    let Some(task) = self.tasks.iter_mut().find(|t| t.lease.id() == lease) else {
                        return Err(format!("reclaim of unknown lease {lease:?}"));
                    };
                    ensure!(!task.reclaimed, "{lease:?} reclaimed twice");
                    ensure!(
                        task.leak_reported || leak.is_none(),
                        "{lease:?} reclaimed before being reported as a leak"
                    );
                    ensure!(
                        held_for == now - task.since,
                        "reclaim held_for {held_for:?} is wrong"
                    );
                    ensure!(
                        limit.is_some_and(|l| held_for >= l),
                        "reclaim after {held_for:?} with reclaim_after {limit:?}"
                    );
                    task.reclaimed = true;
                    self.hit("reclaimed");
                }
                Action::Drained => {
                    ensure!(self.closed, "Drained before close");
                    ensure!(self.drained == 0, "Drained emitted twice");
                    self.drained += 1;
                    self.hit("drained");
                }
            }
        }
        Ok(())
    }

    fn on_open(&mut self, slot: SlotId, ctx: &mut Ctx) -> Result<(), String> {
        ensure!(!self.closed, "Open after close");
        ensure!(
            self.seen_slots.insert(slot),
            "Open of a slot id seen before: {slot:?}"
        );
        if self.streak > 0 {
            ensure!(
                self.backoff_floor.is_none_or(|t| self.now >= t),
                "Open during back-off (ends no earlier than +{:?})",
                self.backoff_floor.map(|t| t - self.t0)
            );
        }
        self.all_slots.push(slot);
        if self.streak > 0 {
            self.hit("open after failure");
        }
        self.pending_opens.push(slot);
        ctx.opens += 1;
        Ok(())
    }

    fn on_close(
        &mut self,
        slot: SlotId,
        c: Conn,
        reason: CloseReason,
        ctx: &mut Ctx,
    ) -> Result<(), String> {
        ensure!(
            self.closed_conns.insert(c),
            "connection {c} emitted in a second Close ({reason})"
        );
        let possibly_expired = self.possibly_expired(c);
        let now = self.now;
        let idle_len = self.idle_order.len();
        let min_idle = self.config.min_idle;
        let idle_timeout = self.config.idle_timeout;
        let closed = self.closed;
        let info = self.conn(c)?;
        ensure!(
            info.slot == slot,
            "Close of {c} names {slot:?}, it has {:?}",
            info.slot
        );
        match info.loc {
            Loc::Idle => {
                let ok = match reason {
                    CloseReason::MaxLifetime => possibly_expired,
                    CloseReason::IdleTimeout => {
                        ctx.kind == Kind::Timeout
                            && idle_len > min_idle
                            && idle_timeout.is_some_and(|d| now - info.idle_since >= d)
                    }
                    CloseReason::Surplus => ctx.kind == Kind::SetMax,
                    CloseReason::PoolClosed => ctx.kind == Kind::Close,
                    _ => false,
                };
                ensure!(ok, "idle {c} closed for {reason} at the wrong time");
                self.idle_order.retain(|x| *x != c);
            }
            Loc::Granted(w) => {
                ensure!(
                    ctx.kind == Kind::Close && reason == CloseReason::PoolClosed,
                    "granted {c} closed for {reason} outside close()"
                );
                let waiter = self
                    .waiters
                    .get_mut(&w)
                    .ok_or_else(|| format!("{c} granted to unknown {w:?}"))?;
                ensure!(
                    waiter.state == WState::Granted(c),
                    "{w:?} is {:?}",
                    waiter.state
                );
                waiter.state = WState::Closed;
            }
            Loc::InFlight => {
                ensure!(ctx.fate.is_none(), "in-flight {c} had two fates");
                ctx.fate = Some(Fate::Close(reason));
            }
            loc => return Err(format!("Close of {c} ({reason}) which is at {loc:?}")),
        }
        ensure!(
            closed || reason != CloseReason::PoolClosed,
            "PoolClosed before close"
        );
        ensure!(
            !self.pending_closes.iter().any(|p| p.slot == slot),
            "two closes pending for {slot:?}"
        );
        self.conn_mut(c)?.loc = Loc::Closing;
        self.pending_closes.push(PendingClose {
            slot,
            conn: c,
            counted: reason != CloseReason::Reclaimed,
        });
        ctx.closes.push((c, reason));
        self.hit(match reason {
            CloseReason::Broken => "close broken",
            CloseReason::Discarded => "close discarded",
            CloseReason::IdleTimeout => "close idle timeout",
            CloseReason::MaxLifetime => "close max lifetime",
            CloseReason::Surplus => "close surplus",
            CloseReason::PoolClosed => "close pool closed",
            CloseReason::Reclaimed => "close reclaimed",
            _ => "close other",
        });
        Ok(())
    }

    fn on_wake(&mut self, w: WaiterId, ctx: &mut Ctx) -> Result<(), String> {
        let now = self.now;
        match ctx.kind {
            Kind::Close => {
                let head = self.queue.pop_front();
                ensure!(head == Some(w), "close woke {w:?}, FIFO head is {head:?}");
                if let Some(info) = self.waiters.get_mut(&w) {
                    info.state = WState::Closed;
                }
            }
            Kind::Timeout if ctx.expect_timeouts.is_empty() => {
                // Shedding: never while a connection is idle; only the waiters past twice
                // the target, in FIFO order, the rest keeping their places (`queue` stays
                // the reference for every later grant).
                let expected = ctx.expect_shed.pop_front();
                ensure!(
                    expected == Some(w),
                    "handle_timeout woke {w:?}, expected the shedding of {expected:?}"
                );
                ensure!(
                    self.idle_order.is_empty(),
                    "{w:?} shed while {:?} are idle",
                    self.idle_order
                );
                self.queue.retain(|q| *q != w);
                self.hit("waiter shed");
                if !self.queue.is_empty() {
                    self.hit("waiter shed, others keep waiting");
                }
                let waiting = ctx.shed_waiting;
                if let Some(info) = self.waiters.get_mut(&w) {
                    info.state = WState::Shed { at: now, waiting };
                }
            }
            Kind::Timeout => {
                let expected = ctx.expect_timeouts.pop_front();
                ensure!(
                    expected == Some(w),
                    "handle_timeout woke {w:?}, expected time-out of {expected:?}"
                );
                self.hit("waiter closed");
                self.queue.retain(|q| *q != w);
                self.hit("waiter timed out");
                if let Some(info) = self.waiters.get_mut(&w) {
                    info.state = WState::TimedOut { at: now };
                }
            }
            Kind::SetMax => return Err(format!("set_max_size woke {w:?}")),
            Kind::Fatal => {
                let expected = ctx.expect_timeouts.pop_front();
                ensure!(
                    expected == Some(w),
                    "a fatal connect error woke {w:?}, expected the failure of {expected:?}"
                );
                let waiting = ctx.before.waiting;
                self.queue.retain(|q| *q != w);
                self.hit("waiter failed by a fatal connect error");
                if let Some(info) = self.waiters.get_mut(&w) {
                    info.state = WState::Failed { waiting };
                }
            }
            Kind::Plain => {
                // Invariant 8: nothing is granted after close. Invariant 4: FIFO.
                ensure!(!self.closed, "Wake of {w:?} (a grant) after close");
                if let Some(head) = self.queue.front() {
                    let wait = now - self.waiters[head].enqueued;
                    self.observe(wait);
                }
                let head = self.queue.pop_front();
                ensure!(
                    head == Some(w),
                    "granted {w:?}, but the FIFO head is {head:?}"
                );
                let Some((c, _)) = ctx.inflight else {
                    return Err(format!("{w:?} granted without a connection coming in"));
                };
                ensure!(ctx.fate.is_none(), "in-flight {c} had two fates");
                ensure!(
                    !self.definitely_expired(c),
                    "granted {c} is past its max lifetime"
                );
                ctx.fate = Some(Fate::Granted);
                ctx.grants += 1;
                self.hit(if self.queue.is_empty() {
                    "grant"
                } else {
                    "grant with more waiting"
                });
                self.conn_mut(c)?.loc = Loc::Granted(w);
                if let Some(info) = self.waiters.get_mut(&w) {
                    info.state = WState::Granted(c);
                }
            }
        }
        Ok(())
    }

    // ----- after each step -----------------------------------------------------------------

    fn finish_step(&mut self, ctx: &mut Ctx) -> Result<(), String> {
        // The fate of the connection handed in.
        if let Some((c, fates)) = ctx.inflight.take() {
            let fate = match ctx.fate {
                Some(f) => f,
                None => {
                    let now = self.now;
                    let info = self.conn_mut(c)?;
                    info.loc = Loc::Idle;
                    info.idle_since = now;
                    self.idle_order.push(c);
                    self.observe(Duration::ZERO);
                    Fate::Idle
                }
            };
            ensure!(
                fates.contains(&fate),
                "{c} went {fate:?}, expected one of {fates:?}"
            );
        }
        ensure!(ctx.grants <= 1, "{} grants in one step", ctx.grants);
        ensure!(
            ctx.expect_timeouts.is_empty(),
            "waiters past their deadline not timed out: {:?}",
            ctx.expect_timeouts
        );
        ensure!(
            ctx.expect_shed.is_empty(),
            "waiters of an overloaded queue past twice the target not shed: {:?}",
            ctx.expect_shed
        );
        if ctx.kind == Kind::Close {
            ensure!(self.queue.is_empty(), "waiters still queued after close");
        }
        if ctx.expect_noop {
            ensure!(!ctx.any_action, "a no-op input emitted actions");
            ensure!(
                self.m.status() == ctx.before,
                "a no-op input changed the status from {:?} to {:?}",
                ctx.before,
                self.m.status()
            );
            ensure!(
                self.m.poll_timeout() == ctx.pt_before,
                "a no-op input changed poll_timeout()"
            );
        }
        // An acquire leases the most recently used idle connection, retiring expired ones
        // found on the way.
        if let Some(leased) = ctx.lease_idle {
            let retired: Vec<Conn> = ctx
                .closes
                .iter()
                .filter(|(_, r)| *r == CloseReason::MaxLifetime)
                .map(|(c, _)| *c)
                .collect();
            ensure!(
                retired.len() == ctx.closes.len(),
                "acquire closed connections for other reasons: {:?}",
                ctx.closes
            );
            let keep = match leased {
                Some(c) => ctx
                    .idle_before
                    .iter()
                    .position(|x| *x == c)
                    .map(|i| i + 1)
                    .ok_or_else(|| format!("leased {c} was not idle"))?,
                None => 0,
            };
            let expected: Vec<Conn> = ctx.idle_before[keep..].iter().rev().copied().collect();
            ensure!(
                retired == expected,
                "acquire retired {retired:?} leasing {leased:?}, idle was {:?}",
                ctx.idle_before
            );
        }
        // Shrinking closes the oldest idle connections first, while over the new size.
        if ctx.kind == Kind::SetMax {
            let surplus = live(&ctx.before).saturating_sub(self.max_size);
            let k = surplus.min(ctx.idle_before.len());
            let closed: Vec<Conn> = ctx.closes.iter().map(|(c, _)| *c).collect();
            ensure!(
                closed == ctx.idle_before[..k],
                "shrinking to {} closed {closed:?}, idle was {:?}",
                self.max_size,
                ctx.idle_before
            );
        }
        let s = self.m.status();
        if s.size > s.max_size {
            self.hit("over max_size after a shrink");
        }
        if s.waiting > 0 && s.opening == 0 && s.size < s.max_size && !self.closed {
            self.hit("waiting in back-off");
        }
        self.check_invariants(ctx)
    }

    /// The eight invariants (`ARCHITECTURE.md`, "Invariants"), the model's counts, and
    /// `poll_timeout()`.
    fn check_invariants(&self, ctx: &Ctx) -> Result<(), String> {
        let s = self.m.status();
        let now = self.now;
        let min_idle = self.config.min_idle;

        // The model's counts (invariant 5, conservation, in numbers).
        let granted = self
            .conns
            .values()
            .filter(|i| matches!(i.loc, Loc::Granted(_)))
            .count();
        let leased = self.tasks.iter().filter(|t| !t.reclaimed).count();
        let abandoned = self.tasks.len() - leased;
        let closing = self.pending_closes.iter().filter(|p| p.counted).count();
        ensure!(
            s.max_size == self.max_size,
            "max_size {} expected {}",
            s.max_size,
            self.max_size
        );
        ensure!(
            s.idle == self.idle_order.len(),
            "idle {} expected {}",
            s.idle,
            self.idle_order.len()
        );
        ensure!(
            s.in_use == leased + granted,
            "in_use {} expected {leased} leased + {granted} granted",
            s.in_use
        );
        ensure!(
            s.abandoned == abandoned,
            "abandoned {} expected {abandoned}",
            s.abandoned
        );
        ensure!(
            s.opening == self.pending_opens.len(),
            "opening {} but {} opens pending",
            s.opening,
            self.pending_opens.len()
        );
        ensure!(
            s.closing == closing,
            "closing {} but {closing} closes pending",
            s.closing
        );
        ensure!(
            s.waiting == self.queue.len(),
            "waiting {} expected {}",
            s.waiting,
            self.queue.len()
        );
        ensure!(
            s.size == s.idle + s.in_use + s.opening + s.closing,
            "size {} is not the sum of its parts",
            s.size
        );
        ensure!(self.m.is_closed() == self.closed, "is_closed() is wrong");
        ensure!(
            self.m.is_drained() == (self.closed && s.size == 0),
            "is_drained() is wrong"
        );
        ensure!(
            self.m.last_connect_error() == self.last_error.as_ref(),
            "last_connect_error {:?} expected {:?}",
            self.m.last_connect_error(),
            self.last_error
        );

        // Invariant 5, conservation: the connections the machine holds are exactly the
        // idle and granted ones of the model; every other one is held by exactly one task,
        // was emitted in exactly one Close (checked as each arrives), or was detached.
        let mut held: Vec<Conn> = self.m.held_connections().copied().collect();
        held.sort_unstable();
        let expected: Vec<Conn> = self
            .conns
            .iter()
            .filter(|(_, i)| matches!(i.loc, Loc::Idle | Loc::Granted(_)))
            .map(|(c, _)| *c)
            .collect();
        ensure!(
            held == expected,
            "machine holds {held:?}, model says {expected:?}"
        );
        let mut task_conns: Vec<Conn> = self.tasks.iter().map(|t| t.conn).collect();
        task_conns.sort_unstable();
        let expected_tasks: Vec<Conn> = self
            .conns
            .iter()
            .filter(|(_, i)| i.loc == Loc::Task)
            .map(|(c, _)| *c)
            .collect();
        ensure!(
            task_conns == expected_tasks,
            "tasks hold {task_conns:?}, expected {expected_tasks:?}"
        );
        for (c, info) in &self.conns {
            ensure!(info.loc != Loc::InFlight, "{c} left in flight");
            ensure!(
                self.closed_conns.contains(c) == matches!(info.loc, Loc::Closing | Loc::Closed),
                "{c} is {:?}, Close emitted: {}",
                info.loc,
                self.closed_conns.contains(c)
            );
        }

        // Invariant 1: size <= max_size, except while a shrink drains (size never grows then);
        // reclaimed leases are outside `size` by design.
        ensure!(
            s.size <= s.max_size || s.size <= ctx.before.size,
            "size grew to {} over max_size {} (was {})",
            s.size,
            s.max_size,
            ctx.before.size
        );
        ensure!(
            ctx.opens == 0 || s.size <= s.max_size,
            "opened beyond max_size: {s:?}"
        );

        // The bound on waiters.
        ensure!(
            self.config.max_waiters.is_none_or(|max| s.waiting <= max),
            "{} waiting, max_waiters {:?}",
            s.waiting,
            self.config.max_waiters
        );
        ensure!(
            self.m.is_overloaded() == self.overloaded,
            "is_overloaded() is {}, the model says {}",
            self.m.is_overloaded(),
            self.overloaded
        );

        // Invariant 2: no waiter waits while a connection is idle.
        ensure!(
            s.waiting == 0 || s.idle == 0,
            "{} waiting with {} idle",
            s.waiting,
            s.idle
        );

        // Invariant 3: demand (waiters, and the min_idle deficit) has opens in flight up to
        // max_size; after a failure only one at a time, and none before the back-off ends.
        let wanted = s.waiting + min_idle.saturating_sub(s.idle);
        if !self.closed && self.streak == 0 {
            ensure!(
                s.opening >= wanted || s.size >= s.max_size,
                "{} opening for {wanted} wanted with room ({s:?})",
                s.opening
            );
        }
        if !self.closed && self.streak > 0 && self.backoff_over && wanted > 0 {
            ensure!(
                s.opening >= 1 || s.size >= s.max_size,
                "back-off over, {wanted} wanted, nothing opening ({s:?})"
            );
        }
        if self.streak > 0 && ctx.opens > 0 {
            ensure!(
                ctx.opens == 1 && s.opening == 1,
                "after a failure, {} opened and {} opening",
                ctx.opens,
                s.opening
            );
        }

        // Invariants 6 and 7, and leak detection: after handle_timeout(now), nothing due
        // at `now` remains.
        if ctx.timeout_called {
            for w in &self.queue {
                let d = self.waiters[w].deadline;
                ensure!(
                    d.is_none_or(|d| d > now),
                    "{w:?} still waits past its deadline after handle_timeout"
                );
            }
            if let Some(after) = self.shed_after() {
                for w in &self.queue {
                    let waited = now - self.waiters[w].enqueued;
                    ensure!(
                        waited < after,
                        "{w:?} waited {waited:?} in an overloaded queue, not shed"
                    );
                }
            }
            for t in self.tasks.iter().filter(|t| !t.reclaimed) {
                let held = now - t.since;
                ensure!(
                    self.config.reclaim_after.is_none_or(|r| held < r),
                    "lease {:?} held {held:?} not reclaimed",
                    t.lease.id()
                );
                ensure!(
                    t.leak_reported || self.config.leak_threshold.is_none_or(|l| held < l),
                    "lease {:?} held {held:?} not reported",
                    t.lease.id()
                );
            }
            for &c in &self.idle_order {
                ensure!(!self.definitely_expired(c), "idle {c} past max lifetime");
                if self.idle_order.len() > min_idle {
                    let since = self.conns[&c].idle_since;
                    ensure!(
                        self.config.idle_timeout.is_none_or(|d| now - since < d),
                        "idle {c} idle for {:?} with {} idle > min_idle {min_idle}",
                        now - since,
                        self.idle_order.len()
                    );
                }
            }
        }

        // Invariant 8: after close nothing is idle or granted, and Drained comes exactly once,
        // when nothing counted remains.
        if self.closed {
            ensure!(
                s.idle == 0 && granted == 0,
                "connections kept after close: {s:?}"
            );
            ensure!(s.waiting == 0, "waiters after close");
            ensure!(
                (s.size == 0) == (self.drained == 1),
                "size {} after close, Drained emitted {} times",
                s.size,
                self.drained
            );
        } else {
            ensure!(self.drained == 0, "Drained before close");
        }

        // poll_timeout() is never later than a deadline the model knows of.
        let mut due: Vec<(Instant, String)> = Vec::new();
        for w in &self.queue {
            if let Some(d) = self.waiters[w].deadline {
                due.push((d, format!("deadline of {w:?}")));
            }
        }
        for t in self.tasks.iter().filter(|t| !t.reclaimed) {
            if let Some(r) = self.config.reclaim_after {
                due.push((t.since + r, format!("reclaim of {:?}", t.lease.id())));
            }
            if let (Some(l), false) = (self.config.leak_threshold, t.leak_reported) {
                due.push((t.since + l, format!("leak of {:?}", t.lease.id())));
            }
        }
        for &c in &self.idle_order {
            let info = &self.conns[&c];
            if let Some(l) = self.config.max_lifetime {
                due.push((info.connected_at + l, format!("lifetime of idle {c}")));
            }
            if let (Some(d), true) = (self.config.idle_timeout, self.idle_order.len() > min_idle) {
                due.push((info.idle_since + d, format!("idle timeout of {c}")));
            }
        }
        if let (Some(end), false) = (self.interval_end, self.queue.is_empty()) {
            due.push((end, "end of the queue interval".into()));
        }
        if let Some(after) = self.shed_after() {
            for w in &self.queue {
                due.push((
                    self.waiters[w].enqueued + after,
                    format!("shedding of {w:?}"),
                ));
            }
        }
        if let (Some(ceil), false, true) = (self.backoff_ceil, self.closed, self.streak > 0) {
            if s.opening == 0 && wanted > 0 && s.size < s.max_size {
                due.push((ceil, "end of back-off".into()));
            }
        }
        if let Some((first, what)) = due.iter().min_by_key(|(t, _)| *t) {
            let pt = self.m.poll_timeout();
            ensure!(
                pt.is_some_and(|pt| pt <= *first),
                "poll_timeout() is {:?} but the {what} is due at +{:?}",
                pt.map(|pt| pt - self.t0),
                *first - self.t0
            );
        }
        Ok(())
    }

    /// A well-behaved driver closes the pool and drains it: every connection ends closed
    /// (or detached) and Drained is emitted exactly once.
    fn wind_down(&mut self) -> Result<(), String> {
        self.apply(&Op::Close)?;
        for _ in 0..1_000 {
            let op = if !self.pending_opens.is_empty() {
                Op::ConnectOk { sel: 0 }
            } else if !self.tasks.is_empty() {
                Op::Release {
                    sel: 0,
                    how: Release::Reuse,
                }
            } else if !self.waiters.is_empty() {
                Op::Take { sel: 0 }
            } else if !self.pending_closes.is_empty() {
                Op::Closed { sel: 0 }
            } else {
                break;
            };
            self.apply(&op)?;
        }
        ensure!(self.drained == 1, "not drained after winding down");
        ensure!(
            self.m.status().size == 0,
            "size {} after winding down",
            self.m.status().size
        );
        ensure!(
            self.m.poll_action().is_none(),
            "actions left after winding down"
        );
        for (c, info) in &self.conns {
            ensure!(
                matches!(info.loc, Loc::Closed | Loc::Detached),
                "{c} is {:?} after winding down",
                info.loc
            );
        }
        Ok(())
    }
}

/// Runs one sequence and winds the pool down; returns how often each event happened.
fn run(config: Config, ops: &[Op]) -> Result<BTreeMap<&'static str, u64>, String> {
    let mut h = Harness::new(config)?;
    for (i, op) in ops.iter().enumerate() {
        h.apply(op).map_err(|e| {
            format!(
                "step {i} ({op:?}) at +{:?}: {e}\nmachine: {:?}",
                h.now - h.t0,
                h.m
            )
        })?;
    }
    if h.drained > 0 {
        h.hit("drained before winding down");
    }
    h.wind_down().map_err(|e| {
        format!(
            "winding down at +{:?}: {e}\nmachine: {:?}",
            h.now - h.t0,
            h.m
        )
    })?;
    Ok(h.stats)
}

// ----- strategies ----------------------------------------------------------------------------

fn config_strategy() -> impl Strategy<Value = Config> {
    (1usize..=6)
        .prop_flat_map(|max| {
            (
                Just(max),
                prop_oneof![2 => Just(0), 3 => 0..=max],
                proptest::option::of(10u64..2_000),
                proptest::option::of((30u64..5_000, prop_oneof![Just(0u64), 1u64..100])),
                proptest::option::of(10u64..3_000),
                proptest::option::of(1u64..3_000),
                (1u64..300, 1u64..=16),
                (
                    proptest::option::of(1u64..100),
                    5u64..500,
                    proptest::option::of(1usize..=6),
                ),
                any::<u64>(),
            )
        })
        .prop_map(
            |(
                max,
                min_idle,
                idle,
                life,
                leak,
                reclaim,
                (base, factor),
                (target, interval, max_waiters),
                seed,
            )| {
                let mut c = Config::new(max);
                c.min_idle = min_idle;
                c.idle_timeout = idle.map(ms);
                c.max_lifetime = life.map(|(l, _)| ms(l));
                c.max_lifetime_jitter = life.map_or(Duration::ZERO, |(l, pct)| ms(l * pct / 100));
                c.leak_threshold = leak.map(ms);
                c.reclaim_after = reclaim.map(|extra| ms(leak.unwrap_or(0) + extra));
                c.backoff_base = ms(base);
                c.backoff_max = ms(base * factor);
                c.queue_target = target.map(ms);
                c.queue_interval = ms(interval);
                c.max_waiters = max_waiters;
                c.seed = seed;
                c
            },
        )
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let sel = || any::<u8>().prop_map(usize::from);
    let how = prop_oneof![
        3 => Just(Release::Reuse),
        1 => Just(Release::Broken),
        1 => Just(Release::Discard),
    ];
    prop_oneof![
        10 => proptest::option::of(prop_oneof![1 => Just(0u64), 6 => 1u64..600])
            .prop_map(|deadline_ms| Op::Acquire { deadline_ms }),
        2 => Just(Op::TryAcquire),
        3 => sel().prop_map(|sel| Op::Take { sel }),
        4 => sel().prop_map(|sel| Op::TakeWoken { sel }),
        1 => sel().prop_map(|sel| Op::TakeStale { sel }),
        2 => sel().prop_map(|sel| Op::Cancel { sel }),
        2 => sel().prop_map(|sel| Op::CancelGranted { sel }),
        1 => sel().prop_map(|sel| Op::CancelStale { sel }),
        8 => (sel(), how).prop_map(|(sel, how)| Op::Release { sel, how }),
        1 => sel().prop_map(|sel| Op::Detach { sel }),
        1 => (0u8..8).prop_map(|churn| Op::ForeignRelease { churn }),
        1 => (0u8..8).prop_map(|churn| Op::ForeignDetach { churn }),
        10 => sel().prop_map(|sel| Op::ConnectOk { sel }),
        3 => (sel(), prop::bool::weighted(0.3)).prop_map(|(sel, fatal)| Op::ConnectFail { sel, fatal }),
        1 => sel().prop_map(|sel| Op::StaleConnected { sel }),
        1 => sel().prop_map(|sel| Op::StaleConnectFailed { sel }),
        6 => sel().prop_map(|sel| Op::Closed { sel }),
        1 => sel().prop_map(|sel| Op::StaleClosed { sel }),
        4 => (0u64..30).prop_map(|ms| Op::Advance { ms }),
        2 => (100u64..10_000).prop_map(|ms| Op::Advance { ms }),
        2 => Just(Op::AdvanceToTimeout),
        1 => Just(Op::AdvanceJustBefore),
        2 => Just(Op::HandleTimeout),
        5 => Just(Op::Tick),
        1 => Just(Op::Close),
        2 => prop_oneof![
            8 => 0usize..=8,
            1 => Just(MAX_SIZE_LIMIT),
            1 => Just(MAX_SIZE_LIMIT + 1),
            1 => Just(usize::MAX),
        ]
        .prop_map(|max| Op::SetMaxSize { max }),
    ]
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    /// Random configurations and input sequences keep every invariant at every step.
    #[test]
    fn machine_keeps_its_invariants(
        config in config_strategy(),
        ops in proptest::collection::vec(op_strategy(), 1..100),
    ) {
        if let Err(e) = run(config, &ops) {
            return Err(TestCaseError::fail(e));
        }
    }
}

/// The generator reaches every kind of event the invariants are about, so a passing run
/// means something: 2 000 deterministic cases, each event at least a few times.
#[test]
fn generator_reaches_every_event() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = (
        config_strategy(),
        proptest::collection::vec(op_strategy(), 1..100),
    );
    let mut total: BTreeMap<&'static str, u64> = BTreeMap::new();
    for _ in 0..2_000 {
        let Ok(tree) = strategy.new_tree(&mut runner) else {
            panic!("strategy failed to generate");
        };
        let (config, ops) = tree.current();
        match run(config, &ops) {
            Ok(stats) => {
                for (k, v) in stats {
                    *total.entry(k).or_default() += v;
                }
            }
            Err(e) => panic!("{e}"),
        }
    }
    let expected = [
        "acquire waits",
        "acquire waits with deadline",
        "acquire times out at once",
        "acquire after close",
        "lease idle",
        "try_acquire exhausted",
        "take granted",
        "take timed out",
        "take closed",
        "stale take",
        "cancel granted",
        "stale cancel",
        "release",
        "release reclaimed",
        "detach",
        "foreign release",
        "foreign detach",
        "stale connect",
        "stale connect failure",
        "stale close report",
        "handle_timeout runs",
        "handle_timeout no-op",
        "leak suspected",
        "reclaimed",
        "drained",
        "drained before winding down",
        "open after failure",
        "waiting in back-off",
        "over max_size after a shrink",
        "grant",
        "grant with more waiting",
        "waiter timed out",
        "waiter closed",
        "close broken",
        "close discarded",
        "close idle timeout",
        "close max lifetime",
        "close surplus",
        "close pool closed",
        "close reclaimed",
        "fatal connect failure",
        "fatal connect failure fails waiters",
        "waiter failed by a fatal connect error",
        "take failed by a fatal connect error",
        "acquire fails fast",
        "failure of a connect in flight with the last",
        "success of a connect in flight with the last failure",
        "acquire refused: queue full",
        "overloaded",
        "overloaded by served waits",
        "overload over",
        "waiter shed",
        "waiter shed, others keep waiting",
        "take shed",
    ];
    let missing: Vec<_> = expected
        .iter()
        .filter(|k| total.get(*k).copied().unwrap_or(0) < 5)
        .collect();
    assert!(
        missing.is_empty(),
        "rarely or never reached: {missing:?}\n{total:#?}"
    );
    println!("{total:#?}");
}

// ----- regressions: bugs the properties found, as named tests --------------------------------

/// Drains the actions and returns them.
fn actions(m: &mut Machine<Conn, Error>) -> Vec<Action<Conn>> {
    std::iter::from_fn(|| m.poll_action()).collect()
}

/// The slots of the Open actions among `actions`.
fn opens(actions: &[Action<Conn>]) -> Vec<SlotId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Open { slot } => Some(*slot),
            _ => None,
        })
        .collect()
}

/// The connections and reasons of the Close actions among `actions`.
fn closes(actions: &[Action<Conn>]) -> Vec<(Conn, CloseReason)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Close { conn, reason, .. } => Some((*conn, *reason)),
            _ => None,
        })
        .collect()
}

/// A machine with `n` idle connections, numbered 1..=n, opened at `now`.
fn machine_with_idle(mut config: Config, n: usize, now: Instant) -> Machine<Conn, Error> {
    config.min_idle = n;
    let Ok(mut m) = Machine::new(config) else {
        panic!("valid config refused");
    };
    for (conn, slot) in (1..).zip(opens(&actions(&mut m))) {
        assert!(m.handle_connected(slot, conn, now).is_ok());
    }
    assert_eq!(m.status().idle, n);
    m
}

/// A machine with `min_idle` 0 and `n` idle connections, numbered 1..=n, each opened for
/// a waiter, taken and released at `now`.
fn machine_with_released(config: Config, n: usize, now: Instant) -> Machine<Conn, Error> {
    let Ok(mut m) = Machine::new(config) else {
        panic!("valid config refused");
    };
    let mut waiters = Vec::new();
    for _ in 0..n {
        let Ok(Acquired::Waiting(w)) = m.acquire(now, None) else {
            panic!("acquire did not wait");
        };
        waiters.push(w);
    }
    for (conn, slot) in (1..).zip(opens(&actions(&mut m))) {
        assert!(m.handle_connected(slot, conn, now).is_ok());
    }
    let _ = actions(&mut m);
    for w in waiters {
        let Ok(Some((lease, conn))) = m.take(w, now) else {
            panic!("take failed");
        };
        assert!(m.release(lease, conn, Release::Reuse, now).is_ok());
    }
    assert_eq!(m.status().idle, n);
    m
}

/// Shrinking by one closed every idle connection: `set_max_size` looped `while size() >
/// max_size`, but a retired connection keeps counting (as closing) until `handle_closed`, so
/// the loop only stopped when no idle connection was left. Shrunk case: 2 idle of 4, shrink
/// to 3 closed both. Fixed: the surplus is counted once, among live connections.
#[test]
fn regression_shrink_closes_only_the_surplus() {
    let now = Instant::now();
    let mut config = Config::new(6);
    config.idle_timeout = None;
    let mut m = machine_with_released(config, 6, now);
    assert!(m.set_max_size(5, now).is_ok());
    let closed = closes(&actions(&mut m));
    // The oldest idle connection goes, and only it.
    assert_eq!(closed, vec![(1, CloseReason::Surplus)]);
    let s = m.status();
    assert_eq!((s.idle, s.closing, s.size, s.max_size), (5, 1, 6, 5));
}

/// The same bug in `dispatch`: after a shrink, a connection coming in (connected or
/// released) was closed as surplus while `size`, counting closes in flight, exceeded
/// `max_size`, even when the live connections were within it. Shrunk case: max 3, three
/// waiters, shrink to 2, then both connects after the first were closed and their waiters
/// starved. Fixed: surplus means live connections (`idle + in_use + opening`) over max.
#[test]
fn regression_surplus_ignores_closes_in_flight() {
    let now = Instant::now();
    let Ok(mut m) = Machine::<Conn, Error>::new(Config::new(3)) else {
        panic!("valid config refused");
    };
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let Ok(Acquired::Waiting(w)) = m.acquire(now, None) else {
            panic!("acquire did not wait");
        };
        waiters.push(w);
    }
    let slots = opens(&actions(&mut m));
    assert_eq!(slots.len(), 3);
    assert!(m.set_max_size(2, now).is_ok());
    assert!(actions(&mut m).is_empty());
    // Three live (opening) for a max of 2: the first to connect is surplus.
    assert!(m.handle_connected(slots[0], 1, now).is_ok());
    assert_eq!(closes(&actions(&mut m)), vec![(1, CloseReason::Surplus)]);
    // Now two live with one closing: the next connection is within max_size and goes to
    // the oldest waiter.
    assert!(m.handle_connected(slots[1], 2, now).is_ok());
    let next = actions(&mut m);
    assert!(closes(&next).is_empty(), "closed again: {next:?}");
    assert!(matches!(next[..], [Action::Wake { waiter }] if waiter == waiters[0]));
}

/// A connection parked idle after a `handle_timeout` ran while it was leased had no
/// max-lifetime deadline any more: its expiry was noted at connect, `handle_timeout`
/// recomputed the deadline from idle slots only, and `dispatch` noted only the idle
/// timeout. `poll_timeout()` was `None`, so a driver never reaped it. Fixed: `dispatch`
/// notes the expiry of every connection it parks idle.
#[test]
fn regression_idle_connection_keeps_its_lifetime_deadline() {
    let t0 = Instant::now();
    let mut config = Config::new(1);
    config.idle_timeout = None;
    config.max_lifetime = Some(Duration::from_secs(3));
    config.max_lifetime_jitter = Duration::ZERO;
    config.leak_threshold = Some(ms(10));
    let mut m = machine_with_idle(config, 0, t0);
    let Ok(Acquired::Waiting(w)) = m.acquire(t0, None) else {
        panic!("acquire did not wait");
    };
    let slots = opens(&actions(&mut m));
    assert!(m.handle_connected(slots[0], 1, t0).is_ok());
    let _ = actions(&mut m);
    let Ok(Some((lease, conn))) = m.take(w, t0) else {
        panic!("take failed");
    };
    // A leak report makes handle_timeout run (and recompute) while the connection is leased.
    let t1 = t0 + ms(10);
    m.handle_timeout(t1);
    assert!(matches!(
        actions(&mut m)[..],
        [Action::LeakSuspected { .. }]
    ));
    assert!(m.release(lease, conn, Release::Reuse, t1).is_ok());
    assert_eq!(m.status().idle, 1);
    let expires = t0 + Duration::from_secs(3);
    assert!(
        m.poll_timeout().is_some_and(|t| t <= expires),
        "poll_timeout() {:?} is later than the idle connection's lifetime",
        m.poll_timeout().map(|t| t - t0)
    );
    m.handle_timeout(expires);
    assert_eq!(
        closes(&actions(&mut m)),
        vec![(1, CloseReason::MaxLifetime)]
    );
}

/// (Fixed concurrently by another change; kept as a regression.) With `min_idle` 1, the
/// connection kept idle for `min_idle` had no idle deadline noted; when a second one went
/// idle, only the newcomer's deadline was noted, so the older one was reaped late.
#[test]
fn regression_idle_timeout_of_the_oldest_is_noted() {
    let t0 = Instant::now();
    let mut config = Config::new(2);
    config.idle_timeout = Some(ms(10));
    config.max_lifetime = None;
    let mut m = machine_with_idle(config, 1, t0);
    // A second connection: leased, opened, released idle 1 ms later.
    let Ok(Acquired::Ready(lease, conn)) = m.acquire(t0, None) else {
        panic!("acquire not ready");
    };
    let slots = opens(&actions(&mut m));
    assert!(m.handle_connected(slots[0], 2, t0).is_ok());
    let _ = actions(&mut m);
    assert!(m.release(lease, conn, Release::Reuse, t0 + ms(1)).is_ok());
    assert_eq!(m.status().idle, 2);
    assert!(
        m.poll_timeout().is_some_and(|t| t <= t0 + ms(10)),
        "poll_timeout() {:?} is later than the oldest idle timeout",
        m.poll_timeout().map(|t| t - t0)
    );
}

/// (Fixed concurrently by another change; kept as a regression.) `try_acquire` took an idle
/// connection below `min_idle` without asking for a replacement, unlike `acquire`.
#[test]
fn regression_try_acquire_replenishes_min_idle() {
    let now = Instant::now();
    let mut m = machine_with_idle(Config::new(2), 1, now);
    let Ok((_lease, _conn)) = m.try_acquire(now) else {
        panic!("try_acquire failed");
    };
    assert_eq!(opens(&actions(&mut m)).len(), 1);
}

// ----- ARCHITECTURE.md, "A task waiting on itself" -------------------------------------------
//
// Tasks (and contexts within them) acquire, hold, move, give back and wait for connections,
// with connects finishing or failing and time passing, and a harness that plays the driver's
// record of who holds each lease. At every acquire by a named task it predicts, from its own
// model, whether the machine must note a self-wait, refuse it (`self_wait_error`) or fail it
// as a certain deadlock, and which queued waiters a certain deadlock fails; and it checks
// that the machine never fails a waiter while some lease out is held by a task that is not
// waiting (in the context it acquired it in), while anything is opening, closing or idle,
// while there is room, or while leases can be reclaimed.

mod self_wait {
    use std::collections::{BTreeMap, BTreeSet};
    use std::num::NonZeroU64;
    use std::time::{Duration, Instant};

    use pool_core::machine::{
        AcquireError, Acquired, Action, Caller, Config, Failure, Lease, LeaseId, Machine, Release,
        SlotId, TaskId, WaiterId,
    };
    use proptest::prelude::*;

    /// Task `t`, context `c` (both small, so callers meet often).
    fn caller(t: u8, c: u8) -> Caller {
        Caller {
            task: TaskId::new(u64::from(t) + 1).expect("a small id"),
            context: NonZeroU64::new(u64::from(c) + 1),
        }
    }

    #[derive(Debug, Clone)]
    pub(super) enum Op {
        /// An acquire by task `t` in context `c` (unnamed if `named` is false).
        Acquire {
            t: u8,
            c: u8,
            named: bool,
        },
        ConnectOk {
            sel: usize,
        },
        ConnectFail {
            sel: usize,
        },
        Release {
            sel: usize,
        },
        /// The lease's guard is used by task `t` (the driver forgets the context).
        Move {
            sel: usize,
            t: u8,
        },
        /// The lease's guard is made owned, or used outside any task: nobody's.
        Forget {
            sel: usize,
        },
        Cancel {
            sel: usize,
        },
        CloseDone {
            sel: usize,
        },
        Tick {
            ms: u64,
        },
    }

    pub(super) fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..3u8, 0..2u8, prop::bool::weighted(0.9))
                .prop_map(|(t, c, named)| Op::Acquire { t, c, named }),
            3 => any::<usize>().prop_map(|sel| Op::ConnectOk { sel }),
            1 => any::<usize>().prop_map(|sel| Op::ConnectFail { sel }),
            3 => any::<usize>().prop_map(|sel| Op::Release { sel }),
            1 => (any::<usize>(), 0..3u8).prop_map(|(sel, t)| Op::Move { sel, t }),
            1 => any::<usize>().prop_map(|sel| Op::Forget { sel }),
            1 => any::<usize>().prop_map(|sel| Op::Cancel { sel }),
            2 => any::<usize>().prop_map(|sel| Op::CloseDone { sel }),
            1 => (1..300u64).prop_map(|ms| Op::Tick { ms }),
        ]
    }

    pub(super) fn config() -> impl Strategy<Value = Config> {
        (
            1..=3usize,
            prop::bool::ANY,
            prop::option::weighted(0.2, 50..500u64),
            prop::bool::weighted(0.8),
        )
            .prop_map(|(max, refuse, reclaim, fail)| {
                let mut config = Config::new(max);
                config.idle_timeout = None;
                config.max_lifetime = None;
                config.max_lifetime_jitter = Duration::ZERO;
                config.backoff_base = Duration::from_millis(5);
                config.backoff_max = Duration::from_millis(20);
                config.reclaim_after = reclaim.map(Duration::from_millis);
                config.self_wait_error = refuse;
                config.fail_deadlocks = fail;
                config
            })
    }

    struct Harness {
        m: Machine<u64, String>,
        now: Instant,
        next_conn: u64,
        opens: Vec<SlotId>,
        closes: Vec<SlotId>,
        /// Leases out, with who holds them (the driver's record).
        leases: Vec<(Lease, u64)>,
        /// Reclaimed leases, kept so they are never released (they stay out for good).
        abandoned: Vec<(Lease, u64)>,
        holders: BTreeMap<LeaseId, Caller>,
        /// Queued waiters and who waits.
        queued: BTreeMap<WaiterId, Option<Caller>>,
        /// Waiters failed by a certain deadlock in the current step.
        deadlocked: BTreeSet<WaiterId>,
        pub(super) certain: u32,
        pub(super) refused: u32,
        pub(super) self_waits: u32,
    }

    impl Harness {
        fn holder(&self, lease: LeaseId) -> Option<Caller> {
            self.holders.get(&lease).copied()
        }

        /// The model: would `newcomer` waiting now be a certain deadlock?
        fn certain(&self, newcomer: Caller) -> bool {
            let s = self.m.status();
            let config = self.m.config();
            if !config.fail_deadlocks
                || self.m.is_closed()
                || config.reclaim_after.is_some()
                || s.opening > 0
                || s.closing > 0
                || s.idle > 0
                || s.in_use == 0
                || s.size < config.max_size
                // A granted connection not yet taken is in use but held by nobody yet.
                || s.in_use != self.leases.len()
            {
                return false;
            }
            self.leases
                .iter()
                .all(|(lease, _)| match self.holder(lease.id()) {
                    Some(h) if h.context.is_some() => {
                        h == newcomer || self.queued.values().any(|w| *w == Some(h))
                    }
                    _ => false,
                })
        }

        fn drain(&mut self) -> Result<(), String> {
            while let Some(action) = self.m.poll_action() {
                match action {
                    Action::Open { slot } => self.opens.push(slot),
                    Action::Close { slot, .. } => self.closes.push(slot),
                    Action::Wake { waiter } => {
                        let who = self
                            .queued
                            .remove(&waiter)
                            .ok_or("woke an unknown waiter")?;
                        match self.m.take(waiter, self.now) {
                            Ok(Some((lease, conn))) => {
                                if let Some(who) = who {
                                    self.holders.insert(lease.id(), who);
                                }
                                self.leases.push((lease, conn));
                            }
                            Err(AcquireError::Deadlock(d)) => {
                                if !d.certain {
                                    return Err("a queued waiter refused, not deadlocked".into());
                                }
                                self.deadlocked.insert(waiter);
                            }
                            Err(AcquireError::TimedOut(_) | AcquireError::ConnectFailed(..)) => {}
                            other => return Err(format!("unexpected take: {other:?}")),
                        }
                    }
                    // A reclaimed lease no longer counts: its holder holds nothing of the pool.
                    Action::Reclaimed { lease, .. } => {
                        self.holders.remove(&lease);
                        if let Some(i) = self.leases.iter().position(|(l, _)| l.id() == lease) {
                            self.abandoned.push(self.leases.remove(i));
                        }
                    }
                    Action::LeakSuspected { .. } | Action::Drained => {}
                }
            }
            Ok(())
        }

        fn step(&mut self, op: &Op) -> Result<(), String> {
            self.deadlocked.clear();
            match *op {
                Op::Acquire { t, c, named } => {
                    let who = named.then(|| caller(t, c));
                    let model_certain = who.is_some_and(|w| self.certain(w));
                    let holds_any = who.and_then(|w| {
                        self.leases
                            .iter()
                            .find(|(l, _)| self.holder(l.id()).is_some_and(|h| h.task == w.task))
                            .map(|(l, _)| l.id())
                    });
                    let holds_same = who.is_some_and(|w| {
                        self.leases
                            .iter()
                            .any(|(l, _)| self.holder(l.id()) == Some(w))
                    });
                    // Queued waiters whose caller holds a lease: those a deadlock fails.
                    let doomed: BTreeSet<WaiterId> = self
                        .queued
                        .iter()
                        .filter(|(_, w)| {
                            w.is_some_and(|w| {
                                self.leases
                                    .iter()
                                    .any(|(l, _)| self.holder(l.id()) == Some(w))
                            })
                        })
                        .map(|(id, _)| *id)
                        .collect();
                    let holders = self.holders.clone();
                    let idle_before = self.m.status().idle;
                    let out = self
                        .m
                        .acquire_by(self.now, None, who, |l| holders.get(&l).copied());
                    match out {
                        Ok(Acquired::Ready(lease, conn)) => {
                            if idle_before == 0 {
                                return Err("ready with nothing idle".into());
                            }
                            if let Some(who) = who {
                                self.holders.insert(lease.id(), who);
                            }
                            self.leases.push((lease, conn));
                        }
                        Ok(Acquired::Waiting(w)) => {
                            if model_certain && holds_any.is_some() {
                                return Err("a certain deadlock was left waiting".into());
                            }
                            if self.m.config().self_wait_error && holds_same {
                                return Err(
                                    "self_wait_error let a same-context self-wait wait".into()
                                );
                            }
                            let noted = self.m.self_wait(w);
                            if noted.is_some() != holds_any.is_some() {
                                return Err(format!(
                                    "self-wait noted {noted:?}, the model says {holds_any:?}"
                                ));
                            }
                            if let Some(lease) = noted {
                                if self.holder(lease).map(|h| h.task) != who.map(|w| w.task) {
                                    return Err("the noted lease is not the task's".into());
                                }
                                self.self_waits += 1;
                            }
                            self.queued.insert(w, who);
                        }
                        Err(AcquireError::Deadlock(d)) => {
                            let Some(w) = who else {
                                return Err("an unnamed acquire failed as a self-wait".into());
                            };
                            if self.holder(d.held).map(|h| h.task) != Some(w.task) {
                                return Err("the held lease is not the task's".into());
                            }
                            if d.certain {
                                if !model_certain {
                                    return Err(format!(
                                        "a certain deadlock the model denies: {:?}, leases {:?}, \
                                         queued {:?}",
                                        self.m.status(),
                                        self.holders,
                                        self.queued
                                    ));
                                }
                                self.certain += 1;
                                self.drain()?;
                                if self.deadlocked != doomed {
                                    return Err(format!(
                                        "the deadlock failed {:?}, the model expects {doomed:?}",
                                        self.deadlocked
                                    ));
                                }
                                return Ok(());
                            }
                            if model_certain || !self.m.config().self_wait_error || !holds_same {
                                return Err("refused without self_wait_error's reason".into());
                            }
                            self.refused += 1;
                        }
                        Err(AcquireError::ConnectFailed(..)) => {}
                        Err(e) => return Err(format!("unexpected acquire error: {e:?}")),
                    }
                }
                Op::ConnectOk { sel } if !self.opens.is_empty() => {
                    let slot = self.opens.remove(sel % self.opens.len());
                    self.next_conn += 1;
                    let _ = self.m.handle_connected(slot, self.next_conn, self.now);
                }
                Op::ConnectFail { sel } if !self.opens.is_empty() => {
                    let slot = self.opens.remove(sel % self.opens.len());
                    self.m.handle_connect_failed(
                        slot,
                        "refused".into(),
                        Failure::Transient,
                        self.now,
                    );
                }
                Op::Release { sel } if !self.leases.is_empty() => {
                    let (lease, conn) = self.leases.remove(sel % self.leases.len());
                    self.holders.remove(&lease.id());
                    let _ = self.m.release(lease, conn, Release::Reuse, self.now);
                }
                Op::Move { sel, t } if !self.leases.is_empty() => {
                    let id = self.leases[sel % self.leases.len()].0.id();
                    self.holders.insert(
                        id,
                        Caller {
                            task: caller(t, 0).task,
                            context: None,
                        },
                    );
                }
                Op::Forget { sel } if !self.leases.is_empty() => {
                    let id = self.leases[sel % self.leases.len()].0.id();
                    self.holders.remove(&id);
                }
                Op::Cancel { sel } if !self.queued.is_empty() => {
                    let w = *self
                        .queued
                        .keys()
                        .nth(sel % self.queued.len())
                        .expect("in range");
                    self.queued.remove(&w);
                    self.m.cancel(w, self.now);
                }
                Op::CloseDone { sel } if !self.closes.is_empty() => {
                    let slot = self.closes.remove(sel % self.closes.len());
                    self.m.handle_closed(slot, self.now);
                }
                Op::Tick { ms } => {
                    self.now += Duration::from_millis(ms);
                    self.m.handle_timeout(self.now);
                }
                _ => {}
            }
            self.drain()?;
            if !self.deadlocked.is_empty() {
                return Err("waiters failed as deadlocked outside an acquire".into());
            }
            Ok(())
        }
    }

    /// Runs `ops`; returns how many certain deadlocks, refusals and self-waits it saw.
    pub(super) fn run(config: Config, ops: &[Op]) -> Result<(u32, u32, u32), String> {
        let mut h = Harness {
            m: Machine::new(config).map_err(|e| e.to_string())?,
            now: Instant::now(),
            next_conn: 0,
            opens: Vec::new(),
            closes: Vec::new(),
            leases: Vec::new(),
            abandoned: Vec::new(),
            holders: BTreeMap::new(),
            queued: BTreeMap::new(),
            deadlocked: BTreeSet::new(),
            certain: 0,
            refused: 0,
            self_waits: 0,
        };
        h.drain()?;
        for (i, op) in ops.iter().enumerate() {
            h.step(op).map_err(|e| format!("step {i} ({op:?}): {e}"))?;
        }
        Ok((h.certain, h.refused, h.self_waits))
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    /// Self-waits are noted, refused and failed exactly as the model predicts: a certain
    /// deadlock only when no lease can ever come back, and then every waiter holding one.
    #[test]
    fn a_task_waiting_on_itself_fails_only_when_certain(
        config in self_wait::config(),
        ops in proptest::collection::vec(self_wait::op(), 1..80),
    ) {
        if let Err(e) = self_wait::run(config, &ops) {
            return Err(TestCaseError::fail(e));
        }
    }
}

/// The self-wait generator reaches what the property is about: certain deadlocks, refusals
/// and self-waits left waiting, each many times over 2 000 deterministic cases.
#[test]
fn self_wait_generator_reaches_deadlocks_refusals_and_self_waits() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = (
        self_wait::config(),
        proptest::collection::vec(self_wait::op(), 1..80),
    );
    let (mut certain, mut refused, mut waits) = (0, 0, 0);
    for _ in 0..2_000 {
        let (config, ops) = strategy.new_tree(&mut runner).expect("a case").current();
        let (c, r, w) = match self_wait::run(config.clone(), &ops) {
            Ok(counts) => counts,
            Err(e) => panic!("{e}\n{config:?}\n{ops:#?}"),
        };
        certain += c;
        refused += r;
        waits += w;
    }
    assert!(
        certain >= 20 && refused >= 20 && waits >= 20,
        "certain {certain}, refused {refused}, self-waits {waits}"
    );
}
