//! The chaos soak's short version: `ferry bench soak --duration 60s` on the built
//! binary must pass every check it makes that is not a timing (the 10-minute runs,
//! with the recovery goal, are in docs/benchmarks.md).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::*;

#[test]
fn a_sixty_second_chaos_soak_passes_every_check() {
    let _heavy = heavy();
    let dir = TempDir::new("soak");
    let mut cmd = ferry();
    cmd.args(["bench", "soak", "--duration", "60s", "--seed", "1", "--keep"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let out = Proc::spawn("soak", &mut cmd).wait_output(Duration::from_secs(300));
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("the soak printed no report ({e}): {stdout}"));
    if report["checks"].as_object().is_some_and(|c| c.values().any(|v| v != true)) {
        // Show the logs of the processes the checks name.
        for entry in std::fs::read_dir(dir.path()).unwrap().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                eprintln!(
                    "--- {} (last lines)\n{}",
                    path.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
    }
    // Every check but the recovery goal (a timing, which belongs to the bench's own
    // verdict and docs/benchmarks.md): nothing acknowledged lost, a linearizable
    // history, every viewer playing again after the calm period, bounded resources,
    // no panic.
    let checks = &report["checks"];
    for check in [
        "linearizable",
        "acknowledged_writes_present",
        "viewers_playing_at_end",
        "within_bounds",
        "no_panics",
    ] {
        assert_eq!(checks[check], true, "{check} failed: {report:#}");
    }
    let gaps: Vec<&serde_json::Value> =
        report["viewers"].as_array().unwrap().iter().map(|v| &v["max_gap_ms"]).collect();
    println!(
        "viewers' longest gaps (ms): {gaps:?}; within the goal: {}",
        checks["viewers_recovered_within_goal"]
    );
    assert!(report["faults"].as_array().unwrap().len() >= 5, "{report:#}");
    assert!(report["history"]["writes_acknowledged"].as_u64().unwrap() > 0, "{report:#}");
}
