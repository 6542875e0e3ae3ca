//! The Redis suite: the pool and `pool-redis` against a real Redis server on every runtime,
//! compiled once per adapter by [`redis!`](crate::redis!) (in `tests/redis_*.rs`).
//!
//! The server's URL comes from `POOL_TEST_REDIS_URL`, by default the local server
//! ([`DEFAULT_URL`]). Only when no server answers does every test print a `SKIPPED redis
//! test ...` line to stderr and return, except under CI (`CI=true`), where that is a
//! failure.
//!
//! Each test names its connections (`CLIENT SETNAME`) and its keys with a prefix of its own,
//! so it counts (and kills) only its own clients in `CLIENT LIST` while the others run. The
//! shared server is never restarted.
//!
//! Timing claims are checked with wide margins, and the measured figures are printed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

pub use crate::support::report;
use crate::support::{sleep, spawn, within};
use futures::future::{join_all, select, Either};
use futures::FutureExt;
use pool_core::{Builder, Manager, Pool};
use pool_redis::redis as rc;
use pool_redis::{RedisConnection, RedisManager, RedisRuntime};
use rc::{RedisResult, Value};

/// The variable that holds the server's URL.
pub const URL_VAR: &str = "POOL_TEST_REDIS_URL";

/// The server the suite uses when [`URL_VAR`] is not set: the local one.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379/";

/// The URL of the server under test: [`URL_VAR`], or [`DEFAULT_URL`].
pub fn redis_url() -> String {
    std::env::var(URL_VAR).unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// Generates one `#[test]` per Redis scenario for runtime `$rt`, each run to completion by
/// `$block_on`.
#[macro_export]
macro_rules! redis {
    ($rt:ty, $block_on:path) => {
        $crate::redis!(@tests $rt, $block_on;
            seed_003_pool_of_two_serves_three_blocked_clients_in_two_seconds,
            forgotten_connections_do_not_starve_the_others,
            killed_idle_connection_is_replaced_and_the_next_borrower_served,
            killed_connection_in_use_is_closed_at_checkin_and_replaced,
            multi_left_open_is_discarded,
            watch_left_is_unwatched,
            select_left_is_restored_to_the_configured_database,
            subscribe_mode_closes_the_connection,
            dropped_blocking_command_closes_the_connection_and_frees_the_server,
            dropped_blocking_command_within_the_drain_is_drained_and_the_connection_kept,
            dropped_quick_command_is_drained_and_the_connection_kept,
            clean_checkins_need_no_reset,
            connect_errors_classify_and_credentials_stay_hidden,
        );
    };
    (@tests $rt:ty, $block_on:path; $($name:ident),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                $block_on($crate::redis::$name::<$rt>());
            }
        )+
    };
}

type RedisPool<R> = Pool<RedisManager<R>, R>;

/// Skips the test loudly, or fails it under CI.
fn skip(test: &str, why: &str) {
    crate::support::skip("redis", test, why, ".ci/run starts the server");
}

/// A command from its words.
fn cmd(words: &[&str]) -> rc::Cmd {
    let mut cmd = rc::cmd(words[0]);
    for w in &words[1..] {
        cmd.arg(*w);
    }
    cmd
}

/// Runs one command on `conn`.
async fn q<T: rc::FromRedisValue>(conn: &mut RedisConnection, words: &[&str]) -> RedisResult<T> {
    cmd(words).query_async(conn).await
}

/// Runs one command that must succeed.
async fn ok<T: rc::FromRedisValue>(conn: &mut RedisConnection, words: &[&str]) -> T {
    match q(conn, words).await {
        Ok(v) => v,
        Err(e) => panic!("{words:?} failed: {e}"),
    }
}

/// `CLIENT INFO` of `conn`, as a map of its fields.
async fn client_info(conn: &mut RedisConnection) -> HashMap<String, String> {
    let line: String = ok(conn, &["CLIENT", "INFO"]).await;
    fields(&line)
}

