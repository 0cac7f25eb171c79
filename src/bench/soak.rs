//! `ferry bench soak`: a chaos soak on a real cluster. 3 voters and 3 edges (separate
//! processes, each in a network namespace of its own, gossiping, edges registered),
//! routed QUIC publishers and a WHIP one, routed QUIC and WHEP viewers, and control-plane clients that
//! record every request and answer, while seeded faults hit the cluster one after
//! another: SIGKILL and restart of a voter or an edge, SIGSTOP/SIGCONT of one, a
//! partition (one node cut off from everything), and bursts of hostile clients
//! (slowloris HTTP, QUIC connections that never subscribe, publishers of junk names,
//! WHEP offers that never go on to ICE).
//! After a calm period it checks: every acknowledged write is in the audit log, the
//! recorded history of each key is linearizable, every viewer recovered within
//! [`RECOVERY_GOAL`] after every fault and plays at the end, every process stayed
//! under the resource bounds, and no log holds a panic. It prints one JSON report
//! and exits non-zero when a check fails.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use ferry_net::http::{join, HttpClient};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Child;
use tokio_util::sync::CancellationToken;

use super::failover::{at, free_udp, until};
use ferry_control_plane::linearizable::{self, Answer, Call, Op, Verdict};

const TOKEN: &str = "ferry-bench-soak-operator-token";
/// The rollouts whose share the control-plane clients write and read (one setting
/// each: one rollout owns a setting).
const KEYS: [(&str, &str); 3] = [
    ("soak-lag", r#"{"override":{"max_lag_ms":3000}}"#),
    ("soak-cache", r#"{"override":{"group_cache":4}}"#),
    ("soak-flag", r#"{"override":{"client_flag":"soak"}}"#),
];
/// Published over QUIC by `ferry publish --control-plane`.
const STREAMS: [&str; 2] = ["soak/a", "soak/b"];
/// Published over WHIP by `ferry publish --whip` through a voter.
const WHIP_STREAM: &str = "soak/w";
/// The longest media gap a viewer may see after a fault.
pub const RECOVERY_GOAL: Duration = Duration::from_secs(10);
/// Per-process bounds.
const MAX_RSS_KIB: u64 = 512 * 1024;
const MAX_FDS: usize = 4096;
const MAX_TASKS: f64 = 20_000.0;
/// Search steps the linearizability checker may spend on one key.
const CHECK_BUDGET: u64 = 50_000_000;

#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// How long faults are injected (a calm period follows).
    #[arg(long, env = "FERRY_BENCH_DURATION", default_value = "60s", value_parser = crate::units::duration)]
    pub duration: Duration,
    /// Seed of the fault schedule and the clients' choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Time between the start of one fault and the next.
    #[arg(long, default_value = "8s", value_parser = crate::units::duration)]
    pub fault_every: Duration,
    /// Quiet time after the last fault before the final checks.
    #[arg(long, default_value = "15s", value_parser = crate::units::duration)]
    pub calm: Duration,
    /// Keep the processes' logs and data here (default: a temporary directory, removed).
    #[arg(long)]
    pub keep: Option<PathBuf>,
    /// The ferry binary to run (default: this one).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Run every node in its own network namespace and add partitions (a node cut off
    /// from every other node and client) to the faults. Needs root (CAP_NET_ADMIN) and
    /// iproute2; `--partitions=false` runs everything on loopback without them.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub partitions: bool,
    /// Log filter of every process the soak starts (their logs are in `--keep`).
    #[arg(long, default_value = "warn")]
    pub node_log: String,
}

/// A deterministic PRNG (splitmix64): the same seed gives the same schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One process of the cluster: how to start it again, and its resource peaks.
struct Node {
    name: String,
    /// The binary it runs when it next starts (`None`: the cluster's).
    binary: Option<PathBuf>,
    /// Its place in the lab: voters 0..3, edges 3..6.
    index: usize,
    args: Vec<String>,
    http: String,
    child: Option<Child>,
    stopped: bool,
    starts: u32,
    peak_rss_kib: u64,
    peak_fds: usize,
    peak_tasks: f64,
}

struct Cluster {
    binary: PathBuf,
    logs: PathBuf,
    voters: Vec<Node>,
    edges: Vec<Node>,
    /// Last, so the processes are killed before their namespaces go.
    lab: Option<super::netns::Lab>,
}

impl Cluster {
    async fn start(&mut self, voter: bool, i: usize) -> anyhow::Result<()> {
        let node = match voter {
            true => self.voters.get_mut(i),
            false => self.edges.get_mut(i),
        }
        .context("no such node")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{}.log", node.name)))
            .context("log file")?;
        let netns = self.lab.as_ref().map(|lab| lab.namespace(node.index));
        let binary = node.binary.as_ref().unwrap_or(&self.binary);
        let mut child = crate::process::ferry_child_in(netns.as_deref(), binary)
            .args(&node.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", node.name))?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .with_context(|| format!("{} did not report ready", node.name))??
            .with_context(|| format!("{} exited before ready", node.name))?;
        // Drain the rest, so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        node.child = Some(child);
        node.stopped = false;
        node.starts += 1;
        Ok(())
    }

    fn node(&mut self, voter: bool, i: usize) -> Option<&mut Node> {
        match voter {
            true => self.voters.get_mut(i),
            false => self.edges.get_mut(i),
        }
    }

    fn all(&mut self) -> impl Iterator<Item = &mut Node> {
        self.voters.iter_mut().chain(self.edges.iter_mut())
    }

    fn control_urls(&self) -> Vec<String> {
        self.voters.iter().map(|v| format!("http://{}", v.http)).collect()
    }
}

/// A log file in `dir` for a child's stderr.
fn log_file(dir: &std::path::Path, name: &str) -> anyhow::Result<Stdio> {
    let path = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(Stdio::from(file))
}

pub(super) fn signal(child: &Child, sig: &str) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill").args([sig, &pid.to_string()]).status();
    }
}

fn free_tcp() -> anyhow::Result<String> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string())
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

