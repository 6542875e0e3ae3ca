//! The PostgreSQL frontend/backend protocol (version 3.0) as a pure model: the bytes each side
//! writes go in, what the session is doing comes out. No IO, no atomics, no clock, like the
//! pool's own state machine; the socket wrapper (`wire.rs`) feeds it every byte it passes
//! and publishes its [`Verdict`] where the checkin can read it.
//!
//! # What it follows
//! Every client message that earns a `ReadyForQuery` (a simple `Query`, a `FunctionCall`, a
//! `Sync` closing a batch of extended-protocol messages) opens a *unit*; the server's
//! `ReadyForQuery` closes the oldest one and says the transaction status. A unit made only of
//! `Close`, `Flush` and `Sync` runs no statement: while only such units are due, no query can
//! be running, so there is nothing to cancel, and a session idle before them is idle after.
//!
//! `COPY ... FROM STDIN` needs more: once the server answers `CopyInResponse`, it ignores the
//! client's `Sync` (and `Flush`) messages until `CopyDone` or `CopyFail`, so a `Sync` written
//! after the `Execute` that started the copy (tokio-postgres writes `Bind, Execute, Sync`,
//! then the data, then `CopyDone, Sync`) earns no reply. The model merges such units: the
//! one being served when the `CopyInResponse` arrives runs on to the first `Sync` after the
//! copy's end. `COPY ... TO STDOUT` needs nothing: the client writes nothing during it.
//!
//! It also keeps what the handshake tells (the `BackendKeyData` a cancel request needs), and
//! counts `LISTEN` mentions: every `Query` or `Parse` whose text contains `listen` (in any
//! case) and every `NotificationResponse` (the session listens) bumps [`Tracker::listens`].
//! A mention that was not a `LISTEN` (`UNLISTEN`, a column named `listener`) costs the
//! manager one `UNLISTEN *` it did not need; a `LISTEN` run from inside a function goes
//! unseen until its first notification arrives.

use std::collections::VecDeque;

/// The transaction status the server reported with its last `ReadyForQuery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransactionStatus {
    /// Not in a transaction block.
    Idle,
    /// In a transaction block.
    InTransaction,
    /// In a failed transaction block (queries are rejected until it ends).
    Failed,
}

impl TransactionStatus {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            b'I' => Some(Self::Idle),
            b'T' => Some(Self::InTransaction),
            b'E' => Some(Self::Failed),
            _ => None,
        }
    }
}

/// What the server still owes the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing: every request written has had its `ReadyForQuery`.
    Nothing,
    /// Replies to `Close`, `Flush` or `Sync` messages only: no statement can be running, and
    /// the transaction status will not change.
    Sync,
    /// A request that runs or may run a statement (a simple query, a function call, a batch
    /// with `Parse`, `Bind`, `Describe` or `Execute`, a `COPY` in progress) is unanswered: a
    /// query may still be running on the server.
    Query,
}

/// The model's answer: what the session is doing, as far as the bytes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The status of the last `ReadyForQuery` (the first one ends the handshake).
    pub status: TransactionStatus,
    /// What is still due.
    pub due: Due,
    /// Whether the startup handshake is over.
    pub ready: bool,
    /// Whether the byte stream stopped making sense (a nonsense length, a reply nobody
    /// asked for, an encrypted stream): nothing else here can be trusted then.
    pub lost: bool,
}

impl Verdict {
    /// The next borrower may have the session as it is: the handshake is over, the model is
    /// in step, the session is idle outside a transaction, and no statement can be running
    /// (replies due only for `Close`/`Sync` arrive in order before any reply to the next
    /// borrower's requests).
    pub fn may_lend(&self) -> bool {
        self.ready && !self.lost && self.status == TransactionStatus::Idle && self.due != Due::Query
    }

    /// A query may still be running on the server: the only case in which a cancel request
    /// may be sent.
    pub fn query_may_run(&self) -> bool {
        self.ready && !self.lost && self.due == Due::Query
    }

    /// Nothing at all is due.
    pub fn quiet(&self) -> bool {
        self.due == Due::Nothing
    }
}

/// The process id and secret key of a backend (from `BackendKeyData`): what a cancel
/// request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendKey {
    /// The backend's process id.
    pub pid: i32,
    /// The secret key.
    pub secret: i32,
}

/// The protocol code of an `SSLRequest`.
const SSL_REQUEST: u32 = 80_877_103;
/// The protocol code of a `GSSENCRequest`.
const GSSENC_REQUEST: u32 = 80_877_104;
/// How many body bytes the framer keeps of each message (enough for `BackendKeyData`).
const HEAD: usize = 8;

