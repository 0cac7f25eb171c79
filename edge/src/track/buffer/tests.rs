use super::*;
use ferry_proto::FrameFlags;

const LAG: Duration = Duration::from_millis(500);

/// A fake clock: a fixed origin plus a controlled offset.
struct Clock {
    origin: Instant,
    offset: Duration,
}

impl Clock {
    fn new() -> Self {
        Self { origin: Instant::now(), offset: Duration::ZERO }
    }
    fn now(&self) -> Instant {
        self.origin + self.offset
    }
    fn advance(&mut self, by: Duration) {
        self.offset += by;
    }
}

fn frame(at: Instant, key: bool, pts: u64, len: usize) -> Frame {
    let flags = if key { FrameFlags::KEYFRAME } else { FrameFlags::empty() };
    Frame {
        header: FrameHeader { pts, flags, len: len as u32 },
        payload: Bytes::from(vec![pts as u8; len]),
        received_at: at,
    }
}

/// Pushes `groups` GOPs of `per_group` frames, 33 ms apart, reading with `readers`
/// after every frame; returns (group, pts) seen by each reader.
fn drain(buffer: &TrackBuffer, cursor: &mut Cursor, now: Instant, out: &mut Vec<(u64, u64)>) {
    loop {
        match buffer.read(cursor, now) {
            Read::Frame { group, frame, .. } => out.push((group, frame.header.pts)),
            Read::Skipped { .. } => {}
            Read::Pending | Read::Closed => break,
        }
    }
}

#[test]
fn fast_readers_see_every_frame_in_order() {
    let mut clock = Clock::new();
    let mut buffer = TrackBuffer::new(BufferConfig::default());
    buffer.begin_group(0);
    let mut readers = [Cursor::new(LAG); 3];
    let mut seen = vec![Vec::new(); 3];
    let mut pts = 0;
    for g in 0..5u64 {
        if g > 0 {
            buffer.end_group(g - 1);
            buffer.begin_group(g);
        }
        for i in 0..30 {
            buffer.push_frame(g, frame(clock.now(), i == 0, pts, 1000));
            pts += 1;
            clock.advance(Duration::from_millis(33));
            for (cursor, out) in readers.iter_mut().zip(seen.iter_mut()) {
                drain(&buffer, cursor, clock.now(), out);
            }
        }
    }
    for (cursor, out) in readers.iter().zip(&seen) {
        let expected: Vec<u64> = (0..150).collect();
        assert_eq!(out.iter().map(|(_, p)| *p).collect::<Vec<_>>(), expected);
        assert_eq!(cursor.skipped_groups(), 0);
    }
}

#[test]
fn slow_reader_skips_to_the_newest_keyframe_and_counts_it() {
    let mut clock = Clock::new();
    let mut buffer = TrackBuffer::new(BufferConfig::default());
    let mut slow = Cursor::new(LAG);
    buffer.begin_group(0);
    buffer.push_frame(0, frame(clock.now(), true, 0, 100));
    // The slow reader reads one frame, then stalls while three more groups arrive.
    assert!(matches!(buffer.read(&mut slow, clock.now()), Read::Frame { group: 0, .. }));
    let mut pts = 1;
    for g in 0..3u64 {
        for i in 0..30 {
            buffer.push_frame(g, frame(clock.now(), i == 0 && g > 0, pts, 100));
            pts += 1;
            clock.advance(Duration::from_millis(33));
        }
        buffer.end_group(g);
        buffer.begin_group(g + 1);
    }
    buffer.push_frame(3, frame(clock.now(), true, pts, 100));
    let read = buffer.read(&mut slow, clock.now());
    assert_eq!(read, Read::Skipped { from: 0, to: 3, groups: 3 });
    match buffer.read(&mut slow, clock.now()) {
        Read::Frame { group: 3, index: 0, frame } => assert!(frame.header.is_keyframe()),
        other => panic!("expected the keyframe of group 3, got {other:?}"),
    }
    assert_eq!(slow.skipped_groups(), 3);
    assert_eq!(slow.skips(), 1);
}

#[test]
fn reader_within_budget_is_not_skipped_even_when_behind() {
    let clock = Clock::new();
    let mut buffer = TrackBuffer::new(BufferConfig::default());
    let mut reader = Cursor::new(LAG);
    buffer.begin_group(0);
    buffer.push_frame(0, frame(clock.now(), true, 0, 10));
    buffer.end_group(0);
    buffer.begin_group(1);
    buffer.push_frame(1, frame(clock.now(), true, 1, 10));
    let mut out = Vec::new();
    reader.group = Some(0);
    drain(&buffer, &mut reader, clock.now(), &mut out);
    assert_eq!(out, vec![(0, 0), (1, 1)]);
}

