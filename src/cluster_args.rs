//! Flags shared by every cluster process: gossip, and (for edges) the control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use ferry_net::gossip::{GossipConfig, KeyringSource, DEFAULT_INTERVAL};
use ferry_net::http_server::HttpLimits;

use crate::units;

/// Bounds on the clients of an HTTP port (an edge's, a voter's API).
#[derive(Debug, Clone, Args)]
pub struct HttpServerArgs {
    /// HTTP connections open at once (at least 1); beyond it new ones wait.
    #[arg(long, env = "FERRY_HTTP_MAX_CONNECTIONS", default_value = "4096", value_parser = units::at_least_one)]
    pub http_max_connections: usize,
    /// HTTP connections open at once from one IP address (at least 1); more are closed
    /// at once and counted. Raise it behind a proxy or load balancer that connects from
    /// few addresses.
    #[arg(long, env = "FERRY_HTTP_MAX_CONNECTIONS_PER_IP", default_value = "256", value_parser = units::at_least_one)]
    pub http_max_connections_per_ip: usize,
}

impl HttpServerArgs {
    /// The limits: these caps, the fixed header (10 s) and body (30 s) timeouts.
    pub fn limits(&self) -> HttpLimits {
        HttpLimits {
            max_connections: self.http_max_connections,
            max_per_ip: self.http_max_connections_per_ip,
            ..HttpLimits::default()
        }
    }
}

/// Health gossip (chitchat over UDP).
#[derive(Debug, Clone, Args)]
pub struct GossipArgs {
    /// UDP address to gossip on; without it this process does not gossip.
    #[arg(long, env = "FERRY_GOSSIP_LISTEN")]
    pub gossip_listen: Option<SocketAddr>,
    /// Address peers reach this process's gossip at (default: --gossip-listen).
    #[arg(long, env = "FERRY_GOSSIP_ADVERTISE", requires = "gossip_listen")]
    pub gossip_advertise: Option<SocketAddr>,
    /// Gossip addresses of a few other processes, HOST:PORT,...
    #[arg(long, env = "FERRY_GOSSIP_SEEDS", value_delimiter = ',', requires = "gossip_listen")]
    pub gossip_seeds: Vec<String>,
    /// Processes gossip only with others of the same cluster id.
    #[arg(long, env = "FERRY_CLUSTER_ID", default_value = "ferry")]
    pub cluster_id: String,
    /// Gossip round interval; a dead process is noticed after about 8 rounds.
    #[arg(long, env = "FERRY_GOSSIP_INTERVAL", default_value = "100ms", value_parser = units::duration)]
    pub gossip_interval: Duration,
    /// The cluster's gossip keyring: a directory of NAME.key files and `primary` (`ferry
    /// ca gossip-key`). Every datagram is sealed (ChaCha20-Poly1305) with the primary
    /// key; any key in the directory opens. Read again every second (rotation).
    #[arg(long, env = "FERRY_GOSSIP_KEYRING")]
    pub gossip_keyring: Option<PathBuf>,
    /// Dev only: plaintext, unauthenticated gossip (anyone who reaches the port can read
    /// the cluster's members and forge them).
    #[arg(long, env = "FERRY_INSECURE_GOSSIP", conflicts_with = "gossip_keyring")]
    pub insecure_gossip: bool,
}

impl GossipArgs {
    /// The gossip settings for process `node_id`, if gossip is on.
    pub fn to_config(&self, node_id: &str) -> anyhow::Result<Option<GossipConfig>> {
        let Some(listen) = self.gossip_listen else { return Ok(None) };
        let keyring = match (&self.gossip_keyring, self.insecure_gossip) {
            (Some(dir), _) => Some(
                KeyringSource::load(dir.clone(), &self.cluster_id)
                    .with_context(|| format!("--gossip-keyring {}", dir.display()))?,
            ),
            (None, true) => {
                tracing::warn!("--insecure-gossip: gossip is plaintext and unauthenticated; dev only");
                None
            }
            (None, false) => bail!(
                "gossip needs the cluster's keyring: --gossip-keyring DIR (make one with \
                 `ferry ca gossip-key --dir DIR --name k1`), or --insecure-gossip (dev only)"
            ),
        };
        Ok(Some(GossipConfig {
            node_id: node_id.to_owned(),
            listen,
            advertise: self.gossip_advertise,
            seeds: self.gossip_seeds.clone(),
            cluster_id: self.cluster_id.clone(),
            interval: if self.gossip_interval.is_zero() { DEFAULT_INTERVAL } else { self.gossip_interval },
            keyring,
            identity: None,
        }))
    }
}

/// How an edge reaches the control plane.
#[derive(Debug, Clone, Args)]
pub struct ControlPlaneArgs {
    /// Control-plane API URLs, https://HOST:PORT,... (any voter; the edge moves on when
    /// one fails). Over https:// the edge authenticates with its cluster certificate
    /// (--cluster-ca/--cluster-cert/--cluster-key) and needs no token; http:// (voters
    /// with --insecure-http) needs --control-token-file.
    #[arg(long, env = "FERRY_CONTROL_PLANE", value_delimiter = ',')]
    pub control_plane: Vec<String>,
    /// File holding the control plane's bearer token (wins over --control-token).
    #[arg(long, env = "FERRY_CONTROL_TOKEN_FILE")]
    pub control_token_file: Option<PathBuf>,
    /// The control plane's bearer token (prefer --control-token-file).
    #[arg(long, env = "FERRY_CONTROL_TOKEN")]
    pub control_token: Option<String>,
    /// Relative capacity this edge registers for placement.
    #[arg(long, env = "FERRY_CAPACITY", default_value_t = 100)]
    pub capacity: u32,
}

impl ControlPlaneArgs {
    /// The URLs (checked) and the token; empty URLs when no control plane is given.
    pub fn resolve(&self) -> anyhow::Result<(Vec<String>, String)> {
        for url in &self.control_plane {
            ferry_net::http::check_base_url(url).with_context(|| format!("--control-plane {url}"))?;
        }
        let token = match (&self.control_token_file, &self.control_token) {
            (Some(file), _) => crate::config::read_secret(file, "--control-token-file")?,
            (None, Some(token)) => token.clone(),
            (None, None) if self.control_plane.iter().all(|u| u.starts_with("https://")) => String::new(),
            (None, None) => bail!(
                "an http:// --control-plane needs --control-token-file or FERRY_CONTROL_TOKEN (https:// ones \
                 take the edge's cluster certificate instead)"
            ),
        };
        Ok((self.control_plane.clone(), token))
    }
}
