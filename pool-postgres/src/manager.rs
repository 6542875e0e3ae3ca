//! The [`Manager`] for PostgreSQL.

use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{join_all, select, Either};
use pool_core::Manager;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::Config;

use crate::conn::{PgConnection, Target};
use crate::connect::{extract_tls, Connector};
use crate::error::PgError;
use crate::protocol::{BackendKey, TransactionStatus};
use crate::runtime::{PgRuntime, Stream, TcpOptions};
use crate::statements::{Statements, TypeCache};
use crate::tls::{SslMode, Tls, TlsSettings};
use crate::wire::Wire;

/// What [`Reset::Clean`] runs: everything `DISCARD ALL` does except dropping prepared
/// statements, which tokio-postgres's cached [`Statement`](tokio_postgres::Statement)s (and
/// its type-lookup statements) rely on.
pub const CLEAN_SQL: &str = "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; \
    UNLISTEN *; SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES";

/// How many cancel requests one reset sends at most (one per abandoned query still running).
const MAX_CANCELS: u32 = 3;
/// The protocol code of a `CancelRequest`.
const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// The checkout check, run on a connection idle longer than the pool's bypass window
/// (see [`Builder::check_bypass`](pool_core::Builder::check_bypass); 500 ms by
/// default, as HikariCP).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Check {
    /// Only ask whether the connection is known to be closed (no IO). A connection the
    /// server terminated is noticed, one behind a dead network path is not.
    Closed,
    /// A `Sync` message and its `ReadyForQuery` reply: the cheapest round trip the protocol
    /// has (no parsing, no planning). The default.
    #[default]
    Ping,
    /// Runs this SQL (as a simple query).
    Sql(Cow<'static, str>),
}

/// What makes a returned connection fit for the next borrower.
///
/// Whatever the mode, a connection that comes back with a request still queued or a query
/// still running (its future was dropped) has that query cancelled on the server (after a
/// short grace, [`PgManager::cancel_after`]) and is rolled back, and one that comes back
/// inside a transaction is rolled back. A connection that comes back idle, with nothing in
/// flight, costs nothing in [`Reset::Rollback`] mode: the manager follows the wire protocol
/// and knows without asking the server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Reset {
    /// Roll back an open or failed transaction; leave session state (settings made with
    /// `SET` outside a transaction, temporary tables, prepared statements) alone. The
    /// default: free for connections that come back idle.
    #[default]
    Rollback,
    /// Also clear the session after every lease that sent anything: [`CLEAN_SQL`], one
    /// extra round trip per such checkin, run in the background before the connection is
    /// lent again.
    Clean,
    /// Also run this SQL (as a simple query) after every lease that sent anything, for
    /// example `DISCARD ALL` (which also drops prepared statements: do not keep
    /// tokio-postgres `Statement`s across leases then).
    Sql(Cow<'static, str>),
}

/// What a reset does about a query still running on the server when its connection comes
/// back (the borrower dropped the future that ran it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Cancel {
    /// Send the server a cancel request, the way libpq does: a 16-byte `CancelRequest` on a
    /// new connection, which stays open until the peer closes it (so the cancel cannot hit a
    /// later query), bounded by [`PgManager::cancel_timeout`]; then `ROLLBACK`. At most one
    /// cancel request per connection is in flight. The default.
    #[default]
    Request,
    /// Never send a cancel request: close the connection instead (the pool opens another).
    /// For poolers that mishandle cancel requests.
    Never,
}

/// What the manager did at checkins, counted since it was made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgStats {
    /// Connections opened.
    pub connects: u64,
    /// Checkins that needed nothing (no task, no round trip).
    pub clean_checkins: u64,
    /// Resets that only waited for the connection to settle (a reply still due), with no
    /// query of their own.
    pub settled: u64,
    /// Resets that rolled back a transaction.
    pub rollbacks: u64,
    /// Resets that ran the session reset of [`Reset::Clean`] or [`Reset::Sql`].
    pub session_resets: u64,
    /// Cancel requests sent for queries still running when their connection came back.
    pub cancels: u64,
    /// Resets that ran `UNLISTEN *` because the borrower listened (or may have).
    pub unlistens: u64,
}

