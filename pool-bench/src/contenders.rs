//! The pools under test, each at its cheapest honest setting: no health checks, warmed to
//! its size before the window, no time-out that can fire, FIFO queueing where there is a
//! choice. [`Contender::config`] prints exactly what each one is built with.

use std::io;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::harness::{
    run_async_std, run_smol, run_threads, run_tokio, time_hand_offs, AsyncPool, Conn, Sample, Spec,
    SyncPool,
};

/// Every pool the benchmark knows, in column order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Contender {
    /// This pool on tokio.
    PoolTokio,
    /// This pool on async-std.
    PoolAsyncStd,
    /// This pool on smol.
    PoolSmol,
    /// bb8.
    Bb8,
    /// deadpool's managed pool.
    DeadpoolManaged,
    /// deadpool's unmanaged pool.
    DeadpoolUnmanaged,
    /// mobc.
    Mobc,
    /// qp.
    Qp,
    /// fastpool's bounded pool.
    Fastpool,
    /// r2d2, driven by OS threads.
    R2d2,
    /// Floor: a tokio `Semaphore` and a `Mutex<Vec>`.
    FloorSemaphore,
    /// Floor: a lock-free `ArrayQueue` (only where workers <= size).
    FloorArrayQueue,
    /// Floor: the same `ArrayQueue`, taking part in tokio's cooperative budget before each
    /// pop, as this pool does: the ceiling of any pool that respects the budget.
    FloorArrayQueueBudget,
}

impl Contender {
    /// All of them, in column order.
    pub const ALL: [Self; 13] = [
        Self::PoolTokio,
        Self::PoolAsyncStd,
        Self::PoolSmol,
        Self::Bb8,
        Self::DeadpoolManaged,
        Self::DeadpoolUnmanaged,
        Self::Mobc,
        Self::Qp,
        Self::Fastpool,
        Self::R2d2,
        Self::FloorSemaphore,
        Self::FloorArrayQueue,
        Self::FloorArrayQueueBudget,
    ];

