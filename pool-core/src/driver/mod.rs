//! The runtime-agnostic async pool over the [machine](crate::machine).
//!
//! [`Pool`] is a cheap `Clone` handle. Acquiring returns a [`PooledConnection`] guard that
//! gives the connection back when dropped. The machine lives behind one synchronous mutex
//! held for exactly one transition: no `.await`, no user code, no waker call and no
//! connection drop happen under it. A connection given back while nobody waits skips the
//! lock both ways: it is parked in a lock-free return lane and lent from there by the next
//! acquire (see the lane's documentation in `driver/lane.rs`; not used with leak detection
//! or reclaim, which need the machine to see every checkout). Connects run in spawned tasks
//! bounded by the connect timeout, so a cancelled acquirer never wastes one; one maintenance
//! task per pool handles deadlines (acquire time-outs, idle reaping, lifetimes, leak
//! detection, back-off, handing parked connections to the machine) with a single timer.
//!
//! The adapters (`pool-tokio`, `pool-async-std`, `pool-smol`) provide the [`Runtime`].

//!
//! Where each concern lives: [`Pool`] (`pool.rs`), its [`Builder`] (`builder.rs`), its
//! [`Metrics`] (`metrics.rs`); the acquire future (`acquire.rs`) and the guard
//! (`guard.rs`); the state behind the lock (`state.rs`) and the one-transition-per-lock
//! protocol with the work done after the lock (`transition.rs`); the return lane
//! (`lane.rs`) and its hand-over to the machine (`handover.rs`); when a hot-path step reads
//! the clock (`clock_policy.rs`); the pool's spawned tasks (`tasks.rs`) and the panic
//! policy they all run under (`panics.rs`). `ARCHITECTURE.md` (at the repository's root)
//! tells how they fit together.

mod acquire;
mod blocking;
mod builder;
mod clock_policy;
mod error;
mod guard;
mod handover;
mod holders;
mod instruments;
mod lane;
mod leak;
mod metrics;
mod panics;
mod pool;
mod runtime;
mod settings;
mod shared;
mod state;
mod tasks;
mod transition;
mod util;
mod wait_times;

pub use acquire::Acquire;
pub use builder::Builder;
pub use error::{BuildError, ConnectError, DeadlockError, Error};
pub use guard::PooledConnection;
pub use leak::LeakReport;
pub use metrics::{ClosedCounts, Metrics};
pub use pool::Pool;
pub use runtime::{fallback_budget, Manager, Runtime, FALLBACK_BUDGET};
pub use wait_times::WaitTimes;
