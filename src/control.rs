//! `ferry control`: one control-plane voter.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use ferry_control_plane::api::EdgeCertificates;
use ferry_control_plane::backup;
use ferry_control_plane::node::{NodeConfig, NodeError, RestoreSeed};
use ferry_control_plane::server::{Control, ControlConfig};
use ferry_control_plane::state::State;
use ferry_control_plane::transport::{RaftSecurity, TransportConfig};
use ferry_net::identity::Identity;
use ferry_net::tls::ClusterTls;

use crate::units;

#[derive(Debug, Clone, Args)]
pub struct ControlArgs {
    /// This voter's id (a positive integer, unique in the cluster).
    #[arg(long, env = "FERRY_CONTROL_ID")]
    pub id: u64,
    /// Every initial voter's raft address: `1=HOST:PORT,2=HOST:PORT,3=HOST:PORT`.
    #[arg(long, env = "FERRY_CONTROL_PEERS", value_delimiter = ',', required = true)]
    pub peers: Vec<String>,
    /// Directory for the raft log, snapshots and membership (sled).
    #[arg(long, env = "FERRY_CONTROL_DATA_DIR")]
    pub data_dir: PathBuf,
    /// TCP address of the HTTP API.
    #[arg(long, env = "FERRY_CONTROL_HTTP_LISTEN", default_value = "127.0.0.1:9000")]
    pub http_listen: SocketAddr,
    /// UDP address of the raft transport (QUIC). Default: this id's address in --peers.
    #[arg(long, env = "FERRY_CONTROL_RAFT_LISTEN")]
    pub raft_listen: Option<SocketAddr>,
    /// File holding the operator bearer token (wins over --token).
    #[arg(long, env = "FERRY_CONTROL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The operator bearer token (prefer --token-file).
    #[arg(long, env = "FERRY_CONTROL_TOKEN")]
    pub token: Option<String>,
    /// Join an existing cluster as a new member (start empty; add it with `ferry ctl members add`).
    #[arg(long, env = "FERRY_CONTROL_JOIN")]
    pub join: bool,
    /// Start a new cluster from a backup (`ferry ctl snapshot save FILE`): every voter of
    /// the new cluster gets the same FILE and the same --peers, on a --data-dir without
    /// raft state. The file's checksum is verified and its state decoded first (exit
    /// status 2 if it cannot be). The new cluster gets an identity of its own (from the
    /// file and --peers): voters of the old cluster cannot talk raft with it. A data dir
    /// that already holds this restored cluster starts as it is, so the flag may stay
    /// across restarts; one with any other raft state is refused (exit status 2).
    #[arg(long, env = "FERRY_CONTROL_RESTORE", value_name = "FILE", conflicts_with = "join")]
    pub restore: Option<PathBuf>,
    /// With --join, to join a cluster restored from a backup: its identity, as
    /// `ferry ctl cluster status` shows it (`cluster_uuid`). Its voters refuse raft
    /// peers of any other identity, a new member without one included.
    #[arg(long, env = "FERRY_CONTROL_CLUSTER_UUID", value_name = "UUID", requires = "join")]
    pub cluster_uuid: Option<String>,
    /// Raft tick.
    #[arg(long, env = "FERRY_CONTROL_TICK", default_value = "100ms", value_parser = units::duration)]
    pub tick: Duration,
    /// Ticks before an election (randomized up to twice this).
    #[arg(long, env = "FERRY_CONTROL_ELECTION_TICKS", default_value_t = 5)]
    pub election_ticks: usize,
    /// Applied entries between snapshots (log compaction).
    #[arg(long, env = "FERRY_CONTROL_SNAPSHOT_EVERY", default_value_t = 10_000)]
    pub snapshot_every: u64,
    /// How long writes and linearizable reads wait for a quorum.
    #[arg(long, env = "FERRY_CONTROL_REQUEST_TIMEOUT", default_value = "5s", value_parser = units::duration)]
    pub request_timeout: Duration,
    #[command(flatten)]
    pub http: crate::cluster_args::HttpServerArgs,
    #[command(flatten)]
    pub gossip: crate::cluster_args::GossipArgs,
    /// How long this voter's gossip must show an edge dead before the leader commits
    /// the failover (its streams' origin lost, its relay slots freed).
    #[arg(long, env = "FERRY_FAILOVER_GRACE", default_value = "1s", value_parser = units::duration)]
    pub failover_grace: Duration,
    /// How long a stream must be published and relayed nowhere (as gossip shows it)
    /// before the leader removes its record (audited as `stream.expire`). Records of
    /// clean departures go at once; this collects the rest: origins that died and
    /// never came back, edges that restarted, releases that never arrived.
    #[arg(long, env = "FERRY_STREAM_GRACE", default_value = "60s", value_parser = units::duration)]
    pub stream_grace: Duration,
    /// This voter's certificate (PEM), from `ferry ca issue --role voter --node voter-ID`:
    /// it must name this voter (`spiffe://CLUSTER-ID/voter/ID`).
    #[arg(long, env = "FERRY_CONTROL_CERT", requires_all = ["key", "ca_file"])]
    pub cert: Option<PathBuf>,
    /// Private key for --cert.
    #[arg(long, env = "FERRY_CONTROL_KEY", requires_all = ["cert", "ca_file"])]
    pub key: Option<PathBuf>,
    /// The cluster CA (PEM). The raft transport is mutual TLS: peers must present a
    /// certificate from this CA naming a voter of --cluster-id, and each raft message's
    /// sender must be the voter its certificate names.
    #[arg(long, env = "FERRY_CONTROL_CA_FILE", requires_all = ["cert", "key"])]
    pub ca_file: Option<PathBuf>,
    /// Dev only: raft without TLS verification (self-signed, any peer accepted). Without
    /// it, --ca-file, --cert and --key are required.
    #[arg(long, env = "FERRY_INSECURE_RAFT", conflicts_with_all = ["cert", "key", "ca_file"])]
    pub insecure_raft: bool,
    /// Dev only: serve the HTTP API as plain HTTP. Without it the API is HTTPS with
    /// --cert (clients verify it against --ca-file; edges authenticate with their
    /// cluster certificate).
    #[arg(long, env = "FERRY_INSECURE_HTTP")]
    pub insecure_http: bool,
    /// The cluster CA's private key: this voter then signs edges' certificate requests
    /// (`POST /v1/certificates`: first certificates with the join token, renewals with
    /// the edge's current certificate). Needs --ca-file (the CA's certificate).
    #[arg(long, env = "FERRY_CONTROL_CA_KEY", requires = "ca_file")]
    pub ca_key: Option<PathBuf>,
    /// File holding the join token (16+ characters): an edge started with the same
    /// token (`ferry edge --join-token-file`) gets its first certificate with it.
    #[arg(long, env = "FERRY_JOIN_TOKEN_FILE", requires = "ca_key")]
    pub join_token_file: Option<PathBuf>,
    /// How long the certificates this voter issues to edges are valid (at least 1m);
    /// edges renew them at two thirds of that.
    #[arg(long, env = "FERRY_EDGE_CERT_LIFETIME", default_value = "72h", value_parser = units::duration)]
    pub edge_cert_lifetime: Duration,
    /// Edges must prove a certificate from --ca-file when they register.
    #[arg(long, env = "FERRY_REQUIRE_EDGE_PROOFS", requires = "ca_file")]
    pub require_edge_proofs: bool,
}

