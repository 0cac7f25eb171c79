//! Delivering one subscription: a QUIC uni stream per group, newer groups at higher
//! priority. A write that stalls longer than the subscriber's `max_lag` resets the
//! group's stream and the reader moves on to the next group — a slow viewer loses
//! groups, never holds anyone else back.

use bytes::Bytes;
use ferry_proto::{encode_message, ErrorCode, GroupHeader};
use quinn::{Connection, SendStream};
use tokio_util::sync::CancellationToken;

use crate::metrics::{EdgeMetrics, RoleLabels};
use crate::track::LagBudget;
use crate::track::{Read, TrackConsumer};
use ferry_net::wire::write_frame;

/// How a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryEnd {
    /// The track ended; all buffered frames were handed to QUIC.
    TrackEnded,
    /// The subscription was cancelled (unsubscribe, shutdown).
    Cancelled,
    /// The connection is gone.
    ConnectionLost,
}

/// One subscription's delivery state.
pub struct Delivery {
    pub conn: Connection,
    pub id: u64,
    pub consumer: TrackConsumer,
    /// The latency budget, followed as it moves (a rollout's treatment falling back).
    pub lag: LagBudget,
    pub metrics: EdgeMetrics,
    pub role: &'static str,
    /// The protocol version negotiated on this connection.
    pub version: u16,
}

fn priority(group: u64) -> i32 {
    // Newer groups first. Wraps after 2^31 groups (over a century at one per second).
    i32::try_from(group & 0x7fff_ffff).unwrap_or(i32::MAX)
}

fn reset(stream: Option<(u64, SendStream)>, code: ErrorCode) {
    if let Some((_, mut s)) = stream {
        let _ = s.reset(code.as_u32().into());
    }
}

impl Delivery {
    fn count_skip(&self, groups: u64) {
        self.metrics.skipped_groups.get_or_create(&RoleLabels { role: self.role.to_owned() }).inc_by(groups);
    }

    /// Runs until the track ends, the connection drops or `cancel` fires.
    pub async fn run(mut self, cancel: CancellationToken) -> DeliveryEnd {
        let mut current: Option<(u64, SendStream)> = None;
        loop {
            self.consumer.follow(&self.lag);
            let max_lag = self.consumer.max_lag();
            let read = tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    reset(current.take(), ErrorCode::Cancelled);
                    return DeliveryEnd::Cancelled;
                }
                read = self.consumer.next() => read,
            };
            let (group, frame) = match read {
                Read::Frame { group, frame, .. } => (group, frame),
                Read::Skipped { groups, .. } => {
                    reset(current.take(), ErrorCode::StaleGroup);
                    self.count_skip(groups);
                    continue;
                }
                Read::Closed => {
                    if let Some((_, mut s)) = current.take() {
                        let _ = s.finish();
                    }
                    return DeliveryEnd::TrackEnded;
                }
                Read::Pending => continue,
            };
            let mut stream = match current.take() {
                Some((g, s)) if g == group => s,
                previous => {
                    if let Some((_, mut s)) = previous {
                        let _ = s.finish();
                    }
                    let opened = tokio::select! {
                        biased;
                        _ = cancel.cancelled() => return DeliveryEnd::Cancelled,
                        opened = tokio::time::timeout(max_lag, self.open_group(group)) => opened,
                    };
                    match opened {
                        Ok(Ok(s)) => s,
                        Ok(Err(())) | Err(_) => {
                            if self.conn.close_reason().is_some() {
                                return DeliveryEnd::ConnectionLost;
                            }
                            // The viewer does not take new streams: skip this group.
                            self.stalled(None);
                            continue;
                        }
                    }
                }
            };
            let written = tokio::select! {
                biased;
                _ = cancel.cancelled() => None,
                written = tokio::time::timeout(max_lag, write_frame(&mut stream, &frame.header, &frame.payload)) => Some(written),
            };
            match written {
                None => {
                    reset(Some((group, stream)), ErrorCode::Cancelled);
                    return DeliveryEnd::Cancelled;
                }
                Some(Ok(Ok(()))) => {
                    self.metrics.frames_out.inc();
                    self.metrics.bytes_out.inc_by(frame.payload.len() as u64);
                    current = Some((group, stream));
                }
                Some(Ok(Err(_)) | Err(_)) => {
                    if self.conn.close_reason().is_some() {
                        return DeliveryEnd::ConnectionLost;
                    }
                    // Stalled past the budget, or the peer stopped the stream: give
                    // up on this group and continue at the next keyframe.
                    self.stalled(Some((group, stream)));
                }
            }
        }
    }

    fn stalled(&mut self, stream: Option<(u64, SendStream)>) {
        reset(stream, ErrorCode::StaleGroup);
        self.metrics.stale_group_resets.inc();
        self.consumer.skip_current_group();
        self.count_skip(1);
    }

    async fn open_group(&self, group: u64) -> Result<SendStream, ()> {
        let mut stream = self.conn.open_uni().await.map_err(|_| ())?;
        let _ = stream.set_priority(priority(group));
        let header =
            encode_message(self.version, &GroupHeader { track: self.id, seq: group }).map_err(|_| ())?;
        stream.write_chunk(Bytes::from(header)).await.map_err(|_| ())?;
        Ok(stream)
    }
}
