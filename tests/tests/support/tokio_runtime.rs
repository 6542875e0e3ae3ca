//! The tokio runtime every tokio test binary runs its scenarios on: multi-threaded, two
//! workers, timers and IO enabled.

use std::future::Future;

/// Runs `future` to completion on a fresh runtime.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(future)
}
