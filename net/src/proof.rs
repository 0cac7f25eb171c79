//! Proof that a control-plane request comes from a cluster member: the node signs the
//! request (method, path, time, body hash) with the key of its cluster certificate and
//! sends the certificate chain along; the control plane checks the chain against the
//! cluster CA, that the certificate names the node, the signature, and the time.
//!
//! The control-plane API is plain HTTP with an operator token; this is what makes
//! "a node without a cluster certificate cannot register" hold on top of it, without
//! TLS on the API. Certificates and signatures travel hex-encoded in headers.

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::keys::{read_certs, read_key};
use crate::tls::ClusterTls;

/// Hex DER certificates, leaf first, comma-separated.
pub const CERT_HEADER: &str = "ferry-node-cert";
/// Unix milliseconds when the request was signed.
pub const TIME_HEADER: &str = "ferry-node-time";
/// Hex ECDSA P-256 SHA-256 (ASN.1) signature of [`message`].
pub const SIGNATURE_HEADER: &str = "ferry-node-signature";
/// Largest clock difference accepted between signer and verifier.
pub const MAX_SKEW_MS: u64 = 5 * 60 * 1000;

/// Why a proof was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProofError {
    #[error("no cluster certificate proof (headers {CERT_HEADER}, {TIME_HEADER}, {SIGNATURE_HEADER})")]
    Missing,
    #[error("malformed proof: {0}")]
    Malformed(&'static str),
    #[error("the certificate is not from the cluster CA: {0}")]
    Untrusted(String),
    #[error("the certificate does not name node {0:?}")]
    WrongNode(String),
    #[error("the signature does not match")]
    BadSignature,
    #[error("the proof is {0} ms away from this voter's clock")]
    Stale(u64),
}

/// What is signed.
pub fn message(method: &str, path: &str, unix_ms: u64, body: &[u8]) -> Vec<u8> {
    let hash = ring::digest::digest(&ring::digest::SHA256, body);
    let mut m = format!("ferry-node-proof/1\n{method}\n{path}\n{unix_ms}\n").into_bytes();
    m.extend_from_slice(hex::encode(hash.as_ref()).as_bytes());
    m
}

/// Signs requests with a node's cluster certificate key.
pub struct Signer {
    chain: String,
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

impl Signer {
    /// Loads the certificate chain and its ECDSA P-256 key (as `ferry ca issue` writes).
    pub fn load(tls: &ClusterTls) -> crate::Result<Signer> {
        let chain: Vec<String> = read_certs(&tls.cert)?.iter().map(|c| hex::encode(c.as_ref())).collect();
        let key = read_key(&tls.key)?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, key.secret_der(), &rng).map_err(
            |e| crate::Error::tls(format!("{}: not an ECDSA P-256 key", tls.key.display()))(e.to_string()),
        )?;
        Ok(Signer { chain: chain.join(","), key, rng })
    }

    /// The proof headers for one request.
    pub fn headers(
        &self,
        method: &str,
        path: &str,
        unix_ms: u64,
        body: &[u8],
    ) -> crate::Result<Vec<(String, String)>> {
        let signature = self
            .key
            .sign(&self.rng, &message(method, path, unix_ms, body))
            .map_err(|e| crate::Error::tls("signing a registration")(e.to_string()))?;
        Ok(vec![
            (CERT_HEADER.into(), self.chain.clone()),
            (TIME_HEADER.into(), unix_ms.to_string()),
            (SIGNATURE_HEADER.into(), hex::encode(signature.as_ref())),
        ])
    }
}