#[derive(Default)]
struct Counters {
    connects: AtomicU64,
    clean_checkins: AtomicU64,
    settled: AtomicU64,
    rollbacks: AtomicU64,
    session_resets: AtomicU64,
    cancels: AtomicU64,
    unlistens: AtomicU64,
}

/// Opens, checks and resets tokio-postgres connections on runtime `R`.
///
/// - **connect**: see [Connecting](#connecting). The pool bounds the whole connect with its
///   own connect timeout as well.
/// - **is_fatal**: see [Errors that waiting will not heal](#errors-that-waiting-will-not-heal).
/// - **check** on checkout: [`Check`], [`Check::Ping`] by default; the pool skips it for
///   connections used within its bypass window.
/// - **has_broken** on checkin: whether the connection is closed (no IO).
/// - **reset** before reuse: see [`Reset`]. It runs in a background task while the pool
///   still counts the connection as in use; an error or the pool's reset timeout closes the
///   connection instead.
///
/// Debug output shows the tokio-postgres `Config`, whose password is redacted; errors never
/// carry the configuration.
///
/// # Connecting
/// As libpq and tokio-postgres's own `connect` do, from the tokio-postgres `Config`:
///
/// - the hosts (`host`, `hostaddr`, `port`) are tried in order, or in a random order each
///   time under `load_balance_hosts=random`; the first that gives a fitting session wins,
///   else the connect fails with the last host's error;
/// - `connect_timeout` bounds each host's attempt (socket, TLS and startup);
/// - `keepalives` (on by default), `keepalives_idle`, `keepalives_interval`,
///   `keepalives_retries` and `tcp_user_timeout` are set on the socket ([`tcp_options`](crate::tcp_options));
///   tokio-postgres reads all of them in seconds (libpq reads `tcp_user_timeout` in
///   milliseconds);
/// - `target_session_attrs=read-write` (or `read-only`) asks the new session
///   `SHOW transaction_read_only`, as libpq does, and goes on to the next host when it does
///   not match ([`PgError::SessionAttrs`]);
/// - TLS as [`SslMode`] says, with rustls (feature `rustls`, on by default). The manager
///   does the TLS negotiation itself, below the protocol tracker, which must read plaintext.
///   [`PgManager::from_url`] reads `sslmode` (all of libpq's values) and `sslrootcert` from
///   the connection string, since tokio-postgres's parser knows neither `verify-ca`,
///   `verify-full` nor `sslrootcert`; with [`PgManager::new`], set them with
///   [`PgManager::ssl_mode`] and [`PgManager::ssl_root_cert`]. Without `sslrootcert`, the
///   verifying modes trust the Mozilla roots of `webpki-roots`. `prefer` and `require` do not
///   verify the certificate (as libpq). TLS is not used over Unix-domain sockets. Channel
///   binding and client certificates are not supported.
///
/// Cancel requests go to the host the connection is on, in plaintext (a server accepts them
/// so unless its `pg_hba.conf` has only `hostssl` lines).
///
/// # Errors that waiting will not heal
/// [`is_fatal`](Manager::is_fatal) ([`PgError::is_fatal`]) tells the pool which connect
/// errors fail its waiters at once rather than at their deadline:
///
/// | fatal | transient |
/// | --- | --- |
/// | SQLSTATE `28P01` (wrong password), `28000` (no such role, no `pg_hba.conf` entry, which covers a server that demands TLS from a client with `sslmode=disable`), `3D000` (no such database), `42501` (no `CONNECT` privilege) at startup | refused, reset, DNS failure, the host's `connect_timeout` ([`PgError::Connect`], [`PgError::TimedOut`]) |
/// | the server refused TLS under `require` or stricter; the certificate failed verification ([`PgError::Tls`]) | `57P01`, `57P02`, `57P03` (shutting down, crash recovery, starting up), `53300` (too many connections), and any other SQLSTATE |
/// | tokio-postgres's own configuration checks (a password the server asks for and the configuration lacks) | a TLS handshake cut off by the network |
/// | no host, an unreadable `sslrootcert`, no runtime ([`PgError::NoHost`], [`PgError::Config`], [`PgError::Runtime`]) | a session that does not match `target_session_attrs` (a failover may be under way) |
///
/// # A query on a frozen backend
/// Nothing bounds a query by default: a backend that hangs, or a network path that dies
/// with the query in flight, leaves the caller waiting. Three bounds, from the kernel to the
/// caller:
///
/// - **TCP**: `tcp_user_timeout` closes the socket when sent data stays unacknowledged that
///   long (a dead peer while a query is in flight); keepalive probes
///   (`keepalives_idle`, `keepalives_interval`, `keepalives_retries`) find a dead peer on a
///   connection with nothing in flight. Either way the query fails with a closed connection,
///   which the pool then discards.
/// - **The server**: `statement_timeout` (set with `options=-c statement_timeout=5s` in the
///   connection string, or per transaction with `SET LOCAL`) makes the server cancel a
///   statement that runs too long. It does not help when the server or the path is gone.
/// - **The caller**: a timeout around the query (`tokio::time::timeout`, or the runtime's
///   equivalent). Dropping the query's future gives the connection back with the query
///   still running; the checkin notices, cancels it on the server and rolls back before the
///   connection is lent again (see [`Reset`]); if the host cannot be reached, the pool's
///   reset timeout closes the connection instead.
///
/// ```no_run
/// use std::time::Duration;
/// use pool_postgres::{PgManager, TokioPool};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = PgManager::from_url(
///     "postgres://app@db.example/app?keepalives_idle=10&keepalives_interval=5\
///      &keepalives_retries=3&tcp_user_timeout=15&options=-c%20statement_timeout%3D5s",
/// )?;
/// let pool: TokioPool = pool_tokio::Pool::builder(manager).max_size(8).build()?;
/// let conn = pool.get().await?;
/// match tokio::time::timeout(Duration::from_secs(6), conn.query("select pg_sleep(60)", &[])).await {
///     Ok(rows) => println!("{} rows", rows?.len()),
///     // The guard goes back to the pool, which cancels the query on the server.
///     Err(_) => println!("gave up after 6 s"),
/// }
/// # Ok(())
/// # }
/// ```
pub struct PgManager<R> {
    config: Config,
    connector: Connector,
    check: Check,
    reset: Reset,
    cancel: Cancel,
    cancel_after: Duration,
    cancel_timeout: Duration,
    runtime: Option<R>,
    counters: Counters,
    /// Under [`Statements::Unnamed`], the parameter types its connections found.
    unnamed: Option<Arc<TypeCache>>,
}

