//! A network namespace joined to the host by a veth pair, so a test can put a real
//! client (a browser) behind a link it controls: `tc` shapes what the host sends into
//! the namespace, which is what that client downloads.
//!
//! Needs iproute2 (`ip`, `tc`) and root (CAP_NET_ADMIN, CAP_SYS_ADMIN). Missing or
//! refused tools are a failure, never a skip. Every command is bounded; dropping the
//! [`NetNs`] kills whatever still runs inside it and deletes the namespace and the veth
//! pair, pass or fail.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::io::Read;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Ceiling of one `ip`/`tc` command; they take milliseconds unless the kernel is stuck.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `Drop` waits for SIGKILLed processes to leave the namespace.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Second octet of every test subnet: 10.213.0.0/16 is unlikely to be anyone's LAN.
const SUBNET_OCTET: u8 = 213;

/// A named network namespace with `lo` up, a veth pair to the host (/30) and a default
/// route back through the host side.
pub struct NetNs {
    /// `ferry-<tag>-<pid>-<n>`: unique per test process, recognisable in `ip netns list`.
    name: String,
    /// Host end of the veth pair; its egress qdisc shapes host→namespace traffic.
    host_veth: String,
    host_ip: Ipv4Addr,
    ns_ip: Ipv4Addr,
}

