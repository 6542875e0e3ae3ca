//! The runtime-agnostic async pool over the [machine](crate::machine).
//!
//! [`Pool`] is a cheap `Clone` handle. Acquiring returns a [`PooledConnection`] guard that
//! gives the connection back when dropped. The machine lives behind one synchronous mutex
//! held for exactly one transition: no `.await`, no user code, no waker call and no
//! connection drop happen under it. A connection given back while nobody waits skips the
//! lock both ways: it is parked in a lock-free return lane and lent from there by the next
//! acquire (see the lane's documentation in `driver/lane.rs`; not used with leak detection
//! or reclaim, which need the machine to see every checkout). Connects run in spawned tasks
//! bounded by the connect timeout, so a cancelled acquirer never wastes one; one maintenance
//! task per pool handles deadlines (acquire time-outs, idle reaping, lifetimes, leak
//! detection, back-off, handing parked connections to the machine) with a single timer.
//!
//! The adapters (`pool-tokio`, `pool-async-std`, `pool-smol`) provide the [`Runtime`].

mod acquire;
mod error;
mod guard;
mod lane;
mod panics;
mod runtime;
mod shared;
mod util;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use acquire::Acquire;
pub use error::{BuildError, ConnectError, Error};
pub use guard::PooledConnection;
pub use runtime::{fallback_budget, Manager, Runtime, FALLBACK_BUDGET};
pub use shared::LeakReport;

use crate::machine::{CloseReason, Config, ConfigError, Machine, Status};
use shared::{maintain, Settings, Shared, State};

