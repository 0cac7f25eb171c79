//! `ferry ca init` and `ferry ca issue`: the cluster CA behind mutual TLS between
//! edges (relay) and between voters (raft transport).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use ferry_net::identity::{Identity, Role};
use ferry_net::tls::default_names;

#[derive(Debug, Clone, Subcommand)]
pub enum CaCommand {
    /// Create a cluster CA (ca.pem, ca-key.pem) in --dir; never overwrites one.
    Init(InitArgs),
    /// Issue a node certificate ({node}.pem, {node}-key.pem) signed by the CA in --dir.
    Issue(IssueArgs),
    /// Add a gossip key (NAME.key) to a gossip keyring directory (--gossip-keyring).
    GossipKey(GossipKeyArgs),
}

#[derive(Debug, Clone, Args)]
pub struct GossipKeyArgs {
    /// The keyring directory (created if missing): NAME.key files and `primary`.
    #[arg(long)]
    pub dir: PathBuf,
    /// The key's name (letters, digits, '-', '_'); never overwrites a key.
    #[arg(long)]
    pub name: String,
    /// Make it the key that seals (written to `primary`). The first key of a keyring
    /// always is. Rotate: add the new key everywhere, make it primary everywhere, then
    /// delete the old NAME.key everywhere.
    #[arg(long)]
    pub primary: bool,
}

#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// Directory for the CA files (created if missing).
    #[arg(long, env = "FERRY_CA_DIR")]
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct IssueArgs {
    /// Directory holding ca.pem and ca-key.pem.
    #[arg(long, env = "FERRY_CA_DIR")]
    pub dir: PathBuf,
    /// The node id (an edge's id, or voter-N for voter N); it becomes the
    /// certificate's CN, a name and the file names.
    #[arg(long)]
    pub node: String,
    /// What the node is: `voter` (speaks raft; --node voter-N) or `edge`. The
    /// certificate names it as `spiffe://CLUSTER-ID/ROLE/NODE`, and each port accepts
    /// only the roles it serves (the raft port: voters of its cluster).
    #[arg(long, value_parser = ["voter", "edge"])]
    pub role: String,
    /// The cluster the node belongs to (the same --cluster-id it runs with).
    #[arg(long, env = "FERRY_CLUSTER_ID", default_value = "ferry")]
    pub cluster_id: String,
    /// DNS names or IPs the node serves under (repeat or comma-separate).
    #[arg(long = "name", value_delimiter = ',', default_values_t = ferry_net::tls::default_names())]
    pub names: Vec<String>,
    /// Where to write the files (default: --dir).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// How long the certificate is valid from now (at least 1m; `8760h` is a year).
    /// Once it ends, the node's relay, raft and registration are refused: issue the
    /// next one before (docs/security.md).
    #[arg(long, default_value = "8760h", value_parser = crate::units::duration)]
    pub valid_for: Duration,
}

pub fn run(cmd: CaCommand) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Init(args) => {
            let (cert, key) = ferry_net::tls::init_ca(&args.dir)?;
            out!("{}", serde_json::json!({ "ca": cert, "ca_key": key }))?;
        }
        CaCommand::Issue(args) => {
            ferry_proto::NodeId::new(args.node.clone())
                .map_err(|e| anyhow::anyhow!("--node {:?}: {e}", args.node))?;
            let identity = identity(&args)?;
            if args.valid_for < Duration::from_secs(60) {
                anyhow::bail!("--valid-for must be at least 1m");
            }
            let out = args.out_dir.clone().unwrap_or_else(|| args.dir.clone());
            let (cert, key) = ferry_net::tls::issue_node_cert(
                &args.dir,
                &args.node,
                &identity,
                &args.names,
                args.valid_for,
                &out,
            )?;
            let expires = ferry_net::time::unix_ms()
                .saturating_add(u64::try_from(args.valid_for.as_millis()).unwrap_or(u64::MAX));
            out!(
                "{}",
                serde_json::json!({
                    "node": args.node, "identity": identity.uri(), "cert": cert, "key": key,
                    "ca": args.dir.join("ca.pem"), "expires_at_ms": expires
                })
            )?;
        }
        CaCommand::GossipKey(args) => gossip_key(&args)?,
    }
    Ok(())
}

/// `ferry ca gossip-key`: a new random key in a keyring directory.
fn gossip_key(args: &GossipKeyArgs) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if args.name.is_empty()
        || args.name.len() > 64
        || !args.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        anyhow::bail!("--name {:?}: 1-64 letters, digits, '-' or '_'", args.name);
    }
    std::fs::create_dir_all(&args.dir).with_context(|| format!("cannot create {}", args.dir.display()))?;
    let path = args.dir.join(format!("{}.key", args.name));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {} (a key is never overwritten)", path.display()))?;
    file.write_all(ferry_net::seal::new_key_hex()?.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    let primary = args.dir.join(ferry_net::seal::PRIMARY_FILE);
    if args.primary || !primary.exists() {
        std::fs::write(&primary, &args.name)
            .with_context(|| format!("cannot write {}", primary.display()))?;
    }
    let ring = ferry_net::seal::Keyring::load(&args.dir, "check")?;
    out!("{}", serde_json::json!({ "key": path, "keys": ring.names(), "primary": ring.primary_name() }))?;
    Ok(())
}

/// The identity `ferry ca issue` writes: voters by raft id (`--node voter-N`), edges by id.
fn identity(args: &IssueArgs) -> anyhow::Result<Identity> {
    let role = Role::parse(&args.role).with_context(|| format!("--role {:?}: voter or edge", args.role))?;
    let node = match role {
        Role::Voter => {
            let id =
                args.node.strip_prefix("voter-").and_then(|n| n.parse::<u64>().ok()).filter(|id| *id > 0);
            id.with_context(|| format!("--node {:?}: a voter is named voter-N (N its raft id)", args.node))?
                .to_string()
        }
        Role::Edge => args.node.clone(),
    };
    Identity::new(&args.cluster_id, role, &node).map_err(|e| anyhow::anyhow!("--cluster-id: {e}"))
}

#[derive(Debug, Clone, Args)]
pub struct CertArgs {
    /// Directory for ca.pem, ca-key.pem, cert.pem, key.pem.
    #[arg(long, env = "FERRY_CERT_OUT_DIR")]
    pub out_dir: PathBuf,
    /// Names (DNS or IP) the certificate is valid for.
    #[arg(long = "name", env = "FERRY_CERT_NAMES", value_delimiter = ',', default_values_t = default_names())]
    pub names: Vec<String>,
    /// Replace a CA already in --out-dir (every certificate it signed stops being
    /// trusted by whoever takes the new ca.pem).
    #[arg(long)]
    pub force: bool,
}

/// `ferry cert`: a cluster CA and one certificate signed by it. Refuses to replace a
/// CA unless `--force`.
pub fn run_cert(args: CertArgs) -> anyhow::Result<()> {
    let existing = ["ca.pem", "ca-key.pem"].map(|f| args.out_dir.join(f));
    if !args.force && existing.iter().any(|p| p.exists()) {
        anyhow::bail!(
            "{} already holds a CA (ca.pem, ca-key.pem): every certificate it signed depends on it. \
             Use `ferry ca issue --dir {} --node NAME` for another certificate, or --force to replace the CA",
            args.out_dir.display(),
            args.out_dir.display()
        );
    }
    let files = ferry_net::tls::generate_cluster_certs(&args.out_dir, &args.names)?;
    out!(
        "{}",
        serde_json::json!({
            "ca": files.ca_cert, "ca_key": files.ca_key, "cert": files.cert, "key": files.key
        })
    )?;
    Ok(())
}
