//! Watching a stream: subscribe, read one QUIC stream per group, measure, and
//! optionally write the frames back out as IVF.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::{
    Codec, ErrorCode, GroupHeader, Message, NodeId, Role, StreamName, TrackInfo, TrackName,
    MAX_CONTROL_MESSAGE,
};
use quinn::RecvStream;
use serde::Serialize;
use tokio::io::AsyncWrite;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::stats::{LatencySummary, Samples};
use crate::{Error, Result};
use ferry_media::ivf::{patch_frame_count, IvfHeader, IvfWriter};
use ferry_media::synthetic;
use ferry_net::dial::{closed_error, connect, SessionHello};
use ferry_net::tls::{ClientTrust, TransportTuning};
use ferry_net::wire::{read_frame, read_message, write_message};

/// After the edge says the track ended, how long to wait for group streams still in flight.
const DRAIN_AFTER_DONE: Duration = Duration::from_secs(2);

/// A watch session's settings.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub edge: String,
    pub stream: StreamName,
    pub track: TrackName,
    /// Latency budget asked of the edge.
    pub max_lag: Duration,
    pub duration: Option<Duration>,
    /// Write received frames as IVF here (`-` for standard output).
    pub output: Option<PathBuf>,
    /// Read at most this many bits per second (to emulate a slow viewer).
    pub throttle_bps: Option<u64>,
    pub trust: ClientTrust,
    pub tuning: TransportTuning,
    pub label: NodeId,
    pub max_frame: usize,
    /// End the session ("stalled") when no frame arrives for this long: a dead edge
    /// is noticed well before QUIC's idle timeout. None: wait for the idle timeout.
    pub stall_timeout: Option<Duration>,
    /// Who this session is, for rollouts.
    pub session: SessionHello,
}

/// What a viewer saw. Printed by `ferry watch --json`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct WatchStats {
    pub frames: u64,
    pub bytes: u64,
    /// Groups received in full or in part.
    pub groups: u64,
    /// Groups skipped or cut short because this viewer fell behind.
    pub skipped_groups: u64,
    /// Groups whose first frame was not a keyframe (should stay 0).
    pub groups_without_keyframe: u64,
    /// Synthetic frames missing where no skip explains the gap.
    pub lost_frames: u64,
    /// Synthetic frames that arrived after a later one.
    pub out_of_order_frames: u64,
    /// Media timestamp of the first and last frame received.
    pub first_pts: Option<u64>,
    pub last_pts: Option<u64>,
    /// Time from connecting to the first and the last frame.
    pub first_frame_ms: Option<f64>,
    pub last_frame_ms: Option<f64>,
    /// Synthetic sequence numbers of the first and last frame (synthetic sources only).
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Publisher-to-viewer latency, synthetic sources only, from the second group on
    /// (the first group is the backlog a joining viewer starts with).
    pub latency_ms: Option<LatencySummary>,
    pub codec: Option<String>,
    pub duration_s: f64,
    /// Why the session ended.
    pub ended: String,
    /// Where the edge's rollouts placed the session (`bbr=treatment, …`), and the
    /// treatment's client flag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_flag: Option<String>,
}

struct Viewer {
    stats: WatchStats,
    latency: Samples,
    codec: Codec,
    last_group: Option<u64>,
    /// Synthetic sequence number of the last frame, and whether a skip happened since.
    last_seq: Option<u64>,
    skipped_since_last: bool,
    throttle: Option<Throttle>,
    out: Option<IvfWriter<Box<dyn AsyncWrite + Unpin + Send>>>,
    connected_at: Instant,
    /// Milliseconds from `connected_at` to the last frame (read by the stall watchdog).
    activity: Arc<AtomicU64>,
}

/// Paces reads to a bit rate (a deliberately slow viewer).
struct Throttle {
    bps: u64,
    start: Instant,
    bytes: u64,
}

impl Throttle {
    async fn consume(&mut self, n: usize) {
        self.bytes += n as u64;
        let due = self.start + Duration::from_secs_f64(self.bytes as f64 * 8.0 / self.bps.max(1) as f64);
        tokio::time::sleep_until(due).await;
    }
}

/// The shortest wait for an edge's answer to a subscription when failing over.
const SUBSCRIBE_ANSWER_MIN: Duration = Duration::from_secs(3);

/// Watches until the track ends, `duration` passes, or `cancel` fires.
pub async fn watch(opts: WatchOptions, cancel: CancellationToken) -> Result<WatchStats> {
    Ok(watch_detailed(opts, cancel).await?.0)
}

/// Like [`watch`], also returning the raw latency samples (for aggregating viewers).
pub async fn watch_detailed(opts: WatchOptions, cancel: CancellationToken) -> Result<(WatchStats, Samples)> {
    let started = Instant::now();
    let link =
        connect(&opts.edge, &opts.trust, &opts.tuning, opts.label.clone(), Role::Viewer, &opts.session)
            .await?;
    let (conn, endpoint) = (link.conn.clone(), link.endpoint.clone());
    let result = session(&opts, link, started, &cancel).await;
    // Close on every path (errors too), and let the close frame reach the edge so it
    // frees the session now, not at its idle timeout.
    conn.close(ErrorCode::NoError.as_u32().into(), b"bye");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    result
}

