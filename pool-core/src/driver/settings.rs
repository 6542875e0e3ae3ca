//! The driver's own settings (the machine's are in its [`Config`](crate::machine::Config)).

use std::sync::Arc;
use std::time::Duration;

use super::leak::LeakHook;

/// The driver's own settings, set by the [`Builder`](super::Builder) and validated by its
/// `build`.
#[derive(Clone)]
pub(crate) struct Settings {
    /// The pool's name, in its metrics, its tracing events and spans, and its `Debug`
    /// (`None`: `build` names it `pool-N`).
    pub(crate) name: Option<Arc<str>>,
    /// Whether the pool emits its instruments (only with the `metrics` feature).
    pub(crate) metrics: bool,
    pub(crate) acquire_timeout: Option<Duration>,
    pub(crate) connect_timeout: Duration,
    pub(crate) check_on_checkout: bool,
    pub(crate) check_bypass: Duration,
    pub(crate) check_timeout: Duration,
    pub(crate) reset_timeout: Duration,
    /// Only with a leak threshold (`build` clears it otherwise).
    pub(crate) leak_backtraces: bool,
    pub(crate) on_leak: Option<LeakHook>,
    /// Whether a waiting acquire's wait is measured into [`Metrics`](super::Metrics)
    /// (`wait_total`, `wait_max`, `wait_times`).
    pub(crate) wait_times: bool,
}

impl Settings {
    /// The pool's name (`build` always sets one).
    pub(crate) fn name(&self) -> Arc<str> {
        self.name.clone().unwrap_or_else(|| Arc::from("pool"))
    }
}
