//! One measurement: a pool, `workers` tasks (or threads) cycling through it, a warm-up, a
//! timed window, and what every worker did in it.
//!
//! The cycle is: acquire a connection, touch it (in [`Hold::Yield`] mode also yield to the
//! scheduler while holding it), release it. Each worker counts its own cycles in a padded
//! slot the main thread reads at the start and the end of the window, so the counts cost no
//! shared write. The acquire wait is measured without a clock read on the fast path: an
//! acquire that completes on its first poll waited zero; one that returns `Pending` reads
//! the clock then and again when it completes. Each worker records every acquire of the
//! window in its own histogram.

use std::future::{poll_fn, Future};
use std::ops::DerefMut;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::stats::{jain, Histogram};

/// The fake in-memory connection every pool lends.
#[derive(Debug, Default)]
pub struct Conn {
    /// How often it was used; the "touch" of a cycle increments it.
    pub uses: u64,
}

/// What a worker does while it holds a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Touch it and give it back at once.
    Touch,
    /// Touch it, yield to the scheduler once, then give it back.
    Yield,
}

impl Hold {
    /// The name used in tables and CSV.
    pub fn name(self) -> &'static str {
        match self {
            Self::Touch => "touch",
            Self::Yield => "yield",
        }
    }
}

/// The parameters of one measurement.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Concurrent workers.
    pub workers: usize,
    /// The pool's maximum size (it is warmed to this size first).
    pub size: usize,
    /// The cycle.
    pub hold: Hold,
    /// Run before the window, not counted.
    pub warmup: Duration,
    /// The measured window.
    pub window: Duration,
    /// How long after the window the workers get to finish before the unfinished ones count
    /// as stuck.
    pub grace: Duration,
}

/// What one measurement found.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Cycles completed in the window, by all workers.
    pub cycles: u64,
    /// The window's measured length, in seconds.
    pub secs: f64,
    /// Cycles completed in the window, per worker.
    pub per_worker: Vec<u64>,
    /// The acquire waits of the window (zero for acquires ready on their first poll).
    pub waits: Histogram,
    /// Workers still inside an acquire or a cycle after the grace period: hung.
    pub stuck: usize,
    /// Acquires that failed.
    pub errors: u64,
    /// The first error message.
    pub first_error: Option<String>,
}

impl Sample {
    /// A sample for a pool that could not even be set up.
    pub fn failed(workers: usize, error: String) -> Self {
        Self {
            per_worker: vec![0; workers],
            errors: 1,
            first_error: Some(error),
            ..Self::default()
        }
    }

    /// Cycles per second.
    pub fn throughput(&self) -> f64 {
        if self.secs > 0.0 {
            self.cycles as f64 / self.secs
        } else {
            0.0
        }
    }

    /// Jain's fairness index over the per-worker cycles of the window.
    pub fn jain(&self) -> f64 {
        jain(&self.per_worker)
    }

    /// Workers that completed no cycle in the window.
    pub fn starved(&self) -> usize {
        self.per_worker.iter().filter(|&&n| n == 0).count()
    }

    /// Why this sample disqualifies its pool as "best peer", if it does.
    pub fn flag(&self) -> Option<&'static str> {
        if self.stuck > 0 {
            Some("stuck")
        } else if self.errors > 0 {
            Some("erred")
        } else if self.starved() > 0 {
            Some("starved")
        } else {
            None
        }
    }
}

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// A per-worker counter on its own cache line.
#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

/// What the main thread and the workers of one measurement share.
pub(crate) struct Control {
    phase: AtomicU8,
    counts: Box<[Padded]>,
    finished: AtomicUsize,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    waits: Mutex<Histogram>,
}

impl Control {
    pub(crate) fn new(workers: usize) -> Arc<Self> {
        Arc::new(Self {
            phase: AtomicU8::new(WARMUP),
            counts: (0..workers).map(|_| Padded::default()).collect(),
            finished: AtomicUsize::new(0),
            errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
            waits: Mutex::new(Histogram::new()),
        })
    }

    /// Whether the window is open (`Some(true)`), not yet (`Some(false)`), or over (`None`).
    #[inline]
    pub(crate) fn phase(&self) -> Option<bool> {
        match self.phase.load(Relaxed) {
            STOP => None,
            p => Some(p == MEASURE),
        }
    }

