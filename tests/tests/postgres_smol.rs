//! The database suite on smol.

pool_tests::postgres!(pool_smol::Smol, smol::block_on);
