//! The pooled connection: a tokio-postgres [`Client`] plus what the pool needs to know about
//! its state.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use tokio_postgres::{Client, Notification};

use crate::protocol::{TransactionStatus, Verdict};
use crate::wire::{Link, Wire};

/// Where a connection goes (also where its cancel requests go).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    Tcp {
        host: String,
        port: u16,
    },
    #[cfg(unix)]
    Unix(std::path::PathBuf),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Self::Tcp { host, port } => write!(f, "{host}:{port}"),
            #[cfg(unix)]
            Self::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A PostgreSQL connection as the pool lends it: derefs to the tokio-postgres [`Client`],
/// so `conn.query(..)`, `conn.transaction()` and the rest work on the pool's guard directly.
///
/// It also follows the wire protocol (without a round trip) to tell whether the connection
/// comes back with a query still running, a request still queued, or a transaction open;
/// see [`PgManager`](crate::PgManager) for what happens then.
///
/// Notifications for channels the borrower `LISTEN`s to arrive with
/// [`notification`](Self::notification); the checkin runs `UNLISTEN *` before the next
/// borrower gets the connection (see [`PgManager`](crate::PgManager)).
pub struct PgConnection {
    pub(crate) client: Client,
    pub(crate) link: Arc<Link>,
    pub(crate) target: Arc<Target>,
    /// The wire's `sent` count when the session was last known to carry no borrower's state
    /// (after the connect, a check or a reset): a different count means "used since".
    pub(crate) clean_mark: u64,
    /// The wire's `listens` count when the session was last known to listen to nothing.
    pub(crate) listen_mark: u64,
}

impl PgConnection {
    /// The tokio-postgres client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The tokio-postgres client, mutably (for [`Client::transaction`]).
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    /// The transaction status as of the last reply, or `None` while a request is queued or
    /// a statement may still be running (a reply due only for a `Close` changes no status).
    pub fn transaction_status(&self) -> Option<TransactionStatus> {
        let wire = self.wire();
        wire.calm().then(|| wire.verdict().status)
    }

    /// What the protocol model makes of the connection's byte stream as of the last byte
    /// passed (requests still queued in the client are not in it yet).
    pub fn protocol_verdict(&self) -> Verdict {
        self.wire().verdict()
    }

    /// The next notification the server sent this session (for channels it `LISTEN`s to),
    /// waiting for one if none is there; `None` once the connection is closed and none is
    /// left. Notifications are kept until taken (or until the checkin's `UNLISTEN *`).
    pub async fn notification(&self) -> Option<Notification> {
        self.wire().notification().await
    }

    /// The next notification, if one has arrived.
    pub fn try_notification(&self) -> Option<Notification> {
        self.wire().try_notification()
    }

    pub(crate) fn wire(&self) -> &Arc<Wire> {
        &self.link.wire
    }

    /// Whether the connection to the server is closed (every query will fail).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed() || self.wire().is_closed()
    }
}

impl Deref for PgConnection {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl DerefMut for PgConnection {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl fmt::Debug for PgConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConnection")
            .field("target", &format_args!("{}", self.target))
            .field("transaction_status", &self.transaction_status())
            .field("closed", &self.is_closed())
            .finish()
    }
}
