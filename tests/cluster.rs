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
    /// The cluster CA directory (`ferry ca init`).
    ca: std::path::PathBuf,
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
    let mut args: Vec<String> = [
        "--region",
        region,
        "--gossip-listen",
        gossip,
        "--gossip-seeds",
        &seeds,
        "--control-plane",
        control,
        "--relay-linger",
        "2s",
    ]
    .map(String::from)
    .to_vec();
    args.extend(cluster_cert_args(&plan.ca, id, "cluster"));
    Edge::start(id, &strs(&args))
}

/// `ferry ca init` in `dir`; a second init must refuse to overwrite it.
fn ca_init(dir: &std::path::Path) -> std::path::PathBuf {
    let out = ferry().args(["ca", "init", "--dir"]).arg(dir).output().unwrap();
    assert!(out.status.success(), "ca init: {}", String::from_utf8_lossy(&out.stderr));
    let again = ferry().args(["ca", "init", "--dir"]).arg(dir).output().unwrap();
    assert!(!again.status.success(), "ca init overwrote a CA");
    dir.to_owned()
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
        ca: ca_init(&dir.path().join("ca")),
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
            // Raft between voters is mutual TLS with the cluster CA.
            let mut extra: Vec<String> =
                ["--gossip-listen", &gossip, "--gossip-seeds", &seeds, "--http-listen", &http]
                    .map(String::from)
                    .to_vec();
            extra.extend(cluster_cert_args(&plan.ca, &format!("voter-{id}"), "voter"));
            extra.push("--require-edge-proofs".into());
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            Voter::start(id, &peers, &dir.path().join(format!("v{id}")), &extra)
        })
        .collect();
    wait_for_leader(&voters.iter().collect::<Vec<_>>());
    let control: String = voters.iter().map(|v| v.http.clone()).collect::<Vec<_>>().join(",");

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
        .args(["--duration", "400s", "--bitrate", "300k"])
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
    // A WHIP publisher of the stream on another edge is sent to its origin.
    let other = edges.keys().find(|id| **id != origin.as_str()).copied().unwrap();
    // (Once gossip has spread who originates the stream.)
    let body = wait_for("a WHIP redirect to the origin", Duration::from_secs(10), || {
        let (status, body) =
            http_json(&edges[other].http, "POST", &format!("/whip/{stream}"), None, &[], Some("v=0"));
        (status == 307).then_some(body)
    });
    assert_eq!(body["location"], format!("http://{}/whip/{stream}", edges[origin.as_str()].http), "{body}");
    let (status, body) = http_json(&voters[1].http, "GET", "/v1/route/..%2Fetc?kind=quic", None, &[], None);
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("bad_request")), "{body}");
    // Browsers on other origins may ask for a route: the CORS preflight answers 204.
    let preflight = http::exchange(
        &voters[1].http,
        "OPTIONS",
        &format!("/v1/route/{stream}"),
        &[("origin", "https://player.example"), ("access-control-request-method", "GET")],
        b"",
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(preflight.status, 204);
    assert!(preflight.headers.iter().any(|(k, v)| k == "access-control-allow-origin" && v == "*"));
    let mut viewers = Vec::new();
    for i in 0..20 {
        let region = if i % 2 == 0 { "r1" } else { "r2" };
        let mut cmd = ferry();
        cmd.args(["watch", "--control-plane", &control, "--region", region, "--stream", stream])
            .args(["--insecure", "--json", "--duration", "300s"])
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

    // --- Kill -9 every voter for 60 s: the data plane keeps going on its own.
    let voters_down_at = unix_ms();
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
    // Stay without a control plane for 60 s in all, frames flowing throughout.
    while unix_ms() < voters_down_at + 60_000 {
        let before: f64 = edges.values().map(|e| e.metric("ferry_frames_out_total").unwrap_or(0.0)).sum();
        wait_for("frames while the control plane is down", Duration::from_secs(10), || {
            let now: f64 = edges.values().map(|e| e.metric("ferry_frames_out_total").unwrap_or(0.0)).sum();
            (now > before + 20.0 * 30.0).then_some(())
        });
    }
    let voters_up_at = unix_ms();

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
    wait_until("viewers play again after the origin moved", Duration::from_secs(30), || {
        let now: f64 = edges.values().map(|e| e.metric("ferry_frames_out_total").unwrap_or(0.0)).sum();
        let viewers: f64 = edges.values().map(viewer_connections).sum();
        if viewers >= 20.0 && now > frames_after_origin + 20.0 * 30.0 {
            return Ok(());
        }
        // What each edge and the voters see, for a failure to explain itself.
        let per_edge: Vec<String> = edges
            .iter()
            .map(|(id, e)| {
                format!(
                    "{id}: {} viewers, {} frames out, gossip {}",
                    viewer_connections(e),
                    e.metric("ferry_frames_out_total").unwrap_or(0.0),
                    e.metrics()
                        .lines()
                        .filter(|l| l.starts_with("ferry_gossip_members{"))
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            })
            .collect();
        let (_, members) = voters[0].get("/v1/members?stale=true");
        let alive: Vec<String> = members["members"]
            .as_array()
            .map(|ms| ms.iter().map(|m| format!("{}={}", m["id"], m["alive"])).collect())
            .unwrap_or_default();
        let (_, record) = voters[0].get(&format!("/v1/streams/{stream}?stale=true"));
        Err(format!(
            "{viewers} viewers, {} frames since the move; {}; voter 1 sees {}; stream {record}",
            now - frames_after_origin,
            per_edge.join("; "),
            alive.join(" ")
        ))
    });

    // --- Drain the other edge through the control plane: it exits cleanly, its viewers move.
    let drained_id = edges.keys().find(|id| **id != new_origin.as_str()).copied().unwrap();
    let drained = edges.remove(drained_id).unwrap();
    let moving = viewer_connections(&drained);
    println!("draining {drained_id} with {moving} viewers");
    let out = ferry()
        .args(["ctl", "--control", &control, "--token", TOKEN, "--ca-file"])
        .arg(plan.ca.join("ca.pem"))
        .args(["edges", "drain", drained_id])
        .output()
        .unwrap();
    assert!(out.status.success(), "ctl edges drain: {}", String::from_utf8_lossy(&out.stderr));
    let out = drained.proc.wait_output(Duration::from_secs(40));
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
        // No viewer of the stream noticed the control plane was gone.
        let ended_while_down = legs.iter().filter(|l| {
            let t = l["ended_unix_ms"].as_u64().unwrap();
            t > voters_down_at && t < voters_up_at
        });
        assert_eq!(ended_while_down.count(), 0, "a leg ended while the voters were down: {out}");
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

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

/// Relaying is internal: only an edge with a certificate from the cluster CA may pull
/// from another edge; a process that joins the gossip without registering is never
/// routed to.
#[test]
fn only_cluster_members_relay_and_get_routed() {
    let dir = TempDir::new("mtls");
    let ca = ca_init(&dir.path().join("ca"));
    let rogue_ca = ca_init(&dir.path().join("rogue-ca"));
    let member = |id: &str| cluster_cert_args(&ca, id, "cluster");

    let a = Edge::start("a", &strs(&member("a")));
    let _publisher = publish_synthetic(&a, "live/m", "60s");
    wait_for_stream(&a);

    // A member relays.
    let mut b_args = member("b");
    b_args.extend(["--upstream".to_owned(), a.quic.clone()]);
    let b = Edge::start("b", &b_args.iter().map(String::as_str).collect::<Vec<_>>());
    let out = json_output(watch(&b, "live/m", &["--duration", "1s"]), Duration::from_secs(30));
    assert!(out["frames"].as_u64().unwrap() > 0, "{out}");

    // No client certificate (the upstream itself verified against the cluster CA): refused.
    let ca_pem = ca.join("ca.pem").to_string_lossy().into_owned();
    let c = Edge::start("c", &["--upstream", &a.quic, "--upstream-ca-file", &ca_pem]);
    let mut cmd = ferry();
    cmd.args(["watch", "--edge", &c.quic, "--stream", "live/m", "--insecure", "--duration", "1s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = Proc::spawn("watcher", &mut cmd).wait_output(Duration::from_secs(30));
    assert!(!out.status.success(), "an edge without a cluster certificate relayed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cluster certificate"), "{stderr}");
    assert!(a.metric("ferry_errors_total{code=\"unauthorized\"}").unwrap_or(0.0) >= 1.0);

    // A certificate from another CA: the handshake fails both ways.
    let mut d_args = cluster_cert_args(&rogue_ca, "d", "cluster");
    d_args.extend(["--upstream".to_owned(), a.quic.clone()]);
    let d = Edge::start("d", &d_args.iter().map(String::as_str).collect::<Vec<_>>());
    let out = watch(&d, "live/m", &["--duration", "1s"]).wait_output(Duration::from_secs(30));
    assert!(!out.status.success(), "an edge with a foreign certificate relayed");

    // Registering needs a cluster certificate, and gossip alone does not make an edge
    // routable: a voter that knows the cluster CA, a member edge in r1, and an edge in
    // r9 with the operator token but no cluster certificate.
    let voter_gossip = format!("127.0.0.1:{}", free_udp_port());
    let peers = format!("1=127.0.0.1:{}", free_udp_port());
    let mut voter_args = vec!["--gossip-listen".to_owned(), voter_gossip.clone()];
    voter_args.extend(cluster_cert_args(&ca, "voter-1", "voter"));
    voter_args.push("--require-edge-proofs".into());
    let voter = Voter::start(1, &peers, &dir.path().join("v1"), &strs(&voter_args));
    wait_for_leader(&[&voter]);
    let control = voter.http.clone();
    let edge_args = |region: &str| -> Vec<String> {
        let gossip = format!("127.0.0.1:{}", free_udp_port());
        ["--region", region, "--gossip-listen", &gossip, "--gossip-seeds", &voter_gossip]
            .into_iter()
            .map(String::from)
            .collect()
    };
    // The member reaches the API with its certificate; the rogue has none, so it cannot
    // even call the API (https:// needs one) and only gossips.
    let mut registered_args = edge_args("r1");
    registered_args.extend(["--control-plane".to_owned(), control.clone()]);
    registered_args.extend(member("registered"));
    let _registered = Edge::start("registered", &strs(&registered_args));
    let _rogue = Edge::start("rogue", &strs(&edge_args("r9")));
    wait_for("the voter to see both through gossip", Duration::from_secs(20), || {
        let (_, body) = voter.get("/v1/members");
        let alive =
            body["members"].as_array()?.iter().filter(|m| m["role"] == "edge" && m["alive"] == true).count();
        let (_, edges) = voter.get("/v1/edges?stale=true");
        (alive == 2 && edges["edges"].as_array()?.len() == 1).then_some(())
    });
    let (_, edges) = voter.get("/v1/edges");
    assert_eq!(edges["edges"][0]["id"], "registered", "{edges}");
    // The same refusal, by hand: the token alone is not enough.
    let body = r#"{"region":"r9","quic_addr":"127.0.0.1:1","http_addr":"127.0.0.1:2"}"#;
    let (status, answer) = voter.send("PUT", "/v1/edges/rogue", None, body);
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (401, Some("node_certificate_required")),
        "{answer}"
    );
    let (status, body) =
        http_json(&voter.http, "GET", "/v1/route/live/x?region=r9&kind=quic", None, &[], None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["edge"].as_str(), body["reason"].as_str()),
        (Some("registered"), Some("other_region")),
        "{body}"
    );
}

/// A network partition (netns): the edge inside the namespace is cut off from
/// everyone, is marked dead, its viewers fail over; healed, it rejoins and serves.
#[test]
fn a_partitioned_edge_is_failed_over_and_rejoins_when_healed() {
    let _heavy = heavy();
    let dir = TempDir::new("partition");
    let ns = netns::NetNs::create("partition");
    let (host, inside) = (ns.host_ip().to_string(), ns.ns_ip().to_string());
    let on_host = |port: u16| format!("{host}:{port}");

    let voter_gossip = on_host(free_udp_port());
    let peers = format!("1=127.0.0.1:{}", free_udp_port());
    let http = on_host(free_tcp_port());
    let voter = Voter::start(
        1,
        &peers,
        &dir.path().join("v1"),
        // Plain HTTP: the edge in the namespace reaches the voter at the host's address,
        // which the test certificates do not name (this test is about partitions).
        &["--gossip-listen", &voter_gossip, "--http-listen", &http, "--insecure-http"],
    );
    wait_for_leader(&[&voter]);
    let control = voter.http.clone();
    let edge_args = |region: &str, ip: &str| -> Vec<String> {
        [
            "--region",
            region,
            "--quic-listen",
            &format!("{ip}:0"),
            "--http-listen",
            &format!("{ip}:0"),
            "--gossip-listen",
            &format!("{ip}:{}", free_udp_port()),
            "--gossip-seeds",
            &voter_gossip,
            "--control-plane",
            &control,
            "--control-token",
            TOKEN,
            "--relay-linger",
            "2s",
        ]
        .map(String::from)
        .to_vec()
    };
    let host_edge = Edge::start("h1", &strs(&edge_args("r1", &host)));
    let cut_edge = Edge::start_with(ns.command(ferry_bin()), "n1", &strs(&edge_args("r2", &inside)));

    let stream = "live/partition";
    let _publisher = publish_synthetic(&host_edge, stream, "120s");
    wait_for("the origin committed", Duration::from_secs(20), || {
        let (_, body) = voter.get(&format!("/v1/streams/{stream}?stale=true"));
        (body["origin"] == "h1").then_some(())
    });
    wait_for("both edges alive in gossip", Duration::from_secs(20), || {
        let (_, body) = voter.get("/v1/edges?stale=true");
        let edges = body["edges"].as_array()?;
        (edges.len() == 2 && edges.iter().all(|e| e["gossip"]["alive"] == true)).then_some(())
    });

    let viewers: Vec<Proc> = (0..6)
        .map(|i| {
            let mut cmd = ferry();
            cmd.args(["watch", "--control-plane", &control, "--region", "r2", "--stream", stream])
                .args(["--insecure", "--json", "--duration", "100s"])
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            Proc::spawn(&format!("viewer {i}"), &mut cmd)
        })
        .collect();
    wait_for("6 viewers on the edge in the namespace", Duration::from_secs(30), || {
        (viewer_connections(&cut_edge) == 6.0).then_some(())
    });

    // Partition.
    ns.set_link(false);
    let cut_at = std::time::Instant::now();
    wait_for("the voter marks the cut edge dead", Duration::from_secs(10), || {
        let (_, body) = voter.get("/v1/members");
        let m = body["members"].as_array()?.iter().find(|m| m["id"] == "n1")?.clone();
        (m["alive"] == false).then_some(())
    });
    wait_for("the host edge marks it dead", Duration::from_secs(10), || {
        (host_edge.metric("ferry_gossip_members{state=\"dead\"}").unwrap_or(0.0) >= 1.0).then_some(())
    });
    println!("partitioned edge dead after {:?}", cut_at.elapsed());
    wait_for("its viewers on the host edge", Duration::from_secs(20), || {
        (viewer_connections(&host_edge) == 6.0).then_some(())
    });
    println!("viewers moved after {:?}", cut_at.elapsed());
    let (_, body) = voter.get(&format!("/v1/streams/{stream}"));
    assert_eq!(body["origin"], "h1", "the stream keeps its origin: {body}");

    // Heal: it is alive again and serves a new viewer (pulling from the origin).
    ns.set_link(true);
    wait_for("the healed edge alive again", Duration::from_secs(20), || {
        let (_, body) = voter.get("/v1/members");
        let m = body["members"].as_array()?.iter().find(|m| m["id"] == "n1")?.clone();
        (m["alive"] == true).then_some(())
    });
    // The healed edge finds the origin by its own gossip view (not the voter's): a
    // viewer that came while it still showed the origin dead would be refused.
    wait_for("the healed edge sees the origin and the voter alive again", Duration::from_secs(20), || {
        let alive = cut_edge.metric("ferry_gossip_members{state=\"alive\"}")?;
        let dead = cut_edge.metric("ferry_gossip_members{state=\"dead\"}")?;
        (alive >= 3.0 && dead == 0.0).then_some(())
    });
    let out = json_output(watch(&cut_edge, stream, &["--duration", "2s"]), Duration::from_secs(30));
    assert!(out["frames"].as_u64().unwrap() > 0, "the healed edge serves: {out}");
    let (_, body) = voter.get(&format!("/v1/streams/{stream}"));
    assert_eq!(body["origin"], "h1", "{body}");

    for viewer in viewers {
        viewer.terminate();
        let out = json_output(viewer, Duration::from_secs(20));
        assert!(out["legs"].as_array().unwrap().last().unwrap()["frames"].as_u64().unwrap() > 0, "{out}");
        assert_eq!(out["lost_frames"], 0, "{out}");
    }

    // The origin dies with a publisher that cannot move (static --edge): the leader
    // commits "origin lost"; a routed publisher then takes the stream over elsewhere.
    drop(host_edge);
    wait_for("the stream marked origin lost", Duration::from_secs(20), || {
        let (_, body) = voter.get(&format!("/v1/streams/{stream}"));
        (body["origin_lost"] == true && body["origin"] == "h1").then_some(())
    });
    let (_, audit) = voter.get("/v1/audit");
    let failed = audit["events"].as_array().unwrap().iter().find(|e| e["action"] == "edge.failed").cloned();
    assert_eq!(failed.as_ref().map(|e| e["actor"].clone()), Some(Value::from("failover")), "{audit}");
    let mut cmd = ferry();
    cmd.args(["publish", "--control-plane", &control, "--stream", stream, "--synthetic", "--insecure"])
        .args(["--duration", "60s"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let _new_publisher = Proc::spawn("routed publisher", &mut cmd);
    wait_for("the stream's origin found again", Duration::from_secs(20), || {
        let (_, body) = voter.get(&format!("/v1/streams/{stream}"));
        (body["origin"] == "n1" && body["origin_lost"] == false).then_some(())
    });
}

/// `ferry bench failover` runs end to end and reports every peer and every viewer
/// (numbers are not judged here; docs/benchmarks.md has them).
/// One voter with a cluster certificate and gossip; returns it and the control URL.
fn single_voter(plan: &Plan, dir: &std::path::Path) -> (Voter, String) {
    let seeds = plan.seeds();
    let peers = format!("1=127.0.0.1:{}", free_udp_port());
    let mut extra: Vec<String> =
        ["--gossip-listen", &plan.voter_gossip[0], "--gossip-seeds", &seeds].map(String::from).to_vec();
    extra.extend(cluster_cert_args(&plan.ca, "voter-1", "voter"));
    extra.push("--require-edge-proofs".into());
    let voter = Voter::start(1, &peers, &dir.join("v1"), &strs(&extra));
    wait_for_leader(&[&voter]);
    let control = voter.http.clone();
    (voter, control)
}

fn edge_connections(edge: &Edge) -> f64 {
    edge.metric("ferry_connections{role=\"edge\"}").unwrap_or(0.0)
}

/// The relays the control plane placed for `stream` in `region`.
fn relays(voter: &Voter, stream: &str, region: &str) -> Vec<String> {
    let (_, body) = voter.get(&format!("/v1/streams/{stream}?stale=true"));
    body["relays"][region]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

#[test]
fn a_region_pulls_through_its_placed_relay_and_a_new_relay_takes_over_when_it_dies() {
    let _heavy = heavy();
    let dir = TempDir::new("relays");
    let plan = Plan {
        ca: ca_init(&dir.path().join("ca")),
        voter_gossip: vec![format!("127.0.0.1:{}", free_udp_port())],
        edge_gossip: ["o", "a", "b"]
            .into_iter()
            .map(|e| (e, format!("127.0.0.1:{}", free_udp_port())))
            .collect(),
    };
    let (voter, control) = single_voter(&plan, dir.path());
    let mut edges: BTreeMap<&str, Edge> = BTreeMap::new();
    for (id, region) in [("o", "r1"), ("a", "r2"), ("b", "r2")] {
        edges.insert(id, start_edge(&plan, id, region, &control));
    }
    wait_for("3 registered edges alive in gossip", Duration::from_secs(30), || {
        let (_, body) = voter.get("/v1/edges?stale=true");
        let edges = body["edges"].as_array()?;
        (edges.len() == 3 && edges.iter().all(|e| e["gossip"]["alive"] == true)).then_some(())
    });
    let stream = "live/relayed";
    let _publisher = publish_synthetic(&edges["o"], stream, "300s");
    // The leader places one relay in r2 (none in r1, the origin's region).
    let relay = wait_for("a relay placed in r2", Duration::from_secs(20), || {
        relays(&voter, stream, "r2").first().cloned()
    });
    assert!(relays(&voter, stream, "r1").is_empty());
    let other = if relay == "a" { "b" } else { "a" };
    println!("relay in r2: {relay}; the other edge: {other}");

    // A viewer on the other r2 edge: it pulls from the relay, the relay from the origin.
    // That edge must have read the placement first (it routes by the records it last
    // read; a viewer that comes earlier pulls from the origin, rightly).
    let placed_at = wait_for("the placement in the audit log", Duration::from_secs(10), || {
        let (_, audit) = voter.get("/v1/audit?limit=50");
        audit["events"]
            .as_array()?
            .iter()
            .filter(|e| e["action"] == "stream.place_relays")
            .find_map(|e| e["index"].as_f64())
    });
    wait_for("the other edge to read the placement", Duration::from_secs(20), || {
        (edges[other].metric("ferry_control_records_index")? >= placed_at).then_some(())
    });
    // ... and by its own gossip view, see the origin and the relay alive.
    wait_for("the other edge to see every member alive", Duration::from_secs(20), || {
        let alive = edges[other].metric("ferry_gossip_members{state=\"alive\"}")?;
        let dead = edges[other].metric("ferry_gossip_members{state=\"dead\"}")?;
        (alive >= 4.0 && dead == 0.0).then_some(())
    });
    let edge_subscribers = |id: &str| edge_connections(&edges[id]);
    let mut viewer = watch(&edges[other], stream, &["--duration", "60s"]);
    // Polled like wait_for, but a timeout says what was seen. A viewer refused while a
    // busy machine made gossip flap (the origin shown dead for a moment) comes again,
    // as a routed one would.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let sent = edges[other].metric("ferry_frames_out_total").unwrap_or(0.0);
        let (at_relay, at_origin) = (edge_subscribers(&relay), edge_subscribers("o"));
        if sent > 30.0 && at_relay == 1.0 && at_origin == 1.0 {
            break;
        }
        if viewer.child.try_wait().unwrap().is_some() {
            viewer = watch(&edges[other], stream, &["--duration", "60s"]);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the viewer should play through the relay: {sent} frames sent; edge subscribers: {at_relay} at the relay, {at_origin} at the origin"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(edge_subscribers(other), 0.0, "nobody pulls from the edge that is not the relay");
    viewer.terminate();
    assert!(json_output(viewer, Duration::from_secs(20))["frames"].as_u64().unwrap() > 0);

    // Kill -9 the relay: after failover the other edge becomes r2's relay and pulls
    // from the origin itself.
    drop(edges.remove(relay.as_str()));
    wait_for("the other edge placed as r2's relay", Duration::from_secs(20), || {
        (relays(&voter, stream, "r2") == vec![other.to_owned()]).then_some(())
    });
    // The other edge may still hold the track it relayed from the dead relay (until
    // its upstream link times out); a static viewer that joins it then sees the
    // track end and stops, so the next viewer subscribes afresh and the edge resolves
    // its new upstream: the origin.
    // Frames are counted from the current viewer's start (the edge's only viewer then):
    // frames an ended viewer got from the old track must not count for its successor.
    let frames_out = || edges[other].metric("ferry_frames_out_total").unwrap_or(0.0);
    let mut before = frames_out();
    let mut viewer = watch(&edges[other], stream, &["--duration", "60s"]);
    // Polled like wait_for, but a timeout says what was seen.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let sent = frames_out() - before;
        let at_origin = edges["o"].metric("ferry_connections{role=\"edge\"}");
        if sent > 30.0 && at_origin == Some(1.0) {
            break;
        }
        if viewer.child.try_wait().unwrap().is_some() {
            before = frames_out();
            viewer = watch(&edges[other], stream, &["--duration", "60s"]);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new relay should pull from the origin: {sent} frames sent, {at_origin:?} edge connections there"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    viewer.terminate();
    assert!(json_output(viewer, Duration::from_secs(20))["frames"].as_u64().unwrap() > 0);
    let (_, audit) = voter.get("/v1/audit?limit=50");
    let placements = audit["events"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["action"] == "stream.place_relays").count())
        .unwrap_or(0);
    assert!(placements >= 2, "both placements are audited: {audit}");
}

#[test]
fn bench_failover_reports_detection_at_every_peer_and_every_viewer() {
    let _heavy = heavy();
    let mut cmd = ferry();
    cmd.args(["bench", "failover", "--viewers", "2"]).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let report = json_output(Proc::spawn("bench failover", &mut cmd), Duration::from_secs(120));
    let detection = report["detection_ms"].as_object().unwrap();
    assert_eq!(detection.len(), 3, "the voter and both surviving edges: {report}");
    assert_eq!(report["peers_not_detecting"], serde_json::json!([]), "{report}");
    assert_eq!(report["viewers_recovered"], 2, "{report}");
    assert!(report["media_gap_ms"]["max"].as_f64().is_some(), "{report}");
}

#[test]
fn bench_canary_reports_the_error_and_cpu_drills() {
    let _heavy = heavy();
    let mut cmd = ferry();
    cmd.args(["bench", "canary"]).stdout(Stdio::piped()).stderr(Stdio::null());
    let report = json_output(Proc::spawn("bench canary", &mut cmd), Duration::from_secs(180));
    let errors = &report["error_trip"];
    assert_eq!(errors["deciding_window"]["verdict"], "bad", "{report}");
    assert_eq!(errors["deciding_window"]["bad_in_a_row"], 2, "{report}");
    assert!(errors["audit"].as_str().unwrap().starts_with("tripped by errors"), "{report}");
    let per_edge = errors["per_edge_baseline_after_deciding_window_ms"].as_object().unwrap();
    assert_eq!(per_edge.len(), 3, "{report}");
    assert!(per_edge.values().all(|v| v.is_i64()), "every edge fell back: {report}");
    let cpu = &report["cpu_trip"];
    assert!(cpu["level_change_to_fallback_ms"].is_u64(), "{report}");
    assert!(cpu["fallback_to_recorded_ms"].is_u64(), "the control plane recorded it: {report}");
}