fn fields(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A test's access to the server: its runtime, its client name and key prefix, and an admin
/// connection outside any pool.
pub struct Rd<R: RedisRuntime> {
    /// The runtime.
    pub rt: R,
    /// The name of the runtime, for printed figures.
    pub rt_name: &'static str,
    /// The client name of this test's pooled connections, and its keys' prefix.
    pub name: String,
    url: String,
    admin: RedisConnection,
}

impl<R: RedisRuntime> std::fmt::Debug for Rd<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rd")
            .field("name", &self.name)
            .field("rt", &self.rt_name)
            .finish_non_exhaustive()
    }
}

impl<R: RedisRuntime> Rd<R> {
    /// Connects for test `test`, or returns `None` after saying loudly why not (a failure
    /// under CI).
    pub async fn open(test: &str) -> Option<Self> {
        let rt_name = std::any::type_name::<R>();
        let full = format!("{test} on {rt_name}");
        let rt = match R::current() {
            Ok(rt) => rt,
            Err(e) => panic!("the Redis suite runs inside its runtime: {e}"),
        };
        let url = redis_url();
        let manager = match RedisManager::<R>::from_url(&url) {
            Ok(m) => m.runtime(rt.clone()),
            Err(e) => {
                skip(&full, &format!("{URL_VAR} ({url}) does not parse: {e}"));
                return None;
            }
        };
        let short: String = test.chars().take(30).collect();
        let n = NEXT.fetch_add(1, SeqCst);
        let name = format!("pt{}-{n}-{short}", std::process::id());
        let admin = match within(&rt, Duration::from_secs(5), manager.connect()).await {
            Some(Ok(conn)) => conn,
            Some(Err(e)) => {
                skip(&full, &format!("the server at {url} is unreachable: {e}"));
                return None;
            }
            None => {
                skip(
                    &full,
                    &format!("the server at {url} did not answer within 5 s"),
                );
                return None;
            }
        };
        Some(Self {
            rt,
            rt_name,
            name,
            url,
            admin,
        })
    }

    /// A manager for this test's connections (named after the test).
    pub fn manager(&self) -> RedisManager<R> {
        match RedisManager::from_url(&self.url) {
            Ok(m) => m.runtime(self.rt.clone()).client_name(self.name.clone()),
            Err(e) => panic!("the URL parsed a moment ago: {e}"),
        }
    }

    /// A pool builder with `manager`, on the test's runtime, with quick back-off.
    pub fn builder(&self, manager: RedisManager<R>) -> Builder<RedisManager<R>, R> {
        Pool::builder(manager)
            .runtime(self.rt.clone())
            .acquire_timeout(Some(Duration::from_secs(5)))
            .backoff_base(Duration::from_millis(20))
            .backoff_max(Duration::from_millis(200))
    }

    /// Builds the pool or fails the test.
    pub fn build(&self, builder: Builder<RedisManager<R>, R>) -> RedisPool<R> {
        match builder.build() {
            Ok(pool) => pool,
            Err(e) => panic!("the test's pool must build: {e}"),
        }
    }

    /// A key of this test's own.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.name)
    }

    /// This test's clients as `CLIENT LIST` shows them.
    pub async fn clients(&mut self) -> Vec<HashMap<String, String>> {
        let list: String = ok(&mut self.admin, &["CLIENT", "LIST"]).await;
        list.lines()
            .map(fields)
            .filter(|f| f.get("name") == Some(&self.name))
            .collect()
    }

    /// The server's view of client `id`, if it still has it.
    pub async fn client(&mut self, id: i64) -> Option<HashMap<String, String>> {
        let id = id.to_string();
        self.clients()
            .await
            .into_iter()
            .find(|c| c.get("id") == Some(&id))
    }

    /// Kills client `id` (`CLIENT KILL ID`); returns how many the server killed.
    pub async fn kill(&mut self, id: i64) -> i64 {
        ok(&mut self.admin, &["CLIENT", "KILL", "ID", &id.to_string()]).await
    }

    /// Runs a command on the admin connection.
    pub async fn admin<T: rc::FromRedisValue>(&mut self, words: &[&str]) -> T {
        ok(&mut self.admin, words).await
    }

    /// Waits, polling every 10 ms, until `done` says so; fails loudly after `bound`.
    pub async fn until<T>(
        &mut self,
        what: &str,
        bound: Duration,
        mut probe: impl AsyncFnMut(&mut Self) -> Option<T>,
    ) -> T {
        let give_up = Instant::now() + bound;
        loop {
            if let Some(t) = probe(self).await {
                return t;
            }
            assert!(Instant::now() < give_up, "{what}: not within {bound:?}");
            sleep(&self.rt, Duration::from_millis(10)).await;
        }
    }

    /// The pool is settled (nothing in use, opening or closing) and the server has exactly
    /// its idle connections for this test; both awaited with a bound.
    pub async fn assert_settled(&mut self, pool: &RedisPool<R>) {
        self.until("the pool settles", Duration::from_secs(5), async |_| {
            let s = pool.status();
            (s.in_use == 0 && s.opening == 0 && s.closing == 0).then_some(())
        })
        .await;
        let s = pool.status();
        assert_eq!(s.size, s.idle, "status adds up: {s:?}");
        let idle = s.idle;
        let seen = self
            .until(
                "the server has exactly the pool's connections",
                Duration::from_secs(5),
                async |rd| {
                    let n = rd.clients().await.len();
                    (n == idle).then_some(n)
                },
            )
            .await;
        assert_eq!(seen, idle);
    }
}