    #[inline]
    pub(crate) fn count(&self, worker: usize, cycles: u64) {
        self.counts[worker].0.store(cycles, Relaxed);
    }

    pub(crate) fn fail(&self, error: String) {
        self.errors.fetch_add(1, Relaxed);
        let mut first = self
            .first_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        first.get_or_insert(error);
    }

    pub(crate) fn finish(&self, waits: &Histogram) {
        self.waits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .merge(waits);
        self.finished.fetch_add(1, Relaxed);
    }

    fn snapshot(&self) -> Vec<u64> {
        self.counts.iter().map(|c| c.0.load(Relaxed)).collect()
    }

    /// Runs the phases from the calling (non-worker) thread and collects the sample.
    pub(crate) fn drive(&self, spec: &Spec) -> Sample {
        std::thread::sleep(spec.warmup);
        self.phase.store(MEASURE, Relaxed);
        let start = Instant::now();
        let before = self.snapshot();
        std::thread::sleep(spec.window);
        let after = self.snapshot();
        let secs = start.elapsed().as_secs_f64();
        self.phase.store(STOP, Relaxed);
        let deadline = Instant::now() + spec.grace;
        while self.finished.load(Relaxed) < self.counts.len() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(500));
        }
        let per_worker: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        let waits = std::mem::take(&mut *self.waits.lock().unwrap_or_else(PoisonError::into_inner));
        Sample {
            cycles: per_worker.iter().sum(),
            secs,
            per_worker,
            waits,
            stuck: self.counts.len() - self.finished.load(Relaxed),
            errors: self.errors.load(Relaxed),
            first_error: self
                .first_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        }
    }
}

/// A pool the async harness can drive.
pub trait AsyncPool: Send + Sync + 'static {
    /// The guard of a lent connection.
    type Guard<'a>: DerefMut<Target = Conn> + Send
    where
        Self: 'a;

    /// Acquires a connection; errors become messages.
    fn acquire(&self) -> impl Future<Output = Result<Self::Guard<'_>, String>> + Send;
}

/// How a runtime yields to its scheduler.
pub trait Yield {
    /// The runtime's `yield_now`.
    fn yield_now() -> impl Future<Output = ()> + Send;
}

/// Awaits `fut` and measures its wait: zero if it was ready on the first poll, otherwise
/// from its first `Pending` to its completion (so the fast path reads no clock).
async fn timed<F: Future>(fut: F) -> (F::Output, u64) {
    let mut fut = pin!(fut);
    let mut start: Option<Instant> = None;
    poll_fn(|cx| match fut.as_mut().poll(cx) {
        Poll::Ready(out) => Poll::Ready((out, start.map_or(0, |s| s.elapsed().as_nanos() as u64))),
        Poll::Pending => {
            start.get_or_insert_with(Instant::now);
            Poll::Pending
        }
    })
    .await
}

/// Uses a connection: what every cycle does with it.
#[inline]
pub fn touch(conn: &mut Conn) {
    conn.uses = conn.uses.wrapping_add(1);
    std::hint::black_box(conn);
}

/// One async worker: cycles until the window is over.
pub(crate) async fn worker<P: AsyncPool, Y: Yield>(
    pool: Arc<P>,
    ctl: Arc<Control>,
    me: usize,
    hold: Hold,
) {
    let mut waits = Histogram::new();
    let mut cycles = 0u64;
    while let Some(measuring) = ctl.phase() {
        let (got, waited) = timed(pool.acquire()).await;
        match got {
            Ok(mut conn) => {
                touch(&mut conn);
                if hold == Hold::Yield {
                    Y::yield_now().await;
                }
                drop(conn);
            }
            Err(e) => {
                ctl.fail(e);
                break;
            }
        }
        cycles += 1;
        ctl.count(me, cycles);
        if measuring {
            waits.record(waited);
        }
    }
    ctl.finish(&waits);
}

