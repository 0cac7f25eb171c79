//! The backup file: a consistent snapshot of the replicated state, as `ferry ctl snapshot
//! save` writes it and `ferry control --restore` reads it. Pure encoding, no IO.
//!
//! Layout (integers big-endian):
//!
//! ```text
//! "FERRYBAK\0"   9 bytes, the magic
//! format         u16, 1
//! header_len     u32
//! header         header_len bytes of JSON (BackupHeader)
//! body           header.body_len bytes: the raft snapshot bytes of the state
//! sha256         32 bytes, over everything before it
//! ```
//!
//! Decoding never trusts a length beyond the bytes at hand: a header or body that claims
//! more than the file holds is "truncated", and nothing is allocated for it.

use serde::{Deserialize, Serialize};

/// First bytes of every backup file.
pub const MAGIC: &[u8; 9] = b"FERRYBAK\0";
/// The layout version this build writes and reads.
pub const FORMAT: u16 = 1;
/// Length of the SHA-256 at the end.
pub const CHECKSUM_LEN: usize = 32;
/// Longest header accepted (it is a few hundred bytes).
pub const MAX_HEADER: usize = 64 * 1024;
/// Magic, format and header length.
const PREFIX_LEN: usize = MAGIC.len() + 2 + 4;

/// What a backup holds, in JSON ahead of the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    /// The identity of the cluster it was taken from (`None`: a cluster that was never
    /// restored, which has no identity).
    pub cluster_uuid: Option<String>,
    /// The raft index the state is at.
    pub index: u64,
    /// The raft term of that index.
    pub term: u64,
    /// The voters when it was taken.
    pub voters: Vec<u64>,
    /// The body's snapshot encoding version (its first byte).
    pub state_format: u8,
    /// The Ferry version that took it.
    pub ferry_version: String,
    /// Unix time in milliseconds when it was taken.
    pub created_ms: u64,
    /// Length of the body in bytes.
    pub body_len: u64,
}

/// Why bytes are not a backup this build can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackupError {
    /// The first bytes are not `FERRYBAK\0`.
    #[error("not a Ferry backup file (it does not start with FERRYBAK)")]
    NotABackup,
    /// Written in a layout this build does not know.
    #[error("backup format {0} is not supported (this build reads format {FORMAT})")]
    UnsupportedFormat(u16),
    /// The file ends before what its lengths announce.
    #[error("the backup is truncated: {have} bytes where {need} are announced (the checksum cannot match)")]
    Truncated { need: u64, have: u64 },
    /// Bytes after the checksum.
    #[error("the backup has {0} bytes after its checksum (damaged)")]
    Trailing(u64),
    /// The SHA-256 does not match the content.
    #[error("checksum mismatch: the backup is damaged (SHA-256 {found}, expected {expected})")]
    Checksum { expected: String, found: String },
    /// The header is too long or is not the JSON of a header.
    #[error("malformed backup header: {0}")]
    Header(String),
}

/// A backup whose checksum and layout were verified; `body` borrows the file's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified<'a> {
    pub header: BackupHeader,
    pub body: &'a [u8],
    /// The file's SHA-256.
    pub checksum: [u8; CHECKSUM_LEN],
}

