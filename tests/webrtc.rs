//! WHIP/WHEP at the edge: real `ferry edge` processes on loopback, refusals checked
//! over raw HTTP, media checked in headless Chromium (Debian's chromium +
//! chromium-driver; the tests fail loudly when they are missing).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, SystemTime};

use ferry_node::auth::{mint, Action, StreamScope, TokenSecret};
use support::*;

/// A raw HTTP/1.1 exchange: (status, headers lowercased, body).
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A distinct WebRTC UDP port range per edge started by this test process.
fn port_range() -> String {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let slot = NEXT.fetch_add(1, Ordering::Relaxed);
    let base = 40_000 + (std::process::id() % 200) as u16 * 40 + slot * 8;
    format!("{}-{}", base, base + 7)
}

const SECRET: &str = "test-secret-0123456789abcdef";

fn secret_file(dir: &Path) -> String {
    let path = dir.join("secret");
    std::fs::write(&path, SECRET).unwrap();
    path.to_str().unwrap().to_owned()
}

fn token(stream: &str, action: Action, ttl: Duration, now: SystemTime) -> String {
    let secret = TokenSecret::from_bytes(SECRET.as_bytes()).unwrap();
    mint(&secret, StreamScope::Exact(stream.into()), action, ttl, now)
}

fn webrtc_edge(node: &str, dir: &Path, extra: &[&str]) -> Edge {
    let secret = secret_file(dir);
    let ports = port_range();
    let mut args =
        vec!["--webrtc-bind", "127.0.0.1", "--webrtc-udp-ports", &ports, "--token-secret-file", &secret];
    args.extend_from_slice(extra);
    Edge::start(node, &args)
}

/// A syntactically complete offer, as a browser would send for a VP8 publisher.
fn vp8_offer(direction: &str) -> String {
    let fingerprint = (0..32).map(|i| format!("{:02X}", i * 7 % 256)).collect::<Vec<_>>().join(":");
    format!(
        "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
         a=msid-semantic: WMS\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\n\
         a=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
         a=fingerprint:sha-256 {fingerprint}\r\na=setup:actpass\r\na=mid:0\r\na={direction}\r\n\
         a=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\na=ssrc:1234 cname:test\r\n"
    )
}

