//! Named operator tokens: an accessor id, a role, and the SHA-256 of the secret (the
//! secret itself is shown once to whoever created the token and stored nowhere).

use super::checks::check_label;
use super::*;

/// What an operator token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenRole {
    /// Read-only: clusters, edges, streams, rollouts, audit.
    Viewer,
    /// Viewer, plus rollouts, drains and streams.
    Operator,
    /// Everything: voters, tokens too.
    Admin,
}

impl TokenRole {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenRole::Viewer => "viewer",
            TokenRole::Operator => "operator",
            TokenRole::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<TokenRole> {
        match text {
            "viewer" => Some(TokenRole::Viewer),
            "operator" => Some(TokenRole::Operator),
            "admin" => Some(TokenRole::Admin),
            _ => None,
        }
    }
}

/// An operator token as the replicated state holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorToken {
    pub accessor: String,
    pub role: TokenRole,
    /// Lowercase hex SHA-256 of the secret.
    pub secret_sha256: String,
    pub created_at_ms: u64,
    /// The principal that created it.
    pub created_by: String,
}

/// The accessor of the token a voter is started with (`--token-file`): never stored.
pub const BOOTSTRAP_ACCESSOR: &str = "bootstrap";
/// Operator tokens the state holds at most.
pub const MAX_TOKENS: usize = 1_000;

pub(super) fn create_token(
    state: &mut State,
    now: u64,
    actor: &str,
    accessor: &str,
    role: TokenRole,
    secret_sha256: &str,
) -> Step {
    check_label("token accessor", accessor)?;
    if accessor == BOOTSTRAP_ACCESSOR {
        return Err(rejected(REJECT_INVALID, format!("token accessor {accessor:?} is reserved")));
    }
    let hex_digest = secret_sha256.len() == 64
        && secret_sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex_digest {
        return Err(rejected(REJECT_INVALID, "secret_sha256 must be 64 lowercase hex digits"));
    }
    if state.tokens.contains_key(accessor) {
        return Err(rejected(REJECT_CONFLICT, format!("token {accessor:?} already exists")));
    }
    if state.tokens.len() >= MAX_TOKENS {
        return Err(rejected(REJECT_CONFLICT, format!("{MAX_TOKENS} tokens exist; revoke some first")));
    }
    let token = OperatorToken {
        accessor: accessor.to_owned(),
        role,
        secret_sha256: secret_sha256.to_owned(),
        created_at_ms: now,
        created_by: actor.to_owned(),
    };
    state.tokens.insert(accessor.to_owned(), token);
    Ok(Some(Change {
        target: accessor.to_owned(),
        summary: format!("token created with role {}", role.as_str()),
        detail: json!({ "accessor": accessor, "role": role }),
    }))
}

pub(super) fn revoke_token(state: &mut State, accessor: &str) -> Step {
    let token = state
        .tokens
        .remove(accessor)
        .ok_or_else(|| rejected(REJECT_NOT_FOUND, format!("no token {accessor:?}")))?;
    Ok(Some(Change {
        target: accessor.to_owned(),
        summary: format!("token with role {} revoked", token.role.as_str()),
        detail: json!({ "accessor": accessor, "revoked": true }),
    }))
}