impl NetNs {
    /// Creates the namespace and its link; panics with the reason if `ip` is missing or
    /// not permitted.
    pub fn create(tag: &str) -> NetNs {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let version = run_bounded(Command::new("ip").arg("-V"));
        assert!(
            version.as_ref().is_ok_and(|(ok, _)| *ok),
            "network-namespace tests need iproute2 (`ip`, `tc`; Debian: apt-get install iproute2): {version:?}"
        );
        sweep_stale();
        let (host_ip, ns_ip) = free_subnet(pid, n);
        let name = format!("ferry-{tag}-{pid}-{n}");
        let host_veth = veth_name(pid, n, 'h');
        let ns_veth = veth_name(pid, n, 'n');

        let (ok, out) = run_bounded(Command::new("ip").args(["netns", "add", &name]))
            .unwrap_or_else(|e| panic!("network-namespace tests need iproute2 (`ip`): {e}"));
        assert!(
            ok,
            "`ip netns add {name}` failed; network-namespace tests must run as root \
             (CAP_SYS_ADMIN and CAP_NET_ADMIN): {out}"
        );
        // From here on a panic must still clean up, so the guard exists before the rest.
        let ns = NetNs { name, host_veth, host_ip, ns_ip };
        let host = ns.host_veth.as_str();
        let prefix = |ip: Ipv4Addr| format!("{ip}/30");
        ip(&["link", "add", host, "type", "veth", "peer", "name", &ns_veth, "netns", &ns.name]);
        ip(&["addr", "add", &prefix(host_ip), "dev", host]);
        ip(&["link", "set", host, "up"]);
        ip(&["-n", &ns.name, "addr", "add", &prefix(ns_ip), "dev", &ns_veth]);
        ip(&["-n", &ns.name, "link", "set", &ns_veth, "up"]);
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ip(&["-n", &ns.name, "route", "add", "default", "via", &host_ip.to_string()]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's address on the link (bind servers here so the namespace reaches them).
    pub fn host_ip(&self) -> Ipv4Addr {
        self.host_ip
    }

    /// The namespace's address on the link.
    pub fn ns_ip(&self) -> Ipv4Addr {
        self.ns_ip
    }

    /// The host end of the veth pair.
    pub fn host_veth(&self) -> &str {
        &self.host_veth
    }

    /// A command that runs `program` inside the namespace (`ip netns exec` execs it, so
    /// the child's pid is the program's own).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Limits everything the host sends into the namespace with a token bucket:
    /// `rate_kbit` kbit/s, `burst` bytes sent back to back at most, and at most `limit`
    /// bytes queued (beyond that, packets are dropped). Replaces any earlier limit.
    pub fn limit_to_ns(&self, rate_kbit: u64, burst: u64, limit: u64) {
        self.clear_limit();
        tc(
            &["qdisc", "add", "dev", &self.host_veth, "root", "handle", "1:", "tbf"],
            &tbf(rate_kbit, burst, limit),
        );
    }

    /// Like [`NetNs::limit_to_ns`], but only UDP (the media) is limited: TCP (HTTP
    /// signalling, a WebDriver session into the namespace) flows unshaped.
    pub fn limit_udp_to_ns(&self, rate_kbit: u64, burst: u64, limit: u64) {
        self.clear_limit();
        let dev = self.host_veth.as_str();
        // HTB is only the classifier here: both classes are "unlimited"; the tbf under
        // 1:10 does the shaping and dropping. (This kernel has no prio qdisc.)
        tc(&["qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "20"], &[]);
        for class in ["1:10", "1:20"] {
            let args =
                ["class", "add", "dev", dev, "parent", "1:", "classid", class, "htb", "rate", "10gbit"];
            tc(&args, &[]);
        }
        tc(
            &["qdisc", "add", "dev", dev, "parent", "1:10", "handle", "10:", "tbf"],
            &tbf(rate_kbit, burst, limit),
        );
        let udp =
            ["protocol", "ip", "prio", "1", "u32", "match", "ip", "protocol", "17", "0xff", "flowid", "1:10"];
        tc(&["filter", "add", "dev", dev, "parent", "1:"], &udp.map(String::from));
    }

    /// Cuts (`false`) or restores (`true`) the link between host and namespace: a
    /// partition. The addresses stay; the kernel restores the connected route on up.
    pub fn set_link(&self, up: bool) {
        ip(&["link", "set", "dev", &self.host_veth, if up { "up" } else { "down" }]);
    }

    /// Removes any limit (the veth is unshaped again).
    pub fn clear_limit(&self) {
        let _ = run_bounded(Command::new("tc").args(["qdisc", "del", "dev", &self.host_veth, "root"]));
    }

    /// Bytes sent and packets dropped by the token bucket so far, `(0, 0)` without one.
    pub fn tbf_counters(&self) -> (u64, u64) {
        let (_, out) = run_bounded(Command::new("tc").args(["-s", "qdisc", "show", "dev", &self.host_veth]))
            .unwrap_or_else(|e| panic!("tc: {e}"));
        // "qdisc tbf 10: parent 1:10 rate ...\n Sent 123 bytes 4 pkt (dropped 5, overlimits ..."
        let Some(tbf) = out.split("qdisc ").find(|q| q.starts_with("tbf")) else { return (0, 0) };
        let number_after = |word: &str| -> u64 {
            tbf.split_once(word)
                .and_then(|(_, rest)| {
                    rest.trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
                })
                .unwrap_or(0)
        };
        (number_after("Sent "), number_after("dropped "))
    }

    /// Pids of processes still inside the namespace.
    fn pids(&self) -> Vec<String> {
        match run_bounded(Command::new("ip").args(["netns", "pids", &self.name])) {
            Ok((true, out)) => out.split_whitespace().map(str::to_owned).collect(),
            _ => Vec::new(),
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // A namespace outlives `ip netns delete` while processes hold it: kill them first.
        let deadline = Instant::now() + KILL_WAIT;
        loop {
            let pids = self.pids();
            if pids.is_empty() || Instant::now() >= deadline {
                break;
            }
            let _ = run_bounded(Command::new("kill").arg("-KILL").args(&pids));
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = run_bounded(Command::new("ip").args(["netns", "delete", &self.name]));
        // Deleting the namespace destroys the pair; this covers a half-built one.
        let _ = run_bounded(Command::new("ip").args(["link", "delete", &self.host_veth]));
    }
}

/// A veth end's name: at most 15 bytes, "fy" + pid (≤ 7 digits) + "x" + n + end.
fn veth_name(pid: u32, n: u32, end: char) -> String {
    format!("fy{pid}x{}{end}", n % 100)
}

/// Removes namespaces (and their host veths) left by test processes that no longer
/// exist, e.g. killed by a CI timeout before their `Drop` ran.
fn sweep_stale() {
    let Ok((true, list)) = run_bounded(Command::new("ip").args(["netns", "list"])) else { return };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix("ferry-") else { continue };
        let mut parts = rest.rsplit('-');
        let (Some(Ok(n)), Some(Ok(pid))) = (parts.next().map(str::parse), parts.next().map(str::parse))
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        // Its Drop does the cleanup.
        let _stale = NetNs {
            name: name.to_owned(),
            host_veth: veth_name(pid, n, 'h'),
            host_ip: Ipv4Addr::UNSPECIFIED,
            ns_ip: Ipv4Addr::UNSPECIFIED,
        };
    }
}

/// `tbf` parameters: rate, and `burst` and `limit` in bytes.
fn tbf(rate_kbit: u64, burst: u64, limit: u64) -> [String; 6] {
    let rate = format!("{rate_kbit}kbit");
    ["rate".into(), rate, "burst".into(), burst.to_string(), "limit".into(), limit.to_string()]
}

/// Runs `ip ARGS`; panics with its output on failure.
fn ip(args: &[&str]) {
    let (ok, out) = run_bounded(Command::new("ip").args(args)).unwrap_or_else(|e| panic!("ip: {e}"));
    assert!(ok, "`ip {}` failed: {out}", args.join(" "));
}

/// Runs `tc ARGS MORE`; panics with its output on failure.
fn tc(args: &[&str], more: &[String]) {
    let (ok, out) = run_bounded(Command::new("tc").args(args).args(more))
        .unwrap_or_else(|e| panic!("tc (iproute2): {e}"));
    assert!(ok, "`tc {} {}` failed: {out}", args.join(" "), more.join(" "));
}

/// Runs a short command with a deadline: (success, stdout + stderr). Killed on timeout.
fn run_bounded(cmd: &mut Command) -> Result<(bool, String), String> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what} did not finish within {COMMAND_TIMEOUT:?}"));
            }
        }
    };
    // Outputs here are a few KiB at most, well under a pipe's buffer, so reading after
    // exit cannot deadlock.
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut out);
    }
    Ok((status.success(), out))
}

/// Host and namespace addresses of a /30 no host interface uses yet: the third octet
/// comes from the pid, the fourth from the per-process counter.
fn free_subnet(pid: u32, n: u32) -> (Ipv4Addr, Ipv4Addr) {
    let (_, taken) = run_bounded(Command::new("ip").args(["-o", "-4", "addr", "show"]))
        .unwrap_or_else(|e| panic!("ip: {e}"));
    let base = (n % 64 * 4) as u8;
    for step in 0..256u32 {
        let third = ((pid + step) % 256) as u8;
        let host = Ipv4Addr::new(10, SUBNET_OCTET, third, base + 1);
        let ns = Ipv4Addr::new(10, SUBNET_OCTET, third, base + 2);
        if !taken.contains(&format!("inet {host}/")) && !taken.contains(&format!("inet {ns}/")) {
            return (host, ns);
        }
    }
    panic!("no free /30 in 10.{SUBNET_OCTET}.0.0/16 for a test namespace");
}
