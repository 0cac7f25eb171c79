//! Who is calling, and what they may do: decisions only (no IO), so the whole policy
//! is a table in the tests.
//!
//! A caller is one of:
//! - the **bootstrap** token a voter starts with (`--token-file`): `admin`, never stored;
//! - a **named token** `ferry.<accessor>.<secret>`: the state holds its accessor, role
//!   and the SHA-256 of the secret; revoking it removes the entry, so every voter
//!   refuses it once the revocation is applied there;
//! - an **edge**, by the cluster certificate it presents (mutual TLS): its own edge id.

use axum::http::Method;
use ferry_net::identity::{Identity, Role};
use rustls::pki_types::CertificateDer;
use serde::Serialize;

use crate::state::{OperatorToken, TokenRole, BOOTSTRAP_ACCESSOR};

/// Prefix of named operator tokens.
pub const TOKEN_PREFIX: &str = "ferry.";

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Any principal: reads.
    Read,
    /// An edge speaking for itself, or an operator (origin claims and releases, drains:
    /// an edge that is shutting down drains itself).
    EdgeOrOperator,
    /// An edge registering itself, or an admin.
    EdgeOrAdmin,
    /// Operators and admins: rollouts, drains, streams.
    Operate,
    /// Admins: voters and tokens.
    Admin,
    /// Edge certificates: an edge renewing its own, a join-token holder bootstrapping
    /// one, or an admin.
    Certificate,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Caller {
    /// `bootstrap`, `token:NAME` or `edge:ID`.
    pub principal: String,
    /// `admin`, `operator`, `viewer` or `edge`.
    pub role: &'static str,
    /// The client's address.
    pub source: String,
    /// The edge id, for edges.
    #[serde(skip)]
    pub edge: Option<String>,
}

impl Caller {
    pub fn bootstrap(source: String) -> Caller {
        Caller { principal: BOOTSTRAP_ACCESSOR.to_owned(), role: "admin", source, edge: None }
    }

    pub fn token(token: &OperatorToken, source: String) -> Caller {
        Caller {
            principal: format!("token:{}", token.accessor),
            role: token.role.as_str(),
            source,
            edge: None,
        }
    }

    /// A holder of the join token: may ask for an edge certificate and nothing else.
    pub fn joiner(source: String) -> Caller {
        Caller { principal: "join-token".to_owned(), role: "join", source, edge: None }
    }

    pub fn edge(id: &str, source: String) -> Caller {
        Caller { principal: format!("edge:{id}"), role: "edge", source, edge: Some(id.to_owned()) }
    }

    fn token_role(&self) -> Option<TokenRole> {
        TokenRole::parse(self.role)
    }

    /// Whether this caller may call a route that needs `need`.
    pub fn may(&self, need: Need) -> bool {
        let role = self.token_role();
        let at_least = |min: TokenRole| role.is_some_and(|r| r >= min);
        let joiner = self.role == "join";
        match need {
            Need::Read => !joiner,
            Need::Certificate => joiner || self.edge.is_some() || at_least(TokenRole::Admin),
            Need::EdgeOrOperator => self.edge.is_some() || at_least(TokenRole::Operator),
            Need::EdgeOrAdmin => self.edge.is_some() || at_least(TokenRole::Admin),
            Need::Operate => at_least(TokenRole::Operator),
            Need::Admin => at_least(TokenRole::Admin),
        }
    }

    /// Whether this caller may act on edge `id` as an edge would (itself, or any edge
    /// for an operator).
    pub fn speaks_for_edge(&self, id: &str) -> bool {
        match &self.edge {
            Some(own) => own == id,
            None => true,
        }
    }
}

