//! The [`pool_core`] connection pool on tokio.
//!
//! ```
//! use std::time::Duration;
//!
//! /// A manager whose "connections" are numbers; a real one opens a database connection.
//! struct Numbers(std::sync::atomic::AtomicU32);
//!
//! impl pool_tokio::Manager for Numbers {
//!     type Connection = u32;
//!     type Error = std::io::Error;
//!     async fn connect(&self) -> Result<u32, std::io::Error> {
//!         Ok(self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let pool = pool_tokio::Pool::builder(Numbers(0.into()))
//!         .max_size(4)
//!         .acquire_timeout(Some(Duration::from_secs(5)))
//!         .build()?;
//!     let conn = pool.get().await?; // a guard: derefs to the connection
//!     assert_eq!(*conn, 0);
//!     drop(conn); // back to the pool
//!     let owned = pool.get_owned().await?; // a 'static guard, for a spawned task
//!     assert_eq!(tokio::spawn(async move { *owned }).await?, 0);
//!     let n = pool.with_connection(async |conn: &mut u32| *conn + 1).await?;
//!     assert_eq!(n, 1);
//!     println!("{}", pool.status()); // 0 of 4 in use, 1 idle, 0 opening, 0 waiting
//!     Ok(())
//! }
//! ```
//!
//! Threads outside the runtime (code written for r2d2, a blocking worker pool) acquire with
//! [`get_blocking`](Pool::get_blocking), which parks the thread in the same
//! queue as the async tasks, with the same time-outs and errors. The pool runs on a runtime
//! it is given a handle to:
//!
//! ```
//! # struct Numbers(std::sync::atomic::AtomicU32);
//! # impl pool_tokio::Manager for Numbers {
//! #     type Connection = u32;
//! #     type Error = std::io::Error;
//! #     async fn connect(&self) -> Result<u32, std::io::Error> {
//! #         Ok(self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
//! #     }
//! # }
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = tokio::runtime::Runtime::new()?; // runs connects, time-outs and resets
//! let pool = pool_tokio::Pool::builder(Numbers(0.into()))
//!     .runtime(pool_tokio::Tokio::new(runtime.handle().clone()))
//!     .max_size(2)
//!     .build()?;
//! let workers: Vec<_> = (0..4)
//!     .map(|_| {
//!         let pool = pool.clone();
//!         std::thread::spawn(move || -> Result<u32, pool_tokio::Error<std::io::Error>> {
//!             let conn = pool.get_blocking()?; // parks this thread until one is lent
//!             Ok(*conn)
//!         })
//!     })
//!     .collect();
//! for worker in workers {
//!     assert!(worker.join().expect("no panic")? < 2, "a pool of 2 opened no third");
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The pool takes part in tokio's cooperative budget: an acquire checks the budget before
//! it takes a connection, never after, so a task never yields while holding one it has
//! just been granted.

use std::future::Future;
use std::task::{Context, Poll};
use std::time::Instant;

pool_core::adapter_types!(Tokio, "tokio");

/// [`pool_core::Runtime`] for tokio: spawns on the runtime the pool was built in, uses its
/// timers (so `tokio::time::pause` applies) and its blocking pool. The runtime must have
/// its timers enabled (`enable_time()` or `enable_all()`; `#[tokio::main]` does); a pool
/// built on one without them is refused with [`BuildError::NoRuntime`].
#[derive(Debug, Clone)]
pub struct Tokio {
    handle: tokio::runtime::Handle,
}

impl Tokio {
    /// Runs pools on the runtime behind `handle`.
    pub fn new(handle: tokio::runtime::Handle) -> Self {
        Self { handle }
    }
}

impl pool_core::Runtime for Tokio {
    type Sleep = tokio::time::Sleep;

    fn current() -> Result<Self, String> {
        tokio::runtime::Handle::try_current()
            .map(Self::new)
            .map_err(|e| format!("no tokio runtime: {e}"))
    }

    /// Refuses a runtime built without timers (the pool sleeps for its deadlines, connect
    /// timeouts and maintenance). Tokio offers no way to ask, so this creates a timer and
    /// catches tokio's panic; the panic hook still reports that panic once, before `build`
    /// returns the error (with `panic = "abort"`, the process aborts there instead).
    fn validate(&self) -> Result<(), String> {
        let _context = self.handle.enter();
        std::panic::catch_unwind(|| drop(tokio::time::sleep(std::time::Duration::ZERO))).map_err(
            |_| {
                "the tokio runtime has its timers disabled: build it with `enable_time()` \
                 (or `enable_all()`)"
                    .to_string()
            },
        )
    }

    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(self.handle.spawn(future));
    }

    fn sleep_until(&self, deadline: Instant) -> Self::Sleep {
        let _context = self.handle.enter();
        tokio::time::sleep_until(deadline.into())
    }

    fn spawn_blocking<F, T>(&self, f: F) -> impl Future<Output = T> + Send + 'static
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let task = self.handle.spawn_blocking(f);
        async move {
            match task.await {
                Ok(value) => value,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => panic!("blocking task cancelled by runtime shutdown: {e}"),
            }
        }
    }

    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    /// `tokio::task::try_id()`: a thread-local read; `None` outside a task (in
    /// `block_on`, on the blocking pool).
    #[inline]
    fn current_task(&self) -> Option<pool_core::TaskId> {
        tokio::task::try_id().and_then(|id| pool_core::TaskId::from_hash(&id))
    }

    fn poll_budget(&self, cx: &mut Context<'_>) -> Poll<()> {
        tokio::task::coop::poll_proceed(cx).map(|restore| restore.made_progress())
    }
}

#[cfg(test)]
mod tests {
    /// The pool reads tokio's task ids through their `Hash`, without formatting: it must
    /// read the number tokio prints, and tell tasks apart.
    #[tokio::test]
    async fn task_ids_are_read_exactly() {
        use pool_core::Runtime;
        let rt = crate::Tokio::current().expect("in tokio");
        assert_eq!(rt.current_task(), None, "block_on is no task");
        let ids: Vec<_> = (0..3)
            .map(|_| {
                tokio::spawn(async {
                    let id = tokio::task::id();
                    let named = crate::Tokio::current().expect("in tokio").current_task();
                    (id.to_string(), named)
                })
            })
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for handle in ids {
            let (printed, named) = handle.await.expect("ran");
            let named = named.expect("a task is named");
            assert_eq!(named.get().to_string(), printed);
            assert_eq!(pool_core::TaskId::from_display(&printed), Some(named));
            assert!(seen.insert(named), "distinct tasks, distinct ids");
        }
    }
}
