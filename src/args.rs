//! Flags shared by several commands: how clients trust edges, who a session is, and
//! routing through the control plane.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use ferry_client::routed::RouteOptions;
use ferry_net::dial::SessionHello;
use ferry_net::http::HttpClient;
use ferry_net::tls::ClientTrust;
use ferry_proto::NodeId;

use crate::units;

/// TLS trust for clients.
#[derive(Debug, Clone, Args)]
pub struct TrustArgs {
    /// CA certificate(s) (PEM) to verify the edge with.
    #[arg(long, env = "FERRY_CA_FILE", value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Skip certificate verification (dev only; traffic stays encrypted).
    #[arg(long, env = "FERRY_INSECURE")]
    pub insecure: bool,
}

impl TrustArgs {
    /// The HTTP client for `https://` WHIP/WHEP and control-plane URLs: verified with
    /// `--ca-file` (or not at all with `--insecure`); plain `http://` needs neither.
    pub fn http(&self) -> anyhow::Result<HttpClient> {
        match (&self.ca_file, self.insecure) {
            (None, false) => Ok(HttpClient::plain()),
            _ => Ok(HttpClient::new(Some(&self.trust()?))?),
        }
    }

    pub fn trust(&self) -> anyhow::Result<ClientTrust> {
        match (&self.ca_file, self.insecure) {
            (Some(ca), _) => Ok(ClientTrust::CaFile(ca.clone())),
            (None, true) => Ok(ClientTrust::Insecure),
            (None, false) => {
                anyhow::bail!("give --ca-file PEM to verify the edge, or --insecure to skip verification")
            }
        }
    }
}

/// Routing through the control plane, with failover.
#[derive(Debug, Clone, Args)]
pub struct RouteArgs {
    /// Ask the control plane (http://HOST:PORT,...) for the edge, and ask again
    /// whenever the edge fails (ignored when --edge is given).
    #[arg(long, env = "FERRY_CONTROL_PLANE", value_delimiter = ',')]
    pub control_plane: Vec<String>,
    /// Region to be routed in.
    #[arg(long, env = "FERRY_CLIENT_REGION", requires = "control_plane")]
    pub region: Option<String>,
    /// With --control-plane: silence after which the edge counts as dead and the
    /// client moves on (`publish --whip`: how long a session may stay disconnected).
    #[arg(long, env = "FERRY_FAILOVER_AFTER", default_value = "1500ms", value_parser = units::duration)]
    pub failover_after: Duration,
    /// With --control-plane (and `publish --whip`): give up after this many sessions
    /// in a row fail.
    #[arg(long, env = "FERRY_MAX_FAILURES", default_value_t = 20)]
    pub max_failures: u32,
}

impl RouteArgs {
    pub fn options(&self, http: HttpClient) -> Option<RouteOptions> {
        (!self.control_plane.is_empty()).then(|| RouteOptions {
            control_plane: self.control_plane.clone(),
            region: self.region.clone(),
            max_failures: Some(self.max_failures),
            http,
        })
    }
}

/// Who a publisher or viewer session is: its access token, and for rollouts (see
/// docs/rollouts.md) its id and tags.
#[derive(Debug, Clone, Args)]
pub struct SessionArgs {
    /// Access token minted by `ferry token` for this stream and action (prefer
    /// --token-file). Edges refuse clients without one unless they allow anonymous
    /// clients (dev). Over WHIP/WHEP it is sent as `Authorization: Bearer`.
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the access token (wins over --token).
    #[arg(long, env = "FERRY_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// This session's stable id, by which rollouts place it in a cohort (over WHIP/WHEP the
    /// `Ferry-Session` header); without it the edge side picks a random one.
    #[arg(long, env = "FERRY_SESSION_ID")]
    pub session_id: Option<String>,
    /// A client tag that rollouts' `gates.client_tags` match (repeatable; QUIC only,
    /// over WHIP/WHEP the User-Agent is the tag). Default: `ferry/<version>`.
    #[arg(long = "client-tag", env = "FERRY_CLIENT_TAGS", value_delimiter = ',')]
    pub client_tags: Vec<String>,
}

impl SessionArgs {
    /// The checked session hello, with the token.
    pub fn hello(&self) -> anyhow::Result<SessionHello> {
        let id = self.session_id.clone().unwrap_or_else(|| "x".into());
        ferry_proto::check_session(&id, &self.client_tags)
            .map_err(|e| anyhow::anyhow!("--session-id/--client-tag: {e}"))?;
        Ok(SessionHello { id: self.session_id.clone(), tags: self.client_tags.clone(), token: self.token()? })
    }

    /// The access token: from --token-file, else --token.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        match &self.token_file {
            Some(file) => Ok(Some(crate::config::read_secret(file, "--token-file")?)),
            None => Ok(self.token.clone().filter(|t| !t.is_empty())),
        }
    }
}

/// A client label unique per process, e.g. `viewer-1234`.
pub fn label(prefix: &str) -> anyhow::Result<NodeId> {
    Ok(NodeId::new(format!("{prefix}-{}", std::process::id()))?)
}

/// `live/x` from `http://HOST:PORT/{kind}/live/x?…`, `kind` being `whep` or `whip`.
pub fn stream_of_webrtc_url(url: &str, kind: &str) -> Option<String> {
    let path = url.split_once(&format!("/{kind}/"))?.1;
    let stream = path.split(['?', '#']).next()?;
    (!stream.is_empty()).then(|| stream.to_owned())
}

/// The local address of a WHIP/WHEP media socket: loopback endpoints get a loopback
/// socket; anything else every interface.
pub fn media_bind_ip(url: &str) -> IpAddr {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")).unwrap_or(url);
    let host = rest.split(['/', ':']).next().unwrap_or("");
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback {
        IpAddr::from([127, 0, 0, 1])
    } else {
        IpAddr::from([0, 0, 0, 0])
    }
}
