//! `ferry ctl`: operate the control plane over its HTTP API.
//!
//! Every request goes to the first `--control-plane` URL that answers; a voter without
//! a leader (503) or unreachable is skipped, and the whole list is tried again until
//! `--timeout` (an election takes about a second). Writes carry one `Idempotency-Key`
//! per invocation, so trying them on several voters applies them once.

use ferry_net::http::{join, HttpClient, Method, Response};

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use ferry_control_plane::backup;
use ferry_control_plane::state::State;
use ferry_proto::api;
use serde_json::{json, Value};

#[derive(Debug, Clone, Args)]
pub struct CtlArgs {
    /// Control-plane API URLs, e.g. https://10.0.0.1:9000,https://10.0.0.2:9000
    /// (http:// for voters started with --insecure-http, as `ferry dev`'s are).
    #[arg(
        long = "control-plane",
        visible_alias = "control",
        env = "FERRY_CONTROL_PLANE",
        value_delimiter = ','
    )]
    pub control: Vec<String>,
    /// Operator bearer token (prefer --control-token-file).
    #[arg(
        long = "control-token",
        visible_alias = "token",
        env = "FERRY_CONTROL_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// File holding the operator bearer token (wins over --control-token).
    #[arg(long, env = "FERRY_CONTROL_TOKEN_FILE", value_name = "FILE")]
    pub control_token_file: Option<std::path::PathBuf>,
    /// The cluster CA (PEM) that https:// voters' certificates are checked against.
    #[arg(long, env = "FERRY_CTL_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Authenticate with this cluster certificate (PEM) instead of a token: an edge's
    /// own certificate lets it do what edges may (drain itself at shutdown).
    #[arg(long, env = "FERRY_CTL_CERT", value_name = "FILE", requires_all = ["key", "ca_file"])]
    pub cert: Option<std::path::PathBuf>,
    /// Private key for --cert.
    #[arg(long, env = "FERRY_CTL_KEY", value_name = "FILE", requires = "cert")]
    pub key: Option<std::path::PathBuf>,
    /// Print the API's JSON answer instead of a summary.
    #[arg(long, global = true, env = "FERRY_CTL_JSON")]
    pub json: bool,
    /// How long a command waits for an answer; voters without a leader (during an
    /// election) or unreachable ones are retried until then.
    #[arg(long, env = "FERRY_CTL_TIMEOUT", default_value = "10s", value_parser = crate::units::duration)]
    pub timeout: Duration,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum CtlCommand {
    /// Cluster membership and raft status.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Add or remove voters.
    #[command(subcommand)]
    Members(MembersCmd),
    /// Registered edges.
    #[command(subcommand)]
    Edges(EdgesCmd),
    /// Streams and where they are carried.
    #[command(subcommand)]
    Streams(StreamsCmd),
    /// Staged rollouts.
    #[command(subcommand)]
    Rollout(RolloutCmd),
    /// Named operator tokens (admin): create, list, revoke.
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// Who the control plane takes this credential for: principal and role.
    Whoami,
    /// Backups: save a consistent snapshot of the cluster's state, check a saved one.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// The audit log (newest last).
    Audit {
        /// How many of the newest events.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum TokensCmd {
    /// Create a token and print it once (only its hash is stored): give it to the
    /// person or automation named ACCESSOR.
    Create {
        /// Its name: 1-64 characters of A-Z a-z 0-9 . _ -
        accessor: String,
        /// admin (voters, tokens, everything), operator (rollouts, drains, streams)
        /// or viewer (read-only).
        #[arg(long, value_parser = ["admin", "operator", "viewer"])]
        role: String,
    },
    /// Every token: accessor, role, creator, creation time (never secrets).
    List,
    /// Revoke a token: every voter refuses it from the moment the revocation applies.
    Revoke {
        /// The token's accessor.
        accessor: String,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum SnapshotCmd {
    /// Save a backup (admin): the leader, found through the --control-plane URLs,
    /// serves its state after a linearizable read. It is written to FILE.part,
    /// verified, synced, then renamed to FILE. Restore it with `ferry control --restore`.
    Save {
        /// Where to write the backup.
        file: PathBuf,
    },
    /// Verify a backup file (checksum, layout, the state decodes) and print its header;
    /// needs no control plane.
    Status {
        /// The backup file.
        file: PathBuf,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum ClusterCmd {
    /// Leader, term, commit and applied index, members.
    Status,
}

#[derive(Debug, Clone, Subcommand)]
pub enum MembersCmd {
    /// Add voter ID with its raft address (start it first with `ferry control --join`).
    Add {
        /// The new voter's id.
        id: u64,
        /// Its raft address, HOST:PORT.
        raft_addr: String,
    },
    /// Remove voter ID.
    Remove {
        /// The voter's id.
        id: u64,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum EdgesCmd {
    /// Registered edges: id, region, QUIC address.
    List,
    /// Register an edge by hand (edges started with --control-plane register
    /// themselves). A control plane that knows the cluster CA refuses this: edges then
    /// must prove their cluster certificate.
    Register {
        /// The edge's node id.
        id: String,
        /// Its region.
        #[arg(long)]
        region: String,
        /// Where peers and publishers reach it over QUIC (HOST:PORT).
        #[arg(long)]
        quic_addr: String,
        /// Where it serves HTTP: WHIP/WHEP, health, metrics (HOST:PORT).
        #[arg(long)]
        http_addr: String,
        /// Relative capacity for placement.
        #[arg(long, default_value_t = 100)]
        capacity: u32,
    },
    /// Drain an edge: routing stops sending it sessions, its viewers move, it exits.
    Drain {
        /// The edge's node id.
        id: String,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum StreamsCmd {
    /// Every stream and its origin edge.
    List,
    /// One stream: origin, relays per region.
    Get {
        /// Stream name, e.g. live/room1.
        name: String,
    },
    /// Create or update a stream (edges do this for their publishers).
    Put {
        /// Stream name, e.g. live/room1.
        name: String,
        /// The edge the publisher is on.
        #[arg(long)]
        origin: String,
        /// Relay edges as REGION=EDGE (repeatable).
        #[arg(long = "relay")]
        relays: Vec<String>,
    },
    /// Forget a stream.
    Delete {
        /// Stream name, e.g. live/room1.
        name: String,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum RolloutCmd {
    /// Every rollout: id, level, state.
    List,
    /// A rollout: spec, level, state, history, the error guard's last windows.
    #[command(alias = "show")]
    Get {
        /// Rollout id.
        id: String,
    },
    /// Create a rollout at level 0 from a spec: `-f spec.toml` (or .json), or `--spec JSON`.
    /// The id comes from the argument, else from the spec's `id` key.
    Create {
        /// Rollout id (or `id` in the spec).
        id: Option<String>,
        /// Spec file, TOML (or JSON when it ends in .json); see docs/rollouts.md.
        #[arg(short = 'f', long, conflicts_with = "spec", required_unless_present = "spec")]
        file: Option<std::path::PathBuf>,
        /// Spec as JSON.
        #[arg(long)]
        spec: Option<String>,
    },
    /// Every change of a rollout: who, when, what.
    History {
        /// Rollout id.
        id: String,
    },
    /// Set the level (0-4).
    Level {
        /// Rollout id.
        id: String,
        /// 0 nobody, 1 allowlist, 2 + regions/edges, 3 + a share, 4 everyone.
        level: u8,
    },
    /// Set the share of level 3: basis points (`3000`) or a percentage (`30%`). Sticky:
    /// raising it only adds sessions to the treatment, lowering only removes them.
    Share {
        /// Rollout id.
        id: String,
        /// Basis points (`3000`) or a percentage (`30%`).
        #[arg(value_parser = parse_share)]
        share: u32,
    },
    /// Hold a rollout at its level (the guards stop judging it).
    Pause {
        /// Rollout id.
        id: String,
    },
    /// Continue a paused or tripped rollout.
    Resume {
        /// Rollout id.
        id: String,
    },
    /// End a rollout for good: everyone gets the baseline.
    Abort {
        /// Rollout id.
        id: String,
    },
}

struct Client {
    http: HttpClient,
    urls: Vec<String>,
    token: String,
    timeout: Duration,
    key: String,
}

/// Pause between rounds over every voter while none can answer.
const RETRY: Duration = Duration::from_millis(200);

impl Client {
    /// `method path` on the first voter that answers; voters without a leader (503)
    /// or unreachable are skipped, and the round is repeated until `timeout`.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let method = Method::from_bytes(method.as_bytes())?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut last = None;
        loop {
            for url in &self.urls {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let mut request =
                    self.http.request(method.clone(), &join(url, path)).bearer(&self.token).timeout(left);
                if method != Method::GET {
                    request = request.header("idempotency-key", &self.key);
                }
                if let Some(body) = &body {
                    request = request.json(body);
                }
                match request.send().await {
                    Ok(r) if r.status == 503 => last = Some(describe(url, &r)),
                    Ok(r) if r.ok() => return Ok(r.json()),
                    Ok(r) => bail!("{}", describe(url, &r)),
                    Err(e) => last = Some(ferry_net::Chain(&e).to_string()),
                }
            }
            if tokio::time::Instant::now() + RETRY >= deadline {
                bail!(
                    "no control-plane voter could serve the request within {:?} (--timeout): {}",
                    self.timeout,
                    last.unwrap_or_default()
                );
            }
            tokio::time::sleep(RETRY).await;
        }
    }
}

fn describe(url: &str, r: &Response) -> String {
    let body = r.json();
    let code = body.pointer("/error/code").and_then(Value::as_str).unwrap_or("error");
    let message = body.pointer("/error/message").and_then(Value::as_str).unwrap_or("");
    format!("{url}: HTTP {} {code}: {message}", r.status)
}

fn encode_path(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "/-_.".contains(c) {
                c.to_string()
            } else {
                format!("%{:02X}", c as u32)
            }
        })
        .collect()
}

pub async fn run(args: CtlArgs) -> anyhow::Result<()> {
    if let CtlCommand::Snapshot(SnapshotCmd::Status { file }) = &args.command {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let (value, summary) = backup_status(file, &bytes)?;
        return print(args.json, &value, &summary);
    }
    if args.control.is_empty() {
        bail!("give the control plane's API URLs with --control-plane (FERRY_CONTROL_PLANE)");
    }
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    // A file wins over a token (either may come from the environment).
    let token = match (&args.token, &args.control_token_file) {
        (_, Some(file)) => crate::config::read_secret(file, "--control-token-file")?,
        (Some(token), None) => token.clone(),
        (None, None) if args.cert.is_some() => String::new(),
        (None, None) => bail!("give --control-token-file or --control-token (FERRY_CONTROL_TOKEN)"),
    };
    for url in &args.control {
        ferry_net::http::check_base_url(url).with_context(|| format!("--control-plane {url}"))?;
        if url.starts_with("https://") && args.ca_file.is_none() {
            bail!("--control-plane {url}: give --ca-file with the cluster CA to verify the voters");
        }
    }
    let trust = match (&args.ca_file, &args.cert, &args.key) {
        (Some(ca), Some(cert), Some(key)) => {
            Some(ferry_net::tls::ClientTrust::Cluster(ferry_net::tls::ClusterTls {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            }))
        }
        (Some(ca), _, _) => Some(ferry_net::tls::ClientTrust::CaFile(ca.clone())),
        _ => None,
    };
    let client = Client {
        http: HttpClient::new(trust.as_ref())?,
        urls: args.control.clone(),
        token,
        timeout: args.timeout,
        key: format!("ctl-{}-{nanos:x}", std::process::id()),
    };
    let (value, summary) = match args.command {
        CtlCommand::Cluster(ClusterCmd::Status) => {
            let v = client.call("GET", "/v1/cluster", None).await?;
            let mut s = format!(
                "leader {} term {} commit {} applied {} voters {}",
                f(&v, "leader"),
                f(&v, "term"),
                f(&v, "commit_index"),
                f(&v, "applied_index"),
                f(&v, "voters")
            );
            if let Some(uuid) = f(&v, "cluster_uuid").as_str() {
                s = format!("{s} cluster_uuid {uuid}");
            }
            // The cluster version: below this voter's build while an upgrade is under way.
            s = format!("{s} command_set {} (build {})", f(&v, "command_set"), f(&v, "build_command_set"));
            (v, s)
        }
        CtlCommand::Members(MembersCmd::Add { id, raft_addr }) => {
            let v = client
                .call("POST", &format!("/v1/cluster/members/{id}"), Some(json!({ "raft_addr": raft_addr })))
                .await?;
            (v, format!("added voter {id}"))
        }
        CtlCommand::Members(MembersCmd::Remove { id }) => {
            let v = client.call("DELETE", &format!("/v1/cluster/members/{id}"), None).await?;
            (v, format!("removed voter {id}"))
        }
        CtlCommand::Edges(EdgesCmd::List) => {
            let v = client.call("GET", "/v1/edges", None).await?;
            let edges: Vec<api::Edge> = records(&v, "edges")?;
            let lines: Vec<String> =
                edges.iter().map(|e| format!("{}\t{}\t{}", e.id, e.region, e.quic_addr)).collect();
            (v, lines.join("\n"))
        }
        CtlCommand::Edges(EdgesCmd::Register { id, region, quic_addr, http_addr, capacity }) => {
            let body = api::EdgeRegistration { region, quic_addr, http_addr, version: None, capacity };
            let v = client.call("PUT", &format!("/v1/edges/{}", encode_path(&id)), Some(json!(body))).await?;
            (v, format!("edge {id} registered"))
        }
        CtlCommand::Edges(EdgesCmd::Drain { id }) => {
            let v = client.call("POST", &format!("/v1/edges/{id}/drain"), None).await?;
            (v, format!("edge {id} draining"))
        }
        CtlCommand::Snapshot(SnapshotCmd::Save { file }) => save_snapshot(&client, &file).await?,
        CtlCommand::Snapshot(SnapshotCmd::Status { .. }) => bail!("snapshot status needs no control plane"),
        CtlCommand::Streams(cmd) => streams(&client, cmd).await?,
        CtlCommand::Rollout(cmd) => rollout(&client, cmd).await?,
        CtlCommand::Tokens(cmd) => tokens(&client, cmd).await?,
        CtlCommand::Whoami => {
            let v = client.call("GET", "/v1/whoami", None).await?;
            let s = format!("{} (role {}) from {}", t(&v, "principal"), t(&v, "role"), t(&v, "source"));
            (v, s)
        }
        CtlCommand::Audit { limit } => {
            let v = client.call("GET", &format!("/v1/audit?limit={limit}"), None).await?;
            let lines = list(f(&v, "events"), |e| {
                format!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    f(e, "index"),
                    t(e, "action"),
                    t(e, "target"),
                    t(e, "actor"),
                    t(e, "role"),
                    t(e, "source")
                )
            });
            (v, lines)
        }
    };
    print(args.json, &value, &summary)
}

/// Prints the JSON answer (`--json`) or the summary.
fn print(json: bool, value: &Value, summary: &str) -> anyhow::Result<()> {
    if json {
        out!("{}", serde_json::to_string_pretty(value)?)?;
    } else {
        out!("{summary}")?;
    }
    Ok(())
}

/// Largest backup `snapshot save` accepts: the raft transport carries snapshots of at
/// most 256 MiB, so no cluster holds a bigger state.
const MAX_BACKUP: usize = 257 * 1024 * 1024;

/// The header of a verified backup as JSON and as a summary line; an error naming the
/// damage otherwise.
fn backup_status(file: &Path, bytes: &[u8]) -> anyhow::Result<(Value, String)> {
    let verified = backup::decode(bytes).with_context(|| format!("{}", file.display()))?;
    State::from_snapshot_bytes(verified.body)
        .with_context(|| format!("{}: the state in the backup does not decode", file.display()))?;
    let h = &verified.header;
    let checksum: String = verified.checksum.iter().map(|b| format!("{b:02x}")).collect();
    let value = json!({
        "file": file.display().to_string(), "bytes": bytes.len(), "sha256": checksum, "header": h,
    });
    let summary = format!(
        "{}: ok, index {} term {} voters {:?} cluster {} state format {} ferry {} created_ms {} ({} bytes, sha256 {checksum})",
        file.display(),
        h.index,
        h.term,
        h.voters,
        h.cluster_uuid.as_deref().unwrap_or("-"),
        h.state_format,
        h.ferry_version,
        h.created_ms,
        bytes.len(),
    );
    Ok((value, summary))
}

/// `snapshot save`: finds the leader among the URLs (`/v1/cluster` names each voter and
/// the leader it knows), downloads `/v1/snapshot` from it, verifies it and writes it
/// durably. A leader change meanwhile (421 `not_leader`) or an election (503) is retried
/// until `--timeout`.
async fn save_snapshot(client: &Client, file: &Path) -> anyhow::Result<(Value, String)> {
    let http = client.http.clone().with_max_response(MAX_BACKUP);
    let deadline = tokio::time::Instant::now() + client.timeout;
    let mut last = String::from("no voter answered");
    let bytes = 'found: loop {
        let mut leader_url = None;
        let mut leader_id = 0;
        for url in &client.urls {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match http.get(&join(url, "/v1/cluster")).bearer(&client.token).timeout(left).send().await {
                Ok(r) if r.ok() => {
                    let v = r.json();
                    let (id, leader) = (f(&v, "id").as_u64(), f(&v, "leader").as_u64().unwrap_or(0));
                    leader_id = leader_id.max(leader);
                    if leader != 0 && id == Some(leader) {
                        leader_url = Some(url.clone());
                        break;
                    }
                }
                Ok(r) => last = describe(url, &r),
                Err(e) => last = ferry_net::Chain(&e).to_string(),
            }
        }
        match leader_url {
            Some(url) => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let answer =
                    http.get(&join(&url, "/v1/snapshot")).bearer(&client.token).timeout(left).send().await;
                match answer {
                    Ok(r) if r.ok() => break 'found r.body,
                    Ok(r) if r.status == 503 || r.status == 421 => last = describe(&url, &r),
                    Ok(r) => bail!("{}", describe(&url, &r)),
                    Err(e) => last = ferry_net::Chain(&e).to_string(),
                }
            }
            None if leader_id != 0 => {
                last = format!("the leader is voter {leader_id}, and none of the --control-plane URLs is it")
            }
            None => {}
        }
        if tokio::time::Instant::now() + RETRY >= deadline {
            bail!("no backup from the leader within {:?} (--timeout): {last}", client.timeout);
        }
        tokio::time::sleep(RETRY).await;
    };
    let (value, _) = backup_status(file, &bytes).context("the backup the leader sent")?;
    write_verified(file, &bytes)?;
    let h = f(&value, "header");
    let summary = format!(
        "saved {}: index {} term {} ({} bytes, sha256 {})",
        file.display(),
        f(h, "index"),
        f(h, "term"),
        bytes.len(),
        t(&value, "sha256")
    );
    Ok((value, summary))
}

/// Writes `bytes` to `file` + `.part`, syncs it, reads it back to check it, then renames
/// it to `file` and syncs the directory: `file` is a whole backup or absent.
fn write_verified(file: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut part = file.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    // It holds token hashes and the audit log: the owner's only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut out = options.open(&part).with_context(|| format!("creating {}", part.display()))?;
    out.write_all(bytes)
        .and_then(|()| out.sync_all())
        .with_context(|| format!("writing {}", part.display()))?;
    drop(out);
    let back = std::fs::read(&part).with_context(|| format!("reading {} back", part.display()))?;
    if back != bytes {
        bail!("{} does not read back as written", part.display());
    }
    std::fs::rename(&part, file)
        .with_context(|| format!("renaming {} to {}", part.display(), file.display()))?;
    let dir = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    ferry_net::files::sync_dir(dir).with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

/// A field of a JSON object, `null` when absent (JSON indexing without the panic lint).
fn f<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or(&Value::Null)
}

/// A field as text for a human: strings without JSON quotes, `-` when absent.
fn t(v: &Value, key: &str) -> String {
    match f(v, key) {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// The typed records of a list answer (`{"edges": [...]}`).
fn records<T: serde::de::DeserializeOwned>(answer: &Value, key: &str) -> anyhow::Result<Vec<T>> {
    serde_json::from_value(f(answer, key).clone()).with_context(|| format!("the control plane's {key} list"))
}

fn list(items: &Value, line: impl Fn(&Value) -> String) -> String {
    items.as_array().map(|a| a.iter().map(line).collect::<Vec<_>>().join("\n")).unwrap_or_default()
}

async fn tokens(client: &Client, cmd: TokensCmd) -> anyhow::Result<(Value, String)> {
    Ok(match cmd {
        TokensCmd::Create { accessor, role } => {
            let body = json!({ "accessor": accessor, "role": role });
            let v = client.call("POST", "/v1/tokens", Some(body)).await?;
            // The token alone on stdout, so `ferry ctl tokens create ci --role operator > ci.token` works.
            let s = t(&v, "token");
            (v, s)
        }
        TokensCmd::List => {
            let v = client.call("GET", "/v1/tokens", None).await?;
            let s = list(f(&v, "tokens"), |k| {
                format!(
                    "{}\t{}\tcreated by {}\t{}",
                    t(k, "accessor"),
                    t(k, "role"),
                    t(k, "created_by"),
                    t(k, "created_at_ms")
                )
            });
            (v, s)
        }
        TokensCmd::Revoke { accessor } => {
            let v = client.call("DELETE", &format!("/v1/tokens/{}", encode_path(&accessor)), None).await?;
            (v, format!("token {accessor} revoked"))
        }
    })
}

async fn streams(client: &Client, cmd: StreamsCmd) -> anyhow::Result<(Value, String)> {
    Ok(match cmd {
        StreamsCmd::List => {
            let v = client.call("GET", "/v1/streams", None).await?;
            let s = list(f(&v, "streams"), |s| {
                format!(
                    "{}\torigin {}",
                    f(s, "name").as_str().unwrap_or(""),
                    f(s, "origin").as_str().unwrap_or("")
                )
            });
            (v, s)
        }
        StreamsCmd::Get { name } => {
            let v = client.call("GET", &format!("/v1/streams/{}", encode_path(&name)), None).await?;
            let s = v.to_string();
            (v, s)
        }
        StreamsCmd::Put { name, origin, relays } => {
            let mut map = serde_json::Map::new();
            for r in relays {
                let (region, edge) =
                    r.split_once('=').with_context(|| format!("--relay {r:?} must be REGION=EDGE"))?;
                let entry = map.entry(region.to_owned()).or_insert_with(|| json!([]));
                if let Some(list) = entry.as_array_mut() {
                    list.push(json!(edge));
                }
            }
            let body = json!({ "origin": origin, "relays": map });
            let v = client.call("PUT", &format!("/v1/streams/{}", encode_path(&name)), Some(body)).await?;
            (v, format!("stream {name} stored"))
        }
        StreamsCmd::Delete { name } => {
            let v = client.call("DELETE", &format!("/v1/streams/{}", encode_path(&name)), None).await?;
            (v, format!("stream {name} deleted"))
        }
    })
}

async fn rollout(client: &Client, cmd: RolloutCmd) -> anyhow::Result<(Value, String)> {
    Ok(match cmd {
        RolloutCmd::List => {
            let v = client.call("GET", "/v1/rollouts", None).await?;
            let s = list(f(&v, "rollouts"), |r| {
                format!("{}\tlevel {}\t{}", t(r, "id"), t(r, "level"), t(r, "state"))
            });
            (v, s)
        }
        RolloutCmd::Get { id } => {
            let v = client.call("GET", &format!("/v1/rollouts/{}", encode_path(&id)), None).await?;
            let mut s =
                format!("{}\tlevel {}\t{}\nspec\t{}", id, t(&v, "level"), t(&v, "state"), t(&v, "spec"));
            let history = list(f(&v, "history"), history_line);
            if !history.is_empty() {
                s = format!("{s}\n{history}");
            }
            let windows = list(f(&v, "windows"), |w| {
                format!(
                    "window\t{}\tlevel {}\ttreatment {}/{} errors\tbaseline {}/{}\tcpu {}\t{}",
                    t(w, "ended_at_ms"),
                    t(w, "level"),
                    t(w, "treatment_errors"),
                    t(w, "treatment_sessions"),
                    t(w, "baseline_errors"),
                    t(w, "baseline_sessions"),
                    t(w, "max_edge_cpu"),
                    t(w, "verdict"),
                )
            });
            if !windows.is_empty() {
                s = format!("{s}\n{windows}");
            }
            (v, s)
        }
        RolloutCmd::Create { id, file, spec } => {
            let mut spec = read_spec(file.as_deref(), spec.as_deref())?;
            let from_spec = match spec.as_object_mut().and_then(|o| o.remove("id")) {
                Some(Value::String(id)) => Some(id),
                Some(other) => anyhow::bail!("the spec's id must be a string, not {other}"),
                None => None,
            };
            let Some(id) = id.or(from_spec) else {
                anyhow::bail!("no rollout id: give it as an argument or as `id` in the spec");
            };
            let v = client.call("POST", "/v1/rollouts", Some(json!({ "id": id, "spec": spec }))).await?;
            (v, format!("rollout {id} created at level 0"))
        }
        RolloutCmd::History { id } => {
            let v = client.call("GET", &format!("/v1/rollouts/{}/history", encode_path(&id)), None).await?;
            let s = list(f(&v, "history"), history_line);
            (v, s)
        }
        RolloutCmd::Level { id, level } => {
            let v = action(client, &id, "level", Some(json!({ "level": level }))).await?;
            (v, format!("rollout {id} at level {level}"))
        }
        RolloutCmd::Share { id, share } => {
            let v = action(client, &id, "share", Some(json!({ "share_bp": share }))).await?;
            let level = f(f(&v, "result"), "level").as_u64().unwrap_or(0);
            let applies = match level {
                3 => "it applies now, at level 3".to_owned(),
                4 => "at level 4 everyone is treated; the share applies at level 3".to_owned(),
                _ => format!("it applies at level 3 (the rollout is at level {level})"),
            };
            (v, format!("rollout {id}: share {share} bp; {applies}"))
        }
        RolloutCmd::Pause { id } => done(client, &id, "pause").await?,
        RolloutCmd::Resume { id } => done(client, &id, "resume").await?,
        RolloutCmd::Abort { id } => done(client, &id, "abort").await?,
    })
}

/// A share as basis points: `3000`, or a percentage such as `30%` or `2.5%`.
fn parse_share(text: &str) -> Result<u32, String> {
    match text.strip_suffix('%') {
        Some(percent) => {
            let p: f64 = percent.trim().parse().map_err(|_| format!("{text:?} is not a percentage"))?;
            if !(0.0..=100.0).contains(&p) {
                return Err(format!("{text:?} is outside 0%..100%"));
            }
            Ok((p * 100.0).round() as u32)
        }
        None => text.parse().map_err(|_| format!("{text:?} is not basis points (0-10000) or a percentage")),
    }
}

/// One rollout history event as a line.
fn history_line(e: &Value) -> String {
    format!("{}\t{}\tlevel {}\t{}", t(e, "at_ms"), t(e, "actor"), t(e, "level"), t(e, "what"))
}

/// A rollout spec from a TOML/JSON file or a JSON string.
fn read_spec(file: Option<&std::path::Path>, json: Option<&str>) -> anyhow::Result<Value> {
    match (file, json) {
        (Some(path), _) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            if path.extension().is_some_and(|e| e == "json") {
                serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))
            } else {
                toml::from_str(&text).with_context(|| format!("{}: not TOML", path.display()))
            }
        }
        (None, Some(json)) => serde_json::from_str(json).context("--spec must be JSON"),
        (None, None) => anyhow::bail!("give a spec: -f FILE or --spec JSON"),
    }
}

/// `POST /v1/rollouts/{id}/{what}` with `body`.
async fn action(client: &Client, id: &str, what: &str, body: Option<Value>) -> anyhow::Result<Value> {
    client.call("POST", &format!("/v1/rollouts/{}/{what}", encode_path(id)), body).await
}

/// A rollout action without a body (pause, resume, abort) and its summary.
async fn done(client: &Client, id: &str, what: &str) -> anyhow::Result<(Value, String)> {
    let v = action(client, id, what, None).await?;
    Ok((v, format!("rollout {id}: {what} done")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::parse_share;

    #[test]
    fn shares_are_basis_points_or_percentages() {
        assert_eq!(parse_share("3000"), Ok(3000));
        assert_eq!(parse_share("30%"), Ok(3000));
        assert_eq!(parse_share("2.5%"), Ok(250));
        assert_eq!(parse_share("0%"), Ok(0));
        assert_eq!(parse_share("100%"), Ok(10_000));
        // Above 10000 bp is the control plane's to refuse (400 with its reason).
        assert_eq!(parse_share("12000"), Ok(12_000));
        for bad in ["", "-1", "30 %%", "101%", "-5%", "NaN%", "abc"] {
            assert!(parse_share(bad).is_err(), "{bad:?}");
        }
    }
}
