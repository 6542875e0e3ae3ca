//! The [`pool_core`] connection pool on async-std.
//!
//! **async-std is discontinued upstream** (RUSTSEC-2025-0052); this adapter is kept for
//! existing users. New code should prefer `pool-smol` (async-std's successor ecosystem) or
//! `pool-tokio`.
//!
//! ```
//! use std::time::Duration;
//!
//! /// A manager whose "connections" are numbers; a real one opens a database connection.
//! struct Numbers(std::sync::atomic::AtomicU32);
//!
//! impl pool_async_std::Manager for Numbers {
//!     type Connection = u32;
//!     type Error = std::io::Error;
//!     async fn connect(&self) -> Result<u32, std::io::Error> {
//!         Ok(self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
//!     }
//! }
//!
//! #[async_std::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let pool = pool_async_std::Pool::builder(Numbers(0.into()))
//!         .max_size(4)
//!         .acquire_timeout(Some(Duration::from_secs(5)))
//!         .build()?;
//!     let conn = pool.get().await?; // a guard: derefs to the connection
//!     assert_eq!(*conn, 0);
//!     drop(conn); // back to the pool
//!     let n = pool.with_connection(async |conn: &mut u32| *conn + 1).await?;
//!     assert_eq!(n, 1);
//!     Ok(())
//! }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

pool_core::adapter_types!(AsyncStd, "async-std");

/// [`pool_core::Runtime`] for async-std's global executor, timers and blocking pool.
#[derive(Debug, Clone, Copy, Default)]
pub struct AsyncStd;

impl pool_core::Runtime for AsyncStd {
    type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn current() -> Result<Self, String> {
        Ok(Self)
    }

    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(async_std::task::spawn(future));
    }

    fn sleep_until(&self, deadline: Instant) -> Self::Sleep {
        Box::pin(async_std::task::sleep(
            deadline.saturating_duration_since(Instant::now()),
        ))
    }

    fn spawn_blocking<F, T>(&self, f: F) -> impl Future<Output = T> + Send + 'static
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        async_std::task::spawn_blocking(f)
    }

    /// `async_std::task::try_current()`: a thread-local read (and a reference-count
    /// increment for a named task); `None` outside a task.
    #[inline]
    fn current_task(&self) -> Option<pool_core::TaskId> {
        async_std::task::try_current().and_then(|task| pool_core::TaskId::from_hash(&task.id()))
    }
}

#[cfg(test)]
mod tests {
    /// The pool reads async-std's task ids through their `Hash`, without formatting: it
    /// must read the number async-std prints, and tell tasks apart.
    #[async_std::test]
    async fn task_ids_are_read_exactly() {
        use pool_core::Runtime;
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..3 {
            let (printed, named) = async_std::task::spawn(async {
                let id = async_std::task::current().id();
                (id.to_string(), crate::AsyncStd.current_task())
            })
            .await;
            let named = named.expect("a task is named");
            assert_eq!(named.get().to_string(), printed);
            assert!(seen.insert(named), "distinct tasks, distinct ids");
        }
    }
}