#[test]
fn bad_webrtc_requests_get_clear_refusals_and_the_edge_keeps_serving() {
    let _heavy = heavy();
    let dir = TempDir::new("webrtc-bad");
    let edge = webrtc_edge(
        "edge-bad",
        dir.path(),
        &["--webrtc-max-sessions", "1", "--webrtc-max-sdp-bytes", "4096"],
    );
    let now = SystemTime::now();
    let publish = token("live/a", Action::Publish, Duration::from_secs(3600), now);
    let auth = format!("Bearer {publish}");
    let sdp = [("Content-Type", "application/sdp"), ("Authorization", auth.as_str())];
    let expect = |case: &str, path: &str, headers: &[(&str, &str)], body: &str, status: u16, reason: &str| {
        let (got, hdrs, text) = http(&edge.http, "POST", path, headers, body.as_bytes());
        assert_eq!(got, status, "{case}: {text}");
        let json: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{case}: body {text:?} is not JSON: {e}"));
        assert_eq!(json["reason"], reason, "{case}: {json}");
        assert!(json["error"].as_str().is_some_and(|e| !e.is_empty()), "{case}: no message in {json}");
        hdrs
    };

    expect("malformed SDP", "/whip/live/a", &sdp, "this is not sdp", 400, "malformed_sdp");
    let pcmu = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtpmap:0 PCMU/8000\r\n";
    expect("no supported codec", "/whip/live/a", &sdp, pcmu, 400, "no_supported_codec");
    expect(
        "no token",
        "/whip/live/a",
        &[("Content-Type", "application/sdp")],
        &vp8_offer("sendonly"),
        401,
        "token_missing",
    );
    let forged = format!("Bearer {}AAAA", &publish[..publish.len() - 4]);
    expect(
        "bad signature",
        "/whip/live/a",
        &[("Content-Type", "application/sdp"), ("Authorization", &forged)],
        &vp8_offer("sendonly"),
        401,
        "token_bad_signature",
    );
    let old = token("live/a", Action::Publish, Duration::from_secs(60), now - Duration::from_secs(7200));
    let old = format!("Bearer {old}");
    expect(
        "expired token",
        "/whip/live/a",
        &[("Content-Type", "application/sdp"), ("Authorization", &old)],
        &vp8_offer("sendonly"),
        401,
        "token_expired",
    );
    let view = format!("Bearer {}", token("live/a", Action::View, Duration::from_secs(60), now));
    expect(
        "view token used to publish",
        "/whip/live/a",
        &[("Content-Type", "application/sdp"), ("Authorization", &view)],
        &vp8_offer("sendonly"),
        403,
        "token_wrong_action",
    );
    expect(
        "token for another stream",
        "/whip/live/b",
        &sdp,
        &vp8_offer("sendonly"),
        403,
        "token_stream_not_covered",
    );
    expect("dot-dot segment", "/whip/live/../etc", &sdp, &vp8_offer("sendonly"), 400, "bad_stream_name");
    expect("encoded dot-dot", "/whip/live/%2e%2e/etc", &sdp, &vp8_offer("sendonly"), 400, "bad_stream_name");
    expect("bad characters", "/whip/live/a%20b", &sdp, &vp8_offer("sendonly"), 400, "bad_stream_name");
    expect(
        "wrong content type",
        "/whip/live/a",
        &[("Content-Type", "application/json"), ("Authorization", &auth)],
        "{}",
        415,
        "content_type",
    );
    let huge = format!("{}a=x-padding:{}\r\n", vp8_offer("sendonly"), "p".repeat(5000));
    expect("oversized SDP", "/whip/live/a", &sdp, &huge, 413, "sdp_too_large");
    expect(
        "viewer of a missing stream",
        "/whep/live/a",
        &[("Content-Type", "application/sdp"), ("Authorization", &view)],
        &vp8_offer("recvonly"),
        404,
        "not_found",
    );

    // One session fills this edge (its peer never connects): the next gets 503 + Retry-After.
    let (status, hdrs, answer) =
        http(&edge.http, "POST", "/whip/live/a", &sdp, vp8_offer("sendonly").as_bytes());
    assert_eq!(status, 201, "{answer}");
    assert!(answer.starts_with("v=0"), "{answer}");
    assert!(answer.contains("a=candidate:"), "the answer carries candidates: {answer}");
    let location = header(&hdrs, "location").expect("Location").to_owned();
    let publish_b = format!("Bearer {}", token("live/b", Action::Publish, Duration::from_secs(60), now));
    let hdrs = expect(
        "too many sessions",
        "/whip/live/b",
        &[("Content-Type", "application/sdp"), ("Authorization", &publish_b)],
        &vp8_offer("sendonly"),
        503,
        "too_many_sessions",
    );
    assert_eq!(header(&hdrs, "retry-after"), Some("1"));
    expect("stream already published", "/whip/live/a", &sdp, &vp8_offer("sendonly"), 409, "stream_taken");

    // The session resource: CORS preflight, trickle refused, DELETE ends it (once).
    let (status, hdrs, _) = http(&edge.http, "OPTIONS", "/whip/live/a", &[], b"");
    assert_eq!(status, 204);
    assert_eq!(header(&hdrs, "access-control-allow-origin"), Some("*"));
    assert_eq!(http(&edge.http, "PATCH", &location, &[], b"").0, 405);
    assert_eq!(http(&edge.http, "DELETE", &location, &[], b"").0, 200);
    wait_for("the session to end", Duration::from_secs(10), || {
        (edge.metric("ferry_webrtc_sessions{direction=\"whip\"}") == Some(0.0)).then_some(())
    });
    assert_eq!(http(&edge.http, "DELETE", &location, &[], b"").0, 404);

    // Still serving: health, and a new session takes the freed slot.
    assert_eq!(http_get(&edge.http, "/healthz").0, 200);
    let (status, _, answer) = http(
        &edge.http,
        "POST",
        "/whip/live/b",
        &[("Content-Type", "application/sdp"), ("Authorization", &publish_b)],
        vp8_offer("sendonly").as_bytes(),
    );
    assert_eq!(status, 201, "{answer}");
    let metrics = edge.metrics();
    assert!(metric_sum(&metrics, "ferry_webrtc_session_errors_total") >= 10.0, "{metrics}");
}

