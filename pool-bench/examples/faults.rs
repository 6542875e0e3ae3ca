//! Fault benchmark: how this pool (`pool_tokio::Pool` with `pool_postgres::PgManager`),
//! bb8-postgres 0.9, deadpool-postgres 0.14 and sqlx 0.9 live through a PostgreSQL server
//! going away and coming back, and how fast each one reports an error that waiting cannot
//! heal.
//!
//! ```sh
//! cargo run --release -p pool-bench --example faults            # 3 repetitions
//! cargo run --release -p pool-bench --example faults -- --reps 1 # a quicker look
//! ```
//!
//! It needs PostgreSQL's server binaries (the newest `/usr/lib/postgresql/*/bin`, or the
//! directory in `FAULTS_PG_BIN`) and nothing running on port 5433. It runs a private
//! instance of its own: `initdb` into `/tmp/pgfaults` the first time (`-A trust`, superuser
//! `postgres`), `pg_ctl start` on 127.0.0.1:5433 (socket in `/tmp`, log in
//! `/tmp/pgfaults.log`), a database `test`; as root it runs every PostgreSQL command as the
//! `postgres` user (`runuser -u postgres --`). It stops the instance when it ends, also on
//! an error, a panic or Ctrl-C. No other server is touched.
//!
//! Every pool gets max size 8 (then 32), an acquire timeout of 30 s and, where it has one, a
//! connect timeout of 3 s; 64 tasks loop `get`, `select 1`, release, sleep 5 ms. Each pool
//! connects through its own small TCP proxy (in this file) to the private server; the
//! proxy counts the connections each pool opens, so connect attempts are counted the same
//! way for all. Scenarios, one pool after the other (the order rotates each repetition):
//!
//! 1. **restart**: `pg_ctl restart -m fast`, after 1 s of warm-up;
//! 2. **stop 3 s**: `pg_ctl stop -m fast`, 3 s, `pg_ctl start`.
//!
//!    A probe outside the pools opens a connection (a full startup, not just TCP) straight
//!    to the server every 5 ms from the fault on; its last failed attempt and its first
//!    success after that mark when the server was back. Per run: the pool's recovery (its
//!    first successful query after the probe's last failure, minus the moment the probe
//!    got through; negative when the pool got through first, within the probe's 5 ms),
//!    connections the pool opened from the fault until the server was back, acquire errors
//!    (`get` returned an error or timed out) and query errors from the fault until 2 s after
//!    its recovery.
//! 3. **fail fast**: `dbname=nosuchdb` and `user=nosuchrole`, acquire timeout 5 s: the time
//!    from one `get()` to its error, the connections opened meanwhile, the error text.
//!
//! With `FAULTS_TRACE=1` it also prints, per run, when each connection through the proxy
//! was opened (ms after the fault).
//!
//! It prints progress on stderr and the markdown tables (medians over the repetitions, the
//! range in brackets, ratios to this pool) on stdout.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

/// The private server's port; the proxies forward to it.
const PORT: u16 = 5433;
/// Tasks looping on each pool.
const TASKS: usize = 64;
/// The pause after each cycle.
const PAUSE: Duration = Duration::from_millis(5);
/// The acquire timeout of the fault scenarios.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
/// The acquire timeout of the fail-fast scenario.
const FAIL_FAST_TIMEOUT: Duration = Duration::from_secs(5);
/// The connect timeout, for the pools that have one (and tokio-postgres's `connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Load before the fault, so every pool is full and busy when it hits.
const WARM_UP: Duration = Duration::from_secs(1);
/// How long a run goes on after the pool's first success once the server is back (errors
/// from stale connections show up here).
const TAIL: Duration = Duration::from_secs(2);
/// How often the probe tries to connect.
const PROBE_EVERY: Duration = Duration::from_millis(5);

// ---------------------------------------------------------------------------------------
// The private PostgreSQL instance.

/// `pg_ctl` and friends for the private instance.
#[derive(Debug)]
struct PgCtl {
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    /// Root runs PostgreSQL's commands as `postgres` (initdb and the server refuse root).
    as_postgres: bool,
}

impl PgCtl {
    fn detect() -> Result<Self, String> {
        let bin = match std::env::var_os("FAULTS_PG_BIN") {
            Some(dir) => PathBuf::from(dir),
            None => newest_pg_bin(Path::new("/usr/lib/postgresql"))?,
        };
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map_err(|e| format!("id -u: {e}"))?;
        let as_postgres = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        Ok(Self {
            bin,
            data: PathBuf::from("/tmp/pgfaults"),
            log: PathBuf::from("/tmp/pgfaults.log"),
            as_postgres,
        })
    }