    /// The column name.
    pub fn name(self) -> &'static str {
        match self {
            Self::PoolTokio => "pool/tokio",
            Self::PoolAsyncStd => "pool/async-std",
            Self::PoolSmol => "pool/smol",
            Self::Bb8 => "bb8",
            Self::DeadpoolManaged => "deadpool",
            Self::DeadpoolUnmanaged => "deadpool-unmanaged",
            Self::Mobc => "mobc",
            Self::Qp => "qp",
            Self::Fastpool => "fastpool",
            Self::R2d2 => "r2d2",
            Self::FloorSemaphore => "floor:semaphore",
            Self::FloorArrayQueue => "floor:arrayqueue",
            Self::FloorArrayQueueBudget => "floor:arrayqueue+budget",
        }
    }

    /// Looks a contender up by its column name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Whether it is one of the peers (a crates.io pool), the candidates for "best peer".
    pub fn is_peer(self) -> bool {
        matches!(
            self,
            Self::Bb8
                | Self::DeadpoolManaged
                | Self::DeadpoolUnmanaged
                | Self::Mobc
                | Self::Qp
                | Self::Fastpool
                | Self::R2d2
        )
    }

    /// Whether it is this pool (on any runtime).
    pub fn is_ours(self) -> bool {
        matches!(self, Self::PoolTokio | Self::PoolAsyncStd | Self::PoolSmol)
    }

    /// Whether it runs in a cell.
    pub fn applies(self, workers: usize, size: usize) -> bool {
        !matches!(self, Self::FloorArrayQueue | Self::FloorArrayQueueBudget) || workers <= size
    }

    /// How it is configured and driven, for the report.
    pub fn config(self) -> &'static str {
        match self {
            Self::PoolTokio | Self::PoolAsyncStd | Self::PoolSmol => {
                "pool-core 0.1 driver: max_size=size, acquire_timeout=None, \
                 check_on_checkout=false, idle_timeout=None, max_lifetime=None, \
                 wait_times=false, no leak detection; `get()`"
            }
            Self::Bb8 => {
                "bb8 0.9: max_size=size, min_idle=None, test_on_check_out=false, \
                 idle_timeout=None, max_lifetime=None, connection_timeout=1h (never fires), \
                 queue_strategy=Fifo; `get()`"
            }
            Self::DeadpoolManaged => {
                "deadpool 0.13 managed: max_size=size, no timeouts, queue_mode=Fifo, \
                 recycle = `Ok(())`; `get()`"
            }
            Self::DeadpoolUnmanaged => {
                "deadpool 0.13 unmanaged: `Pool::from(vec of size conns)`, no timeout; `get()`"
            }
            Self::Mobc => {
                "mobc 0.9: max_open=size, max_idle=size, get_timeout=None, \
                 test_on_check_out=false, max_lifetime=None, max_idle_lifetime=None, \
                 health_check_interval=None; `get()`"
            }
            Self::Qp => "qp 0.2: `Pool::new(manager, size)`; `acquire_unchecked()` (no validate)",
            Self::Fastpool => {
                "fastpool 1.1 bounded: `PoolConfig::new(size)`, queue_strategy=Fifo, \
                 is_recyclable = `Ok(())`; `get()`"
            }
            Self::R2d2 => {
                "r2d2 0.8, one OS thread per worker: max_size=size, min_idle=None, \
                 test_on_check_out=false, idle_timeout=None, max_lifetime=None, \
                 connection_timeout=1h; `try_get()` then `get()`"
            }
            Self::FloorSemaphore => {
                "tokio::sync::Semaphore(size) + std Mutex<Vec<Conn>>: acquire a permit, pop; \
                 push back, release the permit"
            }
            Self::FloorArrayQueue => {
                "crossbeam ArrayQueue(size): pop (yield and retry if empty, which cannot \
                 happen with workers <= size), push back"
            }
            Self::FloorArrayQueueBudget => {
                "floor:arrayqueue, but each acquire first takes a unit of tokio's cooperative \
                 budget (`tokio::task::coop::poll_proceed`), yielding when it is spent, as \
                 pool/tokio does"
            }
        }
    }

    /// Runs one measurement of this contender.
    pub fn measure(self, spec: &Spec) -> Sample {
        let size = spec.size;
        match self {
            Self::PoolTokio => run_tokio(spec, || make_ours_tokio(size)),
            Self::PoolAsyncStd => run_async_std(spec, || async move {
                ours(pool_async_std::Pool::builder(Fake), size).map(Ours)
            }),
            Self::PoolSmol => run_smol(spec, || async move {
                ours(pool_smol::Pool::builder(Fake), size).map(Ours)
            }),
            Self::Bb8 => run_tokio(spec, || make_bb8(size)),
            Self::DeadpoolManaged => run_tokio(spec, || make_deadpool(size)),
            Self::DeadpoolUnmanaged => run_tokio(spec, || make_deadpool_unmanaged(size)),
            Self::Mobc => run_tokio(spec, || make_mobc(size)),
            Self::Qp => run_tokio(spec, || make_qp(size)),
            Self::Fastpool => run_tokio(spec, || make_fastpool(size)),
            Self::R2d2 => run_threads(
                spec,
                r2d2::Pool::builder()
                    .max_size(size as u32)
                    .min_idle(None)
                    .test_on_check_out(false)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .connection_timeout(Duration::from_secs(3600))
                    .build(Fake)
                    .map(R2d2)
                    .map_err(|e| e.to_string()),
            ),
            Self::FloorSemaphore => run_tokio(spec, || make_floor_semaphore(size)),
            Self::FloorArrayQueue | Self::FloorArrayQueueBudget => {
                run_tokio(spec, || make_floor_arrayqueue(size, self))
            }
        }
    }

    /// Times `cycles` bare cycles of this contender on `rt` (see [`time_hand_offs`]), built
    /// exactly as [`measure`](Self::measure) builds it; `yields`: each task holds its
    /// connection across a yield (with more tasks than connections, every release is then a
    /// hand-off), otherwise it only touches it.
    ///
    /// # Errors
    /// A contender that does not run on tokio (async-std, smol, r2d2), or qp with more tasks
    /// than connections (it loses wake-ups then, so the loop would hang), or a failure of the
    /// loop itself.
    pub fn time_hand_offs(
        self,
        rt: &tokio::runtime::Runtime,
        size: usize,
        tasks: usize,
        cycles: u64,
        yields: bool,
    ) -> Result<Duration, String> {
        let shape = (size, tasks, cycles, yields);
        match self {
            Self::PoolTokio => time_hand_offs(rt, || make_ours_tokio(size), shape),
            Self::Bb8 => time_hand_offs(rt, || make_bb8(size), shape),
            Self::DeadpoolManaged => time_hand_offs(rt, || make_deadpool(size), shape),
            Self::DeadpoolUnmanaged => time_hand_offs(rt, || make_deadpool_unmanaged(size), shape),
            Self::Mobc => time_hand_offs(rt, || make_mobc(size), shape),
            Self::Fastpool => time_hand_offs(rt, || make_fastpool(size), shape),
            Self::Qp if tasks <= size => time_hand_offs(rt, || make_qp(size), shape),
            Self::FloorSemaphore => time_hand_offs(rt, || make_floor_semaphore(size), shape),
            Self::FloorArrayQueue | Self::FloorArrayQueueBudget => {
                time_hand_offs(rt, || make_floor_arrayqueue(size, self), shape)
            }
            Self::Qp | Self::PoolAsyncStd | Self::PoolSmol | Self::R2d2 => Err(format!(
                "{} does not run in the tokio hand-off loop",
                self.name()
            )),
        }
    }
}