impl<R: PgRuntime> PgManager<R> {
    /// A manager for `config` (hosts, ports, user, password, database, application name and
    /// options are used), with [`Check::Ping`], [`Reset::Rollback`] and a 10 ms cancel grace.
    pub fn new(config: Config) -> Self {
        let tls = Tls::new(TlsSettings {
            mode: SslMode::from_config(config.get_ssl_mode()),
            root_cert: None,
        });
        Self {
            connector: Connector::new(&config, tls),
            config,
            check: Check::default(),
            reset: Reset::default(),
            cancel: Cancel::default(),
            cancel_after: Duration::from_millis(10),
            cancel_timeout: Duration::from_secs(2),
            runtime: None,
            counters: Counters::default(),
            unnamed: None,
        }
    }

    /// A manager for a connection string: a URL (`postgres://user@host:5432/db`) or
    /// `key=value` pairs, as tokio-postgres parses them.
    ///
    /// # Errors
    /// [`PgError::Postgres`] if the string does not parse (the message names the option,
    /// never its value).
    pub fn from_url(url: &str) -> Result<Self, PgError> {
        let extracted = extract_tls(url);
        let mut manager = Self::new(extracted.rest.parse()?);
        if let Some(mode) = extracted.ssl_mode {
            manager = manager.ssl_mode(mode);
        }
        if let Some(path) = extracted.root_cert {
            manager = manager.ssl_root_cert(path);
        }
        Ok(manager)
    }

    /// Sets how connections use TLS (see [`SslMode`]); replaces what the configuration
    /// says.
    pub fn ssl_mode(mut self, mode: SslMode) -> Self {
        let settings = TlsSettings {
            mode,
            ..self.connector.tls.settings.clone()
        };
        self.connector.tls = Tls::new(settings);
        self
    }

