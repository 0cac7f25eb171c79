//! A headless Chromium driven over WebDriver (W3C) by `chromedriver`, for tests that
//! need a real browser's WebRTC stack against the edge.
//!
//! WebDriver requests go through the product's HTTP client (`super::http`), one JSON
//! request at a time.
//! `chromedriver` runs in its own process group; dropping the [`Browser`] ends the
//! session and kills that group, which takes every Chromium child with it.
//!
//! A missing browser is a failure, never a skip: a CI box without Chromium must say so.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::netns::NetNs;
use super::{wait_for, Proc, TempDir};

/// Browser binary handed to chromedriver (override: `FERRY_TEST_CHROMIUM`).
const CHROMIUM: &str = "/usr/bin/chromium";
/// WebDriver server (override: `FERRY_TEST_CHROMEDRIVER`).
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Flags for a headless browser that can capture fake media and talk WebRTC over
/// loopback without any prompt, profile state or background traffic.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--autoplay-policy=no-user-gesture-required",
    // Containers often have a 64 MB /dev/shm; Debian's launcher means to add this
    // when shm is small, but its check is broken ("[: ... unexpected operator").
    "--disable-dev-shm-usage",
    // The demo pages route through the control plane's HTTPS API, whose certificates
    // come from each test's own cluster CA: this browser stands in for one whose trust
    // store holds that CA.
    "--ignore-certificate-errors",
];

/// Chromium's first start (profile creation, shader caches) is slow on a busy 2-core box.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Ceiling of any one WebDriver command; scripts and page loads are limited below it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Script and page-load timeout inside the browser.
const SCRIPT_TIMEOUT_MS: u64 = 30_000;
/// Drop must not hang a failing test: the session gets this long to close politely.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often `wait_until` re-evaluates its condition.
const POLL_INTERVAL: Duration = Duration::from_millis(150);

/// A WebDriver session on a fresh headless Chromium; everything dies on drop.
pub struct Browser {
    /// `ip:port` of chromedriver: loopback, or the namespace's address for [`Browser::start_in`].
    driver: String,
    /// WebDriver session id; empty until the session exists.
    session: String,
    /// chromedriver, leader of the process group that also holds every Chromium process.
    proc: Proc,
    /// Profile, config and cache directories, so no state leaks between tests.
    home: TempDir,
}

impl Browser {
    /// Starts chromedriver and a Chromium session; panics if either is missing.
    pub fn start() -> Browser {
        Browser::launch(None)
    }

    /// Like [`Browser::start`], but chromedriver and Chromium run inside `ns`, so the
    /// browser's traffic crosses the namespace's veth link (and any limit on it).
    /// chromedriver listens on the namespace's address and admits only the host end of
    /// the link. Dropping the [`NetNs`] also kills anything this left in the namespace.
    pub fn start_in(ns: &NetNs) -> Browser {
        Browser::launch(Some(ns))
    }

