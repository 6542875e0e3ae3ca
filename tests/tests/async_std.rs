//! The conformance suite on async-std.

pool_tests::conformance!(pool_async_std::AsyncStd, async_std::task::block_on);
