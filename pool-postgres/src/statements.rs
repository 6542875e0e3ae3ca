//! How the pooled connection runs `query(&str, ..)` and its kin: through statements that
//! tokio-postgres prepares by name (the default), or through the unnamed statement, which a
//! pooler in transaction mode (PgBouncer) can carry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio_postgres::types::Type;
use tokio_postgres::Statement;

/// How the pooled connection's [`query`](crate::PgConnection::query),
/// [`query_one`](crate::PgConnection::query_one),
/// [`query_opt`](crate::PgConnection::query_opt) and
/// [`execute`](crate::PgConnection::execute) run SQL text; set with
/// [`PgManager::statements`](crate::PgManager::statements).
///
/// **Behind PgBouncer in transaction mode (or any pooler that may give each transaction a
/// different server connection), use [`Statements::Unnamed`].** With the default, a
/// parameterised `query(&str, ..)` outside a transaction prepares a statement named `s0`,
/// `s1`, ... in one round trip and runs it in the next: the pooler may send the second to
/// another server connection, where the statement does not exist ("prepared statement "s0"
/// does not exist") or, worse, where another client's `s0` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Statements {
    /// tokio-postgres's own behaviour: `query(&str, ..)` prepares a named statement, runs it
    /// and closes it (three messages, two round trips). For a direct connection to
    /// PostgreSQL (or a pooler in session mode). The default.
    #[default]
    Named,
    /// SQL text runs through the unnamed statement, the way
    /// [`Client::query_typed`](tokio_postgres::Client::query_typed) runs it: `Parse`, `Bind`,
    /// `Execute` and `Sync` in one message batch, which a pooler in transaction mode sends to
    /// one server connection. One round trip per query.
    ///
    /// The parameter types, which tokio-postgres cannot tell from the values, are asked of
    /// the server once per SQL text and kept by the manager for every connection: the first
    /// time a text is seen, the connection prepares it inside a transaction of its own
    /// (`BEGIN`, prepare, close, `COMMIT`: two round trips, one server connection), or inside
    /// the borrower's transaction when one is open, under a savepoint (so that a failed
    /// prepare, such as a name another client left on the pooler's server connection, is
    /// rolled back to it and tried again, and the borrower's transaction goes on). A
    /// statement without parameters needs no such question.
    ///
    /// Not covered (these still use named statements): [`Client::prepare`] and the
    /// [`Statement`]s it returns, `query_raw`, `execute_raw`, the `*_scalar` methods, and the
    /// methods of a [`Transaction`](tokio_postgres::Transaction) (inside a transaction the
    /// pooler keeps the server connection, so they work as long as the `Statement` is not
    /// kept past the `COMMIT`). User-defined types (enums, domains, composites) are looked
    /// up by tokio-postgres with a named statement it keeps for the connection's life, which
    /// a pooler in transaction mode does not carry: cast them to built-in types in the SQL.
    /// The types kept per SQL text are those the server gave the first time; a text whose
    /// parameter types change (a `search_path` switched per session) gets the first ones.
    ///
    /// [`Client::prepare`]: tokio_postgres::Client::prepare
    Unnamed,
}

/// Parameter types per SQL text, shared by a manager's connections ([`Statements::Unnamed`]).
#[derive(Debug, Default)]
pub(crate) struct TypeCache {
    map: Mutex<HashMap<Box<str>, Arc<[Type]>>>,
}

/// How many SQL texts the cache keeps; past it, it starts over (SQL built at run time must
/// not grow it without bound).
const CACHE_CAP: usize = 4096;

impl TypeCache {
    pub(crate) fn get(&self, sql: &str) -> Option<Arc<[Type]>> {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(sql)
            .cloned()
    }

    pub(crate) fn insert(&self, sql: &str, types: Arc<[Type]>) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= CACHE_CAP {
            map.clear();
        }
        map.insert(sql.into(), types);
    }
}

/// What the pooled connection's `query` methods accept: SQL text (`str`, `String`) or a
/// prepared [`Statement`], as tokio-postgres's own methods do. Sealed.
pub trait ToQuery: sealed::Sealed {}

impl ToQuery for str {}
impl ToQuery for String {}
impl ToQuery for Statement {}

pub(crate) mod sealed {
    use tokio_postgres::Statement;

    /// SQL text or a prepared statement.
    #[derive(Debug)]
    pub enum QueryRef<'a> {
        Sql(&'a str),
        Statement(&'a Statement),
    }

    pub trait Sealed {
        fn query_ref(&self) -> QueryRef<'_>;
    }

    impl Sealed for str {
        fn query_ref(&self) -> QueryRef<'_> {
            QueryRef::Sql(self)
        }
    }

    impl Sealed for String {
        fn query_ref(&self) -> QueryRef<'_> {
            QueryRef::Sql(self)
        }
    }

    impl Sealed for Statement {
        fn query_ref(&self) -> QueryRef<'_> {
            QueryRef::Statement(self)
        }
    }
}
