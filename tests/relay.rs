//! The QUIC relay path, end to end with real processes: publisher → edge A →
//! edge B → viewers, IVF round trips, slow-viewer isolation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::*;

const SYNTHETIC_FRAME_US: u64 = 33_333;

fn u(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// Frames a viewer must have seen if it got everything between its first and last frame.
fn frames_spanned(v: &Value) -> u64 {
    let first = u(v, "first_pts");
    let last = u(v, "last_pts");
    (last - first + SYNTHETIC_FRAME_US / 2) / SYNTHETIC_FRAME_US + 1
}

#[test]
fn three_viewers_behind_a_relay_edge_get_every_frame_in_order_over_one_upstream_subscription() {
    let _heavy = heavy();
    let a = Edge::start("edge-a", &[]);
    let b = Edge::start("edge-b", &["--upstream", &a.quic]);
    let publisher = publish_synthetic(&a, "live/relay", "8s");
    wait_for_stream(&a);

    let viewers: Vec<Proc> = (0..3).map(|_| watch(&b, "live/relay", &[])).collect();
    wait_for("three viewers subscribed on B", Duration::from_secs(20), || {
        let m = b.metrics();
        (metric_value(&m, r#"ferry_subscriptions{stream="live/relay",track="video",role="viewer"}"#)
            == Some(3.0))
        .then_some(())
    });
    let on_a = a.metric(r#"ferry_subscriptions{stream="live/relay",track="video",role="edge"}"#);
    assert_eq!(on_a, Some(1.0), "A must serve exactly one subscription to B:\n{}", a.metrics());
    assert_eq!(b.metric(r#"ferry_upstream_subscriptions{stream="live/relay",track="video"}"#), Some(1.0));

    let published = json_output(publisher, Duration::from_secs(30));
    for viewer in viewers {
        let v = json_output(viewer, Duration::from_secs(30));
        assert_eq!(v["ended"], "track ended", "{v}");
        assert!(u(&v, "frames") > 30, "{v}");
        assert_eq!(u(&v, "out_of_order_frames"), 0, "{v}");
        assert_eq!(u(&v, "lost_frames"), 0, "{v}");
        assert_eq!(u(&v, "skipped_groups"), 0, "{v}");
        assert_eq!(u(&v, "groups_without_keyframe"), 0, "{v}");
        assert_eq!(u(&v, "frames"), frames_spanned(&v), "a gap between first and last frame: {v}");
        // Every viewer saw the stream through to the publisher's last frame.
        assert_eq!(u(&v, "last_pts"), (u(&published, "frames") - 1) * 1_000_000 / 30, "{v} vs {published}");
    }
}

/// A minimal IVF reader for checking output: (header, frames of (pts, payload)).
fn read_ivf(path: &std::path::Path) -> (Vec<u8>, Vec<(u64, Vec<u8>)>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..4], b"DKIF", "{} is not IVF", path.display());
    let header = bytes[..32].to_vec();
    let mut frames = Vec::new();
    let mut at = 32;
    while at < bytes.len() {
        let size = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let pts = u64::from_le_bytes(bytes[at + 4..at + 12].try_into().unwrap());
        frames.push((pts, bytes[at + 12..at + 12 + size].to_vec()));
        at += 12 + size;
    }
    assert_eq!(at, bytes.len(), "trailing bytes in {}", path.display());
    (header, frames)
}

#[test]
fn ivf_from_ffmpeg_relayed_through_two_edges_comes_back_byte_identical() {
    require_ffmpeg();
    let _heavy = heavy();
    let dir = TempDir::new("ivf");
    let input = dir.path().join("x.ivf");
    let output = dir.path().join("out.ivf");
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=640x360:rate=30"])
        .args(["-c:v", "libvpx", "-g", "60", "-t", "10", "-f", "ivf"])
        .arg(&input)
        .status()
        .unwrap();
    assert!(status.success(), "ffmpeg failed");

    let a = Edge::start("ivf-a", &[]);
    let b = Edge::start("ivf-b", &["--upstream", &a.quic]);
    let mut cmd = ferry();
    cmd.args(["publish", "--edge", &a.quic, "--stream", "vod/x", "--insecure", "--json", "--input"])
        .arg(&input)
        .stdout(std::process::Stdio::piped());
    let publisher = Proc::spawn("ivf publisher", &mut cmd);
    wait_for_stream(&a);
    let viewer = watch(&b, "vod/x", &["--output", output.to_str().unwrap()]);
    let published = json_output(publisher, Duration::from_secs(60));
    let watched = json_output(viewer, Duration::from_secs(60));
    assert_eq!(published["ended"], "end of input");
    assert_eq!(watched["ended"], "track ended", "{watched}");

    let (in_header, in_frames) = read_ivf(&input);
    let (out_header, out_frames) = read_ivf(&output);
    assert_eq!(&in_header[8..24], &out_header[8..24], "codec, size and timebase must match");
    assert_eq!(u32::from_le_bytes(out_header[24..28].try_into().unwrap()) as usize, out_frames.len());
    let first = out_frames.first().expect("the viewer wrote no frames");
    let start = in_frames.iter().position(|(pts, _)| *pts == first.0).expect("first output pts not in input");
    assert_eq!(first.1[0] & 1, 0, "output must start at a VP8 keyframe");
    assert_eq!(out_frames.len(), in_frames.len() - start, "every frame from the first keyframe on");
    for (i, (got, want)) in out_frames.iter().zip(&in_frames[start..]).enumerate() {
        assert_eq!(got.0, want.0, "pts of frame {i}");
        assert!(got.1 == want.1, "payload of frame {i} differs");
    }
    let decode =
        Command::new("ffmpeg").args(["-v", "error", "-i"]).arg(&output).args(["-f", "null", "-"]).output();
    let decode = decode.unwrap();
    assert!(
        decode.status.success() && decode.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&decode.stderr)
    );
}

#[test]
fn a_slow_viewer_skips_groups_while_ten_normal_viewers_get_every_frame() {
    let _heavy = heavy();
    let budget = 8 * 1024 * 1024;
    let a = Edge::start("slow-a", &["--track-buffer-bytes", &budget.to_string()]);
    let publisher = publish_synthetic(&a, "live/slow", "15s");
    wait_for_stream(&a);
    let normal: Vec<Proc> = (0..10).map(|_| watch(&a, "live/slow", &[])).collect();
    // 10 % of the 2.5 Mbps stream.
    let slow = watch(&a, "live/slow", &["--throttle", "250k"]);
    wait_for("eleven viewers subscribed", Duration::from_secs(20), || {
        (a.metric(r#"ferry_subscriptions{stream="live/slow",track="video",role="viewer"}"#) == Some(11.0))
            .then_some(())
    });
    // Sample memory while the slow viewer is falling behind.
    let (mut max_rss, mut max_buffered) = (0, 0.0f64);
    wait_for("the slow viewer to be skipped", Duration::from_secs(30), || {
        max_rss = max_rss.max(rss_kib(a.proc.pid()));
        max_buffered = max_buffered.max(a.metric("ferry_buffered_bytes").unwrap_or(0.0));
        (a.metric_sum("ferry_skipped_groups_total") >= 1.0).then_some(())
    });
    eprintln!(
        "edge RSS with 11 viewers (one slow): max {max_rss} KiB; track buffer max {max_buffered} bytes"
    );
    assert!(
        max_buffered > 0.0 && max_buffered <= budget as f64,
        "track buffer outside its bound: {max_buffered}"
    );

    let published = json_output(publisher, Duration::from_secs(60));
    assert_eq!(
        u(&published, "frames"),
        15 * 30,
        "the publisher must send every frame on schedule: {published}"
    );

    for viewer in normal {
        let v = json_output(viewer, Duration::from_secs(60));
        assert_eq!(u(&v, "skipped_groups"), 0, "{v}");
        assert_eq!(u(&v, "lost_frames"), 0, "{v}");
        assert_eq!(u(&v, "out_of_order_frames"), 0, "{v}");
        assert_eq!(u(&v, "frames"), frames_spanned(&v), "{v}");
        assert_eq!(u(&v, "last_pts"), (u(&published, "frames") - 1) * 1_000_000 / 30, "{v}");
    }
    let s = json_output(slow, Duration::from_secs(60));
    assert!(u(&s, "skipped_groups") >= 1, "the slow viewer must have skipped: {s}");
    assert_eq!(u(&s, "groups_without_keyframe"), 0, "the slow viewer resumes at keyframes: {s}");
    assert_eq!(u(&s, "out_of_order_frames"), 0, "{s}");
    assert!(u(&s, "frames") > 0);
}

#[test]
fn a_viewer_joining_mid_group_gets_the_publisher_to_send_a_fresh_keyframe() {
    let _heavy = heavy();
    let a = Edge::start("kf-a", &[]);
    let b = Edge::start("kf-b", &["--upstream", &a.quic]);
    let mut cmd = ferry();
    cmd.args(["publish", "--edge", &a.quic, "--stream", "live/kf", "--synthetic", "--insecure", "--json"])
        .args(["--gop", "20s", "--duration", "6s"])
        .stdout(std::process::Stdio::piped());
    let publisher = Proc::spawn("publisher", &mut cmd);
    // Let the only natural group age past the join threshold (half a second of frames).
    wait_for("the first group to age", Duration::from_secs(20), || {
        (a.metric("ferry_frames_in_total").unwrap_or(0.0) >= 30.0).then_some(())
    });
    let viewers: Vec<Proc> = (0..3).map(|_| watch(&b, "live/kf", &[])).collect();
    let published = json_output(publisher, Duration::from_secs(30));
    assert!(u(&published, "keyframe_requests") >= 1, "{published}");
    assert!(u(&published, "groups") >= 2, "a forced keyframe starts a new group: {published}");
    assert!(a.metric("ferry_keyframe_requests_total").unwrap_or(0.0) >= 1.0, "A asks its publisher");
    for viewer in viewers {
        let v = json_output(viewer, Duration::from_secs(30));
        assert_eq!(u(&v, "groups_without_keyframe"), 0, "{v}");
        assert_eq!(u(&v, "lost_frames"), 0, "{v}");
    }
}