async fn make_ours_tokio(size: usize) -> Result<Ours<pool_tokio::Tokio>, String> {
    ours(pool_tokio::Pool::builder(Fake), size).map(Ours)
}

async fn make_qp(size: usize) -> Result<Qp, String> {
    Ok(Qp(qp::Pool::new(Fake, size)))
}

async fn make_bb8(size: usize) -> Result<Bb8, String> {
    bb8::Pool::builder()
        .max_size(size as u32)
        .min_idle(None)
        .test_on_check_out(false)
        .idle_timeout(None)
        .max_lifetime(None)
        .connection_timeout(Duration::from_secs(3600))
        .queue_strategy(bb8::QueueStrategy::Fifo)
        .build(Fake)
        .await
        .map(Bb8)
        .map_err(|e| e.to_string())
}

async fn make_deadpool(size: usize) -> Result<DeadpoolManaged, String> {
    deadpool::managed::Pool::builder(Fake)
        .max_size(size)
        .queue_mode(deadpool::managed::QueueMode::Fifo)
        .build()
        .map(DeadpoolManaged)
        .map_err(|e| e.to_string())
}

async fn make_deadpool_unmanaged(size: usize) -> Result<DeadpoolUnmanaged, String> {
    let conns: Vec<Conn> = (0..size).map(|_| Conn::default()).collect();
    Ok(DeadpoolUnmanaged(deadpool::unmanaged::Pool::from(conns)))
}

async fn make_mobc(size: usize) -> Result<Mobc, String> {
    Ok(Mobc(mobc_builder(size).build(Fake)))
}

async fn make_floor_semaphore(size: usize) -> Result<FloorSemaphore, String> {
    Ok(FloorSemaphore {
        permits: tokio::sync::Semaphore::new(size),
        conns: Mutex::new((0..size).map(|_| Conn::default()).collect()),
    })
}

async fn make_floor_arrayqueue(size: usize, which: Contender) -> Result<FloorArrayQueue, String> {
    let queue = crossbeam_queue::ArrayQueue::new(size);
    for _ in 0..size {
        let _ = queue.push(Conn::default());
    }
    Ok(FloorArrayQueue {
        queue,
        budget: which == Contender::FloorArrayQueueBudget,
    })
}

/// The one manager of fake connections, implementing every pool's manager trait.
#[derive(Debug, Clone, Copy)]
pub struct Fake;

fn ours<R: pool_core::Runtime>(
    builder: pool_core::Builder<Fake, R>,
    size: usize,
) -> Result<pool_core::Pool<Fake, R>, String> {
    builder
        .max_size(size)
        .acquire_timeout(None)
        .check_on_checkout(false)
        .idle_timeout(None)
        .max_lifetime(None)
        .wait_times(false)
        .build()
        .map_err(|e| e.to_string())
}

impl pool_core::Manager for Fake {
    type Connection = Conn;
    type Error = io::Error;
    async fn connect(&self) -> Result<Conn, io::Error> {
        Ok(Conn::default())
    }
}

/// This pool, on runtime `R`.
struct Ours<R: pool_core::Runtime>(pub pool_core::Pool<Fake, R>);

