//! The machine's configuration and its validation.

use std::fmt;
use std::time::Duration;

/// What the machine needs to know to manage a pool; validated by [`Config::validate`] and
/// [`Machine::new`](super::Machine::new).
///
/// Every duration is optional where the feature it drives is optional; `None` turns the
/// feature off. Defaults follow HikariCP where it has an equivalent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// The most connections that may exist at once, counting those opening and closing.
    pub max_size: usize,
    /// The machine keeps at least this many idle connections open (prefilled at start,
    /// replenished after closes), bounded by `max_size`. Idle timeout never closes below it.
    pub min_idle: usize,
    /// An idle connection unused this long is closed, unless that would leave fewer than
    /// `min_idle` idle.
    pub idle_timeout: Option<Duration>,
    /// A connection older than this is closed when it is next idle (or returned).
    pub max_lifetime: Option<Duration>,
    /// Each connection's lifetime is shortened by a random amount up to this, so connections
    /// opened together do not all expire together. Must be less than `max_lifetime`.
    pub max_lifetime_jitter: Duration,
    /// A lease held longer than this is reported once as a suspected leak.
    pub leak_threshold: Option<Duration>,
    /// Opt-in stale reclaim: a lease held longer than this stops counting against
    /// `max_size`, so a replacement may open; when it finally comes back it is closed.
    pub reclaim_after: Option<Duration>,
    /// The back-off after the first failed connect; it doubles with each further failure
    /// (connects that failed together count once). Each back-off is drawn between half its
    /// length and all of it.
    pub backoff_base: Duration,
    /// The longest back-off between connect attempts while they fail. It bounds both how
    /// soon the pool notices that the server is back (at most this long after it accepts
    /// connections again) and how often it knocks while it is down (at most one attempt per
    /// half of it). The default, 200 ms, serves again within 200 ms of a restart with at
    /// most 10 attempts a second.
    pub backoff_max: Duration,
    /// Opt-in load shedding (CoDel-style queue management, after Elixir's DBConnection):
    /// the wait a task should get a connection within. If no acquire in a whole
    /// [`queue_interval`](Self::queue_interval) got one within it (every wait that ended in
    /// a connection took longer, or nobody was served and the oldest waiter had already
    /// waited longer), the pool is overloaded for the next interval: every waiter that has
    /// waited twice this long fails at once with
    /// [`AcquireError::Shed`](super::AcquireError::Shed) instead of waiting on to its
    /// deadline, so the waiters that stay are served within about twice the target. `None`,
    /// the default, never sheds; 50 ms (DBConnection's default) suits a pool in front of
    /// queries of a few milliseconds. See `ARCHITECTURE.md`, "Overload".
    pub queue_target: Option<Duration>,
    /// How long waits must all stay above [`queue_target`](Self::queue_target) before the
    /// pool counts as overloaded, and how often that is decided again (default 1 s). Used
    /// only with a `queue_target`.
    pub queue_interval: Duration,
    /// The most tasks that may wait for a connection at once: an acquire that would wait
    /// beyond it fails at once with [`AcquireError::Exhausted`](super::AcquireError::Exhausted).
    /// `None`, the default, puts no bound on the queue.
    pub max_waiters: Option<usize>,
    /// Refuse at once (with [`AcquireError::Deadlock`](super::AcquireError::Deadlock), not
    /// `certain`) an acquire that would wait while its task holds a lease acquired in the
    /// same context, instead of only reporting it (see
    /// [`Machine::acquire_by`](super::Machine::acquire_by)). Default `false`. A certain
    /// deadlock fails at once either way when [`fail_deadlocks`](Self::fail_deadlocks) is on.
    pub self_wait_error: bool,
    /// Fail a certain deadlock at once (see
    /// [`Machine::acquire_by`](super::Machine::acquire_by)); default `false` (opt-in).
    /// Branches of one task polled with the same waker (`join!`, `select!`) that hold every
    /// connection while another of them waits look the same to the machine as a task
    /// waiting on itself, though they give their connections back (`ARCHITECTURE.md`, "A
    /// task waiting on itself"): turn it on where code never does that. Self-waits are
    /// noted either way.
    pub fail_deadlocks: bool,
    /// The seed of the machine's jitter, so a run replays exactly.
    pub seed: u64,
}

