//! The README's Quick tour, run as written: every `sh` block of the section, in order,
//! in one shell, from an empty directory, with the built `ferry` on the PATH. A command
//! ending in `&` runs in the background, as the text says, and the next one starts once
//! it is up (its ready line, or a publisher's `publishing`), the way a reader waits for
//! it. A renamed flag, a port that collides or a step the text leaves out fails here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

/// The whole tour's bound (it takes about a minute).
const TOUR_TIMEOUT: Duration = Duration::from_secs(600);

/// Waits (bounded) until each background log says its process is up, and fails at
/// once if the process died first.
const PRELUDE: &str = r#"set -euo pipefail
mkdir -p .tour
ready() {
  local log=$1 pid=$2 i
  for i in $(seq 1 600); do
    if grep -qE '"event":"ready"|publishing' "$log"; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "background command exited before it was up ($log):" >&2; cat "$log" >&2; exit 1
    fi
    sleep 0.1
  done
  echo "background command not up within 60 s ($log):" >&2; cat "$log" >&2; exit 1
}
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
"#;

/// The `sh` blocks of the README's Quick tour, in order.
fn tour_blocks(readme: &str) -> Vec<String> {
    let start = readme.find("\n## Quick tour").expect("README has a Quick tour");
    let rest = &readme[start + 1..];
    let section = &rest[..rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3)];
    let mut blocks = Vec::new();
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "```sh" {
            let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            blocks.push(body.join("\n"));
        }
    }
    blocks
}

/// The blocks as one script: background commands log to their own file and are waited
/// for before the next line runs.
fn script(blocks: &[String]) -> String {
    let mut out = String::from(PRELUDE);
    let mut n = 0;
    for block in blocks {
        let mut logical = String::new();
        for line in block.lines() {
            if let Some(head) = line.strip_suffix('\\') {
                logical.push_str(head);
                continue;
            }
            logical.push_str(line);
            let command = std::mem::take(&mut logical);
            let trimmed = command.trim_end();
            match trimmed.strip_suffix('&').filter(|c| !c.ends_with('&')) {
                Some(background) => {
                    n += 1;
                    let log = format!(".tour/bg-{n}.log");
                    out.push_str(&format!("{background} > {log} 2>&1 &\nready {log} $!\n"));
                }
                None => {
                    out.push_str(&command);
                    out.push('\n');
                }
            }
        }
    }
    out
}

/// Kills a process group when dropped.
struct ProcessGroup(u32);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // `--` first: procps kill reads `-KILL -1234` as `kill(-1, SIGKILL)`, every
        // process on the machine.
        let _ = Command::new("kill").args(["-s", "KILL", "--", &format!("-{}", self.0)]).status();
    }
}

#[test]
fn the_readme_quick_tour_runs_top_to_bottom() {
    let _heavy = heavy();
    require_ffmpeg();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let blocks = tour_blocks(&readme);
    assert!(blocks.len() >= 8, "the tour has its blocks: {blocks:?}");
    let dir = TempDir::new("tour");
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(ferry_bin(), bin.join("ferry")).unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("tour.sh"), script(&blocks)).unwrap();

    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new("bash");
    cmd.arg("tour.sh")
        .current_dir(&work)
        .env("PATH", path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let tour = Proc::spawn("the Quick tour", &mut cmd);
    // The shell kills its jobs on exit; this kills whatever is left, also on a panic.
    let _group = ProcessGroup(tour.child.id());
    let out = tour.wait_output(TOUR_TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logs: String = std::fs::read_dir(work.join(".tour"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| {
                    format!(
                        "--- {}\n{}",
                        e.path().display(),
                        std::fs::read_to_string(e.path()).unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(
        out.status.success(),
        "the Quick tour failed ({}).\nstdout:\n{stdout}\nstderr:\n{stderr}\nbackground logs:\n{logs}",
        out.status
    );

    // Every viewer of the tour saw media.
    let reports: Vec<serde_json::Value> =
        stdout.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).collect();
    let viewers: Vec<&serde_json::Value> = reports.iter().filter(|r| r.get("frames").is_some()).collect();
    assert!(viewers.len() >= 3, "the tour's watches report frames: {stdout}");
    for v in viewers {
        assert!(v["frames"].as_u64().unwrap_or(0) > 0, "a watch in the tour saw no frame: {v}");
    }
    let recorded = std::fs::metadata(work.join("out.ivf")).map(|m| m.len()).unwrap_or(0);
    assert!(recorded > 32 + 12, "out.ivf holds frames ({recorded} bytes)");
}