/// What `method` on the route `path` (the router's pattern, e.g. `/v1/edges/{id}`)
/// needs. Routes not listed need [`Need::Admin`].
pub fn need(method: &Method, path: &str) -> Need {
    let read = *method == Method::GET || *method == Method::HEAD;
    match path {
        // A backup holds every token's hash and the whole audit log: admins only.
        "/v1/tokens" | "/v1/tokens/{accessor}" | "/v1/cluster/members/{id}" | "/v1/snapshot" => Need::Admin,
        "/v1/certificates" => Need::Certificate,
        _ if read => Need::Read,
        "/v1/edges/{id}" if *method == Method::PUT => Need::EdgeOrAdmin,
        "/v1/origins/{*name}" | "/v1/edges/{id}/drain" => Need::EdgeOrOperator,
        "/v1/edges/{id}" | "/v1/streams/{*name}" => Need::Operate,
        p if p.starts_with("/v1/rollouts") => Need::Operate,
        _ => Need::Admin,
    }
}

/// The edge a verified client certificate names, if it is an edge of `cluster`
/// (`Ok(None)`: a voter's certificate, which is no API caller: it must bring a token).
/// Certificates of another cluster, or without one identity, are refused.
pub fn edge_of_cert(cert: &CertificateDer<'_>, cluster: &str) -> Result<Option<String>, String> {
    let identity =
        Identity::of_cert(cert).map_err(|r| format!("client certificate refused: {}", r.label()))?;
    if identity.cluster != cluster {
        return Err(format!("client certificate of cluster {:?}, not {cluster:?}", identity.cluster));
    }
    Ok((identity.role == Role::Edge).then(|| identity.node.clone()))
}

/// Splits a named token into accessor and secret (`None`: not a named token).
pub fn split_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (accessor, secret) = rest.rsplit_once('.')?;
    (!accessor.is_empty() && !secret.is_empty()).then_some((accessor, secret))
}

/// Lowercase hex SHA-256 of a token's secret.
pub fn secret_digest(secret: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()))
}

/// A new token secret: 32 random bytes, hex.
pub fn new_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// Compares without leaking where the first difference is.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a bearer token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    Unknown,
}

