//! Four-level canary rollouts on real edges: cohorts placed per session (WHEP and
//! QUIC) as the gates say, overrides the edges apply, drills, and the guards that
//! fall a rollout back (the edge's CPU guard, the voters' error guard).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::webrtc::*;
use support::*;

/// POSTs a WHEP offer as `session` (with `user_agent`) to `edge`, ends the session, and
/// returns the edge's `Ferry-Variant` and `Ferry-Client-Flag` answers.
/// An anonymous WHEP session as `session`: its `Ferry-Variant` and client flag. (A
/// session with a token is placed by the token's subject instead; these edges allow
/// anonymous clients so the tests pick the ids.)
fn whep_variant(edge: &Edge, stream: &str, session: &str, user_agent: &str) -> (String, String) {
    let headers =
        [("Content-Type", "application/sdp"), ("Ferry-Session", session), ("User-Agent", user_agent)];
    // The edge's few UDP ports free up as ended sessions finish: 503 means "again". So
    // does 404 while the stream was just published: the edge learns its origin through
    // gossip or the control plane a moment later (a lasting 404 still fails).
    let (hdrs, _) = wait_for("a WHEP session", Duration::from_secs(20), || {
        let (status, hdrs, answer) =
            http(&edge.http, "POST", &format!("/whep/{stream}"), &headers, vp8_offer("recvonly").as_bytes());
        match status {
            503 | 404 => None,
            201 => Some((hdrs, answer)),
            other => panic!("{session}: HTTP {other}: {answer}"),
        }
    });
    let location = header(&hdrs, "location").expect("Location").to_owned();
    assert_eq!(http(&edge.http, "DELETE", &location, &[], b"").0, 200);
    let get = |name: &str| header(&hdrs, name).unwrap_or("").to_owned();
    (get("ferry-variant"), get("ferry-client-flag"))
}

