//! The OpenTelemetry database-client connection-pool instruments, emitted through the
//! `metrics` crate's facade with the `metrics` feature; with it off, every type here is
//! empty and every call compiles to nothing. See `ARCHITECTURE.md`, "Observability", and
//! the [`observability`](crate::observability) module for what is emitted and when.
//!
//! The machine stays pure: the numbers come from the driver around it. Connection counts
//! and pending requests are kept as increments that commute, so they add up whatever order
//! concurrent transitions emit them in: under the lock, each transition compares the
//! machine's counts with the ones it last emitted ([`Counted`]) and emits the difference
//! after the lock (a recorder is user code, and none runs under the lock); the return lane,
//! which lends and parks without the lock, emits its own moves (a parked connection is idle
//! to the gauges, though the machine counts it in use), and the hand-over of parked
//! connections to the machine undoes theirs in the transition that takes them.

#[cfg(feature = "metrics")]
pub(crate) use on::{ConnectTimer, Counted, Instruments, LentAt};

#[cfg(not(feature = "metrics"))]
pub(crate) use off::{ConnectTimer, Counted, Instruments, LentAt};

/// The instrument names, as the OpenTelemetry semantic conventions for database client
/// metrics name them (see the [`observability`](crate::observability) module).
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) mod names {
    pub(crate) const COUNT: &str = "db.client.connection.count";
    pub(crate) const IDLE_MAX: &str = "db.client.connection.idle.max";
    pub(crate) const IDLE_MIN: &str = "db.client.connection.idle.min";
    pub(crate) const MAX: &str = "db.client.connection.max";
    pub(crate) const PENDING_REQUESTS: &str = "db.client.connection.pending_requests";
    pub(crate) const TIMEOUTS: &str = "db.client.connection.timeouts";
    pub(crate) const CREATE_TIME: &str = "db.client.connection.create_time";
    pub(crate) const WAIT_TIME: &str = "db.client.connection.wait_time";
    pub(crate) const USE_TIME: &str = "db.client.connection.use_time";
    pub(crate) const POOL_NAME: &str = "db.client.connection.pool.name";
    pub(crate) const STATE: &str = "db.client.connection.state";
}

#[cfg(feature = "metrics")]
mod on {
    use std::time::{Duration, Instant};

    use metrics::{Counter, Gauge, Histogram, Unit};

    use super::names::*;
    use crate::machine::Status;

    /// The pool's instruments, registered once at build with the recorder in force then
    /// (the global one, or a local one around `build`); no-ops when the pool's metrics are
    /// off ([`Builder::metrics`](crate::Builder::metrics)).
    pub(crate) struct Instruments {
        enabled: bool,
        idle: Gauge,
        used: Gauge,
        pending: Gauge,
        max: Gauge,
        idle_max: Gauge,
        idle_min: Gauge,
        timeouts: Counter,
        create_time: Histogram,
        wait_time: Histogram,
        use_time: Histogram,
    }

    impl Instruments {
        pub(crate) fn new(name: &str, enabled: bool, max_size: usize, min_idle: usize) -> Self {
            if !enabled {
                return Self {
                    enabled,
                    idle: Gauge::noop(),
                    used: Gauge::noop(),
                    pending: Gauge::noop(),
                    max: Gauge::noop(),
                    idle_max: Gauge::noop(),
                    idle_min: Gauge::noop(),
                    timeouts: Counter::noop(),
                    create_time: Histogram::noop(),
                    wait_time: Histogram::noop(),
                    use_time: Histogram::noop(),
                };
            }
            describe();
            let pool = name.to_owned();
            let this = Self {
                enabled,
                idle: metrics::gauge!(COUNT, POOL_NAME => pool.clone(), STATE => "idle"),
                used: metrics::gauge!(COUNT, POOL_NAME => pool.clone(), STATE => "used"),
                pending: metrics::gauge!(PENDING_REQUESTS, POOL_NAME => pool.clone()),
                max: metrics::gauge!(MAX, POOL_NAME => pool.clone()),
                idle_max: metrics::gauge!(IDLE_MAX, POOL_NAME => pool.clone()),
                idle_min: metrics::gauge!(IDLE_MIN, POOL_NAME => pool.clone()),
                timeouts: metrics::counter!(TIMEOUTS, POOL_NAME => pool.clone()),
                create_time: metrics::histogram!(CREATE_TIME, POOL_NAME => pool.clone()),
                wait_time: metrics::histogram!(WAIT_TIME, POOL_NAME => pool.clone()),
                use_time: metrics::histogram!(USE_TIME, POOL_NAME => pool),
            };
            // Registered at zero, so a scrape shows the series before the first connection.
            this.idle.increment(0.0);
            this.used.increment(0.0);
            this.pending.increment(0.0);
            this.timeouts.increment(0);
            this.set_max_size(max_size);
            #[allow(clippy::cast_precision_loss)]
            this.idle_min.set(min_idle as f64);
            this
        }

