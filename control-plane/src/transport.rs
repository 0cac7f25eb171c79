//! Raft messages between voters over QUIC: one persistent connection per peer,
//! each batch of messages on its own unidirectional stream
//! (`count:u32be` then `len:u32be protobuf` per message). Lost batches are fine —
//! raft retransmits — so senders never block the node: a full queue drops.
//!
//! The first stream of every connection a voter opens is its hello (see
//! [`crate::versions`]): a batch of zero messages followed by `ferry-hello/1`, the
//! length (u16be) and JSON. Earlier releases read it as an empty batch and ignore the
//! rest; a connection whose first batch is not a hello comes from such a release.
//!
//! A cluster restored from a backup has an identity (its cluster uuid), carried in the
//! TLS protocol name: its voters offer and accept `ferry-raft/1+UUID` first and plain
//! `ferry-raft/1` second, and refuse a connection that settled on anything but their
//! own (counted as `ferry_raft_peers_refused_total{reason="cluster"}`). A voter of the
//! old cluster, or of another restore, therefore never exchanges a message with it.
//! A cluster without an identity speaks plain `ferry-raft/1`, as earlier builds do.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ferry_net::identity::{Identity, Refusal};
use ferry_net::tls::{self, ClientTrust, ClusterTls, PeerRefusals, ServerIdentity, TransportTuning};
use raft::eraftpb::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::node::{NodeHandle, RaftNetwork};
use crate::raft_codec;
use crate::versions::{Announcement, Hello, HELLO_MAGIC, MAX_HELLO};

/// ALPN of the raft transport (distinct from the relay protocol).
pub const RAFT_ALPN: &[u8] = b"ferry-raft/1";
/// Largest single raft message accepted (snapshots included).
const MAX_MESSAGE: usize = 256 * 1024 * 1024;
/// Largest batch a sender writes at once.
const MAX_BATCH: usize = 256;
/// Messages queued per peer before new ones are dropped.
const PEER_QUEUE: usize = 4096;
/// A peer's QUIC handshake must finish within this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections accepted from peers at once.
const MAX_PEER_CONNECTIONS: usize = 64;

/// How the raft transport listens and whom it trusts.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub listen: SocketAddr,
    pub security: RaftSecurity,
}

/// Who may speak raft to this voter.
#[derive(Debug, Clone)]
pub enum RaftSecurity {
    /// Mutual TLS with the cluster CA: every peer presents a certificate naming a voter
    /// of `cluster` (`spiffe://CLUSTER/voter/ID`), each message's `from` must be that
    /// id, and a dialed peer must be the voter it was dialed as.
    Mutual { tls: ClusterTls, cluster: String },
    /// No verification at all (`--insecure-raft`, dev only): self-signed certificates,
    /// any peer.
    Insecure,
}

impl RaftSecurity {
    /// The cluster CA, when there is one.
    pub fn cluster_tls(&self) -> Option<&ClusterTls> {
        match self {
            RaftSecurity::Mutual { tls, .. } => Some(tls),
            RaftSecurity::Insecure => None,
        }
    }

    /// The cluster whose voters are accepted (`None`: anyone).
    pub fn cluster(&self) -> Option<&str> {
        match self {
            RaftSecurity::Mutual { cluster, .. } => Some(cluster),
            RaftSecurity::Insecure => None,
        }
    }
}

impl RaftNetwork for Transport {
    fn send(&self, msgs: Vec<Message>) {
        Transport::send(self, msgs);
    }
}

struct Peer {
    addr: String,
    tx: mpsc::Sender<Message>,
}

/// Sends raft messages to peers by id; addresses come from the node's members.
#[derive(Clone)]
pub struct Transport {
    endpoint: quinn::Endpoint,
    peers: Arc<Mutex<HashMap<u64, Peer>>>,
    node: NodeHandle,
    checks: Checks,
    tracker: TaskTracker,
    /// The runtime peers' send loops run on: `send` is called from the raft node's
    /// own thread, which must not carry QUIC work.
    runtime: tokio::runtime::Handle,
    cancel: CancellationToken,
}

