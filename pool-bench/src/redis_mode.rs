//! The Redis mode: `GET` of one key through every pool that has a Redis manager on the redis
//! crate (this pool with `pool-redis`'s `RedisManager`, bb8-redis, deadpool-redis), each as a
//! user configures it, plus a baseline of one dedicated connection per worker and no pool at
//! all. Each command is timed in three parts: the acquire, the command, the release (dropping
//! the guard); the pool's overhead is acquire + release.
//!
//! Every pool lends the redis crate's `MultiplexedConnection` (pool-redis wraps it in its
//! `RedisConnection`), so the rows differ only in what each pool does around the command:
//! bb8-redis `PING`s on every checkout by default (`test_on_check_out`), deadpool-redis
//! runs `UNWATCH` + `PING` on every checkout (its recycle, not configurable), pool-redis
//! `PING`s only past the pool's 500 ms bypass window and costs nothing at a clean checkin.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};

use crate::harness::THREADS;
use crate::stats::Histogram;
use crate::Options;

/// The pools of the Redis mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RedisPool {
    NoPool,
    Ours,
    Bb8,
    Bb8Unchecked,
    Deadpool,
}

impl RedisPool {
    const ALL: [Self; 5] = [
        Self::NoPool,
        Self::Ours,
        Self::Bb8,
        Self::Bb8Unchecked,
        Self::Deadpool,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::NoPool => "no pool (a connection per worker)",
            Self::Ours => "pool/tokio + pool-redis",
            Self::Bb8 => "bb8-redis 0.26",
            Self::Bb8Unchecked => "bb8-redis 0.26, unchecked",
            Self::Deadpool => "deadpool-redis 0.23",
        }
    }

    fn config(self) -> &'static str {
        match self {
            Self::NoPool => "each worker owns one MultiplexedConnection for the whole run",
            Self::Ours => {
                "pool-redis's RedisManager with its defaults (PING past the pool's 500 ms \
                 bypass window, the session model's reset only when needed); max_size=size, \
                 acquire_timeout=None, the pool's other defaults"
            }
            Self::Bb8 => {
                "max_size=size, connection_timeout=1h, its defaults otherwise \
                 (test_on_check_out=true: a PING per checkout)"
            }
            Self::Bb8Unchecked => "max_size=size, connection_timeout=1h, test_on_check_out=false",
            Self::Deadpool => {
                "max_size=size, its defaults (its recycle runs UNWATCH + PING on every \
                 checkout)"
            }
        }
    }
}

/// What the workers of one run add up to.
#[derive(Debug, Default)]
struct Totals {
    commands: u64,
    acquire: Duration,
    release: Duration,
    command: Duration,
    waits: Histogram,
    errors: u64,
    first_error: Option<String>,
    /// Workers still waiting 2 s after the window: hung.
    stuck: usize,
}

/// A pool the Redis mode can drive.
trait Source: Send + Sync + 'static {
    /// The guard of a lent connection.
    type Guard<'a>: std::ops::DerefMut<Target: ConnectionLike + Send + Sized> + Send
    where
        Self: 'a;

    /// Acquires a connection; errors become messages.
    fn get(&self) -> impl Future<Output = Result<Self::Guard<'_>, String>> + Send;
}

type Ours = pool_redis::TokioPool;

impl Source for Ours {
    type Guard<'a> = pool_tokio::PooledConnection<'a, pool_redis::RedisManager<pool_tokio::Tokio>>;
    async fn get(&self) -> Result<Self::Guard<'_>, String> {
        pool_tokio::Pool::get(self).await.map_err(|e| e.to_string())
    }
}

impl Source for bb8::Pool<bb8_redis::RedisConnectionManager> {
    type Guard<'a> = bb8::PooledConnection<'a, bb8_redis::RedisConnectionManager>;
    async fn get(&self) -> Result<Self::Guard<'_>, String> {
        bb8::Pool::get(self).await.map_err(|e| e.to_string())
    }
}

impl Source for deadpool_redis::Pool {
    type Guard<'a> = deadpool_redis::Connection;
    async fn get(&self) -> Result<Self::Guard<'_>, String> {
        deadpool_redis::Pool::get(self)
            .await
            .map_err(|e| e.to_string())
    }
}

/// The no-pool baseline: a connection owned by one worker; "acquiring" it is locking it (no
/// other task ever contends).
struct Owned(tokio::sync::Mutex<MultiplexedConnection>);

impl Source for Owned {
    type Guard<'a> = tokio::sync::MutexGuard<'a, MultiplexedConnection>;
    async fn get(&self) -> Result<Self::Guard<'_>, String> {
        Ok(self.0.lock().await)
    }
}

