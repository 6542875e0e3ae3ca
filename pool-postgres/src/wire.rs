//! The shell around the protocol model: a socket wrapper that feeds every byte to the
//! [`Tracker`](crate::protocol::Tracker) and publishes its verdict to atomics, and the
//! connection's driver, which polls tokio-postgres's `Connection` (from its background task,
//! or from a checkin that finds work queued), records whether it has work pending, and
//! forwards the server's notifications to the borrower.
//!
//! What the checkin needs to know is "could anything the last borrower started still be
//! running, queued, or holding a transaction open?". Three places can hold such work:
//!
//! 1. the client's request channel (queued by a future that was then dropped, the
//!    sqlx#4393 case of a cancelled `BEGIN`, or the `Close` of a dropped statement): the
//!    push wakes the connection task, which sets [`WOKEN`]; a poll clears it when it starts,
//!    and every poll drains the channel into the socket before it ends (or stops because the
//!    socket is full: `write_pending`). A checkin that finds `WOKEN` polls the connection
//!    itself, once, rather than wait for the task to be scheduled;
//! 2. the socket or the server: the model's [`Due`](crate::protocol::Due);
//! 3. the session: the model's transaction status.
//!
//! # Memory ordering
//! The user's task pushes a request and then (same thread, program order) checks the
//! connection in; the push's wake sets `WOKEN` with `AcqRel` before the check reads
//! `activity` with `Acquire`. A poll `swap`s `activity` to `POLLING` with `AcqRel`
//! (synchronising with that wake, so the poll sees the pushed request) and clears `POLLING`
//! with `AcqRel` at its end, after the verdict was published. So a checkin that reads
//! `activity == 0` also sees the verdict of every write made for every request pushed
//! before it. Polls never overlap: they hold the `Link`'s lock.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};
use std::task::{Context, Poll, Wake, Waker};

use event_listener::Event;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::{AsyncMessage, Notification};

use crate::error::Whole;
use crate::protocol::{BackendKey, Due, Tracker, TransactionStatus, Verdict};
use crate::runtime::Stream;

/// The connection was woken and has not been polled since.
const WOKEN: u8 = 1;
/// The connection is being polled.
const POLLING: u8 = 2;
/// How long a checkin waits for a running poll of the connection to end (some µs: spins,
/// with a yield of the thread every 64).
const SPINS: u32 = 1024;
/// How many times a checkin polls the connection itself to write what is queued.
const CHECKIN_POLLS: u32 = 3;
/// How many times one poll polls tokio-postgres's connection when it is woken while being
/// polled.
const REPOLLS: u32 = 4;

/// What the connection's owner, its driver and its socket share.
pub(crate) struct Wire {
    /// `WOKEN | POLLING`.
    activity: AtomicU8,
    /// The model's verdict, packed (see [`pack`]).
    verdict: AtomicU64,
    /// Client messages written since the handshake.
    sent: AtomicU64,
    /// `LISTEN` mentions and notifications seen.
    listens: AtomicU64,
    /// The socket refused bytes and the buffered ones are not all written yet.
    write_pending: AtomicBool,
    /// The connection ended, the socket failed, or the byte stream made no sense.
    closed: AtomicBool,
    /// A cancel request for this connection is in flight.
    cancelling: AtomicBool,
    /// From the handshake's `BackendKeyData`.
    key: OnceLock<BackendKey>,
    /// Notified after every poll of the connection.
    polled: Event,
    /// The waker of the task that runs the connection.
    task: Mutex<Option<Waker>>,
    /// Notifications not yet taken by the borrower.
    notifications: Mutex<VecDeque<Notification>>,
    /// Notified when a notification arrives or the connection closes.
    notified: Event,
}