/// Checks a proof for `node`: `header` looks a header up by (lowercase) name.
pub fn verify(
    cluster_ca: &[CertificateDer<'static>],
    header: impl Fn(&str) -> Option<String>,
    node: &str,
    method: &str,
    path: &str,
    body: &[u8],
    now_ms: u64,
) -> Result<(), ProofError> {
    let (Some(chain), Some(time), Some(signature)) =
        (header(CERT_HEADER), header(TIME_HEADER), header(SIGNATURE_HEADER))
    else {
        return Err(ProofError::Missing);
    };
    let time: u64 = time.trim().parse().map_err(|_| ProofError::Malformed("time"))?;
    let skew = now_ms.abs_diff(time);
    if skew > MAX_SKEW_MS {
        return Err(ProofError::Stale(skew));
    }
    let mut certs = chain.split(',').map(|c| hex::decode(c.trim()).ok().map(CertificateDer::from));
    let leaf = certs
        .next()
        .ok_or(ProofError::Malformed("no certificate"))?
        .ok_or(ProofError::Malformed("certificate"))?;
    let intermediates: Vec<CertificateDer<'static>> =
        certs.collect::<Option<Vec<_>>>().ok_or(ProofError::Malformed("certificate"))?;
    let signature = hex::decode(signature.trim()).ok().ok_or(ProofError::Malformed("signature"))?;

    let anchors: Vec<_> = cluster_ca
        .iter()
        .filter_map(|c| webpki::anchor_from_trusted_cert(c).ok().map(|a| a.to_owned()))
        .collect();
    let cert = webpki::EndEntityCert::try_from(&leaf).map_err(|e| ProofError::Untrusted(e.to_string()))?;
    let algs = [webpki::ring::ECDSA_P256_SHA256, webpki::ring::ECDSA_P384_SHA384];
    let now = UnixTime::since_unix_epoch(std::time::Duration::from_millis(now_ms));
    cert.verify_for_usage(&algs, &anchors, &intermediates, now, webpki::KeyUsage::client_auth(), None, None)
        .map_err(|e| ProofError::Untrusted(e.to_string()))?;
    let name = ServerName::try_from(node).map_err(|_| ProofError::WrongNode(node.to_owned()))?;
    cert.verify_is_valid_for_subject_name(&name).map_err(|_| ProofError::WrongNode(node.to_owned()))?;
    cert.verify_signature(webpki::ring::ECDSA_P256_SHA256, &message(method, path, time, body), &signature)
        .map_err(|_| ProofError::BadSignature)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

    use super::*;
    use crate::tls::{init_ca, issue_node_cert};

    fn cluster(_tag: &str) -> (tempfile::TempDir, Vec<CertificateDer<'static>>) {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let ca = read_certs(&dir.path().join("ca.pem")).unwrap();
        (dir, ca)
    }

    fn signer(dir: &tempfile::TempDir, node: &str) -> Signer {
        signer_for(dir, node, crate::tls::DEFAULT_CERT_LIFETIME)
    }

    fn signer_for(dir: &tempfile::TempDir, node: &str, valid_for: std::time::Duration) -> Signer {
        let (cert, key) = issue_node_cert(
            dir.path(),
            node,
            &crate::identity::Identity::new("ferry", crate::identity::Role::Edge, node).unwrap(),
            &[],
            valid_for,
            dir.path(),
        )
        .unwrap();
        Signer::load(&ClusterTls { ca: dir.path().join("ca.pem"), cert, key }).unwrap()
    }

    fn lookup(headers: Vec<(String, String)>) -> impl Fn(&str) -> Option<String> {
        move |name| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn a_certificate_proves_nothing_once_its_lifetime_is_over() {
        let (dir, ca) = cluster("expiry");
        let hour = std::time::Duration::from_secs(3600);
        let signer = signer_for(&dir, "edge-1", hour);
        let body = br#"{"region":"eu"}"#;
        let now = crate::time::unix_ms();
        let proof = |at: u64| lookup(signer.headers("PUT", "/v1/edges/edge-1", at, body).unwrap());
        assert_eq!(verify(&ca, proof(now), "edge-1", "PUT", "/v1/edges/edge-1", body, now), Ok(()));
        let later = now + 2 * 3600 * 1000;
        assert!(
            matches!(
                verify(&ca, proof(later), "edge-1", "PUT", "/v1/edges/edge-1", body, later),
                Err(ProofError::Untrusted(_))
            ),
            "an expired certificate is refused"
        );
    }

    #[test]
    fn a_member_proves_itself_and_nothing_else_passes() {
        let (dir, ca) = cluster("ok");
        let (rogue_dir, _) = cluster("rogue");
        let now = crate::time::unix_ms();
        let body = br#"{"region":"eu"}"#;
        let good = signer(&dir, "edge-1").headers("PUT", "/v1/edges/edge-1", now, body).unwrap();
        assert_eq!(
            verify(&ca, lookup(good.clone()), "edge-1", "PUT", "/v1/edges/edge-1", body, now + 1000),
            Ok(())
        );

        // Another node's name, another path or body, an old proof, no proof, a foreign CA.
        assert_eq!(
            verify(&ca, lookup(good.clone()), "edge-2", "PUT", "/v1/edges/edge-2", body, now),
            Err(ProofError::WrongNode("edge-2".into()))
        );
        assert_eq!(
            verify(&ca, lookup(good.clone()), "edge-1", "PUT", "/v1/edges/edge-1", b"{}", now),
            Err(ProofError::BadSignature)
        );
        assert_eq!(
            verify(
                &ca,
                lookup(good.clone()),
                "edge-1",
                "PUT",
                "/v1/edges/edge-1",
                body,
                now + MAX_SKEW_MS + 1
            ),
            Err(ProofError::Stale(MAX_SKEW_MS + 1))
        );
        assert_eq!(
            verify(&ca, |_| None, "edge-1", "PUT", "/v1/edges/edge-1", body, now),
            Err(ProofError::Missing)
        );
        let rogue = signer(&rogue_dir, "edge-1").headers("PUT", "/v1/edges/edge-1", now, body).unwrap();
        assert!(matches!(
            verify(&ca, lookup(rogue), "edge-1", "PUT", "/v1/edges/edge-1", body, now),
            Err(ProofError::Untrusted(_))
        ));
        let mut garbled = good;
        garbled[0].1 = "zz".into();
        assert!(matches!(
            verify(&ca, lookup(garbled), "edge-1", "PUT", "/v1/edges/edge-1", body, now),
            Err(ProofError::Malformed(_))
        ));
    }
}
