//! A connection pool built as a pure state machine, plus the async glue to drive it.
//!
//! [`machine::Machine`] is sans-IO: it never reads a clock, never performs IO, never yields
//! and never panics. Time comes in as `now: Instant` on every input that needs it, and the
//! machine's decisions come out as [`machine::Action`]s that the caller drains with
//! `poll_action`, the way `quinn-proto` drives a QUIC connection. That makes every pool
//! transition synchronous and complete, and lets the whole pool be tested on virtual time
//! ([`sim`]).
//!
//! `ARCHITECTURE.md`, at the repository's root, describes the layers, the invariants and
//! where each is tested, the locking rules, the return lane and what runs in which task.
#![warn(missing_docs)]

pub use driver::{
    Acquire, BuildError, Builder, ConnectError, DeadlockError, Error, LeakReport, Manager, Metrics,
    Pool, PooledConnection, Runtime,
};
pub use machine::{Shed, Status, TaskId};

pub mod driver;
pub mod machine;
pub mod sim;

/// Declares, in a runtime adapter crate, the pool types bound to its runtime (`Pool<M>`,
/// `Builder<M>`, `PooledConnection<M>`) and re-exports what its users need, so every
/// adapter offers the same surface.
///
/// ```text
/// pool_core::adapter_types!(MyRuntime, "my runtime");
/// ```
#[macro_export]
macro_rules! adapter_types {
    ($runtime:ty, $name:literal) => {
        pub use $crate::{
            BuildError, ConnectError, DeadlockError, Error, LeakReport, Manager, Metrics, Shed,
            Status,
        };

        #[doc = concat!("A pool running on ", $name, ".")]
        pub type Pool<M> = $crate::Pool<M, $runtime>;
        /// The builder of a [`Pool`].
        pub type Builder<M> = $crate::Builder<M, $runtime>;
        /// A connection lent by a [`Pool`].
        pub type PooledConnection<'a, M> = $crate::PooledConnection<'a, M, $runtime>;
        /// The future of [`Pool::get`].
        pub type Acquire<'a, M> = $crate::Acquire<'a, M, $runtime>;
    };
}
