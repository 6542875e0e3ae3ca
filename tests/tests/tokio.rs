//! The conformance suite on tokio (multi-threaded runtime, two workers).

#[path = "support/tokio_runtime.rs"]
mod tokio_runtime;
use tokio_runtime::block_on;

pool_tests::conformance!(pool_tokio::Tokio, block_on);

/// `with_connection`'s future is `Send` when the closure's is: it can be spawned.
#[test]
fn with_connection_can_be_spawned_on_a_multi_threaded_runtime() {
    block_on(async {
        let rt = <pool_tests::Counted<pool_tokio::Tokio> as pool_core::Runtime>::current()
            .expect("in tokio");
        let pool = pool_core::Pool::builder(pool_tests::Fake::new(rt.clone()))
            .runtime(rt)
            .build()
            .expect("valid");
        let task = tokio::spawn(async move {
            pool.with_connection(async |c| c.id)
                .await
                .expect("a connection")
        });
        assert_eq!(task.await.expect("no panic"), 1);
    });
}
