//! Publishing a stream to an edge: from Ferry's synthetic source or an IVF file,
//! one QUIC stream per group (a group starts at each keyframe).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_proto::{
    Codec, ErrorCode, FrameFlags, FrameHeader, GroupHeader, Message, NodeId, Role, StreamName, Timebase,
    TrackInfo, TrackKind, TrackName, MAX_CONTROL_MESSAGE,
};
use quinn::{Connection, SendStream};
use serde::Serialize;
use tokio::io::AsyncRead;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};
use ferry_media::ivf::IvfReader;
use ferry_media::keyframe::is_keyframe;
use ferry_media::synthetic::{unix_micros_now, vp8_framed, SyntheticConfig, SyntheticSource};
use ferry_net::dial::{closed_error, connect, SessionHello};
use ferry_net::tls::{ClientTrust, TransportTuning};
use ferry_net::wire::{read_message, write_frame, write_message};

/// What to publish.
#[derive(Debug, Clone)]
pub enum Source {
    Synthetic(SyntheticConfig),
    /// The synthetic stream labelled VP8 behind a VP8 frame tag, so WebRTC viewers
    /// can receive it (benchmarks; not decodable video).
    SyntheticVp8(SyntheticConfig),
    /// An IVF file (VP8/VP9/AV1), or standard input for `-`.
    Ivf(PathBuf),
}

/// A publish session's settings.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub edge: String,
    pub stream: StreamName,
    pub source: Source,
    /// Stop after this long (default: until the source ends or Ctrl-C).
    pub duration: Option<Duration>,
    pub trust: ClientTrust,
    pub tuning: TransportTuning,
    pub label: NodeId,
    pub max_frame: usize,
    /// Who this session is, for rollouts.
    pub session: SessionHello,
}

/// What a publish session did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PublishStats {
    pub frames: u64,
    pub bytes: u64,
    pub groups: u64,
    /// Keyframe requests received from the edge.
    pub keyframe_requests: u64,
    /// Frames handed to QUIC later than one frame interval after their schedule.
    pub late_frames: u64,
    /// Longest time one frame write took, in milliseconds.
    pub max_write_ms: f64,
    /// Why the session ended.
    pub ended: String,
    /// Where the edge's rollouts placed the session, and the treatment's client flag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_flag: Option<String>,
}

struct Sender {
    conn: Connection,
    version: u16,
    group: Option<(u64, SendStream)>,
    next_seq: u64,
    stats: PublishStats,
}

