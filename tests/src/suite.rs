//! The conformance scenarios, each generic over the runtime. They assert outcomes (counts,
//! errors, order), and time only with wide tolerances: the machines are shared and noisy.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::{join_all, select, Either};
use pool_core::{BuildError, Builder, Error, LeakReport, Pool, Runtime};

use crate::fake::{Counted, Fake, Step};

type TestPool<R> = Pool<Fake<Counted<R>>, Counted<R>>;

fn runtime<R: Runtime>() -> Counted<R> {
    match Counted::<R>::current() {
        Ok(rt) => rt,
        Err(e) => panic!("the conformance suite runs inside its runtime: {e}"),
    }
}

fn builder<R: Runtime>(rt: &Counted<R>) -> Builder<Fake<Counted<R>>, Counted<R>> {
    Pool::builder(Fake::new(rt.clone()))
        .runtime(rt.clone())
        .check_on_checkout(false)
        .backoff_base(Duration::from_millis(10))
        .backoff_max(Duration::from_millis(50))
}

fn build<R: Runtime>(b: Builder<Fake<Counted<R>>, Counted<R>>) -> TestPool<R> {
    match b.build() {
        Ok(pool) => pool,
        Err(e) => panic!("the test's pool must build: {e}"),
    }
}

/// Waits until `done` holds, polling every 5 ms; fails the test loudly if it does not hold
/// within 5 s (a bound far beyond what any scenario needs, not a measurement).
#[track_caller]
fn wait_until<'a, R: Runtime>(
    rt: &'a Counted<R>,
    done: impl Fn() -> bool + 'a,
) -> impl std::future::Future<Output = ()> + 'a {
    let caller = std::panic::Location::caller();
    async move {
        let give_up = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(
                Instant::now() < give_up,
                "the condition awaited at {caller} did not hold within 5 s"
            );
            rt.sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Waits (up to 3 s) until nothing is opening or closing, then checks that the status adds
/// up and that every live connection is one the pool counts.
async fn assert_settled<R: Runtime>(rt: &Counted<R>, pool: &TestPool<R>) {
    wait_until(rt, || {
        let s = pool.status();
        s.opening == 0 && s.closing == 0
    })
    .await;
    let s = pool.status();
    assert_eq!(
        s.size,
        s.idle + s.in_use + s.opening + s.closing,
        "status adds up: {s:?}"
    );
    assert!(s.size <= s.max_size, "size within max: {s:?}");
    assert_eq!(
        pool.manager().live(),
        s.idle + s.in_use,
        "every live connection is counted: {s:?}"
    );
}

/// Waits (up to 2 s) for a closed pool's `drained()`, failing if it does not resolve.
async fn assert_drains<R: Runtime>(rt: &Counted<R>, pool: &TestPool<R>) {
    let drained = pool.drained();
    let limit = rt.sleep(Duration::from_secs(2));
    futures::pin_mut!(drained, limit);
    assert!(
        matches!(select(drained, limit).await, Either::Left(_)),
        "drained() resolved: {:?}",
        pool.status()
    );
}

/// Seed 003: concurrent acquirers and slow connects never make a pool of 2 open a third.
pub async fn pool_of_two_never_opens_a_third_connection<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(builder(&rt).max_size(2));
    pool.manager()
        .set_connect(Step::Slow(Duration::from_millis(100)));
    let tasks = (0..3).map(|_| {
        let (pool, rt2) = (pool.clone(), rt.clone());
        rt.spawn(async move {
            let conn = pool.get().await.map_err(|e| e.to_string())?;
            rt2.sleep(Duration::from_millis(200)).await;
            Ok::<_, String>(conn.id)
        })
    });
    let ids: Vec<_> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("task ran").expect("task got a connection"))
        .collect();
    assert_eq!(
        pool.manager().opened(),
        2,
        "a pool of 2 opened exactly 2 connections"
    );
    assert!(
        pool.manager()
            .stats
            .max_live
            .load(std::sync::atomic::Ordering::SeqCst)
            <= 2
    );
    assert_eq!(ids.len(), 3, "the third task was served after a release");
    assert_settled(&rt, &pool).await;
}

/// Seed 002: seven tasks hold connections of a pool of 3 with a deadline: the ones that do not
/// get one time out with an error that shows the pool's state.
pub async fn seventh_task_times_out_with_the_pool_state<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(
        builder(&rt)
            .max_size(3)
            .acquire_timeout(Some(Duration::from_millis(300))),
    );
    let start = Instant::now();
    let tasks = (0..7).map(|_| {
        let (pool, rt2) = (pool.clone(), rt.clone());
        rt.spawn(async move {
            let conn = pool
                .get()
                .await
                .map_err(|e| (e.to_string(), e.is_timeout(), Instant::now()))?;
            rt2.sleep(Duration::from_millis(1500)).await;
            drop(conn);
            Ok(())
        })
    });
    let results: Vec<_> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("task ran"))
        .collect();
    let failures: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(
        failures.len(),
        4,
        "3 tasks hold the 3 connections, 4 time out: {results:?}"
    );
    for (message, is_timeout, at) in failures {
        assert!(is_timeout, "{message}");
        assert!(message.starts_with("timed out after"), "{message}");
        assert!(
            message.contains("3 of 3 in use"),
            "the error shows the pool's state: {message}"
        );
        assert!(message.contains("waiting"), "{message}");
        let waited = at.duration_since(start);
        assert!(
            waited >= Duration::from_millis(300),
            "not before the deadline: {waited:?}"
        );
        assert!(
            waited < Duration::from_millis(1400),
            "at the deadline, not after a release: {waited:?}"
        );
    }
    assert_eq!(pool.metrics().timed_out, 4);
    assert_settled(&rt, &pool).await;
}

/// Seed 002: six tasks on a pool of 3 each do a short job with a connection and then sleep
/// long outside the pool; all jobs finish long before the first sleep ends.
pub async fn short_jobs_finish_while_others_sleep_outside_the_pool<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(builder(&rt).max_size(3));
    let start = Instant::now();
    let tasks = (0..6).map(|_| {
        let (pool, rt2) = (pool.clone(), rt.clone());
        rt.spawn(async move {
            let sleeper = rt2.clone();
            pool.with_connection(async move |_conn| sleeper.sleep(Duration::from_millis(50)).await)
                .await
                .map_err(|e| e.to_string())?;
            let job_done = Instant::now();
            rt2.sleep(Duration::from_secs(1)).await;
            Ok::<_, String>((job_done, Instant::now()))
        })
    });
    let times: Vec<_> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("task ran").expect("job ran"))
        .collect();
    let last_job = times.iter().map(|t| t.0).max().expect("six tasks");
    let first_wake = times.iter().map(|t| t.1).min().expect("six tasks");
    assert!(
        last_job < first_wake,
        "every job finished before any sleep ended"
    );
    assert!(
        last_job.duration_since(start) < Duration::from_millis(900),
        "jobs were quick"
    );
    assert!(pool.manager().opened() <= 3);
    assert_settled(&rt, &pool).await;
}

/// Cancel an acquire at every await point, for every step (connect, check, reset) behaving
/// every way (ok, err, slow, never): nothing is lost, and a later acquire succeeds.
pub async fn cancelling_an_acquire_at_every_await_point_loses_nothing<R: Runtime>() {
    let rt = runtime::<R>();
    for which in ["connect", "check", "reset"] {
        for step in Step::all(Duration::from_millis(40)) {
            for cancel_after in [
                Duration::ZERO,
                Duration::from_millis(20),
                Duration::from_millis(60),
            ] {
                let case = format!("{which} {step:?}, acquire dropped after {cancel_after:?}");
                let pool = build(
                    builder(&rt)
                        .max_size(2)
                        .check_on_checkout(true)
                        .check_bypass(Duration::ZERO)
                        .connect_timeout(Duration::from_millis(100))
                        .reset_timeout(Duration::from_millis(100)),
                );
                let manager = pool.manager();
                match which {
                    "connect" => manager.set_connect(step),
                    "check" => manager.set_check(step),
                    _ => {
                        manager.set_reset(step);
                        // Two connections out and back: both are resetting when we acquire.
                        let a = pool.get().await.expect(&case);
                        let b = pool.get().await.expect(&case);
                        drop((a, b));
                    }
                }
                {
                    // The acquire future is dropped at the end of this block.
                    let acquire = pool.get();
                    let timer = rt.sleep(cancel_after);
                    futures::pin_mut!(acquire, timer);
                    if let Either::Left((got, _)) = select(acquire, timer).await {
                        drop(got);
                    }
                }
                manager.set_connect(Step::Ok);
                manager.set_check(Step::Ok);
                if which == "reset" {
                    manager.set_reset(Step::Ok);
                }
                // Let connect, check and reset time-outs (100 ms) and back-offs run out.
                rt.sleep(Duration::from_millis(150)).await;
                let conn = pool.get_timeout(Duration::from_secs(2)).await;
                assert!(
                    conn.is_ok(),
                    "{case}: a later acquire succeeds: {:?}",
                    conn.err()
                );
                drop(conn);
                // A returned connection may still be resetting (it counts as in use).
                wait_until(&rt, || pool.status().in_use == 0).await;
                assert_settled(&rt, &pool).await;
                let s = pool.status();
                assert_eq!((s.in_use, s.waiting), (0, 0), "{case}: {s:?}");
            }
        }
    }
}

