//! The guard that lends a connection and gives it back on drop.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use super::clock_policy::Step;
use super::instruments::LentAt;
use super::runtime::{Manager, Runtime};
use super::shared::{ConnOf, Shared};
use crate::machine::{Lease, LeaseId, Release};

/// A connection lent by the pool: derefs to the connection and goes back to the pool when
/// dropped, on every path (normal return, `?`, panic, or the task being cancelled).
///
/// On drop the connection is checked with [`Manager::has_broken`] and, if the manager asks
/// for it, reset in a spawned task (see `tasks.rs`) before reuse. If the thread is panicking, or a checkout
/// check was interrupted, the connection's state is unknown and it is closed instead.
///
/// A guard from [`Pool::get`](super::Pool::get) borrows the pool (`'a`), so lending and
/// returning it touch no reference count, a cache line that every thread using the pool
/// would otherwise write twice per cycle. [`into_owned`](Self::into_owned) (or
/// [`Pool::get_owned`](super::Pool::get_owned)) gives a `'static` guard that holds a
/// handle of its own, to move into a spawned task.
pub struct PooledConnection<'a, M: Manager, R: Runtime> {
    lender: Lender<'a, M, R>,
    /// `Some` until the guard is dropped or detached.
    inner: Option<(Lease, ConnOf<M>)>,
    /// Close instead of reuse on drop (the connection's state is unknown).
    pub(crate) close_on_drop: bool,
    /// When the lend began, for the use-time instrument (empty without the `metrics`
    /// feature).
    lent_at: LentAt,
}

/// Where a guard gives its connection back: the pool it borrows, or a handle of its own.
enum Lender<'a, M: Manager, R: Runtime> {
    Borrowed(&'a Arc<Shared<M, R>>),
    Owned(Arc<Shared<M, R>>),
}

impl<M: Manager, R: Runtime> Lender<'_, M, R> {
    fn shared(&self) -> &Arc<Shared<M, R>> {
        match self {
            Self::Borrowed(shared) => shared,
            Self::Owned(shared) => shared,
        }
    }
}

impl<'a, M: Manager, R: Runtime> PooledConnection<'a, M, R> {
    pub(crate) fn new(
        shared: &'a Arc<Shared<M, R>>,
        lease: Lease,
        conn: ConnOf<M>,
        lent_at: LentAt,
    ) -> Self {
        Self {
            lender: Lender::Borrowed(shared),
            inner: Some((lease, conn)),
            close_on_drop: false,
            lent_at,
        }
    }