        /// Whether the pool emits (the hot path reads the clock for use times if so).
        pub(crate) fn enabled(&self) -> bool {
            self.enabled
        }

        /// The pool's maximum size changed (at build, `set_max_size`). The pool keeps no cap
        /// on idle connections of its own: as many as `max_size` may be idle.
        pub(crate) fn set_max_size(&self, max_size: usize) {
            #[allow(clippy::cast_precision_loss)]
            let max = max_size as f64;
            self.max.set(max);
            self.idle_max.set(max);
        }

        /// A connection left the return lane (lent, or handed to the machine): no longer
        /// idle to the gauges.
        #[inline]
        pub(crate) fn left_lane(&self) {
            self.idle.decrement(1.0);
            self.used.increment(1.0);
        }

        /// A connection was parked in the return lane: idle to the gauges.
        #[inline]
        pub(crate) fn parked(&self) {
            self.idle.increment(1.0);
            self.used.decrement(1.0);
        }

        /// An acquire got its connection: its wait since `started` (its first clock
        /// reading; none means it never read the clock, so it did not wait), `now` read
        /// only then.
        #[inline]
        pub(crate) fn served(&self, started: Option<Instant>, now: impl FnOnce() -> Instant) {
            let waited = started.map_or(Duration::ZERO, |t| now().saturating_duration_since(t));
            self.wait_time.record(waited.as_secs_f64());
        }

        /// An acquire timed out.
        pub(crate) fn timed_out(&self) {
            self.timeouts.increment(1);
        }

        /// A connection went back at `now` (read only if its lend was timed) after being
        /// lent at `lent_at`.
        #[inline]
        pub(crate) fn returned(&self, lent_at: LentAt, now: impl FnOnce() -> Instant) {
            if let Some(lent_at) = lent_at.0 {
                let used = now().saturating_duration_since(lent_at);
                self.use_time.record(used.as_secs_f64());
            }
        }

        /// When a lend starts counting its use time (`now` is a clock reading whenever the
        /// pool's metrics are on: see `ClockPolicy`).
        #[inline]
        pub(crate) fn lent_at(&self, now: Instant) -> LentAt {
            LentAt(self.enabled.then_some(now))
        }

        /// A connect is starting: reads the clock if the pool's metrics are on.
        pub(crate) fn connect_started(&self, now: impl FnOnce() -> Instant) -> ConnectTimer {
            ConnectTimer(self.enabled.then(now))
        }

        /// A connect started at `timer` succeeded at `now`.
        pub(crate) fn connected(&self, timer: ConnectTimer, now: Instant) {
            if let Some(started) = timer.0 {
                let took = now.saturating_duration_since(started);
                self.create_time.record(took.as_secs_f64());
            }
        }

        /// Emits the counts a transition changed.
        #[inline]
        pub(crate) fn emit(&self, delta: Delta) {
            if let Some([idle, used, pending]) = delta.0 {
                #[allow(clippy::cast_precision_loss)]
                for (gauge, by) in [
                    (&self.idle, idle),
                    (&self.used, used),
                    (&self.pending, pending),
                ] {
                    if by != 0 {
                        gauge.increment(by as f64);
                    }
                }
            }
        }
    }

    /// Descriptions and units, for exporters that print them.
    fn describe() {
        metrics::describe_gauge!(
            COUNT,
            Unit::Count,
            "The number of connections that are currently in the state described by db.client.connection.state"
        );
        metrics::describe_gauge!(
            IDLE_MAX,
            Unit::Count,
            "The maximum number of idle open connections allowed"
        );
        metrics::describe_gauge!(
            IDLE_MIN,
            Unit::Count,
            "The minimum number of idle open connections allowed"
        );
        metrics::describe_gauge!(
            MAX,
            Unit::Count,
            "The maximum number of open connections allowed"
        );
        metrics::describe_gauge!(
            PENDING_REQUESTS,
            Unit::Count,
            "The number of current pending requests for an open connection"
        );
        metrics::describe_counter!(
            TIMEOUTS,
            Unit::Count,
            "The number of connection timeouts that have occurred trying to obtain a connection from the pool"
        );
        metrics::describe_histogram!(
            CREATE_TIME,
            Unit::Seconds,
            "The time it took to create a new connection"
        );
        metrics::describe_histogram!(
            WAIT_TIME,
            Unit::Seconds,
            "The time it took to obtain an open connection from the pool"
        );
        metrics::describe_histogram!(
            USE_TIME,
            Unit::Seconds,
            "The time between borrowing a connection and returning it to the pool"
        );
    }

