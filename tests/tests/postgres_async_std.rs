//! The database suite on async-std.

pool_tests::postgres!(pool_async_std::AsyncStd, async_std::task::block_on);
