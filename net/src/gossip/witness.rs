//! Liveness that the gossip key cannot forge.
//!
//! chitchat's failure detector believes any heartbeat it is told, whoever relays it: a
//! holder of the gossip key who sends one digest with a huge heartbeat for a member
//! hides that member's real heartbeats, and every peer declares it dead. With cluster
//! certificates, a member that chitchat calls dead, or whose id shows up under more
//! than one incarnation, is *questioned*: peers send a ping with a fresh nonce to its
//! gossip address, and it answers with a pong signed by its certificate's key. A pong
//! vouches for the member for [`VOUCH_FOR`] when its certificate chains to the cluster
//! CA, names that member (`spiffe://CLUSTER/edge/ID`, or `/voter/N` for `voter-N`),
//! and its signature covers the cluster, the member's id and generation and the nonce.
//! A questioned member is alive while vouched for; one not vouched for within
//! [`ANSWER_WITHIN`] of being questioned is dead. An unquestioned member (alive, one
//! incarnation) costs nothing.
//!
//! [`Witness`] decides (sans-IO: the caller's clock and nonces in, verdicts and pings
//! out); [`Prover`] signs and [`Checker`] verifies pongs; [`WitnessLink`] carries them
//! over the sealed gossip socket.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::SignatureScheme;

use crate::identity::{Identity, Refusal, Role};
use crate::keys::ReloadingCert;
use crate::tls::ClusterTls;

use super::sealed::KeyringSource;

/// How long a verified pong vouches for a member.
pub const VOUCH_FOR: Duration = Duration::from_secs(1);
/// A questioned member not vouched for within this long is dead.
pub const ANSWER_WITHIN: Duration = Duration::from_millis(500);
/// Pings to one questioned incarnation are this far apart.
pub const PING_EVERY: Duration = Duration::from_millis(200);
/// Pings awaiting their pong; older ones are forgotten.
const PENDING_MAX: usize = 1024;
/// Pongs this process signs per second at most (a burst of that many).
const PONGS_PER_SECOND: f64 = 1000.0;

/// First bytes of a probe datagram (inside the seal). chitchat's datagrams start with
/// its magic number (`0x53 0xb0`), so the two never mix.
const MAGIC: &[u8; 8] = b"\xffFRYWIT1";
const PING: u8 = 1;
const PONG: u8 = 2;
const NONCE_LEN: usize = 16;
const MAX_ID: usize = 255;
const MAX_CERTS: usize = 4;
const MAX_CERT: usize = 8192;
/// What a pong's signature covers first.
const CONTEXT: &[u8] = b"ferry gossip pong v1\0";

pub type Nonce = [u8; NONCE_LEN];

/// A probe on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// "Are you `id`, incarnation `generation`?"
    Ping { nonce: Nonce, id: String, generation: u64 },
    /// "I am `id`, incarnation `generation`": signed with the key of `chain[0]`.
    Pong { nonce: Nonce, id: String, generation: u64, scheme: u16, signature: Vec<u8>, chain: Vec<Vec<u8>> },
}

impl Probe {
    /// Whether a datagram (opened) is a probe rather than chitchat's.
    pub fn is_probe(plain: &[u8]) -> bool {
        plain.starts_with(MAGIC)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        let head = |out: &mut Vec<u8>, kind: u8, nonce: &Nonce, id: &str, generation: u64| {
            out.push(kind);
            out.extend_from_slice(nonce);
            put_bytes(out, id.as_bytes());
            out.extend_from_slice(&generation.to_be_bytes());
        };
        match self {
            Probe::Ping { nonce, id, generation } => head(&mut out, PING, nonce, id, *generation),
            Probe::Pong { nonce, id, generation, scheme, signature, chain } => {
                head(&mut out, PONG, nonce, id, *generation);
                out.extend_from_slice(&scheme.to_be_bytes());
                put_bytes(&mut out, signature);
                out.push(chain.len().min(MAX_CERTS) as u8);
                for cert in chain.iter().take(MAX_CERTS) {
                    put_bytes(&mut out, cert);
                }
            }
        }
        out
    }