    /// When a lent connection's use began (with the pool's metrics on).
    #[derive(Debug, Clone, Copy, Default)]
    pub(crate) struct LentAt(Option<Instant>);

    /// When a connect began (with the pool's metrics on).
    #[derive(Debug, Default)]
    pub(crate) struct ConnectTimer(Option<Instant>);

    /// The change in the counts a transition made, to emit after the lock.
    #[derive(Debug)]
    #[must_use]
    pub(crate) struct Delta(Option<[i64; 3]>);

    /// Under the lock: the machine's counts as last emitted, and the parked connections
    /// handed to it since (idle to the gauges until then).
    #[derive(Debug, Default)]
    pub(crate) struct Counted {
        idle: i64,
        used: i64,
        pending: i64,
        handed_over: i64,
    }

    impl Counted {
        /// A parked connection was handed to the machine.
        #[inline]
        pub(crate) fn handed_over(&mut self) {
            self.handed_over += 1;
        }

        /// The change since the last call, with the machine's `status` now (read only if
        /// the pool's metrics are on).
        #[inline]
        pub(crate) fn delta(&mut self, enabled: bool, status: impl FnOnce() -> Status) -> Delta {
            if !enabled {
                self.handed_over = 0;
                return Delta(None);
            }
            let s = status();
            #[allow(clippy::cast_possible_wrap)]
            let (idle, used, pending) = (
                s.idle as i64,
                (s.in_use + s.abandoned) as i64,
                s.waiting as i64,
            );
            // A handed-over connection was idle to the gauges while parked; the machine's
            // own change (from in use to idle, or to a waiter) counts from in use.
            let moved = std::mem::take(&mut self.handed_over);
            let delta = [
                idle - self.idle - moved,
                used - self.used + moved,
                pending - self.pending,
            ];
            (self.idle, self.used, self.pending) = (idle, used, pending);
            Delta((delta != [0; 3]).then_some(delta))
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod off {
    use std::time::Instant;

    use crate::machine::Status;

    /// Without the `metrics` feature: nothing, and every call does nothing.
    pub(crate) struct Instruments;

    impl Instruments {
        pub(crate) fn new(_: &str, _: bool, _: usize, _: usize) -> Self {
            Self
        }
        #[inline(always)]
        pub(crate) fn enabled(&self) -> bool {
            false
        }
        #[inline(always)]
        pub(crate) fn set_max_size(&self, _: usize) {}
        #[inline(always)]
        pub(crate) fn left_lane(&self) {}
        #[inline(always)]
        pub(crate) fn parked(&self) {}
        #[inline(always)]
        pub(crate) fn served(&self, _: Option<Instant>, _: impl FnOnce() -> Instant) {}
        #[inline(always)]
        pub(crate) fn timed_out(&self) {}
        #[inline(always)]
        pub(crate) fn returned(&self, _: LentAt, _: impl FnOnce() -> Instant) {}
        #[inline(always)]
        pub(crate) fn lent_at(&self, _: Instant) -> LentAt {
            LentAt(())
        }
        #[inline(always)]
        pub(crate) fn connect_started(&self, _: impl FnOnce() -> Instant) -> ConnectTimer {
            ConnectTimer(())
        }
        #[inline(always)]
        pub(crate) fn connected(&self, _: ConnectTimer, _: Instant) {}
        #[inline(always)]
        pub(crate) fn emit(&self, _: Delta) {}
    }

    #[derive(Debug, Clone, Copy, Default)]
    pub(crate) struct LentAt(());

    #[derive(Debug, Default)]
    pub(crate) struct ConnectTimer(());

    #[derive(Debug)]
    pub(crate) struct Delta(());

    #[derive(Debug, Default)]
    pub(crate) struct Counted(());

    impl Counted {
        #[inline(always)]
        pub(crate) fn handed_over(&mut self) {}
        #[inline(always)]
        pub(crate) fn delta(&mut self, _: bool, _: impl FnOnce() -> Status) -> Delta {
            Delta(())
        }
    }
}
