//! State that goes away: streams that ended leave no record in the control plane and
//! no series on the edge's `/metrics`, whether their publisher left cleanly or their
//! edge died and came back without them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_client::publish::{publish, PublishOptions, Source};
use ferry_client::watch::{watch, WatchOptions};
use ferry_net::tls::{ClientTrust, TransportTuning};
use ferry_proto::{NodeId, StreamName, TrackName};
use support::*;
use tokio_util::sync::CancellationToken;

/// The grace period the voter waits before it removes an unused stream's record.
const GRACE: &str = "3s";

fn start_edge(ca: &std::path::Path, gossip: &str, seeds: &str, control: &str, quic: &str) -> Edge {
    let mut args: Vec<String> =
        ["--region", "r1", "--gossip-listen", gossip, "--gossip-seeds", seeds].map(String::from).to_vec();
    args.extend(["--control-plane".into(), control.into(), "--quic-listen".into(), quic.into()]);
    args.extend(cluster_cert_args(ca, "e1", "cluster"));
    Edge::start("e1", &strs(&args))
}

fn stream_count(voter: &Voter) -> usize {
    let (status, body) = voter.get("/v1/streams");
    assert_eq!(status, 200, "{body}");
    body["streams"].as_array().unwrap().len()
}

/// Sample lines of a metrics page (no comments).
fn series(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).collect()
}

fn audit(voter: &Voter, action: &str) -> Vec<serde_json::Value> {
    let (_, body) = voter.get("/v1/audit?limit=10000");
    body["events"].as_array().unwrap().iter().filter(|e| e["action"] == action).cloned().collect()
}

fn publish_options(edge: &str, stream: &str, duration: Duration) -> PublishOptions {
    PublishOptions {
        edge: edge.to_owned(),
        stream: StreamName::new(stream).unwrap(),
        source: Source::Synthetic(ferry_media::synthetic::SyntheticConfig {
            bitrate_bps: 100_000,
            fps: 20,
            gop: Duration::from_millis(500),
        }),
        duration: Some(duration),
        trust: ClientTrust::Insecure,
        tuning: TransportTuning::default(),
        label: NodeId::new("lifecycle").unwrap(),
        max_frame: ferry_proto::MAX_FRAME_PAYLOAD,
        session: Default::default(),
    }
}

