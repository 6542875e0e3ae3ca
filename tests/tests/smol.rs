//! The conformance suite on smol.

pool_tests::conformance!(pool_smol::Smol, smol::block_on);
