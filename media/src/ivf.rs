//! The IVF container: a 32-byte file header, then frames each prefixed by a
//! 12-byte header (payload size, presentation timestamp). All integers are
//! little-endian.
//!
//! IVF is what Ferry's clients read from and write to disk: it is the simplest
//! container that carries VP8/VP9/AV1 (and, by convention, H.264) frame by frame
//! with timestamps, so a track maps onto it one frame per IVF frame.

use bytes::Bytes;
use ferry_proto::Timebase;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};

use crate::{MediaError, Result};

/// Size of the IVF file header.
pub const FILE_HEADER_LEN: usize = 32;
/// Size of the header in front of every frame.
pub const FRAME_HEADER_LEN: usize = 12;
/// The signature every IVF file starts with.
pub const SIGNATURE: [u8; 4] = *b"DKIF";
/// Offset of the frame-count field, patched once the number of frames is known.
const FRAME_COUNT_OFFSET: u64 = 24;

/// The parsed IVF file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IvfHeader {
    /// Codec fourcc, e.g. `VP80`; see [`ferry_proto::Codec::from_ivf_fourcc`].
    pub fourcc: [u8; 4],
    pub width: u16,
    pub height: u16,
    /// Frame timestamps count ticks of `num / den` seconds.
    pub timebase: Timebase,
    /// Number of frames as written by the producer; live writers often leave it 0,
    /// so readers must not trust it.
    pub frame_count: u32,
}

impl IvfHeader {
    /// Parses and validates a file header.
    pub fn parse(bytes: &[u8; FILE_HEADER_LEN]) -> Result<IvfHeader> {
        if field::<4>(bytes, 0) != SIGNATURE {
            return Err(MediaError::BadIvfSignature);
        }
        let version = u16::from_le_bytes(field(bytes, 4));
        if version != 0 {
            return Err(MediaError::UnsupportedIvf(format!("version {version}")));
        }
        let header_len = u16::from_le_bytes(field(bytes, 6));
        if usize::from(header_len) != FILE_HEADER_LEN {
            return Err(MediaError::UnsupportedIvf(format!("header length {header_len}")));
        }
        // IVF stores the rate (denominator) before the scale (numerator).
        let den = u32::from_le_bytes(field(bytes, 16));
        let num = u32::from_le_bytes(field(bytes, 20));
        if num == 0 || den == 0 {
            // A zero timebase makes every timestamp meaningless; refuse early rather
            // than emit frames whose times cannot be converted.
            return Err(MediaError::UnsupportedIvf(format!("timebase {num}/{den}")));
        }
        Ok(IvfHeader {
            fourcc: field(bytes, 8),
            width: u16::from_le_bytes(field(bytes, 12)),
            height: u16::from_le_bytes(field(bytes, 14)),
            timebase: Timebase { num, den },
            frame_count: u32::from_le_bytes(field(bytes, 24)),
        })
    }

    /// Encodes the header as it appears at the start of a file.
    pub fn encode(&self) -> [u8; FILE_HEADER_LEN] {
        let mut out = [0u8; FILE_HEADER_LEN];
        put(&mut out, 0, &SIGNATURE);
        put(&mut out, 4, &0u16.to_le_bytes());
        put(&mut out, 6, &(FILE_HEADER_LEN as u16).to_le_bytes());
        put(&mut out, 8, &self.fourcc);
        put(&mut out, 12, &self.width.to_le_bytes());
        put(&mut out, 14, &self.height.to_le_bytes());
        put(&mut out, 16, &self.timebase.den.to_le_bytes());
        put(&mut out, 20, &self.timebase.num.to_le_bytes());
        put(&mut out, 24, &self.frame_count.to_le_bytes());
        // Bytes 28..32 are reserved and stay zero.
        out
    }
}

/// Copies `N` bytes starting at `offset`; bytes past the end read as zero.
/// Offsets are constants inside the fixed-size header, so the fallback never
/// happens, but it keeps parsing free of panicking indexing.
fn field<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    let mut out = [0u8; N];
    for (dst, src) in out.iter_mut().zip(bytes.iter().skip(offset)) {
        *dst = *src;
    }
    out
}

/// Writes `src` into `out` at `offset`, silently clipping at the end (see [`field`]).
fn put(out: &mut [u8], offset: usize, src: &[u8]) {
    for (dst, byte) in out.iter_mut().skip(offset).zip(src) {
        *dst = *byte;
    }
}

/// One IVF frame: its timestamp (in the file's timebase) and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IvfFrame {
    pub pts: u64,
    pub data: Bytes,
}

/// Reads frames from an IVF stream.
///
/// Not cancel safe: dropping a [`IvfReader::next_frame`] future midway loses the
/// bytes already consumed and leaves the reader misaligned. Poll it to completion
/// (e.g. outside of a `select!` branch that may be dropped).
#[derive(Debug)]
pub struct IvfReader<R: AsyncRead + Unpin> {
    reader: R,
    /// Largest payload accepted; a corrupt or hostile size field must not make us
    /// allocate gigabytes.
    max_frame: usize,
}

