//! Node certificates that change while a process runs: signing an edge's certificate
//! request on a voter, asking for one on an edge, deciding when to renew, and
//! installing the result (which `crate::keys::ReloadingCert` then presents).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;

use crate::identity::{Identity, Role};
use crate::keys::read_certs;
use crate::{Error, Result};

/// A new key pair and a certificate request for `identity` (its one URI name) and
/// `names` (DNS names or IPs): `(key PEM, request PEM)`.
pub fn certificate_request(identity: &Identity, names: &[String]) -> Result<(String, String)> {
    let key = rcgen::KeyPair::generate().map_err(Error::tls("generating a node key"))?;
    let mut params =
        rcgen::CertificateParams::new(names.to_vec()).map_err(Error::tls("the certificate names"))?;
    let uri = identity.uri().try_into().map_err(Error::tls("the certificate's identity"))?;
    params.subject_alt_names.push(rcgen::SanType::URI(uri));
    params.distinguished_name.push(rcgen::DnType::CommonName, identity.node.as_str());
    let request = params.serialize_request(&key).map_err(Error::tls("the certificate request"))?;
    let pem = request.pem().map_err(Error::tls("the certificate request"))?;
    Ok((key.serialize_pem(), pem))
}

/// A signed certificate: PEM (leaf, then the CA) and when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub pem: String,
    pub not_after: SystemTime,
}

/// The CA a voter signs edges' certificate requests with.
pub struct Signer {
    ca_pem: String,
    ca_key: rcgen::KeyPair,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

impl Signer {
    /// Reads the CA certificate and its key.
    pub fn load(ca_cert: &Path, ca_key: &Path) -> Result<Signer> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(Error::io(format!("cannot read {}", path.display())))
        };
        let ca_key = rcgen::KeyPair::from_pem(&read(ca_key)?).map_err(Error::tls("the CA key"))?;
        Ok(Signer { ca_pem: read(ca_cert)?, ca_key })
    }

    /// Signs `request` (PEM) for an edge of `cluster` for `lifetime` from `now`; with
    /// `only`, only for that edge id. The request must be validly self-signed and name
    /// exactly one identity, an edge of `cluster`; the certificate keeps its DNS and IP
    /// names and is valid as server and client.
    pub fn sign_edge(
        &self,
        request: &str,
        cluster: &str,
        only: Option<&str>,
        lifetime: Duration,
        now: SystemTime,
    ) -> std::result::Result<(Identity, Signed), String> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(request)
            .map_err(|e| format!("not a valid certificate request: {e}"))?;
        let mut identities = csr.params.subject_alt_names.iter().filter_map(|san| match san {
            rcgen::SanType::URI(uri) => Some(Identity::parse(uri.as_str())),
            _ => None,
        });
        let identity = match (identities.next(), identities.next()) {
            (Some(Some(identity)), None) => identity,
            (None, _) => return Err("the request names no spiffe:// identity".into()),
            (Some(None), None) => return Err("the request's URI name is not a Ferry identity".into()),
            (Some(_), Some(_)) => return Err("the request names more than one identity".into()),
        };
        if identity.role != Role::Edge || identity.cluster != cluster {
            return Err(format!("{identity} is not an edge of cluster {cluster:?}"));
        }
        if let Some(only) = only {
            if identity.node != only {
                return Err(format!("edge {only} may renew its own certificate only, not {identity}"));
            }
        }
        let not_before = now.checked_sub(crate::tls::CLOCK_SKEW).unwrap_or(now);
        let not_after = now.checked_add(lifetime).ok_or("certificate lifetime too long")?;
        let params = &mut csr.params;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, identity.node.as_str());
        params.not_before = time::OffsetDateTime::from(not_before);
        params.not_after = time::OffsetDateTime::from(not_after);
        params.is_ca = rcgen::IsCa::NoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let ca_params = crate::tls::ca_params().map_err(|e| e.to_string())?;
        let issuer = rcgen::Issuer::new(ca_params, &self.ca_key);
        let cert = csr.signed_by(&issuer).map_err(|e| format!("signing failed: {e}"))?;
        Ok((identity, Signed { pem: format!("{}{}", cert.pem(), self.ca_pem), not_after }))
    }
}

/// When a certificate received at `received`, valid until `not_after`, is renewed: two
/// thirds of the way from receipt to its end.
pub fn renew_at(received: SystemTime, not_after: SystemTime) -> SystemTime {
    let left = not_after.duration_since(received).unwrap_or(Duration::ZERO);
    received + left * 2 / 3
}

/// When the certificate in `cert` (PEM; its leaf) ends.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<SystemTime> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let secs = u64::try_from(parsed.validity().not_after.timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// When the certificate file `path` (its first certificate) ends.
pub fn file_not_after(path: &Path) -> Option<SystemTime> {
    not_after(read_certs(path).ok()?.first()?)
}