/// Holds a connection of `pool` in a task of its own until the returned handle is dropped:
/// the test's own acquires then wait for another task's connection, as the scenario means,
/// not for one it holds itself (which, where the runtime names tasks, is a certain deadlock
/// that fails at once: `ARCHITECTURE.md`, "A task waiting on itself").
async fn hold_in_another_task<R: Runtime>(
    rt: &Counted<R>,
    pool: &TestPool<R>,
) -> futures::channel::oneshot::Sender<()> {
    let (held_tx, held_rx) = futures::channel::oneshot::channel::<()>();
    let (release_tx, release_rx) = futures::channel::oneshot::channel::<()>();
    let pool = pool.clone();
    let holder = rt.spawn(async move {
        let conn = pool.get().await.expect("the holder's connection");
        let _ = held_tx.send(());
        let _ = release_rx.await;
        drop(conn);
    });
    drop(holder);
    held_rx.await.expect("the holder task holds a connection");
    release_tx
}

/// One acquire that waits at least `held_back`: another task holds the pool's one
/// connection until then, and gives it back once the acquire has queued. Returns once the
/// waiter was served.
async fn serve_a_waiter_held_back_for<R: Runtime>(
    rt: &Counted<R>,
    pool: &TestPool<R>,
    held_back: Duration,
) {
    let held = hold_in_another_task(rt, pool).await;
    let waiter = {
        let pool = pool.clone();
        rt.spawn(async move { pool.get().await.map(|c| c.id) })
    };
    wait_until(rt, || pool.status().waiting == 1).await;
    rt.sleep(held_back).await;
    drop(held);
    assert!(waiter.await.expect("the waiter ran").is_ok());
}

/// An acquire with a per-call timeout fails at its deadline, not before, and not much after.
pub async fn acquire_timeout_is_honoured<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(builder(&rt).max_size(1));
    let held = hold_in_another_task(&rt, &pool).await;
    let start = Instant::now();
    let err = pool
        .get_timeout(Duration::from_millis(200))
        .await
        .expect_err("the pool is exhausted");
    let waited = start.elapsed();
    let Error::TimedOut(t) = &err else {
        panic!("expected a time-out, got {err}");
    };
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    // The pool's own account: at the deadline, within the acquire's span. (The wall-clock
    // bound is wide for a shared 2-core machine, but a time-out missed by one maintenance
    // tick or one back-off would exceed it.)
    assert!(
        t.waited >= Duration::from_millis(200) && t.waited <= waited,
        "reported {:?}, measured {waited:?}",
        t.waited
    );
    assert!(waited < Duration::from_millis(700), "{waited:?}");
    assert_eq!(err.status().map(|s| (s.in_use, s.max_size)), Some((1, 1)));
    drop(held);
    assert_settled(&rt, &pool).await;
}

/// close() fails waiters at once, refuses new acquires, closes returned connections, and
/// `drained()` resolves once the last one is closed.
pub async fn close_fails_waiters_and_drains<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(builder(&rt).max_size(1));
    let held = pool.get().await.expect("one connection");
    let waiter = {
        let pool = pool.clone();
        rt.spawn(async move { pool.get_timeout(Duration::from_secs(10)).await.map(drop) })
    };
    wait_until(&rt, || pool.status().waiting == 1).await;
    pool.close();
    assert!(matches!(
        waiter.await.expect("task ran"),
        Err(Error::Closed)
    ));
    assert!(matches!(pool.get().await, Err(Error::Closed)));
    assert!(matches!(pool.try_get(), Err(Error::Closed)));
    assert_eq!(
        pool.manager().live(),
        1,
        "the held connection lives until returned"
    );
    drop(held);
    assert_drains(&rt, &pool).await;
    assert_eq!(pool.manager().live(), 0);
    assert_eq!(pool.metrics().closed.pool_closed, 1);
}

/// A panic while holding a guard closes the connection (its state is unknown) and frees the
/// slot.
pub async fn panic_while_holding_a_guard_discards_the_connection<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(builder(&rt).max_size(1));
    let conn = pool.get().await.expect("one connection");
    let result = std::panic::catch_unwind(AssertUnwindSafe(move || {
        let _conn = conn;
        panic!("the task panics while holding a connection");
    }));
    assert!(result.is_err());
    assert_settled(&rt, &pool).await;
    assert_eq!(pool.metrics().closed.discarded, 1);
    assert_eq!(pool.status().in_use, 0);
    let again = pool
        .get_timeout(Duration::from_secs(2))
        .await
        .expect("the slot was freed");
    assert_eq!(again.id, 2, "a new connection replaced the discarded one");
}

/// A lease held past the leak threshold is reported once, naming the lease and where it was
/// acquired.
pub async fn leak_is_reported_with_where_it_was_acquired<R: Runtime>() {
    let rt = runtime::<R>();
    let reports: Arc<Mutex<Vec<LeakReport>>> = Arc::default();
    let sink = Arc::clone(&reports);
    let pool = build(
        builder(&rt)
            .leak_threshold(Some(Duration::from_millis(100)))
            .leak_backtraces(true)
            .on_leak(move |r| {
                sink.lock()
                    .expect("no panics under this lock")
                    .push(r.clone())
            }),
    );
    let conn = pool.get().await.expect("a connection");
    wait_until(&rt, || pool.metrics().leaks_suspected == 1).await;
    // Three more thresholds pass (a delay under test): the lease is not reported again.
    rt.sleep(Duration::from_millis(300)).await;
    let reports = reports.lock().expect("no panics under this lock").clone();
    assert_eq!(reports.len(), 1, "reported once");
    assert_eq!(reports[0].lease, conn.lease_id());
    assert!(reports[0].held_for >= Duration::from_millis(100));
    let bt = reports[0]
        .acquired_at
        .as_ref()
        .expect("a backtrace was captured")
        .to_string();
    assert!(
        bt.contains("leak_is_reported"),
        "the backtrace shows the acquiring function:\n{bt}"
    );
    assert_eq!(pool.metrics().leaks_suspected, 1);
}

/// A lease held past `reclaim_after` stops counting: a waiter is served by a replacement,
/// and the old connection is closed when it finally comes back.
pub async fn abandoned_lease_is_reclaimed_and_closed_on_return<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(
        builder(&rt)
            .max_size(1)
            .reclaim_after(Some(Duration::from_millis(150))),
    );
    let forgotten = pool.get().await.expect("a connection");
    let start = Instant::now();
    let replacement = pool
        .get_timeout(Duration::from_secs(2))
        .await
        .expect("served after reclaim");
    assert!(start.elapsed() >= Duration::from_millis(100));
    assert_eq!(pool.status().abandoned, 1);
    assert_ne!(replacement.id, forgotten.id);
    drop(forgotten);
    assert_eq!(pool.metrics().closed.reclaimed, 1);
    drop(replacement);
    assert_settled(&rt, &pool).await;
    assert_eq!(pool.status().abandoned, 0);
}

/// The pool's maintenance task (and every other task it spawned) ends once the pool and
/// its guards are dropped.
pub async fn maintenance_task_ends_when_the_pool_is_dropped<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(builder(&rt).max_size(2).min_idle(1));
    drop(pool.get().await.expect("a connection"));
    assert!(rt.live_tasks() >= 1, "the maintenance task runs");
    drop(pool);
    wait_until(&rt, || rt.live_tasks() == 0).await;
    assert_eq!(rt.live_tasks(), 0, "no task of the pool outlives it");
}