async fn api(
    http: &HttpClient,
    method: &str,
    url: &str,
    body: Option<Value>,
    key: Option<&str>,
) -> Option<Value> {
    let mut request = match method {
        "POST" => http.post(url),
        _ => http.get(url),
    }
    .bearer(TOKEN)
    .timeout(Duration::from_secs(2));
    if let Some(body) = &body {
        request = request.json(body);
    }
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.ok()?;
    (response.status == 200 || response.status == 201).then(|| response.json())
}

/// A write the cluster acknowledged: its id, raft index, and whether it changed
/// anything (only changes are audited).
struct Acknowledged {
    request_id: String,
    index: u64,
    changed: bool,
}

/// A control-plane client: writes and reads the keys' shares through random voters
/// until `stop`, recording every operation.
async fn client(
    id: usize,
    urls: Vec<String>,
    seed: u64,
    started: Instant,
    history: Arc<Mutex<Vec<Op>>>,
    acknowledged: Arc<Mutex<Vec<Acknowledged>>>,
    stop: CancellationToken,
) {
    let http = HttpClient::plain();
    let mut rng = Rng(seed ^ (id as u64).wrapping_mul(0x1234_5678_9abc_def1));
    let mut n = 0u64;
    while !stop.is_cancelled() {
        let [fallback, ..] = KEYS;
        let (key, _) = KEYS.get(rng.below(KEYS.len())).copied().unwrap_or(fallback);
        let url = urls.get(rng.below(urls.len())).cloned().unwrap_or_default();
        let invoked = started.elapsed();
        let op = if rng.below(2) == 0 {
            n += 1;
            // Unique per client and write: share 0..=10000 is the register's value.
            let value = (id as u64 * 3_333 + n) % 10_001;
            let request_id = format!("soak-{id}-{n}");
            let path = join(&url, &format!("/v1/rollouts/{key}/share"));
            let answer =
                api(&http, "POST", &path, Some(json!({ "share_bp": value })), Some(&request_id)).await;
            let answer = match answer {
                Some(body) => {
                    let index = at(&body, "index").as_u64().unwrap_or(0);
                    let changed = at(&body, "result").as_object().is_some_and(|r| !r.is_empty());
                    acknowledged.lock().unwrap_or_else(PoisonError::into_inner).push(Acknowledged {
                        request_id,
                        index,
                        changed,
                    });
                    Answer::Written
                }
                None => Answer::Unknown,
            };
            Op {
                key: key.into(),
                client: id,
                call: Call::Write(value),
                answer,
                invoked,
                returned: started.elapsed(),
            }
        } else {
            let answer = api(&http, "GET", &join(&url, &format!("/v1/rollouts/{key}")), None, None).await;
            let answer = match answer.and_then(|r| at(at(at(&r, "spec"), "gates"), "share_bp").as_u64()) {
                Some(v) => Answer::Read(Some(v)),
                None => Answer::Unknown,
            };
            Op { key: key.into(), client: id, call: Call::Read, answer, invoked, returned: started.elapsed() }
        };
        history.lock().unwrap_or_else(PoisonError::into_inner).push(op);
        tokio::time::sleep(Duration::from_millis(20 + rng.below(80) as u64)).await;
    }
}

/// A recvonly VP8 offer as a browser sends it to watch; the hostile client that posts
/// it never goes on to ICE.
fn hostile_offer() -> String {
    let fingerprint = (0..32).map(|i| format!("{:02X}", i * 7 % 256)).collect::<Vec<_>>().join(":");
    format!(
        "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
         a=msid-semantic: WMS\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\n\
         a=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
         a=fingerprint:sha-256 {fingerprint}\r\na=setup:actpass\r\na=mid:0\r\na=recvonly\r\n\
         a=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\n"
    )
}

