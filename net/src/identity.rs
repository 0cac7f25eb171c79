//! Role-bound identities of cluster processes. A certificate from `ferry ca issue`
//! carries exactly one URI subject alternative name, `spiffe://CLUSTER/ROLE/NODE`:
//! the cluster id, the role (`voter` or `edge`) and the node (a voter's raft id, an
//! edge's id). Whoever accepts a certificate reads the identity from it and decides
//! by role; the CA signature alone says only "somebody this CA trusts".
//!
//! Pure functions over certificate bytes: no I/O, no clock (rustls checks validity).

use std::fmt;

use rustls::pki_types::CertificateDer;

/// What a process is allowed to be in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A control-plane voter: speaks raft.
    Voter,
    /// An edge: relays media, registers with the control plane.
    Edge,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Voter => "voter",
            Role::Edge => "edge",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "voter" => Some(Role::Voter),
            "edge" => Some(Role::Edge),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One process's identity, as its certificate names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub cluster: String,
    pub role: Role,
    /// A voter's raft id in decimal, or an edge's id.
    pub node: String,
}

/// The URI scheme of identities.
const SCHEME: &str = "spiffe://";

/// Why a peer's certificate (or a message it sent) was refused: the `reason` label of
/// the refusal counters. Stable strings; dashboards and alerts use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// No client certificate at all.
    NoCertificate,
    /// Not signed by this cluster's CA.
    UnknownCa,
    /// Past its `notAfter`.
    Expired,
    /// Before its `notBefore`.
    NotYetValid,
    /// Unreadable, wrong key usage, or any other certificate problem.
    BadCertificate,
    /// No `spiffe://` URI name: not issued for a role.
    NoIdentity,
    /// More than one URI name: ambiguous, refused.
    SeveralIdentities,
    /// Issued for another cluster id.
    OtherCluster,
    /// Issued for a role this port does not serve (an edge on the raft port).
    WrongRole,
    /// A voter certificate for another voter than the one dialed.
    WrongNode,
    /// A message claiming to come from another node than the certificate names.
    FromMismatch,
    /// A raft peer of another cluster: its cluster identity (set when a cluster is
    /// restored from a backup) is not this voter's.
    ClusterIdentity,
}

