//! The Helm chart (charts/ferry), checked without helm or a Kubernetes cluster:
//! rendered by charts/render (Go text/template + sprig, the engine Helm uses),
//! validated and checked by charts/check.py, and run: the voters and edges of the
//! rendered manifests start from exactly their rendered commands, config file and
//! secrets, and form a cluster that plays a stream.
//!
//! Needs Go with Debian's sprig and yaml.v3 sources, and Python with
//! kubernetes-validate and yamllint (`.ci/run` installs them); fails loudly without.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::*;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Builds charts/render once per test binary (offline, GOPATH mode, Debian's sources).
fn renderer() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            // One binary per test process: a parallel run of this suite builds its own
            // instead of replacing the one this process runs.
            let out =
                Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ferry-chart-render-{}", std::process::id()));
            let status = Command::new("go")
                .args(["build", "-o"])
                .arg(&out)
                .arg("./charts/render")
                .current_dir(repo())
                .env("GO111MODULE", "off")
                .env("GOPATH", "/usr/share/gocode")
                .env("GOCACHE", Path::new(env!("CARGO_TARGET_TMPDIR")).join("gocache"))
                .env("GOFLAGS", "-mod=mod")
                .status()
                .expect("`go` is missing: install golang-go golang-github-masterminds-sprig-dev golang-gopkg-yaml.v3-dev");
            assert!(status.success(), "building charts/render failed");
            out
        })
        .clone()
}

fn render(values: &[&str]) -> Vec<Value> {
    let mut cmd = Command::new(renderer());
    cmd.arg(repo().join("charts/ferry"));
    for v in values {
        cmd.arg(repo().join("charts/ferry/ci").join(v));
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "render: {}", String::from_utf8_lossy(&out.stderr));
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    docs.into_iter().map(|d| d["object"].clone()).collect()
}

#[test]
fn the_chart_renders_validates_and_keeps_its_invariants() {
    let out = Command::new("python3")
        .arg(repo().join("charts/check.py"))
        .arg(renderer())
        .output()
        .expect("python3 is missing");
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{report}");
    assert!(out.status.success(), "chart check failed:\n{report}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_str(&report).unwrap();
    // Every values file rendered its part of the chart.
    let kinds = |case: &str| report["cases"][case].as_array().unwrap().clone();
    assert!(kinds("default").contains(&Value::from("StatefulSet")));
    assert!(kinds("default").contains(&Value::from("Deployment")));
    assert!(kinds("daemonset-hostnetwork.yaml").contains(&Value::from("DaemonSet")));
    for kind in ["ServiceMonitor", "PrometheusRule", "NetworkPolicy"] {
        assert!(kinds("full.yaml").contains(&Value::from(kind)), "{kind} in full.yaml");
    }
}

fn find<'a>(objects: &'a [Value], kind: &str, name_suffix: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"].as_str().unwrap().ends_with(name_suffix))
        .unwrap_or_else(|| panic!("no {kind} *{name_suffix}"))
}

/// What Kubernetes gives a pod, on loopback: its own IP (127.0.0.x; so every pod
/// binds the same ports as in the manifests), its volumes as directories, and the
/// cluster DNS names of the voters and the control Service resolved to pod IPs.
struct Pods {
    root: PathBuf,
    /// DNS name → IP.
    dns: Vec<(String, String)>,
}

impl Pods {
    /// `text` as the pod `pod` at `ip` sees it: mount paths under its own directory,
    /// `0.0.0.0` (all of the pod's interfaces) as its IP, cluster names as IPs.
    fn localize(&self, pod: &str, ip: &str, text: &str) -> String {
        let dir = self.root.join(pod);
        let mut out = text
            .replace("/etc/ferry/", &format!("{}/etc/ferry/", dir.display()))
            .replace("/var/lib/ferry/", &format!("{}/var/lib/ferry/", dir.display()))
            .replace("0.0.0.0:", &format!("{ip}:"));
        for (name, addr) in &self.dns {
            out = out.replace(name, addr);
        }
        out
    }

