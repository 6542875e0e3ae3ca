//! Load test: one HTTP service (hyper, tokio) whose every request runs a CPU-bound query
//! through a pool, served over this pool (`pool_postgres::PgManager` with its defaults),
//! deadpool-postgres 0.14 and bb8-postgres 0.9 side by side, loaded by ApacheBench in one run.
//!
//! ```sh
//! apt-get install apache2-utils                                    # `ab`, if missing
//! cargo run --release -p pool-bench --example http_load            # 3 repetitions
//! cargo run --release -p pool-bench --example http_load -- --reps 1 --requests 1000
//! ```
//!
//! Every pool has max size 16 and serves the same handler on a port of its own:
//! `query_one("select count(*) from generate_series(1, $1::int8)", &[&rows])`, the query
//! as a user writes it (tokio-postgres prepares it under a name and closes the statement
//! when the request is done, so the connection still has a reply due when it goes back).
//! Each repetition warms each pool up with 200 requests, then runs
//! `ab -k -c 50 -n <requests>` against each in turn (the order rotates each repetition).
//! For this pool it also prints what the manager did with the connections given back:
//! clean checkins, resets that only waited for a reply still due, rollbacks and cancel
//! requests. A cancel request sent when no query can still run is a defect: it forks a
//! backend on the server exactly when the server is busiest.
//!
//! Options: `--url` (else `POOL_TEST_DATABASE_URL`, else
//! `postgres://postgres@127.0.0.1:5432/test`), `--reps` (3), `--requests` (4000),
//! `--concurrency` (50), `--size` (16), `--rows` (10000: a few ms of CPU per query), and
//! `--tls`: this pool with the manager's default `sslmode=prefer` (TLS with a server that
//! has it), the others plaintext as always; without it every pool is plaintext.
//! Progress goes to stderr, the markdown table (median requests/s over the repetitions,
//! the range in brackets, the ratio to this pool) to stdout.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_postgres::NoTls;

const SQL: &str = "select count(*) from generate_series(1, $1::int8)";

struct Options {
    url: String,
    reps: usize,
    requests: usize,
    concurrency: usize,
    size: usize,
    rows: i64,
    /// This pool over TLS (`sslmode=prefer`, its default) while the others stay plaintext.
    tls: bool,
}

impl Options {
    fn parse() -> Result<Self, String> {
        let mut o = Self {
            url: std::env::var("POOL_TEST_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
            reps: 3,
            requests: 4000,
            concurrency: 50,
            size: 16,
            rows: 10_000,
            tls: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            if flag == "--tls" {
                o.tls = true;
                continue;
            }
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let number = || {
                value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("{flag} takes a positive number, not {value:?}"))
            };
            match flag.as_str() {
                "--url" => o.url = value.clone(),
                "--reps" => o.reps = number()?,
                "--requests" => o.requests = number()?,
                "--concurrency" => o.concurrency = number()?,
                "--size" => o.size = number()?,
                "--rows" => o.rows = i64::try_from(number()?).map_err(|e| e.to_string())?,
                _ => {
                    return Err(format!(
                        "unknown option {flag}; see the top of http_load.rs"
                    ))
                }
            }
        }
        Ok(o)
    }
}

/// The pools under test, each behind the same handler.
enum Source {
    Ours(pool_postgres::TokioPool),
    Deadpool(deadpool_postgres::Pool),
    Bb8(bb8::Pool<bb8_postgres::PostgresConnectionManager<NoTls>>),
}

impl Source {
    fn name(&self) -> &'static str {
        match self {
            Self::Ours(_) => "pool/tokio + pool-postgres",
            Self::Deadpool(_) => "deadpool-postgres 0.14",
            Self::Bb8(_) => "bb8-postgres 0.9",
        }
    }

    async fn count(&self, rows: i64) -> Result<i64, String> {
        let text = |e: &dyn std::fmt::Display| e.to_string();
        let row = match self {
            Self::Ours(pool) => {
                let conn = pool.get().await.map_err(|e| text(&e))?;
                conn.query_one(SQL, &[&rows]).await
            }
            Self::Deadpool(pool) => {
                let conn = pool.get().await.map_err(|e| text(&e))?;
                conn.query_one(SQL, &[&rows]).await
            }
            Self::Bb8(pool) => {
                let conn = pool.get().await.map_err(|e| text(&e))?;
                conn.query_one(SQL, &[&rows]).await
            }
        };
        row.map(|r| r.get(0)).map_err(|e| text(&e))
    }

    /// This pool's manager counters; none for the others.
    fn stats(&self) -> Option<pool_postgres::PgStats> {
        match self {
            Self::Ours(pool) => Some(pool.manager().stats()),
            _ => None,
        }
    }
}

struct App {
    source: Source,
    rows: i64,
    wrong: AtomicU64,
}

