//! Latency sampling for viewers and benchmarks: bounded memory, exact percentiles
//! up to the cap, uniform reservoir sampling past it.

use serde::Serialize;

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub samples: u64,
}

/// Microsecond samples, at most [`Samples::CAP`] kept.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    kept: Vec<u64>,
    seen: u64,
    rng: u64,
}

impl Samples {
    /// Enough for exact percentiles of an hour at 30 fps.
    pub const CAP: usize = 131_072;

    pub fn push(&mut self, micros: u64) {
        self.seen += 1;
        if self.kept.len() < Self::CAP {
            self.kept.push(micros);
            return;
        }
        // xorshift: deterministic, no dependency, good enough for a reservoir.
        self.rng ^= self.rng << 13 | 1;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let slot = usize::try_from(self.rng % self.seen).unwrap_or(usize::MAX);
        if let Some(s) = self.kept.get_mut(slot) {
            *s = micros;
        }
    }

    /// Merges another set of samples in (for aggregating many viewers).
    pub fn extend(&mut self, other: &Samples) {
        for &s in &other.kept {
            self.push(s);
        }
    }

    /// p50/p99/max, or `None` without samples.
    pub fn summary(&self) -> Option<LatencySummary> {
        let mut sorted = self.kept.clone();
        sorted.sort_unstable();
        let pick = |q: f64| -> f64 {
            let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
            sorted.get(idx).copied().unwrap_or(0) as f64 / 1000.0
        };
        if sorted.is_empty() {
            return None;
        }
        Some(LatencySummary { p50: pick(0.50), p99: pick(0.99), max: pick(1.0), samples: self.seen })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_uniform_range() {
        let mut s = Samples::default();
        for i in 1..=1000 {
            s.push(i * 1000);
        }
        let sum = s.summary().unwrap();
        assert_eq!((sum.p50.round(), sum.p99.round(), sum.max), (501.0, 990.0, 1000.0));
        assert!(Samples::default().summary().is_none());
    }

    #[test]
    fn memory_is_capped() {
        let mut s = Samples::default();
        for i in 0..(Samples::CAP as u64 * 2) {
            s.push(i);
        }
        assert_eq!(s.kept.len(), Samples::CAP);
        assert_eq!(s.summary().unwrap().samples, Samples::CAP as u64 * 2);
    }
}
