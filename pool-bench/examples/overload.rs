//! Overload on PostgreSQL: arrivals at 1.5 times what the pool can serve, with and without
//! load shedding (`queue_target`), in one run.
//!
//! ```sh
//! cargo run --release -p pool-bench --example overload
//! cargo run --release -p pool-bench --example overload -- --seconds 10 --load 2.0
//! ```
//!
//! A pool of 8 (`pool_tokio::Pool` with `pool_postgres::PgManager`) serves requests that each
//! hold a connection for one `select pg_sleep(0.05)`: at most 160 requests/s. Requests
//! arrive open-loop (a fixed schedule, whatever the pool does) at `--load` times that rate
//! (1.5) for `--seconds` (20), each with an acquire timeout of 5 s. The same load runs
//! twice: without shedding, and with `queue_target(50 ms)` and `queue_interval(1 s)`.
//! For each run it prints the served requests' wait for a connection (p50, p99, max), and
//! for the failed ones how many failed and how long each took to fail, by error.
//!
//! Options: `--url` (else `POOL_TEST_DATABASE_URL`, else
//! `postgres://postgres@127.0.0.1:5432/test`), `--seconds`, `--load`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use pool_bench::stats::Histogram;

const SIZE: usize = 8;
const QUERY: &str = "select pg_sleep(0.05)";
const QUERY_TIME: Duration = Duration::from_millis(50);
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The requests of one run, by outcome: how long each waited for a connection (served) or
/// took to fail.
#[derive(Default)]
struct Outcomes {
    served: Histogram,
    shed: Histogram,
    timed_out: Histogram,
    other: Histogram,
    first_other: Option<String>,
}

fn ms(h: &Histogram, q: f64) -> f64 {
    h.quantile(q).as_secs_f64() * 1e3
}

/// What happened to one request.
enum Outcome {
    Served(Duration),
    Shed(Duration),
    TimedOut(Duration),
    Failed(Duration, String),
}

async fn request(pool: pool_postgres::TokioPool) -> Outcome {
    let asked = Instant::now();
    let got = pool.get().await;
    let waited = asked.elapsed();
    match got {
        Ok(conn) => match conn.simple_query(QUERY).await {
            Ok(_) => Outcome::Served(waited),
            Err(e) => Outcome::Failed(asked.elapsed(), format!("query: {e}")),
        },
        Err(e) if e.is_shed() => Outcome::Shed(waited),
        Err(e) if e.is_timeout() => Outcome::TimedOut(waited),
        Err(e) => Outcome::Failed(waited, e.to_string()),
    }
}

async fn run(url: &str, seconds: f64, load: f64, shedding: bool) -> Result<String, String> {
    let config: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
    let mut builder = pool_tokio::Pool::builder(pool_postgres::PgManager::new(config))
        .max_size(SIZE)
        .acquire_timeout(Some(ACQUIRE_TIMEOUT));
    if shedding {
        builder = builder
            .queue_target(Some(Duration::from_millis(50)))
            .queue_interval(Duration::from_secs(1));
    }
    let pool = builder.build().map_err(|e| e.to_string())?;
    // Warm: every connection open before the clock starts.
    let mut held = Vec::new();
    for _ in 0..SIZE {
        held.push(pool.get().await.map_err(|e| e.to_string())?);
    }
    drop(held);

    let capacity = SIZE as f64 / QUERY_TIME.as_secs_f64();
    let rate = capacity * load;
    let gap = Duration::from_secs_f64(1.0 / rate);
    let total = (rate * seconds) as u32;
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        tokio::time::sleep_until(start + gap * i).await;
        tasks.push(tokio::spawn(request(pool.clone())));
    }
    let mut o = Outcomes::default();
    for task in tasks {
        match task.await.map_err(|e| e.to_string())? {
            Outcome::Served(d) => o.served.record(d.as_nanos() as u64),
            Outcome::Shed(d) => o.shed.record(d.as_nanos() as u64),
            Outcome::TimedOut(d) => o.timed_out.record(d.as_nanos() as u64),
            Outcome::Failed(d, text) => {
                o.other.record(d.as_nanos() as u64);
                o.first_other.get_or_insert(text);
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut row = format!(
        "| {} | {total} | {} ({:.0}/s) | {:.1} / {:.1} / {:.1} |",
        if shedding {
            "queue_target 50 ms, queue_interval 1 s"
        } else {
            "no shedding"
        },
        o.served.count(),
        o.served.count() as f64 / elapsed,
        ms(&o.served, 0.5),
        ms(&o.served, 0.99),
        ms(&o.served, 1.0),
    );
    for h in [&o.shed, &o.timed_out, &o.other] {
        if h.count() == 0 {
            row.push_str(" 0 |");
        } else {
            row.push_str(&format!(
                " {} (p50 {:.1}, p99 {:.1}) |",
                h.count(),
                ms(h, 0.5),
                ms(h, 0.99)
            ));
        }
    }
    if let Some(e) = o.first_other {
        row.push_str(&format!(" first other error: {e}"));
    }
    pool.close();
    Ok(row)
}

fn main() -> ExitCode {
    let mut url = std::env::var("POOL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let (mut seconds, mut load) = (20.0, 1.5);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        let number = value.parse::<f64>().ok().filter(|v| *v > 0.0);
        match (flag.as_str(), number) {
            ("--url", _) => url = value,
            ("--seconds", Some(v)) => seconds = v,
            ("--load", Some(v)) => load = v,
            _ => {
                eprintln!("overload: bad option {flag} {value:?}; see the top of overload.rs");
                return ExitCode::FAILURE;
            }
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("overload: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "Pool of {SIZE}, each request `{QUERY}` (capacity {:.0} requests/s), arrivals at {load}x \
         that for {seconds} s, acquire timeout {ACQUIRE_TIMEOUT:?}; waits in ms.\n",
        SIZE as f64 / QUERY_TIME.as_secs_f64()
    );
    println!(
        "| shedding | requests | served | served wait p50 / p99 / max | shed (time to fail) | \
         timed out (time to fail) | other errors |\n|---|---|---|---|---|---|---|"
    );
    for shedding in [false, true] {
        eprintln!(
            "running {}",
            if shedding {
                "with shedding"
            } else {
                "without shedding"
            }
        );
        match rt.block_on(run(&url, seconds, load, shedding)) {
            Ok(row) => println!("{row}"),
            Err(e) => {
                eprintln!("overload: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
