//! Keyframe request throttling (sans-IO): at most one request per interval per
//! track, however many readers ask.

use std::time::{Duration, Instant};

/// Lets one keyframe request through per [`KeyframeThrottle::MIN_INTERVAL`].
#[derive(Debug, Default, Clone)]
pub struct KeyframeThrottle {
    last: Option<Instant>,
    suppressed: u64,
}

impl KeyframeThrottle {
    /// A keyframe costs a burst of bits upstream; more than one a second per track
    /// is wasted bandwidth (the same bound str0m uses).
    pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

    /// Whether a request at `now` may go upstream.
    pub fn request(&mut self, now: Instant) -> bool {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < Self::MIN_INTERVAL => {
                self.suppressed += 1;
                false
            }
            _ => {
                self.last = Some(now);
                true
            }
        }
    }

    /// Requests swallowed by the throttle.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_one_request_per_second() {
        let t0 = Instant::now();
        let mut throttle = KeyframeThrottle::default();
        assert!(throttle.request(t0));
        assert!(!throttle.request(t0 + Duration::from_millis(999)));
        assert!(throttle.request(t0 + Duration::from_millis(1000)));
        assert_eq!(throttle.suppressed(), 1);
    }
}
