//! A small HTTP/1.1 client: [`HttpConn`] (keep-alive, Content-Length or chunked
//! bodies, bounded size) for `ferry bench control`, and [`request`], one JSON request
//! to an `http://HOST:PORT` endpoint, for `ferry ctl`.

use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Largest response body read (a full state resync fits).
const MAX_RESPONSE: usize = 64 * 1024 * 1024;

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
    request_with(base, method, path, token, body, idempotency_key, &[], timeout).await
}

/// Like [`request`], with extra headers (e.g. a node's cluster-certificate proof).
#[allow(clippy::too_many_arguments)]
pub async fn request_with(
    base: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&serde_json::Value>,
    idempotency_key: Option<&str>,
    headers: &[(String, String)],
    timeout: Duration,
) -> anyhow::Result<Response> {
    let authority = authority(base)?;
    tokio::time::timeout(timeout, send(authority, method, path, token, body, idempotency_key, headers))
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
    headers: &[(String, String)],
) -> anyhow::Result<Response> {
    let payload = body.map(serde_json::to_vec).transpose()?;
    let mut conn = HttpConn::connect(authority, MAX_RESPONSE).await?;
    conn.extra_headers = headers.to_vec();
    let (status, body) = conn.request(method, path, token, idempotency_key, payload.as_deref()).await?;
    let body = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into()))
    };
    Ok(Response { status, body })
}

/// A minimal HTTP/1.1 client connection with keep-alive: one request at a time,
/// bodies framed by Content-Length or chunked encoding.
pub struct HttpConn {
    stream: BufReader<TcpStream>,
    host: String,
    /// False once the server asked to close or framing was lost.
    reusable: bool,
    /// Largest response body accepted.
    max_response: usize,
    /// Sent with every request on this connection.
    pub extra_headers: Vec<(String, String)>,
}

impl HttpConn {
    /// Connects to `addr` (`HOST:PORT`), accepting bodies of at most `max_response` bytes.
    pub async fn connect(addr: &str, max_response: usize) -> anyhow::Result<HttpConn> {
        let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
            .await
            .with_context(|| format!("connect to {addr} timed out"))?
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            stream: BufReader::new(stream),
            host: addr.to_owned(),
            reusable: true,
            max_response,
            extra_headers: Vec::new(),
        })
    }

    /// Whether another request may be sent on this connection.
    pub fn reusable(&self) -> bool {
        self.reusable
    }

    /// Sends one request and reads the whole response: (status, body).
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        token: &str,
        idempotency_key: Option<&str>,
        body: Option<&[u8]>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        self.reusable = false;
        let body = body.unwrap_or_default();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
             Connection: keep-alive\r\nContent-Length: {}\r\n",
            self.host,
            body.len()
        );
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        if let Some(k) = idempotency_key {
            head.push_str(&format!("Idempotency-Key: {k}\r\n"));
        }
        for (name, value) in &self.extra_headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        self.stream.get_mut().write_all(&request).await?;

        let status_line = self.line().await?;
        let mut parts = status_line.split_whitespace();
        let version = parts.next().unwrap_or_default().to_owned();
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {status_line:?}"))?;
        let mut keep_alive = version == "HTTP/1.1";
        let mut length: Option<usize> = None;
        let mut chunked = false;
        loop {
            let line = self.line().await?;
            if line.is_empty() {
                break;
            }
            let Some((name, value)) = line.split_once(':') else { continue };
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_ascii_lowercase());
            match name.as_str() {
                "content-length" => length = Some(value.parse().context("bad Content-Length")?),
                "transfer-encoding" => chunked = value.contains("chunked"),
                "connection" if value.contains("close") => keep_alive = false,
                "connection" if value.contains("keep-alive") => keep_alive = true,
                _ => {}
            }
        }
        let body = if chunked {
            let mut out = Vec::new();
            loop {
                let size_line = self.line().await?;
                let hex = size_line.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(hex, 16).context("bad chunk size")?;
                if size == 0 {
                    while !self.line().await?.is_empty() {}
                    break;
                }
                if out.len() + size > self.max_response {
                    bail!("response larger than {} bytes", self.max_response);
                }
                let start = out.len();
                out.resize(start + size, 0);
                self.stream.read_exact(out.get_mut(start..).context("chunk")?).await?;
                self.line().await?;
            }
            out
        } else if let Some(len) = length {
            if len > self.max_response {
                bail!("response larger than {} bytes", self.max_response);
            }
            let mut out = vec![0; len];
            self.stream.read_exact(&mut out).await?;
            out
        } else {
            keep_alive = false;
            let mut out = Vec::new();
            (&mut self.stream).take(self.max_response as u64).read_to_end(&mut out).await?;
            out
        };
        self.reusable = keep_alive;
        Ok((status, body))
    }

    /// One header line without its CRLF.
    async fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        let n = (&mut self.stream).take(16 * 1024).read_line(&mut line).await?;
        if n == 0 {
            bail!("connection closed by the server");
        }
        if !line.ends_with('\n') {
            bail!("header line too long");
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves `responses` in turn on one connection and returns the address.
    async fn serve(responses: Vec<&'static [u8]>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            for response in responses {
                let _ = socket.read(&mut buf).await.unwrap();
                socket.write_all(response).await.unwrap();
            }
        });
        addr
    }

    #[tokio::test]
    async fn reads_sized_and_chunked_responses_on_one_connection() {
        let addr = serve(vec![
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 7\r\n\r\n{\"a\":1}",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"b\r\n4\r\n\":2}\r\n0\r\n\r\n",
        ])
        .await;
        let mut conn = HttpConn::connect(&addr, 1024).await.unwrap();
        let (status, body) = conn.request("GET", "/x", "t", None, None).await.unwrap();
        assert_eq!((status, body.as_slice()), (404, &b"{\"a\":1}"[..]));
        assert!(conn.reusable());
        let (status, body) = conn.request("GET", "/y", "t", Some("k"), Some(b"{}")).await.unwrap();
        assert_eq!((status, body.as_slice()), (200, &b"{\"b\":2}"[..]));
    }

    #[tokio::test]
    async fn oversized_and_garbage_responses_are_errors() {
        let addr = serve(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n"]).await;
        let mut conn = HttpConn::connect(&addr, 1024).await.unwrap();
        assert!(conn.request("GET", "/", "t", None, None).await.is_err());
        let addr = serve(vec![b"garbage\r\n\r\n"]).await;
        let mut conn = HttpConn::connect(&addr, 1024).await.unwrap();
        assert!(conn.request("GET", "/", "t", None, None).await.is_err());
    }

    #[test]
    fn only_plain_http_urls() {
        assert_eq!(authority("http://127.0.0.1:9000/").unwrap(), "127.0.0.1:9000");
        assert!(authority("https://x:1").is_err());
    }
}