/// Acquires or fails the test.
async fn get<R: RedisRuntime>(
    pool: &RedisPool<R>,
) -> pool_core::PooledConnection<'_, RedisManager<R>, R> {
    match pool.get().await {
        Ok(conn) => conn,
        Err(e) => panic!("a connection: {e}"),
    }
}

/// Seed 003, on Redis: a pool of 2 and three tasks that each block for 1 s at once
/// (`BLPOP` on an empty key of their own, with a 1 s timeout). The server sees exactly two
/// of the test's clients, and the three finish in about 2 s (the third waits for a release):
/// not 1 s (a third connection) and not 3 s (serialised).
pub async fn seed_003_pool_of_two_serves_three_blocked_clients_in_two_seconds<R: RedisRuntime>() {
    let Some(mut rd) = Rd::<R>::open("seed_003_pool_of_two_serves_three").await else {
        return;
    };
    let pool = rd.build(rd.builder(rd.manager()).max_size(2));
    let start = Instant::now();
    let tasks: Vec<_> = (0..3)
        .map(|i| {
            let pool = pool.clone();
            let key = rd.key(&format!("empty-{i}"));
            spawn(&rd.rt, async move {
                let mut conn = pool.get().await.map_err(|e| e.to_string())?;
                let popped: Option<(String, String)> = q(&mut conn, &["BLPOP", &key, "1"])
                    .await
                    .map_err(|e| e.to_string())?;
                if popped.is_some() {
                    return Err(format!("popped {popped:?} from an empty list"));
                }
                Ok::<_, String>(start.elapsed())
            })
        })
        .collect();
    let mut seen = Vec::new();
    for _ in 0..9 {
        // Sampling, not synchronisation: the figures are what the test checks.
        sleep(&rd.rt, Duration::from_millis(200)).await;
        seen.push(rd.clients().await.len());
    }
    let finished: Vec<Duration> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("the task ran").expect("the BLPOP ran"))
        .collect();
    let elapsed = start.elapsed();
    report(&format!(
        "seed 003 on {} (redis): three 1 s BLPOPs on a pool of 2 finished at {finished:?}; all done in {elapsed:.2?}; clients seen every 200 ms: {seen:?}",
        rd.rt_name
    ));
    assert!(
        seen.iter().all(|&n| n <= 2) && seen.contains(&2),
        "the server saw exactly two clients for the pool: {seen:?}"
    );
    assert_eq!(pool.manager().stats().connects, 2, "two connections opened");
    assert!(
        elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_millis(2900),
        "about 2 s, not 1 s and not 3 s: {elapsed:?}"
    );
    rd.assert_settled(&pool).await;
}

