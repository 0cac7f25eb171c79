//! The raw floor: the same bytes moved by a plain quinn sender → receiver pair in
//! this process, with the same TLS and transport settings as the relay. What the
//! relay costs per byte above this is Ferry's own overhead.

use anyhow::Context;
use ferry_media::synthetic::{SyntheticConfig, SyntheticSource};
use ferry_net::tls::{self, ClientTrust, ServerIdentity, TransportTuning};

/// Moves `total` bytes in synthetic-sized frames, one stream per group, as fast as
/// possible; returns CPU seconds (sender + receiver) per GB.
pub async fn run(total: u64, config: SyntheticConfig) -> anyhow::Result<f64> {
    let tuning = TransportTuning::default();
    let server =
        tls::server_config(&ServerIdentity::SelfSigned { names: vec!["localhost".into()] }, &tuning)?;
    let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse()?)?;
    let addr = endpoint.local_addr()?;
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    client.set_default_client_config(tls::client_config(&ClientTrust::Insecure, &tuning)?);

    // The receiver stops once it has every byte the sender will send (which is at
    // least `total`, rounded up to whole frames, known to the sender only): it reads
    // until the sender closes the connection after hearing back from us.
    let receiver = tokio::spawn(async move {
        let conn = endpoint.accept().await.context("no connection")?.await?;
        let mut received = 0u64;
        while let Ok(mut stream) = conn.accept_uni().await {
            while let Some(chunk) = stream.read_chunk(64 * 1024, true).await? {
                received += chunk.bytes.len() as u64;
            }
            if received >= total {
                break;
            }
        }
        conn.close(0u32.into(), b"received");
        endpoint.wait_idle().await;
        anyhow::Ok(received)
    });

    let cpu_before = super::cpu_seconds(std::process::id())?;
    let conn = client.connect(addr, "localhost")?.await?;
    let mut source = SyntheticSource::new(config);
    let mut sent = 0u64;
    let mut stream: Option<quinn::SendStream> = None;
    while sent < total {
        let frame = source.next_frame(0);
        if frame.keyframe || stream.is_none() {
            if let Some(mut s) = stream.take() {
                s.finish()?;
            }
            stream = Some(conn.open_uni().await?);
        }
        if let Some(s) = stream.as_mut() {
            s.write_all(&[0u8; 13]).await?;
            s.write_chunk(frame.payload.clone()).await?;
        }
        sent += 13 + frame.payload.len() as u64;
    }
    if let Some(mut s) = stream.take() {
        s.finish()?;
    }
    // The receiver closes the connection once it has read everything.
    let _ = conn.closed().await;
    let received = receiver.await??;
    let cpu = super::cpu_seconds(std::process::id())? - cpu_before;
    client.wait_idle().await;
    Ok(cpu / (received.max(1) as f64 / 1e9))
}
