//! Ids, tokens, actions, status and errors: the vocabulary of the machine's interface.

use std::fmt;
use std::num::NonZeroU64;
use std::time::{Duration, Instant};

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// An id pairs a storage index with a serial number unique within its machine, so an
        /// id that outlived what it named is detected (and ignored), never confused with a
        /// newer one that reuses the index.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name {
            pub(crate) index: u32,
            pub(crate) serial: u64,
        }

        impl $name {
            /// The storage index, dense and reused: fit to key a slab or a vector beside the
            /// machine. Compare whole ids, not indices, to tell two apart.
            pub fn index(self) -> usize {
                self.index as usize
            }

            /// The serial number, unique among every id the machine has issued.
            pub fn serial(self) -> u64 {
                self.serial
            }
        }
    };
}

typed_id!(
    /// Names one slot: one unit of `max_size`, which is opening, open, or closing.
    SlotId
);
typed_id!(
    /// Names one task waiting for a connection.
    WaiterId
);
typed_id!(
    /// Names one lease: one checkout of a connection, from take to release.
    LeaseId
);

/// The right to give one connection back: returned with the connection by an acquire and
/// consumed by [`Machine::release`](super::Machine::release) or
/// [`Machine::detach`](super::Machine::detach). It cannot be copied; losing one leaves its
/// slot counted as in use until leak detection or stale reclaim notices.
#[must_use = "a lease must be handed back with its connection, or the slot stays in use"]
#[derive(Debug, PartialEq, Eq)]
pub struct Lease {
    pub(crate) id: LeaseId,
    pub(crate) expires: Option<Instant>,
}

impl Lease {
    /// The id of this lease, as leak reports name it.
    pub fn id(&self) -> LeaseId {
        self.id
    }

    /// When the machine retires this lease's connection (its `max_lifetime`, jitter
    /// applied), if it has a lifetime: a driver that keeps returned connections outside the
    /// machine for a while (see [`Machine::release`](super::Machine::release)) must not lend
    /// one past this instant.
    pub fn expires(&self) -> Option<Instant> {
        self.expires
    }
}

/// What the driver must do next; drained with [`Machine::poll_action`](super::Machine::poll_action).
#[derive(Debug)]
pub enum Action<C> {
    /// Open a connection for this reserved slot, then report with
    /// [`handle_connected`](super::Machine::handle_connected) or
    /// [`handle_connect_failed`](super::Machine::handle_connect_failed).
    Open {
        /// The slot reserved for the new connection.
        slot: SlotId,
    },
    /// Close this connection, then report with [`handle_closed`](super::Machine::handle_closed):
    /// the slot counts against `max_size` until then.
    Close {
        /// The slot the connection occupied.
        slot: SlotId,
        /// The connection to close.
        conn: C,
        /// Why it is closed.
        reason: CloseReason,
    },
    /// This waiter's outcome is ready: wake its task, which collects it with
    /// [`take`](super::Machine::take).
    Wake {
        /// The waiter whose outcome is ready.
        waiter: WaiterId,
    },
    /// A lease has been held longer than `leak_threshold` (reported once per lease).
    LeakSuspected {
        /// The lease, as issued with its connection.
        lease: LeaseId,
        /// How long it had been held when noticed.
        held_for: Duration,
    },
    /// A lease has been held longer than `reclaim_after`: it no longer counts against
    /// `max_size`, and its connection will be closed when it comes back.
    Reclaimed {
        /// The abandoned lease.
        lease: LeaseId,
        /// How long it had been held when reclaimed.
        held_for: Duration,
    },
    /// The machine is closed and every counted connection has been closed: emitted once.
    Drained,
}

/// Why a connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// Its holder reported it broken.
    Broken,
    /// Its holder chose not to return it to the pool.
    Discarded,
    /// It sat idle longer than `idle_timeout`.
    IdleTimeout,
    /// It lived longer than `max_lifetime`.
    MaxLifetime,
    /// The pool had shrunk below its size.
    Surplus,
    /// The pool was closed.
    PoolClosed,
    /// Its lease had been reclaimed as abandoned.
    Reclaimed,
}

impl CloseReason {
    /// A short lowercase name, for logs and counters.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Broken => "broken",
            Self::Discarded => "discarded",
            Self::IdleTimeout => "idle timeout",
            Self::MaxLifetime => "max lifetime",
            Self::Surplus => "surplus",
            Self::PoolClosed => "pool closed",
            Self::Reclaimed => "reclaimed",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a failed connect means for the tasks waiting on it, as reported with
/// [`Machine::handle_connect_failed`](super::Machine::handle_connect_failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    /// It may heal by waiting (refused, reset, timed out, the server starting or stopping):
    /// waiters wait, up to their deadline, while connects are retried with back-off.
    Transient,
    /// Waiting cannot heal it (wrong credentials, unknown database, TLS the server demands
    /// or refuses): the waiters only a connect could serve fail at once.
    Fatal,
}

