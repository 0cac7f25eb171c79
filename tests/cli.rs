//! The `ferry` command line as a user meets it: config precedence, errors and exit
//! codes, TLS with a cluster CA, shutdown on SIGTERM, and `ferry dev`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use support::*;

fn ready_node(cmd: &mut std::process::Command) -> String {
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut proc = Proc::spawn("edge", cmd);
    let mut line = String::new();
    BufReader::new(proc.child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let ready: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    ready["node"].as_str().unwrap().to_owned()
}

#[test]
fn flags_come_from_the_command_line_then_the_environment_then_the_config_file() {
    let dir = TempDir::new("config");
    let file = dir.path().join("ferry.toml");
    std::fs::write(
        &file,
        "log = \"warn\"\n[edge]\nnode-id = \"from-file\"\nquic-listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let config = file.to_str().unwrap();
    assert_eq!(ready_node(ferry().args(["edge", "--config", config])), "from-file");
    assert_eq!(
        ready_node(ferry().args(["edge", "--config", config]).env("FERRY_NODE_ID", "from-env")),
        "from-env"
    );
    assert_eq!(
        ready_node(
            ferry().args(["edge", "--config", config, "--node-id", "from-cli"]).env("FERRY_NODE_ID", "x")
        ),
        "from-cli"
    );

    std::fs::write(&file, "[edge]\nnode-idd = \"typo\"\n").unwrap();
    let out = ferry().args(["edge", "--config", config]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("node-idd"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_command_lines_exit_non_zero_with_a_clear_message() {
    let cases: [(&[&str], i32, &str); 4] = [
        (&["publish", "--edge", "127.0.0.1:1", "--stream", "live/a", "--insecure"], 2, "--synthetic"),
        (&["watch", "--edge", "127.0.0.1:1", "--stream", "../etc", "--insecure"], 1, "invalid stream name"),
        (&["watch", "--edge", "127.0.0.1:1", "--stream", "live/a"], 1, "--ca-file"),
        (
            &["publish", "--edge", "127.0.0.1:1", "--stream", "live/a", "--synthetic", "--bitrate", "fast"],
            2,
            "bit rate",
        ),
    ];
    for (args, code, needle) in cases {
        let out = ferry().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: expected {needle:?} in {stderr}");
    }
}

#[test]
fn watching_a_stream_nobody_publishes_fails_with_not_found() {
    let edge = Edge::start("nf", &[]);
    let mut cmd = ferry();
    cmd.args(["watch", "--edge", &edge.quic, "--stream", "live/nobody", "--insecure"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = Proc::spawn("watcher", &mut cmd).wait_output(Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not_found") && stderr.contains("live/nobody"), "{stderr}");
}

#[test]
fn clients_verify_the_edge_against_the_cluster_ca() {
    let dir = TempDir::new("tls");
    let good = dir.path().join("good");
    let other = dir.path().join("other");
    for d in [&good, &other] {
        let out = ferry().args(["cert", "--out-dir", d.to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let cert = good.join("cert.pem");
    let key = good.join("key.pem");
    let edge = Edge::start("tls", &["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()]);
    let ca = good.join("ca.pem");
    let mut cmd = ferry();
    cmd.args(["publish", "--edge", &edge.quic, "--stream", "live/tls", "--synthetic", "--duration", "20s"])
        .args(["--ca-file", ca.to_str().unwrap()])
        .stdout(Stdio::null());
    let _publisher = Proc::spawn("publisher", &mut cmd);
    wait_for_stream(&edge);

    let mut cmd = ferry();
    cmd.args(["watch", "--edge", &edge.quic, "--stream", "live/tls", "--json", "--duration", "2s"])
        .args(["--ca-file", ca.to_str().unwrap()])
        .stdout(Stdio::piped());
    let watched = json_output(Proc::spawn("watcher", &mut cmd), Duration::from_secs(20));
    assert!(watched["frames"].as_u64().unwrap() > 0, "{watched}");

    let wrong = other.join("ca.pem");
    let out = ferry()
        .args(["watch", "--edge", &edge.quic, "--stream", "live/tls", "--duration", "2s"])
        .args(["--ca-file", wrong.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
}

#[test]
fn sigterm_tells_viewers_to_go_away_and_the_edge_exits_cleanly() {
    let edge = Edge::start("term", &["--shutdown-grace", "3s"]);
    let _publisher = publish_synthetic(&edge, "live/term", "60s");
    wait_for_stream(&edge);
    let viewer = watch(&edge, "live/term", &[]);
    wait_for("the viewer to subscribe", Duration::from_secs(20), || {
        (edge.metric_sum("ferry_subscriptions") >= 1.0).then_some(())
    });
    let (status, _) = http_get(&edge.http, "/readyz");
    assert_eq!(status, 200);
    edge.proc.terminate();
    let Edge { proc, .. } = edge;
    let out = proc.wait_output(Duration::from_secs(15));
    assert!(out.status.success(), "edge exit: {:?}", out.status);
    let v = json_output(viewer, Duration::from_secs(15));
    let ended = v["ended"].as_str().unwrap();
    assert!(ended == "edge going away" || ended == "track ended", "{v}");
    assert!(v["frames"].as_u64().unwrap() > 0);
}

#[test]
fn ferry_dev_serves_a_demo_stream_that_ferry_watch_plays() {
    let mut cmd = ferry();
    let dir = TempDir::new("dev");
    let log = dir.path().join("dev.log");
    cmd.args(["dev", "--quic-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(["--edge-b-quic-listen", "127.0.0.1:0", "--edge-b-http-listen", "127.0.0.1:0"])
        .args(["--control-listen", "127.0.0.1:0", "--raft-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut dev = Proc::spawn("ferry dev", &mut cmd);
    let mut lines = BufReader::new(dev.child.stdout.take().unwrap()).lines();
    let printed: Vec<String> = lines.by_ref().take(9).map(|l| l.unwrap()).collect();
    // The browser demo pages it points to are served.
    for label in ["Publish from a browser", "Watch in a browser"] {
        let line =
            printed.iter().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("no {label:?} line"));
        let url = line.split_whitespace().last().unwrap();
        let (addr, path) = url.trim_start_matches("http://").split_once('/').unwrap();
        let (status, body) = http_get(addr, &format!("/{path}"));
        assert_eq!(status, 200, "{url}");
        assert!(
            body.contains("/demo/ferry.js") && body.contains("RTCPeerConnection"),
            "{url} is not a demo page"
        );
        let (status, script) = http_get(addr, "/demo/ferry.js");
        assert_eq!(status, 200);
        assert!(script.contains("window.ferry"), "the pages' shared script");
    }
    let watch_line =
        printed.iter().find(|l| l.contains("watch --edge")).expect("ferry dev printed no watch command");
    let ctl_line =
        printed.iter().find(|l| l.contains("ctl --control")).expect("ferry dev printed no ctl command");
    let args: Vec<&str> = watch_line.split_whitespace().collect();
    let edge = args[args.iter().position(|a| *a == "--edge").unwrap() + 1];
    let stream = args[args.iter().position(|a| *a == "--stream").unwrap() + 1];
    let token = args[args.iter().position(|a| *a == "--token").unwrap() + 1];
    assert_eq!(stream, "live/demo");
    // The dev edges need the tokens the banner carries.
    let out = ferry()
        .args(["watch", "--edge", edge, "--stream", stream, "--insecure", "--duration", "1s"])
        .output();
    let stderr = String::from_utf8_lossy(&out.unwrap().stderr).into_owned();
    assert!(stderr.contains("token_missing"), "an anonymous viewer is refused: {stderr}");
    let mut cmd = ferry();
    cmd.args(["watch", "--edge", edge, "--stream", stream, "--insecure", "--json", "--duration", "2s"])
        .args(["--token", token])
        .stdout(Stdio::piped());
    let v = json_output(Proc::spawn("watcher", &mut cmd), Duration::from_secs(20));
    assert!(v["frames"].as_u64().unwrap() > 0, "{v}");
    // A normal start warns about nothing.
    let started = std::fs::read_to_string(&log).unwrap();
    assert!(!started.contains("WARN") && !started.contains("ERROR"), "ferry dev started with:\n{started}");

    // The routed command lands on the second edge, which pulls from the first.
    let routed_line = printed.iter().find(|l| l.starts_with("Routed:")).expect("no routed watch line");
    let routed: Vec<&str> = routed_line.split_whitespace().skip_while(|a| *a != "watch").collect();
    let mut cmd = ferry();
    cmd.args(&routed).args(["--json"]).stdout(Stdio::piped());
    let v = json_output(Proc::spawn("routed watcher", &mut cmd), Duration::from_secs(30));
    assert!(v["frames"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["legs"][0]["edge"], "dev-edge-b", "{v}");

    // Both dev edges registered themselves with the dev control plane.
    let ctl_args: Vec<&str> = ctl_line.split_whitespace().skip_while(|a| *a != "ctl").collect();
    let out =
        ferry().args(&ctl_args[..ctl_args.len() - 2]).args(["--json", "edges", "list"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let edges: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(edges["edges"][0]["id"], "dev-edge", "{edges}");
    assert_eq!(edges["edges"][1]["id"], "dev-edge-b", "{edges}");
    drop(dev);
}

#[test]
fn ferry_dev_with_three_voters_runs_a_replicated_control_plane() {
    let mut cmd = ferry();
    let dir = TempDir::new("dev3");
    cmd.args(["dev", "--voters", "3", "--quic-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(["--edge-b-quic-listen", "127.0.0.1:0", "--edge-b-http-listen", "127.0.0.1:0"])
        .args(["--control-listen", "127.0.0.1:0", "--raft-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--webrtc-udp-ports", "51200-51299"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut dev = Proc::spawn("ferry dev --voters 3", &mut cmd);
    let lines: Vec<String> =
        BufReader::new(dev.child.stdout.take().unwrap()).lines().take(3).map(|l| l.unwrap()).collect();
    let watch_line = lines.iter().find(|l| l.starts_with("Watch it:")).expect("no watch line");
    let words: Vec<&str> = watch_line.split_whitespace().collect();
    let token = words[words.iter().position(|a| *a == "--token").unwrap() + 1].to_owned();
    let line =
        lines.iter().find(|l| l.starts_with("Control plane (3 voter(s)")).expect("no control plane line");
    let urls: Vec<&str> = line.split_whitespace().last().unwrap().split(',').collect();
    assert_eq!(urls.len(), 3, "{line}");
    for url in &urls {
        let addr = url.trim_start_matches("http://");
        let cluster = wait_for("a leader known to every dev voter", Duration::from_secs(20), || {
            let (_, body) =
                http_json(addr, "GET", "/v1/cluster", Some("ferry-dev-operator-token"), &[], None);
            (body["leader"].as_u64().unwrap_or(0) != 0).then_some(body)
        });
        assert_eq!(cluster["voters"].as_array().unwrap().len(), 3, "{cluster}");
    }
    let addr = urls[0].trim_start_matches("http://");
    wait_for("both dev edges registered", Duration::from_secs(20), || {
        let (_, body) = http_json(addr, "GET", "/v1/edges", Some("ferry-dev-operator-token"), &[], None);
        (body["edges"].as_array()?.len() == 2).then_some(())
    });
    let ctl = |args: &[&str]| {
        let out = ferry()
            .args(["ctl", "--control", &urls.join(","), "--token", "ferry-dev-operator-token"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "ctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let routed_watch = |region: &str| {
        let mut cmd = ferry();
        cmd.args(["watch", "--control-plane", &urls.join(","), "--region", region, "--stream", "live/demo"])
            .args(["--insecure", "--json", "--duration", "2s", "--token", &token])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        json_output(Proc::spawn("routed watcher", &mut cmd), Duration::from_secs(40))
    };
    // A routed viewer's legs say where the rollouts placed them.
    ctl(&["rollout", "create", "flag", "--spec", r#"{"override":{"client_flag":"dev-flag"}}"#]);
    ctl(&["rollout", "level", "flag", "4"]);
    let v = wait_for("a routed leg in the treatment", Duration::from_secs(30), || {
        let v = routed_watch("local-a");
        (v["legs"][0]["variant"] == "flag=treatment").then_some(v)
    });
    assert_eq!(v["legs"][0]["edge"], "dev-edge", "{v}");
    assert_eq!(v["legs"][0]["client_flag"], "dev-flag", "{v}");
    assert!(v["frames"].as_u64().unwrap() > 0, "{v}");

    // Draining the publisher's edge stops that edge only: the demo publisher moves
    // to the other edge and viewers of its region are served there.
    ctl(&["edges", "drain", "dev-edge"]);
    wait_for("dev-edge gone from gossip", Duration::from_secs(40), || {
        let (_, body) = http_json(addr, "GET", "/v1/edges", Some("ferry-dev-operator-token"), &[], None);
        let edges = body["edges"].as_array()?;
        edges.iter().all(|e| e["id"] != "dev-edge" || e["gossip"]["alive"] == false).then_some(())
    });
    // The demo publisher re-routed: its stream is now recorded on the other edge.
    wait_for("the demo publisher on dev-edge-b", Duration::from_secs(40), || {
        let (status, body) =
            http_json(addr, "GET", "/v1/streams/live/demo", Some("ferry-dev-operator-token"), &[], None);
        (status == 200 && body["origin"] == "dev-edge-b").then_some(())
    });
    let v = routed_watch("local-a");
    assert!(v["frames"].as_u64().unwrap() > 0, "{v}");
    assert!(v["legs"].as_array().unwrap().iter().all(|l| l["edge"] == "dev-edge-b"), "{v}");
    assert!(dev.child.try_wait().unwrap().is_none(), "ferry dev exited when one edge was drained");
    drop(dev);
}

#[test]
fn docs_configuration_md_is_what_the_binary_generates() {
    let out = ferry().args(["docs", "configuration"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let generated = String::from_utf8(out.stdout).unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        generated == committed,
        "docs/configuration.md is out of date: run `cargo run -- docs configuration > docs/configuration.md`"
    );
    // It lists every flag, with its environment variable and default.
    for line in [
        "| `--advertise-host` | `FERRY_ADVERTISE_HOST` |",
        "| `--shutdown-grace` | `FERRY_SHUTDOWN_GRACE` | `30s` |",
        "## `ferry control`",
        "## `ferry ctl rollout level`",
    ] {
        assert!(generated.contains(line), "missing {line:?}");
    }
}

#[test]
fn an_edge_in_a_cluster_listening_on_every_interface_needs_an_advertised_host() {
    let out = ferry()
        .args(["edge", "--node-id", "x", "--quic-listen", "0.0.0.0:0", "--http-listen", "127.0.0.1:0"])
        .args(["--control-plane", "http://127.0.0.1:9", "--control-token", "0123456789abcdef"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--advertise-host"), "{stderr}");
}

#[test]
fn what_users_read_names_what_failed_and_what_to_do() {
    let dir = TempDir::new("people");
    // A port in use: the error names the address and the flag, once.
    let mut first = ferry();
    first
        .args(["edge", "--node-id", "a", "--quic-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut edge = Proc::spawn("edge a", &mut first);
    let mut line = String::new();
    BufReader::new(edge.child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let ready: serde_json::Value = serde_json::from_str(&line).unwrap();
    let taken = ready["http"].as_str().unwrap().to_owned();
    let out = ferry()
        .args(["edge", "--node-id", "b", "--quic-listen", "127.0.0.1:0", "--http-listen", &taken])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&taken) && stderr.contains("--http-listen"), "{stderr}");
    assert_eq!(stderr.matches("Address already in use").count(), 1, "{stderr}");

    // Logs to a pipe are plain text, and values read as values.
    drop(edge);
    let mut logged = ferry();
    logged
        .args(["edge", "--node-id", "c", "--quic-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut edge = Proc::spawn("edge c", &mut logged);
    let mut line = String::new();
    BufReader::new(edge.child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let stderr = BufReader::new(edge.child.stderr.take().unwrap());
    let log = stderr.lines().map(|l| l.unwrap()).find(|l| l.contains("edge serving")).unwrap();
    assert!(!log.contains('\u{1b}'), "ANSI colour codes in a log that goes to a pipe: {log:?}");
    assert!(!log.contains("Some("), "{log}");
    drop(edge);

    // `ferry cert` never replaces a CA by surprise.
    let certs = dir.path().join("certs");
    let certs_arg = certs.to_str().unwrap();
    assert!(ferry().args(["cert", "--out-dir", certs_arg]).output().unwrap().status.success());
    let ca = std::fs::read(certs.join("ca.pem")).unwrap();
    let again = ferry().args(["cert", "--out-dir", certs_arg]).output().unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success() && stderr.contains("--force"), "{stderr}");
    assert_eq!(std::fs::read(certs.join("ca.pem")).unwrap(), ca, "the CA is unchanged");
    assert!(ferry().args(["cert", "--out-dir", certs_arg, "--force"]).output().unwrap().status.success());
    assert_ne!(std::fs::read(certs.join("ca.pem")).unwrap(), ca, "--force replaces it");

    // Config values are checked where they are written; documented minimums hold.
    let file = dir.path().join("ferry.toml");
    std::fs::write(&file, "[edge]\nnode-id = \"x\"\ngroup-cache = \"four\"\n").unwrap();
    let out = ferry().args(["edge", "--config", file.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("key `edge.group-cache`") && stderr.contains(file.to_str().unwrap()), "{stderr}");
    let out = ferry().args(["edge", "--node-id", "x", "--group-cache", "0"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("at least 1"), "{stderr}");
    // One file serves several commands: `ctl` ignores an edge's top-level keys.
    std::fs::write(&file, "node-id = \"x\"\n").unwrap();
    let out = ferry()
        .args(["ctl", "--config", file.to_str().unwrap(), "--control-plane", "http://127.0.0.1:9"])
        .args(["--control-token", "0123456789abcdef", "--timeout", "300ms", "edges", "list"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("node-id") && stderr.contains("no control-plane voter"), "{stderr}");
}
