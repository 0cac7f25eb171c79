//! TLS for the relay protocol: server identities (given or self-signed), client trust
//! (a CA file, or no verification when explicitly asked), the quinn transport
//! settings we rely on, and dev CA generation for `ferry cert`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::ALPN;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::DistinguishedName;

use crate::identity::{Identity, Refusal};
use crate::keys::{read_certs, write_private, ReloadingCert};
use crate::{Error, Result};

/// A problem with the contents of a PEM file.
/// Where a server's certificate comes from.
#[derive(Debug, Clone)]
pub enum ServerIdentity {
    /// PEM certificate chain and private key files.
    Files { cert: PathBuf, key: PathBuf },
    /// A fresh self-signed certificate for these names (dev only).
    SelfSigned { names: Vec<String> },
}

/// How a client checks the server (and, inside the cluster, proves who it is).
#[derive(Debug, Clone)]
pub enum ClientTrust {
    /// Verify against the CA certificates in this PEM file.
    CaFile(PathBuf),
    /// Mutual TLS inside the cluster: verify the server against the cluster CA and
    /// present this node's certificate (issued by `ferry ca issue`).
    Cluster(ClusterTls),
    /// Accept any certificate. Only with an explicit `--insecure`.
    Insecure,
}

/// A node's cluster credentials: the cluster CA, and its own certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Whether a server asks clients for a certificate.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// No client certificates (viewer-facing only).
    None,
    /// Clients may present a certificate; one that does must chain to this CA. The
    /// session then decides what an unauthenticated client may do (see
    /// [`peer_has_cluster_cert`]).
    Optional(PathBuf),
    /// Every client must present a certificate chaining to this CA that names a voter
    /// of `cluster` ([`Identity`]); anything else fails the handshake and is counted in
    /// `refusals` (the raft transport).
    Voters { ca: PathBuf, cluster: String, refusals: PeerRefusals },
}

/// Peers refused, by [`Refusal`] reason; clones share the counts.
#[derive(Debug, Clone, Default)]
pub struct PeerRefusals(pub Family<ReasonLabel, Counter>);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

impl PeerRefusals {
    pub fn count(&self, refusal: Refusal) {
        self.0.get_or_create(&ReasonLabel { reason: refusal.label() }).inc();
    }

    /// Registers the counter as `name`, every reason at zero so alerts see the series
    /// before the first refusal.
    pub fn register(&self, registry: &mut Registry, name: &str, help: &str) {
        for refusal in Refusal::ALL {
            let _ = self.0.get_or_create(&ReasonLabel { reason: refusal.label() });
        }
        registry.register(name, help, self.0.clone());
    }
}

/// Checks client certificates against the cluster CA (rustls' WebPKI verifier: chain,
/// validity, key usage), then that the certificate names a voter of the cluster.
#[derive(Debug)]
struct VoterVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
    cluster: String,
    refusals: PeerRefusals,
}

