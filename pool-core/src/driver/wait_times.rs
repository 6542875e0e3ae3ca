//! The distribution of acquire waits behind [`Metrics::wait_times`](super::Metrics): a
//! fixed-size log-bucket histogram, recorded under the pool's lock when a waiting acquire is
//! served (no allocation, no atomics; see `ARCHITECTURE.md`, "Observability").

use std::fmt;
use std::time::Duration;

/// Sub-buckets per power of two: each bucket is at most 1/8 of its lower bound wide, so a
/// quantile is reported at most 12.5 % above the true value (and never above the maximum).
const SUB: u64 = 8;
/// Waits are bucketed in whole microseconds up to 2^36 µs (about 19 hours); longer ones
/// land in the last bucket (their exact maximum is still kept).
const OCTAVES: u64 = 36;
/// Buckets 0..8 hold 0..8 µs exactly; then 8 per octave from 2^3 µs up.
const BUCKETS: usize = (SUB + (OCTAVES - 3) * SUB) as usize;

/// How long acquires waited for a connection, as a histogram: percentiles (`p50`, `p90`,
/// `p99`, any [`quantile`](Self::quantile)), the count and the exact maximum.
///
/// It covers every acquire that got a connection: one served at once (an idle connection,
/// the return lane, `try_get`) counts as a wait of zero, one that queued as the time from
/// queueing to being granted its connection (as [`Metrics::wait_total`](super::Metrics)
/// measures it). A quantile is the upper edge of the bucket it falls in (buckets are at most
/// 12.5 % wide), capped at the maximum, so it is never below the true value by more than
/// the microsecond the buckets round to, and never above it by more than 12.5 %.
///
/// ```
/// # fn show(pool_metrics: pool_core::Metrics) {
/// let waits = &pool_metrics.wait_times;
/// println!(
///     "{} acquires: p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
///     waits.count(),
///     waits.p50(),
///     waits.p90(),
///     waits.p99(),
///     waits.max()
/// );
/// # }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct WaitTimes {
    buckets: [u64; BUCKETS],
    count: u64,
    max: Duration,
}

impl Default for WaitTimes {
    fn default() -> Self {
        Self {
            buckets: [0; BUCKETS],
            count: 0,
            max: Duration::ZERO,
        }
    }
}

/// The bucket of a wait of `micros` microseconds.
fn bucket(micros: u64) -> usize {
    if micros < SUB {
        return micros as usize;
    }
    let octave = u64::from(63 - micros.leading_zeros());
    if octave >= OCTAVES {
        return BUCKETS - 1;
    }
    let sub = (micros >> (octave - 3)) & (SUB - 1);
    ((octave - 2) * SUB + sub) as usize
}

/// The smallest wait, in microseconds, that falls in bucket `index` (`index` may be
/// `BUCKETS`, the end of the last one).
fn lower_edge(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB {
        return index;
    }
    let octave = index / SUB + 2;
    (SUB + index % SUB) << (octave - 3)
}

impl WaitTimes {
    /// Counts one wait.
    pub(crate) fn record(&mut self, wait: Duration) {
        let micros = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket(micros)] += 1;
        self.count += 1;
        self.max = self.max.max(wait);
    }

    /// Counts `n` waits of zero (acquires served at once).
    pub(crate) fn record_zeros(&mut self, n: u64) {
        self.buckets[0] += n;
        self.count += n;
    }

    /// How many acquires it covers.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The longest wait (exact).
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The wait that a fraction `q` (0.0 to 1.0) of the acquires stayed within: `0.99` is
    /// the 99th percentile. Zero when it covers no acquire.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        // The rank of the wanted wait, 1-based: at least the first, at most the last.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (index, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                if index == 0 {
                    return Duration::ZERO;
                }
                if index == BUCKETS - 1 {
                    // The last bucket has no upper edge.
                    return self.max;
                }
                // The last microsecond the bucket holds, never more than the maximum.
                let top = Duration::from_micros(lower_edge(index + 1) - 1);
                return top.min(self.max);
            }
        }
        self.max
    }

    /// The median wait.
    pub fn p50(&self) -> Duration {
        self.quantile(0.5)
    }

    /// The 90th percentile.
    pub fn p90(&self) -> Duration {
        self.quantile(0.9)
    }

    /// The 99th percentile.
    pub fn p99(&self) -> Duration {
        self.quantile(0.99)
    }
}

impl fmt::Debug for WaitTimes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitTimes")
            .field("count", &self.count)
            .field("p50", &self.p50())
            .field("p90", &self.p90())
            .field("p99", &self.p99())
            .field("max", &self.max)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::{bucket, lower_edge, WaitTimes, BUCKETS};
    use std::time::Duration;

    #[test]
    fn buckets_are_contiguous_and_at_most_an_eighth_wide() {
        assert_eq!(lower_edge(0), 0);
        for index in 0..BUCKETS {
            let (low, high) = (lower_edge(index), lower_edge(index + 1));
            assert!(high > low, "bucket {index}: {low}..{high}");
            assert_eq!(bucket(low), index, "{low} µs");
            assert_eq!(bucket(high - 1), index, "{} µs", high - 1);
            if low >= 8 {
                assert!((high - low) * 8 <= low, "bucket {index}: {low}..{high}");
            }
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_of_known_waits() {
        let mut w = WaitTimes::default();
        assert_eq!(w.p99(), Duration::ZERO, "empty");
        // 90 waits of zero, 9 of about 10 ms, one of 1 s.
        w.record_zeros(90);
        for _ in 0..9 {
            w.record(Duration::from_millis(10));
        }
        w.record(Duration::from_secs(1));
        assert_eq!(w.count(), 100);
        assert_eq!(w.p50(), Duration::ZERO);
        assert_eq!(w.p90(), Duration::ZERO, "the 90th of 100 is the last zero");
        let p99 = w.p99();
        assert!(
            p99 >= Duration::from_millis(10) && p99 <= Duration::from_micros(11_250),
            "{p99:?}"
        );
        assert_eq!(w.quantile(1.0), Duration::from_secs(1), "the exact maximum");
        assert_eq!(w.max(), Duration::from_secs(1));
        assert_eq!(w.quantile(f64::NAN), Duration::from_secs(1));
    }

    #[test]
    fn a_quantile_is_within_an_eighth_above_the_true_wait() {
        for micros in [1, 7, 8, 9, 100, 1_234, 99_999, 5_000_000, 12_345_678_900] {
            let mut w = WaitTimes::default();
            let wait = Duration::from_micros(micros);
            w.record(wait);
            w.record(wait * 2);
            let p50 = w.p50();
            assert!(p50 >= wait, "{micros} µs: {p50:?}");
            assert!(p50 <= wait + wait / 8, "{micros} µs: {p50:?}");
        }
        // Beyond the last bucket: still never more than the maximum.
        let mut w = WaitTimes::default();
        w.record(Duration::from_secs(200_000));
        assert_eq!(w.p50(), Duration::from_secs(200_000));
    }
}
