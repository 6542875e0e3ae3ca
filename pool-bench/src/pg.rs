//! The PostgreSQL mode: `select 1` through tokio-postgres via every pool that has a
//! tokio-postgres manager (this pool with the small manager below and with pool-postgres's
//! `PgManager` as a user configures it, bb8-postgres, deadpool-postgres, mobc-postgres,
//! qp-postgres) and sqlx's own pool and driver, plus a baseline of one dedicated client
//! per worker and no pool at all. Each query is timed in three parts: the acquire, the query,
//! the release (dropping the guard); the pool's overhead is acquire + release, reported per
//! query and as a share of a 1 ms query (seed 002 measured 30 % for its patch there). A second
//! run uses `select pg_sleep(0.001)`, a real 1 ms query.
//!
//! Every query is a simple query (`simple_query`; sqlx's `raw_sql`): no named statement, so
//! the same loop runs unchanged through PgBouncer in transaction mode (`--pg-url` pointed at
//! it) for every contender alike.

use std::fmt::Write as _;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use crate::harness::THREADS;
use crate::service::{drive, median, micros, repeat, Lend, Run, Totals};
use crate::Options;

/// A tokio-postgres manager for this pool (pool-bench's own; no dependency on another crate).
#[derive(Debug, Clone)]
pub struct PgManager {
    config: tokio_postgres::Config,
}

impl pool_core::Manager for PgManager {
    type Connection = Client;
    type Error = tokio_postgres::Error;

    async fn connect(&self) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    fn has_broken(&self, conn: &mut Client) -> bool {
        conn.is_closed()
    }
}

/// The pools of the PostgreSQL mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PgPool {
    NoPool,
    Ours,
    OursPg,
    Bb8,
    Deadpool,
    Mobc,
    Qp,
    Fastpool,
    Sqlx,
}

impl PgPool {
    const ALL: [Self; 9] = [
        Self::NoPool,
        Self::Ours,
        Self::OursPg,
        Self::Bb8,
        Self::Deadpool,
        Self::Mobc,
        Self::Qp,
        Self::Fastpool,
        Self::Sqlx,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::NoPool => "no pool (a client per worker)",
            Self::Ours => "pool/tokio",
            Self::OursPg => "pool/tokio + pool-postgres",
            Self::Bb8 => "bb8-postgres 0.9",
            Self::Deadpool => "deadpool-postgres 0.14",
            Self::Mobc => "mobc-postgres 0.9",
            Self::Qp => "qp-postgres 0.1",
            Self::Fastpool => "fastpool 1.1",
            Self::Sqlx => "sqlx 0.9",
        }
    }

    fn config(self) -> &'static str {
        match self {
            Self::NoPool => "each worker owns one client for the whole run",
            Self::Ours => {
                "max_size=size, acquire_timeout=None, check_on_checkout=false, \
                 idle_timeout=None, max_lifetime=None; has_broken = is_closed"
            }
            Self::OursPg => {
                "pool-postgres's PgManager with its defaults (Check::Ping past the pool's \
                 500 ms bypass window, Reset::Rollback, the protocol tracker), \
                 Statements::Unnamed and SslMode::Disable (plaintext, like the others' NoTls); \
                 max_size=size, acquire_timeout=None, the pool's other defaults"
            }
            Self::Bb8 => {
                "max_size=size, test_on_check_out=false, idle_timeout=None, \
                 max_lifetime=None, connection_timeout=1h"
            }
            Self::Deadpool => "max_size=size, RecyclingMethod::Fast (is_closed only)",
            Self::Mobc => {
                "max_open=size, max_idle=size, get_timeout=None, test_on_check_out=false, \
                 max_lifetime=None, max_idle_lifetime=None, health_check_interval=None"
            }
            Self::Qp => "qp_postgres::connect(config, NoTls, size); acquire_unchecked()",
            Self::Fastpool => {
                "bounded pool, PoolConfig::new(size) (Fifo); fastpool publishes no PostgreSQL \
                 manager, so pool-bench's own: connect with NoTls, is_recyclable = is_closed \
                 (like deadpool's RecyclingMethod::Fast)"
            }
            Self::Sqlx => {
                "sqlx's own driver: max_connections=size, test_before_acquire=false, \
                 acquire_timeout=1h, idle_timeout=None, max_lifetime=None; raw_sql"
            }
        }
    }
}