/// The README's "a thread that forgot to check in": two tasks take both connections of a
/// pool of 2 and never give them back. With `reclaim_after`, their leases stop counting
/// after 300 ms and four other tasks are all served by replacements, well within their
/// acquire timeout; the forgotten connections are closed when they finally come back.
pub async fn forgotten_connections_do_not_starve_the_others<R: RedisRuntime>() {
    let Some(mut rd) = Rd::<R>::open("forgotten_connections_do_not_starve").await else {
        return;
    };
    let pool = rd.build(
        rd.builder(rd.manager())
            .max_size(2)
            .reclaim_after(Some(Duration::from_millis(300)))
            .acquire_timeout(Some(Duration::from_secs(3))),
    );
    let mut forgotten = Vec::new();
    for _ in 0..2 {
        forgotten.push(pool.get_owned().await.expect("a connection"));
    }
    let start = Instant::now();
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let pool = pool.clone();
            let key = rd.key(&format!("k{i}"));
            spawn(&rd.rt, async move {
                let mut conn = pool.get().await.map_err(|e| e.to_string())?;
                let v = i.to_string();
                let _: () = q(&mut conn, &["SET", &key, &v, "EX", "60"])
                    .await
                    .map_err(|e| e.to_string())?;
                let back: String = q(&mut conn, &["GET", &key])
                    .await
                    .map_err(|e| e.to_string())?;
                if back != v {
                    return Err(format!("read {back:?} back, not {v:?}"));
                }
                Ok::<_, String>(start.elapsed())
            })
        })
        .collect();
    let served: Vec<Duration> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| {
            r.expect("the task ran")
                .expect("served despite the forgotten leases")
        })
        .collect();
    report(&format!(
        "forgotten leases on {} (redis): four tasks served at {served:?}",
        rd.rt_name
    ));
    assert!(
        served.iter().all(|d| *d < Duration::from_secs(2)),
        "served after the reclaim, not at the time-out: {served:?}"
    );
    // Each forgotten lease stops counting 300 ms after it was taken, so the four quick tasks
    // may all be done on the first one's replacement before the second lease is reclaimed,
    // or while its replacement is still opening.
    rd.until(
        "both leases reclaimed and their replacements opened",
        Duration::from_secs(5),
        async |_| {
            let s = pool.status();
            (s.abandoned == 2 && s.opening == 0).then_some(())
        },
    )
    .await;
    let connects = pool.manager().stats().connects;
    assert!(
        (3..=4).contains(&connects),
        "one or two replacements, never more than the two freed slots: {connects} connects"
    );
    drop(forgotten);
    assert_eq!(pool.metrics().closed.reclaimed, 2);
    rd.assert_settled(&pool).await;
    assert_eq!(pool.status().abandoned, 0);
}

/// A connection killed on the server while idle (`CLIENT KILL ID` from another connection)
/// is never lent: the next borrower gets a new one that works.
pub async fn killed_idle_connection_is_replaced_and_the_next_borrower_served<R: RedisRuntime>() {
    let Some(mut rd) = Rd::<R>::open("killed_idle_connection_is_replaced").await else {
        return;
    };
    // No bypass window: the checkout check runs even right after a use.
    let pool = rd.build(
        rd.builder(rd.manager())
            .max_size(1)
            .check_bypass(Duration::ZERO),
    );
    let first = get(&pool).await.client_id();
    assert_eq!(rd.kill(first).await, 1, "the server killed it");
    let mut conn = get(&pool).await;
    assert_ne!(conn.client_id(), first, "a new connection");
    let pong: String = ok(&mut conn, &["PING"]).await;
    assert_eq!(pong, "PONG");
    drop(conn);
    let m = pool.metrics();
    // Found out once: by the broken test on checkout when the driver has already seen the
    // socket close, else by the PING check.
    assert_eq!(m.closed.broken + m.checks_failed, 1, "{m:?}");
    assert_eq!(pool.manager().stats().connects, 2);
    rd.assert_settled(&pool).await;
}

/// A connection killed while a borrower holds it: its next command fails, the checkin closes
/// it, and the next borrower is served by a new connection.
pub async fn killed_connection_in_use_is_closed_at_checkin_and_replaced<R: RedisRuntime>() {
    let Some(mut rd) = Rd::<R>::open("killed_connection_in_use").await else {
        return;
    };
    let pool = rd.build(rd.builder(rd.manager()).max_size(1));
    let key = rd.key("k");
    let mut conn = get(&pool).await;
    let first = conn.client_id();
    assert_eq!(rd.kill(first).await, 1, "the server killed it");
    let failed: RedisResult<Option<String>> = q(&mut conn, &["GET", &key]).await;
    assert!(
        failed.is_err(),
        "a command on a killed connection fails: {failed:?}"
    );
    drop(conn);
    let mut conn = get(&pool).await;
    assert_ne!(conn.client_id(), first, "a new connection");
    let _: () = ok(&mut conn, &["SET", &key, "v", "EX", "60"]).await;
    let v: String = ok(&mut conn, &["GET", &key]).await;
    assert_eq!(v, "v");
    drop(conn);
    assert_eq!(pool.metrics().closed.broken, 1, "{:?}", pool.metrics());
    rd.assert_settled(&pool).await;
}

