//! What the service modes (PostgreSQL, Redis) share: workers that each loop acquire, one
//! operation on the lent connection, release, timing the three parts, until a window ends;
//! the sum of a run; the median of several runs.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::stats::Histogram;

/// What the workers of one run add up to.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    /// Operations done (queries, commands).
    pub(crate) ops: u64,
    pub(crate) acquire: Duration,
    /// The operations themselves.
    pub(crate) op: Duration,
    pub(crate) release: Duration,
    /// Each acquire's wait.
    pub(crate) waits: Histogram,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    /// Workers still waiting 2 s after the window: hung.
    pub(crate) stuck: usize,
}

impl Totals {
    /// A run that could not start (the pool could not be built, say).
    pub(crate) fn failed(error: String) -> Self {
        Self {
            errors: 1,
            first_error: Some(error),
            ..Self::default()
        }
    }

    fn add(&mut self, t: Self) {
        self.ops += t.ops;
        self.acquire += t.acquire;
        self.op += t.op;
        self.release += t.release;
        self.waits.merge(&t.waits);
        self.errors += t.errors;
        if self.first_error.is_none() {
            self.first_error = t.first_error;
        }
    }

    /// Operations per second over `window`.
    pub(crate) fn per_second(&self, window: Duration) -> f64 {
        self.ops as f64 / window.as_secs_f64()
    }

    /// The errors column: the count, with the first error if there was one.
    pub(crate) fn errors_cell(&self) -> String {
        match &self.first_error {
            Some(e) => format!("{} ({e})", self.errors),
            None => self.errors.to_string(),
        }
    }
}

/// The run with the median throughput of `runs` (not empty).
pub(crate) fn median(mut runs: Vec<Totals>) -> Totals {
    runs.sort_by_key(|t| t.ops);
    runs.swap_remove(runs.len() / 2)
}

/// A lent connection that can run the operation `Op` (a mode's query or command).
pub(crate) trait Run<Op>: Send {
    fn run(&mut self, op: &Op) -> impl Future<Output = Result<(), String>> + Send;
}

/// A pool a service mode can drive, lending connections that run `Op`.
pub(crate) trait Lend<Op>: Send + Sync + 'static {
    /// The guard of a lent connection.
    type Guard<'a>: Run<Op>
    where
        Self: 'a;

    /// Acquires a connection; errors become messages.
    fn get(&self) -> impl Future<Output = Result<Self::Guard<'_>, String>> + Send;
}

/// One worker's loop: acquire, `op`, release, each timed, until `until`.
async fn work<Op, P: Lend<Op>>(
    pool: Arc<P>,
    op: Arc<Op>,
    until: Instant,
    totals: Arc<Mutex<Totals>>,
) where
    Op: Send + Sync,
{
    let mut t = Totals::default();
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
        let result = conn.run(&op).await;
        let t2 = Instant::now();
        drop(conn);
        let t3 = Instant::now();
        if let Err(e) = result {
            t.errors += 1;
            t.first_error.get_or_insert(e);
            break;
        }
        t.ops += 1;
        t.acquire += t1 - t0;
        t.op += t2 - t1;
        t.release += t3 - t2;
        t.waits.record((t1 - t0).as_nanos() as u64);
    }
    totals.lock().unwrap_or_else(PoisonError::into_inner).add(t);
}

/// Warms the pools up (`size` connections held at once, then given back), runs one worker
/// per entry of `pools` (all the same pool, or one each) until the window ends, adds them
/// up.
pub(crate) async fn drive<Op, P: Lend<Op>>(
    pools: Vec<Arc<P>>,
    size: usize,
    op: Op,
    window: Duration,
) -> Result<Totals, String>
where
    Op: Send + Sync + 'static,
{
    if let Some(pool) = pools.first() {
        let mut held = Vec::with_capacity(size);
        for _ in 0..size {
            held.push(pool.get().await?);
        }
    }
    let op = Arc::new(op);
    let totals = Arc::new(Mutex::new(Totals::default()));
    let until = Instant::now() + window;
    let handles: Vec<_> = pools
        .into_iter()
        .map(|pool| tokio::spawn(work(pool, Arc::clone(&op), until, Arc::clone(&totals))))
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
pub(crate) fn repeat<P>(pool: P, workers: usize) -> Vec<Arc<P>> {
    let pool = Arc::new(pool);
    (0..workers).map(|_| Arc::clone(&pool)).collect()
}

/// Microseconds, for the reports.
pub(crate) fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
