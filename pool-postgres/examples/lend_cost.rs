//! What pool-postgres adds to one acquire/release of an idle connection, on a
//! current-thread tokio runtime: the same pool (the builder's defaults, no acquire timeout)
//! over `PgManager` (`pg`) and over a bare tokio-postgres client whose only check is
//! `is_closed` (`bare`). No query runs; the difference is the manager's checkin (its
//! protocol verdict) and the cost of moving its connection through the pool.
//!
//! Needs a PostgreSQL server: the URL comes from `POOL_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`, plaintext). Arguments: the cycles per run
//! (default 1,000,000), then `pg` or `bare` (default: both). Under
//! `valgrind --tool=callgrind`, the difference between two counts gives the instructions per
//! cycle, which repeats exactly on a busy machine:
//!
//! ```sh
//! cargo build --release -p pool-postgres --example lend_cost
//! valgrind --tool=callgrind target/release/examples/lend_cost 100000 pg
//! valgrind --tool=callgrind target/release/examples/lend_cost 200000 pg
//! ```

use std::time::{Duration, Instant};

use pool_postgres::{tokio_postgres, PgManager, SslMode, Statements};
use tokio_postgres::{Client, Config, NoTls};

/// The baseline: a client over plain TCP, checked with `is_closed` only.
struct Bare {
    config: Config,
    address: String,
}

impl pool_tokio::Manager for Bare {
    type Connection = Client;
    type Error = std::io::Error;
    async fn connect(&self) -> Result<Client, std::io::Error> {
        let socket = tokio::net::TcpStream::connect(&self.address).await?;
        let (client, connection) = self
            .config
            .connect_raw(socket, NoTls)
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(connection);
        Ok(client)
    }
    fn has_broken(&self, client: &mut Client) -> bool {
        client.is_closed()
    }
}

async fn per_cycle<M: pool_tokio::Manager>(manager: M, n: u32) -> Duration {
    let pool = pool_tokio::Pool::builder(manager)
        .max_size(1)
        .acquire_timeout(None)
        .build()
        .expect("a valid configuration");
    drop(pool.get().await.expect("connect (is the server running?)"));
    let start = Instant::now();
    for _ in 0..n {
        let conn = pool.get().await.expect("the idle connection");
        std::hint::black_box(&*conn);
    }
    start.elapsed() / n
}

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let only = std::env::args().nth(2);
    let url = std::env::var("POOL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let config: Config = url.parse().expect("a PostgreSQL URL");
    let address = match (config.get_hosts().first(), config.get_ports().first()) {
        (Some(tokio_postgres::config::Host::Tcp(host)), port) => {
            format!("{host}:{}", port.copied().unwrap_or(5432))
        }
        _ => panic!("the URL needs a TCP host"),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let wants = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if wants("bare") {
        let bare = Bare {
            config: config.clone(),
            address,
        };
        println!(
            "bare client: {:?} per cycle",
            rt.block_on(per_cycle(bare, n))
        );
    }
    if wants("pg") {
        let manager: PgManager<pool_tokio::Tokio> = PgManager::new(config)
            .statements(Statements::Unnamed)
            .ssl_mode(SslMode::Disable);
        println!(
            "PgManager: {:?} per cycle",
            rt.block_on(per_cycle(manager, n))
        );
    }
}