/// try_get returns an idle connection or fails at once with the pool's status.
pub async fn try_get_never_waits<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(builder(&rt).max_size(1));
    match pool.try_get() {
        Err(Error::Exhausted(s)) => assert_eq!((s.idle, s.max_size), (0, 1)),
        other => panic!("expected Exhausted, got {:?}", other.map(|c| c.id)),
    }
    drop(pool.get().await.expect("a connection"));
    let conn = pool.try_get().expect("the idle connection");
    assert!(matches!(pool.try_get(), Err(Error::Exhausted(_))));
    drop(conn);
}

/// A connection found broken on checkin is closed, not pooled.
pub async fn broken_connection_is_closed_not_pooled<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(builder(&rt).max_size(1));
    let mut conn = pool.get().await.expect("a connection");
    conn.broken = true;
    drop(conn);
    assert_settled(&rt, &pool).await;
    assert_eq!(pool.metrics().closed.broken, 1);
    assert_eq!(pool.status().idle, 0);
}

/// A connection that needs a reset is reset before the next borrower sees it.
pub async fn reset_runs_before_reuse<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(builder(&rt).max_size(1));
    pool.manager()
        .set_reset(Step::Slow(Duration::from_millis(30)));
    let mut conn = pool.get().await.expect("a connection");
    conn.dirty = true;
    let id = conn.id;
    drop(conn);
    let conn = pool
        .get_timeout(Duration::from_secs(2))
        .await
        .expect("the reset connection");
    assert_eq!(conn.id, id, "the same connection, reused");
    assert!(!conn.dirty, "reset before reuse");
    assert_eq!(
        pool.manager()
            .stats
            .resets
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

/// A failed checkout check closes the connection and the acquire tries again.
pub async fn failed_check_discards_and_retries<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(
        builder(&rt)
            .max_size(1)
            .check_on_checkout(true)
            .check_bypass(Duration::ZERO),
    );
    drop(pool.get().await.expect("a connection"));
    pool.manager().set_check(Step::Err);
    let acquire = spawn_acquire(&rt, &pool, Duration::from_secs(3));
    wait_until(&rt, || pool.metrics().checks_failed >= 1).await;
    pool.manager().set_check(Step::Ok);
    let id = acquire
        .await
        .expect("task ran")
        .expect("served once checks pass");
    assert!(id >= 2, "the connection that failed its check was replaced");
    assert!(pool.metrics().checks_failed >= 1);
    assert_settled(&rt, &pool).await;
}

/// Growing the pool at run time serves a waiter at once.
pub async fn growing_the_pool_serves_a_waiter<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(builder(&rt).max_size(1));
    let held = pool.get().await.expect("a connection");
    let waiter = spawn_acquire(&rt, &pool, Duration::from_secs(3));
    wait_until(&rt, || pool.status().waiting == 1).await;
    pool.set_max_size(2).expect("a valid size");
    assert_eq!(
        waiter.await.expect("task ran").expect("served by growth"),
        2
    );
    assert!(pool.set_max_size(0).is_err());
    drop(held);
}

/// Failing connects back off (no busy spin) and the time-out reports the last error.
pub async fn connect_failures_back_off_and_report_the_last_error<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(builder(&rt).max_size(2));
    pool.manager().set_connect(Step::Err);
    let err = pool
        .get_timeout(Duration::from_millis(300))
        .await
        .expect_err("the server is down");
    let message = err.to_string();
    assert!(
        message.contains("last connect error: connection refused"),
        "{message}"
    );
    let attempts = pool
        .manager()
        .stats
        .connects
        .load(std::sync::atomic::Ordering::SeqCst);
    // Back-off 10 ms doubling to 50 ms over 300 ms: a handful of attempts, not thousands.
    assert!(
        (2..=20).contains(&attempts),
        "{attempts} connect attempts in 300 ms"
    );
    pool.manager().set_connect(Step::Ok);
    pool.get_timeout(Duration::from_secs(2))
        .await
        .expect("recovers once the server is back");
    assert!(pool.metrics().connects_failed >= 2);
}

/// Invalid settings are errors at build time that name the setting, never panics.
pub async fn build_rejects_bad_configuration<R: Runtime>() {
    let rt = runtime::<R>();
    let field = |b: Builder<Fake<Counted<R>>, Counted<R>>| match b.build() {
        Err(BuildError::Config(e)) => e.field(),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("an invalid configuration was accepted"),
    };
    assert_eq!(field(builder(&rt).max_size(0)), "max_size");
    assert_eq!(field(builder(&rt).max_size(2).min_idle(3)), "min_idle");
    assert_eq!(
        field(builder(&rt).connect_timeout(Duration::ZERO)),
        "connect_timeout"
    );
    assert_eq!(
        field(builder(&rt).idle_timeout(Some(Duration::ZERO))),
        "idle_timeout"
    );
    // Each setter is named as the error names its setting.
    let second = Duration::from_secs(1);
    assert_eq!(
        field(
            builder(&rt)
                .max_lifetime(Some(second))
                .max_lifetime_jitter(second)
        ),
        "max_lifetime_jitter"
    );
    assert_eq!(
        field(builder(&rt).leak_threshold(Some(Duration::ZERO))),
        "leak_threshold"
    );
    assert_eq!(
        field(builder(&rt).backoff_base(Duration::ZERO)),
        "backoff_base"
    );
    assert_eq!(
        field(builder(&rt).backoff_base(second).backoff_max(second / 2)),
        "backoff_max"
    );
    assert_eq!(
        field(builder(&rt).check_timeout(Duration::ZERO)),
        "check_timeout"
    );
    assert_eq!(
        field(builder(&rt).queue_target(Some(Duration::ZERO))),
        "queue_target"
    );
    assert_eq!(
        field(builder(&rt).queue_interval(Duration::ZERO)),
        "queue_interval"
    );
    assert_eq!(field(builder(&rt).max_waiters(Some(0))), "max_waiters");
    // Waiters would time out before they could be shed.
    assert_eq!(
        field(
            builder(&rt)
                .acquire_timeout(Some(second))
                .queue_target(Some(second / 2))
        ),
        "queue_target"
    );
    let e = builder(&rt)
        .max_size(0)
        .build()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("max_size"), "{e}");
}

/// `interact` runs blocking work off the executor and returns the connection afterwards,
/// even when the caller stops waiting.
pub async fn interact_runs_blocking_work_and_returns_the_connection<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(builder(&rt).max_size(1));
    let id = pool
        .interact(|conn| {
            std::thread::sleep(Duration::from_millis(20));
            conn.id
        })
        .await
        .expect("a connection");
    assert_eq!(id, 1);
    assert_eq!(pool.status().idle, 1, "returned after the blocking call");
    {
        let slow = pool.interact(|conn| {
            std::thread::sleep(Duration::from_millis(150));
            conn.dirty = true;
        });
        let timer = rt.sleep(Duration::from_millis(20));
        futures::pin_mut!(slow, timer);
        assert!(
            matches!(select(slow, timer).await, Either::Right(_)),
            "the caller gave up first"
        );
    }
    assert_eq!(
        pool.status().in_use,
        1,
        "the blocking call still holds the connection"
    );
    wait_until(&rt, || pool.status().in_use == 0).await;
    let conn = pool
        .get_timeout(Duration::from_secs(2))
        .await
        .expect("returned after all");
    assert!(conn.dirty, "the abandoned call ran to its end");
    assert_eq!(conn.id, 1, "and the connection was pooled, not lost");
}

/// `detach` takes a connection out of the pool for good and frees its slot.
pub async fn detach_frees_the_slot<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(builder(&rt).max_size(1));
    let kept = pool.get().await.expect("a connection").detach();
    assert_eq!(kept.id, 1);
    assert_eq!(pool.status().size, 0, "the slot was freed");
    let next = pool
        .get_timeout(Duration::from_secs(2))
        .await
        .expect("a new connection");
    assert_eq!(next.id, 2);
    assert_eq!(
        pool.manager().live(),
        2,
        "the detached one lives on outside the pool"
    );
    drop(kept);
    drop(next);
    assert_settled(&rt, &pool).await;
}

/// A guard made `'static` (`get_owned`, `into_owned`) moves into a spawned task with its
/// lease and comes back when dropped there; a waiter on the pool is then served with it.
pub async fn owned_guard_moves_into_a_task_and_comes_back<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(builder(&rt).max_size(1).acquire_timeout(None));
    let owned = pool.get_owned().await.expect("a connection");
    let used = rt.spawn(async move {
        let id = owned.id;
        drop(owned);
        id
    });
    // The pool is exhausted until the task drops the guard; this waits for it.
    let next = pool.get().await.expect("the connection the task gave back");
    assert_eq!(used.await.expect("the task ran"), 1);
    assert_eq!(next.id, 1, "the same connection, returned by the task");
    let lease = next.lease_id();
    let again = next.into_owned();
    assert_eq!(again.lease_id(), lease, "into_owned keeps the lease id");
    assert_eq!(pool.status().in_use, 1, "into_owned keeps the lease");
    drop(again);
    assert_eq!(pool.status().idle, 1);
    assert_eq!(
        pool.metrics().acquired,
        2,
        "into_owned is not another acquire"
    );
    assert_settled(&rt, &pool).await;
}

