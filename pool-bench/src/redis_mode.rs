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
use std::ops::DerefMut;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};

use crate::harness::THREADS;
use crate::service::{drive, median, micros, repeat, Lend, Run, Totals};
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

/// The mode's operation: `GET` of the mode's key.
pub(crate) struct Get(redis::Cmd);

impl<T: DerefMut<Target: ConnectionLike + Send + Sized> + Send> Run<Get> for T {
    async fn run(&mut self, get: &Get) -> Result<(), String> {
        get.0
            .query_async::<Option<String>>(&mut **self)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

type Ours = pool_redis::TokioPool;

impl Lend<Get> for Ours {
    type Guard<'a> = pool_tokio::PooledConnection<'a, pool_redis::RedisManager<pool_tokio::Tokio>>;
    async fn get(&self) -> Result<Self::Guard<'_>, String> {
        pool_tokio::Pool::get(self).await.map_err(|e| e.to_string())
    }
}

impl Lend<Get> for bb8::Pool<bb8_redis::RedisConnectionManager> {
    type Guard<'a> = bb8::PooledConnection<'a, bb8_redis::RedisConnectionManager>;
    async fn get(&self) -> Result<Self::Guard<'_>, String> {
        bb8::Pool::get(self).await.map_err(|e| e.to_string())
    }
}

impl Lend<Get> for deadpool_redis::Pool {
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

impl Lend<Get> for Owned {
    type Guard<'a> = tokio::sync::MutexGuard<'a, MultiplexedConnection>;
    async fn get(&self) -> Result<Self::Guard<'_>, String> {
        Ok(self.0.lock().await)
    }
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
    let get = || Get(redis::Cmd::get(key));
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
            drive(owned, 0, get(), window).await
        }
        RedisPool::Ours => {
            let manager = pool_redis::RedisManager::from_url(url).map_err(|e| err(&e))?;
            let pool = pool_tokio::Pool::builder(manager)
                .max_size(size)
                .acquire_timeout(None)
                .build()
                .map_err(|e| err(&e))?;
            drive(repeat(pool, workers), size, get(), window).await
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
            drive(repeat(pool, workers), size, get(), window).await
        }
        RedisPool::Deadpool => {
            let mut config = deadpool_redis::Config::from_url(url);
            config.pool = Some(deadpool_redis::PoolConfig::new(size));
            let pool = config
                .create_pool(Some(deadpool_redis::Runtime::Tokio1))
                .map_err(|e| err(&e))?;
            drive(repeat(pool, workers), size, get(), window).await
        }
    }
}

/// The pool size of every run.
const SIZE: usize = 16;

/// The worker counts.
const WORKERS: [usize; 3] = [1, 16, 64];

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
                    let totals = result.unwrap_or_else(Totals::failed);
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
            .map(|(cell, v)| (cell, median(v)))
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
        let n = t.ops.max(1) as f64;
        let overhead = (micros(t.acquire) + micros(t.release)) / n;
        let command = micros(t.op) / n;
        let _ = writeln!(
            out,
            "| {workers} | {} | {:.0} | {command:.1} | {:.2} | {:.2} | {overhead:.2} | {:.1} % | \
             {:.1} | {} | {} |",
            p.name(),
            t.per_second(window),
            micros(t.acquire) / n,
            micros(t.release) / n,
            overhead / command.max(f64::MIN_POSITIVE) * 100.0,
            micros(t.waits.quantile(0.99)),
            t.errors_cell(),
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