impl<R: AsyncRead + Unpin> IvfReader<R> {
    /// Reads and validates the file header; frames are then read with
    /// [`IvfReader::next_frame`].
    pub async fn open(mut reader: R, max_frame: usize) -> Result<(Self, IvfHeader)> {
        let mut bytes = [0u8; FILE_HEADER_LEN];
        reader.read_exact(&mut bytes).await.map_err(eof_is_truncation)?;
        let header = IvfHeader::parse(&bytes)?;
        Ok((IvfReader { reader, max_frame }, header))
    }

    /// The next frame, or `None` when the input ends exactly at a frame boundary.
    pub async fn next_frame(&mut self) -> Result<Option<IvfFrame>> {
        let mut head = [0u8; FRAME_HEADER_LEN];
        let mut filled = 0;
        // read_exact cannot tell "no more frames" from "cut inside a header", so
        // fill by hand and look at where EOF hit.
        while let Some(rest) = head.get_mut(filled..).filter(|rest| !rest.is_empty()) {
            let n = self.reader.read(rest).await?;
            if n == 0 {
                return if filled == 0 { Ok(None) } else { Err(MediaError::Truncated) };
            }
            filled += n;
        }
        let size = u32::from_le_bytes(field(&head, 0));
        let pts = u64::from_le_bytes(field(&head, 4));
        // u32 always fits usize on the 32/64-bit targets Ferry supports; saturate anyway.
        let len = usize::try_from(size).unwrap_or(usize::MAX);
        if len > self.max_frame {
            return Err(MediaError::FrameTooLarge { len, limit: self.max_frame });
        }
        let mut data = vec![0u8; len];
        self.reader.read_exact(&mut data).await.map_err(eof_is_truncation)?;
        Ok(Some(IvfFrame { pts, data: Bytes::from(data) }))
    }

    /// Gives back the underlying reader.
    pub fn into_inner(self) -> R {
        self.reader
    }
}

/// An EOF in the middle of a structure means the input was cut short.
fn eof_is_truncation(err: std::io::Error) -> MediaError {
    if err.kind() == std::io::ErrorKind::UnexpectedEof {
        MediaError::Truncated
    } else {
        MediaError::Io(err)
    }
}

/// Writes an IVF stream.
///
/// Not cancel safe: dropping a `write_frame` future midway may leave a partial
/// frame in the output.
#[derive(Debug)]
pub struct IvfWriter<W: AsyncWrite + Unpin> {
    writer: W,
    frames_written: u32,
}

impl<W: AsyncWrite + Unpin> IvfWriter<W> {
    /// Writes the file header (with `header.frame_count` as given; live writers
    /// pass 0 and call [`patch_frame_count`] at the end if the output is a file).
    pub async fn new(mut writer: W, header: &IvfHeader) -> Result<Self> {
        writer.write_all(&header.encode()).await?;
        Ok(IvfWriter { writer, frames_written: 0 })
    }

    /// Appends one frame. Payloads above `u32::MAX` bytes cannot be represented.
    pub async fn write_frame(&mut self, pts: u64, data: &[u8]) -> Result<()> {
        let size = u32::try_from(data.len()).map_err(|_| MediaError::FrameTooLarge {
            len: data.len(),
            limit: usize::try_from(u32::MAX).unwrap_or(usize::MAX),
        })?;
        let mut head = [0u8; FRAME_HEADER_LEN];
        put(&mut head, 0, &size.to_le_bytes());
        put(&mut head, 4, &pts.to_le_bytes());
        self.writer.write_all(&head).await?;
        self.writer.write_all(data).await?;
        self.frames_written = self.frames_written.saturating_add(1);
        Ok(())
    }

    /// Frames written so far (saturating), the value to patch into the header.
    pub fn frames_written(&self) -> u32 {
        self.frames_written
    }

    /// Flushes and returns the underlying writer.
    pub async fn finish(mut self) -> Result<W> {
        self.writer.flush().await?;
        Ok(self.writer)
    }
}