/// Encodes a backup of `body` (the snapshot bytes of the state); `header.body_len` and
/// `header.state_format` are set from `body`.
pub fn encode(mut header: BackupHeader, body: &[u8]) -> Result<Vec<u8>, BackupError> {
    header.body_len = body.len() as u64;
    header.state_format = body.first().copied().unwrap_or(0);
    let json = serde_json::to_vec(&header).map_err(|e| BackupError::Header(e.to_string()))?;
    let header_len = u32::try_from(json.len())
        .ok()
        .filter(|len| (*len as usize) <= MAX_HEADER)
        .ok_or_else(|| BackupError::Header(format!("a header of {} bytes", json.len())))?;
    let mut out = Vec::with_capacity(PREFIX_LEN + json.len() + body.len() + CHECKSUM_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_be_bytes());
    out.extend_from_slice(&header_len.to_be_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(body);
    let digest = ring::digest::digest(&ring::digest::SHA256, &out);
    out.extend_from_slice(digest.as_ref());
    Ok(out)
}

/// Checks and splits a backup file.
pub fn decode(bytes: &[u8]) -> Result<Verified<'_>, BackupError> {
    let have = bytes.len() as u64;
    let truncated = |need: usize| BackupError::Truncated { need: need as u64, have };
    if bytes.len() < MAGIC.len() {
        return Err(if MAGIC.starts_with(bytes) { truncated(PREFIX_LEN) } else { BackupError::NotABackup });
    }
    let (magic, rest) = bytes.split_at(MAGIC.len());
    if magic != MAGIC {
        return Err(BackupError::NotABackup);
    }
    let (format, rest) = take::<2>(rest).ok_or_else(|| truncated(PREFIX_LEN))?;
    let format = u16::from_be_bytes(format);
    if format != FORMAT {
        return Err(BackupError::UnsupportedFormat(format));
    }
    let (header_len, rest) = take::<4>(rest).ok_or_else(|| truncated(PREFIX_LEN))?;
    let header_len = u32::from_be_bytes(header_len) as usize;
    if header_len > MAX_HEADER {
        return Err(BackupError::Header(format!("a header of {header_len} bytes (at most {MAX_HEADER})")));
    }
    if rest.len() < header_len {
        return Err(truncated(PREFIX_LEN + header_len + CHECKSUM_LEN));
    }
    let (header_bytes, rest) = rest.split_at(header_len);
    // A header that parses says how long the file must be: report truncation as such.
    let header = serde_json::from_slice::<BackupHeader>(header_bytes);
    if let Ok(header) = &header {
        let need = (PREFIX_LEN as u64)
            .saturating_add(header_len as u64)
            .saturating_add(header.body_len)
            .saturating_add(CHECKSUM_LEN as u64);
        if have < need {
            return Err(BackupError::Truncated { need, have });
        }
        if have > need {
            return Err(BackupError::Trailing(have - need));
        }
    }
    // Otherwise the checksum speaks first: a damaged header is damage like any other.
    if rest.len() < CHECKSUM_LEN {
        return Err(truncated(PREFIX_LEN + header_len + CHECKSUM_LEN));
    }
    let content_len = bytes.len() - CHECKSUM_LEN;
    let (content, stored) = bytes.split_at(content_len);
    let digest = ring::digest::digest(&ring::digest::SHA256, content);
    if digest.as_ref() != stored {
        return Err(BackupError::Checksum {
            expected: hex::encode(stored),
            found: hex::encode(digest.as_ref()),
        });
    }
    let header = header.map_err(|e| BackupError::Header(e.to_string()))?;
    let body = rest
        .get(..rest.len().saturating_sub(CHECKSUM_LEN))
        .ok_or_else(|| truncated(PREFIX_LEN + header_len + CHECKSUM_LEN))?;
    let first = body.first().copied().unwrap_or(0);
    if header.state_format != first {
        return Err(BackupError::Header(format!(
            "state_format {} but the body is in format {first}",
            header.state_format
        )));
    }
    let mut checksum = [0u8; CHECKSUM_LEN];
    checksum.copy_from_slice(stored);
    Ok(Verified { header, body, checksum })
}

/// The identity of a cluster restored from a backup: SHA-256 of the backup's checksum
/// and of the new voters (`ID=ADDR` lines in id order), hex. Every voter restored from
/// the same file with the same `--peers` computes the same one.
pub fn restored_cluster_uuid(
    checksum: &[u8; CHECKSUM_LEN],
    peers: &std::collections::BTreeMap<u64, String>,
) -> String {
    let mut input = checksum.to_vec();
    for (id, addr) in peers {
        input.extend_from_slice(format!("{id}={addr}\n").as_bytes());
    }
    hex::encode(ring::digest::digest(&ring::digest::SHA256, &input))
}

