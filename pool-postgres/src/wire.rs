//! Knowing, without a round trip, whether a connection is idle: a stream wrapper that
//! follows the PostgreSQL wire protocol, and a wrapper around tokio-postgres's connection
//! task that records whether it has work pending.
//!
//! What the checkin needs to know is "could anything the last borrower started still be
//! running, queued, or holding a transaction open?". Three places can hold such work:
//!
//! 1. the client's request channel (queued by a future that was then dropped, the
//!    sqlx#4393 case of a cancelled `BEGIN`): the push wakes the connection task, which sets
//!    [`WOKEN`]; the task clears it when it starts a poll, and every poll drains the channel
//!    into the socket before it ends (or stops because the socket is full: `write_pending`);
//! 2. the socket or the server: every simple `Query` and every `Sync` written earns exactly
//!    one `ReadyForQuery`; `sent != received` means a reply is still due;
//! 3. the session: the status byte of the last `ReadyForQuery` says idle, in a transaction,
//!    or in a failed transaction.
//!
//! # Memory ordering
//! The user's task pushes a request and then (same thread, program order) checks the
//! connection in; the push's wake sets `WOKEN` with `AcqRel` before the check reads
//! `activity` with `Acquire`. The connection task `swap`s `activity` to `POLLING` with
//! `AcqRel` (synchronising with that wake, so the poll sees the pushed request) and clears
//! `POLLING` with `AcqRel` at the end of the poll, after the counters were updated. So a
//! checkin that reads `activity == 0` also sees the counters of every write made for every
//! request pushed before it.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use event_listener::Event;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::runtime::Stream;

/// The connection task was woken and has not been polled since.
const WOKEN: u8 = 1;
/// The connection task is being polled.
const POLLING: u8 = 2;
/// How long a checkin waits for a running poll of the connection task to end (a few µs).
const SPINS: u32 = 200;
/// How many times one poll of the connection task polls tokio-postgres's future when it is
/// woken while being polled.
const REPOLLS: u32 = 4;

/// What the connection's owner and its connection task share.
pub(crate) struct Wire {
    /// `WOKEN | POLLING`.
    activity: AtomicU8,
    /// Simple `Query` and `Sync` messages written (each earns one `ReadyForQuery`).
    sent: AtomicU64,
    /// `ReadyForQuery` messages read.
    received: AtomicU64,
    /// The status byte of the last `ReadyForQuery`: `I`, `T` or `E`.
    status: AtomicU8,
    /// The socket refused bytes and the buffered ones are not all written yet.
    write_pending: AtomicBool,
    /// The connection task ended, the socket failed, or the byte stream made no sense.
    closed: AtomicBool,
    /// Whether the handshake is over (the parsers start at the first message after it).
    active: AtomicBool,
    /// Notified after every poll of the connection task.
    polled: Event,
    /// The waker of the task that runs the connection future.
    task: Mutex<Option<Waker>>,
}

impl Wire {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            activity: AtomicU8::new(0),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            status: AtomicU8::new(b'I'),
            write_pending: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            active: AtomicBool::new(false),
            polled: Event::new(),
            task: Mutex::new(None),
        })
    }

    /// Starts following the protocol: called once the handshake has finished, when both
    /// directions are at a message boundary.
    pub(crate) fn activate(&self) {
        self.active.store(true, Ordering::Release);
    }

    /// No work is queued for the connection task and it is not running.
    pub(crate) fn settled(&self) -> bool {
        self.activity.load(Ordering::Acquire) == 0
    }

    /// A reply is still due, or written requests are stuck in the socket buffer.
    pub(crate) fn in_flight(&self) -> bool {
        self.sent.load(Ordering::Acquire) != self.received.load(Ordering::Acquire)
            || self.write_pending.load(Ordering::Acquire)
    }

    /// The status byte of the last `ReadyForQuery`.
    pub(crate) fn status(&self) -> u8 {
        self.status.load(Ordering::Acquire)
    }

    /// Sync points written so far (grows with every query).
    pub(crate) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Acquire)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Nothing queued, nothing in flight, no transaction open: the next borrower can have it
    /// as it is. Reads `activity` first (see the module's memory-ordering notes).
    ///
    /// On a multi-threaded runtime the borrower often gets its last reply while the
    /// connection task is still finishing the poll that delivered it; when the task is
    /// running and nothing new is queued, this waits a few microseconds for that poll to end
    /// rather than send the connection through a background reset.
    pub(crate) fn is_clean(&self) -> bool {
        let mut spins = 0;
        loop {
            match self.activity.load(Ordering::Acquire) {
                0 => break,
                POLLING if spins < SPINS => {
                    spins += 1;
                    std::hint::spin_loop();
                }
                _ => return false,
            }
        }
        !self.in_flight() && self.status() == b'I' && !self.is_closed()
    }

    /// Waits until `done` holds, re-checking after every poll of the connection task. Ends
    /// early (returning `false`) if the connection closes.
    pub(crate) async fn wait_for(&self, done: impl Fn(&Self) -> bool) -> bool {
        loop {
            let listener = self.polled.listen();
            if done(self) {
                return true;
            }
            if self.is_closed() {
                return false;
            }
            listener.await;
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.polled.notify(usize::MAX);
    }
}

