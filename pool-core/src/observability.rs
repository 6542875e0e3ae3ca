//! What the pool tells the outside: its metrics (the `metrics` feature), its tracing span,
//! and every tracing event it emits. Documentation only; `ARCHITECTURE.md`,
//! "Observability", says how each is produced and where it is tested.
//!
//! # Without any feature
//!
//! [`Pool::metrics`](crate::Pool::metrics) gives cumulative counters ([`Metrics`](crate::Metrics)),
//! among them the distribution of acquire waits ([`WaitTimes`](crate::WaitTimes): `p50`,
//! `p90`, `p99`, any quantile, the exact maximum), and [`Pool::status`](crate::Pool::status)
//! the counts right now.
//!
//! # Metrics (feature `metrics`)
//!
//! With the `metrics` feature (on `pool-core`, or on an adapter: `pool-tokio`,
//! `pool-async-std`, `pool-smol`), every pool emits the OpenTelemetry semantic conventions'
//! database-client connection-pool instruments through the [`metrics`](https://docs.rs/metrics)
//! crate's facade, to whatever recorder the application installed (Prometheus, OpenTelemetry,
//! StatsD...). Every series carries the label `db.client.connection.pool.name`, the pool's
//! [name](crate::Builder::name) (`pool-1`, `pool-2`... unless named).
//!
//! | name | `metrics` kind (OTel instrument) | unit | labels | what |
//! |---|---|---|---|---|
//! | `db.client.connection.count` | gauge (UpDownCounter) | connections | `db.client.connection.state` = `idle` or `used` | open connections idle (in the pool, or parked in its return lane) and used (lent, being checked or reset, granted to a waiter, or reclaimed as abandoned and not yet back) |
//! | `db.client.connection.idle.max` | gauge | connections | | the most connections that may be idle: `max_size` (the pool has no separate cap) |
//! | `db.client.connection.idle.min` | gauge | connections | | `min_idle` |
//! | `db.client.connection.max` | gauge | connections | | `max_size`, following [`Pool::set_max_size`](crate::Pool::set_max_size) |
//! | `db.client.connection.pending_requests` | gauge (UpDownCounter) | requests | | acquires waiting in the queue |
//! | `db.client.connection.timeouts` | counter | timeouts | | acquires that failed with [`Error::TimedOut`](crate::Error::TimedOut) |
//! | `db.client.connection.create_time` | histogram | seconds | | how long each successful connect took |
//! | `db.client.connection.wait_time` | histogram | seconds | | how long each served acquire took to get its connection (zero for one served at once; a checkout check included) |
//! | `db.client.connection.use_time` | histogram | seconds | | from each lend to its give-back (from the end of a checkout check, which counts in the wait) |
//!
//! The instruments are registered when the pool is built, with the recorder in force then:
//! install the recorder first (or build the pool inside `metrics::with_local_recorder`).
//! Prometheus prints the names with underscores (`db_client_connection_count`,
//! `db_client_connection_pool_name`); the HTTP example of `pool-postgres`
//! (`examples/http_service.rs`) serves them on `/metrics`.
//!
//! ```no_run
//! # fn run<M: pool_core::Manager, R: pool_core::Runtime>(manager: M) -> Result<(), Box<dyn std::error::Error>> {
//! // Install the application's recorder first (here metrics-exporter-prometheus's:
//! // `let handle = PrometheusBuilder::new().install_recorder()?;`), then build the pool.
//! let pool = pool_core::Pool::<M, R>::builder(manager).name("orders").build()?;
//! // GET /metrics answers `handle.render()`, which prints, among the rest:
//! // db_client_connection_count{db_client_connection_pool_name="orders",db_client_connection_state="idle"} 1
//! # drop(pool); Ok(()) }
//! ```
//!
//! With them on, the hot path pays for them: a lend and a give-back each read the clock (for
//! the use time) and update two gauges and a histogram. [`Builder::metrics(false)`] turns
//! them off for one pool; without the feature nothing at all is compiled in.
//!
//! [`Builder::metrics(false)`]: crate::Builder
//!
//! # The tracing span
//!
//! | name | level | fields | when |
//! |---|---|---|---|
//! | `pool.wait` | INFO | `pool` (the name), `outcome` (`acquired`, `timed_out`, `shed`, `connect_failed`, `deadlock`, `closed`, `cancelled`), `waited_ms` (float) | one per acquire that has to queue, from queueing until it is granted a connection, fails, or is dropped; the events of a wait's failure are inside it. An acquire served at once (an idle connection, the return lane) opens none. |
//!
//! # Every event
//!
//! Every event of `pool-core` has the field `pool`, the pool's name. Messages in quotes are
//! fixed; the others are the error's text.
//!
//! | crate | level | fields | message | when |
//! |---|---|---|---|---|
//! | pool-core | WARN | `pool` | the [`Error::TimedOut`](crate::Error::TimedOut) text | an acquire timed out in the queue (inside `pool.wait`) |
//! | pool-core | WARN | `pool` | the error's text, then "(during the checkout check)" | an acquire's deadline passed during its checkout check |
//! | pool-core | WARN | `pool` | the [`Error::ConnectFailed`](crate::Error::ConnectFailed) or [`Error::Deadlock`](crate::Error::Deadlock) text | a waiting acquire failed with either (inside `pool.wait`) |
//! | pool-core | WARN | `pool` | the [`Error::Deadlock`](crate::Error::Deadlock) text | an acquire failed at once as a certain deadlock, or by `self_wait_error` |
//! | pool-core | DEBUG | `pool` | the [`Error::Shed`](crate::Error::Shed) text | a waiter was shed (inside `pool.wait`); quiet, since overload sheds many at once |
//! | pool-core | WARN | `pool`, `lease`, `held_at`, `waiting_at` | "a task waits for a connection (at ...) while it holds one of the same pool ..." | a self-wait (`ARCHITECTURE.md`, "A task waiting on itself") |
//! | pool-core | WARN | `pool`, `error` | "checkout check failed; closing the connection and trying again" | a failed or timed-out checkout check |
//! | pool-core | WARN | `pool`, `lease`, `held_for` | the [`LeakReport`](crate::LeakReport) text | a lease held past the leak threshold |
//! | pool-core | WARN | `pool`, `lease`, `held_for` | "lease reclaimed as abandoned: ..." | a lease reclaimed by `reclaim_after` |
//! | pool-core | WARN | `pool`, `slot`, `error`, `failure` (`Transient` or `Fatal`) | "connect failed" | a connect failed or timed out |
//! | pool-core | WARN | `pool`, `error` | "connection reset failed; closing it" | a reset failed, timed out or panicked |
//! | pool-core | ERROR | `pool`, `panicked` (what ran), `message` | "user code panicked; the pool caught it and goes on" | a panic in a manager method, hook or connection's `Drop` |
//! | pool-core | DEBUG | `pool`, `slot` | "opening a connection" | a connect starts |
//! | pool-core | DEBUG | `pool`, `slot` | "connection opened" | a connect succeeded |
//! | pool-core | DEBUG | `pool`, `slot`, `reason` | "closing a connection" | a connection is closed (idle timeout, lifetime, broken, ...) |
//! | pool-core | DEBUG | `pool` | "pool drained" | the closed pool closed its last connection |
//! | pool-postgres | DEBUG | `target` (the host), `error` | "connect failed" | one host of the connection string refused (the next is tried) |
//! | pool-postgres | DEBUG | `target` | "cancelling a query a dropped future left running" | the reset cancels a query on the server |
//! | pool-postgres | DEBUG | `severity`, `message` | "PostgreSQL notice" | the server sent a notice |
//! | pool-postgres | DEBUG | `error` | "PostgreSQL connection ended with an error" | a connection's socket failed |
//!
//! `pool-redis`, `pool-net` and the adapters emit none of their own. The test
//! `tests/tests/observability.rs` checks that this table lists as many events of each level
//! as each crate's source emits.