/// A borrower leaves `MULTI` open with a command queued. The next borrower of the same
/// connection is outside any transaction (its `EXEC` fails "EXEC without MULTI") and the
/// queued `SET` never ran.
pub async fn multi_left_open_is_discarded<R: RedisRuntime>() {
    let Some(mut rd) = Rd::<R>::open("multi_left_open_is_discarded").await else {
        return;
    };
    let pool = rd.build(rd.builder(rd.manager()).max_size(1));
    let key = rd.key("k");
    let first = {
        let mut conn = get(&pool).await;
        let _: () = ok(&mut conn, &["MULTI"]).await;
        let queued: String = ok(&mut conn, &["SET", &key, "dirty", "EX", "60"]).await;
        assert_eq!(queued, "QUEUED");
        conn.client_id()
    };
    let mut conn = get(&pool).await;
    assert_eq!(conn.client_id(), first, "the same connection, reset");
    let info = client_info(&mut conn).await;
    assert_eq!(
        info.get("multi").map(String::as_str),
        Some("-1"),
        "{info:?}"
    );
    let exec: RedisResult<Value> = q(&mut conn, &["EXEC"]).await;
    let error = exec.expect_err("no transaction is open");
    assert!(error.to_string().contains("EXEC without MULTI"), "{error}");
    let v: Option<String> = ok(&mut conn, &["GET", &key]).await;
    assert_eq!(v, None, "the queued SET was discarded");
    drop(conn);
    let stats = pool.manager().stats();
    assert_eq!((stats.discards, stats.connects), (1, 1), "{stats:?}");
    rd.assert_settled(&pool).await;
}

/// A borrower leaves a `WATCH`. Another client then changes the watched key; the next
/// borrower's transaction still runs (a connection still watching would see it aborted).
pub async fn watch_left_is_unwatched<R: RedisRuntime>() {
    let Some(mut rd) = Rd::<R>::open("watch_left_is_unwatched").await else {
        return;
    };
    let pool = rd.build(rd.builder(rd.manager()).max_size(1));
    let (watched, other) = (rd.key("watched"), rd.key("other"));
    let first = {
        let mut conn = get(&pool).await;
        let _: () = ok(&mut conn, &["WATCH", &watched]).await;
        conn.client_id()
    };
    let _: () = rd.admin(&["SET", &watched, "changed", "EX", "60"]).await;
    let mut conn = get(&pool).await;
    assert_eq!(conn.client_id(), first, "the same connection, reset");
    let _: () = ok(&mut conn, &["MULTI"]).await;
    let _: String = ok(&mut conn, &["SET", &other, "v", "EX", "60"]).await;
    let exec: Option<Vec<String>> = ok(&mut conn, &["EXEC"]).await;
    assert_eq!(
        exec,
        Some(vec!["OK".to_owned()]),
        "the transaction ran: nothing was watched"
    );
    drop(conn);
    let stats = pool.manager().stats();
    assert_eq!((stats.unwatches, stats.connects), (1, 1), "{stats:?}");
    rd.assert_settled(&pool).await;
}