fn pack(v: Verdict) -> u64 {
    let status = match v.status {
        TransactionStatus::Idle => 0,
        TransactionStatus::InTransaction => 1,
        TransactionStatus::Failed => 2,
    };
    let due = match v.due {
        Due::Nothing => 0,
        Due::Sync => 1,
        Due::Query => 2,
    };
    status | due << 2 | u64::from(v.ready) << 4 | u64::from(v.lost) << 5
}

fn unpack(bits: u64) -> Verdict {
    Verdict {
        status: match bits & 3 {
            0 => TransactionStatus::Idle,
            1 => TransactionStatus::InTransaction,
            _ => TransactionStatus::Failed,
        },
        due: match bits >> 2 & 3 {
            0 => Due::Nothing,
            1 => Due::Sync,
            _ => Due::Query,
        },
        ready: bits >> 4 & 1 == 1,
        lost: bits >> 5 & 1 == 1,
    }
}

impl Wire {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            activity: AtomicU8::new(0),
            verdict: AtomicU64::new(pack(Tracker::new().verdict())),
            sent: AtomicU64::new(0),
            listens: AtomicU64::new(0),
            write_pending: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            cancelling: AtomicBool::new(false),
            key: OnceLock::new(),
            polled: Event::new(),
            task: Mutex::new(None),
            notifications: Mutex::new(VecDeque::new()),
            notified: Event::new(),
        })
    }

    /// No work is queued for the connection and it is not being polled.
    pub(crate) fn settled(&self) -> bool {
        self.activity.load(Ordering::Acquire) == 0
    }

    /// The model's verdict as of the last byte passed.
    pub(crate) fn verdict(&self) -> Verdict {
        unpack(self.verdict.load(Ordering::Acquire))
    }

    /// Written requests are stuck in the socket buffer.
    pub(crate) fn write_pending(&self) -> bool {
        self.write_pending.load(Ordering::Acquire)
    }

    /// Client messages written so far (grows with every request).
    pub(crate) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Acquire)
    }

    /// `LISTEN` mentions and notifications seen so far.
    pub(crate) fn listens(&self) -> u64 {
        self.listens.load(Ordering::Acquire)
    }

    /// The backend's key, once the handshake has passed.
    pub(crate) fn key(&self) -> Option<BackendKey> {
        self.key.get().copied()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Nothing queued or stuck, and the model says a statement could still be running.
    pub(crate) fn query_may_run(&self) -> bool {
        self.verdict().query_may_run()
    }

    /// Settled, everything written, and no statement can be running: what is still due (a
    /// `Close`'s reply) arrives before any reply to the next borrower.
    pub(crate) fn calm(&self) -> bool {
        self.settled() && !self.write_pending() && !self.query_may_run()
    }

    /// Marks the start of a cancel request; `None` if one is already in flight. The guard
    /// marks its end when dropped.
    pub(crate) fn start_cancel(self: &Arc<Self>) -> Option<CancelGuard> {
        self.cancelling
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| CancelGuard(Arc::clone(self)))
    }

    /// Waits until `done` holds, re-checking after every poll of the connection. Ends early
    /// (returning `false`) if the connection closes.
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

    /// Takes the next notification, if one arrived.
    pub(crate) fn try_notification(&self) -> Option<Notification> {
        self.notifications
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
    }

    /// Waits for the next notification; `None` once the connection is closed and none is
    /// left.
    pub(crate) async fn notification(&self) -> Option<Notification> {
        loop {
            let listener = self.notified.listen();
            if let Some(n) = self.try_notification() {
                return Some(n);
            }
            if self.is_closed() {
                return None;
            }
            listener.await;
        }
    }

    /// Drops the notifications nobody took (at a reset, once the session listens no more).
    pub(crate) fn clear_notifications(&self) {
        self.notifications
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.polled.notify(usize::MAX);
        self.notified.notify(usize::MAX);
        // The task may be waiting for a wake-up that will not come now (a checkin's poll
        // saw the end): it finds the connection gone and ends.
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(waker) = task.as_ref() {
            waker.wake_by_ref();
        }
    }

    fn publish(&self, tracker: &Tracker) {
        let verdict = tracker.verdict();
        self.sent.store(tracker.sent(), Ordering::Release);
        self.listens.store(tracker.listens(), Ordering::Release);
        self.verdict.store(pack(verdict), Ordering::Release);
        if let Some(key) = tracker.backend_key() {
            let _ = self.key.set(key);
        }
        if verdict.lost {
            self.close();
        }
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

/// A cancel request in flight (see [`Wire::start_cancel`]).
pub(crate) struct CancelGuard(Arc<Wire>);

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.0.cancelling.store(false, Ordering::Release);
    }
}

