//! Acquiring from code that is not async: the same acquire, with the calling thread parked
//! until the pool wakes it.
//!
//! There is one acquire, the [`Acquire`] future; a blocking caller polls it with a waker
//! that unparks its thread. So a blocking caller queues with the async ones in the same
//! FIFO, is served by the same transitions, and gets the same deadlines and errors: the
//! pool's maintenance task (on its runtime) ends the wait at the acquire timeout whether
//! the waiter is a task or a thread.

use std::future::Future;
use std::panic::Location;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Duration;

use super::acquire::Acquire;
use super::error::Error;
use super::guard::PooledConnection;
use super::runtime::{Manager, Runtime};
use super::Pool;

impl<M: Manager, R: Runtime> Pool<M, R> {
    /// Acquires a connection as [`get`](Self::get) does, parking the calling thread until
    /// it is served: for threads outside any async runtime (code written for r2d2, a
    /// blocking worker pool, `main` before a runtime starts serving).
    ///
    /// The pool still needs its runtime to be running somewhere (connects, time-outs and
    /// resets run on it), as with any pool built with an explicit runtime handle:
    ///
    /// ```no_run
    /// fn worker<M: pool_core::Manager, R: pool_core::Runtime>(
    ///     pool: pool_core::Pool<M, R>,
    /// ) -> Result<(), pool_core::Error<M::Error>> {
    ///     let conn = pool.get_blocking()?; // parks this thread until a connection is lent
    ///     drop(conn); // given back as from an async task
    ///     Ok(())
    /// }
    /// ```
    ///
    /// The adapters' crate documentation shows it with a runtime started for the pool.
    ///
    /// Do not call it from inside an async task: it blocks the task's thread, and on a
    /// single-threaded runtime the pool's own tasks could then never run. Async code uses
    /// [`get`](Self::get), or [`interact`](Self::interact) for a blocking driver.
    ///
    /// # Errors
    /// As [`get`](Self::get): the same time-out, fatal connect error, shedding, bound on
    /// waiters and closing.
    #[track_caller]
    pub fn get_blocking(&self) -> Result<PooledConnection<'_, M, R>, Error<M::Error>> {
        block_on(Acquire::new(
            self,
            self.shared.settings.acquire_timeout,
            Location::caller(),
        ))
    }

    /// Acquires a connection as [`get_timeout`](Self::get_timeout) does (waiting at most
    /// `timeout`), parking the calling thread: see [`get_blocking`](Self::get_blocking).
    ///
    /// # Errors
    /// As [`get`](Self::get).
    #[track_caller]
    pub fn get_timeout_blocking(
        &self,
        timeout: Duration,
    ) -> Result<PooledConnection<'_, M, R>, Error<M::Error>> {
        block_on(Acquire::new(self, Some(timeout), Location::caller()))
    }
}

/// Wakes a parked thread.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `future` to completion on the calling thread, parking it while the future is
/// pending. A spurious unpark only costs one more poll.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        thread::park();
    }
}
