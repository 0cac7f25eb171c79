//! A gossip datagram, whatever a process does with it: the keyring opens it; an opened
//! liveness probe is decoded (and a pong's certificates parsed and checked); the rest
//! is chitchat's, decoded by its own codec.
//!
//! The input goes through a real sealed gossip socket ([`SealedTransport`]) twice: as
//! it came (almost never sealed under our key) and sealed with the test key (so its
//! bytes reach the probe decoder and chitchat as plaintext). A sealed sentinel from a
//! second sender follows, so the target knows when the socket is done with the input.
//! Besides "no panic": probes re-encode to the same bytes, sealing round-trips and a
//! flipped byte never opens, no pong from another CA vouches, and every envelope is
//! reported from the address that sent it. chitchat's envelopes are not re-encoded: a
//! process never re-encodes what it received, and chitchat's encoder asserts that a
//! delta re-encodes to as many bytes as it came in, which a fuzzed one need not.
#![no_main]

use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chitchat::transport::{RecvOutcome, Socket, Transport};
use chitchat::ChitchatMessage;
use ferry_fuzz::{write_gossip_keyring, CLUSTER};
use ferry_net::gossip::witness::{Checker, Probe, WitnessLink};
use ferry_net::gossip::{GossipDrops, KeyringSource, SealedTransport};
use ferry_net::identity::{Identity, Role};
use ferry_net::seal::Keyring;
use ferry_net::tls::{cluster_client_verifier, init_ca, issue_node_cert, ClusterTls, DEFAULT_CERT_LIFETIME};
use libfuzzer_sys::fuzz_target;
use rustls::pki_types::CertificateDer;
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// chitchat's `BadCluster` envelope (magic, version 0, type 3), then bytes chitchat
/// ignores: the sentinel's plaintext, told apart by its length.
const SENTINEL: &[u8] = b"\x53\xb0\x00\x03fuzz-sentinel";
/// How long the socket may take with one input.
const PATIENCE: Duration = Duration::from_secs(5);

struct Fixture {
    rt: Runtime,
    keyring: Arc<Keyring>,
    checker: Checker,
    socket: Mutex<Box<dyn Socket>>,
    gossip: SocketAddr,
    /// Sends the input.
    stranger: UdpSocket,
    /// Sends the sentinel.
    peer: UdpSocket,
    sealed_sentinel: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = std::env::temp_dir().join(format!("ferry-fuzz-gossip-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_gossip_keyring(&dir.join("keys")).expect("the keyring is written");
        let (ca, _) = init_ca(&dir.join("ca")).expect("a CA");
        let identity = Identity::new(CLUSTER, Role::Edge, "e1").expect("an edge identity");
        let (cert, key) = issue_node_cert(&dir.join("ca"), "e1", &identity, &[], DEFAULT_CERT_LIFETIME, &dir)
            .expect("a node certificate");
        let keys = KeyringSource::load(dir.join("keys"), CLUSTER).expect("the keyring loads");
        let tls = ClusterTls { ca: ca.clone(), cert, key };
        let link = WitnessLink::new(&tls, CLUSTER, "e1", 1, keys.clone(), Default::default())
            .expect("a witness link");
        let checker = Checker::new(cluster_client_verifier(&ca).expect("a verifier"), CLUSTER);
        // Everything is read; the certificate reloads keep the last good copy.
        let _ = std::fs::remove_dir_all(&dir);

        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let transport = SealedTransport {
            keyring: keys.clone(),
            drops: GossipDrops::default(),
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
            witness: Some(Arc::new(link)),
        };
        let socket =
            rt.block_on(transport.open(([127, 0, 0, 1], 0).into())).expect("the sealed socket opens");
        let gossip = socket.local_addr().expect("a bound socket");
        let bind = || UdpSocket::bind("127.0.0.1:0").expect("a client socket");
        let keyring = keys.get();
        let sealed_sentinel = keyring.seal(SENTINEL, [7; 12]).expect("the sentinel seals");
        Fixture {
            rt,
            keyring,
            checker,
            socket: Mutex::new(socket),
            gossip,
            stranger: bind(),
            peer: bind(),
            sealed_sentinel,
        }
    })
}

fn is_sentinel(outcome: &RecvOutcome) -> bool {
    matches!(outcome.envelope.message, ChitchatMessage::BadCluster)
        && outcome.num_bytes_received == SENTINEL.len()
}

impl Fixture {
    /// Sends `datagrams` from the stranger, then the sentinel from the peer, and checks
    /// who the socket reports each envelope from until the sentinel.
    fn receive(&self, datagrams: &[&[u8]]) {
        for datagram in datagrams {
            self.stranger.send_to(datagram, self.gossip).expect("a datagram is sent");
        }
        self.peer.send_to(&self.sealed_sentinel, self.gossip).expect("the sentinel is sent");
        let stranger = self.stranger.local_addr().expect("a bound socket");
        let peer = self.peer.local_addr().expect("a bound socket");
        let mut socket = self.socket.lock().expect("one input at a time");
        loop {
            let outcome = self
                .rt
                .block_on(async { tokio::time::timeout(PATIENCE, socket.recv()).await })
                .expect("the sentinel arrives")
                .expect("the socket works");
            if is_sentinel(&outcome) {
                assert_eq!(outcome.from_addr, peer, "the sentinel is reported from its sender");
                return;
            }
            assert_eq!(outcome.from_addr, stranger, "an envelope is reported from its sender");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();

    // The keyring: what it opens it seals again; what it seals opens, and not once tampered.
    let opened = f.keyring.open(data).ok();
    if let Some(plain) = &opened {
        let again = f.keyring.seal(plain, [1; 12]).expect("an opened datagram seals again");
        assert_eq!(f.keyring.open(&again).as_ref(), Ok(plain));
    }
    let nonce: [u8; 12] = std::array::from_fn(|i| data.get(i).copied().unwrap_or(0));
    let sealed = f.keyring.seal(data, nonce).expect("any datagram seals");
    assert_eq!(f.keyring.open(&sealed).as_deref(), Ok(data));
    let mut tampered = sealed.clone();
    let at = data.len() % tampered.len();
    if let Some(byte) = tampered.get_mut(at) {
        *byte ^= 0x01;
    }
    assert!(f.keyring.open(&tampered).is_err(), "a flipped byte at {at} still opens");

    // The probe decoder, on the input as an opened plaintext.
    if Probe::is_probe(data) {
        if let Some(probe) = Probe::decode(data) {
            assert_eq!(probe.encode(), data, "a probe re-encodes to its bytes");
            if let Probe::Pong { nonce, id, generation, chain, .. } = &probe {
                for cert in chain {
                    let _ = Identity::of_cert(&CertificateDer::from(cert.as_slice()));
                }
                assert!(
                    f.checker.check(&probe, nonce, id, *generation).is_err(),
                    "a pong of another CA vouched"
                );
            }
        }
    }

    // The socket, end to end; skipped for inputs that could pass for the sentinel, and
    // for those too big to be sent sealed.
    let sentinel_like = |plain: &[u8]| plain.len() == SENTINEL.len();
    if data.len() > 65_000 || sentinel_like(data) || opened.as_deref().is_some_and(sentinel_like) {
        return;
    }
    f.receive(&[data, &sealed]);
});