/// The socket as tokio-postgres sees it: the runtime's stream, with both directions fed to
/// the protocol model.
pub(crate) struct Tracked {
    inner: Stream,
    wire: Arc<Wire>,
    tracker: Tracker,
}

impl Tracked {
    pub(crate) fn new(inner: Stream, wire: Arc<Wire>) -> Self {
        Self {
            inner,
            wire,
            tracker: Tracker::new(),
        }
    }

    fn lost(&self) -> Option<io::Error> {
        self.tracker.verdict().lost.then(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "the PostgreSQL byte stream is out of step",
            )
        })
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
            Poll::Ready(Ok(())) => {
                let fresh = &buf.filled()[before..];
                if fresh.is_empty() {
                    // End of stream: the server closed the connection.
                    this.wire.close();
                }
                this.tracker.server(fresh);
                this.wire.publish(&this.tracker);
                if let Some(e) = this.lost() {
                    return Poll::Ready(Err(e));
                }
            }
            Poll::Ready(Err(_)) => this.wire.close(),
            Poll::Pending => {}
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
            Poll::Ready(Ok(n)) => {
                this.tracker.client(&buf[..*n]);
                this.wire.publish(&this.tracker);
                if let Some(e) = this.lost() {
                    return Poll::Ready(Err(e));
                }
            }
            Poll::Ready(Err(_)) => this.wire.close(),
            Poll::Pending => this.wire.write_pending.store(true, Ordering::Release),
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

/// tokio-postgres's connection, driven by message (so notifications are not lost).
pub(crate) trait Drive: Send {
    /// `Connection::poll_message`.
    fn poll_message(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<AsyncMessage, tokio_postgres::Error>>>;
}

impl<S, T> Drive for tokio_postgres::Connection<S, T>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    T: AsyncRead + AsyncWrite + Unpin + Send,
{
    fn poll_message(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<AsyncMessage, tokio_postgres::Error>>> {
        tokio_postgres::Connection::poll_message(self, cx)
    }
}

/// The connection and its wire, shared by the background task that drives it and by the
/// pooled connection (whose checkin may drive it once).
pub(crate) struct Link {
    pub(crate) wire: Arc<Wire>,
    /// `None` once the connection ended.
    conn: Mutex<Option<Box<dyn Drive>>>,
}

impl Link {
    pub(crate) fn new(wire: Arc<Wire>, conn: Box<dyn Drive>) -> Arc<Self> {
        Arc::new(Self {
            wire,
            conn: Mutex::new(Some(conn)),
        })
    }

    /// The background task: polls the connection until it ends.
    pub(crate) async fn run(self: Arc<Self>) {
        /// Also when the runtime drops the task without finishing it.
        struct Ended(Arc<Link>);
        impl Drop for Ended {
            fn drop(&mut self) {
                self.0.end();
            }
        }
        let ended = Ended(self);
        std::future::poll_fn(|cx| {
            let link = &ended.0;
            {
                let mut task = link
                    .wire
                    .task
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                match task.as_ref() {
                    Some(waker) if waker.will_wake(cx.waker()) => {}
                    _ => *task = Some(cx.waker().clone()),
                }
            }
            let mut conn = link.conn.lock().unwrap_or_else(PoisonError::into_inner);
            link.poll(&mut conn)
        })
        .await;
    }

