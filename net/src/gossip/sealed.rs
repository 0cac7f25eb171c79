//! A chitchat [`Transport`] whose datagrams are sealed with the cluster keyring
//! ([`crate::seal`]).
//!
//! chitchat keeps its wire codec private, so each socket uses a chitchat UDP socket on
//! loopback as its codec: an outgoing envelope is serialized by sending it to a local
//! sink, then sealed and sent to the peer; an incoming datagram is opened, and the
//! plaintext is handed to the codec socket from a local feeder, which decodes it. The
//! codec accepts only what the feeder sends and the sink only what the codec sends, so
//! nothing reaches chitchat without having been opened.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket};
use chitchat::ChitchatEnvelope;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::seal::{Drop, Keyring};
use crate::tls::ReasonLabel;

use super::witness::{Probe, WitnessLink};

/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_507;
/// Opened datagrams waiting for chitchat to read them; past this many the oldest sender
/// is forgotten.
const QUEUE: usize = 256;
/// How often the keyring directory is read again.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// Datagrams dropped, by [`Drop`] reason; clones share the counts.
#[derive(Debug, Clone, Default)]
pub struct GossipDrops(Family<ReasonLabel, Counter>);

impl GossipDrops {
    pub fn count(&self, drop: Drop) {
        self.0.get_or_create(&ReasonLabel { reason: drop.label() }).inc();
    }

    /// How many datagrams were dropped for `drop`.
    pub fn get(&self, drop: Drop) -> u64 {
        self.0.get_or_create(&ReasonLabel { reason: drop.label() }).get()
    }

    pub fn register(&self, registry: &mut Registry) {
        for drop in Drop::ALL {
            let _ = self.0.get_or_create(&ReasonLabel { reason: drop.label() });
        }
        registry.register(
            "ferry_gossip_datagrams_dropped",
            "Gossip datagrams dropped: unsealed (plaintext), sealed under an unknown key, tampered or of another cluster, too big",
            self.0.clone(),
        );
    }
}

/// The keyring in use, read again from its directory every [`RELOAD_EVERY`].
#[derive(Clone, Debug)]
pub struct KeyringSource {
    dir: PathBuf,
    cluster: String,
    current: Arc<RwLock<Arc<Keyring>>>,
}

impl KeyringSource {
    /// Reads the keyring in `dir` (an error if it is unusable now).
    pub fn load(dir: PathBuf, cluster: &str) -> crate::Result<KeyringSource> {
        let ring = Keyring::load(&dir, cluster)?;
        tracing::info!(dir = %dir.display(), keys = ?ring.names(), primary = %ring.primary_name(), "gossip keyring");
        Ok(KeyringSource { dir, cluster: cluster.to_owned(), current: Arc::new(RwLock::new(Arc::new(ring))) })
    }

    pub fn get(&self) -> Arc<Keyring> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Re-reads the directory until `cancel`; a keyring that does not load is logged and
    /// the last good one stays in use.
    pub async fn reload(self, cancel: CancellationToken) {
        let mut last = (self.get().names(), self.get().primary_name());
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(RELOAD_EVERY) => {}
            }
            match Keyring::load(&self.dir, &self.cluster) {
                Ok(ring) => {
                    let now = (ring.names(), ring.primary_name());
                    if now != last {
                        tracing::info!(keys = ?now.0, primary = %now.1, "gossip keyring changed");
                        last = now;
                    }
                    *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(ring);
                }
                Err(e) => {
                    tracing::warn!(error = %crate::Chain(&e), "gossip keyring unreadable; keeping the last one")
                }
            }
        }
    }
}

/// Opens sealed sockets.
pub struct SealedTransport {
    pub keyring: KeyringSource,
    pub drops: GossipDrops,
    pub tracker: TaskTracker,
    pub cancel: CancellationToken,
    /// Answers and checks liveness probes on the same socket (with cluster certificates).
    pub witness: Option<Arc<WitnessLink>>,
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, listen: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let outer = Arc::new(
            tokio::net::UdpSocket::bind(listen)
                .await
                .with_context(|| format!("failed to bind to {listen}/UDP for gossip"))?,
        );
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let codec = UdpSocket::open(loopback).await?;
        let codec_addr = codec.local_addr()?;
        let feeder = tokio::net::UdpSocket::bind(loopback).await?;
        let sink = tokio::net::UdpSocket::bind(loopback).await?;
        // The codec reads only from the feeder; the sink only from the codec.
        feeder.connect(codec_addr).await?;
        sink.connect(codec_addr).await?;
        let sink_addr = sink.local_addr()?;
        let feeder_addr = feeder.local_addr()?;
        let senders = Arc::new(Mutex::new(VecDeque::new()));
        let stop = self.cancel.child_token();
        if let Some(witness) = &self.witness {
            witness.attach(Arc::clone(&outer));
        }
        self.tracker.spawn(open_incoming(
            Arc::clone(&outer),
            feeder,
            Incoming {
                keyring: self.keyring.clone(),
                drops: self.drops.clone(),
                witness: self.witness.clone(),
            },
            Arc::clone(&senders),
            stop.clone(),
        ));
        Ok(Box::new(SealedSocket {
            outer,
            codec,
            sink,
            sink_addr,
            feeder_addr,
            senders,
            keyring: self.keyring.clone(),
            drops: self.drops.clone(),
            buf: vec![0u8; MAX_DATAGRAM],
            stop,
        }))
    }
}

