//! `ferry bench canary`: a real cluster on loopback (1 voter, 3 edges in 2 regions, all
//! gossiping, fault injection allowed) and two drills:
//!
//! - **error trip**: a rollout at level 3 whose treatment refuses half its sessions
//!   (`fault.reject_sessions_bp = 5000`) while the bench opens QUIC sessions on every
//!   edge. Reported: time from the deciding window's end to the fallback committed, and
//!   to every edge giving new sessions the baseline (probed on each edge);
//! - **CPU trip**: a rollout on one edge whose treatment burns CPU
//!   (`fault.cpu_burn_ms_per_s`) above `guard.cpu_max`. Reported: time from the level
//!   change to the edge falling back on its own, the same split at the deciding sample
//!   (the edge's trip counter), and until the control plane recorded it.
//!
//! Wall-clock times are compared only between processes of this machine.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use ferry_net::dial::{connect, SessionHello};
use ferry_net::http::{join, HttpClient};
use ferry_net::tls::{ClientTrust, TransportTuning};
use ferry_proto::{NodeId, Role};
use serde_json::{json, Value};

use super::failover::{at, field, free_udp, get, metric, spawn_ready, temp_dir, until, Ready, TOKEN};

#[derive(Debug, Clone, Args)]
pub struct CanaryArgs {
    /// The error guard's window.
    #[arg(long, default_value = "1s", value_parser = crate::units::duration)]
    pub window: Duration,
    /// Bad windows (and CPU samples) in a row before a trip.
    #[arg(long, default_value_t = 2)]
    pub consecutive: u32,
    /// Treatment sessions a window needs.
    #[arg(long, default_value_t = 20)]
    pub min_sessions: u32,
    /// QUIC sessions the load opens at once (new ones as they finish).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// The ferry binary to run (default: this one).
    #[arg(long)]
    pub binary: Option<PathBuf>,
}

/// One QUIC viewer session as `id`: its variant, or `None` when refused.
async fn session(quic: &str, id: String) -> Option<String> {
    let hello = SessionHello { id: Some(id), tags: vec!["ferry-bench".into()], token: None };
    let node = NodeId::new("bench-canary").ok()?;
    let tuning = TransportTuning::default();
    let link = connect(quic, &ClientTrust::Insecure, &tuning, node, Role::Viewer, &hello).await.ok()?;
    link.conn.close(0u32.into(), b"bye");
    link.variant
}

async fn post(base: &str, path: &str, body: Value) -> anyhow::Result<()> {
    let r = HttpClient::plain()
        .post(&join(base, path))
        .bearer(TOKEN)
        .json(&body)
        .timeout(Duration::from_secs(5))
        .send()
        .await?;
    if r.status != 200 {
        bail!("POST {path}: HTTP {}: {}", r.status, r.json());
    }
    Ok(())
}

/// Opens sessions on `edges` round robin, `concurrency` at a time, until `stop`.
fn load(
    edges: Vec<String>,
    concurrency: usize,
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..concurrency.max(1))
        .map(|worker| {
            let (edges, stop, opened) = (edges.clone(), Arc::clone(&stop), Arc::clone(&opened));
            tokio::spawn(async move {
                let started = Instant::now();
                let mut n = worker;
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(120) {
                    let Some(edge) = edges.get(n % edges.len().max(1)) else { return };
                    session(edge, format!("load-{worker}-{n}")).await;
                    opened.fetch_add(1, Ordering::Relaxed);
                    n += concurrency;
                }
            })
        })
        .collect()
}

/// Probes `quic` with fresh sessions until one gets `want`; the unix ms it did.
async fn first_variant(quic: &str, want: &str, tag: &str, limit: Duration) -> Option<u64> {
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < limit {
        n += 1;
        let variant = session(quic, format!("probe-{tag}-{n}")).await.unwrap_or_default();
        if variant.split(", ").any(|v| v == want) {
            return Some(ferry_net::time::unix_ms());
        }
    }
    None
}

async fn rollout(control: &str, id: &str) -> Value {
    get(control, &format!("/v1/rollouts/{id}?stale=true")).await.unwrap_or(Value::Null)
}