/// The mode's operation: one simple query (`simple_query`; sqlx's `raw_sql`).
pub(crate) struct SimpleQuery(&'static str);

impl<T: Deref<Target = Client> + Send> Run<SimpleQuery> for T {
    async fn run(&mut self, query: &SimpleQuery) -> Result<(), String> {
        self.simple_query(query.0)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// sqlx's guard; its own driver runs the query.
pub(crate) struct SqlxGuard(sqlx::pool::PoolConnection<sqlx::Postgres>);

impl Run<SimpleQuery> for SqlxGuard {
    async fn run(&mut self, query: &SimpleQuery) -> Result<(), String> {
        sqlx::raw_sql(query.0)
            .execute(&mut *self.0)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// pool-postgres's guard derefs to its `PgConnection`; this derefs to the client.
pub(crate) struct PgGuard<'a>(
    pool_tokio::PooledConnection<'a, pool_postgres::PgManager<pool_tokio::Tokio>>,
);

impl Deref for PgGuard<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.0.client()
    }
}

impl Lend<SimpleQuery> for pool_postgres::TokioPool {
    type Guard<'a> = PgGuard<'a>;
    async fn get(&self) -> Result<Self::Guard<'_>, String> {
        pool_tokio::Pool::get(self)
            .await
            .map(PgGuard)
            .map_err(|e| e.to_string())
    }
}

type Bb8Manager = bb8_postgres::PostgresConnectionManager<NoTls>;
type MobcManager = mobc_postgres::PgConnectionManager<NoTls>;
type QpManager = qp_postgres::PgConnManager<NoTls>;

impl Lend<SimpleQuery> for pool_tokio::Pool<PgManager> {
    type Guard<'a> = pool_tokio::PooledConnection<'a, PgManager>;
    async fn get(&self) -> Result<Self::Guard<'_>, String> {
        pool_tokio::Pool::get(self).await.map_err(|e| e.to_string())
    }
}

impl Lend<SimpleQuery> for bb8::Pool<Bb8Manager> {
    type Guard<'a> = bb8::PooledConnection<'a, Bb8Manager>;
    async fn get(&self) -> Result<Self::Guard<'_>, String> {
        bb8::Pool::get(self).await.map_err(|e| e.to_string())
    }
}

/// deadpool-postgres' guard derefs to a wrapper of the client; this derefs to the client.
pub(crate) struct DeadpoolGuard(deadpool_postgres::Client);

impl Deref for DeadpoolGuard {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.0
    }
}

impl Lend<SimpleQuery> for deadpool_postgres::Pool {
    type Guard<'a> = DeadpoolGuard;
    async fn get(&self) -> Result<Self::Guard<'_>, String> {
        deadpool_postgres::Pool::get(self)
            .await
            .map(DeadpoolGuard)
            .map_err(|e| e.to_string())
    }
}

impl Lend<SimpleQuery> for mobc::Pool<MobcManager> {
    type Guard<'a> = mobc::Connection<MobcManager>;
    async fn get(&self) -> Result<Self::Guard<'_>, String> {
        mobc::Pool::get(self).await.map_err(|e| e.to_string())
    }
}

impl Lend<SimpleQuery> for qp::Pool<QpManager> {
    type Guard<'a> = qp::Pooled<'a, QpManager>;
    async fn get(&self) -> Result<Self::Guard<'_>, String> {
        self.acquire_unchecked().await.map_err(|e| e.to_string())
    }
}

/// fastpool 1.1.2 marks itself deprecated; see `contenders.rs`.
#[allow(deprecated)]
mod fastpool_pg {
    use std::sync::Arc;

    use tokio_postgres::{Client, NoTls};

    use super::SimpleQuery;
    use crate::service::Lend;

    /// A tokio-postgres manager for fastpool (it publishes none): connect, and recycle a
    /// client unless it is closed.
    pub(super) struct Manager(tokio_postgres::Config);

    impl fastpool::ManageObject for Manager {
        type Object = Client;
        type Error = tokio_postgres::Error;