/// The first `N` bytes of `bytes` and the rest.
fn take<const N: usize>(bytes: &[u8]) -> Option<([u8; N], &[u8])> {
    let head = bytes.get(..N)?;
    let mut out = [0u8; N];
    out.copy_from_slice(head);
    Some((out, bytes.get(N..)?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use std::collections::BTreeMap;

    use super::*;

    fn header() -> BackupHeader {
        BackupHeader {
            cluster_uuid: None,
            index: 120,
            term: 3,
            voters: vec![1, 2, 3],
            state_format: 0,
            ferry_version: "0.1.0".into(),
            created_ms: 1_700_000_000_000,
            body_len: 0,
        }
    }

    fn body() -> Vec<u8> {
        let mut body = vec![3u8];
        body.extend((0..10_000u32).map(|i| (i % 251) as u8));
        body
    }

    #[test]
    fn a_backup_round_trips() {
        let body = body();
        let bytes = encode(header(), &body).unwrap();
        let verified = decode(&bytes).unwrap();
        assert_eq!(verified.body, &body[..]);
        assert_eq!(verified.header.body_len, body.len() as u64);
        assert_eq!(verified.header.state_format, 3);
        assert_eq!(verified.header.index, 120);
        assert_eq!(&verified.checksum[..], &bytes[bytes.len() - 32..]);
        assert!(bytes.starts_with(MAGIC));
        // An empty body (an empty cluster) too.
        let empty = encode(header(), &[]).unwrap();
        assert_eq!(decode(&empty).unwrap().body, &[] as &[u8]);
    }

    #[test]
    fn every_truncation_is_refused_without_trusting_lengths() {
        let bytes = encode(header(), &body()).unwrap();
        for len in 0..bytes.len() {
            let err = decode(&bytes[..len]).unwrap_err();
            assert!(matches!(err, BackupError::Truncated { .. }), "{len} of {} bytes: {err}", bytes.len());
        }
        // Bytes after the checksum are damage too.
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer).unwrap_err(), BackupError::Trailing(1));
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let bytes = encode(header(), &body()[..300]).unwrap();
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x20;
            assert!(decode(&damaged).is_err(), "byte {i} flipped was accepted");
        }
        // A flip in the body is a checksum mismatch, named as such.
        let mut damaged = bytes.clone();
        let middle = bytes.len() - 100;
        damaged[middle] ^= 1;
        let err = decode(&damaged).unwrap_err();
        assert!(matches!(err, BackupError::Checksum { .. }), "{err}");
        assert!(err.to_string().contains("checksum"), "{err}");
    }

    #[test]
    fn huge_length_claims_are_refused_before_any_allocation() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&FORMAT.to_be_bytes());
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(decode(&bytes).unwrap_err(), BackupError::Header(_)));
        // A header claiming a body of u64::MAX bytes.
        let mut h = header();
        h.body_len = u64::MAX;
        let json = serde_json::to_vec(&h).unwrap();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&FORMAT.to_be_bytes());
        bytes.extend_from_slice(&(json.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&json);
        bytes.extend_from_slice(&[0; 32]);
        assert!(matches!(decode(&bytes).unwrap_err(), BackupError::Truncated { .. }));
        assert_eq!(decode(b"NOTABACKUPFILE").unwrap_err(), BackupError::NotABackup);
        let mut other = encode(header(), &[]).unwrap();
        other[10] = 2;
        assert_eq!(decode(&other).unwrap_err(), BackupError::UnsupportedFormat(2));
    }

    #[test]
    fn restored_clusters_are_named_by_the_file_and_the_new_voters() {
        let peers: BTreeMap<u64, String> = [(1, "a:1".into()), (2, "b:2".into())].into();
        let other: BTreeMap<u64, String> = [(1, "a:1".into()), (2, "c:2".into())].into();
        let uuid = restored_cluster_uuid(&[7; 32], &peers);
        assert_eq!(uuid.len(), 64);
        assert_eq!(uuid, restored_cluster_uuid(&[7; 32], &peers.clone()));
        assert_ne!(uuid, restored_cluster_uuid(&[8; 32], &peers));
        assert_ne!(uuid, restored_cluster_uuid(&[7; 32], &other));
    }
}
