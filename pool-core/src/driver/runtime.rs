//! What the driver needs from an async runtime, and what it needs from a connection type.

use std::cell::Cell;
use std::future::Future;
use std::task::{Context, Poll};
use std::time::Instant;

use crate::machine::TaskId;

/// The few things the driver needs from an async runtime: spawning, a timer, a blocking
/// pool, and (optionally) the clock and a cooperative budget.
///
/// The adapters `pool-tokio`, `pool-async-std` and `pool-smol` implement it; implement it
/// yourself to embed the pool in another executor.
pub trait Runtime: Clone + Send + Sync + 'static {
    /// The timer future of [`sleep_until`](Runtime::sleep_until).
    type Sleep: Future + Send + 'static;

    /// The runtime of the calling context, used by [`Builder::build`](super::Builder::build).
    ///
    /// # Errors
    /// A message saying why there is none (for example, no tokio runtime is running).
    fn current() -> Result<Self, String>;

    /// Whether this runtime can run a pool: checked by [`Builder::build`](super::Builder::build),
    /// whichever way the runtime was given, so a runtime missing something the pool needs
    /// (tokio's timers, say) is refused when the pool is built rather than failing later in
    /// its tasks. The default accepts every runtime.
    ///
    /// # Errors
    /// A message saying what is missing and how to provide it.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }

    /// Runs `future` to completion in the background, detached.
    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static;

    /// A future that completes at `deadline` (its output is ignored).
    fn sleep_until(&self, deadline: Instant) -> Self::Sleep;

    /// Runs blocking `f` on the runtime's blocking pool.
    fn spawn_blocking<F, T>(&self, f: F) -> impl Future<Output = T> + Send + 'static
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static;

    /// The current instant; override it to run the pool on a virtual clock.
    fn now(&self) -> Instant {
        Instant::now()
    }

    /// The task running now, if the runtime can name it (tokio: `tokio::task::try_id()`;
    /// async-std: `async_std::task::try_current()`); `None` outside a task. The pool uses it
    /// to notice a task that waits for a connection while it holds one (see
    /// [`Builder::self_wait_error`](super::Builder::self_wait_error) and `ARCHITECTURE.md`,
    /// "A task waiting on itself"); it is called on every lend and every use of a guard,
    /// so it must be cheap (a thread-local read) and never allocate. The default names no
    /// task, which turns all of that off.
    fn current_task(&self) -> Option<TaskId> {
        None
    }

    /// Takes part in the runtime's cooperative budget: `Pending` (with a wake scheduled) when
    /// the task has used up its budget and should yield. The pool asks before it takes a
    /// connection, never after, so it never yields while holding one.
    ///
    /// The default, for runtimes without a budget of their own, is [`fallback_budget`]:
    /// without it a task that acquires in a loop from idle connections would never yield,
    /// and could starve every other task on its thread.
    fn poll_budget(&self, cx: &mut Context<'_>) -> Poll<()> {
        fallback_budget(cx)
    }
}

/// How many acquires a thread makes before [`fallback_budget`] yields once.
pub const FALLBACK_BUDGET: u32 = 128;

thread_local! {
    /// Acquires on this thread since [`fallback_budget`] last yielded.
    static SPENT: Cell<u32> = const { Cell::new(0) };
}

/// A cooperative budget for runtimes that have none: every [`FALLBACK_BUDGET`]th acquire on
/// a thread yields once (it wakes its own task and returns `Pending`) before taking a
/// connection. Tokio's own budget allows 128 operations per task poll; this is the same idea
/// counted per thread, since a runtime-agnostic pool cannot see the task.
pub fn fallback_budget(cx: &mut Context<'_>) -> Poll<()> {
    SPENT.with(|spent| {
        let n = spent.get() + 1;
        if n < FALLBACK_BUDGET {
            spent.set(n);
            return Poll::Ready(());
        }
        spent.set(0);
        cx.waker().wake_by_ref();
        Poll::Pending
    })
}

/// Opens, checks and resets connections of one kind.
///
/// Only [`connect`](Manager::connect) is required. The pool never calls a manager method
/// while it holds its lock.
pub trait Manager: Send + Sync + 'static {
    /// The connection type.
    type Connection: Send + 'static;
    /// The error of connects and checks.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Opens a new connection. The pool bounds it by its connect timeout.
    fn connect(&self) -> impl Future<Output = Result<Self::Connection, Self::Error>> + Send;

    /// Whether a connect error cannot heal by waiting (wrong password, unknown database, a
    /// server that demands TLS the manager does not speak, a bad configuration).
    ///
    /// A fatal error reaches every waiting task at once ([`Error::ConnectFailed`]), and
    /// acquires that would have to wait fail with it at once until a connect succeeds; the
    /// pool keeps retrying in the background with its back-off, so it heals by itself once
    /// the cause is fixed (the database created, the password changed). A transient error
    /// (refused, reset, timed out, the server starting up or shutting down) leaves waiters
    /// waiting until their deadline while the pool retries. The default: every error is
    /// transient.
    ///
    /// [`Error::ConnectFailed`]: super::Error::ConnectFailed
    fn is_fatal(&self, error: &Self::Error) -> bool {
        let _ = error;
        false
    }

    /// Checks a connection on checkout (skipped for connections used within the check bypass
    /// window). An error discards the connection and the acquire tries again.
    fn check(
        &self,
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = conn;
        async { Ok(()) }
    }

    /// A fast, synchronous test on checkin: `true` closes the connection instead of pooling it.
    fn has_broken(&self, conn: &mut Self::Connection) -> bool {
        let _ = conn;
        false
    }

    /// Whether a returned connection needs [`reset`](Manager::reset) before reuse.
    fn needs_reset(&self, conn: &Self::Connection) -> bool {
        let _ = conn;
        false
    }

    /// Makes a returned connection fit for the next borrower (roll back, clear session
    /// state). Runs in a spawned task while the slot still counts as in use; an error or a
    /// time-out closes the connection instead.
    fn reset(
        &self,
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = conn;
        async { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::{fallback_budget, FALLBACK_BUDGET};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    struct CountWakes(AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Every `FALLBACK_BUDGET`th call on a thread yields once, waking its own task so it is
    /// polled again; the others go ahead without a wake.
    #[test]
    fn the_fallback_budget_yields_once_per_budget_and_wakes_the_task() {
        // A thread of its own: the count is per thread.
        std::thread::spawn(|| {
            let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
            let waker = Waker::from(Arc::clone(&wakes));
            let mut cx = Context::from_waker(&waker);
            let n = FALLBACK_BUDGET as usize;
            let outcomes: Vec<bool> = (0..3 * n)
                .map(|_| fallback_budget(&mut cx).is_pending())
                .collect();
            let pending: Vec<usize> = (0..3 * n).filter(|&i| outcomes[i]).collect();
            assert_eq!(pending, [n - 1, 2 * n - 1, 3 * n - 1]);
            assert_eq!(
                wakes.0.load(Ordering::SeqCst),
                3,
                "each yield wakes the task"
            );
            assert_eq!(fallback_budget(&mut cx), Poll::Ready(()));
        })
        .join()
        .expect("the budget test thread");
    }
}