        async fn create(&self) -> Result<Client, tokio_postgres::Error> {
            let (client, connection) = self.0.connect(NoTls).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(client)
        }

        async fn is_recyclable(
            &self,
            client: &mut Client,
            _: &fastpool::ObjectStatus,
        ) -> Result<(), tokio_postgres::Error> {
            match client.is_closed() {
                // tokio-postgres's errors cannot be built outside it: a closed client's query
                // fails at once with "connection closed", which detaches it.
                true => client.simple_query("").await.map(drop),
                false => Ok(()),
            }
        }
    }

    /// fastpool's bounded pool; its `get` takes the pool by `&Arc`.
    pub(super) struct FastpoolPg(Arc<fastpool::bounded::Pool<Manager>>);

    impl FastpoolPg {
        pub(super) fn new(config: tokio_postgres::Config, size: usize) -> Self {
            let pool_config = fastpool::bounded::PoolConfig::new(size)
                .with_queue_strategy(fastpool::QueueStrategy::Fifo);
            Self(fastpool::bounded::Pool::new(pool_config, Manager(config)))
        }
    }

    impl Lend<SimpleQuery> for FastpoolPg {
        type Guard<'a> = fastpool::bounded::Object<Manager>;
        async fn get(&self) -> Result<Self::Guard<'_>, String> {
            self.0.get().await.map_err(|e| e.to_string())
        }
    }
}

impl Lend<SimpleQuery> for sqlx::PgPool {
    type Guard<'a> = SqlxGuard;
    async fn get(&self) -> Result<Self::Guard<'_>, String> {
        self.acquire()
            .await
            .map(SqlxGuard)
            .map_err(|e| e.to_string())
    }
}

/// The no-pool baseline: a client owned by one worker; "acquiring" it is borrowing it.
struct Owned(Client);

impl Lend<SimpleQuery> for Owned {
    type Guard<'a> = &'a Client;
    async fn get(&self) -> Result<Self::Guard<'_>, String> {
        Ok(&self.0)
    }
}

async fn run_one(
    which: PgPool,
    config: &tokio_postgres::Config,
    workers: usize,
    size: usize,
    sql: &'static str,
    window: Duration,
) -> Result<Totals, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let hour = Duration::from_secs(3600);
    match which {
        PgPool::NoPool => {
            let mut owned = Vec::new();
            for _ in 0..workers {
                let (client, connection) = config.connect(NoTls).await.map_err(|e| err(&e))?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                owned.push(Arc::new(Owned(client)));
            }
            drive(owned, 0, SimpleQuery(sql), window).await
        }
        PgPool::Ours => {
            let pool = pool_tokio::Pool::builder(PgManager {
                config: config.clone(),
            })
            .max_size(size)
            .acquire_timeout(None)
            .check_on_checkout(false)
            .idle_timeout(None)
            .max_lifetime(None)
            .build()
            .map_err(|e| err(&e))?;
            drive(repeat(pool, workers), size, SimpleQuery(sql), window).await
        }
        PgPool::OursPg => {
            // Plaintext like every other contender here (they connect with `NoTls`); the
            // manager's default, `sslmode=prefer`, would negotiate TLS with a server that has it.
            let manager = pool_postgres::PgManager::new(config.clone())
                .statements(pool_postgres::Statements::Unnamed)
                .ssl_mode(pool_postgres::SslMode::Disable);
            let pool = pool_tokio::Pool::builder(manager)
                .max_size(size)
                .acquire_timeout(None)
                .build()
                .map_err(|e| err(&e))?;
            drive(repeat(pool, workers), size, SimpleQuery(sql), window).await
        }
        PgPool::Bb8 => {
            let manager = bb8_postgres::PostgresConnectionManager::new(config.clone(), NoTls);
            let pool = bb8::Pool::builder()
                .max_size(size as u32)
                .test_on_check_out(false)
                .idle_timeout(None)
                .max_lifetime(None)
                .connection_timeout(hour)
                .build(manager)
                .await
                .map_err(|e| err(&e))?;
            drive(repeat(pool, workers), size, SimpleQuery(sql), window).await
        }
        PgPool::Deadpool => {
            let manager = deadpool_postgres::Manager::from_config(
                config.clone(),
                NoTls,
                deadpool_postgres::ManagerConfig {
                    recycling_method: deadpool_postgres::RecyclingMethod::Fast,
                },
            );
            let pool = deadpool_postgres::Pool::builder(manager)
                .max_size(size)
                .build()
                .map_err(|e| err(&e))?;
            drive(repeat(pool, workers), size, SimpleQuery(sql), window).await
        }
        PgPool::Mobc => {
            let manager = mobc_postgres::PgConnectionManager::new(config.clone(), NoTls);
            let pool = crate::contenders::mobc_builder(size).build(manager);
            drive(repeat(pool, workers), size, SimpleQuery(sql), window).await
        }
        PgPool::Qp => {
            let pool = qp_postgres::connect(config.clone(), NoTls, size);
            drive(repeat(pool, workers), size, SimpleQuery(sql), window).await
        }
        PgPool::Fastpool => {
            let pool = fastpool_pg::FastpoolPg::new(config.clone(), size);
            drive(repeat(pool, workers), size, SimpleQuery(sql), window).await
        }
        PgPool::Sqlx => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(u32::try_from(size).map_err(|e| err(&e))?)
                .test_before_acquire(false)
                .acquire_timeout(hour)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_lazy_with(sqlx_options(config));
            drive(repeat(pool, workers), size, SimpleQuery(sql), window).await
        }
    }
}

