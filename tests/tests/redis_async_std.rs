//! The Redis suite on async-std.

pool_tests::redis!(pool_async_std::AsyncStd, async_std::task::block_on);
