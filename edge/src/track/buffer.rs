//! The sans-IO track buffer: the newest groups of one track, bounded in count and
//! bytes, read by any number of cursors.
//!
//! The producer never waits: pushing a frame only appends and, when over a bound,
//! evicts the oldest group. A reader is a [`Cursor`] it owns (the buffer keeps no
//! per-reader state, so idle readers cost nothing here). A cursor whose next frame
//! is older than its `max_lag` jumps to the start of the newest group — a keyframe —
//! and counts the groups it skipped. Time comes in as `now`; nothing here reads a
//! clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_proto::FrameHeader;

/// Bytes a held frame costs besides its payload (its header, the payload handle and
/// its arrival time): counted against [`BufferConfig::max_bytes`] with the payload.
pub const FRAME_COST: usize = std::mem::size_of::<Frame>();

/// Bounds of one track buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferConfig {
    /// Groups kept (the newest ones). At least 1.
    pub max_groups: usize,
    /// Bytes of payload kept across all groups. The newest group is kept even when
    /// it alone is larger; frames that would grow it past this are dropped.
    pub max_bytes: usize,
}

impl Default for BufferConfig {
    fn default() -> Self {
        // Four 2-second GOPs of a 10 Mbps stream fit; the newest two always do.
        Self { max_groups: 4, max_bytes: 16 * 1024 * 1024 }
    }
}

/// One frame as stored: header, payload (shared, never copied per reader), and when
/// this process received it (for lag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub header: FrameHeader,
    pub payload: Bytes,
    pub received_at: Instant,
}

#[derive(Debug)]
struct Group {
    seq: u64,
    frames: Vec<Frame>,
    bytes: usize,
    /// No more frames will come (the group stream ended or was reset).
    complete: bool,
}

/// Counters of what the producer side did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BufferStats {
    pub groups_in: u64,
    pub frames_in: u64,
    pub bytes_in: u64,
    pub groups_evicted: u64,
    /// Frames refused because the newest group alone exceeded `max_bytes`, or
    /// because their group was already evicted or too old to keep.
    pub frames_dropped: u64,
}

/// A reader's position and latency budget. Cheap to create and to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The group to read next (the first group with `seq >= group`); `None` until the
    /// reader has a starting point.
    group: Option<u64>,
    /// The next frame within that group.
    index: usize,
    max_lag: Duration,
    skipped_groups: u64,
    skips: u64,
}

impl Cursor {
    /// A cursor that starts at the newest group's keyframe.
    pub fn new(max_lag: Duration) -> Self {
        Self { group: None, index: 0, max_lag, skipped_groups: 0, skips: 0 }
    }

    /// Groups skipped (whole or in part) because this reader fell behind.
    pub fn skipped_groups(&self) -> u64 {
        self.skipped_groups
    }

    /// Times this reader jumped forward.
    pub fn skips(&self) -> u64 {
        self.skips
    }

    /// The group this reader is in, if it started.
    pub fn group(&self) -> Option<u64> {
        self.group
    }

    /// The latency budget.
    pub fn max_lag(&self) -> Duration {
        self.max_lag
    }

    /// Changes the latency budget for the frames read from now on.
    pub fn set_max_lag(&mut self, max_lag: Duration) {
        self.max_lag = max_lag;
    }

    /// Whether some of the current group has been read (so abandoning it drops frames).
    pub fn mid_group(&self) -> bool {
        self.group.is_some() && self.index > 0
    }

    /// Abandons the rest of the current group (its delivery failed or stalled) and
    /// waits for the next one. Counts as a skip.
    pub fn skip_current_group(&mut self) {
        if let Some(group) = self.group {
            self.group = Some(group.saturating_add(1));
            self.index = 0;
            self.skipped_groups += 1;
            self.skips += 1;
        }
    }

    fn jump_to(&mut self, to: u64) -> Read {
        let from = self.group.unwrap_or(to);
        let groups = to.saturating_sub(from).max(1);
        self.group = Some(to);
        self.index = 0;
        self.skipped_groups += groups;
        self.skips += 1;
        Read::Skipped { from, to, groups }
    }
}

/// What a cursor read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// The next frame, in order.
    Frame { group: u64, index: usize, frame: Frame },
    /// The reader fell behind and jumped from group `from` to the start of group
    /// `to`; `groups` were skipped whole or in part.
    Skipped { from: u64, to: u64, groups: u64 },
    /// Nothing new yet.
    Pending,
    /// The track ended and the reader has seen all of it.
    Closed,
}

/// The newest groups of one track.
#[derive(Debug)]
pub struct TrackBuffer {
    config: BufferConfig,
    /// Ascending by `seq`.
    groups: VecDeque<Group>,
    bytes: usize,
    closed: bool,
    stats: BufferStats,
}

impl TrackBuffer {
    /// An empty buffer.
    pub fn new(config: BufferConfig) -> Self {
        let config = BufferConfig { max_groups: config.max_groups.max(1), ..config };
        Self { config, groups: VecDeque::new(), bytes: 0, closed: false, stats: BufferStats::default() }
    }