impl<R: pool_core::Runtime> AsyncPool for Ours<R> {
    type Guard<'a> = pool_core::PooledConnection<'a, Fake, R>;
    async fn acquire(&self) -> Result<Self::Guard<'_>, String> {
        self.0.get().await.map_err(|e| e.to_string())
    }
}

impl bb8::ManageConnection for Fake {
    type Connection = Conn;
    type Error = io::Error;
    async fn connect(&self) -> Result<Conn, io::Error> {
        Ok(Conn::default())
    }
    async fn is_valid(&self, _: &mut Conn) -> Result<(), io::Error> {
        Ok(())
    }
    fn has_broken(&self, _: &mut Conn) -> bool {
        false
    }
}

struct Bb8(bb8::Pool<Fake>);

impl AsyncPool for Bb8 {
    type Guard<'a> = bb8::PooledConnection<'a, Fake>;
    async fn acquire(&self) -> Result<Self::Guard<'_>, String> {
        self.0.get().await.map_err(|e| e.to_string())
    }
}

impl deadpool::managed::Manager for Fake {
    type Type = Conn;
    type Error = io::Error;
    async fn create(&self) -> Result<Conn, io::Error> {
        Ok(Conn::default())
    }
    async fn recycle(
        &self,
        _: &mut Conn,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<io::Error> {
        Ok(())
    }
}

struct DeadpoolManaged(deadpool::managed::Pool<Fake>);

impl AsyncPool for DeadpoolManaged {
    type Guard<'a> = deadpool::managed::Object<Fake>;
    async fn acquire(&self) -> Result<Self::Guard<'_>, String> {
        self.0.get().await.map_err(|e| e.to_string())
    }
}

struct DeadpoolUnmanaged(deadpool::unmanaged::Pool<Conn>);

impl AsyncPool for DeadpoolUnmanaged {
    type Guard<'a> = deadpool::unmanaged::Object<Conn>;
    async fn acquire(&self) -> Result<Self::Guard<'_>, String> {
        self.0.get().await.map_err(|e| e.to_string())
    }
}

/// mobc at its cheapest honest setting, for the fake and the PostgreSQL managers alike: no
/// time-outs, no checks, no lifetimes, no background health checks.
pub(crate) fn mobc_builder<M: mobc::Manager>(size: usize) -> mobc::Builder<M> {
    mobc::Pool::builder()
        .max_open(size as u64)
        .max_idle(size as u64)
        .get_timeout(None)
        .test_on_check_out(false)
        .max_lifetime(None)
        .max_idle_lifetime(None)
        .health_check_interval(None)
}

#[mobc::async_trait]
impl mobc::Manager for Fake {
    type Connection = Conn;
    type Error = io::Error;
    async fn connect(&self) -> Result<Conn, io::Error> {
        Ok(Conn::default())
    }
    async fn check(&self, conn: Conn) -> Result<Conn, io::Error> {
        Ok(conn)
    }
}

struct Mobc(mobc::Pool<Fake>);

impl AsyncPool for Mobc {
    type Guard<'a> = mobc::Connection<Fake>;
    async fn acquire(&self) -> Result<Self::Guard<'_>, String> {
        self.0.get().await.map_err(|e| e.to_string())
    }
}

#[qp::async_trait]
impl qp::resource::Manage for Fake {
    type Output = Conn;
    type Error = io::Error;
    async fn try_create(&self) -> Result<Conn, io::Error> {
        Ok(Conn::default())
    }
}

struct Qp(qp::Pool<Fake>);

impl AsyncPool for Qp {
    type Guard<'a> = qp::Pooled<'a, Fake>;
    async fn acquire(&self) -> Result<Self::Guard<'_>, String> {
        self.0.acquire_unchecked().await.map_err(|e| e.to_string())
    }
}

/// fastpool 1.1.2 marks itself deprecated (its authors point to asyncband's pool); it is
/// still the 1.1 release the benchmark compares against, so its warnings stop here.
#[allow(deprecated)]
mod fastpool_pool {
    use std::io;

    use super::Fake;
    use crate::harness::{AsyncPool, Conn};

    pub(super) async fn make_fastpool(size: usize) -> Result<Fastpool, String> {
        let config = fastpool::bounded::PoolConfig::new(size)
            .with_queue_strategy(fastpool::QueueStrategy::Fifo);
        Ok(Fastpool(fastpool::bounded::Pool::new(config, Fake)))
    }

