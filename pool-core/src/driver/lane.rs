//! The return lane: connections given back while nobody waits, lent again without the lock.
//!
//! (See also `ARCHITECTURE.md`, "The return lane"; the glue to the machine is in
//! `handover.rs`.)
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
//! An acquire lends from the lane only if the lane is still open after its pop, with the same
//! pattern against the same hand-over:
//!
//! | the lock holder closing the lane | a task taking a connection |
//! |---|---|
//! | stores "closed" | pops a connection |
//! | fence | fence |
//! | pops every parked connection | loads "open" |
//!
//! Either the taker sees the lane closed, and hands what it popped to the machine (which
//! serves the waiter that closed the lane, or closes it if the pool closed) before acquiring
//! through the machine itself; or its pop came before the hand-over, and it is served before
//! the waiter that queued, as it would have been under the lock. So a taker never lends a
//! connection that arrived after the hand-over (a newcomer never overtakes a queued waiter),
//! and no acquire succeeds from the lane after `close` returned. The loom model at the end of
//! this file checks these interleavings exhaustively (`RUSTFLAGS="--cfg pool_loom" cargo test
//! -p pool-core --release --lib lane::model`). Features that follow each lease (leak detection, reclaim) need the machine to see
//! every checkout, so the lane is not used when they are configured. Time-based features are
//! kept exact: the returning task records when it gave the connection back, a connection
//! past its lifetime never enters or leaves the lane, and the maintenance task hands parked
//! connections to the machine every quarter of the shortest idle timeout or lifetime, with
//! their real return time, so the machine reaps them as it would have.

use std::cell::Cell;
use std::sync::atomic::AtomicUsize;

use crossbeam_utils::CachePadded;
use sync::{fence, ArrayQueue, AtomicBool, AtomicU64, Ordering};

/// The lane's synchronisation: the real atomics and crossbeam's lock-free queue, or, in the
/// loom model (`--cfg pool_loom`), loom's atomics and a linearizable queue built on loom's
/// mutex, so loom explores every interleaving of the open flag, the fences and the queue.
#[cfg(not(pool_loom))]
mod sync {
    pub(super) use crossbeam_queue::ArrayQueue;
    pub(super) use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
}

#[cfg(pool_loom)]
mod sync {
    pub(super) use loom::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
    use std::collections::VecDeque;

    loom::thread_local! {
        /// The queue-order number of this thread's last pop.
        static LAST_POP: std::cell::Cell<u64> = std::cell::Cell::new(0);
    }

    /// Where this thread's last pop stands in the queue's order of operations: the model
    /// compares it with the hand-over's.
    #[cfg(test)]
    pub(super) fn last_pop() -> u64 {
        LAST_POP.with(std::cell::Cell::get)
    }

    /// A bounded FIFO with `ArrayQueue`'s interface, linearizable by its lock, numbering its
    /// operations in that order.
    #[derive(Debug)]
    pub(super) struct ArrayQueue<T> {
        items: loom::sync::Mutex<(VecDeque<T>, u64)>,
        capacity: usize,
    }

    impl<T> ArrayQueue<T> {
        pub(super) fn new(capacity: usize) -> Self {
            Self {
                items: loom::sync::Mutex::new((VecDeque::new(), 0)),
                capacity,
            }
        }

        fn items(&self) -> loom::sync::MutexGuard<'_, (VecDeque<T>, u64)> {
            let mut items = self
                .items
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            items.1 += 1;
            items
        }

        pub(super) fn push(&self, item: T) -> Result<(), T> {
            let mut items = self.items();
            if items.0.len() == self.capacity {
                return Err(item);
            }
            items.0.push_back(item);
            Ok(())
        }

        pub(super) fn pop(&self) -> Option<T> {
            let mut items = self.items();
            LAST_POP.with(|last| last.set(items.1));
            items.0.pop_front()
        }

        pub(super) fn len(&self) -> usize {
            self.items().0.len()
        }
    }
}

