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

use ferry_edge::auth::{mint, Action, StreamScope, TokenSecret};
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
    // The advertised address is not the bound one (NAT, Kubernetes node IP).
    let edge = webrtc_edge(
        "edge-bad",
        dir.path(),
        &[
            "--webrtc-max-sessions",
            "1",
            "--webrtc-max-sdp-bytes",
            "4096",
            "--webrtc-public-ip",
            "203.0.113.7",
        ],
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
    let candidates: Vec<&str> = answer.lines().filter(|l| l.starts_with("a=candidate:")).collect();
    assert!(
        candidates.iter().all(|c| c.contains(" 203.0.113.7 ") && !c.contains("127.0.0.1")),
        "candidates advertise --webrtc-public-ip only: {candidates:?}"
    );
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

    // H.264 (constrained baseline) through WHIP and WHEP: STAP-A/FU-A in, Annex-B in the
    // track buffer, packetized again per viewer.
    let publish = token("live/h264", Action::Publish, Duration::from_secs(600), now);
    publisher.open(&format!("http://{}/demo/publish?stream=live/h264&codec=h264&token={publish}", edge.http));
    publisher.wait_until(
        "the H.264 publisher to go live",
        Duration::from_secs(30),
        "return window.ferry && window.ferry.state === 'live';",
    );
    assert_eq!(publisher.eval("return window.ferry.codec;"), "video/H264");
    let view = token("live/h264", Action::View, Duration::from_secs(600), now);
    viewer.open(&format!("http://{}/demo/watch?stream=live/h264&token={view}", edge.http));
    let first = wait_decoding(&viewer, "the browser to decode H.264 over WHEP");
    println!("time to first frame (H.264 WHIP → WHEP): {first:.0} ms");
    assert_playing(&viewer, "browser watching H.264");
}

/// Keeps every `RTCPeerConnection` a page creates in `window.__ferryTestPcs`, so the
/// test reads `getStats()` of pages that do not expose their connection.
const PC_TAP: &str = r#"(() => {
  const Native = window.RTCPeerConnection;
  if (!Native || window.__ferryTestPcs) return;
  const pcs = window.__ferryTestPcs = [];
  window.RTCPeerConnection = class extends Native {
    constructor(...args) { super(...args); pcs.push(this); }
  };
})();"#;

/// Counters of the page's newest peer connection from one `getStats()` report: video
/// frames encoded (publisher) or decoded (viewer) and the viewer's keyframe and loss
/// counters; `bytes` covers every RTP stream, audio included.
const VIDEO_TOTALS: &str = r#"
const pcs = window.__ferryTestPcs || [];
const pc = pcs[pcs.length - 1];
if (!pc) return null;
return pc.getStats().then((report) => {
  const t = { at: 0, encoded: 0, decoded: 0, keyframes: 0, plis: 0, nacks: 0, freezes: 0, bytes: 0 };
  report.forEach((s) => {
    if (s.type === "outbound-rtp") t.bytes += s.bytesSent || 0;
    if (s.type === "inbound-rtp") t.bytes += s.bytesReceived || 0;
    if (s.kind !== "video") return;
    if (s.type === "outbound-rtp") { t.at = s.timestamp; t.encoded = s.framesEncoded || 0; }
    if (s.type === "inbound-rtp") {
      t.at = s.timestamp;
      t.decoded = s.framesDecoded || 0;
      t.keyframes = s.keyFramesDecoded || 0;
      t.plis = (s.pliCount || 0) + (s.firCount || 0);
      t.nacks = s.nackCount || 0;
      t.freezes = s.freezeCount || 0;
    }
  });
  return t;
});
"#;

/// One reading of [`VIDEO_TOTALS`].
#[derive(Debug, Clone, Copy)]
struct VideoTotals {
    /// The stats clock (ms): rates use the browser's own time, not WebDriver round trips.
    at: f64,
    encoded: f64,
    decoded: f64,
    keyframes: f64,
    plis: f64,
    nacks: f64,
    freezes: f64,
    bytes: f64,
}

impl VideoTotals {
    fn read(browser: &browser::Browser) -> VideoTotals {
        let v = browser.eval(VIDEO_TOTALS);
        let n = |k: &str| v[k].as_f64().unwrap_or(0.0);
        VideoTotals {
            at: n("at"),
            encoded: n("encoded"),
            decoded: n("decoded"),
            keyframes: n("keyframes"),
            plis: n("plis"),
            nacks: n("nacks"),
            freezes: n("freezes"),
            bytes: n("bytes"),
        }
    }

    fn seconds_since(&self, earlier: &VideoTotals) -> f64 {
        ((self.at - earlier.at) / 1000.0).max(0.001)
    }

    fn encoded_fps_since(&self, earlier: &VideoTotals) -> f64 {
        (self.encoded - earlier.encoded) / self.seconds_since(earlier)
    }

    fn decoded_fps_since(&self, earlier: &VideoTotals) -> f64 {
        (self.decoded - earlier.decoded) / self.seconds_since(earlier)
    }

    fn kbps_since(&self, earlier: &VideoTotals) -> f64 {
        (self.bytes - earlier.bytes) * 8.0 / 1000.0 / self.seconds_since(earlier)
    }
}

/// The stream's payload rate (kbit/s) and frame rate at `viewer` once the publisher's
/// bandwidth estimate has ramped up: two 2-second samples within 15% of each other, or
/// the last of ten (a later, higher rate only makes a limited link slower still).
fn settled_rate(viewer: &browser::Browser) -> (f64, f64) {
    let mut before = VideoTotals::read(viewer);
    let mut last_kbps: Option<f64> = None;
    let mut rate = (0.0, 0.0);
    for _ in 0..10 {
        std::thread::sleep(Duration::from_secs(2));
        let now = VideoTotals::read(viewer);
        rate = (now.kbps_since(&before), now.decoded_fps_since(&before));
        if last_kbps.is_some_and(|last| (rate.0 - last).abs() <= 0.15 * last) {
            break;
        }
        last_kbps = Some(rate.0);
        before = now;
    }
    rate
}

/// The slow viewer's link, as a share of the stream's measured rate: well below it.
const SLOW_LINK_SHARE: f64 = 0.45;
/// Token-bucket depth (bytes): about a dozen full packets back to back.
const SLOW_LINK_BURST: u64 = 16_000;
/// Queue (bytes) before the link drops: over a second at the limited rate, room for a
/// keyframe burst once the queue drains.
const SLOW_LINK_QUEUE: u64 = 64_000;
/// How long the three browsers are compared while the link is limited.
const SLOW_WINDOW: Duration = Duration::from_secs(10);
const SLOW_WINDOW_STEPS: u32 = 5;

