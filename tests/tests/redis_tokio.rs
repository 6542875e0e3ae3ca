//! The Redis suite on tokio (multi-threaded runtime, two workers).

#[path = "support/tokio_runtime.rs"]
mod tokio_runtime;
use tokio_runtime::block_on;

pool_tests::redis!(pool_tokio::Tokio, block_on);