/// What the transport checks of peers, and where it counts refusals.
#[derive(Clone)]
struct Checks {
    /// Peers must be voters of this cluster (`None`: `--insecure-raft`).
    cluster: Option<Arc<str>>,
    /// The protocol a connection must settle on: [`RAFT_ALPN`], followed by this
    /// cluster's uuid when it has one.
    protocol: Arc<[u8]>,
    refusals: PeerRefusals,
    /// Unix ms of the last warning about a peer of another cluster (the metric counts
    /// every refusal; the log says it once per [`REFUSAL_LOG_EVERY_MS`]).
    warned_ms: Arc<std::sync::atomic::AtomicU64>,
    /// This voter's hello stream (see [`crate::versions`]).
    hello: Arc<[u8]>,
}

/// Warnings about refused peers of another cluster, at most one per this long: such a
/// peer reconnects every second.
const REFUSAL_LOG_EVERY_MS: u64 = 10_000;

/// The raft protocol name of a cluster with identity `cluster_uuid` (see the module
/// documentation).
pub fn raft_protocol(cluster_uuid: Option<&str>) -> Vec<u8> {
    match cluster_uuid {
        Some(uuid) => [RAFT_ALPN, b"+", uuid.as_bytes()].concat(),
        None => RAFT_ALPN.to_vec(),
    }
}

impl Checks {
    /// Whether a warning about a refused peer is due now.
    fn warn_now(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = ferry_net::time::unix_ms();
        let last = self.warned_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= REFUSAL_LOG_EVERY_MS
            && self.warned_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    /// Whether `conn` settled on this cluster's protocol; a refusal is counted.
    fn same_cluster(&self, conn: &quinn::Connection) -> bool {
        let negotiated = conn
            .handshake_data()
            .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|data| data.protocol);
        if negotiated.as_deref() == Some(&self.protocol[..]) {
            return true;
        }
        self.refusals.count(Refusal::ClusterIdentity);
        conn.close(REFUSED, Refusal::ClusterIdentity.label().as_bytes());
        false
    }

    /// The raft id of a connected peer, or why it is refused.
    fn voter(&self, conn: &quinn::Connection) -> Result<Option<u64>, Refusal> {
        match &self.cluster {
            None => Ok(None),
            Some(cluster) => Identity::of_peer(conn)?.check_voter(cluster).map(Some),
        }
    }
}

