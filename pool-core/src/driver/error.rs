//! The driver's errors: each says what happened and what the pool looked like.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::holders::Site;
use crate::machine::{ConfigError, LeaseId, Shed, Status, TimedOut};

/// Why a connect failed, as kept for time-out reports.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConnectError<E> {
    /// The manager's connect returned an error.
    Failed(E),
    /// The connect did not finish within the connect timeout.
    TimedOut(Duration),
    /// The connect panicked, or the runtime dropped its task.
    Aborted,
}

impl<E: fmt::Display> fmt::Display for ConnectError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Failed(e) => e.fmt(f),
            Self::TimedOut(d) => write!(f, "connect timed out after {d:?}"),
            Self::Aborted => f.write_str("the connect panicked or its task was dropped"),
        }
    }
}

/// `Failed` is transparent: it shows the manager's error and passes on that error's source,
/// so a printed chain says each cause once.
impl<E: std::error::Error + 'static> std::error::Error for ConnectError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Failed(e) => e.source(),
            _ => None,
        }
    }
}

impl<E> ConnectError<E> {
    /// The manager's error, if the connect failed with one (for its details, such as a
    /// PostgreSQL SQLSTATE).
    pub fn manager_error(&self) -> Option<&E> {
        match self {
            Self::Failed(e) => Some(e),
            _ => None,
        }
    }
}

/// Why the pool gave no connection.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error<E> {
    /// No connection became available before the deadline. Carries how long the task
    /// waited, the pool's status at the deadline and the last connect error.
    TimedOut(TimedOut<Arc<ConnectError<E>>>),
    /// The pool is closed.
    Closed,
    /// [`try_get`](super::Pool::try_get) found no idle connection, or an acquire found none
    /// while [`max_waiters`](super::Builder::max_waiters) tasks were already waiting: the
    /// pool's status.
    Exhausted(Status),
    /// A connect failed with an error that cannot heal by waiting (see
    /// [`Manager::is_fatal`](super::Manager::is_fatal)): the error, and the pool's status
    /// when it arrived.
    ConnectFailed(Arc<ConnectError<E>>, Status),
    /// The pool is overloaded (see [`queue_target`](super::Builder::queue_target)): no
    /// acquire in the last queue interval got a connection within the queue target, and
    /// this one had waited twice the target, so it failed at once rather than at its
    /// deadline. Carries how long it waited, the settings and the pool's status then.
    Shed(Shed),
    /// The task already holds a connection of this pool, and waiting for another cannot
    /// end (every connection in use is held by a task that waits on this pool, and none can
    /// be opened: `certain`), or is refused by
    /// [`self_wait_error`](super::Builder::self_wait_error). Carries both acquire sites and
    /// the pool's status. See `ARCHITECTURE.md`, "A task waiting on itself".
    Deadlock(DeadlockError),
}

/// A task asked for a connection while it holds one of the same pool, and the pool failed
/// the acquire at once (see [`Error::Deadlock`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadlockError {
    /// The lease the task holds.
    pub lease: LeaseId,
    /// No connection can ever come back: every connection in use is held by a task that
    /// is itself waiting on this pool, and none can be opened. `false`: refused by
    /// [`self_wait_error`](super::Builder::self_wait_error).
    pub certain: bool,
    /// Where the held connection was acquired, if recorded.
    pub held_at: Option<Site>,
    /// Where the acquire that would have waited was made.
    pub waiting_at: Site,
    /// The pool when it was decided (the task counted as waiting).
    pub status: Status,
}

impl fmt::Display for DeadlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held_at = self
            .held_at
            .map_or_else(|| "an unrecorded site".to_owned(), |site| site.to_string());
        if self.certain {
            write!(
                f,
                "deadlock: this task waits for a connection (at {}) while it holds one of the \
                 same pool (lease {}, acquired at {held_at}), and every connection in use is \
                 held by a task that is itself waiting on this pool, with none to open: none \
                 can ever come back ({}); pass the held connection down instead",
                self.waiting_at,
                self.lease.serial(),
                self.status
            )
        } else {
            write!(
                f,
                "refused to wait (self_wait_error): this task asked for a connection (at {}) \
                 while it holds one of the same pool (lease {}, acquired at {held_at}), which \
                 can deadlock; pass the held connection down instead ({})",
                self.waiting_at,
                self.lease.serial(),
                self.status
            )
        }
    }
}

impl<E> Error<E> {
    /// Whether this is [`Error::Deadlock`]: the task holds a connection of this pool and
    /// the acquire failed at once rather than wait on itself.
    pub fn is_deadlock(&self) -> bool {
        matches!(self, Self::Deadlock(_))
    }

    /// Whether this is [`Error::TimedOut`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::TimedOut(_))
    }

    /// Whether this is [`Error::Shed`]: the pool is overloaded and failed the acquire early.
    pub fn is_shed(&self) -> bool {
        matches!(self, Self::Shed(_))
    }

    /// The pool's status when the error arose, where the error carries one.
    pub fn status(&self) -> Option<Status> {
        match self {
            Self::TimedOut(t) => Some(t.status),
            Self::Shed(shed) => Some(shed.status),
            Self::Deadlock(d) => Some(d.status),
            Self::Exhausted(s) | Self::ConnectFailed(_, s) => Some(*s),
            Self::Closed => None,
        }
    }
}

impl<E: fmt::Display> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TimedOut(t) => t.fmt(f),
            Self::Closed => f.write_str("the pool is closed"),
            Self::Exhausted(s) => write!(f, "no idle connection ({s})"),
            Self::ConnectFailed(e, s) => write!(
                f,
                "cannot open a connection, and waiting will not help: {e} ({s})"
            ),
            Self::Shed(shed) => shed.fmt(f),
            Self::Deadlock(d) => d.fmt(f),
        }
    }
}

/// Each error prints what it carries, its connect error included (first, for
/// `ConnectFailed`, so a log line cut short still names the cause), and so returns no
/// source: a printed chain says each cause once. [`Error::connect_error`] gives the connect
/// error itself (a PostgreSQL SQLSTATE, say).
impl<E: std::error::Error + 'static> std::error::Error for Error<E> {}

impl<E> Error<E> {
    /// The connect error this error carries: the cause of [`Error::ConnectFailed`], or the
    /// last connect error a [`Error::TimedOut`] reports.
    pub fn connect_error(&self) -> Option<&ConnectError<E>> {
        match self {
            Self::ConnectFailed(e, _) => Some(e),
            Self::TimedOut(t) => t.last_connect_error.as_deref(),
            _ => None,
        }
    }
}

/// A pool that could not be built.
#[derive(Debug)]
#[non_exhaustive]
pub enum BuildError {
    /// The configuration is invalid.
    Config(ConfigError),
    /// No runtime to run on: `build` was called outside a tokio runtime, for example, or the
    /// runtime lacks something the pool needs (a tokio runtime built without timers).
    NoRuntime(String),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(e) => e.fmt(f),
            Self::NoRuntime(why) => write!(f, "cannot build the pool: {why}"),
        }
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Config(e) => Some(e),
            Self::NoRuntime(_) => None,
        }
    }
}

impl From<ConfigError> for BuildError {
    fn from(e: ConfigError) -> Self {
        Self::Config(e)
    }
}