    impl fastpool::ManageObject for Fake {
        type Object = Conn;
        type Error = io::Error;
        async fn create(&self) -> Result<Conn, io::Error> {
            Ok(Conn::default())
        }
        async fn is_recyclable(
            &self,
            _: &mut Conn,
            _: &fastpool::ObjectStatus,
        ) -> Result<(), io::Error> {
            Ok(())
        }
    }

    /// fastpool's bounded pool; its `get` takes the pool by `&Arc`, as its documentation asks.
    pub(super) struct Fastpool(std::sync::Arc<fastpool::bounded::Pool<Fake>>);

    impl AsyncPool for Fastpool {
        type Guard<'a> = fastpool::bounded::Object<Fake>;
        async fn acquire(&self) -> Result<Self::Guard<'_>, String> {
            self.0.get().await.map_err(|e| e.to_string())
        }
    }
}

use fastpool_pool::make_fastpool;

impl r2d2::ManageConnection for Fake {
    type Connection = Conn;
    type Error = io::Error;
    fn connect(&self) -> Result<Conn, io::Error> {
        Ok(Conn::default())
    }
    fn is_valid(&self, _: &mut Conn) -> Result<(), io::Error> {
        Ok(())
    }
    fn has_broken(&self, _: &mut Conn) -> bool {
        false
    }
}

struct R2d2(r2d2::Pool<Fake>);

impl SyncPool for R2d2 {
    type Guard<'a> = r2d2::PooledConnection<Fake>;
    fn try_get(&self) -> Option<Self::Guard<'_>> {
        self.0.try_get()
    }
    fn get(&self) -> Result<Self::Guard<'_>, String> {
        self.0.get().map_err(|e| e.to_string())
    }
}

struct FloorSemaphore {
    permits: tokio::sync::Semaphore,
    conns: Mutex<Vec<Conn>>,
}

/// Where a floor's guard puts its connection back.
trait GiveBack {
    fn give_back(&self, conn: Conn);
}

impl GiveBack for FloorSemaphore {
    fn give_back(&self, conn: Conn) {
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
    }
}

impl GiveBack for crossbeam_queue::ArrayQueue<Conn> {
    fn give_back(&self, conn: Conn) {
        let _ = self.push(conn);
    }
}

/// The guard of both floors: the connection, what it goes back to, and (for the semaphore
/// floor) the permit, released after the connection is back.
struct FloorGuard<'a, P: GiveBack> {
    pool: &'a P,
    conn: Option<Conn>,
    _permit: Option<tokio::sync::SemaphorePermit<'a>>,
}

impl<P: GiveBack> std::ops::Deref for FloorGuard<'_, P> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl<P: GiveBack> std::ops::DerefMut for FloorGuard<'_, P> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl<P: GiveBack> Drop for FloorGuard<'_, P> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.give_back(conn);
        }
    }
}

impl AsyncPool for FloorSemaphore {
    type Guard<'a> = FloorGuard<'a, FloorSemaphore>;
    async fn acquire(&self) -> Result<Self::Guard<'_>, String> {
        let permit = self.permits.acquire().await.map_err(|e| e.to_string())?;
        let conn = self
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .ok_or("a permit without a connection")?;
        Ok(FloorGuard {
            pool: self,
            conn: Some(conn),
            _permit: Some(permit),
        })
    }
}

struct FloorArrayQueue {
    queue: crossbeam_queue::ArrayQueue<Conn>,
    /// Take a unit of tokio's cooperative budget before each pop.
    budget: bool,
}

impl AsyncPool for FloorArrayQueue {
    type Guard<'a> = FloorGuard<'a, crossbeam_queue::ArrayQueue<Conn>>;
    async fn acquire(&self) -> Result<Self::Guard<'_>, String> {
        if self.budget {
            std::future::poll_fn(|cx| {
                tokio::task::coop::poll_proceed(cx).map(|restore| restore.made_progress())
            })
            .await;
        }
        loop {
            if let Some(conn) = self.queue.pop() {
                return Ok(FloorGuard {
                    pool: &self.queue,
                    conn: Some(conn),
                    _permit: None,
                });
            }
            tokio::task::yield_now().await;
        }
    }
}
