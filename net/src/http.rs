//! The one HTTP client of Ferry: hyper 1 through hyper-util's pooled client, with
//! rustls for `https://` URLs. `ferry ctl`, the edge's control link, routed clients,
//! the WHEP client, the benches and the tests all use it.
//!
//! Header names and values are checked by the `http` crate (no CR/LF smuggling);
//! response bodies are read through a byte limit that counts bytes as they arrive,
//! whatever `Content-Length` claims; every request has a deadline.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
pub use http::Method;
use http::Uri;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::tls::{rustls_client_config, ClientTrust};
use crate::{BoxError, Error, Result};

/// Largest response body read unless the client says otherwise (a full state resync
/// of the control plane fits).
pub const MAX_RESPONSE: usize = 64 * 1024 * 1024;
/// Default deadline of a request, response body included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening a TCP connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Idle pooled connections are closed after this long: well before Ferry's servers close
/// a connection that sends no request for 10 s (`http_server`), so a request is never
/// written to a connection the server is closing at that moment.
const POOL_IDLE: Duration = Duration::from_secs(4);

/// An HTTP client: cheap to clone (clones share the connection pool).
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// `https://` URLs are refused: no way to verify a server was configured.
    https: bool,
    max_response: usize,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").field("https", &self.https).finish_non_exhaustive()
    }
}

impl HttpClient {
    /// A client for `http://` URLs, and for `https://` ones verified per `trust`
    /// (`None`: `https://` URLs are refused with an error that says what to give).
    pub fn new(trust: Option<&ClientTrust>) -> Result<Self> {
        match trust {
            Some(trust) => Ok(Self::with_tls(rustls_client_config(trust, rustls::DEFAULT_VERSIONS)?, true)),
            None => Ok(Self::plain()),
        }
    }

    /// A client for `http://` URLs only (loopback tools, tests).
    pub fn plain() -> Self {
        // Never used to connect: https URLs are refused before connecting.
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        Self::with_tls(tls, false)
    }

    fn with_tls(tls: rustls::ClientConfig, https: bool) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(connector);
        Self { inner, https, max_response: MAX_RESPONSE }
    }

    /// The same client with another response body limit.
    pub fn with_max_response(mut self, bytes: usize) -> Self {
        self.max_response = bytes;
        self
    }

    /// Starts a request to `url` (`http://HOST:PORT/path?query` or `https://…`).
    pub fn request(&self, method: Method, url: &str) -> RequestBuilder<'_> {
        RequestBuilder {
            client: self,
            method,
            url: url.to_owned(),
            headers: Ok(HeaderMap::new()),
            body: Bytes::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// `GET url`.
    pub fn get(&self, url: &str) -> RequestBuilder<'_> {
        self.request(Method::GET, url)
    }

    /// `POST url`.
    pub fn post(&self, url: &str) -> RequestBuilder<'_> {
        self.request(Method::POST, url)
    }
}

/// A request being built; [`RequestBuilder::send`] sends it.
pub struct RequestBuilder<'a> {
    client: &'a HttpClient,
    method: Method,
    url: String,
    /// The first invalid header, kept until `send` reports it.
    headers: std::result::Result<HeaderMap, String>,
    body: Bytes,
    timeout: Duration,
}