/// `window.ferry.stats.<field>` of a watch page, as a number.
fn stat(browser: &browser::Browser, field: &str) -> f64 {
    browser
        .eval(&format!("return (window.ferry && window.ferry.stats && window.ferry.stats.{field}) || 0;"))
        .as_f64()
        .unwrap_or(0.0)
}

fn wait_decoding(viewer: &browser::Browser, what: &str) -> f64 {
    viewer.wait_until(
        what,
        Duration::from_secs(30),
        "return window.ferry && window.ferry.stats && window.ferry.stats.framesDecoded > 0;",
    );
    viewer.eval("return window.ferry.firstFrameMs;").as_f64().unwrap_or(-1.0)
}

/// Frames decoded keep increasing for several seconds, audio keeps arriving.
fn assert_playing(viewer: &browser::Browser, what: &str) {
    assert_playing_with(viewer, what, true);
}

fn assert_playing_with(viewer: &browser::Browser, what: &str, audio_too: bool) {
    let mut frames = stat(viewer, "framesDecoded");
    let mut audio = stat(viewer, "audioPacketsReceived");
    for second in 1..=4 {
        let (before_frames, before_audio) = (frames, audio);
        let audio_check = if audio_too {
            format!(" && window.ferry.stats.audioPacketsReceived > {before_audio}")
        } else {
            String::new()
        };
        viewer.wait_until(
            &format!("{what}: more frames decoded (second {second})"),
            Duration::from_secs(5),
            &format!("return window.ferry.stats.framesDecoded > {before_frames}{audio_check};"),
        );
        frames = stat(viewer, "framesDecoded");
        audio = stat(viewer, "audioPacketsReceived");
    }
    assert!(frames >= 10.0, "{what}: only {frames} frames decoded");
}

#[test]
fn browser_publishes_over_whip_and_another_watches_over_whep_through_a_second_edge() {
    let _heavy = heavy();
    let dir = TempDir::new("webrtc-browser");
    let a = webrtc_edge("edge-a", dir.path(), &[]);
    let b = webrtc_edge("edge-b", dir.path(), &["--upstream", &a.quic]);
    let now = SystemTime::now();
    let publish = token("live/cam", Action::Publish, Duration::from_secs(3600), now);
    let view = token("live/cam", Action::View, Duration::from_secs(3600), now);

    let publisher = browser::Browser::start();
    publisher.open(&format!("http://{}/demo/publish?stream=live/cam&token={publish}", a.http));
    publisher.wait_until(
        "the WHIP publisher to go live",
        Duration::from_secs(30),
        "return window.ferry && window.ferry.state === 'live';",
    );
    wait_for("edge A to carry the stream", Duration::from_secs(20), || {
        (a.metric_sum("ferry_rtp_packets_total") > 0.0).then_some(())
    });

    let viewer = browser::Browser::start();
    viewer.open(&format!("http://{}/demo/watch?stream=live/cam&token={view}", b.http));
    let first_frame_ms = wait_decoding(&viewer, "the WHEP viewer on edge B to decode a frame");
    println!("time to first frame (WHEP on edge B, relayed from A): {first_frame_ms:.0} ms");
    assert_playing(&viewer, "viewer on B");
    let b_metrics = b.metrics();
    assert!(metric_sum(&b_metrics, "ferry_upstream_subscriptions") >= 1.0, "B pulls from A: {b_metrics}");
    assert!(
        metric_value(&b_metrics, "ferry_webrtc_sessions{direction=\"whep\"}") == Some(1.0),
        "{b_metrics}"
    );

    // The publisher leaves: the viewer sees the end.
    publisher.eval("window.ferry.stop(); return true;");
    viewer.wait_until(
        "the viewer to see the stream end",
        Duration::from_secs(30),
        "return window.ferry.state === 'ended';",
    );

    // It comes back: a new viewer plays again.
    publisher.open(&format!("http://{}/demo/publish?stream=live/cam&token={publish}", a.http));
    publisher.wait_until(
        "the publisher to go live again",
        Duration::from_secs(30),
        "return window.ferry && window.ferry.state === 'live';",
    );
    viewer.open(&format!("http://{}/demo/watch?stream=live/cam&token={view}", b.http));
    let again_ms = wait_decoding(&viewer, "a new viewer to decode after the publisher returned");
    println!("time to first frame after the publisher returned: {again_ms:.0} ms");
    assert_playing(&viewer, "new viewer on B");

    // Edge B drains on SIGTERM: it exits on its own and its WHEP viewer sees the end.
    let Edge { proc, .. } = b;
    proc.terminate();
    let out = proc.wait_output(Duration::from_secs(30));
    assert!(out.status.success(), "edge B exit: {:?}", out.status);
    viewer.wait_until(
        "the viewer to see edge B go away",
        Duration::from_secs(30),
        "return window.ferry.state === 'ended';",
    );
}

