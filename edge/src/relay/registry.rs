//! The streams this edge knows: published here, or relayed from upstream.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Instant;

use ferry_proto::{ErrorCode, StreamName, TrackName};
use tokio_util::sync::CancellationToken;

use crate::metrics::EdgeMetrics;
use crate::track::TrackProducer;

/// Where a stream's frames come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A publisher on this edge's session `session`.
    Publisher { session: u64 },
    /// The upstream edge.
    Relay,
}

/// Ends a local publisher's session from outside it, with the reason the publisher
/// is told: `taken_over` (another publisher took the stream with a takeover grant)
/// or `stream_busy` (another edge holds the stream).
#[derive(Clone, Debug, Default)]
pub struct Revocation {
    cancel: CancellationToken,
    reason: Arc<OnceLock<ErrorCode>>,
}

impl Revocation {
    /// A revocation that also cancels `cancel` (the session's own token).
    pub fn new(cancel: CancellationToken) -> Self {
        Revocation { cancel, reason: Arc::default() }
    }

    /// Ends the session with `reason` (the first reason given wins).
    pub fn revoke(&self, reason: ErrorCode) {
        let _ = self.reason.set(reason);
        self.cancel.cancel();
    }

    /// Waits until the session is revoked; the reason.
    pub async fn revoked(&self) -> ErrorCode {
        self.cancel.cancelled().await;
        self.reason.get().copied().unwrap_or(ErrorCode::TakenOver)
    }
}

#[derive(Clone)]
struct Entry {
    source: Source,
    tracks: Vec<TrackProducer>,
    /// Ends the local publisher's session (another publisher holds the stream).
    revoke: Option<Revocation>,
    /// The local publisher's token grants a takeover.
    takeover: bool,
    /// When the stream was published (or first relayed) here.
    since: Instant,
}

/// Stream name → tracks. One lock, held only for map operations.
pub struct Registry {
    streams: Mutex<HashMap<StreamName, Entry>>,
    metrics: EdgeMetrics,
}

/// The streams an edge gossips (see [`Registry::stream_names`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Listed {
    pub origins: BTreeSet<String>,
    pub origins_unlisted: u64,
    pub carries: BTreeSet<String>,
}

/// Why a stream could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterError {
    /// Another publisher (or a relay) already provides this stream.
    Taken(Source),
}