    /// Trusts the root certificates in this PEM file (libpq's `sslrootcert`) instead of the
    /// Mozilla roots of `webpki-roots`, for [`SslMode::VerifyCa`] and
    /// [`SslMode::VerifyFull`]; under [`SslMode::Require`] it makes the manager verify the
    /// certificate chain, as libpq does. The file is read at the first TLS connect; an
    /// unreadable file fails that connect with [`PgError::Config`].
    pub fn ssl_root_cert(mut self, path: impl Into<PathBuf>) -> Self {
        let settings = TlsSettings {
            root_cert: Some(path.into()),
            ..self.connector.tls.settings.clone()
        };
        self.connector.tls = Tls::new(settings);
        self
    }

    /// Sets how the pooled connection runs SQL text with parameters: [`Statements::Named`]
    /// (tokio-postgres's own way, the default) or [`Statements::Unnamed`], which **PgBouncer
    /// in transaction mode** (or any pooler that may switch server connections between
    /// transactions) needs.
    ///
    /// ```no_run
    /// use pool_postgres::{PgManager, Statements, TokioPool};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let manager = PgManager::from_url("postgres://app@pgbouncer.example:6432/app")?
    ///     .statements(Statements::Unnamed);
    /// let pool: TokioPool = pool_tokio::Pool::builder(manager).max_size(8).build()?;
    /// let conn = pool.get().await?;
    /// let row = conn.query_one("select $1::int + 1", &[&41_i32]).await?;
    /// assert_eq!(row.get::<_, i32>(0), 42);
    /// # Ok(())
    /// # }
    /// ```
    pub fn statements(mut self, statements: Statements) -> Self {
        self.unnamed = match statements {
            Statements::Named => None,
            Statements::Unnamed => Some(Arc::default()),
        };
        self
    }

    /// Sets the checkout check.
    pub fn check_with(mut self, check: Check) -> Self {
        self.check = check;
        self
    }

    /// Sets what a reset does.
    pub fn reset_with(mut self, reset: Reset) -> Self {
        self.reset = reset;
        self
    }

    /// How long a reset waits for a statement still running (a dropped future's query)
    /// before it cancels it (or closes the connection, with [`Cancel::Never`]). Short
    /// statements (a `BEGIN` queued by a dropped future) finish well within the default
    /// 10 ms. Replies due only for a `Close` or a `Sync` never lead to a cancel.
    pub fn cancel_after(mut self, grace: Duration) -> Self {
        self.cancel_after = grace;
        self
    }

    /// Sets what a reset does about a statement still running ([`Cancel::Request`] by
    /// default).
    pub fn cancel_with(mut self, cancel: Cancel) -> Self {
        self.cancel = cancel;
        self
    }

    /// How long a cancel request may take, from opening its connection to the peer closing
    /// it (2 s by default); past it the reset fails and the pool closes the connection.
    pub fn cancel_timeout(mut self, timeout: Duration) -> Self {
        self.cancel_timeout = timeout;
        self
    }

    /// Runs connections on `runtime` instead of [`Runtime::current`](pool_core::Runtime::current)
    /// at each connect.
    pub fn runtime(mut self, runtime: R) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// What the manager has done so far.
    pub fn stats(&self) -> PgStats {
        let c = &self.counters;
        PgStats {
            connects: c.connects.load(Relaxed),
            clean_checkins: c.clean_checkins.load(Relaxed),
            settled: c.settled.load(Relaxed),
            rollbacks: c.rollbacks.load(Relaxed),
            session_resets: c.session_resets.load(Relaxed),
            cancels: c.cancels.load(Relaxed),
            unlistens: c.unlistens.load(Relaxed),
        }
    }

    fn rt(&self) -> Result<R, PgError> {
        match &self.runtime {
            Some(rt) => Ok(rt.clone()),
            None => R::current().map_err(PgError::Runtime),
        }
    }