    /// Runs one of PostgreSQL's programs (as `postgres` when root); its output on failure.
    fn run(&self, program: &str, args: &[OsString]) -> Result<(), String> {
        let path = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(&path);
            cmd
        } else {
            Command::new(&path)
        };
        cmd.args(args).current_dir("/tmp");
        let out = cmd
            .output()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{program} {args:?}: {}\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn pg_ctl(&self, action: &str, extra: &[&str]) -> Result<(), String> {
        let mut args: Vec<OsString> = vec![
            "-D".into(),
            self.data.clone().into(),
            "-l".into(),
            self.log.clone().into(),
            "-o".into(),
            format!("-p {PORT} -k /tmp -c listen_addresses=127.0.0.1").into(),
        ];
        args.extend(extra.iter().map(OsString::from));
        args.push(action.into());
        self.run("pg_ctl", &args)
    }

    fn is_running(&self) -> bool {
        self.run(
            "pg_ctl",
            &["-D".into(), self.data.clone().into(), "status".into()],
        )
        .is_ok()
    }

    fn start(&self) -> Result<(), String> {
        self.pg_ctl("start", &["-w"])
    }

    fn stop(&self) -> Result<(), String> {
        self.pg_ctl("stop", &["-m", "fast", "-w"])
    }

    fn restart(&self) -> Result<(), String> {
        self.pg_ctl("restart", &["-m", "fast", "-w"])
    }
}

/// The newest `<dir>/<version>/bin` that has `pg_ctl`.
fn newest_pg_bin(dir: &Path) -> Result<PathBuf, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin)
        .ok_or_else(|| format!("no PostgreSQL server binaries under {}", dir.display()))
}

/// The running private instance; dropping it stops the server (also while a panic unwinds).
#[derive(Debug)]
struct Instance(Arc<PgCtl>);

impl Instance {
    /// Stops a leftover of an earlier run, creates the cluster if needed, starts it.
    fn launch(ctl: Arc<PgCtl>) -> Result<Self, String> {
        if ctl.is_running() {
            eprintln!(
                "stopping the instance an earlier run left in {}",
                ctl.data.display()
            );
            ctl.stop()?;
        }
        if !ctl.data.join("PG_VERSION").exists() {
            eprintln!("initdb {}", ctl.data.display());
            let args: Vec<OsString> = vec![
                "-D".into(),
                ctl.data.clone().into(),
                "-A".into(),
                "trust".into(),
                "-U".into(),
                "postgres".into(),
            ];
            ctl.run("initdb", &args)?;
        }
        // From here on the guard stops the server whatever happens.
        let instance = Self(ctl);
        instance.0.start()?;
        Ok(instance)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        match self.0.stop() {
            Ok(()) => eprintln!("private instance stopped"),
            Err(e) => eprintln!("could not stop the private instance: {e}"),
        }
    }
}

/// Creates the database `test` unless it exists.
async fn create_test_db() -> Result<(), String> {
    let (client, conn) = direct_config("postgres", "postgres")
        .connect(NoTls)
        .await
        .map_err(|e| format!("connect to the private instance: {e}"))?;
    let conn = tokio::spawn(conn);
    let exists = client
        .query_opt("select 1 from pg_database where datname = 'test'", &[])
        .await
        .map_err(|e| e.to_string())?
        .is_some();
    if !exists {
        client
            .simple_query("create database test")
            .await
            .map_err(|e| e.to_string())?;
    }
    drop(client);
    let _ = conn.await;
    Ok(())
}

/// A tokio-postgres configuration straight to the private server (no proxy).
fn direct_config(db: &str, user: &str) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(PORT)
        .user(user)
        .dbname(db)
        .connect_timeout(Duration::from_secs(1));
    config
}

// ---------------------------------------------------------------------------------------
// The counting proxy.

