//! The manager's error. No variant carries the configuration, so no message can show a
//! password.
//!
//! Each message is whole: it prints its causes itself (the server's severity, SQLSTATE,
//! message, detail and hint; the operating system's reason), so [`PgError`]'s
//! [`source`](std::error::Error::source) is `None` and a chain printer shows nothing twice.
//! The causes stay reachable as values: [`PgError::code`], [`PgError::as_db_error`],
//! [`PgError::as_postgres`], [`PgError::io_error`].

use std::fmt;
use std::io;
use std::time::Duration;

use tokio_postgres::error::{DbError, SqlState};

/// Why a connect, a check or a reset failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum PgError {
    /// The socket could not be opened, or failed before the startup handshake began.
    Connect {
        /// Where to: `host:port` or the socket path.
        target: String,
        /// The operating system's reason.
        source: io::Error,
    },
    /// A host did not complete the connect (socket, TLS and startup) within the
    /// configuration's `connect_timeout`.
    TimedOut {
        /// The host.
        target: String,
        /// The `connect_timeout`.
        after: Duration,
    },
    /// TLS could not be set up with a host.
    Tls {
        /// The host.
        target: String,
        /// What went wrong.
        failure: TlsFailure,
    },
    /// The server refused the startup (authentication, an unknown database or role, too many
    /// connections, shutting down) or it failed on the way.
    Startup {
        /// The host.
        target: String,
        /// tokio-postgres's error.
        error: tokio_postgres::Error,
    },
    /// The session does not have the properties `target_session_attrs` asks for.
    SessionAttrs {
        /// The host.
        target: String,
        /// The setting, as written in a connection string (`read-write`, `read-only`).
        wanted: &'static str,
        /// Whether the session is read-only (`transaction_read_only`).
        read_only: bool,
    },
    /// The server or the protocol reported an error (a failed query, a closed connection),
    /// or a connection string did not parse.
    Postgres(tokio_postgres::Error),
    /// The configuration names no host to connect to.
    NoHost,
    /// The configuration cannot work (an unreadable `sslrootcert`, TLS asked for over a
    /// Unix-domain socket, TLS without the `rustls` feature).
    Config(String),
    /// The runtime could not be found (for example, no tokio runtime is running).
    Runtime(String),
    /// The connection is closed.
    Closed,
    /// A reset did not leave the connection idle outside a transaction.
    Reset(&'static str),
}

/// Why TLS could not be set up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsFailure {
    /// The server answered the TLS request with "no" (its `ssl` setting is off) while the
    /// `sslmode` requires TLS.
    Unsupported,
    /// The server's certificate did not pass verification (`verify-ca`, `verify-full`, or
    /// `require` with a root certificate); rustls's reason.
    Verification(String),
    /// The TLS handshake failed for another reason; rustls's or the socket's reason.
    Handshake(String),
    /// The server answered the TLS request with something other than yes or no.
    Negotiation(u8),
}

impl PgError {
    /// The SQLSTATE of an error the server reported, if it is one.
    pub fn code(&self) -> Option<&SqlState> {
        self.as_postgres().and_then(tokio_postgres::Error::code)
    }

    /// The server's error (severity, SQLSTATE, message, detail, hint), if it is one.
    pub fn as_db_error(&self) -> Option<&DbError> {
        self.as_postgres()
            .and_then(tokio_postgres::Error::as_db_error)
    }

    /// tokio-postgres's error, if the error came from it.
    pub fn as_postgres(&self) -> Option<&tokio_postgres::Error> {
        match self {
            Self::Startup { error, .. } | Self::Postgres(error) => Some(error),
            _ => None,
        }
    }