    fn launch(ns: Option<&NetNs>) -> Browser {
        let chromium = std::env::var("FERRY_TEST_CHROMIUM").unwrap_or_else(|_| CHROMIUM.to_owned());
        let chromedriver =
            std::env::var("FERRY_TEST_CHROMEDRIVER").unwrap_or_else(|_| CHROMEDRIVER.to_owned());
        for bin in [&chromium, &chromedriver] {
            assert!(
                Path::new(bin).exists(),
                "browser tests need {bin} (Debian: apt-get install chromium chromium-driver; \
                 or set FERRY_TEST_CHROMIUM / FERRY_TEST_CHROMEDRIVER)"
            );
        }

        // A port free on the host is as good as any in a fresh namespace.
        let port = free_tcp_port();
        let home = TempDir::new("chromium");
        let (mut cmd, driver) = match ns {
            None => (Command::new(&chromedriver), format!("127.0.0.1:{port}")),
            Some(ns) => {
                let mut cmd = ns.command(&chromedriver);
                // Without an allow-list chromedriver listens on loopback only.
                cmd.arg(format!("--allowed-ips={}", ns.host_ip()));
                (cmd, format!("{}:{port}", ns.ns_ip()))
            }
        };
        cmd.arg(format!("--port={port}")).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        // Crash reports and caches land in the temporary directory, not in ~/.config.
        cmd.env("XDG_CONFIG_HOME", home.path().join("config"))
            .env("XDG_CACHE_HOME", home.path().join("cache"));
        // Its own group: one kill reaches chromedriver, Chromium and its helpers. (The
        // crashpad handlers start their own sessions; they exit when Chromium dies.)
        cmd.process_group(0);
        let proc = Proc::spawn("chromedriver", &mut cmd);

        // From here on a panic must still clean up, so build the guard before waiting.
        let mut browser = Browser { driver, session: String::new(), proc, home };
        wait_for("chromedriver /status ready", START_TIMEOUT, || {
            let (_, body) = request(&browser.driver, "GET", "/status", None, Duration::from_secs(2)).ok()?;
            (body["value"]["ready"] == true).then_some(())
        });

        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| (*a).to_owned()).collect();
        args.push(format!("--user-data-dir={}", browser.home.path().join("profile").display()));
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": { "binary": chromium, "args": args },
                    "goog:loggingPrefs": { "browser": "ALL" },
                }
            }
        });
        let value = browser.command("POST", "/session", Some(&capabilities));
        browser.session = value["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver gave no session id: {value}"))
            .to_owned();
        let timeouts = json!({ "script": SCRIPT_TIMEOUT_MS, "pageLoad": SCRIPT_TIMEOUT_MS });
        browser.session_command("POST", "/timeouts", Some(&timeouts));
        browser
    }

    /// Runs `js` at the start of every page this session opens from now on, before the
    /// page's own scripts (DevTools `Page.addScriptToEvaluateOnNewDocument`): a way to
    /// instrument a page without changing it.
    pub fn run_on_every_page(&self, js: &str) {
        let body = json!({ "cmd": "Page.addScriptToEvaluateOnNewDocument", "params": { "source": js } });
        self.session_command("POST", "/goog/cdp/execute", Some(&body));
    }

    /// Navigates and waits for the page's load event.
    pub fn open(&self, url: &str) {
        self.session_command("POST", "/url", Some(&json!({ "url": url })));
    }

    /// Runs `js` as a function body (`return ...;`) and returns its value; a returned
    /// promise is awaited. Panics if the script throws.
    pub fn eval(&self, js: &str) -> Value {
        self.try_eval(js).unwrap_or_else(|e| panic!("script failed: {e}\nscript: {js}"))
    }

    /// Like [`Browser::eval`], but a script error is returned instead of panicking.
    pub fn try_eval(&self, js: &str) -> Result<Value, String> {
        let body = json!({ "script": js, "args": [] });
        let path = format!("/session/{}/execute/sync", self.session);
        match request(&self.driver, "POST", &path, Some(&body), COMMAND_TIMEOUT) {
            Ok((200, body)) => Ok(body["value"].clone()),
            Ok((status, body)) => Err(format!("HTTP {status}: {}", error_text(&body))),
            Err(e) => Err(e),
        }
    }

    /// Evaluates `js` every ~150 ms until it returns a truthy value, which is returned.
    /// Script errors count as "not yet" (the page may be navigating); on timeout it
    /// panics with `what` and the last value or error.
    pub fn wait_until(&self, what: &str, timeout: Duration, js: &str) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.try_eval(js) {
                Ok(v) if truthy(&v) => return v,
                Ok(v) => v.to_string(),
                Err(e) => format!("error: {e}"),
            };
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; last: {last}\nbrowser console:\n{}",
                    self.console_log().join("\n")
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Browser console entries since the last call, as `LEVEL message` lines.
    pub fn console_log(&self) -> Vec<String> {
        let path = format!("/session/{}/se/log", self.session);
        let Ok((200, body)) =
            request(&self.driver, "POST", &path, Some(&json!({ "type": "browser" })), QUIT_TIMEOUT)
        else {
            return Vec::new();
        };
        let entries = body["value"].as_array().cloned().unwrap_or_default();
        entries
            .iter()
            .map(|e| {
                format!("{} {}", e["level"].as_str().unwrap_or("?"), e["message"].as_str().unwrap_or(""))
            })
            .collect()
    }

    /// A session-scoped command; panics on a WebDriver error.
    fn session_command(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        self.command(method, &format!("/session/{}{path}", self.session), body)
    }

    fn command(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        match request(&self.driver, method, path, body, COMMAND_TIMEOUT) {
            Ok((200, body)) => body["value"].clone(),
            Ok((status, body)) => panic!("WebDriver {method} {path}: HTTP {status}: {}", error_text(&body)),
            Err(e) => panic!("WebDriver {method} {path}: {e}"),
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = request(&self.driver, "DELETE", &path, None, QUIT_TIMEOUT);
        }
        // Negative pid: the whole group, including Chromium processes the session left.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.proc.pid())])
            .stderr(Stdio::null())
            .status();
        // `proc` (reaps chromedriver) and the profile directory drop after this.
    }
}

/// A free TCP port on loopback (bound and released).
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// JavaScript truthiness of a JSON value.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// The `error: message` of a WebDriver error body.
fn error_text(body: &Value) -> String {
    let v = &body["value"];
    match (v["error"].as_str(), v["message"].as_str()) {
        (Some(error), Some(message)) => format!("{error}: {message}"),
        _ => body.to_string(),
    }
}

/// One WebDriver request with an optional JSON body: (status, JSON body).
fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<(u16, Value), String> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let headers = [("content-type", "application/json; charset=utf-8")];
    let reply = super::http::exchange(addr, method, path, &headers, body.as_bytes(), timeout)
        .map_err(|e| format!("{method} {path}: {e}"))?;
    Ok((reply.status, reply.json()))
}