impl Config {
    /// A configuration with `max_size` connections and every other field at its default.
    pub fn new(max_size: usize) -> Self {
        Self {
            max_size,
            min_idle: 0,
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1800)),
            max_lifetime_jitter: Duration::from_secs(30),
            leak_threshold: None,
            reclaim_after: None,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_millis(200),
            queue_target: None,
            queue_interval: Duration::from_secs(1),
            max_waiters: None,
            self_wait_error: false,
            fail_deadlocks: false,
            seed: 0x5eed_0f00_9001,
        }
    }

    /// Checks every field and their combinations.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first offending field and the reason.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_size == 0 {
            return Err(ConfigError::new("max_size", "must be at least 1".into()));
        }
        if self.max_size > MAX_SIZE_LIMIT {
            return Err(ConfigError::new(
                "max_size",
                format!("is {} but must not exceed {MAX_SIZE_LIMIT}", self.max_size),
            ));
        }
        if self.min_idle > self.max_size {
            return Err(ConfigError::new(
                "min_idle",
                format!(
                    "is {} but must not exceed max_size ({})",
                    self.min_idle, self.max_size
                ),
            ));
        }
        for (field, value) in [
            ("idle_timeout", self.idle_timeout),
            ("max_lifetime", self.max_lifetime),
            ("leak_threshold", self.leak_threshold),
            ("reclaim_after", self.reclaim_after),
        ] {
            if value == Some(Duration::ZERO) {
                return Err(ConfigError::new(
                    field,
                    "must not be zero (use None to turn it off)".into(),
                ));
            }
        }
        if let Some(lifetime) = self.max_lifetime {
            if self.max_lifetime_jitter >= lifetime {
                return Err(ConfigError::new(
                    "max_lifetime_jitter",
                    format!(
                        "is {:?} but must be less than max_lifetime ({lifetime:?})",
                        self.max_lifetime_jitter
                    ),
                ));
            }
        }
        if let (Some(leak), Some(reclaim)) = (self.leak_threshold, self.reclaim_after) {
            if reclaim < leak {
                return Err(ConfigError::new(
                    "reclaim_after",
                    format!("is {reclaim:?} but must not be shorter than leak_threshold ({leak:?}): a lease would be reclaimed before it is reported"),
                ));
            }
        }
        if self.backoff_base.is_zero() {
            return Err(ConfigError::new("backoff_base", "must not be zero".into()));
        }
        if self.backoff_max < self.backoff_base {
            return Err(ConfigError::new(
                "backoff_max",
                format!(
                    "is {:?} but must not be shorter than backoff_base ({:?})",
                    self.backoff_max, self.backoff_base
                ),
            ));
        }
        if let Some(target) = self.queue_target {
            if target.is_zero() {
                return Err(ConfigError::new(
                    "queue_target",
                    "must not be zero: every waiter would be shed (use None to turn shedding off)"
                        .into(),
                ));
            }
            if target.checked_mul(2).is_none() {
                return Err(ConfigError::new(
                    "queue_target",
                    format!("is {target:?}, too long to double (use None to turn shedding off)"),
                ));
            }
        }
        if self.queue_interval.is_zero() {
            return Err(ConfigError::new(
                "queue_interval",
                "must not be zero".into(),
            ));
        }
        if self.max_waiters == Some(0) {
            return Err(ConfigError::new(
                "max_waiters",
                "must be at least 1: an acquire that finds no idle connection could never wait for one, nor have one opened for it (use None for no bound; try_get is the acquire that never waits)".into(),
            ));
        }
        Ok(())
    }
}

/// The largest `max_size` the machine accepts; ids are 32-bit indices.
pub const MAX_SIZE_LIMIT: usize = 1 << 24;

/// A configuration the machine refuses, naming the field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: &'static str,
    reason: String,
}

impl ConfigError {
    /// An error about `field`; `reason` completes the sentence "`field` ...".
    pub fn new(field: &'static str, reason: String) -> Self {
        Self { field, reason }
    }

    /// The name of the offending field.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// Why the value was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid pool configuration: `{}` {}",
            self.field, self.reason
        )
    }
}

impl std::error::Error for ConfigError {}
