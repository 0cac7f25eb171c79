//! One cluster of real processes on loopback: 3 voters and 3 edges in 2 regions that
//! gossip, register and route; viewers and a publisher that follow routing; and the
//! failures it must ride out: a dead edge, no control plane at all, a dead origin.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use support::*;

/// Every process's gossip address, known up front so each can seed from all.
struct Plan {
    voter_gossip: Vec<String>,
    edge_gossip: BTreeMap<&'static str, String>,
}

impl Plan {
    fn seeds(&self) -> String {
        self.voter_gossip.iter().chain(self.edge_gossip.values()).cloned().collect::<Vec<_>>().join(",")
    }
}

fn start_edge(plan: &Plan, id: &'static str, region: &str, control: &str) -> Edge {
    let gossip = &plan.edge_gossip[id];
    let seeds = plan.seeds();
    Edge::start(
        id,
        &[
            "--region",
            region,
            "--gossip-listen",
            gossip,
            "--gossip-seeds",
            &seeds,
            "--control-plane",
            control,
            "--control-token",
            TOKEN,
            "--relay-linger",
            "2s",
        ],
    )
}

fn viewer_connections(edge: &Edge) -> f64 {
    edge.metric("ferry_connections{role=\"viewer\"}").unwrap_or(0.0)
}

