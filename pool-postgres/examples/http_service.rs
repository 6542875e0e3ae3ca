//! Seed 000 in Rust: a small HTTP service whose every request queries PostgreSQL through
//! the pool, so one process answers many concurrent clients with a few connections.
//!
//! ```sh
//! cargo run --release -p pool-postgres --example http_service &
//! ab -n 100 -c 20 http://127.0.0.1:9292/test
//! kill -INT %1   # prints a summary
//! ```
//!
//! Settings from the environment: `DATABASE_URL` (else `POOL_TEST_DATABASE_URL`, else
//! `postgres://postgres@127.0.0.1:5432/test`), `POOL_SIZE` (10), `LISTEN` (127.0.0.1:9292),
//! `QUERY_MS` (how long each request's query sleeps on the server: 100), `CPU_ROWS` (if set,
//! each request's query counts that many rows instead of sleeping: a CPU-bound load).

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use pool_postgres::{tokio_postgres, PgManager, TokioPool};

struct App {
    pool: TokioPool,
    query_ms: f64,
    cpu_rows: Option<i64>,
    served: AtomicU64,
    failed: AtomicU64,
    backends: Mutex<BTreeSet<i32>>,
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/test" {
        return Ok(reply(StatusCode::NOT_FOUND, "try /test\n".into()));
    }
    let asked = Instant::now();
    let result = async {
        let conn = app.pool.get().await.map_err(|e| e.to_string())?;
        let waited = asked.elapsed();
        let row = match app.cpu_rows {
            None => {
                conn.query_one(
                    "select pg_backend_pid() from pg_sleep($1::float8 / 1000)",
                    &[&app.query_ms],
                )
                .await
            }
            Some(rows) => {
                conn.query_one(
                    "select pg_backend_pid() from (select count(*) from generate_series(1, $1::int8)) n",
                    &[&rows],
                )
                .await
            }
        }
        .map_err(|e| e.to_string())?;
        Ok::<_, String>((row.get::<_, i32>(0), waited))
    }
    .await;
    Ok(match result {
        Ok((pid, waited)) => {
            app.served.fetch_add(1, Relaxed);
            if let Ok(mut backends) = app.backends.lock() {
                backends.insert(pid);
            }
            // Fixed width, so `ab` sees every body as the same length.
            reply(
                StatusCode::OK,
                format!(
                    "backend {pid:>8}, waited {:>9} us for a connection\n",
                    waited.as_micros()
                ),
            )
        }
        Err(e) => {
            app.failed.fetch_add(1, Relaxed);
            reply(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"))
        }
    })
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        env(
            "POOL_TEST_DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/test",
        )
    });
    let size: usize = env("POOL_SIZE", "10").parse()?;
    let listen = env("LISTEN", "127.0.0.1:9292");
    let query_ms: f64 = env("QUERY_MS", "100").parse()?;
    let cpu_rows: Option<i64> = std::env::var("CPU_ROWS")
        .ok()
        .map(|v| v.parse())
        .transpose()?;

    let mut config: tokio_postgres::Config = url.parse()?;
    config.application_name("pool-postgres http_service");
    let pool = pool_tokio::Pool::builder(PgManager::new(config))
        .max_size(size)
        .acquire_timeout(Some(Duration::from_secs(5)))
        .build()?;
    let app = Arc::new(App {
        pool,
        query_ms,
        cpu_rows,
        served: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        backends: Mutex::new(BTreeSet::new()),
    });
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{listen}/test with a pool of {size} ({query_ms} ms per query)");
    println!("load it with: ab -n 100 -c 20 http://{listen}/test");

    let reporter = {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let served = app.served.load(Relaxed);
                if served != last {
                    println!("{served} served; pool: {}", app.pool.status());
                    last = served;
                }
            }
        })
    };

    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (socket, _) = accepted?;
                let app = Arc::clone(&app);
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(Arc::clone(&app), req));
                    if let Err(e) = http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await
                    {
                        eprintln!("connection error: {e}");
                    }
                });
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    reporter.abort();
    let m = app.pool.metrics();
    let backends = app.backends.lock().map(|b| b.len()).unwrap_or_default();
    println!(
        "served {} requests ({} failed) with {} connections ({backends} distinct backends); \
         {} of them waited for a connection, the longest {:.1?}",
        app.served.load(Relaxed),
        app.failed.load(Relaxed),
        m.connects_ok,
        m.acquired_after_wait,
        m.wait_max,
    );
    println!("manager: {:?}", app.pool.manager().stats());
    Ok(())
}
