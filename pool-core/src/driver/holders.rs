//! Who holds each lease, and where it was acquired: the driver's record for the machine's
//! self-wait and deadlock decisions (`machine/selfwait.rs`; `ARCHITECTURE.md`, "A task
//! waiting on itself").
//!
//! Leases change hands without the lock (the return lane lends and takes them back, a guard
//! moves to another task), so the record is a lock-free table keyed by the lease's slot
//! index, written by the guard's own task and read under the lock only when a named task is
//! about to wait. Each entry is written only while its lease is out, by whoever has the
//! guard:
//!
//! - a lend (from the machine or the lane) records the task, the context (the acquire's
//!   waker) and the acquire's site;
//! - a `Deref`/`DerefMut` of the guard by another task (or outside any task) records that
//!   task (or nobody) and forgets the context: the guard has moved, and only the task is
//!   known now, which is enough for a report, never for a certain deadlock;
//! - [`into_owned`](super::PooledConnection::into_owned) forgets both: an owned guard is
//!   made to move, so it is nobody's until a task uses it;
//! - giving the guard back (drop, `detach`, `discard`) forgets both, before the connection
//!   reaches the lane, a reset task or the machine.
//!
//! When the runtime names no task, nothing is ever written, and every entry reads as
//! nobody's. Slots beyond [`TABLE_LIMIT`] (a pool grown past it, reclaimed leases) are never
//! recorded: their leases count as nobody's, so a self-wait on one is missed, never
//! invented.

use std::num::NonZeroU64;
use std::panic::Location;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::atomic::AtomicCell;
use crossbeam_utils::CachePadded;

use crate::machine::{Caller, LeaseId, TaskId};

/// The most slots the table records (128 bytes each).
pub(crate) const TABLE_LIMIT: usize = 1024;

/// Where an acquire was made.
pub(crate) type Site = &'static Location<'static>;

#[derive(Default)]
struct Entry {
    /// The holding task's id; 0 for nobody.
    task: AtomicU64,
    /// The context the lease was acquired in; 0 if unknown.
    context: AtomicU64,
    /// Where the lease was acquired.
    site: AtomicCell<Option<Site>>,
}

/// Who holds each lease, by slot index.
pub(crate) struct Holders {
    entries: Box<[CachePadded<Entry>]>,
}

impl Holders {
    /// A table for a pool of `max_size`.
    pub(crate) fn new(max_size: usize) -> Self {
        Self {
            entries: (0..max_size.min(TABLE_LIMIT))
                .map(|_| CachePadded::new(Entry::default()))
                .collect(),
        }
    }

    fn entry(&self, lease: LeaseId) -> Option<&Entry> {
        self.entries.get(lease.index()).map(|e| &**e)
    }

    /// A lease was lent to `caller` (nothing is written when the runtime named no task).
    #[inline]
    pub(crate) fn lent(&self, lease: LeaseId, caller: Option<Caller>, site: Site) {
        let (Some(caller), Some(entry)) = (caller, self.entry(lease)) else {
            return;
        };
        // A connection cycling through one task finds both as it left them: no write.
        // Compared by address: comparing locations compares their file names.
        if !entry.site.load().is_some_and(|old| std::ptr::eq(old, site)) {
            entry.site.store(Some(site));
        }
        let context = caller.context.map_or(0, NonZeroU64::get);
        if entry.context.load(Ordering::Relaxed) != context {
            entry.context.store(context, Ordering::Relaxed);
        }
        // Released after the context, so a reader that sees this task sees its context.
        entry.task.store(caller.task.get(), Ordering::Release);
    }

    /// The guard of `lease` is used by `task`: if another task (or none) holds it now,
    /// record that task and forget the context.
    #[inline]
    pub(crate) fn used_by(&self, lease: LeaseId, task: Option<TaskId>) {
        let Some(entry) = self.entry(lease) else {
            return;
        };
        let task = task.map_or(0, TaskId::get);
        if entry.task.load(Ordering::Relaxed) != task {
            entry.context.store(0, Ordering::Relaxed);
            entry.task.store(task, Ordering::Release);
        }
    }

    /// Nobody holds `lease` (given back, or made owned to move). The context and the site
    /// stay: they are read only with a task, and whoever records a task writes its own
    /// context first.
    #[inline]
    pub(crate) fn clear(&self, lease: LeaseId) {
        let Some(entry) = self.entry(lease) else {
            return;
        };
        if entry.task.load(Ordering::Relaxed) != 0 {
            entry.task.store(0, Ordering::Release);
        }
    }

    /// Who holds `lease`, as far as recorded (read under the lock, for the machine).
    pub(crate) fn holder(&self, lease: LeaseId) -> Option<Caller> {
        let entry = self.entry(lease)?;
        let task = TaskId::new(entry.task.load(Ordering::Acquire))?;
        Some(Caller {
            task,
            context: NonZeroU64::new(entry.context.load(Ordering::Relaxed)),
        })
    }

    /// Where `lease` was acquired, if recorded.
    pub(crate) fn site(&self, lease: LeaseId) -> Option<Site> {
        self.entry(lease).and_then(|e| e.site.load())
    }
}

/// The context an acquire runs in: its waker's data pointer, which names the task on
/// tokio, async-std and smol, and a branch of its own under a `FuturesUnordered` (so a
/// connection held by one such branch is never taken for a deadlock of another).
pub(crate) fn context_of(waker: &std::task::Waker) -> Option<NonZeroU64> {
    NonZeroU64::new(waker.data() as usize as u64)
}
