//! Load figures an edge gossips: sessions, bytes per second and process CPU.

use std::sync::Mutex;
use std::time::Instant;

/// CPU seconds (user + system) process `pid` used so far, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    // USER_HZ is 100 on every Linux ABI we run on.
    Some((utime + stime) / 100.0)
}

/// Turns monotonically growing totals (CPU seconds, bytes) into rates between calls.
#[derive(Debug, Default)]
pub struct Rates {
    last: Mutex<Option<(Instant, f64, u64)>>,
}

impl Rates {
    /// (CPU cores in use, bytes per second) since the previous call; zeros on the first.
    pub fn sample(&self, cpu_total: f64, bytes_total: u64) -> (f64, u64) {
        let now = Instant::now();
        let Ok(mut last) = self.last.lock() else { return (0.0, 0) };
        let rates = match *last {
            Some((at, cpu, bytes)) => {
                let dt = now.duration_since(at).as_secs_f64();
                if dt <= 0.0 {
                    return (0.0, 0);
                }
                ((cpu_total - cpu).max(0.0) / dt, (bytes_total.saturating_sub(bytes) as f64 / dt) as u64)
            }
            None => (0.0, 0),
        };
        // Keep the reference point at least 1 s old so short intervals do not jitter.
        if last.is_none_or(|(at, _, _)| now.duration_since(at).as_secs_f64() >= 1.0) {
            *last = Some((now, cpu_total, bytes_total));
        }
        rates
    }
}
