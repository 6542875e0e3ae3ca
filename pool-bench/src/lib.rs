//! Benchmarks this pool side by side with bb8, deadpool (managed and unmanaged), mobc, qp,
//! fastpool and r2d2, plus three hand-written floors, over a matrix of workers x pool size, and
//! (opt-in) through tokio-postgres against a real PostgreSQL and through the redis crate
//! against a real Redis.
//!
//! Run `cargo run --release -p pool-bench -- --quick` (about a minute, no database) or
//! `-- --help` for the options. The markdown report goes to stdout, progress to stderr,
//! the CSV and the SVG chart to the output directory.

pub mod contenders;
pub mod harness;
pub mod pg;
pub mod redis_mode;
pub mod report;
mod service;
pub mod stats;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use contenders::Contender;
use harness::{Hold, Spec};
use report::{Cell, Record};

const HELP: &str = "\
pool-bench: this pool against bb8, deadpool, mobc, qp, fastpool and r2d2, side by side

USAGE: pool-bench [OPTIONS]

  --quick               about a minute: 3 repetitions of a 20 ms window per cell
  --reps N              repetitions per cell (default 5; quick 3)
  --window-ms N         measured window per run (default 150; quick 20), at least
                        250 us (quick 80 us) per worker
  --warmup-ms N         unmeasured warm-up per run (default 30; quick 5)
  --grace-ms N          time workers get to finish after the window before they count
                        as stuck (default 300; quick 60)
  --workers LIST        comma-separated (default 1,4,16,64,256,1024)
  --sizes LIST          comma-separated (default 1,4,16,64)
  --cycles LIST         touch,yield (default both)
  --pools LIST          column names to run (default all): pool/tokio, pool/async-std,
                        pool/smol, bb8, deadpool, deadpool-unmanaged, mobc, qp,
                        fastpool, r2d2, floor:semaphore, floor:arrayqueue,
                        floor:arrayqueue+budget
  --out DIR             where results.csv and chart.svg go (default target/pool-bench)
  --pg                  also run the PostgreSQL mode (select 1 through tokio-postgres)
  --pg-only             only the PostgreSQL mode
  --pg-url URL          default host=127.0.0.1 port=5432 user=postgres dbname=test
  --pg-bouncer-url URL  also run the PostgreSQL mode through this PgBouncer (transaction
                        mode, in front of the same server) and report each pool's
                        throughput through it as a share of its direct throughput
  --pg-reps N           runs per PostgreSQL cell, the median reported (default 1)
  --redis               also run the Redis mode (GET through the redis crate: this pool
                        with pool-redis, bb8-redis, deadpool-redis, no pool)
  --redis-only          only the Redis mode
  --redis-url URL       default redis://127.0.0.1:6379/
  --redis-reps N        runs per Redis cell, the median reported (default 1)
  --help                this text
";

/// Everything the command line can set.
#[derive(Debug, Clone)]
pub struct Options {
    /// Repetitions per cell.
    pub reps: usize,
    /// The measured window of each run (at least; see `window_per_worker`).
    pub window: Duration,
    /// The window grows to at least this much per worker, so that a fair pool gives every
    /// worker several turns (1,024 tasks taking turns of 256 cycles on 2 threads need about
    /// 20 ms per round).
    pub window_per_worker: Duration,
    /// Unmeasured warm-up.
    pub warmup: Duration,
    /// Time to finish after the window.
    pub grace: Duration,
    /// Worker counts.
    pub workers: Vec<usize>,
    /// Pool sizes.
    pub sizes: Vec<usize>,
    /// Cycle modes.
    pub holds: Vec<Hold>,
    /// Pools to run.
    pub pools: Vec<Contender>,
    /// Output directory.
    pub out: PathBuf,
    /// Run the in-memory matrix.
    pub matrix: bool,
    /// Run the PostgreSQL mode.
    pub pg: bool,
    /// Its connection string.
    pub pg_url: String,
    /// A PgBouncer in front of the same server, to run the PostgreSQL mode through as well.
    pub pg_bouncer_url: Option<String>,
    /// Runs per PostgreSQL cell.
    pub pg_reps: usize,
    /// Run the Redis mode.
    pub redis: bool,
    /// The Redis server of the Redis mode.
    pub redis_url: String,
    /// Runs per Redis cell (the median is reported).
    pub redis_reps: usize,
    /// Whether this is the quick run.
    pub quick: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            reps: 5,
            window: Duration::from_millis(150),
            window_per_worker: Duration::from_micros(250),
            warmup: Duration::from_millis(30),
            grace: Duration::from_millis(300),
            workers: vec![1, 4, 16, 64, 256, 1024],
            sizes: vec![1, 4, 16, 64],
            holds: vec![Hold::Touch, Hold::Yield],
            pools: Contender::ALL.to_vec(),
            out: PathBuf::from("target/pool-bench"),
            matrix: true,
            pg: false,
            pg_url: "host=127.0.0.1 port=5432 user=postgres dbname=test".into(),
            pg_bouncer_url: None,
            pg_reps: 1,
            redis: false,
            redis_url: "redis://127.0.0.1:6379/".into(),
            redis_reps: 1,
            quick: false,
        }
    }
}

