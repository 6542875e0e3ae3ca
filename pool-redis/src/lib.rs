//! A Redis [`Manager`](pool_core::Manager) for the [`pool_core`] connection pool, on the
//! [`redis`] crate, for tokio, async-std and smol alike: the pool's runtime opens the socket
//! and runs the connection's driver task ([`RedisRuntime`]), the redis crate speaks the
//! protocol over it.
//!
//! ```no_run
//! use std::time::Duration;
//! use pool_redis::{redis, RedisManager};
//! use redis::AsyncTypedCommands;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let manager = RedisManager::from_url("redis://127.0.0.1:6379/0")?.client_name("my-app");
//!     let pool: pool_redis::TokioPool = pool_tokio::Pool::builder(manager)
//!         .max_size(8)
//!         .acquire_timeout(Some(Duration::from_secs(5)))
//!         .build()?;
//!     let mut conn = pool.get().await?; // derefs to pool_redis::RedisConnection
//!     conn.set("greeting", "hello").await?;
//!     assert_eq!(conn.get("greeting").await?.as_deref(), Some("hello"));
//!     // Any command, through the connection.
//!     let n: i64 = redis::cmd("INCR").arg("hits").query_async(&mut *conn).await?;
//!     assert!(n >= 1);
//!     Ok(())
//! }
//! ```
//!
//! With the `async-std` or `smol` feature, the same manager runs on
//! `pool_async_std::Pool<RedisManager<AsyncStd>>` or `pool_smol::Pool<RedisManager<Smol>>`
//! ([`AsyncStdPool`], [`SmolPool`]).
//!
//! # Which connection, and which runtime
//! A pool lends each connection to one borrower at a time, so it wants a connection that one
//! borrower owns. The redis crate (1.x) has one async connection for commands,
//! `redis::aio::MultiplexedConnection`: its old exclusive `aio::Connection` is gone, and its
//! `ConnectionManager` is a multiplexed connection that also reconnects by itself (the
//! pool's job, and it would hide a broken connection from the pool). A multiplexed
//! connection is made to be cloned and shared; this manager does neither. Each pooled
//! [`RedisConnection`] owns one `MultiplexedConnection`, on one socket, never cloned and never
//! handed out, so a borrower has the socket to itself, and every command goes through the
//! [`RedisConnection`], which is how the manager knows what a borrower left behind. What the
//! multiplexer adds is useful to a pool: a command future dropped before its reply leaves
//! the protocol in step (the driver discards the reply when it comes), so such a connection
//! can be drained instead of closed.
//!
//! The manager opens the socket itself with the pool's runtime and builds the connection on
//! it (`MultiplexedConnection::new_with_config`), then spawns its driver with the pool's
//! runtime, and sets no response timeout (which the redis crate would time with a runtime of
//! its own choosing). So the connection runs on whichever runtime the pool runs on,
//! async-std included, although the redis crate itself supports only tokio and smol
//! (async-std sockets are bridged to tokio's IO traits with `tokio-util`'s compat layer, as
//! in `pool-postgres`). The redis crate is built with its `tokio-comp` feature only because
//! its `aio` module does not compile without a runtime feature; nothing of it runs.
//!
//! Not supported: TLS (`rediss://`: [`RedisManager::from_url`] refuses it), Redis Cluster
//! and Sentinel, RESP3 push messages (the connection is closed at checkin if the borrower
//! subscribed, see below; for pub/sub use the redis crate's own `PubSub`, outside the pool).
//!
//! # Dirty connections
//! A borrower can give a connection back in a state the next borrower must not inherit.
//! [`RedisConnection`] keeps a model of the session (`session.rs`): each command marks
//! what it may change before it is sent, and only its reply clears the mark, so a command
//! whose future was dropped counts as having run. At checkin:
//!
//! | left behind | what happens |
//! | --- | --- |
//! | nothing (the common case) | the connection goes straight back: no task, no round trip |
//! | a reply still due (a command future dropped before its reply, say by a time-out) | the reset sends `PING` and waits for its reply, which comes after every reply due before it; past [`RedisManager::drain_timeout`] (100 ms; an abandoned `BLPOP key 30`) the connection is closed instead |
//! | `MULTI` without `EXEC`/`DISCARD` | `DISCARD` |
//! | `WATCH` without `EXEC`/`DISCARD`/`UNWATCH` | `UNWATCH` |
//! | `SELECT n` (or a `SELECT` without its reply) | `SELECT` of the configured database |
//! | subscribe mode (`SUBSCRIBE`, `PSUBSCRIBE`, `SSUBSCRIBE`), `MONITOR`, `AUTH`, `HELLO`, `RESET`, `QUIT`, `CLIENT REPLY`, `CLIENT TRACKING` | closed (`has_broken`): the pool opens another |
//! | an IO error, a closed socket | closed |
//!
//! The reset runs in the pool's reset task, bounded by the pool's reset timeout; the next
//! borrower gets the connection only after it. Dropping a [`RedisConnection`] ends its
//! driver, which closes the socket even with replies still due, so the server frees the
//! client (a blocked `BLPOP` included). Not tracked: session state set by a script
//! (`EVAL` running `SELECT` is refused by Redis anyway), `CLIENT SETNAME`, `CLIENT
//! NO-EVICT`/`NO-TOUCH`, and `SWAPDB` or `FLUSHDB`, which change data, not the session.
//!
//! # Credentials
//! The manager's `Debug` shows the address, the database, the user name and the settings,
//! never the password; [`RedisPoolError`] never carries the configuration.

mod conn;
mod error;
mod manager;
mod runtime;
mod session;

pub use conn::RedisConnection;
pub use error::RedisPoolError;
pub use manager::{RedisManager, RedisStats};
pub use redis;
pub use runtime::{RedisRuntime, Stream};

/// A Redis pool on tokio.
#[cfg(feature = "tokio")]
pub type TokioPool = pool_tokio::Pool<RedisManager<pool_tokio::Tokio>>;

/// A Redis pool on async-std.
#[cfg(feature = "async-std")]
pub type AsyncStdPool = pool_async_std::Pool<RedisManager<pool_async_std::AsyncStd>>;

/// A Redis pool on smol.
#[cfg(feature = "smol")]
pub type SmolPool = pool_smol::Pool<RedisManager<pool_smol::Smol>>;