/// How a connection comes back with [`Machine::release`](super::Machine::release).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Release {
    /// It is healthy: reuse it.
    Reuse,
    /// It is broken: close it.
    Broken,
    /// It works, but its holder wants it closed (its state is unknown, or it was tainted).
    Discard,
}

/// What an acquire got right away.
#[derive(Debug)]
#[must_use = "a granted connection must be released, and a waiter must be taken or cancelled"]
pub enum Acquired<C> {
    /// An idle connection, leased to the caller.
    Ready(Lease, C),
    /// No idle connection: the caller waits as this waiter until woken by
    /// [`Action::Wake`], then calls [`take`](super::Machine::take), or gives up with
    /// [`cancel`](super::Machine::cancel).
    Waiting(WaiterId),
}

/// A snapshot of the pool's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct Status {
    /// The configured maximum.
    pub max_size: usize,
    /// Everything that counts against `max_size`: `idle + in_use + opening + closing`.
    pub size: usize,
    /// Open connections waiting to be used.
    pub idle: usize,
    /// Connections leased to tasks, or granted to a waiter that has not taken them yet.
    pub in_use: usize,
    /// Connects in flight.
    pub opening: usize,
    /// Closes in flight that still count against `max_size`.
    pub closing: usize,
    /// Tasks waiting for a connection.
    pub waiting: usize,
    /// Reclaimed leases that have not come back (they do not count against `max_size`).
    pub abandoned: usize,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} in use, {} idle, {} opening, {} waiting",
            self.in_use, self.max_size, self.idle, self.opening, self.waiting
        )?;
        if self.closing > 0 {
            write!(f, ", {} closing", self.closing)?;
        }
        if self.abandoned > 0 {
            write!(f, ", {} abandoned", self.abandoned)?;
        }
        Ok(())
    }
}

/// A waiter reached its deadline without a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedOut<E> {
    /// How long it waited.
    pub waited: Duration,
    /// The pool as it was at the deadline (the waiter itself counted as waiting).
    pub status: Status,
    /// The most recent connect error since the last successful connect, if any.
    pub last_connect_error: Option<E>,
}

impl<E: fmt::Display> fmt::Display for TimedOut<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timed out after {:?} waiting for a connection ({}",
            round_ms(self.waited),
            self.status
        )?;
        if let Some(error) = &self.last_connect_error {
            write!(f, "; last connect error: {error}")?;
        }
        f.write_str(")")
    }
}

/// A waiter failed at once because the pool is overloaded: no acquire in the last queue
/// interval got a connection within the queue target, and this one had waited twice the
/// target (see [`Config::queue_target`](super::Config::queue_target) and
/// `ARCHITECTURE.md`, "Overload").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shed {
    /// How long it waited.
    pub waited: Duration,
    /// The configured queue target (waiters are shed once they have waited twice this).
    pub queue_target: Duration,
    /// The configured queue interval.
    pub queue_interval: Duration,
    /// The pool as it was when the waiter was shed (the waiter itself counted as waiting).
    pub status: Status,
}

impl fmt::Display for Shed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "shed after {:?} waiting for a connection: the pool is overloaded (no acquire in the \
             last {:?} got a connection within the {:?} queue target, so waits past {:?} fail \
             at once) ({})",
            round_ms(self.waited),
            self.queue_interval,
            self.queue_target,
            self.queue_target.saturating_mul(2),
            self.status
        )
    }
}

/// An opaque name of a task, as the runtime gives it (tokio's `task::Id`, say): two tasks
/// alive at once never share one. Ids of zero or from 2^63 up are not accepted (the driver
/// keeps a flag in the top bit), so such a task goes unnamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(NonZeroU64);

impl TaskId {
    /// The task named `id`; `None` for zero or an id from 2^63 up.
    pub const fn new(id: u64) -> Option<Self> {
        if id >= 1 << 63 {
            return None;
        }
        match NonZeroU64::new(id) {
            Some(id) => Some(Self(id)),
            None => None,
        }
    }

    /// The task named by a runtime's id that prints as a decimal number (tokio's and
    /// async-std's do), read without allocating; `None` if it prints anything else.
    pub fn from_display(id: &impl fmt::Display) -> Option<Self> {
        struct Digits(Option<u64>);
        impl fmt::Write for Digits {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                for b in s.bytes() {
                    let digit = b.checked_sub(b'0').filter(|d| *d <= 9).ok_or(fmt::Error)?;
                    self.0 = self
                        .0
                        .unwrap_or(0)
                        .checked_mul(10)
                        .and_then(|n| n.checked_add(u64::from(digit)));
                    if self.0.is_none() {
                        return Err(fmt::Error);
                    }
                }
                Ok(())
            }
        }
        let mut digits = Digits(None);
        fmt::write(&mut digits, format_args!("{id}")).ok()?;
        digits.0.and_then(Self::new)
    }

    /// The task named by a runtime's id whose `Hash` feeds the hasher one integer and
    /// nothing else (the derived `Hash` of a newtype over an integer: tokio's and
    /// async-std's ids), read without formatting or allocating; `None` if it feeds anything
    /// else. Cheaper than [`from_display`](Self::from_display), for the hot path.
    pub fn from_hash(id: &impl std::hash::Hash) -> Option<Self> {
        /// Keeps the one integer written; anything else spoils it.
        struct One(Option<Option<u64>>);
        impl std::hash::Hasher for One {
            fn finish(&self) -> u64 {
                0
            }
            fn write(&mut self, _: &[u8]) {
                self.0 = Some(None);
            }
            fn write_u64(&mut self, n: u64) {
                self.0 = match self.0 {
                    None => Some(Some(n)),
                    Some(_) => Some(None),
                };
            }
            fn write_usize(&mut self, n: usize) {
                self.write_u64(n as u64);
            }
        }
        let mut one = One(None);
        id.hash(&mut one);
        one.0.flatten().and_then(Self::new)
    }

    /// The number this id wraps.
    pub const fn get(self) -> u64 {
        self.0.get()
    }
}