/// Posts `n` WHEP offers for `path` to `edge_http` from `from` and never completes
/// one; returns how many the edge answered with a session (201).
async fn hostile_offers(edge_http: &str, from: std::net::IpAddr, path: &str, n: usize) -> usize {
    let Ok(addr) = edge_http.parse::<std::net::SocketAddr>() else { return 0 };
    let offer = hostile_offer();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {edge_http}\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{offer}",
        offer.len()
    );
    let mut answered = 0;
    for _ in 0..n {
        let post = async {
            let socket = tokio::net::TcpSocket::new_v4().ok()?;
            socket.bind((from, 0).into()).ok()?;
            let mut stream = socket.connect(addr).await.ok()?;
            stream.write_all(request.as_bytes()).await.ok()?;
            let mut head = [0u8; 12];
            stream.read_exact(&mut head).await.ok()?;
            Some(head.ends_with(b"201"))
        };
        if tokio::time::timeout(Duration::from_secs(2), post).await.ok().flatten() == Some(true) {
            answered += 1;
        }
    }
    answered
}

/// A burst of hostile clients for `hold`: slowloris connections to an edge's and a
/// voter's HTTP port, QUIC connections that never subscribe, publishers of junk stream
/// names for a second each, and WHEP offers that never go on to ICE (from `offers_from`,
/// an address of their own).
async fn hostile(
    edge_http: String,
    edge_quic: String,
    voter_http: String,
    offers_from: std::net::IpAddr,
    hold: Duration,
) -> usize {
    let Ok(label) = ferry_proto::NodeId::new("soak-hostile") else { return 0 };
    let mut held = Vec::new();
    for target in [&edge_http, &voter_http] {
        for _ in 0..150 {
            if let Ok(mut s) = tokio::net::TcpStream::connect(target.as_str()).await {
                let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: 1\r\n").await;
                held.push(s);
            }
        }
    }
    let mut junk = tokio::task::JoinSet::new();
    for i in 0..40 {
        let opts = ferry_client::publish::PublishOptions {
            edge: edge_quic.clone(),
            stream: match ferry_proto::StreamName::new(format!("junk/{i}")) {
                Ok(s) => s,
                Err(_) => continue,
            },
            source: ferry_client::publish::Source::Synthetic(ferry_media::synthetic::SyntheticConfig {
                bitrate_bps: 50_000,
                fps: 10,
                gop: Duration::from_secs(1),
            }),
            duration: Some(Duration::from_secs(1)),
            trust: ferry_net::tls::ClientTrust::Insecure,
            tuning: ferry_net::tls::TransportTuning::default(),
            label: label.clone(),
            max_frame: ferry_proto::MAX_FRAME_PAYLOAD,
            session: Default::default(),
        };
        junk.spawn(ferry_client::publish::publish(opts, CancellationToken::new()));
    }
    let mut idle = Vec::new();
    for _ in 0..20 {
        let link = ferry_net::dial::connect(
            &edge_quic,
            &ferry_net::tls::ClientTrust::Insecure,
            &ferry_net::tls::TransportTuning::viewer(),
            label.clone(),
            ferry_proto::Role::Viewer,
            &Default::default(),
        )
        .await;
        if let Ok(link) = link {
            idle.push(link);
        }
    }
    let [watched, _] = STREAMS;
    let offers = hostile_offers(&edge_http, offers_from, &format!("/whep/{watched}"), 20).await;
    tokio::time::sleep(hold).await;
    while junk.join_next().await.is_some() {}
    held.len() + idle.len() + offers
}

/// RSS (KiB) and open file descriptors of `pid`.
fn usage(pid: u32) -> Option<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}

async fn sample(cluster: &mut Cluster) {
    for node in cluster.all() {
        let Some(pid) = node.child.as_ref().and_then(Child::id) else { continue };
        if let Some((rss, fds)) = usage(pid) {
            node.peak_rss_kib = node.peak_rss_kib.max(rss);
            node.peak_fds = node.peak_fds.max(fds);
        }
        if !node.stopped && node.name.starts_with('e') {
            if let Some(tasks) = super::failover::metric(&node.http, "ferry_tasks").await {
                node.peak_tasks = node.peak_tasks.max(tasks);
            }
        }
    }
}

/// What happens to the cluster while the clients run.
pub(super) enum Plan {
    /// Seeded faults (`ferry bench soak`).
    Faults,
    /// A rolling upgrade (`ferry bench upgrade`): every voter, then every edge, stopped
    /// with SIGTERM and started again with `to`, one every `step_every`.
    Roll { to: PathBuf, step_every: Duration },
}

pub async fn run(args: SoakArgs) -> anyhow::Result<()> {
    run_plan(args, Plan::Faults).await
}