fn list<T>(s: &str, f: impl Fn(&str) -> Option<T>) -> Result<Vec<T>, String> {
    s.split(',')
        .map(|x| f(x.trim()).ok_or_else(|| format!("unknown value {x:?}")))
        .collect()
}

impl Options {
    /// Parses the command line (without the program name).
    ///
    /// # Errors
    /// A message naming the bad argument; `Err("")` for `--help`.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let args: Vec<String> = args.into_iter().collect();
        let mut o = Self::default();
        if args.iter().any(|a| a == "--quick") {
            o.quick = true;
            o.reps = 3;
            o.window = Duration::from_millis(20);
            o.window_per_worker = Duration::from_micros(80);
            o.warmup = Duration::from_millis(5);
            o.grace = Duration::from_millis(60);
        }
        let mut it = args.into_iter();
        let ms = |v: Option<String>| -> Result<Duration, String> {
            v.and_then(|v| v.parse().ok())
                .map(Duration::from_millis)
                .ok_or_else(|| "expected milliseconds".to_string())
        };
        let num = |v: &str| v.parse::<usize>().ok().filter(|&n| n > 0);
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--quick" => {}
                "--help" | "-h" => return Err(String::new()),
                "--reps" => {
                    o.reps = it.next().as_deref().and_then(num).ok_or("--reps N")?;
                }
                "--window-ms" => o.window = ms(it.next())?,
                "--warmup-ms" => o.warmup = ms(it.next())?,
                "--grace-ms" => o.grace = ms(it.next())?,
                "--workers" => o.workers = list(&it.next().ok_or("--workers LIST")?, num)?,
                "--sizes" => o.sizes = list(&it.next().ok_or("--sizes LIST")?, num)?,
                "--cycles" => {
                    o.holds = list(&it.next().ok_or("--cycles LIST")?, |s| match s {
                        "touch" => Some(Hold::Touch),
                        "yield" => Some(Hold::Yield),
                        _ => None,
                    })?;
                }
                "--pools" => {
                    o.pools = list(&it.next().ok_or("--pools LIST")?, Contender::from_name)?;
                }
                "--out" => o.out = it.next().ok_or("--out DIR")?.into(),
                "--pg" => o.pg = true,
                "--pg-only" => {
                    o.pg = true;
                    o.matrix = false;
                }
                "--pg-url" => o.pg_url = it.next().ok_or("--pg-url URL")?,
                "--redis" => o.redis = true,
                "--redis-only" => {
                    o.redis = true;
                    o.matrix = false;
                }
                "--redis-url" => o.redis_url = it.next().ok_or("--redis-url URL")?,
                "--redis-reps" => {
                    o.redis_reps = it.next().as_deref().and_then(num).ok_or("--redis-reps N")?;
                }
                "--pg-reps" => {
                    o.pg_reps = it.next().as_deref().and_then(num).ok_or("--pg-reps N")?;
                }
                "--pg-bouncer-url" => {
                    o.pg_bouncer_url = Some(it.next().ok_or("--pg-bouncer-url URL")?);
                }
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(o)
    }

    /// The cells of the matrix, in run order.
    pub fn cells(&self) -> Vec<Cell> {
        let mut cells = Vec::new();
        for &hold in &self.holds {
            for &workers in &self.workers {
                for &size in &self.sizes {
                    cells.push(Cell {
                        hold,
                        workers,
                        size,
                    });
                }
            }
        }
        cells
    }
}

