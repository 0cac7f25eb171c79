#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use super::*;

fn guard(rate: Option<f64>, ratio: Option<f64>, min: u32, consecutive: u32) -> Guard {
    Guard {
        cpu_max: None,
        error_rate_max: rate,
        error_rate_max_ratio: ratio,
        min_sessions: min,
        window_ms: 1_000,
        consecutive,
    }
}

/// Two edges whose cumulative counters the test grows, and a fake clock.
struct Sim {
    guard: ErrorGuard,
    now_ms: u64,
    share_bp: u32,
    edges: Vec<(String, BTreeMap<String, CohortCounts>)>,
}

impl Sim {
    fn new() -> Self {
        let edges = ["a#1", "b#1"].iter().map(|k| ((*k).to_owned(), BTreeMap::new())).collect();
        Sim { guard: ErrorGuard::default(), now_ms: 0, share_bp: 1_000, edges }
    }

    /// Edge `i` starts `sessions` treatment sessions of which `errors` fail, and
    /// `base` baseline sessions of which `base_errors` fail.
    fn add(&mut self, i: usize, sessions: u64, errors: u64, base: u64, base_errors: u64) {
        let c = self.edges[i].1.entry("r".to_owned()).or_default();
        c.add(&CohortCounts {
            treatment_sessions: sessions,
            treatment_errors: errors,
            baseline_sessions: base,
            baseline_errors: base_errors,
        });
    }

    /// Advances the clock by `ms` and feeds a reading.
    fn tick(&mut self, ms: u64, level: u8, active: bool, g: &Guard) -> Vec<Trip> {
        self.now_ms += ms;
        let readings: Vec<Reading<'_>> =
            self.edges.iter().map(|(key, counts)| Reading { key: key.clone(), cpu: 0.5, counts }).collect();
        let watched = [Watched { id: "r", level, share_bp: self.share_bp, active, guard: g }];
        self.guard.observe(self.now_ms, 1_700_000_000_000 + self.now_ms, &watched, &readings)
    }

    /// One whole window (four 250 ms readings) with the given traffic spread over it.
    fn window(&mut self, sessions: u64, errors: u64, base: u64, base_errors: u64, g: &Guard) -> Vec<Trip> {
        let mut trips = Vec::new();
        for quarter in 0..4u64 {
            let part = |n: u64| n / 4 + u64::from(quarter < n % 4);
            self.add((quarter % 2) as usize, part(sessions), part(errors), part(base), part(base_errors));
            trips.extend(self.tick(250, 3, true, g));
        }
        trips
    }
}