    /// Runs a container's `sh -ec SCRIPT` as pod `pod` (ferry on the PATH).
    fn command(&self, pod: &str, ip: &str, container: &Value) -> Command {
        assert_eq!(container["command"], serde_json::json!(["/bin/sh", "-ec"]), "{container}");
        let script = self.localize(pod, ip, container["args"][0].as_str().unwrap());
        let bin = Path::new(ferry_bin()).parent().unwrap().to_owned();
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-ec", &script]).env("PATH", path).env("POD_NAME", pod).env("POD_IP", ip);
        cmd.env("RUST_LOG", "warn").env_remove("FERRY_CONFIG").env_remove("NODE_REGION");
        cmd
    }

    fn volumes(&self, pod: &str, ip: &str, spec: &Value, release: &Release) {
        let Release { config, secrets, keyring, ca } = release;
        let etc = self.root.join(pod).join("etc/ferry");
        for sub in ["secrets", "ca", "ca-key", "node", "gossip-keyring"] {
            std::fs::create_dir_all(etc.join(sub)).unwrap();
        }
        for (k, v) in keyring {
            std::fs::write(etc.join("gossip-keyring").join(k), v).unwrap();
        }
        std::fs::create_dir_all(self.root.join(pod).join("var/lib/ferry/data")).unwrap();
        std::fs::write(etc.join("ferry.toml"), self.localize(pod, ip, config)).unwrap();
        // The Secret's keys the pod's `secrets` volume selects (all without items).
        let items = spec["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "secrets").unwrap()
            ["secret"]["items"]
            .as_array()
            .map(|items| items.iter().map(|i| i["key"].as_str().unwrap().to_owned()).collect::<Vec<_>>());
        for (k, v) in secrets {
            if items.as_ref().is_none_or(|keys| keys.contains(k)) {
                std::fs::write(etc.join("secrets").join(k), v).unwrap();
            }
        }
        std::fs::copy(ca.join("ca.pem"), etc.join("ca/ca.pem")).unwrap();
        // The CA key where the pod mounts it: the voters' `ca-key` volume (the edges
        // have none, and get their certificates from the voters).
        if mount_paths(spec).contains(&"/etc/ferry/ca-key".to_owned()) {
            std::fs::copy(ca.join("ca-key.pem"), etc.join("ca-key/ca-key.pem")).unwrap();
        }
    }
}

/// What the release gives every pod: the config file, the Secrets' values, the CA.
struct Release {
    config: String,
    secrets: BTreeMap<String, String>,
    keyring: BTreeMap<String, String>,
    ca: PathBuf,
}

/// Every mount path of the pod's containers (init containers included).
fn mount_paths(spec: &Value) -> Vec<String> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().cloned().unwrap_or_default())
        .flat_map(|c| c["volumeMounts"].as_array().cloned().unwrap_or_default())
        .map(|m| m["mountPath"].as_str().unwrap().to_owned())
        .collect()
}

