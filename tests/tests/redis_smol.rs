//! The Redis suite on smol.

pool_tests::redis!(pool_smol::Smol, smol::block_on);
