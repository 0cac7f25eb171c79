//! The chaos soak's short version: `ferry bench soak --duration 60s` on the built
//! binary must pass every check it makes (the 10-minute runs are in
//! docs/benchmarks.md).
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
    if report["passed"] != true {
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
    assert_eq!(report["passed"], true, "{report:#}");
    assert!(out.status.success());
    assert!(report["faults"].as_array().unwrap().len() >= 5, "{report:#}");
    assert!(report["history"]["writes_acknowledged"].as_u64().unwrap() > 0, "{report:#}");
}
