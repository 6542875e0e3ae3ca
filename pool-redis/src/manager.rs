//! The [`Manager`] for Redis (`ARCHITECTURE.md`, "The Redis reset path").

use std::fmt;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::Release};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{abortable, select, Either};
use pool_core::Manager;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Value};

use crate::conn::RedisConnection;
use crate::error::RedisPoolError;
use crate::runtime::RedisRuntime;

/// What the manager did, counted since it was made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// Connections opened.
    pub connects: u64,
    /// Checkins that needed nothing (no task, no round trip).
    pub clean_checkins: u64,
    /// Resets run (a checkin that found something to undo).
    pub resets: u64,
    /// Resets that waited for the replies of abandoned commands (a `PING` behind them).
    pub drains: u64,
    /// Resets that ran `DISCARD` (a transaction may have been left open).
    pub discards: u64,
    /// Resets that ran `UNWATCH`.
    pub unwatches: u64,
    /// Resets that selected the configured database again.
    pub selects: u64,
    /// Connections the manager had the pool close instead of lending or resetting them:
    /// a closed socket or an IO error (seen at checkout or checkin), subscribe mode and the
    /// other commands of [the crate docs](crate#dirty-connections), a failed reset (replies
    /// still due after the drain time-out).
    pub closed: u64,
}

#[derive(Default)]
struct Counters {
    connects: AtomicU64,
    clean_checkins: AtomicU64,
    resets: AtomicU64,
    drains: AtomicU64,
    discards: AtomicU64,
    unwatches: AtomicU64,
    selects: AtomicU64,
    closed: AtomicU64,
}

/// Opens, checks and resets Redis connections on runtime `R`.
///
/// - **connect**: opens the socket on the pool's runtime ([`RedisRuntime`]), runs the
///   redis crate's handshake (`AUTH`, `SELECT`, the library name), spawns the connection's
///   driver on the pool's runtime, names the client (`CLIENT SETNAME`, with
///   [`client_name`](Self::client_name)) and asks its `CLIENT ID`.
/// - **is_fatal**: [`RedisPoolError::is_fatal`].
/// - **check** on checkout: `PING`, expecting `PONG`; the pool skips it for connections used
///   within its bypass window.
/// - **has_broken** on checkout and checkin: the socket closed, a command failed with an IO
///   error, or the borrower sent a command after which the connection is closed (subscribe
///   mode and the others of [the crate docs](crate#dirty-connections)). No IO.
/// - **needs_reset** / **reset**: see [the crate docs](crate#dirty-connections).
pub struct RedisManager<R> {
    info: ConnectionInfo,
    runtime: Option<R>,
    client_name: Option<String>,
    drain_timeout: Option<Duration>,
    counters: Arc<Counters>,
}

impl<R> fmt::Debug for RedisManager<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the password.
        f.debug_struct("RedisManager")
            .field("addr", &self.info.addr().to_string())
            .field("db", &self.info.redis_settings().db())
            .field("username", &self.info.redis_settings().username())
            .field("client_name", &self.client_name)
            .field("drain_timeout", &self.drain_timeout)
            .finish_non_exhaustive()
    }
}

impl<R: RedisRuntime> RedisManager<R> {
    /// A manager for the server `info` describes (a `redis::ConnectionInfo`).
    pub fn new(info: ConnectionInfo) -> Self {
        Self {
            info,
            runtime: None,
            client_name: None,
            drain_timeout: Some(Duration::from_millis(100)),
            counters: Arc::default(),
        }
    }