/// One piece of a message, as the framer finds it.
enum Piece<'a> {
    /// A message starts (type byte, 0 for an untyped startup message).
    Start(u8),
    /// Some of its body.
    Body(&'a [u8]),
    /// It ended; its type and its first body bytes.
    End(u8, &'a [u8]),
}

/// Splits one direction's bytes into messages: a type byte, a big-endian length that counts
/// itself, the body. A startup message has no type byte; a server's answer to `SSLRequest`
/// is a single byte.
#[derive(Debug, Default)]
struct Framer {
    /// The next message has no type byte.
    untyped: bool,
    /// The next byte is a message on its own.
    single: bool,
    header: [u8; 5],
    have: usize,
    kind: u8,
    left: usize,
    head: [u8; HEAD],
    head_len: usize,
    in_body: bool,
}

impl Framer {
    fn feed(&mut self, mut data: &[u8], mut on: impl FnMut(Piece<'_>)) -> Result<(), ()> {
        while !data.is_empty() {
            if self.single {
                self.single = false;
                on(Piece::Start(data[0]));
                on(Piece::End(data[0], &[]));
                data = &data[1..];
                continue;
            }
            if !self.in_body {
                let size = if self.untyped { 4 } else { 5 };
                let n = (size - self.have).min(data.len());
                self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
                self.have += n;
                data = &data[n..];
                if self.have < size {
                    continue;
                }
                let (kind, len) = if self.untyped {
                    let [a, b, c, d, _] = self.header;
                    (0, u32::from_be_bytes([a, b, c, d]))
                } else {
                    let [kind, a, b, c, d] = self.header;
                    (kind, u32::from_be_bytes([a, b, c, d]))
                };
                if len < 4 {
                    return Err(());
                }
                self.untyped = false;
                self.have = 0;
                self.kind = kind;
                self.left = len as usize - 4;
                self.head_len = 0;
                self.in_body = true;
                on(Piece::Start(kind));
            }
            let n = self.left.min(data.len());
            let (body, rest) = data.split_at(n);
            if !body.is_empty() {
                let keep = (HEAD - self.head_len).min(body.len());
                self.head[self.head_len..self.head_len + keep].copy_from_slice(&body[..keep]);
                self.head_len += keep;
                on(Piece::Body(body));
            }
            self.left -= n;
            data = rest;
            if self.left == 0 {
                self.in_body = false;
                on(Piece::End(self.kind, &self.head[..self.head_len]));
            }
        }
        Ok(())
    }
}

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The startup handshake.
    Startup,
    /// After the first `ReadyForQuery`.
    Ready,
    /// The model cannot follow (out of step, or encrypted).
    Lost,
}

/// Requests that earn one `ReadyForQuery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Unit {
    /// The sequence number of its first client message.
    start: u64,
    /// The sequence number of the message that ends it (`Query`, `FunctionCall`, `Sync`).
    end: u64,
    /// A simple query or function call (not an extended-protocol batch).
    simple: bool,
    /// It runs (or may run) a statement.
    runs: bool,
}

/// Extended-protocol messages written since the last `Sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Open {
    start: u64,
    runs: bool,
}

/// The session as both directions of its byte stream describe it.
#[derive(Debug)]
struct Session {
    phase: Phase,
    /// Client messages seen (each gets the next number).
    seq: u64,
    /// Units written whose `ReadyForQuery` is still due, oldest first.
    units: VecDeque<Unit>,
    /// The batch being written (no `Sync` yet).
    open: Option<Open>,
    /// Sequence numbers of `CopyDone`/`CopyFail` messages the copy logic has not used.
    copy_ends: VecDeque<u64>,
    /// The server is (or is about to be) in copy-in mode and the client has not ended it:
    /// its `Sync` messages are ignored.
    copy_open: bool,
    status: TransactionStatus,
    /// Client messages written since the handshake.
    sent: u64,
    listens: u64,
    /// How much of `listen` the current `Query`/`Parse` text has matched, and whether it
    /// already counted.
    listen_match: usize,
    listen_counted: bool,
    key: Option<BackendKey>,
}

/// The protocol model: feed it what the client wrote ([`Tracker::client`]) and what the
/// server wrote ([`Tracker::server`]), in the order the socket passed them, and ask
/// [`Tracker::verdict`].
///
/// The order matters only as far as the protocol orders things: a reply is always fed after
/// the request it answers was written, which any socket wrapper guarantees.
#[derive(Debug)]
pub struct Tracker {
    client: Framer,
    server: Framer,
    session: Session,
}

impl Default for Tracker {
    fn default() -> Self {
        Self::new()
    }
}

