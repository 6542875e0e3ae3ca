//! What the manager needs from a runtime beyond [`pool_core::Runtime`]: sockets, from
//! `pool-net` (shared with the other managers). The manager spawns each connection's driver
//! (the redis crate's multiplexer task) with [`pool_core::Runtime::spawn`], so nothing of
//! tokio runs unless the runtime is tokio.

pub use pool_net::{NetRuntime as RedisRuntime, Stream};
