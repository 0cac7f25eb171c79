#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use super::*;
use crate::identity::Identity;
use crate::tls::{init_ca, issue_node_cert, DEFAULT_CERT_LIFETIME};

fn addr(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

fn seen(id: &str, generation: u64, alive: bool) -> Seen {
    Seen { id: id.into(), generation, addr: addr(7000 + generation as u16), alive }
}

/// Nonces 1, 2, 3, … (distinct, so pongs match their pings).
fn counter() -> impl FnMut() -> Option<Nonce> {
    let mut next = 0u8;
    move || {
        next += 1;
        Some([next; NONCE_LEN])
    }
}

fn nonce_of(ping: &PingOut) -> Nonce {
    match &ping.probe {
        Probe::Ping { nonce, .. } => *nonce,
        other => panic!("not a ping: {other:?}"),
    }
}

#[test]
fn probes_survive_the_wire_and_malformed_ones_are_refused() {
    let ping = Probe::Ping { nonce: [7; NONCE_LEN], id: "edge-a".into(), generation: 42 };
    let pong = Probe::Pong {
        nonce: [9; NONCE_LEN],
        id: "voter-2".into(),
        generation: u64::MAX,
        scheme: 0x0403,
        signature: vec![1, 2, 3],
        chain: vec![vec![4; 300], vec![5; 10]],
    };
    for probe in [&ping, &pong] {
        let bytes = probe.encode();
        assert!(Probe::is_probe(&bytes));
        assert_eq!(Probe::decode(&bytes).as_ref(), Some(probe));
        for cut in 0..bytes.len() {
            assert_eq!(Probe::decode(&bytes[..cut]), None, "truncated at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Probe::decode(&longer), None, "a trailing byte");
    }
    let mut unknown = ping.encode();
    unknown[MAGIC.len()] = 3;
    assert_eq!(Probe::decode(&unknown), None, "an unknown kind");
    let no_chain = Probe::Pong {
        nonce: [9; NONCE_LEN],
        id: "a".into(),
        generation: 1,
        scheme: 0x0403,
        signature: vec![1],
        chain: vec![],
    };
    assert_eq!(Probe::decode(&no_chain.encode()), None, "a pong without a certificate");
    // chitchat's datagrams start with its magic number, never ours.
    assert!(!Probe::is_probe(&45_139u16.to_le_bytes()));
}

struct Cluster {
    _dir: tempfile::TempDir,
    ca: std::path::PathBuf,
    certs: std::path::PathBuf,
}

impl Cluster {
    fn new() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        init_ca(&ca).unwrap();
        let certs = dir.path().join("certs");
        Cluster { ca, certs, _dir: dir }
    }

    fn prover(&self, cluster: &str, role: Role, node: &str, gossip_id: &str, generation: u64) -> Prover {
        let identity = Identity::new(cluster, role, node).unwrap();
        let (cert, key) =
            issue_node_cert(&self.ca, node, &identity, &[], DEFAULT_CERT_LIFETIME, &self.certs).unwrap();
        Prover::new(ReloadingCert::load(&cert, &key).unwrap(), cluster, gossip_id, generation)
    }

    fn checker(&self, cluster: &str) -> Checker {
        Checker::new(crate::tls::cluster_client_verifier(&self.ca.join("ca.pem")).unwrap(), cluster)
    }
}

#[test]
fn a_pong_vouches_only_for_the_member_its_certificate_names_answering_that_nonce() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cluster = Cluster::new();
    let checker = cluster.checker("prod");
    let nonce = [5; NONCE_LEN];
    let ping = |id: &str, generation: u64| Probe::Ping { nonce, id: id.into(), generation };

    let edge = cluster.prover("prod", Role::Edge, "edge-a", "edge-a", 11);
    let pong = edge.answer(&ping("edge-a", 11)).unwrap();
    assert_eq!(checker.check(&pong, &nonce, "edge-a", 11), Ok(()));
    // Through the wire too.
    assert_eq!(checker.check(&Probe::decode(&pong.encode()).unwrap(), &nonce, "edge-a", 11), Ok(()));
    assert!(edge.answer(&ping("edge-b", 11)).is_none(), "a ping for another member is not answered");
    assert!(edge.answer(&ping("edge-a", 10)).is_none(), "nor one for an earlier incarnation");

    let voter = cluster.prover("prod", Role::Voter, "2", "voter-2", 3);
    assert_eq!(checker.check(&voter.answer(&ping("voter-2", 3)).unwrap(), &nonce, "voter-2", 3), Ok(()));

    // Another nonce, another generation: not this ping's answer.
    assert_eq!(checker.check(&pong, &[6; NONCE_LEN], "edge-a", 11), Err(PongRefusal::Signature));
    assert_eq!(checker.check(&pong, &nonce, "edge-a", 12), Err(PongRefusal::Signature));

    // A key holder answering for edge-a with its own certificate (edge-b's).
    let impostor = cluster.prover("prod", Role::Edge, "edge-b", "edge-a", 11);
    let forged = impostor.answer(&ping("edge-a", 11)).unwrap();
    assert_eq!(
        checker.check(&forged, &nonce, "edge-a", 11),
        Err(PongRefusal::Certificate(Refusal::WrongNode))
    );

    // edge-a's certificate with a signature that is not over this message.
    let Probe::Pong { nonce: n, id, generation, scheme, mut signature, chain } = pong.clone() else {
        panic!()
    };
    let last = signature.len() - 1;
    signature[last] ^= 1;
    let tampered = Probe::Pong { nonce: n, id, generation, scheme, signature, chain };
    assert_eq!(checker.check(&tampered, &nonce, "edge-a", 11), Err(PongRefusal::Signature));

    // Another cluster id, another CA.
    let staging = cluster.prover("staging", Role::Edge, "edge-s", "edge-s", 1);
    let pong = staging.answer(&ping("edge-s", 1)).unwrap();
    assert_eq!(
        checker.check(&pong, &nonce, "edge-s", 1),
        Err(PongRefusal::Certificate(Refusal::OtherCluster))
    );
    let rogue = Cluster::new().prover("prod", Role::Edge, "edge-a", "edge-a", 11);
    let pong = rogue.answer(&ping("edge-a", 11)).unwrap();
    assert_eq!(checker.check(&pong, &nonce, "edge-a", 11), Err(PongRefusal::Certificate(Refusal::UnknownCa)));
}

#[test]
fn undoubted_members_and_this_process_are_never_pinged() {
    let mut w = Witness::default();
    let t0 = Instant::now();
    // b restarted: its first incarnation is dead, replaced by a live one.
    let view = [seen("a", 1, true), seen("b", 1, false), seen("b", 2, true), seen("me", 9, false)];
    let (verdicts, pings) = w.decide(t0, ("me", 9), &view, counter());
    assert_eq!(verdicts, [true, false, true, true]);
    assert!(pings.is_empty());
    assert_eq!(w.questioned(), 0);
}

#[test]
fn a_doubted_member_that_never_answers_is_dead_after_the_answer_window() {
    let mut w = Witness::default();
    let t0 = Instant::now();
    let (verdicts, _) = w.decide(t0, ("me", 1), &[seen("a", 1, true)], counter());
    assert_eq!(verdicts, [true]);
    let mut nonces = counter();
    let mut pings = 0;
    let mut t = t0;
    let mut last = true;
    while t <= t0 + ANSWER_WITHIN * 2 {
        let (verdicts, out) = w.decide(t, ("me", 1), &[seen("a", 1, false)], &mut nonces);
        pings += out.len();
        for p in &out {
            assert_eq!(p.to, addr(7001));
            assert!(matches!(&p.probe, Probe::Ping { id, generation: 1, .. } if id == "a"));
        }
        let within = t < t0 + ANSWER_WITHIN;
        assert_eq!(verdicts, [within], "at {:?}", t - t0);
        last = verdicts[0];
        t += Duration::from_millis(100);
    }
    assert!(!last);
    // One ping per PING_EVERY while it may still answer, the first at once; then one
    // per 5 × PING_EVERY.
    let waiting = ANSWER_WITHIN.as_millis().div_ceil(PING_EVERY.as_millis());
    let after = (ANSWER_WITHIN * 2).as_millis().div_ceil(PING_EVERY.as_millis() * 5);
    assert!((waiting..=waiting + after).contains(&(pings as u128)), "{pings} pings");
    // Gone from chitchat's view: forgotten.
    w.decide(t, ("me", 1), &[], counter());
    assert_eq!(w.questioned(), 0);
}

#[test]
fn a_member_chitchat_calls_dead_stays_alive_while_its_pongs_vouch_for_it() {
    let mut w = Witness::default();
    let t0 = Instant::now();
    w.decide(t0, ("me", 1), &[seen("a", 1, true)], counter());
    let mut nonces = counter();
    let mut t = t0;
    // A forged heartbeat: chitchat says dead from now on; a answers every ping.
    while t < t0 + Duration::from_secs(5) {
        let (verdicts, out) = w.decide(t, ("me", 1), &[seen("a", 1, false)], &mut nonces);
        assert_eq!(verdicts, [true], "at {:?}", t - t0);
        for p in &out {
            assert_eq!(w.expected(&nonce_of(p)), Some(("a".into(), 1)));
            w.vouch(t + Duration::from_millis(2), &nonce_of(p));
        }
        t += Duration::from_millis(100);
    }
    // It stops answering (really dead): dead once the last vouch is VOUCH_FOR old.
    let silent = t;
    let mut died = None;
    while t < silent + Duration::from_secs(3) {
        let (verdicts, _) = w.decide(t, ("me", 1), &[seen("a", 1, false)], &mut nonces);
        if !verdicts[0] && died.is_none() {
            died = Some(t - silent);
        }
        t += Duration::from_millis(100);
    }
    let died = died.expect("declared dead");
    assert!(died <= VOUCH_FOR, "dead {died:?} after the last pong");
    // A pong nobody asked for vouches for nothing.
    w.vouch(t, &[200; NONCE_LEN]);
    let (verdicts, _) = w.decide(t, ("me", 1), &[seen("a", 1, false)], &mut nonces);
    assert_eq!(verdicts, [false]);
}

#[test]
fn of_two_incarnations_of_one_id_only_the_one_that_proves_itself_is_alive() {
    let mut w = Witness::default();
    let t0 = Instant::now();
    // The real edge (generation 1) and an impostor's incarnation (generation 2), both
    // kept alive by chitchat; and another incarnation of this process's own id.
    w.decide(t0, ("me", 9), &[seen("a", 1, true), seen("me", 9, true)], counter());
    let view = [seen("a", 1, true), seen("a", 2, true), seen("me", 5, true), seen("me", 9, true)];
    let mut nonces = counter();
    let mut t = t0;
    let mut verdicts = vec![];
    while t < t0 + Duration::from_secs(2) {
        let (v, out) = w.decide(t, ("me", 9), &view, &mut nonces);
        // The new incarnations are not believed before they prove themselves; the one
        // believed so far keeps its verdict while its pong is on the way.
        assert!(!v[1] && !v[2] && v[3], "{v:?}");
        for p in &out {
            // Only the real generation answers.
            if matches!(&p.probe, Probe::Ping { generation: 1, .. }) {
                w.vouch(t, &nonce_of(p));
            }
        }
        verdicts = v;
        t += Duration::from_millis(100);
    }
    assert_eq!(verdicts, [true, false, false, true]);
    assert_eq!(w.questioned(), 3);
}
