//! What a pool's handles, guards and tasks share: the manager, the runtime, the settings,
//! the lock around the [`State`], the return lane, and the events the tasks wait on. The
//! protocol around the lock is in `transition.rs`, the lane's glue in `handover.rs`, the
//! tasks in `tasks.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use event_listener::Event;
use parking_lot::{Mutex, MutexGuard};

use super::clock_policy::{ClockPolicy, Step};
use super::error::ConnectError;
use super::holders::Holders;
use super::instruments::Instruments;
use super::lane::Lane;
use super::metrics::Metrics;
use super::panics::Panics;
use super::runtime::{Manager, Runtime};
use super::settings::Settings;
use super::state::State;
use crate::machine::{Failure, Lease, Status};

/// A pooled connection as the machine holds it.
pub(crate) struct Conn<C> {
    /// Boxed once, at the connect: an acquire and a release move the connection about 17
    /// times (the return lane, the acquire's stages, the guard), and a large one (a
    /// PostgreSQL or Redis client with its bookkeeping, over 100 bytes) moved through a
    /// `memcpy` call each time, some 30 instructions a move. A box moves inline whatever
    /// the manager's type.
    pub(crate) raw: Box<C>,
    /// When it was last handed out or returned, for the check bypass window.
    pub(crate) last_used: Instant,
}

pub(crate) type ErrorOf<M> = Arc<ConnectError<<M as Manager>::Error>>;
pub(crate) type ConnOf<M> = Conn<<M as Manager>::Connection>;
/// A connection parked in the return lane, with the lease the machine still counts.
pub(crate) type Parked<M> = (Lease, ConnOf<M>);

/// What a pool's handles, guards and tasks share.
pub(crate) struct Shared<M: Manager, R: Runtime> {
    pub(crate) manager: M,
    pub(crate) runtime: R,
    pub(crate) settings: Settings,
    /// Which hot-path steps read the clock.
    pub(crate) clock_policy: ClockPolicy,
    /// Panics caught in user code (see `panics.rs`).
    pub(crate) panics: Panics,
    /// Returned connections lent again without the lock (see [`Lane`]); `None` when leak
    /// detection or reclaim needs the machine to see every checkout.
    pub(crate) lane: Option<Lane<Parked<M>>>,
    /// How often the maintenance task hands parked connections to the machine, so the
    /// idle timeout and the lifetime apply to them: a quarter of the shorter of the two.
    pub(crate) hand_over_every: Option<Duration>,
    /// `min_idle` is set: every locked transition first hands parked connections to the
    /// machine, so its idle count includes them.
    pub(crate) min_idle: bool,
    /// Who holds each lease (see `holders.rs`).
    pub(crate) holders: Holders,
    /// The pool's name (see [`Builder::name`](super::Builder::name)).
    pub(crate) name: Arc<str>,
    /// The OpenTelemetry instruments (nothing without the `metrics` feature; see
    /// `instruments.rs`).
    pub(crate) instruments: Instruments,
    state: Mutex<State<M>>,
    /// Wakes the maintenance task when its deadline moves earlier (and when the pool goes).
    pub(crate) timer: Event,
    /// Notified once the pool has drained after close.
    pub(crate) drained: Event,
}

impl<M: Manager, R: Runtime> Shared<M, R> {
    pub(crate) fn new(manager: M, runtime: R, settings: Settings, state: State<M>) -> Arc<Self> {
        let config = state.machine.config();
        let clock_policy = ClockPolicy::new(config, &settings, runtime.now());
        let per_lease = config.leak_threshold.is_some()
            || config.reclaim_after.is_some()
            || settings.leak_backtraces;
        let lane = (!per_lease).then(|| Lane::new(config.max_size));
        let hand_over_every = match (config.idle_timeout, config.max_lifetime) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
        .filter(|_| lane.is_some())
        .map(|t| (t / 4).max(Duration::from_millis(1)));
        let name = settings.name();
        let instruments =
            Instruments::new(&name, settings.metrics, config.max_size, config.min_idle);
        Arc::new(Self {
            manager,
            runtime,
            settings,
            clock_policy,
            panics: Panics::named(Arc::clone(&name)),
            lane,
            hand_over_every,
            min_idle: config.min_idle > 0,
            holders: Holders::new(config.max_size),
            name,
            instruments,
            state: Mutex::new(state),
            timer: Event::new(),
            drained: Event::new(),
        })
    }

    /// The lock (it does not poison: no code under it panics).
    pub(crate) fn lock(&self) -> MutexGuard<'_, State<M>> {
        self.state.lock()
    }

    /// Non-blocking access for `Debug`.
    pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, State<M>>> {
        self.state.try_lock()
    }

    /// The instant a hot-path step passes for "now" (see [`ClockPolicy`]).
    #[inline]
    pub(crate) fn now(&self, step: Step) -> Instant {
        self.clock_policy.now(&self.runtime, step)
    }

    /// How many connections the return lane has lent, if the pool has one (for tests).
    #[cfg(test)]
    pub(crate) fn lane_lent(&self) -> Option<u64> {
        self.lane.as_ref().map(Lane::lent)
    }

    /// The pool's counts: the machine's, with connections parked in the return lane counted
    /// as idle rather than in use.
    pub(crate) fn status(&self, state: &State<M>) -> Status {
        let mut status = state.machine.status();
        if let Some(lane) = &self.lane {
            let parked = lane.len().min(status.in_use);
            status.idle += parked;
            status.in_use -= parked;
        }
        status
    }

    /// The pool's counters, acquires served from the return lane included.
    pub(crate) fn metrics(&self, state: &State<M>) -> Metrics {
        let mut metrics = state.metrics.clone();
        if let Some(lane) = &self.lane {
            metrics.acquired += lane.lent();
        }
        // Only waits are recorded as they happen (under the lock); every other served
        // acquire (the lane's included) was a wait of zero. Without wait times, none is.
        if self.settings.wait_times {
            let at_once = metrics.acquired.saturating_sub(metrics.acquired_after_wait);
            metrics.wait_times.record_zeros(at_once);
        }
        metrics.panics = self.panics.count();
        metrics
    }

    /// Whether a failed connect can heal by waiting: the manager decides for its own errors
    /// (a panic there counts as transient); a time-out or an aborted connect is transient.
    pub(crate) fn classify(&self, error: &ConnectError<M::Error>) -> Failure {
        match error {
            ConnectError::Failed(e) => {
                match self
                    .panics
                    .guard("Manager::is_fatal", || self.manager.is_fatal(e))
                {
                    Some(true) => Failure::Fatal,
                    _ => Failure::Transient,
                }
            }
            _ => Failure::Transient,
        }
    }
}

impl<M: Manager, R: Runtime> Drop for Shared<M, R> {
    fn drop(&mut self) {
        // Wakes the maintenance task so it sees the pool is gone and ends.
        self.timer.notify(usize::MAX);
    }
}