async fn session(
    opts: &WatchOptions,
    link: ferry_net::dial::Link,
    started: Instant,
    cancel: &CancellationToken,
) -> Result<(WatchStats, Samples)> {
    let (variant, client_flag) = (link.variant, link.client_flag);
    let (conn, mut send, mut recv, version) = (link.conn, link.send, link.recv, link.version);
    let max_lag_ms = u32::try_from(opts.max_lag.as_millis()).unwrap_or(u32::MAX);
    let subscribe = Message::Subscribe {
        id: 1,
        stream: opts.stream.clone(),
        track: opts.track.clone(),
        priority: 0,
        max_lag_ms,
    };
    write_message(&mut send, version, &subscribe).await?;
    // A failing-over viewer waits for the answer no longer than it would for a frame
    // (twice, at least SUBSCRIBE_ANSWER_MIN: the edge may pull from upstream first), so
    // an edge stuck on its own upstream does not hold it.
    let answer = read_message::<Message>(&mut recv, MAX_CONTROL_MESSAGE);
    let answer = match opts.stall_timeout {
        Some(stall) => tokio::time::timeout((stall * 2).max(SUBSCRIBE_ANSWER_MIN), answer)
            .await
            .map_err(|_| Error::Net(ferry_net::Error::Timeout("the edge's answer to the subscription")))?,
        None => answer.await,
    };
    let info = match answer {
        Ok(Some((_, Message::SubscribeOk { track, .. }))) => track,
        Ok(Some((_, Message::SubscribeError { code, message, .. }))) => {
            return Err(Error::refused(code, message))
        }
        Ok(Some((_, other))) => {
            return Err(Error::protocol(format!("expected subscribe_ok, got {}", other.kind())))
        }
        Ok(None) | Err(_) => return Err(closed_error(&conn).await.into()),
    };
    let (out, out_file) = open_output(opts.output.as_ref(), &info).await?;
    let mut viewer = Viewer {
        stats: WatchStats {
            codec: Some(format!("{:?}", info.codec)),
            variant,
            client_flag,
            ..WatchStats::default()
        },
        latency: Samples::default(),
        codec: info.codec,
        last_group: None,
        last_seq: None,
        skipped_since_last: false,
        throttle: opts.throttle_bps.map(|bps| Throttle { bps, start: Instant::now(), bytes: 0 }),
        out,
        connected_at: started,
        activity: Arc::new(AtomicU64::new(0)),
    };
    let activity = Arc::clone(&viewer.activity);
    let stalled = async {
        match opts.stall_timeout {
            Some(stall) => watchdog(started, &activity, stall).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stalled);
    let done = CancellationToken::new();
    let control = tokio::spawn(read_control(recv, done.clone()));
    let deadline = opts.duration.map(|d| started + d);
    let mut drain_deadline: Option<Instant> = None;
    let ended = loop {
        let next = tokio::select! {
            biased;
            _ = cancel.cancelled() => break "stopped".to_owned(),
            _ = sleep_until_opt(deadline) => break "duration reached".to_owned(),
            _ = done.cancelled(), if drain_deadline.is_none() => {
                drain_deadline = Some(Instant::now() + DRAIN_AFTER_DONE);
                continue;
            }
            _ = sleep_until_opt(drain_deadline) => break "track ended".to_owned(),
            _ = &mut stalled => break "stalled".to_owned(),
            accepted = conn.accept_uni() => accepted,
        };
        let recv = match next {
            Ok(recv) => recv,
            Err(_) => match closed_error(&conn).await {
                ferry_net::Error::Refused { code: ErrorCode::GoingAway, .. } => {
                    break "edge going away".to_owned()
                }
                ferry_net::Error::Refused { code: ErrorCode::NoError, .. } => {
                    break "edge closed the session".to_owned()
                }
                e => return Err(e.into()),
            },
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break "stopped".to_owned(),
            _ = sleep_until_opt(deadline) => break "duration reached".to_owned(),
            _ = &mut stalled => break "stalled".to_owned(),
            result = viewer.read_group(recv, opts.max_frame) => result?,
        }
    };
    let _ = send.finish();
    control.abort();
    let latency = viewer.latency.clone();
    let mut stats = viewer.finish(out_file).await?;
    stats.ended = ended;
    stats.duration_s = started.elapsed().as_secs_f64();
    Ok((stats, latency))
}

/// Resolves once `stall` passes without a frame (the first frame may take `stall` too).
async fn watchdog(started: Instant, activity: &AtomicU64, stall: Duration) {
    loop {
        let last = started + Duration::from_millis(activity.load(Ordering::Relaxed));
        let due = last + stall;
        if Instant::now() >= due {
            return;
        }
        tokio::time::sleep_until(due).await;
    }
}

/// Sleeps until `at`, or forever without one (a `select!` arm that never fires).
pub(crate) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

type Output = (Option<IvfWriter<Box<dyn AsyncWrite + Unpin + Send>>>, Option<PathBuf>);

async fn open_output(path: Option<&PathBuf>, info: &TrackInfo) -> Result<Output> {
    let Some(path) = path else { return Ok((None, None)) };
    let fourcc = info
        .codec
        .ivf_fourcc()
        .ok_or_else(|| Error::Config(format!("a {:?} track cannot be written as IVF", info.codec)))?;
    let header =
        IvfHeader { fourcc, width: info.width, height: info.height, timebase: info.timebase, frame_count: 0 };
    let (writer, file): (Box<dyn AsyncWrite + Unpin + Send>, _) = if path.as_os_str() == "-" {
        (Box::new(tokio::io::stdout()), None)
    } else {
        let file = tokio::fs::File::create(path)
            .await
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        (Box::new(file), Some(path.clone()))
    };
    Ok((Some(IvfWriter::new(writer, &header).await?), file))
}

impl Viewer {
    async fn read_group(&mut self, mut recv: RecvStream, max_frame: usize) -> Result<()> {
        let header = match read_message::<GroupHeader>(&mut recv, 64).await {
            Ok(Some((_, header))) => header,
            Ok(None) | Err(ferry_net::Error::Read(quinn::ReadError::ConnectionLost(_))) => return Ok(()),
            Err(ferry_net::Error::Read(quinn::ReadError::Reset(_))) => {
                // Reset before its header arrived: a group skipped for us.
                self.stats.skipped_groups += 1;
                self.skipped_since_last = true;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(last) = self.last_group {
            let gap = header.seq.saturating_sub(last).saturating_sub(1);
            self.stats.skipped_groups += gap;
            self.skipped_since_last |= gap > 0;
        }
        self.last_group = Some(header.seq.max(self.last_group.unwrap_or(0)));
        self.stats.groups += 1;
        let mut first = true;
        loop {
            let frame = match read_frame(&mut recv, max_frame).await {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(ferry_net::Error::Read(quinn::ReadError::Reset(_))) => {
                    // The edge gave up on this group for us: we were too slow.
                    self.stats.skipped_groups += 1;
                    self.skipped_since_last = true;
                    return Ok(());
                }
                Err(ferry_net::Error::Read(quinn::ReadError::ConnectionLost(_))) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            let (header, payload) = frame;
            if first && !header.is_keyframe() {
                self.stats.groups_without_keyframe += 1;
            }
            first = false;
            if self.stats.frames == 0 {
                self.stats.first_frame_ms = Some(self.connected_at.elapsed().as_secs_f64() * 1000.0);
            }
            self.stats.frames += 1;
            self.stats.bytes += payload.len() as u64;
            let since_connect = self.connected_at.elapsed();
            self.stats.last_frame_ms = Some(since_connect.as_secs_f64() * 1000.0);
            self.activity.store(since_connect.as_millis() as u64, Ordering::Relaxed);
            self.stats.first_pts.get_or_insert(header.pts);
            self.stats.last_pts = Some(header.pts);
            if self.codec == Codec::Synthetic {
                if let Some(stamp) = synthetic::parse(&payload) {
                    let now = synthetic::unix_micros_now();
                    // The first group is backlog (we joined at its keyframe, up to a GOP
                    // ago): its age is join delay, not relay latency.
                    if self.stats.groups > 1 {
                        self.latency.push(now.saturating_sub(stamp.sent_at_unix_micros));
                    }
                    match self.last_seq {
                        Some(last) if stamp.seq <= last => self.stats.out_of_order_frames += 1,
                        Some(last) if !self.skipped_since_last => {
                            self.stats.lost_frames += stamp.seq - last - 1;
                        }
                        _ => {}
                    }
                    self.stats.first_seq.get_or_insert(stamp.seq);
                    if self.last_seq.is_none_or(|last| stamp.seq > last) {
                        self.stats.last_seq = Some(stamp.seq);
                        self.last_seq = Some(stamp.seq);
                        self.skipped_since_last = false;
                    }
                }
            }
            if let Some(out) = self.out.as_mut() {
                out.write_frame(header.pts, &payload).await?;
            }
            if let Some(throttle) = self.throttle.as_mut() {
                throttle.consume(payload.len()).await;
            }
        }
    }

    async fn finish(mut self, file: Option<PathBuf>) -> Result<WatchStats> {
        if let Some(out) = self.out.take() {
            let count = out.frames_written();
            out.finish().await?;
            if let Some(path) = file {
                let mut f =
                    tokio::fs::OpenOptions::new().write(true).open(&path).await.map_err(|source| {
                        Error::Io {
                            context: format!("cannot reopen {} to finish it", path.display()),
                            source,
                        }
                    })?;
                patch_frame_count(&mut f, count).await?;
            }
        }
        self.stats.latency_ms = self.latency.summary();
        Ok(self.stats)
    }
}

/// Waits for SUBSCRIBE_DONE or GOAWAY on the control stream.
async fn read_control(mut recv: RecvStream, done: CancellationToken) {
    while let Ok(Some((_, msg))) = read_message::<Message>(&mut recv, MAX_CONTROL_MESSAGE).await {
        if matches!(msg, Message::SubscribeDone { .. } | Message::GoAway { .. }) {
            break;
        }
    }
    done.cancel();
}