    /// The probe in `plain`, or `None` for anything malformed.
    pub fn decode(plain: &[u8]) -> Option<Probe> {
        let mut r = Reader(plain.strip_prefix(MAGIC.as_slice())?);
        let kind = r.u8()?;
        let nonce: Nonce = r.take(NONCE_LEN)?.try_into().ok()?;
        let id = String::from_utf8(r.bytes(MAX_ID)?.to_vec()).ok()?;
        let generation = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
        let probe = match kind {
            PING => Probe::Ping { nonce, id, generation },
            PONG => {
                let scheme = u16::from_be_bytes(r.take(2)?.try_into().ok()?);
                let signature = r.bytes(1024)?.to_vec();
                let count = usize::from(r.u8()?);
                if count == 0 || count > MAX_CERTS {
                    return None;
                }
                let mut chain = Vec::with_capacity(count);
                for _ in 0..count {
                    chain.push(r.bytes(MAX_CERT)?.to_vec());
                }
                Probe::Pong { nonce, id, generation, scheme, signature, chain }
            }
            _ => return None,
        };
        r.0.is_empty().then_some(probe)
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    out.extend_from_slice(bytes.get(..usize::from(u16::MAX)).unwrap_or(bytes));
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }

    fn bytes(&mut self, max: usize) -> Option<&'a [u8]> {
        let len = usize::from(u16::from_be_bytes(self.take(2)?.try_into().ok()?));
        if len > max {
            return None;
        }
        self.take(len)
    }
}

/// The bytes a pong's signature covers.
fn signed_message(cluster: &str, id: &str, generation: u64, nonce: &Nonce) -> Vec<u8> {
    let mut m = CONTEXT.to_vec();
    for part in [cluster, id] {
        m.extend_from_slice(part.as_bytes());
        m.push(0);
    }
    m.extend_from_slice(&generation.to_be_bytes());
    m.extend_from_slice(nonce);
    m
}

/// The gossip id of a certificate's identity: an edge's id, or `voter-N`.
pub fn gossip_id(identity: &Identity) -> String {
    match identity.role {
        Role::Edge => identity.node.clone(),
        Role::Voter => format!("voter-{}", identity.node),
    }
}

/// Schemes a pong may be signed with (the key types `ferry ca` and common CAs issue).
const SCHEMES: [SignatureScheme; 4] = [
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ED25519,
    SignatureScheme::RSA_PSS_SHA256,
];

fn verification_algorithm(
    scheme: u16,
) -> Option<&'static dyn rustls::pki_types::SignatureVerificationAlgorithm> {
    let scheme = SignatureScheme::from(scheme);
    Some(match scheme {
        SignatureScheme::ECDSA_NISTP256_SHA256 => webpki::ring::ECDSA_P256_SHA256,
        SignatureScheme::ECDSA_NISTP384_SHA384 => webpki::ring::ECDSA_P384_SHA384,
        SignatureScheme::ED25519 => webpki::ring::ED25519,
        SignatureScheme::RSA_PSS_SHA256 => webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        _ => return None,
    })
}

/// Answers pings for this process with its certificate.
pub struct Prover {
    cert: Arc<ReloadingCert>,
    cluster: String,
    id: String,
    generation: u64,
}

impl Prover {
    pub fn new(cert: Arc<ReloadingCert>, cluster: &str, id: &str, generation: u64) -> Prover {
        Prover { cert, cluster: cluster.to_owned(), id: id.to_owned(), generation }
    }

    /// The pong for `ping`, or `None` if it asks for somebody else (another member, an
    /// earlier incarnation of this one) or signing fails.
    pub fn answer(&self, ping: &Probe) -> Option<Probe> {
        let Probe::Ping { nonce, id, generation } = ping else { return None };
        if *id != self.id || *generation != self.generation {
            return None;
        }
        let key = self.cert.current();
        let signer = key.key.choose_scheme(&SCHEMES)?;
        let signature = signer.sign(&signed_message(&self.cluster, &self.id, self.generation, nonce)).ok()?;
        Some(Probe::Pong {
            nonce: *nonce,
            id: self.id.clone(),
            generation: self.generation,
            scheme: u16::from(signer.scheme()),
            signature,
            chain: key.cert.iter().map(|c| c.as_ref().to_vec()).collect(),
        })
    }
}