impl ClientCertVerifier for VoterVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        if let Err(e) = self.webpki.verify_client_cert(end_entity, intermediates, now) {
            self.refusals.count(Refusal::of_tls(&e));
            return Err(e);
        }
        match Identity::of_cert(end_entity).and_then(|id| id.check_voter(&self.cluster)) {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(refusal) => {
                self.refusals.count(refusal);
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Whether the peer of `conn` presented a client certificate. With
/// [`ClientAuth::Optional`] or [`ClientAuth::Voters`] rustls has verified it against the
/// cluster CA, so presence means a cluster member.
pub fn peer_has_cluster_cert(conn: &quinn::Connection) -> bool {
    conn.peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .is_some_and(|certs| !certs.is_empty())
}

/// A verifier of certificates that must chain to the cluster CA in `ca` (for checks
/// outside a handshake: signed gossip pongs).
pub fn cluster_client_verifier(ca: &Path) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    rustls::server::WebPkiClientVerifier::builder(roots(ca)?)
        .build()
        .map_err(Error::tls("the cluster certificate verifier"))
}

fn roots(ca: &Path) -> Result<Arc<rustls::RootCertStore>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(ca)? {
        roots.add(cert).map_err(Error::tls(format!("adding a CA certificate of {}", ca.display())))?;
    }
    Ok(Arc::new(roots))
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
        Ok(Arc::new(self.transport_config()?))
    }

    /// The transport with the congestion controller `congestion` (quinn's default is
    /// cubic).
    pub fn transport_with(
        &self,
        congestion: ferry_proto::rollout::Congestion,
    ) -> Result<Arc<quinn::TransportConfig>> {
        use ferry_proto::rollout::Congestion;
        use quinn::congestion::{BbrConfig, CubicConfig, NewRenoConfig};
        let mut t = self.transport_config()?;
        match congestion {
            Congestion::Cubic => t.congestion_controller_factory(Arc::new(CubicConfig::default())),
            Congestion::Bbr => t.congestion_controller_factory(Arc::new(BbrConfig::default())),
            Congestion::NewReno => t.congestion_controller_factory(Arc::new(NewRenoConfig::default())),
        };
        Ok(Arc::new(t))
    }

    fn transport_config(&self) -> Result<quinn::TransportConfig> {
        let mut t = quinn::TransportConfig::default();
        t.send_window(self.send_window)
            .stream_receive_window(self.stream_receive_window.into())
            .receive_window(quinn::VarInt::from_u32(self.receive_window))
            .max_concurrent_uni_streams(self.max_concurrent_uni_streams.into())
            .max_concurrent_bidi_streams(4u32.into())
            .keep_alive_interval(Some(self.keep_alive))
            .max_idle_timeout(Some(
                self.idle_timeout.try_into().map_err(Error::tls("the QUIC idle timeout"))?,
            ));
        Ok(t)
    }
}

/// The certificates in a PEM file (e.g. the cluster CA).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    read_certs(path)
}

/// Names a dev self-signed certificate covers.
pub fn default_names() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
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
    server_config_with(identity, tuning, alpn, &ClientAuth::None)
}

/// A quinn server config that also asks clients for certificates per `client_auth`.
pub fn server_config_with(
    identity: &ServerIdentity,
    tuning: &TransportTuning,
    alpn: &[u8],
    client_auth: &ClientAuth,
) -> Result<quinn::ServerConfig> {
    server_config_alpns(identity, tuning, &[alpn], client_auth)
}

/// [`server_config_with`] for several protocols, in the server's order of preference
/// (TLS picks the first of them the client offers).
pub fn server_config_alpns(
    identity: &ServerIdentity,
    tuning: &TransportTuning,
    alpns: &[&[u8]],
    client_auth: &ClientAuth,
) -> Result<quinn::ServerConfig> {
    // Files are read again when they change (a renewed certificate).
    let (chain_and_key, reloading) = match identity {
        ServerIdentity::Files { cert, key } => (None, Some(ReloadingCert::load(cert, key)?)),
        ServerIdentity::SelfSigned { names } => {
            let certified = rcgen::generate_simple_self_signed(names.clone())
                .map_err(Error::tls("generating a self-signed certificate"))?;
            let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
            (Some((vec![certified.cert.der().clone()], key.into())), None)
        }
    };
    let builder = rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13]);
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional(ca) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder(roots(ca)?)
                .allow_unauthenticated()
                .build()
                .map_err(Error::tls("the client certificate verifier"))?,
        ),
        ClientAuth::Voters { ca, cluster, refusals } => {
            builder.with_client_cert_verifier(Arc::new(VoterVerifier {
                webpki: rustls::server::WebPkiClientVerifier::builder(roots(ca)?)
                    .build()
                    .map_err(Error::tls("the client certificate verifier"))?,
                cluster: cluster.clone(),
                refusals: refusals.clone(),
            }))
        }
    };
    let mut tls = match chain_and_key {
        Some((chain, key)) => {
            builder.with_single_cert(chain, key).map_err(Error::tls("the server certificate and key"))?
        }
        None => builder.with_cert_resolver(reloading.ok_or_else(|| Error::Config("no certificate".into()))?),
    };
    tls.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    tls.max_early_data_size = 0;
    let crypto = QuicServerConfig::try_from(tls).map_err(Error::tls("the QUIC server TLS configuration"))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(tuning.transport()?);
    Ok(config)
}