/// Times the bare cycle, for profilers and paired timings: `tasks` tasks on `rt` share the
/// pool `make` builds (warmed to `size` first) and run `cycles / tasks` cycles each, touching
/// the connection and, if `yields`, holding it across a yield, so once `tasks > size` every
/// release is a hand-off to a waiting task. No window, counters or wait histograms: only the pool and the runtime.
///
/// # Errors
/// The first failed build or acquire, or a task's panic.
pub fn time_hand_offs<P, F, Fut>(
    rt: &tokio::runtime::Runtime,
    make: F,
    (size, tasks, cycles, yields): (usize, usize, u64, bool),
) -> Result<Duration, String>
where
    P: AsyncPool,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<P, String>>,
{
    rt.block_on(async {
        let pool = Arc::new(make().await?);
        warm(&*pool, size).await?;
        let each = cycles / tasks.max(1) as u64;
        let start = Instant::now();
        let handles: Vec<_> = (0..tasks.max(1))
            .map(|_| {
                let pool = Arc::clone(&pool);
                tokio::spawn(async move {
                    for _ in 0..each {
                        let mut conn = pool.acquire().await?;
                        touch(&mut conn);
                        if yields {
                            tokio::task::yield_now().await;
                        }
                    }
                    Ok::<(), String>(())
                })
            })
            .collect();
        for handle in handles {
            handle.await.map_err(|e| e.to_string())??;
        }
        Ok(start.elapsed())
    })
}

/// Acquires `size` connections at once (opening them), then gives them all back.
pub(crate) async fn warm<P: AsyncPool>(pool: &P, size: usize) -> Result<(), String> {
    let mut held = Vec::with_capacity(size);
    for _ in 0..size {
        held.push(pool.acquire().await?);
    }
    Ok(())
}

/// Tokio's yield.
#[derive(Debug)]
pub struct TokioYield;
impl Yield for TokioYield {
    fn yield_now() -> impl Future<Output = ()> + Send {
        tokio::task::yield_now()
    }
}

/// async-std's yield.
#[derive(Debug)]
pub struct AsyncStdYield;
impl Yield for AsyncStdYield {
    fn yield_now() -> impl Future<Output = ()> + Send {
        async_std::task::yield_now()
    }
}

/// smol's yield.
#[derive(Debug)]
pub struct SmolYield;
impl Yield for SmolYield {
    fn yield_now() -> impl Future<Output = ()> + Send {
        smol::future::yield_now()
    }
}

/// The worker threads of every runtime.
pub const THREADS: usize = 2;

/// Runs one measurement on a fresh multi-thread tokio runtime (2 workers); `make` builds
/// the pool inside it. Hung tasks are dropped with the runtime.
pub fn run_tokio<P, F, Fut>(spec: &Spec, make: F) -> Sample
where
    P: AsyncPool,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<P, String>>,
{
    let kind = std::env::var("POOL_BENCH_RT").unwrap_or_default();
    let mut b = if kind == "ct" {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if kind != "ct" {
        b.worker_threads(THREADS);
    }
    if kind == "time" || kind == "ct" {
        b.enable_time();
    } else {
        b.enable_all();
    }
    let rt = match b.build() {
        Ok(rt) => rt,
        Err(e) => return Sample::failed(spec.workers, e.to_string()),
    };
    let pool = rt.block_on(async {
        let pool = make().await?;
        warm(&pool, spec.size).await?;
        Ok::<_, String>(Arc::new(pool))
    });
    let pool = match pool {
        Ok(pool) => pool,
        Err(e) => return Sample::failed(spec.workers, e),
    };
    let ctl = Control::new(spec.workers);
    for me in 0..spec.workers {
        rt.spawn(worker::<P, TokioYield>(
            Arc::clone(&pool),
            Arc::clone(&ctl),
            me,
            spec.hold,
        ));
    }
    let sample = ctl.drive(spec);
    rt.shutdown_timeout(Duration::from_millis(200));
    sample
}

/// Runs one measurement on async-std's global executor. Hung tasks are detached (they only
/// cost memory).
pub fn run_async_std<P, F, Fut>(spec: &Spec, make: F) -> Sample
where
    P: AsyncPool,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<P, String>>,
{
    let pool = async_std::task::block_on(async {
        let pool = make().await?;
        warm(&pool, spec.size).await?;
        Ok::<_, String>(Arc::new(pool))
    });
    let pool = match pool {
        Ok(pool) => pool,
        Err(e) => return Sample::failed(spec.workers, e),
    };
    let ctl = Control::new(spec.workers);
    for me in 0..spec.workers {
        drop(async_std::task::spawn(worker::<P, AsyncStdYield>(
            Arc::clone(&pool),
            Arc::clone(&ctl),
            me,
            spec.hold,
        )));
    }
    ctl.drive(spec)
}

/// Runs one measurement on a fresh `smol::Executor` run by 2 threads. Hung tasks are
/// cancelled with it.
pub fn run_smol<P, F, Fut>(spec: &Spec, make: F) -> Sample
where
    P: AsyncPool,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<P, String>>,
{
    let pool = smol::block_on(async {
        let pool = make().await?;
        warm(&pool, spec.size).await?;
        Ok::<_, String>(Arc::new(pool))
    });
    let pool = match pool {
        Ok(pool) => pool,
        Err(e) => return Sample::failed(spec.workers, e),
    };
    let ex = Arc::new(smol::Executor::new());
    let (stop, stopped) = smol::channel::bounded::<()>(1);
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let ex = Arc::clone(&ex);
            let stopped = stopped.clone();
            std::thread::spawn(move || smol::block_on(ex.run(stopped.recv())))
        })
        .collect();
    let ctl = Control::new(spec.workers);
    let tasks: Vec<_> = (0..spec.workers)
        .map(|me| {
            ex.spawn(worker::<P, SmolYield>(
                Arc::clone(&pool),
                Arc::clone(&ctl),
                me,
                spec.hold,
            ))
        })
        .collect();
    let sample = ctl.drive(spec);
    drop(stop);
    for t in threads {
        let _ = t.join();
    }
    drop(tasks);
    sample
}

