//! Trust inside the cluster, as real processes on loopback: the raft port accepts only
//! voters of its cluster, each only as itself (a table of certificates an attacker
//! could hold), and a voter refuses to start with somebody else's certificate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_net::tls::{ClientTrust, ClusterTls, TransportTuning};
use raft::eraftpb::{Message, MessageType};
use support::*;

/// The CA the test voters share (`Voter::start` creates it next to their data dirs).
fn raft_ca(dir: &Path) -> PathBuf {
    dir.join("raft-ca")
}

/// Issues a certificate from the CA key in `ca_dir` (or a fresh CA when `None`) with
/// the given URI names and validity, like an attacker holding that CA (or another)
/// would; writes `{name}.pem` and `{name}-key.pem` into `out`.
fn forge(ca_dir: Option<&Path>, out: &Path, name: &str, uris: &[&str], valid: (i32, i32)) -> ClusterTls {
    let ca_key = match ca_dir {
        Some(dir) => {
            rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca-key.pem")).unwrap()).unwrap()
        }
        None => rcgen::KeyPair::generate().unwrap(),
    };
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Ferry cluster CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    for uri in uris {
        params.subject_alt_names.push(rcgen::SanType::URI((*uri).try_into().unwrap()));
    }
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = rcgen::date_time_ymd(valid.0, 1, 1);
    params.not_after = rcgen::date_time_ymd(valid.1, 1, 1);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (cert_path, key_path) = (out.join(format!("{name}.pem")), out.join(format!("{name}-key.pem")));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    // The client still verifies the voters against the real cluster CA.
    ClusterTls { ca: raft_ca(out.parent().unwrap()).join("ca.pem"), cert: cert_path, key: key_path }
}

/// Valid from 2020 to 2090 (years).
fn always() -> (i32, i32) {
    (2020, 2090)
}

/// What a peer holding `tls` gets from the raft port at `addr`: the handshake's
/// outcome, and if it was accepted, a batch of `msgs` sent on it.
fn speak_raft(tls: &ClusterTls, addr: &str, msgs: &[Message]) -> Result<(), String> {
    speak_raft_as(&ClientTrust::Cluster(tls.clone()), addr, msgs)
}

/// [`speak_raft`] with any client trust (`CaFile`: no client certificate).
fn speak_raft_as(trust: &ClientTrust, addr: &str, msgs: &[Message]) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let config = ferry_net::tls::client_config_for(
            trust,
            &TransportTuning::default(),
            ferry_control_plane::transport::RAFT_ALPN,
        )
        .map_err(|e| e.to_string())?;
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(config);
        let conn = endpoint
            .connect(addr.parse().unwrap(), "127.0.0.1")
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        // TLS 1.3: the server checks the client certificate after the client has
        // finished; a refusal shows as the connection closing right after.
        ferry_control_plane::transport::write_batch(&conn, msgs).await.map_err(|e| e.to_string())?;
        match tokio::time::timeout(Duration::from_secs(2), conn.closed()).await {
            Ok(reason) => Err(reason.to_string()),
            Err(_) => {
                conn.close(0u32.into(), b"done");
                endpoint.wait_idle().await;
                Ok(())
            }
        }
    })
}

/// A raft message with a huge term: delivered, it would depose the leader.
fn high_term(from: u64, to: u64, msg_type: MessageType) -> Message {
    let mut m = Message::default();
    m.set_msg_type(msg_type);
    m.from = from;
    m.to = to;
    m.term = 1_000_000;
    m
}

fn refused(v: &Voter, reason: &str) -> f64 {
    let (_, text) = http_get(&v.http, "/metrics");
    metric_value(&text, &format!("ferry_raft_peers_refused_total{{reason=\"{reason}\"}}")).unwrap_or(-1.0)
}

fn terms_and_leaders(voters: &[Voter]) -> Vec<(u64, u64)> {
    voters
        .iter()
        .map(|v| {
            let st = v.status();
            (st["term"].as_u64().unwrap(), st["leader"].as_u64().unwrap())
        })
        .collect()
}

