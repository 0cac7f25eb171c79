//! Access tokens for every client (QUIC publish and watch, WHIP and WHEP): HS256
//! JWTs signed with a secret shared by the minter (`ferry token`) and every edge.
//!
//! Sans-IO apart from [`KeyRing::load`]: the clock is an argument. A token grants
//! one action (`publish` or `view`) on one stream or on every stream under a prefix,
//! for one audience (the cluster id), from `nbf` (or `iat`) until `exp` — capped at
//! the edge's maximum lifetime. A publish token may also grant `takeover`: it may
//! replace a publisher that is live on the stream. The wire format is a compact JWS,
//! `base64url(header).base64url(claims).base64url(HMAC-SHA256)`; the header is
//! `{"alg":"HS256","typ":"JWT"}` plus an optional `kid` naming the secret, so
//! secrets rotate without dropping anyone: an edge accepts every secret of its
//! [`KeyRing`].

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::hmac;
use serde::{Deserialize, Serialize};

/// Longest token accepted; longer ones are refused before any decoding so a
/// hostile header cannot make us parse megabytes. Ours are ~250 bytes.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Shortest secret accepted. HMAC-SHA256 wants 32 random bytes; 16 is the
/// floor below which brute force becomes realistic.
pub const MIN_SECRET_LEN: usize = 16;

/// Clock skew tolerated between the minter and the edge when checking `exp`, `nbf`
/// and `iat`.
pub const CLOCK_LEEWAY: Duration = Duration::from_secs(5);

/// Longest key id accepted in a token header.
const MAX_KID_LEN: usize = 64;

/// The only algorithm we sign and accept. Accepting the header's choice is how
/// `alg: none` and RS/HS confusion attacks work, so we never do.
const ALG: &str = "HS256";

/// What a token allows on its streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Send media (WHIP).
    Publish,
    /// Receive media (WHEP).
    View,
}

impl Action {
    /// Parses `publish` or `view` (as written in tokens and on the command line).
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "publish" => Some(Action::Publish),
            "view" => Some(Action::View),
            _ => None,
        }
    }

    /// The name used in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::View => "view",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The streams a token covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StreamScope {
    /// Exactly this stream (`"stream"` claim).
    Exact(String),
    /// This stream and every stream below it, matched on `/` boundaries
    /// (`"stream_prefix"` claim): `live/` and `live/a` both cover `live/a/b`,
    /// but `live/a` does not cover `live/ab`. An empty prefix covers nothing.
    Prefix(String),
}

impl StreamScope {
    /// Whether `stream` is inside this scope.
    pub fn covers(&self, stream: &str) -> bool {
        match self {
            StreamScope::Exact(name) => name == stream,
            StreamScope::Prefix(p) if p.is_empty() => false,
            StreamScope::Prefix(p) if p.ends_with('/') => stream.starts_with(p.as_str()),
            StreamScope::Prefix(p) => {
                stream.strip_prefix(p.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
        }
    }
}

impl fmt::Display for StreamScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamScope::Exact(name) => write!(f, "stream {name:?}"),
            StreamScope::Prefix(p) => write!(f, "prefix {p:?}"),
        }
    }
}

/// The payload of a token:
/// `{"stream": "live/room1" | "stream_prefix": "live/", "action": "publish"|"view",
///   "aud": "ferry", "exp": unix seconds, "iat": unix seconds, "nbf"?: unix seconds,
///   "sub"?: "...", "takeover"?: true}`.
///
/// Exactly one of `stream` and `stream_prefix` must be present; unknown claims
/// are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawClaims", into = "RawClaims")]
pub struct Claims {
    /// The streams granted.
    pub scope: StreamScope,
    /// The action granted.
    pub action: Action,
    /// The cluster the token is for (edges check it against their cluster id).
    pub aud: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issue time, seconds since the Unix epoch.
    pub iat: u64,
    /// Not valid before, seconds since the Unix epoch.
    pub nbf: Option<u64>,
    /// Who the token was issued to: logged, and the key of the session's rollout
    /// cohort (so a client cannot choose its own treatment).
    pub sub: Option<String>,
    /// A publish token that may replace a publisher live on the stream.
    pub takeover: bool,
}

