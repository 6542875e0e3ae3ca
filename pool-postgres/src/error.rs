//! The manager's error. No variant carries the configuration, so no message can show a
//! password.

use std::fmt;
use std::io;

/// Why a connect, a check or a reset failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum PgError {
    /// The socket could not be opened.
    Connect {
        /// Where to: `host:port` or the socket path.
        target: String,
        /// The operating system's reason.
        source: io::Error,
    },
    /// The server or the protocol reported an error (authentication, a failed query, a
    /// closed connection).
    Postgres(tokio_postgres::Error),
    /// The configuration names no host to connect to.
    NoHost,
    /// The runtime could not be found (for example, no tokio runtime is running).
    Runtime(String),
    /// The connection is closed.
    Closed,
    /// A reset did not leave the connection idle outside a transaction.
    Reset(&'static str),
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect { target, source } => {
                write!(f, "could not connect to {target}: {source}")
            }
            // tokio-postgres says "db error" and keeps the server's message in the source.
            Self::Postgres(e) => match std::error::Error::source(e) {
                Some(cause) => write!(f, "postgres: {e}: {cause}"),
                None => write!(f, "postgres: {e}"),
            },
            Self::NoHost => f.write_str("the configuration names no host"),
            Self::Runtime(why) => f.write_str(why),
            Self::Closed => f.write_str("the connection is closed"),
            Self::Reset(why) => write!(f, "reset failed: {why}"),
        }
    }
}

impl std::error::Error for PgError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect { source, .. } => Some(source),
            Self::Postgres(e) => Some(e),
            _ => None,
        }
    }
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Postgres(e)
    }
}
