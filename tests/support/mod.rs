//! Shared test harness: real `ferry` processes on loopback, killed when dropped.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

pub mod browser;
pub mod http;
pub mod netns;
pub mod webrtc;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Tests that load both cores (many processes) take this lock so they do not
/// starve each other into false failures.
static HEAVY: Mutex<()> = Mutex::new(());

pub fn heavy() -> MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn ferry_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ferry")
}

pub fn ferry() -> Command {
    let mut cmd = Command::new(ferry_bin());
    cmd.env("RUST_LOG", "warn").env_remove("FERRY_CONFIG");
    cmd
}

/// A child process killed (SIGKILL) and reaped on drop, pass or fail.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { child, name: name.to_owned() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for exit with a deadline; returns the output (stdout must be piped).
    pub fn wait_output(mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        // Drain the pipes while waiting, so a chatty child never blocks on a full pipe.
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                if let Some(mut pipe) = pipe {
                    let _ = pipe.read_to_end(&mut bytes);
                }
                bytes
            })
        };
        let stdout = drain(self.child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
        let stderr = drain(self.child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
        loop {
            match self.child.try_wait().unwrap() {
                Some(_) => break,
                None if Instant::now() > deadline => {
                    panic!("{} did not exit within {timeout:?}", self.name);
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let stdout = stdout.join().unwrap();
        let stderr = stderr.join().unwrap();
        let status = self.child.wait().unwrap();
        Output { status, stdout, stderr }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().unwrap();
        assert!(status.success());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running edge and its bound addresses.
pub struct Edge {
    pub proc: Proc,
    pub quic: String,
    pub http: String,
}

impl Edge {
    pub fn start(node: &str, extra: &[&str]) -> Edge {
        Edge::start_with(ferry(), node, extra)
    }

    /// Starts an edge from `cmd` (e.g. inside a network namespace). `--quic-listen`
    /// and `--http-listen` default to 127.0.0.1:0 unless `extra` gives them. An edge
    /// without `--token-secret-file` serves anonymous clients and relays (tests of
    /// the media path); one with it needs tokens, like production.
    pub fn start_with(mut cmd: Command, node: &str, extra: &[&str]) -> Edge {
        cmd.env("RUST_LOG", "warn").env_remove("FERRY_CONFIG");
        cmd.args(["edge", "--node-id", node]);
        if !extra.contains(&"--token-secret-file") {
            cmd.arg("--allow-anonymous");
        }
        for flag in ["--quic-listen", "--http-listen"] {
            if !extra.contains(&flag) {
                cmd.args([flag, "127.0.0.1:0"]);
            }
        }
        cmd.args(gossip_keyring_args(extra));
        cmd.args(extra).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut proc = Proc::spawn(&format!("edge {node}"), &mut cmd);
        let stdout = proc.child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let ready: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("edge {node} ready line {line:?}: {e}"));
        assert_eq!(ready["event"], "ready");
        Edge {
            proc,
            quic: ready["quic"].as_str().unwrap().into(),
            http: ready["http"].as_str().unwrap().into(),
        }
    }

    pub fn metrics(&self) -> String {
        http_get(&self.http, "/metrics").1
    }

    /// The value of one sample line (`name{labels}`), if present.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        metric_value(&self.metrics(), sample)
    }

    /// Sum of every sample of a family (all label sets).
    pub fn metric_sum(&self, family: &str) -> f64 {
        metric_sum(&self.metrics(), family)
    }
}

pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
}

pub fn metric_sum(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.strip_prefix(family).is_some_and(|r| r.starts_with('{') || r.starts_with(' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A GET: (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let reply = http::exchange(addr, "GET", path, &[], b"", Duration::from_secs(10)).unwrap();
    (reply.status, reply.text())
}

/// Polls `check` until it returns Some, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `check` until it returns `Ok`, or panics with `what` and the last `Err` (what
/// was seen instead) after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return v,
            Err(seen) => {
                assert!(Instant::now() < deadline, "timed out waiting for {what}; last seen: {seen}")
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `ferry publish --synthetic` (JSON stats on stdout).
pub fn publish_synthetic(edge: &Edge, stream: &str, duration: &str) -> Proc {
    let mut cmd = ferry();
    cmd.args(["publish", "--edge", &edge.quic, "--stream", stream, "--synthetic", "--insecure", "--json"])
        .args(["--duration", duration])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    Proc::spawn("publisher", &mut cmd)
}

/// Starts `ferry watch --json` with extra flags.
pub fn watch(edge: &Edge, stream: &str, extra: &[&str]) -> Proc {
    let mut cmd = ferry();
    cmd.args(["watch", "--edge", &edge.quic, "--stream", stream, "--insecure", "--json"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    Proc::spawn("watcher", &mut cmd)
}

/// Waits for a JSON-printing process and parses its stdout.
pub fn json_output(proc: Proc, timeout: Duration) -> serde_json::Value {
    let name = proc.name.clone();
    let out = proc.wait_output(timeout);
    assert!(out.status.success(), "{name} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{name} printed {:?}: {e}", String::from_utf8_lossy(&out.stdout)))
}

/// Waits until `edge` carries `stream` (its publisher announced).
pub fn wait_for_stream(edge: &Edge) {
    wait_for("the stream to be published", Duration::from_secs(20), || {
        (edge.metric("ferry_streams").unwrap_or(0.0) >= 1.0).then_some(())
    });
}

/// A fresh temporary directory named after its test, removed on drop.
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        TempDir(tempfile::Builder::new().prefix(&format!("ferry-test-{tag}-")).tempdir().unwrap())
    }
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

/// Resident memory of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// An HTTP/1.1 request with an optional JSON body and bearer token: (status, JSON body).
pub fn http_json(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let body = body.unwrap_or("");
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut all: Vec<(&str, &str)> = Vec::new();
    if !body.is_empty() {
        all.push(("content-type", "application/json"));
    }
    if let Some(bearer) = &bearer {
        all.push(("authorization", bearer));
    }
    all.extend_from_slice(headers);
    let reply = http::exchange(addr, method, path, &all, body.as_bytes(), Duration::from_secs(30)).unwrap();
    (reply.status, reply.json())
}

/// A free TCP port on loopback (bound and released), below the ephemeral range.
pub fn free_tcp_port() -> u16 {
    free_port(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
}

/// A free UDP port on loopback (bound and released), below the ephemeral range.
pub fn free_udp_port() -> u16 {
    free_port(|port| std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok())
}

/// A port in 20000–31999, below Linux's ephemeral range (32768–60999), that `bind`
/// accepts now. Tests reuse these ports when they restart a process (a voter's raft
/// address, an edge's gossip or HTTP port); a port the kernel handed out as ephemeral
/// could meanwhile become the source port of any outgoing connection or socket of a
/// parallel test, and the restarted process would fail to bind it. Each test process
/// walks the range from its own offset.
fn free_port(bind: impl Fn(u16) -> bool) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const BASE: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = std::process::id().wrapping_mul(2_654_435_761) >> 7;
    for _ in 0..SPAN {
        // 7 is coprime with SPAN: the walk visits every port once.
        let step = NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(7);
        let port = BASE + offset.wrapping_add(step) % SPAN;
        if bind(port as u16) {
            return port as u16;
        }
    }
    panic!("no free port in {BASE}..{}", BASE + SPAN);
}

pub const TOKEN: &str = "test-operator-token-0123456789";

/// One control-plane voter process.
pub struct Voter {
    pub id: u64,
    pub proc: Proc,
    /// The API's base URL: `https://127.0.0.1:PORT` (`http://` with `--insecure-http`).
    pub http: String,
    /// The CA its certificate comes from (`None` with `--insecure-raft`).
    pub ca: Option<PathBuf>,
    pub raft: String,
    pub data_dir: PathBuf,
    pub peers: String,
    pub extra: Vec<String>,
}

impl Voter {
    pub fn start(id: u64, peers: &str, data_dir: &Path, extra: &[&str]) -> Voter {
        let raft = peers
            .split(',')
            .find_map(|p| p.strip_prefix(&format!("{id}=")))
            .unwrap_or_else(|| panic!("no address for voter {id} in {peers}"))
            .to_owned();
        let mut cmd = ferry();
        cmd.args(["control", "--id", &id.to_string(), "--peers", peers]);
        if !extra.contains(&"--http-listen") {
            cmd.args(["--http-listen", "127.0.0.1:0"]);
        }
        cmd.args(gossip_keyring_args(extra));
        // Raft is mutual TLS: without certificates of its own, a voter gets one from a
        // CA shared by the voters whose data dirs sit side by side.
        let mut ca = extra.iter().position(|a| *a == "--ca-file").map(|i| PathBuf::from(extra[i + 1]));
        if ca.is_none() && !extra.contains(&"--insecure-raft") {
            let args = voter_cert_args(data_dir, id);
            ca = Some(PathBuf::from(&args[1]));
            cmd.args(args);
        }
        cmd.arg("--data-dir")
            .arg(data_dir)
            .args(["--snapshot-every", "50"])
            .args(extra)
            .env("FERRY_CONTROL_TOKEN", TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut proc = Proc::spawn(&format!("voter {id}"), &mut cmd);
        let mut line = String::new();
        BufReader::new(proc.child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let ready: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("voter {id} ready line {line:?}: {e}"));
        Voter {
            id,
            proc,
            http: ready["url"].as_str().unwrap().to_owned(),
            ca,
            raft,
            data_dir: data_dir.to_owned(),
            peers: peers.to_owned(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The API's `HOST:PORT`.
    pub fn addr(&self) -> &str {
        self.http.split_once("://").map_or(self.http.as_str(), |(_, a)| a)
    }

    /// `--control-plane URL --ca-file CA` for `ferry ctl` and routed clients.
    pub fn ctl_args(voters: &[&Voter]) -> Vec<String> {
        let urls: Vec<&str> = voters.iter().map(|v| v.http.as_str()).collect();
        let mut args = vec!["--control-plane".to_owned(), urls.join(",")];
        if let Some(ca) = voters.first().and_then(|v| v.ca.as_ref()) {
            args.extend(["--ca-file".to_owned(), ca.display().to_string()]);
        }
        args
    }

    /// Kills (SIGKILL) and starts again on the same data dir and raft address.
    pub fn restart(self) -> Voter {
        let Voter { id, proc, data_dir, peers, extra, .. } = self;
        drop(proc);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        Voter::start(id, &peers, &data_dir, &extra)
    }

    /// Sends `sig` (`-STOP`, `-CONT`, ...). After `-STOP` it waits until every thread
    /// of the voter has stopped: `kill` returns once the signal is queued, and on a busy
    /// machine the process's other threads run on (and answer raft) until the thread
    /// that takes the signal is scheduled.
    pub fn signal(&self, sig: &str) {
        let pid = self.proc.pid();
        let status = Command::new("kill").args([sig, &pid.to_string()]).status().unwrap();
        assert!(status.success());
        if sig == "-STOP" {
            wait_for("every thread of the voter stopped", Duration::from_secs(10), || {
                all_threads_stopped(pid).then_some(())
            });
        }
    }

    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        http_json(&self.http, "GET", path, Some(TOKEN), &[], None)
    }

    pub fn send(&self, method: &str, path: &str, key: Option<&str>, body: &str) -> (u16, serde_json::Value) {
        let headers: Vec<(&str, &str)> = key.map(|k| vec![("Idempotency-Key", k)]).unwrap_or_default();
        http_json(&self.http, method, path, Some(TOKEN), &headers, Some(body))
    }

    pub fn status(&self) -> serde_json::Value {
        self.get("/v1/cluster").1
    }
}

/// `n` voters on fresh data dirs.
pub fn start_cluster(dir: &Path, n: u64) -> Vec<Voter> {
    let peers: Vec<String> = (1..=n).map(|id| format!("{id}=127.0.0.1:{}", free_udp_port())).collect();
    let peers = peers.join(",");
    (1..=n).map(|id| Voter::start(id, &peers, &dir.join(format!("v{id}")), &[])).collect()
}

/// Whether every thread of process `pid` is stopped (state `T` in /proc).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    tasks.filter_map(Result::ok).all(|task| {
        std::fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('T')))
            .unwrap_or(false)
    })
}

/// Waits until every voter in `voters` agrees on one leader; returns its id.
pub fn wait_for_leader(voters: &[&Voter]) -> u64 {
    wait_for("one leader known to every voter", Duration::from_secs(30), || {
        let leaders: Vec<u64> = voters.iter().map(|v| v.status()["leader"].as_u64().unwrap_or(0)).collect();
        let first = *leaders.first()?;
        (first != 0 && leaders.iter().all(|l| *l == first)).then_some(first)
    })
}

/// Panics (never skips) when ffmpeg is missing: the IVF tests encode real VP8 with it.
pub fn require_ffmpeg() {
    let ok = Command::new("ffmpeg").arg("-version").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(ok, "ffmpeg is required for this test (scripts/test installs it)");
}

/// `--gossip-keyring DIR` for a process that gossips without a keyring or
/// `--insecure-gossip` of its own: every process of this test binary shares one
/// keyring (and processes of another test binary cannot hear them).
pub fn gossip_keyring_args(extra: &[&str]) -> Vec<String> {
    if !extra.contains(&"--gossip-listen")
        || extra.contains(&"--gossip-keyring")
        || extra.contains(&"--insecure-gossip")
    {
        return Vec::new();
    }
    vec!["--gossip-keyring".into(), test_keyring().to_string_lossy().into_owned()]
}

/// This test process's gossip keyring (created on first use).
pub fn test_keyring() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("gossip-keyring-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let out = ferry().args(["ca", "gossip-key", "--name", "test", "--dir"]).arg(&dir).output().unwrap();
        assert!(out.status.success(), "ca gossip-key: {}", String::from_utf8_lossy(&out.stderr));
        dir
    })
}

/// `--ca-file/--cert/--key` for voter `id`, issued by the CA next to `data_dir`
/// (`raft-ca`, created by the first voter that needs it).
fn voter_cert_args(data_dir: &Path, id: u64) -> Vec<String> {
    static CREATE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let ca = data_dir.parent().unwrap().join("raft-ca");
    {
        let _once = CREATE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !ca.join("ca.pem").exists() {
            let out = ferry().args(["ca", "init", "--dir"]).arg(&ca).output().unwrap();
            assert!(out.status.success(), "ca init: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    cluster_cert_args(&ca, &format!("voter-{id}"), "voter")
}

/// `ferry ca issue` for `node`; returns the flags that use the result: for edges
/// (`kind` "cluster") --cluster-ca/-cert/-key, for voters --ca-file/--cert/--key.
pub fn cluster_cert_args(ca: &std::path::Path, node: &str, kind: &str) -> Vec<String> {
    let role = if kind == "cluster" { "edge" } else { "voter" };
    let out =
        ferry().args(["ca", "issue", "--role", role, "--node", node, "--dir"]).arg(ca).output().unwrap();
    assert!(out.status.success(), "ca issue: {}", String::from_utf8_lossy(&out.stderr));
    let files: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let path = |k: &str| files[k].as_str().unwrap().to_owned();
    let flags = if kind == "cluster" {
        ["--cluster-ca", "--cluster-cert", "--cluster-key"]
    } else {
        ["--ca-file", "--cert", "--key"]
    };
    vec![flags[0].into(), path("ca"), flags[1].into(), path("cert"), flags[2].into(), path("key")]
}

/// Borrows owned arguments as the `&[&str]` the process starters take.
pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}
