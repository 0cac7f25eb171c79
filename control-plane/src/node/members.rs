//! The voters' raft addresses. Raft replicates *who* is a voter (conf state); the
//! address of each comes with the conf change that added it and is kept here, in
//! `members.json` beside the log (replaced atomically, the file and its directory fsynced).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

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
            let saved: BTreeMap<u64, String> = serde_json::from_slice(&bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
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

    /// Sets or removes an address and persists the map.
    pub fn update(&self, id: u64, addr: Option<String>) -> std::io::Result<()> {
        let map = {
            let mut map = self.inner.write().unwrap_or_else(PoisonError::into_inner);
            match addr {
                Some(addr) => map.insert(id, addr),
                None => map.remove(&id),
            };
            map.clone()
        };
        let json = serde_json::to_vec_pretty(&map).map_err(std::io::Error::other)?;
        ferry_net::files::replace(&self.path, &json, None)
    }
}