impl Wake for Wire {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.activity.fetch_or(WOKEN, Ordering::AcqRel);
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(waker) = task.as_ref() {
            waker.wake_by_ref();
        }
    }
}

/// Splits a byte stream into PostgreSQL messages (a type byte, then a big-endian length that
/// counts itself), reporting each message's type when its header is complete and again, with
/// the first body byte, when the whole message has passed.
#[derive(Debug, Default)]
struct Framer {
    header: [u8; 5],
    have: usize,
    body_left: usize,
    first: Option<u8>,
}

impl Framer {
    /// Feeds `data`; `Err` if a length makes no sense (the stream is out of step).
    fn feed(
        &mut self,
        mut data: &[u8],
        mut on_header: impl FnMut(u8),
        mut on_message: impl FnMut(u8, Option<u8>),
    ) -> Result<(), ()> {
        while !data.is_empty() {
            if self.have < 5 {
                let n = (5 - self.have).min(data.len());
                self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
                self.have += n;
                data = &data[n..];
                if self.have == 5 {
                    let [kind, a, b, c, d] = self.header;
                    let len = u32::from_be_bytes([a, b, c, d]) as usize;
                    if len < 4 {
                        return Err(());
                    }
                    on_header(kind);
                    self.body_left = len - 4;
                    self.first = None;
                    if self.body_left == 0 {
                        on_message(kind, None);
                        self.have = 0;
                    }
                }
                continue;
            }
            if self.first.is_none() {
                self.first = Some(data[0]);
            }
            let n = self.body_left.min(data.len());
            self.body_left -= n;
            data = &data[n..];
            if self.body_left == 0 {
                on_message(self.header[0], self.first);
                self.have = 0;
            }
        }
        Ok(())
    }
}

/// The socket as tokio-postgres sees it: the runtime's stream, with both directions followed.
pub(crate) struct Tracked {
    inner: Stream,
    wire: Arc<Wire>,
    reads: Framer,
    writes: Framer,
}

impl Tracked {
    pub(crate) fn new(inner: Stream, wire: Arc<Wire>) -> Self {
        Self {
            inner,
            wire,
            reads: Framer::default(),
            writes: Framer::default(),
        }
    }

