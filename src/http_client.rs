//! A small HTTP/1.1 JSON client for `ferry ctl` and `ferry dev`: one request per connection
//! (`Connection: close`), `http://HOST:PORT` endpoints, bounded response size.

use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response body read (a full state resync fits).
const MAX_RESPONSE: u64 = 64 * 1024 * 1024;

/// A response: status and parsed JSON body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: serde_json::Value,
}

/// `host:port` of an `http://host:port[/]` URL.
pub fn authority(url: &str) -> anyhow::Result<&str> {
    let rest =
        url.strip_prefix("http://").with_context(|| format!("{url}: only http:// URLs are supported"))?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        bail!("{url}: expected http://HOST:PORT");
    }
    Ok(authority)
}

/// Sends one request and reads the whole response.
pub async fn request(
    base: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&serde_json::Value>,
    idempotency_key: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<Response> {
    let authority = authority(base)?;
    tokio::time::timeout(timeout, send(authority, method, path, token, body, idempotency_key))
        .await
        .with_context(|| format!("{base}: no answer within {timeout:?}"))?
}

async fn send(
    authority: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&serde_json::Value>,
    idempotency_key: Option<&str>,
) -> anyhow::Result<Response> {
    let mut stream =
        TcpStream::connect(authority).await.with_context(|| format!("cannot connect to {authority}"))?;
    let payload = body.map(serde_json::to_vec).transpose()?.unwrap_or_default();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\nConnection: close\r\nContent-Length: {}\r\n",
        payload.len()
    );
    if body.is_some() {
        head.push_str("Content-Type: application/json\r\n");
    }
    if let Some(key) = idempotency_key {
        head.push_str(&format!("Idempotency-Key: {key}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&payload).await?;
    let mut raw = Vec::new();
    (&mut stream).take(MAX_RESPONSE).read_to_end(&mut raw).await?;
    parse(&raw)
}

fn parse(raw: &[u8]) -> anyhow::Result<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").context("malformed HTTP response")?;
    let (head, body) = raw.split_at(split);
    let head = std::str::from_utf8(head).context("non-UTF-8 response head")?;
    let status: u16 =
        head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("response without a status")?;
    let body = body.get(4..).unwrap_or_default();
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked { dechunk(body)? } else { body.to_vec() };
    let body = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into()))
    };
    Ok(Response { status, body })
}

fn dechunk(mut body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").context("bad chunk")?;
        let size_text = std::str::from_utf8(body.get(..line_end).unwrap_or_default())?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)?;
        let start = line_end + 2;
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(body.get(start..start + size).context("truncated chunk")?);
        body = body.get(start + size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let r = parse(b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\n{\"a\":1}  ").unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.body["a"], 1);
        let r = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"b\r\n4\r\n\":2}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body["b"], 2);
        assert!(parse(b"garbage").is_err());
        assert_eq!(authority("http://127.0.0.1:9000/").unwrap(), "127.0.0.1:9000");
        assert!(authority("https://x:1").is_err());
    }
}
