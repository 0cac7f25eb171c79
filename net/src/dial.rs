//! Opening a relay-protocol connection: resolve, QUIC handshake, hello.

use std::net::SocketAddr;
use std::time::Duration;

use ferry_proto::{
    ErrorCode, Hello, Message, NodeId, Role, MAX_CONTROL_MESSAGE, MAX_PROTOCOL_VERSION, MIN_PROTOCOL_VERSION,
};
use quinn::{Connection, RecvStream, SendStream};

use crate::tls::{self, ClientTrust, TransportTuning};
use crate::wire::{read_message, write_message};
use crate::{Error, Result};

/// How long connecting (handshake and hello) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An established relay-protocol connection with its control stream.
pub struct Link {
    pub endpoint: quinn::Endpoint,
    pub conn: Connection,
    pub send: SendStream,
    pub recv: RecvStream,
    /// The negotiated protocol version.
    pub version: u16,
    /// The edge's node id.
    pub peer: NodeId,
    /// Where the edge's rollouts placed this session (`bbr=treatment, …`; empty
    /// without rollouts) and the treatment's client flag; publishers and viewers on
    /// protocol version 2.
    pub variant: Option<String>,
    pub client_flag: Option<String>,
}

/// Who a publisher or viewer session is: its credential (`Hello.token`) and, for
/// rollouts, its id and tags (`Message::Session`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SessionHello {
    /// Stable id; `None`: a random one per connection. An edge places a session with
    /// a token by the token's subject instead.
    pub id: Option<String>,
    /// Client tags (like a user agent); empty: `ferry/<version>`.
    pub tags: Vec<String>,
    /// The access token (`ferry token`); `None` on edges that allow anonymous
    /// clients (dev).
    pub token: Option<String>,
}

impl std::fmt::Debug for SessionHello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionHello")
            .field("id", &self.id)
            .field("tags", &self.tags)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// Splits `HOST:PORT` (IPv6 in brackets) and resolves it.
pub async fn resolve(addr: &str) -> Result<(String, SocketAddr)> {
    let (host, _) =
        addr.rsplit_once(':').ok_or_else(|| Error::Config(format!("address {addr:?} must be HOST:PORT")))?;
    let resolved = tokio::net::lookup_host(addr)
        .await
        .map_err(Error::io(format!("cannot resolve {addr}")))?
        .next()
        .ok_or_else(|| Error::Config(format!("{addr} does not resolve")))?;
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_owned(), resolved))
}

/// A client endpoint on an ephemeral port of the right address family.
pub fn client_endpoint(
    remote: SocketAddr,
    trust: &ClientTrust,
    tuning: &TransportTuning,
) -> Result<quinn::Endpoint> {
    let bind: SocketAddr = if remote.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
        .parse()
        .map_err(|e| Error::Config(format!("{e}")))?;
    let mut endpoint = quinn::Endpoint::client(bind)
        .map_err(Error::io(format!("cannot bind a QUIC client socket on {bind}")))?;
    endpoint.set_default_client_config(tls::client_config(trust, tuning)?);
    Ok(endpoint)
}

/// Connects to the edge at `addr` and says hello as `node` with `role`.
pub async fn connect(
    addr: &str,
    trust: &ClientTrust,
    tuning: &TransportTuning,
    node: NodeId,
    role: Role,
    session: &SessionHello,
) -> Result<Link> {
    let (host, remote) = resolve(addr).await?;
    let endpoint = client_endpoint(remote, trust, tuning)?;
    tokio::time::timeout(CONNECT_TIMEOUT, handshake(endpoint, &host, remote, node, role, session))
        .await
        .map_err(|_| Error::Timeout("the edge to answer"))?
}

async fn handshake(
    endpoint: quinn::Endpoint,
    host: &str,
    remote: SocketAddr,
    node: NodeId,
    role: Role,
    session: &SessionHello,
) -> Result<Link> {
    let name = tls::server_name(host)?;
    let server_name = match &name {
        rustls::pki_types::ServerName::DnsName(d) => d.as_ref().to_owned(),
        rustls::pki_types::ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        _ => host.to_owned(),
    };
    let conn = endpoint.connect(remote, &server_name)?.await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let hello = Hello {
        min_version: MIN_PROTOCOL_VERSION,
        max_version: MAX_PROTOCOL_VERSION,
        node,
        role,
        token: session.token.clone(),
    };
    write_message(&mut send, MAX_PROTOCOL_VERSION, &Message::Hello(hello)).await?;
    let (version, peer) = match read_message::<Message>(&mut recv, MAX_CONTROL_MESSAGE).await {
        Ok(Some((_, Message::HelloOk { version, node }))) => (version, node),
        Ok(Some((_, other))) => {
            return Err(Error::Protocol(format!("expected hello_ok, got {}", other.kind())))
        }
        Ok(None) | Err(_) => return Err(closed_error(&conn).await),
    };
    let mut link = Link { endpoint, conn, send, recv, version, peer, variant: None, client_flag: None };
    if role != Role::Edge && version >= 2 {
        let id = match &session.id {
            Some(id) => id.clone(),
            None => format!("anonymous-{}", crate::random::id()?),
        };
        let tags = match session.tags.is_empty() {
            true => vec![format!("ferry/{}", env!("CARGO_PKG_VERSION"))],
            false => session.tags.clone(),
        };
        ferry_proto::check_session(&id, &tags).map_err(Error::Config)?;
        write_message(&mut link.send, version, &Message::Session { id, tags }).await?;
        match read_message::<Message>(&mut link.recv, MAX_CONTROL_MESSAGE).await {
            Ok(Some((_, Message::SessionOk { variant, client_flag }))) => {
                link.variant = Some(variant);
                link.client_flag = client_flag;
            }
            Ok(Some((_, other))) => {
                return Err(Error::Protocol(format!("expected session_ok, got {}", other.kind())))
            }
            Ok(None) | Err(_) => return Err(closed_error(&link.conn).await),
        }
    }
    Ok(link)
}

/// How long to wait for the peer's `CONNECTION_CLOSE` once its stream ended: the
/// end of the stream may arrive before the close that explains it.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The error to report for a connection the peer closed (its code and reason),
/// waiting up to [`CLOSE_WAIT`] for the close to arrive.
pub async fn closed_error(conn: &Connection) -> Error {
    if conn.close_reason().is_none() {
        let _ = tokio::time::timeout(CLOSE_WAIT, conn.closed()).await;
    }
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(close)) => Error::Refused {
            code: u32::try_from(close.error_code.into_inner())
                .ok()
                .and_then(ErrorCode::from_u32)
                .unwrap_or(ErrorCode::Internal),
            message: String::from_utf8_lossy(&close.reason).into_owned(),
        },
        Some(other) => Error::Connection(other),
        None => Error::Protocol("the edge ended the control stream".into()),
    }
}