impl Transport {
    /// Binds the raft port and starts accepting peers.
    pub async fn start(
        config: TransportConfig,
        node: NodeHandle,
        refusals: PeerRefusals,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> crate::Result<Transport> {
        let tuning = TransportTuning {
            send_window: 64 * 1024 * 1024,
            stream_receive_window: 64 * 1024 * 1024,
            receive_window: 128 * 1024 * 1024,
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(1),
            ..TransportTuning::default()
        };
        let (identity, trust, client_auth) = match &config.security {
            // Mutual TLS: peers must present a voter certificate of this cluster.
            RaftSecurity::Mutual { tls: cluster_tls, cluster } => (
                ServerIdentity::Files { cert: cluster_tls.cert.clone(), key: cluster_tls.key.clone() },
                ClientTrust::Cluster(cluster_tls.clone()),
                tls::ClientAuth::Voters {
                    ca: cluster_tls.ca.clone(),
                    cluster: cluster.clone(),
                    refusals: refusals.clone(),
                },
            ),
            RaftSecurity::Insecure => (
                ServerIdentity::SelfSigned { names: tls::default_names() },
                ClientTrust::Insecure,
                tls::ClientAuth::None,
            ),
        };
        // Our own protocol first; plain `ferry-raft/1` too, so that a peer without our
        // identity completes the handshake and is refused by name, not by a TLS alert.
        let protocol = raft_protocol(node.cluster_uuid());
        let alpns: Vec<&[u8]> =
            if protocol == RAFT_ALPN { vec![RAFT_ALPN] } else { vec![protocol.as_slice(), RAFT_ALPN] };
        let server = tls::server_config_alpns(&identity, &tuning, &alpns, &client_auth)?;
        let mut endpoint = quinn::Endpoint::server(server, config.listen)
            .map_err(crate::Error::bind("raft (--raft-listen)", config.listen))?;
        endpoint.set_default_client_config(tls::client_config_alpns(&trust, &tuning, &alpns)?);
        let checks = Checks {
            cluster: config.security.cluster().map(Arc::from),
            protocol: Arc::from(protocol),
            refusals,
            warned_ms: Arc::default(),
            hello: Arc::from(hello_stream(&Hello::of_this_build(node.status().id))),
        };
        tracker.spawn(accept(
            endpoint.clone(),
            node.clone(),
            checks.clone(),
            tracker.clone(),
            cancel.clone(),
        ));
        Ok(Transport {
            endpoint,
            peers: Arc::new(Mutex::new(HashMap::new())),
            node,
            checks,
            tracker: tracker.clone(),
            runtime: tokio::runtime::Handle::current(),
            cancel,
        })
    }

    /// The bound raft address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    /// Queues messages for their peers; never waits.
    pub fn send(&self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        for msg in msgs {
            let Some(addr) = self.node.member_addr(msg.to) else {
                tracing::debug!(to = msg.to, "no address for raft peer; message dropped");
                continue;
            };
            let peer = peers.entry(msg.to).or_insert_with(|| self.spawn_peer(msg.to, addr.clone()));
            if peer.addr != addr {
                // The member moved (re-added with a new address): start over.
                *peer = self.spawn_peer(msg.to, addr);
            }
            let _ = peer.tx.try_send(msg);
        }
    }

    fn spawn_peer(&self, id: u64, addr: String) -> Peer {
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        self.tracker.spawn_on(
            send_loop(
                self.endpoint.clone(),
                id,
                addr.clone(),
                rx,
                self.checks.clone(),
                self.cancel.child_token(),
            ),
            &self.runtime,
        );
        Peer { addr, tx }
    }
}

async fn send_loop(
    endpoint: quinn::Endpoint,
    id: u64,
    addr: String,
    mut rx: mpsc::Receiver<Message>,
    checks: Checks,
    cancel: CancellationToken,
) {
    let mut conn: Option<quinn::Connection> = None;
    let mut backoff = Duration::from_millis(50);
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => return,
            msg = rx.recv() => match msg { Some(m) => m, None => return },
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let live = match conn.take().filter(|c| c.close_reason().is_none()) {
            Some(c) => Some(c),
            None => match connect(&endpoint, &addr, id, &checks).await {
                Ok(c) => {
                    backoff = Duration::from_millis(50);
                    Some(c)
                }
                Err(e) => {
                    tracing::debug!(peer = id, %addr, error = %ferry_net::Chain(&e), "raft peer unreachable");
                    // Back off; what queues meanwhile is dropped by `send` when full.
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    None
                }
            },
        };
        let Some(c) = live else { continue };
        match write_batch(&c, &batch).await {
            Ok(()) => conn = Some(c),
            Err(e) => tracing::debug!(peer = id, error = %ferry_net::Chain(&e), "raft send failed"),
        }
    }
}

/// Connects to voter `id` at `addr`; with mutual TLS the peer's certificate must name
/// that voter (an address taken over by another voter or an edge is refused).
async fn connect(
    endpoint: &quinn::Endpoint,
    addr: &str,
    id: u64,
    checks: &Checks,
) -> ferry_net::Result<quinn::Connection> {
    let (host, remote) = ferry_net::dial::resolve(addr).await?;
    let connecting = endpoint.connect(remote, &host)?;
    let conn = tokio::time::timeout(Duration::from_secs(2), connecting)
        .await
        .map_err(|_| ferry_net::Error::Timeout("a raft peer"))??;
    if !checks.same_cluster(&conn) {
        if checks.warn_now() {
            tracing::warn!(peer = id, %addr, "the raft peer belongs to another cluster (another cluster uuid); refused");
        }
        return Err(ferry_net::Error::Protocol(format!("{addr} is a voter of another cluster")));
    }
    match checks.voter(&conn) {
        Ok(peer) if peer.is_none_or(|peer| peer == id) => {
            // The hello is queued in the connection's buffers, ahead of every batch; a
            // failure to queue it fails the connection, which is dialed again.
            let mut stream = conn.open_uni().await?;
            stream.write_all(&checks.hello).await?;
            stream.finish()?;
            Ok(conn)
        }
        result => {
            let refusal = result.err().unwrap_or(Refusal::WrongNode);
            checks.refusals.count(refusal);
            conn.close(REFUSED, refusal.label().as_bytes());
            Err(ferry_net::Error::Protocol(format!("{addr} is not voter {id}: {refusal}")))
        }
    }
}