/// The raft transport's security from the flags: mutual TLS with a certificate that
/// names this voter, or `--insecure-raft`.
fn raft_security(args: &ControlArgs) -> anyhow::Result<RaftSecurity> {
    let cluster = &args.gossip.cluster_id;
    let (ca, cert, key) = match (&args.ca_file, &args.cert, &args.key) {
        (Some(ca), Some(cert), Some(key)) => (ca, cert, key),
        _ if args.insecure_raft => {
            tracing::warn!("--insecure-raft: the raft port accepts any peer; dev only");
            return Ok(RaftSecurity::Insecure);
        }
        _ => bail!(
            "the raft transport needs this voter's certificate: give --ca-file, --cert and --key \
             (`ferry ca issue --role voter --node voter-{} --cluster-id {cluster}`), or --insecure-raft (dev only)",
            args.id
        ),
    };
    let want = Identity::voter(cluster, args.id);
    let chain = ferry_net::tls::load_certs(cert)?;
    let leaf = chain.first().with_context(|| format!("--cert {}: no certificate", cert.display()))?;
    match Identity::of_cert(leaf) {
        Ok(id) if id == want => {}
        found => bail!(
            "--cert {} names {}, but this process is {want}: issue this voter's own certificate with \
             `ferry ca issue --role voter --node voter-{} --cluster-id {cluster}`",
            cert.display(),
            match found {
                Ok(id) => id.to_string(),
                Err(refusal) => format!("no voter identity ({refusal})"),
            },
            args.id
        ),
    }
    Ok(RaftSecurity::Mutual {
        tls: ClusterTls { ca: ca.clone(), cert: cert.clone(), key: key.clone() },
        cluster: cluster.clone(),
    })
}