pub(super) async fn run_plan(args: SoakArgs, plan: Plan) -> anyhow::Result<()> {
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe()?,
    };
    let temp = super::failover::temp_dir("soak")?;
    let dir = args.keep.clone().unwrap_or_else(|| temp.path().to_owned());
    std::fs::create_dir_all(&dir)?;
    let mut rng = Rng(args.seed);
    let keyring = dir.join("gossip-keyring");
    std::fs::create_dir_all(&keyring)?;
    std::fs::write(keyring.join("soak.key"), ferry_net::seal::new_key_hex()?)?;
    let keyring = keyring.to_string_lossy().into_owned();

    // Addresses fixed up front, so a restarted process keeps them: in its own
    // namespace a node has the ports to itself; on loopback free ones are found.
    let lab = match args.partitions {
        true => Some(super::netns::Lab::create(6)?),
        false => None,
    };
    let address = |node: usize, port: u16, udp: bool| match &lab {
        Some(lab) => Ok(format!("{}:{port}", lab.ip(node))),
        None if udp => free_udp(),
        None => free_tcp(),
    };
    let voter_gossip: Vec<String> = (0..3).map(|i| address(i, 7946, true)).collect::<anyhow::Result<_>>()?;
    let raft: Vec<String> = (0..3).map(|i| address(i, 7000, true)).collect::<anyhow::Result<_>>()?;
    let peers: Vec<String> = raft.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect();
    let peers = peers.join(",");
    let seeds = voter_gossip.join(",");
    let mut voters = Vec::new();
    for (i, gossip) in voter_gossip.iter().enumerate() {
        let http = address(i, 8080, false)?;
        let data = dir.join(format!("voter-{}", i + 1)).to_string_lossy().into_owned();
        let mut a =
            strings(&["control", "--id", &(i + 1).to_string(), "--peers", &peers, "--http-listen", &http]);
        a.extend(strings(&["--insecure-raft", "--insecure-http", "--token", TOKEN, "--data-dir", &data]));
        a.extend(strings(&[
            "--gossip-keyring",
            &keyring,
            "--gossip-listen",
            gossip,
            "--gossip-seeds",
            &seeds,
        ]));
        a.extend(strings(&["--log", &args.node_log]));
        let name = format!("voter-{}", i + 1);
        voters.push(Node { name, index: i, args: a, http, ..Node::empty() });
    }
    let control: Vec<String> = voters.iter().map(|v| format!("http://{}", v.http)).collect();
    let first_voter = control.first().cloned().context("no voter")?;
    let mut edges = Vec::new();
    for (i, (id, region)) in [("e1", "r1"), ("e2", "r1"), ("e3", "r2")].into_iter().enumerate() {
        let index = 3 + i;
        let (quic, http) = (address(index, 4433, true)?, address(index, 8080, false)?);
        let mut a = strings(&[
            "edge",
            "--node-id",
            id,
            "--region",
            region,
            "--log",
            &args.node_log,
            "--allow-anonymous",
        ]);
        let gossip = address(index, 7946, true)?;
        a.extend(strings(&["--quic-listen", &quic, "--http-listen", &http, "--gossip-listen", &gossip]));
        a.extend(strings(&["--gossip-seeds", &seeds, "--gossip-keyring", &keyring]));
        a.extend(strings(&["--control-plane", &control.join(","), "--control-token", TOKEN]));
        // `ferry bench upgrade` stops edges with SIGTERM: their QUIC publishers never
        // leave by themselves, so a drain lasts its whole deadline.
        a.extend(strings(&["--shutdown-grace", "10s"]));
        edges.push(Node { name: id.to_owned(), index, args: a, http, ..Node::empty() });
    }
    let mut cluster = Cluster { binary: binary.clone(), logs: dir.clone(), voters, edges, lab };
    for i in 0..3 {
        cluster.start(true, i).await?;
    }
    let probe = HttpClient::plain();
    until(Duration::from_secs(30), || async {
        let c = api(&probe, "GET", &join(&first_voter, "/v1/cluster"), None, None).await;
        c.and_then(|c| at(&c, "leader").as_u64()).is_some_and(|l| l != 0)
    })
    .await
    .context("no raft leader")?;
    for i in 0..3 {
        cluster.start(false, i).await?;
    }
    until(Duration::from_secs(30), || async {
        let body = api(&probe, "GET", &join(&first_voter, "/v1/edges?stale=true"), None, None).await;
        body.and_then(|b| at(&b, "edges").as_array().cloned())
            .is_some_and(|e| e.len() == 3 && e.iter().all(|e| at(at(e, "gossip"), "alive") == true))
    })
    .await
    .context("edges did not register")?;
    for (key, spec) in KEYS {
        let spec: Value = serde_json::from_str(spec)?;
        let body = json!({ "id": key, "spec": spec });
        api(&probe, "POST", &join(&first_voter, "/v1/rollouts"), Some(body), Some(key))
            .await
            .with_context(|| format!("creating rollout {key}"))?;
    }

    // Media: routed QUIC publishers and a WHIP one, routed QUIC viewers of each stream
    // in both regions, one WHEP viewer.
    let mut media: Vec<(String, Child)> = Vec::new();
    let cp = control.join(",");
    for stream in STREAMS {
        let child = crate::process::ferry_child(&binary)
            .args([
                "publish",
                "--control-plane",
                &cp,
                "--stream",
                stream,
                "--synthetic",
                "--synthetic-vp8",
                "--insecure",
            ])
            .args(["--bitrate", "300k", "--max-failures", "1000", "--log", &args.node_log])
            .stdout(Stdio::null())
            .stderr(log_file(&dir, &format!("publisher-{}", stream.replace('/', "-")))?)
            .kill_on_drop(true)
            .spawn()
            .context("publisher")?;
        media.push((format!("publisher {stream}"), child));
    }
    let whip_url = format!("{first_voter}/whip/{WHIP_STREAM}");
    let child = crate::process::ferry_child(&binary)
        .args(["publish", "--whip", &whip_url, "--control-plane", &cp, "--synthetic", "--synthetic-vp8"])
        .args(["--bitrate", "300k", "--max-failures", "1000", "--log", &args.node_log])
        .stdout(Stdio::null())
        .stderr(log_file(&dir, "publisher-whip")?)
        .kill_on_drop(true)
        .spawn()
        .context("WHIP publisher")?;
    media.push((format!("WHIP publisher {WHIP_STREAM}"), child));
    for stream in STREAMS.into_iter().chain([WHIP_STREAM]) {
        until(Duration::from_secs(30), || async {
            let url = join(&first_voter, &format!("/v1/streams/{stream}?stale=true"));
            api(&probe, "GET", &url, None, None).await.is_some_and(|s| at(&s, "origin").is_string())
        })
        .await
        .with_context(|| format!("{stream} got no origin"))?;
    }
    let mut viewers: Vec<(String, Child)> = Vec::new();
    for stream in STREAMS.into_iter().chain([WHIP_STREAM]) {
        for region in ["r1", "r2"] {
            let child = crate::process::ferry_child(&binary)
                .args(["watch", "--control-plane", &cp, "--region", region, "--stream", stream])
                .args(["--insecure", "--json", "--max-failures", "1000", "--log", &args.node_log])
                .stdout(Stdio::piped())
                .stderr(log_file(&dir, &format!("viewer-quic-{}-{region}", stream.replace('/', "-")))?)
                .kill_on_drop(true)
                .spawn()
                .context("viewer")?;
            viewers.push((format!("quic {stream} {region}"), child));
        }
    }
    let [first, _] = STREAMS;
    let whep_url = format!("{}/whep/{first}?region=r1", first_voter);
    let child = crate::process::ferry_child(&binary)
        .args(["watch", "--whep", &whep_url, "--control-plane", &cp, "--region", "r1", "--stream", first])
        .args(["--json", "--max-failures", "1000", "--log", &args.node_log])
        .stdout(Stdio::piped())
        .stderr(log_file(&dir, "viewer-whep")?)
        .kill_on_drop(true)
        .spawn()
        .context("WHEP viewer")?;
    viewers.push((format!("whep {first} r1"), child));
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Clients and faults. Each key's history starts with the share it was created
    // with, as a write acknowledged before anything else.
    let started = Instant::now();
    let started_unix_ms = ferry_net::time::unix_ms();
    let mut initial = Vec::new();
    for (key, _) in KEYS {
        let rollout =
            api(&probe, "GET", &join(&first_voter, &format!("/v1/rollouts/{key}")), None, None).await;
        let share = rollout.and_then(|r| at(at(at(&r, "spec"), "gates"), "share_bp").as_u64());
        let share = share.with_context(|| format!("reading rollout {key}"))?;
        let at_start = Duration::ZERO;
        let (call, answer) = (Call::Write(share), Answer::Written);
        initial.push(Op {
            key: key.into(),
            client: 100,
            call,
            answer,
            invoked: at_start,
            returned: at_start,
        });
    }
    let history = Arc::new(Mutex::new(initial));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let mut clients = Vec::new();
    for id in 0..3 {
        let task = client(
            id,
            control.clone(),
            args.seed,
            started,
            Arc::clone(&history),
            Arc::clone(&acknowledged),
            stop.clone(),
        );
        clients.push(tokio::spawn(task));
    }
    let mut faults = Vec::new();
    let mut roll_check = None;
    match &plan {
        Plan::Faults => {
            while started.elapsed() < args.duration {
                let fault_started = Instant::now();
                let hold = Duration::from_millis(2_000 + rng.below(2_000) as u64);
                let kind = rng.below(if cluster.lab.is_some() { 6 } else { 5 });
                let voter = kind < 2 || (kind == 5 && rng.below(2) == 0);
                let i = rng.below(3);
                let name = cluster.node(voter, i).map(|n| n.name.clone()).unwrap_or_default();
                let what = match kind {
                    0 | 2 => {
                        if let Some(node) = cluster.node(voter, i) {
                            if let Some(mut child) = node.child.take() {
                                let _ = child.kill().await;
                            }
                        }
                        sample_for(&mut cluster, hold).await;
                        cluster.start(voter, i).await?;
                        format!("SIGKILL {name}, restarted after {} ms", hold.as_millis())
                    }
                    1 | 3 => {
                        if let Some(node) = cluster.node(voter, i) {
                            if let Some(child) = &node.child {
                                signal(child, "-STOP");
                                node.stopped = true;
                            }
                        }
                        sample_for(&mut cluster, hold).await;
                        if let Some(node) = cluster.node(voter, i) {
                            if let Some(child) = &node.child {
                                signal(child, "-CONT");
                            }
                            node.stopped = false;
                        }
                        format!("SIGSTOP {name} for {} ms", hold.as_millis())
                    }
                    5 => {
                        let index = cluster.node(voter, i).map(|n| n.index).unwrap_or_default();
                        let lab = cluster.lab.as_ref().context("partitions need the lab")?;
                        lab.cut(index)?;
                        sample_for(&mut cluster, hold).await;
                        cluster.lab.as_ref().context("partitions need the lab")?.heal(index)?;
                        format!("partition: {name} cut off for {} ms", hold.as_millis())
                    }
                    _ => {
                        let edge = cluster.edges.get(i).map(|e| (e.http.clone(), e.args.clone()));
                        let (edge_http, edge_args) = edge.context("edge")?;
                        let quic = edge_args
                            .iter()
                            .position(|a| a == "--quic-listen")
                            .and_then(|p| edge_args.get(p + 1))
                            .cloned()
                            .unwrap_or_default();
                        let voter_http =
                            cluster.voters.get(rng.below(3)).map(|v| v.http.clone()).unwrap_or_default();
                        let offers_from = match &cluster.lab {
                            Some(lab) => lab.second_host_ip(),
                            None => std::net::IpAddr::from([127, 0, 0, 2]),
                        };
                        let burst = tokio::spawn(hostile(edge_http, quic, voter_http, offers_from, hold));
                        sample_for(&mut cluster, hold).await;
                        let held = burst.await.unwrap_or(0);
                        format!("hostile clients at {name}: {held} connections and unfinished WebRTC sessions held for {} ms", hold.as_millis())
                    }
                };
                faults.push(
                    json!({ "at_ms": fault_started.duration_since(started).as_millis() as u64, "fault": what }),
                );
                let rest = args.fault_every.saturating_sub(fault_started.elapsed());
                sample_for(&mut cluster, rest).await;
            }
        }
        Plan::Roll { to, step_every } => {
            roll_check = Some(roll(&mut cluster, to, *step_every, started, &mut faults).await?);
        }
    }
    sample_for(&mut cluster, args.calm).await;
    stop.cancel();
    for c in clients {
        let _ = c.await;
    }
    // After a roll: the cluster stayed at the old command set until the last voter ran
    // the new build, and every voter is at the new build's set after the calm.
    let command_sets = match roll_check {
        Some((before, held)) => {
            let mut after = Vec::new();
            for url in cluster.control_urls() {
                let status = api(&probe, "GET", &join(&url, "/v1/cluster"), None, None).await;
                let status = status.unwrap_or(Value::Null);
                after.push((at(&status, "command_set").as_u64(), at(&status, "build_command_set").as_u64()));
            }
            let raised = after.iter().all(|(set, build)| set.is_some() && set == build);
            let check = json!({
                "before_each_voter_step": before,
                "held_during_the_roll": held,
                "at_end": after.iter().map(|(set, _)| set).collect::<Vec<_>>(),
                "builds_at_end": after.iter().map(|(_, build)| build).collect::<Vec<_>>(),
                "raised_after_the_roll": raised,
            });
            Some((held && raised, check))
        }
        None => None,
    };
    // Final reads of every key through every voter: what survived.
    let mut ops = std::mem::take(&mut *history.lock().unwrap_or_else(PoisonError::into_inner));
    for url in cluster.control_urls() {
        for (key, _) in KEYS {
            let invoked = started.elapsed();
            let answer = api(&probe, "GET", &join(&url, &format!("/v1/rollouts/{key}")), None, None).await;
            let answer = match answer.and_then(|r| at(at(at(&r, "spec"), "gates"), "share_bp").as_u64()) {
                Some(v) => Answer::Read(Some(v)),
                None => Answer::Unknown,
            };
            ops.push(Op {
                key: key.into(),
                client: 99,
                call: Call::Read,
                answer,
                invoked,
                returned: started.elapsed(),
            });
        }
    }
    if let Some(keep) = &args.keep {
        // The history, one operation per line, for a second look.
        let lines: Vec<String> = ops
            .iter()
            .map(|op| {
                let call = match op.call {
                    Call::Write(v) => json!({ "write": v }),
                    Call::Read => json!("read"),
                };
                let answer = match op.answer {
                    Answer::Written => json!("written"),
                    Answer::Read(v) => json!({ "read": v }),
                    Answer::Unknown => json!("unknown"),
                };
                let (invoked, returned) = (op.invoked.as_micros() as u64, op.returned.as_micros() as u64);
                json!({ "key": op.key, "client": op.client, "call": call, "answer": answer, "invoked_us": invoked, "returned_us": returned })
                    .to_string()
            })
            .collect();
        std::fs::write(keep.join("history.jsonl"), lines.join("\n")).context("writing history.jsonl")?;
    }
    let verdict = linearizable::check(&ops, CHECK_BUDGET);
    let summary = linearizable::summarize(&ops);
    let acknowledged = std::mem::take(&mut *acknowledged.lock().unwrap_or_else(PoisonError::into_inner));
    // Every acknowledged change is in the audit log (which keeps the newest events:
    // those older than its oldest entry are not asked for).
    let audit = api(&probe, "GET", &join(&first_voter, "/v1/audit?limit=100000"), None, None).await;
    let events = audit.and_then(|a| at(&a, "events").as_array().cloned()).context("reading the audit log")?;
    let oldest = events.iter().filter_map(|e| at(e, "index").as_u64()).min().unwrap_or(u64::MAX);
    let recorded: std::collections::BTreeSet<&str> =
        events.iter().filter_map(|e| at(e, "request_id").as_str()).collect();
    let checked: Vec<&Acknowledged> =
        acknowledged.iter().filter(|a| a.changed && a.index >= oldest).collect();
    let missing: Vec<&str> =
        checked.iter().map(|a| a.request_id.as_str()).filter(|id| !recorded.contains(id)).collect();

    // Viewers: what each saw.
    let mut viewer_reports = Vec::new();
    let (mut recovery_ok, mut all_playing) = (true, true);
    for (name, mut child) in viewers {
        let exited_early = child.try_wait().ok().flatten().is_some();
        signal(&child, "-TERM");
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), stdout.read_to_string(&mut out)).await;
        }
        let _ = child.wait().await;
        let stats: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        let legs = at(&stats, "legs").as_array().cloned().unwrap_or_default();
        let max_gap = legs.iter().filter_map(|l| at(l, "gap_ms").as_f64()).fold(0.0, f64::max);
        let playing = legs.last().is_some_and(|l| at(l, "frames").as_u64().unwrap_or(0) > 0);
        let ok = !exited_early && playing && max_gap <= RECOVERY_GOAL.as_millis() as f64;
        recovery_ok &= ok;
        all_playing &= !exited_early && playing;
        let long_gaps = long_gaps(&legs, started_unix_ms);
        let mut ends: BTreeMap<String, usize> = BTreeMap::new();
        for leg in &legs {
            *ends.entry(at(leg, "ended").as_str().unwrap_or("?").chars().take(60).collect()).or_default() +=
                1;
        }
        viewer_reports.push(json!({
            "viewer": name, "ok": ok, "exited_early": exited_early, "playing_at_end": playing,
            "legs": legs.len(), "max_gap_ms": max_gap, "frames": at(&stats, "frames"),
            "legs_ended": ends, "long_gaps": long_gaps,
        }));
    }
    for (_, mut child) in media {
        let _ = child.kill().await;
    }

    // Processes: bounds and panics.
    let mut processes = Vec::new();
    let mut bounds_ok = true;
    let mut panics = Vec::new();
    for entry in std::fs::read_dir(&dir)?.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            if let Some(line) = log.lines().find(|l| l.contains("panicked")) {
                panics.push(format!("{}: {line}", path.display()));
            }
        }
    }
    for node in cluster.all() {
        let ok = node.peak_rss_kib <= MAX_RSS_KIB && node.peak_fds <= MAX_FDS && node.peak_tasks <= MAX_TASKS;
        bounds_ok &= ok;
        processes.push(json!({
            "process": node.name, "starts": node.starts, "peak_rss_mib": node.peak_rss_kib / 1024,
            "peak_fds": node.peak_fds, "within_bounds": ok,
            // Voters publish no task gauge.
            "peak_tasks": if node.name.starts_with('e') { json!(node.peak_tasks) } else { Value::Null },
        }));
    }
    for node in cluster.all() {
        if let Some(mut child) = node.child.take() {
            let _ = child.kill().await;
        }
    }
    let linearizable = matches!(verdict, Verdict::Linearizable);
    let versions_ok = command_sets.as_ref().is_none_or(|(ok, _)| *ok);
    let passed =
        linearizable && missing.is_empty() && recovery_ok && bounds_ok && panics.is_empty() && versions_ok;
    let report = json!({
        "passed": passed,
        "seed": args.seed,
        "partitions": args.partitions,
        "started_unix_ms": started_unix_ms,
        "duration_s": args.duration.as_secs_f64(),
        "faults": faults,
        "command_sets": command_sets.as_ref().map(|(_, c)| c),
        "history": summary,
        "linearizable": linearizable,
        "verdict": format!("{verdict:?}"),
        "acknowledged_writes": acknowledged.len(),
        "acknowledged_changes_checked_in_audit": checked.len(),
        "acknowledged_missing_from_audit": missing,
        "viewers": viewer_reports,
        "viewers_recovered": recovery_ok,
        // Each check on its own: the test in CI asserts those that are not timings.
        "checks": {
            "linearizable": linearizable,
            "acknowledged_writes_present": missing.is_empty(),
            "viewers_playing_at_end": all_playing,
            "viewers_recovered_within_goal": recovery_ok,
            "within_bounds": bounds_ok,
            "no_panics": panics.is_empty(),
            "command_set_raised_only_after_the_roll": command_sets.as_ref().map(|(ok, _)| ok),
        },
        "processes": processes,
        "bounds": { "rss_mib": MAX_RSS_KIB / 1024, "fds": MAX_FDS, "tasks": MAX_TASKS, "recovery_ms": RECOVERY_GOAL.as_millis() as u64 },
        "within_bounds": bounds_ok,
        "panics": panics,
        "logs": args.keep.as_ref().map(|d| d.display().to_string()),
    });
    out!("{report}")?;
    drop(temp);
    if !passed {
        bail!("the soak failed a check (see the report)");
    }
    Ok(())
}