/// A blocking pool the thread harness can drive (r2d2).
pub trait SyncPool: Send + Sync + 'static {
    /// The guard of a lent connection.
    type Guard<'a>: DerefMut<Target = Conn>
    where
        Self: 'a;

    /// Takes an idle connection without waiting, if there is one.
    fn try_get(&self) -> Option<Self::Guard<'_>>;

    /// Waits for a connection.
    fn get(&self) -> Result<Self::Guard<'_>, String>;
}

/// Runs one measurement with one OS thread per worker (64 KiB stacks); the yield of
/// [`Hold::Yield`] is `std::thread::yield_now`. An acquire that finds a connection idle
/// (`try_get`) waited zero; otherwise the blocking `get` is timed. Hung threads are left
/// blocked (the process ends them).
pub fn run_threads<P: SyncPool>(spec: &Spec, pool: Result<P, String>) -> Sample {
    let pool = match pool {
        Ok(pool) => Arc::new(pool),
        Err(e) => return Sample::failed(spec.workers, e),
    };
    {
        let mut held = Vec::with_capacity(spec.size);
        for _ in 0..spec.size {
            match pool.get() {
                Ok(g) => held.push(g),
                Err(e) => return Sample::failed(spec.workers, e),
            }
        }
    }
    let ctl = Control::new(spec.workers);
    for me in 0..spec.workers {
        let (pool, mine, hold) = (Arc::clone(&pool), Arc::clone(&ctl), spec.hold);
        let spawned = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                let ctl = mine;
                let mut waits = Histogram::new();
                let mut cycles = 0u64;
                while let Some(measuring) = ctl.phase() {
                    let (got, waited) = match pool.try_get() {
                        Some(g) => (Ok(g), 0),
                        None => {
                            let start = Instant::now();
                            let got = pool.get();
                            (got, start.elapsed().as_nanos() as u64)
                        }
                    };
                    match got {
                        Ok(mut conn) => {
                            touch(&mut conn);
                            if hold == Hold::Yield {
                                std::thread::yield_now();
                            }
                            drop(conn);
                        }
                        Err(e) => {
                            ctl.fail(e);
                            break;
                        }
                    }
                    cycles += 1;
                    ctl.count(me, cycles);
                    if measuring {
                        waits.record(waited);
                    }
                }
                ctl.finish(&waits);
            });
        if let Err(e) = spawned {
            ctl.fail(format!("spawning worker thread {me}: {e}"));
            ctl.finish(&Histogram::new());
        }
    }
    ctl.drive(spec)
}