/// The same server, user, password and database for sqlx (its own options type).
fn sqlx_options(config: &tokio_postgres::Config) -> sqlx::postgres::PgConnectOptions {
    let mut o = sqlx::postgres::PgConnectOptions::new_without_pgpass();
    match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => o = o.host(host),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(dir)) => o = o.socket(dir),
        None => {}
    }
    if let Some(&port) = config.get_ports().first() {
        o = o.port(port);
    }
    if let Some(user) = config.get_user() {
        o = o.username(user);
    }
    if let Some(password) = config.get_password() {
        o = o.password(&String::from_utf8_lossy(password));
    }
    if let Some(db) = config.get_dbname() {
        o = o.database(db);
    }
    o.ssl_mode(sqlx::postgres::PgSslMode::Disable)
}

/// Runs the PostgreSQL mode and returns its markdown report: against `--pg-url`, then (with
/// `--pg-bouncer-url`) through PgBouncer, and a table of each pool's throughput through
/// PgBouncer as a share of its direct throughput. With `--pg-reps N` every cell runs N
/// times (all cells of a repetition, direct then through PgBouncer, before the next
/// repetition) and the run with the median throughput is reported.
///
/// # Errors
/// A message if the database cannot be reached.
pub fn run(o: &Options) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(THREADS)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let window = if o.quick {
        Duration::from_millis(400)
    } else {
        Duration::from_secs(2)
    };
    let mut targets = vec![(o.pg_url.as_str(), "")];
    if let Some(url) = &o.pg_bouncer_url {
        targets.push((url.as_str(), " through PgBouncer"));
    }
    rt.block_on(async {
        let mut versions = Vec::new();
        for (url, _) in &targets {
            versions.push(server_version(url).await?);
        }
        // Per target, per cell: the runs of every repetition.
        let mut runs: Vec<Vec<(Cell, Vec<Totals>)>> = targets.iter().map(|_| Vec::new()).collect();
        for rep in 0..o.pg_reps {
            for (t, (url, title)) in targets.iter().enumerate() {
                let config: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
                for (sql, workers_list) in QUERIES {
                    for &workers in workers_list {
                        for p in PgPool::ALL {
                            eprint!(
                                "\r\x1b[2KPostgreSQL{title} (repetition {}/{}): {sql}, {workers} \
                                 workers, {}",
                                rep + 1,
                                o.pg_reps,
                                p.name()
                            );
                            let cell = (sql, workers, p);
                            let result = run_one(p, &config, workers, SIZE, sql, window).await;
                            let totals = result.unwrap_or_else(Totals::failed);
                            match runs[t].iter_mut().find(|(c, _)| *c == cell) {
                                Some((_, v)) => v.push(totals),
                                None => runs[t].push((cell, vec![totals])),
                            }
                        }
                    }
                }
            }
        }
        eprintln!("\r\x1b[2KPostgreSQL mode done");
        let mut out = String::new();
        let mut medians = Vec::new();
        for (t, (url, title)) in targets.iter().enumerate() {
            let cells: Vec<(Cell, Totals)> = runs[t]
                .drain(..)
                .map(|(cell, v)| (cell, median(v)))
                .collect();
            out.push_str(&report(url, title, &versions[t], o.pg_reps, window, &cells));
            medians.push(cells);
        }
        if let (Some(direct), Some(bounced)) = (medians.first(), medians.get(1)) {
            let _ = writeln!(
                out,
                "\n### Through PgBouncer as a share of direct\n\nQueries/s (median of {} runs) \
                 through `{}` and straight to `{}`, measured in this run.\n\n| query | workers | \
                 pool | direct q/s | through PgBouncer q/s | share |\n|---|---|---|---|---|---|",
                o.pg_reps, targets[1].0, targets[0].0
            );
            for ((sql, workers, p), d) in direct {
                if let Some((_, b)) = bounced.iter().find(|(c, _)| *c == (sql, *workers, *p)) {
                    let (d, b) = (d.per_second(window), b.per_second(window));
                    let _ = writeln!(
                        out,
                        "| `{sql}` | {workers} | {} | {d:.0} | {b:.0} | {:.0} % |",
                        p.name(),
                        100.0 * b / d.max(1.0)
                    );
                }
            }
        }
        Ok(out)
    })
}

