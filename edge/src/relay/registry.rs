//! The streams this edge knows: published here, or relayed from upstream.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

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
}

/// Stream name → tracks. One lock, held only for map operations.
pub struct Registry {
    streams: Mutex<HashMap<StreamName, Entry>>,
    metrics: EdgeMetrics,
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
        let entry = Entry { source: Source::Publisher { session }, tracks, revoke: Some(revoke), takeover };
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

    /// Names of the streams with a live track: (originated here, relayed here).
    pub fn stream_names(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        let mut origins = BTreeSet::new();
        let mut relayed = BTreeSet::new();
        for (name, entry) in self.map().iter() {
            if entry.tracks.iter().all(|t| t.is_closed()) {
                continue;
            }
            match entry.source {
                Source::Publisher { .. } => origins.insert(name.to_string()),
                Source::Relay => relayed.insert(name.to_string()),
            };
        }
        (origins, relayed)
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
