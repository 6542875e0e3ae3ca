//! The driver's own settings (the machine's are in its [`Config`](crate::machine::Config)).

use std::time::Duration;

use super::leak::LeakHook;

/// The driver's own settings, set by the [`Builder`](super::Builder) and validated by its
/// `build`.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) acquire_timeout: Option<Duration>,
    pub(crate) connect_timeout: Duration,
    pub(crate) check_on_checkout: bool,
    pub(crate) check_bypass: Duration,
    pub(crate) check_timeout: Duration,
    pub(crate) reset_timeout: Duration,
    /// Only with a leak threshold (`build` clears it otherwise).
    pub(crate) leak_backtraces: bool,
    pub(crate) on_leak: Option<LeakHook>,
}
