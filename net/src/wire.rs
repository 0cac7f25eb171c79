//! Reading and writing the relay protocol on quinn streams: the async edge of the
//! pure codec in `ferry_proto::codec`.

use bytes::{Bytes, BytesMut};
use ferry_proto::{
    decode_body, decode_frame_header, decode_length, encode_frame_header, encode_message, FrameHeader,
    Message, FRAME_HEADER_LEN, LENGTH_PREFIX_LEN,
};
use quinn::{ReadExactError, RecvStream, SendStream};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Result;

/// Reads `N` bytes; `Ok(None)` if the stream ended cleanly before the first byte.
async fn read_array<const N: usize>(recv: &mut RecvStream) -> Result<Option<[u8; N]>> {
    let mut buf = [0u8; N];
    match recv.read_exact(&mut buf).await {
        Ok(()) => Ok(Some(buf)),
        Err(ReadExactError::FinishedEarly(0)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Reads one enveloped message of at most `limit` bytes. `Ok(None)` on a clean end
/// of stream between messages.
///
/// Not cancel safe: a cancelled read leaves the stream mid-message. Callers keep one
/// reader per stream running to completion.
pub async fn read_message<T: DeserializeOwned>(
    recv: &mut RecvStream,
    limit: usize,
) -> Result<Option<(u16, T)>> {
    let Some(prefix) = read_array::<LENGTH_PREFIX_LEN>(recv).await? else {
        return Ok(None);
    };
    let len = decode_length(prefix, limit)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(Some(decode_body(&body)?))
}

/// Writes one enveloped message.
pub async fn write_message<T: Serialize>(send: &mut SendStream, version: u16, msg: &T) -> Result<()> {
    let bytes = encode_message(version, msg)?;
    send.write_all(&bytes).await?;
    Ok(())
}

/// Reads one frame (header and payload of at most `max_payload` bytes). `Ok(None)`
/// on a clean end of the group stream.
pub async fn read_frame(recv: &mut RecvStream, max_payload: usize) -> Result<Option<(FrameHeader, Bytes)>> {
    let Some(raw) = read_array::<FRAME_HEADER_LEN>(recv).await? else {
        return Ok(None);
    };
    let header = decode_frame_header(raw, max_payload)?;
    let len = usize::try_from(header.len).unwrap_or(usize::MAX);
    let mut payload = BytesMut::zeroed(len);
    recv.read_exact(&mut payload).await?;
    Ok(Some((header, payload.freeze())))
}

/// Writes one frame. The payload is shared, not copied.
pub async fn write_frame(send: &mut SendStream, header: &FrameHeader, payload: &Bytes) -> Result<()> {
    let head = Bytes::copy_from_slice(&encode_frame_header(header));
    let mut chunks = [head, payload.clone()];
    send.write_all_chunks(&mut chunks).await?;
    Ok(())
}

/// Writes queued control messages until the queue closes or `cancel` fires, then
/// flushes what is still queued (GOAWAY, SUBSCRIBE_DONE) and finishes the stream.
/// A broken stream cancels `cancel`: the peer can no longer be told anything.
pub async fn pump_control(
    mut send: SendStream,
    mut rx: mpsc::Receiver<Message>,
    version: u16,
    cancel: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => break,
            msg = rx.recv() => match msg { Some(msg) => msg, None => break },
        };
        if write_message(&mut send, version, &msg).await.is_err() {
            cancel.cancel();
            return;
        }
    }
    while let Ok(msg) = rx.try_recv() {
        if write_message(&mut send, version, &msg).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}
