//! The conformance suite: every scenario is written once here, generic over the
//! [`Runtime`], and compiled once per adapter by [`conformance!`] (in `tests/tokio.rs`,
//! `tests/async_std.rs`, `tests/smol.rs`), the way rustls compiles one suite per crypto
//! provider.
//!
//! The pool runs on a [`Counted`] runtime (the adapter's, counting the pool's live tasks)
//! with a [`Fake`] manager that can be told, per step (connect, check, reset), to succeed,
//! fail, be slow, or never finish, and that counts the connections alive.
//!
//! The [`postgres`] module is the database suite: the same scenarios against a real
//! PostgreSQL server through `pool-postgres`, compiled per runtime by [`postgres!`] (in
//! `tests/postgres_tokio.rs`, `tests/postgres_async_std.rs`, `tests/postgres_smol.rs`).
//! The [`redis`] module does the same against a real Redis server through `pool-redis`,
//! compiled per runtime by [`redis!`] (in `tests/redis_tokio.rs`, `tests/redis_async_std.rs`,
//! `tests/redis_smol.rs`).

pub mod fake;
pub mod postgres;
pub mod proxy;
pub mod redis;
pub mod suite;
mod support;

pub use fake::{Counted, Fake, FakeConn, Step};

/// Generates one `#[test]` per conformance scenario for runtime `$rt`, each run to
/// completion by `$block_on`.
#[macro_export]
macro_rules! conformance {
    ($rt:ty, $block_on:path) => {
        $crate::conformance!(@tests $rt, $block_on;
            pool_of_two_never_opens_a_third_connection,
            seventh_task_times_out_with_the_pool_state,
            short_jobs_finish_while_others_sleep_outside_the_pool,
            cancelling_an_acquire_at_every_await_point_loses_nothing,
            acquire_timeout_is_honoured,
            close_fails_waiters_and_drains,
            panic_while_holding_a_guard_discards_the_connection,
            leak_is_reported_with_where_it_was_acquired,
            abandoned_lease_is_reclaimed_and_closed_on_return,
            maintenance_task_ends_when_the_pool_is_dropped,
            try_get_never_waits,
            broken_connection_is_closed_not_pooled,
            reset_runs_before_reuse,
            failed_check_discards_and_retries,
            growing_the_pool_serves_a_waiter,
            connect_failures_back_off_and_report_the_last_error,
            build_rejects_bad_configuration,
            interact_runs_blocking_work_and_returns_the_connection,
            blocking_callers_queue_with_tasks_in_fifo_order,
            blocking_callers_time_out_and_see_the_pool_close,
            detach_frees_the_slot,
            discard_closes_the_connection,
            owned_guard_moves_into_a_task_and_comes_back,
            a_connection_broken_while_idle_is_never_lent,
            tasks_acquiring_in_a_loop_let_others_run,
            idle_connections_are_closed_after_the_idle_timeout,
            connections_are_retired_at_their_max_lifetime,
            shrinking_and_closing_close_idle_connections,
            many_tasks_cycling_through_a_small_pool_lose_no_wake_up,
            fatal_connect_error_fails_the_acquire_at_once,
            ready_reports_a_fatal_connect_error_and_keeps_the_first_connection,
            a_hanging_checkout_check_ends_at_the_acquire_deadline,
            a_check_past_the_check_timeout_is_replaced_by_a_fresh_connect,
            zero_timeouts_are_refused_at_build,
            polling_a_completed_acquire_panics,
            a_panicking_leak_hook_leaves_the_maintenance_task_running,
            a_panicking_connection_drop_leaves_the_maintenance_task_running,
            a_panicking_connect_is_a_failed_connect,
            panicking_check_has_broken_and_reset_close_the_connection,
            min_idle_counts_connections_parked_in_the_return_lane,
            after_a_burst_the_surplus_idles_out_while_one_connection_stays_in_use,
            max_waiters_refuses_acquires_beyond_the_bound_at_once,
            an_overloaded_pool_sheds_its_waiters_instead_of_timing_them_out,
            a_task_waiting_on_its_own_connection_fails_at_once_naming_both_sites,
            a_self_wait_on_a_connection_another_task_holds_is_reported_and_served,
            a_guard_moved_to_another_task_and_used_there_is_no_self_wait,
            same_waker_branches_are_reported_and_served_by_default,
            metrics_give_wait_percentiles_of_every_served_acquire,
            a_pool_without_wait_times_counts_everything_but_the_waits,
        );
    };
    (@tests $rt:ty, $block_on:path; $($name:ident),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                $block_on($crate::suite::$name::<$rt>());
            }
        )+
    };
}
