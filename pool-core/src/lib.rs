//! A connection pool built as a pure state machine, plus the async glue to drive it.
//!
//! **Using the pool in an application?** Start at the adapter for your runtime
//! (`pool-tokio`, `pool-async-std` or `pool-smol`: `Pool<M>` with its runtime chosen, and a
//! crate-level example) and a manager for your database (`pool-postgres`'s `PgManager`,
//! `pool-redis`'s `RedisManager`, or your own [`Manager`]). The pool's methods are
//! documented on [`Pool`], its settings on [`Builder`]. This crate is what those build on:
//! the driver ([`Pool`] over any [`Runtime`]) for custom executors, and the machine for
//! property tests and embedding.
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
//! What the pool reports (its metrics, with the `metrics` feature the OpenTelemetry
//! connection-pool instruments, its tracing span and every event it emits, with levels and
//! fields) is listed in [`observability`].
#![warn(missing_docs)]

pub use driver::{
    Acquire, BuildError, Builder, ConnectError, DeadlockError, Error, LeakReport, Manager, Metrics,
    Pool, PooledConnection, Runtime, WaitTimes,
};
pub use machine::{Shed, Status, TaskId};

pub mod driver;
pub mod machine;
pub mod observability;
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
            Status, WaitTimes,
        };

        #[doc = concat!("A pool running on ", $name, ": [`pool_core::Pool`] with its runtime chosen.")]
        ///
        /// Its methods (each links to its full documentation; the pool's own page has them
        /// all with examples):
        ///
        /// | method | what it does |
        /// |---|---|
        /// | [`builder(manager)`](Pool::builder) | a [`Builder`] for a pool of `manager`'s connections |
        /// | [`get()`](Pool::get) | acquires a connection, waiting at most the acquire timeout |
        /// | [`get_timeout(d)`](Pool::get_timeout) | the same, waiting at most `d` |
        /// | [`get_owned()`](Pool::get_owned) | the same, as a `'static` guard for a spawned task |
        /// | [`try_get()`](Pool::try_get) | an idle connection if there is one, never waiting |
        /// | [`get_blocking()`](Pool::get_blocking) | acquires from a thread outside the runtime, parking it |
        /// | [`get_timeout_blocking(d)`](Pool::get_timeout_blocking) | the same, waiting at most `d` |
        /// | [`ready()`](Pool::ready) | waits until a connection opens (the start-up check); fails at once on a fatal connect error |
        /// | [`with_connection(f)`](Pool::with_connection) | runs async `f` with a connection, giving it back after |
        /// | [`interact(f)`](Pool::interact) | runs blocking `f` with a connection on the blocking pool |
        /// | [`status()`](Pool::status) | the counts right now: in use, idle, opening, waiting |
        /// | [`metrics()`](Pool::metrics) | the counters since the pool was built, and the acquire-wait percentiles |
        /// | [`name()`](Pool::name) | the pool's name, in its metrics and tracing |
        /// | [`close()`](Pool::close) | fails waiters, refuses new acquires, closes connections as they come back |
        /// | [`is_closed()`](Pool::is_closed) | whether `close` was called |
        /// | [`drained()`](Pool::drained) | resolves once a closed pool's last connection is closed |
        /// | [`set_max_size(n)`](Pool::set_max_size) | grows or shrinks the pool while it runs |
        /// | [`manager()`](Pool::manager) | the pool's manager |
        pub type Pool<M> = $crate::Pool<M, $runtime>;
        /// The builder of a [`Pool`]: one setter per setting, each documented on
        /// [`pool_core::Builder`], then [`build`](pool_core::Builder::build).
        pub type Builder<M> = $crate::Builder<M, $runtime>;
        /// A connection lent by a [`Pool`]: derefs to the connection and gives it back when
        /// dropped; [`into_owned`](pool_core::PooledConnection::into_owned),
        /// [`discard`](pool_core::PooledConnection::discard) and
        /// [`detach`](pool_core::PooledConnection::detach) on [`pool_core::PooledConnection`].
        pub type PooledConnection<'a, M> = $crate::PooledConnection<'a, M, $runtime>;
        /// The future of [`Pool::get`].
        pub type Acquire<'a, M> = $crate::Acquire<'a, M, $runtime>;
    };
}

#[cfg(test)]
mod tests {
    /// The adapters' `Pool` page lists the pool's methods in plain HTML (rustdoc shows a
    /// type alias's methods only through JavaScript): every public method of `Pool` must be
    /// in that list, so a new one cannot be left out.
    #[test]
    fn the_adapters_pool_docs_list_every_pool_method() {
        let listed = include_str!("lib.rs");
        let sources = [
            include_str!("driver/pool.rs"),
            include_str!("driver/blocking.rs"),
        ];
        let mut methods = Vec::new();
        for source in sources {
            let mut in_pool = false;
            for line in source.lines() {
                if line.starts_with("impl") {
                    in_pool = line.contains(" Pool<M, R> {");
                }
                let Some(rest) = line
                    .strip_prefix("    pub fn ")
                    .or_else(|| line.strip_prefix("    pub async fn "))
                else {
                    continue;
                };
                if in_pool {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    methods.push(name);
                }
            }
        }
        assert!(methods.len() >= 17, "methods found: {methods:?}");
        for name in &methods {
            assert!(
                listed.contains(&format!("(Pool::{name})")),
                "`Pool::{name}` is missing from adapter_types!'s method table"
            );
        }
    }
}