#[test]
fn rollout_levels_place_whep_sessions_on_every_edge_as_the_gates_say() {
    let _heavy = heavy();
    let dir = TempDir::new("rollout-levels");
    let cluster = whep_cluster(dir.path(), &["--allow-anonymous"]);
    let stream = "live/r";
    let mut cmd = ferry();
    cmd.args(["publish", "--edge", &cluster.edges["o"].quic, "--stream", stream, "--insecure"])
        .args(["--synthetic", "--synthetic-vp8", "--duration", "300s"])
        .stdout(std::process::Stdio::null());
    let _publisher = Proc::spawn("publisher", &mut cmd);
    wait_for_stream(&cluster.edges["o"]);
    let spec = r#"{"id":"lag","spec":{"override":{"max_lag_ms":800,"client_flag":"lag-1"},
        "gates":{"session_ids":["vip"],"client_tags":["Firefox/"],"regions":["r1"],"share_bp":3000}}}"#;
    let (code, answer) = cluster.voter.send("POST", "/v1/rollouts", None, spec);
    assert_eq!(code, 200, "{answer}");
    let ids: Vec<String> = (0..40).map(|i| format!("viewer-{i}")).collect();
    let in_share: Vec<bool> = ids.iter().map(|id| ferry_proto::cohort::bucket("lag", id) < 3000).collect();
    assert!(in_share.iter().any(|t| *t) && !in_share.iter().all(|t| *t), "a mixed sample");

    // Who the gates treat at `level` on edge `edge` (o is in r1, a and b in r2).
    let treated = |level: u8, edge: &str, id: &str, ua: &str| -> bool {
        let share = ferry_proto::cohort::bucket("lag", id) < 3000;
        match level {
            0 => false,
            4 => true,
            l => id == "vip" || ua.contains("Firefox/") || (l >= 2 && edge == "o") || (l >= 3 && share),
        }
    };
    let mut probes: Vec<(String, &str)> = vec![("vip".into(), "curl")];
    probes.extend(
        ids.iter().take(12).flat_map(|id| [(id.clone(), "curl"), (id.clone(), "Mozilla/5.0 Firefox/140.0")]),
    );
    let mut level = 0;
    for next in [1u8, 2, 3, 4, 3, 0] {
        // The operator flips the level; measure until each edge gives new sessions the
        // cohort the new level implies, probing with a session whose cohort changes.
        let flipped = std::time::Instant::now();
        let (code, answer) =
            cluster.voter.send("POST", "/v1/rollouts/lag/level", None, &format!(r#"{{"level":{next}}}"#));
        assert_eq!(code, 200, "{answer}");
        for (name, edge) in &cluster.edges {
            let all: Vec<(String, &str)> =
                probes.iter().cloned().chain(ids.iter().map(|id| (id.clone(), "curl"))).collect();
            let changed =
                all.iter().find(|(id, ua)| treated(level, name, id, ua) != treated(next, name, id, ua));
            if let Some((id, ua)) = changed {
                let want = if treated(next, name, id, ua) { "lag=treatment" } else { "lag=baseline" };
                wait_for(&format!("edge {name} at level {next}"), Duration::from_secs(10), || {
                    (whep_variant(edge, stream, id, ua).0 == want).then_some(())
                });
                println!("level {level} -> {next}: edge {name} applies it after {:?}", flipped.elapsed());
            }
            // Then every session lands where the gates say.
            for (id, ua) in &probes {
                let (variant, flag) = whep_variant(edge, stream, id, ua);
                let treat = treated(next, name, id, ua);
                let want = if treat { "lag=treatment" } else { "lag=baseline" };
                assert_eq!(variant, want, "level {next}, edge {name}, {id}, {ua}");
                assert_eq!(flag, if treat { "lag-1" } else { "" }, "level {next}, edge {name}, {id}");
            }
        }
        level = next;
    }
    let metrics = cluster.edges["a"].metrics();
    assert!(
        metric_value(&metrics, "ferry_rollout_sessions_total{rollout=\"lag\",cohort=\"treatment\"}")
            > Some(0.0)
    );
    assert!(
        metric_value(&metrics, "ferry_rollout_sessions_total{rollout=\"lag\",cohort=\"baseline\"}")
            > Some(0.0)
    );

    // `ferry watch --whep --session-id` reports its cohort.
    let mut cmd = ferry();
    cmd.args(["watch", "--whep", &format!("http://{}/whep/{stream}", cluster.edges["a"].http)])
        .args(["--session-id", "vip", "--duration", "2s", "--json"])
        .stdout(std::process::Stdio::piped());
    let stats = json_output(Proc::spawn("whep viewer", &mut cmd), Duration::from_secs(60));
    // Level 0 now: even the allowlisted viewer gets the baseline.
    assert_eq!(stats["variant"], "lag=baseline", "{stats}");
}

#[test]
fn a_fault_injection_drill_refuses_its_share_of_treatment_sessions_and_counts_them() {
    let _heavy = heavy();
    let dir = TempDir::new("rollout-fault");
    let cluster = whep_cluster(dir.path(), &["--allow-fault-injection", "--allow-anonymous"]);
    let stream = "live/f";
    let mut cmd = ferry();
    cmd.args(["publish", "--edge", &cluster.edges["o"].quic, "--stream", stream, "--insecure"])
        .args(["--synthetic", "--synthetic-vp8", "--duration", "300s"])
        .stdout(std::process::Stdio::null());
    let _publisher = Proc::spawn("publisher", &mut cmd);
    wait_for_stream(&cluster.edges["o"]);
    let spec = r#"{"id":"drill","spec":{"override":{"fault":{"reject_sessions_bp":5000}},"gates":{"regions":["r2"]}}}"#;
    assert_eq!(cluster.voter.send("POST", "/v1/rollouts", None, spec).0, 200);
    assert_eq!(cluster.voter.send("POST", "/v1/rollouts/drill/level", None, r#"{"level":2}"#).0, 200);
    let edge = &cluster.edges["a"];
    let refused_by_drill = |id: &str| ferry_proto::cohort::bucket("drill/fault", id) < 5000;
    let ids: Vec<String> = (0..16).map(|i| format!("s{i}")).collect();
    assert!(ids.iter().any(|id| refused_by_drill(id)) && !ids.iter().all(|id| refused_by_drill(id)));
    // Once edge a has the rollout, a refused id is refused with the reason.
    let refused = ids.iter().find(|id| refused_by_drill(id)).unwrap();
    wait_for("edge a applies the drill", Duration::from_secs(10), || {
        let (status, _, body) = http(
            &edge.http,
            "POST",
            &format!("/whep/{stream}"),
            &[("Content-Type", "application/sdp"), ("Ferry-Session", refused)],
            vp8_offer("recvonly").as_bytes(),
        );
        (status == 503 && body.contains("fault_injected")).then_some(())
    });
    // ... and knows where the stream is (its origin comes by gossip and the control
    // plane, maybe after the rollout): an id the drill lets through gets a session.
    let admitted = ids.iter().find(|id| !refused_by_drill(id)).unwrap();
    wait_for("edge a serves the stream", Duration::from_secs(30), || {
        let (status, hdrs, _) = http(
            &edge.http,
            "POST",
            &format!("/whep/{stream}"),
            &[("Content-Type", "application/sdp"), ("Ferry-Session", admitted)],
            vp8_offer("recvonly").as_bytes(),
        );
        let location = header(&hdrs, "location")?.to_owned();
        assert_eq!(http(&edge.http, "DELETE", &location, &[], b"").0, 200);
        (status == 201).then_some(())
    });
    let errors_before = edge
        .metric(
            "ferry_rollout_errors_total{rollout=\"drill\",cohort=\"treatment\",reason=\"fault_injected\"}",
        )
        .unwrap_or(0.0);
    let mut expected_refusals = 0.0;
    for id in &ids {
        let (status, hdrs, body) = http(
            &edge.http,
            "POST",
            &format!("/whep/{stream}"),
            &[("Content-Type", "application/sdp"), ("Ferry-Session", id)],
            vp8_offer("recvonly").as_bytes(),
        );
        if refused_by_drill(id) {
            expected_refusals += 1.0;
            assert_eq!(status, 503, "{id}: {body}");
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(json["reason"], "fault_injected", "{json}");
        } else {
            if status == 503 && body.contains("too_many") {
                continue; // the edge's few UDP ports are busy; not the drill
            }
            assert_eq!(status, 201, "{id}: {body}");
            assert_eq!(header(&hdrs, "ferry-variant"), Some("drill=treatment"));
            let location = header(&hdrs, "location").unwrap().to_owned();
            assert_eq!(http(&edge.http, "DELETE", &location, &[], b"").0, 200);
        }
    }
    let errors = edge
        .metric(
            "ferry_rollout_errors_total{rollout=\"drill\",cohort=\"treatment\",reason=\"fault_injected\"}",
        )
        .unwrap_or(0.0);
    assert_eq!(errors - errors_before, expected_refusals);
    // Edge o is in r1: baseline there, nobody refused.
    let (status, hdrs, body) = http(
        &cluster.edges["o"].http,
        "POST",
        &format!("/whep/{stream}"),
        &[("Content-Type", "application/sdp"), ("Ferry-Session", refused)],
        vp8_offer("recvonly").as_bytes(),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(header(&hdrs, "ferry-variant"), Some("drill=baseline"));
}

#[test]
fn a_cpu_burning_treatment_trips_on_its_edge_without_voters_and_is_recorded_when_they_return() {
    let _heavy = heavy();
    let dir = TempDir::new("rollout-cpu");
    let cluster = whep_cluster(dir.path(), &["--allow-fault-injection", "--allow-anonymous"]);
    let stream = "live/c";
    let mut cmd = ferry();
    cmd.args(["publish", "--edge", &cluster.edges["o"].quic, "--stream", stream, "--insecure"])
        .args(["--synthetic", "--synthetic-vp8", "--duration", "300s"])
        .stdout(std::process::Stdio::null());
    let _publisher = Proc::spawn("publisher", &mut cmd);
    wait_for_stream(&cluster.edges["o"]);
    let spec = r#"{"id":"burn","spec":{"override":{"fault":{"cpu_burn_ms_per_s":900},"max_lag_ms":20000},
        "gates":{"edges":["a"]},"guard":{"cpu_max":0.3,"consecutive":5}}}"#;
    assert_eq!(cluster.voter.send("POST", "/v1/rollouts", None, spec).0, 200);
    assert_eq!(cluster.voter.send("POST", "/v1/rollouts/burn/level", None, r#"{"level":2}"#).0, 200);
    let a = &cluster.edges["a"];
    let trips = || a.metric("ferry_rollout_trips_total{rollout=\"burn\",guard=\"cpu\"}").unwrap_or(0.0);
    wait_for("edge a gives the treatment", Duration::from_secs(10), || {
        (whep_variant(a, stream, "s1", "curl").0 == "burn=treatment").then_some(())
    });
    // A treated QUIC viewer that stays: its 20 s latency budget is the treatment's.
    let mut cmd = ferry();
    cmd.args(["watch", "--edge", &a.quic, "--stream", stream, "--insecure", "--session-id", "stays"])
        .args(["--duration", "300s"])
        .stdout(std::process::Stdio::null());
    let _viewer = Proc::spawn("treated viewer", &mut cmd);
    let treated = "ferry_rollout_sessions_total{rollout=\"burn\",cohort=\"treatment\"}";
    wait_for("the viewer's treated subscription", Duration::from_secs(20), || {
        let m = a.metrics();
        let subscribed = m.lines().any(|l| {
            l.starts_with("ferry_subscriptions{") && l.contains("role=\"viewer\"") && !l.ends_with(" 0")
        });
        (subscribed && metric_value(&m, treated) >= Some(2.0)).then_some(())
    });
    let moved_back = || a.metric("ferry_rollout_moved_back_sessions_total{rollout=\"burn\"}").unwrap_or(0.0);
    // Every voter stops: the edge guards itself.
    cluster.voter.signal("-STOP");
    assert_eq!(trips(), 0.0, "tripped before the voters stopped; the drill proves nothing");
    wait_for("edge a's CPU guard trips", Duration::from_secs(30), || (trips() == 1.0).then_some(()));
    // The live treated viewer moves back to its own budget (the WHEP probe has ended).
    wait_for("the live viewer moves back", Duration::from_secs(10), || (moved_back() == 1.0).then_some(()));
    assert_eq!(whep_variant(a, stream, "s1", "curl").0, "burn=baseline", "new sessions get the baseline");
    // The voters return and record the trip: held, fallen back to the previous level.
    cluster.voter.signal("-CONT");
    let rollout = wait_for("the trip in the control plane", Duration::from_secs(30), || {
        let (_, r) = cluster.voter.get("/v1/rollouts/burn");
        (r["state"] == "tripped").then_some(r)
    });
    assert_eq!(rollout["level"], 0, "{rollout}");
    let last = rollout["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["what"], "tripped by cpu on edge a: level 2 -> 0", "{rollout}");
    assert_eq!(last["actor"], "guard", "{rollout}");
    let (_, audit) = cluster.voter.get("/v1/audit");
    assert!(
        audit["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "rollout.trip" && e["target"] == "burn"),
        "{audit}"
    );
}

/// Opens a QUIC viewer session as `id` with `tags` on the edge at `quic`: its
/// `Ferry-Variant`, or the refusal.
async fn quic_variant(quic: String, id: String, tags: Vec<String>) -> Result<String, String> {
    use ferry_net::dial::{connect, SessionHello};
    use ferry_net::tls::{ClientTrust, TransportTuning};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let session = SessionHello { id: Some(id), tags, token: None };
    let node = ferry_proto::NodeId::new("rollout-probe").unwrap();
    let link = connect(
        &quic,
        &ClientTrust::Insecure,
        &TransportTuning::default(),
        node,
        ferry_proto::Role::Viewer,
        &session,
    )
    .await
    .map_err(|e| e.to_string())?;
    link.conn.close(0u32.into(), b"bye");
    let _ = tokio::time::timeout(Duration::from_millis(500), link.endpoint.wait_idle()).await;
    Ok(link.variant.unwrap_or_default())
}

/// Opens the QUIC sessions `(edge quic address, id, tags)`, 16 at a time.
fn quic_variants(sessions: &[(String, String, Vec<String>)]) -> Vec<Result<String, String>> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let mut out = Vec::with_capacity(sessions.len());
        for chunk in sessions.chunks(16) {
            let tasks: Vec<_> = chunk
                .iter()
                .map(|(quic, id, tags)| tokio::spawn(quic_variant(quic.clone(), id.clone(), tags.clone())))
                .collect();
            for task in tasks {
                out.push(task.await.unwrap());
            }
        }
        out
    })
}

fn ctl(cluster: &WhepCluster, args: &[&str]) -> String {
    let out = ferry()
        .arg("ctl")
        .args(Voter::ctl_args(&[&cluster.voter]))
        .args(["--token", TOKEN])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "ferry ctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn rollout_levels_place_200_quic_sessions_as_the_gates_say_and_ctl_flips_reach_every_edge() {
    let _heavy = heavy();
    let dir = TempDir::new("rollout-quic-levels");
    let cluster = whep_cluster(dir.path(), &["--allow-anonymous"]);
    let spec = dir.path().join("spec.toml");
    std::fs::write(
        &spec,
        r#"id = "q"
description = "QUIC levels"
[override]
max_lag_ms = 900
client_flag = "q-1"
[gates]
session_ids = ["s-7", "s-70", "s-140"]
client_tags = ["Firefox/"]
regions = ["r1"]
share_bp = 1000
"#,
    )
    .unwrap();
    ctl(&cluster, &["rollout", "create", "-f", spec.to_str().unwrap()]);
    // 200 sessions with varied ids and tags, spread over the three edges (o in r1).
    let names = ["o", "a", "b"];
    let sessions: Vec<(String, String, Vec<String>, &str)> = (0..200)
        .map(|i| {
            let ua = match i % 10 {
                0 => "Mozilla/5.0 Firefox/140.0",
                1..=4 => "Mozilla/5.0 Chrome/131.0",
                _ => "ferry/0.1",
            };
            let edge = names[i % 3];
            (cluster.edges[edge].quic.clone(), format!("s-{i}"), vec![ua.to_owned()], edge)
        })
        .collect();
    let allowlisted = |(_, id, tags, _): &(String, String, Vec<String>, &str)| {
        ["s-7", "s-70", "s-140"].contains(&id.as_str()) || tags[0].contains("Firefox/")
    };
    let in_region = |s: &(String, String, Vec<String>, &str)| s.3 == "o";
    let run = |level: u8| -> Vec<bool> {
        let plain: Vec<_> = sessions.iter().map(|(q, id, t, _)| (q.clone(), id.clone(), t.clone())).collect();
        quic_variants(&plain)
            .into_iter()
            .map(|r| match r.unwrap().as_str() {
                "q=treatment" => true,
                "q=baseline" => false,
                other => panic!("level {level}: variant {other:?}"),
            })
            .collect()
    };
    // A probe per level whose cohort changes: how long until every edge applies a flip.
    let probe = |edge: &str, id: &str, tags: &[&str]| -> String {
        let tags = tags.iter().map(|t| (*t).to_owned()).collect();
        quic_variants(&[(cluster.edges[edge].quic.clone(), id.to_owned(), tags)]).remove(0).unwrap()
    };
    let flip = |rollout: &str, level: u8, want: &str, id: &str, edges: &[&str]| {
        let flipped = std::time::Instant::now();
        ctl(&cluster, &["rollout", "level", rollout, &level.to_string()]);
        for edge in edges {
            wait_for(&format!("edge {edge} at level {level}"), Duration::from_secs(10), || {
                (probe(edge, id, &["curl"]) == want).then_some(())
            });
        }
        println!(
            "ferry ctl rollout level {rollout} {level}: every edge applies it after {:?}",
            flipped.elapsed()
        );
    };
    // A session outside every gate but inside the 10 % share.
    let in_share =
        (0..).map(|i| format!("p-{i}")).find(|id| ferry_proto::cohort::bucket("q", id) < 1000).unwrap();

    let treated = run(0);
    assert!(treated.iter().all(|t| !t), "level 0 treats nobody");
    flip("q", 1, "q=treatment", "s-7", &names);
    let treated = run(1);
    for (s, t) in sessions.iter().zip(&treated) {
        assert_eq!(*t, allowlisted(s), "level 1: {} {:?}", s.1, s.2);
    }
    assert_eq!(treated.iter().filter(|t| **t).count(), 21, "20 Firefox tags and s-7 (s-70, s-140 are both)");
    flip("q", 2, "q=treatment", "newcomer", &["o"]);
    let treated = run(2);
    for (s, t) in sessions.iter().zip(&treated) {
        assert_eq!(*t, allowlisted(s) || in_region(s), "level 2: {} on {}", s.1, s.3);
    }
    assert_eq!(
        treated.iter().filter(|t| **t).count(),
        21 + 67 - 7,
        "plus edge o's 67 sessions (7 are allowlisted)"
    );
    // Level 3 at 10 %: the rest of the sessions are treated by their sticky bucket.
    flip("q", 3, "q=treatment", &in_share, &["a", "b"]);
    let treated_10 = run(3);
    let rest = |treated: &[bool]| -> Vec<bool> {
        sessions
            .iter()
            .zip(treated)
            .filter(|(s, _)| !allowlisted(s) && !in_region(s))
            .map(|(_, t)| *t)
            .collect()
    };
    for (s, t) in sessions.iter().zip(&treated_10) {
        if allowlisted(s) || in_region(s) {
            assert!(*t, "level 3 keeps level 2's cohort: {}", s.1);
        }
    }
    let share = |rest: Vec<bool>| rest.iter().filter(|t| **t).count() as f64 / rest.len() as f64;
    let share_10 = share(rest(&treated_10));
    // 10 % of 119 sessions: within about 4 standard deviations (sd 2.8 %).
    assert!((0.0..=0.22).contains(&share_10), "share at 10 %: {share_10}");
    println!("level 3 at 10 %: {:.1} % of the 119 ungated sessions treated", share_10 * 100.0);
    // Raising the share to 30 % on the live rollout: every earlier treatment session stays.
    let newly_in = (0..)
        .map(|i| format!("p-{i}"))
        .find(|id| (1000..3000).contains(&ferry_proto::cohort::bucket("q", id)))
        .unwrap();
    let raised = std::time::Instant::now();
    ctl(&cluster, &["rollout", "share", "q", "30%"]);
    for edge in ["a", "b"] {
        wait_for(&format!("edge {edge} at 30 %"), Duration::from_secs(10), || {
            (probe(edge, &newly_in, &["curl"]) == "q=treatment").then_some(())
        });
    }
    println!("ferry ctl rollout share q 30%: every edge applies it after {:?}", raised.elapsed());
    let treated_30 = run(3);
    for ((s, before), after) in sessions.iter().zip(&treated_10).zip(&treated_30) {
        assert!(!before || *after, "{} was treated at 10 % and not at 30 %", s.1);
    }
    let share_30 = share(rest(&treated_30));
    assert!((0.15..=0.45).contains(&share_30) && share_30 >= share_10, "share at 30 %: {share_30}");
    println!("level 3 at 30 %: {:.1} % of the ungated sessions treated", share_30 * 100.0);
    let outside =
        (0..).map(|i| format!("p-{i}")).find(|id| ferry_proto::cohort::bucket("q", id) >= 3000).unwrap();
    flip("q", 4, "q=treatment", &outside, &names);
    let all: Vec<_> = sessions.iter().map(|(q, id, t, _)| (q.clone(), id.clone(), t.clone())).collect();
    assert!(quic_variants(&all).iter().all(|v| v.as_ref().unwrap() == "q=treatment"));

    // `ferry watch --json` over QUIC reports its variant and client flag.
    let stream = "live/q";
    let mut cmd = ferry();
    cmd.args(["publish", "--edge", &cluster.edges["a"].quic, "--stream", stream, "--insecure"])
        .args(["--synthetic", "--duration", "300s"])
        .stdout(std::process::Stdio::null());
    let _publisher = Proc::spawn("publisher", &mut cmd);
    wait_for_stream(&cluster.edges["a"]);
    let mut cmd = ferry();
    cmd.args(["watch", "--edge", &cluster.edges["a"].quic, "--stream", stream, "--insecure"])
        .args(["--session-id", "s-1", "--client-tag", "ferry-test", "--duration", "2s", "--json"])
        .stdout(std::process::Stdio::piped());
    let stats = json_output(Proc::spawn("quic viewer", &mut cmd), Duration::from_secs(60));
    assert_eq!(stats["variant"], "q=treatment", "{stats}");
    assert_eq!(stats["client_flag"], "q-1", "{stats}");
    assert!(stats["frames"].as_u64().unwrap() > 0, "{stats}");
}

/// Keeps opening QUIC viewer sessions on every edge (new ids, 12 at a time) until
/// `stop`, at most 90 s; returns how many were refused.
fn quic_load(
    edges: Vec<String>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let started = std::time::Instant::now();
            let (mut n, mut refused) = (0usize, 0usize);
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(90) {
                let tasks: Vec<_> = (0..12)
                    .map(|i| {
                        n += 1;
                        let edge = edges[(n + i) % edges.len()].clone();
                        tokio::spawn(quic_variant(edge, format!("load-{n}"), vec!["ferry-load".into()]))
                    })
                    .collect();
                for task in tasks {
                    refused += usize::from(task.await.unwrap().is_err());
                }
            }
            refused
        })
    })
}