/// Who asks for a connection, or who holds a lease: the task, and the context within the
/// task (the driver passes the waker of the acquire: branches of one task that are polled
/// apart, such as the futures of a `FuturesUnordered`, have contexts of their own), if
/// known. See [`Machine::acquire_by`](super::Machine::acquire_by) and `ARCHITECTURE.md`,
/// "A task waiting on itself".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Caller {
    /// The task.
    pub task: TaskId,
    /// The context the lease was acquired in, or the acquire waits in; `None` if unknown
    /// (a lease then never counts towards a certain deadlock).
    pub context: Option<NonZeroU64>,
}

/// An acquire by a task that already holds a connection of this pool (see
/// [`Machine::acquire_by`](super::Machine::acquire_by)): failed at once, either because no
/// connection can ever come back (`certain`), or because
/// [`Config::self_wait_error`](super::Config::self_wait_error) refuses such waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadlock {
    /// The lease the waiting task holds.
    pub held: LeaseId,
    /// Every connection in use is held by a task that is itself waiting on this pool, in
    /// the context it acquired it in, and none can be opened, closed or reclaimed: no
    /// connection can come back. `false`: the wait was refused by `self_wait_error`.
    pub certain: bool,
    /// The pool when it was decided (the task counted as waiting).
    pub status: Status,
}

impl fmt::Display for Deadlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.certain {
            write!(
                f,
                "deadlock: this task waits for a connection while it holds one of the same pool \
                 (lease {}), and every connection in use is held by a task that is itself \
                 waiting on this pool, with none to open: none can ever come back ({})",
                self.held.serial, self.status
            )
        } else {
            write!(
                f,
                "refused to wait: this task asked for a connection while it holds one of the \
                 same pool (lease {}), which can deadlock; pass the held connection down \
                 instead ({})",
                self.held.serial, self.status
            )
        }
    }
}

/// Why an acquire or a [`take`](super::Machine::take) yields no connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AcquireError<E> {
    /// The machine is closed.
    Closed,
    /// The deadline passed first.
    TimedOut(TimedOut<E>),
    /// A [`try_acquire`](super::Machine::try_acquire) found no idle connection, or an
    /// [`acquire`](super::Machine::acquire) found none and
    /// [`max_waiters`](super::Config::max_waiters) tasks already waiting: the pool's status.
    Exhausted(Status),
    /// The waiter id is not (or no longer) known: it was taken or cancelled already.
    UnknownWaiter(WaiterId),
    /// A connect failed with a [`Failure::Fatal`] error and no connection in use could
    /// serve this task: the error, and the pool as it was then (the task counted as waiting).
    ConnectFailed(E, Status),
    /// The pool is overloaded and this waiter had waited twice the queue target: it was
    /// failed at once rather than left to wait for its deadline (see [`Shed`]).
    Shed(Shed),
    /// The task already holds a connection of this pool and waiting for another cannot
    /// end, or is refused (see [`Deadlock`]).
    Deadlock(Deadlock),
}

impl<E: fmt::Display> fmt::Display for AcquireError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed => f.write_str("the pool is closed"),
            Self::TimedOut(t) => t.fmt(f),
            Self::Exhausted(s) => write!(f, "no idle connection ({s})"),
            Self::UnknownWaiter(w) => write!(f, "unknown waiter {w:?}: already taken or cancelled"),
            Self::ConnectFailed(e, s) => {
                write!(
                    f,
                    "cannot open a connection, and waiting will not help ({s}): {e}"
                )
            }
            Self::Shed(shed) => shed.fmt(f),
            Self::Deadlock(d) => d.fmt(f),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for AcquireError<E> {}

/// An input named a slot or lease the machine does not know in that state; the connection
/// it carried, if any, is handed back untouched for the caller to dispose of.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejected<C> {
    /// The connection the input carried.
    pub conn: Option<C>,
}

/// Rounds to whole milliseconds for display ("5s", not "5.000213s"); sub-millisecond
/// durations are shown as they are.
fn round_ms(d: Duration) -> Duration {
    if d < Duration::from_millis(1) {
        return d;
    }
    let ms = (d.as_nanos() + 500_000) / 1_000_000;
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}
