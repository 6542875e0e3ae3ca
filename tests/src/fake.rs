//! The fakes the suite drives the pool with: a runtime wrapper that counts the pool's tasks,
//! and a manager whose every step can be scripted.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use pool_core::{Manager, Runtime};

/// A runtime that delegates to `R` and counts the tasks the pool has spawned and that are
/// still alive (running or not yet dropped).
#[derive(Debug, Clone)]
pub struct Counted<R> {
    /// The adapter's runtime.
    pub inner: R,
    live: Arc<AtomicUsize>,
}

impl<R: Runtime> Counted<R> {
    /// How many tasks the pool spawned that have not ended.
    pub fn live_tasks(&self) -> usize {
        self.live.load(SeqCst)
    }

    /// Spawns a test task on the inner runtime (not counted) and returns its output; `Err`
    /// if it panicked.
    pub fn spawn<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> futures::channel::oneshot::Receiver<T> {
        let (tx, rx) = futures::channel::oneshot::channel();
        self.inner.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx
    }

    /// Sleeps for `d` on the runtime's timers.
    pub async fn sleep(&self, d: Duration) {
        self.inner.sleep_until(Instant::now() + d).await;
    }
}

struct LiveTask(Arc<AtomicUsize>);

impl Drop for LiveTask {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

impl<R: Runtime> Runtime for Counted<R> {
    type Sleep = R::Sleep;

    fn current() -> Result<Self, String> {
        R::current().map(|inner| Self {
            inner,
            live: Arc::default(),
        })
    }

    fn validate(&self) -> Result<(), String> {
        self.inner.validate()
    }

    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.live.fetch_add(1, SeqCst);
        let live = LiveTask(Arc::clone(&self.live));
        self.inner.spawn(async move {
            let _live = live;
            future.await;
        });
    }

    fn sleep_until(&self, deadline: Instant) -> Self::Sleep {
        self.inner.sleep_until(deadline)
    }

    fn spawn_blocking<F, T>(&self, f: F) -> impl Future<Output = T> + Send + 'static
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.inner.spawn_blocking(f)
    }

    fn now(&self) -> Instant {
        self.inner.now()
    }

    fn poll_budget(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.inner.poll_budget(cx)
    }

    fn current_task(&self) -> Option<pool_core::TaskId> {
        self.inner.current_task()
    }
}

/// What one step of the fake manager does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Succeeds at once.
    Ok,
    /// Fails at once with "connection refused".
    Err,
    /// Succeeds after this long.
    Slow(Duration),
    /// Never finishes.
    Never,
    /// Fails at once with an error that waiting cannot heal ("FATAL: password
    /// authentication failed", which the manager's `is_fatal` says is fatal).
    Fatal,
    /// Panics.
    Panic,
}

impl Step {
    /// Every kind of step that finishes or hangs without panicking, with `slow` for the slow
    /// one.
    pub fn all(slow: Duration) -> [Step; 4] {
        [Step::Ok, Step::Err, Step::Slow(slow), Step::Never]
    }
}

#[derive(Debug, Clone, Copy)]
struct Plan {
    connect: Step,
    check: Step,
    reset: Step,
    needs_reset: bool,
}

/// Counters of the fake manager, shared with its connections.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connects started.
    pub connects: AtomicUsize,
    /// Connections opened.
    pub opened: AtomicUsize,
    /// Connections alive now (opened and not dropped).
    pub live: AtomicUsize,
    /// The most connections alive at once.
    pub max_live: AtomicUsize,
    /// Checks run.
    pub checks: AtomicUsize,
    /// Resets run.
    pub resets: AtomicUsize,
    /// Connections with an id up to this one count as broken (the server closed them).
    pub broken_upto: AtomicUsize,
    /// Checks of connections with an id up to this one never finish (their backend froze).
    pub frozen_upto: AtomicUsize,
    /// `has_broken` panics while this is set.
    pub panic_in_has_broken: std::sync::atomic::AtomicBool,
}

/// A fake connection: counts itself alive until dropped.
#[derive(Debug)]
pub struct FakeConn {
    /// Its number, in order of opening (from 1).
    pub id: usize,
    /// Set by a test to make the manager's `has_broken` say so.
    pub broken: bool,
    /// Set by a test to mark session state a reset must clear.
    pub dirty: bool,
    /// Set by a test to make dropping (closing) this connection panic.
    pub panic_on_drop: bool,
    stats: Arc<Stats>,
}

