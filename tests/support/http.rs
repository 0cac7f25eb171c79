//! The tests' HTTP: the product's one client (`ferry_net::http`), driven from
//! synchronous test code on a small runtime of its own per request.

use std::time::Duration;

use ferry_net::http::{HttpClient, Method};
use ferry_net::tls::ClientTrust;

/// A whole response: status, headers (names lowercase, in order) and body.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; a JSON string of the text when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| serde_json::Value::String(self.text()))
    }
}

/// One request to `http://{addr}{path}` (or `{addr}{path}` when `addr` is a base URL,
/// `https://` included) with `headers` and `body`. Runs on a thread of its own, so
/// async tests may call it too. HTTPS servers are not verified here: the tests that
/// are about verification use `ferry ctl --ca-file` or [`exchange_as`].
pub fn exchange(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Reply, String> {
    exchange_as(None, addr, method, path, headers, body, timeout)
}

/// [`exchange`] with the client's TLS `trust` (a cluster certificate to present, a CA to
/// verify against).
pub fn exchange_as(
    trust: Option<&ClientTrust>,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Reply, String> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| exchange_here(trust, addr, method, path, headers, body, timeout))
            .join()
            .unwrap_or_else(|_| Err("the request thread panicked".into()))
    })
}

fn exchange_here(
    trust: Option<&ClientTrust>,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Reply, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("test runtime: {e}"))?;
    let method = Method::from_bytes(method.as_bytes()).map_err(|e| format!("method {method}: {e}"))?;
    let url = match addr.contains("://") {
        true => format!("{addr}{path}"),
        false => format!("http://{addr}{path}"),
    };
    runtime.block_on(async {
        let client = match (trust, url.starts_with("https://")) {
            (Some(trust), _) => HttpClient::new(Some(trust)).map_err(|e| e.to_string())?,
            (None, true) => HttpClient::new(Some(&ClientTrust::Insecure)).map_err(|e| e.to_string())?,
            (None, false) => HttpClient::plain(),
        };
        let mut request = client.request(method, &url).timeout(timeout);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        if !body.is_empty() {
            request = request.raw_body(body.to_vec());
        }
        let response = request.send().await.map_err(|e| ferry_net::Chain(&e).to_string())?;
        let headers = response
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        Ok(Reply { status: response.status, headers, body: response.body.to_vec() })
    })
}