/// Forwards one pool's connections to the private server and notes when each was opened.
#[derive(Debug)]
struct Proxy {
    port: u16,
    accepted: Arc<Mutex<Vec<Instant>>>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start() -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind a proxy port on 127.0.0.1");
        let port = listener
            .local_addr()
            .expect("a bound listener has an address")
            .port();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                lock(&log).push(Instant::now());
                tokio::spawn(forward(client));
            }
        });
        Self {
            port,
            accepted,
            task,
        }
    }

    /// Connections accepted in `[from, to]`.
    fn accepted_between(&self, from: Instant, to: Instant) -> usize {
        lock(&self.accepted)
            .iter()
            .filter(|t| **t >= from && **t <= to)
            .count()
    }

    fn accepted(&self) -> usize {
        lock(&self.accepted).len()
    }

    /// When each connection after `from` was opened, in ms since `from`.
    fn trace(&self, from: Instant) -> String {
        lock(&self.accepted)
            .iter()
            .filter(|t| **t >= from)
            .map(|t| format!("{:.0}", ms(*t - from)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies bytes both ways; the client is closed at once if the server cannot be reached.
async fn forward(mut client: TcpStream) {
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", PORT)).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------
// The pools.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ours,
    Bb8,
    Deadpool,
    Sqlx,
}

impl Kind {
    const ALL: [Self; 4] = [Self::Ours, Self::Bb8, Self::Deadpool, Self::Sqlx];

    fn name(self) -> &'static str {
        match self {
            Self::Ours => "pool/tokio + PgManager",
            Self::Bb8 => "bb8-postgres 0.9",
            Self::Deadpool => "deadpool-postgres 0.14",
            Self::Sqlx => "sqlx 0.9",
        }
    }

    fn settings(self) -> &'static str {
        match self {
            Self::Ours => {
                "max_size, acquire_timeout, connect_timeout 3 s; defaults otherwise (Check::Ping \
                 on checkout for connections idle > 500 ms, back-off 50..200 ms)"
            }
            Self::Bb8 => {
                "max_size, connection_timeout; defaults otherwise (test_on_check_out, \
                 retry_connection); tokio-postgres connect_timeout=3"
            }
            Self::Deadpool => {
                "max_size, timeouts.wait, timeouts.create 3 s, Runtime::Tokio1, \
                 RecyclingMethod::Fast (default); tokio-postgres connect_timeout=3"
            }
            Self::Sqlx => {
                "max_connections, acquire_timeout; defaults otherwise (test_before_acquire); \
                 no separate connect timeout"
            }
        }
    }
}

type Bb8Manager = bb8_postgres::PostgresConnectionManager<NoTls>;

/// One pool under test.
enum Contender {
    Ours(pool_postgres::TokioPool),
    Bb8(bb8::Pool<Bb8Manager>),
    Deadpool(deadpool_postgres::Pool),
    Sqlx(sqlx::PgPool),
}

/// Why a cycle failed.
enum Failure {
    Acquire(String),
    Query(String),
}

/// An error and its sources, `: `-separated, each source left out when the text so far
/// already says it (tokio-postgres prints `db error` and keeps the server's message in its
/// source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// A libpq-style connection string through the proxy on `port`.
fn conn_string(port: u16, db: &str, user: &str) -> String {
    format!(
        "host=127.0.0.1 port={port} user={user} dbname={db} connect_timeout={}",
        CONNECT_TIMEOUT.as_secs()
    )
}

impl Contender {
    async fn build(
        kind: Kind,
        size: usize,
        port: u16,
        db: &str,
        user: &str,
        wait: Duration,
    ) -> Self {
        let url = conn_string(port, db, user);
        match kind {
            Kind::Ours => {
                let manager =
                    pool_postgres::PgManager::from_url(&url).expect("a valid connection string");
                let pool = pool_tokio::Pool::builder(manager)
                    .max_size(size)
                    .acquire_timeout(Some(wait))
                    .connect_timeout(CONNECT_TIMEOUT)
                    .build()
                    .expect("valid pool settings");
                Self::Ours(pool)
            }
            Kind::Bb8 => {
                let config: tokio_postgres::Config =
                    url.parse().expect("a valid connection string");
                let manager = bb8_postgres::PostgresConnectionManager::new(config, NoTls);
                let pool = bb8::Pool::builder()
                    .max_size(u32::try_from(size).expect("a small pool size"))
                    .connection_timeout(wait)
                    .build_unchecked(manager);
                Self::Bb8(pool)
            }
            Kind::Deadpool => {
                let config: tokio_postgres::Config =
                    url.parse().expect("a valid connection string");
                let manager = deadpool_postgres::Manager::from_config(
                    config,
                    NoTls,
                    deadpool_postgres::ManagerConfig::default(),
                );
                let pool = deadpool_postgres::Pool::builder(manager)
                    .max_size(size)
                    .wait_timeout(Some(wait))
                    .create_timeout(Some(CONNECT_TIMEOUT))
                    .runtime(deadpool_postgres::Runtime::Tokio1)
                    .build()
                    .expect("valid pool settings");
                Self::Deadpool(pool)
            }
            Kind::Sqlx => {
                let options = sqlx::postgres::PgConnectOptions::new_without_pgpass()
                    .host("127.0.0.1")
                    .port(port)
                    .username(user)
                    .database(db);
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(u32::try_from(size).expect("a small pool size"))
                    .acquire_timeout(wait)
                    .connect_lazy_with(options);
                Self::Sqlx(pool)
            }
        }
    }

    /// `get`, `select 1` (simple query protocol), release.
    async fn cycle(&self) -> Result<(), Failure> {
        let acquire = |e: &dyn std::error::Error| Failure::Acquire(chain(e));
        let query = |e: &dyn std::error::Error| Failure::Query(chain(e));
        match self {
            Self::Ours(pool) => {
                let conn = pool.get().await.map_err(|e| acquire(&e))?;
                conn.simple_query("select 1").await.map_err(|e| query(&e))?;
            }
            Self::Bb8(pool) => {
                let conn = pool.get().await.map_err(|e| acquire(&e))?;
                conn.simple_query("select 1").await.map_err(|e| query(&e))?;
            }
            Self::Deadpool(pool) => {
                let conn = pool.get().await.map_err(|e| acquire(&e))?;
                conn.simple_query("select 1").await.map_err(|e| query(&e))?;
            }
            Self::Sqlx(pool) => {
                let mut conn = pool.acquire().await.map_err(|e| acquire(&e))?;
                sqlx::raw_sql("select 1")
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| query(&e))?;
            }
        }
        Ok(())
    }

    async fn close(self) {
        match self {
            Self::Ours(pool) => pool.close(),
            Self::Bb8(pool) => drop(pool),
            Self::Deadpool(pool) => pool.close(),
            Self::Sqlx(pool) => pool.close().await,
        }
    }
}

