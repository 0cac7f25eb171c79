//! Sealed gossip datagrams: ChaCha20-Poly1305 (ring) under a cluster keyring.
//!
//! A keyring is a directory of keys, `NAME.key` (32 random bytes, 64 hex digits), and
//! `primary` naming the key that seals; every key in the directory opens. A datagram is
//!
//! ```text
//! "FRG1" | key id (8: SHA-256 of the key, truncated) | nonce (12, random) | ciphertext + tag (16)
//! ```
//!
//! with the cluster id and the header as associated data, so a datagram of another
//! cluster, a tampered one, one under a key this process does not hold and plaintext
//! are all dropped (and counted by reason). Keys rotate without flaps: install the new
//! key everywhere, make it primary everywhere, remove the old one; processes re-read
//! the directory every second.
//!
//! [`Keyring::seal`] and [`Keyring::open`] are pure (the nonce comes from the caller's
//! random source); only [`Keyring::load`] reads files.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};

use crate::{Error, Result};

/// First bytes of every sealed datagram.
const MAGIC: &[u8; 4] = b"FRG1";
const KEY_ID_LEN: usize = 8;
const HEADER_LEN: usize = MAGIC.len() + KEY_ID_LEN + NONCE_LEN;
/// Bytes sealing adds to a datagram.
pub const OVERHEAD: usize = HEADER_LEN + 16;
/// The name of the file naming the primary key.
pub const PRIMARY_FILE: &str = "primary";

/// Why a datagram was dropped: the `reason` label of the drop counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Drop {
    /// Not a sealed datagram (plaintext gossip, or anything else).
    Unsealed,
    /// Sealed under a key this process does not hold.
    UnknownKey,
    /// The tag does not verify: tampered, truncated, or another cluster id.
    Tampered,
    /// Too big to send once sealed.
    TooBig,
}

impl Drop {
    pub const ALL: [Drop; 4] = [Drop::Unsealed, Drop::UnknownKey, Drop::Tampered, Drop::TooBig];

    pub fn label(self) -> &'static str {
        match self {
            Drop::Unsealed => "unsealed",
            Drop::UnknownKey => "unknown_key",
            Drop::Tampered => "tampered",
            Drop::TooBig => "too_big",
        }
    }
}

impl fmt::Display for Drop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

struct Key {
    name: String,
    id: [u8; KEY_ID_LEN],
    aead: LessSafeKey,
}

/// The keys of one cluster's gossip; the primary one seals.
pub struct Keyring {
    cluster: String,
    keys: BTreeMap<[u8; KEY_ID_LEN], Key>,
    primary: [u8; KEY_ID_LEN],
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring").field("keys", &self.names()).field("primary", &self.primary_name()).finish()
    }
}

fn key_id(secret: &[u8]) -> [u8; KEY_ID_LEN] {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret);
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(digest.as_ref().get(..KEY_ID_LEN).unwrap_or(&[0; KEY_ID_LEN]));
    id
}

impl Keyring {
    /// A keyring of `keys` (name, 32-byte secret); `primary` names the sealing key.
    pub fn new(cluster: &str, keys: &[(String, Vec<u8>)], primary: &str) -> Result<Keyring> {
        let mut ring_keys = BTreeMap::new();
        let mut primary_id = None;
        for (name, secret) in keys {
            let unbound = UnboundKey::new(&CHACHA20_POLY1305, secret).map_err(|_| {
                Error::Config(format!("gossip key {name}: expected 32 bytes (64 hex digits)"))
            })?;
            let id = key_id(secret);
            if name == primary {
                primary_id = Some(id);
            }
            ring_keys.insert(id, Key { name: name.clone(), id, aead: LessSafeKey::new(unbound) });
        }
        let primary = primary_id.ok_or_else(|| {
            Error::Config(format!("the primary gossip key {primary:?} is not in the keyring"))
        })?;
        Ok(Keyring { cluster: cluster.to_owned(), keys: ring_keys, primary })
    }

    /// Reads a keyring directory: `NAME.key` files (64 hex digits) and `primary` (the
    /// name of the sealing key; optional when there is one key).
    pub fn load(dir: &Path, cluster: &str) -> Result<Keyring> {
        let what = |e| Error::io(format!("cannot read the gossip keyring {}", dir.display()))(e);
        let mut keys = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(what)? {
            let path = entry.map_err(what)?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".key"))
            else {
                continue;
            };
            let text = std::fs::read_to_string(&path)
                .map_err(Error::io(format!("cannot read the gossip key {}", path.display())))?;
            let secret = hex::decode(text.trim())
                .map_err(|_| Error::Config(format!("{}: expected 64 hex digits", path.display())))?;
            keys.push((name.to_owned(), secret));
        }
        let primary = match std::fs::read_to_string(dir.join(PRIMARY_FILE)) {
            Ok(name) => name.trim().to_owned(),
            Err(_) if keys.len() == 1 => keys.first().map(|(n, _)| n.clone()).unwrap_or_default(),
            Err(e) => {
                return Err(Error::Config(format!(
                    "{}: {} keys and no readable {PRIMARY_FILE} file naming the one that seals ({e})",
                    dir.display(),
                    keys.len()
                )))
            }
        };
        if keys.is_empty() {
            return Err(Error::Config(format!("{}: no NAME.key file", dir.display())));
        }
        Keyring::new(cluster, &keys, &primary)
    }

    /// Key names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.keys.values().map(|k| k.name.clone()).collect();
        names.sort();
        names
    }

    pub fn primary_name(&self) -> String {
        self.keys.get(&self.primary).map(|k| k.name.clone()).unwrap_or_default()
    }

    fn aad(&self, header: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(self.cluster.len() + 1 + header.len());
        aad.extend_from_slice(self.cluster.as_bytes());
        aad.push(0);
        aad.extend_from_slice(header);
        aad
    }

    /// `plain` sealed under the primary key with `nonce` (never reuse one).
    pub fn seal(&self, plain: &[u8], nonce: [u8; NONCE_LEN]) -> Result<Vec<u8>, Drop> {
        let key = self.keys.get(&self.primary).ok_or(Drop::UnknownKey)?;
        let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        let aad = self.aad(&out);
        let mut body = plain.to_vec();
        key.aead
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&aad), &mut body)
            .map_err(|_| Drop::TooBig)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// The plaintext of a sealed datagram, or why it is dropped.
    pub fn open(&self, datagram: &[u8]) -> Result<Vec<u8>, Drop> {
        let header = datagram.get(..HEADER_LEN).ok_or(Drop::Unsealed)?;
        if header.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
            return Err(Drop::Unsealed);
        }
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(header.get(MAGIC.len()..MAGIC.len() + KEY_ID_LEN).ok_or(Drop::Unsealed)?);
        let key = self.keys.get(&id).ok_or(Drop::UnknownKey)?;
        let nonce =
            Nonce::try_assume_unique_for_key(header.get(MAGIC.len() + KEY_ID_LEN..).ok_or(Drop::Unsealed)?)
                .map_err(|_| Drop::Unsealed)?;
        let aad = self.aad(header);
        let mut body = datagram.get(HEADER_LEN..).ok_or(Drop::Unsealed)?.to_vec();
        let plain = key.aead.open_in_place(nonce, Aad::from(&aad), &mut body).map_err(|_| Drop::Tampered)?;
        Ok(plain.to_vec())
    }
}

