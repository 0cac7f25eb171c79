//! Who may call the control-plane API, as real voters on loopback: named operator
//! tokens with roles (made and revoked with `ferry ctl tokens`), the bootstrap token,
//! and the audit log naming each principal. Token secrets are stored nowhere.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// `ferry ctl` against every voter with `token`.
fn ctl_as(voters: &[Voter], token: &str, args: &[&str]) -> std::process::Output {
    let voters: Vec<&Voter> = voters.iter().collect();
    ferry().arg("ctl").args(Voter::ctl_args(&voters)).args(["--token", token]).args(args).output().unwrap()
}

/// A new token with `role`, made by the bootstrap admin through `ferry ctl`.
fn create_token(voters: &[Voter], accessor: &str, role: &str) -> String {
    let out = ctl_as(voters, TOKEN, &["tokens", "create", accessor, "--role", role]);
    assert!(out.status.success(), "tokens create: {}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with(&format!("ferry.{accessor}.")), "{token}");
    token
}

fn call(v: &Voter, token: Option<&str>, method: &str, path: &str, body: &str) -> (u16, Value) {
    http_json(&v.http, method, path, token, &[], (!body.is_empty()).then_some(body))
}

/// Every file under `dir`, as bytes, searched for `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    found
}

#[test]
fn each_role_may_do_what_it_is_for_and_a_revoked_token_is_refused_everywhere() {
    let _heavy = heavy();
    let dir = TempDir::new("principals");
    let voters = start_cluster(dir.path(), 3);
    wait_for_leader(&voters.iter().collect::<Vec<_>>());
    let viewer = create_token(&voters, "dashboards", "viewer");
    let operator = create_token(&voters, "release-bot", "operator");
    let admin = create_token(&voters, "alice", "admin");
    let v = &voters[1];
    let rollout = r#"{"id":"r1","spec":{"override":{"congestion":"bbr"}}}"#;

    // (credential, method, path, body, expected status)
    let table: Vec<(Option<&str>, &str, String, &str, u16)> = vec![
        (None, "GET", "/v1/streams".into(), "", 401),
        (Some("not-a-token-at-all-0000"), "GET", "/v1/streams".into(), "", 401),
        (
            Some("ferry.dashboards.0000000000000000000000000000000000000000000000000000000000000000"),
            "GET",
            "/v1/streams".into(),
            "",
            401,
        ),
        (Some(&viewer), "GET", "/v1/streams".into(), "", 200),
        (Some(&viewer), "GET", "/v1/audit".into(), "", 200),
        (Some(&viewer), "POST", "/v1/rollouts".into(), rollout, 403),
        (Some(&viewer), "POST", "/v1/edges/e1/drain".into(), "", 403),
        (Some(&viewer), "GET", "/v1/tokens".into(), "", 403),
        (Some(&operator), "POST", "/v1/rollouts".into(), rollout, 200),
        (Some(&operator), "POST", "/v1/rollouts/r1/level".into(), r#"{"level":1}"#, 200),
        (Some(&operator), "POST", "/v1/cluster/members/9".into(), r#"{"raft_addr":"127.0.0.1:1"}"#, 403),
        (Some(&operator), "DELETE", "/v1/cluster/members/3".into(), "", 403),
        (Some(&operator), "POST", "/v1/tokens".into(), r#"{"accessor":"x","role":"admin"}"#, 403),
        (Some(&admin), "GET", "/v1/tokens".into(), "", 200),
        (Some(&admin), "POST", "/v1/rollouts/r1/pause".into(), "", 200),
    ];
    for (token, method, path, body, want) in &table {
        let (status, answer) = call(v, *token, method, path, body);
        assert_eq!(status, *want, "{method} {path} as {:?}: {answer}", token.map(|t| &t[..t.len().min(20)]));
        if *want >= 400 {
            let code = answer["error"]["code"].as_str().unwrap();
            assert_eq!(code, if *want == 401 { "unauthorized" } else { "forbidden" }, "{answer}");
        }
    }
    // Nothing a refused caller asked for happened: still three voters, one rollout.
    assert_eq!(v.status()["voters"].as_array().unwrap().len(), 3);
    let (_, who) = call(v, Some(&operator), "GET", "/v1/whoami", "");
    assert_eq!(
        (who["principal"].as_str(), who["role"].as_str()),
        (Some("token:release-bot"), Some("operator"))
    );

    // The audit log names each principal, its role and where it called from.
    let (_, audit) = call(v, Some(&viewer), "GET", "/v1/audit", "");
    let events = audit["events"].as_array().unwrap();
    let by = |action: &str| {
        events.iter().find(|e| e["action"] == action).unwrap_or_else(|| panic!("{action}: {audit}"))
    };
    let level = by("rollout.set_level");
    assert_eq!(
        (level["actor"].as_str(), level["role"].as_str()),
        (Some("token:release-bot"), Some("operator"))
    );
    assert!(level["source"].as_str().unwrap().starts_with("127.0.0.1:"), "{level}");
    let pause = by("rollout.pause");
    assert_eq!((pause["actor"].as_str(), pause["role"].as_str()), (Some("token:alice"), Some("admin")));
    let created = by("token.create");
    assert_eq!((created["actor"].as_str(), created["role"].as_str()), (Some("bootstrap"), Some("admin")));

    // `tokens list` shows accessors and roles, never secrets.
    let out = ctl_as(&voters, &admin, &["tokens", "list"]);
    let listed = String::from_utf8(out.stdout).unwrap();
    assert!(listed.contains("release-bot\toperator") && listed.contains("dashboards\tviewer"), "{listed}");

    // Revoked: every voter answers 401 within a second of the revocation's answer.
    let out = ctl_as(&voters, &admin, &["tokens", "revoke", "release-bot"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let revoked_at = Instant::now();
    for voter in &voters {
        wait_for("the revoked token refused", Duration::from_secs(5), || {
            (call(voter, Some(&operator), "GET", "/v1/streams?stale=true", "").0 == 401).then_some(())
        });
    }
    let took = revoked_at.elapsed();
    println!("revoked token refused by all three voters {took:?} after `ferry ctl tokens revoke` returned");
    assert!(took < Duration::from_secs(1), "revocation reached every voter after {took:?}");
    let (status, _) = call(&voters[2], Some(&operator), "POST", "/v1/rollouts/r1/level", r#"{"level":2}"#);
    assert_eq!(status, 401);

    // No secret is in any voter's data dir or in the audit log.
    let (_, audit) = call(v, Some(&admin), "GET", "/v1/audit", "");
    for token in [&viewer, &operator, &admin] {
        let secret = token.rsplit('.').next().unwrap();
        assert!(!audit.to_string().contains(secret), "a secret is in the audit log");
        let found = files_containing(dir.path(), secret.as_bytes());
        assert!(found.is_empty(), "a token secret is stored in {found:?}");
    }
}

#[test]
fn ctl_explains_a_refusal_and_exits_non_zero() {
    let dir = TempDir::new("principals-ctl");
    let voters = start_cluster(dir.path(), 1);
    wait_for_leader(&voters.iter().collect::<Vec<_>>());
    let viewer = create_token(&voters, "ro", "viewer");
    let out = ctl_as(&voters, &viewer, &["rollout", "level", "r1", "2"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("403 forbidden") && err.contains("token:ro (role viewer)"), "{err}");
    let out = ctl_as(&voters, &viewer, &["whoami"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("token:ro (role viewer)"));
    // The same accessor twice: a clear conflict.
    let out = ctl_as(&voters, TOKEN, &["tokens", "create", "ro", "--role", "admin"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"), "{out:?}");
}
