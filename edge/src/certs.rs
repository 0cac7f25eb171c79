//! An edge's own certificate, issued by the control plane: the first one for the join
//! token, then renewed with the current one at two thirds of its lifetime. The files
//! are replaced atomically; every TLS configuration of the edge reads them again at
//! its next handshake (`ferry_net::certs::ReloadingCert`), so sessions stay up.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use ferry_net::certs::{certificate_request, file_not_after, renew_at, write_node_files};
use ferry_net::http::{join, HttpClient};
use ferry_net::identity::Identity;
use ferry_net::tls::{ClientTrust, ClusterTls};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// Longest wait before trying a failed renewal again.
const RETRY_MAX: Duration = Duration::from_secs(10);
/// How long one request for a certificate may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where an edge's certificate comes from and goes to.
#[derive(Debug, Clone)]
pub struct CertIssuance {
    /// Control-plane API URLs (`https://`).
    pub control_plane: Vec<String>,
    /// The cluster CA certificate (verifies the voters).
    pub ca: PathBuf,
    /// Where `node.pem` and `node-key.pem` are kept.
    pub dir: PathBuf,
    pub identity: Identity,
    /// DNS names and IPs the certificate names besides the identity.
    pub names: Vec<String>,
}

impl CertIssuance {
    /// The edge's cluster TLS files.
    pub fn cluster_tls(&self) -> ClusterTls {
        ClusterTls {
            ca: self.ca.clone(),
            cert: self.dir.join("node.pem"),
            key: self.dir.join("node-key.pem"),
        }
    }

    /// The certificate on disk, if it is still valid; otherwise a new one for
    /// `join_token`. Returns when the certificate in use ends.
    pub async fn ensure(&self, join_token: &str) -> Result<SystemTime> {
        let cert = self.dir.join("node.pem");
        if let Some(not_after) = file_not_after(&cert).filter(|t| *t > SystemTime::now()) {
            tracing::info!(cert = %cert.display(), "using the edge certificate on disk");
            return Ok(not_after);
        }
        if join_token.is_empty() {
            return Err(Error::Config(format!(
                "no valid certificate in {} and no join token to get one (--join-token-file)",
                self.dir.display()
            )));
        }
        let http = HttpClient::new(Some(&ClientTrust::CaFile(self.ca.clone())))?;
        self.request(&http, join_token).await
    }

    /// Asks the control plane to sign a new key's request (authenticated by `bearer`,
    /// or by the client's certificate when empty), and installs the result.
    async fn request(&self, http: &HttpClient, bearer: &str) -> Result<SystemTime> {
        let (key, csr) = certificate_request(&self.identity, &self.names)?;
        let body = serde_json::json!({ "csr": csr });
        let mut last = None;
        for url in &self.control_plane {
            let sent = http
                .post(&join(url, "/v1/certificates"))
                .bearer(bearer)
                .json(&body)
                .timeout(REQUEST_TIMEOUT)
                .send()
                .await;
            let response = match sent {
                Ok(r) if r.ok() => r,
                Ok(r) => {
                    let text = r.text();
                    last = Some(Error::ControlPlane {
                        path: "/v1/certificates".into(),
                        status: r.status,
                        body: text,
                    });
                    continue;
                }
                Err(e) => {
                    last = Some(e.into());
                    continue;
                }
            };
            let answer = response.json();
            let pem = answer.get("certificate").and_then(|c| c.as_str()).unwrap_or_default();
            let leaf = rustls_pemfile::certs(&mut pem.as_bytes()).next().and_then(|c| c.ok());
            let named = leaf.as_ref().and_then(|c| Identity::of_cert(c).ok());
            if named.as_ref() != Some(&self.identity) {
                return Err(Error::Config(format!(
                    "the control plane at {url} answered a certificate for {named:?}, not {}",
                    self.identity
                )));
            }
            let not_after =
                leaf.as_ref().and_then(ferry_net::certs::not_after).unwrap_or(SystemTime::UNIX_EPOCH);
            write_node_files(&self.dir, pem, &key)?;
            tracing::info!(identity = %self.identity, ?not_after, "edge certificate installed");
            return Ok(not_after);
        }
        Err(last.unwrap_or_else(|| Error::Config("no control-plane URL to ask for a certificate".into())))
    }

    /// Renews the certificate at two thirds of what is left of it, over and over, until
    /// `cancel`. A failed renewal is tried again (at most every 10 s) until it works or
    /// the certificate has ended.
    pub async fn renew_loop(
        self,
        mut not_after: SystemTime,
        metrics: CertMetrics,
        cancel: CancellationToken,
    ) {
        loop {
            metrics.set_expiry(not_after);
            let due = renew_at(SystemTime::now(), not_after);
            let wait = due.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            not_after = loop {
                let renewed = match HttpClient::new(Some(&ClientTrust::Cluster(self.cluster_tls()))) {
                    Ok(http) => self.request(&http, "").await,
                    Err(e) => Err(e.into()),
                };
                match renewed {
                    Ok(next) => {
                        metrics.count("ok");
                        break next;
                    }
                    Err(e) => {
                        metrics.count("error");
                        let left = not_after.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
                        tracing::warn!(error = %ferry_net::Chain(&e), ?left, "renewing the edge certificate failed");
                        let pause = (left / 10).clamp(Duration::from_millis(500), RETRY_MAX);
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(pause) => {}
                        }
                    }
                }
            };
        }
    }
}

/// `ferry_certificate_renewals_total{result}` and
/// `ferry_certificate_expiry_timestamp_seconds`.
#[derive(Debug, Clone, Default)]
pub struct CertMetrics {
    renewals: Family<ResultLabel, Counter>,
    expiry: Gauge,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

impl CertMetrics {
    pub fn register(&self, registry: &mut Registry) {
        for result in ["ok", "error"] {
            let _ = self.renewals.get_or_create(&ResultLabel { result });
        }
        registry.register(
            "ferry_certificate_renewals",
            "Renewals of this edge's certificate by the control plane, by result",
            self.renewals.clone(),
        );
        registry.register(
            "ferry_certificate_expiry_timestamp_seconds",
            "When this edge's certificate ends (Unix time)",
            self.expiry.clone(),
        );
    }

    fn count(&self, result: &'static str) {
        self.renewals.get_or_create(&ResultLabel { result }).inc();
    }

    fn set_expiry(&self, at: SystemTime) {
        let secs = at.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        self.expiry.set(i64::try_from(secs).unwrap_or(i64::MAX));
    }
}
