//! A connection pool built as a pure state machine, plus the async glue to drive it.
//!
//! [`machine::Machine`] is sans-IO: it never reads a clock, never performs IO, never yields
//! and never panics. Time comes in as `now: Instant` on every input that needs it, and the
//! machine's decisions come out as [`machine::Action`]s that the caller drains with
//! `poll_action`, the way `quinn-proto` drives a QUIC connection. That makes every pool
//! transition synchronous and complete, and lets the whole pool be tested on virtual time
//! ([`sim`]).
#![warn(missing_docs)]

pub use driver::{
    Acquire, BuildError, Builder, ConnectError, Error, LeakReport, Manager, Metrics, Pool,
    PooledConnection, Runtime,
};
pub use machine::Status;

pub mod driver;
pub mod machine;
pub mod sim;