impl Claims {
    /// Claims for `audience` issued at `now`, expiring `ttl` later (whole seconds).
    pub fn new(scope: StreamScope, action: Action, audience: &str, ttl: Duration, now: SystemTime) -> Self {
        let iat = unix_secs(now);
        Claims {
            scope,
            action,
            aud: audience.to_owned(),
            exp: iat.saturating_add(ttl.as_secs()),
            iat,
            nbf: None,
            sub: None,
            takeover: false,
        }
    }

    /// Whether these claims let their bearer do `action` on `stream`.
    ///
    /// `stream` must be a valid stream name; anything else (e.g. with `..` segments
    /// that would slip under a prefix) is never covered.
    pub fn permits(&self, action: Action, stream: &str) -> Result<(), AuthError> {
        if self.action != action {
            return Err(AuthError::WrongAction { granted: self.action, wanted: action });
        }
        if ferry_proto::StreamName::new(stream).is_err() || !self.scope.covers(stream) {
            return Err(AuthError::StreamNotCovered {
                stream: stream.chars().take(128).collect(),
                scope: self.scope.clone(),
            });
        }
        Ok(())
    }
}

/// The JSON shape of [`Claims`]; the two scope keys are folded into one enum.
#[derive(Serialize, Deserialize)]
struct RawClaims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stream_prefix: Option<String>,
    action: Action,
    #[serde(default)]
    aud: String,
    exp: u64,
    iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    takeover: bool,
}

impl TryFrom<RawClaims> for Claims {
    type Error = &'static str;

    fn try_from(raw: RawClaims) -> Result<Self, Self::Error> {
        let scope = match (raw.stream, raw.stream_prefix) {
            (Some(s), None) => StreamScope::Exact(s),
            (None, Some(p)) => StreamScope::Prefix(p),
            (Some(_), Some(_)) => return Err("both stream and stream_prefix"),
            (None, None) => return Err("neither stream nor stream_prefix"),
        };
        Ok(Claims {
            scope,
            action: raw.action,
            aud: raw.aud,
            exp: raw.exp,
            iat: raw.iat,
            nbf: raw.nbf,
            sub: raw.sub,
            takeover: raw.takeover,
        })
    }
}

impl From<Claims> for RawClaims {
    fn from(c: Claims) -> Self {
        let (stream, stream_prefix) = match c.scope {
            StreamScope::Exact(s) => (Some(s), None),
            StreamScope::Prefix(p) => (None, Some(p)),
        };
        RawClaims {
            stream,
            stream_prefix,
            action: c.action,
            aud: c.aud,
            exp: c.exp,
            iat: c.iat,
            nbf: c.nbf,
            sub: c.sub,
            takeover: c.takeover,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    /// Which secret signed the token (see [`KeyRing`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    /// RFC 7515 §4.1.11: extensions marked critical must be understood; we know none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crit: Option<serde_json::Value>,
}

/// Why loading a secret failed.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read token secret {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "token secret is {len} bytes; at least {MIN_SECRET_LEN} are required (try `openssl rand -hex 32`)"
    )]
    TooShort { len: usize },
    #[error("token secret {path} is {len} bytes; at least {MIN_SECRET_LEN} are required (try `openssl rand -hex 32`)")]
    FileTooShort { path: String, len: usize },
}

/// The shared HMAC key. Its bytes are never printed.
#[derive(Clone)]
pub struct TokenSecret {
    key: hmac::Key,
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSecret(<redacted>)")
    }
}