/// `discard` closes the connection instead of pooling it.
pub async fn discard_closes_the_connection<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(builder(&rt).max_size(1));
    pool.get().await.expect("a connection").discard();
    assert_settled(&rt, &pool).await;
    assert_eq!(pool.metrics().closed.discarded, 1);
    assert_eq!(pool.status().size, 0);
}

/// A connection the manager can tell is broken (closed by the server while idle) is closed
/// on checkout and replaced, never lent; `try_get` skips it too.
pub async fn a_connection_broken_while_idle_is_never_lent<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(builder(&rt).max_size(2));
    let (a, b) = (
        pool.get().await.expect("first"),
        pool.get().await.expect("second"),
    );
    drop((a, b));
    pool.manager().break_existing();
    let conn = pool
        .get_timeout(Duration::from_secs(2))
        .await
        .expect("a replacement");
    assert_eq!(conn.id, 3, "both broken idle connections were passed over");
    assert_eq!(pool.metrics().closed.broken, 2);
    drop(conn);
    pool.manager().break_existing();
    assert!(
        matches!(pool.try_get(), Err(Error::Exhausted(_))),
        "try_get lends no broken one"
    );
    assert_settled(&rt, &pool).await;
    assert_eq!(pool.metrics().closed.broken, 3);
}

/// Tasks that acquire from idle connections in a tight loop still yield now and then, on
/// every runtime (tokio's budget, or the pool's own where the runtime has none), so no task
/// sharing their threads is starved.
pub async fn tasks_acquiring_in_a_loop_let_others_run<R: Runtime>() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    let rt = runtime::<R>();
    // More loopers than any of the runtimes has worker threads on this machine, so a looper
    // that never yields would starve another on its thread (and the test would fail).
    let threads = std::thread::available_parallelism().map_or(4, usize::from);
    let n = (2 * threads).max(4);
    let pool = build(builder(&rt).max_size(n));
    let stop = Arc::new(AtomicBool::new(false));
    let loopers: Vec<_> = (0..n)
        .map(|_| {
            let (pool, stop, cycles) =
                (pool.clone(), Arc::clone(&stop), Arc::new(AtomicU64::new(0)));
            let counter = Arc::clone(&cycles);
            let task = rt.spawn(async move {
                while !stop.load(Relaxed) {
                    let mut conn = pool.get().await.expect("an idle connection");
                    conn.dirty = !conn.dirty;
                    counter.fetch_add(1, Relaxed);
                }
            });
            (task, cycles)
        })
        .collect();
    // Warm up (the first acquires wait for connects, which yields), then measure a window.
    rt.sleep(Duration::from_millis(100)).await;
    let before: Vec<u64> = loopers.iter().map(|(_, c)| c.load(Relaxed)).collect();
    rt.sleep(Duration::from_millis(300)).await;
    let after: Vec<u64> = loopers.iter().map(|(_, c)| c.load(Relaxed)).collect();
    stop.store(true, Relaxed);
    for (task, _) in loopers {
        task.await.expect("the looper ended");
    }
    let progress: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert!(
        progress.iter().all(|&n| n > 0),
        "every looper made progress in the window: {progress:?}"
    );
}

/// Gives other tasks a turn: pending once, waking itself.
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await;
}

/// Connections idle past the idle timeout are closed by the maintenance task, however they
/// went back; one in steady use is not; a new one is opened on demand afterwards.
pub async fn idle_connections_are_closed_after_the_idle_timeout<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(
        builder(&rt)
            .max_size(2)
            .idle_timeout(Some(Duration::from_millis(300))),
    );
    // In use every few milliseconds for twice the idle timeout: never reaped.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(600) {
        assert_eq!(pool.get().await.expect("a connection").id, 1);
        rt.sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(pool.metrics().closed.idle_timeout, 0);
    let (a, b) = (
        pool.get().await.expect("one"),
        pool.get().await.expect("two"),
    );
    drop((a, b));
    assert_eq!(pool.status().idle, 2);
    wait_until(&rt, || pool.metrics().closed.idle_timeout == 2).await;
    assert_eq!(
        pool.metrics().closed.idle_timeout,
        2,
        "both reaped: {:?}",
        pool.status()
    );
    assert_settled(&rt, &pool).await;
    assert_eq!(pool.status().size, 0);
    assert_eq!(pool.get().await.expect("a new connection").id, 3);
}

/// A connection past its max lifetime is retired even while in constant use, and a fresh one
/// takes its place.
pub async fn connections_are_retired_at_their_max_lifetime<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(
        builder(&rt)
            .max_size(1)
            .max_lifetime(Some(Duration::from_millis(100)))
            .max_lifetime_jitter(Duration::ZERO),
    );
    let start = Instant::now();
    let mut id = 1;
    while id == 1 && start.elapsed() < Duration::from_secs(3) {
        id = pool.get().await.expect("a connection").id;
        rt.sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(id, 2, "retired and replaced: {:?}", pool.status());
    assert_eq!(pool.metrics().closed.max_lifetime, 1);
    assert_settled(&rt, &pool).await;
}

/// Shrinking closes the surplus of idle connections at once, and closing the pool closes the
/// rest: idle connections are the pool's to close, however they went back.
pub async fn shrinking_and_closing_close_idle_connections<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(builder(&rt).max_size(4));
    let held: Vec<_> = join_all((0..4).map(|_| pool.get())).await;
    drop(held);
    assert_eq!(pool.status().idle, 4);
    pool.set_max_size(1).expect("a valid size");
    assert_settled(&rt, &pool).await;
    let s = pool.status();
    assert_eq!((s.size, s.idle), (1, 1), "one left: {s:?}");
    assert_eq!(pool.metrics().closed.surplus, 3);
    drop(pool.get().await.expect("the one left"));
    pool.close();
    assert_drains(&rt, &pool).await;
    assert_eq!(pool.manager().live(), 0);
    assert_eq!(pool.metrics().closed.pool_closed, 1);
}