/// Why a pong did not vouch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PongRefusal {
    /// Its certificate: see the reason.
    Certificate(Refusal),
    /// The signature does not verify with the certificate's key, or uses another scheme.
    Signature,
}

/// Verifies pongs against the cluster CA.
pub struct Checker {
    verifier: Arc<dyn ClientCertVerifier>,
    cluster: String,
}

impl Checker {
    pub fn new(verifier: Arc<dyn ClientCertVerifier>, cluster: &str) -> Checker {
        Checker { verifier, cluster: cluster.to_owned() }
    }

    /// Whether `pong` proves that `id` at `generation` answered `nonce`, now.
    pub fn check(&self, pong: &Probe, nonce: &Nonce, id: &str, generation: u64) -> Result<(), PongRefusal> {
        let Probe::Pong { nonce: n, id: pid, generation: g, scheme, signature, chain } = pong else {
            return Err(PongRefusal::Signature);
        };
        if n != nonce || pid != id || *g != generation {
            return Err(PongRefusal::Signature);
        }
        let certs: Vec<CertificateDer<'_>> =
            chain.iter().map(|c| CertificateDer::from(c.as_slice())).collect();
        let (end, intermediates) =
            certs.split_first().ok_or(PongRefusal::Certificate(Refusal::NoCertificate))?;
        self.verifier
            .verify_client_cert(end, intermediates, UnixTime::now())
            .map_err(|e| PongRefusal::Certificate(Refusal::of_tls(&e)))?;
        let identity = Identity::of_cert(end).map_err(PongRefusal::Certificate)?;
        if identity.cluster != self.cluster {
            return Err(PongRefusal::Certificate(Refusal::OtherCluster));
        }
        if gossip_id(&identity) != id {
            return Err(PongRefusal::Certificate(Refusal::WrongNode));
        }
        let algorithm = verification_algorithm(*scheme).ok_or(PongRefusal::Signature)?;
        let cert = webpki::EndEntityCert::try_from(end)
            .map_err(|_| PongRefusal::Certificate(Refusal::BadCertificate))?;
        cert.verify_signature(algorithm, &signed_message(&self.cluster, id, generation, nonce), signature)
            .map_err(|_| PongRefusal::Signature)
    }
}

/// One incarnation of a member as chitchat sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub id: String,
    pub generation: u64,
    pub addr: SocketAddr,
    /// chitchat's verdict.
    pub alive: bool,
}

/// A ping to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingOut {
    pub to: SocketAddr,
    pub probe: Probe,
}

type Key = (String, u64);

#[derive(Debug, Clone, Copy)]
struct Question {
    since: Instant,
    last_ping: Option<Instant>,
    /// The verdict when questioning began: a member alive until then keeps it while
    /// its first pong is on the way.
    was_alive: bool,
}

/// The decisions (sans-IO).
#[derive(Debug, Default)]
pub struct Witness {
    questioned: BTreeMap<Key, Question>,
    vouched: BTreeMap<Key, Instant>,
    verdicts: BTreeMap<Key, bool>,
    pending: VecDeque<(Nonce, Key)>,
}