    /// The operating system's error, if the socket failed.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            Self::Connect { source, .. } => Some(source),
            _ => self
                .as_postgres()
                .and_then(|e| std::error::Error::source(e)?.downcast_ref()),
        }
    }

    /// Whether the error cannot heal by waiting: the same connect will fail the same way
    /// until someone changes the configuration, the server's roles or databases, or its
    /// certificate. [`PgManager`](crate::PgManager)'s
    /// [`is_fatal`](pool_core::Manager::is_fatal) answers with it; the table is on
    /// [`PgManager`](crate::PgManager).
    pub fn is_fatal(&self) -> bool {
        match self {
            Self::Startup { error, .. } => match error.code() {
                Some(code) => FATAL_AT_STARTUP.contains(code),
                // No SQLSTATE: tokio-postgres's own checks of the configuration against
                // what the server asks for (a password the server wants but the
                // configuration lacks, channel binding the server cannot do). tokio-postgres
                // exposes no kind, only these two texts.
                None => matches!(
                    error.to_string().as_str(),
                    "invalid configuration" | "authentication error"
                ),
            },
            Self::Tls { failure, .. } => match failure {
                TlsFailure::Unsupported | TlsFailure::Verification(_) => true,
                TlsFailure::Handshake(_) | TlsFailure::Negotiation(_) => false,
            },
            Self::NoHost | Self::Config(_) | Self::Runtime(_) => true,
            Self::Connect { .. }
            | Self::TimedOut { .. }
            | Self::SessionAttrs { .. }
            | Self::Postgres(_)
            | Self::Closed
            | Self::Reset(_) => false,
        }
    }
}

/// SQLSTATEs that a failed startup reports when waiting will not help.
const FATAL_AT_STARTUP: [SqlState; 4] = [
    // 28P01: the password is wrong.
    SqlState::INVALID_PASSWORD,
    // 28000: no such role, no pg_hba.conf entry (TLS required by the server, or the host
    // refused), a role that may not log in.
    SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
    // 3D000: no such database.
    SqlState::INVALID_CATALOG_NAME,
    // 42501: the role lacks the CONNECT privilege on the database.
    SqlState::INSUFFICIENT_PRIVILEGE,
];

/// Writes tokio-postgres's error whole: the server's severity, SQLSTATE, message, detail and
/// hint for a server error, else tokio-postgres's text and each cause in turn.
pub(crate) fn write_postgres(f: &mut fmt::Formatter<'_>, e: &tokio_postgres::Error) -> fmt::Result {
    if let Some(db) = e.as_db_error() {
        write!(
            f,
            "{} {}: {}",
            db.severity(),
            db.code().code(),
            db.message()
        )?;
        if let Some(detail) = db.detail() {
            write!(f, " (DETAIL: {detail})")?;
        }
        if let Some(hint) = db.hint() {
            write!(f, " (HINT: {hint})")?;
        }
        return Ok(());
    }
    write!(f, "{e}")?;
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        write!(f, ": {c}")?;
        cause = c.source();
    }
    Ok(())
}

/// tokio-postgres's error written whole (see [`write_postgres`]), for logs.
pub(crate) struct Whole<'a>(pub(crate) &'a tokio_postgres::Error);

impl fmt::Display for Whole<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_postgres(f, self.0)
    }
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect { target, source } => {
                write!(f, "could not connect to {target}: {source}")
            }
            Self::TimedOut { target, after } => {
                write!(f, "{target} did not complete the connect within {after:?}")
            }
            Self::Tls { target, failure } => match failure {
                TlsFailure::Unsupported => write!(
                    f,
                    "{target} does not support TLS (it refused the TLS request), and the sslmode requires it"
                ),
                TlsFailure::Verification(why) => {
                    write!(f, "TLS with {target}: certificate verification failed: {why}")
                }
                TlsFailure::Handshake(why) => {
                    write!(f, "TLS with {target}: the handshake failed: {why}")
                }
                TlsFailure::Negotiation(byte) => write!(
                    f,
                    "TLS with {target}: the server answered the TLS request with {byte:#04x}, not S or N"
                ),
            },
            Self::Startup { target, error } => {
                write!(f, "{target}: ")?;
                write_postgres(f, error)
            }
            Self::SessionAttrs {
                target,
                wanted,
                read_only,
            } => {
                let (is, setting) = if *read_only {
                    ("read-only", "on")
                } else {
                    ("read-write", "off")
                };
                write!(
                    f,
                    "{target} does not match target_session_attrs={wanted}: the session is {is} \
                     (transaction_read_only = {setting})"
                )
            }
            Self::Postgres(e) => write_postgres(f, e),
            Self::NoHost => f.write_str("the configuration names no host"),
            Self::Config(why) => write!(f, "invalid configuration: {why}"),
            Self::Runtime(why) => f.write_str(why),
            Self::Closed => f.write_str("the connection is closed"),
            Self::Reset(why) => write!(f, "reset failed: {why}"),
        }
    }
}