/// A rustls config for an HTTPS server (TLS 1.2 and 1.3, ALPN `http/1.1`) with the node
/// certificate of `cluster`; clients may present a certificate from its CA (checked,
/// then available as the connection's peer certificates) or none.
pub fn https_server_config(cluster: &ClusterTls) -> Result<Arc<rustls::ServerConfig>> {
    let verifier = rustls::server::WebPkiClientVerifier::builder(roots(&cluster.ca)?)
        .allow_unauthenticated()
        .build()
        .map_err(Error::tls("the client certificate verifier"))?;
    let mut tls = rustls::ServerConfig::builder_with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(ReloadingCert::load(&cluster.cert, &cluster.key)?);
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
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
    client_config_alpns(trust, tuning, &[alpn])
}

/// [`client_config_for`] offering several protocols.
pub fn client_config_alpns(
    trust: &ClientTrust,
    tuning: &TransportTuning,
    alpns: &[&[u8]],
) -> Result<quinn::ClientConfig> {
    let mut tls = rustls_client_config(trust, &[&rustls::version::TLS13])?;
    tls.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    let crypto = QuicClientConfig::try_from(tls).map_err(Error::tls("the QUIC client TLS configuration"))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(tuning.transport()?);
    Ok(config)
}

/// A rustls client config (no ALPN) that checks servers per `trust`, for the TLS
/// `versions` given (QUIC: 1.3 only; HTTPS: 1.2 and 1.3).
pub fn rustls_client_config(
    trust: &ClientTrust,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_protocol_versions(versions);
    Ok(match trust {
        ClientTrust::CaFile(path) => builder.with_root_certificates(roots(path)?).with_no_client_auth(),
        // Read again when the files change (a renewed certificate).
        ClientTrust::Cluster(c) => builder
            .with_root_certificates(roots(&c.ca)?)
            .with_client_cert_resolver(ReloadingCert::load(&c.cert, &c.key)?),
        ClientTrust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification::new()))
            .with_no_client_auth(),
    })
}

/// The server name to present for `host` (a DNS name or an IP literal).
pub fn server_name(host: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_owned())
        .map_err(|_| Error::Config(format!("{host:?} is not a valid host name or IP address")))
}

/// Accepts any server certificate but still checks the handshake signature, so the
/// connection is encrypted (not authenticated). For `--insecure` dev use only.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl NoVerification {
    fn new() -> Self {
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
        Self(provider)
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
    let (ca_cert, ca_key) = write_ca(dir)?;
    let node = names.first().map_or("ferry", String::as_str);
    let (cert, key) = issue_into(
        dir,
        node,
        None,
        names,
        DEFAULT_CERT_LIFETIME,
        &dir.join("cert.pem"),
        &dir.join("key.pem"),
    )?;
    Ok(CertFiles { ca_cert, ca_key, cert, key })
}

/// The CA's fixed subject; issuing rebuilds the issuer from it and the CA key.
const CA_NAME: &str = "Ferry cluster CA";

pub(crate) fn ca_params() -> Result<rcgen::CertificateParams> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(Error::tls("the CA parameters"))?;
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

