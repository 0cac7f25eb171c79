//! `ferry bench control`: write throughput, latency and leader failover of a
//! 3-voter control plane, for Ferry's own voters or for etcd, measured the same way:
//! every client writes to the leader it found once, one request at a time, over its
//! own persistent connection.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use ferry_client::stats::Samples;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::units;
use ferry_net::http::{HttpClient, Method};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// `ferry control` voters (HTTP API).
    Ferry,
    /// etcd (gRPC KV put); needs a build with `--features etcd-bench`.
    Etcd,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Ferry => "ferry",
            Target::Etcd => "etcd",
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ControlArgs {
    /// Concurrent clients, each with one write in flight.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Measured time.
    #[arg(long, default_value = "10s", value_parser = units::duration)]
    pub duration: Duration,
    /// The system under test.
    #[arg(long, value_enum, default_value = "ferry")]
    pub target: Target,
    /// An existing cluster's client endpoints (ferry: HOST:PORT of each HTTP API;
    /// etcd: http://HOST:PORT). Default: start a fresh 3-member cluster on loopback.
    #[arg(long, value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Operator token for an existing Ferry cluster (--endpoints).
    #[arg(long, env = "FERRY_CONTROL_TOKEN")]
    pub token: Option<String>,
    /// Measure leader failover instead of throughput: warm up, stop the leader while a
    /// write goes through a follower, SIGKILL it, then time until that write, a write
    /// sent after the kill, and the first of many retried writes are acknowledged.
    #[arg(long, conflicts_with = "endpoints")]
    pub failover: bool,
    /// Failover runs, each on a fresh cluster.
    #[arg(long, default_value_t = 1)]
    pub failover_runs: usize,
    /// Upper bound on writes per client.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_writes: u64,
    /// The ferry binary to run voters with (default: this one).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// The etcd binary.
    #[arg(long, default_value = "etcd")]
    pub etcd_binary: PathBuf,
    /// etcd --heartbeat-interval (Ferry's raft tick is 100 ms).
    #[arg(long, default_value = "100ms", value_parser = units::duration)]
    pub etcd_heartbeat: Duration,
    /// etcd --election-timeout.
    #[arg(long, default_value = "1000ms", value_parser = units::duration)]
    pub etcd_election_timeout: Duration,
}

/// Distinct keys each client cycles through, so the state stays small.
const KEYS_PER_CLIENT: u64 = 16;
/// The value written: the same bytes for both targets.
const EDGE_BODY: &str = r#"{"region":"eu","quic_addr":"127.0.0.1:1","http_addr":"127.0.0.1:2"}"#;
/// Pause after a failed write before the next one.
const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// Failover: one client's writes before the kill.
const WARM_UP: Duration = Duration::from_secs(2);
/// Failover: give up after this long without a successful write.
const FAILOVER_LIMIT: Duration = Duration::from_secs(30);
/// Failover: each attempt's own deadline, and how many may be in flight.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_IN_FLIGHT: usize = 256;
/// Failover: the deadline of the single writes through followers (`ferry ctl`'s default
/// `--timeout` is 10 s).
const SINGLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Failover: how long the leader stays stopped before the kill, so the write through a
/// follower is forwarded to it (and lost with it).
const PARK: Duration = Duration::from_millis(100);
/// Largest response accepted from the HTTP API.
const MAX_RESPONSE: usize = 1 << 20;

pub async fn run(args: ControlArgs) -> anyhow::Result<()> {
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    if args.target == Target::Etcd && !cfg!(feature = "etcd-bench") {
        bail!(
            "this ferry binary was built without etcd support; rebuild with \
             `cargo build --release --features etcd-bench` (needs protoc) to use --target etcd"
        );
    }
    if args.failover {
        failover(&args).await
    } else {
        throughput(&args).await
    }
}

/// How to reach the system under test.
#[derive(Debug, Clone)]
enum Api {
    Ferry { token: Arc<str> },
    Etcd,
}

/// One member of a cluster this bench started; killed when dropped.
struct Member {
    child: Child,
    endpoint: String,
    /// Kept open so the member can still write to stdout.
    _stdout: Option<Lines<BufReader<ChildStdout>>>,
}

