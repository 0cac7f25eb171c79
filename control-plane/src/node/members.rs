//! The voters' raft addresses. Raft replicates *who* is a voter (conf state); the
//! address of each comes with the conf change that added it and is kept here, in
//! `members.json` beside the log (replaced atomically, the file and its directory fsynced).
//!
//! The file is the bare map `{"1": "host:port", ...}`, which every release reads, until
//! the cluster moves to command set 2 (see [`crate::versions`]); from then on it is
//! `{"format": 2, "members": {...}}`. A file of an unknown format stops the voter at
//! start with the reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use serde::{Deserialize, Serialize};

/// The versioned layout of `members.json`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Versioned {
    format: u16,
    members: BTreeMap<u64, String>,
}

/// The `format` this build writes and reads.
const FORMAT: u16 = 2;

/// Parses `members.json` in either layout.
fn parse(bytes: &[u8]) -> std::io::Result<BTreeMap<u64, String>> {
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    match value.get("format") {
        None => serde_json::from_value(value).map_err(|e| invalid(e.to_string())),
        Some(format) if format.as_u64() == Some(u64::from(FORMAT)) => {
            let versioned: Versioned = serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
            Ok(versioned.members)
        }
        Some(format) => Err(invalid(format!(
            "members.json format {format} is unknown to this build (it reads 1 and {FORMAT}); upgrade this voter"
        ))),
    }
}

/// Shared id → raft address map.
#[derive(Clone, Debug)]
pub struct Members {
    inner: Arc<RwLock<BTreeMap<u64, String>>>,
    path: PathBuf,
}

impl Members {
    /// Loads `members.json` from `dir`, or starts from `initial`.
    pub fn load(dir: &Path, initial: &BTreeMap<u64, String>) -> std::io::Result<Self> {
        let path = dir.join("members.json");
        let mut map = initial.clone();
        if let Ok(bytes) = std::fs::read(&path) {
            let saved = parse(&bytes)?;
            // Saved addresses are newer than the command line for ids both know.
            map.extend(saved);
        }
        Ok(Self { inner: Arc::new(RwLock::new(map)), path })
    }

    /// Writes `members` as the members file of `dir` (a voter seeded from a backup).
    pub fn save(dir: &Path, members: &BTreeMap<u64, String>) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(members).map_err(std::io::Error::other)?;
        ferry_net::files::replace(&dir.join("members.json"), &json, None)
    }

    pub fn snapshot(&self) -> BTreeMap<u64, String> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn get(&self, id: u64) -> Option<String> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner).get(&id).cloned()
    }

    /// Sets or removes an address and persists the map: in the versioned layout when
    /// `versioned` (the cluster is past command set 1, so every voter reads it).
    pub fn update(&self, id: u64, addr: Option<String>, versioned: bool) -> std::io::Result<()> {
        let map = {
            let mut map = self.inner.write().unwrap_or_else(PoisonError::into_inner);
            match addr {
                Some(addr) => map.insert(id, addr),
                None => map.remove(&id),
            };
            map.clone()
        };
        let json = if versioned {
            serde_json::to_vec_pretty(&Versioned { format: FORMAT, members: map })
        } else {
            serde_json::to_vec_pretty(&map)
        };
        ferry_net::files::replace(&self.path, &json.map_err(std::io::Error::other)?, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_layouts_load_and_an_unknown_format_is_refused() {
        let map = BTreeMap::from([(1, "a:1".to_owned()), (2, "b:2".to_owned())]);
        assert_eq!(parse(br#"{"1":"a:1","2":"b:2"}"#).unwrap(), map);
        assert_eq!(parse(br#"{"format":2,"members":{"1":"a:1","2":"b:2"}}"#).unwrap(), map);
        let err = parse(br#"{"format":3,"members":{}}"#).unwrap_err();
        assert!(err.to_string().contains("format 3 is unknown"), "{err}");
        assert!(parse(br#"{"format":2,"members":{},"more":1}"#).is_err());

        let dir = tempfile::tempdir().unwrap();
        let members = Members::load(dir.path(), &BTreeMap::new()).unwrap();
        members.update(1, Some("a:1".into()), false).unwrap();
        let bare = std::fs::read(dir.path().join("members.json")).unwrap();
        assert!(!String::from_utf8_lossy(&bare).contains("format"));
        members.update(2, Some("b:2".into()), true).unwrap();
        let versioned = std::fs::read(dir.path().join("members.json")).unwrap();
        assert!(String::from_utf8_lossy(&versioned).contains(r#""format": 2"#));
        assert_eq!(Members::load(dir.path(), &BTreeMap::new()).unwrap().snapshot(), map);
    }
}