// ---------------------------------------------------------------------------------------
// One fault run.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Restart,
    Stop3s,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Self::Restart => "restart (pg_ctl restart -m fast)",
            Self::Stop3s => "stop 3 s (pg_ctl stop -m fast, 3 s, start)",
        }
    }
}

/// What one looping task saw.
#[derive(Debug, Default)]
struct TaskLog {
    oks: Vec<Instant>,
    acquire_errors: Vec<Instant>,
    query_errors: Vec<Instant>,
    first_acquire_error: Option<String>,
    first_query_error: Option<String>,
}

/// The probe's attempts: when each ended and whether it got a session.
#[derive(Debug, Default)]
struct ProbeLog {
    attempts: Vec<(Instant, bool)>,
}

impl ProbeLog {
    /// The end of the first failed attempt, the end of the last failed one, and the end of
    /// the first success after it.
    fn outage(&self) -> Option<(Instant, Instant, Instant)> {
        let first_fail = self.attempts.iter().find(|(_, ok)| !ok)?.0;
        let last_fail_idx = self.attempts.iter().rposition(|(_, ok)| !ok)?;
        let back = self.attempts.get(last_fail_idx + 1)?.0;
        Some((first_fail, self.attempts[last_fail_idx].0, back))
    }
}

/// Connects straight to the server every 5 ms until it has failed and then succeeded.
async fn probe(give_up: Instant) -> ProbeLog {
    let config = direct_config("test", "postgres");
    let mut log = ProbeLog::default();
    let mut failed = false;
    while Instant::now() < give_up {
        let ok = matches!(
            tokio::time::timeout(Duration::from_secs(1), config.connect(NoTls)).await,
            Ok(Ok(_))
        );
        log.attempts.push((Instant::now(), ok));
        failed |= !ok;
        if failed && ok {
            break;
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
    log
}

/// The figures of one run.
#[derive(Debug, Clone)]
struct RunResult {
    /// The probe's failures, first to last (ms).
    outage_ms: Option<f64>,
    /// The pool's first success after the probe's last failure, minus the probe's success.
    recovery_ms: Option<f64>,
    /// Connections opened from the fault until the server was back (none without proxy).
    connects_down: Option<usize>,
    connects_total: Option<usize>,
    acquire_errors: usize,
    query_errors: usize,
    first_acquire_error: Option<String>,
    first_query_error: Option<String>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn signed_ms(a: Instant, b: Instant) -> f64 {
    if a >= b {
        ms(a - b)
    } else {
        -ms(b - a)
    }
}

async fn fault_run(
    ctl: &Arc<PgCtl>,
    kind: Kind,
    size: usize,
    fault: Fault,
    direct: bool,
) -> RunResult {
    let proxy = if direct {
        None
    } else {
        Some(Proxy::start().await)
    };
    let port = proxy.as_ref().map_or(PORT, |p| p.port);
    let pool =
        Arc::new(Contender::build(kind, size, port, "test", "postgres", ACQUIRE_TIMEOUT).await);
    let stop = Arc::new(AtomicBool::new(false));
    let base = Instant::now();
    // Nanoseconds since `base` of the latest success, for waiting on the recovery.
    let last_ok = Arc::new(AtomicU64::new(0));
    let mut logs = Vec::with_capacity(TASKS);
    let mut tasks = Vec::with_capacity(TASKS);
    for _ in 0..TASKS {
        let log = Arc::new(Mutex::new(TaskLog::default()));
        logs.push(Arc::clone(&log));
        let (pool, stop, last_ok) = (Arc::clone(&pool), Arc::clone(&stop), Arc::clone(&last_ok));
        tasks.push(tokio::spawn(async move {
            while !stop.load(Relaxed) {
                let result = pool.cycle().await;
                let now = Instant::now();
                {
                    let mut log = lock(&log);
                    match result {
                        Ok(()) => {
                            log.oks.push(now);
                            let nanos = u64::try_from((now - base).as_nanos()).unwrap_or(u64::MAX);
                            last_ok.fetch_max(nanos, Relaxed);
                        }
                        Err(Failure::Acquire(e)) => {
                            log.acquire_errors.push(now);
                            log.first_acquire_error.get_or_insert(e);
                        }
                        Err(Failure::Query(e)) => {
                            log.query_errors.push(now);
                            log.first_query_error.get_or_insert(e);
                        }
                    }
                }
                tokio::time::sleep(PAUSE).await;
            }
        }));
    }
    tokio::time::sleep(WARM_UP).await;

    let t_fault = Instant::now();
    // The probe runs on a runtime of its own, so a pool that keeps the benchmark's runtime
    // busy (a connect storm) cannot delay it.
    let give_up = t_fault + Duration::from_secs(60);
    let probe_thread = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the probe")
            .block_on(probe(give_up))
    });
    let ctl2 = Arc::clone(ctl);
    let fault_done = match fault {
        Fault::Restart => tokio::task::spawn_blocking(move || ctl2.restart()).await,
        Fault::Stop3s => {
            let stopped = tokio::task::spawn_blocking({
                let ctl = Arc::clone(&ctl2);
                move || ctl.stop()
            })
            .await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            match stopped {
                Ok(Ok(())) => tokio::task::spawn_blocking(move || ctl2.start()).await,
                other => other,
            }
        }
    };
    match fault_done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("the fault failed: {e}"),
        Err(e) => panic!("the fault's thread failed: {e}"),
    }
    let probe_log = tokio::task::spawn_blocking(move || probe_thread.join())
        .await
        .expect("joining the probe's thread does not panic")
        .expect("the probe does not panic");
    let outage = probe_log.outage();
    let back = outage.map(|(_, _, back)| back);

    // Wait for the pool's first success after the server is back (a success after the
    // probe's success is one), at most the acquire timeout and a bit; then the tail.
    let wait_from = back.unwrap_or_else(Instant::now);
    let deadline = wait_from + ACQUIRE_TIMEOUT + Duration::from_secs(5);
    let back_nanos = u64::try_from((wait_from - base).as_nanos()).unwrap_or(u64::MAX);
    while last_ok.load(Relaxed) <= back_nanos && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(TAIL).await;
    stop.store(true, Relaxed);
    let grace = Instant::now() + Duration::from_secs(1);
    for task in &tasks {
        while !task.is_finished() && Instant::now() < grace {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    for task in &tasks {
        task.abort();
    }

    if let (Some(proxy), true) = (&proxy, std::env::var_os("FAULTS_TRACE").is_some()) {
        let at =
            |t: Option<Instant>| t.map_or("n/a".to_owned(), |t| format!("{:.0}", ms(t - t_fault)));
        eprintln!(
            "  {} connects (ms after the fault; probe: first failure {}, back {}): {}",
            kind.name(),
            at(outage.map(|o| o.0)),
            at(back),
            proxy.trace(t_fault)
        );
    }
    let mut result = RunResult {
        outage_ms: outage.map(|(first, last, _)| ms(last - first)),
        recovery_ms: None,
        connects_down: proxy
            .as_ref()
            .zip(back)
            .map(|(proxy, back)| proxy.accepted_between(t_fault, back)),
        connects_total: proxy.as_ref().map(Proxy::accepted),
        acquire_errors: 0,
        query_errors: 0,
        first_acquire_error: None,
        first_query_error: None,
    };
    let mut first_ok: Option<Instant> = None;
    for log in &logs {
        let log = lock(log);
        if let Some((_, last_fail, _)) = outage {
            if let Some(t) = log.oks.iter().find(|t| **t > last_fail) {
                first_ok = Some(first_ok.map_or(*t, |f| f.min(*t)));
            }
        }
        result.acquire_errors += log.acquire_errors.iter().filter(|t| **t >= t_fault).count();
        result.query_errors += log.query_errors.iter().filter(|t| **t >= t_fault).count();
        if result.first_acquire_error.is_none() {
            result
                .first_acquire_error
                .clone_from(&log.first_acquire_error);
        }
        if result.first_query_error.is_none() {
            result.first_query_error.clone_from(&log.first_query_error);
        }
    }
    if let (Some(first_ok), Some(back)) = (first_ok, back) {
        result.recovery_ms = Some(signed_ms(first_ok, back));
    }
    drop(logs);
    match Arc::try_unwrap(pool) {
        Ok(pool) => pool.close().await,
        Err(_) => eprintln!("  (a task still holds the pool; it is dropped later)"),
    }
    drop(proxy);
    // Let the closed connections' backends exit before the next run.
    tokio::time::sleep(Duration::from_millis(300)).await;
    result
}

// ---------------------------------------------------------------------------------------
// Fail fast.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BadConfig {
    NoSuchDb,
    NoSuchRole,
}

impl BadConfig {
    fn name(self) -> &'static str {
        match self {
            Self::NoSuchDb => "dbname=nosuchdb",
            Self::NoSuchRole => "user=nosuchrole",
        }
    }

    fn db_user(self) -> (&'static str, &'static str) {
        match self {
            Self::NoSuchDb => ("nosuchdb", "postgres"),
            Self::NoSuchRole => ("test", "nosuchrole"),
        }
    }
}