/// Writes `key` then `cert` into `dir` as `node-key.pem` and `node.pem`, each through a
/// temporary file and a rename, so a reader sees the old pair or the new one. The key
/// goes first: a reader that sees the new certificate finds its key.
pub fn write_node_files(dir: &Path, cert: &str, key: &str) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).map_err(Error::io(format!("cannot create {}", dir.display())))?;
    let (cert_path, key_path) = (dir.join("node.pem"), dir.join("node-key.pem"));
    for (path, text, mode) in [(&key_path, key, Some(0o600)), (&cert_path, cert, None)] {
        crate::files::replace(path, text.as_bytes(), mode)
            .map_err(Error::io(format!("cannot write {}", path.display())))?;
    }
    Ok((cert_path, key_path))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
    use super::*;
    use crate::keys::ReloadingCert;

    fn ca() -> (tempfile::TempDir, Signer) {
        let dir = tempfile::tempdir().unwrap();
        crate::tls::init_ca(dir.path()).unwrap();
        let signer = Signer::load(&dir.path().join("ca.pem"), &dir.path().join("ca-key.pem")).unwrap();
        (dir, signer)
    }

    fn edge(id: &str) -> Identity {
        Identity::new("ferry", Role::Edge, id).unwrap()
    }

    #[test]
    fn a_signed_request_becomes_a_certificate_naming_the_edge() {
        let (_dir, signer) = ca();
        let (_key, request) = certificate_request(&edge("e1"), &["10.0.0.5".into()]).unwrap();
        let now = SystemTime::now();
        let (who, signed) = signer.sign_edge(&request, "ferry", None, Duration::from_secs(120), now).unwrap();
        assert_eq!(who, edge("e1"));
        let leaf = rustls_pemfile::certs(&mut signed.pem.as_bytes()).next().unwrap().unwrap();
        assert_eq!(Identity::of_cert(&leaf).unwrap(), edge("e1"));
        let ends = not_after(&leaf).unwrap();
        assert!(ends <= now + Duration::from_secs(120) && ends >= now + Duration::from_secs(118), "{ends:?}");
    }

    #[test]
    fn requests_for_other_roles_clusters_or_edges_are_refused() {
        let (_dir, signer) = ca();
        let now = SystemTime::now();
        let life = Duration::from_secs(60);
        let voter = Identity::voter("ferry", 1);
        let other = Identity::new("staging", Role::Edge, "e1").unwrap();
        for (identity, only, why) in [
            (voter, None, "is not an edge"),
            (other, None, "is not an edge of cluster"),
            (edge("e2"), Some("e1"), "its own certificate only"),
        ] {
            let (_, request) = certificate_request(&identity, &[]).unwrap();
            let err = signer.sign_edge(&request, "ferry", only, life, now).unwrap_err();
            assert!(err.contains(why), "{identity}: {err}");
        }
        assert!(signer.sign_edge("not pem", "ferry", None, life, now).unwrap_err().contains("not a valid"));
        // A request altered after it was signed (one base64 digit of its body).
        let (_, request) = certificate_request(&edge("e1"), &[]).unwrap();
        let mut lines: Vec<String> = request.lines().map(str::to_owned).collect();
        let line = &mut lines[3];
        let flipped = if line.starts_with('A') { "B" } else { "A" };
        line.replace_range(0..1, flipped);
        assert!(signer.sign_edge(&lines.join("\n"), "ferry", None, life, now).is_err());
    }

    #[test]
    fn renewal_comes_at_two_thirds_of_what_is_left() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(renew_at(t0, t0 + Duration::from_secs(120)), t0 + Duration::from_secs(80));
        assert_eq!(renew_at(t0, t0 - Duration::from_secs(5)), t0, "already over: renew now");
    }

    #[test]
    fn a_reloading_certificate_follows_its_files_and_keeps_the_last_good_one() {
        let (dir, signer) = ca();
        let issue = |id: &str| {
            let (key, request) = certificate_request(&edge(id), &[]).unwrap();
            let (_, signed) = signer
                .sign_edge(&request, "ferry", None, Duration::from_secs(60), SystemTime::now())
                .unwrap();
            (signed.pem, key)
        };
        let node = dir.path().join("node");
        let (cert, key) = issue("e1");
        let (cert_path, key_path) = write_node_files(&node, &cert, &key).unwrap();
        let reloading = ReloadingCert::load(&cert_path, &key_path).unwrap();
        let first = reloading.current();
        // A renewal: the next look (a second later at most) presents the new one.
        std::thread::sleep(Duration::from_millis(1100));
        let (cert2, key2) = issue("e1");
        write_node_files(&node, &cert2, &key2).unwrap();
        // File times can be coarse: make sure this one differs.
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options().write(true).open(&cert_path).unwrap().set_modified(later).unwrap();
        let second = reloading.current();
        assert_ne!(first.cert[0], second.cert[0], "the renewed certificate is presented");
        // A broken file is not taken.
        std::thread::sleep(Duration::from_millis(1100));
        std::fs::write(&cert_path, "garbage").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&cert_path)
            .unwrap()
            .set_modified(later + Duration::from_secs(5))
            .unwrap();
        assert_eq!(reloading.current().cert[0], second.cert[0]);
    }
}
