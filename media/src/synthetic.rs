//! Ferry's generated test stream. Each payload carries a sequence number and the
//! wall-clock time it was produced, so a viewer can measure end-to-end latency and
//! spot gaps without any real codec.
//!
//! Payload layout (big-endian): `b"FRY1"`, seq `u64`, sent_at_unix_micros `u64`,
//! flags `u8` (bit 0 = keyframe), then deterministic filler up to the frame size.
//!
//! The source is sans-IO: it never reads a clock. The driver paces it with
//! `Instant`-based timers and passes the send time in.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

/// Magic at the start of every synthetic payload.
pub const MAGIC: [u8; 4] = *b"FRY1";
/// Bytes before the filler: magic, seq, send time, flags.
pub const HEADER: usize = 4 + 8 + 8 + 1;
/// Flag bit marking a keyframe.
const FLAG_KEYFRAME: u8 = 0b0000_0001;
/// Upper bound on one payload, so a mistyped bitrate cannot make the generator
/// allocate without limit. Real 4K keyframes stay well below this.
pub const MAX_PAYLOAD: usize = 16 * 1024 * 1024;
/// How much bigger a keyframe is than a delta frame, roughly like real encoders.
const KEYFRAME_WEIGHT: u64 = 3;

/// Shape of the generated stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticConfig {
    /// Target average bitrate in bits per second.
    pub bitrate_bps: u64,
    /// Frames per second (0 is treated as 1).
    pub fps: u32,
    /// Distance between keyframes.
    pub gop: Duration,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig { bitrate_bps: 2_500_000, fps: 30, gop: Duration::from_secs(2) }
    }
}

/// One generated frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticFrame {
    pub seq: u64,
    /// `seq` times the frame interval, in microseconds (computed as
    /// `seq * 1e6 / fps` so it does not drift at fractional intervals).
    pub pts_micros: u64,
    pub keyframe: bool,
    pub payload: Bytes,
}

/// What a viewer reads back from a synthetic payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntheticStamp {
    pub seq: u64,
    pub sent_at_unix_micros: u64,
    pub keyframe: bool,
}

/// Generates the synthetic stream, one frame per call.
#[derive(Debug, Clone)]
pub struct SyntheticSource {
    fps: u32,
    /// Frames per GOP (at least 1).
    gop_frames: u64,
    keyframe_len: usize,
    delta_len: usize,
    next_seq: u64,
    /// Position of the next frame inside its GOP; 0 means a keyframe.
    gop_position: u64,
}

impl SyntheticSource {
    /// A source whose frame sizes average `bitrate / fps / 8` bytes over a GOP.
    pub fn new(config: SyntheticConfig) -> Self {
        let fps = config.fps.max(1);
        let gop_frames = u64::try_from(config.gop.as_micros().saturating_mul(u128::from(fps)) / 1_000_000)
            .unwrap_or(u64::MAX)
            .max(1);
        let average = config.bitrate_bps / u64::from(fps) / 8;
        // A GOP is one keyframe of weight W plus (n - 1) deltas of weight 1, so the
        // delta size is n * average / (n - 1 + W); the keyframe takes the rounding
        // remainder so the GOP total is exactly n * average.
        let gop_bytes = u128::from(gop_frames) * u128::from(average);
        let delta = gop_bytes / (u128::from(gop_frames) - 1 + u128::from(KEYFRAME_WEIGHT));
        let keyframe = gop_bytes - delta * (u128::from(gop_frames) - 1);
        SyntheticSource {
            fps,
            gop_frames,
            keyframe_len: clamp_len(keyframe),
            delta_len: clamp_len(delta),
            next_seq: 0,
            gop_position: 0,
        }
    }

    /// Time between frames; drivers pace `next_frame` calls with it.
    pub fn frame_interval(&self) -> Duration {
        Duration::from_secs(1) / self.fps
    }

    /// Frames per GOP, including the keyframe.
    pub fn gop_frames(&self) -> u64 {
        self.gop_frames
    }

    /// Makes the next frame a keyframe that starts a new GOP (e.g. when a viewer
    /// joins and asks for one).
    pub fn force_keyframe(&mut self) {
        self.gop_position = 0;
    }

    /// Produces the next frame, stamped with the caller's wall-clock time.
    pub fn next_frame(&mut self, sent_at_unix_micros: u64) -> SyntheticFrame {
        let seq = self.next_seq;
        let keyframe = self.gop_position == 0;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.gop_position = (self.gop_position + 1) % self.gop_frames;

        let len = if keyframe { self.keyframe_len } else { self.delta_len };
        let mut payload = BytesMut::with_capacity(len);
        payload.put_slice(&MAGIC);
        payload.put_u64(seq);
        payload.put_u64(sent_at_unix_micros);
        payload.put_u8(if keyframe { FLAG_KEYFRAME } else { 0 });
        // Deterministic filler so captures are reproducible and diffable; truncation
        // to u8 is the point of the pattern.
        let seed = seq as u8;
        payload.extend((0..len.saturating_sub(HEADER)).map(|i| seed.wrapping_add(i as u8)));

        let pts = u128::from(seq) * 1_000_000 / u128::from(self.fps);
        SyntheticFrame {
            seq,
            pts_micros: u64::try_from(pts).unwrap_or(u64::MAX),
            keyframe,
            payload: payload.freeze(),
        }
    }
}

/// Payload length from a byte budget: never below the stamp, never above the cap.
fn clamp_len(bytes: u128) -> usize {
    usize::try_from(bytes).unwrap_or(usize::MAX).clamp(HEADER, MAX_PAYLOAD)
}