    /// Asks the server to cancel whatever `conn` is running, as libpq does: a
    /// `CancelRequest` on a new connection, kept open until the peer closes it (the server
    /// closes it once it has signalled the backend, so the cancel cannot hit a later query;
    /// a pooler in front of it forwards it first). Bounded by the cancel timeout.
    async fn cancel(&self, conn: &PgConnection) -> Result<(), PgError> {
        let wire = conn.wire();
        let Some(key) = wire.key() else {
            return Err(PgError::Reset(
                "the server sent no BackendKeyData to cancel with",
            ));
        };
        let Some(_in_flight) = wire.start_cancel() else {
            return Err(PgError::Reset("a cancel request is already in flight"));
        };
        let rt = self.rt()?;
        let target = &conn.target;
        let io_error = |source| PgError::Connect {
            target: target.to_string(),
            source,
        };
        let request = async {
            let mut socket = open(&rt, target).await?;
            socket
                .write_all(&cancel_request(key))
                .await
                .map_err(io_error)?;
            socket.flush().await.map_err(io_error)?;
            let mut buf = [0_u8; 64];
            loop {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return Ok(()),
                    Ok(_) => {}
                }
            }
        };
        let answered = match rt.now().checked_add(self.cancel_timeout) {
            Some(deadline) => match select(pin!(request), pin!(rt.sleep_until(deadline))).await {
                Either::Left((answered, _)) => answered,
                Either::Right(_) => Err(PgError::Reset(
                    "the cancel request was not answered in time",
                )),
            },
            None => request.await,
        };
        self.counters.cancels.fetch_add(1, Relaxed);
        answered
    }

    /// Waits up to the cancel grace until no statement can be running; `Ok(false)` if one
    /// may still run then.
    async fn calm_within(&self, wire: &Wire) -> Result<bool, PgError> {
        let rt = self.rt()?;
        let finished = match rt.now().checked_add(self.cancel_after) {
            Some(deadline) => {
                let done = pin!(wire.wait_for(Wire::calm));
                match select(done, pin!(rt.sleep_until(deadline))).await {
                    Either::Left((finished, _)) => finished,
                    // The grace is over: cancel only if the model says a statement may
                    // run. Not `calm()`: it also reads the driver's activity, which a reply
                    // arriving right now (to a `Close`) turns on for a moment. What the
                    // borrower queued was written before this wait (step 1 of the reset).
                    Either::Right(_) => !wire.write_pending() && !wire.query_may_run(),
                }
            }
            None => wire.wait_for(Wire::calm).await,
        };
        if wire.is_closed() {
            return Err(PgError::Closed);
        }
        Ok(finished)
    }

    /// The SQL of the session reset, if the mode has one.
    fn session_sql(&self) -> Option<&str> {
        match &self.reset {
            Reset::Rollback => None,
            Reset::Clean => Some(CLEAN_SQL),
            Reset::Sql(sql) => Some(sql),
        }
    }
}

/// A `CancelRequest`: length 16, the cancel code, the backend's process id and secret key.
fn cancel_request(key: BackendKey) -> [u8; 16] {
    let mut out = [0_u8; 16];
    out[..4].copy_from_slice(&16_u32.to_be_bytes());
    out[4..8].copy_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
    out[8..12].copy_from_slice(&key.pid.to_be_bytes());
    out[12..].copy_from_slice(&key.secret.to_be_bytes());
    out
}

/// Opens a socket to `target` with the runtime (for cancel requests: no TCP options).
async fn open<R: PgRuntime>(rt: &R, target: &Target) -> Result<Stream, PgError> {
    crate::connect::open(rt, target, &TcpOptions::default()).await
}

impl<R: PgRuntime> Manager for PgManager<R> {
    type Connection = PgConnection;
    type Error = PgError;

    async fn connect(&self) -> Result<PgConnection, PgError> {
        let mut conn = self.connector.connect(&self.rt()?).await?;
        conn.unnamed.clone_from(&self.unnamed);
        self.counters.connects.fetch_add(1, Relaxed);
        Ok(conn)
    }

    fn is_fatal(&self, error: &PgError) -> bool {
        error.is_fatal()
    }

    async fn check(&self, conn: &mut PgConnection) -> Result<(), PgError> {
        if conn.is_closed() {
            return Err(PgError::Closed);
        }
        match &self.check {
            Check::Closed => {}
            Check::Ping => conn.client.check_connection().await?,
            Check::Sql(sql) => conn.client.batch_execute(sql).await?,
        }
        // The check itself is not a borrower's use.
        conn.clean_mark = conn.wire().sent();
        Ok(())
    }

    fn has_broken(&self, conn: &mut PgConnection) -> bool {
        conn.is_closed()
    }