/// One viewer sits behind a link far slower than the stream (a veth into a network
/// namespace, limited by `tc tbf`; this kernel has no netem). The others must not pay
/// for it: the fast viewer decodes what the publisher encodes. The slow one is clearly
/// degraded but recovers at keyframes: its loss reports (NACK, PLI) reach the edge,
/// which gets it keyframes (asking the publisher for them) while its link stays slow,
/// so it keeps decoding in every part of the window. Once the link is fast again it
/// plays at the full rate.
#[test]
fn a_slow_whep_viewer_recovers_at_keyframes_while_others_play_at_full_rate() {
    let _heavy = heavy();
    let dir = TempDir::new("webrtc-slow");
    let ns = netns::NetNs::create("slowview");
    let host_ip = ns.host_ip().to_string();
    // Media and HTTP on the link's host end: the host's browsers reach it over loopback
    // routing, the namespace's browser over the (limited) veth.
    let http_listen = format!("{host_ip}:0");
    let edge =
        webrtc_edge("edge-slow", dir.path(), &["--webrtc-bind", &host_ip, "--http-listen", &http_listen]);
    let now = SystemTime::now();
    let publish = token("live/slow", Action::Publish, Duration::from_secs(3600), now);
    let view = token("live/slow", Action::View, Duration::from_secs(3600), now);
    let watch_url = format!("http://{}/demo/watch?stream=live/slow&token={view}", edge.http);

    // The canvas source: getUserMedia needs a secure context, and http://10.x is not one.
    let publisher = browser::Browser::start();
    publisher.run_on_every_page(PC_TAP);
    publisher
        .open(&format!("http://{}/demo/publish?stream=live/slow&token={publish}&source=canvas", edge.http));
    publisher.wait_until(
        "the WHIP publisher to go live",
        Duration::from_secs(30),
        "return window.ferry && window.ferry.state === 'live';",
    );
    let fast = browser::Browser::start();
    fast.run_on_every_page(PC_TAP);
    fast.open(&watch_url);
    wait_decoding(&fast, "the fast viewer to decode a frame");
    let slow = browser::Browser::start_in(&ns);
    slow.run_on_every_page(PC_TAP);
    slow.open(&watch_url);
    wait_decoding(&slow, "the viewer in the namespace to decode a frame before its link is limited");

    let (stream_kbps, stream_fps) = settled_rate(&fast);
    let link_kbps = (stream_kbps * SLOW_LINK_SHARE) as u64;
    // Only UDP is limited: the WebDriver session into the namespace is TCP.
    ns.limit_udp_to_ns(link_kbps, SLOW_LINK_BURST, SLOW_LINK_QUEUE);
    // Let the link's queue fill before measuring.
    std::thread::sleep(Duration::from_secs(2));

    let metrics_before = edge.metrics();
    let (_, dropped_before) = ns.tbf_counters();
    let (pub0, fast0, slow0) =
        (VideoTotals::read(&publisher), VideoTotals::read(&fast), VideoTotals::read(&slow));
    let mut slow_steps = Vec::new();
    let mut slow_prev = slow0;
    for _ in 0..SLOW_WINDOW_STEPS {
        std::thread::sleep(SLOW_WINDOW / SLOW_WINDOW_STEPS);
        let s = VideoTotals::read(&slow);
        slow_steps.push(s.decoded - slow_prev.decoded);
        slow_prev = s;
    }
    let (pub1, fast1, slow1) =
        (VideoTotals::read(&publisher), VideoTotals::read(&fast), VideoTotals::read(&slow));
    let (sent_bytes, dropped_after) = ns.tbf_counters();

    let publisher_fps = pub1.encoded_fps_since(&pub0);
    let fast_fps = fast1.decoded_fps_since(&fast0);
    let slow_fps = slow1.decoded_fps_since(&slow0);
    println!(
        "stream {stream_kbps:.0} kbit/s at {stream_fps:.1} fps; slow link {link_kbps} kbit/s \
         (tbf burst {SLOW_LINK_BURST} B, queue {SLOW_LINK_QUEUE} B)"
    );
    println!(
        "over {SLOW_WINDOW:?}: publisher {publisher_fps:.1} fps encoded, fast viewer {fast_fps:.1} fps \
         ({:.2}x), slow viewer {slow_fps:.1} fps ({:.2}x of fast; per {:?}: {slow_steps:?} frames); \
         slow: +{} keyframes decoded, +{} PLI/FIR sent, +{} NACKs, +{} freezes, {:.0} kbit/s; \
         link dropped {} packets, carried {} bytes in all",
        fast_fps / publisher_fps,
        slow_fps / fast_fps.max(0.001),
        SLOW_WINDOW / SLOW_WINDOW_STEPS,
        slow1.keyframes - slow0.keyframes,
        slow1.plis - slow0.plis,
        slow1.nacks - slow0.nacks,
        slow1.freezes - slow0.freezes,
        slow1.kbps_since(&slow0),
        dropped_after - dropped_before,
        sent_bytes,
    );
    assert!(
        publisher_fps >= 5.0,
        "the publisher hardly encodes ({publisher_fps:.1} fps): nothing to compare"
    );
    assert!(
        fast_fps >= 0.8 * publisher_fps,
        "the fast viewer decoded {fast_fps:.1} fps while the publisher encoded {publisher_fps:.1}: \
         a slow viewer cost the others"
    );
    assert!(dropped_after > dropped_before, "the limited link dropped nothing: it was not the bottleneck");
    assert!(
        slow_fps <= 0.5 * fast_fps,
        "the viewer behind {link_kbps} kbit/s decoded {slow_fps:.1} fps, the fast one {fast_fps:.1}: \
         the limit did not bite"
    );

    // It recovers at keyframes while its link stays slow: keyframes decoded, and
    // frames decoded in most parts of the window (not one burst then a freeze).
    let keyframes = slow1.keyframes - slow0.keyframes;
    assert!(keyframes >= 2.0, "the slow viewer decoded {keyframes} keyframes in {SLOW_WINDOW:?}");
    let parts_decoding = slow_steps.iter().filter(|&&frames| frames > 0.0).count();
    assert!(
        parts_decoding as u32 >= SLOW_WINDOW_STEPS - 1,
        "the slow viewer decoded frames in only {parts_decoding} of {SLOW_WINDOW_STEPS} parts: {slow_steps:?}"
    );

    // Its loss reports reach the edge, which asks the publisher for keyframes (throttled).
    let sample = |text: &str, name: &str| metric_value(text, name).unwrap_or(0.0);
    let plis_in = "ferry_plis_total{direction=\"received\"}";
    let nacks_in = "ferry_nacks_total";
    let plis_out = "ferry_plis_total{direction=\"sent\"}";
    let requests = "ferry_keyframe_requests_total";
    let metrics_after = edge.metrics();
    let grew = |name: &str| sample(&metrics_after, name) > sample(&metrics_before, name);
    assert!(grew(plis_in) || grew(nacks_in), "no loss report from the slow viewer reached the edge");
    assert!(grew(requests) && grew(plis_out), "the edge did not ask the publisher for keyframes");
    let skips = "ferry_skipped_groups_total{role=\"whep\"}";
    println!(
        "edge: viewer NACKs {} -> {}, PLI/FIR received {} -> {}, keyframe requests {} -> {}, \
         PLIs sent to the publisher {} -> {}, WHEP skipped groups {} -> {}",
        sample(&metrics_before, nacks_in),
        sample(&metrics_after, nacks_in),
        sample(&metrics_before, plis_in),
        sample(&metrics_after, plis_in),
        sample(&metrics_before, requests),
        sample(&metrics_after, requests),
        sample(&metrics_before, plis_out),
        sample(&metrics_after, plis_out),
        sample(&metrics_before, skips),
        sample(&metrics_after, skips),
    );

    // The slow viewer is served, not dropped.
    assert_eq!(slow.eval("return window.ferry.state;"), "live", "{:?}", slow.console_log());
    assert_eq!(metric_value(&metrics_after, "ferry_webrtc_sessions{direction=\"whep\"}"), Some(2.0));

    // The link heals: the viewer is back to the full rate within a few keyframes.
    ns.clear_limit();
    let mut healed = None;
    for _ in 0..15 {
        let (f0, s0) = (VideoTotals::read(&fast), VideoTotals::read(&slow));
        std::thread::sleep(Duration::from_secs(2));
        let (f1, s1) = (VideoTotals::read(&fast), VideoTotals::read(&slow));
        let (fast_fps, slow_fps) = (f1.decoded_fps_since(&f0), s1.decoded_fps_since(&s0));
        if slow_fps >= 0.8 * fast_fps {
            healed = Some((fast_fps, slow_fps));
            break;
        }
    }
    let (fast_fps, slow_fps) =
        healed.expect("the slow viewer did not get back to the full rate after its link healed");
    println!("after the link healed: fast {fast_fps:.1} fps, formerly slow {slow_fps:.1} fps");
}

