//! `ferry bench failover`: a real cluster on loopback (1 voter, 3 edges in 2 regions,
//! all gossiping), a routed publisher and N routed viewers on one edge; the edge is
//! killed with SIGKILL. Prints how long every peer took to mark it dead, how long each
//! viewer went without frames, and the frames lost.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use ferry_net::http::{join, HttpClient};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Child;

pub(super) const TOKEN: &str = "ferry-bench-failover-token";
const STREAM: &str = "bench/failover";

#[derive(Debug, Clone, Args)]
pub struct FailoverArgs {
    /// Viewers on the edge that is killed.
    #[arg(long, env = "FERRY_BENCH_VIEWERS", default_value_t = 10)]
    pub viewers: usize,
    /// Stream bit rate.
    #[arg(long, env = "FERRY_BENCH_BITRATE", default_value = "500k", value_parser = crate::units::bitrate)]
    pub bitrate: u64,
    /// Silence after which routed clients move on (their --failover-after).
    #[arg(long, default_value = "1500ms", value_parser = crate::units::duration)]
    pub failover_after: Duration,
    /// The ferry binary to run (default: this one).
    #[arg(long)]
    pub binary: Option<PathBuf>,
}

/// A child process with the JSON line it printed when ready; killed on drop.
pub(super) struct Ready {
    pub(super) child: Child,
    pub(super) line: Value,
}

pub(super) async fn spawn_ready(binary: &std::path::Path, args: &[String]) -> anyhow::Result<Ready> {
    let mut child = crate::process::ferry_child(binary)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .with_context(|| format!("{args:?} did not report ready"))??
        .with_context(|| format!("{args:?} exited before ready"))?;
    Ok(Ready { child, line: serde_json::from_str(&line).context("ready line")? })
}

/// `v[k]` without indexing: Null when absent.
pub(super) fn at<'a>(v: &'a Value, k: &str) -> &'a Value {
    v.get(k).unwrap_or(&Value::Null)
}

pub(super) fn field(v: &Value, k: &str) -> anyhow::Result<String> {
    v.get(k).and_then(Value::as_str).map(str::to_owned).with_context(|| format!("no {k} in {v}"))
}

pub(super) fn free_udp() -> anyhow::Result<String> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.to_string())
}

pub(super) async fn get(base: &str, path: &str) -> Option<Value> {
    let r = HttpClient::plain()
        .get(&join(base, path))
        .bearer(TOKEN)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    (r.status == 200).then(|| r.json())
}

