//! WHIP/WHEP at the edge: real `ferry edge` processes on loopback, refusals checked
//! over HTTP, media checked in headless Chromium (Debian's chromium +
//! chromium-driver; the tests fail loudly when they are missing).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::time::{Duration, SystemTime};

use ferry_edge::auth::Action;
use support::webrtc::*;
use support::*;

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
        "token_wrong_stream",
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
    expect("stream already published", "/whip/live/a", &sdp, &vp8_offer("sendonly"), 409, "stream_busy");

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
    // B relays from A with a cluster certificate, as in production.
    let ca = dir.path().join("ca");
    let out = ferry().args(["ca", "init", "--dir"]).arg(&ca).output().unwrap();
    assert!(out.status.success(), "ca init: {}", String::from_utf8_lossy(&out.stderr));
    let a_args = cluster_cert_args(&ca, "edge-a", "cluster");
    let a = webrtc_edge("edge-a", dir.path(), &a_args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut b_args = cluster_cert_args(&ca, "edge-b", "cluster");
    b_args.extend(["--upstream".to_owned(), a.quic.clone()]);
    let b = webrtc_edge("edge-b", dir.path(), &b_args.iter().map(String::as_str).collect::<Vec<_>>());
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
    let publish_vod = token("vod/x", Action::Publish, Duration::from_secs(600), now);
    cmd.args(["publish", "--edge", &edge.quic, "--stream", "vod/x", "--insecure", "--json", "--input"])
        .arg(&input)
        .args(["--token", &publish_vod])
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
    let view_w = token("live/w", Action::View, Duration::from_secs(600), now);
    let watcher = watch(
        &edge,
        "live/w",
        &["--track", "video", "--duration", "4s", "--output", output.to_str().unwrap(), "--token", &view_w],
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
        .args(["--bitrate", "1500k", "--insecure", "--duration", "30s", "--token", &publish])
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

/// `ferry publish --whip` (a WHIP publisher built on the webrtc crate) publishes the
/// VP8-labelled synthetic stream with a token: a QUIC viewer receives its frames until
/// the publisher ends its session (DELETE of its resource) and the track ends; the
/// publisher reports every frame it sent, in order, in one session. A second publisher
/// of the live stream is refused with the edge's reason and a non-zero exit.
#[test]
fn ferry_publish_over_whip_reaches_quic_viewers_and_a_busy_stream_is_refused() {
    let _heavy = heavy();
    let dir = TempDir::new("whip-cli");
    let edge = webrtc_edge("edge-whip", dir.path(), &[]);
    let now = SystemTime::now();
    let publish = token("live/x", Action::Publish, Duration::from_secs(3600), now);
    let view = token("live/x", Action::View, Duration::from_secs(3600), now);
    let url = format!("http://{}/whip/live/x", edge.http);
    let whip = |name: &str, duration: &str| {
        let mut cmd = ferry();
        cmd.args(["publish", "--whip", &url, "--synthetic", "--synthetic-vp8", "--duration", duration])
            .args(["--json", "--token", &publish])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        Proc::spawn(name, &mut cmd)
    };
    let publisher = whip("whip publisher", "8s");
    wait_for_stream(&edge);
    wait_for("the edge to receive the WHIP publisher's frames", Duration::from_secs(20), || {
        (edge.metric("ferry_frames_in_total").unwrap_or(0.0) > 0.0).then_some(())
    });
    let viewer = watch(&edge, "live/x", &["--token", &view]);

    // The stream is live: a second publisher is refused (no takeover grant).
    let out = whip("second whip publisher", "3s").wait_output(Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second publisher was let in: {stderr}");
    assert!(
        stderr.contains("HTTP 409") && stderr.contains("stream_busy") && stderr.contains("already published"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "no stats for a refused publisher");

    let published = json_output(publisher, Duration::from_secs(60));
    println!("ferry publish --whip: {published}");
    let frames = published["frames"].as_u64().unwrap();
    assert_eq!(published["codec"], "Vp8", "{published}");
    assert!(frames >= 150, "8 s at 30 fps: {published}");
    assert!(published["keyframes"].as_u64().unwrap() >= 4, "a keyframe every 2 s: {published}");
    assert!(published["packets"].as_u64().unwrap() > frames, "frames span packets: {published}");
    assert_eq!(published["first_seq"], 0, "{published}");
    assert_eq!(published["last_seq"].as_u64().unwrap() + 1, frames, "every frame in order: {published}");
    assert_eq!(published["ended"], "duration reached", "{published}");
    assert_eq!(published["url"], url.as_str(), "{published}");
    assert_eq!(published["reconnects"], 0, "{published}");
    let legs = published["legs"].as_array().unwrap();
    assert_eq!(legs.len(), 1, "one session: {published}");
    assert_eq!(legs[0]["frames"], frames, "{published}");
    assert_eq!(legs[0]["ended"], "duration reached", "{published}");

    // The publisher's DELETE ended the stream: the viewer sees the track end.
    let watched = json_output(viewer, Duration::from_secs(30));
    println!("ferry watch: {watched}");
    assert_eq!(watched["codec"], "Vp8", "{watched}");
    assert_eq!(watched["ended"], "track ended", "{watched}");
    let seen = watched["frames"].as_u64().unwrap();
    assert!(seen >= 120 && seen <= frames, "the viewer joined within a second or two: {watched}");
    assert_eq!(watched["skipped_groups"], 0, "{watched}");
    assert_eq!(watched["groups_without_keyframe"], 0, "{watched}");
    // The edge saw one refusal (the second publisher) and no failed session.
    let metrics = edge.metrics();
    assert_eq!(
        metric_value(&metrics, "ferry_webrtc_session_errors_total{reason=\"stream_busy\"}"),
        Some(1.0)
    );
    assert_eq!(metric_sum(&metrics, "ferry_webrtc_session_errors_total"), 1.0, "{metrics}");
}

/// When its edge dies, `ferry publish --whip` notices (ICE disconnected for
/// --failover-after), posts its offer again and goes on publishing on the edge that
/// now answers at the URL; the synthetic stream goes on where it stopped.
#[test]
fn ferry_publish_over_whip_starts_a_new_session_when_its_edge_dies() {
    let _heavy = heavy();
    let dir = TempDir::new("whip-cli-failover");
    let http = format!("127.0.0.1:{}", free_tcp_port());
    let first = webrtc_edge("edge-whip-1", dir.path(), &["--http-listen", &http]);
    let publish = token("live/f", Action::Publish, Duration::from_secs(3600), SystemTime::now());
    let url = format!("http://{http}/whip/live/f");
    let mut cmd = ferry();
    cmd.args(["publish", "--whip", &url, "--synthetic", "--synthetic-vp8", "--duration", "60s", "--json"])
        .args(["--failover-after", "1s", "--token", &publish])
        .stdout(std::process::Stdio::piped());
    let publisher = Proc::spawn("whip publisher", &mut cmd);
    let received = |edge: &Edge| edge.metric("ferry_frames_in_total").unwrap_or(0.0);
    wait_for("frames on the first edge", Duration::from_secs(20), || (received(&first) > 30.0).then_some(()));
    drop(first);
    let second = webrtc_edge("edge-whip-2", dir.path(), &["--http-listen", &http]);
    wait_for("frames on the second edge", Duration::from_secs(40), || {
        (received(&second) > 30.0).then_some(())
    });
    publisher.terminate();
    let published = json_output(publisher, Duration::from_secs(30));
    println!("ferry publish --whip: {published}");
    let legs = published["legs"].as_array().unwrap();
    assert!(legs.len() >= 2, "{published}");
    assert_eq!(published["reconnects"], legs.len() - 1, "{published}");
    let first_leg = &legs[0];
    assert!(first_leg["frames"].as_u64().unwrap() > 30, "{published}");
    assert!(["disconnected", "ice failed"].contains(&first_leg["ended"].as_str().unwrap()), "{published}");
    let last_leg = &legs[legs.len() - 1];
    assert!(last_leg["frames"].as_u64().unwrap() > 30, "{published}");
    assert_eq!(last_leg["ended"], "stopped", "{published}");
    assert_eq!(published["ended"], "stopped", "{published}");
    let frames = published["frames"].as_u64().unwrap();
    let per_leg: u64 = legs.iter().map(|l| l["frames"].as_u64().unwrap()).sum();
    assert_eq!(per_leg, frames, "{published}");
    assert_eq!(published["first_seq"], 0, "{published}");
    assert_eq!(published["last_seq"].as_u64().unwrap() + 1, frames, "the sequence went on: {published}");
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
    let view = token(stream, Action::View, Duration::from_secs(3600), SystemTime::now());
    cmd.args(["watch", "--control-plane", &cluster.control, "--region", "r1", "--stream", stream])
        .args(["--insecure", "--max-failures", "200", "--duration", "300s", "--json", "--token", &view])
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
    let publish = token(stream, Action::Publish, Duration::from_secs(600), SystemTime::now());
    cmd.args(["publish", "--edge", &cluster.edges["o"].quic, "--stream", stream, "--insecure", "--input"])
        .arg(&input)
        .args(["--token", &publish])
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
        .arg("--ca-file")
        .arg(dir.path().join("ca/ca.pem"))
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
