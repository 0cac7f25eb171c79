//! The raft control plane as real processes on loopback: elections, writes through
//! any member, leader crashes under load, lost quorum, full restarts, membership,
//! and bad requests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

fn register_edge(v: &Voter, id: &str, key: &str) -> u16 {
    v.send(
        "PUT",
        &format!("/v1/edges/{id}"),
        Some(key),
        r#"{"region":"eu","quic_addr":"127.0.0.1:4433","http_addr":"127.0.0.1:8080"}"#,
    )
    .0
}

/// request_id → how many times it appears in the voter's audit log.
fn audit_counts(v: &Voter) -> HashMap<String, usize> {
    try_audit_counts(v).unwrap_or_else(|body| panic!("voter {}: audit read failed: {body}", v.id))
}

/// Like `audit_counts`, or the error body while the voter cannot serve reads yet.
fn try_audit_counts(v: &Voter) -> Result<HashMap<String, usize>, Value> {
    let (status, body) = v.get("/v1/audit?limit=10000");
    if status != 200 {
        return Err(body);
    }
    let mut counts = HashMap::new();
    for e in body["events"].as_array().unwrap() {
        *counts.entry(e["request_id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    Ok(counts)
}

/// The edges a voter lists, from a read that succeeded: right after an election or a
/// restart a linearizable read can answer 503 for a moment, and an error body is not a
/// list to compare.
fn edges(v: &Voter, path: &str) -> Value {
    wait_for("a successful read of the edges", Duration::from_secs(30), || {
        let (status, body) = v.get(path);
        (status == 200).then_some(body)
    })
}

fn ctl(voters: &[&Voter], args: &[&str]) -> std::process::Output {
    ferry().arg("ctl").args(Voter::ctl_args(voters)).args(["--token", TOKEN]).args(args).output().unwrap()
}

#[test]
fn three_voters_elect_one_leader_and_take_writes_through_any_member() {
    let dir = TempDir::new("cp-basic");
    let voters = start_cluster(dir.path(), 3);
    let refs: Vec<&Voter> = voters.iter().collect();
    let leader = wait_for_leader(&refs);

    let out = ctl(&refs, &["--json", "cluster", "status"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["leader"].as_u64(), Some(leader));
    assert_eq!(status["voters"], serde_json::json!([1, 2, 3]));
    // Every voter announced its command set on its raft connections, so the leader raised
    // the cluster to it, and every voter applied that.
    let build_set = status["build_command_set"].as_u64().unwrap();
    assert!(build_set >= 2, "{status}");
    wait_for("the cluster to reach this build's command set", Duration::from_secs(30), || {
        voters.iter().all(|v| v.status()["command_set"].as_u64() == Some(build_set)).then_some(())
    });
    let seen = &voters[usize::try_from(leader - 1).unwrap()].status()["members"];
    for member in seen.as_array().unwrap() {
        assert_eq!(member["announced"]["command_set"].as_u64(), Some(build_set), "{seen}");
        assert_eq!(member["announced"]["version"], env!("CARGO_PKG_VERSION"), "{seen}");
    }

    for (i, v) in voters.iter().enumerate() {
        assert_eq!(
            register_edge(v, &format!("edge-{i}"), &format!("reg-{i}")),
            200,
            "write via voter {}",
            v.id
        );
        let (code, body) =
            v.send("PUT", &format!("/v1/streams/live/s{i}"), None, &format!(r#"{{"origin":"edge-{i}"}}"#));
        assert_eq!(code, 200, "{body}");
    }
    // Linearizable reads on every member see every write.
    for v in &voters {
        let (code, body) = v.get("/v1/streams");
        assert_eq!(code, 200);
        assert_eq!(body["streams"].as_array().unwrap().len(), 3, "voter {}: {body}", v.id);
    }
    // ferry ctl reads and writes too.
    let out = ctl(&refs, &["streams", "put", "live/ctl", "--origin", "edge-0", "--relay", "us=edge-1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = ctl(&refs, &["--json", "streams", "get", "live/ctl"]);
    let stream: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stream["relays"]["us"], serde_json::json!(["edge-1"]));
}

#[test]
fn killing_the_leader_during_writes_loses_no_acknowledged_write() {
    let dir = TempDir::new("cp-kill");
    let mut voters = start_cluster(dir.path(), 3);
    let refs: Vec<&Voter> = voters.iter().collect();
    let leader = wait_for_leader(&refs);

    let mut acked = Vec::new();
    let mut attempts = 0;
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(90);
    while acked.len() < 120 {
        assert!(Instant::now() < deadline, "writes did not resume after the leader died");
        let key = format!("w-{}", acked.len());
        // Try the members in turn; a dead one refuses the connection.
        let alive: Vec<&Voter> = voters.iter().filter(|v| !(killed && v.id == leader)).collect();
        let v = alive[attempts % alive.len()];
        attempts += 1;
        if register_edge(v, &format!("edge-{}", acked.len()), &key) == 200 {
            acked.push(key);
        }
        if acked.len() == 40 && !killed {
            let victim = voters.iter().position(|v| v.id == leader).unwrap();
            voters[victim].signal("-KILL");
            killed = true;
        }
    }
    let survivors: Vec<&Voter> = voters.iter().filter(|v| v.id != leader).collect();
    let new_leader = wait_for_leader(&survivors);
    assert_ne!(new_leader, leader);
    for v in &survivors {
        let counts = audit_counts(v);
        for key in &acked {
            assert_eq!(
                counts.get(key),
                Some(&1),
                "voter {}: acknowledged write {key} must appear exactly once",
                v.id
            );
        }
    }
    // The old leader comes back and catches up.
    let victim = voters.iter().position(|v| v.id == leader).unwrap();
    let old = voters.remove(victim).restart();
    wait_for("the old leader to catch up", Duration::from_secs(30), || {
        let counts = try_audit_counts(&old).ok()?;
        acked.iter().all(|k| counts.get(k) == Some(&1)).then_some(())
    });
}

#[test]
fn without_quorum_writes_fail_clearly_and_nothing_acknowledged_is_lost() {
    let dir = TempDir::new("cp-stop");
    let voters = start_cluster(dir.path(), 3);
    let refs: Vec<&Voter> = voters.iter().collect();
    wait_for_leader(&refs);
    assert_eq!(register_edge(&voters[0], "before", "before"), 200);

    voters[1].signal("-STOP");
    voters[2].signal("-STOP");
    let (code, body) = voters[0].send(
        "PUT",
        "/v1/edges/during",
        Some("during"),
        r#"{"region":"eu","quic_addr":"127.0.0.1:1","http_addr":"127.0.0.1:2"}"#,
    );
    assert_eq!(code, 503, "{body}");
    assert!(["no_quorum", "not_committed"].contains(&body["error"]["code"].as_str().unwrap()), "{body}");

    voters[1].signal("-CONT");
    voters[2].signal("-CONT");
    wait_for_leader(&refs);
    // Retrying the same request id applies it at most once.
    let (code, _) = voters[0].send(
        "PUT",
        "/v1/edges/during",
        Some("during"),
        r#"{"region":"eu","quic_addr":"127.0.0.1:1","http_addr":"127.0.0.1:2"}"#,
    );
    assert_eq!(code, 200);
    for v in &voters {
        let counts = audit_counts(v);
        assert_eq!(counts.get("before"), Some(&1));
        assert_eq!(counts.get("during"), Some(&1), "voter {}", v.id);
    }
}

#[test]
fn the_state_survives_every_voter_being_killed_and_restarted() {
    let dir = TempDir::new("cp-restart");
    let voters = start_cluster(dir.path(), 3);
    let refs: Vec<&Voter> = voters.iter().collect();
    wait_for_leader(&refs);
    // More writes than --snapshot-every, so the restart goes through a snapshot too.
    for i in 0..80 {
        assert_eq!(register_edge(&voters[i % 3], &format!("e{i}"), &format!("k{i}")), 200);
    }
    let before = edges(&voters[0], "/v1/edges");
    let voters: Vec<Voter> = voters.into_iter().map(Voter::restart).collect();
    let refs: Vec<&Voter> = voters.iter().collect();
    wait_for_leader(&refs);
    for v in &voters {
        assert_eq!(edges(v, "/v1/edges"), before, "voter {} lost state", v.id);
    }
    assert!(voters[0].status()["snapshot_index"].as_u64().unwrap() > 0, "a snapshot was taken");
}

#[test]
fn a_fourth_voter_catches_up_from_a_snapshot_and_a_voter_can_be_removed() {
    let dir = TempDir::new("cp-members");
    let voters = start_cluster(dir.path(), 3);
    let refs: Vec<&Voter> = voters.iter().collect();
    wait_for_leader(&refs);
    for i in 0..120 {
        assert_eq!(register_edge(&voters[i % 3], &format!("e{i}"), &format!("k{i}")), 200);
    }
    // Every voter has compacted its log (a busy machine may apply a little late), so
    // the new voter can only catch up from a snapshot.
    wait_for("a snapshot on every voter", Duration::from_secs(30), || {
        voters.iter().all(|v| v.status()["snapshot_index"].as_u64().unwrap_or(0) > 0).then_some(())
    });
    let peers = format!("{},4=127.0.0.1:{}", voters[0].peers, free_udp_port());
    let fourth = Voter::start(4, &peers, &dir.path().join("v4"), &["--join"]);
    let urls: Vec<&Voter> = voters.iter().collect();
    let out = ctl(&urls, &["members", "add", "4", &fourth.raft]);
    // Membership changes go to the leader; ctl tries each voter.
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected = edges(&voters[0], "/v1/edges");
    wait_for("the new voter to catch up", Duration::from_secs(30), || {
        let (status, listed) = fourth.get("/v1/edges?stale=true");
        (status == 200 && listed == expected).then_some(())
    });
    // The status is published after the Ready that installed the snapshot is done, a
    // moment after the state it holds is readable: wait for it too.
    let st = wait_for("the new voter's status to show the snapshot", Duration::from_secs(10), || {
        let st = fourth.status();
        (st["snapshot_index"].as_u64()? > 0 && st["voters"] == serde_json::json!([1, 2, 3, 4])).then_some(st)
    });
    assert!(st["snapshot_index"].as_u64().unwrap() > 0, "caught up from a snapshot: {st}");
    assert_eq!(st["voters"], serde_json::json!([1, 2, 3, 4]));

    let mut all: Vec<&Voter> = voters.iter().collect();
    all.push(&fourth);
    let out = ctl(&all, &["members", "remove", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let remaining: Vec<&Voter> = all.iter().copied().filter(|v| v.id != 3).collect();
    wait_for_leader(&remaining);
    wait_for("every remaining voter to apply the removal", Duration::from_secs(20), || {
        remaining.iter().all(|v| v.status()["voters"] == serde_json::json!([1, 2, 4])).then_some(())
    });
    // A client retries 503s (same idempotency key) while the new configuration settles.
    wait_for("a write after the removal", Duration::from_secs(20), || {
        (register_edge(&fourth, "after-removal", "after-removal") == 200).then_some(())
    });
    assert_eq!(audit_counts(&fourth).get("after-removal"), Some(&1));
}

#[test]
fn bad_requests_get_json_errors_and_change_nothing() {
    let dir = TempDir::new("cp-bad");
    let voters = start_cluster(dir.path(), 3);
    let refs: Vec<&Voter> = voters.iter().collect();
    wait_for_leader(&refs);
    let v = &voters[0];
    assert_eq!(register_edge(v, "e1", "e1"), 200);
    // The write is answered once the leader applied it; voter 0 may apply it a moment
    // later, so count from the highest applied index once voter 0 has reached it.
    let before = voters.iter().map(|x| x.status()["applied_index"].as_u64().unwrap()).max().unwrap();
    wait_for("voter 0 applies the registration", Duration::from_secs(10), || {
        (v.status()["applied_index"].as_u64()? >= before).then_some(())
    });

    let big = format!(r#"{{"region":"{}"}}"#, "x".repeat(100_000));
    let cases: Vec<(&str, &str, Option<&str>, String, u16)> = vec![
        ("PUT", "/v1/edges/e2", Some(TOKEN), "{not json".into(), 400),
        ("PUT", "/v1/edges/e2", Some(TOKEN), r#"{"region":"eu","colour":"red"}"#.into(), 400),
        ("PUT", "/v1/edges/e2", Some(TOKEN), big, 413),
        (
            "PUT",
            "/v1/edges/e2",
            Some("wrong-token-wrong-token"),
            r#"{"region":"eu","quic_addr":"127.0.0.1:1","http_addr":"127.0.0.1:2"}"#.into(),
            401,
        ),
        (
            "PUT",
            "/v1/edges/e2",
            None,
            r#"{"region":"eu","quic_addr":"127.0.0.1:1","http_addr":"127.0.0.1:2"}"#.into(),
            401,
        ),
        ("POST", "/v1/rollouts/none/level", Some(TOKEN), r#"{"level":2}"#.into(), 404),
    ];
    for (method, path, token, body, want) in cases {
        let (code, answer) = http_json(&v.http, method, path, token, &[], Some(&body));
        assert_eq!(code, want, "{method} {path}: {answer}");
        assert!(answer["error"]["code"].is_string() && answer["error"]["message"].is_string(), "{answer}");
    }
    let (code, answer) = v.get("/v1/streams/live/unknown");
    assert_eq!(code, 404, "{answer}");
    assert_eq!(answer["error"]["code"], "not_found");
    let (code, _) = http_json(&v.http, "GET", "/healthz", None, &[], None);
    assert_eq!(code, 200, "probes need no token");
    // Only the rejected rollout write reached the log; nothing else changed.
    assert!(v.status()["applied_index"].as_u64().unwrap() <= before + 1);
    assert_eq!(edges(v, "/v1/edges")["edges"].as_array().unwrap().len(), 1);
}

#[test]
fn watch_long_polls_return_the_changes_after_an_index_and_resume() {
    let dir = TempDir::new("cp-watch");
    let voters = start_cluster(dir.path(), 3);
    let refs: Vec<&Voter> = voters.iter().collect();
    wait_for_leader(&refs);
    assert_eq!(register_edge(&voters[0], "w1", "w1"), 200);
    let (code, first) = voters[1].get("/v1/watch?since=0&timeout_ms=5000");
    assert_eq!(code, 200, "{first}");
    let index = first["index"].as_u64().unwrap();
    assert!(first["events"].as_array().unwrap().iter().any(|e| e["request_id"] == "w1"), "{first}");

    // A watcher waiting from `index` wakes up with exactly the next change.
    let http = voters[2].http.clone();
    let waiter = std::thread::spawn(move || {
        http_json(&http, "GET", &format!("/v1/watch?since={index}&timeout_ms=20000"), Some(TOKEN), &[], None)
    });
    let out = ctl(&refs, &["rollout", "create", "r1", "--spec", r#"{"override":{"max_lag_ms":500}}"#]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (code, next) = waiter.join().unwrap();
    assert_eq!(code, 200, "{next}");
    let events = next["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{next}");
    assert_eq!(events[0]["action"], "rollout.create");
    assert!(next["index"].as_u64().unwrap() > index);

    // The rollout's level moves through ctl and is audited.
    let out = ctl(&refs, &["rollout", "level", "r1", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = ctl(&refs, &["--json", "rollout", "get", "r1"]);
    let rollout: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rollout["level"], 2, "{rollout}");
    let out = ctl(&refs, &["rollout", "level", "r1", "9"]);
    assert!(!out.status.success(), "level 9 must be refused");
    let out = ctl(&refs, &["--json", "rollout", "history", "r1"]);
    let history: Value = serde_json::from_slice(&out.stdout).unwrap();
    let whats: Vec<&str> =
        history["history"].as_array().unwrap().iter().map(|e| e["what"].as_str().unwrap()).collect();
    assert_eq!(whats, ["created", "level 0 -> 2"], "{history}");
    // The human view: plain words, no JSON quoting, with the history.
    let out = ctl(&refs, &["rollout", "show", "r1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or("");
    assert_eq!(first, "r1\tlevel 2\tactive", "{text}");
    assert!(text.lines().any(|l| l.ends_with("\tlevel 2\tlevel 0 -> 2")), "{text}");
    let out = ctl(&refs, &["rollout", "list"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "r1\tlevel 2\tactive");
}

#[test]
fn rollout_specs_are_typed_and_checked_and_one_rollout_owns_a_setting() {
    let dir = TempDir::new("cp-rollout-specs");
    let voters = start_cluster(dir.path(), 1);
    let refs: Vec<&Voter> = voters.iter().collect();
    wait_for_leader(&refs);
    // A TOML spec file, the id inside it.
    let file = dir.path().join("bbr.toml");
    std::fs::write(
        &file,
        "id = \"bbr\"\ndescription = \"BBR for eu\"\non_trip = \"off\"\n\
         [override]\ncongestion = \"bbr\"\nclient_flag = \"bbr-1\"\n\
         [gates]\nregions = [\"eu\"]\nshare_bp = 1000\n\
         [guard]\ncpu_max = 1.5\nerror_rate_max = 0.05\nmin_sessions = 10\n",
    )
    .unwrap();
    let out = ctl(&refs, &["rollout", "create", "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (code, rollout) = voters[0].get("/v1/rollouts/bbr");
    assert_eq!(code, 200, "{rollout}");
    assert_eq!(rollout["spec"]["override"]["congestion"], "bbr", "{rollout}");
    assert_eq!(rollout["spec"]["guard"]["window_ms"], 10_000, "defaults are filled in: {rollout}");

    // Bad specs: 400 with the reason, and nothing is written.
    let before = voters[0].status()["applied_index"].as_u64().unwrap();
    let cases = [
        (r#"{"id":"x","spec":{"override":{"max_lag":5}}}"#, "unknown field `max_lag`"),
        (r#"{"id":"x","spec":{"override":{"pacing":true},"gates":{"share_bp":10001}}}"#, "gates.share_bp"),
        (r#"{"id":"x","spec":{"override":{"congestion":"vegas"}}}"#, "unknown variant `vegas`"),
        (r#"{"id":"x","spec":{"override":{"fault":{"explode":true}}}}"#, "unknown field `explode`"),
        (r#"{"id":"x"}"#, "spec"),
    ];
    for (body, reason) in cases {
        let (code, answer) = voters[0].send("POST", "/v1/rollouts", None, body);
        assert_eq!(code, 400, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(reason), "{body}: {answer}");
    }
    assert_eq!(voters[0].status()["applied_index"].as_u64().unwrap(), before, "nothing was proposed");

    // A second rollout on a setting the first one changes is refused (state unchanged);
    // once the first is aborted, it may.
    let (code, answer) = voters[0].send(
        "POST",
        "/v1/rollouts",
        None,
        r#"{"id":"bbr2","spec":{"override":{"congestion":"cubic"}}}"#,
    );
    assert_eq!(code, 400, "{answer}");
    assert!(
        answer["error"]["message"].as_str().unwrap().contains("already changed by rollout \"bbr\""),
        "{answer}"
    );
    assert_eq!(voters[0].get("/v1/rollouts").1["rollouts"].as_array().unwrap().len(), 1);
    let out = ctl(&refs, &["rollout", "level", "bbr", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metrics = http_get(&voters[0].http, "/metrics").1;
    assert_eq!(metric_value(&metrics, "ferry_rollout_level{rollout=\"bbr\"}"), Some(3.0), "{metrics}");
    assert_eq!(metric_value(&metrics, "ferry_rollout_state{rollout=\"bbr\",state=\"active\"}"), Some(1.0));
    assert!(
        metric_value(&metrics, "ferry_rollout_last_change_timestamp_seconds{rollout=\"bbr\"}") > Some(1.0e9)
    );
    // The share of a live rollout moves; the rest of its spec stays.
    let out = ctl(&refs, &["rollout", "share", "bbr", "25%"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, rollout) = voters[0].get("/v1/rollouts/bbr");
    assert_eq!(rollout["spec"]["gates"]["share_bp"], 2500, "{rollout}");
    assert_eq!(rollout["spec"]["gates"]["regions"], serde_json::json!(["eu"]), "{rollout}");
    assert_eq!(rollout["history"].as_array().unwrap().last().unwrap()["what"], "share 1000 -> 2500 bp");
    let metrics = http_get(&voters[0].http, "/metrics").1;
    assert_eq!(metric_value(&metrics, "ferry_rollout_share_basis_points{rollout=\"bbr\"}"), Some(2500.0));
    let before = voters[0].get("/v1/rollouts/bbr").1;
    for (body, code, reason) in [
        (r#"{"share_bp":10001}"#, 400, "gates.share_bp"),
        (r#"{"share":5}"#, 400, "unknown field"),
        (r#"{"share_bp":-1}"#, 400, "share_bp"),
    ] {
        let (got, answer) = voters[0].send("POST", "/v1/rollouts/bbr/share", None, body);
        assert_eq!(got, code, "{body}: {answer}");
        assert!(answer["error"]["message"].as_str().unwrap_or("").contains(reason), "{body}: {answer}");
    }
    let out = ctl(&refs, &["rollout", "share", "bbr", "150%"]);
    assert!(!out.status.success(), "150% must be refused");
    let after = voters[0].get("/v1/rollouts/bbr").1;
    for field in ["spec", "level", "state", "history"] {
        assert_eq!(after[field], before[field], "refused shares change nothing");
    }
    let out = ctl(&refs, &["rollout", "abort", "bbr"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (code, answer) = voters[0].send("POST", "/v1/rollouts/bbr/share", None, r#"{"share_bp":100}"#);
    assert_eq!(code, 409, "an aborted rollout's share: {answer}");
    let metrics = http_get(&voters[0].http, "/metrics").1;
    assert_eq!(metric_value(&metrics, "ferry_rollout_state{rollout=\"bbr\",state=\"aborted\"}"), Some(1.0));
    assert_eq!(metric_value(&metrics, "ferry_rollout_state{rollout=\"bbr\",state=\"active\"}"), None);
    let (code, answer) = voters[0].send(
        "POST",
        "/v1/rollouts",
        None,
        r#"{"id":"bbr2","spec":{"override":{"congestion":"cubic"}}}"#,
    );
    assert_eq!(code, 200, "{answer}");
    // Level out of range.
    let (code, answer) = voters[0].send("POST", "/v1/rollouts/bbr2/level", None, r#"{"level":5}"#);
    assert_eq!(code, 400, "{answer}");
    let out = ctl(&refs, &["rollout", "create", "--spec", r#"{"override":{"pacing":true}}"#]);
    assert!(!out.status.success(), "no id anywhere");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no rollout id"));
}

/// How many audit events name `target` on voter `v`.
fn audit_targets(v: &Voter, target: &str) -> usize {
    let (status, body) = v.get("/v1/audit?limit=10000");
    assert_eq!(status, 200, "voter {}: {body}", v.id);
    body["events"].as_array().unwrap().iter().filter(|e| e["target"] == target).count()
}

/// `ferry ctl streams put NAME` through `via` alone, started now.
fn ctl_put_stream(via: &Voter, name: &str) -> Proc {
    let mut cmd = ferry();
    cmd.arg("ctl")
        .args(Voter::ctl_args(&[via]))
        .args(["--token", TOKEN, "--timeout", "10s", "streams", "put", name, "--origin", "e0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    Proc::spawn("ferry ctl streams put", &mut cmd)
}

/// Waits for `ctl` to succeed; the time from `since` to its exit.
fn ctl_succeeds(ctl: Proc, since: Instant) -> Duration {
    let out = ctl.wait_output(Duration::from_secs(15));
    let took = since.elapsed();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    took
}

/// A follower forwards a write to the leader it believes in, and raft-rs never sends it
/// again: without re-proposing on a leader change, a write in flight when the leader
/// dies waits out the voter's whole 5 s request timeout. The figure is `ferry bench
/// control --failover`'s `in_flight_ms`; the bound here is loose on purpose.
#[test]
fn a_write_in_flight_through_a_follower_survives_a_leader_kill() {
    let dir = TempDir::new("cp-inflight");
    let mut voters = start_cluster(dir.path(), 3);
    let refs: Vec<&Voter> = voters.iter().collect();
    let leader = wait_for_leader(&refs);
    assert_eq!(register_edge(&voters[0], "e0", "reg-e0"), 200);
    let proposals = |v: &Voter| metric_value(&http_get(&v.http, "/metrics").1, "ferry_raft_proposals");

    // 1: the proposal is parked at a stopped leader when it is killed.
    let li = voters.iter().position(|v| v.id == leader).unwrap();
    let fi = (li + 1) % voters.len();
    let before = proposals(&voters[fi]).unwrap();
    voters[li].signal("-STOP");
    let ctl = ctl_put_stream(&voters[fi], "live/parked");
    wait_for("the follower to propose the write", Duration::from_secs(10), || {
        (proposals(&voters[fi])? > before).then_some(())
    });
    let killed = Instant::now();
    voters[li].signal("-KILL");
    let took = ctl_succeeds(ctl, killed);
    assert!(took < Duration::from_secs(3), "acknowledged {took:?} after the leader's kill");
    for v in voters.iter().filter(|v| v.id != leader) {
        assert_eq!(audit_targets(v, "live/parked"), 1, "voter {}: applied exactly once", v.id);
    }

    // 2: the write reaches a follower right after the kill, before it notices.
    let old = voters.remove(li).restart();
    voters.push(old);
    let refs: Vec<&Voter> = voters.iter().collect();
    let leader = wait_for_leader(&refs);
    let li = voters.iter().position(|v| v.id == leader).unwrap();
    let fi = (li + 1) % voters.len();
    let killed = Instant::now();
    voters[li].signal("-KILL");
    let took = ctl_succeeds(ctl_put_stream(&voters[fi], "live/after-kill"), killed);
    assert!(took < Duration::from_secs(3), "acknowledged {took:?} after the leader's kill");
    for v in voters.iter().filter(|v| v.id != leader) {
        assert_eq!(audit_targets(v, "live/after-kill"), 1, "voter {}: applied exactly once", v.id);
        assert_eq!(audit_targets(v, "live/parked"), 1, "voter {}: still exactly once", v.id);
    }
}

#[test]
fn a_snapshot_of_a_populated_cluster_restores_a_new_cluster() {
    let _heavy = heavy();
    let dir = TempDir::new("cp-backup");
    // Cluster A (every voter takes a snapshot each 50 entries, see `Voter::start`).
    let a = start_cluster(dir.path(), 3);
    let a_refs: Vec<&Voter> = a.iter().collect();
    wait_for_leader(&a_refs);
    for i in 0..4 {
        let region = if i % 2 == 0 { "eu" } else { "us" };
        let body =
            format!(r#"{{"region":"{region}","quic_addr":"127.0.0.1:4433","http_addr":"127.0.0.1:8080"}}"#);
        let (code, answer) = a[i % 3].send("PUT", &format!("/v1/edges/edge-{i}"), None, &body);
        assert_eq!(code, 200, "{answer}");
    }
    for (i, v) in a.iter().enumerate() {
        let body = r#"{"origin":"edge-0","relays":{"us":["edge-1"],"eu":["edge-2"]}}"#;
        let (code, answer) = v.send("PUT", &format!("/v1/streams/live/s{i}"), None, body);
        assert_eq!(code, 200, "{answer}");
    }
    for (id, spec) in [("bbr", r#"{"congestion":"bbr"}"#), ("lag", r#"{"max_lag_ms":900}"#)] {
        let body = format!(r#"{{"id":"{id}","spec":{{"override":{spec}}}}}"#);
        let (code, answer) = a[0].send("POST", "/v1/rollouts", None, &body);
        assert_eq!(code, 200, "{answer}");
    }
    assert_eq!(a[1].send("POST", "/v1/rollouts/bbr/level", None, r#"{"level":2}"#).0, 200);
    let (code, answer) = a[2].send("POST", "/v1/tokens", None, r#"{"accessor":"ops","role":"operator"}"#);
    assert_eq!(code, 201, "{answer}");
    let named = answer["token"].as_str().unwrap().to_owned();
    for i in 0..120 {
        assert_eq!(register_edge(&a[i % 3], &format!("w{i}"), &format!("w{i}")), 200);
    }
    wait_for("a snapshot on every voter of A", Duration::from_secs(30), || {
        a.iter().all(|v| v.status()["snapshot_index"].as_u64().unwrap_or(0) > 0).then_some(())
    });

    // Only the leader serves backups; a follower names it.
    let leader = wait_for_leader(&a_refs);
    let follower = a.iter().find(|v| v.id != leader).unwrap();
    let (code, answer) = follower.get("/v1/snapshot");
    assert_eq!((code, answer["error"]["code"].as_str()), (421, Some("not_leader")), "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains(&format!("voter {leader} is")), "{answer}");
    // Saved through every URL: ctl finds the leader.
    let file = dir.path().join("a.backup");
    let out = ctl(&a_refs, &["snapshot", "save", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("saved "),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!dir.path().join("a.backup.part").exists(), "the partial file was renamed");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    // `status` needs no control plane.
    let out = ferry().args(["ctl", "--json", "snapshot", "status"]).arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let header = &status["header"];
    let index = header["index"].as_u64().unwrap();
    assert!(index > 120, "{status}");
    assert_eq!(header["voters"], serde_json::json!([1, 2, 3]), "{status}");
    assert_eq!(header["cluster_uuid"], Value::Null, "cluster A was founded, not restored: {status}");
    // What A holds, from a linearizable read.
    let paths = ["/v1/edges", "/v1/streams", "/v1/rollouts", "/v1/tokens", "/v1/audit?limit=10000"];
    let read = |v: &Voter, path: &str| {
        wait_for(&format!("a read of {path} on voter {}", v.id), Duration::from_secs(20), || {
            let (code, body) = v.get(path);
            (code == 200).then_some(body)
        })
    };
    let on_a: Vec<Value> = paths.iter().map(|p| read(&a[0], p)).collect();
    assert_eq!(on_a[0]["edges"].as_array().unwrap().len(), 124);

    // A damaged file is refused before anything is written.
    let mut damaged = std::fs::read(&file).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x01;
    let bad = dir.path().join("damaged.backup");
    std::fs::write(&bad, &damaged).unwrap();
    let out = ferry()
        .args(["control", "--id", "1", "--peers", "1=127.0.0.1:1", "--insecure-raft", "--insecure-http"])
        .arg("--data-dir")
        .arg(dir.path().join("bad"))
        .arg("--restore")
        .arg(&bad)
        .env("FERRY_CONTROL_TOKEN", TOKEN)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("checksum"), "{stderr}");
    assert!(!dir.path().join("bad").join("raft").exists(), "nothing written for a damaged backup");

    // Cluster B: three fresh voters from the file, with new raft addresses.
    let peers: Vec<String> = (1..=3).map(|id| format!("{id}=127.0.0.1:{}", free_udp_port())).collect();
    let peers = peers.join(",");
    let restore = ["--restore", file.to_str().unwrap()];
    let mut b: Vec<Voter> =
        (1..=3).map(|id| Voter::start(id, &peers, &dir.path().join(format!("b{id}")), &restore)).collect();
    let b_refs: Vec<&Voter> = b.iter().collect();
    wait_for_leader(&b_refs);
    let uuid = b[0].status()["cluster_uuid"].as_str().unwrap().to_owned();
    for v in &b {
        assert_eq!(v.status()["cluster_uuid"], uuid.as_str(), "every restored voter has one identity");
    }
    for (path, expected) in paths.iter().zip(&on_a) {
        for v in &b {
            assert_eq!(&read(v, path), expected, "{path} on voter {} of B", v.id);
        }
    }
    // A's named token works on B, and B's log goes on after the backup's index.
    let (code, whoami) = http_json(&b[1].http, "GET", "/v1/whoami", Some(&named), &[], None);
    assert_eq!((code, whoami["principal"].as_str()), (200, Some("token:ops")), "{whoami}");
    let (code, answer) = http_json(
        &b[1].http,
        "PUT",
        "/v1/streams/live/after",
        Some(&named),
        &[],
        Some(r#"{"origin":"edge-1"}"#),
    );
    assert_eq!(code, 200, "{answer}");
    assert!(answer["index"].as_u64().unwrap() > index, "{answer} after {index}");

    // A voter that is not of B, given B's peers, is refused by B's voters.
    let intruder_peers = format!("{peers},4=127.0.0.1:{}", free_udp_port());
    let intruder = Voter::start(4, &intruder_peers, &dir.path().join("x4"), &[]);
    wait_for("B's voters refusing the other cluster's voter", Duration::from_secs(20), || {
        let refused: f64 = b
            .iter()
            .map(|v| {
                let metrics = http_get(&v.http, "/metrics").1;
                metric_value(&metrics, "ferry_raft_peers_refused_total{reason=\"cluster\"}").unwrap_or(0.0)
            })
            .sum();
        (refused > 0.0).then_some(())
    });
    assert_eq!(intruder.status()["leader"].as_u64(), Some(0), "the intruder never joined B");
    // A new member joins B when given B's identity.
    let joiner_peers = format!("{peers},5=127.0.0.1:{}", free_udp_port());
    let joiner = Voter::start(5, &joiner_peers, &dir.path().join("b5"), &["--join", "--cluster-uuid", &uuid]);
    let out = ctl(&b_refs, &["members", "add", "5", &joiner.raft]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("the new member of B to catch up", Duration::from_secs(30), || {
        let (code, body) = joiner.get("/v1/streams/live/after?stale=true");
        (code == 200 && body["origin"] == "edge-1").then_some(())
    });
    assert_eq!(joiner.status()["cluster_uuid"], uuid.as_str());
    drop(b_refs);
    // A restart with --restore still given opens the restored data as it is.
    let restarted = b.remove(0).restart();
    assert_eq!(restarted.status()["cluster_uuid"], uuid.as_str());
    let (code, stream) = wait_for("the restarted voter to serve reads", Duration::from_secs(20), || {
        let (code, body) = restarted.get("/v1/streams/live/after");
        (code == 200).then_some((code, body))
    });
    assert_eq!(code, 200, "{stream}");
}

/// SIGTERM answers a pending watch long-poll at once (empty, with the index to resume
/// from) instead of leaving it to the HTTP server's shutdown grace, which cut the
/// connection five seconds later and held the voter's exit that long.
#[test]
fn a_watch_long_poll_is_answered_when_its_voter_stops() {
    let dir = TempDir::new("cp-watch-stop");
    let mut voters = start_cluster(dir.path(), 1);
    wait_for_leader(&voters.iter().collect::<Vec<_>>());
    let v = voters.pop().unwrap();
    let applied = v.status()["applied_index"].as_u64().unwrap();
    let http = v.http.clone();
    let poll = std::thread::spawn(move || {
        let bearer = format!("Bearer {TOKEN}");
        let path = format!("/v1/watch?since={applied}&timeout_ms=60000");
        http::exchange(&http, "GET", &path, &[("authorization", &bearer)], b"", Duration::from_secs(90))
    });
    // The long-poll's connection is open (the scrape's own is the other one).
    wait_for("the long-poll to reach the voter", Duration::from_secs(30), || {
        let (_, text) = http_get(&v.http, "/metrics");
        let open =
            text.lines().find_map(|l| l.strip_prefix("ferry_http_connections ")?.trim().parse::<f64>().ok());
        (open? >= 2.0).then_some(())
    });
    v.proc.terminate();
    let reply = poll.join().unwrap().expect("the long-poll gets an answer, not a cut connection");
    assert_eq!(reply.status, 200);
    let body = reply.json();
    assert_eq!(body["events"], serde_json::json!([]), "{body}");
    assert!(body["index"].as_u64().unwrap() >= applied, "{body}");
    let out = v.proc.wait_output(Duration::from_secs(30));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
