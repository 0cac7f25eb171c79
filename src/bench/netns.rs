//! A small network lab for the soak: one network namespace per node, each with one
//! veth link to a bridge that this process owns, so a node can be cut off from every
//! other node and every client (its bridge port goes down) and healed again. Needs
//! `ip` (iproute2) and CAP_NET_ADMIN (root). Everything is removed on drop, and labs
//! left behind by a soak that was killed are removed at the next start.

use std::process::Command;

use anyhow::{bail, Context};

const PREFIX: &str = "ferry-soak-";

pub struct Lab {
    pid: u32,
    /// The first three octets of the lab's /24, e.g. "10.213.7".
    subnet: String,
    nodes: usize,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("cannot run `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn ip_output(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

impl Lab {
    /// Creates a bridge and `nodes` namespaces on a /24 of 10.200.0.0/13 that no
    /// interface of this host uses.
    pub fn create(nodes: usize) -> anyhow::Result<Lab> {
        Self::remove_stale();
        let pid = std::process::id();
        let used = ip_output(&["-o", "-4", "addr"]) + &ip_output(&["-4", "route"]);
        let subnet = (0..2048u32)
            .map(|k| {
                let n = (pid.wrapping_mul(2_654_435_761) >> 8).wrapping_add(k) % 2048;
                format!("10.{}.{}", 200 + n / 256, n % 256)
            })
            .find(|s| !used.contains(&format!("{s}.")))
            .context("no free /24 in 10.200.0.0/13 for the soak's network")?;
        let lab = Lab { pid, subnet, nodes: 0 };
        let bridge = lab.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"]).context(
            "partitions need network namespaces: run the soak as root (CAP_NET_ADMIN), or pass --partitions=false",
        )?;
        let mut lab = lab;
        ip(&["addr", "add", &format!("{}.1/24", lab.subnet), "dev", &bridge])?;
        ip(&["addr", "add", &format!("{}.2/24", lab.subnet), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 0..nodes {
            let (ns, link) = (lab.namespace(i), lab.link(i));
            ip(&["netns", "add", &ns])?;
            lab.nodes = i + 1;
            ip(&["link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["link", "set", &link, "master", &bridge, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", lab.ip(i)), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            // A default route as every real host has one (WebRTC's mDNS socket joins a
            // multicast group, which fails with ENODEV on a host without any route).
            ip(&["-n", &ns, "route", "add", "default", "via", &format!("{}.1", lab.subnet)])?;
        }
        Ok(lab)
    }

    fn bridge(&self) -> String {
        format!("fsb{}", self.pid)
    }

    fn link(&self, i: usize) -> String {
        format!("fs{}n{i}", self.pid)
    }

    pub fn namespace(&self, i: usize) -> String {
        format!("{PREFIX}{}-{i}", self.pid)
    }

    /// Node `i`'s address.
    pub fn ip(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, 11 + i)
    }

    /// This host's second address on the bridge, for clients that must not share the
    /// others' per-address shares (the soak's hostile ones).
    pub fn second_host_ip(&self) -> std::net::IpAddr {
        format!("{}.2", self.subnet).parse().unwrap_or(std::net::IpAddr::from([127, 0, 0, 2]))
    }

    /// Cuts node `i` off from everything (its bridge port goes down).
    pub fn cut(&self, i: usize) -> anyhow::Result<()> {
        ip(&["link", "set", &self.link(i), "down"])
    }

    pub fn heal(&self, i: usize) -> anyhow::Result<()> {
        ip(&["link", "set", &self.link(i), "up"])
    }

    /// Namespaces and bridges of soaks whose process is gone.
    fn remove_stale() {
        for line in ip_output(&["netns", "list"]).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            let Some(rest) = name.strip_prefix(PREFIX) else { continue };
            let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !alive(p)) {
                let _ = ip(&["netns", "del", name]);
            }
        }
        for line in ip_output(&["-o", "link", "show", "type", "bridge"]).lines() {
            let name = line.split(':').nth(1).unwrap_or_default().trim();
            let pid = name.strip_prefix("fsb").and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !alive(p)) {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 0..self.nodes {
            let _ = ip(&["netns", "del", &self.namespace(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}
