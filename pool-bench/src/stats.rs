//! Small statistics: a log-linear latency histogram, Jain's fairness index, medians.

use std::fmt;
use std::time::Duration;

/// Values below this many nanoseconds get a bucket each.
const LINEAR: u64 = 64;
/// Sub-buckets per power of two above [`LINEAR`] (about 3 % precision).
const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
/// Powers of two covered above [`LINEAR`]: up to 2^46 ns (about 19 hours).
const OCTAVES: usize = 40;
const BUCKETS: usize = LINEAR as usize + OCTAVES * SUB;

/// A histogram of waits in nanoseconds: exact below 64 ns, then about 3 % wide buckets.
///
/// Recording is a few instructions and never allocates, so workers record every acquire.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    max: u64,
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("total", &self.total)
            .field("p50", &self.quantile(0.5))
            .field("max", &self.max)
            .finish()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            max: 0,
        }
    }

    fn bucket(ns: u64) -> usize {
        if ns < LINEAR {
            return ns as usize;
        }
        let exp = 63 - ns.leading_zeros(); // >= 6
        let sub = (ns >> (exp - SUB_BITS)) as usize & (SUB - 1);
        let octave = (exp - 6) as usize;
        (LINEAR as usize + octave * SUB + sub).min(BUCKETS - 1)
    }

    /// The smallest value of bucket `i`.
    fn lower(i: usize) -> u64 {
        if i < LINEAR as usize {
            return i as u64;
        }
        let octave = ((i - LINEAR as usize) / SUB) as u32;
        let sub = ((i - LINEAR as usize) % SUB) as u64;
        let exp = octave + 6;
        (1u64 << exp) + (sub << (exp - SUB_BITS))
    }

    /// Records one value, in nanoseconds.
    #[inline]
    pub fn record(&mut self, ns: u64) {
        self.counts[Self::bucket(ns)] += 1;
        self.total += 1;
        if ns > self.max {
            self.max = ns;
        }
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The largest value recorded (exact).
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max)
    }

    /// The value at quantile `q` (0..=1): the lower bound of its bucket, never above the max.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Duration::from_nanos(Self::lower(i).min(self.max));
            }
        }
        Duration::from_nanos(self.max)
    }
}

/// Jain's fairness index of per-worker shares: 1 when all are equal, `1/n` when one worker
/// got everything; 0 when nobody got anything.
pub fn jain(xs: &[u64]) -> f64 {
    let n = xs.len() as f64;
    let sum: f64 = xs.iter().map(|&x| x as f64).sum();
    let sq: f64 = xs.iter().map(|&x| (x as f64) * (x as f64)).sum();
    if sq == 0.0 {
        0.0
    } else {
        sum * sum / (n * sq)
    }
}

/// The median (the mean of the middle two for an even count); `None` when empty.
pub fn median(xs: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for i in 0..BUCKETS {
            let lo = Histogram::lower(i);
            assert!(i == 0 || lo > last, "bucket {i}");
            assert_eq!(Histogram::bucket(lo), i);
            last = lo;
        }
        for ns in [0, 1, 63, 64, 65, 100, 1_000, 123_456, 10_000_000_000] {
            let lo = Histogram::lower(Histogram::bucket(ns));
            assert!(lo <= ns && ns - lo <= ns / 32 + 1, "{ns} -> {lo}");
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::new();
        for ns in 1..=100 {
            h.record(ns * 1000);
        }
        let p50 = h.quantile(0.5).as_nanos() as u64;
        assert!((48_000..=50_000).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99).as_nanos() as u64;
        assert!((96_000..=99_000).contains(&p99), "{p99}");
        assert_eq!(h.max(), Duration::from_micros(100));
        let mut g = Histogram::new();
        g.record(0);
        g.merge(&h);
        assert_eq!(g.count(), 101);
        assert_eq!(g.quantile(0.0), Duration::ZERO);
    }

    #[test]
    fn jain_index() {
        assert!((jain(&[5, 5, 5, 5]) - 1.0).abs() < 1e-12);
        assert!((jain(&[8, 0, 0, 0]) - 0.25).abs() < 1e-12);
        assert_eq!(jain(&[0, 0]), 0.0);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