/// A cluster this bench started, in a temporary directory removed at the end.
struct Cluster {
    members: Vec<Member>,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(args: &ControlArgs, token: &str) -> anyhow::Result<Cluster> {
        let dir = super::failover::temp_dir(args.target.name())?;
        let members = match args.target {
            Target::Ferry => start_ferry(args, token, dir.path()).await?,
            Target::Etcd => start_etcd(args, dir.path())?,
        };
        Ok(Cluster { members, dir })
    }

    fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint.clone()).collect()
    }

    /// Kills every member, waits for them, then removes the data directories.
    async fn shutdown(mut self) {
        for m in &mut self.members {
            let _ = m.child.kill().await;
        }
        drop(self.dir);
    }
}

fn free_udp_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn free_tcp_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<Stdio> {
    let path = dir.join(format!("{name}.log"));
    Ok(Stdio::from(
        std::fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?,
    ))
}

async fn start_ferry(args: &ControlArgs, token: &str, dir: &Path) -> anyhow::Result<Vec<Member>> {
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe()?,
    };
    let peers: Vec<String> = (1..=3)
        .map(|id| Ok(format!("{id}=127.0.0.1:{}", free_udp_port()?)))
        .collect::<anyhow::Result<_>>()?;
    let peers = peers.join(",");
    let mut members = Vec::new();
    for id in 1..=3u64 {
        let mut cmd = crate::process::ferry_child(&binary);
        // Raft QUIC with TLS as in production, but without client certificates: the
        // per-message cost is the same, and the bench needs no CA. Plain HTTP clients,
        // as etcd's are in the same bench.
        cmd.args(["control", "--id", &id.to_string(), "--peers", &peers, "--http-listen", "127.0.0.1:0"])
            .args(["--insecure-raft", "--insecure-http"])
            .arg("--data-dir")
            .arg(dir.join(format!("v{id}")))
            .args(["--log", "warn"])
            // Every bench client connects from 127.0.0.1: no per-address share.
            .args(["--http-max-connections-per-ip", "65536"])
            .env("FERRY_CONTROL_TOKEN", token)
            .env_remove("FERRY_CONFIG")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file(dir, &format!("voter-{id}"))?)
            .kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("cannot run {}", binary.display()))?;
        let stdout = child.stdout.take().context("voter stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .with_context(|| format!("voter {id} did not report ready"))??
            .with_context(|| format!("voter {id} exited before ready (log: {})", dir.display()))?;
        let ready: serde_json::Value = serde_json::from_str(&line).context("voter ready line")?;
        let http = ready.get("http").and_then(|h| h.as_str()).context("ready line without http")?.to_owned();
        members.push(Member { child, endpoint: http, _stdout: Some(lines) });
    }
    Ok(members)
}

fn start_etcd(args: &ControlArgs, dir: &Path) -> anyhow::Result<Vec<Member>> {
    let ports: Vec<(u16, u16)> =
        (0..3).map(|_| Ok((free_tcp_port()?, free_tcp_port()?))).collect::<anyhow::Result<_>>()?;
    let cluster: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("e{}=http://127.0.0.1:{peer}", i + 1))
        .collect();
    let cluster = cluster.join(",");
    let mut members = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let name = format!("e{}", i + 1);
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut cmd = Command::new(&args.etcd_binary);
        cmd.args(["--name", &name])
            .arg("--data-dir")
            .arg(dir.join(&name))
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &cluster, "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "ferry-bench"])
            .args(["--heartbeat-interval", &args.etcd_heartbeat.as_millis().to_string()])
            .args(["--election-timeout", &args.etcd_election_timeout.as_millis().to_string()])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(dir, &name)?)
            .kill_on_drop(true);
        let child = cmd.spawn().with_context(|| {
            format!("cannot run {} (Debian: apt-get install etcd-server)", args.etcd_binary.display())
        })?;
        members.push(Member { child, endpoint: client_url, _stdout: None });
    }
    Ok(members)
}

