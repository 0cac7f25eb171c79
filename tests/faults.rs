//! Faults surface: a voter whose storage fails stops being ready and exits non-zero
//! (its supervisor restarts it), and a damaged data dir is refused at start with a
//! clear message, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

/// `ferry control` flags for a one-voter dev cluster on `data_dir`.
fn voter_args(data_dir: &Path) -> Vec<String> {
    let peers = format!("1=127.0.0.1:{}", free_udp_port());
    [
        "control",
        "--id",
        "1",
        "--peers",
        &peers,
        "--http-listen",
        "127.0.0.1:0",
        "--insecure-http",
        "--insecure-raft",
    ]
    .into_iter()
    .map(String::from)
    .chain(["--data-dir".to_owned(), data_dir.display().to_string()])
    .collect()
}

/// Starts the voter; its API URL from the ready line.
fn start(cmd: &mut Command, name: &str) -> (Proc, String) {
    cmd.env("FERRY_CONTROL_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut proc = Proc::spawn(name, cmd);
    let mut line = String::new();
    BufReader::new(proc.child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let ready: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("ready line {line:?}: {e}"));
    (proc, ready["url"].as_str().unwrap().to_owned())
}

/// The voter's data dir sits on a 32 MiB tmpfs of its own (a private mount namespace);
/// the test fills it through that namespace (`nsenter`) and keeps writing. The raft
/// store's flush fails with ENOSPC: `/readyz` answers 503 naming the failure, and the
/// voter exits non-zero with the reason, without a panic.
#[test]
fn a_voter_whose_disk_fills_stops_being_ready_and_exits_non_zero() {
    let dir = TempDir::new("fault-disk");
    let mount = dir.path().join("disk");
    std::fs::create_dir_all(&mount).unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "sh", "-c", r#"mount -t tmpfs -o size=32m tmpfs "$0" && exec "$@""#])
        .arg(&mount)
        .arg(ferry_bin())
        .args(voter_args(&mount.join("data")));
    let (voter, url) = start(&mut cmd, "voter on a small disk");
    wait_for("the voter ready", Duration::from_secs(30), || {
        (http_json(&url, "GET", "/readyz", None, &[], None).0 == 200).then_some(())
    });
    let filled = Command::new("nsenter")
        .args(["-t", &voter.pid().to_string(), "-m", "sh", "-c"])
        .arg(format!(
            "dd if=/dev/zero of={}/fill bs=1M 2>/dev/null; df -k {}",
            mount.display(),
            mount.display()
        ))
        .output()
        .unwrap();
    let df = String::from_utf8_lossy(&filled.stdout);
    assert!(df.contains("tmpfs"), "the fill ran in the voter's mount namespace: {df}");

    // Writes until one fails (the store had some room left in its open segment).
    let mut failed = None;
    for i in 0..5000 {
        let body = format!(r#"{{"accessor":"t{i}","role":"viewer"}}"#);
        let (status, answer) = http_json(&url, "POST", "/v1/tokens", Some(TOKEN), &[], Some(&body));
        if status != 201 {
            failed = Some((i, status, answer));
            break;
        }
    }
    let (writes, status, answer) = failed.expect("a write failed on the full disk");
    eprintln!("write {writes} answered {status}: {answer}");
    let (status, ready) = wait_for("/readyz answering 503", Duration::from_secs(10), || {
        let (status, body) = http_json(&url, "GET", "/readyz", None, &[], None);
        (status == 503).then_some((status, body))
    });
    assert_eq!(ready["status"], "failed", "{status} {ready}");
    assert!(ready["error"].as_str().unwrap().contains("No space left on device"), "{ready}");
    let out = voter.wait_output(Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the voter exited 0 after its storage failed: {stderr}");
    assert!(stderr.contains("error: the voter stopped: the raft node stopped"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// One damage done to a stopped voter's raft store.
fn damage(store: &Path, what: &str) {
    let db = sled::open(store).unwrap();
    let meta = db.open_tree("meta").unwrap();
    let entries = db.open_tree("entries").unwrap();
    match what {
        "garbage hard state" => {
            meta.insert("hard_state", &b"\xff\xfe not protobuf"[..]).unwrap();
        }
        "a truncated log" => {
            // The newest entries are gone, the hard state still commits them.
            let keep = entries.iter().count() / 2;
            let doomed: Vec<_> = entries.iter().keys().skip(keep).map(Result::unwrap).collect();
            for key in doomed {
                entries.remove(key).unwrap();
            }
        }
        "a garbage snapshot file" => {
            let files: Vec<_> =
                std::fs::read_dir(store.join("snapshots")).unwrap().map(|f| f.unwrap().path()).collect();
            assert!(!files.is_empty(), "the voter wrote a snapshot file");
            for file in files {
                std::fs::write(file, b"not a Ferry state at all").unwrap();
            }
        }
        "a garbage snapshot in sled" => {
            // Where Ferry 0.1.0 kept snapshot data (and a received snapshot still is).
            std::fs::remove_dir_all(store.join("snapshots")).unwrap();
            meta.insert("snapshot_data", &b"not a Ferry state at all"[..]).unwrap();
        }
        other => panic!("unknown damage {other}"),
    }
    db.flush().unwrap();
}

#[test]
fn a_damaged_data_dir_is_refused_at_start_with_a_clear_message() {
    let dir = TempDir::new("fault-damage");
    let data = dir.path().join("data");
    // A voter with a log and a snapshot (one every 50 entries), stopped.
    let mut cmd = ferry();
    cmd.args(voter_args(&data)).args(["--snapshot-every", "50"]);
    let (voter, url) = start(&mut cmd, "voter");
    wait_for("the voter ready", Duration::from_secs(30), || {
        (http_json(&url, "GET", "/readyz", None, &[], None).0 == 200).then_some(())
    });
    for i in 0..80 {
        let body = format!(r#"{{"accessor":"t{i}","role":"viewer"}}"#);
        assert_eq!(http_json(&url, "POST", "/v1/tokens", Some(TOKEN), &[], Some(&body)).0, 201);
    }
    drop(voter);

    for (what, says) in [
        ("garbage hard state", "raft store"),
        ("a truncated log", "raft store"),
        ("a garbage snapshot file", "snapshot"),
        ("a garbage snapshot in sled", "snapshot"),
    ] {
        let copy = dir.path().join(what.replace(' ', "-"));
        copy_dir(&data, &copy);
        damage(&copy.join("raft"), what);
        let mut cmd = ferry();
        cmd.args(voter_args(&copy))
            .env("FERRY_CONTROL_TOKEN", TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = Proc::spawn(what, &mut cmd).wait_output(Duration::from_secs(60));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: the voter started");
        assert!(!stderr.contains("panicked"), "{what}: a panic: {stderr}");
        assert!(stderr.contains("error: ") && stderr.contains(says), "{what}: {stderr}");
        eprintln!(
            "{what}: {}",
            stderr.lines().filter(|l| l.starts_with("error")).collect::<Vec<_>>().join(" | ")
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