/// Whether a handshake failed because the client presented no certificate (the TLS
/// `certificate_required` alert, 116).
fn is_certificate_required(error: &quinn::ConnectionError) -> bool {
    matches!(error, quinn::ConnectionError::TransportError(e) if e.code == quinn::TransportErrorCode::crypto(116))
}

/// QUIC close code of a refused raft peer (the reason travels as the close reason).
const REFUSED: quinn::VarInt = quinn::VarInt::from_u32(2);

/// The stream that carries `hello`: a batch header of zero messages, then the hello.
pub fn hello_stream(hello: &Hello) -> Vec<u8> {
    let mut bytes = 0u32.to_be_bytes().to_vec();
    bytes.extend_from_slice(&hello.encode());
    bytes
}

/// What one stream from a peer carried.
#[derive(Debug)]
pub enum Received {
    Batch(Vec<Message>),
    Hello(Hello),
}

/// Decodes a whole stream held in memory, as [`decode_batch`] does, except that a batch
/// of zero messages may be followed by a hello. For tests and fuzzing.
pub fn decode_stream(bytes: &[u8]) -> ferry_net::Result<Received> {
    match bytes.split_first_chunk::<4>() {
        Some((head, rest)) if u32::from_be_bytes(*head) == 0 && !rest.is_empty() => {
            let hello = rest
                .strip_prefix(HELLO_MAGIC)
                .and_then(|r| r.split_first_chunk::<2>())
                .filter(|(len, body)| usize::from(u16::from_be_bytes(**len)) == body.len())
                .ok_or_else(|| ferry_net::Error::Protocol("malformed hello".to_owned()))?;
            Hello::decode_body(hello.1).map(Received::Hello).map_err(ferry_net::Error::Protocol)
        }
        _ => decode_batch(bytes).map(Received::Batch),
    }
}

/// Encodes one batch of raft messages as it travels on a stream (the wire format above).
pub fn encode_batch(batch: &[Message]) -> Vec<u8> {
    let mut buf = Vec::new();
    buf.extend_from_slice(&u32::try_from(batch.len()).unwrap_or(u32::MAX).to_be_bytes());
    for msg in batch {
        let bytes = raft_codec::encode(msg);
        buf.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
        buf.extend_from_slice(&bytes);
    }
    buf
}

/// Decodes one whole batch held in memory, with the checks [`read_batch`] makes while it
/// reads a stream; trailing bytes are refused. For tests and fuzzing: the transport
/// itself reads batches from their stream.
pub fn decode_batch(bytes: &[u8]) -> ferry_net::Result<Vec<Message>> {
    let truncated = || ferry_net::Error::Protocol("truncated raft batch".to_owned());
    let (head, mut rest) = bytes.split_first_chunk::<4>().ok_or_else(truncated)?;
    let count = u32::from_be_bytes(*head) as usize;
    if count > MAX_BATCH {
        return Err(ferry_net::Error::Protocol(format!("batch of {count} messages")));
    }
    let mut msgs = Vec::with_capacity(count);
    for _ in 0..count {
        let (head, after) = rest.split_first_chunk::<4>().ok_or_else(truncated)?;
        let len = u32::from_be_bytes(*head) as usize;
        if len > MAX_MESSAGE {
            return Err(ferry_net::Error::Protocol(format!("raft message of {len} bytes")));
        }
        let (body, after) = after.split_at_checked(len).ok_or_else(truncated)?;
        msgs.push(decode_message(body)?);
        rest = after;
    }
    if !rest.is_empty() {
        return Err(ferry_net::Error::Protocol(format!("{} bytes after a raft batch", rest.len())));
    }
    Ok(msgs)
}

fn decode_message(body: &[u8]) -> ferry_net::Result<Message> {
    raft_codec::decode(body).map_err(|e| ferry_net::Error::Protocol(ferry_net::Chain(&e).to_string()))
}