/// Signing edges' certificates, when this voter holds the CA key.
fn edge_certificates(args: &ControlArgs) -> anyhow::Result<Option<Arc<EdgeCertificates>>> {
    let (Some(key), Some(ca)) = (&args.ca_key, &args.ca_file) else { return Ok(None) };
    if args.edge_cert_lifetime < Duration::from_secs(60) {
        bail!("--edge-cert-lifetime must be at least 1m");
    }
    let signer = ferry_net::certs::Signer::load(ca, key).context("--ca-key")?;
    let join_token = match &args.join_token_file {
        Some(file) => {
            let token = crate::config::read_secret(file, "--join-token-file")?;
            if token.len() < 16 {
                bail!("the join token must be at least 16 characters");
            }
            token
        }
        None => String::new(),
    };
    Ok(Some(Arc::new(EdgeCertificates { signer, join_token, lifetime: args.edge_cert_lifetime })))
}

fn parse_peers(peers: &[String]) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut map = BTreeMap::new();
    for p in peers {
        let (id, addr) =
            p.split_once('=').with_context(|| format!("--peers entry {p:?} must be ID=HOST:PORT"))?;
        let id: u64 = id.trim().parse().with_context(|| format!("--peers id {id:?} is not a number"))?;
        if id == 0 || !addr.contains(':') {
            bail!("--peers entry {p:?} must be ID=HOST:PORT with ID >= 1");
        }
        if map.insert(id, addr.trim().to_owned()).is_some() {
            bail!("--peers lists id {id} twice");
        }
    }
    Ok(map)
}

/// A backup that cannot be restored, or a data directory that refuses it: `ferry`
/// exits with status 2.
#[derive(Debug)]
pub struct Unrestorable(pub String);

impl std::fmt::Display for Unrestorable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unrestorable {}

/// Reads and verifies the backup `file` (checksum, layout, the state decodes) and
/// makes the new cluster's seed for `peers`.
fn restore_seed(file: &Path, peers: &BTreeMap<u64, String>) -> Result<RestoreSeed, Unrestorable> {
    let what = |e: &dyn std::fmt::Display| Unrestorable(format!("--restore {}: {e}", file.display()));
    let bytes = std::fs::read(file).map_err(|e| what(&ferry_net::Chain(&e)))?;
    let verified = backup::decode(&bytes).map_err(|e| what(&e))?;
    State::from_snapshot_bytes(verified.body)
        .map_err(|e| what(&format!("the state in the backup does not decode: {}", ferry_net::Chain(&e))))?;
    let header = &verified.header;
    let cluster_uuid = backup::restored_cluster_uuid(&verified.checksum, peers);
    tracing::info!(
        index = header.index,
        term = header.term,
        old_voters = ?header.voters,
        old_cluster_uuid = ?header.cluster_uuid,
        taken_by = %header.ferry_version,
        created_ms = header.created_ms,
        %cluster_uuid,
        "restoring from a backup"
    );
    Ok(RestoreSeed { index: header.index, term: header.term, data: verified.body.to_vec(), cluster_uuid })
}