/// The caller a bearer token names: the bootstrap token, or a named token found in
/// `tokens` (via `lookup`) whose secret matches.
pub fn authenticate(
    given: &str,
    bootstrap: &str,
    join: Option<&str>,
    lookup: impl FnOnce(&str) -> Option<OperatorToken>,
    source: String,
) -> Result<Caller, Refused> {
    if let Some((accessor, secret)) = split_token(given) {
        let token = lookup(accessor).ok_or(Refused::Unknown)?;
        let digest = secret_digest(secret);
        return if constant_time_eq(digest.as_bytes(), token.secret_sha256.as_bytes()) {
            Ok(Caller::token(&token, source))
        } else {
            Err(Refused::Unknown)
        };
    }
    if !bootstrap.is_empty() && constant_time_eq(given.as_bytes(), bootstrap.as_bytes()) {
        return Ok(Caller::bootstrap(source));
    }
    if let Some(join) = join.filter(|j| !j.is_empty()) {
        if constant_time_eq(given.as_bytes(), join.as_bytes()) {
            return Ok(Caller::joiner(source));
        }
    }
    Err(Refused::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(accessor: &str, role: TokenRole, secret: &str) -> OperatorToken {
        OperatorToken {
            accessor: accessor.to_owned(),
            role,
            secret_sha256: secret_digest(secret),
            created_at_ms: 0,
            created_by: "bootstrap".to_owned(),
        }
    }

    fn caller(role: &str) -> Caller {
        match role {
            "edge" => Caller::edge("e1", String::new()),
            "bootstrap" => Caller::bootstrap(String::new()),
            role => {
                let role = TokenRole::parse(role).unwrap();
                Caller::token(&token("t", role, "s"), String::new())
            }
        }
    }

    #[test]
    fn each_role_may_call_what_its_table_row_says() {
        // (method, route, [viewer, operator, admin, edge]); the join token only asks
        // for certificates.
        let table: &[(Method, &str, [bool; 4])] = &[
            (Method::GET, "/v1/cluster", [true, true, true, true]),
            (Method::GET, "/v1/streams", [true, true, true, true]),
            (Method::GET, "/v1/audit", [true, true, true, true]),
            (Method::GET, "/v1/watch", [true, true, true, true]),
            (Method::PUT, "/v1/edges/{id}", [false, false, true, true]),
            (Method::DELETE, "/v1/edges/{id}", [false, true, true, false]),
            (Method::POST, "/v1/edges/{id}/drain", [false, true, true, true]),
            (Method::PUT, "/v1/streams/{*name}", [false, true, true, false]),
            (Method::PUT, "/v1/origins/{*name}", [false, true, true, true]),
            (Method::DELETE, "/v1/origins/{*name}", [false, true, true, true]),
            (Method::POST, "/v1/rollouts", [false, true, true, false]),
            (Method::POST, "/v1/rollouts/{id}/level", [false, true, true, false]),
            (Method::POST, "/v1/cluster/members/{id}", [false, false, true, false]),
            (Method::DELETE, "/v1/cluster/members/{id}", [false, false, true, false]),
            (Method::GET, "/v1/tokens", [false, false, true, false]),
            (Method::GET, "/v1/snapshot", [false, false, true, false]),
            (Method::POST, "/v1/tokens", [false, false, true, false]),
            (Method::DELETE, "/v1/tokens/{accessor}", [false, false, true, false]),
            (Method::POST, "/v1/some/new/route", [false, false, true, false]),
            (Method::POST, "/v1/certificates", [false, false, true, true]),
        ];
        for (method, path, allowed) in table {
            for (role, allowed) in ["viewer", "operator", "admin", "edge"].iter().zip(allowed) {
                let need = need(method, path);
                assert_eq!(caller(role).may(need), *allowed, "{role} {method} {path} ({need:?})");
            }
            assert_eq!(caller("bootstrap").may(need(method, path)), allowed[2], "bootstrap is admin");
            let joiner = Caller::joiner(String::new()).may(need(method, path));
            assert_eq!(joiner, *path == "/v1/certificates", "join token: {method} {path}");
        }
    }

    #[test]
    fn edges_speak_only_for_themselves() {
        assert!(caller("edge").speaks_for_edge("e1"));
        assert!(!caller("edge").speaks_for_edge("e2"));
        assert!(caller("operator").speaks_for_edge("e2"));
    }

    #[test]
    fn tokens_authenticate_by_secret_and_only_while_they_exist() {
        let stored = token("ci", TokenRole::Operator, "s3cret");
        let find = |a: &str| (a == "ci").then(|| stored.clone());
        let ok =
            authenticate("ferry.ci.s3cret", "boot-token-0123456", None, find, "1.2.3.4:5".into()).unwrap();
        assert_eq!(
            (ok.principal.as_str(), ok.role, ok.source.as_str()),
            ("token:ci", "operator", "1.2.3.4:5")
        );
        assert_eq!(authenticate("ferry.ci.wrong", "boot", None, find, String::new()), Err(Refused::Unknown));
        assert_eq!(
            authenticate("ferry.gone.s3cret", "boot", None, find, String::new()),
            Err(Refused::Unknown)
        );
        assert_eq!(authenticate("ferry.ci.", "boot", None, find, String::new()), Err(Refused::Unknown));
        let boot =
            authenticate("boot-token-0123456", "boot-token-0123456", None, |_| None, String::new()).unwrap();
        assert_eq!((boot.principal.as_str(), boot.role), ("bootstrap", "admin"));
        assert_eq!(authenticate("", "", Some(""), |_| None, String::new()), Err(Refused::Unknown));
        let join = authenticate(
            "join-0123456789abcdef",
            "boot",
            Some("join-0123456789abcdef"),
            |_| None,
            String::new(),
        );
        assert_eq!(join.map(|c| c.role), Ok("join"));
        // Accessors may contain dots; the secret is what follows the last one.
        assert_eq!(split_token("ferry.team.ci.abc"), Some(("team.ci", "abc")));
    }
}