#[test]
fn late_joiner_starts_at_the_newest_keyframe() {
    let clock = Clock::new();
    let mut buffer = TrackBuffer::new(BufferConfig::default());
    for g in 0..3u64 {
        buffer.begin_group(g);
        buffer.push_frame(g, frame(clock.now(), true, g * 10, 10));
        buffer.push_frame(g, frame(clock.now(), false, g * 10 + 1, 10));
        buffer.end_group(g);
    }
    buffer.begin_group(3);
    buffer.push_frame(3, frame(clock.now(), true, 30, 10));
    buffer.push_frame(3, frame(clock.now(), false, 31, 10));
    let mut late = Cursor::new(LAG);
    match buffer.read(&mut late, clock.now()) {
        Read::Frame { group: 3, index: 0, frame } => {
            assert!(frame.header.is_keyframe());
            assert_eq!(frame.header.pts, 30);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(late.skipped_groups(), 0);
}

#[test]
fn memory_is_bounded_whatever_the_readers() {
    let mut clock = Clock::new();
    let config = BufferConfig { max_groups: 4, max_bytes: 200_000 };
    let mut buffer = TrackBuffer::new(config);
    // 1,000 idle readers that never read: they hold only their cursors.
    let idle: Vec<Cursor> = (0..1000).map(|_| Cursor::new(LAG)).collect();
    for g in 0..50u64 {
        buffer.begin_group(g);
        for i in 0..30 {
            buffer.push_frame(g, frame(clock.now(), i == 0, g * 30 + i, 3000));
            clock.advance(Duration::from_millis(33));
            assert!(buffer.bytes() <= config.max_bytes);
            assert!(buffer.group_count() <= config.max_groups);
        }
        buffer.end_group(g);
    }
    assert!(buffer.stats().groups_evicted >= 46);
    // An idle reader that wakes up lands on the newest keyframe.
    let mut reader = idle[0];
    match buffer.read(&mut reader, clock.now()) {
        Read::Frame { group: 49, index: 0, .. } => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn reader_whose_group_was_evicted_jumps_forward() {
    let clock = Clock::new();
    let mut buffer = TrackBuffer::new(BufferConfig { max_groups: 2, max_bytes: 1 << 20 });
    let mut reader = Cursor::new(Duration::from_secs(3600));
    buffer.begin_group(0);
    buffer.push_frame(0, frame(clock.now(), true, 0, 10));
    buffer.push_frame(0, frame(clock.now(), false, 1, 10));
    assert!(matches!(buffer.read(&mut reader, clock.now()), Read::Frame { group: 0, .. }));
    for g in 1..4 {
        buffer.end_group(g - 1);
        buffer.begin_group(g);
        buffer.push_frame(g, frame(clock.now(), true, g * 10, 10));
    }
    assert_eq!(buffer.read(&mut reader, clock.now()), Read::Skipped { from: 0, to: 3, groups: 3 });
}

#[test]
fn oversized_newest_group_drops_frames_instead_of_growing() {
    let clock = Clock::new();
    let per_frame = 100 + FRAME_COST;
    let mut buffer = TrackBuffer::new(BufferConfig { max_groups: 4, max_bytes: 10 * per_frame });
    buffer.begin_group(0);
    for i in 0..20 {
        buffer.push_frame(0, frame(clock.now(), i == 0, i, 100));
    }
    assert_eq!(buffer.bytes(), 10 * per_frame);
    assert_eq!(buffer.stats().frames_dropped, 10);
    assert_eq!(buffer.stats().bytes_in, 1000, "payload bytes");
}

#[test]
fn frames_without_payload_count_against_the_bound() {
    let clock = Clock::new();
    let mut buffer = TrackBuffer::new(BufferConfig { max_groups: 4, max_bytes: 100 * FRAME_COST });
    buffer.begin_group(0);
    for i in 0..100_000 {
        buffer.push_frame(0, frame(clock.now(), i == 0, i, 0));
    }
    assert_eq!(buffer.bytes(), 100 * FRAME_COST);
    assert_eq!(buffer.stats().frames_in, 100);
    assert_eq!(buffer.stats().frames_dropped, 100_000 - 100);
}

#[test]
fn closed_track_drains_then_reports_closed() {
    let clock = Clock::new();
    let mut buffer = TrackBuffer::new(BufferConfig::default());
    let mut reader = Cursor::new(LAG);
    buffer.begin_group(0);
    buffer.push_frame(0, frame(clock.now(), true, 0, 10));
    buffer.close();
    assert!(matches!(buffer.read(&mut reader, clock.now()), Read::Frame { .. }));
    assert_eq!(buffer.read(&mut reader, clock.now()), Read::Closed);
    assert!(!buffer.begin_group(1));
}

#[test]
fn skip_current_group_waits_for_the_next_group() {
    let clock = Clock::new();
    let mut buffer = TrackBuffer::new(BufferConfig::default());
    let mut reader = Cursor::new(LAG);
    buffer.begin_group(5);
    buffer.push_frame(5, frame(clock.now(), true, 0, 10));
    buffer.push_frame(5, frame(clock.now(), false, 1, 10));
    assert!(matches!(buffer.read(&mut reader, clock.now()), Read::Frame { group: 5, .. }));
    reader.skip_current_group();
    assert_eq!(buffer.read(&mut reader, clock.now()), Read::Pending);
    buffer.end_group(5);
    buffer.begin_group(6);
    buffer.push_frame(6, frame(clock.now(), true, 2, 10));
    assert!(matches!(buffer.read(&mut reader, clock.now()), Read::Frame { group: 6, index: 0, .. }));
    assert_eq!(reader.skipped_groups(), 1);
}

#[test]
fn out_of_order_group_start_is_slotted_in_place() {
    let clock = Clock::new();
    let mut buffer = TrackBuffer::new(BufferConfig::default());
    let mut reader = Cursor::new(LAG);
    buffer.begin_group(0);
    buffer.push_frame(0, frame(clock.now(), true, 0, 10));
    assert!(matches!(buffer.read(&mut reader, clock.now()), Read::Frame { group: 0, .. }));
    buffer.begin_group(2);
    buffer.begin_group(1);
    buffer.push_frame(2, frame(clock.now(), true, 20, 10));
    buffer.push_frame(1, frame(clock.now(), true, 10, 10));
    buffer.end_group(0);
    buffer.end_group(1);
    let mut out = Vec::new();
    drain(&buffer, &mut reader, clock.now(), &mut out);
    assert_eq!(out, vec![(1, 10), (2, 20)]);
    assert!(!buffer.begin_group(1), "duplicates are refused");
}

#[test]
fn newest_group_start_time_is_its_first_frame() {
    let mut clock = Clock::new();
    let mut buffer = TrackBuffer::new(BufferConfig::default());
    assert_eq!(buffer.newest_group_started(), None);
    buffer.begin_group(0);
    let t0 = clock.now();
    buffer.push_frame(0, frame(t0, true, 0, 10));
    clock.advance(Duration::from_millis(100));
    buffer.push_frame(0, frame(clock.now(), false, 1, 10));
    assert_eq!(buffer.newest_group_started(), Some(t0));
}

#[test]
fn a_reader_whose_budget_shrinks_skips_from_its_next_read() {
    let mut clock = Clock::new();
    let mut buffer = TrackBuffer::new(BufferConfig::default());
    let mut reader = Cursor::new(Duration::from_secs(20));
    buffer.begin_group(0);
    buffer.push_frame(0, frame(clock.now(), true, 0, 10));
    assert!(matches!(buffer.read(&mut reader, clock.now()), Read::Frame { group: 0, .. }));
    // Two seconds of frames pile up behind the reader, in two more groups.
    let mut pts = 1;
    for g in 0..3u64 {
        for i in 0..30 {
            if g > 0 || i > 0 {
                buffer.push_frame(g, frame(clock.now(), i == 0, pts, 10));
                pts += 1;
            }
            clock.advance(Duration::from_millis(33));
        }
        if g < 2 {
            buffer.end_group(g);
            buffer.begin_group(g + 1);
        }
    }
    // Within a 20 s budget it reads on in order.
    assert!(matches!(buffer.read(&mut reader, clock.now()), Read::Frame { group: 0, index: 1, .. }));
    // The budget falls back to 500 ms: the next read jumps to the newest group.
    reader.set_max_lag(LAG);
    assert_eq!(buffer.read(&mut reader, clock.now()), Read::Skipped { from: 0, to: 2, groups: 2 });
    assert_eq!(reader.skipped_groups(), 2);
}
