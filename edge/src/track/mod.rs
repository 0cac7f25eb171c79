//! Tracks: a [`TrackProducer`] fills a [`TrackBuffer`]; every [`TrackConsumer`] reads
//! it through its own cursor. Cloning a producer handle shares the track; each
//! `subscribe` is one more reader. The producer never waits on readers.

pub mod buffer;
mod lag;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ferry_proto::TrackInfo;
use tokio::sync::{watch, Notify};

pub use buffer::{BufferConfig, BufferStats, Cursor, Frame, Read, TrackBuffer};
use ferry_media::throttle::KeyframeThrottle;
pub use lag::LagBudget;

struct Shared {
    info: TrackInfo,
    buffer: Mutex<TrackBuffer>,
    /// Bumped on every change so readers wake; the value itself is unused.
    changed: watch::Sender<u64>,
    consumers: AtomicUsize,
    keyframe: Mutex<KeyframeThrottle>,
    keyframe_wanted: Notify,
}

impl Shared {
    fn buffer(&self) -> MutexGuard<'_, TrackBuffer> {
        // A panic while holding the lock cannot leave the buffer half-updated in a way
        // that breaks its invariants for readers, so keep serving.
        self.buffer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn request_keyframe(&self) -> bool {
        let allowed = self.keyframe.lock().unwrap_or_else(PoisonError::into_inner).request(Instant::now());
        if allowed {
            self.keyframe_wanted.notify_one();
        }
        allowed
    }

    fn modify(&self, f: impl FnOnce(&mut TrackBuffer) -> bool) -> bool {
        let changed = f(&mut self.buffer());
        if changed {
            self.changed.send_modify(|v| *v = v.wrapping_add(1));
        }
        changed
    }
}

/// The writing side of a track (a publisher's ingest, or an upstream relay).
#[derive(Clone)]
pub struct TrackProducer {
    shared: Arc<Shared>,
}

impl TrackProducer {
    /// A new, empty track.
    pub fn new(info: TrackInfo, config: BufferConfig) -> Self {
        let (changed, _) = watch::channel(0);
        Self {
            shared: Arc::new(Shared {
                info,
                buffer: Mutex::new(TrackBuffer::new(config)),
                changed,
                consumers: AtomicUsize::new(0),
                keyframe: Mutex::new(KeyframeThrottle::default()),
                keyframe_wanted: Notify::new(),
            }),
        }
    }

    /// The track's description.
    pub fn info(&self) -> &TrackInfo {
        &self.shared.info
    }

    /// Starts group `seq`; false if refused (duplicate or too old).
    pub fn begin_group(&self, seq: u64) -> bool {
        self.shared.modify(|b| b.begin_group(seq))
    }

    /// Appends a frame to group `seq`; false if dropped.
    pub fn push_frame(&self, seq: u64, frame: Frame) -> bool {
        self.shared.modify(|b| b.push_frame(seq, frame))
    }

    /// Marks group `seq` complete.
    pub fn end_group(&self, seq: u64) {
        self.shared.modify(|b| {
            b.end_group(seq);
            true
        });
    }

    /// Ends the track; readers drain what is buffered, then see [`Read::Closed`].
    pub fn close(&self) {
        self.shared.modify(|b| {
            b.close();
            true
        });
    }

    /// Whether the track ended.
    pub fn is_closed(&self) -> bool {
        self.shared.buffer().is_closed()
    }

    /// A new reader starting at the newest keyframe.
    pub fn subscribe(&self, max_lag: Duration) -> TrackConsumer {
        self.shared.consumers.fetch_add(1, Ordering::Relaxed);
        TrackConsumer {
            shared: Arc::clone(&self.shared),
            cursor: Cursor::new(max_lag),
            changed: self.shared.changed.subscribe(),
        }
    }

    /// Live readers.
    pub fn consumer_count(&self) -> usize {
        self.shared.consumers.load(Ordering::Relaxed)
    }

    /// Producer-side counters and the bytes held.
    pub fn stats(&self) -> (BufferStats, usize) {
        let buffer = self.shared.buffer();
        (buffer.stats(), buffer.bytes())
    }

    /// Waits until a reader asked for a keyframe (already throttled to one per
    /// [`KeyframeThrottle::MIN_INTERVAL`]). Cancel safe.
    pub async fn keyframe_requested(&self) {
        self.shared.keyframe_wanted.notified().await;
    }

    /// How long ago the newest group started (`None` before the first frame).
    pub fn newest_group_age(&self) -> Option<Duration> {
        let started = self.shared.buffer().newest_group_started()?;
        Some(Instant::now().saturating_duration_since(started))
    }

    /// Asks the producer for a keyframe on behalf of a remote reader; throttled.
    pub fn request_keyframe(&self) -> bool {
        self.shared.request_keyframe()
    }

    /// Whether two handles name the same track.
    pub fn same_track(&self, other: &TrackProducer) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

/// The reading side: one per subscriber, with its own cursor and latency budget.
pub struct TrackConsumer {
    shared: Arc<Shared>,
    cursor: Cursor,
    changed: watch::Receiver<u64>,
}

impl TrackConsumer {
    /// The track's description.
    pub fn info(&self) -> &TrackInfo {
        &self.shared.info
    }

    /// The next frame, skip or end of track. Never returns [`Read::Pending`].
    ///
    /// Cancel safe: the cursor only moves when a result is returned.
    pub async fn next(&mut self) -> Read {
        loop {
            self.changed.borrow_and_update();
            let read = self.shared.buffer().read(&mut self.cursor, Instant::now());
            if read != Read::Pending {
                return read;
            }
            if self.changed.changed().await.is_err() {
                // Every producer handle is gone without a close: treat as ended.
                return Read::Closed;
            }
        }
    }

    /// Abandons the rest of the current group (delivery stalled) and waits for the next.
    pub fn skip_current_group(&mut self) {
        self.cursor.skip_current_group();
    }

    /// Whether some of the current group has been read.
    pub fn mid_group(&self) -> bool {
        self.cursor.mid_group()
    }

    /// Groups skipped so far by this reader.
    pub fn skipped_groups(&self) -> u64 {
        self.cursor.skipped_groups()
    }

    /// The reader's latency budget.
    pub fn max_lag(&self) -> Duration {
        self.cursor.max_lag()
    }

    /// Follows `budget` if it moved (a rollout's treatment fell back): the frames read
    /// from now on are judged against the new budget.
    pub fn follow(&mut self, budget: &LagBudget) {
        let want = budget.current();
        if want != self.cursor.max_lag() {
            self.cursor.set_max_lag(want);
        }
    }

    /// Asks the producer for a keyframe; throttled per track. Returns whether the
    /// request went through.
    pub fn request_keyframe(&self) -> bool {
        self.shared.request_keyframe()
    }
}

impl Drop for TrackConsumer {
    fn drop(&mut self) {
        self.shared.consumers.fetch_sub(1, Ordering::Relaxed);
    }
}
