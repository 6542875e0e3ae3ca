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

/// A tokio runtime built without timers cannot run the pool (its deadlines, connect
/// timeouts and maintenance all sleep): `build` says so, instead of every connect panicking
/// and waiters hanging.
#[test]
fn a_runtime_without_timers_is_refused_when_the_pool_is_built() {
    struct Unit;
    impl pool_tokio::Manager for Unit {
        type Connection = ();
        type Error = std::io::Error;
        async fn connect(&self) -> Result<(), std::io::Error> {
            Ok(())
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    // From the runtime's context, and with its handle passed explicitly.
    let current = rt.block_on(async { pool_tokio::Pool::builder(Unit).build() });
    let given = pool_tokio::Pool::builder(Unit)
        .runtime(pool_tokio::Tokio::new(rt.handle().clone()))
        .build();
    for result in [current, given] {
        let error = result.expect_err("no timers, no pool");
        assert!(
            matches!(error, pool_core::BuildError::NoRuntime(_)),
            "{error:?}"
        );
        assert!(error.to_string().contains("enable_time"), "{error}");
    }
}