/// What [`Lane::take`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Taken<T> {
    /// Nothing to lend: the lane is closed or empty.
    Nothing,
    /// A parked connection, lent to the caller.
    Lent(T),
    /// A connection popped just as the lane closed: the caller hands it to the machine (see
    /// the module documentation) and acquires through the machine.
    HandBack(T),
}

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

    /// Lends a parked connection, if the lane is open and holds one, and is still open after
    /// the pop (see the module documentation).
    #[inline]
    pub(crate) fn take(&self) -> Taken<T> {
        if !self.open.load(Ordering::Acquire) {
            return Taken::Nothing;
        }
        let Some(item) = self.parked.pop() else {
            return Taken::Nothing;
        };
        fence(Ordering::SeqCst);
        if !self.open.load(Ordering::Relaxed) {
            return Taken::HandBack(item);
        }
        self.lent[shard()].fetch_add(1, Ordering::Relaxed);
        Taken::Lent(item)
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
    /// [`hand_over`](Self::hand_over) yields to the machine.
    pub(crate) fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Under the pool's lock: the hand-over, one connection at a time: takes the next
    /// parked connection out, for the machine.
    pub(crate) fn hand_over(&self) -> Option<T> {
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

#[cfg(all(test, not(pool_loom)))]
mod tests {
    use super::{Lane, Taken};

    impl<T> Taken<T> {
        fn lent(self) -> Option<T> {
            match self {
                Taken::Lent(item) => Some(item),
                _ => None,
            }
        }
    }

    #[test]
    fn a_closed_lane_parks_and_lends_nothing() {
        let lane = Lane::new(2);
        assert_eq!(lane.offer(1), Some(1));
        assert_eq!(lane.take().lent(), None::<i32>);
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
        assert_eq!(lane.take().lent(), Some(1));
        assert_eq!(lane.take().lent(), Some(2));
        assert_eq!(lane.take().lent(), None);
        assert_eq!(lane.lent(), 2);
    }

    #[test]
    fn closing_leaves_parked_connections_for_the_hand_over() {
        let lane = Lane::new(4);
        lane.open();
        assert_eq!(lane.offer(1), None);
        lane.close();
        assert!(!lane.is_open());
        assert_eq!(lane.take(), Taken::Nothing, "a closed lane lends nothing");
        assert_eq!(lane.offer(2), Some(2), "nor parks");
        assert_eq!(lane.hand_over(), Some(1));
        assert_eq!(lane.hand_over(), None);
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
                                match lane.take() {
                                    Taken::Lent(item) | Taken::HandBack(item) => {
                                        seen.lock().push(item);
                                    }
                                    Taken::Nothing => {}
                                }
                            }
                        }
                    });
                }
                if round % 2 == 0 {
                    std::thread::yield_now();
                }
                lane.close();
                while let Some(item) = lane.hand_over() {
                    seen.lock().push(item);
                }
            });
            // After the close, whatever is still parked arrived after the drain and saw
            // the lane closed, so it was handed back instead; the drain here must be empty.
            let mut seen = seen.into_inner();
            if let Some(item) = lane.hand_over() {
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

/// The loom model of the lane's ordering argument (see the module documentation): every
/// interleaving of a return, an acquire and the hand-over (close, drain, and optionally
/// reopen), with loom's atomics, fences and a linearizable queue.
#[cfg(all(test, pool_loom))]
mod model {
    use super::{sync, Lane, Taken};
    use loom::sync::Arc;
    use loom::thread;

    /// What one run ended with: lent by the taker, handed to the machine (drained, handed
    /// back by the returner or the taker), and still parked at the end.
    #[derive(Debug)]
    struct Outcome {
        lent: Vec<u32>,
        machine: Vec<u32>,
        parked: Vec<u32>,
    }

    /// Connection 1 is parked; one task returns connection 2 while another acquires, and the
    /// lock holder closes the lane, drains it into the machine, and (with `reopen`) opens it
    /// again once the machine is done.
    fn run(reopen: bool) {
        loom::model(move || {
            let lane = Arc::new(Lane::new(4));
            lane.open();
            assert_eq!(lane.offer(1), None);

            let returner = {
                let lane = Arc::clone(&lane);
                thread::spawn(move || lane.offer(2))
            };
            let taker = {
                let lane = Arc::clone(&lane);
                thread::spawn(move || {
                    let taken = lane.take();
                    (taken, sync::last_pop())
                })
            };

            lane.close();
            let mut machine = Vec::new();
            while let Some(item) = lane.hand_over() {
                machine.push(item);
            }
            // The hand-over: the drain's last pop, which found the lane empty.
            let handed_over = sync::last_pop();
            if reopen {
                lane.open();
            }

            machine.extend(returner.join().expect("the returner ran"));
            let (taken, popped_at) = taker.join().expect("the taker ran");
            let mut lent = Vec::new();
            match taken {
                Taken::Lent(item) => {
                    // No take succeeds after the hand-over: a lend's pop came before it in
                    // the queue's order, so the taker was served before the waiter that
                    // closed the lane, as it would have been under the lock. (Once the lane
                    // reopens, nobody waits any more, and lending is right again.)
                    assert!(
                        reopen || popped_at < handed_over,
                        "lent {item} from a pop after the hand-over"
                    );
                    lent.push(item);
                }
                Taken::HandBack(item) => machine.push(item),
                Taken::Nothing => {}
            }
            let mut parked = Vec::new();
            while let Some(item) = lane.hand_over() {
                parked.push(item);
            }
            let outcome = Outcome {
                lent,
                machine,
                parked,
            };
            // Invariant 2: nothing stays parked in a closed lane.
            assert!(
                reopen || outcome.parked.is_empty(),
                "stranded in a closed lane: {outcome:?}"
            );
            // Invariant 5: every connection ends in exactly one place.
            let mut all: Vec<u32> = outcome
                .lent
                .iter()
                .chain(&outcome.machine)
                .chain(&outcome.parked)
                .copied()
                .collect();
            all.sort_unstable();
            assert_eq!(all, [1, 2], "lost or duplicated: {outcome:?}");
        });
    }

    #[test]
    fn a_return_an_acquire_and_a_close_lose_nothing_and_never_lend_after_the_hand_over() {
        run(false);
    }

    #[test]
    fn the_same_with_the_lane_reopened_after_the_hand_over() {
        run(true);
    }

    /// An acquire that starts after `close` returned never lends from the lane.
    #[test]
    fn no_acquire_lends_after_close_returned() {
        loom::model(|| {
            let lane = Arc::new(Lane::new(4));
            lane.open();
            assert_eq!(lane.offer(1), None);
            let closed = Arc::new(loom::sync::atomic::AtomicBool::new(false));
            let taker = {
                let (lane, closed) = (Arc::clone(&lane), Arc::clone(&closed));
                thread::spawn(move || {
                    if closed.load(loom::sync::atomic::Ordering::Acquire) {
                        assert!(
                            !matches!(lane.take(), Taken::Lent(_)),
                            "lent after close returned"
                        );
                    }
                })
            };
            let returner = {
                let lane = Arc::clone(&lane);
                thread::spawn(move || lane.offer(2))
            };
            lane.close();
            while lane.hand_over().is_some() {}
            closed.store(true, loom::sync::atomic::Ordering::Release);
            taker.join().expect("the taker ran");
            let _ = returner.join().expect("the returner ran");
        });
    }
}