#[test]
fn an_erroring_treatment_trips_the_global_guard_and_every_edge_falls_back() {
    let _heavy = heavy();
    let dir = TempDir::new("rollout-errors");
    let cluster = whep_cluster(dir.path(), &["--allow-fault-injection", "--allow-anonymous"]);
    let spec = r#"{"id":"bad","spec":{"on_trip":"off",
        "override":{"client_flag":"bad-1","fault":{"reject_sessions_bp":5000}},
        "gates":{"share_bp":10000},
        "guard":{"error_rate_max":0.2,"min_sessions":10,"window_ms":1000,"consecutive":2}}}"#;
    assert_eq!(cluster.voter.send("POST", "/v1/rollouts", None, spec).0, 200);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let quic: Vec<String> = cluster.edges.values().map(|e| e.quic.clone()).collect();
    let load = quic_load(quic.clone(), std::sync::Arc::clone(&stop));
    ctl(&cluster, &["rollout", "level", "bad", "3"]);
    let rollout = wait_for("the error guard trips", Duration::from_secs(30), || {
        let (_, r) = cluster.voter.get("/v1/rollouts/bad");
        (r["state"] == "tripped").then_some(r)
    });
    stop.store(true, Ordering::Relaxed);
    let refused = load.join().unwrap();
    assert!(refused > 0, "the drill refused sessions");
    assert_eq!(rollout["level"], 0, "on_trip off: {rollout}");
    let last = rollout["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["actor"], "guard", "{rollout}");
    let what = last["what"].as_str().unwrap();
    assert!(what.starts_with("tripped by errors: error rate") && what.ends_with("level 3 -> 0"), "{what}");
    // The deciding windows: bad, two in a row, with enough sessions.
    let windows = rollout["windows"].as_array().unwrap();
    let deciding = windows.iter().rev().find(|w| w["bad_in_a_row"] == 2).expect("the deciding window");
    assert_eq!(deciding["verdict"], "bad", "{deciding}");
    assert!(deciding["treatment_sessions"].as_u64().unwrap() >= 10, "{deciding}");
    let decided = deciding["ended_at_ms"].as_u64().unwrap();
    let committed = last["at_ms"].as_u64().unwrap();
    println!(
        "error trip: committed {} ms after the deciding window ended",
        committed.saturating_sub(decided)
    );
    let (_, audit) = cluster.voter.get("/v1/audit");
    let events = audit["events"].as_array().unwrap();
    assert!(events.iter().any(|e| e["action"] == "rollout.trip" && e["target"] == "bad"), "{audit}");
    // Every edge gives new sessions the baseline and refuses none.
    for (name, edge) in &cluster.edges {
        let probes: Vec<_> = (0..20).map(|i| (edge.quic.clone(), format!("after-{i}"), vec![])).collect();
        let variants = wait_for(&format!("edge {name} falls back"), Duration::from_secs(10), || {
            let v = quic_variants(&probes);
            v.iter().all(|r| r.as_deref() == Ok("bad=baseline")).then_some(v)
        });
        assert_eq!(variants.len(), 20);
        let errors = edge
            .metric(
                "ferry_rollout_errors_total{rollout=\"bad\",cohort=\"treatment\",reason=\"fault_injected\"}",
            )
            .unwrap_or(0.0);
        assert!(errors > 0.0, "edge {name} counted its refusals");
    }
}

