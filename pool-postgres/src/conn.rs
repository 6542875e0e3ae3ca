//! The pooled connection: a tokio-postgres [`Client`] plus what the pool needs to know about
//! its state.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use futures_util::future::join;
use futures_util::lock::Mutex as AsyncMutex;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Error, Notification, Row, SimpleQueryMessage};

use crate::protocol::{TransactionStatus, Verdict};
use crate::statements::sealed::QueryRef;
use crate::statements::{Statements, ToQuery, TypeCache};
use crate::wire::{Link, Wire};

/// How many times [`PgConnection::describe`] tries, when a statement of the name
/// tokio-postgres picked already exists on the server connection.
const DESCRIBE_ATTEMPTS: u32 = 4;

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
///
/// [`query`](Self::query), [`query_one`](Self::query_one), [`query_opt`](Self::query_opt)
/// and [`execute`](Self::execute) take the place of the `Client`'s methods of those names:
/// they run as the manager's [`Statements`] mode says (the `Client`'s own behaviour by
/// default; through the unnamed statement with [`Statements::Unnamed`], for PgBouncer in
/// transaction mode).
pub struct PgConnection {
    pub(crate) client: Client,
    pub(crate) link: Arc<Link>,
    pub(crate) target: Arc<Target>,
    /// The wire's `sent` count when the session was last known to carry no borrower's state
    /// (after the connect, a check or a reset): a different count means "used since".
    pub(crate) clean_mark: u64,
    /// The wire's `listens` count when the session was last known to listen to nothing.
    pub(crate) listen_mark: u64,
    /// The parameter types per SQL text under [`Statements::Unnamed`] (shared by the
    /// manager's connections); `None` under [`Statements::Named`].
    pub(crate) unnamed: Option<Arc<TypeCache>>,
    /// One describe at a time: two describes pipelined would nest their `BEGIN`s.
    pub(crate) describing: AsyncMutex<()>,
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

    /// The statement mode this connection runs `query(&str, ..)` in.
    pub fn statements(&self) -> Statements {
        match self.unnamed {
            Some(_) => Statements::Unnamed,
            None => Statements::Named,
        }
    }