fn write_ca(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).map_err(Error::io(format!("cannot create {}", dir.display())))?;
    let key = rcgen::KeyPair::generate().map_err(Error::tls("generating the CA key"))?;
    let cert = ca_params()?.self_signed(&key).map_err(Error::tls("signing the CA certificate"))?;
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    std::fs::write(&cert_path, cert.pem())
        .map_err(Error::io(format!("cannot write {}", cert_path.display())))?;
    write_private(&key_path, &key.serialize_pem())?;
    Ok((cert_path, key_path))
}

/// `ferry ca init`: a new cluster CA in `dir` (`ca.pem`, `ca-key.pem`). Refuses to
/// overwrite an existing CA: every node certificate depends on it.
pub fn init_ca(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    if dir.join("ca-key.pem").exists() || dir.join("ca.pem").exists() {
        return Err(Error::Config(format!("{} already holds a CA; not overwriting it", dir.display())));
    }
    write_ca(dir)
}

/// How long a node certificate is valid unless told otherwise (a year).
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// A certificate is valid from this long before it is issued: clocks of the cluster's
/// machines may differ a little.
pub(crate) const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// `ferry ca issue`: a certificate for cluster node `node` with the role-bound
/// `identity` (its one URI name), valid as a server (for `names` and the node id) and
/// as a client for `valid_for` from now, signed by the CA in `ca_dir`. Writes
/// `{out_dir}/{node}.pem` (leaf then CA) and `{out_dir}/{node}-key.pem`.
pub fn issue_node_cert(
    ca_dir: &Path,
    node: &str,
    identity: &Identity,
    names: &[String],
    valid_for: Duration,
    out_dir: &Path,
) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(out_dir).map_err(Error::io(format!("cannot create {}", out_dir.display())))?;
    issue_into(
        ca_dir,
        node,
        Some(identity),
        names,
        valid_for,
        &out_dir.join(format!("{node}.pem")),
        &out_dir.join(format!("{node}-key.pem")),
    )
}

fn issue_into(
    ca_dir: &Path,
    node: &str,
    identity: Option<&Identity>,
    names: &[String],
    valid_for: Duration,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(PathBuf, PathBuf)> {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair};
    let read = |name: &str| {
        let path = ca_dir.join(name);
        std::fs::read_to_string(&path).map_err(Error::io(format!("cannot read {}", path.display())))
    };
    let ca_key = KeyPair::from_pem(&read("ca-key.pem")?).map_err(Error::tls("the CA key"))?;
    let ca_pem = read("ca.pem")?;
    let issuer = Issuer::new(ca_params()?, &ca_key);
    let mut sans: Vec<String> = names.to_vec();
    if !sans.iter().any(|n| n == node) {
        sans.push(node.to_owned());
    }
    let key = KeyPair::generate().map_err(Error::tls("generating a node key"))?;
    let mut params = CertificateParams::new(sans).map_err(Error::tls("the certificate names"))?;
    if let Some(identity) = identity {
        let uri = identity.uri().try_into().map_err(Error::tls("the certificate's identity"))?;
        params.subject_alt_names.push(rcgen::SanType::URI(uri));
    }
    params.distinguished_name.push(DnType::CommonName, node);
    let now = time::OffsetDateTime::now_utc();
    let lifetime = time::Duration::try_from(valid_for)
        .map_err(|_| Error::Config(format!("a certificate lifetime of {valid_for:?} is too long")))?;
    params.not_before = now - time::Duration::try_from(CLOCK_SKEW).unwrap_or(time::Duration::ZERO);
    params.not_after = now
        .checked_add(lifetime)
        .ok_or_else(|| Error::Config(format!("a certificate lifetime of {valid_for:?} is too long")))?;
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).map_err(Error::tls("signing the node certificate"))?;
    std::fs::write(cert_path, format!("{}{ca_pem}", cert.pem()))
        .map_err(Error::io(format!("cannot write {}", cert_path.display())))?;
    write_private(key_path, &key.serialize_pem())?;
    Ok((cert_path.to_owned(), key_path.to_owned()))
}
