//! Who may publish and watch on this edge, at run time: the token secrets (re-read
//! while the edge runs, so a secret rotates without a restart), the policy tokens
//! must meet, and the dev-only anonymous mode. QUIC sessions and WHIP/WHEP requests
//! ask the same [`Access`], so one token model holds on every client port.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::auth::{self, AuthError, Claims, KeyRing, Policy};
use crate::config::AccessConfig;

/// How often the secret files are read again.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// The edge's access decisions.
pub struct Access {
    paths: Vec<PathBuf>,
    keys: RwLock<Arc<KeyRing>>,
    policy: Policy,
    allow_anonymous: bool,
}

/// A client's credential as checked at the start of its session.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A valid token: what it grants, and the key rollouts place the session by.
    Token { claims: Claims, session_key: String },
    /// No token, on an edge that allows anonymous clients (dev only).
    Anonymous,
}

impl Credential {
    /// Whether this credential lets its bearer do `action` on `stream`.
    pub fn permits(&self, action: auth::Action, stream: &str) -> Result<(), AuthError> {
        match self {
            Credential::Token { claims, .. } => claims.permits(action, stream),
            Credential::Anonymous => Ok(()),
        }
    }

    /// Whether the token grants taking a live stream over from its publisher.
    pub fn takeover(&self) -> bool {
        matches!(self, Credential::Token { claims, .. } if claims.takeover)
    }

    /// The id rollouts place the session by, when a token carries one: its `sub`,
    /// else a digest of the token. The client cannot choose its own cohort then;
    /// an anonymous (dev) client's own id is used instead.
    pub fn session_key(&self) -> Option<&str> {
        match self {
            Credential::Token { session_key, .. } => Some(session_key),
            Credential::Anonymous => None,
        }
    }

    /// Who the token was issued to, for logs.
    pub fn subject(&self) -> Option<&str> {
        match self {
            Credential::Token { claims, .. } => claims.sub.as_deref(),
            Credential::Anonymous => None,
        }
    }
}

/// The session key of a token without `sub`: a digest, stable for the token.
fn digest_key(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    format!("token-{}", hex::encode(digest.as_ref().get(..12).unwrap_or_default()))
}

impl Access {
    /// Loads the secrets of `config`.
    pub fn load(config: &AccessConfig) -> Result<Self, auth::SecretError> {
        let keys = KeyRing::load(&config.token_secrets)?;
        Ok(Access {
            paths: config.token_secrets.clone(),
            keys: RwLock::new(Arc::new(keys)),
            policy: config.policy.clone(),
            allow_anonymous: config.allow_anonymous,
        })
    }

    /// Whether clients without a token, and relaying edges without a cluster
    /// certificate, are served (dev only).
    pub fn allows_anonymous(&self) -> bool {
        self.allow_anonymous
    }

    fn keys(&self) -> Arc<KeyRing> {
        Arc::clone(&self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Checks the credential a client presents at `now`: a token (when the edge has
    /// secrets), or none (only with `--allow-anonymous`).
    pub fn check(&self, token: Option<&str>, now: SystemTime) -> Result<Credential, AuthError> {
        let keys = self.keys();
        match token.filter(|t| !t.is_empty()) {
            None if self.allow_anonymous => Ok(Credential::Anonymous),
            None if keys.is_empty() => Err(AuthError::NotConfigured),
            None => Err(AuthError::Missing),
            // A dev edge without secrets takes any token (it cannot check one).
            Some(_) if keys.is_empty() && self.allow_anonymous => Ok(Credential::Anonymous),
            Some(_) if keys.is_empty() => Err(AuthError::NotConfigured),
            Some(token) => auth::verify(&keys, &self.policy, token, now).map(|claims| {
                let session_key = claims.sub.clone().unwrap_or_else(|| digest_key(token));
                Credential::Token { claims, session_key }
            }),
        }
    }

    /// Reads the secret files again; keeps the current secrets when that fails (a
    /// file half written, a directory being swapped).
    pub fn reload(&self) {
        if self.paths.is_empty() {
            return;
        }
        match KeyRing::load(&self.paths) {
            Ok(keys) => {
                let mut current = self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                if current.kids() != keys.kids() {
                    tracing::info!(keys = %keys.kids().join(","), "token secrets changed");
                }
                *current = Arc::new(keys);
            }
            Err(e) => tracing::warn!("keeping the current token secrets: {}", ferry_net::Chain(&e)),
        }
    }

    /// Re-reads the secrets every [`RELOAD_EVERY`] until `cancel`.
    pub async fn reload_loop(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => self.reload(),
            }
        }
    }
}
