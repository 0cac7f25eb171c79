//! Bearer tokens as the edge and the control plane parse them: an edge's `verify` (a
//! compact HS256 JWT: base64url segments, the JSON header, the signature, the JSON
//! claims, the time checks), `bearer` on an `Authorization` value, and the control
//! plane's `authenticate` (bootstrap, join and named `ferry.ACCESSOR.SECRET` tokens).
//!
//! The input is tried as a token, and as `HEADER\nCLAIMS` JSON (or claims alone) that
//! the target signs with the test secret, so the claims decoder and the time checks
//! are reached past the signature. Besides "no panic": base64url is canonical both
//! ways, accepted claims are exactly the signed JSON and re-sign to themselves, and the
//! control plane accepts only its three right answers.
#![no_main]

use ferry_control_plane::api::auth::{authenticate, secret_digest, split_token};
use ferry_control_plane::state::{OperatorToken, TokenRole};
use ferry_edge::auth::{base64url, bearer, verify, Action, Claims};
use ferry_fuzz::{now, token_keys, token_policy, TOKEN_KID, TOKEN_SECRET};
use libfuzzer_sys::fuzz_target;

const BOOTSTRAP: &str = "bootstrap-token-0123456789";
const JOIN: &str = "join-token-0123456789";
const NAMED: &str = "ferry.ci.s3cret";
const DEFAULT_HEADER: &[u8] = br#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#;

/// `header` and `claims` signed with the test secret, as `ferry token` would.
fn signed(header: &[u8], claims: &[u8]) -> String {
    let mut token = base64url::encode(header);
    token.push('.');
    token.push_str(&base64url::encode(claims));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, TOKEN_SECRET);
    let tag = ring::hmac::sign(&key, token.as_bytes());
    token.push('.');
    token.push_str(&base64url::encode(tag.as_ref()));
    token
}

/// An edge's verdict, and what must hold of accepted claims.
fn check(token: &str) -> Option<Claims> {
    let claims = verify(&token_keys(), &token_policy(), token, now()).ok()?;
    let secret = ferry_edge::auth::TokenSecret::from_bytes(TOKEN_SECRET).expect("the test secret");
    let again = verify(&token_keys(), &token_policy(), &secret.sign(&claims, Some(TOKEN_KID)), now());
    assert_eq!(again.as_ref(), Ok(&claims), "accepted claims re-signed");
    for stream in ["live/a", "live/a/b", "live", "x"] {
        for action in [Action::Publish, Action::View] {
            if claims.permits(action, stream).is_ok() {
                assert!(claims.scope.covers(stream) && claims.action == action);
            }
        }
    }
    Some(claims)
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    // As a token, and as an Authorization header.
    check(&text);
    if let Some(token) = bearer(&text) {
        assert!(!token.is_empty() && !token.contains(char::is_whitespace), "bearer gave {token:?}");
        check(token);
    }

    // As JSON the target signs.
    let (header, claims) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (data.get(..at).unwrap_or_default(), data.get(at + 1..).unwrap_or_default()),
        None => (DEFAULT_HEADER, data),
    };
    if let Some(accepted) = check(&signed(header, claims)) {
        let sent: Claims = serde_json::from_slice(claims).expect("accepted claims are claims");
        assert_eq!(accepted, sent);
    }

    // base64url: the one encoding of each byte string.
    assert_eq!(base64url::decode(&base64url::encode(data)).as_deref(), Some(data));
    if let Some(bytes) = base64url::decode(&text) {
        assert_eq!(base64url::encode(&bytes), text, "a second encoding of the same bytes decoded");
    }

    // The control plane's bearer tokens.
    let stored = OperatorToken {
        accessor: "ci".to_owned(),
        role: TokenRole::Operator,
        secret_sha256: secret_digest("s3cret"),
        created_at_ms: 0,
        created_by: "bootstrap".to_owned(),
    };
    let lookup = |accessor: &str| (accessor == "ci").then(|| stored.clone());
    let caller = authenticate(&text, BOOTSTRAP, Some(JOIN), lookup, String::new());
    let right = [BOOTSTRAP, JOIN, NAMED].contains(&text.as_ref());
    assert_eq!(caller.is_ok(), right, "{text:?} authenticated as {caller:?}");
    if let Some((accessor, secret)) = split_token(&text) {
        assert_eq!(format!("ferry.{accessor}.{secret}"), text);
    }
});