#[derive(Debug, Clone)]
struct FailFastResult {
    elapsed_ms: f64,
    connects: usize,
    /// The error with its sources, or what happened instead.
    error: String,
}

async fn fail_fast_run(kind: Kind, bad: BadConfig) -> FailFastResult {
    let proxy = Proxy::start().await;
    let (db, user) = bad.db_user();
    let pool = Contender::build(kind, 8, proxy.port, db, user, FAIL_FAST_TIMEOUT).await;
    let t0 = Instant::now();
    let outcome = tokio::time::timeout(FAIL_FAST_TIMEOUT * 3, pool.cycle()).await;
    let elapsed_ms = ms(t0.elapsed());
    let error = match outcome {
        Ok(Ok(())) => "no error: the query succeeded".to_owned(),
        Ok(Err(Failure::Acquire(e))) => e,
        Ok(Err(Failure::Query(e))) => format!("(query) {e}"),
        Err(_) => format!("no answer within {} s", (FAIL_FAST_TIMEOUT * 3).as_secs()),
    };
    let connects = proxy.accepted();
    pool.close().await;
    drop(proxy);
    FailFastResult {
        elapsed_ms,
        connects,
        error,
    }
}

// ---------------------------------------------------------------------------------------
// Statistics and the report.

fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

/// `median [min..max]`, or `n/a`.
fn summary(xs: &[f64], decimals: usize) -> String {
    let Some(m) = median(xs.to_vec()) else {
        return "n/a".to_owned();
    };
    if xs.len() == 1 {
        return format!("{m:.decimals$}");
    }
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{m:.decimals$} [{lo:.decimals$}..{hi:.decimals$}]")
}

