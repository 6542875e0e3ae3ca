//! Leak reports: a lease held longer than the leak threshold, and the user's hook for them.

use std::backtrace::Backtrace;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::machine::LeaseId;

/// A lease held longer than the leak threshold.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LeakReport {
    /// The lease (see [`PooledConnection::lease_id`](super::PooledConnection::lease_id)).
    pub lease: LeaseId,
    /// How long it had been held when noticed.
    pub held_for: Duration,
    /// Where it was acquired, when leak detection captures backtraces.
    pub acquired_at: Option<Arc<Backtrace>>,
}

impl fmt::Display for LeakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connection lease {} held for {:?}, suspected leak",
            self.lease.serial(),
            self.held_for
        )?;
        if let Some(bt) = &self.acquired_at {
            write!(f, "; acquired at:\n{bt}")?;
        }
        Ok(())
    }
}

/// The user's hook for leak reports.
pub(crate) type LeakHook = Arc<dyn Fn(&LeakReport) + Send + Sync>;