/// Whether an SDP offers generic NACK feedback (`a=rtcp-fb:<pt> nack`, not `nack pli`).
fn offers_nack(sdp: &str) -> bool {
    sdp.lines().any(|l| l.trim().strip_prefix("a=rtcp-fb:").is_some_and(|rest| rest.ends_with(" nack")))
}

#[test]
fn rollout_overrides_apply_per_session_and_edge_wide_where_the_gates_say() {
    let _heavy = heavy();
    let dir = TempDir::new("rollout-overrides");
    let cluster = whep_cluster(dir.path(), &["--allow-anonymous"]);
    let stream = "live/t";
    let mut cmd = ferry();
    cmd.args(["publish", "--edge", &cluster.edges["o"].quic, "--stream", stream, "--insecure"])
        .args(["--synthetic", "--synthetic-vp8", "--duration", "300s"])
        .stdout(std::process::Stdio::null());
    let _publisher = Proc::spawn("publisher", &mut cmd);
    wait_for_stream(&cluster.edges["o"]);
    let offer = vp8_offer("recvonly").replace(
        "a=rtpmap:96 VP8/90000\r\n",
        "a=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\n",
    );
    let whep = |edge: &Edge| -> (String, String) {
        let headers = [("Content-Type", "application/sdp")];
        let (hdrs, answer) = wait_for("a WHEP session", Duration::from_secs(20), || {
            let (status, hdrs, answer) =
                http(&edge.http, "POST", &format!("/whep/{stream}"), &headers, offer.as_bytes());
            match status {
                // Ports freeing up, or the edge still learning the new stream's origin.
                503 | 404 => None,
                201 => Some((hdrs, answer)),
                other => panic!("HTTP {other}: {answer}"),
            }
        });
        let location = header(&hdrs, "location").unwrap().to_owned();
        assert_eq!(http(&edge.http, "DELETE", &location, &[], b"").0, 200);
        (header(&hdrs, "ferry-variant").unwrap_or("").to_owned(), answer)
    };
    assert!(offers_nack(&offer), "the offer asks for NACK");
    let (_, answer) = whep(&cluster.edges["a"]);
    assert!(!offers_nack(&answer), "WHEP viewers get no NACK by default:\n{answer}");
    let spec = r#"{"id":"tune","spec":{"override":{"congestion":"bbr","webrtc_nack":true},"gates":{"edges":["a"]}}}"#;
    assert_eq!(cluster.voter.send("POST", "/v1/rollouts", None, spec).0, 200);
    assert_eq!(cluster.voter.send("POST", "/v1/rollouts/tune/level", None, r#"{"level":2}"#).0, 200);
    // Per session: a treated WHEP viewer on a gets NACK, one on b does not.
    let answer = wait_for("edge a treats WHEP viewers", Duration::from_secs(10), || {
        let (variant, answer) = whep(&cluster.edges["a"]);
        (variant == "tune=treatment").then_some(answer)
    });
    assert!(offers_nack(&answer), "treated viewers answer NACKs:\n{answer}");
    let (variant, answer) = whep(&cluster.edges["b"]);
    assert_eq!(variant, "tune=baseline");
    assert!(!offers_nack(&answer), "{answer}");
    // Edge-wide: edge a accepts new QUIC connections with BBR, edge b with cubic.
    let bbr = |edge: &Edge| {
        edge.metric("ferry_quic_congestion_connections_total{controller=\"bbr\"}").unwrap_or(0.0)
    };
    let sessions: Vec<_> = ["a", "b"]
        .iter()
        .flat_map(|e| (0..3).map(move |i| (e, i)))
        .map(|(e, i)| (cluster.edges[*e].quic.clone(), format!("c-{e}-{i}"), vec![]))
        .collect();
    let variants = quic_variants(&sessions);
    assert!(variants[..3].iter().all(|v| v.as_deref() == Ok("tune=treatment")), "{variants:?}");
    assert!(variants[3..].iter().all(|v| v.as_deref() == Ok("tune=baseline")), "{variants:?}");
    assert!(bbr(&cluster.edges["a"]) >= 3.0, "edge a: {:?}", cluster.edges["a"].metrics());
    assert_eq!(bbr(&cluster.edges["b"]), 0.0);
    assert!(
        cluster.edges["b"]
            .metric("ferry_quic_congestion_connections_total{controller=\"cubic\"}")
            .unwrap_or(0.0)
            >= 3.0
    );
    // A treated WHEP session that never connects (ICE fails, or the edge's connect
    // timeout passes): a mid-session error of the treatment's cohort.
    let headers = [("Content-Type", "application/sdp")];
    let (status, hdrs, body) =
        http(&cluster.edges["a"].http, "POST", &format!("/whep/{stream}"), &headers, offer.as_bytes());
    assert_eq!((status, header(&hdrs, "ferry-variant")), (201, Some("tune=treatment")), "{body}");
    let errors = || {
        let m = cluster.edges["a"].metrics();
        let prefix = "ferry_rollout_errors_total{rollout=\"tune\",cohort=\"treatment\",reason=";
        let failed: Vec<String> = m.lines().filter(|l| l.starts_with(prefix)).map(str::to_owned).collect();
        (!failed.is_empty()).then_some(failed)
    };
    let failed =
        wait_for("the abandoned session counts as a treatment error", Duration::from_secs(40), errors);
    assert!(
        failed.iter().all(|l| l.contains("ice_failed") || l.contains("connect_timeout")) && failed.len() == 1,
        "{failed:?}"
    );
    // A live treated WHEP viewer moves back to the edge's budget when the operator
    // lowers its rollout's level.
    let spec = r#"{"id":"lag","spec":{"override":{"max_lag_ms":20000},"gates":{"edges":["a"]}}}"#;
    assert_eq!(cluster.voter.send("POST", "/v1/rollouts", None, spec).0, 200);
    assert_eq!(cluster.voter.send("POST", "/v1/rollouts/lag/level", None, r#"{"level":2}"#).0, 200);
    let a = &cluster.edges["a"];
    let treated = || a.metric("ferry_rollout_sessions_total{rollout=\"lag\",cohort=\"treatment\"}");
    wait_for("edge a treats new sessions", Duration::from_secs(10), || {
        (whep(a).0.contains("lag=treatment")).then_some(())
    });
    let before = treated().unwrap_or(0.0);
    let mut cmd = ferry();
    cmd.args(["watch", "--whep", &format!("http://{}/whep/{stream}", a.http)])
        .args(["--duration", "300s", "--json"])
        .stdout(std::process::Stdio::null());
    let _viewer = Proc::spawn("treated whep viewer", &mut cmd);
    wait_for("a live treated WHEP viewer", Duration::from_secs(30), || {
        let live = a.metric("ferry_webrtc_sessions{direction=\"whep\"}").unwrap_or(0.0) >= 1.0;
        (live && treated() > Some(before)).then_some(())
    });
    ctl(&cluster, &["rollout", "level", "lag", "1"]);
    wait_for("the live viewer moves back", Duration::from_secs(10), || {
        (a.metric("ferry_rollout_moved_back_sessions_total{rollout=\"lag\"}") == Some(1.0)).then_some(())
    });

    // Pacing cannot be rolled out: quinn always paces and has no switch.
    let (code, answer) = cluster.voter.send(
        "POST",
        "/v1/rollouts",
        None,
        r#"{"id":"pace","spec":{"override":{"pacing":false}}}"#,
    );
    assert_eq!(code, 400, "{answer}");
    assert!(answer.to_string().contains("override.pacing: not supported"), "{answer}");
}