#[test]
fn consecutive_bad_windows_trip_exactly_at_the_deciding_window() {
    let g = guard(Some(0.1), None, 20, 3);
    let mut sim = Sim::new();
    assert!(sim.tick(0, 3, true, &g).is_empty(), "the first reading only primes");
    assert!(sim.window(40, 20, 400, 4, &g).is_empty());
    assert!(sim.window(40, 20, 400, 4, &g).is_empty());
    let trips = sim.window(40, 20, 400, 4, &g);
    assert_eq!(trips.len(), 1, "{trips:?}");
    assert_eq!(trips[0].id, "r");
    assert_eq!(trips[0].decided_at_ms, 3_000, "decided when the third window ended");
    assert!(trips[0].reason.contains("error rate 0.500 > 0.1"), "{}", trips[0].reason);
    let windows = sim.guard.windows("r");
    assert_eq!(windows.len(), 3);
    assert!(windows
        .iter()
        .all(|w| w.verdict == "bad" && w.treatment_sessions == 40 && w.treatment_errors == 20));
    assert_eq!(windows.iter().map(|w| w.bad_in_a_row).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(windows[0].baseline_sessions, 400);
    assert_eq!(windows[0].max_edge_cpu, 0.5);
}

#[test]
fn single_noisy_windows_between_healthy_ones_never_trip() {
    let g = guard(Some(0.05), Some(2.0), 20, 3);
    let mut sim = Sim::new();
    sim.tick(0, 3, true, &g);
    // 2 % errors, with a spike to 8 % every third window and two bad in a row once.
    let pattern = [1, 1, 4, 1, 0, 4, 4, 1, 2, 1, 4, 0];
    for (i, errors) in pattern.iter().cycle().take(60).enumerate() {
        let trips = sim.window(50, *errors, 450, 9, &g);
        assert!(trips.is_empty(), "window {i} tripped: {trips:?}");
    }
    let windows = sim.guard.windows("r");
    assert_eq!(windows.len(), WINDOWS_KEPT);
    assert!(windows.iter().any(|w| w.verdict == "bad"), "the spikes are seen as bad windows");
    assert!(windows.iter().all(|w| w.bad_in_a_row < 3));
}

#[test]
fn random_normal_error_rates_do_not_trip() {
    // Treatment and baseline both fail 2 % of sessions, drawn from a fixed-seed RNG.
    let g = guard(Some(0.1), Some(3.0), 40, 3);
    let mut sim = Sim::new();
    sim.tick(0, 3, true, &g);
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut draw = |n: u64| -> u64 {
        (0..n)
            .filter(|_| {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                (seed >> 33) % 1000 < 20
            })
            .count() as u64
    };
    for i in 0..300 {
        let (t, b) = (draw(80), draw(720));
        let trips = sim.window(80, t, 720, b, &g);
        assert!(trips.is_empty(), "window {i} tripped: {trips:?}");
    }
}

#[test]
fn windows_without_enough_sessions_are_no_data_and_neither_trip_nor_clear() {
    let g = guard(Some(0.1), None, 20, 3);
    let mut sim = Sim::new();
    sim.tick(0, 3, true, &g);
    // Every session fails, but there are too few: no data, for ever.
    for _ in 0..20 {
        assert!(sim.window(5, 5, 100, 0, &g).is_empty());
    }
    assert!(sim.guard.windows("r").iter().all(|w| w.verdict == "no_data" && w.bad_in_a_row == 0));
    // bad, no data, bad, bad: the no-data window does not break the streak.
    assert!(sim.window(40, 20, 0, 0, &g).is_empty());
    assert!(sim.window(3, 3, 0, 0, &g).is_empty());
    assert!(sim.window(40, 20, 0, 0, &g).is_empty());
    assert_eq!(sim.window(40, 20, 0, 0, &g).len(), 1);
}

#[test]
fn the_ratio_compares_with_the_baseline_and_a_clean_baseline_is_floored() {
    let g = guard(None, Some(2.0), 20, 1);
    let mut sim = Sim::new();
    sim.tick(0, 3, true, &g);
    // Baseline 5 %, treatment 8 %: within 2x.
    assert!(sim.window(100, 8, 1000, 50, &g).is_empty());
    // Clean baseline (floored at 1 per 100), one treatment error in 50: 2 % is not > 2 %.
    assert!(sim.window(50, 1, 100, 0, &g).is_empty());
    // Too little baseline to compare: no ratio verdict.
    assert!(sim.window(50, 25, 10, 0, &g).is_empty());
    assert_eq!(sim.guard.windows("r").last().unwrap().verdict, "healthy");
    // Baseline 5 %, treatment 12 %: trips.
    let trips = sim.window(100, 12, 1000, 50, &g);
    assert_eq!(trips.len(), 1);
    assert!(trips[0].reason.contains("x baseline 0.050"), "{}", trips[0].reason);
}

#[test]
fn a_level_or_share_change_or_a_pause_starts_over_and_unguarded_rollouts_are_not_judged() {
    let g = guard(Some(0.1), None, 20, 2);
    let mut sim = Sim::new();
    sim.tick(0, 3, true, &g);
    assert!(sim.window(40, 20, 0, 0, &g).is_empty());
    // Raised to level 4 (an operator acted): the bad window before is forgotten.
    sim.add(0, 40, 20, 0, 0);
    assert!(sim.tick(250, 4, true, &g).is_empty());
    assert!(sim.window(40, 20, 0, 0, &g).is_empty(), "first bad window at level 3 again");
    // Paused: nothing is judged however bad.
    for _ in 0..8 {
        sim.add(0, 100, 100, 0, 0);
        assert!(sim.tick(250, 3, false, &g).is_empty());
    }
    assert!(sim.tick(250, 3, true, &g).is_empty());
    assert!(sim.window(40, 20, 0, 0, &g).is_empty());
    assert_eq!(sim.window(40, 20, 0, 0, &g).len(), 1);
    // The share raised (new sessions join the treatment): the bad window is forgotten.
    assert!(sim.window(40, 20, 0, 0, &g).is_empty());
    sim.share_bp = 3_000;
    assert!(sim.tick(250, 3, true, &g).is_empty());
    assert!(sim.window(40, 20, 0, 0, &g).is_empty(), "first bad window at the new share");
    assert_eq!(sim.window(40, 20, 0, 0, &g).len(), 1);
    // No error thresholds at all: never judged.
    let cpu_only = guard(None, None, 20, 1);
    for _ in 0..4 {
        assert!(sim.window(40, 40, 0, 0, &cpu_only).is_empty());
    }
}

#[test]
fn restarted_and_new_edges_count_from_zero_and_the_first_reading_only_primes() {
    let g = guard(Some(0.1), None, 20, 1);
    let mut sim = Sim::new();
    // Counters from before the guard started (a new leader) are not a window's.
    sim.add(0, 1000, 900, 0, 0);
    sim.tick(0, 3, true, &g);
    for _ in 0..4 {
        assert!(sim.tick(250, 3, true, &g).is_empty());
    }
    assert_eq!(sim.guard.windows("r").last().unwrap().verdict, "no_data");
    // Edge a restarts (new generation key, counting from zero): its new counts count.
    sim.edges[0] = ("a#2".to_owned(), BTreeMap::new());
    sim.add(0, 30, 0, 0, 0);
    // A new edge c joins with counts: all of them count.
    let mut c = BTreeMap::new();
    c.insert("r".to_owned(), CohortCounts { treatment_sessions: 10, ..Default::default() });
    sim.edges.push(("c#1".to_owned(), c));
    for _ in 0..4 {
        assert!(sim.tick(250, 3, true, &g).is_empty());
    }
    let last = sim.guard.windows("r").last().cloned().unwrap();
    assert_eq!((last.treatment_sessions, last.verdict), (40, "healthy"));
    // A counter that went down (same key) counts from zero, not as a huge number.
    sim.edges[2].1.insert(
        "r".to_owned(),
        CohortCounts { treatment_sessions: 4, treatment_errors: 4, ..Default::default() },
    );
    for _ in 0..4 {
        assert!(sim.tick(250, 3, true, &g).is_empty());
    }
    assert_eq!(sim.guard.windows("r").last().unwrap().treatment_sessions, 4);
}