#[test]
fn the_raft_port_accepts_only_voters_of_its_cluster_each_as_itself() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = TempDir::new("trust-raft");
    let voters = start_cluster(dir.path(), 3);
    let refs: Vec<&Voter> = voters.iter().collect();
    let leader = wait_for_leader(&refs);
    let before = terms_and_leaders(&voters);
    let target = voters.iter().find(|v| v.id != leader).unwrap();
    let attack = dir.path().join("attack");
    std::fs::create_dir_all(&attack).unwrap();
    let ca = raft_ca(dir.path());

    // (who, their certificate, the refusal reason counted)
    let cases: Vec<(&str, ClusterTls, &str)> = vec![
        (
            "an edge certificate from the cluster CA",
            forge(Some(&ca), &attack, "edge", &["spiffe://ferry/edge/e1"], always()),
            "wrong_role",
        ),
        (
            "a voter certificate from another CA",
            forge(None, &attack, "rogue", &["spiffe://ferry/voter/2"], always()),
            "unknown_ca",
        ),
        (
            "a certificate with two identities",
            forge(Some(&ca), &attack, "two", &["spiffe://ferry/voter/2", "spiffe://ferry/voter/3"], always()),
            "several_identities",
        ),
        (
            "an expired voter certificate",
            forge(Some(&ca), &attack, "expired", &["spiffe://ferry/voter/2"], (2020, 2021)),
            "expired",
        ),
        (
            "a voter certificate not valid yet",
            forge(Some(&ca), &attack, "early", &["spiffe://ferry/voter/2"], (2080, 2090)),
            "not_yet_valid",
        ),
        (
            "a voter certificate of another cluster",
            forge(Some(&ca), &attack, "other", &["spiffe://staging/voter/2"], always()),
            "other_cluster",
        ),
        ("a certificate without identity", forge(Some(&ca), &attack, "plain", &[], always()), "no_identity"),
    ];
    for (who, tls, reason) in &cases {
        let counted = refused(target, reason);
        let out = speak_raft(tls, &target.raft, &[high_term(2, target.id, MessageType::MsgRequestVote)]);
        assert!(out.is_err(), "{who}: accepted");
        wait_for(&format!("{who}: counted as {reason}"), Duration::from_secs(10), || {
            (refused(target, reason) > counted).then_some(())
        });
        eprintln!("{who}: refused ({reason}): {}", out.unwrap_err());
    }

    // No client certificate at all.
    let counted = refused(target, "no_certificate");
    let out = speak_raft_as(
        &ClientTrust::CaFile(ca.join("ca.pem")),
        &target.raft,
        &[high_term(2, target.id, MessageType::MsgRequestVote)],
    );
    assert!(out.is_err(), "a peer without a certificate was accepted");
    wait_for("no certificate: counted", Duration::from_secs(10), || {
        (refused(target, "no_certificate") > counted).then_some(())
    });

    // Voter 2's real certificate: accepted, but its message claiming to come from
    // voter 3 is dropped and counted.
    let sender = voters.iter().find(|v| v.id != target.id).unwrap();
    let real = ClusterTls {
        ca: ca.join("ca.pem"),
        cert: ca.join(format!("voter-{}.pem", sender.id)),
        key: ca.join(format!("voter-{}-key.pem", sender.id)),
    };
    let liar = voters.iter().map(|v| v.id).find(|id| *id != target.id && *id != sender.id).unwrap();
    let mismatches = refused(target, "from_mismatch");
    speak_raft(&real, &target.raft, &[high_term(liar, target.id, MessageType::MsgHeartbeat)])
        .expect("a voter's own certificate is accepted");
    wait_for("the forged from counted", Duration::from_secs(10), || {
        (refused(target, "from_mismatch") > mismatches).then_some(())
    });

    // Nothing got through: same term, same leader everywhere.
    assert_eq!(terms_and_leaders(&voters), before, "term or leader changed");
    // And the cluster still works.
    let (code, body) = voters[0].send(
        "PUT",
        "/v1/edges/after-attack",
        Some("after-attack"),
        r#"{"region":"eu","quic_addr":"127.0.0.1:1","http_addr":"127.0.0.1:2"}"#,
    );
    assert_eq!(code, 200, "{body}");
}