pub(super) async fn metric(http: &str, sample: &str) -> Option<f64> {
    let r = HttpClient::plain()
        .get(&format!("http://{http}/metrics"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    let text = r.text();
    text.lines().find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Polls `check` every 10 ms for up to `limit`; the time it first held.
pub(super) async fn until<F, Fut>(limit: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let i = ((sorted.len().checked_sub(1)? as f64) * p).round() as usize;
    sorted.get(i.min(sorted.len() - 1)).copied()
}

pub async fn run(args: FailoverArgs) -> anyhow::Result<()> {
    if args.viewers == 0 {
        bail!("--viewers must be at least 1");
    }
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe()?,
    };
    let temp = temp_dir("failover")?;
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

    let mut edges: BTreeMap<String, (String, Ready)> = BTreeMap::new();
    for (id, region) in [("e1", "r1"), ("e2", "r1"), ("e3", "r2")] {
        let mut a = s(&["edge", "--node-id", id, "--region", region, "--log", "warn", "--allow-anonymous"]);
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
        let edge = spawn_ready(&binary, &a).await?;
        edges.insert(id.to_owned(), (region.to_owned(), edge));
    }
    until(Duration::from_secs(20), || async {
        let body = get(&control, "/v1/edges?stale=true").await;
        body.and_then(|b| at(&b, "edges").as_array().cloned())
            .is_some_and(|e| e.len() == 3 && e.iter().all(|e| at(at(e, "gossip"), "alive") == true))
    })
    .await
    .context("edges did not register")?;

    let failover_after = format!("{}ms", args.failover_after.as_millis());
    let mut publisher = crate::process::ferry_child(&binary);
    publisher
        .args(["publish", "--control-plane", &control, "--stream", STREAM, "--synthetic", "--insecure"])
        .args(["--bitrate", &args.bitrate.to_string(), "--failover-after", &failover_after, "--log", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let _publisher = publisher.spawn().context("publisher")?;
    let origin = match until(Duration::from_secs(20), || async {
        get(&control, &format!("/v1/streams/{STREAM}?stale=true"))
            .await
            .is_some_and(|b| at(&b, "origin").is_string())
    })
    .await
    {
        Some(_) => {
            get(&control, &format!("/v1/streams/{STREAM}?stale=true")).await.map(|b| at(&b, "origin").clone())
        }
        None => bail!("the stream got no origin"),
    };
    let origin = origin.and_then(|o| o.as_str().map(str::to_owned)).unwrap_or_default();

    // The viewers' region: the one routed to an edge that is not the origin.
    let mut target = None;
    for region in ["r1", "r2"] {
        let route = get(&control, &format!("/v1/route/{STREAM}?kind=quic&region={region}")).await;
        let edge = route.and_then(|r| at(&r, "edge").as_str().map(str::to_owned)).unwrap_or_default();
        if !edge.is_empty() && edge != origin {
            target = Some((region, edge));
            break;
        }
    }
    let (region, victim) = target.context("no non-origin edge to kill")?;
    let victim_http = field(&edges.get(&victim).context("victim")?.1.line, "http")?;
    let mut viewers = Vec::new();
    for _ in 0..args.viewers {
        let child = crate::process::ferry_child(&binary)
            .args(["watch", "--control-plane", &control, "--region", region, "--stream", STREAM])
            .args(["--insecure", "--json", "--failover-after", &failover_after, "--log", "warn"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("viewer")?;
        viewers.push(child);
    }
    let want = args.viewers as f64;
    until(Duration::from_secs(30), || async {
        metric(&victim_http, "ferry_connections{role=\"viewer\"}").await == Some(want)
    })
    .await
    .context("viewers did not all reach the edge")?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Kill it.
    let (_, mut killed) = edges.remove(&victim).context("victim")?;
    let killed_at = Instant::now();
    killed.child.start_kill()?;
    let mut detection = BTreeMap::new();
    let mut pending: Vec<(String, String)> = edges
        .iter()
        .filter_map(|(id, (_, e))| field(&e.line, "http").ok().map(|h| (id.clone(), h)))
        .collect();
    pending.push(("voter-1".into(), String::new()));
    while !pending.is_empty() && killed_at.elapsed() < Duration::from_secs(15) {
        let mut still = Vec::new();
        for (peer, http) in pending {
            let dead = if peer == "voter-1" {
                get(&control, "/v1/members").await.is_some_and(|b| {
                    at(&b, "members").as_array().is_some_and(|m| {
                        m.iter().any(|m| at(m, "id") == victim.as_str() && at(m, "alive") == false)
                    })
                })
            } else {
                metric(&http, "ferry_gossip_members{state=\"dead\"}").await.unwrap_or(0.0) >= 1.0
            };
            if dead {
                detection.insert(peer, killed_at.elapsed().as_secs_f64() * 1000.0);
            } else {
                still.push((peer, http));
            }
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let survivors: Vec<String> = edges.values().filter_map(|(_, e)| field(&e.line, "http").ok()).collect();
    let all_back = until(Duration::from_secs(20), || async {
        let mut n = 0.0;
        for h in &survivors {
            n += metric(h, "ferry_connections{role=\"viewer\"}").await.unwrap_or(0.0);
        }
        n >= want
    })
    .await
    .map(|_| killed_at.elapsed().as_secs_f64() * 1000.0);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Stop the viewers cleanly and read what each saw.
    let mut gaps = Vec::new();
    let mut lost = 0u64;
    let mut recovered = 0usize;
    for mut v in viewers {
        if let Some(pid) = v.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
        let mut out = String::new();
        if let Some(mut stdout) = v.stdout.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), stdout.read_to_string(&mut out)).await;
        }
        let _ = v.wait().await;
        let Ok(stats) = serde_json::from_str::<Value>(&out) else { continue };
        let legs = at(&stats, "legs").as_array().cloned().unwrap_or_default();
        if let Some(leg) = legs.get(1) {
            if at(leg, "frames").as_u64().unwrap_or(0) > 0 {
                recovered += 1;
            }
            if let Some(gap) = at(leg, "gap_ms").as_f64() {
                gaps.push(gap);
            }
            lost += at(leg, "frames_lost_between").as_u64().unwrap_or(0);
        }
        lost += at(&stats, "lost_frames").as_u64().unwrap_or(0);
    }
    gaps.sort_by(f64::total_cmp);
    let detection_max = detection.values().copied().fold(0.0, f64::max);
    let report = json!({
        "viewers": args.viewers,
        "killed_edge": victim,
        "origin": origin,
        "detection_ms": detection,
        "detection_max_ms": detection_max,
        "peers_not_detecting": pending.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(),
        "viewers_recovered": recovered,
        "all_viewers_on_other_edges_ms": all_back,
        "media_gap_ms": {
            "p50": percentile(&gaps, 0.5), "p99": percentile(&gaps, 0.99), "max": gaps.last(),
        },
        "frames_lost": lost,
        "failover_after_ms": args.failover_after.as_millis() as u64,
        "goals": { "detection_ms": 1500, "media_gap_p99_ms": 3000 },
    });
    out!("{report}")?;
    drop(voter);
    Ok(())
}

/// A temporary directory for a bench's processes, removed when dropped.
pub(super) fn temp_dir(tag: &str) -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("ferry-bench-{tag}-"))
        .tempdir()
        .context("cannot create a temporary directory for the bench")
}