/// `x / ours`, both floored at `floor` so that a near-zero figure of this pool gives a
/// finite ratio.
fn ratio(x: Option<f64>, ours: Option<f64>, floor: f64) -> String {
    match (x, ours) {
        (Some(x), Some(o)) => format!("{:.1}x", x.max(floor) / o.max(floor)),
        _ => "n/a".to_owned(),
    }
}

fn fault_table(
    out: &mut String,
    fault: Fault,
    size: usize,
    direct: bool,
    results: &[(Kind, Vec<RunResult>)],
) {
    let _ = writeln!(
        out,
        "\n### {}, max size {size}, {TASKS} tasks, {}\n",
        fault.name(),
        if direct {
            "direct"
        } else {
            "through the proxy"
        }
    );
    let _ = writeln!(
        out,
        "| pool | server down (probe), ms | recovery, ms | vs pool/tokio | connects while down | vs pool/tokio | connects in run | acquire errors | query errors |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let fig = |runs: &[RunResult], f: &dyn Fn(&RunResult) -> Option<f64>| -> Vec<f64> {
        runs.iter().filter_map(f).collect()
    };
    let ours = results
        .iter()
        .find(|(k, _)| *k == Kind::Ours)
        .map(|(_, r)| r.as_slice());
    let ours_rec = ours.and_then(|r| median(fig(r, &|x| x.recovery_ms)));
    let ours_con = ours.and_then(|r| median(fig(r, &|x| x.connects_down.map(|c| c as f64))));
    for (kind, runs) in results {
        let outage = fig(runs, &|x| x.outage_ms);
        let rec = fig(runs, &|x| x.recovery_ms);
        let con = fig(runs, &|x| x.connects_down.map(|c| c as f64));
        let total = fig(runs, &|x| x.connects_total.map(|c| c as f64));
        let acq = fig(runs, &|x| Some(x.acquire_errors as f64));
        let qry = fig(runs, &|x| Some(x.query_errors as f64));
        let recovered = rec.len();
        let rec_text = if recovered < runs.len() {
            format!(
                "{} ({} of {} runs never recovered)",
                summary(&rec, 1),
                runs.len() - recovered,
                runs.len()
            )
        } else {
            summary(&rec, 1)
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            kind.name(),
            summary(&outage, 0),
            rec_text,
            ratio(median(rec.clone()), ours_rec, 1.0),
            summary(&con, 0),
            ratio(median(con.clone()), ours_con, 1.0),
            summary(&total, 0),
            summary(&acq, 0),
            summary(&qry, 0),
        );
    }
    let _ = writeln!(
        out,
        "\nFirst errors (of the first repetition that had one, 100 characters):\n"
    );
    for (kind, runs) in results {
        let acq = runs.iter().find_map(|r| r.first_acquire_error.as_deref());
        let qry = runs.iter().find_map(|r| r.first_query_error.as_deref());
        let short = |e: Option<&str>| {
            e.map_or("none".to_owned(), |e| {
                format!("`{}`", e.chars().take(100).collect::<String>())
            })
        };
        let _ = writeln!(
            out,
            "- {}: acquire: {}; query: {}",
            kind.name(),
            short(acq),
            short(qry)
        );
    }
}