    /// Polls the connection now if work is queued for it and nobody else is polling it (a
    /// checkin that found a request queued, such as the `Close` of a dropped statement).
    /// Returns whether it is settled afterwards.
    pub(crate) fn settle_now(&self) -> bool {
        let mut spins = 0;
        let mut polls = 0;
        loop {
            match self.wire.activity.load(Ordering::Acquire) {
                0 => return true,
                WOKEN if polls < CHECKIN_POLLS => {
                    polls += 1;
                    match self.conn.try_lock() {
                        Ok(mut conn) => {
                            let _ = self.poll(&mut conn);
                        }
                        Err(TryLockError::Poisoned(e)) => {
                            let _ = self.poll(&mut e.into_inner());
                        }
                        // Being polled right now: wait for that poll below.
                        Err(TryLockError::WouldBlock) => {}
                    }
                }
                _ if spins < SPINS => {
                    spins += 1;
                    if spins % 64 == 0 {
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
                _ => return false,
            }
        }
    }

    /// One poll: drains the request channel into the socket, reads what arrived, forwards
    /// notifications. Ready once the connection has ended.
    fn poll(&self, conn: &mut MutexGuard<'_, Option<Box<dyn Drive>>>) -> Poll<()> {
        let wire = &self.wire;
        let Some(inner) = conn.as_mut() else {
            return Poll::Ready(());
        };
        let waker = Waker::from(Arc::clone(wire));
        let mut cx = Context::from_waker(&waker);
        let mut rounds = 0;
        let ended = loop {
            wire.activity.swap(POLLING, Ordering::AcqRel);
            let ended = loop {
                match inner.poll_message(&mut cx) {
                    Poll::Ready(Some(Ok(AsyncMessage::Notification(n)))) => {
                        wire.notifications
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push_back(n);
                        wire.notified.notify(usize::MAX);
                    }
                    Poll::Ready(Some(Ok(AsyncMessage::Notice(notice)))) => {
                        tracing::debug!(
                            severity = notice.severity(),
                            message = notice.message(),
                            "PostgreSQL notice"
                        );
                    }
                    Poll::Ready(Some(Ok(_))) => {}
                    Poll::Ready(Some(Err(error))) => {
                        tracing::debug!(error = %Whole(&error), "PostgreSQL connection ended with an error");
                        break true;
                    }
                    Poll::Ready(None) => break true,
                    Poll::Pending => break false,
                }
            };
            rounds += 1;
            if ended
                || rounds == REPOLLS
                || wire
                    .activity
                    .compare_exchange(POLLING, 0, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                wire.activity.fetch_and(!POLLING, Ordering::AcqRel);
                break ended;
            }
            // Woken while being polled (a reply consumed, a socket ready, a request queued):
            // poll again now rather than end the poll with `WOKEN` set, so a checkin finds the
            // connection settled more often.
        };
        if ended {
            **conn = None;
            wire.close();
            Poll::Ready(())
        } else {
            wire.polled.notify(usize::MAX);
            Poll::Pending
        }
    }

    /// The connection is gone: drop it (closing the socket) and say so.
    fn end(&self) {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(conn);
        self.wire.close();
    }
}

#[cfg(test)]
mod tests {
    use super::{pack, unpack};
    use crate::protocol::{Due, TransactionStatus, Verdict};

    #[test]
    fn a_verdict_survives_packing() {
        for status in [
            TransactionStatus::Idle,
            TransactionStatus::InTransaction,
            TransactionStatus::Failed,
        ] {
            for due in [Due::Nothing, Due::Sync, Due::Query] {
                for (ready, lost) in [(false, false), (true, false), (true, true)] {
                    let v = Verdict {
                        status,
                        due,
                        ready,
                        lost,
                    };
                    assert_eq!(unpack(pack(v)), v);
                }
            }
        }
    }
}
