//! The chaos soak's short version: `ferry bench soak --duration 60s` on the built
//! binary must pass every check it makes that is not a timing (the 10-minute runs,
//! with the recovery goal, are in docs/benchmarks.md). Then `ferry bench upgrade`'s
//! roll, from the built binary to itself: a roll from an earlier release needs a second
//! build, so that run is in docs/benchmarks.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::*;

/// Runs `ferry bench ARGS --keep DIR` and returns its report, with the tails of the
/// processes' logs printed when a check failed.
fn bench_report(name: &str, args: &[&str]) -> serde_json::Value {
    let dir = TempDir::new(name);
    let mut cmd = ferry();
    cmd.arg("bench").args(args).arg("--keep").arg(dir.path()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let out = Proc::spawn(name, &mut cmd).wait_output(Duration::from_secs(300));
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
    report
}

/// Asserts that each of `names` is `true` in the report's checks.
fn assert_checks(report: &serde_json::Value, names: &[&str]) {
    for check in names {
        assert_eq!(report["checks"][check], true, "{check} failed: {report:#}");
    }
}

/// The checks that are not timings: nothing acknowledged lost, a linearizable history,
/// every viewer playing again after the calm period, bounded resources, no panic.
const CORRECTNESS: [&str; 5] =
    ["linearizable", "acknowledged_writes_present", "viewers_playing_at_end", "within_bounds", "no_panics"];

#[test]
fn a_sixty_second_chaos_soak_passes_every_check() {
    let _heavy = heavy();
    let report = bench_report("soak", &["soak", "--duration", "60s", "--seed", "1"]);
    // Every check but the recovery goal (a timing, which belongs to the bench's own
    // verdict and docs/benchmarks.md).
    assert_checks(&report, &CORRECTNESS);
    let checks = &report["checks"];
    let gaps: Vec<&serde_json::Value> =
        report["viewers"].as_array().unwrap().iter().map(|v| &v["max_gap_ms"]).collect();
    println!(
        "viewers' longest gaps (ms): {gaps:?}; within the goal: {}",
        checks["viewers_recovered_within_goal"]
    );
    assert!(report["faults"].as_array().unwrap().len() >= 5, "{report:#}");
    assert!(report["history"]["writes_acknowledged"].as_u64().unwrap() > 0, "{report:#}");
}

/// Every voter then every edge stopped with SIGTERM and started again under the soak's
/// load: nothing acknowledged lost, a linearizable history, every viewer playing at the
/// end, and the cluster's command set where the roll leaves it.
#[test]
fn a_rolling_restart_under_load_loses_nothing() {
    let _heavy = heavy();
    let me = ferry_bin();
    let report =
        bench_report("upgrade", &["upgrade", "--from-binary", me, "--step-every", "3s", "--calm", "10s"]);
    assert_checks(&report, &CORRECTNESS);
    assert_checks(&report, &["command_set_raised_only_after_the_roll"]);
    let steps: Vec<&str> =
        report["faults"].as_array().unwrap().iter().map(|f| f["fault"].as_str().unwrap()).collect();
    assert_eq!(steps.len(), 6, "{steps:?}");
    for (step, name) in steps.iter().zip(["voter-3", "voter-2", "voter-1", "e1", "e2", "e3"]) {
        assert!(step.starts_with(&format!("upgrade {name}: SIGTERM")), "{steps:?}");
    }
    assert!(report["history"]["writes_acknowledged"].as_u64().unwrap() > 0, "{report:#}");
}