impl TokenSecret {
    /// A secret from raw bytes, refused when shorter than [`MIN_SECRET_LEN`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SecretError> {
        if bytes.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort { len: bytes.len() });
        }
        Ok(TokenSecret { key: hmac::Key::new(hmac::HMAC_SHA256, bytes) })
    }

    /// Reads a secret file. Trailing whitespace (the newline editors and
    /// `echo` add) is not part of the secret.
    pub fn from_file(path: &Path) -> Result<Self, SecretError> {
        let bytes = std::fs::read(path)
            .map_err(|source| SecretError::Read { path: path.display().to_string(), source })?;
        Self::from_bytes(bytes.trim_ascii_end()).map_err(|e| match e {
            SecretError::TooShort { len } => {
                SecretError::FileTooShort { path: path.display().to_string(), len }
            }
            other => other,
        })
    }

    /// Encodes and signs `claims` as a compact HS256 JWT, naming the secret `kid`
    /// in the header when given.
    pub fn sign(&self, claims: &Claims, kid: Option<&str>) -> String {
        let header =
            Header { alg: ALG.to_owned(), typ: Some("JWT".into()), kid: kid.map(str::to_owned), crit: None };
        // Serializing strings and integers into memory cannot fail; were it to,
        // the empty header or payload would fail every verification rather than
        // grant anything.
        let header = serde_json::to_vec(&header).unwrap_or_default();
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let mut token = base64url::encode(&header);
        token.push('.');
        token.push_str(&base64url::encode(&payload));
        let tag = hmac::sign(&self.key, token.as_bytes());
        token.push('.');
        token.push_str(&base64url::encode(tag.as_ref()));
        token
    }
}

/// The key id of a secret file: its name without the extension
/// (`secrets/2026-12.key` is `2026-12`).
pub fn kid_of(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The secrets an edge accepts, each under its key id. A token naming a `kid`
/// is checked with that secret only; a token without one (older minters) with
/// each secret in turn.
#[derive(Clone, Debug, Default)]
pub struct KeyRing {
    keys: Vec<(String, TokenSecret)>,
}

impl KeyRing {
    /// A ring of `(kid, secret)` pairs.
    pub fn new(keys: Vec<(String, TokenSecret)>) -> Self {
        KeyRing { keys }
    }

    /// Loads every secret: each path is a secret file (its key id is its name without
    /// the extension, see [`kid_of`]) or a directory of them (hidden files skipped).
    pub fn load(paths: &[std::path::PathBuf]) -> Result<Self, SecretError> {
        let mut keys = Vec::new();
        for path in paths {
            if path.is_dir() {
                let entries = std::fs::read_dir(path)
                    .map_err(|source| SecretError::Read { path: path.display().to_string(), source })?;
                let mut files: Vec<std::path::PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
                    })
                    .collect();
                files.sort();
                for file in files {
                    keys.push((kid_of(&file), TokenSecret::from_file(&file)?));
                }
            } else {
                keys.push((kid_of(path), TokenSecret::from_file(path)?));
            }
        }
        Ok(KeyRing { keys })
    }

    /// Whether the ring has no secret (then no token can verify).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key ids, for logs.
    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(|(kid, _)| kid.as_str()).collect()
    }
}

/// What an edge requires of tokens besides a valid signature.
#[derive(Clone, Debug)]
pub struct Policy {
    /// The `aud` every token must carry: the cluster id.
    pub audience: String,
    /// Longest lifetime honoured: a token is treated as expiring at most this long
    /// after it was issued (or became valid).
    pub max_ttl: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { audience: DEFAULT_AUDIENCE.to_owned(), max_ttl: DEFAULT_MAX_TTL }
    }
}

/// The audience (cluster id) of tokens when none is configured.
pub const DEFAULT_AUDIENCE: &str = "ferry";
/// The longest token lifetime an edge honours unless told otherwise.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// Mints a token granting `action` on `scope` for `ttl` from `now`, for the default
/// audience and without a key id (tests and simple setups; `ferry token` sets both).
pub fn mint(
    secret: &TokenSecret,
    scope: StreamScope,
    action: Action,
    ttl: Duration,
    now: SystemTime,
) -> String {
    secret.sign(&Claims::new(scope, action, DEFAULT_AUDIENCE, ttl, now), None)
}