/// What `/v1/route` answers now.
fn route(voter: &Voter, stream: &str, region: &str) -> Value {
    let (status, body) = http_json(
        &voter.http,
        "GET",
        &format!("/v1/route/{stream}?kind=quic&region={region}"),
        None,
        &[],
        None,
    );
    assert_eq!(status, 200, "route: {body}");
    body
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[test]
fn a_cluster_routes_fails_over_and_keeps_playing_without_its_control_plane() {
    let _heavy = heavy();
    let dir = TempDir::new("cluster");
    let plan = Plan {
        voter_gossip: (0..3).map(|_| format!("127.0.0.1:{}", free_udp_port())).collect(),
        edge_gossip: ["e1", "e2", "e3"]
            .into_iter()
            .map(|e| (e, format!("127.0.0.1:{}", free_udp_port())))
            .collect(),
    };
    let seeds = plan.seeds();
    let peers: Vec<String> = (1..=3).map(|id| format!("{id}=127.0.0.1:{}", free_udp_port())).collect();
    let peers = peers.join(",");
    let mut voters: Vec<Voter> = (1..=3u64)
        .map(|id| {
            let gossip = plan.voter_gossip[id as usize - 1].clone();
            // Fixed HTTP ports: the edges' --control-plane URLs must survive restarts.
            let http = format!("127.0.0.1:{}", free_tcp_port());
            let extra = ["--gossip-listen", &gossip, "--gossip-seeds", &seeds, "--http-listen", &http];
            Voter::start(id, &peers, &dir.path().join(format!("v{id}")), &extra)
        })
        .collect();
    wait_for_leader(&voters.iter().collect::<Vec<_>>());
    let control: String = voters.iter().map(|v| format!("http://{}", v.http)).collect::<Vec<_>>().join(",");

    let mut edges: BTreeMap<&str, Edge> = BTreeMap::new();
    for (id, region) in [("e1", "r1"), ("e2", "r1"), ("e3", "r2")] {
        edges.insert(id, start_edge(&plan, id, region, &control));
    }

    // Registration and gossip meet in /v1/edges on every voter.
    for v in &voters {
        wait_for("3 registered edges that gossip says are alive", Duration::from_secs(30), || {
            let (_, body) = v.get("/v1/edges?stale=true");
            let edges = body["edges"].as_array()?;
            (edges.len() == 3 && edges.iter().all(|e| e["gossip"]["alive"] == true)).then_some(())
        });
    }

    // A routed publisher: the stream's origin is committed by the edge it lands on.
    let stream = "live/cluster";
    let mut publisher = ferry();
    publisher
        .args([
            "publish",
            "--control-plane",
            &control,
            "--stream",
            stream,
            "--synthetic",
            "--insecure",
            "--json",
        ])
        .args(["--duration", "150s", "--bitrate", "300k"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let publisher = Proc::spawn("publisher", &mut publisher);
    let origin = wait_for("the stream's origin in the control plane", Duration::from_secs(20), || {
        let (_, body) = voters[0].get(&format!("/v1/streams/{stream}?stale=true"));
        body["origin"].as_str().map(str::to_owned)
    });
    println!("origin: {origin}");

    // 20 viewers, 10 per region, each asking /v1/route.
    let expected: BTreeMap<&str, String> = ["r1", "r2"]
        .into_iter()
        .map(|r| (r, route(&voters[0], stream, r)["edge"].as_str().unwrap().to_owned()))
        .collect();
    println!("routes before the viewers: {expected:?}");
    // WHEP on the control plane redirects to the routed edge; no operator token needed.
    let (status, body) =
        http_json(&voters[1].http, "POST", &format!("/whep/{stream}?region=r2"), None, &[], Some("v=0"));
    assert_eq!(status, 307, "{body}");
    let r2_http = &edges[expected["r2"].as_str()].http;
    assert_eq!(body["location"], format!("http://{r2_http}/whep/{stream}"), "{body}");
    let (status, body) = http_json(&voters[1].http, "GET", "/v1/route/..%2Fetc?kind=quic", None, &[], None);
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("bad_request")), "{body}");
    let mut viewers = Vec::new();
    for i in 0..20 {
        let region = if i % 2 == 0 { "r1" } else { "r2" };
        let mut cmd = ferry();
        cmd.args(["watch", "--control-plane", &control, "--region", region, "--stream", stream])
            .args(["--insecure", "--json", "--duration", "100s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        viewers.push((region, Proc::spawn(&format!("viewer {i}"), &mut cmd)));
    }
    // Placement keeps the stream on one edge per region while load is low: every
    // viewer is where the route pointed.
    wait_for("20 viewers on the routed edges", Duration::from_secs(30), || {
        let mut want: BTreeMap<&str, f64> = BTreeMap::new();
        for edge in expected.values() {
            *want.entry(edge.as_str()).or_default() += 10.0;
        }
        edges
            .iter()
            .all(|(id, e)| viewer_connections(e) == want.get(id).copied().unwrap_or(0.0))
            .then_some(())
    });

    // --- Kill -9 an edge with viewers that is not the origin.
    let victim = expected.values().find(|e| **e != origin).cloned().expect("a non-origin edge with viewers");
    println!("killing {victim}");
    let killed_at = std::time::Instant::now();
    drop(edges.remove(victim.as_str()));
    for v in &voters {
        wait_for("every voter's gossip marks the edge dead", Duration::from_secs(10), || {
            let (_, body) = v.get("/v1/members");
            let m = body["members"].as_array()?.iter().find(|m| m["id"] == victim.as_str())?.clone();
            (m["alive"] == false).then_some(())
        });
    }
    for e in edges.values() {
        wait_for("every edge's gossip marks it dead", Duration::from_secs(10), || {
            (e.metric("ferry_gossip_members{state=\"dead\"}").unwrap_or(0.0) >= 1.0).then_some(())
        });
    }
    println!("dead everywhere after {:?}", killed_at.elapsed());
    wait_for("all 20 viewers on the surviving edges", Duration::from_secs(20), || {
        (edges.values().map(viewer_connections).sum::<f64>() == 20.0).then_some(())
    });
    println!("viewers back after {:?}", killed_at.elapsed());

    // --- Kill -9 every voter: the data plane keeps going on its own.
    let frames_before: f64 = edges.values().map(|e| e.metric("ferry_frames_out_total").unwrap_or(0.0)).sum();
    for v in &voters {
        v.signal("-KILL");
    }
    // A new edge (the dead one, restarted) finds the origin through gossip alone and
    // serves a new viewer.
    let region = if victim == "e3" { "r2" } else { "r1" };
    let reborn = start_edge(&plan, leak(&victim), region, &control);
    wait_for("the new edge to learn the origin through gossip", Duration::from_secs(20), || {
        let out = watch(&reborn, stream, &["--duration", "2s"]).wait_output(Duration::from_secs(30));
        let stats: Value = serde_json::from_slice(&out.stdout).ok()?;
        (stats["frames"].as_u64().unwrap_or(0) > 0).then_some(())
    });
    wait_for("frames keep flowing to the existing viewers", Duration::from_secs(10), || {
        let now: f64 = edges.values().map(|e| e.metric("ferry_frames_out_total").unwrap_or(0.0)).sum();
        (now > frames_before + 20.0 * 30.0).then_some(())
    });
    edges.insert(leak(&victim), reborn);

    // Voters come back; edges re-sync (the restarted edge registers its new address).
    voters = voters.into_iter().map(Voter::restart).collect();
    wait_for_leader(&voters.iter().collect::<Vec<_>>());
    let reborn_quic = edges[victim.as_str()].quic.clone();
    wait_for("the restarted edge re-registered", Duration::from_secs(30), || {
        let (_, body) = voters[0].get(&format!("/v1/edges/{victim}?stale=true"));
        (body["quic_addr"] == reborn_quic.as_str()).then_some(())
    });

    // --- Kill -9 the origin: the publisher moves, the viewers follow.
    println!("killing the origin {origin}");
    drop(edges.remove(origin.as_str()));
    let new_origin = wait_for("a new origin for the stream", Duration::from_secs(30), || {
        let (_, body) = voters[0].get(&format!("/v1/streams/{stream}?stale=true"));
        body["origin"].as_str().filter(|o| *o != origin).map(str::to_owned)
    });
    println!("new origin: {new_origin}");
    let frames_after_origin: f64 =
        edges.values().map(|e| e.metric("ferry_frames_out_total").unwrap_or(0.0)).sum();
    wait_for("viewers play again after the origin moved", Duration::from_secs(30), || {
        let now: f64 = edges.values().map(|e| e.metric("ferry_frames_out_total").unwrap_or(0.0)).sum();
        let viewers: f64 = edges.values().map(viewer_connections).sum();
        (viewers >= 20.0 && now > frames_after_origin + 20.0 * 30.0).then_some(())
    });

    // --- Drain (SIGTERM) the other edge: it exits cleanly, its viewers move.
    let drained_id = edges.keys().find(|id| **id != new_origin.as_str()).copied().unwrap();
    let drained = edges.remove(drained_id).unwrap();
    let moving = viewer_connections(&drained);
    println!("draining {drained_id} with {moving} viewers");
    drained.proc.terminate();
    let out = drained.proc.wait_output(Duration::from_secs(30));
    assert!(out.status.success(), "drained edge exit: {:?}", out.status);
    let last = &edges[new_origin.as_str()];
    wait_for("all viewers on the remaining edge", Duration::from_secs(20), || {
        (viewer_connections(last) == 20.0).then_some(())
    });

    // Stop the viewers (SIGTERM ends them cleanly with their stats) and check each.
    let mut gaps = Vec::new();
    for (region, viewer) in viewers {
        viewer.terminate();
        let out = json_output(viewer, Duration::from_secs(20));
        let legs = out["legs"].as_array().unwrap();
        assert!(out["frames"].as_u64().unwrap() > 0, "{region} viewer: {out}");
        assert!(legs.last().unwrap()["frames"].as_u64().unwrap() > 0, "the last leg plays: {out}");
        // Within a leg nothing is lost; a group may be skipped where a leg begins
        // (joining a relay mid-failover), never more than once per leg.
        assert_eq!(out["lost_frames"], 0, "{out}");
        assert!(out["skipped_groups"].as_u64().unwrap() <= legs.len() as u64, "{out}");
        for leg in legs.iter().skip(1) {
            if let Some(gap) = leg["gap_ms"].as_f64() {
                gaps.push(gap);
            }
        }
        // Legs end only for what we caused: the dead edge, the dead origin, the drain.
        assert!(legs.len() <= 5, "too many reconnects: {out}");
    }
    drop(publisher);
    gaps.sort_by(f64::total_cmp);
    assert!(!gaps.is_empty(), "some viewers had to reconnect");
    println!(
        "media gap per reconnect (ms): n={} p50={:.0} p99={:.0} max={:.0}",
        gaps.len(),
        percentile(&gaps, 0.5),
        percentile(&gaps, 0.99),
        gaps.last().unwrap()
    );
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}