async fn handle(app: Arc<App>, _: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match app.source.count(app.rows).await {
        Ok(n) if n == app.rows => (StatusCode::OK, "ok\n".to_owned()),
        Ok(n) => {
            app.wrong.fetch_add(1, Relaxed);
            (StatusCode::INTERNAL_SERVER_ERROR, format!("counted {n}\n"))
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    Ok(response)
}

/// Serves `app` on an ephemeral port; returns the port.
async fn serve(app: Arc<App>) -> std::io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let app = Arc::clone(&app);
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(Arc::clone(&app), req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    Ok(port)
}

/// What one `ab` run reported.
struct AbRun {
    per_second: f64,
    failed: u64,
    non_2xx: u64,
}

fn ab(port: u16, requests: usize, concurrency: usize) -> Result<AbRun, String> {
    let out = Command::new("ab")
        .args([
            "-q",
            "-k",
            "-c",
            &concurrency.to_string(),
            "-n",
            &requests.to_string(),
        ])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .map_err(|e| format!("cannot run ab ({e}); install it: apt-get install apache2-utils"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "ab failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
    };
    let per_second = field("Requests per second:")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no requests/s in ab's output:\n{text}"))?;
    let count = |name| field(name).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok(AbRun {
        per_second,
        failed: count("Failed requests:"),
        non_2xx: count("Non-2xx responses:"),
    })
}

/// What this pool's manager did between two snapshots.
fn manager_delta(before: &pool_postgres::PgStats, after: &pool_postgres::PgStats) -> [u64; 4] {
    [
        after.clean_checkins - before.clean_checkins,
        after.settled - before.settled,
        after.rollbacks - before.rollbacks,
        after.cancels - before.cancels,
    ]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn run(o: &Options) -> Result<String, String> {
    let config: tokio_postgres::Config = o.url.parse().map_err(|e| format!("{e}"))?;
    // Plaintext like the others (`NoTls`): the manager's default, `sslmode=prefer`, would
    // negotiate TLS with a server that has it, and pay for it on these 2 cores.
    let manager = pool_postgres::PgManager::new(config.clone()).ssl_mode(match o.tls {
        true => pool_postgres::SslMode::Prefer,
        false => pool_postgres::SslMode::Disable,
    });
    let ours = pool_tokio::Pool::builder(manager)
        .max_size(o.size)
        .build()
        .map_err(|e| e.to_string())?;
    let deadpool = deadpool_postgres::Pool::builder(deadpool_postgres::Manager::from_config(
        config.clone(),
        NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    ))
    .max_size(o.size)
    .build()
    .map_err(|e| e.to_string())?;
    let bb8 = bb8::Pool::builder()
        .max_size(u32::try_from(o.size).map_err(|e| e.to_string())?)
        .build(bb8_postgres::PostgresConnectionManager::new(config, NoTls))
        .await
        .map_err(|e| e.to_string())?;
    let mut apps = Vec::new();
    for source in [
        Source::Ours(ours),
        Source::Deadpool(deadpool),
        Source::Bb8(bb8),
    ] {
        let app = Arc::new(App {
            source,
            rows: o.rows,
            wrong: AtomicU64::new(0),
        });
        let port = serve(Arc::clone(&app)).await.map_err(|e| e.to_string())?;
        apps.push((app, port));
    }
    // Requests/s per repetition, and failures, per pool; the manager's counters for ours.
    let mut rates = vec![Vec::new(); apps.len()];
    let mut failures = vec![0_u64; apps.len()];
    let mut checkins = [0_u64; 4];
    for rep in 0..o.reps {
        for k in 0..apps.len() {
            let i = (k + rep) % apps.len();
            let (app, port) = (&apps[i].0, apps[i].1);
            let (port, requests, concurrency) = (port, o.requests, o.concurrency);
            let warm = tokio::task::spawn_blocking(move || ab(port, 200, concurrency));
            warm.await.map_err(|e| e.to_string())??;
            let before = app.source.stats();
            let run = tokio::task::spawn_blocking(move || ab(port, requests, concurrency));
            let run = run.await.map_err(|e| e.to_string())??;
            if let (Some(before), Some(after)) = (before, app.source.stats()) {
                for (total, d) in checkins.iter_mut().zip(manager_delta(&before, &after)) {
                    *total += d;
                }
            }
            eprintln!(
                "rep {}: {:<28} {:>7.0} requests/s, {} failed, {} non-2xx",
                rep + 1,
                app.source.name(),
                run.per_second,
                run.failed,
                run.non_2xx
            );
            rates[i].push(run.per_second);
            failures[i] += run.failed + run.non_2xx;
        }
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "`ab -k -c {} -n {}` x {} repetitions, pool size {}, each request \
         `query_one(\"{SQL}\", &[&{}])`; tokio multi-thread runtime, hyper http1; {}.\n",
        o.concurrency,
        o.requests,
        o.reps,
        o.size,
        o.rows,
        if o.tls {
            "this pool over TLS (sslmode=prefer, its default), the others plaintext"
        } else {
            "every pool plaintext"
        }
    );
    let _ = writeln!(
        md,
        "| pool | requests/s (median) | range | vs this pool | failed or wrong |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    let ours = median(&mut rates[0].clone());
    for (i, (app, _)) in apps.iter().enumerate() {
        let mut r = rates[i].clone();
        let m = median(&mut r);
        let _ = writeln!(
            md,
            "| {} | {m:.0} | {:.0}-{:.0} | {:.0} % | {} |",
            app.source.name(),
            r[0],
            r[r.len() - 1],
            100.0 * m / ours,
            failures[i] + app.wrong.load(Relaxed)
        );
    }
    let [clean, settled, rollbacks, cancels] = checkins;
    let _ = writeln!(
        md,
        "\nThis pool's manager over its measured runs ({} checkins): {clean} clean, {settled} \
         waited for a reply still due (no query of their own), {rollbacks} rollbacks, \
         **{cancels} cancel requests**.",
        clean + settled + rollbacks
    );
    Ok(md)
}

fn main() -> ExitCode {
    let o = match Options::parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("http_load: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("http_load: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = rt.block_on(run(&o));
    rt.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(md) => {
            println!("{md}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("http_load: {e}");
            ExitCode::FAILURE
        }
    }
}
