//! Media helpers for clients at the edge of Ferry: reading and writing IVF files,
//! spotting keyframes inside codec payloads, and generating a synthetic test stream.
//!
//! The relay itself never looks inside media; these helpers exist for the publisher
//! and viewer clients that turn files into tracks and tracks back into files.
//!
//! # Layout
//!
//! - [`ivf`]: the IVF container (32-byte file header, 12-byte frame headers), an async
//!   reader with a frame-size limit and an async writer.
//! - [`keyframe`]: pure, bounds-checked keyframe detection per [`ferry_proto::Codec`].
//! - [`synthetic`]: Ferry's generated stream whose payloads carry a sequence number
//!   and send time, so viewers can measure end-to-end latency.

pub mod ivf;
pub mod keyframe;
pub mod synthetic;

/// Errors of reading or writing media containers.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The underlying reader or writer failed.
    #[error("media i/o: {0}")]
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
