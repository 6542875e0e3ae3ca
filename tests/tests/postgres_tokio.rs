//! The database suite on tokio (multi-threaded runtime, two workers).

use std::future::Future;

fn block_on<F: Future>(future: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(future)
}

pool_tests::postgres!(pool_tokio::Tokio, block_on);
