//! TLS for the relay protocol: server identities (given or self-signed), client trust
//! (a CA file, or no verification when explicitly asked), the quinn transport
//! settings we rely on, and dev CA generation for `ferry cert`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::ALPN;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

use crate::{Error, Result};

fn tls_err(e: impl std::fmt::Display) -> Error {
    Error::Tls(e.to_string())
}

/// Where a server's certificate comes from.
#[derive(Debug, Clone)]
pub enum ServerIdentity {
    /// PEM certificate chain and private key files.
    Files { cert: PathBuf, key: PathBuf },
    /// A fresh self-signed certificate for these names (dev only).
    SelfSigned { names: Vec<String> },
}

/// How a client checks the server.
#[derive(Debug, Clone)]
pub enum ClientTrust {
    /// Verify against the CA certificates in this PEM file.
    CaFile(PathBuf),
    /// Accept any certificate. Only with an explicit `--insecure`.
    Insecure,
}

/// Relay connection tuning shared by servers and clients.
#[derive(Debug, Clone, Copy)]
pub struct TransportTuning {
    /// Unacknowledged bytes queued per connection. Bounds edge memory per slow viewer.
    pub send_window: u64,
    /// Flow-control credit a receiver gives per stream.
    pub stream_receive_window: u32,
    /// Flow-control credit a receiver gives per connection. A viewer's credit is all
    /// an edge can push before it notices the viewer is slow, so viewers keep it small.
    pub receive_window: u32,
    /// Group streams a peer may have open at once.
    pub max_concurrent_uni_streams: u32,
    pub idle_timeout: Duration,
    pub keep_alive: Duration,
}

impl Default for TransportTuning {
    fn default() -> Self {
        Self {
            send_window: 4 * 1024 * 1024,
            stream_receive_window: 2 * 1024 * 1024,
            receive_window: 8 * 1024 * 1024,
            max_concurrent_uni_streams: 256,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
        }
    }
}

impl TransportTuning {
    /// Settings for viewers: about a second of a 8 Mbps stream in flight at most, so
    /// a viewer that cannot keep up is noticed (and skipped) by the edge quickly.
    pub fn viewer() -> Self {
        Self { stream_receive_window: 1024 * 1024, receive_window: 1024 * 1024, ..Self::default() }
    }

    /// For clients that fail over through routing: a dead edge is noticed after
    /// `idle` of silence (QUIC uses the smaller idle timeout of the two ends), and
    /// keep-alives keep a quiet but live connection open.
    pub fn failing_over(self, idle: Duration) -> Self {
        Self { idle_timeout: idle, keep_alive: idle / 4, ..self }
    }

    fn transport(&self) -> Result<Arc<quinn::TransportConfig>> {
        let mut t = quinn::TransportConfig::default();
        t.send_window(self.send_window)
            .stream_receive_window(self.stream_receive_window.into())
            .receive_window(quinn::VarInt::from_u32(self.receive_window))
            .max_concurrent_uni_streams(self.max_concurrent_uni_streams.into())
            .max_concurrent_bidi_streams(4u32.into())
            .keep_alive_interval(Some(self.keep_alive))
            .max_idle_timeout(Some(self.idle_timeout.try_into().map_err(tls_err)?));
        Ok(Arc::new(t))
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).map_err(|e| tls_err(format!("{}: {e}", path.display())))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| tls_err(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(tls_err(format!("{}: no certificates", path.display())));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).map_err(|e| tls_err(format!("{}: {e}", path.display())))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| tls_err(format!("{}: {e}", path.display())))?
        .ok_or_else(|| tls_err(format!("{}: no private key", path.display())))
}

/// A quinn server config for the relay protocol.
pub fn server_config(identity: &ServerIdentity, tuning: &TransportTuning) -> Result<quinn::ServerConfig> {
    server_config_for(identity, tuning, ALPN)
}

/// A quinn server config speaking protocol `alpn` (the raft transport has its own).
pub fn server_config_for(
    identity: &ServerIdentity,
    tuning: &TransportTuning,
    alpn: &[u8],
) -> Result<quinn::ServerConfig> {
    let (chain, key) = match identity {
        ServerIdentity::Files { cert, key } => (read_certs(cert)?, read_key(key)?),
        ServerIdentity::SelfSigned { names } => {
            let certified = rcgen::generate_simple_self_signed(names.clone()).map_err(tls_err)?;
            let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
            (vec![certified.cert.der().clone()], key.into())
        }
    };
    let mut tls = rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(tls_err)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = QuicServerConfig::try_from(tls).map_err(tls_err)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(tuning.transport()?);
    Ok(config)
}

/// A quinn client config for the relay protocol.
pub fn client_config(trust: &ClientTrust, tuning: &TransportTuning) -> Result<quinn::ClientConfig> {
    client_config_for(trust, tuning, ALPN)
}

/// A quinn client config speaking protocol `alpn`.
pub fn client_config_for(
    trust: &ClientTrust,
    tuning: &TransportTuning,
    alpn: &[u8],
) -> Result<quinn::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13]);
    let mut tls = match trust {
        ClientTrust::CaFile(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(path)? {
                roots.add(cert).map_err(tls_err)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        ClientTrust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification::new()?))
            .with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(tls_err)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(tuning.transport()?);
    Ok(config)
}

/// The server name to present for `host` (a DNS name or an IP literal).
pub fn server_name(host: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_owned()).map_err(tls_err)
}

/// Accepts any server certificate but still checks the handshake signature, so the
/// connection is encrypted (not authenticated). For `--insecure` dev use only.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl NoVerification {
    fn new() -> Result<Self> {
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
        Ok(Self(provider))
    }
}

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Files written by [`generate_cluster_certs`].
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Generates a cluster CA and one leaf certificate for `names` signed by it, and
/// writes them as PEM into `dir` (created if missing; keys are mode 0600).
pub fn generate_cluster_certs(dir: &Path, names: &[String]) -> Result<CertFiles> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate().map_err(tls_err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    ca_params.distinguished_name.push(DnType::CommonName, "Ferry cluster CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(tls_err)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let leaf_key = KeyPair::generate().map_err(tls_err)?;
    let mut leaf_params = CertificateParams::new(names.to_vec()).map_err(tls_err)?;
    leaf_params.distinguished_name.push(DnType::CommonName, names.first().map_or("ferry", String::as_str));
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).map_err(tls_err)?;

    let files = CertFiles {
        ca_cert: dir.join("ca.pem"),
        ca_key: dir.join("ca-key.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.ca_cert, ca_cert.pem())?;
    write_private(&files.ca_key, &ca_key.serialize_pem())?;
    std::fs::write(&files.cert, format!("{}{}", leaf.pem(), ca_cert.pem()))?;
    write_private(&files.key, &leaf_key.serialize_pem())?;
    Ok(files)
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path)?.write_all(contents.as_bytes())?;
    Ok(())
}