/// Rewrites the frame-count field of an IVF file written by [`IvfWriter`], then
/// restores the file position so further appends still land at the end.
pub async fn patch_frame_count(file: &mut tokio::fs::File, count: u32) -> Result<()> {
    let position = file.stream_position().await?;
    file.seek(std::io::SeekFrom::Start(FRAME_COUNT_OFFSET)).await?;
    file.write_all(&count.to_le_bytes()).await?;
    file.seek(std::io::SeekFrom::Start(position)).await?;
    file.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vp8_header() -> IvfHeader {
        IvfHeader {
            fourcc: *b"VP80",
            width: 1280,
            height: 720,
            timebase: Timebase { num: 1, den: 30 },
            frame_count: 0,
        }
    }

    fn frame_bytes(size: u32, pts: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = size.to_le_bytes().to_vec();
        out.extend_from_slice(&pts.to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn header_roundtrips_with_den_before_num() {
        let header =
            IvfHeader { frame_count: 7, timebase: Timebase { num: 1001, den: 30000 }, ..vp8_header() };
        let bytes = header.encode();
        assert_eq!(&bytes[0..4], b"DKIF");
        assert_eq!(&bytes[6..8], &32u16.to_le_bytes());
        assert_eq!(&bytes[16..20], &30000u32.to_le_bytes());
        assert_eq!(&bytes[20..24], &1001u32.to_le_bytes());
        assert_eq!(IvfHeader::parse(&bytes).unwrap(), header);
    }

    #[test]
    fn header_without_signature_is_refused() {
        let mut bytes = vp8_header().encode();
        bytes[0] = b'X';
        assert!(matches!(IvfHeader::parse(&bytes), Err(MediaError::BadIvfSignature)));
    }

    #[test]
    fn header_with_unknown_version_or_zero_timebase_is_unsupported() {
        let mut bytes = vp8_header().encode();
        bytes[4] = 1;
        assert!(matches!(IvfHeader::parse(&bytes), Err(MediaError::UnsupportedIvf(_))));
        let zero = IvfHeader { timebase: Timebase { num: 1, den: 0 }, ..vp8_header() };
        assert!(matches!(IvfHeader::parse(&zero.encode()), Err(MediaError::UnsupportedIvf(_))));
    }

    #[tokio::test]
    async fn reader_yields_frames_then_clean_eof() {
        let mut file = vp8_header().encode().to_vec();
        file.extend(frame_bytes(3, 0, b"abc"));
        file.extend(frame_bytes(0, 1, b""));
        file.extend(frame_bytes(2, 2, b"de"));
        let (mut reader, header) = IvfReader::open(&file[..], 1024).await.unwrap();
        assert_eq!(header, vp8_header());
        let mut got = Vec::new();
        while let Some(frame) = reader.next_frame().await.unwrap() {
            got.push((frame.pts, frame.data));
        }
        assert_eq!(
            got,
            vec![(0, Bytes::from_static(b"abc")), (1, Bytes::new()), (2, Bytes::from_static(b"de"))]
        );
        // EOF is sticky.
        assert!(reader.next_frame().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn reader_reports_truncation_inside_header_or_payload() {
        let mut file = vp8_header().encode().to_vec();
        file.extend(frame_bytes(4, 0, b"abcd"));
        let whole = file.len();
        for cut in [whole - 1, whole - 4, whole - 10] {
            let (mut reader, _) = IvfReader::open(&file[..cut], 1024).await.unwrap();
            assert!(matches!(reader.next_frame().await, Err(MediaError::Truncated)), "cut at {cut}");
        }
        assert!(matches!(IvfReader::open(&file[..20], 1024).await, Err(MediaError::Truncated)));
    }

    #[tokio::test]
    async fn reader_refuses_oversize_frame_before_reading_it() {
        let mut file = vp8_header().encode().to_vec();
        // Claims 4 GiB but carries nothing: must fail on the size, not allocate or hit EOF.
        file.extend(frame_bytes(u32::MAX, 0, b""));
        let (mut reader, _) = IvfReader::open(&file[..], 1 << 20).await.unwrap();
        let err = reader.next_frame().await.unwrap_err();
        assert!(
            matches!(err, MediaError::FrameTooLarge { len, limit } if len == u32::MAX as usize && limit == 1 << 20)
        );
    }

    #[tokio::test]
    async fn writer_output_reads_back_identically() {
        let frames: Vec<(u64, Vec<u8>)> =
            (0..5u64).map(|i| (i * 3, vec![i as u8; i as usize * 10])).collect();
        let mut writer = IvfWriter::new(Vec::new(), &vp8_header()).await.unwrap();
        for (pts, data) in &frames {
            writer.write_frame(*pts, data).await.unwrap();
        }
        assert_eq!(writer.frames_written(), 5);
        let bytes = writer.finish().await.unwrap();

        let (mut reader, header) = IvfReader::open(&bytes[..], 1024).await.unwrap();
        assert_eq!(header, vp8_header());
        let mut got = Vec::new();
        while let Some(frame) = reader.next_frame().await.unwrap() {
            got.push((frame.pts, frame.data.to_vec()));
        }
        assert_eq!(got, frames);
    }

    #[tokio::test]
    async fn patched_frame_count_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.ivf");
        let file = tokio::fs::File::create(&path).await.unwrap();
        let mut writer = IvfWriter::new(file, &vp8_header()).await.unwrap();
        writer.write_frame(0, b"one").await.unwrap();
        writer.write_frame(1, b"two").await.unwrap();
        let count = writer.frames_written();
        let mut file = writer.finish().await.unwrap();
        patch_frame_count(&mut file, count).await.unwrap();
        // Appends after patching still go to the end.
        file.write_all(&frame_bytes(1, 2, b"3")).await.unwrap();
        file.flush().await.unwrap();
        drop(file);

        let bytes = tokio::fs::read(&path).await.unwrap();
        let (mut reader, header) = IvfReader::open(&bytes[..], 1024).await.unwrap();
        assert_eq!(header.frame_count, 2);
        let mut n = 0;
        while reader.next_frame().await.unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 3);
    }
}
