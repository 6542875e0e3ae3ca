//! The manager's error.

use std::fmt;
use std::io;

use redis::{ErrorKind, ServerErrorKind};

/// An error of a connect, a checkout check or a reset.
#[derive(Debug)]
#[non_exhaustive]
pub enum RedisPoolError {
    /// The socket could not be opened (refused, unreachable, DNS).
    Connect(io::Error),
    /// The redis crate's error: the handshake (`AUTH`, `SELECT`), a command, a closed
    /// connection.
    Redis(redis::RedisError),
    /// A configuration this manager cannot serve (for example `rediss://`).
    Config(String),
    /// No runtime to run on (the manager was given none and there is no current one).
    Runtime(String),
    /// The checkin found the connection in a state it does not reset (replies still due
    /// after the drain time-out); the pool closes it.
    Unclean(String),
}

impl RedisPoolError {
    /// Whether waiting cannot heal this connect error: a bad configuration, wrong
    /// credentials (`WRONGPASS`, `NOAUTH`, `NOPERM`), a database index the server does not
    /// have. Refused, reset or timed-out connects and a server still loading are transient.
    pub fn is_fatal(&self) -> bool {
        match self {
            Self::Config(_) | Self::Runtime(_) => true,
            Self::Connect(_) | Self::Unclean(_) => false,
            Self::Redis(e) => {
                matches!(
                    e.kind(),
                    ErrorKind::AuthenticationFailed
                        | ErrorKind::InvalidClientConfig
                        | ErrorKind::Server(ServerErrorKind::NoPerm)
                ) || matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
                    || e.to_string().contains("DB index is out of range")
            }
        }
    }

    /// Whether this error means the connection can no longer be used.
    pub(crate) fn breaks_connection(error: &redis::RedisError) -> bool {
        error.is_io_error() || error.is_connection_dropped() || error.is_unrecoverable_error()
    }
}

impl fmt::Display for RedisPoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "could not connect to Redis: {e}"),
            Self::Redis(e) => write!(f, "Redis: {e}"),
            Self::Config(why) => write!(f, "bad Redis configuration: {why}"),
            Self::Runtime(why) => write!(f, "no runtime for the Redis manager: {why}"),
            Self::Unclean(why) => write!(f, "Redis connection closed at checkin: {why}"),
        }
    }
}

impl std::error::Error for RedisPoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(e) => Some(e),
            Self::Redis(e) => Some(e),
            _ => None,
        }
    }
}

impl From<redis::RedisError> for RedisPoolError {
    fn from(e: redis::RedisError) -> Self {
        Self::Redis(e)
    }
}