    /// Runs a statement and returns its rows, as [`Client::query`] does; under
    /// [`Statements::Unnamed`], SQL text runs through the unnamed statement (see there).
    ///
    /// # Errors
    /// As [`Client::query`].
    pub async fn query<T: ?Sized + ToQuery>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        match (statement.query_ref(), &self.unnamed) {
            (QueryRef::Sql(sql), Some(cache)) => {
                let typed = self.typed(cache, sql, params).await?;
                self.client.query_typed(sql, &typed).await
            }
            (QueryRef::Sql(sql), None) => self.client.query(sql, params).await,
            (QueryRef::Statement(s), _) => self.client.query(s, params).await,
        }
    }

    /// Runs a statement that returns exactly one row, as [`Client::query_one`] does; under
    /// [`Statements::Unnamed`], SQL text runs through the unnamed statement.
    ///
    /// # Errors
    /// As [`Client::query_one`] (also when the statement returns no row or several).
    pub async fn query_one<T: ?Sized + ToQuery>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, Error> {
        match (statement.query_ref(), &self.unnamed) {
            (QueryRef::Sql(sql), Some(cache)) => {
                let typed = self.typed(cache, sql, params).await?;
                self.client.query_typed_one(sql, &typed).await
            }
            (QueryRef::Sql(sql), None) => self.client.query_one(sql, params).await,
            (QueryRef::Statement(s), _) => self.client.query_one(s, params).await,
        }
    }

    /// Runs a statement that returns at most one row, as [`Client::query_opt`] does; under
    /// [`Statements::Unnamed`], SQL text runs through the unnamed statement.
    ///
    /// # Errors
    /// As [`Client::query_opt`] (also when the statement returns several rows).
    pub async fn query_opt<T: ?Sized + ToQuery>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error> {
        match (statement.query_ref(), &self.unnamed) {
            (QueryRef::Sql(sql), Some(cache)) => {
                let typed = self.typed(cache, sql, params).await?;
                self.client.query_typed_opt(sql, &typed).await
            }
            (QueryRef::Sql(sql), None) => self.client.query_opt(sql, params).await,
            (QueryRef::Statement(s), _) => self.client.query_opt(s, params).await,
        }
    }

    /// Runs a statement and returns how many rows it changed, as [`Client::execute`] does;
    /// under [`Statements::Unnamed`], SQL text runs through the unnamed statement.
    ///
    /// # Errors
    /// As [`Client::execute`].
    pub async fn execute<T: ?Sized + ToQuery>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, Error> {
        match (statement.query_ref(), &self.unnamed) {
            (QueryRef::Sql(sql), Some(cache)) => {
                let typed = self.typed(cache, sql, params).await?;
                self.client.execute_typed(sql, &typed).await
            }
            (QueryRef::Sql(sql), None) => self.client.execute(sql, params).await,
            (QueryRef::Statement(s), _) => self.client.execute(s, params).await,
        }
    }

    /// The parameters with their types, for the unnamed statement.
    async fn typed<'p>(
        &self,
        cache: &TypeCache,
        sql: &str,
        params: &[&'p (dyn ToSql + Sync)],
    ) -> Result<Vec<(&'p (dyn ToSql + Sync), Type)>, Error> {
        if params.is_empty() {
            // Nothing to type; a `$1` in the text fails at the server's `Bind`.
            return Ok(Vec::new());
        }
        let types = match cache.get(sql) {
            Some(types) if types.len() == params.len() => types,
            _ => self.describe(cache, sql, params).await?,
        };
        Ok(params.iter().copied().zip(types.iter().cloned()).collect())
    }

    /// Asks the server for the parameter types of `sql` and keeps them in `cache`, with a
    /// named statement prepared and closed inside one transaction (the borrower's, if one is
    /// open; else one of its own), so that a pooler in transaction mode runs all of it on one
    /// server connection. If `params` do not match the types in number, fails with the error
    /// tokio-postgres gives for that (before anything runs).
    async fn describe(
        &self,
        cache: &TypeCache,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Arc<[Type]>, Error> {
        let _one_at_a_time = self.describing.lock().await;
        if let Some(types) = cache.get(sql).filter(|t| t.len() == params.len()) {
            return Ok(types);
        }
        let mut attempt = 1;
        loop {
            match self.describe_once(sql, params).await {
                // Through a pooler in transaction mode, a server connection can hold named
                // statements another client prepared and never closed there (their `Close`
                // went to another server connection): `describe_once` freed the run of them
                // in the way (see `leftovers`), and tokio-postgres names each prepare
                // afresh. The failed prepare was rolled back to its savepoint; the
                // transaction went on.
                Err((e, true))
                    if attempt < DESCRIBE_ATTEMPTS
                        && e.code() == Some(&SqlState::DUPLICATE_PSTATEMENT) =>
                {
                    attempt += 1;
                }
                Err((e, _)) => return Err(e),
                Ok(types) => {
                    cache.insert(sql, Arc::clone(&types));
                    return Ok(types);
                }
            }
        }
    }

    /// One try of [`describe`](Self::describe); an error says whether it may be tried again
    /// (it happened in a transaction of its own, which it ended, or after the savepoint it
    /// set in the borrower's transaction, which it rolled back to: the borrower's transaction
    /// goes on).
    async fn describe_once(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Arc<[Type]>, (Error, bool)> {
        // The transaction status is known once nothing is in flight (the borrower's own
        // pipelined requests, if any, finish first). A closed connection fails below.
        self.wire().wait_for(Wire::calm).await;
        let own_transaction = self.wire().verdict().status == TransactionStatus::Idle;
        // Under a savepoint, so that a failed prepare fails neither the borrower's
        // transaction nor ours, and a name in the way can be freed.
        let open = if own_transaction {
            "BEGIN; SAVEPOINT pool_describe"
        } else {
            "SAVEPOINT pool_describe"
        };
        let (opened, prepared) =
            join(self.client.batch_execute(open), self.client.prepare(sql)).await;
        opened.map_err(|e| (e, false))?;
        let described = match prepared {
            Ok(statement) => {
                let types: Arc<[Type]> = statement.params().into();
                let mismatch = if types.len() == params.len() {
                    None
                } else {
                    // tokio-postgres's own error for a wrong parameter count; nothing runs.
                    self.client.query(&statement, params).await.err()
                };
                // Dropping the statement queues its `Close`, before the `COMMIT`.
                drop(statement);
                match mismatch {
                    Some(e) => Err(e),
                    None => Ok(types),
                }
            }
            Err(e) => Err(e),
        };
        let end = if own_transaction {
            "COMMIT"
        } else {
            "RELEASE SAVEPOINT pool_describe"
        };
        let close = match &described {
            Ok(_) => end.to_owned(),
            Err(e) => {
                let collided = (e.code() == Some(&SqlState::DUPLICATE_PSTATEMENT))
                    .then(|| e.as_db_error().and_then(|db| quoted(db.message())))
                    .flatten()
                    .and_then(statement_number);
                match collided {
                    Some(from) => {
                        self.client
                            .batch_execute("ROLLBACK TO SAVEPOINT pool_describe")
                            .await
                            .map_err(|e| (e, false))?;
                        let in_the_way = self.leftovers(from).await.map_err(|e| (e, false))?;
                        format!("{in_the_way}{end}")
                    }
                    None => format!("ROLLBACK TO SAVEPOINT pool_describe; {end}"),
                }
            }
        };
        self.client
            .batch_execute(&close)
            .await
            .map_err(|e| (e, false))?;
        described.map_err(|e| (e, true))
    }

    /// The `DEALLOCATE`s that free every statement on this server connection named as
    /// tokio-postgres names them and numbered `from` or later, `from` being the number
    /// tokio-postgres just picked and found taken. Run inside a transaction, where the server
    /// connection is this client's alone.
    ///
    /// Through a pooler in transaction mode a server connection can hold statements other
    /// clients prepared and never closed there (their `Close` went to another server
    /// connection). Another process's tokio-postgres numbers its statements from the same
    /// start (`s0`, `s1`, ...), so such leftovers come in long runs, and this process would
    /// run into each one in turn: freeing only the one in the way would fail the next try
    /// too. None of them was prepared by this connection: tokio-postgres takes its numbers
    /// from one process-wide counter, which stood at `from` when this describe took its name,
    /// and a describe closes its statement in the transaction that prepared it.
    async fn leftovers(&self, from: u64) -> Result<String, Error> {
        let listed = self
            .client
            .simple_query("SELECT name FROM pg_prepared_statements")
            .await?;
        Ok(listed
            .iter()
            .filter_map(|message| match message {
                SimpleQueryMessage::Row(row) => row.get(0),
                _ => None,
            })
            .filter(|name| statement_number(name).is_some_and(|n| n >= from))
            .map(|name| format!("DEALLOCATE \"{name}\"; "))
            .collect())
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

/// The first double-quoted name in a server message (`prepared statement "s7" already
/// exists`).
fn quoted(message: &str) -> Option<&str> {
    message.split('"').nth(1)
}

/// The number of a statement named as tokio-postgres names them (`s` and digits).
fn statement_number(name: &str) -> Option<u64> {
    let digits = name.strip_prefix('s')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::{quoted, statement_number};

    #[test]
    fn only_tokio_postgres_statement_names_are_numbered() {
        let message = "prepared statement \"s173\" already exists";
        assert_eq!(quoted(message).and_then(statement_number), Some(173));
        for name in ["s", "s-1", "s1a", "stmt1", "S1", "1", "", "s+1"] {
            assert_eq!(statement_number(name), None, "{name:?}");
        }
        assert_eq!(statement_number("s0"), Some(0));
        // A number too large for u64 is not one tokio-postgres could have picked.
        assert_eq!(statement_number("s99999999999999999999999"), None);
        assert_eq!(quoted("no quotes here"), None);
    }
}