/// Checks a token's own validity at `now`, whatever it is used for: size, shape,
/// `alg == HS256`, the secret its `kid` names (or any, without one), signature
/// (constant time), audience, then time — `exp` (capped by `policy.max_ttl`), `nbf`
/// and `iat` not in the future, each with [`CLOCK_LEEWAY`] — in that order, so
/// nothing from the payload is trusted before the signature is.
pub fn verify(keys: &KeyRing, policy: &Policy, token: &str, now: SystemTime) -> Result<Claims, AuthError> {
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::Malformed("token longer than 4 KiB"));
    }
    let mut parts = token.split('.');
    let (Some(header64), Some(payload64), Some(signature64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed("not three dot-separated segments"));
    };

    let header = base64url::decode(header64).ok_or(AuthError::Malformed("header is not base64url"))?;
    let header: Header =
        serde_json::from_slice(&header).map_err(|_| AuthError::Malformed("header is not a JWT header"))?;
    if header.alg != ALG {
        return Err(AuthError::UnsupportedAlgorithm(header.alg.chars().take(32).collect()));
    }
    if header.crit.is_some() {
        return Err(AuthError::Malformed("critical header extensions are not supported"));
    }

    let signature =
        base64url::decode(signature64).ok_or(AuthError::Malformed("signature is not base64url"))?;
    // The signed input is `header.payload` exactly as received.
    let signed =
        token.get(..header64.len() + 1 + payload64.len()).ok_or(AuthError::Malformed("bad segments"))?;
    let verifies = |secret: &TokenSecret| hmac::verify(&secret.key, signed.as_bytes(), &signature).is_ok();
    let verified = match &header.kid {
        Some(kid) => {
            let (_, secret) = keys
                .keys
                .iter()
                .find(|(k, _)| k == kid)
                .ok_or_else(|| AuthError::UnknownKey(kid.chars().take(MAX_KID_LEN).collect()))?;
            verifies(secret)
        }
        None => keys.keys.iter().any(|(_, secret)| verifies(secret)),
    };
    if !verified {
        return Err(AuthError::BadSignature);
    }

    let payload = base64url::decode(payload64).ok_or(AuthError::Malformed("payload is not base64url"))?;
    let claims: Claims =
        serde_json::from_slice(&payload).map_err(|_| AuthError::Malformed("payload is not valid claims"))?;
    if claims.aud != policy.audience {
        return Err(AuthError::WrongAudience { found: claims.aud.chars().take(64).collect() });
    }
    let now = unix_secs(now);
    let leeway = CLOCK_LEEWAY.as_secs();
    let start = claims.nbf.unwrap_or(claims.iat).max(claims.iat);
    let expires = claims.exp.min(start.saturating_add(policy.max_ttl.as_secs()));
    if now >= expires.saturating_add(leeway) {
        return Err(AuthError::Expired);
    }
    if claims.iat > now.saturating_add(leeway) {
        return Err(AuthError::IssuedInFuture);
    }
    if claims.nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
        return Err(AuthError::NotYetValid);
    }
    Ok(claims)
}

/// Checks that `token` lets its bearer do `action` on `stream` at `now`:
/// [`verify`], then [`Claims::permits`].
pub fn authorize(
    keys: &KeyRing,
    policy: &Policy,
    token: &str,
    stream: &str,
    action: Action,
    now: SystemTime,
) -> Result<Claims, AuthError> {
    let claims = verify(keys, policy, token, now)?;
    claims.permits(action, stream)?;
    Ok(claims)
}

/// The token in an `Authorization` header value `Bearer <token>` (scheme
/// case-insensitive); `None` for other schemes, no token, or extra words.
pub fn bearer(header_value: &str) -> Option<&str> {
    let (scheme, token) = header_value.trim().split_once(' ')?;
    let token = token.trim_start_matches(' ');
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(char::is_whitespace) {
        return None;
    }
    Some(token)
}

