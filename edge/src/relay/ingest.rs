//! Reading group streams (from a publisher or the upstream edge) into a track.

use std::time::Instant;

use ferry_proto::ErrorCode;
use quinn::RecvStream;

use crate::metrics::EdgeMetrics;
use crate::track::{Frame, TrackProducer};
use crate::Result;
use ferry_net::wire::read_frame;

/// Reads every frame of group `seq` from `recv` into `track`. The group is marked
/// complete however the stream ends, so readers never wait on a dead stream.
///
/// A refused group (duplicate or older than the buffer keeps) is stopped and
/// ignored; a protocol error (oversized frame, bad flags) is returned so the caller
/// can close the connection.
pub async fn ingest_group(
    mut recv: RecvStream,
    track: &TrackProducer,
    seq: u64,
    max_frame: usize,
    metrics: &EdgeMetrics,
) -> Result<()> {
    if !track.begin_group(seq) {
        metrics.frames_dropped.inc();
        let _ = recv.stop(ErrorCode::StaleGroup.as_u32().into());
        return Ok(());
    }
    let result = read_frames(&mut recv, track, seq, max_frame, metrics).await;
    track.end_group(seq);
    match result {
        // A reset by the sender (it skipped this group) is not our error.
        Err(crate::Error::Net(ferry_net::Error::Read(quinn::ReadError::Reset(_)))) => Ok(()),
        other => other,
    }
}

async fn read_frames(
    recv: &mut RecvStream,
    track: &TrackProducer,
    seq: u64,
    max_frame: usize,
    metrics: &EdgeMetrics,
) -> Result<()> {
    while let Some((header, payload)) = read_frame(recv, max_frame).await? {
        metrics.frames_in.inc();
        metrics.bytes_in.inc_by(payload.len() as u64);
        let frame = Frame { header, payload, received_at: Instant::now() };
        if !track.push_frame(seq, frame) {
            metrics.frames_dropped.inc();
        }
    }
    Ok(())
}
