//! The return lane: connections given back while nobody waits, lent again without the lock.
//!
//! On the hot path (a connection goes back and nobody waits for one; the next acquire finds
//! it) the machine has nothing to decide: no waiter to serve, nothing to retire. The lane
//! lets that cycle skip the lock. A returned connection is parked in a lock-free queue
//! (`crossbeam_queue::ArrayQueue`) together with its lease, and the next acquire takes both
//! from there. The machine never hears of either step: to it the connection stays leased
//! under the same lease, as if its holder were still using it. The driver adds the parked
//! connections to the machine's idle count (and takes them from its in-use count) wherever
//! it reports the pool's status.
//!
//! The lane is only *open* while the machine would have nothing to decide on a return:
//! nobody waits, the pool is not closed and not over its size. Every transition recomputes
//! that under the lock, and the transition that closes the lane hands every parked
//! connection to the machine in the same transition (to the waiter that just queued, or to
//! be closed). A return races with that hand-over only in one way, and the two sides order
//! themselves with sequentially consistent fences (the store-buffering pattern):
//!
//! | the lock holder closing the lane | a task giving a connection back |
//! |---|---|
//! | stores "closed" | pushes the connection |
//! | fence | fence |
//! | pops every parked connection | loads "open" |
//!
//! At least one side sees the other's write: either the hand-over finds the connection, or
//! the returning task sees the lane closed and takes a connection back out (its own, or one
//! that arrived meanwhile) to release it through the machine. So no waiter waits while a
//! connection is parked (invariant 2), and none is lost or counted twice (invariant 5).
//!
//! An acquire takes from the lane only while it is open, so it never overtakes a queued
//! waiter. Features that follow each lease (leak detection, reclaim) need the machine to see
//! every checkout, so the lane is not used when they are configured. Time-based features are
//! kept exact: the returning task records when it gave the connection back, a connection
//! past its lifetime never enters or leaves the lane, and the maintenance task hands parked
//! connections to the machine every quarter of the shortest idle timeout or lifetime, with
//! their real return time, so the machine reaps them as it would have.

use std::cell::Cell;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crossbeam_queue::ArrayQueue;
use crossbeam_utils::CachePadded;

/// Shards of the lend counter: a thread adds to its own, so threads lending from one pool
/// at once do not pass a counter's cache line back and forth on every lend.
const SHARDS: usize = 8;

/// This thread's shard (threads are numbered as they first lend).
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<Option<usize>> = const { Cell::new(None) };
    }
    SHARD.with(|shard| match shard.get() {
        Some(i) => i,
        None => {
            let i = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
            shard.set(Some(i));
            i
        }
    })
}

/// A lock-free queue of parked `(lease, connection)` pairs and the gate that says whether
/// returns may use it.
pub(crate) struct Lane<T> {
    parked: ArrayQueue<T>,
    /// Whether returns may park here: written under the pool's lock, read without it.
    open: AtomicBool,
    /// Connections lent from the lane, sharded by thread (the machine counts the acquires
    /// it serves itself).
    lent: [CachePadded<AtomicU64>; SHARDS],
}