/// Many tasks on every worker thread cycle through a small pool, some yielding while they
/// hold a connection: every acquire succeeds (no wake-up is lost between a release and a
/// waiter queueing at the same moment), and afterwards every connection is idle and counted
/// once.
pub async fn many_tasks_cycling_through_a_small_pool_lose_no_wake_up<R: Runtime>() {
    const TASKS: usize = 16;
    const CYCLES: usize = 10_000;
    let rt = runtime::<R>();
    let pool = build(
        builder(&rt)
            .max_size(2)
            .acquire_timeout(Some(Duration::from_secs(30))),
    );
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let pool = pool.clone();
            rt.spawn(async move {
                for i in 0..CYCLES {
                    let mut conn = pool.get().await.map_err(|e| e.to_string())?;
                    conn.dirty = !conn.dirty;
                    if (i + t) % 7 == 0 {
                        yield_now().await;
                    }
                    drop(conn);
                    if (i + t) % 5 == 0 {
                        yield_now().await;
                    }
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for task in tasks {
        task.await
            .expect("the task ran")
            .expect("every acquire succeeded");
    }
    assert_settled(&rt, &pool).await;
    let s = pool.status();
    assert_eq!((s.in_use, s.waiting), (0, 0), "nothing held: {s:?}");
    assert_eq!(s.idle, s.size, "every connection idle: {s:?}");
    let m = pool.metrics();
    assert_eq!(m.acquired, (TASKS * CYCLES) as u64, "{m:?}");
    assert_eq!(m.timed_out, 0);
}

/// Spawns a task that acquires with `timeout` and gives back the id of the connection it
/// got (returning the connection at once).
fn spawn_acquire<R: Runtime>(
    rt: &Counted<R>,
    pool: &TestPool<R>,
    timeout: Duration,
) -> futures::channel::oneshot::Receiver<Result<usize, Error<crate::fake::FakeError>>> {
    let pool = pool.clone();
    rt.spawn(async move { pool.get_timeout(timeout).await.map(|c| c.id) })
}

/// Awaits `future`, failing the test loudly if it has not finished within `limit` (a bound
/// far beyond what the behaviour under test needs, not a measurement).
async fn bounded<R: Runtime, F: std::future::Future>(
    rt: &Counted<R>,
    limit: Duration,
    what: &str,
    future: F,
) -> F::Output {
    let timer = rt.sleep(limit);
    futures::pin_mut!(future, timer);
    match select(future, timer).await {
        Either::Left((out, _)) => out,
        Either::Right(_) => panic!("{what}: not done within {limit:?}"),
    }
}

// ----- connect failures, deadlines and panics (ARCHITECTURE.md, "The edges") -------------

/// A connect error that cannot heal by waiting (a wrong password) reaches the waiter at once,
/// not at its 60 s deadline, nor never with no deadline; the pool heals by itself once the
/// cause is fixed.
pub async fn fatal_connect_error_fails_the_acquire_at_once<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(builder(&rt).max_size(2).acquire_timeout(None));
    pool.manager().set_connect(Step::Fatal);
    for timeout in [Some(Duration::from_secs(60)), None] {
        let acquire = async {
            match timeout {
                Some(t) => pool.get_timeout(t).await,
                None => pool.get().await,
            }
        };
        let err = bounded(
            &rt,
            Duration::from_secs(5),
            "a fatal error ends the wait",
            acquire,
        )
        .await
        .expect_err("the password is wrong");
        let Error::ConnectFailed(cause, status) = &err else {
            panic!("expected ConnectFailed, got {err}");
        };
        assert_eq!(cause.to_string(), crate::fake::FATAL);
        assert_eq!(status.in_use, 0, "{status:?}");
        let message = err.to_string();
        assert!(
            message.starts_with(&format!(
                "cannot open a connection, and waiting will not help: {}",
                crate::fake::FATAL
            )),
            "the cause comes first: {message}"
        );
        assert!(
            std::error::Error::source(&err).is_none(),
            "printed, not chained"
        );
        let cause = err.connect_error().map(ToString::to_string);
        assert_eq!(cause.as_deref(), Some(crate::fake::FATAL));
    }
    assert!(pool.metrics().failed_fast >= 2, "{:?}", pool.metrics());
    pool.manager().set_connect(Step::Ok);
    let conn = bounded(&rt, Duration::from_secs(5), "healed", async {
        loop {
            match pool.get().await {
                Ok(conn) => return conn,
                // Within the back-off after the last failure, acquires still fail fast.
                Err(Error::ConnectFailed(..)) => rt.sleep(Duration::from_millis(20)).await,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    assert_eq!(conn.id, 1);
}

/// `ready()` is the start-up check: it returns the connect error at once when it is fatal,
/// and leaves the first connection idle when the server answers.
pub async fn ready_reports_a_fatal_connect_error_and_keeps_the_first_connection<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(builder(&rt).max_size(2));
    pool.manager().set_connect(Step::Fatal);
    let err = bounded(
        &rt,
        Duration::from_secs(5),
        "ready() with a wrong password",
        pool.ready(),
    )
    .await
    .expect_err("fatal");
    assert!(matches!(err, Error::ConnectFailed(..)), "{err}");
    let pool = build(builder(&rt).max_size(2));
    pool.ready().await.expect("the server answers");
    let s = pool.status();
    assert_eq!((s.idle, s.in_use, s.size), (1, 0, 1), "{s:?}");
}

/// A checkout check that hangs (a frozen backend) does not hold the acquire past its
/// deadline, and the error says how long it really waited.
pub async fn a_hanging_checkout_check_ends_at_the_acquire_deadline<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(
        builder(&rt)
            .max_size(1)
            .check_on_checkout(true)
            .check_bypass(Duration::ZERO)
            .acquire_timeout(Some(Duration::from_millis(200))),
    );
    drop(pool.get().await.expect("the first connect is not checked"));
    pool.manager().freeze_existing();
    let started = Instant::now();
    let err = bounded(
        &rt,
        Duration::from_secs(5),
        "the acquire deadline",
        pool.get(),
    )
    .await
    .expect_err("the check never finishes");
    let waited = started.elapsed();
    let Error::TimedOut(t) = &err else {
        panic!("expected a time-out, got {err}");
    };
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    assert!(
        t.waited >= Duration::from_millis(200) && t.waited <= waited,
        "the error reports {:?}, the acquire took {waited:?}",
        t.waited
    );
    assert!(!err.to_string().contains("after 0ns"), "{err}");
    assert_settled(&rt, &pool).await;
    assert_eq!(
        pool.manager().live(),
        0,
        "the frozen connection was closed, its state unknown"
    );
}

/// A check that takes longer than the check timeout fails: the connection is closed and the
/// freed slot connects afresh for the same acquire, within its deadline.
pub async fn a_check_past_the_check_timeout_is_replaced_by_a_fresh_connect<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(
        builder(&rt)
            .max_size(1)
            .check_on_checkout(true)
            .check_bypass(Duration::ZERO)
            .check_timeout(Duration::from_millis(100))
            .acquire_timeout(Some(Duration::from_secs(10))),
    );
    drop(pool.get().await.expect("the first connect is not checked"));
    pool.manager().freeze_existing();
    let conn = bounded(
        &rt,
        Duration::from_secs(5),
        "a fresh connect after the check timed out",
        pool.get(),
    )
    .await
    .expect("served by a new connection");
    assert_eq!(conn.id, 2, "the frozen one was replaced");
    assert_eq!(pool.metrics().checks_failed, 1);
}

/// Zero acquire or check timeouts are refused at build, naming the setting.
pub async fn zero_timeouts_are_refused_at_build<R: Runtime>() {
    let rt = runtime::<R>();
    for (b, name) in [
        (
            builder(&rt).acquire_timeout(Some(Duration::ZERO)),
            "acquire_timeout",
        ),
        (builder(&rt).check_timeout(Duration::ZERO), "check_timeout"),
    ] {
        match b.build() {
            Err(BuildError::Config(e)) => {
                assert_eq!(e.field(), name);
                assert!(e.to_string().contains(name), "{e}");
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("{name} of zero was accepted"),
        }
    }
}

/// An `Acquire` polled again after it completed panics with a message that says so, instead
/// of hanging.
pub async fn polling_a_completed_acquire_panics<R: Runtime>() {
    use futures::FutureExt;
    let rt = runtime::<R>();
    let pool = build(builder(&rt).max_size(1));
    let mut acquire = pool.get();
    let conn = (&mut acquire).await.expect("a connection");
    let panic = std::panic::catch_unwind(AssertUnwindSafe(|| acquire.now_or_never()))
        .expect_err("polling a completed Acquire panics");
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    assert!(message.contains("polled after it completed"), "{message}");
    drop(conn);
}

/// A panicking leak hook is caught and counted; the maintenance task goes on (a waiter's
/// deadline still fires, and the hook is called for the next leak).
pub async fn a_panicking_leak_hook_leaves_the_maintenance_task_running<R: Runtime>() {
    let rt = runtime::<R>();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let pool = build(
        builder(&rt)
            .max_size(1)
            .leak_threshold(Some(Duration::from_millis(50)))
            .leak_backtraces(false)
            .on_leak(move |_| {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                panic!("the leak hook panics");
            }),
    );
    let held = hold_in_another_task(&rt, &pool).await;
    wait_until(&rt, || pool.metrics().panics == 1).await;
    let err = bounded(
        &rt,
        Duration::from_secs(5),
        "a deadline after the hook panicked",
        pool.get_timeout(Duration::from_millis(100)),
    )
    .await
    .expect_err("the only connection is held");
    assert!(err.is_timeout(), "{err}");
    drop(held);
    let again = pool.get().await.expect("the connection came back");
    wait_until(&rt, || pool.metrics().panics == 2).await;
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    drop(again);
}

/// A connection whose `Drop` panics, closed by the maintenance task (idle timeout), does not
/// stop that task: the next deadline still fires.
pub async fn a_panicking_connection_drop_leaves_the_maintenance_task_running<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(
        builder(&rt)
            .max_size(2)
            .idle_timeout(Some(Duration::from_millis(50))),
    );
    let mut conn = pool.get().await.expect("a connection");
    conn.panic_on_drop = true;
    drop(conn);
    // The close is counted under the lock, the Drop runs after it: await both.
    wait_until(&rt, || {
        let m = pool.metrics();
        m.closed.idle_timeout == 1 && m.panics == 1
    })
    .await;
    let held = hold_in_another_task(&rt, &pool).await;
    let _second = hold_in_another_task(&rt, &pool).await;
    let err = bounded(
        &rt,
        Duration::from_secs(5),
        "a deadline after a Drop panicked",
        pool.get_timeout(Duration::from_millis(100)),
    )
    .await
    .expect_err("both connections are held");
    assert!(err.is_timeout(), "{err}");
    drop(held);
}

/// A task acquires while a step of the manager panics; once a panic was caught, `fix` makes
/// the step work again: the task is served. The id of its connection.
async fn served_once_the_panics_stop<R: Runtime>(
    rt: &Counted<R>,
    pool: &TestPool<R>,
    fix: impl FnOnce(&Fake<Counted<R>>),
) -> usize {
    let waiter = spawn_acquire(rt, pool, Duration::from_secs(10));
    wait_until(rt, || pool.metrics().panics >= 1).await;
    fix(pool.manager());
    bounded(rt, Duration::from_secs(5), "served after the panic", waiter)
        .await
        .expect("task ran")
        .expect("a connection")
}

/// A panicking connect is a failed connect: the waiter keeps waiting, the pool retries and
/// serves once connects work.
pub async fn a_panicking_connect_is_a_failed_connect<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(builder(&rt).max_size(1));
    pool.manager().set_connect(Step::Panic);
    let id = served_once_the_panics_stop(&rt, &pool, |m| m.set_connect(Step::Ok)).await;
    assert!(id >= 1);
    assert!(pool.metrics().connects_failed >= 1);
}

/// Panicking checks, `has_broken` and resets count as failures of what they decide: the
/// connection is closed and the pool goes on.
pub async fn panicking_check_has_broken_and_reset_close_the_connection<R: Runtime>() {
    use std::sync::atomic::Ordering::SeqCst;
    let rt = runtime::<R>();
    let pool = build(
        builder(&rt)
            .max_size(1)
            .check_on_checkout(true)
            .check_bypass(Duration::ZERO),
    );
    drop(pool.get().await.expect("the first connect is not checked"));
    // The check panics: the connection is closed, the acquire connects afresh.
    pool.manager().set_check(Step::Panic);
    let id = served_once_the_panics_stop(&rt, &pool, |m| m.set_check(Step::Ok)).await;
    assert!(id >= 2, "the connection whose check panicked was replaced");
    wait_until(&rt, || pool.status().idle == 1).await;
    // has_broken panics at checkin: the connection counts as broken.
    let conn = pool.get().await.expect("a connection");
    pool.manager().stats.panic_in_has_broken.store(true, SeqCst);
    drop(conn);
    pool.manager()
        .stats
        .panic_in_has_broken
        .store(false, SeqCst);
    assert_eq!(pool.metrics().closed.broken, 1);
    // The reset panics: the connection is closed.
    pool.manager().set_reset(Step::Panic);
    drop(pool.get().await.expect("a connection"));
    wait_until(&rt, || pool.metrics().resets_failed == 1).await;
    assert!(pool.metrics().panics >= 3, "{:?}", pool.metrics());
    assert_settled(&rt, &pool).await;
    pool.manager().set_reset(Step::Ok);
    drop(pool.get().await.expect("the pool goes on"));
}

/// `min_idle` counts connections given back to the lock-free return lane as the idle
/// connections they are: with two parked there, closing a broken connection under the lock
/// opens no replacement.
pub async fn min_idle_counts_connections_parked_in_the_return_lane<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(builder(&rt).max_size(4).min_idle(2));
    wait_until(&rt, || pool.status().idle == 2).await;
    // Taking the two idle ones opens two more to keep two idle: four in all.
    let (a, b) = (
        pool.get().await.expect("one"),
        pool.get().await.expect("two"),
    );
    wait_until(&rt, || pool.status().idle == 2).await;
    let (c, mut d) = (
        pool.get().await.expect("three"),
        pool.get().await.expect("four"),
    );
    assert_eq!(pool.manager().opened(), 4);
    // Two go back while nobody waits (parked in the lane), one comes back broken.
    drop((a, b));
    d.broken = true;
    drop(d);
    assert_settled(&rt, &pool).await;
    assert_eq!(
        pool.manager().opened(),
        4,
        "two idle already: no replacement needed ({:?})",
        pool.status()
    );
    assert_eq!(pool.status().idle, 2);
    drop(c);
}

/// The pool lends the most recently returned connection first, so after a burst the surplus
/// idles out while one task keeps using one connection, even though that task's returns go
/// through the lock-free return lane (which the maintenance task hands back to the machine's
/// order every quarter of the idle timeout).
pub async fn after_a_burst_the_surplus_idles_out_while_one_connection_stays_in_use<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(
        builder(&rt)
            .max_size(4)
            .idle_timeout(Some(Duration::from_millis(300))),
    );
    let burst: Vec<_> = join_all((0..4).map(|_| pool.get())).await;
    assert!(burst.iter().all(Result::is_ok));
    drop(burst);
    assert_eq!(pool.manager().opened(), 4);
    bounded(
        &rt,
        Duration::from_secs(10),
        "the surplus idles out",
        async {
            while pool.metrics().closed.idle_timeout < 3 {
                drop(pool.get().await.expect("a connection"));
                rt.sleep(Duration::from_millis(10)).await;
            }
        },
    )
    .await;
    assert_eq!(pool.metrics().closed.idle_timeout, 3, "{:?}", pool.status());
    assert_eq!(pool.status().size, 1);
}