pub async fn run(args: ControlArgs) -> anyhow::Result<()> {
    let peers = parse_peers(&args.peers)?;
    let own =
        peers.get(&args.id).with_context(|| format!("--peers must include this voter's id {}", args.id))?;
    let raft_listen = match args.raft_listen {
        Some(addr) => addr,
        None => {
            own.parse().with_context(|| format!("raft address {own} is not IP:PORT; give --raft-listen"))?
        }
    };
    let token = match (&args.token_file, &args.token) {
        (Some(file), _) => crate::config::read_secret(file, "--token-file")?,
        (None, Some(token)) => token.clone(),
        (None, None) => bail!("give the operator token with --token-file or FERRY_CONTROL_TOKEN"),
    };
    if token.len() < 16 {
        bail!("the operator token must be at least 16 characters");
    }
    if args.stream_grace < Duration::from_secs(1) {
        bail!("--stream-grace must be at least 1s: gossip takes a moment to show a new publisher");
    }
    let mut node = NodeConfig::new(args.id, peers, args.data_dir.clone());
    node.tick = args.tick;
    node.election_ticks = args.election_ticks;
    node.snapshot_every = args.snapshot_every.max(1);
    node.join = args.join;
    if let Some(uuid) = &args.cluster_uuid {
        if uuid.len() != 64 || !uuid.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            bail!("--cluster-uuid {uuid:?} must be the 64 lowercase hex digits `ferry ctl cluster status` shows");
        }
        node.cluster_uuid = Some(uuid.clone());
    }
    if let Some(file) = &args.restore {
        node.restore = Some(restore_seed(file, &node.peers)?);
    }
    let security = raft_security(&args)?;
    let api_tls = match (security.cluster_tls(), args.insecure_http) {
        (_, true) => {
            tracing::warn!("--insecure-http: the API is plain HTTP (tokens travel in clear); dev only");
            None
        }
        (Some(tls), false) => Some(tls.clone()),
        (None, false) => bail!(
            "the HTTP API is HTTPS with this voter's certificate: give --ca-file, --cert and --key, or \
             --insecure-http (dev only)"
        ),
    };
    let mut gossip = args.gossip.to_config(&format!("voter-{}", args.id))?;
    if let Some(gossip) = &mut gossip {
        gossip.identity = security.cluster_tls().cloned();
    }
    let config = ControlConfig {
        node,
        transport: TransportConfig { listen: raft_listen, security },
        require_edge_proofs: args.require_edge_proofs,
        http_listen: args.http_listen,
        token,
        request_timeout: args.request_timeout,
        gossip,
        failover_grace: args.failover_grace,
        stream_grace: args.stream_grace,
        http_limits: args.http.limits(),
        api_tls,
        edge_certificates: edge_certificates(&args)?,
    };
    let config_https = config.api_tls.is_some();
    let cancel = crate::process::shutdown_signal();
    let control = match Control::start(config, cancel.clone()).await {
        Ok(control) => control,
        Err(ferry_control_plane::Error::Node(NodeError::RestoreRefused(why))) => {
            let flag = if args.restore.is_some() { "--restore" } else { "--cluster-uuid" };
            return Err(Unrestorable(format!("{flag}: {why}")).into());
        }
        Err(e) => return Err(anyhow::Error::new(e).context("cannot start the control plane")),
    };
    if let Err(e) = out!(
        "{}",
        serde_json::json!({
            "event": "ready", "id": args.id, "http": control.http_addr.to_string(), "raft": raft_listen.to_string(),
            "cluster_uuid": control.node.cluster_uuid(),
            "url": format!("{}://{}", if config_https { "https" } else { "http" }, control.http_addr),
        })
    ) {
        tracing::warn!(error = %e, "cannot print the ready line");
    }
    control.wait().await.context("the voter stopped")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_bad_ones_are_refused() {
        let map = parse_peers(&["1=127.0.0.1:7001".into(), "2=h:7002".into()]).unwrap();
        assert_eq!(map.get(&2).map(String::as_str), Some("h:7002"));
        assert!(parse_peers(&["x=1:2".into()]).is_err());
        assert!(parse_peers(&["0=a:1".into()]).is_err());
        assert!(parse_peers(&["1=a:1".into(), "1=b:2".into()]).is_err());
        assert!(parse_peers(&["1=nocolon".into()]).is_err());
    }
}
