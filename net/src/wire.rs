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
    let body = read_exactly(recv, len).await?;
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
    Ok(Some((header, read_exactly(recv, len).await?)))
}

/// Reads exactly `len` bytes. Memory follows the bytes that arrive, never the length
/// the peer announced (a header claiming megabytes costs nothing until they come); a
/// payload that arrives in one chunk is kept as it came, without a copy.
pub async fn read_exactly(recv: &mut RecvStream, len: usize) -> Result<Bytes> {
    let mut buf = BytesMut::new();
    while buf.len() < len {
        let Some(chunk) = recv.read_chunk(len - buf.len(), true).await? else {
            return Err(ReadExactError::FinishedEarly(buf.len()).into());
        };
        if buf.is_empty() && chunk.bytes.len() == len {
            return Ok(chunk.bytes);
        }
        // Grow by doubling, capped at what is still due.
        if buf.capacity() - buf.len() < chunk.bytes.len() {
            buf.reserve(chunk.bytes.len().max(buf.len()).min(len - buf.len()));
        }
        buf.extend_from_slice(&chunk.bytes);
    }
    Ok(buf.freeze())
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    use super::*;
    use crate::tls::{client_config, server_config, ClientTrust, ServerIdentity, TransportTuning};

    /// The system allocator, noting the largest allocation the current thread asks for
    /// while it watches.
    struct Watching;

    thread_local! {
        static LARGEST: Cell<Option<usize>> = const { Cell::new(None) };
    }

    fn note(size: usize) {
        let _ = LARGEST.try_with(|l| {
            if let Some(max) = l.get() {
                l.set(Some(max.max(size)));
            }
        });
    }

    // SAFETY: every call goes to the system allocator unchanged; `note` only reads and
    // writes a thread-local `Cell` of plain integers and never allocates.
    unsafe impl GlobalAlloc for Watching {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            // SAFETY: the caller's contract is passed on as is.
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            // SAFETY: as above.
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note(new_size);
            // SAFETY: as above.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: as above.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static ALLOCATOR: Watching = Watching;

    /// A frame header claiming 8 MiB followed by 1,000 bytes and the end of the stream:
    /// the reader fails having allocated about what arrived, not what was claimed; a
    /// whole frame comes back intact.
    #[tokio::test(flavor = "current_thread")]
    async fn a_frame_costs_the_bytes_that_arrive_not_the_length_it_claims() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tuning = TransportTuning::default();
        let identity = ServerIdentity::SelfSigned { names: vec!["localhost".into()] };
        let server =
            quinn::Endpoint::server(server_config(&identity, &tuning).unwrap(), ([127, 0, 0, 1], 0).into())
                .unwrap();
        let mut client = quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).unwrap();
        client.set_default_client_config(client_config(&ClientTrust::Insecure, &tuning).unwrap());
        let addr = server.local_addr().unwrap();
        let (conn, accepted) =
            tokio::join!(async { client.connect(addr, "localhost").unwrap().await.unwrap() }, async {
                server.accept().await.unwrap().await.unwrap()
            });
        let claim = 8 * 1024 * 1024;
        let lying = FrameHeader { pts: 1, flags: ferry_proto::FrameFlags::empty(), len: claim };
        let honest = FrameHeader { pts: 2, flags: ferry_proto::FrameFlags::KEYFRAME, len: 300_000 };
        let payload = Bytes::from(vec![7u8; 300_000]);
        let mut send = conn.open_uni().await.unwrap();
        write_frame(&mut send, &honest, &payload).await.unwrap();
        send.finish().unwrap();
        let mut send = conn.open_uni().await.unwrap();
        send.write_all(&encode_frame_header(&lying)).await.unwrap();
        send.write_all(&[0u8; 1000]).await.unwrap();
        send.finish().unwrap();

        let mut recv = accepted.accept_uni().await.unwrap();
        let (header, got) = read_frame(&mut recv, claim as usize).await.unwrap().unwrap();
        assert_eq!((header, got), (honest, payload));

        let mut recv = accepted.accept_uni().await.unwrap();
        LARGEST.with(|l| l.set(Some(0)));
        let result = read_frame(&mut recv, claim as usize).await;
        let largest = LARGEST.with(|l| l.replace(None)).unwrap();
        assert!(result.is_err(), "a frame cut short is an error");
        assert!(largest < 64 * 1024, "allocated {largest} bytes for 1,000 that arrived");
    }
}