/// A borrower selects database 5 on a pool configured for database 3; the next borrower of
/// the same connection is on database 3 again, and its commands work there.
pub async fn select_left_is_restored_to_the_configured_database<R: RedisRuntime>() {
    let Some(mut rd) = Rd::<R>::open("select_left_is_restored").await else {
        return;
    };
    let manager = rd.manager();
    let info = manager.connection_info().clone();
    let settings = info.redis_settings().clone().set_db(3);
    let manager = RedisManager::new(info.set_redis_settings(settings))
        .runtime(rd.rt.clone())
        .client_name(rd.name.clone());
    let pool = rd.build(rd.builder(manager).max_size(1));
    let key = rd.key("k");
    let first = {
        let mut conn = get(&pool).await;
        assert_eq!(
            client_info(&mut conn).await["db"],
            "3",
            "configured at connect"
        );
        let _: () = ok(&mut conn, &["SELECT", "5"]).await;
        assert_eq!(client_info(&mut conn).await["db"], "5");
        conn.client_id()
    };
    let mut conn = get(&pool).await;
    assert_eq!(conn.client_id(), first, "the same connection, reset");
    assert_eq!(client_info(&mut conn).await["db"], "3", "restored");
    let _: () = ok(&mut conn, &["SET", &key, "v", "EX", "60"]).await;
    let v: String = ok(&mut conn, &["GET", &key]).await;
    assert_eq!(v, "v");
    drop(conn);
    // The key is in database 3, not 5.
    let _: () = rd.admin(&["SELECT", "3"]).await;
    let in_3: i64 = rd.admin(&["EXISTS", &key]).await;
    let _: () = rd.admin(&["SELECT", "5"]).await;
    let in_5: i64 = rd.admin(&["EXISTS", &key]).await;
    let _: () = rd.admin(&["SELECT", "0"]).await;
    assert_eq!((in_3, in_5), (1, 0));
    let stats = pool.manager().stats();
    assert_eq!((stats.selects, stats.connects), (1, 1), "{stats:?}");
    rd.assert_settled(&pool).await;
}

/// A borrower subscribes to a channel and gives the connection back in subscribe mode. The
/// pool closes it (the server lets the client go) and the next borrower gets a new one.
pub async fn subscribe_mode_closes_the_connection<R: RedisRuntime>() {
    let Some(mut rd) = Rd::<R>::open("subscribe_mode_closes").await else {
        return;
    };
    let pool = rd.build(rd.builder(rd.manager()).max_size(1));
    let channel = rd.key("channel");
    let first = {
        let mut conn = get(&pool).await;
        let id = conn.client_id();
        // Over RESP2 the redis crate's connection does not expect subscribe mode; whatever it
        // makes of the reply, the server has the client subscribed.
        let reply = within(
            &rd.rt,
            Duration::from_secs(2),
            q::<Value>(&mut conn, &["SUBSCRIBE", &channel]),
        )
        .await;
        report(&format!(
            "SUBSCRIBE through the pooled connection gave {reply:?}"
        ));
        rd.until(
            "the server has the client subscribed",
            Duration::from_secs(5),
            async |rd| rd.client(id).await.filter(|c| c["sub"] == "1"),
        )
        .await;
        id
    };
    let mut conn = get(&pool).await;
    assert_ne!(conn.client_id(), first, "a new connection");
    let pong: String = ok(&mut conn, &["PING"]).await;
    assert_eq!(pong, "PONG");
    assert_eq!(client_info(&mut conn).await["sub"], "0");
    drop(conn);
    rd.until(
        "the server let the subscribed client go",
        Duration::from_secs(5),
        async |rd| rd.client(first).await.is_none().then_some(()),
    )
    .await;
    let stats = pool.manager().stats();
    assert_eq!((stats.closed, stats.connects), (1, 2), "{stats:?}");
    rd.assert_settled(&pool).await;
}

/// Runs `command` on `conn` until `rd` sees the client blocked in it on the server, then
/// drops the command's future (a caller's time-out), its reply still due.
async fn abandon_once_blocked<R: RedisRuntime>(
    rd: &mut Rd<R>,
    conn: &mut RedisConnection,
    command: &[&str],
) {
    let id = conn.client_id();
    let command = cmd(command);
    let name = command
        .args_iter()
        .next()
        .map(|a| match a {
            rc::Arg::Simple(b) => String::from_utf8_lossy(b).to_lowercase(),
            _ => String::new(),
        })
        .unwrap_or_default();
    let running = std::pin::pin!(command.query_async::<Value>(conn));
    let blocked = std::pin::pin!(rd.until(
        "the server has the client blocked in the command",
        Duration::from_secs(5),
        async |rd| {
            rd.client(id)
                .await
                .filter(|c| c["cmd"] == name && c["flags"].contains('b'))
        },
    ));
    match select(running, blocked).await {
        Either::Left((reply, _)) => {
            panic!("the command ended before it was seen blocked: {reply:?}")
        }
        Either::Right(_) => {} // the command's future is dropped here
    }
}