impl Sender {
    async fn send(&mut self, pts: u64, keyframe: bool, payload: Bytes) -> Result<()> {
        let started = std::time::Instant::now();
        if keyframe || self.group.is_none() {
            if let Some((_, mut old)) = self.group.take() {
                let _ = old.finish();
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            let mut stream = self.conn.open_uni().await?;
            let _ = stream.set_priority(i32::try_from(seq & 0x7fff_ffff).unwrap_or(i32::MAX));
            write_message(&mut stream, self.version, &GroupHeader { track: 0, seq }).await?;
            self.group = Some((seq, stream));
            self.stats.groups += 1;
        }
        let flags = if keyframe { FrameFlags::KEYFRAME } else { FrameFlags::empty() };
        let len = u32::try_from(payload.len()).map_err(|_| Error::protocol("frame over 4 GiB"))?;
        if let Some((_, stream)) = self.group.as_mut() {
            write_frame(stream, &FrameHeader { pts, flags, len }, &payload).await?;
        }
        self.stats.frames += 1;
        self.stats.bytes += payload.len() as u64;
        let took = started.elapsed().as_secs_f64() * 1000.0;
        if took > self.stats.max_write_ms {
            self.stats.max_write_ms = took;
        }
        Ok(())
    }

    /// Finishes the last group and waits (bounded) until the edge has all of it.
    async fn finish(&mut self) {
        if let Some((_, mut stream)) = self.group.take() {
            let _ = stream.finish();
            let _ = tokio::time::timeout(Duration::from_secs(5), stream.stopped()).await;
        }
    }
}

/// Publishes until the source ends, `duration` passes, `cancel` fires or the edge
/// sends GOAWAY.
pub async fn publish(opts: PublishOptions, cancel: CancellationToken) -> Result<PublishStats> {
    let mut ivf = match &opts.source {
        Source::Ivf(path) => Some(open_ivf(path, opts.max_frame).await?),
        Source::Synthetic(_) | Source::SyntheticVp8(_) => None,
    };
    let info = match (&opts.source, &ivf) {
        (_, Some((_, info))) => info.clone(),
        (source, None) => TrackInfo {
            name: TrackName::video(),
            kind: TrackKind::Video,
            codec: if matches!(source, Source::SyntheticVp8(_)) { Codec::Vp8 } else { Codec::Synthetic },
            timebase: Timebase::MICROS,
            width: 0,
            height: 0,
        },
    };
    let link =
        connect(&opts.edge, &opts.trust, &opts.tuning, opts.label.clone(), Role::Publisher, &opts.session)
            .await?;
    let (variant, client_flag) = (link.variant, link.client_flag);
    let (conn, mut send, mut recv, version) = (link.conn, link.send, link.recv, link.version);
    write_message(&mut send, version, &Message::Announce { stream: opts.stream.clone(), tracks: vec![info] })
        .await?;
    match read_message::<Message>(&mut recv, MAX_CONTROL_MESSAGE).await {
        Ok(Some((_, Message::AnnounceOk { .. }))) => {}
        Ok(Some((_, Message::AnnounceError { code, message, .. }))) => {
            return Err(Error::refused(code, message))
        }
        Ok(Some((_, other))) => {
            return Err(Error::protocol(format!("expected announce_ok, got {}", other.kind())))
        }
        Ok(None) | Err(_) => return Err(closed_error(&conn).await.into()),
    }
    // The one line that says the stream is live (scripts wait for it).
    tracing::info!(stream = %opts.stream, edge = %link.peer, at = %opts.edge, "publishing");
    let keyframe_wanted = Arc::new(AtomicBool::new(false));
    let stop = cancel.child_token();
    let control = tokio::spawn(read_control(recv, Arc::clone(&keyframe_wanted), stop.clone()));
    let mut sender = Sender {
        conn: conn.clone(),
        version,
        group: None,
        next_seq: 0,
        stats: PublishStats { variant, client_flag, ..PublishStats::default() },
    };
    let deadline = opts.duration.map(|d| Instant::now() + d);
    let result = match (&opts.source, ivf.as_mut()) {
        (_, Some((reader, info))) => send_ivf(&mut sender, reader, info, deadline, &stop).await,
        (Source::Synthetic(config), None) => {
            send_synthetic(&mut sender, config.clone(), false, &keyframe_wanted, deadline, &stop).await
        }
        (Source::SyntheticVp8(config), None) => {
            send_synthetic(&mut sender, config.clone(), true, &keyframe_wanted, deadline, &stop).await
        }
        (Source::Ivf(_), None) => Ok("no source".to_owned()),
    };
    sender.finish().await;
    stop.cancel();
    let (requests, edge_ended) = control.await.unwrap_or((0, None));
    // The edge ended the session on purpose (another publisher took the stream
    // over, or holds it): that is an error to report, not a connection to retry.
    if conn.close_reason().is_some() || edge_ended == Some(CONNECTION_LOST) {
        let closed = closed_error(&conn).await;
        if let ferry_net::Error::Refused {
            code: ErrorCode::TakenOver | ErrorCode::StreamBusy | ErrorCode::Unauthorized,
            ..
        } = closed
        {
            return Err(closed.into());
        }
    }
    let mut stats = sender.stats;
    stats.keyframe_requests = requests;
    match result {
        Ok(ended) => {
            // Stopped by the edge, not by us: say why, so routed publishers move on.
            stats.ended = match edge_ended {
                Some(reason) if ended == "stopped" && !cancel.is_cancelled() => reason.to_owned(),
                _ => ended,
            };
            let _ = send.finish();
            // Let the edge read the last group before we close.
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
            link.endpoint.close(0u32.into(), b"done");
            let _ = tokio::time::timeout(Duration::from_secs(1), link.endpoint.wait_idle()).await;
            Ok(stats)
        }
        Err(e) => Err(match conn.close_reason() {
            Some(_) => closed_error(&conn).await.into(),
            None => e,
        }),
    }
}

pub(crate) type BoxedRead = Box<dyn AsyncRead + Unpin + Send>;

pub(crate) async fn open_ivf(path: &PathBuf, max_frame: usize) -> Result<(IvfReader<BoxedRead>, TrackInfo)> {
    let input: BoxedRead = if path.as_os_str() == "-" {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(
            tokio::fs::File::open(path)
                .await
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?,
        )
    };
    let (reader, header) = IvfReader::open(input, max_frame).await?;
    let codec = Codec::from_ivf_fourcc(header.fourcc).ok_or_else(|| {
        Error::Config(format!("unsupported IVF codec {:?}", String::from_utf8_lossy(&header.fourcc)))
    })?;
    let info = TrackInfo {
        name: TrackName::video(),
        kind: TrackKind::Video,
        codec,
        timebase: header.timebase,
        width: header.width,
        height: header.height,
    };
    Ok((reader, info))
}

async fn send_synthetic(
    sender: &mut Sender,
    config: SyntheticConfig,
    vp8: bool,
    keyframe_wanted: &AtomicBool,
    deadline: Option<Instant>,
    stop: &CancellationToken,
) -> Result<String> {
    let mut source = SyntheticSource::new(config);
    let interval = source.frame_interval();
    let start = Instant::now();
    let mut n: u32 = 0;
    loop {
        let due = start + interval * n;
        if deadline.is_some_and(|d| due >= d) {
            return Ok("duration reached".into());
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok("stopped".into()),
            _ = tokio::time::sleep_until(due) => {}
        }
        if Instant::now().saturating_duration_since(due) > interval {
            sender.stats.late_frames += 1;
        }
        if keyframe_wanted.swap(false, Ordering::Relaxed) {
            source.force_keyframe();
        }
        let frame = source.next_frame(unix_micros_now());
        let payload = if vp8 { vp8_framed(&frame) } else { frame.payload };
        sender.send(frame.pts_micros, frame.keyframe, payload).await?;
        n = n.saturating_add(1);
    }
}

async fn send_ivf(
    sender: &mut Sender,
    reader: &mut IvfReader<BoxedRead>,
    info: &TrackInfo,
    deadline: Option<Instant>,
    stop: &CancellationToken,
) -> Result<String> {
    let start = Instant::now();
    let mut first_pts: Option<u64> = None;
    loop {
        let frame = tokio::select! {
            _ = stop.cancelled() => return Ok("stopped".into()),
            frame = reader.next_frame() => frame?,
        };
        let Some(frame) = frame else { return Ok("end of input".into()) };
        let base = *first_pts.get_or_insert(frame.pts);
        let offset = info.timebase.ticks_to_micros(frame.pts.saturating_sub(base)).unwrap_or(0);
        let due = start + Duration::from_micros(offset);
        if deadline.is_some_and(|d| due >= d) {
            return Ok("duration reached".into());
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok("stopped".into()),
            _ = tokio::time::sleep_until(due) => {}
        }
        let key = is_keyframe(info.codec, &frame.data);
        sender.send(frame.pts, key, frame.data).await?;
    }
}

/// Reads the edge's control messages: keyframe requests and GOAWAY. Returns the
/// number of keyframe requests seen.
/// How a session ends when the edge's control stream ends without a GOAWAY.
const CONNECTION_LOST: &str = "connection lost";

async fn read_control(
    mut recv: quinn::RecvStream,
    keyframe_wanted: Arc<AtomicBool>,
    stop: CancellationToken,
) -> (u64, Option<&'static str>) {
    let mut requests = 0;
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return (requests, None),
            msg = read_message::<Message>(&mut recv, MAX_CONTROL_MESSAGE) => msg,
        };
        match msg {
            Ok(Some((_, Message::KeyframeRequest { .. }))) => {
                requests += 1;
                keyframe_wanted.store(true, Ordering::Relaxed);
            }
            Ok(Some((_, Message::GoAway { reason }))) => {
                tracing::info!(%reason, "edge sent GOAWAY");
                stop.cancel();
                return (requests, Some("edge going away"));
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                stop.cancel();
                return (requests, Some(CONNECTION_LOST));
            }
        }
    }
}