impl Witness {
    /// Verdicts for `view` (same order) and the pings to send now. `me` is this
    /// process (never questioned); `nonce` makes a fresh nonce per ping.
    pub fn decide(
        &mut self,
        now: Instant,
        me: (&str, u64),
        view: &[Seen],
        mut nonce: impl FnMut() -> Option<Nonce>,
    ) -> (Vec<bool>, Vec<PingOut>) {
        // Incarnations of each id that chitchat calls alive.
        let mut alive: BTreeMap<&str, usize> = BTreeMap::new();
        for s in view {
            *alive.entry(s.id.as_str()).or_default() += usize::from(s.alive);
        }
        let mut verdicts = Vec::with_capacity(view.len());
        let mut pings = Vec::new();
        for s in view {
            let key = (s.id.clone(), s.generation);
            let ours = s.id == me.0 && s.generation == me.1;
            let siblings_alive = alive.get(s.id.as_str()).copied().unwrap_or(0);
            // Alive next to another live incarnation (one may be an impostor's), or dead
            // with none alive (perhaps silenced). A dead incarnation replaced by a live
            // one is just a restarted process.
            let doubted = if s.alive { siblings_alive > 1 } else { siblings_alive == 0 };
            if ours || !doubted {
                self.questioned.remove(&key);
                self.verdicts.insert(key, s.alive || ours);
                verdicts.push(s.alive || ours);
                continue;
            }
            // Only an incarnation this process already believed gets the benefit of the
            // doubt: a new one beside a live one (maybe an impostor's) proves itself first.
            let was_alive = self.verdicts.get(&key).copied().unwrap_or(false);
            let q = self.questioned.entry(key.clone()).or_insert(Question {
                since: now,
                last_ping: None,
                was_alive,
            });
            let vouched =
                self.vouched.get(&key).is_some_and(|at| now.saturating_duration_since(*at) < VOUCH_FOR);
            let waiting = q.was_alive && now.saturating_duration_since(q.since) < ANSWER_WITHIN;
            // Members that stopped answering are still asked, less often: pongs lost to a
            // partition that healed bring them back.
            let every = if vouched || waiting { PING_EVERY } else { PING_EVERY * 5 };
            if q.last_ping.is_none_or(|at| now.saturating_duration_since(at) >= every) {
                if let Some(n) = nonce() {
                    q.last_ping = Some(now);
                    if self.pending.len() >= PENDING_MAX {
                        self.pending.pop_front();
                    }
                    self.pending.push_back((n, key.clone()));
                    pings.push(PingOut {
                        to: s.addr,
                        probe: Probe::Ping { nonce: n, id: s.id.clone(), generation: s.generation },
                    });
                }
            }
            let alive = vouched || waiting;
            self.verdicts.insert(key, alive);
            verdicts.push(alive);
        }
        // Forget incarnations chitchat no longer reports.
        let present: std::collections::BTreeSet<Key> =
            view.iter().map(|s| (s.id.clone(), s.generation)).collect();
        self.questioned.retain(|k, _| present.contains(k));
        self.vouched.retain(|k, _| present.contains(k));
        self.verdicts.retain(|k, _| present.contains(k));
        (verdicts, pings)
    }

    /// The incarnation a pong with `nonce` must prove, if a ping is waiting for it.
    pub fn expected(&self, nonce: &Nonce) -> Option<Key> {
        self.pending.iter().find(|(n, _)| n == nonce).map(|(_, k)| k.clone())
    }

    /// Records a verified pong for the ping with `nonce`.
    pub fn vouch(&mut self, now: Instant, nonce: &Nonce) {
        if let Some(i) = self.pending.iter().position(|(n, _)| n == nonce) {
            if let Some((_, key)) = self.pending.remove(i) {
                self.vouched.insert(key, now);
            }
        }
    }

    /// Incarnations being questioned now.
    pub fn questioned(&self) -> usize {
        self.questioned.len()
    }
}

/// Witness events, by kind; clones share the counts.
#[derive(Debug, Clone, Default)]
pub struct WitnessEvents(Family<EventLabel, Counter>);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    pub event: &'static str,
}

impl WitnessEvents {
    /// Every event label.
    pub const ALL: [&'static str; 8] = [
        "ping_sent",
        "ping_answered",
        "ping_not_ours",
        "ping_rate_limited",
        "vouched",
        "pong_refused",
        "pong_unexpected",
        "malformed",
    ];

    pub fn count(&self, event: &'static str) {
        self.0.get_or_create(&EventLabel { event }).inc();
    }

    pub fn register(&self, registry: &mut Registry) {
        for event in Self::ALL {
            let _ = self.0.get_or_create(&EventLabel { event });
        }
        registry.register(
            "ferry_gossip_witness_events",
            "Liveness probes of members gossip doubts: pings sent and answered, pongs that vouched or were refused",
            self.0.clone(),
        );
    }
}