/// A new random key, as the 64 hex digits a `NAME.key` file holds.
pub fn new_key_hex() -> Result<String> {
    let mut secret = [0u8; 32];
    crate::random::fill(&mut secret)?;
    Ok(hex::encode(secret))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn ring(cluster: &str, keys: &[(&str, u8)], primary: &str) -> Keyring {
        let keys: Vec<(String, Vec<u8>)> =
            keys.iter().map(|(n, b)| ((*n).to_owned(), vec![*b; 32])).collect();
        Keyring::new(cluster, &keys, primary).unwrap()
    }

    #[test]
    fn sealed_datagrams_open_only_with_the_key_and_the_cluster() {
        let a = ring("prod", &[("k1", 1)], "k1");
        let sealed = a.seal(b"hello gossip", [7; NONCE_LEN]).unwrap();
        assert_eq!(sealed.len(), b"hello gossip".len() + OVERHEAD);
        assert_eq!(a.open(&sealed).unwrap(), b"hello gossip");
        // Another key, another cluster, a flipped bit, plaintext, a short datagram.
        assert_eq!(ring("prod", &[("k2", 2)], "k2").open(&sealed), Err(Drop::UnknownKey));
        assert_eq!(ring("staging", &[("k1", 1)], "k1").open(&sealed), Err(Drop::Tampered));
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(a.open(&flipped), Err(Drop::Tampered));
        let mut header_flipped = sealed.clone();
        header_flipped[HEADER_LEN - 1] ^= 1;
        assert_eq!(a.open(&header_flipped), Err(Drop::Tampered));
        assert_eq!(a.open(b"\x12\x34\x00\x00plain chitchat"), Err(Drop::Unsealed));
        assert_eq!(a.open(b"FRG1"), Err(Drop::Unsealed));
    }

    #[test]
    fn a_rotation_keeps_every_pair_talking() {
        // install: both hold k1 and k2, both seal with k1
        let old = ring("prod", &[("k1", 1), ("k2", 2)], "k1");
        // use: one node already seals with k2
        let new = ring("prod", &[("k1", 1), ("k2", 2)], "k2");
        assert!(new.open(&old.seal(b"x", [1; NONCE_LEN]).unwrap()).is_ok());
        assert!(old.open(&new.seal(b"y", [2; NONCE_LEN]).unwrap()).is_ok());
        // remove: k1 gone once nobody seals with it
        let done = ring("prod", &[("k2", 2)], "k2");
        assert!(done.open(&new.seal(b"z", [3; NONCE_LEN]).unwrap()).is_ok());
        assert_eq!(done.open(&old.seal(b"w", [4; NONCE_LEN]).unwrap()), Err(Drop::UnknownKey));
    }

    #[test]
    fn keyrings_load_from_a_directory_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Keyring::load(dir.path(), "prod").is_err(), "empty");
        std::fs::write(dir.path().join("k1.key"), new_key_hex().unwrap()).unwrap();
        let one = Keyring::load(dir.path(), "prod").unwrap();
        assert_eq!((one.names(), one.primary_name()), (vec!["k1".to_owned()], "k1".to_owned()));
        std::fs::write(dir.path().join("k2.key"), format!("{}\n", new_key_hex().unwrap())).unwrap();
        assert!(Keyring::load(dir.path(), "prod").is_err(), "two keys, no primary");
        std::fs::write(dir.path().join(PRIMARY_FILE), "k2\n").unwrap();
        assert_eq!(Keyring::load(dir.path(), "prod").unwrap().primary_name(), "k2");
        std::fs::write(dir.path().join(PRIMARY_FILE), "k3").unwrap();
        assert!(Keyring::load(dir.path(), "prod").is_err(), "primary not in the ring");
        std::fs::write(dir.path().join(PRIMARY_FILE), "k2").unwrap();
        std::fs::write(dir.path().join("bad.key"), "not hex").unwrap();
        assert!(Keyring::load(dir.path(), "prod").is_err(), "bad key");
    }
}