impl Registry {
    pub fn new(metrics: EdgeMetrics) -> Self {
        Self { streams: Mutex::new(HashMap::new()), metrics }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<StreamName, Entry>> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update_gauge(&self, map: &HashMap<StreamName, Entry>) {
        self.metrics.streams.set(i64::try_from(map.len()).unwrap_or(i64::MAX));
    }

    /// Registers a locally published stream. `revoke` ends the publisher's session
    /// when another one takes the stream over; `takeover` lets this one replace a
    /// publisher that is live here.
    pub fn publish(
        &self,
        stream: &StreamName,
        session: u64,
        tracks: Vec<TrackProducer>,
        revoke: Revocation,
        takeover: bool,
    ) -> Result<(), RegisterError> {
        let mut map = self.map();
        if let Some(existing) = map.get(stream) {
            // A publisher takes over from a relayed copy (its origin died and the
            // publisher came here), from a stream whose tracks all ended, or — with
            // a takeover grant — from the live publisher, whose session ends.
            let stale = existing.tracks.iter().all(|t| t.is_closed());
            if existing.source != Source::Relay && !stale && !takeover {
                return Err(RegisterError::Taken(existing.source));
            }
            if let Some(old) = &existing.revoke {
                old.revoke(ErrorCode::TakenOver);
            }
            existing.tracks.iter().for_each(TrackProducer::close);
        }
        self.metrics.tracks_created.inc_by(tracks.len() as u64);
        let since = Instant::now();
        let entry =
            Entry { source: Source::Publisher { session }, tracks, revoke: Some(revoke), takeover, since };
        map.insert(stream.clone(), entry);
        self.update_gauge(&map);
        Ok(())
    }

    /// Adds a relayed track (creating the stream entry if needed). Returns the track
    /// already registered under that name, if another task won the race.
    pub fn add_relayed(&self, stream: &StreamName, track: TrackProducer) -> TrackProducer {
        let mut map = self.map();
        let entry = map.entry(stream.clone()).or_insert_with(|| Entry {
            source: Source::Relay,
            tracks: vec![],
            revoke: None,
            takeover: false,
            since: Instant::now(),
        });
        if let Some(existing) = entry.tracks.iter().find(|t| t.info().name == track.info().name) {
            return existing.clone();
        }
        entry.tracks.push(track.clone());
        self.metrics.tracks_created.inc();
        self.update_gauge(&map);
        track
    }

    /// The track `track` of `stream`, if this edge has it and it has not ended.
    pub fn find(&self, stream: &StreamName, track: &TrackName) -> Option<TrackProducer> {
        let map = self.map();
        let entry = map.get(stream)?;
        entry.tracks.iter().find(|t| &t.info().name == track && !t.is_closed()).cloned()
    }

    /// Whether the stream is known here (published or relayed) with a live track.
    pub fn has_stream(&self, stream: &StreamName) -> bool {
        self.map().get(stream).is_some_and(|e| e.tracks.iter().any(|t| !t.is_closed()))
    }

    /// Names of the streams with a live track, for gossip: at most `limit` originated
    /// here (those with viewers first, then the longest running, so a burst of new
    /// names never pushes watched streams out), how many more are left out, and at
    /// most `limit` relayed here.
    pub fn stream_names(&self, limit: usize) -> Listed {
        let map = self.map();
        let mut origins = Vec::new();
        let mut carries = Vec::new();
        for (name, entry) in map.iter() {
            if entry.tracks.iter().all(|t| t.is_closed()) {
                continue;
            }
            let watched = entry.tracks.iter().any(|t| t.consumer_count() > 0);
            let rank = (!watched, entry.since, name.as_str());
            match entry.source {
                Source::Publisher { .. } => origins.push(rank),
                Source::Relay => carries.push(rank),
            }
        }
        let unlisted = origins.len().saturating_sub(limit) as u64;
        let listed = |mut ranked: Vec<(bool, Instant, &str)>| -> BTreeSet<String> {
            ranked.sort_unstable();
            ranked.into_iter().take(limit).map(|(_, _, name)| name.to_owned()).collect()
        };
        Listed { origins: listed(origins), origins_unlisted: unlisted, carries: listed(carries) }
    }

    /// Ends the local publisher `session` of `stream` with `reason` (another
    /// publisher holds the stream).
    pub fn revoke(&self, stream: &str, session: u64, reason: ErrorCode) {
        let map = self.map();
        let entry = map.iter().find(|(name, _)| name.as_str() == stream).map(|(_, e)| e);
        if let Some(Entry { source: Source::Publisher { session: s }, revoke: Some(revoke), .. }) = entry {
            if *s == session {
                revoke.revoke(reason);
            }
        }
    }

    /// The publishers live here: (stream, session, whether its token grants a
    /// takeover).
    pub fn publishers(&self) -> Vec<(String, u64, bool)> {
        self.map()
            .iter()
            .filter(|(_, e)| e.tracks.iter().any(|t| !t.is_closed()))
            .filter_map(|(name, e)| match e.source {
                Source::Publisher { session } => Some((name.to_string(), session, e.takeover)),
                Source::Relay => None,
            })
            .collect()
    }

    /// Whether a publisher here is live on the stream (a track that has not ended).
    pub fn has_live_publisher(&self, stream: &StreamName) -> bool {
        self.map().get(stream).is_some_and(|e| {
            matches!(e.source, Source::Publisher { .. }) && e.tracks.iter().any(|t| !t.is_closed())
        })
    }

    /// Whether the stream is published locally (not relayed).
    pub fn is_local(&self, stream: &StreamName) -> bool {
        self.map().get(stream).is_some_and(|e| matches!(e.source, Source::Publisher { .. }))
    }

    /// Removes one track (ending it) if it is still the registered one; drops the
    /// stream when no track is left.
    pub fn remove_track(&self, stream: &StreamName, track: &TrackProducer) {
        track.close();
        let mut map = self.map();
        if let Some(entry) = map.get_mut(stream) {
            entry.tracks.retain(|t| !t.same_track(track));
            if entry.tracks.is_empty() {
                map.remove(stream);
            }
        }
        self.update_gauge(&map);
    }

    /// Removes a published stream if `session` still owns it, ending its tracks.
    pub fn unpublish(&self, stream: &StreamName, session: u64) {
        let mut map = self.map();
        if map.get(stream).is_some_and(|e| e.source == Source::Publisher { session }) {
            if let Some(entry) = map.remove(stream) {
                entry.tracks.iter().for_each(TrackProducer::close);
            }
        }
        self.update_gauge(&map);
    }

    /// Ends every track (shutdown): subscribers drain and finish.
    pub fn close_all(&self) {
        let mut map = self.map();
        for entry in map.values() {
            entry.tracks.iter().for_each(TrackProducer::close);
        }
        map.clear();
        self.update_gauge(&map);
    }

    /// Payload bytes held by all track buffers.
    pub fn buffered_bytes(&self) -> usize {
        self.map().values().flat_map(|e| e.tracks.iter()).map(|t| t.stats().1).sum()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

    use ferry_proto::{Codec, Timebase, TrackInfo, TrackKind};

    use super::*;
    use crate::track::buffer::BufferConfig;

    fn track() -> TrackProducer {
        let info = TrackInfo {
            name: TrackName::new("video").unwrap(),
            kind: TrackKind::Video,
            codec: Codec::Vp8,
            timebase: Timebase::MICROS,
            width: 0,
            height: 0,
        };
        TrackProducer::new(info, BufferConfig::default())
    }

    fn publish(registry: &Registry, name: &str, session: u64) -> TrackProducer {
        let t = track();
        let stream = StreamName::new(name).unwrap();
        registry.publish(&stream, session, vec![t.clone()], Revocation::default(), false).unwrap();
        t
    }

    #[test]
    fn gossip_lists_watched_streams_then_the_longest_running_when_there_are_too_many() {
        let registry = Registry::new(EdgeMetrics::default());
        let _old = publish(&registry, "live/old", 1);
        let watched = publish(&registry, "zz/watched", 2);
        let _viewer = watched.subscribe(std::time::Duration::from_secs(1));
        // A burst of new names, none watched.
        let _junk: Vec<TrackProducer> =
            (0..10).map(|i| publish(&registry, &format!("a/junk{i}"), 10 + i)).collect();
        let listed = registry.stream_names(2);
        assert_eq!(listed.origins, BTreeSet::from(["zz/watched".to_owned(), "live/old".to_owned()]));
        assert_eq!(listed.origins_unlisted, 10);
        let all = registry.stream_names(100);
        assert_eq!((all.origins.len(), all.origins_unlisted), (12, 0));
    }
}