/// Every message is whole (see the module's documentation), so there is no source.
impl std::error::Error for PgError {}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Postgres(e)
    }
}

#[cfg(test)]
mod tests {
    use super::{PgError, TlsFailure};
    use std::io;
    use std::time::Duration;

    fn fatal(e: &PgError) -> bool {
        e.is_fatal()
    }

    #[test]
    fn errors_that_cannot_heal_by_waiting_are_fatal() {
        let target = || "db:5432".to_owned();
        let tls = |failure| PgError::Tls {
            target: target(),
            failure,
        };
        assert!(fatal(&PgError::NoHost));
        assert!(fatal(&PgError::Config("bad sslrootcert".into())));
        assert!(fatal(&tls(TlsFailure::Unsupported)));
        assert!(fatal(&tls(TlsFailure::Verification(
            "UnknownIssuer".into()
        ))));
        assert!(!fatal(&tls(TlsFailure::Handshake("reset".into()))));
        assert!(!fatal(&tls(TlsFailure::Negotiation(b'E'))));
        for kind in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::TimedOut,
            io::ErrorKind::NotFound,
        ] {
            let e = PgError::Connect {
                target: target(),
                source: io::Error::from(kind),
            };
            assert!(!fatal(&e), "{e}");
            assert_eq!(e.io_error().map(io::Error::kind), Some(kind));
        }
        assert!(!fatal(&PgError::TimedOut {
            target: target(),
            after: Duration::from_secs(1)
        }));
        assert!(!fatal(&PgError::SessionAttrs {
            target: target(),
            wanted: "read-write",
            read_only: true
        }));
        assert!(!fatal(&PgError::Closed));
    }

    #[test]
    fn sqlstates_classify_as_the_manager_documents() {
        use tokio_postgres::error::SqlState;
        // What the server can answer a startup with, and whether waiting may help.
        for (code, fatal) in [
            (SqlState::INVALID_PASSWORD, true),
            (SqlState::INVALID_AUTHORIZATION_SPECIFICATION, true),
            (SqlState::INVALID_CATALOG_NAME, true),
            (SqlState::INSUFFICIENT_PRIVILEGE, true),
            (SqlState::ADMIN_SHUTDOWN, false),
            (SqlState::CRASH_SHUTDOWN, false),
            (SqlState::CANNOT_CONNECT_NOW, false),
            (SqlState::TOO_MANY_CONNECTIONS, false),
        ] {
            assert_eq!(super::FATAL_AT_STARTUP.contains(&code), fatal, "{code:?}");
        }
    }

    #[test]
    fn messages_are_whole_and_have_no_source() {
        let e = PgError::Connect {
            target: "127.0.0.1:1".into(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(
            e.to_string(),
            "could not connect to 127.0.0.1:1: connection refused"
        );
        assert!(std::error::Error::source(&e).is_none());
        let e = PgError::SessionAttrs {
            target: "127.0.0.1:5432".into(),
            wanted: "read-write",
            read_only: true,
        };
        assert_eq!(
            e.to_string(),
            "127.0.0.1:5432 does not match target_session_attrs=read-write: the session is \
             read-only (transaction_read_only = on)"
        );
        // A connection string that does not parse: tokio-postgres's text and its cause.
        let e = match "host=h sslmode=sometimes".parse::<tokio_postgres::Config>() {
            Ok(_) => panic!("parsed"),
            Err(e) => PgError::from(e),
        };
        assert_eq!(
            e.to_string(),
            "invalid connection string: invalid value for option `sslmode`"
        );
    }
}
