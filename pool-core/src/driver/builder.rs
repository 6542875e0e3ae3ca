//! The builder: one setter per setting, every setting validated by `build`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::error::BuildError;
use super::leak::LeakReport;
use super::pool::Pool;
use super::runtime::{Manager, Runtime};
use super::settings::Settings;
use super::shared::Shared;
use super::state::State;
use crate::machine::{Config, ConfigError, Machine};

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
    /// timeout, back-off between failed connects from 50 ms up to 200 ms, no leak detection,
    /// no load shedding (with a [`queue_target`](Self::queue_target), a 1 s
    /// [`queue_interval`](Self::queue_interval)), no bound on the number of waiters.
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
                name: None,
                metrics: cfg!(feature = "metrics"),
                wait_times: true,
            },
            runtime: None,
        }
    }

    /// The pool's name: the `db.client.connection.pool.name` label of its metrics (with the
    /// `metrics` feature), the `pool` field of its tracing events and spans, and part of
    /// its `Debug`. Name each pool of a process differently. Without a name, `build` names
    /// pools `pool-1`, `pool-2`, ... in the order they are built (as HikariCP does).
    ///
    /// ```
    /// # fn configure<M: pool_core::Manager, R: pool_core::Runtime>(b: pool_core::Builder<M, R>) -> pool_core::Builder<M, R> {
    /// b.name("orders")
    /// # }
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.settings.name = Some(Arc::from(name.into()));
        self
    }

    /// Whether this pool emits its OpenTelemetry connection-pool instruments through the
    /// `metrics` crate's facade (default `true`; only with the `metrics` feature). They are
    /// registered with the recorder in force when [`build`](Self::build) runs: install
    /// the global recorder first (or build inside `metrics::with_local_recorder`). With
    /// them on, every lend and give-back reads the clock, for the use time (see
    /// `ARCHITECTURE.md`, "Observability"); turn them off for a pool that must not pay
    /// that.
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, enabled: bool) -> Self {
        self.settings.metrics = enabled;
        self
    }

    /// Whether the pool measures how long each acquire that queued waited, into
    /// [`Metrics`](super::Metrics)'s `wait_total`, `wait_max` and `wait_times` (default
    /// `true`). Measuring reads the clock once more per waiting acquire, when it collects
    /// its connection, plus a subtraction and a histogram update under the pool's lock:
    /// about 4 % of a hand-off between tasks (see `ARCHITECTURE.md`, "Hot-path cost").
    /// Turned off, those three stay empty (`wait_times.count()` is 0), every other counter
    /// is kept, and the `pool.wait` span still records its `waited_ms` when a subscriber
    /// takes it.
    ///
    /// ```
    /// # fn configure<M: pool_core::Manager, R: pool_core::Runtime>(b: pool_core::Builder<M, R>) -> pool_core::Builder<M, R> {
    /// // A pool whose waits are watched elsewhere (the `pool.wait` span, or the caller's
    /// // own timing) need not measure them twice.
    /// b.wait_times(false)
    /// # }
    /// ```
    pub fn wait_times(mut self, enabled: bool) -> Self {
        self.settings.wait_times = enabled;
        self
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
    /// fails with an error that waiting cannot heal
    /// ([`Error::ConnectFailed`](super::Error::ConnectFailed)). Zero is refused by
    /// [`build`](Self::build): [`Pool::try_get`] is the acquire that never waits.
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

    /// Opt-in load shedding: when the database falls behind the arrival rate, fail the
    /// waiters of an overloaded queue early with [`Error::Shed`](super::Error::Shed) instead
    /// of letting every caller wait its whole acquire timeout and fail with the rest.
    ///
    /// `target` is the wait a task should get a connection within. If no acquire in a whole
    /// [`queue_interval`](Self::queue_interval) got one within it, the pool counts as
    /// overloaded for the next interval, and every waiter that has waited twice `target`
    /// fails at once; the others keep their places and are served within about twice the
    /// target, until waits fall again. This is the CoDel scheme of Elixir's DBConnection
    /// (`queue_target`, `queue_interval`). `None`, the default, never sheds; 50 ms,
    /// DBConnection's default, suits queries of a few milliseconds.
    ///
    /// ```no_run
    /// # async fn run<M: pool_core::Manager, R: pool_core::Runtime>(manager: M) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use pool_core::{Error, Pool};
    ///
    /// let pool = Pool::<M, R>::builder(manager)
    ///     .queue_target(Some(Duration::from_millis(50)))
    ///     .queue_interval(Duration::from_secs(1))
    ///     .build()?;
    /// match pool.get().await {
    ///     Ok(conn) => { /* use it */ }
    ///     // Overloaded: answer "busy, retry later" now rather than after the time-out.
    ///     Err(Error::Shed(shed)) => eprintln!("{shed}"),
    ///     Err(e) => return Err(e.into()),
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// [`build`](Self::build) refuses a zero target, and one whose double is not shorter
    /// than the [`acquire_timeout`](Self::acquire_timeout) (every waiter would time out
    /// before it could be shed).
    pub fn queue_target(mut self, target: Option<Duration>) -> Self {
        self.config.queue_target = target;
        self
    }

    /// How long waits must all stay above the [`queue_target`](Self::queue_target) before
    /// the pool counts as overloaded, and how often that is decided again (default 1 s; zero
    /// is refused). Without a queue target it does nothing.
    ///
    /// ```
    /// # fn configure<M: pool_core::Manager, R: pool_core::Runtime>(b: pool_core::Builder<M, R>) -> pool_core::Builder<M, R> {
    /// use std::time::Duration;
    /// // Shed once waits stayed above 20 ms for half a second.
    /// b.queue_target(Some(Duration::from_millis(20)))
    ///     .queue_interval(Duration::from_millis(500))
    /// # }
    /// ```
    pub fn queue_interval(mut self, interval: Duration) -> Self {
        self.config.queue_interval = interval;
        self
    }

    /// The most tasks that may wait for a connection at once: an acquire that finds no idle
    /// connection while this many wait fails at once with
    /// [`Error::Exhausted`](super::Error::Exhausted), the pool's status in it, instead of
    /// queueing. `None`, the default, puts no bound on the queue; zero is refused
    /// ([`Pool::try_get`] is the acquire that never waits).
    ///
    /// ```no_run
    /// # async fn run<M: pool_core::Manager, R: pool_core::Runtime>(manager: M) -> Result<(), Box<dyn std::error::Error>> {
    /// use pool_core::{Error, Pool};
    ///
    /// // At most 64 tasks queue for the 16 connections; the 65th is refused at once.
    /// let pool = Pool::<M, R>::builder(manager)
    ///     .max_size(16)
    ///     .max_waiters(Some(64))
    ///     .build()?;
    /// if let Err(Error::Exhausted(status)) = pool.get().await {
    ///     eprintln!("too busy: {status}");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn max_waiters(mut self, max: Option<usize>) -> Self {
        self.config.max_waiters = max;
        self
    }

    /// Fail at once, with [`Error::Deadlock`](super::Error::Deadlock) (not `certain`), an
    /// acquire that would wait while its task holds a connection of this pool that it
    /// acquired in the same context (the nested `get` of bb8#154), instead of only counting
    /// it ([`Metrics::self_waits`](super::Metrics::self_waits)) and logging a warning.
    /// Default `false`. A certain deadlock (every connection in use held by a task that
    /// waits on the pool, none to open) fails at once either way. Only where the runtime
    /// names tasks ([`Runtime::current_task`]); see `ARCHITECTURE.md`, "A task waiting on
    /// itself".
    ///
    /// ```no_run
    /// # async fn run<M: pool_core::Manager, R: pool_core::Runtime>(manager: M) -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = pool_core::Pool::<M, R>::builder(manager)
    ///     .max_size(1)
    ///     .self_wait_error(true)
    ///     .build()?;
    /// let held = pool.get().await?;
    /// // In the same task: refused at once, with both acquire sites, instead of waiting:
    /// assert!(pool.get().await.is_err_and(|e| e.is_deadlock()));
    /// # drop(held); Ok(()) }
    /// ```
    pub fn self_wait_error(mut self, enabled: bool) -> Self {
        self.config.self_wait_error = enabled;
        self
    }

    /// Whether a certain deadlock fails at once with
    /// [`Error::Deadlock`](super::Error::Deadlock) (`certain`): every connection in use held
    /// by a task that is itself waiting on this pool, in the context (waker) it acquired the
    /// connection in, none to open. Default `false` (opt-in): the pool cannot tell a nested
    /// `get` from sibling branches of one task polled with the same waker (`join!`,
    /// `select!`): with a pool of one, `join!(a(), b())` where `a` holds the connection
    /// through a query while `b` waits for one would fail `b` although `a` gives it back.
    /// Turn it on where code never does that; self-waits are counted and logged either way.
    /// See `ARCHITECTURE.md`, "A task waiting on itself".
    pub fn fail_deadlocks(mut self, enabled: bool) -> Self {
        self.config.fail_deadlocks = enabled;
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
        if let (Some(target), Some(timeout)) =
            (self.config.queue_target, self.settings.acquire_timeout)
        {
            let shed_at = target.saturating_mul(2);
            if shed_at >= timeout {
                return Err(ConfigError::new(
                    "queue_target",
                    format!("is {target:?}, so waiters would be shed after {shed_at:?}, but the acquire timeout ({timeout:?}) ends every wait sooner: the target must be less than half the acquire timeout"),
                )
                .into());
            }
        }
        let mut settings = self.settings;
        // Backtraces serve leak reports only: without a threshold there are none to serve.
        settings.leak_backtraces &= self.config.leak_threshold.is_some();
        if settings.name.is_none() {
            static BUILT: AtomicU64 = AtomicU64::new(1);
            let n = BUILT.fetch_add(1, Ordering::Relaxed);
            settings.name = Some(Arc::from(format!("pool-{n}")));
        }
        let machine = Machine::new(self.config)?;
        let runtime = match self.runtime {
            Some(runtime) => runtime,
            None => R::current().map_err(BuildError::NoRuntime)?,
        };
        runtime.validate().map_err(BuildError::NoRuntime)?;
        let shared = Shared::new(self.manager, runtime, settings, State::new(machine));
        shared.spawn_maintenance();
        // Start the min_idle connects the machine asked for at construction.
        shared.transition(|_| ());
        Ok(Pool { shared })
    }
}

impl<M: Manager, R: Runtime> fmt::Debug for Builder<M, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.settings.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