/// One worker's loop: acquire, `GET key`, release, each timed, until `until`.
async fn work<P: Source>(pool: Arc<P>, key: String, until: Instant, totals: Arc<Mutex<Totals>>) {
    let mut t = Totals::default();
    let get = redis::Cmd::get(&key);
    while Instant::now() < until {
        let t0 = Instant::now();
        let got = pool.get().await;
        let t1 = Instant::now();
        let mut conn = match got {
            Ok(conn) => conn,
            Err(e) => {
                t.errors += 1;
                t.first_error.get_or_insert(e);
                break;
            }
        };
        let result: redis::RedisResult<Option<String>> = get.query_async(&mut *conn).await;
        let t2 = Instant::now();
        drop(conn);
        let t3 = Instant::now();
        if let Err(e) = result {
            t.errors += 1;
            t.first_error.get_or_insert(e.to_string());
            break;
        }
        t.commands += 1;
        t.acquire += t1 - t0;
        t.command += t2 - t1;
        t.release += t3 - t2;
        t.waits.record((t1 - t0).as_nanos() as u64);
    }
    let mut all = totals.lock().unwrap_or_else(PoisonError::into_inner);
    all.commands += t.commands;
    all.acquire += t.acquire;
    all.command += t.command;
    all.release += t.release;
    all.waits.merge(&t.waits);
    all.errors += t.errors;
    if all.first_error.is_none() {
        all.first_error = t.first_error;
    }
}

/// Warms the pools up (`size` connections held at once, then given back), runs one worker
/// per entry of `pools` until the window ends, adds them up.
async fn drive<P: Source>(
    pools: Vec<Arc<P>>,
    size: usize,
    key: &str,
    window: Duration,
) -> Result<Totals, String> {
    if let Some(pool) = pools.first() {
        let mut held = Vec::with_capacity(size);
        for _ in 0..size {
            held.push(pool.get().await?);
        }
    }
    let totals = Arc::new(Mutex::new(Totals::default()));
    let until = Instant::now() + window;
    let handles: Vec<_> = pools
        .into_iter()
        .map(|pool| tokio::spawn(work(pool, key.to_owned(), until, Arc::clone(&totals))))
        .collect();
    let mut stuck = 0;
    let grace = tokio::time::Instant::from_std(until + Duration::from_secs(2));
    for h in handles {
        let abort = h.abort_handle();
        if tokio::time::timeout_at(grace, h).await.is_err() {
            abort.abort();
            stuck += 1;
        }
    }
    let mut t = totals.lock().unwrap_or_else(PoisonError::into_inner);
    t.stuck = stuck;
    Ok(std::mem::take(&mut *t))
}

/// `workers` handles of one pool.
fn repeat<P>(pool: P, workers: usize) -> Vec<Arc<P>> {
    let pool = Arc::new(pool);
    (0..workers).map(|_| Arc::clone(&pool)).collect()
}

async fn run_one(
    which: RedisPool,
    url: &str,
    workers: usize,
    size: usize,
    key: &str,
    window: Duration,
) -> Result<Totals, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let hour = Duration::from_secs(3600);
    match which {
        RedisPool::NoPool => {
            let client = redis::Client::open(url).map_err(|e| err(&e))?;
            let mut owned = Vec::new();
            for _ in 0..workers {
                let conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| err(&e))?;
                owned.push(Arc::new(Owned(tokio::sync::Mutex::new(conn))));
            }
            drive(owned, 0, key, window).await
        }
        RedisPool::Ours => {
            let manager = pool_redis::RedisManager::from_url(url).map_err(|e| err(&e))?;
            let pool = pool_tokio::Pool::builder(manager)
                .max_size(size)
                .acquire_timeout(None)
                .build()
                .map_err(|e| err(&e))?;
            drive(repeat(pool, workers), size, key, window).await
        }
        RedisPool::Bb8 | RedisPool::Bb8Unchecked => {
            let manager = bb8_redis::RedisConnectionManager::new(url).map_err(|e| err(&e))?;
            let pool = bb8::Pool::builder()
                .max_size(size as u32)
                .connection_timeout(hour)
                .test_on_check_out(which == RedisPool::Bb8)
                .build(manager)
                .await
                .map_err(|e| err(&e))?;
            drive(repeat(pool, workers), size, key, window).await
        }
        RedisPool::Deadpool => {
            let mut config = deadpool_redis::Config::from_url(url);
            config.pool = Some(deadpool_redis::PoolConfig::new(size));
            let pool = config
                .create_pool(Some(deadpool_redis::Runtime::Tokio1))
                .map_err(|e| err(&e))?;
            drive(repeat(pool, workers), size, key, window).await
        }
    }
}