fn base64_decode(s: &str) -> String {
    let mut child =
        Command::new("base64").arg("-d").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

fn try_get(addr: &str, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer.iter().map(|b| ("authorization", b.as_str())).collect();
    let reply = support::http::exchange(addr, "GET", path, &headers, b"", Duration::from_secs(5)).ok()?;
    Some((reply.status, reply.text()))
}

/// Metric names (`ferry_…`) an expression or dashboard refers to.
fn referenced_metrics(text: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("ferry_") {
        let start = i + pos;
        let before_ok = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map(|e| start + e)
            .unwrap_or(text.len());
        if before_ok && end > start + 6 {
            names.push(text[start..end].to_owned());
        }
        i = end;
    }
    names.sort();
    names.dedup();
    names
}

/// Whether the exposition `text` has metric `name` (a sample, or the family of a
/// counter/histogram that has no samples yet).
fn exposes(text: &str, name: &str) -> bool {
    let family = name.trim_end_matches("_total").trim_end_matches("_bucket");
    text.lines()
        .any(|l| l.split(['{', ' ']).next() == Some(name) || l.starts_with(&format!("# TYPE {family} ")))
}

#[test]
fn a_cluster_started_from_the_rendered_chart_plays_a_stream_and_has_every_charted_metric() {
    let _heavy = heavy();
    let objects = render(&["full.yaml"]);
    let dir = TempDir::new("chart-cluster");
    let config = find(&objects, "ConfigMap", "-config")["data"]["ferry.toml"].as_str().unwrap().to_owned();
    let sts = find(&objects, "StatefulSet", "-control");
    let edge = find(&objects, "Deployment", "-edge");
    let replicas = sts["spec"]["replicas"].as_u64().unwrap();
    assert_eq!(replicas, 3);
    let sts_name = sts["metadata"]["name"].as_str().unwrap();
    let headless = sts["spec"]["serviceName"].as_str().unwrap();
    let control_svc = find(&objects, "Service", "-control");
    let control_svc = control_svc["metadata"]["name"].as_str().unwrap();

    // Pod IPs: voters 127.0.0.11.., edges 127.0.0.21..; the cluster's DNS names.
    let voter_ip = |i: u64| format!("127.0.0.{}", 11 + i);
    let mut dns: Vec<(String, String)> = (0..replicas)
        .map(|i| (format!("{sts_name}-{i}.{headless}.default.svc.cluster.local"), voter_ip(i)))
        .collect();
    dns.push((format!("{control_svc}.default.svc.cluster.local"), voter_ip(0)));
    let pods = Pods { root: dir.path().to_owned(), dns };

    // full.yaml gives its own Secrets (auth.existingSecret, tls existing): make them as
    // an operator would, the CA with the hook Job's own command.
    let token = "chart-test-operator-token-0123456789".to_owned();
    let secrets: BTreeMap<String, String> = [
        ("operator-token".to_owned(), token.clone()),
        ("token-secret".to_owned(), TOKEN_SECRET.to_owned()),
        ("join-token".to_owned(), "chart-test-join-token-0123456789".to_owned()),
    ]
    .into();
    let ca = dir.path().join("ca");
    let default_objects = render(&[]);
    let hook = find(&default_objects, "Job", "-ca-init");
    let init = &hook["spec"]["template"]["spec"]["initContainers"][0];
    let args: Vec<String> = init["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().replace("/ca", ca.to_str().unwrap()))
        .collect();
    let out = ferry().args(&args).output().unwrap();
    assert!(out.status.success(), "ferry {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    // The chart's own Secret (default values) has both keys the pods read.
    let secret = find(&default_objects, "Secret", "-secrets");
    for key in ["operator-token", "token-secret", "join-token"] {
        assert!(base64_decode(secret["data"][key].as_str().unwrap()).len() >= 16, "{key}");
    }

    // The gossip keyring the chart generated (full.yaml keeps it), as kubelet mounts it.
    let ring = find(&objects, "Secret", "-gossip-keyring");
    let keyring: BTreeMap<String, String> = ring["data"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), base64_decode(v.as_str().unwrap())))
        .collect();
    assert_eq!(keyring["k1.key"].len(), 64, "a 32-byte key in hex");
    assert_eq!(keyring["primary"], "k1");

    let release = Release {
        config: config.clone(),
        secrets: secrets.clone(),
        keyring: keyring.clone(),
        ca: ca.clone(),
    };
    let mut procs = Vec::new();
    let start_pod = |pod: &str, ip: &str, spec: &Value, procs: &mut Vec<Proc>| {
        pods.volumes(pod, ip, spec, &release);
        // Init containers issue certificates from the CA key: the test gives it to them
        // where the voters' pods mount the CA Secret whole for them, then takes it away.
        let inits = spec["initContainers"].as_array().cloned().unwrap_or_default();
        let ca_dir = pods.root.join(pod).join("etc/ferry/ca");
        if !inits.is_empty() {
            std::fs::copy(ca.join("ca-key.pem"), ca_dir.join("ca-key.pem")).unwrap();
        }
        for init in &inits {
            let out = pods.command(pod, ip, init).output().unwrap();
            assert!(out.status.success(), "{pod} init: {}", String::from_utf8_lossy(&out.stderr));
        }
        // The running container mounts the CA certificate at /etc/ferry/ca only
        // (charts/check.py checks the manifest).
        let _ = std::fs::remove_file(ca_dir.join("ca-key.pem"));
        let mut cmd = pods.command(pod, ip, &spec["containers"][0]);
        cmd.stdout(Stdio::null());
        procs.push(Proc::spawn(pod, &mut cmd));
    };
    let voter_spec = &sts["spec"]["template"]["spec"];
    for i in 0..replicas {
        start_pod(&format!("{sts_name}-{i}"), &voter_ip(i), voter_spec, &mut procs);
    }
    let api_port = voter_spec["containers"][0]["ports"][0]["containerPort"].as_u64().unwrap();
    // The voters' API is HTTPS (their node certificates, issued by the init container).
    let api = |i: u64| format!("https://{}:{api_port}", voter_ip(i));
    wait_for("a raft leader, every voter ready", Duration::from_secs(60), || {
        (0..replicas).all(|i| try_get(&api(i), "/readyz", None).is_some_and(|(s, _)| s == 200)).then_some(())
    });
    let edge_spec = &edge["spec"]["template"]["spec"];
    let edge_name = edge["metadata"]["name"].as_str().unwrap();
    let edge_pods: Vec<(String, String)> =
        (0..2).map(|i| (format!("{edge_name}-{i}"), format!("127.0.0.{}", 21 + i))).collect();
    for (pod, ip) in &edge_pods {
        start_pod(pod, ip, edge_spec, &mut procs);
    }
    wait_for("both edges registered and alive in gossip", Duration::from_secs(60), || {
        let (status, body) = try_get(&api(0), "/v1/edges?stale=true", Some(&token))?;
        let body: Value = serde_json::from_str(&body).ok()?;
        let edges = body["edges"].as_array()?;
        (status == 200 && edges.len() == 2 && edges.iter().all(|e| e["gossip"]["alive"] == true))
            .then_some(())
    });
    // The edges got their certificates from the voters (the join token), not a CA key.
    for (pod, _) in &edge_pods {
        let etc = dir.path().join(pod).join("etc/ferry");
        assert!(etc.join("node/node.pem").exists(), "{pod} has its certificate");
        assert!(
            !etc.join("ca/ca-key.pem").exists() && !etc.join("ca-key/ca-key.pem").exists(),
            "{pod} saw the CA key"
        );
    }
    let (_, edges) = try_get(&api(0), "/v1/edges?stale=true", Some(&token)).unwrap();
    let edges: Value = serde_json::from_str(&edges).unwrap();
    for e in edges["edges"].as_array().unwrap() {
        assert_eq!(e["region"], "eu-west", "the chart's region: {e}");
        let quic = e["quic_addr"].as_str().unwrap();
        assert!(quic.starts_with("127.0.0.2") && quic.ends_with(":4433"), "advertised at the pod IP: {e}");
    }

    // A viewer on the second edge plays a stream published on the first: the edges
    // relay to each other with the chart's cluster certificates.
    let quic_port = edge_spec["containers"][0]["ports"][0]["containerPort"].as_u64().unwrap();
    let (first, second) =
        (format!("{}:{quic_port}", edge_pods[0].1), format!("{}:{quic_port}", edge_pods[1].1));
    let mut cmd = ferry();
    cmd.args(["publish", "--edge", &first, "--stream", "live/chart", "--synthetic", "--insecure"])
        .args(["--duration", "120s", "--token", &client_token(ferry_edge::auth::Action::Publish)])
        .stdout(Stdio::null());
    let _publisher = Proc::spawn("publisher", &mut cmd);
    let http_port = edge_spec["containers"][0]["ports"][1]["containerPort"].as_u64().unwrap();
    let edge_http = |i: usize| format!("{}:{http_port}", edge_pods[i].1);
    wait_for("the stream on the first edge", Duration::from_secs(30), || {
        let (_, m) = try_get(&edge_http(0), "/metrics", None)?;
        (metric_value(&m, "ferry_streams").unwrap_or(0.0) >= 1.0).then_some(())
    });
    wait_for("the stream's origin in the control plane", Duration::from_secs(30), || {
        let (status, body) = try_get(&api(0), "/v1/streams/live/chart?stale=true", Some(&token))?;
        (status == 200 && body.contains(&edge_pods[0].0)).then_some(())
    });
    // The second edge learns the origin through its watch or gossip; until then a
    // viewer is told not_found and tries again.
    let stats = wait_for("a viewer on the second edge plays", Duration::from_secs(60), || {
        let out = ferry()
            .args(["watch", "--edge", &second, "--stream", "live/chart", "--insecure", "--duration", "3s"])
            .args(["--json", "--token", &client_token(ferry_edge::auth::Action::View)])
            .output()
            .unwrap();
        let stats: Value = serde_json::from_slice(&out.stdout).ok()?;
        (stats["frames"].as_u64()? > 0).then_some(stats)
    });
    println!("viewer on {second}: {stats}");

    // An operator's rollout, and a client that breaks the protocol in its treatment:
    // the rollout's level, state and error series exist.
    let out = ferry()
        .args([
            "ctl",
            "--control",
            &api(0),
            "--token",
            &token,
            "--ca-file",
            ca.join("ca.pem").to_str().unwrap(),
        ])
        .args(["rollout", "create", "chart-check", "--spec", r#"{"override":{"client_flag":"c"}}"#])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = ferry()
        .args([
            "ctl",
            "--control",
            &api(0),
            "--token",
            &token,
            "--ca-file",
            ca.join("ca.pem").to_str().unwrap(),
        ])
        .args(["rollout", "level", "chart-check", "4"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("a treated session that breaks the protocol is counted", Duration::from_secs(30), || {
        misbehave(&second);
        let (_, m) = try_get(&edge_http(1), "/metrics", None)?;
        m.contains("ferry_rollout_errors_total{rollout=\"chart-check\",cohort=\"treatment\"").then_some(())
    });

    // Every metric the chart's alerts and dashboard use exists on this cluster.
    let rule = find(&objects, "PrometheusRule", "");
    let dashboard = find(&objects, "ConfigMap", "-dashboard");
    let mut wanted = referenced_metrics(&rule.to_string());
    wanted.extend(referenced_metrics(dashboard["data"]["ferry.json"].as_str().unwrap()));
    wanted.sort();
    wanted.dedup();
    assert!(wanted.len() >= 15, "{wanted:?}");
    let mut exposition = String::new();
    for i in 0..replicas {
        exposition += &try_get(&api(i), "/metrics", None).unwrap().1;
    }
    for i in 0..2 {
        exposition += &try_get(&edge_http(i), "/metrics", None).unwrap().1;
    }
    let missing: Vec<&String> = wanted.iter().filter(|m| !exposes(&exposition, m)).collect();
    assert!(missing.is_empty(), "metrics the chart uses but Ferry does not export: {missing:?}");
    println!("{} metrics referenced by the chart, all exported: {wanted:?}", wanted.len());
    drop(procs);
}

/// The chart's token secret (the Secret's `token-secret` key) in the test.
const TOKEN_SECRET: &str = "chart-test-jwt-secret";

/// A client token for the chart's edges: signed with its secret (key id
/// `token-secret`, the mounted file's name) for its cluster id.
fn client_token(action: ferry_edge::auth::Action) -> String {
    use ferry_edge::auth::{Claims, StreamScope, TokenSecret};
    let secret = TokenSecret::from_bytes(TOKEN_SECRET.as_bytes()).unwrap();
    let claims = Claims::new(
        StreamScope::Prefix("live/".into()),
        action,
        "ferry",
        Duration::from_secs(600),
        std::time::SystemTime::now(),
    );
    secret.sign(&claims, Some("token-secret"))
}

/// A QUIC viewer placed in the rollouts that then sends a publisher's message: the edge
/// closes it with protocol_violation, an error of its cohort.
fn misbehave(quic: &str) {
    use ferry_net::dial::{connect, SessionHello};
    use ferry_net::tls::{ClientTrust, TransportTuning};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let node = ferry_proto::NodeId::new("misbehaving").unwrap();
        let token = client_token(ferry_edge::auth::Action::View);
        let session = SessionHello { id: Some("bad-client".into()), tags: vec![], token: Some(token) };
        let Ok(mut link) = connect(
            quic,
            &ClientTrust::Insecure,
            &TransportTuning::default(),
            node,
            ferry_proto::Role::Viewer,
            &session,
        )
        .await
        else {
            return;
        };
        let announce = ferry_proto::Message::Announce {
            stream: ferry_proto::StreamName::new("live/nope").unwrap(),
            tracks: vec![],
        };
        let _ = ferry_net::wire::write_message(&mut link.send, link.version, &announce).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), link.conn.closed()).await;
    });
}
