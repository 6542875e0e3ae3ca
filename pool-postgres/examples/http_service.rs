//! Seed 000 in Rust: a small HTTP service whose every request queries PostgreSQL through
//! the pool, so one process answers many concurrent clients with a few connections.
//!
//! ```sh
//! cargo run --release -p pool-postgres --example http_service &
//! ab -n 100 -c 20 http://127.0.0.1:9292/test
//! curl -s http://127.0.0.1:9292/metrics   # the pool's instruments, in Prometheus text
//! kill -INT %1   # prints a summary
//! ```
//!
//! `/metrics` serves the pool's OpenTelemetry connection-pool instruments (pool-tokio's
//! `metrics` feature) through `metrics-exporter-prometheus`, labelled with the pool's name
//! (`db_client_connection_count{db_client_connection_pool_name="http_service",db_client_connection_state="idle"}`
//! and the rest; see `pool_core::observability`). `cargo test -p pool-postgres --example
//! http_service` runs the test at the end, which scrapes it.
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
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use pool_postgres::{tokio_postgres, PgManager, TokioPool};

struct App {
    pool: TokioPool,
    /// Renders the recorder's metrics for `/metrics`.
    metrics: PrometheusHandle,
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
    match req.uri().path() {
        "/test" => {}
        "/metrics" => return Ok(reply(StatusCode::OK, app.metrics.render())),
        _ => {
            return Ok(reply(
                StatusCode::NOT_FOUND,
                "try /test or /metrics\n".into(),
            ))
        }
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

    // The recorder first: the pool registers its instruments with it when it is built.
    let metrics = prometheus().install_recorder()?;
    let pool = pool(&url, size)?;
    let app = Arc::new(App {
        pool,
        metrics,
        query_ms,
        cpu_rows,
        served: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        backends: Mutex::new(BTreeSet::new()),
    });
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{listen}/test with a pool of {size} ({query_ms} ms per query)");
    println!(
        "load it with: ab -n 100 -c 20 http://{listen}/test; metrics on http://{listen}/metrics"
    );

    let reporter = {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                // Folds the histograms' samples into their buckets (the exporter's upkeep).
                app.metrics.run_upkeep();
                let served = app.served.load(Relaxed);
                if served != last {
                    println!("{served} served; pool: {}", app.pool.status());
                    last = served;
                }
            }
        })
    };

    tokio::select! {
        result = serve(listener, Arc::clone(&app)) => result?,
        _ = tokio::signal::ctrl_c() => {}
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
    println!(
        "acquire waits: p50 {:.1?}, p90 {:.1?}, p99 {:.1?}",
        m.wait_times.p50(),
        m.wait_times.p90(),
        m.wait_times.p99()
    );
    println!("manager: {:?}", app.pool.manager().stats());
    Ok(())
}

/// The Prometheus recorder: histograms with buckets (seconds) fit for connection waits.
fn prometheus() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ])
        .expect("buckets are given")
}

/// The pool, named for its metrics and logs.
fn pool(url: &str, size: usize) -> Result<TokioPool, Box<dyn std::error::Error>> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.application_name("pool-postgres http_service");
    Ok(pool_tokio::Pool::builder(PgManager::new(config))
        .name("http_service")
        .max_size(size)
        .acquire_timeout(Some(Duration::from_secs(5)))
        .build()?)
}

/// Answers HTTP/1 connections on `listener` until it fails.
async fn serve(listener: tokio::net::TcpListener, app: Arc<App>) -> std::io::Result<()> {
    loop {
        let (socket, _) = listener.accept().await?;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One GET over a fresh connection: the status line and the body.
    async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
        let mut socket = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        socket.write_all(request.as_bytes()).await.expect("sent");
        let mut response = String::new();
        socket
            .read_to_string(&mut response)
            .await
            .expect("an answer");
        let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
        (
            head.lines().next().unwrap_or_default().to_owned(),
            body.to_owned(),
        )
    }

    /// The service's /metrics, scraped over HTTP after a few requests, shows the pool's
    /// instruments under its name, with the requests' connection and acquires counted.
    /// Needs the PostgreSQL server of the database suite (`POOL_TEST_DATABASE_URL`, or the
    /// local one); prints SKIPPED without it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn metrics_endpoint_serves_the_pools_instruments_in_prometheus_text() {
        let url = env(
            "POOL_TEST_DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/test",
        );
        // A recorder of the test's own, around the build (no global one in tests).
        let recorder = prometheus().build_recorder();
        let metrics = recorder.handle();
        let pool = metrics::with_local_recorder(&recorder, || pool(&url, 2)).expect("a pool");
        let app = Arc::new(App {
            pool,
            metrics,
            query_ms: 1.0,
            cpu_rows: None,
            served: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            backends: Mutex::new(BTreeSet::new()),
        });
        if let Err(e) = app.pool.ready().await {
            eprintln!("SKIPPED: no PostgreSQL at {url}: {e}");
            return;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("bound");
        let server = tokio::spawn(serve(listener, Arc::clone(&app)));
        for _ in 0..3 {
            let (status, body) = get(addr, "/test").await;
            assert!(status.contains("200"), "{status}: {body}");
        }
        let (status, scrape) = get(addr, "/metrics").await;
        assert!(status.contains("200"), "{status}");
        println!("{scrape}");
        let pool = "db_client_connection_pool_name=\"http_service\"";
        for expected in [
            "# TYPE db_client_connection_count gauge",
            "db_client_connection_state=\"idle\"",
            "db_client_connection_state=\"used\"",
            "# TYPE db_client_connection_max gauge",
            "# TYPE db_client_connection_pending_requests gauge",
            "# TYPE db_client_connection_timeouts counter",
            "# TYPE db_client_connection_create_time histogram",
            "# TYPE db_client_connection_wait_time histogram",
            "# TYPE db_client_connection_use_time histogram",
        ] {
            assert!(scrape.contains(expected), "{expected} in {scrape}");
        }
        let line = |name: &str| {
            scrape
                .lines()
                .find(|l| l.starts_with(name) && l.contains(pool))
                .unwrap_or_else(|| panic!("{name} for the pool in {scrape}"))
                .rsplit(' ')
                .next()
                .expect("a value")
                .to_owned()
        };
        assert_eq!(line("db_client_connection_max{"), "2");
        // ready()'s acquire, then one per request; each connection is back before the
        // request's answer.
        assert_eq!(line("db_client_connection_wait_time_count{"), "4");
        assert_eq!(line("db_client_connection_use_time_count{"), "4");
        assert_eq!(
            line("db_client_connection_create_time_count{"),
            app.pool.metrics().connects_ok.to_string()
        );
        assert_eq!(line("db_client_connection_timeouts{"), "0");
        server.abort();
    }
}