/// The pool size of every run.
const SIZE: usize = 16;

/// The worker counts.
const WORKERS: [usize; 3] = [1, 16, 64];

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn per_second(t: &Totals, window: Duration) -> f64 {
    t.commands as f64 / window.as_secs_f64()
}

/// Runs the Redis mode against `--redis-url` and returns its markdown report. With
/// `--redis-reps N` every cell runs N times (all cells of a repetition before the next) and
/// the run with the median throughput is reported.
///
/// # Errors
/// A message if the server cannot be reached.
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
    let url = o.redis_url.as_str();
    rt.block_on(async {
        let client = redis::Client::open(url).map_err(|e| format!("{url}: {e}"))?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| format!("cannot connect ({url}): {e}"))?;
        let key = format!("pool-bench:{}", std::process::id());
        let () = redis::cmd("SET")
            .arg(&key)
            .arg("a value of some thirty bytes...")
            .arg("EX")
            .arg(600)
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("SET ({url}): {e}"))?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("INFO ({url}): {e}"))?;
        let version = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("?")
            .trim()
            .to_owned();
        let mut runs: Vec<((usize, RedisPool), Vec<Totals>)> = Vec::new();
        for rep in 0..o.redis_reps {
            for workers in WORKERS {
                for p in RedisPool::ALL {
                    eprint!(
                        "\r\x1b[2KRedis (repetition {}/{}): GET, {workers} workers, {}",
                        rep + 1,
                        o.redis_reps,
                        p.name()
                    );
                    let result = run_one(p, url, workers, SIZE, &key, window).await;
                    let totals = result.unwrap_or_else(|e| Totals {
                        errors: 1,
                        first_error: Some(e),
                        ..Totals::default()
                    });
                    match runs.iter_mut().find(|(c, _)| *c == (workers, p)) {
                        Some((_, v)) => v.push(totals),
                        None => runs.push(((workers, p), vec![totals])),
                    }
                }
            }
        }
        eprintln!("\r\x1b[2KRedis mode done");
        let cells: Vec<((usize, RedisPool), Totals)> = runs
            .into_iter()
            .map(|(cell, mut v)| {
                v.sort_by_key(|t| t.commands);
                let median = v.swap_remove(v.len() / 2);
                (cell, median)
            })
            .collect();
        let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(&key).query_async(&mut conn).await;
        Ok(report(url, &version, o.redis_reps, window, &cells))
    })
}

/// The markdown of the mode's cells (each the median run).
fn report(
    url: &str,
    version: &str,
    reps: usize,
    window: Duration,
    cells: &[((usize, RedisPool), Totals)],
) -> String {
    let mut out = format!(
        "## Redis mode\n\nRedis {version} at `{url}`; `GET` of one 30-byte key; tokio \
         multi-thread runtime, {THREADS} workers; pool size {SIZE}; {window:?} per run; each \
         cell the run with the median throughput of {reps}; each command timed as acquire + \
         command + release, where *overhead* = acquire + release (mean per command). \
         Configurations:\n\n"
    );
    for p in RedisPool::ALL {
        let _ = writeln!(out, "- `{}`: {}", p.name(), p.config());
    }
    let _ = writeln!(
        out,
        "\n| workers | pool | commands/s | command µs (mean) | acquire µs | release µs | \
         overhead µs | overhead / this command | acquire p99 µs | errors | hung workers |\n\
         |---|---|---|---|---|---|---|---|---|---|---|"
    );
    for ((workers, p), t) in cells {
        let n = t.commands.max(1) as f64;
        let overhead = (micros(t.acquire) + micros(t.release)) / n;
        let command = micros(t.command) / n;
        let _ = writeln!(
            out,
            "| {workers} | {} | {:.0} | {command:.1} | {:.2} | {:.2} | {overhead:.2} | {:.1} % | \
             {:.1} | {} | {} |",
            p.name(),
            per_second(t, window),
            micros(t.acquire) / n,
            micros(t.release) / n,
            overhead / command.max(f64::MIN_POSITIVE) * 100.0,
            micros(t.waits.quantile(0.99)),
            match &t.first_error {
                Some(e) => format!("{} ({e})", t.errors),
                None => t.errors.to_string(),
            },
            t.stuck
        );
    }
    out.push_str(
        "\nThe no-pool row's \"acquire\" and \"release\" lock a connection only its worker \
         uses: the floor of the timing itself. With workers > size, acquire includes waiting \
         for a connection; a pool's checkout check (bb8's, deadpool's recycle) counts in \
         acquire.\n",
    );
    out
}