impl Tracker {
    /// A tracker for a connection about to send its startup message.
    pub fn new() -> Self {
        Self {
            client: Framer {
                untyped: true,
                ..Framer::default()
            },
            server: Framer::default(),
            session: Session {
                phase: Phase::Startup,
                seq: 0,
                units: VecDeque::new(),
                open: None,
                copy_ends: VecDeque::new(),
                copy_open: false,
                status: TransactionStatus::Idle,
                sent: 0,
                listens: 0,
                listen_match: 0,
                listen_counted: false,
                key: None,
            },
        }
    }

    /// Bytes the client wrote to the server.
    pub fn client(&mut self, data: &[u8]) {
        if self.session.phase == Phase::Lost {
            return;
        }
        let Self {
            client,
            server,
            session,
        } = self;
        let mut ssl = false;
        let fed = client.feed(data, |piece| session.client(piece, &mut ssl));
        if fed.is_err() {
            session.phase = Phase::Lost;
        }
        if ssl {
            // The server answers an SSLRequest or GSSENCRequest with one byte.
            server.single = true;
        }
    }

    /// Bytes the server wrote to the client.
    pub fn server(&mut self, data: &[u8]) {
        if self.session.phase == Phase::Lost {
            return;
        }
        let Self {
            client,
            server,
            session,
        } = self;
        let mut startup_again = false;
        let fed = server.feed(data, |piece| session.server(piece, &mut startup_again));
        if fed.is_err() {
            session.phase = Phase::Lost;
        }
        if startup_again {
            // Encryption refused: the client sends its startup message in the clear.
            client.untyped = true;
        }
    }

    /// What the session is doing.
    pub fn verdict(&self) -> Verdict {
        let s = &self.session;
        let runs = s.copy_open || s.units.iter().any(|u| u.runs) || s.open.is_some_and(|o| o.runs);
        let due = if runs || s.phase == Phase::Startup {
            Due::Query
        } else if s.units.is_empty() && s.open.is_none() {
            Due::Nothing
        } else {
            Due::Sync
        };
        Verdict {
            status: s.status,
            due,
            ready: s.phase == Phase::Ready,
            lost: s.phase == Phase::Lost,
        }
    }

    /// Client messages written since the handshake (grows with every request).
    pub fn sent(&self) -> u64 {
        self.session.sent
    }

    /// `LISTEN` mentions and notifications seen (grows; see the module's notes).
    pub fn listens(&self) -> u64 {
        self.session.listens
    }

    /// The backend's key, once the handshake has sent it.
    pub fn backend_key(&self) -> Option<BackendKey> {
        self.session.key
    }
}

impl Session {
    fn client(&mut self, piece: Piece<'_>, ssl: &mut bool) {
        match self.phase {
            Phase::Lost => {}
            Phase::Startup => {
                // The startup message, or a request for encryption (its code where the
                // protocol version would be).
                if let Piece::End(0, &[a, b, c, d, ..]) = piece {
                    let code = u32::from_be_bytes([a, b, c, d]);
                    *ssl = code == SSL_REQUEST || code == GSSENC_REQUEST;
                }
            }
            Phase::Ready => match piece {
                Piece::Start(kind) => {
                    self.listen_match = 0;
                    self.listen_counted = false;
                    self.seq += 1;
                    self.sent += 1;
                    self.request(kind);
                }
                Piece::Body(bytes) => self.scan_for_listen(bytes),
                Piece::End(..) => {}
            },
        }
    }

    /// A client message starts: account for what it asks of the server.
    fn request(&mut self, kind: u8) {
        let seq = self.seq;
        // Only Query and Parse carry SQL text.
        self.listen_counted = !matches!(kind, b'Q' | b'P');
        match kind {
            b'Q' | b'F' => {
                let start = self.open.take().map_or(seq, |o| o.start);
                self.units.push_back(Unit {
                    start,
                    end: seq,
                    simple: true,
                    runs: true,
                });
            }
            b'S' if self.copy_open => {
                // Ignored by a server in copy-in mode; it belongs to the copy's unit.
                self.open.get_or_insert(Open {
                    start: seq,
                    runs: true,
                });
            }
            b'S' => {
                let open = self.open.take().unwrap_or(Open {
                    start: seq,
                    runs: false,
                });
                self.units.push_back(Unit {
                    start: open.start,
                    end: seq,
                    simple: false,
                    runs: open.runs,
                });
            }
            b'c' | b'f' => {
                self.copy_ends.push_back(seq);
                self.copy_open = false;
            }
            // Copy data and a password exchange ask for no reply of their own.
            b'd' | b'p' => {}
            b'C' | b'H' => {
                self.open.get_or_insert(Open {
                    start: seq,
                    runs: false,
                });
            }
            // Terminate: the connection ends; nothing more is due from it.
            b'X' => {}
            // Parse, Bind, Describe, Execute, and anything this model does not know.
            _ => {
                self.open
                    .get_or_insert(Open {
                        start: seq,
                        runs: true,
                    })
                    .runs = true;
            }
        }
    }