pub async fn run(args: CanaryArgs) -> anyhow::Result<()> {
    if args.consecutive == 0 || args.window < Duration::from_secs(1) {
        bail!("--consecutive must be at least 1 and --window at least 1s");
    }
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe()?,
    };
    let temp = temp_dir("canary")?;
    let dir = temp.path();
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<String>>();

    let voter_gossip = free_udp()?;
    // One local voter: raft has no peers to authenticate.
    let mut voter_args = s(&[
        "control",
        "--id",
        "1",
        "--http-listen",
        "127.0.0.1:0",
        "--log",
        "warn",
        "--insecure-raft",
        "--insecure-http",
    ]);
    voter_args.extend(s(&["--peers", &format!("1={}", free_udp()?), "--token", TOKEN]));
    // The processes' gossip keyring, sealed as in production.
    let keyring = dir.join("gossip-keyring");
    std::fs::create_dir_all(&keyring)?;
    std::fs::write(keyring.join("bench.key"), ferry_net::seal::new_key_hex()?)?;
    let keyring = keyring.to_string_lossy().into_owned();
    voter_args.extend(s(&[
        "--gossip-keyring",
        &keyring,
        "--gossip-listen",
        &voter_gossip,
        "--data-dir",
        &dir.join("voter").to_string_lossy(),
    ]));
    let voter = spawn_ready(&binary, &voter_args).await?;
    let control = format!("http://{}", field(&voter.line, "http")?);
    until(Duration::from_secs(20), || async {
        get(&control, "/v1/cluster").await.and_then(|c| at(&c, "leader").as_u64()).is_some_and(|l| l != 0)
    })
    .await
    .context("no raft leader")?;
    let mut edges: BTreeMap<String, Ready> = BTreeMap::new();
    for (id, region) in [("e1", "r1"), ("e2", "r1"), ("e3", "r2")] {
        let mut a = s(&[
            "edge",
            "--node-id",
            id,
            "--region",
            region,
            "--log",
            "warn",
            "--allow-fault-injection",
            "--allow-anonymous",
        ]);
        a.extend(s(&["--quic-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]));
        // Every viewer connects from 127.0.0.1: no per-address share.
        a.extend(s(&["--max-connections-per-ip", "65536"]));
        a.extend(s(&[
            "--gossip-listen",
            &free_udp()?,
            "--gossip-seeds",
            &voter_gossip,
            "--gossip-keyring",
            &keyring,
        ]));
        a.extend(s(&["--control-plane", &control, "--control-token", TOKEN]));
        edges.insert(id.to_owned(), spawn_ready(&binary, &a).await?);
    }
    until(Duration::from_secs(20), || async {
        let body = get(&control, "/v1/edges?stale=true").await;
        body.and_then(|b| at(&b, "edges").as_array().cloned())
            .is_some_and(|e| e.len() == 3 && e.iter().all(|e| at(at(e, "gossip"), "alive") == true))
    })
    .await
    .context("edges did not register")?;
    let quic: BTreeMap<String, String> =
        edges.iter().filter_map(|(id, e)| field(&e.line, "quic").ok().map(|q| (id.clone(), q))).collect();
    let http: BTreeMap<String, String> =
        edges.iter().filter_map(|(id, e)| field(&e.line, "http").ok().map(|h| (id.clone(), h))).collect();

    // Drill 1: the error guard.
    let window_ms = args.window.as_millis() as u64;
    let spec = json!({"on_trip": "off", "override": {"fault": {"reject_sessions_bp": 5000}},
        "gates": {"share_bp": 10000},
        "guard": {"error_rate_max": 0.2, "min_sessions": args.min_sessions, "window_ms": window_ms,
                  "consecutive": args.consecutive}});
    post(&control, "/v1/rollouts", json!({"id": "bench-errors", "spec": spec})).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let workers =
        load(quic.values().cloned().collect(), args.concurrency, Arc::clone(&stop), Arc::clone(&opened));
    let flipped = ferry_net::time::unix_ms();
    post(&control, "/v1/rollouts/bench-errors/level", json!({"level": 3})).await?;
    // Each edge's probe waits for treatment (the level arrived), then for the baseline.
    let limit = args.window * (args.consecutive + 10) + Duration::from_secs(20);
    let probes: Vec<_> = quic
        .iter()
        .map(|(id, q)| {
            let (id, q) = (id.clone(), q.clone());
            tokio::spawn(async move {
                let treated = first_variant(&q, "bench-errors=treatment", &id, limit).await;
                let baseline = first_variant(&q, "bench-errors=baseline", &id, limit).await;
                (id, treated, baseline)
            })
        })
        .collect();
    let mut per_edge = BTreeMap::new();
    for probe in probes {
        let (id, treated, baseline) = probe.await?;
        per_edge.insert(id, (treated, baseline));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let r = rollout(&control, "bench-errors").await;
    if at(&r, "state") != "tripped" {
        bail!("the error drill did not trip: {r}");
    }
    let trip = at(&r, "history").as_array().and_then(|h| h.last()).cloned().unwrap_or(Value::Null);
    let committed = at(&trip, "at_ms").as_u64().context("trip time")?;
    let windows = at(&r, "windows").as_array().cloned().unwrap_or_default();
    let deciding = windows
        .iter()
        .rev()
        .find(|w| at(w, "bad_in_a_row").as_u64() == Some(u64::from(args.consecutive)))
        .cloned()
        .context("no deciding window")?;
    let decided = at(&deciding, "ended_at_ms").as_u64().context("window end")?;
    let first_bad = decided.saturating_sub(u64::from(args.consecutive - 1) * window_ms);
    let since = |t: Option<u64>| t.map(|t| t as i64 - decided as i64);
    let every_edge =
        per_edge.values().map(|(_, b)| *b).collect::<Option<Vec<u64>>>().and_then(|v| v.into_iter().max());
    let error_trip = json!({
        "window_ms": window_ms,
        "consecutive": args.consecutive,
        "sessions_opened": opened.load(Ordering::Relaxed),
        "level_change_to_first_bad_window_end_ms": first_bad as i64 - flipped as i64,
        "deciding_window": deciding,
        "deciding_window_end_to_fallback_committed_ms": committed as i64 - decided as i64,
        "deciding_window_end_to_every_edge_baseline_ms": since(every_edge),
        "per_edge_baseline_after_deciding_window_ms":
            per_edge.iter().map(|(id, (_, b))| (id.clone(), since(*b))).collect::<BTreeMap<_, _>>(),
        "audit": at(&trip, "what"),
    });

    // Drill 2: the edge-local CPU guard on e1.
    let e1 = quic.get("e1").context("e1")?.clone();
    let e1_http = http.get("e1").context("e1")?.clone();
    let spec = json!({"override": {"fault": {"cpu_burn_ms_per_s": 900}}, "gates": {"edges": ["e1"]},
        "guard": {"cpu_max": 0.5, "consecutive": args.consecutive}});
    post(&control, "/v1/rollouts", json!({"id": "bench-cpu", "spec": spec})).await?;
    let flip_at = Instant::now();
    post(&control, "/v1/rollouts/bench-cpu/level", json!({"level": 2})).await?;
    let limit = Duration::from_secs(u64::from(args.consecutive) + 30);
    let treated =
        first_variant(&e1, "bench-cpu=treatment", "cpu", limit).await.context("e1 never treated")?;
    let trips = "ferry_rollout_trips_total{rollout=\"bench-cpu\",guard=\"cpu\"}";
    let (probe, tripped) =
        tokio::join!(first_variant(&e1, "bench-cpu=baseline", "cpu-after", limit), async {
            until(limit, || async { metric(&e1_http, trips).await.unwrap_or(0.0) >= 1.0 })
                .await
                .map(|_| ferry_net::time::unix_ms())
        });
    let fallback = probe.context("e1 never fell back")?;
    let fallback_elapsed = flip_at.elapsed();
    let recorded = until(Duration::from_secs(20), || async {
        at(&rollout(&control, "bench-cpu").await, "state") == "tripped"
    })
    .await;
    let cpu_trip = json!({
        "cpu_max": 0.5,
        "burn_ms_per_s": 900,
        "consecutive_samples": args.consecutive,
        "sample_interval_ms": ferry_edge::server::CPU_SAMPLE.as_millis() as u64,
        "treatment_seen_to_fallback_ms": fallback as i64 - treated as i64,
        "level_change_to_fallback_ms": fallback_elapsed.as_millis() as u64,
        "trip_counter_seen_to_baseline_ms": tripped.map(|t| fallback as i64 - t as i64),
        "fallback_to_recorded_ms": recorded.map(|d| d.as_millis() as u64),
    });
    out!(
        "{}",
        json!({
            "error_trip": error_trip,
            "cpu_trip": cpu_trip,
            "goals": {"fallback_every_edge_after_deciding_window_ms": 2000, "edge_cpu_fallback_ms": 1000},
            "anchors": {"flagger_example_rollback_ms": 600000},
        })
    )?;
    drop(edges);
    drop(voter);
    Ok(())
}
