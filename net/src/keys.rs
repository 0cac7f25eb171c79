//! Key and certificate files: reading PEM, writing private keys, and a node
//! certificate that is read again when its files change (a renewed certificate is
//! presented from the next handshake on; open connections keep theirs).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::{Error, Result};

fn pem_err(path: &Path, problem: &str) -> Error {
    Error::Config(format!("{}: {problem}", path.display()))
}

/// Every certificate of the PEM file `path` (at least one).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).map_err(Error::io(format!("cannot read {}", path.display())))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(Error::io(format!("{}: not a PEM certificate file", path.display())))?;
    if certs.is_empty() {
        return Err(pem_err(path, "no certificates in this PEM file"));
    }
    Ok(certs)
}

/// The private key of the PEM file `path`.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).map_err(Error::io(format!("cannot read {}", path.display())))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(Error::io(format!("{}: not a PEM private key file", path.display())))?
        .ok_or_else(|| pem_err(path, "no private key in this PEM file"))
}

/// Writes `contents` to `path`, readable by its owner only.
pub fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    options
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .map_err(Error::io(format!("cannot write {}", path.display())))?;
    Ok(())
}

/// How often a reloading certificate looks at its files.
const RECHECK: Duration = Duration::from_secs(1);

/// A node certificate read from `cert` and `key`, and read again whenever the
/// certificate file's modification time changes (checked at most once a second, at a
/// handshake). A file that does not load keeps the previous certificate (logged).
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    modified: Option<SystemTime>,
    checked: Instant,
    key: Arc<CertifiedKey>,
}

impl ReloadingCert {
    /// Reads the files now (an error if they do not load).
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<ReloadingCert>> {
        let loaded = Loaded { modified: modified(cert), checked: Instant::now(), key: certified(cert, key)? };
        Ok(Arc::new(ReloadingCert { cert: cert.to_owned(), key: key.to_owned(), state: Mutex::new(loaded) }))
    }

    /// The certificate to present now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.checked.elapsed() >= RECHECK {
            state.checked = Instant::now();
            let now = modified(&self.cert);
            if now != state.modified {
                match certified(&self.cert, &self.key) {
                    Ok(key) => {
                        tracing::info!(cert = %self.cert.display(), "node certificate reloaded");
                        state.key = key;
                        state.modified = now;
                    }
                    // Mid-rename, or a bad file: keep serving the one that works.
                    Err(e) => tracing::warn!(error = %crate::Chain(&e), "node certificate not reloaded"),
                }
            }
        }
        Arc::clone(&state.key)
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn certified(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>> {
    let chain = read_certs(cert)?;
    let key = read_key(key)?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(Error::tls(format!("the private key {}", cert.display())))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

impl rustls::server::ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for ReloadingCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