#[test]
fn a_voter_started_with_another_nodes_certificate_says_so() {
    let dir = TempDir::new("trust-start");
    let ca = dir.path().join("ca");
    let ok = |args: &[&str]| {
        let out = ferry().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ca_s = ca.to_str().unwrap();
    ok(&["ca", "init", "--dir", ca_s]);
    ok(&["ca", "issue", "--dir", ca_s, "--role", "voter", "--node", "voter-2"]);
    ok(&["ca", "issue", "--dir", ca_s, "--role", "edge", "--node", "edge-1"]);
    let start = |extra: &[&str]| {
        ferry()
            .args(["control", "--id", "1", "--peers", "1=127.0.0.1:1", "--http-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path().join("v1"))
            .args(["--token", "test-operator-token-0123456789"])
            .args(extra)
            .output()
            .unwrap()
    };
    for (node, named) in [("voter-2", "spiffe://ferry/voter/2"), ("edge-1", "spiffe://ferry/edge/edge-1")] {
        let cert = ca.join(format!("{node}.pem"));
        let key = ca.join(format!("{node}-key.pem"));
        let out = start(&[
            "--ca-file",
            &format!("{ca_s}/ca.pem"),
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started with {node}'s certificate");
        assert!(stderr.contains(named) && stderr.contains("spiffe://ferry/voter/1"), "{stderr}");
        assert!(stderr.contains("ferry ca issue --role voter --node voter-1"), "{stderr}");
    }
    let out = start(&[]);
    assert!(!out.status.success(), "started without certificates");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--insecure-raft"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A voter name that is not voter-N is refused when issuing.
    let out =
        ferry().args(["ca", "issue", "--dir", ca_s, "--role", "voter", "--node", "bob"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("voter-N"));
}

/// Certificates from `ferry ca issue` end: `--valid-for` from now (a year by default),
/// valid from a few minutes before issuing (clock skew); shorter than a minute is refused.
#[test]
fn issued_certificates_expire_after_their_lifetime() {
    let dir = TempDir::new("trust-expiry");
    let ca = dir.path().join("ca");
    let ca_s = ca.to_str().unwrap();
    let run = |args: &[&str]| ferry().args(args).output().unwrap();
    assert!(run(&["ca", "init", "--dir", ca_s]).status.success());
    let validity = |node: &str| {
        let pem = std::fs::read(ca.join(format!("{node}.pem"))).unwrap();
        let der = rustls_pemfile::certs(&mut pem.as_slice()).next().unwrap().unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let v = cert.validity();
        (v.not_before.timestamp(), v.not_after.timestamp())
    };
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    for (node, flag, lifetime) in [("edge-1", Some("2h"), 7200), ("edge-2", None, 365 * 24 * 3600)] {
        let mut args = vec!["ca", "issue", "--dir", ca_s, "--role", "edge", "--node", node];
        args.extend(flag.map(|f| ["--valid-for", f]).into_iter().flatten());
        let before = now();
        let out = run(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let (not_before, not_after) = validity(node);
        assert!(
            not_before <= before && not_before >= before - 600,
            "valid from shortly before issuing: {not_before}"
        );
        assert!(
            (before + lifetime - 60..=now() + lifetime).contains(&not_after),
            "{node}: valid until {not_after}, issued at {before} for {lifetime} s"
        );
    }
    let out =
        run(&["ca", "issue", "--dir", ca_s, "--role", "edge", "--node", "edge-3", "--valid-for", "30s"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--valid-for must be at least 1m"));
}

/// One voter that gossips, elected: it and its gossip address (the seed for edges).
fn gossiping_voter(dir: &Path) -> (Voter, String) {
    let gossip = format!("127.0.0.1:{}", free_udp_port());
    let peers = format!("1=127.0.0.1:{}", free_udp_port());
    let voter = Voter::start(1, &peers, &dir.join("v1"), &["--gossip-listen", &gossip]);
    wait_for_leader(&[&voter]);
    (voter, gossip)
}

/// Flags for an edge `id` in region r1 gossiping with `seed`; with `voter`, registered
/// with it by its cluster certificate (from the voters' CA under `dir`).
fn gossiping_edge_args(dir: &Path, id: &str, seed: &str, voter: Option<&Voter>) -> Vec<String> {
    let listen = format!("127.0.0.1:{}", free_udp_port());
    let mut args: Vec<String> = ["--region", "r1", "--gossip-listen", &listen, "--gossip-seeds", seed]
        .into_iter()
        .map(String::from)
        .collect();
    if let Some(voter) = voter {
        args.extend(["--control-plane".to_owned(), voter.http.clone()]);
        args.extend(cluster_cert_args(&raft_ca(dir), id, "cluster"));
    }
    args
}

/// Member `id` as `voter`'s gossip shows it.
fn gossip_member(voter: &Voter, id: &str) -> Option<serde_json::Value> {
    let (_, members) = voter.get("/v1/members");
    members["members"].as_array()?.iter().find(|m| m["id"] == id).cloned()
}

/// Gossip is a hint. A process that holds the gossip key but never registered (here an
/// edge started without a control plane, with a live publisher of `live/x`) gossips
/// that it originates `live/x`: a registered edge neither pulls `live/x` from it for a
/// viewer, nor sends WHIP publishers of `live/x` to it (no 307 to its address), nor
/// refuses a publisher of `live/x` as `stream_busy`.
#[test]
fn a_process_that_only_gossips_attracts_no_publisher_and_blocks_none() {
    use support::webrtc::{header, http, vp8_offer};
    let dir = TempDir::new("trust-gossip");
    let (voter, voter_gossip) = gossiping_voter(dir.path());
    let a = Edge::start("a", &strs(&gossiping_edge_args(dir.path(), "a", &voter_gossip, Some(&voter))));
    let fake = Edge::start("fake", &strs(&gossiping_edge_args(dir.path(), "fake", &voter_gossip, None)));
    let mut cmd = ferry();
    cmd.args(["publish", "--edge", &fake.quic, "--stream", "live/x", "--synthetic", "--insecure"])
        .args(["--duration", "300s"])
        .stdout(std::process::Stdio::null());
    let _publisher = Proc::spawn("publisher on the fake member", &mut cmd);
    // The fake member is in everybody's gossip, alive, originating live/x; edge a sees
    // all three processes.
    wait_for("the fake member gossiping live/x", Duration::from_secs(30), || {
        let fake = gossip_member(&voter, "fake")?;
        let origins = fake["origins"].as_array()?.clone();
        (fake["alive"] == true && origins.iter().any(|s| s == "live/x")).then_some(())
    });
    // Edge a has read the control plane's records (where the fake member is not).
    wait_for("edge a synced with the control plane", Duration::from_secs(30), || {
        (a.metric("ferry_control_syncs_total")? >= 1.0).then_some(())
    });
    wait_for("edge a seeing the fake member", Duration::from_secs(30), || {
        (a.metric("ferry_gossip_members{state=\"alive\"}")? >= 3.0).then_some(())
    });

    // A viewer of live/x on edge a: edge a does not pull live/x from the fake member
    // (which accepts no connection besides its publisher's).
    let accepted = fake.metric("ferry_connections_accepted_total");
    let _ = ferry()
        .args(["watch", "--edge", &a.quic, "--stream", "live/x", "--insecure", "--duration", "3s"])
        .output()
        .unwrap();
    assert_eq!(fake.metric("ferry_connections_accepted_total"), accepted, "edge a dialed the fake member");

    // WHIP to edge a: served there, not sent to the fake member's address.
    let (status, hdrs, body) = http(
        &a.http,
        "POST",
        "/whip/live/x",
        &[("Content-Type", "application/sdp")],
        vp8_offer("sendonly").as_bytes(),
    );
    assert_ne!(status, 307, "sent to {:?}: {body}", header(&hdrs, "location"));
    assert!(!body.contains(&fake.http), "{body}");
    assert_eq!(status, 201, "{body}");
    let location = header(&hdrs, "location").unwrap().to_owned();
    assert_eq!(http(&a.http, "DELETE", &location, &[], b"").0, 200);

    // A QUIC publisher of live/x on edge a: accepted, not stream_busy.
    let out = ferry()
        .args(["publish", "--edge", &a.quic, "--stream", "live/x", "--synthetic", "--insecure"])
        .args(["--duration", "2s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("stream_busy"), "{stderr}");
}

/// A chitchat Syn (protocol V0, uncompressed) whose digest claims `heartbeat` for the
/// member `(id, generation, addr)`: what a holder of the gossip key can send.
fn forged_syn(
    cluster: &str,
    id: &str,
    generation: u64,
    addr: std::net::SocketAddr,
    heartbeat: u64,
) -> Vec<u8> {
    let text = |b: &mut Vec<u8>, t: &str| {
        b.extend((t.len() as u16).to_le_bytes());
        b.extend(t.as_bytes());
    };
    let mut b = Vec::new();
    b.extend(45_139u16.to_le_bytes()); // chitchat's magic number
    b.extend([0, 0]); // protocol V0, Syn
    b.extend(1u16.to_le_bytes()); // one node digest
    text(&mut b, id);
    b.extend(generation.to_le_bytes());
    let std::net::IpAddr::V4(ip) = addr.ip() else { panic!("IPv4 gossip address expected: {addr}") };
    b.push(4);
    b.extend(ip.octets());
    b.extend(addr.port().to_le_bytes());
    b.extend(heartbeat.to_le_bytes());
    b.extend(0u64.to_le_bytes()); // last GC version
    b.extend(0u64.to_le_bytes()); // max version
    text(&mut b, cluster);
    b
}

/// A holder of the gossip key who is no registered edge forges digests with a huge
/// heartbeat for edge `a`: chitchat everywhere stops believing `a`'s real heartbeats
/// and doubts it. Asked, `a` proves it is alive with its certificate, so it never
/// shows dead at the voter or at edge `b`, the leader commits no `EdgeFailed`, and a
/// viewer on `b` of the stream `a` originates plays on.
#[test]
fn a_forged_heartbeat_leaves_the_edge_alive_everywhere() {
    let dir = TempDir::new("trust-heartbeat");
    let (voter, voter_gossip) = gossiping_voter(dir.path());
    let edge =
        |id: &str| Edge::start(id, &strs(&gossiping_edge_args(dir.path(), id, &voter_gossip, Some(&voter))));
    let (a, b) = (edge("a"), edge("b"));
    let mut cmd = ferry();
    cmd.args(["publish", "--edge", &a.quic, "--stream", "live/x", "--synthetic", "--insecure"])
        .args(["--duration", "300s"])
        .stdout(std::process::Stdio::null());
    let _publisher = Proc::spawn("publisher on a", &mut cmd);
    let member = |id: &str| gossip_member(&voter, id);
    wait_for("a originating live/x, b alive, in the voter's gossip", Duration::from_secs(30), || {
        let a = member("a")?;
        let origins = a["origins"].as_array()?;
        (a["alive"] == true && origins.iter().any(|s| s == "live/x") && member("b")?["alive"] == true)
            .then_some(())
    });
    wait_for("b seeing three members", Duration::from_secs(30), || {
        (b.metric("ferry_gossip_members{state=\"alive\"}")? >= 3.0).then_some(())
    });

    // A viewer on b of a's stream, through the attack.
    let mut cmd = ferry();
    cmd.args(["watch", "--edge", &b.quic, "--stream", "live/x", "--insecure", "--duration", "12s", "--json"])
        .stdout(std::process::Stdio::piped());
    let viewer = Proc::spawn("viewer on b", &mut cmd);

    // The attack: every process is told that a's heartbeat is 10^15.
    let target = member("a").unwrap();
    let a_addr: std::net::SocketAddr = target["gossip_addr"].as_str().unwrap().parse().unwrap();
    let syn = forged_syn("ferry", "a", target["generation"].as_u64().unwrap(), a_addr, 1_000_000_000_000_000);
    let keyring = ferry_net::seal::Keyring::load(test_keyring(), "ferry").unwrap();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let b_addr = member("b").unwrap()["gossip_addr"].as_str().unwrap().to_owned();
    let victims = [voter_gossip.as_str(), b_addr.as_str(), &a_addr.to_string()].map(str::to_owned);
    let started = std::time::Instant::now();
    let mut sent = 0;
    // Watch for 8 s (chitchat's detector calls a silent member dead within about a
    // second; the leader commits a failure one second later), attacking the first 3 s.
    while started.elapsed() < Duration::from_secs(8) {
        if started.elapsed() < Duration::from_secs(3) {
            for victim in &victims {
                let mut nonce = [0u8; 12];
                ferry_net::random::fill(&mut nonce).unwrap();
                socket.send_to(&keyring.seal(&syn, nonce).unwrap(), victim).unwrap();
                sent += 1;
            }
        }
        let a_now = member("a").unwrap();
        assert_eq!(a_now["alive"], true, "a shown dead at the voter {:?} into the attack", started.elapsed());
        assert_eq!(
            b.metric("ferry_gossip_members{state=\"dead\"}"),
            Some(0.0),
            "b saw a member dead {:?} into the attack",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("sent {sent} forged digests");
    // chitchat did doubt a (the attack bit), and a answered with its certificate.
    let vouched = |e: &str| format!("ferry_gossip_witness_events_total{{event=\"{e}\"}}");
    let voter_metrics = http_get(&voter.http, "/metrics").1;
    let voter_vouched = metric_value(&voter_metrics, &vouched("vouched")).unwrap_or(0.0);
    assert!(voter_vouched >= 1.0, "the voter never doubted a: the forged heartbeat did not reach chitchat");
    assert!(b.metric(&vouched("vouched")).unwrap_or(0.0) >= 1.0, "b never doubted a");
    assert!(a.metric(&vouched("ping_answered")).unwrap_or(0.0) >= 1.0);
    assert_eq!(metric_value(&voter_metrics, "ferry_gossip_peer_deaths_total"), Some(0.0));
    let (_, audit) = voter.get("/v1/audit");
    assert!(!audit.to_string().contains("edge.failed"), "the leader committed a failure: {audit}");
    let (_, stream) = voter.get("/v1/streams/live/x");
    assert_eq!((&stream["origin"], &stream["origin_lost"]), (&"a".into(), &false.into()), "{stream}");

    let out = viewer.wait_output(Duration::from_secs(30));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(stats["frames"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(stats["skipped_groups"], 0, "the viewer on b lost media: {stats}");
}

/// Holders of the gossip key who are not the registered edges they claim to be: a
/// member `rogue` that never registered, and a second incarnation of the registered
/// edge `a` run by somebody without `a`'s certificate. Both gossip a CPU trip of an
/// active rollout; neither trips it, and the voter keeps going by the real `a` (the
/// impostor cannot answer the voter's ping as `a`).
#[test]
fn gossip_members_that_are_not_who_they_claim_trip_no_rollout() {
    use ferry_net::gossip::{Gossip, GossipConfig, GossipMetrics, KeyringSource, SelfInfo, DEFAULT_INTERVAL};
    let dir = TempDir::new("trust-impostor");
    let (voter, voter_gossip) = gossiping_voter(dir.path());
    let _a = Edge::start("a", &strs(&gossiping_edge_args(dir.path(), "a", &voter_gossip, Some(&voter))));
    let member = |id: &str| gossip_member(&voter, id);
    let real = wait_for("a alive in the voter's gossip", Duration::from_secs(30), || {
        member("a").filter(|a| a["alive"] == true)
    });
    let spec = r#"{"id":"r","spec":{"override":{"max_lag_ms":5000},"guard":{"cpu_max":0.5}}}"#;
    assert_eq!(voter.send("POST", "/v1/rollouts", None, spec).0, 200);
    assert_eq!(voter.send("POST", "/v1/rollouts/r/level", None, r#"{"level":2}"#).0, 200);

    // The two impostors, in this test process, with the cluster's gossip key.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let tracker = tokio_util::task::TaskTracker::new();
    let cancel = tokio_util::sync::CancellationToken::new();
    let claims = SelfInfo {
        role: "edge".into(),
        region: "r1".into(),
        cpu: 0.99,
        trips: ["r".to_owned()].into(),
        ..SelfInfo::default()
    };
    for id in ["rogue", "a"] {
        let config = GossipConfig {
            node_id: id.into(),
            listen: format!("127.0.0.1:{}", free_udp_port()).parse().unwrap(),
            advertise: None,
            seeds: vec![voter_gossip.clone()],
            cluster_id: "ferry".into(),
            interval: DEFAULT_INTERVAL,
            keyring: Some(KeyringSource::load(test_keyring().to_owned(), "ferry").unwrap()),
            identity: None,
        };
        let claims = claims.clone();
        let info = std::sync::Arc::new(move || claims.clone());
        runtime
            .block_on(Gossip::start(config, info, GossipMetrics::default(), &tracker, cancel.child_token()))
            .unwrap();
    }
    wait_for("the voter hearing the rogue member", Duration::from_secs(30), || {
        member("rogue").filter(|r| r["alive"] == true && r["trips"][0] == "r")
    });
    // The voter questions a's second incarnation: it pings it (no pong comes back).
    let pings = || {
        metric_value(
            &http_get(&voter.http, "/metrics").1,
            "ferry_gossip_witness_events_total{event=\"ping_sent\"}",
        )
    };
    wait_for("the voter pinging a's incarnations", Duration::from_secs(30), || {
        (pings()? >= 3.0).then_some(())
    });
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        let a = member("a").unwrap();
        assert_eq!(
            (&a["generation"], &a["alive"]),
            (&real["generation"], &true.into()),
            "the voter took the impostor for a: {a}"
        );
        let (_, rollout) = voter.get("/v1/rollouts/r");
        assert_eq!(rollout["state"], "active", "{rollout}");
        std::thread::sleep(Duration::from_millis(200));
    }
    cancel.cancel();
    tracker.close();
    runtime.block_on(tracker.wait());
}

/// A request to voter `v`'s API presenting `trust` (a cluster certificate, or a CA only):
/// `Ok((status, body))`, or the connection error.
fn api_as(
    trust: &ClientTrust,
    v: &Voter,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, serde_json::Value), String> {
    let headers: &[(&str, &str)] =
        if body.is_empty() { &[] } else { &[("content-type", "application/json")] };
    support::http::exchange_as(
        Some(trust),
        &v.http,
        method,
        path,
        headers,
        body.as_bytes(),
        Duration::from_secs(10),
    )
    .map(|r| (r.status, r.json()))
}

#[test]
fn the_api_takes_edges_by_certificate_for_what_edges_do_and_nothing_else() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = TempDir::new("trust-api");
    let voters = start_cluster(dir.path(), 1);
    let v = &voters[0];
    wait_for_leader(&[v]);
    assert!(v.http.starts_with("https://"), "a voter with a certificate serves HTTPS: {}", v.http);
    let ca = raft_ca(dir.path());
    let attack = dir.path().join("certs");
    std::fs::create_dir_all(&attack).unwrap();
    let edge = ClientTrust::Cluster(forge(Some(&ca), &attack, "e1", &["spiffe://ferry/edge/e1"], always()));
    let registration = r#"{"region":"eu","quic_addr":"127.0.0.1:4433","http_addr":"127.0.0.1:8080"}"#;

    // The edge is a principal of its own, with no token.
    let (status, who) = api_as(&edge, v, "GET", "/v1/whoami", "").unwrap();
    assert_eq!(
        (status, who["principal"].as_str(), who["role"].as_str()),
        (200, Some("edge:e1"), Some("edge"))
    );
    // (method, path, body, status) for the edge's certificate.
    let table = [
        ("PUT", "/v1/edges/e1", registration, 200),
        ("GET", "/v1/streams", "", 200),
        ("PUT", "/v1/origins/live/a", r#"{"origin":"e1"}"#, 200),
        ("PUT", "/v1/edges/e2", registration, 403),
        ("PUT", "/v1/origins/live/b", r#"{"origin":"e2"}"#, 403),
        ("POST", "/v1/edges/e2/drain", "", 403),
        ("POST", "/v1/rollouts", r#"{"id":"r1","spec":{"override":{"congestion":"bbr"}}}"#, 403),
        ("POST", "/v1/cluster/members/7", r#"{"raft_addr":"127.0.0.1:1"}"#, 403),
        ("DELETE", "/v1/cluster/members/1", "", 403),
        ("GET", "/v1/tokens", "", 403),
        ("POST", "/v1/edges/e1/drain", "", 200),
    ];
    for (method, path, body, want) in table {
        let (status, answer) = api_as(&edge, v, method, path, body).unwrap();
        assert_eq!(status, want, "edge e1: {method} {path}: {answer}");
    }
    let (_, audit) = v.get("/v1/audit");
    let register =
        audit["events"].as_array().unwrap().iter().find(|e| e["action"] == "edge.register").unwrap();
    assert_eq!(
        (register["actor"].as_str(), register["role"].as_str()),
        (Some("edge:e1"), Some("edge")),
        "{register}"
    );

    // Certificates the TLS handshake refuses: expired, not yet valid, another CA.
    let refused = [
        ("expired", forge(Some(&ca), &attack, "old", &["spiffe://ferry/edge/e1"], (2020, 2021))),
        ("not yet valid", forge(Some(&ca), &attack, "early", &["spiffe://ferry/edge/e1"], (2080, 2090))),
        ("another CA", forge(None, &attack, "rogue", &["spiffe://ferry/edge/e1"], always())),
    ];
    for (what, tls) in refused {
        let out = api_as(&ClientTrust::Cluster(tls), v, "GET", "/v1/streams", "");
        assert!(out.is_err(), "{what}: {out:?}");
    }
    // Signed by the CA but not an edge of this cluster: refused by the API.
    for (what, uris) in [
        ("another cluster", &["spiffe://staging/edge/e1"][..]),
        ("two identities", &["spiffe://ferry/edge/e1", "spiffe://ferry/edge/e2"][..]),
    ] {
        let tls = ClientTrust::Cluster(forge(Some(&ca), &attack, "odd", uris, always()));
        let (status, answer) = api_as(&tls, v, "GET", "/v1/streams", "").unwrap();
        assert_eq!(status, 403, "{what}: {answer}");
    }

    // Plain HTTP to the HTTPS port gets no answer; `ferry ctl` needs the CA for https://.
    let plain = support::http::exchange(v.addr(), "GET", "/healthz", &[], b"", Duration::from_secs(5));
    assert!(plain.map(|r| r.status).unwrap_or(0) != 200, "plain HTTP answered by an HTTPS voter");
    let out = ferry()
        .args(["ctl", "--control-plane", &v.http, "--token", TOKEN, "cluster", "status"])
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--ca-file"), "{out:?}");
    let other_ca = dir.path().join("other-ca");
    assert!(ferry().args(["ca", "init", "--dir"]).arg(&other_ca).status().unwrap().success());
    let out = ferry()
        .args(["ctl", "--control-plane", &v.http, "--token", TOKEN, "--timeout", "2s", "--ca-file"])
        .arg(other_ca.join("ca.pem"))
        .args(["cluster", "status"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "ctl trusted a voter its CA did not sign");
    let out = ferry()
        .arg("ctl")
        .args(Voter::ctl_args(&[v]))
        .args(["--token", TOKEN, "cluster", "status"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A voter that signs edges' certificates (`--ca-key`, `--join-token-file`), with the
/// CA made in `dir/ca` and gossip at `gossip`; edges get `edge_cert_lifetime`.
fn signing_voter(dir: &Path, gossip: &str, lifetime: &str) -> (Voter, PathBuf, PathBuf) {
    let ca = dir.join("ca");
    assert!(ferry().args(["ca", "init", "--dir"]).arg(&ca).status().unwrap().success());
    let join = dir.join("join-token");
    std::fs::write(&join, "join-token-for-the-test-0123456789").unwrap();
    let mut args =
        vec!["--gossip-listen".to_owned(), gossip.to_owned(), "--gossip-seeds".to_owned(), gossip.to_owned()];
    args.extend(support::cluster_cert_args(&ca, "voter-1", "voter"));
    args.extend(["--ca-key".to_owned(), ca.join("ca-key.pem").display().to_string()]);
    args.extend(["--join-token-file".to_owned(), join.display().to_string()]);
    args.extend(["--edge-cert-lifetime".to_owned(), lifetime.to_owned()]);
    let peers = format!("1=127.0.0.1:{}", free_udp_port());
    let voter = Voter::start(1, &peers, &dir.join("v1"), &strs(&args));
    wait_for_leader(&[&voter]);
    (voter, ca, join)
}

/// An edge whose certificate the control plane issues (`--cert-dir`, `--join-token-file`).
fn joining_edge(id: &str, voter: &Voter, ca: &Path, join: &Path, dir: &Path, gossip_seed: &str) -> Edge {
    let gossip = format!("127.0.0.1:{}", free_udp_port());
    let args: Vec<String> = [
        "--region",
        "r1",
        "--gossip-listen",
        &gossip,
        "--gossip-seeds",
        gossip_seed,
        "--control-plane",
        &voter.http,
        "--relay-linger",
        "2s",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["--cluster-ca".to_owned(), ca.join("ca.pem").display().to_string()])
    .chain(["--cert-dir".to_owned(), dir.join(id).display().to_string()])
    .chain(["--join-token-file".to_owned(), join.display().to_string()])
    .collect();
    Edge::start(id, &strs(&args))
}

/// Edges get their first certificate with the join token (no CA key, no operator
/// token), and renew it at two thirds of its 2-minute lifetime while a viewer on one
/// edge plays a stream relayed from the other: three renewals each, not a frame lost.
#[test]
fn edges_renew_their_certificates_while_viewers_keep_playing() {
    let _heavy = heavy();
    let dir = TempDir::new("trust-renew");
    let gossip = format!("127.0.0.1:{}", free_udp_port());
    let (voter, ca, join) = signing_voter(dir.path(), &gossip, "2m");
    let origin = joining_edge("origin", &voter, &ca, &join, dir.path(), &gossip);
    let relay = joining_edge("relay", &voter, &ca, &join, dir.path(), &gossip);
    for id in ["origin", "relay"] {
        assert!(!dir.path().join(id).join("ca-key.pem").exists());
        let cert = rustls_pemfile::certs(
            &mut std::fs::read(dir.path().join(id).join("node.pem")).unwrap().as_slice(),
        )
        .next()
        .unwrap()
        .unwrap();
        let named = ferry_net::identity::Identity::of_cert(&cert).unwrap();
        assert_eq!(named.uri(), format!("spiffe://ferry/edge/{id}"));
    }
    wait_for("both edges registered with their certificates", Duration::from_secs(30), || {
        let (_, body) = voter.get("/v1/edges?stale=true");
        (body["edges"].as_array()?.len() == 2).then_some(())
    });
    let (_, audit) = voter.get("/v1/audit");
    assert!(audit["events"].as_array().unwrap().iter().any(|e| e["actor"] == "edge:relay"), "{audit}");

    let mut cmd = ferry();
    cmd.args(["publish", "--edge", &origin.quic, "--stream", "live/renew", "--synthetic", "--insecure"])
        .args(["--duration", "400s"])
        .stdout(std::process::Stdio::null());
    let _publisher = Proc::spawn("publisher", &mut cmd);
    // The relay learns the origin from its watch or gossip; until then a viewer is told
    // not_found.
    wait_for("a viewer on the relay plays", Duration::from_secs(30), || {
        let out = ferry()
            .args([
                "watch",
                "--edge",
                &relay.quic,
                "--stream",
                "live/renew",
                "--insecure",
                "--duration",
                "1s",
            ])
            .arg("--json")
            .output()
            .unwrap();
        let stats: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (stats["frames"].as_u64()? > 0).then_some(())
    });
    let mut cmd = ferry();
    cmd.args(["watch", "--edge", &relay.quic, "--stream", "live/renew", "--insecure", "--json"])
        .args(["--duration", "270s"])
        .stdout(std::process::Stdio::piped());
    let viewer = Proc::spawn("viewer on the relay", &mut cmd);
    let renewed = |e: &Edge| e.metric("ferry_certificate_renewals_total{result=\"ok\"}").unwrap_or(0.0);
    wait_for("three renewals on both edges", Duration::from_secs(300), || {
        (renewed(&origin) >= 3.0 && renewed(&relay) >= 3.0).then_some(())
    });
    // Still the edges' own identities, now from the renewed certificates.
    let (_, edges) = voter.get("/v1/edges");
    assert_eq!(edges["edges"].as_array().unwrap().len(), 2, "{edges}");
    let stats = json_output(viewer, Duration::from_secs(60));
    println!("viewer across renewals: {stats}");
    assert!(stats["frames"].as_u64().unwrap() > 30 * 250, "{stats}");
    assert_eq!(stats["lost_frames"], 0, "{stats}");
    assert_eq!(stats["skipped_groups"], 0, "{stats}");
    assert_eq!(stats["ended"], "duration reached", "{stats}");
    assert_eq!(origin.metric("ferry_certificate_renewals_total{result=\"error\"}"), Some(0.0));
}

/// An edge whose certificate has ended cannot register or relay; a join token is
/// needed for a first certificate, and an edge renews only its own.
#[test]
fn an_edge_whose_certificate_ended_cannot_register_or_relay() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = TempDir::new("trust-ended");
    let gossip = format!("127.0.0.1:{}", free_udp_port());
    let (voter, ca, join) = signing_voter(dir.path(), &gossip, "1h");
    // A valid member, publishing.
    let good = joining_edge("good", &voter, &ca, &join, dir.path(), &gossip);
    let mut cmd = ferry();
    cmd.args(["publish", "--edge", &good.quic, "--stream", "live/x", "--synthetic", "--insecure"])
        .args(["--duration", "60s"])
        .stdout(std::process::Stdio::null());
    let _publisher = Proc::spawn("publisher", &mut cmd);
    // An edge with an ended certificate from the same CA, pulling from the member.
    let certs = dir.path().join("forged");
    std::fs::create_dir_all(&certs).unwrap();
    let mut tls = forge(Some(&ca), &certs, "old", &["spiffe://ferry/edge/old"], (2020, 2021));
    tls.ca = ca.join("ca.pem");
    let args: Vec<String> = ["--control-plane", &voter.http, "--upstream", &good.quic]
        .iter()
        .map(|s| s.to_string())
        .chain(["--cluster-ca".into(), tls.ca.display().to_string()])
        .chain(["--cluster-cert".into(), tls.cert.display().to_string()])
        .chain(["--cluster-key".into(), tls.key.display().to_string()])
        .collect();
    let old = Edge::start("old", &strs(&args));
    wait_for("the member registered", Duration::from_secs(30), || {
        let (_, body) = voter.get("/v1/edges?stale=true");
        body["edges"].as_array()?.iter().any(|e| e["id"] == "good").then_some(())
    });
    let out = ferry()
        .args([
            "watch",
            "--edge",
            &old.quic,
            "--stream",
            "live/x",
            "--insecure",
            "--duration",
            "3s",
            "--json",
        ])
        .output()
        .unwrap();
    let frames =
        serde_json::from_slice::<serde_json::Value>(&out.stdout).ok().and_then(|s| s["frames"].as_u64());
    assert!(frames.unwrap_or(0) == 0, "relayed through an ended certificate: {frames:?}");
    assert_eq!(old.metric("ferry_control_syncs_total"), Some(0.0), "it reached the API");
    let (_, body) = voter.get("/v1/edges?stale=true");
    assert!(!body["edges"].as_array().unwrap().iter().any(|e| e["id"] == "old"), "{body}");

    // The join token is what gets a first certificate; a wrong one gets nothing, and
    // an edge's own certificate cannot get another edge's.
    let (_, csr) = ferry_net::certs::certificate_request(
        &ferry_net::identity::Identity::new("ferry", ferry_net::identity::Role::Edge, "other").unwrap(),
        &[],
    )
    .unwrap();
    let body = serde_json::json!({ "csr": csr }).to_string();
    let json = [("content-type", "application/json")];
    let ask = |trust: Option<&ClientTrust>, bearer: Option<&str>| {
        let auth = bearer.map(|b| format!("Bearer {b}"));
        let mut headers = json.to_vec();
        if let Some(auth) = &auth {
            headers.push(("authorization", auth.as_str()));
        }
        let r = support::http::exchange_as(
            trust,
            &voter.http,
            "POST",
            "/v1/certificates",
            &headers,
            body.as_bytes(),
            Duration::from_secs(10),
        )
        .unwrap();
        (r.status, r.json())
    };
    let join_token = std::fs::read_to_string(&join).unwrap();
    assert_eq!(ask(None, Some("not-the-join-token-000000")).0, 401);
    assert_eq!(ask(None, Some(&join_token)).0, 201);
    let member = ClientTrust::Cluster(ClusterTls {
        ca: ca.join("ca.pem"),
        cert: dir.path().join("good/node.pem"),
        key: dir.path().join("good/node-key.pem"),
    });
    let (status, answer) = ask(Some(&member), None);
    assert_eq!(status, 403, "{answer}");
    // The join token reads nothing.
    let (status, _) = http_json(&voter.http, "GET", "/v1/edges", Some(&join_token), &[], None);
    assert_eq!(status, 403);
}