/// Watches `stream` until its publisher leaves; retries while it is not announced
/// yet. Whether a frame arrived.
async fn watch_until_gone(edge: String, stream: String) -> bool {
    for _ in 0..40 {
        let opts = WatchOptions {
            edge: edge.clone(),
            stream: StreamName::new(&stream).unwrap(),
            track: TrackName::video(),
            max_lag: Duration::from_secs(1),
            duration: Some(Duration::from_secs(5)),
            output: None,
            throttle_bps: None,
            trust: ClientTrust::Insecure,
            tuning: TransportTuning::viewer(),
            label: NodeId::new("lifecycle-viewer").unwrap(),
            max_frame: ferry_proto::MAX_FRAME_PAYLOAD,
            stall_timeout: Some(Duration::from_secs(2)),
            session: Default::default(),
        };
        match watch(opts, CancellationToken::new()).await {
            Ok(stats) if stats.frames > 0 => return true,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    false
}

#[test]
fn streams_that_ended_leave_no_record_and_no_metric_series_behind() {
    let _heavy = heavy();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = TempDir::new("lifecycle");
    let out = ferry().args(["ca", "init", "--dir"]).arg(dir.path().join("ca")).output().unwrap();
    assert!(out.status.success(), "ca init: {}", String::from_utf8_lossy(&out.stderr));
    let ca = dir.path().join("ca");
    let (voter_gossip, edge_gossip) =
        (format!("127.0.0.1:{}", free_udp_port()), format!("127.0.0.1:{}", free_udp_port()));
    let seeds = format!("{voter_gossip},{edge_gossip}");
    let peers = format!("1=127.0.0.1:{}", free_udp_port());
    let mut extra: Vec<String> =
        ["--gossip-listen", &voter_gossip, "--gossip-seeds", &seeds, "--stream-grace", GRACE]
            .map(String::from)
            .to_vec();
    extra.extend(cluster_cert_args(&ca, "voter-1", "voter"));
    let voter = Voter::start(1, &peers, &dir.path().join("v1"), &strs(&extra));
    wait_for_leader(&[&voter]);
    let control = voter.http.clone();
    let quic = format!("127.0.0.1:{}", free_udp_port());
    let mut edge = start_edge(&ca, &edge_gossip, &seeds, &control, &quic);
    wait_for("e1 registered and alive in gossip", Duration::from_secs(30), || {
        let (_, body) = voter.get("/v1/edges?stale=true");
        let edges = body["edges"].as_array()?;
        edges.iter().any(|e| e["id"] == "e1" && e["gossip"]["alive"] == true).then_some(())
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    // One stream first, so that every series that exists once per edge is there.
    let watched = runtime.block_on(async {
        let publisher = tokio::spawn(publish(
            publish_options(&quic, "warm/up", Duration::from_secs(2)),
            CancellationToken::new(),
        ));
        let seen = watch_until_gone(quic.clone(), "warm/up".into()).await;
        let _ = publisher.await;
        seen
    });
    assert!(watched, "the warm-up viewer saw no frame");
    wait_for("the warm-up stream released", Duration::from_secs(20), || {
        (stream_count(&voter) == 0).then_some(())
    });
    let before = edge.metrics();
    let before = series(&before);
    let streams_before = stream_count(&voter);

    // 300 streams published for one second each, each with a viewer, 50 at a time.
    let peak_series = Arc::new(AtomicUsize::new(0));
    let viewed = runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        let mut viewed = 0;
        for i in 0..300 {
            if i >= 50 {
                viewed += usize::from(tasks.join_next().await.unwrap().unwrap());
            }
            let quic = quic.clone();
            tasks.spawn(async move {
                let stream = format!("load/s{i}");
                let opts = publish_options(&quic, &stream, Duration::from_secs(1));
                let publisher = tokio::spawn(publish(opts, CancellationToken::new()));
                let seen = watch_until_gone(quic, stream).await;
                let _ = publisher.await;
                seen
            });
            if i % 25 == 0 {
                let page = edge.metrics();
                let per_stream = series(&page).iter().filter(|l| l.contains("load/")).count();
                peak_series.fetch_max(per_stream, Ordering::Relaxed);
            }
        }
        while let Some(r) = tasks.join_next().await {
            viewed += usize::from(r.unwrap());
        }
        viewed
    });
    let claims = audit(&voter, "stream.claim")
        .iter()
        .filter(|e| e["target"].as_str().unwrap().starts_with("load/"))
        .count();
    println!(
        "300 streams: {viewed} watched, {claims} claims recorded, up to {} per-stream series at once",
        peak_series.load(Ordering::Relaxed)
    );
    assert!(viewed >= 290, "only {viewed} of 300 viewers saw frames");
    assert!(claims >= 290, "only {claims} of 300 streams were recorded");
    assert!(peak_series.load(Ordering::Relaxed) > 0, "no per-stream series seen during the load");
    wait_until("the control plane back to its streams before the load", Duration::from_secs(30), || {
        match stream_count(&voter) {
            n if n == streams_before => Ok(()),
            n => Err(format!("{n} stream records")),
        }
    });
    wait_until("the edge's /metrics back to its size before the load", Duration::from_secs(30), || {
        let page = edge.metrics();
        let after = series(&page);
        let leftover: Vec<&&str> = after.iter().filter(|l| l.contains("load/")).collect();
        match (leftover.first(), after.len() <= before.len()) {
            (None, true) => Ok(()),
            (Some(l), _) => Err(format!("{} series name a finished stream, e.g. {l}", leftover.len())),
            (None, false) => {
                let new: Vec<&&str> = after
                    .iter()
                    .filter(|l| !before.iter().any(|b| b.split(' ').next() == l.split(' ').next()))
                    .collect();
                Err(format!("{} series against {} before; new: {new:?}", after.len(), before.len()))
            }
        }
    });

    // An edge that dies with 20 live streams and comes back without them: the leader
    // marks their origin lost, then removes the records after the grace period.
    let live = CancellationToken::new();
    let publishers: Vec<_> = (0..20)
        .map(|i| {
            runtime.spawn(publish(
                publish_options(&quic, &format!("crash/s{i}"), Duration::from_secs(120)),
                live.clone(),
            ))
        })
        .collect();
    wait_until("20 crash/ streams recorded on e1", Duration::from_secs(30), || match stream_count(&voter) {
        20 => Ok(()),
        n => Err(format!("{n} records")),
    });
    drop(edge); // SIGKILL
    live.cancel();
    for p in publishers {
        let _ = runtime.block_on(p);
    }
    edge = start_edge(&ca, &edge_gossip, &seeds, &control, &quic);
    wait_until("the crashed edge's records removed", Duration::from_secs(60), || {
        match stream_count(&voter) {
            0 => Ok(()),
            n => Err(format!("{n} records left")),
        }
    });
    let expired = audit(&voter, "stream.expire");
    let crash: Vec<_> =
        expired.iter().filter(|e| e["target"].as_str().unwrap().starts_with("crash/")).collect();
    assert_eq!(crash.len(), 20, "one stream.expire per crashed stream: {expired:?}");
    assert!(crash.iter().all(|e| e["actor"] == "expiry"), "{crash:?}");
    println!("an expiry: {}", crash[0]["detail"]);
    // The restarted edge serves a new publisher of one of them as usual.
    let republished = runtime.block_on(async {
        let publisher = tokio::spawn(publish(
            publish_options(&quic, "crash/s0", Duration::from_secs(2)),
            CancellationToken::new(),
        ));
        let seen = watch_until_gone(quic.clone(), "crash/s0".into()).await;
        let _ = publisher.await;
        seen
    });
    assert!(republished, "crash/s0 could not be published again");
    drop(edge);
}