/// The pool size of every run.
const SIZE: usize = 16;

/// The queries, each with its worker counts.
const QUERIES: [(&str, &[usize]); 2] = [
    ("select 1", &[1, 16, 64]),
    ("select pg_sleep(0.001)", &[1, 16]),
];

/// One cell of the mode: query, workers, pool.
type Cell = (&'static str, usize, PgPool);

/// The server's version, as it reports it (through a pooler too).
async fn server_version(url: &str) -> Result<String, String> {
    let config: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| format!("cannot connect ({url}): {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let rows = client
        .simple_query("show server_version")
        .await
        .map_err(|e| format!("show server_version ({url}): {e}"))?;
    Ok(rows
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default())
}

/// The markdown of one target's cells (each the median run).
fn report(
    url: &str,
    title: &str,
    version: &str,
    reps: usize,
    window: Duration,
    cells: &[(Cell, Totals)],
) -> String {
    let mut out = format!(
        "## PostgreSQL mode{title}\n\nPostgreSQL {version} at `{url}`; tokio multi-thread \
         runtime, {THREADS} workers; pool size {SIZE}; {window:?} per run; each cell the run \
         with the median throughput of {reps}; each query timed as acquire + query + release, \
         where *overhead* = acquire + release (mean per query). Configurations:\n\n"
    );
    for p in PgPool::ALL {
        let _ = writeln!(out, "- `{}`: {}", p.name(), p.config());
    }
    for (sql, _) in QUERIES {
        let _ = writeln!(
            out,
            "\n### `{sql}`{title}\n\n| workers | pool | queries/s | query µs (mean) | acquire µs \
             | release µs | overhead µs | overhead / 1 ms | overhead / this query | \
             acquire p99 µs | errors | hung workers |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for ((_, workers, p), t) in cells.iter().filter(|((s, _, _), _)| *s == sql) {
            let n = t.ops.max(1) as f64;
            let overhead = (micros(t.acquire) + micros(t.release)) / n;
            let query = micros(t.op) / n;
            let _ = writeln!(
                out,
                "| {workers} | {} | {:.0} | {query:.1} | {:.2} | {:.2} | {overhead:.2} | \
                 {:.2} % | {:.2} % | {:.1} | {} | {} |",
                p.name(),
                t.per_second(window),
                micros(t.acquire) / n,
                micros(t.release) / n,
                overhead / 1000.0 * 100.0,
                overhead / query * 100.0,
                micros(t.waits.quantile(0.99)),
                t.errors_cell(),
                t.stuck
            );
        }
    }
    out.push_str(
        "\nThe no-pool row's \"acquire\" and \"release\" borrow a client the worker owns: \
         the floor of the timing itself. With workers > size, acquire includes waiting \
         for a connection.\n",
    );
    out
}