    /// A manager for `url` (`redis://[user:password@]host[:port][/db]`, or
    /// `redis+unix:///path?db=n`), as the redis crate parses it.
    ///
    /// # Errors
    /// The URL does not parse, or asks for TLS (`rediss://`), which this manager does not
    /// speak yet.
    pub fn from_url(url: &str) -> Result<Self, RedisPoolError> {
        let info = url.into_connection_info()?;
        if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
            return Err(RedisPoolError::Config(
                "TLS (rediss://) is not supported by pool-redis".to_owned(),
            ));
        }
        Ok(Self::new(info))
    }

    /// Runs on `runtime` (default: the runtime current at each connect).
    #[must_use]
    pub fn runtime(mut self, runtime: R) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// Names every connection (`CLIENT SETNAME`), so `CLIENT LIST` shows whose it is.
    #[must_use]
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = Some(name.into());
        self
    }

    /// How long a reset waits for the replies of commands whose futures were dropped
    /// (100 ms by default): past it, the connection is closed instead (an abandoned
    /// `BLPOP key 30` would hold it for 30 s). `None` closes every such connection at once.
    #[must_use]
    pub fn drain_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// The connection settings.
    pub fn connection_info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// What the manager did since it was made.
    pub fn stats(&self) -> RedisStats {
        let c = &*self.counters;
        RedisStats {
            connects: c.connects.load(Relaxed),
            clean_checkins: c.clean_checkins.load(Relaxed),
            resets: c.resets.load(Relaxed),
            drains: c.drains.load(Relaxed),
            discards: c.discards.load(Relaxed),
            unwatches: c.unwatches.load(Relaxed),
            selects: c.selects.load(Relaxed),
            closed: c.closed.load(Relaxed),
        }
    }

    fn rt(&self) -> Result<R, RedisPoolError> {
        match &self.runtime {
            Some(rt) => Ok(rt.clone()),
            None => R::current().map_err(RedisPoolError::Runtime),
        }
    }

    async fn open(&self, rt: &R) -> Result<RedisConnection, RedisPoolError> {
        let stream = match self.info.addr() {
            ConnectionAddr::Tcp(host, port) => {
                rt.connect_tcp(host, *port, &pool_net::TcpOptions::default())
                    .await
            }
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => rt.connect_unix(path).await,
            other => {
                return Err(RedisPoolError::Config(format!(
                    "pool-redis cannot connect to {other}"
                )))
            }
        }
        .map_err(RedisPoolError::Connect)?;
        let settings = self.info.redis_settings();
        // No response timeout: the redis crate's default (500 ms) would cut every blocking
        // command longer than that (`BLPOP key 1`), and it times it with a runtime of its own
        // choosing (tokio's timer, which fails outside tokio). The pool bounds connects,
        // checks and resets on its own runtime; a borrower bounds its commands itself.
        let config = AsyncConnectionConfig::new().set_response_timeout(None);
        let (inner, driver) =
            MultiplexedConnection::new_with_config(settings, stream, config).await?;
        let closed = Arc::new(AtomicBool::new(false));
        let (driver, handle) = abortable(driver);
        let flag = Arc::clone(&closed);
        rt.spawn(async move {
            let _ = driver.await;
            flag.store(true, Release);
        });
        let mut conn = RedisConnection::new(inner, settings.db(), closed, handle);
        if let Some(name) = &self.client_name {
            conn.raw(redis::cmd("CLIENT").arg("SETNAME").arg(name))
                .await?;
        }
        let id = conn.raw(&redis::cmd("CLIENT").arg("ID").to_owned()).await?;
        conn.set_id(redis::from_redis_value(id).map_err(redis::RedisError::from)?);
        Ok(conn)
    }
}

/// Runs `future` for at most `timeout` on the runtime's timer; `None` if it did not finish.
async fn within<R: RedisRuntime, F: std::future::Future>(
    rt: &R,
    timeout: Duration,
    future: F,
) -> Option<F::Output> {
    let (future, timer) = (pin!(future), pin!(rt.sleep_until(Instant::now() + timeout)));
    match select(future, timer).await {
        Either::Left((out, _)) => Some(out),
        Either::Right(_) => None,
    }
}

impl<R: RedisRuntime> Manager for RedisManager<R> {
    type Connection = RedisConnection;
    type Error = RedisPoolError;