/// Writes one batch of raft messages on a new stream of `conn` (the wire format above).
pub async fn write_batch(conn: &quinn::Connection, batch: &[Message]) -> ferry_net::Result<()> {
    let buf = encode_batch(batch);
    let mut stream = conn.open_uni().await?;
    stream.write_all(&buf).await?;
    stream.finish()?;
    Ok(())
}

async fn accept(
    endpoint: quinn::Endpoint,
    node: NodeHandle,
    checks: Checks,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_PEER_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            p = Arc::clone(&limit).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let incoming = tokio::select! {
            _ = cancel.cancelled() => break,
            i = endpoint.accept() => match i { Some(i) => i, None => break },
        };
        let (node, checks, cancel) = (node.clone(), checks.clone(), cancel.clone());
        tracker.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = serve_peer(incoming, node, checks) => {}
            }
            drop(permit);
        });
    }
    endpoint.close(0u32.into(), b"shutdown");
}

async fn serve_peer(incoming: quinn::Incoming, node: NodeHandle, checks: Checks) {
    let peer_addr = incoming.remote_address();
    // A handshake holds one of the port's permits: it must finish soon.
    let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
        Ok(Ok(conn)) => conn,
        Err(_) => {
            tracing::debug!(peer = %peer_addr, "raft handshake timed out");
            return;
        }
        Ok(Err(e)) => {
            // The verifier counted certificates it refused; a client that sent none
            // never reached it.
            if is_certificate_required(&e) {
                checks.refusals.count(Refusal::NoCertificate);
            }
            tracing::debug!(peer = %peer_addr, error = %ferry_net::Chain(&e), "raft handshake failed");
            return;
        }
    };
    if !checks.same_cluster(&conn) {
        if checks.warn_now() {
            tracing::warn!(peer = %peer_addr, "a raft peer of another cluster (another cluster uuid) refused");
        }
        return;
    }
    // The verifier accepted only voters of this cluster; read which one.
    let voter = match checks.voter(&conn) {
        Ok(voter) => voter,
        Err(refusal) => {
            checks.refusals.count(refusal);
            conn.close(REFUSED, refusal.label().as_bytes());
            return;
        }
    };
    // Whether this connection opened with a hello; a peer that sends messages without
    // one runs an earlier release and counts as command set 1.
    let mut hello = false;
    while let Ok(mut stream) = conn.accept_uni().await {
        match read_stream(&mut stream).await {
            Ok(Received::Hello(h)) => {
                if voter.is_some_and(|id| id != h.id) {
                    checks.refusals.count(Refusal::FromMismatch);
                    tracing::warn!(peer = %peer_addr, hello = h.id, "a raft hello naming another voter than its certificate; closing");
                    conn.close(REFUSED, Refusal::FromMismatch.label().as_bytes());
                    return;
                }
                tracing::debug!(peer = h.id, command_set = h.command_set, version = %h.version, "raft peer hello");
                node.announce(h.id, Announcement { command_set: h.command_set, version: h.version });
                hello = true;
            }
            Ok(Received::Batch(msgs)) => {
                if !hello {
                    if let Some(from) = voter.or_else(|| msgs.first().map(|m| m.from)) {
                        node.forget_announcement(from);
                    }
                    hello = true;
                }
                for msg in msgs {
                    match voter {
                        Some(id) if msg.from != id => {
                            checks.refusals.count(Refusal::FromMismatch);
                            tracing::warn!(
                                peer = %peer_addr,
                                certificate = id,
                                from = msg.from,
                                "raft message from another voter than its certificate names; dropped"
                            );
                        }
                        _ => node.deliver(msg),
                    }
                }
            }
            Err(e) => {
                tracing::warn!(peer = %conn.remote_address(), error = %ferry_net::Chain(&e), "bad raft batch; closing");
                conn.close(1u32.into(), b"bad raft batch");
                return;
            }
        }
    }
}