fn unix_secs(t: SystemTime) -> u64 {
    // A clock before 1970 is broken; treating it as 0 only makes tokens look younger.
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Why a request's token was refused. [`AuthError::reason`] is the short code
/// for responses, close reasons and metrics; the `Display` text says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token (mint one with `ferry token`)")]
    Missing,
    #[error("this edge has no token secret (--token-secret-file) and does not allow anonymous clients (--allow-anonymous, dev only)")]
    NotConfigured,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token signed with key {0:?}, which this edge does not have")]
    UnknownKey(String),
    #[error("token is for audience {found:?}, not this cluster")]
    WrongAudience { found: String },
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("token issued in the future (iat); check the minter's clock")]
    IssuedInFuture,
    #[error("token algorithm {0:?} is not supported (only HS256)")]
    UnsupportedAlgorithm(String),
    #[error("token expired")]
    Expired,
    #[error("token grants {granted}, not {wanted}")]
    WrongAction { granted: Action, wanted: Action },
    #[error("token for {scope} does not cover stream {stream:?}")]
    StreamNotCovered { stream: String, scope: StreamScope },
}

impl AuthError {
    /// A short machine-readable code, e.g. `token_expired`.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "token_missing",
            AuthError::NotConfigured => "auth_not_configured",
            AuthError::Malformed(_) => "token_malformed",
            AuthError::BadSignature => "token_bad_signature",
            AuthError::UnknownKey(_) => "token_unknown_key",
            AuthError::WrongAudience { .. } => "token_wrong_audience",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::IssuedInFuture => "token_issued_in_future",
            AuthError::UnsupportedAlgorithm(_) => "token_unsupported_alg",
            AuthError::Expired => "token_expired",
            AuthError::WrongAction { .. } => "token_wrong_action",
            AuthError::StreamNotCovered { .. } => "token_wrong_stream",
        }
    }
}

/// base64url without padding (RFC 4648 §5), strict: decoding refuses padding,
/// other alphabets and non-zero trailing bits, so every byte string has exactly
/// one accepted encoding (no malleable signatures).
pub mod base64url {
    /// Encodes `input`.
    pub fn encode(input: &[u8]) -> String {
        let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
        for chunk in input.chunks(3) {
            let (n, chars) = match *chunk {
                [a, b, c] => ((u32::from(a) << 16) | (u32::from(b) << 8) | u32::from(c), 4),
                [a, b] => ((u32::from(a) << 16) | (u32::from(b) << 8), 3),
                [a] => (u32::from(a) << 16, 2),
                _ => (0, 0),
            };
            for i in 0..chars {
                out.push(char::from(symbol(((n >> (18 - 6 * i)) & 0x3f) as u8)));
            }
        }
        out
    }

    /// Decodes `input`, or `None` if it is not canonical unpadded base64url.
    pub fn decode(input: &str) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(input.len() / 4 * 3 + 2);
        for chunk in input.as_bytes().chunks(4) {
            let mut n = 0u32;
            for &c in chunk {
                n = (n << 6) | u32::from(value(c)?);
            }
            match chunk.len() {
                4 => out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]),
                3 if n & 0x3 == 0 => out.extend_from_slice(&[(n >> 10) as u8, (n >> 2) as u8]),
                2 if n & 0xf == 0 => out.push((n >> 4) as u8),
                _ => return None,
            }
        }
        Some(out)
    }

    fn symbol(v: u8) -> u8 {
        match v {
            0..=25 => b'A' + v,
            26..=51 => b'a' + (v - 26),
            52..=61 => b'0' + (v - 52),
            62 => b'-',
            _ => b'_',
        }
    }

    fn value(c: u8) -> Option<u8> {
        match c {
            b'A'..=b'Z' => Some(c - b'A'),
            b'a'..=b'z' => Some(c - b'a' + 26),
            b'0'..=b'9' => Some(c - b'0' + 52),
            b'-' => Some(62),
            b'_' => Some(63),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