/// The roll of [`Plan::Roll`]: voters from the highest id down (as the chart's
/// StatefulSet rolls), then edges, each stopped with SIGTERM (a voter flushes and
/// exits, an edge drains) and started with `to` once it exited, `step_every` apart. A
/// step is recorded in `steps` like a fault. Returns the command sets the voters
/// reported before each voter's step, and whether they held (they must not move before
/// the last one).
async fn roll(
    cluster: &mut Cluster,
    to: &std::path::Path,
    step_every: Duration,
    started: Instant,
    steps: &mut Vec<Value>,
) -> anyhow::Result<(Vec<Value>, bool)> {
    let probe = HttpClient::plain();
    let mut before_last = Vec::new();
    let order: Vec<(bool, usize)> = (0..cluster.voters.len())
        .rev()
        .map(|i| (true, i))
        .chain((0..cluster.edges.len()).map(|i| (false, i)))
        .collect();
    let last_voter = order.iter().position(|(voter, _)| !voter).unwrap_or(order.len()).saturating_sub(1);
    for (step, (voter, i)) in order.into_iter().enumerate() {
        if step <= last_voter {
            // Until the last voter restarts, one voter at least runs the old build: the
            // cluster must keep the set it had (an old build reports none: set 1).
            for url in cluster.control_urls() {
                let status = api(&probe, "GET", &join(&url, "/v1/cluster"), None, None).await;
                let set = status.as_ref().map(|s| at(s, "command_set").as_u64().unwrap_or(1));
                before_last.push(json!(set));
            }
        }
        let step_started = Instant::now();
        let node = cluster.node(voter, i).context("no such node")?;
        let name = node.name.clone();
        if let Some(mut child) = node.child.take() {
            signal(&child, "-TERM");
            // An edge drains first (GOAWAY, then its deadline); past a minute it is killed.
            if tokio::time::timeout(Duration::from_secs(60), child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
        let exited = step_started.elapsed();
        if let Some(node) = cluster.node(voter, i) {
            node.binary = Some(to.to_owned());
        }
        cluster.start(voter, i).await?;
        if voter {
            let url = format!("http://{}", cluster.voters.get(i).map(|v| v.http.clone()).unwrap_or_default());
            until(Duration::from_secs(30), || async {
                let status = api(&probe, "GET", &join(&url, "/v1/cluster"), None, None).await;
                status.is_some_and(|s| at(&s, "leader").as_u64().is_some_and(|l| l != 0))
            })
            .await
            .with_context(|| format!("{name} knows no leader after its upgrade"))?;
        }
        steps.push(json!({
            "at_ms": step_started.duration_since(started).as_millis() as u64,
            "fault": format!("upgrade {name}: SIGTERM, exited after {} ms, started on the new build", exited.as_millis()),
        }));
        sample_for(cluster, step_every.saturating_sub(step_started.elapsed())).await;
    }
    // The set the cluster had before the roll, for as long as an old voter ran.
    let held = before_last.windows(2).all(|pair| pair.first() == pair.last());
    Ok((before_last, held))
}

/// A viewer's gaps longer than half the recovery goal, each with the legs from the
/// last one that played up to the one that played again, placed on the soak's
/// timeline (ms since the faults started, like the faults' `at_ms`).
fn long_gaps(legs: &[Value], started_unix_ms: u64) -> Vec<Value> {
    let mut gaps = Vec::new();
    let mut since_playing = 0;
    for (i, leg) in legs.iter().enumerate() {
        let gap = at(leg, "gap_ms").as_f64().unwrap_or(0.0);
        if gap > RECOVERY_GOAL.as_millis() as f64 / 2.0 {
            let window: Vec<Value> = legs
                .get(since_playing..=i)
                .unwrap_or_default()
                .iter()
                .map(|l| {
                    let ended = at(l, "ended_unix_ms").as_u64().unwrap_or(0);
                    json!({
                        "edge": at(l, "edge").as_str().or(at(l, "url").as_str()),
                        "frames": at(l, "frames"),
                        "ended": at(l, "ended"),
                        "ended_at_ms": ended as i64 - started_unix_ms as i64,
                    })
                })
                .collect();
            gaps.push(json!({ "gap_ms": gap, "legs": window }));
        }
        if at(leg, "frames").as_u64().unwrap_or(0) > 0 {
            since_playing = i;
        }
    }
    gaps
}

/// Samples the processes every 500 ms for `span`.
async fn sample_for(cluster: &mut Cluster, span: Duration) {
    let until = Instant::now() + span;
    loop {
        sample(cluster).await;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(Duration::from_millis(500))).await;
    }
}

impl Node {
    fn empty() -> Node {
        Node {
            name: String::new(),
            binary: None,
            index: 0,
            args: Vec::new(),
            http: String::new(),
            child: None,
            stopped: false,
            starts: 0,
            peak_rss_kib: 0,
            peak_fds: 0,
            peak_tasks: 0.0,
        }
    }
}