/// A borrower's `BLPOP key 5` on an empty list is dropped while the server has it blocked
/// (a time-out in the caller). Its reply would come only in 5 s, past the 100 ms drain, so
/// the checkin closes the connection: the next borrower is served at once by a new one, the
/// server lets the blocked client go long before its 5 s, and a value pushed afterwards is
/// not swallowed by the abandoned `BLPOP`.
pub async fn dropped_blocking_command_closes_the_connection_and_frees_the_server<
    R: RedisRuntime,
>() {
    let Some(mut rd) = Rd::<R>::open("dropped_blocking_command").await else {
        return;
    };
    let pool = rd.build(rd.builder(rd.manager()).max_size(1));
    let list = rd.key("list");
    let (first, start) = {
        let mut conn = get(&pool).await;
        abandon_once_blocked(&mut rd, &mut conn, &["BLPOP", &list, "5"]).await;
        (conn.client_id(), Instant::now())
    };
    let mut conn = get(&pool).await;
    let waited = start.elapsed();
    assert_ne!(conn.client_id(), first, "a new connection");
    let v: Option<String> = ok(&mut conn, &["GET", &rd.key("absent")]).await;
    assert_eq!(v, None);
    drop(conn);
    report(&format!(
        "abandoned BLPOP on {} (redis): the next borrower was served after {waited:.0?}",
        rd.rt_name
    ));
    assert!(
        waited < Duration::from_secs(2),
        "not held by the BLPOP: {waited:?}"
    );
    rd.until(
        "the server let the blocked client go",
        Duration::from_secs(3),
        async |rd| rd.client(first).await.is_none().then_some(()),
    )
    .await;
    let _: i64 = rd.admin(&["RPUSH", &list, "x"]).await;
    let _: i64 = rd.admin(&["EXPIRE", &list, "60"]).await;
    let len: i64 = rd.admin(&["LLEN", &list]).await;
    assert_eq!(len, 1, "no abandoned BLPOP took the value");
    let stats = pool.manager().stats();
    assert_eq!(
        (stats.drains, stats.closed, stats.connects),
        (1, 1, 2),
        "{stats:?}"
    );
    assert_eq!(pool.metrics().resets_failed, 1);
    rd.assert_settled(&pool).await;
}

/// A borrower's `BLPOP key 0.3` is dropped while the server has it blocked. With a 2 s
/// drain, the checkin waits for its (empty) reply and keeps the connection; the next
/// borrower's replies are its own, not the abandoned one's.
pub async fn dropped_blocking_command_within_the_drain_is_drained_and_the_connection_kept<
    R: RedisRuntime,
>() {
    let Some(mut rd) = Rd::<R>::open("dropped_blocking_command_drained").await else {
        return;
    };
    let manager = rd.manager().drain_timeout(Some(Duration::from_secs(2)));
    let pool = rd.build(rd.builder(manager).max_size(1));
    let (list, key) = (rd.key("list"), rd.key("k"));
    let first = {
        let mut conn = get(&pool).await;
        abandon_once_blocked(&mut rd, &mut conn, &["BLPOP", &list, "0.3"]).await;
        conn.client_id()
    };
    next_borrower_is_served_on_the_drained_connection(&mut rd, &pool, first, &key, "BLPOP").await;
}

/// A borrower's `GET` is dropped at its first poll (the redis crate then may or may not have
/// written it). The checkin drains whatever may be due (a `PING` behind it) and keeps the
/// connection; the next borrower's replies are its own.
pub async fn dropped_quick_command_is_drained_and_the_connection_kept<R: RedisRuntime>() {
    let Some(mut rd) = Rd::<R>::open("dropped_quick_command_is_drained").await else {
        return;
    };
    let pool = rd.build(rd.builder(rd.manager()).max_size(1));
    let key = rd.key("k");
    let _: () = rd.admin(&["SET", &key, "before", "EX", "60"]).await;
    // A try whose reply was already there at the first poll abandoned nothing (the driver
    // task, on another thread, can finish the round trip while this thread is preempted on
    // a loaded machine): its connection comes back clean, and the next try starts over.
    let mut first = None;
    for _ in 0..20 {
        let mut conn = get(&pool).await;
        let get = cmd(&["GET", &key]);
        let mut get = Box::pin(get.query_async::<Value>(&mut *conn));
        if get.as_mut().now_or_never().is_none() {
            drop(get);
            first = Some(conn.client_id());
            break;
        }
    }
    let first = first.expect("a GET still without its reply at the first poll, in 20 tries");
    next_borrower_is_served_on_the_drained_connection(&mut rd, &pool, first, &key, "GET").await;
}