/// Runs the matrix, printing progress to stderr; returns every measurement.
pub fn run_matrix(o: &Options, cells: &[Cell]) -> Vec<Record> {
    let mut records = Vec::new();
    let started = Instant::now();
    let total: usize = cells
        .iter()
        .map(|c| {
            o.pools
                .iter()
                .filter(|p| p.applies(c.workers, c.size))
                .count()
        })
        .sum::<usize>()
        * o.reps;
    let mut done = 0;
    for (ci, cell) in cells.iter().enumerate() {
        let pools: Vec<Contender> = o
            .pools
            .iter()
            .copied()
            .filter(|p| p.applies(cell.workers, cell.size))
            .collect();
        let spec = Spec {
            workers: cell.workers,
            size: cell.size,
            hold: cell.hold,
            warmup: o.warmup,
            window: o.window.max(o.window_per_worker * cell.workers as u32),
            grace: o.grace,
        };
        for rep in 0..o.reps {
            // Interleave: every repetition starts with a different pool, and odd ones run
            // backwards, so drift of the machine hits every pool alike.
            let mut order = pools.clone();
            let n = order.len().max(1);
            order.rotate_left(rep % n);
            if rep % 2 == 1 {
                order.reverse();
            }
            for contender in order {
                let elapsed = started.elapsed().as_secs_f64();
                let eta = if done > 0 {
                    elapsed / done as f64 * (total - done) as f64
                } else {
                    0.0
                };
                eprint!(
                    "\r\x1b[2K[{done}/{total} {elapsed:.0}s, ~{eta:.0}s left] cell {}/{}: {} \
                     workers={} size={} rep {}/{} {}",
                    ci + 1,
                    cells.len(),
                    cell.hold.name(),
                    cell.workers,
                    cell.size,
                    rep + 1,
                    o.reps,
                    contender.name()
                );
                let _ = std::io::stderr().flush();
                let sample = contender.measure(&spec);
                records.push(Record {
                    cell: ci,
                    rep,
                    contender,
                    sample,
                });
                done += 1;
            }
        }
    }
    eprintln!(
        "\r\x1b[2K{done} runs in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    records
}

fn configuration(o: &Options) -> String {
    let mut s = format!(
        "## Configuration\n\n- machine: {} CPUs; tokio, async-std and the smol executor each run \
         {} worker threads; r2d2 runs one OS thread per worker\n- matrix: cycles {:?} x workers \
         {:?} x sizes {:?}; {} repetitions per cell with the pools interleaved; warm-up {:?}, \
         window {:?} (at least {:?} per worker), grace {:?}\n- cycle: acquire, touch (increment a counter in the fake \
         connection), in `yield` mode also yield to the scheduler while holding, release\n- \
         flags: *stuck* = still inside a cycle {:?} after the window; *starved* = completed no \
         cycle in the window; *erred* = an acquire failed\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        harness::THREADS,
        o.holds.iter().map(|h| h.name()).collect::<Vec<_>>(),
        o.workers,
        o.sizes,
        o.reps,
        o.warmup,
        o.window,
        o.window_per_worker,
        o.grace,
        o.grace,
    );
    for c in &o.pools {
        s.push_str(&format!("- `{}`: {}\n", c.name(), c.config()));
    }
    s
}

/// The command-line entry point.
pub fn main() -> ExitCode {
    let o = match Options::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{e}\n\n{HELP}");
            return ExitCode::FAILURE;
        }
    };
    println!("# pool-bench{}\n", if o.quick { " --quick" } else { "" });
    if o.matrix {
        println!("{}", configuration(&o));
        let cells = o.cells();
        let records = run_matrix(&o, &cells);
        println!("{}", report::markdown(&cells, &records, o.reps));
        if let Err(e) = std::fs::create_dir_all(&o.out) {
            eprintln!("cannot create {}: {e}", o.out.display());
            return ExitCode::FAILURE;
        }
        let csv = o.out.join("results.csv");
        let svg = o.out.join("chart.svg");
        let written = std::fs::write(&csv, report::csv(&cells, &records))
            .and_then(|()| std::fs::write(&svg, report::svg(&cells, &records, o.reps)));
        match written {
            Ok(()) => println!("CSV: {}  \nchart: {}\n", csv.display(), svg.display()),
            Err(e) => {
                eprintln!("writing results: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if o.pg {
        match pg::run(&o) {
            Ok(report) => println!("{report}"),
            Err(e) => {
                eprintln!("PostgreSQL mode: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if o.redis {
        match redis_mode::run(&o) {
            Ok(report) => println!("{report}"),
            Err(e) => {
                eprintln!("Redis mode: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