/// Finds the endpoint that is the leader, polling for up to 30 s.
async fn find_leader(api: &Api, endpoints: &[String]) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last_error = String::from("no endpoint answered");
    while Instant::now() < deadline {
        for (i, endpoint) in endpoints.iter().enumerate() {
            match is_leader(api, endpoint).await {
                Ok(true) => return Ok(i),
                Ok(false) => {}
                Err(e) => last_error = format!("{endpoint}: {e:#}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no leader among {endpoints:?} within 30 s (last error: {last_error})")
}

async fn is_leader(api: &Api, endpoint: &str) -> anyhow::Result<bool> {
    match api {
        Api::Ferry { token } => {
            let r = HttpClient::plain()
                .get(&format!("http://{endpoint}/v1/cluster"))
                .bearer(token)
                .timeout(Duration::from_secs(2))
                .send()
                .await?;
            if r.status != 200 {
                bail!("GET /v1/cluster: HTTP {}", r.status);
            }
            let v = r.json();
            let id = v.get("id").and_then(|x| x.as_u64()).unwrap_or(0);
            let leader = v.get("leader").and_then(|x| x.as_u64()).unwrap_or(0);
            Ok(leader != 0 && id == leader)
        }
        Api::Etcd => etcd::is_leader(endpoint).await,
    }
}

/// One client's connection to one endpoint.
enum Writer {
    Ferry {
        endpoint: String,
        token: Arc<str>,
        /// Keeps its connection alive between writes (one client, one connection).
        /// Boxed: the etcd variant is a pointer too.
        http: Box<HttpClient>,
    },
    #[cfg(feature = "etcd-bench")]
    Etcd(Box<etcd_client::Client>),
}

impl Writer {
    async fn connect(api: &Api, endpoint: &str) -> anyhow::Result<Writer> {
        match api {
            Api::Ferry { token } => Ok(Writer::Ferry {
                endpoint: endpoint.to_owned(),
                token: token.clone(),
                http: Box::new(HttpClient::plain().with_max_response(MAX_RESPONSE)),
            }),
            Api::Etcd => etcd::writer(endpoint).await,
        }
    }

    /// One write of `key`; Ok only when the system acknowledged it.
    async fn put(&mut self, key: &str, idempotency_key: Option<&str>) -> anyhow::Result<()> {
        match self {
            Writer::Ferry { endpoint, token, http } => {
                let url = format!("http://{endpoint}/v1/edges/{key}");
                let mut request = http
                    .request(Method::PUT, &url)
                    .bearer(token)
                    .body("application/json", EDGE_BODY)
                    .timeout(Duration::from_secs(30));
                if let Some(k) = idempotency_key {
                    request = request.header("idempotency-key", k);
                }
                let r = request.send().await?;
                if r.status != 200 {
                    bail!("HTTP {}: {}", r.status, r.text());
                }
                Ok(())
            }
            #[cfg(feature = "etcd-bench")]
            Writer::Etcd(client) => {
                client.put(key, EDGE_BODY, None).await?;
                Ok(())
            }
        }
    }
}

fn key(target: Target, client: usize, n: u64) -> String {
    match target {
        Target::Ferry => format!("bench-c{client}-k{}", n % KEYS_PER_CLIENT),
        Target::Etcd => format!("bench/c{client}/k{}", n % KEYS_PER_CLIENT),
    }
}

/// A cluster to measure: one this bench started, or the one given by --endpoints.
async fn prepare(args: &ControlArgs) -> anyhow::Result<(Api, Vec<String>, Option<Cluster>)> {
    if args.endpoints.is_empty() {
        let token = format!("ferry-bench-token-{}", std::process::id());
        let cluster = Cluster::start(args, &token).await?;
        let api = match args.target {
            Target::Ferry => Api::Ferry { token: token.into() },
            Target::Etcd => Api::Etcd,
        };
        Ok((api, cluster.endpoints(), Some(cluster)))
    } else {
        let api = match args.target {
            Target::Ferry => {
                let token = args
                    .token
                    .clone()
                    .context("give the operator token with --token or FERRY_CONTROL_TOKEN")?;
                Api::Ferry { token: token.into() }
            }
            Target::Etcd => Api::Etcd,
        };
        let endpoints = args
            .endpoints
            .iter()
            .map(|e| match args.target {
                Target::Ferry => e.trim().trim_start_matches("http://").trim_end_matches('/').to_owned(),
                Target::Etcd => e.trim().to_owned(),
            })
            .collect();
        Ok((api, endpoints, None))
    }
}

async fn throughput(args: &ControlArgs) -> anyhow::Result<()> {
    let (api, endpoints, cluster) = prepare(args).await?;
    let result = measure_throughput(args, &api, &endpoints).await;
    if let Some(c) = cluster {
        c.shutdown().await;
    }
    let (report, summary) = result?;
    out!("{report}")?;
    eprintln!("{summary}");
    Ok(())
}

/// What one client did in the measured window.
#[derive(Default)]
struct ClientResult {
    writes: u64,
    errors: u64,
    latency: Samples,
    last_error: Option<String>,
    /// The slowest writes, one per stall: (start, µs after the clock started; latency, µs).
    slowest: Vec<(u64, u64)>,
}

/// How many of the slowest writes the report names, with when each started.
const SLOWEST: usize = 8;
/// Writes that started this close together count as one stall (every client stalls at
/// once when the leader does): the report keeps the slowest of them.
const STALL_US: u64 = 250_000;

/// Keeps the `SLOWEST` largest latencies in `slowest`, one per stall.
fn keep_slowest(slowest: &mut Vec<(u64, u64)>, at_us: u64, latency_us: u64) {
    if let Some(same) = slowest.iter_mut().find(|(at, _)| at.abs_diff(at_us) < STALL_US) {
        if same.1 < latency_us {
            *same = (at_us, latency_us);
        }
    } else if slowest.len() < SLOWEST {
        slowest.push((at_us, latency_us));
    } else if let Some(min) = slowest.iter_mut().min_by_key(|(_, l)| *l) {
        if min.1 < latency_us {
            *min = (at_us, latency_us);
        }
    }
}

async fn measure_throughput(
    args: &ControlArgs,
    api: &Api,
    endpoints: &[String],
) -> anyhow::Result<(serde_json::Value, String)> {
    let leader_index = find_leader(api, endpoints).await?;
    let leader = endpoints.get(leader_index).context("leader endpoint")?.clone();
    // One acknowledged write before the clock starts: the path works and the
    // leader has committed in its term.
    let mut probe = Writer::connect(api, &leader).await?;
    retry_until_ok(&mut probe, &key(args.target, args.clients, 0), Duration::from_secs(10)).await?;

    let barrier = Arc::new(tokio::sync::Barrier::new(args.clients + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..args.clients {
        let mut writer = Writer::connect(api, &leader).await?;
        let barrier = barrier.clone();
        let (duration, max, target) = (args.duration, args.max_writes, args.target);
        tasks.spawn(async move {
            barrier.wait().await;
            let clock = Instant::now();
            let deadline = clock + duration;
            let mut r = ClientResult::default();
            let mut n = 0u64;
            while Instant::now() < deadline && r.writes < max {
                let started = Instant::now();
                let outcome = writer.put(&key(target, c, n), None).await;
                n += 1;
                match outcome {
                    Ok(()) => {
                        r.writes += 1;
                        let latency = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                        r.latency.push(latency);
                        let at = u64::try_from(started.duration_since(clock).as_micros()).unwrap_or(u64::MAX);
                        keep_slowest(&mut r.slowest, at, latency);
                    }
                    Err(e) => {
                        r.errors += 1;
                        r.last_error = Some(format!("{e:#}"));
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
            }
            r
        });
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut total = ClientResult::default();
    while let Some(joined) = tasks.join_next().await {
        let r = joined.context("client task failed")?;
        total.writes += r.writes;
        total.errors += r.errors;
        total.latency.extend(&r.latency);
        for (at, latency) in r.slowest {
            keep_slowest(&mut total.slowest, at, latency);
        }
        if r.last_error.is_some() {
            total.last_error = r.last_error;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let lat = total.latency.summary().unwrap_or_default();
    let rate = total.writes as f64 / elapsed;
    let connection = match args.target {
        Target::Ferry => "HTTP/1.1 keep-alive, one TCP connection per client",
        Target::Etcd => "gRPC (HTTP/2), one channel per client",
    };
    let report = json!({
        "scenario": "control",
        "target": args.target.name(),
        "clients": args.clients,
        "duration_s": elapsed,
        "writes": total.writes,
        "errors": total.errors,
        "writes_per_s": rate,
        "latency_ms": { "p50": lat.p50, "p99": lat.p99, "max": lat.max },
        "slowest_writes": slowest_json(&total.slowest),
        "connection": connection,
        "cluster": if args.endpoints.is_empty() { "spawned 3 members on 127.0.0.1" } else { "external" },
        "last_error": total.last_error,
    });
    let summary = format!(
        "control {}: {} clients, {:.0} writes/s ({} writes, {} errors in {elapsed:.1} s), \
         latency p50 {:.2} ms p99 {:.2} ms max {:.2} ms ({connection})",
        args.target.name(),
        args.clients,
        rate,
        total.writes,
        total.errors,
        lat.p50,
        lat.p99,
        lat.max
    );
    Ok((report, summary))
}

/// The slowest writes, slowest first: when each started (ms after the clock started) and
/// how long it took, so a stall can be matched with what the members logged then.
fn slowest_json(slowest: &[(u64, u64)]) -> serde_json::Value {
    let mut sorted = slowest.to_vec();
    sorted.sort_by_key(|(_, latency)| std::cmp::Reverse(*latency));
    sorted
        .iter()
        .map(|(at, latency)| json!({ "at_ms": *at as f64 / 1000.0, "ms": *latency as f64 / 1000.0 }))
        .collect()
}

/// Writes until one is acknowledged, or fails after `limit`.
async fn retry_until_ok(writer: &mut Writer, key: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let e = match tokio::time::timeout(ATTEMPT_TIMEOUT, writer.put(key, None)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => anyhow::anyhow!("timed out"),
        };
        if Instant::now() >= deadline {
            return Err(e.context(format!("no acknowledged write within {limit:?}")));
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

async fn failover(args: &ControlArgs) -> anyhow::Result<()> {
    if args.failover_runs == 0 {
        bail!("--failover-runs must be at least 1");
    }
    let mut runs = Vec::new();
    let mut times = Vec::new();
    let mut in_flight = Vec::new();
    let mut after_kill = Vec::new();
    for run in 1..=args.failover_runs {
        let (api, endpoints, cluster) = prepare(args).await?;
        let mut cluster = cluster.context("--failover needs a cluster this bench starts")?;
        let result = failover_once(args, &api, &endpoints, &mut cluster).await;
        cluster.shutdown().await;
        let r = result?;
        let show = |ms: Option<f64>| ms.map_or_else(|| "never".to_owned(), |ms| format!("{ms:.0} ms"));
        eprintln!(
            "control {} failover run {run}: first write {:.0} ms after SIGKILL of the leader \
             ({} attempts, {} warm-up writes); write in flight through a follower: {}; \
             sent to a follower after the kill: {}",
            args.target.name(),
            r.failover_ms,
            r.attempts,
            r.warm_up_writes,
            show(r.in_flight_ms),
            show(r.sent_after_kill_ms),
        );
        times.push(r.failover_ms);
        in_flight.push(r.in_flight_ms);
        after_kill.push(r.sent_after_kill_ms);
        runs.push(json!({
            "failover_ms": r.failover_ms,
            "in_flight_ms": r.in_flight_ms,
            "sent_after_kill_ms": r.sent_after_kill_ms,
            "attempts": r.attempts,
            "warm_up_writes": r.warm_up_writes,
            "answered_by": r.answered_by,
        }));
    }
    let median = |values: &[Option<f64>]| {
        // A write never acknowledged counts as the slowest.
        let mut sorted: Vec<f64> = values.iter().map(|v| v.unwrap_or(f64::INFINITY)).collect();
        sorted.sort_by(f64::total_cmp);
        sorted.get(sorted.len() / 2).copied().filter(|m| m.is_finite())
    };
    let times_opt: Vec<Option<f64>> = times.iter().copied().map(Some).collect();
    let median_failover = median(&times_opt).unwrap_or(f64::NAN);
    let report = json!({
        "scenario": "control-failover",
        "target": args.target.name(),
        "runs": runs,
        "failover_ms": times,
        "failover_ms_median": median_failover,
        "in_flight_ms_median": median(&in_flight),
        "sent_after_kill_ms_median": median(&after_kill),
        "method": "1 client writes to the leader for 2 s; the leader gets SIGSTOP, a single write \
                   (one attempt, 10 s deadline, like `ferry ctl`) goes to a follower, and 100 ms \
                   later the leader gets SIGKILL; a second single write goes to the other \
                   follower right after the kill. Then a write attempt every 10 ms round-robin \
                   over all 3 endpoints (each attempt with a 2 s timeout, up to 256 in flight, \
                   same key and Idempotency-Key). failover_ms = kill to the first acknowledged \
                   write; in_flight_ms and sent_after_kill_ms = kill to the single writes' \
                   answers (null: not acknowledged within 10 s)",
    });
    out!("{report}")?;
    let list: Vec<String> = times.iter().map(|t| format!("{t:.0}")).collect();
    eprintln!(
        "control {} failover: {} ms, median {median_failover:.0} ms",
        args.target.name(),
        list.join(", ")
    );
    Ok(())
}

struct FailoverRun {
    failover_ms: f64,
    /// Kill to the answer of a write proposed through a follower while the leader was
    /// stopped (`None`: not acknowledged within `SINGLE_TIMEOUT`).
    in_flight_ms: Option<f64>,
    /// Kill to the answer of a write sent to a follower right after the kill.
    sent_after_kill_ms: Option<f64>,
    attempts: u64,
    warm_up_writes: u64,
    answered_by: String,
}

async fn failover_once(
    args: &ControlArgs,
    api: &Api,
    endpoints: &[String],
    cluster: &mut Cluster,
) -> anyhow::Result<FailoverRun> {
    let leader_index = find_leader(api, endpoints).await?;
    let leader = endpoints.get(leader_index).context("leader endpoint")?.clone();
    let mut writer = Writer::connect(api, &leader).await?;
    retry_until_ok(&mut writer, &key(args.target, 0, 0), Duration::from_secs(10)).await?;
    let warm_until = Instant::now() + WARM_UP;
    let mut warm_up_writes = 0u64;
    let mut n = 1u64;
    while Instant::now() < warm_until {
        if writer.put(&key(args.target, 0, n), None).await.is_ok() {
            warm_up_writes += 1;
        }
        n += 1;
    }
    // Writers for every endpoint, made before the kill (an etcd client per endpoint;
    // Ferry attempts open a fresh connection each, so they can overlap).
    let mut writers = Vec::new();
    for endpoint in endpoints {
        writers.push(Writer::connect(api, endpoint).await.ok());
    }
    // Single writes through followers, each one attempt with a long deadline, as
    // `ferry ctl` sends them: one proposed while the leader is stopped (so it is
    // forwarded to the leader and lost with it), one sent right after the kill.
    let followers: Vec<usize> = (0..endpoints.len()).filter(|i| *i != leader_index).collect();
    let single = |slot: usize, key: String, idempotency: String| {
        let writer = writers.get(slot).and_then(Option::as_ref).map(Writer::fresh);
        tokio::spawn(async move {
            let mut writer = writer?;
            let outcome = tokio::time::timeout(SINGLE_TIMEOUT, writer.put(&key, Some(&idempotency))).await;
            matches!(outcome, Ok(Ok(()))).then(Instant::now)
        })
    };
    let pid = std::process::id();
    let member = cluster.members.get_mut(leader_index).context("leader process")?;
    super::soak::signal(&member.child, "-STOP");
    let parked = single(
        *followers.first().context("a follower")?,
        key(args.target, 1, n),
        format!("bench-in-flight-{pid}-{n}"),
    );
    tokio::time::sleep(PARK).await;
    let killed = Instant::now();
    member.child.start_kill().context("cannot kill the leader")?;
    let after_kill = single(
        *followers.last().context("a follower")?,
        key(args.target, 2, n),
        format!("bench-after-kill-{pid}-{n}"),
    );
    let key = key(args.target, 0, n);
    let idempotency = format!("bench-failover-{pid}-{n}");

    let mut in_flight = tokio::task::JoinSet::new();
    let mut attempts = 0u64;
    let mut tick = tokio::time::interval(RETRY_PAUSE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if killed.elapsed() > FAILOVER_LIMIT {
            bail!("no acknowledged write within {FAILOVER_LIMIT:?} of killing the leader");
        }
        tokio::select! {
            _ = tick.tick() => {
                if in_flight.len() >= MAX_IN_FLIGHT {
                    continue;
                }
                let slot = usize::try_from(attempts).unwrap_or(0) % endpoints.len().max(1);
                attempts += 1;
                let endpoint = endpoints.get(slot).context("endpoint")?.clone();
                let mut writer = match writers.get(slot) {
                    Some(Some(w)) => w.fresh(),
                    _ => match Writer::connect(api, &endpoint).await {
                        Ok(w) => w,
                        Err(_) => continue,
                    },
                };
                let (key, idempotency) = (key.clone(), idempotency.clone());
                in_flight.spawn(async move {
                    let outcome = tokio::time::timeout(ATTEMPT_TIMEOUT, writer.put(&key, Some(&idempotency))).await;
                    (endpoint, matches!(outcome, Ok(Ok(()))))
                });
            }
            Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Ok((endpoint, true)) = joined {
                    let failover_ms = killed.elapsed().as_secs_f64() * 1000.0;
                    in_flight.abort_all();
                    let since_kill = |done: Option<Instant>| {
                        done.map(|t| t.saturating_duration_since(killed).as_secs_f64() * 1000.0)
                    };
                    let in_flight_ms = since_kill(parked.await.ok().flatten());
                    let sent_after_kill_ms = since_kill(after_kill.await.ok().flatten());
                    return Ok(FailoverRun {
                        failover_ms,
                        in_flight_ms,
                        sent_after_kill_ms,
                        attempts,
                        warm_up_writes,
                        answered_by: endpoint,
                    });
                }
            }
        }
    }
}

impl Writer {
    /// A writer for the same endpoint that can run alongside this one: a new HTTP
    /// connection for Ferry, a clone of the multiplexed gRPC channel for etcd.
    fn fresh(&self) -> Writer {
        match self {
            Writer::Ferry { endpoint, token, .. } => Writer::Ferry {
                endpoint: endpoint.clone(),
                token: token.clone(),
                http: Box::new(HttpClient::plain().with_max_response(MAX_RESPONSE)),
            },
            #[cfg(feature = "etcd-bench")]
            Writer::Etcd(client) => Writer::Etcd(client.clone()),
        }
    }
}

#[cfg(feature = "etcd-bench")]
mod etcd {
    use std::time::Duration;

    use etcd_client::{Client, ConnectOptions};

    use super::Writer;

    fn options() -> ConnectOptions {
        ConnectOptions::new().with_connect_timeout(Duration::from_secs(2))
    }

    pub async fn is_leader(endpoint: &str) -> anyhow::Result<bool> {
        let mut client = Client::connect([endpoint], Some(options())).await?;
        let status = tokio::time::timeout(Duration::from_secs(2), client.status()).await??;
        let me = status.header().map(|h| h.member_id()).unwrap_or(0);
        Ok(status.leader() != 0 && status.leader() == me)
    }

    pub async fn writer(endpoint: &str) -> anyhow::Result<Writer> {
        Ok(Writer::Etcd(Box::new(Client::connect([endpoint], Some(options())).await?)))
    }
}

#[cfg(not(feature = "etcd-bench"))]
mod etcd {
    use super::Writer;

    const MISSING: &str = "built without etcd support; rebuild with `--features etcd-bench`";

    pub async fn is_leader(_endpoint: &str) -> anyhow::Result<bool> {
        anyhow::bail!(MISSING)
    }

    pub async fn writer(_endpoint: &str) -> anyhow::Result<Writer> {
        anyhow::bail!(MISSING)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_in_a_small_set() {
        assert_eq!(key(Target::Ferry, 3, 17), "bench-c3-k1");
        assert_eq!(key(Target::Etcd, 0, 16), "bench/c0/k0");
    }
}
