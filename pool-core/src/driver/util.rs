//! Small future combinators the driver needs (not worth a dependency).

use std::future::Future;
use std::pin::pin;
use std::task::Poll;

/// Which side of [`race`] finished first.
pub(crate) enum Either<A, B> {
    Left(A),
    Right(B),
}

/// Polls both futures, `a` first, and returns the first output.
pub(crate) async fn race<A: Future, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
    let (mut a, mut b) = (pin!(a), pin!(b));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = a.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(out));
        }
        b.as_mut().poll(cx).map(Either::Right)
    })
    .await
}

/// Runs `future` until `timeout` from now has passed on `runtime`'s clock; `None` if it did
/// not finish in time. A timeout too large to represent waits forever.
pub(crate) async fn timeout<R: super::Runtime, F: Future>(
    runtime: &R,
    timeout: std::time::Duration,
    future: F,
) -> Option<F::Output> {
    match runtime.now().checked_add(timeout) {
        Some(deadline) => match race(future, runtime.sleep_until(deadline)).await {
            Either::Left(out) => Some(out),
            Either::Right(_) => None,
        },
        None => Some(future.await),
    }
}
