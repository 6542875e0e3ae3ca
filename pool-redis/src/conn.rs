//! The pooled connection: the redis crate's connection, with the session model in front of
//! every command.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::future::AbortHandle;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Arg, Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::error::RedisPoolError;
use crate::session::{Effect, Session};

/// A pooled Redis connection. Use it as the redis crate's connection: it implements
/// [`redis::aio::ConnectionLike`], so `redis::cmd(..).query_async(&mut *conn)`,
/// `redis::pipe()` and [`redis::AsyncTypedCommands`] all work through it.
///
/// Every command passes through it, so the manager knows at checkin what the borrower may
/// have left behind (`MULTI`, `WATCH`, `SELECT`, subscribe mode, a command whose future was
/// dropped before its reply) and resets or closes the connection accordingly; see the
/// crate docs. It owns its socket alone: the underlying `MultiplexedConnection` is never
/// cloned, nor handed out.
pub struct RedisConnection {
    inner: MultiplexedConnection,
    pub(crate) session: Session,
    /// Set when the connection's driver task ends (the socket closed or failed).
    closed: Arc<AtomicBool>,
    driver: AbortHandle,
    id: i64,
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConnection")
            .field("id", &self.id)
            .field("session", &self.session)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Drop for RedisConnection {
    /// Ends the driver task, which closes the socket at once, even with replies still due
    /// (an abandoned `BLPOP`, say), so the server frees the client.
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Marks the session's "reply still due" if the command's future is dropped before its
/// reply arrived.
struct InFlight<'a> {
    session: &'a mut Session,
    done: bool,
}

impl InFlight<'_> {
    fn finish<T>(mut self, effects: &[Effect], result: &RedisResult<T>) {
        self.done = true;
        match result {
            Ok(_) => effects.iter().for_each(|&e| self.session.after_ok(e)),
            Err(e) if RedisPoolError::breaks_connection(e) => self.session.broken = true,
            // A server error: nothing certain, the marks stay.
            Err(_) => {}
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.session.abandoned = true;
        }
    }
}

fn effect_of(cmd: &Cmd) -> Effect {
    Effect::of(cmd.args_iter().filter_map(|a| match a {
        Arg::Simple(bytes) => Some(bytes),
        _ => None,
    }))
}

impl RedisConnection {
    pub(crate) fn new(
        inner: MultiplexedConnection,
        db: i64,
        closed: Arc<AtomicBool>,
        driver: AbortHandle,
    ) -> Self {
        Self {
            inner,
            session: Session::new(db),
            closed,
            driver,
            id: 0,
        }
    }

    pub(crate) fn set_id(&mut self, id: i64) {
        self.id = id;
    }

    /// The server's id of this connection (`CLIENT ID`), as `CLIENT LIST` and `CLIENT KILL
    /// ID` show it.
    pub fn client_id(&self) -> i64 {
        self.id
    }

    /// Whether the socket is known to be closed (the driver task ended), without IO.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Sends one command outside the session model (the manager's own commands, whose
    /// effect it records itself).
    pub(crate) async fn raw(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        let result = self.inner.send_packed_command(cmd).await;
        if let Err(e) = &result {
            if RedisPoolError::breaks_connection(e) {
                self.session.broken = true;
            }
        }
        result
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let Self { inner, session, .. } = self;
        Box::pin(async move {
            // Marked at the first poll: a future dropped unpolled sent nothing.
            let effects = [effect_of(cmd)];
            session.before(effects[0]);
            let flight = InFlight {
                session,
                done: false,
            };
            let result = inner.send_packed_command(cmd).await;
            flight.finish(&effects, &result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let Self { inner, session, .. } = self;
        Box::pin(async move {
            let effects: Vec<Effect> = pipeline.cmd_iter().map(effect_of).collect();
            effects.iter().for_each(|&e| session.before(e));
            let flight = InFlight {
                session,
                done: false,
            };
            let result = inner.send_packed_commands(pipeline, offset, count).await;
            flight.finish(&effects, &result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.session.db.unwrap_or(self.session.configured_db)
    }
}
