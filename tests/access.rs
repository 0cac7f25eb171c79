//! Who may publish and watch (docs/security.md), on real `ferry` processes on
//! loopback: tokens on QUIC and WHIP/WHEP, secret rotation, expiry during a session,
//! and one publisher per stream across a `ferry dev` cluster (busy, takeover, no
//! ghost, no write storm).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use ferry_edge::auth::{base64url, Action, Claims, StreamScope, TokenSecret};
use support::webrtc::{header, http, port_range, vp8_offer};
use support::*;

/// Signs `claims` with the secret in `file`, naming `kid`.
fn sign(file: &Path, kid: Option<&str>, claims: &Claims) -> String {
    TokenSecret::from_file(file).unwrap().sign(claims, kid)
}

fn claims(stream: &str, action: Action, aud: &str, ttl: Duration) -> Claims {
    Claims::new(StreamScope::Exact(stream.into()), action, aud, ttl, SystemTime::now())
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

/// Every way a token can be wrong for `stream`/`action` on a cluster `aud` whose
/// edges hold `key` (kid `kid`), with the reason the edge must give.
fn bad_tokens(
    key: &Path,
    kid: &str,
    stranger: &Path,
    stream: &str,
    action: Action,
    aud: &str,
) -> Vec<(&'static str, Option<String>, &'static str)> {
    let good = || claims(stream, action, aud, Duration::from_secs(600));
    let other_action = match action {
        Action::Publish => Action::View,
        Action::View => Action::Publish,
    };
    let mut expired = good();
    expired.iat = unix_now() - 120;
    expired.exp = unix_now() - 60;
    let mut not_yet = good();
    not_yet.nbf = Some(unix_now() + 3600);
    not_yet.exp = unix_now() + 7200;
    let mut future_iat = good();
    future_iat.iat = unix_now() + 3600;
    future_iat.exp = unix_now() + 7200;
    let mut huge = good();
    huge.sub = Some("x".repeat(5 * 1024));
    let valid = sign(key, Some(kid), &good());
    let payload = valid.split('.').nth(1).unwrap();
    let alg_none = format!("{}.{payload}.", base64url::encode(br#"{"alg":"none","typ":"JWT"}"#));
    vec![
        ("no token", None, "token_missing"),
        (
            "another stream",
            Some(sign(key, Some(kid), &claims("live/other", action, aud, Duration::from_secs(600)))),
            "token_wrong_stream",
        ),
        (
            "the other action",
            Some(sign(key, Some(kid), &claims(stream, other_action, aud, Duration::from_secs(600)))),
            "token_wrong_action",
        ),
        ("expired", Some(sign(key, Some(kid), &expired)), "token_expired"),
        ("nbf in the future", Some(sign(key, Some(kid), &not_yet)), "token_not_yet_valid"),
        ("iat in the future", Some(sign(key, Some(kid), &future_iat)), "token_issued_in_future"),
        (
            "another audience",
            Some(sign(key, Some(kid), &claims(stream, action, "other-cluster", Duration::from_secs(600)))),
            "token_wrong_audience",
        ),
        ("alg none", Some(alg_none), "token_unsupported_alg"),
        ("5 KiB", Some(sign(key, Some(kid), &huge)), "token_malformed"),
        ("an unknown kid", Some(sign(stranger, Some("retired"), &good())), "token_unknown_key"),
        ("a forged signature", Some(sign(stranger, Some(kid), &good())), "token_bad_signature"),
    ]
}

/// Runs `ferry publish|watch` to completion: (succeeded, stderr).
fn run_client(args: &[&str], token: Option<&str>, timeout: Duration) -> (bool, String) {
    let mut cmd = ferry();
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    if let Some(token) = token {
        cmd.args(["--token", token]);
    }
    let out = Proc::spawn(args[0], &mut cmd).wait_output(timeout);
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn write_key(path: &Path, fill: &str) -> PathBuf {
    std::fs::write(path, fill.repeat(32)).unwrap();
    path.to_owned()
}

#[test]
fn every_bad_token_is_refused_with_its_reason_before_any_track_exists() {
    let dir = TempDir::new("access-refusals");
    let key = write_key(&dir.path().join("k1.key"), "a");
    let stranger = write_key(&dir.path().join("stranger.key"), "b");
    let ports = port_range();
    let edge = Edge::start(
        "e",
        &[
            "--token-secret-file",
            key.to_str().unwrap(),
            "--cluster-id",
            "prod",
            "--webrtc-bind",
            "127.0.0.1",
            "--webrtc-udp-ports",
            &ports,
        ],
    );
    let stream = "live/a";
    let publish_args = [
        "publish",
        "--edge",
        &edge.quic,
        "--stream",
        stream,
        "--synthetic",
        "--insecure",
        "--duration",
        "20s",
    ];
    let watch_args = ["watch", "--edge", &edge.quic, "--stream", stream, "--insecure", "--duration", "2s"];

    // QUIC publishers: each refused with its reason, and no track created.
    for (case, token, reason) in bad_tokens(&key, "k1", &stranger, stream, Action::Publish, "prod") {
        let (ok, stderr) = run_client(&publish_args, token.as_deref(), Duration::from_secs(20));
        assert!(!ok, "a publisher with {case} was accepted");
        assert!(stderr.contains(reason), "publisher with {case}: wanted {reason}, got {stderr}");
    }
    assert_eq!(edge.metric("ferry_tracks_created_total"), Some(0.0), "refused publishers created tracks");
    assert_eq!(edge.metric("ferry_streams"), Some(0.0));

    // A valid publisher plays; refused viewers get no subscription.
    let publish_token =
        sign(&key, Some("k1"), &claims(stream, Action::Publish, "prod", Duration::from_secs(600)));
    let mut cmd = ferry();
    cmd.args(publish_args).args(["--token", &publish_token]).stdout(Stdio::null());
    let _publisher = Proc::spawn("publisher", &mut cmd);
    wait_for_stream(&edge);
    for (case, token, reason) in bad_tokens(&key, "k1", &stranger, stream, Action::View, "prod") {
        let (ok, stderr) = run_client(&watch_args, token.as_deref(), Duration::from_secs(20));
        assert!(!ok, "a viewer with {case} was accepted");
        assert!(stderr.contains(reason), "viewer with {case}: wanted {reason}, got {stderr}");
    }
    let metrics = edge.metrics();
    assert!(!metrics.contains("ferry_subscriptions{"), "refused viewers were subscribed:\n{metrics}");
    assert_eq!(
        metric_value(&metrics, "ferry_tracks_created_total"),
        Some(1.0),
        "only the valid publisher's track"
    );
    for reason in ["token_missing", "token_expired", "token_wrong_stream", "token_unsupported_alg"] {
        let sample = format!("ferry_auth_refusals_total{{reason=\"{reason}\"}}");
        assert!(metric_value(&metrics, &sample).unwrap_or(0.0) >= 2.0, "{sample} not counted");
    }
    let view_token = sign(&key, Some("k1"), &claims(stream, Action::View, "prod", Duration::from_secs(600)));
    let mut cmd = ferry();
    cmd.args(watch_args).args(["--json", "--token", &view_token]).stdout(Stdio::piped());
    let v = json_output(Proc::spawn("viewer", &mut cmd), Duration::from_secs(20));
    assert!(v["frames"].as_u64().unwrap() > 0, "a valid viewer plays: {v}");

    // WHIP and WHEP: the same tokens, the same reasons, as 401/403 + JSON.
    for (path, action, sdp) in
        [("/whip/live/a", Action::Publish, "sendonly"), ("/whep/live/a", Action::View, "recvonly")]
    {
        for (case, token, reason) in bad_tokens(&key, "k1", &stranger, stream, action, "prod") {
            let bearer = token.map(|t| format!("Bearer {t}"));
            let mut headers = vec![("content-type", "application/sdp")];
            if let Some(bearer) = &bearer {
                headers.push(("authorization", bearer));
            }
            let (status, _, body) = http(&edge.http, "POST", path, &headers, vp8_offer(sdp).as_bytes());
            let wanted =
                if matches!(reason, "token_wrong_stream" | "token_wrong_action") { 403 } else { 401 };
            assert_eq!(status, wanted, "{path} with {case}: {body}");
            let body: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body["reason"], reason, "{path} with {case}: {body}");
        }
    }
    let metrics = edge.metrics();
    assert_eq!(metric_value(&metrics, "ferry_webrtc_sessions{direction=\"whip\"}").unwrap_or(0.0), 0.0);
    assert_eq!(metric_value(&metrics, "ferry_webrtc_sessions{direction=\"whep\"}").unwrap_or(0.0), 0.0);
    assert_eq!(metric_value(&metrics, "ferry_tracks_created_total"), Some(1.0));
}

#[test]
fn secrets_rotate_without_dropping_anyone() {
    let dir = TempDir::new("access-rotation");
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    // The secrets as the token minter holds them; the edge reads its own copies.
    let old = write_key(&dir.path().join("old.key"), "o");
    let new_secret = write_key(&dir.path().join("new.key"), "n");
    std::fs::copy(&old, keys.join("old.key")).unwrap();
    let ports = port_range();
    let edge = Edge::start(
        "e",
        &[
            "--token-secret-file",
            keys.to_str().unwrap(),
            "--webrtc-bind",
            "127.0.0.1",
            "--webrtc-udp-ports",
            &ports,
        ],
    );
    let stream = "live/r";
    let token = |file: &Path, kid: &str, action| {
        sign(file, Some(kid), &claims(stream, action, "ferry", Duration::from_secs(600)))
    };

    // A publisher and a viewer on old-key tokens, live through the whole rotation.
    let mut cmd = ferry();
    cmd.args([
        "publish",
        "--edge",
        &edge.quic,
        "--stream",
        stream,
        "--synthetic",
        "--insecure",
        "--duration",
        "60s",
    ])
    .args(["--token", &token(&old, "old", Action::Publish)])
    .stdout(Stdio::null());
    let publisher = Proc::spawn("publisher", &mut cmd);
    wait_for_stream(&edge);
    let mut cmd = ferry();
    cmd.args([
        "watch",
        "--edge",
        &edge.quic,
        "--stream",
        stream,
        "--insecure",
        "--json",
        "--duration",
        "60s",
    ])
    .args(["--token", &token(&old, "old", Action::View)])
    .stdout(Stdio::piped());
    let mut viewer = Proc::spawn("viewer", &mut cmd);
    let quick_watch = ["watch", "--edge", &edge.quic, "--stream", stream, "--insecure", "--duration", "1s"];

    // Add the new secret: both key ids play.
    std::fs::copy(&new_secret, keys.join("new.key")).unwrap();
    let new_view = token(&new_secret, "new", Action::View);
    wait_for("the new key to be accepted", Duration::from_secs(20), || {
        run_client(&quick_watch, Some(&new_view), Duration::from_secs(20)).0.then_some(())
    });
    let (ok, stderr) =
        run_client(&quick_watch, Some(&token(&old, "old", Action::View)), Duration::from_secs(20));
    assert!(ok, "old-key tokens still play while both secrets are there: {stderr}");

    // Remove the old secret: old tokens are refused, live sessions carry on.
    std::fs::remove_file(keys.join("old.key")).unwrap();
    let old_view = token(&old, "old", Action::View);
    let stderr = wait_for("old-key tokens refused", Duration::from_secs(20), || {
        let (ok, stderr) = run_client(&quick_watch, Some(&old_view), Duration::from_secs(20));
        (!ok).then_some(stderr)
    });
    assert!(stderr.contains("token_unknown_key"), "{stderr}");
    assert!(run_client(&quick_watch, Some(&new_view), Duration::from_secs(20)).0, "new-key tokens play");
    // WHIP checks the same keys.
    let whip = |token: &str| {
        let bearer = format!("Bearer {token}");
        let headers = [("content-type", "application/sdp"), ("authorization", bearer.as_str())];
        http(&edge.http, "POST", "/whip/live/r-webrtc", &headers, vp8_offer("sendonly").as_bytes())
    };
    let (status, _, body) = whip(&sign(
        &old,
        Some("old"),
        &claims("live/r-webrtc", Action::Publish, "ferry", Duration::from_secs(600)),
    ));
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("token_unknown_key"), "{body}");
    let (status, _, body) = whip(&sign(
        &new_secret,
        Some("new"),
        &claims("live/r-webrtc", Action::Publish, "ferry", Duration::from_secs(600)),
    ));
    assert_eq!(status, 201, "{body}");
    let frames_out = edge.metric("ferry_frames_out_total").unwrap();
    wait_for("the old-token sessions to keep flowing", Duration::from_secs(20), || {
        (edge.metric("ferry_frames_out_total").unwrap() > frames_out + 30.0).then_some(())
    });
    assert!(viewer.child.try_wait().unwrap().is_none(), "the old-token viewer was dropped");
    let mut publisher = publisher;
    assert!(publisher.child.try_wait().unwrap().is_none(), "the old-token publisher was dropped");
    let viewers = edge.metric_sum("ferry_subscriptions");
    assert!(viewers >= 1.0, "the old-token viewer is still subscribed");
}

#[test]
fn a_session_outlives_its_token() {
    let dir = TempDir::new("access-expiry");
    let key = write_key(&dir.path().join("k.key"), "k");
    let edge = Edge::start("e", &["--token-secret-file", key.to_str().unwrap()]);
    let stream = "live/x";
    let long = |action| sign(&key, Some("k"), &claims(stream, action, "ferry", Duration::from_secs(600)));
    let mut cmd = ferry();
    cmd.args([
        "publish",
        "--edge",
        &edge.quic,
        "--stream",
        stream,
        "--synthetic",
        "--insecure",
        "--duration",
        "60s",
    ])
    .args(["--token", &long(Action::Publish)])
    .stdout(Stdio::null());
    let _publisher = Proc::spawn("publisher", &mut cmd);
    wait_for_stream(&edge);
    // A viewer whose token expires a second after it starts.
    let short = sign(&key, Some("k"), &claims(stream, Action::View, "ferry", Duration::from_secs(1)));
    let mut cmd = ferry();
    cmd.args([
        "watch",
        "--edge",
        &edge.quic,
        "--stream",
        stream,
        "--insecure",
        "--json",
        "--duration",
        "60s",
    ])
    .args(["--token", &short])
    .stdout(Stdio::piped());
    let mut viewer = Proc::spawn("viewer", &mut cmd);
    wait_for("the viewer subscribed", Duration::from_secs(20), || {
        (edge.metric_sum("ferry_subscriptions") >= 1.0).then_some(())
    });
    // Once a new session with that token is refused as expired...
    let quick_watch = ["watch", "--edge", &edge.quic, "--stream", stream, "--insecure", "--duration", "1s"];
    let stderr = wait_for("the token to expire", Duration::from_secs(30), || {
        let (ok, stderr) = run_client(&quick_watch, Some(&short), Duration::from_secs(20));
        (!ok).then_some(stderr)
    });
    assert!(stderr.contains("token_expired"), "{stderr}");
    // ...the session that started with it still receives frames.
    let frames_out = edge.metric("ferry_frames_out_total").unwrap();
    wait_for("frames after expiry", Duration::from_secs(20), || {
        (edge.metric("ferry_frames_out_total").unwrap() > frames_out + 30.0).then_some(())
    });
    assert!(viewer.child.try_wait().unwrap().is_none(), "the session ended with its token");
    assert!(edge.metric_sum("ferry_subscriptions") >= 1.0);
}

/// `ferry dev` with its banner read: the edges, the control plane and the dev secret.
struct Dev {
    _proc: Proc,
    edge_a: (String, String),
    edge_b: (String, String),
    control: String,
    key: PathBuf,
}

const OPERATOR: &str = "ferry-dev-operator-token";
const AUD: &str = "ferry-dev";

impl Dev {
    fn start(dir: &Path) -> Dev {
        let mut cmd = ferry();
        cmd.args(["dev", "--quic-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .args(["--edge-b-quic-listen", "127.0.0.1:0", "--edge-b-http-listen", "127.0.0.1:0"])
            .args(["--control-listen", "127.0.0.1:0", "--raft-listen", "127.0.0.1:0"])
            .args(["--webrtc-udp-ports", "51400-51499", "--data-dir"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut proc = Proc::spawn("ferry dev", &mut cmd);
        // The whole banner, so ferry dev never writes to a closed pipe.
        let lines: Vec<String> = BufReader::new(proc.child.stdout.take().unwrap())
            .lines()
            .map(|l| l.unwrap())
            .take_while(|l| !l.starts_with("Stop with"))
            .collect();
        let words: Vec<&str> = lines[0].split([' ', ',', ';']).collect();
        let quic: Vec<String> =
            words.iter().filter_map(|w| w.strip_prefix("quic://")).map(str::to_owned).collect();
        let http: Vec<String> =
            words.iter().filter_map(|w| w.strip_prefix("http://")).map(str::to_owned).collect();
        let control = lines[1].split_whitespace().last().unwrap().trim_start_matches("http://").to_owned();
        Dev {
            _proc: proc,
            edge_a: (quic[0].clone(), http[0].clone()),
            edge_b: (quic[1].clone(), http[1].clone()),
            control,
            key: dir.join("tokens").join("dev.key"),
        }
    }

    fn token(&self, stream: &str, action: Action, takeover: bool) -> String {
        let mut c = claims(stream, action, AUD, Duration::from_secs(600));
        c.takeover = takeover;
        sign(&self.key, Some("dev"), &c)
    }

    fn get(&self, path: &str) -> serde_json::Value {
        let (status, body) = http_json(&self.control, "GET", path, Some(OPERATOR), &[], None);
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    fn origin(&self, stream: &str) -> Option<String> {
        let (status, body) =
            http_json(&self.control, "GET", &format!("/v1/streams/{stream}"), Some(OPERATOR), &[], None);
        (status == 200).then(|| body["origin"].as_str().unwrap_or_default().to_owned())
    }

    fn applied(&self) -> u64 {
        self.get("/v1/cluster")["applied_index"].as_u64().unwrap()
    }

    /// Audit events about `stream` with `action`.
    fn audit(&self, stream: &str, action: &str) -> usize {
        let events = self.get("/v1/audit?limit=10000");
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["target"] == stream && e["action"] == action)
            .count()
    }

    fn publish(&self, edge: &str, stream: &str, token: &str, duration: &str) -> Proc {
        let mut cmd = ferry();
        cmd.args([
            "publish",
            "--edge",
            edge,
            "--stream",
            stream,
            "--synthetic",
            "--insecure",
            "--duration",
            duration,
        ])
        .args(["--token", token])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        Proc::spawn("publisher", &mut cmd)
    }
}

/// In-process publish attempts (connect, hello, announce), `n` of them at most
/// `parallel` at a time: how many were refused with `stream_busy`.
fn hammer(edge: &str, stream: &str, token: &str, n: usize) -> usize {
    use ferry_client::publish::{publish, PublishOptions, Source};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let opts = PublishOptions {
            edge: edge.to_owned(),
            stream: ferry_proto::StreamName::new(stream).unwrap(),
            source: Source::Synthetic(ferry_media::synthetic::SyntheticConfig {
                bitrate_bps: 100_000,
                fps: 10,
                gop: Duration::from_secs(1),
            }),
            duration: Some(Duration::from_secs(1)),
            trust: ferry_net::tls::ClientTrust::Insecure,
            tuning: ferry_net::tls::TransportTuning::default(),
            label: ferry_proto::NodeId::new("hammer").unwrap(),
            max_frame: ferry_proto::MAX_FRAME_PAYLOAD,
            session: ferry_net::dial::SessionHello {
                id: None,
                tags: Vec::new(),
                token: Some(token.to_owned()),
            },
        };
        let mut busy = 0;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            if i >= 10 {
                let r = tasks.join_next().await.unwrap().unwrap();
                busy += usize::from(r);
            }
            let opts = opts.clone();
            tasks.spawn(async move {
                let r = publish(opts, tokio_util::sync::CancellationToken::new()).await;
                matches!(r, Err(e) if e.refused_code() == Some(ferry_proto::ErrorCode::StreamBusy))
            });
        }
        while let Some(r) = tasks.join_next().await {
            busy += usize::from(r.unwrap());
        }
        busy
    })
}

#[test]
fn a_stream_has_one_publisher_across_the_cluster() {
    let _heavy = heavy();
    let dir = TempDir::new("access-dev");
    let dev = Dev::start(dir.path());
    let (a, b) = (dev.edge_a.0.clone(), dev.edge_b.0.clone());
    wait_for("the dev publisher's stream recorded", Duration::from_secs(30), || {
        (dev.origin("live/demo").as_deref() == Some("dev-edge")).then_some(())
    });
    let published = Instant::now();
    wait_for("gossip to carry the dev stream", Duration::from_secs(30), || {
        let edges = dev.get("/v1/edges");
        let a = edges["edges"].as_array()?.iter().find(|e| e["id"] == "dev-edge")?.clone();
        a["gossip"]["origins"].as_array()?.iter().any(|s| s == "live/demo").then_some(())
    });
    eprintln!("gossip carried live/demo {:?} after it was recorded", published.elapsed());

    // The hijack: a valid publish token without a grant, on the other edge.
    let applied = dev.applied();
    let claims_before = dev.audit("live/demo", "stream.claim") + dev.audit("live/demo", "stream.put");
    let hijack = dev.publish(&b, "live/demo", &dev.token("live/demo", Action::Publish, false), "5s");
    let out = hijack.wait_output(Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the hijacker was accepted");
    assert!(stderr.contains("stream_busy"), "{stderr}");
    // 200 attempts in at most 10 s, in process.
    let started = Instant::now();
    let busy = hammer(&b, "live/demo", &dev.token("live/demo", Action::Publish, false), 200);
    let took = started.elapsed();
    assert_eq!(busy, 200, "every attempt refused with stream_busy");
    eprintln!("200 refused publish attempts took {took:?}");
    for _ in 0..5 {
        assert_eq!(dev.origin("live/demo").as_deref(), Some("dev-edge"), "the origin moved");
    }
    let grown = dev.applied() - applied;
    eprintln!("raft log grew by {grown} entries during the hijack and 200 attempts");
    assert!(grown <= 3, "the raft log grew by {grown} entries");
    let claims_after = dev.audit("live/demo", "stream.claim") + dev.audit("live/demo", "stream.put");
    assert_eq!(claims_after, claims_before, "origin writes for live/demo");

    // A takeover: one handover, one origin write, the old publisher told, a routed
    // viewer keeps playing.
    let own = "live/own";
    let mut first = dev.publish(&a, own, &dev.token(own, Action::Publish, false), "60s");
    wait_for("live/own recorded on dev-edge", Duration::from_secs(30), || {
        (dev.origin(own).as_deref() == Some("dev-edge")).then_some(())
    });
    let mut cmd = ferry();
    cmd.args(["watch", "--control-plane", &format!("http://{}", dev.control), "--region", "local-b"])
        .args(["--stream", own, "--insecure", "--json", "--duration", "20s"])
        .args(["--token", &dev.token(own, Action::View, false)])
        .stdout(Stdio::piped());
    let viewer = Proc::spawn("routed viewer", &mut cmd);
    let (_, b_http) = &dev.edge_b;
    wait_for("the routed viewer playing on dev-edge-b", Duration::from_secs(30), || {
        let (_, text) = http_get(b_http, "/metrics");
        text.lines()
            .any(|l| {
                l.starts_with("ferry_subscriptions{")
                    && l.contains("live/own")
                    && l.contains("viewer")
                    && !l.ends_with(" 0")
            })
            .then_some(())
    });
    let claims_before = dev.audit(own, "stream.claim");
    let _second = dev.publish(&b, own, &dev.token(own, Action::Publish, true), "40s");
    let out =
        wait_for("the old publisher to end", Duration::from_secs(30), || first.child.try_wait().unwrap());
    assert!(!out.success(), "the old publisher exited cleanly");
    let mut stderr = String::new();
    std::io::Read::read_to_string(first.child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("taken_over"), "{stderr}");
    wait_for("live/own recorded on dev-edge-b", Duration::from_secs(30), || {
        (dev.origin(own).as_deref() == Some("dev-edge-b")).then_some(())
    });
    let v = json_output(viewer, Duration::from_secs(60));
    assert_eq!(dev.audit(own, "stream.claim"), claims_before + 1, "one origin write for the handover");
    assert_eq!(dev.origin(own).as_deref(), Some("dev-edge-b"));
    let legs = v["legs"].as_array().unwrap();
    assert!(legs.len() >= 2, "the viewer re-subscribed after the handover: {v}");
    let last = legs.last().unwrap();
    assert!(last["frames"].as_u64().unwrap() > 0, "frames from the new publisher: {v}");
    assert!(legs.iter().skip(1).any(|l| l["gap_ms"].is_number()), "the gap is reported: {v}");
    eprintln!("takeover gaps (ms): {:?}", legs.iter().map(|l| l["gap_ms"].clone()).collect::<Vec<_>>());

    // No ghost: a publisher killed with SIGKILL frees its stream within the failover
    // window, and a new publisher on the other edge is accepted.
    let ghost = "live/ghost";
    let killed = dev.publish(&a, ghost, &dev.token(ghost, Action::Publish, false), "60s");
    wait_for("live/ghost recorded on dev-edge", Duration::from_secs(30), || {
        (dev.origin(ghost).as_deref() == Some("dev-edge")).then_some(())
    });
    drop(killed); // SIGKILL
    let killed_at = Instant::now();
    let token = dev.token(ghost, Action::Publish, false);
    let mut replacement =
        wait_for("a new publisher of live/ghost accepted on dev-edge-b", Duration::from_secs(40), || {
            let mut p = dev.publish(&b, ghost, &token, "30s");
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if p.child.try_wait().unwrap().is_some() {
                    return None; // refused (busy): try again
                }
                if dev.origin(ghost).as_deref() == Some("dev-edge-b") {
                    return Some(p);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = p.child.kill();
            None
        });
    eprintln!("live/ghost was free {:?} after its publisher was killed", killed_at.elapsed());
    assert!(replacement.child.try_wait().unwrap().is_none(), "the replacement publisher is live");

    // WHIP: 201, a second publisher 409 stream_busy, QUIC publishers of the same
    // stream busy on both edges, a takeover 201 that ends the first session.
    let (_, a_http) = &dev.edge_a;
    let whip = |token: &str| {
        let bearer = format!("Bearer {token}");
        http(
            a_http,
            "POST",
            "/whip/live/w",
            &[("content-type", "application/sdp"), ("authorization", &bearer)],
            vp8_offer("sendonly").as_bytes(),
        )
    };
    let plain = dev.token("live/w", Action::Publish, false);
    let (status, headers, body) = whip(&plain);
    assert_eq!(status, 201, "{body}");
    let first_session = header(&headers, "location").unwrap().to_owned();
    let (status, _, body) = whip(&plain);
    assert_eq!(status, 409, "{body}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["reason"], "stream_busy");
    for edge in [&a, &b] {
        let out = dev.publish(edge, "live/w", &plain, "5s").wait_output(Duration::from_secs(20));
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("stream_busy"), "QUIC publisher on {edge}");
    }
    let (status, _, body) = whip(&dev.token("live/w", Action::Publish, true));
    assert_eq!(status, 201, "takeover: {body}");
    wait_for("the first WHIP session ended", Duration::from_secs(20), || {
        let (_, text) = http_get(a_http, "/metrics");
        (metric_value(&text, "ferry_webrtc_sessions{direction=\"whip\"}") == Some(1.0)).then_some(())
    });
    let (status, _, _) = http(a_http, "DELETE", &first_session, &[], b"");
    assert_eq!(status, 404, "the taken-over session is gone");
    let _ = replacement.child.kill();
    // Let the writes already under way land first: live/ghost's release (its publisher
    // just left) and live/w's relay placement (after its claim).
    wait_for("live/ghost released and live/w's relays placed", Duration::from_secs(30), || {
        let (_, w) = http_json(&dev.control, "GET", "/v1/streams/live/w", Some(OPERATOR), &[], None);
        let placed = w["relays"].as_object().is_some_and(|r| !r.is_empty());
        (dev.origin(ghost).is_none() && placed).then_some(())
    });
    // 200 more WHIP publishers: all 409, no raft write.
    let applied = dev.applied();
    for _ in 0..200 {
        let (status, _, body) = whip(&plain);
        assert_eq!(status, 409, "{body}");
    }
    assert_eq!(dev.applied(), applied, "refused WHIP publishers wrote to the raft log");
    // The WHIP publisher vanishes (its ICE never starts: the edge ends it after its
    // connect timeout): the stream is free again, never ghost busy.
    let vanished = Instant::now();
    let mut quic = wait_for("live/w free after its WHIP publisher vanished", Duration::from_secs(60), || {
        let mut p = dev.publish(&b, "live/w", &plain, "30s");
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if p.child.try_wait().unwrap().is_some() {
                return None;
            }
            if dev.origin("live/w").as_deref() == Some("dev-edge-b") {
                return Some(p);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = p.child.kill();
        None
    });
    eprintln!("live/w was free {:?} after its last WHIP session started", vanished.elapsed());
    let _ = quic.child.kill();

    // Cohorts: with a rollout treating half the sessions, the token's subject places
    // a session; the id the client sends does not.
    let ctl = |args: &[&str]| {
        let out = ferry()
            .args(["ctl", "--control-plane", &format!("http://{}", dev.control), "--control-token", OPERATOR])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "ctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    ctl(&["rollout", "create", "half", "--spec", r#"{"override":{"client_flag":"half"}}"#]);
    ctl(&["rollout", "share", "half", "50%"]);
    ctl(&["rollout", "level", "half", "3"]);
    let mut c = claims("live/demo", Action::View, AUD, Duration::from_secs(600));
    c.sub = Some("viewer-7".into());
    let view = sign(&dev.key, Some("dev"), &c);
    let variant = |session: &str| {
        let mut cmd = ferry();
        cmd.args([
            "watch",
            "--edge",
            &a,
            "--stream",
            "live/demo",
            "--insecure",
            "--json",
            "--duration",
            "1s",
        ])
        .args(["--token", &view, "--session-id", session])
        .stdout(Stdio::piped());
        let v = json_output(Proc::spawn("viewer", &mut cmd), Duration::from_secs(20));
        v["variant"].as_str().map(str::to_owned)
    };
    let first = wait_for("the edge to apply the rollout", Duration::from_secs(30), || variant("id-0"));
    for i in 1..8 {
        assert_eq!(variant(&format!("id-{i}")).as_deref(), Some(first.as_str()), "QUIC session id-{i}");
    }
    let mut c = claims("live/", Action::Publish, AUD, Duration::from_secs(600));
    c.scope = StreamScope::Prefix("live/".into());
    c.sub = Some("encoder-7".into());
    let bearer = format!("Bearer {}", sign(&dev.key, Some("dev"), &c));
    let mut variants = std::collections::BTreeSet::new();
    for i in 0..8 {
        let session = format!("id-{i}");
        let headers = [
            ("content-type", "application/sdp"),
            ("authorization", bearer.as_str()),
            ("ferry-session", session.as_str()),
        ];
        let (status, headers, body) = http(
            a_http,
            "POST",
            &format!("/whip/live/cohort-{i}"),
            &headers,
            vp8_offer("sendonly").as_bytes(),
        );
        assert_eq!(status, 201, "{body}");
        variants.insert(header(&headers, "ferry-variant").unwrap().to_owned());
    }
    assert_eq!(variants.len(), 1, "WHIP sessions of one subject in one cohort: {variants:?}");
}

/// Starts `ferry edge` as given (no defaults added): the ready line's addresses, and
/// its stderr file.
fn bare_edge(dir: &Path, extra: &[&str]) -> (Proc, String, String, PathBuf) {
    let log = dir.join("edge.log");
    let mut cmd = ferry();
    cmd.env("RUST_LOG", "info")
        .args(["edge", "--node-id", "bare", "--quic-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut proc = Proc::spawn("edge", &mut cmd);
    let mut line = String::new();
    BufReader::new(proc.child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let ready: serde_json::Value = serde_json::from_str(&line).unwrap();
    let (quic, http) =
        (ready["quic"].as_str().unwrap().to_owned(), ready["http"].as_str().unwrap().to_owned());
    (proc, quic, http, log)
}

#[test]
fn an_edge_without_secrets_serves_no_one_unless_told_it_is_for_development() {
    let dir = TempDir::new("access-none");
    let (_edge, quic, http_addr, log) = bare_edge(dir.path(), &[]);
    let publish =
        ["publish", "--edge", &quic, "--stream", "live/n", "--synthetic", "--insecure", "--duration", "2s"];
    let (ok, stderr) = run_client(&publish, None, Duration::from_secs(20));
    assert!(!ok && stderr.contains("auth_not_configured"), "{stderr}");
    let (status, _, body) = http(
        &http_addr,
        "POST",
        "/whep/live/n",
        &[("content-type", "application/sdp")],
        vp8_offer("recvonly").as_bytes(),
    );
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("auth_not_configured"), "{body}");
    assert!(!std::fs::read_to_string(&log).unwrap().contains("WARN"));

    // --allow-anonymous: served, and said loudly at start.
    let dir = TempDir::new("access-anonymous");
    let (_edge, quic, _, log) = bare_edge(dir.path(), &["--allow-anonymous"]);
    let publish =
        ["publish", "--edge", &quic, "--stream", "live/n", "--synthetic", "--insecure", "--duration", "1s"];
    let (ok, stderr) = run_client(&publish, None, Duration::from_secs(20));
    assert!(ok, "{stderr}");
    let started = std::fs::read_to_string(&log).unwrap();
    assert!(started.lines().any(|l| l.contains("WARN") && l.contains("--allow-anonymous")), "{started}");
}