    fn scan_for_listen(&mut self, bytes: &[u8]) {
        const WORD: &[u8] = b"listen";
        if self.listen_counted {
            return;
        }
        for &byte in bytes {
            let byte = byte.to_ascii_lowercase();
            if byte == WORD[self.listen_match] {
                self.listen_match += 1;
                if self.listen_match == WORD.len() {
                    self.listens += 1;
                    self.listen_counted = true;
                    return;
                }
            } else {
                // No prefix of "listen" recurs inside it, so a mismatch restarts the match
                // at this byte.
                self.listen_match = usize::from(byte == WORD[0]);
            }
        }
    }

    fn server(&mut self, piece: Piece<'_>, startup_again: &mut bool) {
        let Piece::End(kind, head) = piece else {
            return;
        };
        match (self.phase, kind) {
            (Phase::Lost, _) => {}
            (Phase::Startup, b'N') if head.is_empty() => *startup_again = true,
            // Encryption accepted: what follows is encrypted.
            (Phase::Startup, b'S' | b'G') if head.is_empty() => self.phase = Phase::Lost,
            (Phase::Startup, b'K') => {
                if let [a, b, c, d, e, f, g, h] = *head {
                    self.key = Some(BackendKey {
                        pid: i32::from_be_bytes([a, b, c, d]),
                        secret: i32::from_be_bytes([e, f, g, h]),
                    });
                }
            }
            (Phase::Startup, b'Z') => {
                match head.first().copied().and_then(TransactionStatus::from_byte) {
                    Some(status) => {
                        self.status = status;
                        self.phase = Phase::Ready;
                    }
                    None => self.phase = Phase::Lost,
                }
            }
            (Phase::Ready, b'Z') => self.ready_for_query(head),
            (Phase::Ready, b'G' | b'W') => self.copy_in(),
            (Phase::Ready, b'A') => self.listens += 1,
            _ => {}
        }
    }

    fn ready_for_query(&mut self, head: &[u8]) {
        let status = head.first().copied().and_then(TransactionStatus::from_byte);
        match (self.units.pop_front(), status) {
            (Some(unit), Some(status)) => {
                self.status = status;
                // CopyDone/CopyFail before the end of an answered unit are used up (or were
                // dropped by the server after an error).
                while self.copy_ends.front().is_some_and(|&e| e < unit.end) {
                    self.copy_ends.pop_front();
                }
            }
            // A reply nobody asked for, or a status the protocol does not have.
            _ => self.phase = Phase::Lost,
        }
    }

    /// `CopyInResponse`: the unit being served entered copy-in mode, so the server ignores
    /// the client's `Sync` messages between the statement that started it and the copy's
    /// end (the first `CopyDone`/`CopyFail` written after the unit's start).
    fn copy_in(&mut self) {
        let (start, simple, end) = match self.units.front() {
            Some(u) => (u.start, u.simple, u.end),
            // Served before its Sync was written.
            None => match self.open.as_mut() {
                Some(open) => {
                    open.runs = true;
                    self.copy_open = !self.copy_ends.iter().any(|&e| e > open.start);
                    return;
                }
                None => {
                    self.phase = Phase::Lost;
                    return;
                }
            },
        };
        while self.copy_ends.front().is_some_and(|&e| e < start) {
            self.copy_ends.pop_front();
        }
        let copy_end = self.copy_ends.pop_front();
        let ignored = |u: &Unit| !u.simple && copy_end.is_none_or(|e| u.end < e);
        if simple {
            // The copy runs inside the query; Syncs written during it earn nothing.
            let front = self.units.pop_front();
            self.units.retain(|u| !(u.end > end && ignored(u)));
            if let Some(front) = front {
                self.units.push_front(front);
            }
        } else {
            // The extended batch runs on to the first Sync after the copy's end.
            while self.units.front().is_some_and(ignored) {
                self.units.pop_front();
            }
            match self.units.front_mut() {
                Some(next) => {
                    next.start = start;
                    next.runs = true;
                }
                None => {
                    let open = self.open.get_or_insert(Open { start, runs: true });
                    open.start = start;
                    open.runs = true;
                }
            }
        }
        if copy_end.is_none() {
            self.copy_open = true;
        }
    }
}

#[cfg(test)]
mod tests;