impl RequestBuilder<'_> {
    /// Adds a header; a name or value the `http` crate refuses (CR, LF, ...) makes
    /// `send` fail.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        if let Ok(headers) = &mut self.headers {
            match (HeaderName::try_from(name), HeaderValue::try_from(value)) {
                (Ok(name), Ok(value)) => {
                    headers.append(name, value);
                }
                _ => self.headers = Err(format!("invalid header {name:?}")),
            }
        }
        self
    }

    /// `Authorization: Bearer TOKEN` (nothing for an empty token).
    pub fn bearer(self, token: &str) -> Self {
        match token.is_empty() {
            true => self,
            false => self.header(AUTHORIZATION.as_str(), &format!("Bearer {token}")),
        }
    }

    /// A JSON body (`Content-Type: application/json`).
    pub fn json(mut self, body: &serde_json::Value) -> Self {
        self.body = Bytes::from(body.to_string());
        self.header(CONTENT_TYPE.as_str(), "application/json")
    }

    /// A body of `content_type`.
    pub fn body(mut self, content_type: &str, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self.header(CONTENT_TYPE.as_str(), content_type)
    }

    /// A body without a `Content-Type` (give one with [`RequestBuilder::header`]).
    pub fn raw_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// The deadline for the whole exchange, response body included.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends the request and reads the whole response (bounded).
    pub async fn send(self) -> Result<Response> {
        let RequestBuilder { client, method, url, headers, body, timeout } = self;
        let fail = |source: BoxError| Error::Http { method: method.to_string(), url: url.clone(), source };
        let headers = headers.map_err(|e| fail(e.into()))?;
        let uri: Uri = url.parse().map_err(|e: http::uri::InvalidUri| fail(e.into()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") if client.https => {}
            Some("https") => {
                return Err(fail(
                    "https needs a CA to verify the server: give --ca-file (or --insecure)".into(),
                ))
            }
            _ => return Err(fail("only http:// and https:// URLs are supported".into())),
        }
        if uri.host().is_none() {
            return Err(fail("the URL has no host".into()));
        }
        let mut request = http::Request::new(Full::new(body));
        *request.method_mut() = method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        let exchange = async {
            let response = client.inner.request(request).await.map_err(|e| fail(e.into()))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, client.max_response).collect().await.map_err(&fail)?.to_bytes();
            Ok(Response { status: parts.status.as_u16(), headers: parts.headers, body })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Error::HttpTimeout { method: method.to_string(), url, timeout }),
        }
    }
}

