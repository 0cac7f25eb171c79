//! The publisher side of a session: announce, then one group stream per group.

use std::collections::HashSet;
use std::time::Duration;

use ferry_proto::{ErrorCode, GroupHeader, Message, StreamName, TrackInfo};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::ingest::ingest_group;
use super::registry::{RegisterError, Revocation};
use super::session::Session;
use crate::auth::Action;
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
    // Checked before any track exists: what the token grants, and that no other
    // publisher is live on the stream anywhere (unless the token grants a takeover).
    if let Err(e) = ctx.credential.permits(Action::Publish, stream.as_str()) {
        ctx.state.metrics.auth_refused(e.reason());
        return Err(refuse(ctx, stream, ErrorCode::Unauthorized, format!("{}: {e}", e.reason())).await);
    }
    let takeover = ctx.credential.takeover();
    let me = ctx.state.config.node_id.as_str();
    if let (false, Some(edge)) = (takeover, ctx.state.cluster().live_origin_elsewhere(stream.as_str(), me)) {
        let message = busy_message(&stream, &format!("on edge {edge}"));
        return Err(refuse(ctx, stream, ErrorCode::StreamBusy, message).await);
    }
    let producers: Vec<TrackProducer> =
        tracks.into_iter().map(|info| TrackProducer::new(info, ctx.buffer)).collect();
    let revoke = Revocation::default();
    if let Err(RegisterError::Taken(_)) =
        ctx.state.registry.publish(&stream, ctx.session, producers.clone(), revoke.clone(), takeover)
    {
        let message = busy_message(&stream, "here");
        return Err(refuse(ctx, stream, ErrorCode::StreamBusy, message).await);
    }
    tracing::info!(session = ctx.session, %stream, tracks = producers.len(), takeover, "publishing");
    ctx.state.streams_changed();
    let ingests = TaskTracker::new();
    let result = tokio::select! {
        result = serve_groups(ctx, &stream, &producers, &mut in_rx, &ingests) => result,
        reason = revoke.revoked() => {
            tracing::info!(session = ctx.session, %stream, reason = reason.name(), "publisher ended: another publisher holds the stream");
            ctx.state.metrics.error(reason);
            Err(Error::refused(reason, match reason {
                ErrorCode::StreamBusy => busy_message(&stream, "on another edge"),
                _ => format!("taken_over: another publisher took {stream} over"),
            }))
        }
    };
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

/// Why a second publisher is refused, and what would let it in.
fn busy_message(stream: &StreamName, where_: &str) -> String {
    format!("stream_busy: {stream} is already published {where_}; a second publisher needs a token with a takeover grant (ferry token --takeover)")
}

/// Tells the publisher why its announce is refused, and ends the session so.
async fn refuse(ctx: &Session<'_>, stream: StreamName, code: ErrorCode, message: String) -> Error {
    ctx.state.metrics.error(code);
    let _ = ctx.ctl.send(Message::AnnounceError { stream, code, message: message.clone() }).await;
    Error::refused(code, message)
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
