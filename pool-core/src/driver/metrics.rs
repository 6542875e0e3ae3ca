//! The pool's cumulative counters.

use std::time::Duration;

use super::wait_times::WaitTimes;
use crate::machine::CloseReason;

/// Cumulative counters of a pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// Connections handed out.
    pub acquired: u64,
    /// ...of which after waiting.
    pub acquired_after_wait: u64,
    /// Total time spent waiting by acquirers that got a connection after waiting.
    pub wait_total: Duration,
    /// The longest such wait.
    pub wait_max: Duration,
    /// The distribution of every served acquire's wait (zero for those served at once):
    /// percentiles (`wait_times.p99()`), count and maximum.
    pub wait_times: WaitTimes,
    /// Acquires that timed out.
    pub timed_out: u64,
    /// Acquires shed because the pool was overloaded ([`Error::Shed`](super::Error::Shed)).
    pub shed: u64,
    /// Acquires refused at once because `max_waiters` tasks were already waiting.
    pub queue_full: u64,
    /// Acquires that waited (or would have) while their task held a connection of this pool
    /// (see `ARCHITECTURE.md`, "A task waiting on itself"); each is also logged as a
    /// warning with both acquire sites. Only counted where the runtime names tasks.
    pub self_waits: u64,
    /// Acquires failed at once because no connection could ever come back (a certain
    /// deadlock, [`Error::Deadlock`](super::Error::Deadlock) with `certain`), or refused by
    /// [`self_wait_error`](super::Builder::self_wait_error).
    pub deadlocks: u64,
    /// Connects that succeeded.
    pub connects_ok: u64,
    /// Connects that failed or timed out.
    pub connects_failed: u64,
    /// Checkout checks that failed.
    pub checks_failed: u64,
    /// Resets that failed.
    pub resets_failed: u64,
    /// Leases reported as suspected leaks.
    pub leaks_suspected: u64,
    /// Acquires failed at once by a connect error that waiting cannot heal
    /// ([`Error::ConnectFailed`](super::Error::ConnectFailed)).
    pub failed_fast: u64,
    /// Panics caught in user code (manager methods, hooks, a connection's `Drop`); the pool
    /// logs each one and goes on.
    pub panics: u64,
    /// Connections closed, by reason.
    pub closed: ClosedCounts,
}

/// Connections closed, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClosedCounts {
    /// Found broken on checkin.
    pub broken: u64,
    /// Discarded by their holder (or after a panic, or a failed check).
    pub discarded: u64,
    /// Idle longer than the idle timeout.
    pub idle_timeout: u64,
    /// Older than the max lifetime.
    pub max_lifetime: u64,
    /// Surplus after the pool shrank.
    pub surplus: u64,
    /// Closed with the pool.
    pub pool_closed: u64,
    /// Came back after their lease was reclaimed as abandoned.
    pub reclaimed: u64,
}

impl ClosedCounts {
    /// Counts one close.
    pub(crate) fn count(&mut self, reason: CloseReason) {
        let counter = match reason {
            CloseReason::Broken => &mut self.broken,
            CloseReason::Discarded => &mut self.discarded,
            CloseReason::IdleTimeout => &mut self.idle_timeout,
            CloseReason::MaxLifetime => &mut self.max_lifetime,
            CloseReason::Surplus => &mut self.surplus,
            CloseReason::PoolClosed => &mut self.pool_closed,
            CloseReason::Reclaimed => &mut self.reclaimed,
            // CloseReason is non-exhaustive for users, not for this crate.
        };
        *counter += 1;
    }

    /// All closes added up.
    pub fn total(&self) -> u64 {
        self.broken
            + self.discarded
            + self.idle_timeout
            + self.max_lifetime
            + self.surplus
            + self.pool_closed
            + self.reclaimed
    }
}