// ----- ARCHITECTURE.md, "Overload" ------------------------------------------------------------

/// Awaits `future`, failing the test loudly if it does not finish within 5 s (a bound far
/// beyond what the scenario needs, not a measurement).
#[track_caller]
fn within_5s<'a, R: Runtime, T: 'a>(
    rt: &'a Counted<R>,
    what: &'a str,
    future: impl std::future::Future<Output = T> + 'a,
) -> impl std::future::Future<Output = T> + 'a {
    let caller = std::panic::Location::caller();
    async move {
        let what = format!("{what} (at {caller})");
        bounded(rt, Duration::from_secs(5), &what, future).await
    }
}

/// With `max_waiters`, an acquire that would queue beyond the bound fails at once (on its
/// first poll) with `Exhausted` and the pool's status, and is counted; the tasks already
/// waiting keep their places and are served, and room is made as they leave.
pub async fn max_waiters_refuses_acquires_beyond_the_bound_at_once<R: Runtime>() {
    use futures::FutureExt;
    let rt = runtime::<R>();
    let pool = build(builder(&rt).max_size(1).max_waiters(Some(2)));
    let held = pool.get().await.expect("one connection");
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let pool = pool.clone();
            rt.spawn(async move {
                pool.get_timeout(Duration::from_secs(10))
                    .await
                    .map(|c| c.id)
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    wait_until(&rt, || pool.status().waiting == 2).await;
    match pool.get_timeout(Duration::from_secs(10)).now_or_never() {
        Some(Err(Error::Exhausted(s))) => {
            assert_eq!((s.waiting, s.in_use, s.max_size), (2, 1, 1), "{s:?}");
        }
        Some(other) => panic!("expected Exhausted, got {:?}", other.map(|c| c.id)),
        None => panic!("the acquire beyond max_waiters waited"),
    }
    assert_eq!(pool.metrics().queue_full, 1);
    assert_eq!(pool.status().waiting, 2, "the refusal took no place");
    drop(held);
    for waiter in waiters {
        let id = within_5s(&rt, "a waiter within the bound", waiter)
            .await
            .expect("task ran");
        assert_eq!(id, Ok(1), "served by the one connection");
    }
    drop(pool.get().await.expect("room again"));
    assert_eq!(pool.metrics().timed_out, 0);
    assert_settled(&rt, &pool).await;
}

/// Load shedding through the driver: a pool whose one connection is held throughout makes
/// no progress, so at the end of the first interval in which nobody was served the pool is
/// overloaded, and its waiters, which have waited more than twice the queue target, fail at
/// once with `Error::Shed` (and a message that says so and shows the pool), long before
/// their 10 s deadline; a newcomer is shed after twice the target. The maintenance task
/// wakes for these deadlines. Once the connection comes back, acquires are served again.
pub async fn an_overloaded_pool_sheds_its_waiters_instead_of_timing_them_out<R: Runtime>() {
    let rt = runtime::<R>();
    let target = Duration::from_millis(20);
    let pool = build(
        builder(&rt)
            .max_size(1)
            .acquire_timeout(Some(Duration::from_secs(10)))
            .queue_target(Some(target))
            .queue_interval(Duration::from_millis(100)),
    );
    let held = hold_in_another_task(&rt, &pool).await;
    let spawn_waiter = || {
        let pool = pool.clone();
        rt.spawn(async move {
            match pool.get().await {
                Ok(conn) => Err(format!("served {}", conn.id)),
                Err(e) => Ok((e.is_shed(), e.to_string(), e.status())),
            }
        })
    };
    let waiters: Vec<_> = (0..2).map(|_| spawn_waiter()).collect();
    for waiter in waiters {
        let (shed, message, status) = within_5s(&rt, "shedding a stalled queue", waiter)
            .await
            .expect("task ran")
            .expect("the waiter failed");
        assert!(shed, "shed, not timed out: {message}");
        assert!(
            message.starts_with("shed after ") && message.contains("overloaded"),
            "{message}"
        );
        assert!(message.contains("20ms queue target"), "{message}");
        assert!(message.contains("1 of 1 in use"), "{message}");
        let status = status.expect("a shed error carries the pool's status");
        assert_eq!((status.in_use, status.max_size), (1, 1));
        assert!(status.waiting >= 1);
    }
    // Still overloaded: a newcomer is shed after twice the target, by the pool's account.
    let late = within_5s(&rt, "shedding a newcomer", pool.get())
        .await
        .map(|c| c.id)
        .expect_err("shed");
    let Error::Shed(shed) = &late else {
        panic!("expected Shed, got {late}");
    };
    assert!(shed.waited >= target * 2, "{late}");
    assert_eq!(shed.queue_target, target);
    let metrics = pool.metrics();
    assert_eq!((metrics.shed, metrics.timed_out), (3, 0), "{metrics:?}");
    // The connection comes back: served again at once.
    drop(held);
    let conn = within_5s(&rt, "an acquire after the overload", pool.get())
        .await
        .expect("served once the connection is back");
    drop(conn);
    assert_settled(&rt, &pool).await;
}

// ----- ARCHITECTURE.md, "A task waiting on itself" -------------------------------------------

/// Whether the runtime names the running task (asked from a spawned task: tokio names no
/// task in `block_on`). Tokio and async-std must; smol cannot (neither its executors nor
/// `async-task` name the running task), and there these tests are skipped, saying so.
async fn names_tasks<R: Runtime>(rt: &Counted<R>) -> bool {
    let inner = rt.clone();
    let named = rt
        .spawn(async move { inner.current_task().is_some() })
        .await
        .expect("task ran");
    let name = std::any::type_name::<R>();
    if !named {
        assert!(
            !name.contains("pool_tokio") && !name.contains("pool_async_std"),
            "{name} must name its tasks"
        );
        eprintln!("SKIPPED: {name} cannot name the running task");
    }
    named
}

/// bb8#154: a task holding the only connection of a pool with no acquire timeout asks for
/// another. Without detection it would wait forever; with `fail_deadlocks(true)` (opt-in) it
/// fails at once with the deadlock error, which names where the held connection was acquired and where the second acquire
/// waits, and shows the pool. Counted as a self-wait and a deadlock; the pool goes on.
pub async fn a_task_waiting_on_its_own_connection_fails_at_once_naming_both_sites<R: Runtime>() {
    let rt = runtime::<R>();
    if !names_tasks(&rt).await {
        return;
    }
    let pool = build(
        builder(&rt)
            .max_size(1)
            .acquire_timeout(None)
            .fail_deadlocks(true),
    );
    let p = pool.clone();
    let task = rt.spawn(async move {
        let held_line = line!() + 1;
        let held = p.get().await.map_err(|e| e.to_string())?;
        let waiting_line = line!() + 1;
        let second = p.get().await.map(|c| c.id);
        drop(held);
        Ok::<_, String>((second, held_line, waiting_line))
    });
    let (second, held_line, waiting_line) = within_5s(&rt, "the nested get", task)
        .await
        .expect("task ran")
        .expect("the first get");
    let error = second.expect_err("the nested get fails");
    let Error::Deadlock(deadlock) = &error else {
        panic!("expected a deadlock, got {error}");
    };
    assert!(deadlock.certain, "{error}");
    let message = error.to_string();
    assert!(message.starts_with("deadlock: "), "{message}");
    for line in [held_line, waiting_line] {
        assert!(
            message.contains(&format!("suite.rs:{line}:")),
            "names line {line}: {message}"
        );
    }
    assert!(message.contains("1 of 1 in use"), "{message}");
    assert_eq!(deadlock.held_at.map(|l| l.line()), Some(held_line));
    assert_eq!(deadlock.waiting_at.line(), waiting_line);
    let metrics = pool.metrics();
    assert_eq!(
        (metrics.self_waits, metrics.deadlocks),
        (1, 1),
        "{metrics:?}"
    );
    drop(
        within_5s(&rt, "an acquire afterwards", pool.get())
            .await
            .expect("served"),
    );
    assert_settled(&rt, &pool).await;
}

/// A task holding one connection of a pool of two asks for a second, which another task
/// holds: that one may come back, so the task waits; the self-wait is counted (and logged)
/// but nothing fails, and it is served when the other task gives its connection back.
pub async fn a_self_wait_on_a_connection_another_task_holds_is_reported_and_served<R: Runtime>() {
    let rt = runtime::<R>();
    if !names_tasks(&rt).await {
        return;
    }
    let pool = build(builder(&rt).max_size(2).acquire_timeout(None));
    let (held_tx, held_rx) = futures::channel::oneshot::channel::<()>();
    let (go_tx, go_rx) = futures::channel::oneshot::channel::<()>();
    let other = {
        let pool = pool.clone();
        rt.spawn(async move {
            let conn = pool.get().await.map_err(|e| e.to_string())?;
            held_tx.send(()).map_err(|()| "the test went away")?;
            go_rx.await.map_err(|e| e.to_string())?;
            Ok::<_, String>(conn.id)
        })
    };
    held_rx.await.expect("the other task holds a connection");
    let me = {
        let pool = pool.clone();
        rt.spawn(async move {
            let held = pool.get().await.map_err(|e| e.to_string())?;
            let second = pool.get().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((held.id, second.id))
        })
    };
    // Both connections out and one acquire waiting: the self-wait (not this task's first
    // acquire, which waits for a connect with one connection out).
    wait_until(&rt, || {
        let s = pool.status();
        (s.in_use, s.waiting) == (2, 1)
    })
    .await;
    let metrics = pool.metrics();
    assert_eq!(
        (metrics.self_waits, metrics.deadlocks),
        (1, 0),
        "{metrics:?}"
    );
    go_tx.send(()).expect("the other task waits for the go");
    let other_id = within_5s(&rt, "the other task", other)
        .await
        .expect("task ran")
        .expect("the other task's connection");
    let (held, second) = within_5s(&rt, "the self-wait", me)
        .await
        .expect("task ran")
        .expect("served after the other task gave its connection back");
    assert_eq!(second, other_id, "served by the connection given back");
    assert_ne!(held, second);
    assert_eq!(pool.metrics().deadlocks, 0);
    assert_settled(&rt, &pool).await;
}

/// A guard moved to another task, which uses it, while the task that acquired it waits for
/// a connection: the holder followed the guard, so this is no self-wait (and, with the
/// pool's only connection, no false deadlock); the waiter is served once the other task
/// gives the connection back. The guard borrows a pool that lives for good (a pool in a
/// `static`), so it can move although it is not an owned guard.
pub async fn a_guard_moved_to_another_task_and_used_there_is_no_self_wait<R: Runtime>() {
    let rt = runtime::<R>();
    if !names_tasks(&rt).await {
        return;
    }
    let pool: &'static TestPool<R> = Box::leak(Box::new(build(
        builder(&rt).max_size(1).acquire_timeout(None),
    )));
    let (go_tx, go_rx) = futures::channel::oneshot::channel::<()>();
    let inner = rt.clone();
    let me = rt.spawn(async move {
        let guard = pool.get().await.map_err(|e| e.to_string())?;
        let first = guard.id; // used here first: held by this task
        let (used_tx, used_rx) = futures::channel::oneshot::channel::<usize>();
        let other = inner.spawn(async move {
            let _ = used_tx.send(guard.id); // used by the other task: held by it now
            let _ = go_rx.await;
            drop(guard);
        });
        let used = used_rx.await.map_err(|e| e.to_string())?;
        let second = pool.get().await.map_err(|e| e.to_string())?;
        other.await.map_err(|e| e.to_string())?;
        Ok::<_, String>((first, used, second.id))
    });
    // The connection out and one acquire waiting: the second (the first waits for a connect
    // with nothing out).
    wait_until(&rt, || {
        let s = pool.status();
        (s.in_use, s.waiting) == (1, 1)
    })
    .await;
    let metrics = pool.metrics();
    assert_eq!(
        (metrics.self_waits, metrics.deadlocks),
        (0, 0),
        "{metrics:?}"
    );
    go_tx.send(()).expect("the other task waits for the go");
    let (first, used, second) = within_5s(&rt, "the waiter", me)
        .await
        .expect("task ran")
        .expect("served after the other task gave the connection back");
    assert_eq!((first, used, second), (1, 1, 1));
    assert_eq!(pool.metrics().self_waits, 0);
    assert_settled(&rt, pool).await;
    pool.close();
}