impl<T> Lane<T> {
    /// A closed lane with room for `capacity` connections (the pool's `max_size` at build;
    /// once grown past it, the surplus of returns goes through the machine).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            parked: ArrayQueue::new(capacity.max(1)),
            open: AtomicBool::new(false),
            lent: Default::default(),
        }
    }

    /// Lends a parked connection, if the lane is open and holds one.
    #[inline]
    pub(crate) fn take(&self) -> Option<T> {
        if !self.open.load(Ordering::Acquire) {
            return None;
        }
        let item = self.parked.pop()?;
        self.lent[shard()].fetch_add(1, Ordering::Relaxed);
        Some(item)
    }

    /// Parks a returned connection. Gives back what the machine must take instead: this one
    /// if the lane is closed or full, or one parked connection if the lane closed while this
    /// one went in (see the module documentation).
    #[inline]
    pub(crate) fn offer(&self, item: T) -> Option<T> {
        if !self.open.load(Ordering::Acquire) {
            return Some(item);
        }
        if let Err(item) = self.parked.push(item) {
            return Some(item);
        }
        fence(Ordering::SeqCst);
        if self.open.load(Ordering::Relaxed) {
            return None;
        }
        self.parked.pop()
    }

    /// Under the pool's lock: whether the lane is open.
    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// Under the pool's lock: opens the lane.
    pub(crate) fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    /// Under the pool's lock: closes the lane. The caller then hands every connection
    /// [`drain`](Self::drain) yields to the machine.
    pub(crate) fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Under the pool's lock: takes the next parked connection out, for the machine.
    pub(crate) fn drain(&self) -> Option<T> {
        self.parked.pop()
    }

    /// How many connections are parked right now.
    pub(crate) fn len(&self) -> usize {
        self.parked.len()
    }

    /// How many connections the lane has lent.
    pub(crate) fn lent(&self) -> u64 {
        self.lent.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::Lane;

    #[test]
    fn a_closed_lane_parks_and_lends_nothing() {
        let lane = Lane::new(2);
        assert_eq!(lane.offer(1), Some(1));
        assert_eq!(lane.take(), None::<i32>);
        assert_eq!((lane.len(), lane.lent()), (0, 0));
    }

    #[test]
    fn an_open_lane_lends_what_was_parked_in_order_and_counts_it() {
        let lane = Lane::new(2);
        lane.open();
        assert_eq!(lane.offer(1), None);
        assert_eq!(lane.offer(2), None);
        assert_eq!(lane.offer(3), Some(3), "full: the machine takes it");
        assert_eq!(lane.len(), 2);
        assert_eq!(lane.take(), Some(1));
        assert_eq!(lane.take(), Some(2));
        assert_eq!(lane.take(), None);
        assert_eq!(lane.lent(), 2);
    }

    #[test]
    fn closing_leaves_parked_connections_for_the_machine_to_drain() {
        let lane = Lane::new(4);
        lane.open();
        assert_eq!(lane.offer(1), None);
        lane.close();
        assert!(!lane.is_open());
        assert_eq!(lane.take(), None, "a closed lane lends nothing");
        assert_eq!(lane.offer(2), Some(2), "nor parks");
        assert_eq!(lane.drain(), Some(1));
        assert_eq!(lane.drain(), None);
    }

    /// Threads park and take while another closes the lane and drains it: every item ends
    /// up taken, drained, or handed back by `offer`, exactly once.
    #[test]
    fn racing_returns_and_a_close_lose_and_duplicate_nothing() {
        use parking_lot::Mutex;
        for round in 0..200 {
            let lane = Lane::new(8);
            lane.open();
            let seen = Mutex::new(Vec::new());
            std::thread::scope(|s| {
                for t in 0..2 {
                    let (lane, seen) = (&lane, &seen);
                    s.spawn(move || {
                        for i in 0..50 {
                            let item = t * 1000 + i;
                            if let Some(back) = lane.offer(item) {
                                seen.lock().push(back);
                            }
                            if i % 3 == 0 {
                                if let Some(taken) = lane.take() {
                                    seen.lock().push(taken);
                                }
                            }
                        }
                    });
                }
                if round % 2 == 0 {
                    std::thread::yield_now();
                }
                lane.close();
                while let Some(item) = lane.drain() {
                    seen.lock().push(item);
                }
            });
            // After the close, whatever is still parked arrived after the drain and saw
            // the lane closed, so it was handed back instead; the drain here must be empty.
            let mut seen = seen.into_inner();
            if let Some(item) = lane.drain() {
                panic!("round {round}: {item} stranded in a closed lane");
            }
            seen.sort_unstable();
            let mut all: Vec<i32> = (0..2)
                .flat_map(|t| (0..50).map(move |i| t * 1000 + i))
                .collect();
            all.sort_unstable();
            assert_eq!(seen, all, "round {round}");
        }
    }
}
