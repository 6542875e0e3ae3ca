//! A PostgreSQL [`Manager`](pool_core::Manager) for the [`pool_core`] connection pool, on
//! tokio-postgres, for tokio, async-std and smol alike: the runtime opens the socket and
//! runs the connection's background task ([`PgRuntime`]), tokio-postgres speaks the
//! protocol over it.
//!
//! ```no_run
//! use std::time::Duration;
//! use pool_postgres::{PgManager, Reset};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let manager = PgManager::from_url("postgres://postgres@127.0.0.1:5432/test")?
//!         .reset_with(Reset::Rollback); // the default: free for connections returned idle
//!     let pool: pool_postgres::TokioPool = pool_tokio::Pool::builder(manager)
//!         .max_size(8)
//!         .acquire_timeout(Some(Duration::from_secs(5)))
//!         .build()?;
//!     let conn = pool.get().await?; // derefs to tokio_postgres::Client
//!     let row = conn.query_one("select 1 + 1", &[]).await?;
//!     assert_eq!(row.get::<_, i32>(0), 2);
//!     Ok(())
//! }
//! ```
//!
//! With the `async-std` or `smol` feature, the same manager runs on
//! `pool_async_std::Pool<PgManager<AsyncStd>>` or `pool_smol::Pool<PgManager<Smol>>`.
//!
//! # Connecting
//! Hosts, `connect_timeout`, keepalive, `target_session_attrs` and TLS (rustls, every
//! `sslmode` of libpq) are honoured as libpq honours them; connect errors carry the SQLSTATE
//! and say whether waiting can heal them. See [`PgManager`], which also shows how to bound a
//! query on a frozen backend.
//!
//! # Dirty connections
//! A borrower can give a connection back in any state: a transaction open (its task was
//! cancelled between `BEGIN` and `COMMIT`), a request queued but not sent (a future dropped
//! right after its first poll: the cancelled `BEGIN` of sqlx#4393), or a query still running
//! on the server (a dropped `select pg_sleep(3)`). The manager follows the wire protocol in
//! both directions with a pure model ([`protocol`]) and watches the connection's background
//! task, so at checkin it knows, without a round trip, whether any of that is the case:
//!
//! - nothing of it (the common case): the connection goes straight back to the pool, at the
//!   cost of a few atomic loads ([`Reset::Rollback`], the default). A reply still due only
//!   for the `Close` of a statement that `query(&str)` prepared does not count: it runs
//!   nothing and arrives before any reply to the next borrower. A request still queued (that
//!   `Close`, written when the statement drops) is written by the checkin itself, with one
//!   poll of the connection;
//! - otherwise the pool runs [`reset`](pool_core::Manager::reset) in the background: wait for
//!   the connection task to send what was queued; if a statement may still run after a short
//!   grace ([`PgManager::cancel_after`], 10 ms), send PostgreSQL a cancel request and wait
//!   until the server has acted on it ([`Cancel`]; or close the connection, with
//!   [`Cancel::Never`]); then `ROLLBACK`, and check the connection really is idle outside a
//!   transaction. The next borrower waits for none of the abandoned work. A reply due only
//!   for a `Close` or a `Sync` never leads to a cancel.
//!
//! [`Reset::Clean`] also clears session state (settings, temporary tables, advisory locks,
//! listeners) after every lease that sent anything, for one extra round trip per such
//! checkin. A guard dropped while its thread panics is closed by the pool, not reset.
//!
//! # LISTEN / NOTIFY
//! The borrower receives the notifications of the channels it listens to with
//! [`PgConnection::notification`]. A lease whose SQL mentioned `listen` (or that received a
//! notification) is reset with `UNLISTEN *` before the next borrower gets the connection, so
//! listeners never pass from one borrower to the next (a `LISTEN` run inside a function is
//! seen only once a notification arrives; use [`Reset::Clean`] for such code).
//!
//! # Credentials
//! The manager's `Debug` shows tokio-postgres's `Config`, which redacts the password; the
//! pool's `Debug` shows its counts only; [`PgError`] never carries the configuration.

mod conn;
mod connect;
mod error;
mod manager;
pub mod protocol;
mod runtime;
mod statements;
mod tls;
mod wire;

pub use conn::PgConnection;
pub use error::{PgError, TlsFailure};
pub use manager::{Cancel, Check, PgManager, PgStats, Reset, CLEAN_SQL};
pub use protocol::TransactionStatus;
pub use runtime::{tcp_options, Keepalive, PgRuntime, Stream, TcpOptions};
pub use statements::{Statements, ToQuery};
pub use tls::SslMode;
pub use tokio_postgres;

/// A PostgreSQL pool on tokio.
#[cfg(feature = "tokio")]
pub type TokioPool = pool_tokio::Pool<PgManager<pool_tokio::Tokio>>;

/// A PostgreSQL pool on async-std.
#[cfg(feature = "async-std")]
pub type AsyncStdPool = pool_async_std::Pool<PgManager<pool_async_std::AsyncStd>>;

/// A PostgreSQL pool on smol.
#[cfg(feature = "smol")]
pub type SmolPool = pool_smol::Pool<PgManager<pool_smol::Smol>>;