/// Two branches of one task polled with the same waker (`join!`): one holds the only
/// connection while it waits for something else, the other waits for a connection. The pool
/// cannot tell this from a nested `get` (`fail_deadlocks(true)` would fail it as a certain
/// deadlock); by default it is only reported, and served once the first branch is done.
pub async fn same_waker_branches_are_reported_and_served_by_default<R: Runtime>() {
    let rt = runtime::<R>();
    if !names_tasks(&rt).await {
        return;
    }
    let pool = build(builder(&rt).max_size(1).acquire_timeout(None));
    let (go_tx, go_rx) = futures::channel::oneshot::channel::<()>();
    let p = pool.clone();
    let task = rt.spawn(async move {
        let (held_tx, held_rx) = futures::channel::oneshot::channel::<()>();
        let holder = async {
            let conn = p.get().await.map_err(|e| e.to_string())?;
            let _ = held_tx.send(());
            let _ = go_rx.await; // "a query": another wait, not on the pool
            Ok::<_, String>(conn.id)
        };
        let waiter = async {
            held_rx.await.map_err(|e| e.to_string())?;
            p.get().await.map(|c| c.id).map_err(|e| e.to_string())
        };
        futures::future::join(holder, waiter).await
    });
    wait_until(&rt, || {
        let s = pool.status();
        (s.in_use, s.waiting) == (1, 1)
    })
    .await;
    let metrics = pool.metrics();
    assert_eq!(
        (metrics.self_waits, metrics.deadlocks),
        (1, 0),
        "{metrics:?}"
    );
    go_tx.send(()).expect("the holding branch waits for the go");
    let (held, served) = within_5s(&rt, "the branches", task)
        .await
        .expect("task ran");
    assert_eq!(
        (held, served),
        (Ok(1), Ok(1)),
        "served by the connection given back"
    );
    assert_settled(&rt, &pool).await;
}