impl Drop for FakeConn {
    fn drop(&mut self) {
        self.stats.live.fetch_sub(1, SeqCst);
        if self.panic_on_drop && !std::thread::panicking() {
            panic!("the fake connection {} panics in Drop", self.id);
        }
    }
}

/// The fake connect/check/reset error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeError(pub String);

impl std::fmt::Display for FakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FakeError {}

/// The text of the fake's fatal error.
pub const FATAL: &str = "FATAL: password authentication failed";

/// A manager whose connect, check and reset steps are scripted.
#[derive(Debug)]
pub struct Fake<R> {
    runtime: R,
    plan: Mutex<Plan>,
    /// Its counters.
    pub stats: Arc<Stats>,
}

impl<R: Runtime> Fake<R> {
    /// A manager whose every step succeeds at once.
    pub fn new(runtime: R) -> Self {
        let plan = Plan {
            connect: Step::Ok,
            check: Step::Ok,
            reset: Step::Ok,
            needs_reset: false,
        };
        Self {
            runtime,
            plan: Mutex::new(plan),
            stats: Arc::default(),
        }
    }

    fn plan(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.plan
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Scripts the connect step.
    pub fn set_connect(&self, step: Step) {
        self.plan().connect = step;
    }

    /// Scripts the checkout check.
    pub fn set_check(&self, step: Step) {
        self.plan().check = step;
    }

    /// Scripts the reset, and makes every returned connection need one.
    pub fn set_reset(&self, step: Step) {
        let mut plan = self.plan();
        plan.reset = step;
        plan.needs_reset = true;
    }

    /// Makes every connection opened so far count as broken, as if the server had closed
    /// them while they sat idle.
    pub fn break_existing(&self) {
        self.stats.broken_upto.store(self.opened(), SeqCst);
    }

    /// Makes the checks of every connection opened so far hang, as if their backends had
    /// frozen (SIGSTOP) while they sat idle.
    pub fn freeze_existing(&self) {
        self.stats.frozen_upto.store(self.opened(), SeqCst);
    }

    /// Connections alive now.
    pub fn live(&self) -> usize {
        self.stats.live.load(SeqCst)
    }

    /// Connections opened so far.
    pub fn opened(&self) -> usize {
        self.stats.opened.load(SeqCst)
    }

    async fn perform(&self, step: Step) -> Result<(), FakeError> {
        match step {
            Step::Ok => Ok(()),
            Step::Err => Err(FakeError("connection refused".into())),
            Step::Slow(d) => {
                self.runtime.sleep_until(Instant::now() + d).await;
                Ok(())
            }
            Step::Never => std::future::pending().await,
            Step::Fatal => Err(FakeError(FATAL.into())),
            Step::Panic => panic!("the fake manager panics"),
        }
    }
}

impl<R: Runtime> Manager for Fake<R> {
    type Connection = FakeConn;
    type Error = FakeError;

    async fn connect(&self) -> Result<FakeConn, FakeError> {
        self.stats.connects.fetch_add(1, SeqCst);
        let step = self.plan().connect;
        self.perform(step).await?;
        let id = self.stats.opened.fetch_add(1, SeqCst) + 1;
        let live = self.stats.live.fetch_add(1, SeqCst) + 1;
        self.stats.max_live.fetch_max(live, SeqCst);
        Ok(FakeConn {
            id,
            broken: false,
            dirty: false,
            panic_on_drop: false,
            stats: Arc::clone(&self.stats),
        })
    }

    fn is_fatal(&self, error: &FakeError) -> bool {
        error.0 == FATAL
    }

    async fn check(&self, conn: &mut FakeConn) -> Result<(), FakeError> {
        self.stats.checks.fetch_add(1, SeqCst);
        if conn.id <= self.stats.frozen_upto.load(SeqCst) {
            return std::future::pending().await;
        }
        let step = self.plan().check;
        self.perform(step).await
    }

    fn has_broken(&self, conn: &mut FakeConn) -> bool {
        assert!(
            !self.stats.panic_in_has_broken.load(SeqCst),
            "the fake manager panics in has_broken"
        );
        conn.broken || conn.id <= self.stats.broken_upto.load(SeqCst)
    }

    fn needs_reset(&self, _conn: &FakeConn) -> bool {
        self.plan().needs_reset
    }

    async fn reset(&self, conn: &mut FakeConn) -> Result<(), FakeError> {
        self.stats.resets.fetch_add(1, SeqCst);
        let step = self.plan().reset;
        self.perform(step).await?;
        conn.dirty = false;
        Ok(())
    }
}
