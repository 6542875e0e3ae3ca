//! Schedule exploration of the driver's lock and waker protocol with shuttle: acquirers
//! that are cancelled after a varying number of polls, acquirers that hold and release,
//! and a release of the only connection race in every order shuttle's schedulers pick.
//! After each schedule nothing may be lost: no connection leaked or duplicated, no waiter
//! stranded, and the pool still serves.
//!
//! Every pool transition happens under one lock with no yield point inside it, so the
//! interleavings that matter are those of the tasks' polls, which shuttle controls.

use std::future::Future;
use std::task::Poll;
use std::time::Instant;

use pool_core::{Pool, Runtime};
use pool_tests::{Counted, Fake};

/// Runs the pool's tasks as shuttle tasks. There are no timers: the scenarios use no
/// deadlines, so a sleep never needs to end.
#[derive(Debug, Clone, Copy, Default)]
struct ShuttleRuntime;

impl Runtime for ShuttleRuntime {
    type Sleep = std::future::Pending<()>;

    fn current() -> Result<Self, String> {
        Ok(Self)
    }

    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(shuttle::future::spawn(future));
    }

    fn sleep_until(&self, _deadline: Instant) -> Self::Sleep {
        std::future::pending()
    }

    fn spawn_blocking<F, T>(&self, f: F) -> impl Future<Output = T> + Send + 'static
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        // Shuttle has no blocking pool; running it at once is what a test needs.
        std::future::ready(f())
    }
}

/// A pool of one connection; one task holds it while three acquirers are cancelled after
/// 1, 2 and 3 polls, and two more acquire, yield and release.
fn acquire_cancel_release_race() {
    shuttle::future::block_on(async {
        let rt = Counted::<ShuttleRuntime>::current().expect("always available");
        let pool = Pool::builder(Fake::new(rt.clone()))
            .runtime(rt)
            .max_size(1)
            .acquire_timeout(None)
            .check_on_checkout(false)
            .build()
            .expect("a valid configuration");
        let holder = pool.get().await.expect("the first connection");

        let mut tasks = Vec::new();
        for polls in 1..=3 {
            let pool = pool.clone();
            tasks.push(shuttle::future::spawn(async move {
                let mut acquire = Box::pin(pool.get());
                for _ in 0..polls {
                    if let Poll::Ready(conn) = futures::poll!(acquire.as_mut()) {
                        let conn = conn.expect("no deadline, pool open");
                        shuttle::future::yield_now().await;
                        drop(conn);
                        return;
                    }
                    shuttle::future::yield_now().await;
                }
                // Cancelled: possibly after the connection was granted but not taken.
                drop(acquire);
            }));
        }
        for _ in 0..2 {
            let pool = pool.clone();
            tasks.push(shuttle::future::spawn(async move {
                let conn = pool.get().await.expect("no deadline, pool open");
                shuttle::future::yield_now().await;
                drop(conn);
            }));
        }
        shuttle::future::yield_now().await;
        drop(holder);
        for task in tasks {
            task.await.expect("no task panicked");
        }

        let s = pool.status();
        assert_eq!(
            (s.in_use, s.waiting, s.opening, s.closing),
            (0, 0, 0, 0),
            "{s:?}"
        );
        assert_eq!(s.idle, 1, "the one connection is back: {s:?}");
        assert_eq!(
            pool.manager().opened(),
            1,
            "never a second connection for a pool of one"
        );
        assert_eq!(pool.manager().live(), 1, "nothing leaked or duplicated");
        let m = pool.metrics();
        assert_eq!(m.closed.total(), 0, "nothing was closed: {m:?}");
        drop(pool.try_get().expect("the pool still serves"));
    });
}

#[test]
fn acquire_cancel_release_races_lose_nothing_random_schedules() {
    shuttle::check_random(acquire_cancel_release_race, 2000);
}

#[test]
fn acquire_cancel_release_races_lose_nothing_pct_schedules() {
    shuttle::check_pct(acquire_cancel_release_race, 2000, 3);
}