/// Runs `f` on a thread of its own (outside any runtime) and resolves to its result, so a
/// test can await a blocking caller without blocking its runtime.
fn on_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> impl std::future::Future<Output = T> {
    let (tx, rx) = futures::channel::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    async move { rx.await.expect("the thread ran to its end") }
}

/// Issue 14, blocking callers: a thread parked in `get_blocking` queues in the same FIFO as
/// the tasks: it is served before a task that queued after it, and its connection comes
/// back to the pool for that task when the thread drops it.
pub async fn blocking_callers_queue_with_tasks_in_fifo_order<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(builder(&rt).max_size(1));
    let held = hold_in_another_task(&rt, &pool).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let thread = {
        let (pool, order) = (pool.clone(), Arc::clone(&order));
        on_thread(move || {
            let conn = pool.get_blocking().map_err(|e| e.to_string())?;
            order.lock().expect("order").push("thread");
            Ok::<_, String>(conn.id)
        })
    };
    wait_until(&rt, || pool.status().waiting == 1).await;
    let task = {
        let (pool, order) = (pool.clone(), Arc::clone(&order));
        rt.spawn(async move {
            let conn = pool.get().await.map_err(|e| e.to_string())?;
            order.lock().expect("order").push("task");
            Ok::<_, String>(conn.id)
        })
    };
    wait_until(&rt, || pool.status().waiting == 2).await;
    drop(held);
    let by_thread = thread.await.expect("the thread was served");
    let by_task = task.await.expect("task ran").expect("the task was served");
    assert_eq!(*order.lock().expect("order"), ["thread", "task"]);
    assert_eq!(by_thread, by_task, "one connection, passed on");
    assert_eq!(pool.manager().opened(), 1);
    assert_settled(&rt, &pool).await;
}

/// Blocking callers get the async acquire's deadlines and errors: `get_blocking` times out
/// at the pool's acquire timeout and `get_timeout_blocking` at its own, each reporting the
/// pool's state; `close` wakes a parked thread with `Closed`.
pub async fn blocking_callers_time_out_and_see_the_pool_close<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(
        builder(&rt)
            .max_size(1)
            .acquire_timeout(Some(Duration::from_millis(200))),
    );
    let held = hold_in_another_task(&rt, &pool).await;
    for per_call in [None, Some(Duration::from_millis(150))] {
        let pool = pool.clone();
        let (waited, err) = on_thread(move || {
            let start = Instant::now();
            let err = match per_call {
                None => pool.get_blocking().map(drop),
                Some(t) => pool.get_timeout_blocking(t).map(drop),
            }
            .expect_err("the pool is exhausted");
            (start.elapsed(), err)
        })
        .await;
        let bound = per_call.unwrap_or(Duration::from_millis(200));
        let Error::TimedOut(t) = &err else {
            panic!("expected a time-out, got {err}");
        };
        assert!(
            t.waited >= bound && t.waited <= waited,
            "{per_call:?}: reported {:?}, measured {waited:?}",
            t.waited
        );
        assert!(waited < bound + Duration::from_millis(500), "{waited:?}");
        assert_eq!(err.status().map(|s| (s.in_use, s.max_size)), Some((1, 1)));
    }
    let parked = {
        let pool = pool.clone();
        on_thread(move || pool.get_timeout_blocking(Duration::from_secs(10)).map(drop))
    };
    wait_until(&rt, || pool.status().waiting == 1).await;
    pool.close();
    assert!(matches!(parked.await, Err(Error::Closed)));
    drop(held);
    assert_drains(&rt, &pool).await;
}

/// `metrics()` gives the distribution of acquire waits: every served acquire counts (those
/// served at once as zero), percentiles follow it, and the maximum is the longest wait.
pub async fn metrics_give_wait_percentiles_of_every_served_acquire<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(builder(&rt).max_size(1));
    // The first acquire waits for the first connect; then nine are served at once.
    pool.ready().await.expect("a connection opens");
    for _ in 0..9 {
        drop(pool.get().await.expect("the idle connection"));
    }
    let m = pool.metrics();
    assert_eq!(m.wait_times.count(), 10, "{m:?}");
    assert_eq!(m.wait_times.p50(), Duration::ZERO, "{m:?}");
    serve_a_waiter_held_back_for(&rt, &pool, Duration::from_millis(200)).await;
    let m = pool.metrics();
    let w = &m.wait_times;
    // ready, nine at once, the holder (at once), the waiter.
    assert_eq!(w.count(), 12, "{m:?}");
    assert_eq!(w.count(), m.acquired, "{m:?}");
    assert_eq!(w.max(), m.wait_max, "{m:?}");
    assert!(w.max() >= Duration::from_millis(200), "{m:?}");
    assert_eq!(
        w.p50(),
        Duration::ZERO,
        "ten of twelve waited nothing: {m:?}"
    );
    // The 11th of 12 is the first connect's wait, the 12th the held-back waiter's.
    assert!(w.p90() < Duration::from_millis(200), "{m:?}");
    assert!(
        w.p99() >= Duration::from_millis(200) && w.p99() <= w.max(),
        "{m:?}"
    );
    assert_eq!(w.quantile(1.0), w.max());
}

/// With `wait_times(false)` the waits are not measured (their fields stay empty) while every
/// count is kept, the waits that queued included.
pub async fn a_pool_without_wait_times_counts_everything_but_the_waits<R: Runtime>() {
    let rt = runtime::<R>();
    let pool = build(builder(&rt).max_size(1).wait_times(false));
    pool.ready().await.expect("a connection opens");
    // Held back long enough that a measured wait could not be zero.
    serve_a_waiter_held_back_for(&rt, &pool, Duration::from_millis(20)).await;
    let m = pool.metrics();
    // ready (which waited for the first connect), the holder, the waiter.
    assert_eq!(m.acquired, 3, "{m:?}");
    assert_eq!(m.acquired_after_wait, 2, "{m:?}");
    assert_eq!(m.wait_times.count(), 0, "{m:?}");
    assert_eq!(m.wait_total, Duration::ZERO, "{m:?}");
    assert_eq!(m.wait_max, Duration::ZERO, "{m:?}");
}