    /// Starts group `seq`. Groups normally arrive in order; an older group that is
    /// still newer than everything evicted is slotted in place. Returns false when the
    /// group is refused (a duplicate, or older than what the buffer keeps).
    pub fn begin_group(&mut self, seq: u64) -> bool {
        if self.closed {
            return false;
        }
        let pos = self.groups.partition_point(|g| g.seq < seq);
        if self.groups.get(pos).is_some_and(|g| g.seq == seq) {
            return false;
        }
        if pos == 0 && !self.groups.is_empty() && self.groups.len() >= self.config.max_groups {
            return false;
        }
        self.groups.insert(pos, Group { seq, frames: Vec::new(), bytes: 0, complete: false });
        self.stats.groups_in += 1;
        while self.groups.len() > self.config.max_groups {
            self.evict_oldest();
        }
        true
    }

    /// Appends a frame to group `seq`. Returns false if it was dropped.
    pub fn push_frame(&mut self, seq: u64, frame: Frame) -> bool {
        let payload = frame.payload.len();
        // What holding the frame costs: its payload and its bookkeeping, so frames
        // without payload count too.
        let len = payload + FRAME_COST;
        let newest = self.groups.back().map(|g| g.seq);
        let only_group = self.groups.len() == 1;
        let over = self.bytes + len > self.config.max_bytes;
        let Some(group) = self.groups.iter_mut().find(|g| g.seq == seq && !g.complete) else {
            self.stats.frames_dropped += 1;
            return false;
        };
        if Some(seq) == newest && only_group && over {
            self.stats.frames_dropped += 1;
            return false;
        }
        group.frames.push(frame);
        group.bytes += len;
        self.bytes += len;
        self.stats.frames_in += 1;
        self.stats.bytes_in += payload as u64;
        while self.bytes > self.config.max_bytes && self.groups.len() > 1 {
            self.evict_oldest();
        }
        true
    }

    /// Marks group `seq` complete: readers move past it once they read its frames.
    pub fn end_group(&mut self, seq: u64) {
        if let Some(group) = self.groups.iter_mut().find(|g| g.seq == seq) {
            group.complete = true;
        }
    }

    /// Ends the track: every group is complete, no new ones are accepted.
    pub fn close(&mut self) {
        self.closed = true;
        for group in &mut self.groups {
            group.complete = true;
        }
    }

    /// Whether the track ended.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Bytes held: payloads plus [`FRAME_COST`] per frame.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Groups held.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// The newest group's sequence number.
    pub fn newest_group(&self) -> Option<u64> {
        self.groups.back().map(|g| g.seq)
    }

    /// When the newest group's first frame arrived (how stale a joiner's start is).
    pub fn newest_group_started(&self) -> Option<Instant> {
        self.groups.back()?.frames.first().map(|f| f.received_at)
    }

    /// Producer-side counters.
    pub fn stats(&self) -> BufferStats {
        self.stats
    }

    fn evict_oldest(&mut self) {
        if let Some(old) = self.groups.pop_front() {
            self.bytes -= old.bytes;
            self.stats.groups_evicted += 1;
        }
    }

    /// Reads the next item for `cursor` at time `now`, applying the lag policy.
    pub fn read(&self, cursor: &mut Cursor, now: Instant) -> Read {
        // Bounded: each pass either returns or moves the cursor to a later group.
        for _ in 0..=self.groups.len() + 1 {
            let Some(newest) = self.groups.back() else {
                return if self.closed { Read::Closed } else { Read::Pending };
            };
            let Some(want) = cursor.group else {
                cursor.group = Some(newest.seq);
                cursor.index = 0;
                continue;
            };
            let oldest = self.groups.front().map_or(newest.seq, |g| g.seq);
            if want < oldest {
                // Our group was evicted under us.
                return cursor.jump_to(newest.seq);
            }
            let pos = self.groups.partition_point(|g| g.seq < want);
            let Some(group) = self.groups.get(pos) else {
                // Waiting for a group that has not begun.
                return if self.closed { Read::Closed } else { Read::Pending };
            };
            if group.seq != want {
                // A gap left by upstream: move on to what exists.
                cursor.group = Some(group.seq);
                cursor.index = 0;
            }
            let behind_newest = group.seq < newest.seq;
            match group.frames.get(cursor.index) {
                Some(frame) => {
                    if behind_newest && now.saturating_duration_since(frame.received_at) > cursor.max_lag {
                        return cursor.jump_to(newest.seq);
                    }
                    cursor.index += 1;
                    return Read::Frame { group: group.seq, index: cursor.index - 1, frame: frame.clone() };
                }
                None if group.complete => match self.groups.get(pos + 1) {
                    Some(next) => {
                        cursor.group = Some(next.seq);
                        cursor.index = 0;
                    }
                    None if self.closed => return Read::Closed,
                    None => {
                        cursor.group = Some(group.seq.saturating_add(1));
                        cursor.index = 0;
                        return Read::Pending;
                    }
                },
                None => {
                    let stale = group
                        .frames
                        .last()
                        .is_some_and(|f| now.saturating_duration_since(f.received_at) > cursor.max_lag);
                    if behind_newest && stale {
                        return cursor.jump_to(newest.seq);
                    }
                    return Read::Pending;
                }
            }
        }
        Read::Pending
    }
}

#[cfg(test)]
mod tests;
