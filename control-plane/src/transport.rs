//! Raft messages between voters over QUIC: one persistent connection per peer,
//! each batch of messages on its own unidirectional stream
//! (`count:u32be` then `len:u32be protobuf` per message). Lost batches are fine —
//! raft retransmits — so senders never block the node: a full queue drops.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ferry_net::tls::{self, ClientTrust, ServerIdentity, TransportTuning};
use protobuf::Message as _;
use raft::eraftpb::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::node::{NodeHandle, RaftNetwork};

/// ALPN of the raft transport (distinct from the relay protocol).
pub const RAFT_ALPN: &[u8] = b"ferry-raft/1";
/// Largest single raft message accepted (snapshots included).
const MAX_MESSAGE: usize = 256 * 1024 * 1024;
/// Largest batch a sender writes at once.
const MAX_BATCH: usize = 256;
/// Messages queued per peer before new ones are dropped.
const PEER_QUEUE: usize = 4096;
/// Connections accepted from peers at once.
const MAX_PEER_CONNECTIONS: usize = 64;

/// How the raft transport listens and whom it trusts.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub listen: SocketAddr,
    pub identity: ServerIdentity,
    pub trust: ClientTrust,
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
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Transport {
    /// Binds the raft port and starts accepting peers.
    pub async fn start(
        config: TransportConfig,
        node: NodeHandle,
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
        // With a cluster CA and this voter's certificate (mTLS), every peer must present
        // a certificate from the same CA.
        let client_auth = match &config.trust {
            tls::ClientTrust::Cluster(c) => tls::ClientAuth::Required(c.ca.clone()),
            _ => tls::ClientAuth::None,
        };
        let server = tls::server_config_with(&config.identity, &tuning, RAFT_ALPN, &client_auth)?;
        let mut endpoint = quinn::Endpoint::server(server, config.listen)
            .map_err(crate::Error::bind("raft (--raft-listen)", config.listen))?;
        endpoint.set_default_client_config(tls::client_config_for(&config.trust, &tuning, RAFT_ALPN)?);
        tracker.spawn(accept(endpoint.clone(), node.clone(), tracker.clone(), cancel.clone()));
        Ok(Transport {
            endpoint,
            peers: Arc::new(Mutex::new(HashMap::new())),
            node,
            tracker: tracker.clone(),
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
        self.tracker.spawn(send_loop(self.endpoint.clone(), id, addr.clone(), rx, self.cancel.child_token()));
        Peer { addr, tx }
    }
}

async fn send_loop(
    endpoint: quinn::Endpoint,
    id: u64,
    addr: String,
    mut rx: mpsc::Receiver<Message>,
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
            None => match connect(&endpoint, &addr).await {
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

async fn connect(endpoint: &quinn::Endpoint, addr: &str) -> ferry_net::Result<quinn::Connection> {
    let (host, remote) = ferry_net::dial::resolve(addr).await?;
    let connecting = endpoint.connect(remote, &host)?;
    tokio::time::timeout(Duration::from_secs(2), connecting)
        .await
        .map_err(|_| ferry_net::Error::Timeout("a raft peer"))?
        .map_err(Into::into)
}

async fn write_batch(conn: &quinn::Connection, batch: &[Message]) -> ferry_net::Result<()> {
    let mut buf = Vec::new();
    buf.extend_from_slice(&u32::try_from(batch.len()).unwrap_or(u32::MAX).to_be_bytes());
    for msg in batch {
        let bytes = msg.write_to_bytes().map_err(|e| ferry_net::Error::Protocol(e.to_string()))?;
        buf.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
        buf.extend_from_slice(&bytes);
    }
    let mut stream = conn.open_uni().await?;
    stream.write_all(&buf).await?;
    stream.finish()?;
    Ok(())
}

async fn accept(
    endpoint: quinn::Endpoint,
    node: NodeHandle,
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
        let (node, cancel) = (node.clone(), cancel.clone());
        tracker.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = serve_peer(incoming, node) => {}
            }
            drop(permit);
        });
    }
    endpoint.close(0u32.into(), b"shutdown");
}

async fn serve_peer(incoming: quinn::Incoming, node: NodeHandle) {
    let Ok(conn) = incoming.await else { return };
    while let Ok(mut stream) = conn.accept_uni().await {
        match read_batch(&mut stream).await {
            Ok(msgs) => msgs.into_iter().for_each(|m| node.deliver(m)),
            Err(e) => {
                tracing::warn!(peer = %conn.remote_address(), error = %ferry_net::Chain(&e), "bad raft batch; closing");
                conn.close(1u32.into(), b"bad raft batch");
                return;
            }
        }
    }
}

async fn read_batch(stream: &mut quinn::RecvStream) -> ferry_net::Result<Vec<Message>> {
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await?;
    let count = u32::from_be_bytes(head) as usize;
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
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await?;
        msgs.push(Message::parse_from_bytes(&body).map_err(|e| ferry_net::Error::Protocol(e.to_string()))?);
    }
    Ok(msgs)
}