impl Refusal {
    pub const ALL: [Refusal; 12] = [
        Refusal::NoCertificate,
        Refusal::UnknownCa,
        Refusal::Expired,
        Refusal::NotYetValid,
        Refusal::BadCertificate,
        Refusal::NoIdentity,
        Refusal::SeveralIdentities,
        Refusal::OtherCluster,
        Refusal::WrongRole,
        Refusal::WrongNode,
        Refusal::FromMismatch,
        Refusal::ClusterIdentity,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::NoCertificate => "no_certificate",
            Refusal::UnknownCa => "unknown_ca",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::BadCertificate => "bad_certificate",
            Refusal::NoIdentity => "no_identity",
            Refusal::SeveralIdentities => "several_identities",
            Refusal::OtherCluster => "other_cluster",
            Refusal::WrongRole => "wrong_role",
            Refusal::WrongNode => "wrong_node",
            Refusal::FromMismatch => "from_mismatch",
            Refusal::ClusterIdentity => "cluster",
        }
    }

    /// The refusal behind a rustls certificate error.
    pub fn of_tls(error: &rustls::Error) -> Refusal {
        use rustls::CertificateError as C;
        match error {
            rustls::Error::NoCertificatesPresented => Refusal::NoCertificate,
            rustls::Error::InvalidCertificate(c) => match c {
                C::UnknownIssuer | C::BadSignature => Refusal::UnknownCa,
                C::Expired | C::ExpiredContext { .. } => Refusal::Expired,
                C::NotValidYet | C::NotValidYetContext { .. } => Refusal::NotYetValid,
                _ => Refusal::BadCertificate,
            },
            _ => Refusal::BadCertificate,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl Identity {
    pub fn new(cluster: &str, role: Role, node: &str) -> Result<Identity, String> {
        for (what, text) in [("cluster id", cluster), ("node", node)] {
            ferry_proto::NodeId::new(text).map_err(|e| format!("{what} {text:?}: {e}"))?;
        }
        Ok(Identity { cluster: cluster.to_owned(), role, node: node.to_owned() })
    }

    /// Voter `id` of `cluster`.
    pub fn voter(cluster: &str, id: u64) -> Identity {
        Identity { cluster: cluster.to_owned(), role: Role::Voter, node: id.to_string() }
    }

    /// `spiffe://CLUSTER/ROLE/NODE`.
    pub fn uri(&self) -> String {
        format!("{SCHEME}{}/{}/{}", self.cluster, self.role, self.node)
    }

    /// Parses [`Identity::uri`]; `None` for anything else.
    pub fn parse(uri: &str) -> Option<Identity> {
        let rest = uri.strip_prefix(SCHEME)?;
        let mut parts = rest.split('/');
        let (cluster, role, node) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        Identity::new(cluster, Role::parse(role)?, node).ok()
    }

    /// The raft id of a voter identity.
    pub fn voter_id(&self) -> Option<u64> {
        (self.role == Role::Voter).then(|| self.node.parse().ok()).flatten().filter(|id| *id > 0)
    }

    /// The identity a certificate names: its one URI subject alternative name.
    pub fn of_cert(cert: &CertificateDer<'_>) -> Result<Identity, Refusal> {
        use x509_parser::extensions::GeneralName;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|_| Refusal::BadCertificate)?;
        let san = parsed.subject_alternative_name().map_err(|_| Refusal::BadCertificate)?;
        let mut uris =
            san.iter().flat_map(|ext| ext.value.general_names.iter()).filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            });
        let first = uris.next().ok_or(Refusal::NoIdentity)?;
        if uris.next().is_some() {
            return Err(Refusal::SeveralIdentities);
        }
        Identity::parse(first).ok_or(Refusal::NoIdentity)
    }

    /// The identity of a connection's peer (its client or server certificate).
    pub fn of_peer(conn: &quinn::Connection) -> Result<Identity, Refusal> {
        let certs = conn
            .peer_identity()
            .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
            .ok_or(Refusal::NoCertificate)?;
        Identity::of_cert(certs.first().ok_or(Refusal::NoCertificate)?)
    }

    /// Accepts `self` as a voter of `cluster`; returns its raft id.
    pub fn check_voter(&self, cluster: &str) -> Result<u64, Refusal> {
        if self.cluster != cluster {
            return Err(Refusal::OtherCluster);
        }
        self.voter_id().ok_or(Refusal::WrongRole)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn cert_with(uris: &[&str]) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        for uri in uris {
            params.subject_alt_names.push(rcgen::SanType::URI((*uri).try_into().unwrap()));
        }
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn identities_round_trip_and_bad_ones_are_refused() {
        let id = Identity::voter("prod", 3);
        assert_eq!(id.uri(), "spiffe://prod/voter/3");
        assert_eq!(Identity::parse(&id.uri()), Some(id.clone()));
        assert_eq!(id.check_voter("prod"), Ok(3));
        assert_eq!(id.check_voter("staging"), Err(Refusal::OtherCluster));
        let edge = Identity::new("prod", Role::Edge, "edge-eu-1").unwrap();
        assert_eq!(edge.check_voter("prod"), Err(Refusal::WrongRole));
        for bad in [
            "https://prod/voter/3",
            "spiffe://prod/voter",
            "spiffe://prod/voter/3/x",
            "spiffe://prod/admin/3",
            "spiffe://pr od/voter/3",
            "spiffe:///voter/3",
        ] {
            assert_eq!(Identity::parse(bad), None, "{bad}");
        }
        assert_eq!(Identity::voter("prod", 0).check_voter("prod"), Err(Refusal::WrongRole));
    }

    #[test]
    fn a_certificate_names_exactly_one_identity() {
        let one = cert_with(&["spiffe://prod/voter/2"]);
        assert_eq!(Identity::of_cert(&one), Ok(Identity::voter("prod", 2)));
        let none = cert_with(&[]);
        assert_eq!(Identity::of_cert(&none), Err(Refusal::NoIdentity));
        let two = cert_with(&["spiffe://prod/voter/2", "spiffe://prod/voter/3"]);
        assert_eq!(Identity::of_cert(&two), Err(Refusal::SeveralIdentities));
        let other = cert_with(&["https://example.com/x"]);
        assert_eq!(Identity::of_cert(&other), Err(Refusal::NoIdentity));
        assert_eq!(Identity::of_cert(&CertificateDer::from(vec![1, 2, 3])), Err(Refusal::BadCertificate));
    }
}