    fn needs_reset(&self, conn: &PgConnection) -> bool {
        // Settle first (polling the connection once if a request is queued, such as the
        // `Close` of a statement the borrower's last query dropped): it orders the reads of
        // the verdict after the connection's last writes.
        let wire = conn.wire();
        let clean = conn.link.settle_now()
            && !wire.write_pending()
            && !wire.is_closed()
            && wire.verdict().may_lend()
            && wire.listens() == conn.listen_mark
            && (self.reset == Reset::Rollback || wire.sent() == conn.clean_mark);
        if clean {
            self.counters.clean_checkins.fetch_add(1, Relaxed);
        }
        !clean
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), PgError> {
        let wire = Arc::clone(conn.wire());
        // 1. Let the connection task take up whatever the last borrower queued.
        if !wire.wait_for(Wire::settled).await {
            return Err(PgError::Closed);
        }
        // Everything the borrower queued is written now (or stuck in the socket buffer).
        let used = wire.sent() != conn.clean_mark || wire.write_pending();
        // 2. A statement may still be running: give it a moment, then cancel it on the
        //    server; again if another abandoned one runs after it (pipelined requests), a few
        //    times. Replies due only for a Close or a Sync are never a reason to cancel.
        let mut cancelled = 0;
        while !wire.calm() {
            if self.calm_within(&wire).await? || cancelled == MAX_CANCELS {
                break;
            }
            if self.cancel == Cancel::Never {
                return Err(PgError::Reset(
                    "a statement is still running and cancel requests are off",
                ));
            }
            tracing::debug!(target = %conn.target, "cancelling a query a dropped future left running");
            self.cancel(conn).await?;
            cancelled += 1;
        }
        // 3. Roll back (queued behind whatever is still in flight), stop listening, then the
        //    session reset: pipelined, one round trip.
        //    Whether to roll back is decided from what the loop saw, never from a second
        //    `calm()`: that also reads the driver's activity, which a reply to a `Close`
        //    arriving now (a poll of the connection) turns on for a moment, and would then
        //    roll back a session that is idle. Once calm, the status cannot change: only
        //    `Close`/`Sync` replies are due. Not calm after the last cancel means cancelled.
        let rollback = cancelled > 0 || wire.verdict().status != TransactionStatus::Idle;
        let session = self.session_sql().filter(|_| used);
        let listened = wire.listens() != conn.listen_mark;
        // CLEAN_SQL has its own UNLISTEN *.
        let unlisten = listened && session != Some(CLEAN_SQL);
        let mut sql: Vec<&str> = Vec::new();
        if rollback {
            sql.push("ROLLBACK");
        }
        if unlisten {
            sql.push("UNLISTEN *");
        }
        if let Some(session) = session {
            sql.push(session);
        }
        let client = &conn.client;
        for result in join_all(sql.iter().map(|sql| client.batch_execute(sql))).await {
            result?;
        }
        if rollback {
            self.counters.rollbacks.fetch_add(1, Relaxed);
        }
        if unlisten || (listened && session.is_some()) {
            self.counters.unlistens.fetch_add(1, Relaxed);
        }
        if session.is_some() {
            self.counters.session_resets.fetch_add(1, Relaxed);
        }
        if sql.is_empty() {
            self.counters.settled.fetch_add(1, Relaxed);
        }
        // 4. Make sure: no statement running, outside any transaction. A reply still due for
        //    a Close arrives before any reply to the next borrower.
        if !wire.wait_for(Wire::calm).await {
            return Err(PgError::Closed);
        }
        if wire.verdict().status != TransactionStatus::Idle {
            return Err(PgError::Reset("still inside a transaction after ROLLBACK"));
        }
        if listened {
            // The session listens to nothing now; what arrived before is nobody's.
            wire.clear_notifications();
        }
        conn.clean_mark = wire.sent();
        conn.listen_mark = wire.listens();
        Ok(())
    }
}

impl<R> fmt::Debug for PgManager<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgManager")
            .field("config", &self.config)
            .field("check", &self.check)
            .field("reset", &self.reset)
            .field("cancel", &self.cancel)
            .field("cancel_after", &self.cancel_after)
            .field("cancel_timeout", &self.cancel_timeout)
            .field(
                "statements",
                &match self.unnamed {
                    Some(_) => Statements::Unnamed,
                    None => Statements::Named,
                },
            )
            .finish_non_exhaustive()
    }
}
