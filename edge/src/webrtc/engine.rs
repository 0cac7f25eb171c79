//! Peer connections of edge sessions: each binds its own UDP port from the edge's pool.

use std::net::SocketAddr;
use std::sync::Arc;

pub use ferry_media::peer::{
    codec_of_mime, gathered, loss_feedback, mime_type, rtp_codec, Events, LossFeedback, Nack, CODECS,
};
use ferry_media::peer::{new_handler, peer_connection};
use ferry_proto::Codec;
use webrtc::peer_connection::PeerConnection;

use super::{SessionLease, WebRtc};

/// Why a session's peer connection could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("no free UDP port for WebRTC")]
    NoPort,
    #[error("webrtc peer connection")]
    WebRtc(#[from] webrtc::error::Error),
}

/// A peer connection on the lease's port that negotiates exactly `codecs`.
pub async fn build(
    webrtc: &WebRtc,
    lease: &mut SessionLease,
    codecs: &[Codec],
    nack: Nack,
) -> Result<(Arc<dyn PeerConnection>, Events), BuildError> {
    let config = &webrtc.config;
    let (handler, events) = new_handler();
    // A port another process holds is skipped; a few attempts, then give up with the
    // last error when the port was free (a failure that is not about the port).
    let mut failed = None;
    for _ in 0..8 {
        let addr = SocketAddr::new(config.bind_ip, lease.port);
        if std::net::UdpSocket::bind(addr).is_err() {
            lease.port = webrtc.port_in_use(lease.port).ok_or(BuildError::NoPort)?;
            continue;
        }
        match peer_connection(addr, codecs, nack, Arc::clone(&handler)).await {
            Ok(pc) => return Ok((pc, events)),
            Err(e) => {
                tracing::debug!(port = lease.port, error = %e, "peer connection bind failed; next port");
                failed = Some(e);
                lease.port = webrtc.port_in_use(lease.port).ok_or(BuildError::NoPort)?;
            }
        }
    }
    Err(failed.map_or(BuildError::NoPort, BuildError::WebRtc))
}
