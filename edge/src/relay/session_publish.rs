//! The publisher side of a session: announce, then one group stream per group.

use std::collections::HashSet;
use std::time::Duration;

use ferry_proto::{ErrorCode, GroupHeader, Message, StreamName, TrackInfo};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::ingest::ingest_group;
use super::registry::RegisterError;
use super::session::Session;
use crate::track::TrackProducer;
use crate::{Error, Result};
use ferry_net::wire::read_message;

/// Tracks one stream may announce.
const MAX_TRACKS: usize = 16;
/// Time a group stream gets to deliver its header.
const GROUP_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn run(ctx: &Session<'_>, mut in_rx: mpsc::Receiver<Result<Message>>) -> Result<()> {
    let (stream, tracks) = tokio::select! {
        biased;
        _ = ctx.cancel.cancelled() => return Err(ctx.go_away().await),
        msg = in_rx.recv() => match msg {
            Some(Ok(Message::Announce { stream, tracks })) => (stream, tracks),
            Some(Ok(other)) => return Err(Error::protocol(format!("expected announce, got {}", other.kind()))),
            Some(Err(e)) => return Err(e),
            None => return Ok(()),
        },
    };
    validate_tracks(&tracks)?;
    let producers: Vec<TrackProducer> =
        tracks.into_iter().map(|info| TrackProducer::new(info, ctx.buffer)).collect();
    if let Err(RegisterError::Taken(_)) = ctx.state.registry.publish(&stream, ctx.session, producers.clone())
    {
        let message = format!("stream {stream} is already published");
        let _ = ctx
            .ctl
            .send(Message::AnnounceError { stream, code: ErrorCode::Duplicate, message: message.clone() })
            .await;
        return Err(Error::refused(ErrorCode::Duplicate, message));
    }
    tracing::info!(session = ctx.session, %stream, tracks = producers.len(), "publishing");
    ctx.state.streams_changed();
    let ingests = TaskTracker::new();
    let result = serve_groups(ctx, &stream, &producers, &mut in_rx, &ingests).await;
    // A publisher that ended cleanly may still have its last group in flight: let
    // it land before the track ends, so viewers get every frame.
    ingests.close();
    if result.is_ok() {
        let _ = tokio::time::timeout(GROUP_HEADER_TIMEOUT, ingests.wait()).await;
    }
    ctx.state.registry.unpublish(&stream, ctx.session);
    ctx.state.streams_changed();
    result
}

fn validate_tracks(tracks: &[TrackInfo]) -> Result<()> {
    if tracks.is_empty() || tracks.len() > MAX_TRACKS {
        return Err(Error::protocol(format!("announce must carry 1..={MAX_TRACKS} tracks")));
    }
    let mut names = HashSet::new();
    if let Some(dup) = tracks.iter().find(|t| !names.insert(&t.name)) {
        return Err(Error::protocol(format!("track {} announced twice", dup.name)));
    }
    Ok(())
}

async fn serve_groups(
    ctx: &Session<'_>,
    stream: &StreamName,
    producers: &[TrackProducer],
    in_rx: &mut mpsc::Receiver<Result<Message>>,
    ingests: &TaskTracker,
) -> Result<()> {
    ctx.ctl.send(Message::AnnounceOk { stream: stream.clone() }).await.ok();
    for producer in producers {
        ctx.state.tracker.spawn(forward_keyframe_requests(
            producer.clone(),
            stream.clone(),
            ctx.ctl.clone(),
            ctx.cancel.clone(),
        ));
    }
    loop {
        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => return Err(ctx.go_away().await),
            msg = in_rx.recv() => match msg {
                None => return Ok(()),
                Some(Err(e)) => return Err(e),
                Some(Ok(Message::GoAway { .. })) => return Ok(()),
                Some(Ok(other)) => {
                    return Err(Error::protocol(format!("unexpected {} from a publisher", other.kind())));
                }
            },
            recv = ctx.conn.accept_uni() => {
                let recv = recv?;
                let producers = producers.to_vec();
                let conn = ctx.conn.clone();
                let metrics = ctx.state.metrics.clone();
                let max_frame = ctx.state.config.max_frame;
                let cancel = ctx.cancel.clone();
                ctx.state.tracker.spawn(ingests.track_future(async move {
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        result = ingest_stream(recv, &producers, max_frame, &metrics) => {
                            if let Err(e) = result {
                                let code = e.code();
                                metrics.error(code);
                                let mut reason = e.to_string();
                                reason.truncate(200);
                                conn.close(code.as_u32().into(), reason.as_bytes());
                            }
                        }
                    }
                }));
            }
        }
    }
}

async fn ingest_stream(
    mut recv: quinn::RecvStream,
    producers: &[TrackProducer],
    max_frame: usize,
    metrics: &crate::metrics::EdgeMetrics,
) -> Result<()> {
    let header = tokio::time::timeout(GROUP_HEADER_TIMEOUT, read_message::<GroupHeader>(&mut recv, 64))
        .await
        .map_err(|_| Error::timeout("a group header"))??;
    let Some((_, header)) = header else {
        return Ok(());
    };
    let track = usize::try_from(header.track)
        .ok()
        .and_then(|i| producers.get(i))
        .ok_or_else(|| Error::protocol(format!("group for unknown track index {}", header.track)))?;
    ingest_group(recv, track, header.seq, max_frame, metrics).await
}

async fn forward_keyframe_requests(
    producer: TrackProducer,
    stream: StreamName,
    ctl: mpsc::Sender<Message>,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = producer.keyframe_requested() => {
                let msg = Message::KeyframeRequest { stream: stream.clone(), track: producer.info().name.clone() };
                if ctl.send(msg).await.is_err() {
                    return;
                }
            }
        }
    }
}
