//! The return lane's glue to the machine: lending from the lane, giving back into it, and
//! the hand-over, the one way parked connections reach the machine (when the lane closes,
//! when `min_idle` needs them counted, and from the maintenance task). The lane itself, and
//! the ordering argument that makes the hand-over safe, are in `lane.rs`; see also
//! `ARCHITECTURE.md`, "The return lane".

use std::sync::Arc;
use std::time::Instant;

use super::clock_policy::Step;
use super::lane::{Lane, Taken};
use super::runtime::{Manager, Runtime};
use super::shared::{Conn, ConnOf, Parked, Shared};
use super::state::State;
use crate::machine::{Lease, Release};

impl<M: Manager, R: Runtime> Shared<M, R> {
    /// Lends a connection from the return lane, if it is open and holds one, with the
    /// instant to take for "now" (the clock only if a configured feature needs it). One past
    /// its lifetime goes to the machine, which retires it, and the next is tried. One popped
    /// just as the lane closed goes to the machine too (to the waiter that closed it), and
    /// the caller acquires through the machine.
    #[inline]
    pub(crate) fn lend_parked(self: &Arc<Self>) -> Option<(Lease, ConnOf<M>, Instant)> {
        let lane = self.lane.as_ref()?;
        loop {
            let (lease, conn) = match lane.take() {
                Taken::Lent(parked) => {
                    self.instruments.left_lane();
                    parked
                }
                Taken::Nothing => return None,
                Taken::HandBack((lease, conn)) => {
                    self.instruments.left_lane();
                    let now = self.now(Step::LaneLend);
                    self.release(lease, conn, Release::Reuse, now);
                    return None;
                }
            };
            let now = self.now(Step::LaneLend);
            if lease.expires().is_some_and(|t| t <= now) {
                self.release(lease, conn, Release::Reuse, now);
                continue;
            }
            return Some((lease, conn, now));
        }
    }

    /// Gives a connection back: parked in the return lane when the machine has nothing to
    /// decide, else through the machine. `now` is the instant `conn.last_used` was set to.
    pub(crate) fn release(
        self: &Arc<Self>,
        lease: Lease,
        conn: ConnOf<M>,
        how: Release,
        now: Instant,
    ) {
        let (lease, conn) = match &self.lane {
            Some(lane) if how == Release::Reuse && lease.expires().is_none_or(|t| t > now) => {
                match lane.offer((lease, conn)) {
                    None => {
                        self.instruments.parked();
                        return;
                    }
                    // The lane was closed or full, or closed while this one went in: the
                    // machine takes this one, or another parked one, instead.
                    Some(back) => back,
                }
            }
            _ => (lease, conn),
        };
        let leftovers = self.transition(|state| {
            let bt = if self.settings.leak_backtraces {
                state.set_backtrace(lease.id(), None)
            } else {
                None
            };
            let at = returned_at(&lease, &conn, || now);
            (state.machine.release(lease, conn, how, at).err(), bt)
        });
        // A rejected connection or a backtrace is dropped here, outside the lock.
        self.panics.drop_guarded("a connection's Drop", leftovers);
    }

    /// Under the lock, after every transition: opens the return lane if the machine has
    /// nothing to decide on a return, or closes it and hands the machine every connection
    /// parked there (see [`Lane`]).
    pub(crate) fn sync_lane(&self, state: &mut State<M>) {
        let Some(lane) = &self.lane else { return };
        loop {
            let may_open = state.machine.release_goes_idle();
            if lane.is_open() == may_open {
                return;
            }
            if may_open {
                // Opened once a connection goes idle in the machine, not merely when the
                // queue empties: in a stream of hand-offs (every release served a waiter,
                // and the next acquire queues again) the lane stays closed, at no cost.
                if state.machine.status().idle > 0 {
                    lane.open();
                }
                return;
            }
            lane.close();
            self.hand_over(lane, state);
            // Handing them over may have served every waiter: look again.
        }
    }

    /// Under the lock: the hand-over. Gives the machine every connection parked in the lane
    /// (to serve waiters, to close, or to idle), each with the instant it came back (see
    /// [`returned_at`]), reading the clock only for connections with a lifetime.
    pub(crate) fn hand_over(&self, lane: &Lane<Parked<M>>, state: &mut State<M>) {
        let mut now = None;
        while let Some((lease, conn)) = lane.hand_over() {
            state.counted.handed_over();
            let at = returned_at(&lease, &conn, || {
                *now.get_or_insert_with(|| self.runtime.now())
            });
            if let Err(rejected) = state.machine.release(lease, conn, Release::Reuse, at) {
                state.rejected.extend(rejected.conn);
            }
        }
    }
}

/// The instant to report a connection's return to the machine at: when it last came back
/// (for one parked in the return lane, when it was parked, so the idle timeout counts from
/// then), or `now` if it has outlived its lifetime since, so the machine retires it. `now`
/// is only called for a connection with a lifetime.
fn returned_at<C>(lease: &Lease, conn: &Conn<C>, now: impl FnOnce() -> Instant) -> Instant {
    match lease.expires() {
        Some(expires) => {
            let now = now();
            if expires <= now {
                now
            } else {
                conn.last_used
            }
        }
        None => conn.last_used,
    }
}