/// A whole response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// Whether the status is 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as JSON: `null` when empty, a JSON string of the text when it is not
    /// JSON (so error bodies of other servers still show).
    pub fn json(&self) -> serde_json::Value {
        if self.body.is_empty() {
            return serde_json::Value::Null;
        }
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&self.body).into()))
    }

    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Checks that `url` is an `http://HOST:PORT` or `https://HOST:PORT` base URL (no
/// path), as `--control-plane` takes.
pub fn check_base_url(url: &str) -> Result<()> {
    let bad = |why: &str| Error::Config(format!("{url}: {why}"));
    let uri: Uri = url.parse().map_err(|_| bad("not a URL; expected http://HOST:PORT"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("expected http://HOST:PORT or https://HOST:PORT")),
    }
    if uri.host().is_none_or(str::is_empty) || uri.port().is_none() {
        return Err(bad("expected http://HOST:PORT"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("expected no path after HOST:PORT"));
    }
    Ok(())
}

/// A `Location` header resolved against the URL that answered it: absolute URLs as
/// they are, paths on the same scheme and authority.
pub fn resolve_location(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_owned();
    }
    match base.parse::<Uri>() {
        Ok(uri) => match (uri.scheme_str(), uri.authority()) {
            (Some(scheme), Some(authority)) => format!("{scheme}://{authority}{location}"),
            _ => location.to_owned(),
        },
        Err(_) => location.to_owned(),
    }
}

/// `base` (no trailing slash) joined with `path` (starting with `/`).
pub fn join(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

/// Server side, for the HTTP servers that answer browsers: a CORS preflight (the only
/// response carrying `Access-Control-Allow-Methods`) answered `200 OK` by the CORS layer
/// becomes `204 No Content`, as Ferry has always answered it (it has no body). Used as
/// `axum::middleware::map_response(http::preflight_no_content)` outside the CORS layer.
pub async fn preflight_no_content<B>(mut response: http::Response<B>) -> http::Response<B> {
    if response.status() == http::StatusCode::OK
        && response.headers().contains_key(http::header::ACCESS_CONTROL_ALLOW_METHODS)
    {
        *response.status_mut() = http::StatusCode::NO_CONTENT;
    }
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn only_cors_preflights_become_no_content() {
        let preflight = http::Response::builder()
            .header(http::header::ACCESS_CONTROL_ALLOW_METHODS, "GET")
            .body(())
            .unwrap();
        assert_eq!(preflight_no_content(preflight).await.status(), http::StatusCode::NO_CONTENT);
        let plain = http::Response::builder()
            .header(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")
            .body(())
            .unwrap();
        assert_eq!(preflight_no_content(plain).await.status(), http::StatusCode::OK);
        let refused = http::Response::builder()
            .status(http::StatusCode::FORBIDDEN)
            .header(http::header::ACCESS_CONTROL_ALLOW_METHODS, "GET")
            .body(())
            .unwrap();
        assert_eq!(preflight_no_content(refused).await.status(), http::StatusCode::FORBIDDEN);
    }

    /// Serves `responses` in turn, one per accepted connection or request, and returns
    /// the base URL.
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
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn reads_sized_and_chunked_responses_on_one_connection() {
        let base = serve(vec![
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 7\r\n\r\n{\"a\":1}",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"b\r\n4\r\n\":2}\r\n0\r\n\r\n",
        ])
        .await;
        let client = HttpClient::plain();
        let r = client.get(&join(&base, "/x")).bearer("t").send().await.unwrap();
        assert_eq!((r.status, r.json()), (404, serde_json::json!({"a": 1})));
        let r = client.post(&join(&base, "/y")).json(&serde_json::json!({})).send().await.unwrap();
        assert_eq!((r.status, r.json()), (200, serde_json::json!({"b": 2})));
    }

    #[tokio::test]
    async fn oversized_bodies_and_garbage_are_errors() {
        let base = serve(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n"]).await;
        let client = HttpClient::plain().with_max_response(1024);
        assert!(client.get(&base).timeout(Duration::from_secs(2)).send().await.is_err());
        let base = serve(vec![b"garbage\r\n\r\n"]).await;
        assert!(client.get(&base).send().await.is_err());
    }

    #[tokio::test]
    async fn headers_with_line_breaks_are_refused_before_sending() {
        let client = HttpClient::plain();
        let e = client.get("http://127.0.0.1:9/").bearer("a\r\nX-Evil: 1").send().await.unwrap_err();
        assert!(e.to_string().contains("127.0.0.1:9"), "{e}");
        assert!(format!("{}", crate::Chain(&e)).contains("invalid header"), "{}", crate::Chain(&e));
    }

    #[tokio::test]
    async fn https_without_a_ca_says_what_to_give() {
        let e = HttpClient::plain().get("https://127.0.0.1:9/").send().await.unwrap_err();
        assert!(format!("{}", crate::Chain(&e)).contains("--ca-file"));
    }

    #[test]
    fn locations_resolve_against_the_request_url() {
        assert_eq!(
            resolve_location("http://127.0.0.1:8080/whep/live/a", "/sessions/whep/x"),
            "http://127.0.0.1:8080/sessions/whep/x"
        );
        assert_eq!(resolve_location("https://a:1/whep/s", "/x"), "https://a:1/x");
        assert_eq!(resolve_location("http://a:1/whep/s", "http://b:2/whep/s"), "http://b:2/whep/s");
    }

    #[test]
    fn base_urls_are_checked() {
        assert!(check_base_url("http://127.0.0.1:9000").is_ok());
        assert!(check_base_url("https://cp.example:443/").is_ok());
        assert!(check_base_url("ftp://x:1").is_err());
        assert!(check_base_url("http://x").is_err());
        assert!(check_base_url("http://x:1/v1").is_err());
        assert!(check_base_url("127.0.0.1:9000").is_err());
    }
}