/// `ferry token` output is what the edge accepts, and `ferry watch --whep` (a WHEP
/// client built on the webrtc crate) watches a QUIC publisher's VP8-labelled synthetic
/// stream: whole frames, keyframes, publisher-to-viewer latency, nothing lost.
#[test]
fn ferry_watch_over_whep_with_a_token_from_ferry_token() {
    let _heavy = heavy();
    let dir = TempDir::new("webrtc-cli");
    let edge = webrtc_edge("edge-cli", dir.path(), &[]);
    let secret = dir.path().join("secret");
    let mint = |action: &str| {
        let out = ferry()
            .args([
                "token",
                "--secret-file",
                secret.to_str().unwrap(),
                "--stream",
                "live/cli",
                "--action",
                action,
            ])
            .args(["--ttl", "10m"])
            .output()
            .unwrap();
        assert!(out.status.success(), "ferry token: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let (view, publish) = (mint("view"), mint("publish"));

    let mut cmd = ferry();
    cmd.args(["publish", "--edge", &edge.quic, "--stream", "live/cli", "--synthetic", "--synthetic-vp8"])
        .args(["--bitrate", "1500k", "--insecure", "--duration", "30s"])
        .stdout(std::process::Stdio::null());
    let _publisher = Proc::spawn("synthetic VP8 publisher", &mut cmd);
    wait_for_stream(&edge);

    let url = format!("http://{}/whep/live/cli", edge.http);
    let watch = |token: &str| {
        let mut cmd = ferry();
        cmd.args(["watch", "--whep", &url, "--token", token, "--duration", "4s", "--json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        Proc::spawn("whep viewer", &mut cmd).wait_output(Duration::from_secs(60))
    };
    let out = watch(&view);
    assert!(out.status.success(), "ferry watch --whep: {}", String::from_utf8_lossy(&out.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("ferry watch --whep: {stats}");
    assert_eq!(stats["codec"], "Vp8", "{stats}");
    assert!(stats["frames"].as_u64().unwrap() >= 60, "{stats}");
    assert!(stats["keyframes"].as_u64().unwrap() >= 2, "{stats}");
    assert_eq!(stats["lost_frames"], 0, "{stats}");
    assert!(stats["latency_ms"]["samples"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(stats["ended"], "duration reached", "{stats}");

    // A publish token does not let you watch: a clear refusal and a non-zero exit.
    let out = watch(&publish);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("403") && stderr.contains("token_wrong_action"), "{stderr}");
}

/// A cluster for WHEP failover: one voter and three edges (`o` in r1, `a` and `b` in
/// r2) that gossip, register and serve WebRTC with tokens.
struct WhepCluster {
    voter: Voter,
    control: String,
    edges: std::collections::BTreeMap<&'static str, Edge>,
}

fn whep_cluster(dir: &Path, extra: &[&str]) -> WhepCluster {
    let gossip: Vec<String> = (0..4).map(|_| format!("127.0.0.1:{}", free_udp_port())).collect();
    let seeds = gossip.join(",");
    let peers = format!("1=127.0.0.1:{}", free_udp_port());
    let voter_args = ["--gossip-listen", &gossip[0], "--gossip-seeds", &seeds];
    let voter = Voter::start(1, &peers, &dir.join("v1"), &voter_args);
    wait_for_leader(&[&voter]);
    let control = format!("http://{}", voter.http);
    let mut edges = std::collections::BTreeMap::new();
    for (i, (id, region)) in [("o", "r1"), ("a", "r2"), ("b", "r2")].into_iter().enumerate() {
        let mut args = vec!["--region", region, "--gossip-listen", &gossip[i + 1], "--gossip-seeds", &seeds];
        args.extend(["--control-plane", &control, "--control-token", TOKEN]);
        args.extend_from_slice(extra);
        edges.insert(id, webrtc_edge(id, dir, &args));
    }
    wait_for("3 registered edges alive in gossip", Duration::from_secs(30), || {
        let (_, body) = voter.get("/v1/edges?stale=true");
        let edges = body["edges"].as_array()?;
        (edges.len() == 3 && edges.iter().all(|e| e["gossip"]["alive"] == true)).then_some(())
    });
    WhepCluster { voter, control, edges }
}

fn whep_sessions(edge: &Edge) -> f64 {
    edge.metric("ferry_webrtc_sessions{direction=\"whep\"}").unwrap_or(0.0)
}

/// `window.ferry.<expr>` of a page.
fn page(browser: &browser::Browser, expr: &str) -> serde_json::Value {
    browser.eval(&format!("return window.ferry && window.ferry.{expr};"))
}

#[test]
fn the_demo_publisher_re_routes_when_its_edge_dies_and_viewers_resume() {
    let _heavy = heavy();
    let dir = TempDir::new("whip-failover");
    let mut cluster = whep_cluster(dir.path(), &[]);
    let stream = "live/p";
    let publish = token(stream, Action::Publish, Duration::from_secs(3600), SystemTime::now());
    // A browser publishes on edge a's demo page (it learns the control plane from the edge).
    let a_http = cluster.edges["a"].http.clone();
    let publisher = browser::Browser::start();
    publisher.open(&format!("http://{a_http}/demo/publish?stream={stream}&source=canvas&token={publish}"));
    publisher.wait_until(
        "the WHIP publisher to go live on edge a",
        Duration::from_secs(30),
        "return window.ferry && window.ferry.state === 'live';",
    );
    let origin = |want: &str| {
        let (code, s) = cluster.voter.get(&format!("/v1/streams/{stream}"));
        (code == 200 && s["origin"] == want && s["origin_lost"] != true).then_some(())
    };
    wait_for("edge a is the stream's origin", Duration::from_secs(20), || origin("a"));
    // A routed QUIC viewer in r1 plays it through edge o.
    let mut cmd = ferry();
    cmd.args(["watch", "--control-plane", &cluster.control, "--region", "r1", "--stream", stream])
        .args(["--insecure", "--max-failures", "200", "--duration", "300s", "--json"])
        .stdout(std::process::Stdio::piped());
    let viewer = Proc::spawn("routed viewer", &mut cmd);
    let o_http = cluster.edges["o"].http.clone();
    let sent = || metric_value(&http_get(&o_http, "/metrics").1, "ferry_frames_out_total").unwrap_or(0.0);
    wait_for("the viewer receives through edge o", Duration::from_secs(30), || (sent() > 30.0).then_some(()));

    // Kill -9 edge a: the page keeps capturing, routes again and publishes elsewhere.
    drop(cluster.edges.remove("a"));
    publisher.wait_until(
        "the publisher live again after re-routing",
        Duration::from_secs(60),
        &format!(
            "return window.ferry.reconnects >= 1 && window.ferry.state === 'live' \
             && !window.ferry.endpoint.startsWith('http://{a_http}/');"
        ),
    );
    let endpoint = page(&publisher, "endpoint");
    let new_origin = ["o", "b"]
        .into_iter()
        .find(|e| {
            endpoint.as_str().is_some_and(|u| u.starts_with(&format!("http://{}/", cluster.edges[e].http)))
        })
        .unwrap_or_else(|| panic!("routed to an unknown edge: {endpoint}"));
    wait_for("the new edge is the stream's origin", Duration::from_secs(30), || origin(new_origin));
    assert_eq!(page(&publisher, "error"), serde_json::Value::Null, "no error it could not recover from");
    // The viewer resumes: frames flow through edge o again, and its legs show it.
    let before = sent();
    wait_for("the viewer receives again", Duration::from_secs(60), || (sent() > before + 30.0).then_some(()));
    viewer.terminate();
    let stats = json_output(viewer, Duration::from_secs(30));
    assert!(stats["frames"].as_u64().unwrap() > 60, "{stats}");
    assert_eq!(stats["ended"], "stopped", "it never gave up: {stats}");
    println!("publisher moved a -> {new_origin}; viewer legs: {stats}");
}

#[test]
fn whep_viewers_re_route_by_themselves_when_their_edge_dies_or_drains() {
    require_ffmpeg();
    let _heavy = heavy();
    let dir = TempDir::new("whep-failover");
    let input = dir.path().join("in.ivf");
    let status = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x180:rate=30"])
        .args([
            "-c:v",
            "libvpx",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-g",
            "30",
            "-t",
            "180",
            "-f",
            "ivf",
        ])
        .arg(&input)
        .status()
        .unwrap();
    assert!(status.success(), "ffmpeg failed");
    let mut cluster = whep_cluster(dir.path(), &["--whep-drain-grace", "5s"]);
    let stream = "live/f";
    let mut cmd = ferry();
    cmd.args(["publish", "--edge", &cluster.edges["o"].quic, "--stream", stream, "--insecure", "--input"])
        .arg(&input)
        .stdout(std::process::Stdio::null());
    let _publisher = Proc::spawn("ivf publisher", &mut cmd);
    wait_for_stream(&cluster.edges["o"]);
    let view = token(stream, Action::View, Duration::from_secs(600), SystemTime::now());

    // `ferry watch --whep` on edge a routed through the control plane, and a browser on
    // edge a's demo page (it learns the control plane and its region from the edge).
    let a_http = cluster.edges["a"].http.clone();
    let mut cmd = ferry();
    cmd.args(["watch", "--whep", &format!("http://{a_http}/whep/{stream}"), "--token", &view])
        .args(["--control-plane", &cluster.control, "--region", "r2", "--duration", "300s", "--json"])
        .stdout(std::process::Stdio::piped());
    let cli = Proc::spawn("ferry watch --whep", &mut cmd);
    wait_for("the CLI viewer receiving on edge a", Duration::from_secs(30), || {
        let a = &cluster.edges["a"];
        let sent = a.metric("ferry_rtp_packets_total{direction=\"out\"}").unwrap_or(0.0);
        (whep_sessions(a) == 1.0 && sent > 300.0).then_some(())
    });
    let viewer = browser::Browser::start();
    viewer.open(&format!("http://{a_http}/demo/watch?stream={stream}&token={view}"));
    wait_decoding(&viewer, "the browser plays on edge a");
    assert_eq!(whep_sessions(&cluster.edges["a"]), 2.0);

    // Kill -9 edge a: both find another edge through routing and play again.
    let frames = stat(&viewer, "framesTotal");
    drop(cluster.edges.remove("a"));
    viewer.wait_until(
        "the browser plays again after re-routing",
        Duration::from_secs(30),
        &format!(
            "return window.ferry.reconnects >= 1 && window.ferry.state === 'live' \
             && window.ferry.stats.framesTotal > {frames} + 30;"
        ),
    );
    let endpoint = page(&viewer, "endpoint");
    let b_http = cluster.edges["b"].http.clone();
    assert_eq!(endpoint, format!("http://{b_http}/whep/{stream}"), "routed to the live edge of r2");
    wait_for("both viewers on edge b", Duration::from_secs(30), || {
        (whep_sessions(&cluster.edges["b"]) == 2.0).then_some(())
    });

    // Drain edge b (SIGTERM): WHEP viewers keep playing through the grace period, then
    // are closed, re-route to the last edge and play on; b exits cleanly.
    let b = cluster.edges.remove("b").unwrap();
    let frames = stat(&viewer, "framesTotal");
    b.proc.terminate();
    wait_for("the browser still plays on the draining edge", Duration::from_secs(10), || {
        let now = stat(&viewer, "framesTotal");
        (whep_sessions(&b) == 2.0 && now > frames + 15.0).then_some(())
    });
    let (status, body) = http_get(&b.http, "/readyz");
    assert_eq!(status, 503, "a draining edge is not ready: {body}");
    let out = b.proc.wait_output(Duration::from_secs(60));
    assert!(out.status.success(), "drained edge exit: {:?}", out.status);
    let reconnects = page(&viewer, "reconnects").as_u64().unwrap_or(0);
    let frames = stat(&viewer, "framesTotal");
    let o_http = cluster.edges["o"].http.clone();
    viewer.wait_until(
        "the browser plays on the last edge",
        Duration::from_secs(30),
        &format!(
            "return window.ferry.state === 'live' && window.ferry.stats.framesTotal > {frames} + 30 \
             && window.ferry.endpoint === 'http://{o_http}/whep/{stream}';"
        ),
    );
    assert!(reconnects >= 2, "re-routed after the kill and after the drain: {reconnects}");
    assert_eq!(page(&viewer, "error"), serde_json::Value::Null, "no error the viewer could not recover from");
    wait_for("the CLI viewer on the last edge", Duration::from_secs(30), || {
        (whep_sessions(&cluster.edges["o"]) == 2.0).then_some(())
    });
    let playing = cluster.edges["o"].metric("ferry_rtp_packets_total{direction=\"out\"}").unwrap_or(0.0);
    wait_for("the last edge sends media", Duration::from_secs(10), || {
        let now = cluster.edges["o"].metric("ferry_rtp_packets_total{direction=\"out\"}").unwrap_or(0.0);
        (now > playing + 100.0).then_some(())
    });
    cli.terminate();
    let stats = json_output(cli, Duration::from_secs(30));
    println!("ferry watch --whep: {stats}");
    let legs = stats["legs"].as_array().unwrap();
    let urls: Vec<String> = legs
        .iter()
        .filter(|l| l["frames"].as_u64().unwrap_or(0) > 0)
        .map(|l| l["url"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> =
        [&a_http, &b_http, &o_http].iter().map(|h| format!("http://{h}/whep/{stream}")).collect();
    assert_eq!(urls, expected, "a session with frames on each edge in turn: {stats}");
    assert_eq!(stats["ended"], "stopped", "{stats}");
    let (_, routes) = cluster.voter.get(&format!("/v1/route/{stream}?kind=whep&region=r2"));
    assert_eq!(routes["edge"], "o", "only the origin is left: {routes}");
}

/// POSTs a WHEP offer as `session` (with `user_agent`) to `edge`, ends the session, and
/// returns the edge's `Ferry-Variant` and `Ferry-Client-Flag` answers.
fn whep_variant(edge: &Edge, stream: &str, auth: &str, session: &str, user_agent: &str) -> (String, String) {
    let headers = [
        ("Content-Type", "application/sdp"),
        ("Authorization", auth),
        ("Ferry-Session", session),
        ("User-Agent", user_agent),
    ];
    // The edge's few UDP ports free up as ended sessions finish: 503 means "again". So
    // does 404 while the stream was just published: the edge learns its origin through
    // gossip or the control plane a moment later (a lasting 404 still fails).
    let (hdrs, _) = wait_for("a WHEP session", Duration::from_secs(20), || {
        let (status, hdrs, answer) =
            http(&edge.http, "POST", &format!("/whep/{stream}"), &headers, vp8_offer("recvonly").as_bytes());
        match status {
            503 | 404 => None,
            201 => Some((hdrs, answer)),
            other => panic!("{session}: HTTP {other}: {answer}"),
        }
    });
    let location = header(&hdrs, "location").expect("Location").to_owned();
    assert_eq!(http(&edge.http, "DELETE", &location, &[], b"").0, 200);
    let get = |name: &str| header(&hdrs, name).unwrap_or("").to_owned();
    (get("ferry-variant"), get("ferry-client-flag"))
}

#[test]
fn rollout_levels_place_whep_sessions_on_every_edge_as_the_gates_say() {
    let _heavy = heavy();
    let dir = TempDir::new("rollout-levels");
    let cluster = whep_cluster(dir.path(), &[]);
    let stream = "live/r";
    let mut cmd = ferry();
    cmd.args(["publish", "--edge", &cluster.edges["o"].quic, "--stream", stream, "--insecure"])
        .args(["--synthetic", "--synthetic-vp8", "--duration", "300s"])
        .stdout(std::process::Stdio::null());
    let _publisher = Proc::spawn("publisher", &mut cmd);
    wait_for_stream(&cluster.edges["o"]);
    let auth = format!("Bearer {}", token(stream, Action::View, Duration::from_secs(600), SystemTime::now()));
    let spec = r#"{"id":"lag","spec":{"override":{"max_lag_ms":800,"client_flag":"lag-1"},
        "gates":{"session_ids":["vip"],"client_tags":["Firefox/"],"regions":["r1"],"share_bp":3000}}}"#;
    let (code, answer) = cluster.voter.send("POST", "/v1/rollouts", None, spec);
    assert_eq!(code, 200, "{answer}");
    let ids: Vec<String> = (0..40).map(|i| format!("viewer-{i}")).collect();
    let in_share: Vec<bool> = ids.iter().map(|id| ferry_proto::cohort::bucket("lag", id) < 3000).collect();
    assert!(in_share.iter().any(|t| *t) && !in_share.iter().all(|t| *t), "a mixed sample");

    // Who the gates treat at `level` on edge `edge` (o is in r1, a and b in r2).
    let treated = |level: u8, edge: &str, id: &str, ua: &str| -> bool {
        let share = ferry_proto::cohort::bucket("lag", id) < 3000;
        match level {
            0 => false,
            4 => true,
            l => id == "vip" || ua.contains("Firefox/") || (l >= 2 && edge == "o") || (l >= 3 && share),
        }
    };
    let mut probes: Vec<(String, &str)> = vec![("vip".into(), "curl")];
    probes.extend(
        ids.iter().take(12).flat_map(|id| [(id.clone(), "curl"), (id.clone(), "Mozilla/5.0 Firefox/140.0")]),
    );
    let mut level = 0;
    for next in [1u8, 2, 3, 4, 3, 0] {
        // The operator flips the level; measure until each edge gives new sessions the
        // cohort the new level implies, probing with a session whose cohort changes.
        let flipped = std::time::Instant::now();
        let (code, answer) =
            cluster.voter.send("POST", "/v1/rollouts/lag/level", None, &format!(r#"{{"level":{next}}}"#));
        assert_eq!(code, 200, "{answer}");
        for (name, edge) in &cluster.edges {
            let all: Vec<(String, &str)> =
                probes.iter().cloned().chain(ids.iter().map(|id| (id.clone(), "curl"))).collect();
            let changed =
                all.iter().find(|(id, ua)| treated(level, name, id, ua) != treated(next, name, id, ua));
            if let Some((id, ua)) = changed {
                let want = if treated(next, name, id, ua) { "lag=treatment" } else { "lag=baseline" };
                wait_for(&format!("edge {name} at level {next}"), Duration::from_secs(10), || {
                    (whep_variant(edge, stream, &auth, id, ua).0 == want).then_some(())
                });
                println!("level {level} -> {next}: edge {name} applies it after {:?}", flipped.elapsed());
            }
            // Then every session lands where the gates say.
            for (id, ua) in &probes {
                let (variant, flag) = whep_variant(edge, stream, &auth, id, ua);
                let treat = treated(next, name, id, ua);
                let want = if treat { "lag=treatment" } else { "lag=baseline" };
                assert_eq!(variant, want, "level {next}, edge {name}, {id}, {ua}");
                assert_eq!(flag, if treat { "lag-1" } else { "" }, "level {next}, edge {name}, {id}");
            }
        }
        level = next;
    }
    let metrics = cluster.edges["a"].metrics();
    assert!(
        metric_value(&metrics, "ferry_rollout_sessions_total{rollout=\"lag\",cohort=\"treatment\"}")
            > Some(0.0)
    );
    assert!(
        metric_value(&metrics, "ferry_rollout_sessions_total{rollout=\"lag\",cohort=\"baseline\"}")
            > Some(0.0)
    );

    // `ferry watch --whep --session-id` reports its cohort.
    let mut cmd = ferry();
    cmd.args(["watch", "--whep", &format!("http://{}/whep/{stream}", cluster.edges["a"].http)])
        .args([
            "--token",
            auth.trim_start_matches("Bearer "),
            "--session-id",
            "vip",
            "--duration",
            "2s",
            "--json",
        ])
        .stdout(std::process::Stdio::piped());
    let stats = json_output(Proc::spawn("whep viewer", &mut cmd), Duration::from_secs(60));
    // Level 0 now: even the allowlisted viewer gets the baseline.
    assert_eq!(stats["variant"], "lag=baseline", "{stats}");
}

#[test]
fn a_fault_injection_drill_refuses_its_share_of_treatment_sessions_and_counts_them() {
    let _heavy = heavy();
    let dir = TempDir::new("rollout-fault");
    let cluster = whep_cluster(dir.path(), &["--allow-fault-injection"]);
    let stream = "live/f";
    let mut cmd = ferry();
    cmd.args(["publish", "--edge", &cluster.edges["o"].quic, "--stream", stream, "--insecure"])
        .args(["--synthetic", "--synthetic-vp8", "--duration", "300s"])
        .stdout(std::process::Stdio::null());
    let _publisher = Proc::spawn("publisher", &mut cmd);
    wait_for_stream(&cluster.edges["o"]);
    let auth = format!("Bearer {}", token(stream, Action::View, Duration::from_secs(600), SystemTime::now()));
    let spec = r#"{"id":"drill","spec":{"override":{"fault":{"reject_sessions_bp":5000}},"gates":{"regions":["r2"]}}}"#;
    assert_eq!(cluster.voter.send("POST", "/v1/rollouts", None, spec).0, 200);
    assert_eq!(cluster.voter.send("POST", "/v1/rollouts/drill/level", None, r#"{"level":2}"#).0, 200);
    let edge = &cluster.edges["a"];
    let refused_by_drill = |id: &str| ferry_proto::cohort::bucket("drill/fault", id) < 5000;
    let ids: Vec<String> = (0..16).map(|i| format!("s{i}")).collect();
    assert!(ids.iter().any(|id| refused_by_drill(id)) && !ids.iter().all(|id| refused_by_drill(id)));
    // Once edge a has the rollout, a refused id is refused with the reason.
    let refused = ids.iter().find(|id| refused_by_drill(id)).unwrap();
    wait_for("edge a applies the drill", Duration::from_secs(10), || {
        let (status, _, body) = http(
            &edge.http,
            "POST",
            &format!("/whep/{stream}"),
            &[("Content-Type", "application/sdp"), ("Authorization", &auth), ("Ferry-Session", refused)],
            vp8_offer("recvonly").as_bytes(),
        );
        (status == 503 && body.contains("fault_injected")).then_some(())
    });
    let errors_before = edge
        .metric(
            "ferry_rollout_errors_total{rollout=\"drill\",cohort=\"treatment\",reason=\"fault_injected\"}",
        )
        .unwrap_or(0.0);
    let mut expected_refusals = 0.0;
    for id in &ids {
        let (status, hdrs, body) = http(
            &edge.http,
            "POST",
            &format!("/whep/{stream}"),
            &[("Content-Type", "application/sdp"), ("Authorization", &auth), ("Ferry-Session", id)],
            vp8_offer("recvonly").as_bytes(),
        );
        if refused_by_drill(id) {
            expected_refusals += 1.0;
            assert_eq!(status, 503, "{id}: {body}");
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(json["reason"], "fault_injected", "{json}");
        } else {
            if status == 503 && body.contains("too_many") {
                continue; // the edge's few UDP ports are busy; not the drill
            }
            assert_eq!(status, 201, "{id}: {body}");
            assert_eq!(header(&hdrs, "ferry-variant"), Some("drill=treatment"));
            let location = header(&hdrs, "location").unwrap().to_owned();
            assert_eq!(http(&edge.http, "DELETE", &location, &[], b"").0, 200);
        }
    }
    let errors = edge
        .metric(
            "ferry_rollout_errors_total{rollout=\"drill\",cohort=\"treatment\",reason=\"fault_injected\"}",
        )
        .unwrap_or(0.0);
    assert_eq!(errors - errors_before, expected_refusals);
    // Edge o is in r1: baseline there, nobody refused.
    let (status, hdrs, body) = http(
        &cluster.edges["o"].http,
        "POST",
        &format!("/whep/{stream}"),
        &[("Content-Type", "application/sdp"), ("Authorization", &auth), ("Ferry-Session", refused)],
        vp8_offer("recvonly").as_bytes(),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(header(&hdrs, "ferry-variant"), Some("drill=baseline"));
}

#[test]
fn a_cpu_burning_treatment_trips_on_its_edge_without_voters_and_is_recorded_when_they_return() {
    let _heavy = heavy();
    let dir = TempDir::new("rollout-cpu");
    let cluster = whep_cluster(dir.path(), &["--allow-fault-injection"]);
    let stream = "live/c";
    let mut cmd = ferry();
    cmd.args(["publish", "--edge", &cluster.edges["o"].quic, "--stream", stream, "--insecure"])
        .args(["--synthetic", "--synthetic-vp8", "--duration", "300s"])
        .stdout(std::process::Stdio::null());
    let _publisher = Proc::spawn("publisher", &mut cmd);
    wait_for_stream(&cluster.edges["o"]);
    let auth = format!("Bearer {}", token(stream, Action::View, Duration::from_secs(600), SystemTime::now()));
    let spec = r#"{"id":"burn","spec":{"override":{"fault":{"cpu_burn_ms_per_s":900},"max_lag_ms":20000},
        "gates":{"edges":["a"]},"guard":{"cpu_max":0.3,"consecutive":5}}}"#;
    assert_eq!(cluster.voter.send("POST", "/v1/rollouts", None, spec).0, 200);
    assert_eq!(cluster.voter.send("POST", "/v1/rollouts/burn/level", None, r#"{"level":2}"#).0, 200);
    let a = &cluster.edges["a"];
    let trips = || a.metric("ferry_rollout_trips_total{rollout=\"burn\",guard=\"cpu\"}").unwrap_or(0.0);
    wait_for("edge a gives the treatment", Duration::from_secs(10), || {
        (whep_variant(a, stream, &auth, "s1", "curl").0 == "burn=treatment").then_some(())
    });
    // A treated QUIC viewer that stays: its 20 s latency budget is the treatment's.
    let mut cmd = ferry();
    cmd.args(["watch", "--edge", &a.quic, "--stream", stream, "--insecure", "--session-id", "stays"])
        .args(["--duration", "300s"])
        .stdout(std::process::Stdio::null());
    let _viewer = Proc::spawn("treated viewer", &mut cmd);
    let treated = "ferry_rollout_sessions_total{rollout=\"burn\",cohort=\"treatment\"}";
    wait_for("the viewer's treated subscription", Duration::from_secs(20), || {
        let m = a.metrics();
        let subscribed = m.lines().any(|l| {
            l.starts_with("ferry_subscriptions{") && l.contains("role=\"viewer\"") && !l.ends_with(" 0")
        });
        (subscribed && metric_value(&m, treated) >= Some(2.0)).then_some(())
    });
    let moved_back = || a.metric("ferry_rollout_moved_back_sessions_total{rollout=\"burn\"}").unwrap_or(0.0);
    // Every voter stops: the edge guards itself.
    cluster.voter.signal("-STOP");
    assert_eq!(trips(), 0.0, "tripped before the voters stopped; the drill proves nothing");
    wait_for("edge a's CPU guard trips", Duration::from_secs(30), || (trips() == 1.0).then_some(()));
    // The live treated viewer moves back to its own budget (the WHEP probe has ended).
    wait_for("the live viewer moves back", Duration::from_secs(10), || (moved_back() == 1.0).then_some(()));
    assert_eq!(
        whep_variant(a, stream, &auth, "s1", "curl").0,
        "burn=baseline",
        "new sessions get the baseline"
    );
    // The voters return and record the trip: held, fallen back to the previous level.
    cluster.voter.signal("-CONT");
    let rollout = wait_for("the trip in the control plane", Duration::from_secs(30), || {
        let (_, r) = cluster.voter.get("/v1/rollouts/burn");
        (r["state"] == "tripped").then_some(r)
    });
    assert_eq!(rollout["level"], 0, "{rollout}");
    let last = rollout["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["what"], "tripped by cpu on edge a: level 2 -> 0", "{rollout}");
    assert_eq!(last["actor"], "guard", "{rollout}");
    let (_, audit) = cluster.voter.get("/v1/audit");
    assert!(
        audit["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "rollout.trip" && e["target"] == "burn"),
        "{audit}"
    );
}

/// Opens a QUIC viewer session as `id` with `tags` on the edge at `quic`: its
/// `Ferry-Variant`, or the refusal.
async fn quic_variant(quic: String, id: String, tags: Vec<String>) -> Result<String, String> {
    use ferry_net::dial::{connect, SessionHello};
    use ferry_net::tls::{ClientTrust, TransportTuning};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let session = SessionHello { id: Some(id), tags };
    let node = ferry_proto::NodeId::new("rollout-probe").unwrap();
    let link = connect(
        &quic,
        &ClientTrust::Insecure,
        &TransportTuning::default(),
        node,
        ferry_proto::Role::Viewer,
        None,
        &session,
    )
    .await
    .map_err(|e| e.to_string())?;
    link.conn.close(0u32.into(), b"bye");
    let _ = tokio::time::timeout(Duration::from_millis(500), link.endpoint.wait_idle()).await;
    Ok(link.variant.unwrap_or_default())
}

/// Opens the QUIC sessions `(edge quic address, id, tags)`, 16 at a time.
fn quic_variants(sessions: &[(String, String, Vec<String>)]) -> Vec<Result<String, String>> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let mut out = Vec::with_capacity(sessions.len());
        for chunk in sessions.chunks(16) {
            let tasks: Vec<_> = chunk
                .iter()
                .map(|(quic, id, tags)| tokio::spawn(quic_variant(quic.clone(), id.clone(), tags.clone())))
                .collect();
            for task in tasks {
                out.push(task.await.unwrap());
            }
        }
        out
    })
}

fn ctl(cluster: &WhepCluster, args: &[&str]) -> String {
    let out =
        ferry().args(["ctl", "--control", &cluster.control, "--token", TOKEN]).args(args).output().unwrap();
    assert!(out.status.success(), "ferry ctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn rollout_levels_place_200_quic_sessions_as_the_gates_say_and_ctl_flips_reach_every_edge() {
    let _heavy = heavy();
    let dir = TempDir::new("rollout-quic-levels");
    let cluster = whep_cluster(dir.path(), &[]);
    let spec = dir.path().join("spec.toml");
    std::fs::write(
        &spec,
        r#"id = "q"
description = "QUIC levels"
[override]
max_lag_ms = 900
client_flag = "q-1"
[gates]
session_ids = ["s-7", "s-70", "s-140"]
client_tags = ["Firefox/"]
regions = ["r1"]
share_bp = 1000
"#,
    )
    .unwrap();
    ctl(&cluster, &["rollout", "create", "-f", spec.to_str().unwrap()]);
    // 200 sessions with varied ids and tags, spread over the three edges (o in r1).
    let names = ["o", "a", "b"];
    let sessions: Vec<(String, String, Vec<String>, &str)> = (0..200)
        .map(|i| {
            let ua = match i % 10 {
                0 => "Mozilla/5.0 Firefox/140.0",
                1..=4 => "Mozilla/5.0 Chrome/131.0",
                _ => "ferry/0.1",
            };
            let edge = names[i % 3];
            (cluster.edges[edge].quic.clone(), format!("s-{i}"), vec![ua.to_owned()], edge)
        })
        .collect();
    let allowlisted = |(_, id, tags, _): &(String, String, Vec<String>, &str)| {
        ["s-7", "s-70", "s-140"].contains(&id.as_str()) || tags[0].contains("Firefox/")
    };
    let in_region = |s: &(String, String, Vec<String>, &str)| s.3 == "o";
    let run = |level: u8| -> Vec<bool> {
        let plain: Vec<_> = sessions.iter().map(|(q, id, t, _)| (q.clone(), id.clone(), t.clone())).collect();
        quic_variants(&plain)
            .into_iter()
            .map(|r| match r.unwrap().as_str() {
                "q=treatment" => true,
                "q=baseline" => false,
                other => panic!("level {level}: variant {other:?}"),
            })
            .collect()
    };
    // A probe per level whose cohort changes: how long until every edge applies a flip.
    let probe = |edge: &str, id: &str, tags: &[&str]| -> String {
        let tags = tags.iter().map(|t| (*t).to_owned()).collect();
        quic_variants(&[(cluster.edges[edge].quic.clone(), id.to_owned(), tags)]).remove(0).unwrap()
    };
    let flip = |rollout: &str, level: u8, want: &str, id: &str, edges: &[&str]| {
        let flipped = std::time::Instant::now();
        ctl(&cluster, &["rollout", "level", rollout, &level.to_string()]);
        for edge in edges {
            wait_for(&format!("edge {edge} at level {level}"), Duration::from_secs(10), || {
                (probe(edge, id, &["curl"]) == want).then_some(())
            });
        }
        println!(
            "ferry ctl rollout level {rollout} {level}: every edge applies it after {:?}",
            flipped.elapsed()
        );
    };
    // A session outside every gate but inside the 10 % share.
    let in_share =
        (0..).map(|i| format!("p-{i}")).find(|id| ferry_proto::cohort::bucket("q", id) < 1000).unwrap();

    let treated = run(0);
    assert!(treated.iter().all(|t| !t), "level 0 treats nobody");
    flip("q", 1, "q=treatment", "s-7", &names);
    let treated = run(1);
    for (s, t) in sessions.iter().zip(&treated) {
        assert_eq!(*t, allowlisted(s), "level 1: {} {:?}", s.1, s.2);
    }
    assert_eq!(treated.iter().filter(|t| **t).count(), 21, "20 Firefox tags and s-7 (s-70, s-140 are both)");
    flip("q", 2, "q=treatment", "newcomer", &["o"]);
    let treated = run(2);
    for (s, t) in sessions.iter().zip(&treated) {
        assert_eq!(*t, allowlisted(s) || in_region(s), "level 2: {} on {}", s.1, s.3);
    }
    assert_eq!(
        treated.iter().filter(|t| **t).count(),
        21 + 67 - 7,
        "plus edge o's 67 sessions (7 are allowlisted)"
    );
    // Level 3 at 10 %: the rest of the sessions are treated by their sticky bucket.
    flip("q", 3, "q=treatment", &in_share, &["a", "b"]);
    let treated_10 = run(3);
    let rest = |treated: &[bool]| -> Vec<bool> {
        sessions
            .iter()
            .zip(treated)
            .filter(|(s, _)| !allowlisted(s) && !in_region(s))
            .map(|(_, t)| *t)
            .collect()
    };
    for (s, t) in sessions.iter().zip(&treated_10) {
        if allowlisted(s) || in_region(s) {
            assert!(*t, "level 3 keeps level 2's cohort: {}", s.1);
        }
    }
    let share = |rest: Vec<bool>| rest.iter().filter(|t| **t).count() as f64 / rest.len() as f64;
    let share_10 = share(rest(&treated_10));
    // 10 % of 119 sessions: within about 4 standard deviations (sd 2.8 %).
    assert!((0.0..=0.22).contains(&share_10), "share at 10 %: {share_10}");
    println!("level 3 at 10 %: {:.1} % of the 119 ungated sessions treated", share_10 * 100.0);
    // Raising the share to 30 % on the live rollout: every earlier treatment session stays.
    let newly_in = (0..)
        .map(|i| format!("p-{i}"))
        .find(|id| (1000..3000).contains(&ferry_proto::cohort::bucket("q", id)))
        .unwrap();
    let raised = std::time::Instant::now();
    ctl(&cluster, &["rollout", "share", "q", "30%"]);
    for edge in ["a", "b"] {
        wait_for(&format!("edge {edge} at 30 %"), Duration::from_secs(10), || {
            (probe(edge, &newly_in, &["curl"]) == "q=treatment").then_some(())
        });
    }
    println!("ferry ctl rollout share q 30%: every edge applies it after {:?}", raised.elapsed());
    let treated_30 = run(3);
    for ((s, before), after) in sessions.iter().zip(&treated_10).zip(&treated_30) {
        assert!(!before || *after, "{} was treated at 10 % and not at 30 %", s.1);
    }
    let share_30 = share(rest(&treated_30));
    assert!((0.15..=0.45).contains(&share_30) && share_30 >= share_10, "share at 30 %: {share_30}");
    println!("level 3 at 30 %: {:.1} % of the ungated sessions treated", share_30 * 100.0);
    let outside =
        (0..).map(|i| format!("p-{i}")).find(|id| ferry_proto::cohort::bucket("q", id) >= 3000).unwrap();
    flip("q", 4, "q=treatment", &outside, &names);
    let all: Vec<_> = sessions.iter().map(|(q, id, t, _)| (q.clone(), id.clone(), t.clone())).collect();
    assert!(quic_variants(&all).iter().all(|v| v.as_ref().unwrap() == "q=treatment"));

    // `ferry watch --json` over QUIC reports its variant and client flag.
    let stream = "live/q";
    let mut cmd = ferry();
    cmd.args(["publish", "--edge", &cluster.edges["a"].quic, "--stream", stream, "--insecure"])
        .args(["--synthetic", "--duration", "300s"])
        .stdout(std::process::Stdio::null());
    let _publisher = Proc::spawn("publisher", &mut cmd);
    wait_for_stream(&cluster.edges["a"]);
    let mut cmd = ferry();
    cmd.args(["watch", "--edge", &cluster.edges["a"].quic, "--stream", stream, "--insecure"])
        .args(["--session-id", "s-1", "--client-tag", "ferry-test", "--duration", "2s", "--json"])
        .stdout(std::process::Stdio::piped());
    let stats = json_output(Proc::spawn("quic viewer", &mut cmd), Duration::from_secs(60));
    assert_eq!(stats["variant"], "q=treatment", "{stats}");
    assert_eq!(stats["client_flag"], "q-1", "{stats}");
    assert!(stats["frames"].as_u64().unwrap() > 0, "{stats}");
}

/// Keeps opening QUIC viewer sessions on every edge (new ids, 12 at a time) until
/// `stop`, at most 90 s; returns how many were refused.
fn quic_load(
    edges: Vec<String>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let started = std::time::Instant::now();
            let (mut n, mut refused) = (0usize, 0usize);
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(90) {
                let tasks: Vec<_> = (0..12)
                    .map(|i| {
                        n += 1;
                        let edge = edges[(n + i) % edges.len()].clone();
                        tokio::spawn(quic_variant(edge, format!("load-{n}"), vec!["ferry-load".into()]))
                    })
                    .collect();
                for task in tasks {
                    refused += usize::from(task.await.unwrap().is_err());
                }
            }
            refused
        })
    })
}

#[test]
fn an_erroring_treatment_trips_the_global_guard_and_every_edge_falls_back() {
    let _heavy = heavy();
    let dir = TempDir::new("rollout-errors");
    let cluster = whep_cluster(dir.path(), &["--allow-fault-injection"]);
    let spec = r#"{"id":"bad","spec":{"on_trip":"off",
        "override":{"client_flag":"bad-1","fault":{"reject_sessions_bp":5000}},
        "gates":{"share_bp":10000},
        "guard":{"error_rate_max":0.2,"min_sessions":10,"window_ms":1000,"consecutive":2}}}"#;
    assert_eq!(cluster.voter.send("POST", "/v1/rollouts", None, spec).0, 200);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let quic: Vec<String> = cluster.edges.values().map(|e| e.quic.clone()).collect();
    let load = quic_load(quic.clone(), std::sync::Arc::clone(&stop));
    ctl(&cluster, &["rollout", "level", "bad", "3"]);
    let rollout = wait_for("the error guard trips", Duration::from_secs(30), || {
        let (_, r) = cluster.voter.get("/v1/rollouts/bad");
        (r["state"] == "tripped").then_some(r)
    });
    stop.store(true, Ordering::Relaxed);
    let refused = load.join().unwrap();
    assert!(refused > 0, "the drill refused sessions");
    assert_eq!(rollout["level"], 0, "on_trip off: {rollout}");
    let last = rollout["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["actor"], "guard", "{rollout}");
    let what = last["what"].as_str().unwrap();
    assert!(what.starts_with("tripped by errors: error rate") && what.ends_with("level 3 -> 0"), "{what}");
    // The deciding windows: bad, two in a row, with enough sessions.
    let windows = rollout["windows"].as_array().unwrap();
    let deciding = windows.iter().rev().find(|w| w["bad_in_a_row"] == 2).expect("the deciding window");
    assert_eq!(deciding["verdict"], "bad", "{deciding}");
    assert!(deciding["treatment_sessions"].as_u64().unwrap() >= 10, "{deciding}");
    let decided = deciding["ended_at_ms"].as_u64().unwrap();
    let committed = last["at_ms"].as_u64().unwrap();
    println!(
        "error trip: committed {} ms after the deciding window ended",
        committed.saturating_sub(decided)
    );
    let (_, audit) = cluster.voter.get("/v1/audit");
    let events = audit["events"].as_array().unwrap();
    assert!(events.iter().any(|e| e["action"] == "rollout.trip" && e["target"] == "bad"), "{audit}");
    // Every edge gives new sessions the baseline and refuses none.
    for (name, edge) in &cluster.edges {
        let probes: Vec<_> = (0..20).map(|i| (edge.quic.clone(), format!("after-{i}"), vec![])).collect();
        let variants = wait_for(&format!("edge {name} falls back"), Duration::from_secs(10), || {
            let v = quic_variants(&probes);
            v.iter().all(|r| r.as_deref() == Ok("bad=baseline")).then_some(v)
        });
        assert_eq!(variants.len(), 20);
        let errors = edge
            .metric(
                "ferry_rollout_errors_total{rollout=\"bad\",cohort=\"treatment\",reason=\"fault_injected\"}",
            )
            .unwrap_or(0.0);
        assert!(errors > 0.0, "edge {name} counted its refusals");
    }
}

/// Whether an SDP offers generic NACK feedback (`a=rtcp-fb:<pt> nack`, not `nack pli`).
fn offers_nack(sdp: &str) -> bool {
    sdp.lines().any(|l| l.trim().strip_prefix("a=rtcp-fb:").is_some_and(|rest| rest.ends_with(" nack")))
}

#[test]
fn rollout_overrides_apply_per_session_and_edge_wide_where_the_gates_say() {
    let _heavy = heavy();
    let dir = TempDir::new("rollout-overrides");
    let cluster = whep_cluster(dir.path(), &[]);
    let stream = "live/t";
    let mut cmd = ferry();
    cmd.args(["publish", "--edge", &cluster.edges["o"].quic, "--stream", stream, "--insecure"])
        .args(["--synthetic", "--synthetic-vp8", "--duration", "300s"])
        .stdout(std::process::Stdio::null());
    let _publisher = Proc::spawn("publisher", &mut cmd);
    wait_for_stream(&cluster.edges["o"]);
    let auth = format!("Bearer {}", token(stream, Action::View, Duration::from_secs(600), SystemTime::now()));
    let offer = vp8_offer("recvonly").replace(
        "a=rtpmap:96 VP8/90000\r\n",
        "a=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\n",
    );
    let whep = |edge: &Edge| -> (String, String) {
        let headers = [("Content-Type", "application/sdp"), ("Authorization", auth.as_str())];
        let (hdrs, answer) = wait_for("a WHEP session", Duration::from_secs(20), || {
            let (status, hdrs, answer) =
                http(&edge.http, "POST", &format!("/whep/{stream}"), &headers, offer.as_bytes());
            match status {
                // Ports freeing up, or the edge still learning the new stream's origin.
                503 | 404 => None,
                201 => Some((hdrs, answer)),
                other => panic!("HTTP {other}: {answer}"),
            }
        });
        let location = header(&hdrs, "location").unwrap().to_owned();
        assert_eq!(http(&edge.http, "DELETE", &location, &[], b"").0, 200);
        (header(&hdrs, "ferry-variant").unwrap_or("").to_owned(), answer)
    };
    assert!(offers_nack(&offer), "the offer asks for NACK");
    let (_, answer) = whep(&cluster.edges["a"]);
    assert!(!offers_nack(&answer), "WHEP viewers get no NACK by default:\n{answer}");
    let spec = r#"{"id":"tune","spec":{"override":{"congestion":"bbr","webrtc_nack":true},"gates":{"edges":["a"]}}}"#;
    assert_eq!(cluster.voter.send("POST", "/v1/rollouts", None, spec).0, 200);
    assert_eq!(cluster.voter.send("POST", "/v1/rollouts/tune/level", None, r#"{"level":2}"#).0, 200);
    // Per session: a treated WHEP viewer on a gets NACK, one on b does not.
    let answer = wait_for("edge a treats WHEP viewers", Duration::from_secs(10), || {
        let (variant, answer) = whep(&cluster.edges["a"]);
        (variant == "tune=treatment").then_some(answer)
    });
    assert!(offers_nack(&answer), "treated viewers answer NACKs:\n{answer}");
    let (variant, answer) = whep(&cluster.edges["b"]);
    assert_eq!(variant, "tune=baseline");
    assert!(!offers_nack(&answer), "{answer}");
    // Edge-wide: edge a accepts new QUIC connections with BBR, edge b with cubic.
    let bbr = |edge: &Edge| {
        edge.metric("ferry_quic_congestion_connections_total{controller=\"bbr\"}").unwrap_or(0.0)
    };
    let sessions: Vec<_> = ["a", "b"]
        .iter()
        .flat_map(|e| (0..3).map(move |i| (e, i)))
        .map(|(e, i)| (cluster.edges[*e].quic.clone(), format!("c-{e}-{i}"), vec![]))
        .collect();
    let variants = quic_variants(&sessions);
    assert!(variants[..3].iter().all(|v| v.as_deref() == Ok("tune=treatment")), "{variants:?}");
    assert!(variants[3..].iter().all(|v| v.as_deref() == Ok("tune=baseline")), "{variants:?}");
    assert!(bbr(&cluster.edges["a"]) >= 3.0, "edge a: {:?}", cluster.edges["a"].metrics());
    assert_eq!(bbr(&cluster.edges["b"]), 0.0);
    assert!(
        cluster.edges["b"]
            .metric("ferry_quic_congestion_connections_total{controller=\"cubic\"}")
            .unwrap_or(0.0)
            >= 3.0
    );
    // A treated WHEP session that never connects (ICE fails, or the edge's connect
    // timeout passes): a mid-session error of the treatment's cohort.
    let headers = [("Content-Type", "application/sdp"), ("Authorization", auth.as_str())];
    let (status, hdrs, body) =
        http(&cluster.edges["a"].http, "POST", &format!("/whep/{stream}"), &headers, offer.as_bytes());
    assert_eq!((status, header(&hdrs, "ferry-variant")), (201, Some("tune=treatment")), "{body}");
    let errors = || {
        let m = cluster.edges["a"].metrics();
        let prefix = "ferry_rollout_errors_total{rollout=\"tune\",cohort=\"treatment\",reason=";
        let failed: Vec<String> = m.lines().filter(|l| l.starts_with(prefix)).map(str::to_owned).collect();
        (!failed.is_empty()).then_some(failed)
    };
    let failed =
        wait_for("the abandoned session counts as a treatment error", Duration::from_secs(40), errors);
    assert!(
        failed.iter().all(|l| l.contains("ice_failed") || l.contains("connect_timeout")) && failed.len() == 1,
        "{failed:?}"
    );
    // A live treated WHEP viewer moves back to the edge's budget when the operator
    // lowers its rollout's level.
    let spec = r#"{"id":"lag","spec":{"override":{"max_lag_ms":20000},"gates":{"edges":["a"]}}}"#;
    assert_eq!(cluster.voter.send("POST", "/v1/rollouts", None, spec).0, 200);
    assert_eq!(cluster.voter.send("POST", "/v1/rollouts/lag/level", None, r#"{"level":2}"#).0, 200);
    let a = &cluster.edges["a"];
    let treated = || a.metric("ferry_rollout_sessions_total{rollout=\"lag\",cohort=\"treatment\"}");
    wait_for("edge a treats new sessions", Duration::from_secs(10), || {
        (whep(a).0.contains("lag=treatment")).then_some(())
    });
    let before = treated().unwrap_or(0.0);
    let mut cmd = ferry();
    cmd.args(["watch", "--whep", &format!("http://{}/whep/{stream}", a.http)])
        .args(["--token", auth.trim_start_matches("Bearer "), "--duration", "300s", "--json"])
        .stdout(std::process::Stdio::null());
    let _viewer = Proc::spawn("treated whep viewer", &mut cmd);
    wait_for("a live treated WHEP viewer", Duration::from_secs(30), || {
        let live = a.metric("ferry_webrtc_sessions{direction=\"whep\"}").unwrap_or(0.0) >= 1.0;
        (live && treated() > Some(before)).then_some(())
    });
    ctl(&cluster, &["rollout", "level", "lag", "1"]);
    wait_for("the live viewer moves back", Duration::from_secs(10), || {
        (a.metric("ferry_rollout_moved_back_sessions_total{rollout=\"lag\"}") == Some(1.0)).then_some(())
    });

    // Pacing cannot be rolled out: quinn always paces and has no switch.
    let (code, answer) = cluster.voter.send(
        "POST",
        "/v1/rollouts",
        None,
        r#"{"id":"pace","spec":{"override":{"pacing":false}}}"#,
    );
    assert_eq!(code, 400, "{answer}");
    assert!(answer.to_string().contains("override.pacing: not supported"), "{answer}");
}