/// The payload behind a one-byte VP8 frame tag (bit 0 clear on keyframes), so WebRTC
/// carries synthetic frames as VP8. For benchmarks only: no decoder can show them.
pub fn vp8_framed(frame: &SyntheticFrame) -> Bytes {
    let mut payload = BytesMut::with_capacity(frame.payload.len() + 1);
    payload.put_u8(if frame.keyframe { 0x00 } else { 0x01 });
    payload.put_slice(&frame.payload);
    payload.freeze()
}

/// Reads the stamp of a [`vp8_framed`] payload.
pub fn parse_vp8_framed(payload: &[u8]) -> Option<SyntheticStamp> {
    parse(payload.get(1..)?)
}

/// Reads the stamp of a synthetic payload; `None` if it is not one.
pub fn parse(payload: &[u8]) -> Option<SyntheticStamp> {
    let (magic, rest) = payload.split_first_chunk::<4>()?;
    if *magic != MAGIC {
        return None;
    }
    let (seq, rest) = rest.split_first_chunk::<8>()?;
    let (sent_at, rest) = rest.split_first_chunk::<8>()?;
    let flags = rest.first()?;
    Some(SyntheticStamp {
        seq: u64::from_be_bytes(*seq),
        sent_at_unix_micros: u64::from_be_bytes(*sent_at),
        keyframe: flags & FLAG_KEYFRAME != 0,
    })
}

/// Microseconds since the Unix epoch, for stamping payloads.
///
/// Latency measured from these stamps across processes or machines is only as
/// good as their shared wall clock (NTP/PTP); all pacing and timeouts use
/// `Instant`, which is monotonic but means nothing outside this process. A clock
/// before 1970 reads as 0.
pub fn unix_micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyframes_arrive_once_per_gop() {
        let mut source = SyntheticSource::new(SyntheticConfig::default());
        assert_eq!(source.gop_frames(), 60);
        let keys: Vec<u64> =
            (0..180).map(|_| source.next_frame(0)).filter(|f| f.keyframe).map(|f| f.seq).collect();
        assert_eq!(keys, vec![0, 60, 120]);
    }

    #[test]
    fn gop_average_matches_bitrate_and_keyframes_are_three_times_bigger() {
        let config = SyntheticConfig::default();
        let mut source = SyntheticSource::new(config.clone());
        let frames: Vec<SyntheticFrame> = (0..60).map(|_| source.next_frame(0)).collect();
        let total: usize = frames.iter().map(|f| f.payload.len()).sum();
        let average = config.bitrate_bps / u64::from(config.fps) / 8;
        assert_eq!(total as u64, average * 60);
        let key = frames[0].payload.len() as f64;
        let delta = frames[1].payload.len() as f64;
        assert!((key / delta - 3.0).abs() < 0.01, "key {key} delta {delta}");
    }

    #[test]
    fn pts_and_interval_follow_fps() {
        let mut source = SyntheticSource::new(SyntheticConfig { fps: 30, ..SyntheticConfig::default() });
        assert_eq!(source.frame_interval(), Duration::from_secs(1) / 30);
        let pts: Vec<u64> = (0..31).map(|_| source.next_frame(0).pts_micros).collect();
        assert_eq!(pts[1], 33_333);
        assert_eq!(pts[30], 1_000_000);
    }

    #[test]
    fn forced_keyframe_restarts_the_gop() {
        let mut source = SyntheticSource::new(SyntheticConfig::default());
        assert!(source.next_frame(0).keyframe);
        assert!(!source.next_frame(0).keyframe);
        source.force_keyframe();
        let forced = source.next_frame(0);
        assert!(forced.keyframe);
        assert_eq!(forced.seq, 2);
        let next_key = (0..100).map(|_| source.next_frame(0)).find(|f| f.keyframe).unwrap();
        assert_eq!(next_key.seq, 62);
    }

    #[test]
    fn degenerate_configs_still_produce_stamped_frames() {
        let zero = SyntheticConfig { bitrate_bps: 0, fps: 0, gop: Duration::ZERO };
        let mut source = SyntheticSource::new(zero);
        assert_eq!(source.frame_interval(), Duration::from_secs(1));
        for _ in 0..3 {
            let frame = source.next_frame(0);
            assert!(frame.keyframe, "a zero GOP makes every frame a keyframe");
            assert_eq!(frame.payload.len(), HEADER);
        }
        let huge = SyntheticConfig { bitrate_bps: u64::MAX, fps: 1, gop: Duration::from_secs(1) };
        assert_eq!(SyntheticSource::new(huge).next_frame(0).payload.len(), MAX_PAYLOAD);
    }

    #[test]
    fn stamp_roundtrips_through_the_payload() {
        let mut source = SyntheticSource::new(SyntheticConfig::default());
        let key = source.next_frame(1_700_000_000_000_000);
        let delta = source.next_frame(1_700_000_000_033_333);
        assert_eq!(
            parse(&key.payload),
            Some(SyntheticStamp { seq: 0, sent_at_unix_micros: 1_700_000_000_000_000, keyframe: true })
        );
        assert_eq!(
            parse(&delta.payload),
            Some(SyntheticStamp { seq: 1, sent_at_unix_micros: 1_700_000_000_033_333, keyframe: false })
        );
        assert_eq!(parse(&key.payload[..HEADER - 1]), None);
        assert_eq!(parse(b"FRY0aaaaaaaaaaaaaaaaaaaaaa"), None);
    }

    #[test]
    fn wall_clock_is_after_2020() {
        assert!(unix_micros_now() > 1_577_836_800_000_000);
    }
}
