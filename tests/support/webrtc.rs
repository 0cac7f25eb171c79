//! Shared by the WebRTC and rollout tests: edges that serve WHIP/WHEP with tokens, a
//! small cluster of them, raw HTTP exchanges and offers.

use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, SystemTime};

use ferry_edge::auth::{mint, Action, StreamScope, TokenSecret};

use super::*;

/// One HTTP exchange: (status, headers lowercased, body).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, String) {
    let reply = super::http::exchange(addr, method, path, headers, body, Duration::from_secs(30)).unwrap();
    let text = reply.text();
    (reply.status, reply.headers, text)
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A distinct WebRTC UDP port range per edge started by this test process.
pub fn port_range() -> String {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let slot = NEXT.fetch_add(1, Ordering::Relaxed);
    let base = 40_000 + (std::process::id() % 200) as u16 * 40 + slot * 8;
    format!("{}-{}", base, base + 7)
}

pub const SECRET: &str = "test-secret-0123456789abcdef";

pub fn secret_file(dir: &Path) -> String {
    let path = dir.join("secret");
    std::fs::write(&path, SECRET).unwrap();
    path.to_str().unwrap().to_owned()
}

pub fn token(stream: &str, action: Action, ttl: Duration, now: SystemTime) -> String {
    let secret = TokenSecret::from_bytes(SECRET.as_bytes()).unwrap();
    mint(&secret, StreamScope::Exact(stream.into()), action, ttl, now)
}

pub fn webrtc_edge(node: &str, dir: &Path, extra: &[&str]) -> Edge {
    let secret = secret_file(dir);
    let ports = port_range();
    let mut args =
        vec!["--webrtc-bind", "127.0.0.1", "--webrtc-udp-ports", &ports, "--token-secret-file", &secret];
    args.extend_from_slice(extra);
    Edge::start(node, &args)
}

/// A syntactically complete offer, as a browser would send for a VP8 publisher.
pub fn vp8_offer(direction: &str) -> String {
    let fingerprint = (0..32).map(|i| format!("{:02X}", i * 7 % 256)).collect::<Vec<_>>().join(":");
    format!(
        "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
         a=msid-semantic: WMS\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\n\
         a=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
         a=fingerprint:sha-256 {fingerprint}\r\na=setup:actpass\r\na=mid:0\r\na={direction}\r\n\
         a=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\na=ssrc:1234 cname:test\r\n"
    )
}

/// A cluster for WHEP failover: one voter and three edges (`o` in r1, `a` and `b` in
/// r2) that gossip, register, relay with cluster certificates and serve clients with
/// tokens.
pub struct WhepCluster {
    pub voter: Voter,
    pub control: String,
    pub edges: std::collections::BTreeMap<&'static str, Edge>,
}

pub fn whep_cluster(dir: &Path, extra: &[&str]) -> WhepCluster {
    let gossip: Vec<String> = (0..4).map(|_| format!("127.0.0.1:{}", free_udp_port())).collect();
    let seeds = gossip.join(",");
    let peers = format!("1=127.0.0.1:{}", free_udp_port());
    // One cluster CA: the voter's API and the edges' relays (clients need tokens).
    let ca = dir.join("ca");
    let out = ferry().args(["ca", "init", "--dir"]).arg(&ca).output().unwrap();
    assert!(out.status.success(), "ca init: {}", String::from_utf8_lossy(&out.stderr));
    let mut voter_args =
        vec!["--gossip-listen".to_owned(), gossip[0].clone(), "--gossip-seeds".to_owned(), seeds.clone()];
    voter_args.extend(cluster_cert_args(&ca, "voter-1", "voter"));
    let voter = Voter::start(1, &peers, &dir.join("v1"), &strs(&voter_args));
    wait_for_leader(&[&voter]);
    let control = voter.http.clone();
    let mut edges = std::collections::BTreeMap::new();
    for (i, (id, region)) in [("o", "r1"), ("a", "r2"), ("b", "r2")].into_iter().enumerate() {
        let certs = cluster_cert_args(&ca, id, "cluster");
        let mut args = vec!["--region", region, "--gossip-listen", &gossip[i + 1], "--gossip-seeds", &seeds];
        args.extend(certs.iter().map(String::as_str));
        args.extend(["--control-plane", &control]);
        args.extend_from_slice(extra);
        edges.insert(id, webrtc_edge(id, dir, &args));
    }
    wait_for("3 registered edges alive in gossip", Duration::from_secs(30), || {
        let (_, body) = voter.get("/v1/edges?stale=true");
        let edges = body["edges"].as_array()?;
        (edges.len() == 3 && edges.iter().all(|e| e["gossip"]["alive"] == true)).then_some(())
    });
    WhepCluster { voter, control, edges }
}

pub fn whep_sessions(edge: &Edge) -> f64 {
    edge.metric("ferry_webrtc_sessions{direction=\"whep\"}").unwrap_or(0.0)
}
