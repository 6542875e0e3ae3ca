//! The pool handle and what it offers: acquiring, status, metrics, closing, resizing.

use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::sync::Arc;
use std::time::Duration;

use super::acquire::Acquire;
use super::builder::Builder;
use super::clock_policy::Step;
use super::error::Error;
use super::guard::PooledConnection;
use super::metrics::Metrics;
use super::runtime::{Manager, Runtime};
use super::shared::Shared;
use crate::machine::{AcquireError, Caller, ConfigError, Release, Status};

/// A connection pool: a cheap `Clone` handle, shared by every task that uses the pool.
///
/// The pool's background work (the maintenance task) ends once every handle and every
/// guard has been dropped.
pub struct Pool<M: Manager, R: Runtime> {
    pub(crate) shared: Arc<Shared<M, R>>,
}

impl<M: Manager, R: Runtime> Clone for Pool<M, R> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<M: Manager, R: Runtime> Pool<M, R> {
    /// A builder for a pool of connections made by `manager`.
    pub fn builder(manager: M) -> Builder<M, R> {
        Builder::new(manager)
    }

    /// Acquires a connection, waiting at most the pool's acquire timeout.
    ///
    /// # Errors
    /// The future resolves to [`Error::TimedOut`] (with how long it waited, the pool's state
    /// and the last connect error) once the acquire timeout passes, whatever was running then
    /// (a connect, a checkout check); to [`Error::ConnectFailed`] at once if connects fail with
    /// an error that waiting cannot heal (see [`Manager::is_fatal`]); to [`Error::Shed`] early,
    /// with load shedding on ([`Builder::queue_target`](super::Builder::queue_target)), if
    /// the pool is overloaded; to [`Error::Exhausted`] at once if
    /// [`max_waiters`](super::Builder::max_waiters) tasks already wait; to
    /// [`Error::Deadlock`] at once if the task already holds a connection of this pool and
    /// no connection can ever come back (every one in use is held by a task waiting on the
    /// pool), or with [`self_wait_error`](super::Builder::self_wait_error) (see
    /// `ARCHITECTURE.md`, "A task waiting on itself"); or to [`Error::Closed`].
    ///
    /// # Panics
    /// The future panics if polled again after it completed.
    ///
    /// # Cancel safety
    /// Cancel safe: see [`Acquire`].
    #[track_caller]
    pub fn get(&self) -> Acquire<'_, M, R> {
        Acquire::new(
            self,
            self.shared.settings.acquire_timeout,
            Location::caller(),
        )
    }

    /// Acquires a connection, waiting at most `timeout` (overriding the pool's acquire
    /// timeout for this call).
    ///
    /// # Errors
    /// As [`get`](Self::get).
    ///
    /// # Cancel safety
    /// Cancel safe: see [`Acquire`].
    #[track_caller]
    pub fn get_timeout(&self, timeout: Duration) -> Acquire<'_, M, R> {
        Acquire::new(self, Some(timeout), Location::caller())
    }

    /// Acquires a connection as [`get`](Self::get) does, as a `'static` guard that holds a
    /// pool handle of its own (see [`PooledConnection::into_owned`]), for moving the
    /// connection into a spawned task.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    ///
    /// # Cancel safety
    /// Cancel safe: see [`Acquire`].
    #[track_caller]
    pub fn get_owned(
        &self,
    ) -> impl Future<Output = Result<PooledConnection<'static, M, R>, Error<M::Error>>> + '_ {
        let acquire = self.get();
        async move { Ok(acquire.await?.into_owned()) }
    }

    /// Takes an idle connection if there is one, without waiting, checking or opening one.
    ///
    /// # Errors
    /// [`Error::Exhausted`] with the pool's status if no connection is idle;
    /// [`Error::Closed`] after [`close`](Self::close).
    #[track_caller]
    pub fn try_get(&self) -> Result<PooledConnection<'_, M, R>, Error<M::Error>> {
        let site = Location::caller();
        loop {
            let (lease, conn, now) = match self.shared.lend_parked() {
                Some(lent) => lent,
                None => {
                    let now = self.shared.now(Step::Lease);
                    let outcome = self.shared.transition(|state| {
                        let outcome = state.machine.try_acquire(now);
                        if outcome.is_ok() {
                            state.metrics.acquired += 1;
                        }
                        outcome
                            .map(|(lease, conn)| (lease, conn, now))
                            .map_err(|e| match e {
                                AcquireError::Exhausted(_) => {
                                    Error::Exhausted(self.shared.status(state))
                                }
                                _ => Error::Closed,
                            })
                    });
                    outcome?
                }
            };
            let caller = self.shared.runtime.current_task().map(|task| Caller {
                task,
                context: None,
            });
            self.shared.holders.lent(lease.id(), caller, site);
            let lent_at = self.shared.instruments.lent_at(now);
            let mut guard = PooledConnection::new(&self.shared, lease, conn, lent_at);
            // As in `get`: a connection known to be broken is closed, never lent.
            if !self.shared.manager.has_broken(guard.raw_mut()) {
                // It never waits: a wait of zero.
                self.shared.instruments.served(None, || now);
                return Ok(guard);
            }
            guard.close(Release::Broken);
        }
    }

    /// Waits until the pool can lend a connection (HikariCP's start-up check,
    /// `initializationFailTimeout`): acquires one within the acquire timeout and gives it
    /// back, so it stays open and idle.
    ///
    /// ```no_run
    /// # async fn start<M: pool_core::Manager, R: pool_core::Runtime>(manager: M) -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = pool_core::Pool::<M, R>::builder(manager).build()?;
    /// pool.ready().await?; // fails at once on a wrong password, after the timeout if the server is down
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::ConnectFailed`] at once if a connect fails with an error that waiting cannot
    /// heal (wrong credentials, unknown database); [`Error::TimedOut`], carrying the last
    /// connect error, if no connection opened before the acquire timeout;
    /// [`Error::Closed`].
    pub async fn ready(&self) -> Result<(), Error<M::Error>> {
        drop(self.get().await?);
        Ok(())
    }

    /// Runs `f` with a connection and gives the connection back afterwards, whatever happens
    /// (if `f` panics, the connection is closed, since its state is unknown).
    ///
    /// # Errors
    /// As [`get`](Self::get); `f`'s own result is returned inside `Ok`.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future returns the connection (closing it if `f` was in
    /// the middle of using it is the manager's [`reset`](Manager::reset) decision).
    #[track_caller]
    pub fn with_connection<F, T>(
        &self,
        f: F,
    ) -> impl Future<Output = Result<T, Error<M::Error>>> + use<'_, M, R, F, T>
    where
        F: AsyncFnOnce(&mut M::Connection) -> T,
    {
        let acquire = self.get();
        async move {
            let mut conn = acquire.await?;
            Ok(f(&mut conn).await)
        }
    }

    /// Runs blocking `f` with a connection on the runtime's blocking pool, so a blocking
    /// driver never stalls the async executor, and gives the connection back when `f` ends.
    ///
    /// # Errors
    /// As [`get`](Self::get); `f`'s own result is returned inside `Ok`.
    ///
    /// # Panics
    /// If `f` panics, the panic is resumed in the caller (and the connection is closed, since
    /// its state is unknown).
    ///
    /// # Cancel safety
    /// Cancel safe: the connection moves to the blocking thread with `f`; if the caller stops
    /// waiting, `f` still runs to its end there and the connection is returned afterwards.
    #[track_caller]
    pub fn interact<F, T>(&self, f: F) -> impl Future<Output = Result<T, Error<M::Error>>> + '_
    where
        F: FnOnce(&mut M::Connection) -> T + Send + 'static,
        T: Send + 'static,
    {
        let acquire = self.get();
        async move {
            let mut conn = acquire.await?.into_owned();
            let blocking = self.shared.runtime.spawn_blocking(move || f(&mut conn));
            Ok(blocking.await)
        }
    }

    /// The pool's name (see [`Builder::name`](super::Builder::name)).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The pool's counts right now.
    pub fn status(&self) -> Status {
        self.shared.status(&self.shared.lock())
    }

    /// The pool's cumulative counters.
    pub fn metrics(&self) -> Metrics {
        self.shared.metrics(&self.shared.lock())
    }

    /// Closes the pool: waiters fail with [`Error::Closed`], idle connections are closed
    /// now, connections in use are closed when they come back. Idempotent.
    pub fn close(&self) {
        self.shared.transition(|state| state.machine.close());
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().machine.is_closed()
    }

    /// Resolves once the pool is closed and every connection it counted is closed.
    ///
    /// # Cancel safety
    /// Cancel safe: it only observes.
    pub async fn drained(&self) {
        loop {
            let listener = self.shared.drained.listen();
            if self.shared.lock().machine.is_drained() {
                return;
            }
            listener.await;
        }
    }

    /// Changes the maximum size at run time. Growing serves waiters at once; shrinking
    /// closes surplus idle connections and lets leased ones drain.
    ///
    /// # Errors
    /// A [`ConfigError`] if `max_size` is zero or below `min_idle`; nothing changes then.
    pub fn set_max_size(&self, max_size: usize) -> Result<(), ConfigError> {
        let now = self.shared.runtime.now();
        self.shared
            .transition(|state| state.machine.set_max_size(max_size, now))?;
        self.shared.instruments.set_max_size(max_size);
        Ok(())
    }

    /// The manager.
    pub fn manager(&self) -> &M {
        &self.shared.manager
    }
}

impl<M: Manager, R: Runtime> fmt::Debug for Pool<M, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Pool");
        s.field("name", &self.shared.name);
        match self.shared.try_lock() {
            Some(state) => s.field("status", &self.shared.status(&state)),
            None => s.field("status", &format_args!("<locked>")),
        };
        s.finish_non_exhaustive()
    }
}
