//! ferry-media: media helpers shared by the edge and the clients.
//!
//! The relay never looks inside media groups; these helpers turn files, RTP and
//! browsers' peer connections into frames and back.
//!
//! # Layout
//!
//! - [`ivf`]: the IVF container (32-byte file header, 12-byte frame headers), an async
//!   reader with a frame-size limit and an async writer.
//! - [`keyframe`]: pure, bounds-checked keyframe detection per [`ferry_proto::Codec`].
//! - [`synthetic`]: Ferry's generated stream whose payloads carry a sequence number
//!   and send time, so viewers can measure end-to-end latency.
//! - [`rtp`]: sans-IO RTP framing: whole frames from packets (WHIP ingest, the WHEP
//!   client) and packets from frames (WHEP egress).
//! - [`throttle`]: at most one keyframe request per second per track (sans-IO).
//! - [`peer`]: `webrtc` peer connections (codecs, interceptors, events) for the edge's
//!   sessions and the WHEP client.
//!
//! Depends on `ferry-proto` and the `webrtc`/`rtc` crates; never on the network crate,
//! the edge or the control plane.

pub mod ivf;
pub mod keyframe;
pub mod peer;
pub mod rtp;
pub mod synthetic;
pub mod throttle;

/// Errors of reading or writing media containers.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The underlying reader or writer failed.
    #[error("media input or output failed")]
    Io(#[from] std::io::Error),
    /// The file does not start with the IVF signature `DKIF`.
    #[error("not an IVF file (missing DKIF signature)")]
    BadIvfSignature,
    /// The file is IVF, but a variant this reader does not understand.
    #[error("unsupported IVF file: {0}")]
    UnsupportedIvf(String),
    /// A frame declares a size above the configured limit; refused before allocating.
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge { len: usize, limit: usize },
    /// The input ended in the middle of a header or frame.
    #[error("media input truncated")]
    Truncated,
}

/// Result of media operations.
pub type Result<T, E = MediaError> = std::result::Result<T, E>;