    fn out_of_step(&self) -> io::Error {
        self.wire.close();
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the PostgreSQL byte stream is out of step",
        )
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        match &result {
            Poll::Ready(Ok(())) if this.wire.active.load(Ordering::Acquire) => {
                let fresh = &buf.filled()[before..];
                if fresh.is_empty() {
                    // End of stream: the server closed the connection.
                    this.wire.close();
                }
                let wire = &this.wire;
                let fed = this.reads.feed(
                    fresh,
                    |_| {},
                    |kind, first| {
                        if kind == b'Z' {
                            wire.status.store(first.unwrap_or(b'I'), Ordering::Release);
                            wire.received.fetch_add(1, Ordering::AcqRel);
                        }
                    },
                );
                if fed.is_err() {
                    return Poll::Ready(Err(this.out_of_step()));
                }
            }
            Poll::Ready(Err(_)) => this.wire.close(),
            _ => {}
        }
        result
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        match &result {
            Poll::Ready(Ok(n)) if this.wire.active.load(Ordering::Acquire) => {
                let wire = &this.wire;
                let fed = this.writes.feed(
                    &buf[..*n],
                    |kind| {
                        if kind == b'Q' || kind == b'S' {
                            wire.sent.fetch_add(1, Ordering::AcqRel);
                        }
                    },
                    |_, _| {},
                );
                if fed.is_err() {
                    return Poll::Ready(Err(this.out_of_step()));
                }
            }
            Poll::Ready(Err(_)) => this.wire.close(),
            Poll::Pending => this.wire.write_pending.store(true, Ordering::Release),
            Poll::Ready(Ok(_)) => {}
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        match &result {
            // Framed flushes the socket only once its own buffer is written out.
            Poll::Ready(Ok(())) => this.wire.write_pending.store(false, Ordering::Release),
            Poll::Pending => this.wire.write_pending.store(true, Ordering::Release),
            Poll::Ready(Err(_)) => this.wire.close(),
        }
        result
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// tokio-postgres's connection future, polled with a waker that records wake-ups in the
/// [`Wire`], and that marks the wire closed when it ends.
pub(crate) struct Driven<F> {
    inner: F,
    wire: Arc<Wire>,
    waker: Waker,
}

impl<F> Driven<F> {
    pub(crate) fn new(inner: F, wire: Arc<Wire>) -> Self {
        let waker = Waker::from(Arc::clone(&wire));
        Self { inner, wire, waker }
    }
}

impl<F: std::future::Future + Unpin> std::future::Future for Driven<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        {
            let mut task = this
                .wire
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match task.as_ref() {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => *task = Some(cx.waker().clone()),
            }
        }
        let mut cx = Context::from_waker(&this.waker);
        let mut rounds = 0;
        let result = loop {
            this.wire.activity.swap(POLLING, Ordering::AcqRel);
            let result = Pin::new(&mut this.inner).poll(&mut cx);
            rounds += 1;
            if result.is_ready()
                || rounds == REPOLLS
                || this
                    .wire
                    .activity
                    .compare_exchange(POLLING, 0, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                this.wire.activity.fetch_and(!POLLING, Ordering::AcqRel);
                break result;
            }
            // Woken while being polled (a reply consumed, a socket ready, a request queued):
            // poll again now rather than end the poll with `WOKEN` set, so a checkin finds the
            // task settled more often. The executor's own re-poll is then merely spurious.
        };
        if result.is_ready() {
            this.wire.close();
        } else {
            this.wire.polled.notify(usize::MAX);
        }
        result
    }
}

impl<F> Drop for Driven<F> {
    fn drop(&mut self) {
        // Also when the runtime drops the task without finishing it.
        self.wire.close();
    }
}

#[cfg(test)]
mod tests {
    use super::Framer;

    fn frames(chunks: &[&[u8]]) -> Vec<(u8, Option<u8>)> {
        let mut framer = Framer::default();
        let mut out = Vec::new();
        for chunk in chunks {
            framer
                .feed(chunk, |_| {}, |kind, first| out.push((kind, first)))
                .expect("well-formed");
        }
        out
    }

    #[test]
    fn messages_are_found_across_any_split() {
        // CommandComplete "SELECT 1", then ReadyForQuery 'T', then a Sync-like empty message.
        let mut bytes = vec![b'C', 0, 0, 0, 13];
        bytes.extend_from_slice(b"SELECT 1\0");
        bytes.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'T']);
        bytes.extend_from_slice(&[b'S', 0, 0, 0, 4]);
        let expected = vec![(b'C', Some(b'S')), (b'Z', Some(b'T')), (b'S', None)];
        assert_eq!(frames(&[&bytes]), expected);
        for cut in 0..bytes.len() {
            assert_eq!(
                frames(&[&bytes[..cut], &bytes[cut..]]),
                expected,
                "cut at {cut}"
            );
        }
        let single: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(frames(&single), expected);
    }

    #[test]
    fn a_nonsense_length_is_an_error() {
        let mut framer = Framer::default();
        assert!(framer.feed(&[b'Z', 0, 0, 0, 2], |_| {}, |_, _| {}).is_err());
    }
}
