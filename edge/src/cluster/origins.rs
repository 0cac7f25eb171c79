//! Which edge is a stream's origin: the decision behind the control link's origin
//! writes, sans-IO (inputs and `now` in, actions out; the control link performs
//! them).
//!
//! The rules, so that the control plane holds one publisher per stream and no
//! sequence of publishers makes it write in a loop:
//! - a publisher that started here claims its stream once (with its token's
//!   takeover grant); a publisher whose stream is recorded as ours costs nothing;
//! - a refused claim (409: another edge holds the stream) is not repeated until the
//!   stream's record changes. Meanwhile, if gossip shows the holder live with the
//!   stream, the local publisher is ended with `stream_busy`; if not (the holder
//!   died and the failover has not been committed yet, or its publisher just left
//!   and the release is on its way), the publisher waits up to [`PATIENCE`] for
//!   the record to change;
//! - a publisher whose stream another edge took over (with a grant) is ended with
//!   `taken_over`;
//! - a stream whose publisher left is released, once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ferry_proto::api::Stream;
use ferry_proto::ErrorCode;

use super::control::LocalPublisher;

/// How long a publisher whose claim was refused waits for the holder to be
/// declared dead (or to release the stream) before it is ended with `stream_busy`.
pub const PATIENCE: Duration = Duration::from_secs(15);
/// How often a waiting publisher's case is looked at again.
pub const RECHECK: Duration = Duration::from_secs(1);

/// What the control link should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `PUT /v1/origins/{stream}` for the local publisher `session`.
    Claim { stream: String, session: u64, takeover: bool },
    /// `DELETE /v1/origins/{stream}?origin=me`: its publisher left.
    Release { stream: String },
    /// End the local publisher `session` of `stream`, telling it `reason`.
    Revoke { stream: String, session: u64, reason: ErrorCode },
}

/// A stream's record as far as the origin goes: (origin, origin lost).
type Fingerprint = Option<(String, bool)>;

fn fingerprint(record: Option<&Stream>) -> Fingerprint {
    record.map(|s| (s.origin.clone(), s.origin_lost))
}

/// A refused claim: the record it was refused against, and since when.
#[derive(Debug, Clone)]
struct Refused {
    session: u64,
    record: Fingerprint,
    since: Instant,
}

/// The origin bookkeeping of one edge.
#[derive(Debug)]
pub struct Origins {
    me: String,
    /// Streams this edge holds, with the local publisher's session.
    claimed: BTreeMap<String, u64>,
    /// Streams whose claim was refused.
    refused: BTreeMap<String, Refused>,
}

impl Origins {
    pub fn new(me: impl Into<String>) -> Self {
        Origins { me: me.into(), claimed: BTreeMap::new(), refused: BTreeMap::new() }
    }

    /// What to do now, given this edge's publishers, the control plane's stream
    /// records and `live(edge, stream)` (gossip: `edge` is live and publishes
    /// `stream`).
    pub fn plan(
        &mut self,
        now: Instant,
        publishers: &[LocalPublisher],
        records: &BTreeMap<String, Stream>,
        live: &dyn Fn(&str, &str) -> bool,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        for p in publishers {
            let record = records.get(&p.stream);
            if record.is_some_and(|s| s.origin == self.me && !s.origin_lost) {
                self.claimed.insert(p.stream.clone(), p.session);
                self.refused.remove(&p.stream);
                continue;
            }
            let already = self.claimed.get(&p.stream) == Some(&p.session);
            if let Some(holder) = record.filter(|s| already && s.origin != self.me && !s.origin_lost) {
                tracing::warn!(stream = %p.stream, by = %holder.origin, "another publisher took the stream over");
                self.claimed.remove(&p.stream);
                actions.push(revoke(p, ErrorCode::TakenOver));
                continue;
            }
            if let Some(refused) = self.refused.get_mut(&p.stream) {
                if refused.record == fingerprint(record) {
                    if refused.session != p.session {
                        // A new publisher for a stream still held elsewhere: no new
                        // write, the same wait.
                        *refused = Refused { session: p.session, record: refused.record.clone(), since: now };
                    }
                    let holder_live = record.is_some_and(|s| live(&s.origin, &p.stream));
                    if holder_live || now.saturating_duration_since(refused.since) >= PATIENCE {
                        self.refused.remove(&p.stream);
                        actions.push(revoke(p, ErrorCode::StreamBusy));
                    }
                    continue;
                }
                // The record moved (the holder was declared dead, or released the
                // stream): claim again.
                self.refused.remove(&p.stream);
            }
            actions.push(Action::Claim {
                stream: p.stream.clone(),
                session: p.session,
                takeover: p.takeover && !already,
            });
        }
        // Publishers that left: release what this edge still holds, once.
        let gone: Vec<String> =
            self.claimed.keys().filter(|s| !publishers.iter().any(|p| &p.stream == *s)).cloned().collect();
        for stream in gone {
            match records.get(&stream) {
                Some(s) if s.origin == self.me => actions.push(Action::Release { stream }),
                _ => {
                    self.claimed.remove(&stream);
                }
            }
        }
        self.refused.retain(|stream, _| publishers.iter().any(|p| &p.stream == stream));
        actions
    }

    /// The claim for `session` was granted.
    pub fn granted(&mut self, stream: &str, session: u64) {
        self.claimed.insert(stream.to_owned(), session);
        self.refused.remove(stream);
    }

    /// The claim for `session` was refused (another edge holds the stream) at
    /// `now`, against `record`. Ends the publisher at once when the holder is live
    /// (`holder_live`); otherwise it waits for the record to change.
    pub fn refused(
        &mut self,
        now: Instant,
        stream: &str,
        session: u64,
        record: Option<&Stream>,
        holder_live: bool,
    ) -> Option<Action> {
        self.claimed.remove(stream);
        if holder_live {
            self.refused.remove(stream);
            return Some(Action::Revoke {
                stream: stream.to_owned(),
                session,
                reason: ErrorCode::StreamBusy,
            });
        }
        self.refused.insert(stream.to_owned(), Refused { session, record: fingerprint(record), since: now });
        None
    }

    /// The stream was released.
    pub fn released(&mut self, stream: &str) {
        self.claimed.remove(stream);
    }

    /// When the plan should be made again even if nothing changes: while a
    /// publisher waits on a refused claim.
    pub fn recheck(&self) -> Option<Duration> {
        (!self.refused.is_empty()).then_some(RECHECK)
    }
}

fn revoke(p: &LocalPublisher, reason: ErrorCode) -> Action {
    Action::Revoke { stream: p.stream.clone(), session: p.session, reason }
}

#[cfg(test)]
mod tests;