    async fn connect(&self) -> Result<RedisConnection, RedisPoolError> {
        let rt = self.rt()?;
        let conn = self.open(&rt).await?;
        self.counters.connects.fetch_add(1, Relaxed);
        Ok(conn)
    }

    fn is_fatal(&self, error: &RedisPoolError) -> bool {
        error.is_fatal()
    }

    async fn check(&self, conn: &mut RedisConnection) -> Result<(), RedisPoolError> {
        if conn.is_closed() {
            return Err(RedisPoolError::Unclean("the socket is closed".to_owned()));
        }
        match conn.raw(&redis::cmd("PING")).await? {
            Value::SimpleString(s) if s == "PONG" => Ok(()),
            other => Err(RedisPoolError::Unclean(format!(
                "PING answered {other:?}, not PONG"
            ))),
        }
    }

    fn has_broken(&self, conn: &mut RedisConnection) -> bool {
        let broken = conn.is_closed() || conn.session.unusable();
        if broken {
            self.counters.closed.fetch_add(1, Relaxed);
        }
        broken
    }

    fn needs_reset(&self, conn: &RedisConnection) -> bool {
        let dirty = conn.session.dirty();
        // The pool asks this after `has_broken` whatever its answer; a connection it closes
        // is no clean checkin.
        if !dirty && !conn.session.unusable() && !conn.is_closed() {
            self.counters.clean_checkins.fetch_add(1, Relaxed);
        }
        dirty
    }

    async fn reset(&self, conn: &mut RedisConnection) -> Result<(), RedisPoolError> {
        let c = &*self.counters;
        c.resets.fetch_add(1, Relaxed);
        let result = self.undo(conn).await;
        if result.is_err() {
            c.closed.fetch_add(1, Relaxed);
        }
        result
    }
}

impl<R: RedisRuntime> RedisManager<R> {
    /// The reset: drain, then `DISCARD`, `UNWATCH`, `SELECT` as the session model says.
    async fn undo(&self, conn: &mut RedisConnection) -> Result<(), RedisPoolError> {
        let c = &*self.counters;
        if conn.session.abandoned {
            // Replies come in order: once a PING's reply arrives, every reply due before it
            // has arrived too (and the driver dropped it, its future being gone).
            let Some(timeout) = self.drain_timeout else {
                return Err(RedisPoolError::Unclean(
                    "a command's reply was still due (drain_timeout is None)".to_owned(),
                ));
            };
            c.drains.fetch_add(1, Relaxed);
            let rt = self.rt()?;
            match within(&rt, timeout, conn.raw(&redis::cmd("PING"))).await {
                None => {
                    return Err(RedisPoolError::Unclean(format!(
                        "replies to abandoned commands still due after {timeout:?}"
                    )))
                }
                Some(reply) => {
                    reply?;
                }
            }
            conn.session.abandoned = false;
        }
        if conn.session.multi {
            c.discards.fetch_add(1, Relaxed);
            match conn.raw(&redis::cmd("DISCARD")).await {
                Ok(_) => {}
                // The MULTI was never sent (its future dropped before it was written).
                Err(e) if e.to_string().contains("without MULTI") => {}
                Err(e) => return Err(e.into()),
            }
            // DISCARD also forgets every WATCH.
            conn.session.multi = false;
            conn.session.watching = false;
        }
        if conn.session.watching {
            c.unwatches.fetch_add(1, Relaxed);
            conn.raw(&redis::cmd("UNWATCH")).await?;
            conn.session.watching = false;
        }
        let db = conn.session.configured_db;
        if conn.session.db != Some(db) {
            c.selects.fetch_add(1, Relaxed);
            conn.raw(redis::cmd("SELECT").arg(db)).await?;
            conn.session.db = Some(db);
        }
        debug_assert!(!conn.session.dirty());
        Ok(())
    }
}
