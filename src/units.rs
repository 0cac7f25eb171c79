//! Parsing human units on the command line: durations (`500ms`, `2s`, `1m`, `1h`)
//! and bit rates (`2500k`, `2.5M`, `800000`).

use std::time::Duration;

/// Parses `500ms`, `2s`, `1.5s`, `3m`, `1h`, or bare seconds.
pub fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let value: f64 =
        num.trim().parse().map_err(|_| format!("invalid duration {s:?} (try 500ms, 10s, 5m)"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Parses a count that must be at least 1 (a size, a limit).
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a whole number")),
    }
}

/// Parses a bit rate in bits per second: `2500k`, `2.5M`, `1G`, or a bare number.
pub fn bitrate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix(['k', 'K']) {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix(['m', 'M']) {
        (n, 1e6)
    } else if let Some(n) = s.strip_suffix(['g', 'G']) {
        (n, 1e9)
    } else {
        (s, 1.0)
    };
    let value: f64 = num.parse().map_err(|_| format!("invalid bit rate {s:?} (try 2500k or 2.5M)"))?;
    if !value.is_finite() || value <= 0.0 || value * scale > 1e12 {
        return Err(format!("bit rate {s:?} out of range"));
    }
    Ok((value * scale) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert!(duration("-1s").is_err());
        assert!(duration("fast").is_err());
    }

    #[test]
    fn bitrates_parse() {
        assert_eq!(bitrate("2500k"), Ok(2_500_000));
        assert_eq!(bitrate("2.5M"), Ok(2_500_000));
        assert_eq!(bitrate("800000"), Ok(800_000));
        assert!(bitrate("0").is_err());
        assert!(bitrate("lots").is_err());
    }
}