fn require_ffmpeg() {
    let ok = std::process::Command::new("ffmpeg")
        .arg("-version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok, "ffmpeg is required for this test (apt-get install ffmpeg; .ci/run installs it)");
}

#[test]
fn quic_publishers_play_in_the_browser_and_whip_publishers_record_over_quic() {
    require_ffmpeg();
    let _heavy = heavy();
    let dir = TempDir::new("webrtc-cross");
    let input = dir.path().join("in.ivf");
    let output = dir.path().join("out.ivf");
    let status = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=640x360:rate=30"])
        .args(["-c:v", "libvpx", "-g", "30", "-t", "30", "-f", "ivf"])
        .arg(&input)
        .status()
        .unwrap();
    assert!(status.success(), "ffmpeg failed");
    let edge = webrtc_edge("edge-x", dir.path(), &[]);
    let now = SystemTime::now();

    // A refusal reaches the page as its reason.
    let viewer = browser::Browser::start();
    let view_missing = token("vod/missing", Action::View, Duration::from_secs(600), now);
    viewer.open(&format!("http://{}/demo/watch?stream=vod/missing&token={view_missing}", edge.http));
    let error = viewer.wait_until(
        "the page to show the refusal",
        Duration::from_secs(20),
        "return window.ferry && window.ferry.state === 'error' && window.ferry.error;",
    );
    assert!(error.as_str().unwrap_or("").contains("not_found"), "{error}");

    // IVF (VP8) in over QUIC, WebRTC out.
    let mut cmd = ferry();
    cmd.args(["publish", "--edge", &edge.quic, "--stream", "vod/x", "--insecure", "--json", "--input"])
        .arg(&input)
        .stdout(std::process::Stdio::null());
    let _publisher = Proc::spawn("ivf publisher", &mut cmd);
    wait_for_stream(&edge);
    let view = token("vod/x", Action::View, Duration::from_secs(600), now);
    viewer.open(&format!("http://{}/demo/watch?stream=vod/x&token={view}", edge.http));
    let first = wait_decoding(&viewer, "the browser to decode the QUIC publisher's VP8");
    println!("time to first frame (QUIC IVF publisher → WHEP): {first:.0} ms");
    assert_playing_with(&viewer, "browser watching a QUIC publisher", false);
    let size = viewer.eval("return [window.ferry.stats.width, window.ferry.stats.height];");
    assert_eq!(size, serde_json::json!([640, 360]), "the browser decodes the IVF's frames");

    // WebRTC in, IVF out over QUIC.
    let publisher = browser::Browser::start();
    let publish = token("live/w", Action::Publish, Duration::from_secs(600), now);
    publisher.open(&format!("http://{}/demo/publish?stream=live/w&token={publish}", edge.http));
    publisher.wait_until(
        "the WHIP publisher to go live",
        Duration::from_secs(30),
        "return window.ferry && window.ferry.state === 'live';",
    );
    let watcher = watch(
        &edge,
        "live/w",
        &["--track", "video", "--duration", "4s", "--output", output.to_str().unwrap()],
    );
    let watched = json_output(watcher, Duration::from_secs(60));
    assert!(watched["frames"].as_u64().unwrap_or(0) >= 30, "{watched}");
    let decode = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&output)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        decode.status.success() && decode.stderr.is_empty(),
        "ffmpeg could not decode the recording: {}",
        String::from_utf8_lossy(&decode.stderr)
    );
}