/// What incoming datagrams go through.
struct Incoming {
    keyring: KeyringSource,
    drops: GossipDrops,
    witness: Option<Arc<WitnessLink>>,
}

/// Receives sealed datagrams and opens them: liveness probes go to the witness, the
/// rest is fed to the codec as plaintext, noting each sender and length in order.
async fn open_incoming(
    outer: Arc<tokio::net::UdpSocket>,
    feeder: tokio::net::UdpSocket,
    incoming: Incoming,
    senders: Arc<Mutex<VecDeque<(SocketAddr, usize)>>>,
    stop: CancellationToken,
) {
    let Incoming { keyring, drops, witness } = incoming;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let received = tokio::select! {
            _ = stop.cancelled() => return,
            r = outer.recv_from(&mut buf) => r,
        };
        let (len, from) = match received {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "gossip receive error");
                continue;
            }
        };
        let plain = match keyring.get().open(buf.get(..len).unwrap_or_default()) {
            Ok(plain) => plain,
            Err(drop) => {
                drops.count(drop);
                tracing::debug!(%from, reason = %drop, "gossip datagram dropped");
                continue;
            }
        };
        if Probe::is_probe(&plain) {
            if let Some(witness) = &witness {
                witness.received(from, &plain);
            }
            continue;
        }
        {
            let mut queue = senders.lock().unwrap_or_else(PoisonError::into_inner);
            if queue.len() >= QUEUE {
                queue.pop_front();
            }
            queue.push_back((from, plain.len()));
        }
        if let Err(e) = feeder.send(&plain).await {
            tracing::debug!(error = %e, "gossip codec feed failed");
        }
    }
}

struct SealedSocket {
    outer: Arc<tokio::net::UdpSocket>,
    codec: UdpSocket,
    sink: tokio::net::UdpSocket,
    sink_addr: SocketAddr,
    feeder_addr: SocketAddr,
    /// Senders and lengths of the datagrams fed to the codec, oldest first.
    senders: Arc<Mutex<VecDeque<(SocketAddr, usize)>>>,
    keyring: KeyringSource,
    drops: GossipDrops,
    buf: Vec<u8>,
    stop: CancellationToken,
}

impl std::ops::Drop for SealedSocket {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.outer.local_addr().context("failed to get the gossip socket address")
    }

    async fn send(&mut self, to: SocketAddr, envelope: ChitchatEnvelope) -> anyhow::Result<SendOutcome> {
        let outcome = self.codec.send(self.sink_addr, envelope).await?;
        let len = tokio::time::timeout(Duration::from_secs(1), self.sink.recv(&mut self.buf))
            .await
            .context("the gossip codec did not answer")??;
        let mut nonce = [0u8; ring::aead::NONCE_LEN];
        crate::random::fill(&mut nonce).context("no randomness for a nonce")?;
        let sealed = match self.keyring.get().seal(self.buf.get(..len).unwrap_or_default(), nonce) {
            Ok(sealed) if sealed.len() <= MAX_DATAGRAM => sealed,
            _ => {
                self.drops.count(Drop::TooBig);
                return Ok(outcome);
            }
        };
        if let Err(e) = self.outer.send_to(&sealed, to).await {
            // Like chitchat's own socket: a peer that is gone is not a broken transport.
            tracing::debug!(%to, error = %e, "gossip send failed");
        }
        Ok(outcome)
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            // Cancel-safe: the codec's read is, and what follows does not await.
            let decoded = self.codec.recv().await?;
            if decoded.from_addr != self.feeder_addr {
                continue;
            }
            // chitchat skips a datagram it cannot decode without a word (and the kernel
            // may drop one): senders before the first of this length are of those.
            let mut senders = self.senders.lock().unwrap_or_else(PoisonError::into_inner);
            while let Some((from, len)) = senders.pop_front() {
                if len == decoded.num_bytes_received {
                    return Ok(RecvOutcome { from_addr: from, ..decoded });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

    use super::*;

    /// Found by fuzz/fuzz_targets/gossip_datagram.rs: an opened datagram that chitchat
    /// cannot decode kept its sender in line, so every later envelope was reported from
    /// the sender before it, and after 256 of them the socket dropped all gossip.
    #[tokio::test]
    async fn an_undecodable_datagram_takes_its_sender_out_of_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k1.key"), crate::seal::new_key_hex().unwrap()).unwrap();
        let keyring = KeyringSource::load(dir.path().to_owned(), "test").unwrap();
        let transport = SealedTransport {
            keyring: keyring.clone(),
            drops: GossipDrops::default(),
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
            witness: None,
        };
        let mut socket = transport.open(([127, 0, 0, 1], 0).into()).await.unwrap();
        let to = socket.local_addr().unwrap();
        let seal = |plain: &[u8]| keyring.get().seal(plain, [0; ring::aead::NONCE_LEN]).unwrap();
        let garbage = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for _ in 0..QUEUE + 10 {
            garbage.send_to(&seal(b"not chitchat"), to).await.unwrap();
        }
        // chitchat's BadCluster envelope: magic number, version 0, type 3.
        let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        peer.send_to(&seal(b"\x53\xb0\x00\x03"), to).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), socket.recv()).await.unwrap().unwrap();
        assert_eq!(got.from_addr, peer.local_addr().unwrap());
    }
}