async fn read_stream(stream: &mut quinn::RecvStream) -> ferry_net::Result<Received> {
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await?;
    let count = u32::from_be_bytes(head) as usize;
    if count == 0 {
        let mut magic = [0u8; HELLO_MAGIC.len()];
        let mut len = [0u8; 2];
        stream.read_exact(&mut magic).await?;
        stream.read_exact(&mut len).await?;
        let len = usize::from(u16::from_be_bytes(len));
        if magic != HELLO_MAGIC || len > MAX_HELLO {
            return Err(ferry_net::Error::Protocol("malformed hello".to_owned()));
        }
        let body = ferry_net::wire::read_exactly(stream, len).await?;
        return Hello::decode_body(&body).map(Received::Hello).map_err(ferry_net::Error::Protocol);
    }
    if count > MAX_BATCH {
        return Err(ferry_net::Error::Protocol(format!("batch of {count} messages")));
    }
    let mut msgs = Vec::with_capacity(count);
    for _ in 0..count {
        stream.read_exact(&mut head).await?;
        let len = u32::from_be_bytes(head) as usize;
        if len > MAX_MESSAGE {
            return Err(ferry_net::Error::Protocol(format!("raft message of {len} bytes")));
        }
        // Memory follows the bytes that arrive, never the length a peer claims.
        let body = ferry_net::wire::read_exactly(stream, len).await?;
        msgs.push(decode_message(&body)?);
    }
    Ok(Received::Batch(msgs))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ferry_net::tls::{ClientTrust, TransportTuning};
    use raft::eraftpb::MessageType;

    use super::*;
    use crate::node::{self, NodeConfig};

    /// Dials `addr` as a raw peer speaking `ferry-raft/1` and sends `streams`, one each.
    async fn dial_and_send(addr: SocketAddr, streams: &[Vec<u8>]) -> quinn::Connection {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let config =
            tls::client_config_alpns(&ClientTrust::Insecure, &TransportTuning::default(), &[RAFT_ALPN])
                .unwrap();
        endpoint.set_default_client_config(config);
        let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
        for bytes in streams {
            let mut stream = conn.open_uni().await.unwrap();
            stream.write_all(bytes).await.unwrap();
            stream.finish().unwrap();
        }
        conn
    }

    async fn announced_set(node: &NodeHandle, id: u64, want: Option<u16>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let now = node.announcements().get(&id).map(|a| a.command_set);
            if now == want {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "voter {id} announced {now:?}, want {want:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A peer that opens its connection with a hello is recorded with its command set; a
    /// connection from the same voter that starts with raft messages (an earlier
    /// release) makes it count as command set 1 again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hellos_record_a_peers_command_set_and_a_connection_without_one_forgets_it() {
        let dir = tempfile::tempdir().unwrap();
        let peers = BTreeMap::from([(1, "127.0.0.1:1".to_owned()), (2, "127.0.0.1:2".to_owned())]);
        let (_runner, node) = node::open(NodeConfig::new(1, peers, dir.path().to_path_buf())).unwrap();
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        let config =
            TransportConfig { listen: "127.0.0.1:0".parse().unwrap(), security: RaftSecurity::Insecure };
        let transport =
            Transport::start(config, node.clone(), PeerRefusals::default(), &tracker, cancel.clone())
                .await
                .unwrap();
        let addr = transport.local_addr().unwrap();

        let hello = Hello { id: 2, command_set: 7, version: "9.9.9".into() };
        let _new = dial_and_send(addr, &[hello_stream(&hello)]).await;
        announced_set(&node, 2, Some(7)).await;
        assert_eq!(node.announcements()[&2].version, "9.9.9");

        let mut heartbeat = Message::default();
        heartbeat.set_msg_type(MessageType::MsgHeartbeat);
        (heartbeat.from, heartbeat.to, heartbeat.term) = (2, 1, 1);
        let _old = dial_and_send(addr, &[encode_batch(&[heartbeat])]).await;
        announced_set(&node, 2, None).await;

        // A malformed hello closes the connection and records nothing.
        let mut bad = hello_stream(&hello);
        bad[6] ^= 0xff;
        let conn = dial_and_send(addr, &[bad]).await;
        let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
        assert!(closed.is_ok(), "the connection stays open after a malformed hello");
        assert!(node.announcements().is_empty());
        cancel.cancel();
    }
}