/// A connection pool: a cheap `Clone` handle, shared by every task that uses the pool.
///
/// The pool's background work (the maintenance task) ends once every handle and every
/// guard has been dropped.
pub struct Pool<M: Manager, R: Runtime> {
    shared: Arc<Shared<M, R>>,
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
    /// an error that waiting cannot heal (see [`Manager::is_fatal`]); or to [`Error::Closed`].
    ///
    /// # Panics
    /// The future panics if polled again after it completed.
    ///
    /// # Cancel safety
    /// Cancel safe: see [`Acquire`].
    pub fn get(&self) -> Acquire<'_, M, R> {
        Acquire::new(self, self.shared.settings.acquire_timeout)
    }

    /// Acquires a connection, waiting at most `timeout` (overriding the pool's acquire
    /// timeout for this call).
    ///
    /// # Errors
    /// As [`get`](Self::get).
    ///
    /// # Cancel safety
    /// Cancel safe: see [`Acquire`].
    pub fn get_timeout(&self, timeout: Duration) -> Acquire<'_, M, R> {
        Acquire::new(self, Some(timeout))
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
    pub async fn get_owned(&self) -> Result<PooledConnection<'static, M, R>, Error<M::Error>> {
        Ok(self.get().await?.into_owned())
    }

    /// Takes an idle connection if there is one, without waiting, checking or opening one.
    ///
    /// # Errors
    /// [`Error::Exhausted`] with the pool's status if no connection is idle;
    /// [`Error::Closed`] after [`close`](Self::close).
    pub fn try_get(&self) -> Result<PooledConnection<'_, M, R>, Error<M::Error>> {
        loop {
            let (lease, conn) = match self.shared.lend_parked() {
                Some((lease, conn, _)) => (lease, conn),
                None => {
                    let now = self.shared.now_if(self.shared.clock.on_acquire);
                    let outcome = self.shared.transition(|state| {
                        let outcome = state.machine.try_acquire(now);
                        if outcome.is_ok() {
                            state.metrics.acquired += 1;
                        }
                        outcome.map_err(|e| match e {
                            crate::machine::AcquireError::Exhausted(_) => {
                                Error::Exhausted(self.shared.status(state))
                            }
                            _ => Error::Closed,
                        })
                    });
                    outcome?
                }
            };
            let mut guard = PooledConnection::new(&self.shared, lease, conn);
            // As in `get`: a connection known to be broken is closed, never lent.
            if !self.shared.manager.has_broken(&mut guard) {
                return Ok(guard);
            }
            guard.close(crate::machine::Release::Broken);
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
    pub async fn with_connection<F, T>(&self, f: F) -> Result<T, Error<M::Error>>
    where
        F: AsyncFnOnce(&mut M::Connection) -> T,
    {
        let mut conn = self.get().await?;
        Ok(f(&mut conn).await)
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
    pub async fn interact<F, T>(&self, f: F) -> Result<T, Error<M::Error>>
    where
        F: FnOnce(&mut M::Connection) -> T + Send + 'static,
        T: Send + 'static,
    {
        let mut conn = self.get().await?.into_owned();
        let blocking = self.shared.runtime.spawn_blocking(move || f(&mut conn));
        Ok(blocking.await)
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
            .transition(|state| state.machine.set_max_size(max_size, now))
    }

    /// The manager.
    pub fn manager(&self) -> &M {
        &self.shared.manager
    }
}

impl<M: Manager, R: Runtime> fmt::Debug for Pool<M, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Pool");
        match self.shared.try_lock() {
            Some(state) => s.field("status", &self.shared.status(&state)),
            None => s.field("status", &format_args!("<locked>")),
        };
        s.finish_non_exhaustive()
    }
}

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
    /// Acquires that timed out.
    pub timed_out: u64,
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
    /// ([`Error::ConnectFailed`]).
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
    fn count(&mut self, reason: CloseReason) {
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

/// Builds a [`Pool`]; every setting has a default, and [`build`](Builder::build) validates
/// them all.
pub struct Builder<M: Manager, R: Runtime> {
    manager: M,
    config: Config,
    settings: Settings,
    runtime: Option<R>,
}

impl<M: Manager, R: Runtime> Builder<M, R> {
    /// A builder with the defaults: `max_size` 10, no `min_idle`, 10 min idle timeout,
    /// 30 min max lifetime, 30 s acquire timeout, 10 s connect timeout, checkout check
    /// bypassed for connections used in the last 500 ms and bounded by 5 s, 5 s reset
    /// timeout, back-off between failed connects from 50 ms up to 200 ms, no leak detection.
    pub fn new(manager: M) -> Self {
        Self {
            manager,
            config: Config::new(10),
            settings: Settings {
                acquire_timeout: Some(Duration::from_secs(30)),
                connect_timeout: Duration::from_secs(10),
                check_on_checkout: true,
                check_bypass: Duration::from_millis(500),
                check_timeout: Duration::from_secs(5),
                reset_timeout: Duration::from_secs(5),
                leak_backtraces: false,
                on_leak: None,
            },
            runtime: None,
        }
    }

    /// The most connections open at once (counting those opening and closing).
    pub fn max_size(mut self, max_size: usize) -> Self {
        self.config.max_size = max_size;
        self
    }

    /// How many idle connections to keep open (prefilled at start).
    pub fn min_idle(mut self, min_idle: usize) -> Self {
        self.config.min_idle = min_idle;
        self
    }

    /// Close connections idle longer than this (never below `min_idle`); `None` keeps them.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// Retire connections older than this (each shortened by a random
    /// [`max_lifetime_jitter`](Self::max_lifetime_jitter)); `None` keeps them forever.
    pub fn max_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.config.max_lifetime = lifetime;
        self
    }

    /// Shorten each connection's lifetime by a random amount up to this, so connections
    /// opened together do not all expire together (default 30 s; must be less than
    /// [`max_lifetime`](Self::max_lifetime) when that is set).
    pub fn max_lifetime_jitter(mut self, jitter: Duration) -> Self {
        self.config.max_lifetime_jitter = jitter;
        self
    }

    /// How long [`Pool::get`] waits, whatever runs meanwhile (a connect, a checkout check);
    /// `None` waits without limit, until a connection comes, the pool closes, or a connect
    /// fails with an error that waiting cannot heal ([`Error::ConnectFailed`]). Zero is
    /// refused by [`build`](Self::build): [`Pool::try_get`] is the acquire that never waits.
    pub fn acquire_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.settings.acquire_timeout = timeout;
        self
    }

    /// How long one connect may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// How long one reset (before reuse) may take before the connection is closed instead.
    pub fn reset_timeout(mut self, timeout: Duration) -> Self {
        self.settings.reset_timeout = timeout;
        self
    }

    /// How long one checkout check may take before the connection is closed and the acquire
    /// tries again (HikariCP's validation timeout); the acquire's own deadline bounds it
    /// too, whichever comes first.
    pub fn check_timeout(mut self, timeout: Duration) -> Self {
        self.settings.check_timeout = timeout;
        self
    }

    /// Whether to run [`Manager::check`] on checkout (default `true`), for connections used
    /// more than [`check_bypass`](Self::check_bypass) ago.
    pub fn check_on_checkout(mut self, enabled: bool) -> Self {
        self.settings.check_on_checkout = enabled;
        self
    }

    /// Skip the checkout check for connections used less than this long ago (HikariCP and
    /// the default use 500 ms; zero checks every time).
    pub fn check_bypass(mut self, bypass: Duration) -> Self {
        self.settings.check_bypass = bypass;
        self
    }

    /// Report leases held longer than `threshold` (a `tracing` warning, the
    /// [`on_leak`](Self::on_leak) hook and a counter); `None`, the default, reports none.
    pub fn leak_threshold(mut self, threshold: Option<Duration>) -> Self {
        self.config.leak_threshold = threshold;
        self
    }

    /// With a [`leak_threshold`](Self::leak_threshold), each acquire captures where it was
    /// made, so a leak report can say (this costs a backtrace capture per acquire). Without
    /// a threshold it does nothing. Default `false`.
    pub fn leak_backtraces(mut self, enabled: bool) -> Self {
        self.settings.leak_backtraces = enabled;
        self
    }

    /// Called with every leak report, outside the pool's lock.
    pub fn on_leak(mut self, hook: impl Fn(&LeakReport) + Send + Sync + 'static) -> Self {
        self.settings.on_leak = Some(Arc::new(hook));
        self
    }

    /// Opt-in stale reclaim: a lease held longer than this stops counting against
    /// `max_size` (a replacement may open); its connection is closed when it comes back.
    pub fn reclaim_after(mut self, limit: Option<Duration>) -> Self {
        self.config.reclaim_after = limit;
        self
    }

    /// The back-off after the first failed connect (default 50 ms); it doubles with each
    /// further failure, up to [`backoff_max`](Self::backoff_max), with jitter.
    pub fn backoff_base(mut self, base: Duration) -> Self {
        self.config.backoff_base = base;
        self
    }

    /// The longest back-off between failed connects (default 200 ms): the pool serves again
    /// at most this long after the server accepts connections again.
    pub fn backoff_max(mut self, max: Duration) -> Self {
        self.config.backoff_max = max;
        self
    }

    /// The seed of the pool's jitter (lifetimes, back-off), for reproducible runs.
    pub fn seed(mut self, seed: u64) -> Self {
        self.config.seed = seed;
        self
    }

    /// Runs the pool on `runtime` instead of [`Runtime::current`].
    pub fn runtime(mut self, runtime: R) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// Builds the pool, starts its maintenance task and its `min_idle` connects.
    ///
    /// # Errors
    /// [`BuildError::Config`] naming the invalid setting; [`BuildError::NoRuntime`] if no
    /// runtime was given and none is current, or the runtime cannot run a pool (see
    /// [`Runtime::validate`]).
    pub fn build(self) -> Result<Pool<M, R>, BuildError> {
        if self.settings.connect_timeout.is_zero() {
            return Err(ConfigError::new("connect_timeout", "must not be zero".into()).into());
        }
        if self.settings.reset_timeout.is_zero() {
            return Err(ConfigError::new("reset_timeout", "must not be zero".into()).into());
        }
        if self.settings.check_timeout.is_zero() {
            return Err(ConfigError::new("check_timeout", "must not be zero".into()).into());
        }
        if self.settings.acquire_timeout == Some(Duration::ZERO) {
            return Err(ConfigError::new(
                "acquire_timeout",
                "must not be zero: every acquire would fail at once and no connection would ever open (use try_get for an acquire that never waits, or None to wait without limit)".into(),
            )
            .into());
        }
        let mut settings = self.settings;
        // Backtraces serve leak reports only: without a threshold there are none to serve.
        settings.leak_backtraces &= self.config.leak_threshold.is_some();
        let machine = Machine::new(self.config)?;
        let runtime = match self.runtime {
            Some(runtime) => runtime,
            None => R::current().map_err(BuildError::NoRuntime)?,
        };
        runtime.validate().map_err(BuildError::NoRuntime)?;
        let shared = Shared::new(self.manager, runtime, settings, State::new(machine));
        shared.runtime.spawn(maintain(Arc::downgrade(&shared)));
        // Start the min_idle connects the machine asked for at construction.
        shared.transition(|_| ());
        Ok(Pool { shared })
    }
}

impl<M: Manager, R: Runtime> fmt::Debug for Builder<M, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