fn fail_fast_table(out: &mut String, results: &[(Kind, BadConfig, Vec<FailFastResult>)]) {
    let _ = writeln!(
        out,
        "\n### Fail fast: one `get()` with a configuration that waiting cannot heal, acquire timeout {} s\n",
        FAIL_FAST_TIMEOUT.as_secs()
    );
    let _ = writeln!(out, "| pool | case | time to error, ms | vs pool/tokio | connects | error (first 100 characters) |");
    let _ = writeln!(out, "|---|---|---:|---:|---:|---|");
    for (kind, bad, runs) in results {
        let times: Vec<f64> = runs.iter().map(|r| r.elapsed_ms).collect();
        let ours = results
            .iter()
            .find(|(k, b, _)| *k == Kind::Ours && b == bad)
            .and_then(|(_, _, r)| median(r.iter().map(|x| x.elapsed_ms).collect()));
        let connects: Vec<f64> = runs.iter().map(|r| r.connects as f64).collect();
        let error = runs
            .first()
            .map_or(String::new(), |r| r.error.chars().take(100).collect())
            .replace('|', "\\|");
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | `{}` |",
            kind.name(),
            bad.name(),
            summary(&times, 1),
            ratio(median(times.clone()), ours, 0.1),
            summary(&connects, 0),
            error
        );
    }
}

// ---------------------------------------------------------------------------------------
// The run.

#[derive(Debug)]
struct Args {
    reps: usize,
    /// The fault scenarios' modes: through the counting proxy (`false`), and straight to the
    /// server (`true`): no connect counts, but a down server refuses the pools' connects
    /// itself (through the proxy they see a connection accepted and closed, which not every
    /// pool treats as a refused one: sqlx retries only a refused connect).
    modes: Vec<bool>,
    fail_fast: bool,
    sizes: Vec<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        reps: 3,
        modes: vec![false, true],
        fail_fast: true,
        sizes: vec![8, 32],
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--reps" => {
                args.reps = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n > 0)
                    .ok_or("--reps needs a positive number")?;
            }
            "--sizes" => {
                args.sizes = it
                    .next()
                    .ok_or("--sizes needs a list such as 8,32")?
                    .split(',')
                    .map(|s| s.parse().map_err(|_| format!("bad size {s:?}")))
                    .collect::<Result<_, _>>()?;
            }
            "--proxy-only" => args.modes = vec![false],
            "--direct-only" => args.modes = vec![true],
            "--no-fail-fast" => args.fail_fast = false,
            "--fail-fast-only" => args.sizes.clear(),
            "-h" | "--help" => {
                return Err(
                    "usage: faults [--reps N (3)] [--sizes 8,32] [--proxy-only | --direct-only] [--no-fail-fast | --fail-fast-only]"
                        .to_owned(),
                );
            }
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    Ok(args)
}

