//! What the database suites (`postgres.rs`, `redis.rs`) share: reporting past the harness's
//! capture, loud skips that fail under CI, and a few runtime helpers.

use std::future::Future;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::future::{select, Either};
use pool_core::Runtime;

/// Whether the tests run under CI (`CI=true` or `CI=1`), where a skip is a failure.
pub(crate) fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Prints a line to stderr past the test harness's output capture, so a skip or a measured
/// figure shows in a plain `cargo test` run too.
pub fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Skips `suite`'s test `test` loudly, or fails it under CI, where `.ci/run` is meant to
/// have started what the test needs (`hint` says what).
pub(crate) fn skip(suite: &str, test: &str, why: &str, hint: &str) {
    assert!(
        !in_ci(),
        "{suite} test {test} cannot run under CI: {why} ({hint})"
    );
    report(&format!("SKIPPED {suite} test {test}: {why}"));
}

/// Sleeps for `d` on the runtime's timers.
pub async fn sleep<R: Runtime>(rt: &R, d: Duration) {
    rt.sleep_until(Instant::now() + d).await;
}

/// Runs `future` for at most `d`.
pub async fn within<R: Runtime, F: Future>(rt: &R, d: Duration, future: F) -> Option<F::Output> {
    let (future, timer) = (std::pin::pin!(future), std::pin::pin!(sleep(rt, d)));
    match select(future, timer).await {
        Either::Left((out, _)) => Some(out),
        Either::Right(_) => None,
    }
}

/// Spawns a test task; its receiver gives `Err` if the task panicked.
pub fn spawn<R: Runtime, T: Send + 'static>(
    rt: &R,
    future: impl Future<Output = T> + Send + 'static,
) -> oneshot::Receiver<T> {
    let (tx, rx) = oneshot::channel();
    rt.spawn(async move {
        let _ = tx.send(future.await);
    });
    rx
}