/// After a checkin drained what an abandoned command (`abandoned`) left due: the next
/// borrower gets the same connection (`first`), its replies are its own, and the manager
/// drained once, closed nothing and opened one connection.
async fn next_borrower_is_served_on_the_drained_connection<R: RedisRuntime>(
    rd: &mut Rd<R>,
    pool: &RedisPool<R>,
    first: i64,
    key: &str,
    abandoned: &str,
) {
    let mut conn = get(pool).await;
    assert_eq!(conn.client_id(), first, "the same connection, drained");
    let _: () = ok(&mut conn, &["SET", key, "mine", "EX", "60"]).await;
    let v: String = ok(&mut conn, &["GET", key]).await;
    assert_eq!(
        v, "mine",
        "the reply is this borrower's, not the abandoned {abandoned}'s"
    );
    let pong: String = ok(&mut conn, &["PING"]).await;
    assert_eq!(pong, "PONG");
    drop(conn);
    let stats = pool.manager().stats();
    assert_eq!(
        (stats.drains, stats.closed, stats.connects),
        (1, 0, 1),
        "{stats:?}"
    );
    rd.assert_settled(pool).await;
}

/// Leases that leave nothing behind cost no reset.
pub async fn clean_checkins_need_no_reset<R: RedisRuntime>() {
    let Some(mut rd) = Rd::<R>::open("clean_checkins_need_no_reset").await else {
        return;
    };
    let pool = rd.build(rd.builder(rd.manager()).max_size(1));
    let key = rd.key("k");
    for i in 0..3 {
        let mut conn = get(&pool).await;
        let v = i.to_string();
        let _: () = ok(&mut conn, &["SET", &key, &v, "EX", "60"]).await;
        // A transaction run to its end leaves nothing either.
        let _: () = ok(&mut conn, &["MULTI"]).await;
        let _: String = ok(&mut conn, &["GET", &key]).await;
        let exec: Vec<String> = ok(&mut conn, &["EXEC"]).await;
        assert_eq!(exec, [v]);
    }
    let stats = pool.manager().stats();
    assert_eq!(stats.resets, 0, "{stats:?}");
    assert!(stats.clean_checkins >= 3, "{stats:?}");
    rd.assert_settled(&pool).await;
}

/// Connect errors: a refused port is transient, a database the server does not have and
/// `rediss://` are fatal; a password never shows in the manager's `Debug`.
pub async fn connect_errors_classify_and_credentials_stay_hidden<R: RedisRuntime>() {
    let Some(rd) = Rd::<R>::open("connect_errors_classify").await else {
        return;
    };
    // A port nothing listens on: bind one, note it, free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let refused = RedisManager::<R>::from_url(&format!("redis://127.0.0.1:{port}/"))
        .expect("parses")
        .runtime(rd.rt.clone());
    let error = refused.connect().await.expect_err("refused");
    assert!(!refused.is_fatal(&error), "transient: {error}");

    let manager = rd.manager();
    let info = manager.connection_info().clone();
    let settings = info.redis_settings().clone().set_db(100_000);
    let no_db = RedisManager::<R>::new(info.set_redis_settings(settings)).runtime(rd.rt.clone());
    let error = no_db.connect().await.expect_err("no such database");
    assert!(no_db.is_fatal(&error), "fatal: {error}");

    let tls = RedisManager::<R>::from_url("rediss://127.0.0.1:6380/").expect_err("no TLS");
    assert!(tls.is_fatal(), "{tls}");

    let secret =
        RedisManager::<R>::from_url("redis://user:s3cr3t-pw@127.0.0.1:6379/").expect("parses");
    let shown = format!("{secret:?}");
    assert!(!shown.contains("s3cr3t-pw"), "{shown}");
    assert!(shown.contains("user"), "{shown}");
}