async fn run(ctl: Arc<PgCtl>, args: Args) -> Result<String, String> {
    create_test_db().await?;
    let started = Instant::now();
    let mut out = String::new();
    let _ = writeln!(out, "## Fault benchmark\n");
    let _ = writeln!(
        out,
        "Private PostgreSQL ({}) on 127.0.0.1:{PORT}; {TASKS} tasks per pool, each looping get + `select 1` + release + {} ms pause; acquire \
         timeout {} s; {} repetition(s), pools one after the other, order rotated each \
         repetition; medians with [min..max]. Recovery = the pool's first successful query after \
         the probe's last failed connect, minus the probe's first successful connect after it \
         (probe every {} ms; negative: the pool got through before the probe). Connects while \
         down: connections the pool opened from the fault until the probe got through. Errors: \
         from the fault until {} s after the pool's recovery. Ratios: the pool's median over this \
         pool's median, both floored at 1 (ms or connects). \
         **Through the proxy**: each pool connects through its own counting proxy, which \
         closes the client at once when the server refuses. **Direct**: straight to the \
         server, which refuses connects itself while down; connects not counted.\n",
        ctl.bin.display(),
        PAUSE.as_millis(),
        ACQUIRE_TIMEOUT.as_secs(),
        args.reps,
        PROBE_EVERY.as_millis(),
        TAIL.as_secs(),
    );
    let _ = writeln!(out, "Settings:\n");
    for kind in Kind::ALL {
        let _ = writeln!(out, "- {}: {}", kind.name(), kind.settings());
    }
    for (&size, &direct) in args
        .sizes
        .iter()
        .flat_map(|s| args.modes.iter().map(move |m| (s, m)))
    {
        for fault in [Fault::Restart, Fault::Stop3s] {
            let mut results: Vec<(Kind, Vec<RunResult>)> =
                Kind::ALL.iter().map(|k| (*k, Vec::new())).collect();
            for rep in 0..args.reps {
                for i in 0..Kind::ALL.len() {
                    let idx = (i + rep) % Kind::ALL.len();
                    let kind = Kind::ALL[idx];
                    let r = fault_run(&ctl, kind, size, fault, direct).await;
                    eprintln!(
                        "[{:>5.0} s] {:?} size {size} {} rep {} {:<24} down {:>6} ms, recovery {:>8} ms, connects down {:>5} (run {:>5}), acquire errors {:>5}, query errors {:>4}",
                        started.elapsed().as_secs_f64(),
                        fault,
                        if direct { "direct" } else { "proxy" },
                        rep + 1,
                        kind.name(),
                        r.outage_ms.map_or("n/a".into(), |x| format!("{x:.0}")),
                        r.recovery_ms.map_or("n/a".into(), |x| format!("{x:.1}")),
                        r.connects_down.map_or("n/a".into(), |c| c.to_string()),
                        r.connects_total.map_or("n/a".into(), |c| c.to_string()),
                        r.acquire_errors,
                        r.query_errors,
                    );
                    results[idx].1.push(r);
                }
            }
            fault_table(&mut out, fault, size, direct, &results);
        }
    }
    if !args.fail_fast {
        let _ = writeln!(
            out,
            "\nTotal time: {:.0} s.",
            started.elapsed().as_secs_f64()
        );
        return Ok(out);
    }
    let mut ff: Vec<(Kind, BadConfig, Vec<FailFastResult>)> = Vec::new();
    for bad in [BadConfig::NoSuchDb, BadConfig::NoSuchRole] {
        for kind in Kind::ALL {
            ff.push((kind, bad, Vec::new()));
        }
    }
    for rep in 0..args.reps {
        for entry in &mut ff {
            let r = fail_fast_run(entry.0, entry.1).await;
            eprintln!(
                "[{:>5.0} s] fail fast rep {} {:<24} {:<16} {:>8.1} ms, {} connects: {}",
                started.elapsed().as_secs_f64(),
                rep + 1,
                entry.0.name(),
                entry.1.name(),
                r.elapsed_ms,
                r.connects,
                r.error
            );
            entry.2.push(r);
        }
    }
    fail_fast_table(&mut out, &ff);
    let _ = writeln!(out, "\nThe errors in full (first repetition):\n");
    for (kind, bad, runs) in &ff {
        if let Some(r) = runs.first() {
            let _ = writeln!(out, "- {}, {}: `{}`", kind.name(), bad.name(), r.error);
        }
    }
    let _ = writeln!(
        out,
        "\nTotal time: {:.0} s.",
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let ctl = match PgCtl::detect() {
        Ok(ctl) => Arc::new(ctl),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let instance = match Instance::launch(Arc::clone(&ctl)) {
        Ok(instance) => instance,
        Err(e) => {
            eprintln!("could not start the private instance: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let outcome = runtime.block_on(async {
        tokio::select! {
            report = run(Arc::clone(&ctl), args) => report,
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_owned()),
        }
    });
    drop(runtime);
    drop(instance);
    match outcome {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
