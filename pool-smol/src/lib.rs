//! The [`pool_core`] connection pool on smol.
//!
//! ```
//! use std::time::Duration;
//!
//! /// A manager whose "connections" are numbers; a real one opens a database connection.
//! struct Numbers(std::sync::atomic::AtomicU32);
//!
//! impl pool_smol::Manager for Numbers {
//!     type Connection = u32;
//!     type Error = std::io::Error;
//!     async fn connect(&self) -> Result<u32, std::io::Error> {
//!         Ok(self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
//!     }
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     smol::block_on(async {
//!         let pool = pool_smol::Pool::builder(Numbers(0.into()))
//!             .max_size(4)
//!             .acquire_timeout(Some(Duration::from_secs(5)))
//!             .build()?;
//!         let conn = pool.get().await?; // a guard: derefs to the connection
//!         assert_eq!(*conn, 0);
//!         drop(conn); // back to the pool
//!         let n = pool.with_connection(async |conn: &mut u32| *conn + 1).await?;
//!         assert_eq!(n, 1);
//!         Ok(())
//!     })
//! }
//! ```
//!
//! Background work (connects, the maintenance task) runs on smol's global executor, whose
//! threads start on first use; timers come from `async-io`, blocking work from `blocking`.

use std::future::Future;
use std::time::Instant;

pool_core::adapter_types!(Smol, "smol");

/// [`pool_core::Runtime`] for smol: its global executor, `async-io` timers and the
/// `blocking` thread pool.
#[derive(Debug, Clone, Copy, Default)]
pub struct Smol;

impl pool_core::Runtime for Smol {
    type Sleep = smol::Timer;

    fn current() -> Result<Self, String> {
        Ok(Self)
    }

    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        smol::spawn(future).detach();
    }

    fn sleep_until(&self, deadline: Instant) -> Self::Sleep {
        smol::Timer::at(deadline)
    }

    fn spawn_blocking<F, T>(&self, f: F) -> impl Future<Output = T> + Send + 'static
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        smol::unblock(f)
    }

    // `current_task` keeps its default (`None`): neither smol's executors nor `async-task`
    // can name the running task, so the pool's self-wait reports and deadlock detection
    // (`ARCHITECTURE.md`, "A task waiting on itself") are off on smol.
}
