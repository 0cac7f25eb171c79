//! The versioned, length-prefixed bincode envelope, and the fixed frame header.
//!
//! ```text
//! message  = length:u32be  version:u16be  body:bincode(T)     (length covers version+body)
//! frame    = pts:u64be  flags:u8  len:u32be  payload[len]
//! ```
//!
//! Decoders check the length against the caller's limit before reading the body, so
//! a peer cannot make us allocate more than we allow.

use serde::{de::DeserializeOwned, Serialize};

use crate::{Error, FrameFlags, FrameHeader, Result};

/// The protocol version this build prefers.
pub const PROTOCOL_VERSION: u16 = 2;
/// The oldest protocol version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// The newest protocol version this build speaks.
pub const MAX_PROTOCOL_VERSION: u16 = 2;

/// Bytes of the length prefix.
pub const LENGTH_PREFIX_LEN: usize = 4;
/// Bytes of the version field inside the envelope.
const VERSION_LEN: usize = 2;
/// Largest control message we ever encode or accept: control messages are small
/// (names, track descriptions); anything bigger is an attack or a bug.
pub const MAX_CONTROL_MESSAGE: usize = 64 * 1024;
/// Bytes of an encoded [`FrameHeader`].
pub const FRAME_HEADER_LEN: usize = 13;
/// Largest frame payload accepted by default: a 4K keyframe fits comfortably.
pub const MAX_FRAME_PAYLOAD: usize = 8 * 1024 * 1024;

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_CONTROL_MESSAGE>()
}

/// Encodes `msg` in the envelope of `version`.
pub fn encode_message<T: Serialize>(version: u16, msg: &T) -> Result<Vec<u8>> {
    let body =
        bincode::serde::encode_to_vec(msg, bincode_config()).map_err(|e| Error::Malformed(e.to_string()))?;
    let len = VERSION_LEN + body.len();
    if len > MAX_CONTROL_MESSAGE {
        return Err(Error::TooLarge { len, limit: MAX_CONTROL_MESSAGE });
    }
    let mut out = Vec::with_capacity(LENGTH_PREFIX_LEN + len);
    // `len` is at most MAX_CONTROL_MESSAGE, so it fits in u32.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Reads a length prefix and checks it against `limit` (which is itself capped at
/// [`MAX_CONTROL_MESSAGE`]). Returns the number of bytes that follow.
pub fn decode_length(prefix: [u8; LENGTH_PREFIX_LEN], limit: usize) -> Result<usize> {
    let limit = limit.min(MAX_CONTROL_MESSAGE);
    let len = usize::try_from(u32::from_be_bytes(prefix)).unwrap_or(usize::MAX);
    if len > limit {
        return Err(Error::TooLarge { len, limit });
    }
    if len < VERSION_LEN {
        return Err(Error::Malformed(format!("envelope of {len} bytes has no version")));
    }
    Ok(len)
}

/// Decodes the bytes after a length prefix: version, then exactly one `T`.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<(u16, T)> {
    let (version, rest) = match body {
        [hi, lo, rest @ ..] => (u16::from_be_bytes([*hi, *lo]), rest),
        _ => return Err(Error::Truncated { needed: VERSION_LEN.saturating_sub(body.len()) }),
    };
    if !(MIN_PROTOCOL_VERSION..=MAX_PROTOCOL_VERSION).contains(&version) {
        return Err(Error::UnsupportedVersion(version));
    }
    let (value, used) = bincode::serde::decode_from_slice::<T, _>(rest, bincode_config())
        .map_err(|e| Error::Malformed(e.to_string()))?;
    if used != rest.len() {
        return Err(Error::Malformed(format!("{} trailing bytes", rest.len() - used)));
    }
    Ok((version, value))
}

/// Decodes one enveloped message from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a message (read more and call
/// again), or the version, the message and the number of bytes consumed.
pub fn decode_message<T: DeserializeOwned>(buf: &[u8], limit: usize) -> Result<Option<(u16, T, usize)>> {
    let Some((prefix, rest)) = buf.split_first_chunk::<LENGTH_PREFIX_LEN>() else {
        return Ok(None);
    };
    let len = decode_length(*prefix, limit)?;
    let Some(body) = rest.get(..len) else {
        return Ok(None);
    };
    let (version, value) = decode_body(body)?;
    Ok(Some((version, value, LENGTH_PREFIX_LEN + len)))
}

/// Encodes a frame header.
pub fn encode_frame_header(header: &FrameHeader) -> [u8; FRAME_HEADER_LEN] {
    let mut out = [0u8; FRAME_HEADER_LEN];
    let (pts, rest) = out.split_at_mut(8);
    pts.copy_from_slice(&header.pts.to_be_bytes());
    let (flags, len) = rest.split_at_mut(1);
    flags.copy_from_slice(&[header.flags.bits()]);
    len.copy_from_slice(&header.len.to_be_bytes());
    out
}

/// Decodes a frame header and checks its payload length against `max_payload`.
pub fn decode_frame_header(bytes: [u8; FRAME_HEADER_LEN], max_payload: usize) -> Result<FrameHeader> {
    let (pts, rest) = bytes.split_first_chunk::<8>().ok_or(Error::Truncated { needed: 8 })?;
    let (flags, rest) = rest.split_first().ok_or(Error::Truncated { needed: 1 })?;
    let len = rest.first_chunk::<4>().ok_or(Error::Truncated { needed: 4 })?;
    let header = FrameHeader {
        pts: u64::from_be_bytes(*pts),
        flags: FrameFlags::from_bits(*flags)?,
        len: u32::from_be_bytes(*len),
    };
    let payload = usize::try_from(header.len).unwrap_or(usize::MAX);
    if payload > max_payload {
        return Err(Error::TooLarge { len: payload, limit: max_payload });
    }
    Ok(header)
}

#[cfg(test)]
mod tests;