/// A token bucket for pongs (monotonic clock passed in).
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * PONGS_PER_SECOND;
        self.tokens = (self.tokens + refill).min(PONGS_PER_SECOND);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The witness wired to the sealed gossip socket: answers and sends probes.
pub struct WitnessLink {
    witness: Mutex<Witness>,
    prover: Prover,
    checker: Checker,
    keyring: KeyringSource,
    socket: OnceLock<Arc<tokio::net::UdpSocket>>,
    bucket: Mutex<Bucket>,
    events: WitnessEvents,
    me: (String, u64),
}

impl WitnessLink {
    /// A link for process `id` (incarnation `generation`) holding the certificate in `tls`.
    pub fn new(
        tls: &ClusterTls,
        cluster: &str,
        id: &str,
        generation: u64,
        keyring: KeyringSource,
        events: WitnessEvents,
    ) -> crate::Result<WitnessLink> {
        let cert = ReloadingCert::load(&tls.cert, &tls.key)?;
        let verifier = crate::tls::cluster_client_verifier(&tls.ca)?;
        Ok(WitnessLink {
            witness: Mutex::new(Witness::default()),
            prover: Prover::new(cert, cluster, id, generation),
            checker: Checker::new(verifier, cluster),
            keyring,
            socket: OnceLock::new(),
            bucket: Mutex::new(Bucket { tokens: PONGS_PER_SECOND, at: Instant::now() }),
            events,
            me: (id.to_owned(), generation),
        })
    }

    /// The socket probes go out on (the gossip socket, once bound).
    pub fn attach(&self, socket: Arc<tokio::net::UdpSocket>) {
        let _ = self.socket.set(socket);
    }

    fn send(&self, to: SocketAddr, probe: &Probe) {
        let Some(socket) = self.socket.get() else { return };
        let mut nonce = [0u8; ring::aead::NONCE_LEN];
        if crate::random::fill(&mut nonce).is_err() {
            return;
        }
        if let Ok(sealed) = self.keyring.get().seal(&probe.encode(), nonce) {
            // A full socket buffer loses this probe; the next round sends another.
            if let Err(e) = socket.try_send_to(&sealed, to) {
                tracing::debug!(%to, error = %e, "gossip probe not sent");
            }
        }
    }

    /// Handles an opened probe datagram from `from`.
    pub fn received(&self, from: SocketAddr, plain: &[u8]) {
        let Some(probe) = Probe::decode(plain) else {
            self.events.count("malformed");
            return;
        };
        match &probe {
            Probe::Ping { .. } => {
                let allowed = self.bucket.lock().unwrap_or_else(PoisonError::into_inner).take(Instant::now());
                if !allowed {
                    self.events.count("ping_rate_limited");
                    return;
                }
                match self.prover.answer(&probe) {
                    Some(pong) => {
                        self.events.count("ping_answered");
                        self.send(from, &pong);
                    }
                    None => self.events.count("ping_not_ours"),
                }
            }
            Probe::Pong { nonce, .. } => {
                let expected = self.lock().expected(nonce);
                let Some((id, generation)) = expected else {
                    self.events.count("pong_unexpected");
                    return;
                };
                match self.checker.check(&probe, nonce, &id, generation) {
                    Ok(()) => {
                        self.events.count("vouched");
                        self.lock().vouch(Instant::now(), nonce);
                    }
                    Err(refusal) => {
                        self.events.count("pong_refused");
                        tracing::warn!(peer = %id, %from, ?refusal, "gossip: a pong for a doubted member did not verify");
                    }
                }
            }
        }
    }

    /// Verdicts for chitchat's `view`; sends the pings they call for.
    pub fn decide(&self, view: &[Seen]) -> Vec<bool> {
        let fresh = || {
            let mut n = [0u8; NONCE_LEN];
            crate::random::fill(&mut n).ok().map(|()| n)
        };
        let (verdicts, pings) = self.lock().decide(Instant::now(), (&self.me.0, self.me.1), view, fresh);
        for ping in pings {
            self.events.count("ping_sent");
            self.send(ping.to, &ping.probe);
        }
        verdicts
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Witness> {
        self.witness.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests;
