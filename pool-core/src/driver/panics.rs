//! The pool's one panic policy: user code (the manager's methods and futures, the leak hook,
//! a connection's `Drop`) may panic; the pool catches the panic, logs it, counts it
//! ([`Metrics::panics`](super::Metrics::panics)) and goes on, so no task of the pool ever
//! dies of it (see `ARCHITECTURE.md`, "Panics"). Every task the pool spawns runs under it
//! as a whole ([`Panics::guard_task`], used by `tasks.rs`, the one place the pool spawns),
//! and each call of user code inside is guarded where it runs.
//!
//! What a caught panic means is decided where the code ran, always the safe reading: a
//! panicking `has_broken` or check means broken, a panicking reset means the connection is
//! closed, a panicking `is_fatal` means transient, a panicking connect means a failed
//! connect.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// Counts the panics a pool caught. Clones share the count (a spawned task keeps one).
#[derive(Debug, Default, Clone)]
pub(crate) struct Panics(Arc<(AtomicU64, Arc<str>)>);

impl AsRef<Panics> for Panics {
    fn as_ref(&self) -> &Panics {
        self
    }
}

impl Panics {
    /// The policy of the pool named `pool` (the name goes into its log events).
    pub(crate) fn named(pool: Arc<str>) -> Self {
        Self(Arc::new((AtomicU64::new(0), pool)))
    }

    /// Runs `f` (user code); `None` if it panicked, which is logged as `what` and counted.
    pub(crate) fn guard<T>(&self, what: &'static str, f: impl FnOnce() -> T) -> Option<T> {
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(out) => Some(out),
            Err(payload) => {
                self.caught(what, payload.as_ref());
                None
            }
        }
    }

    /// Drops `value` (a connection, or something holding one), catching a panic in its
    /// `Drop`.
    pub(crate) fn drop_guarded<T>(&self, what: &'static str, value: T) {
        let _ = self.guard(what, move || drop(value));
    }

    /// `future` (user code, or a task running user code), with every poll guarded: it
    /// resolves to `None` once a poll panicked.
    pub(crate) fn guard_future<F: Future>(
        &self,
        what: &'static str,
        future: F,
    ) -> Guarded<&Self, F> {
        Guarded {
            panics: self,
            what,
            future,
        }
    }

    /// A whole task, guarded as [`guard_future`](Self::guard_future) guards a future, with
    /// its own handle on the count so it can be spawned: a panic anywhere in it is caught, logged as
    /// `what` and counted, and the task ends.
    pub(crate) fn guard_task<F: Future>(&self, what: &'static str, task: F) -> Guarded<Self, F> {
        Guarded {
            panics: self.clone(),
            what,
            future: task,
        }
    }

    /// How many panics were caught.
    pub(crate) fn count(&self) -> u64 {
        self.0 .0.load(Ordering::Relaxed)
    }

    fn caught(&self, what: &'static str, payload: &(dyn std::any::Any + Send)) {
        self.0 .0.fetch_add(1, Ordering::Relaxed);
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(a panic payload that is not a string)");
        tracing::error!(
            pool = %self.0 .1,
            panicked = what,
            message,
            "user code panicked; the pool caught it and goes on"
        );
    }
}

pin_project_lite::pin_project! {
    /// A future whose polls are guarded by [`Panics::guard_future`].
    #[derive(Debug)]
    pub(crate) struct Guarded<P, F> {
        panics: P,
        what: &'static str,
        #[pin]
        future: F,
    }
}

impl<P: AsRef<Panics>, F: Future> Future for Guarded<P, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let future = this.future;
        match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(Poll::Ready(out)) => Poll::Ready(Some(out)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => {
                this.panics.as_ref().caught(this.what, payload.as_ref());
                Poll::Ready(None)
            }
        }
    }
}