    /// The same lease as a `'static` guard, holding a pool handle of its own: for moving the
    /// connection into a spawned task. Costs one reference-count increment.
    ///
    /// An owned guard is made to move, so the pool attributes it to no task until a task
    /// uses it (dereferences it), and even then never counts it towards a certain deadlock,
    /// only towards a self-wait report (see `ARCHITECTURE.md`, "A task waiting on itself").
    pub fn into_owned(mut self) -> PooledConnection<'static, M, R> {
        if let Some((lease, _)) = &self.inner {
            self.lender.shared().holders.clear(lease.id());
        }
        PooledConnection {
            lender: Lender::Owned(Arc::clone(self.lender.shared())),
            inner: self.inner.take(),
            close_on_drop: self.close_on_drop,
            lent_at: self.lent_at,
        }
    }

    /// The id of this lease, as leak reports name it.
    ///
    /// Ids name leases as the machine counts them. Without leak detection or reclaim, a
    /// connection given back while nobody waits and lent again straight from the return
    /// lane (without the machine) keeps its lease, and so its id.
    pub fn lease_id(&self) -> LeaseId {
        match &self.inner {
            Some((lease, _)) => lease.id(),
            // `inner` is only taken by `drop` and `detach`, which consume the guard.
            None => unreachable!("a live guard holds its lease"),
        }
    }

    /// Starts the lend's use time again at `lent_at`: a checkout check ran since the guard
    /// was built, and the lend to the borrower begins only now.
    pub(crate) fn lend_starts(&mut self, lent_at: LentAt) {
        self.lent_at = lent_at;
    }

    /// Closes the connection instead of returning it to the pool (its slot is freed and
    /// may be refilled).
    pub fn discard(mut self) {
        self.close_on_drop = true;
    }

    /// Takes the connection out of the pool for good: its slot is freed (and may be
    /// refilled) and the pool never sees the connection again.
    pub fn detach(mut self) -> M::Connection {
        let Some((lease, conn)) = self.inner.take() else {
            unreachable!("a live guard holds its lease")
        };
        let shared = self.lender.shared();
        shared.holders.clear(lease.id());
        let now = shared.runtime.now();
        let _ = shared.transition(|state| {
            let bt = state.set_backtrace(lease.id(), None);
            (state.machine.detach(lease, now), bt)
        });
        *conn.raw
    }

    /// Gives the connection back now, as `how` says, whatever the manager would decide.
    pub(crate) fn close(mut self, how: Release) {
        if let Some((lease, conn)) = self.inner.take() {
            let shared = self.lender.shared();
            shared.holders.clear(lease.id());
            release(shared, lease, conn, how, LentAt::default());
        }
    }

    /// The connection, for the pool's own use of it in the task that holds the lease (the
    /// manager's checks): no need to note who uses it.
    pub(crate) fn raw_mut(&mut self) -> &mut M::Connection {
        match &mut self.inner {
            Some((_, conn)) => &mut conn.raw,
            None => unreachable!("a live guard holds its connection"),
        }
    }

    /// The connection, noting which task uses it: the holder follows the guard to another
    /// task (see `holders.rs`). A thread-local read where the runtime names tasks.
    #[inline]
    fn conn(&self) -> &ConnOf<M> {
        match &self.inner {
            Some((lease, conn)) => {
                let shared = self.lender.shared();
                shared
                    .holders
                    .used_by(lease.id(), shared.runtime.current_task());
                conn
            }
            None => unreachable!("a live guard holds its connection"),
        }
    }

    #[inline]
    fn conn_mut(&mut self) -> &mut ConnOf<M> {
        let shared = self.lender.shared();
        match &mut self.inner {
            Some((lease, conn)) => {
                shared
                    .holders
                    .used_by(lease.id(), shared.runtime.current_task());
                conn
            }
            None => unreachable!("a live guard holds its connection"),
        }
    }
}

impl<M: Manager, R: Runtime> Deref for PooledConnection<'_, M, R> {
    type Target = M::Connection;
    fn deref(&self) -> &M::Connection {
        &self.conn().raw
    }
}

impl<M: Manager, R: Runtime> DerefMut for PooledConnection<'_, M, R> {
    fn deref_mut(&mut self) -> &mut M::Connection {
        &mut self.conn_mut().raw
    }
}

impl<M: Manager, R: Runtime> Drop for PooledConnection<'_, M, R> {
    fn drop(&mut self) {
        let Some((lease, mut conn)) = self.inner.take() else {
            return;
        };
        let shared = self.lender.shared();
        // Nobody holds it from here: not the reset task, not the lane (see `holders.rs`).
        shared.holders.clear(lease.id());
        let how = if self.close_on_drop || std::thread::panicking() {
            Release::Discard
        } else {
            // User code: a panic in it counts as "broken" rather than losing the lease.
            let manager = &shared.manager;
            let verdict = shared
                .panics
                .guard("Manager::has_broken or needs_reset", || {
                    (
                        manager.has_broken(&mut conn.raw),
                        manager.needs_reset(&conn.raw),
                    )
                });
            match verdict {
                Some((true, _)) | None => Release::Broken,
                Some((false, true)) => {
                    let now = || shared.runtime.now();
                    shared.instruments.returned(self.lent_at, now);
                    shared.spawn_reset(lease, conn);
                    return;
                }
                Some((false, false)) => Release::Reuse,
            }
        };
        release(shared, lease, conn, how, self.lent_at);
    }
}

/// Hands a connection back to the pool; one lent at `lent_at` counts towards the use-time
/// instrument.
pub(crate) fn release<M: Manager, R: Runtime>(
    shared: &Arc<Shared<M, R>>,
    lease: Lease,
    mut conn: ConnOf<M>,
    how: Release,
    lent_at: LentAt,
) {
    let now = shared.now(Step::GiveBack);
    shared.instruments.returned(lent_at, || now);
    conn.last_used = now;
    shared.release(lease, conn, how, now);
}

impl<M: Manager, R: Runtime> fmt::Debug for PooledConnection<'_, M, R>
where
    M::Connection: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("PooledConnection");
        if let Some((lease, conn)) = &self.inner {
            s.field("lease", &lease.id()).field("conn", &conn.raw);
        }
        s.finish()
    }
}
