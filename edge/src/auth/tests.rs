use super::*;
use proptest::prelude::*;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn secret() -> TokenSecret {
    TokenSecret::from_bytes(SECRET).unwrap()
}

/// `super::authorize` with a ring of just [`secret`] and the default policy.
fn authorize(
    secret: &TokenSecret,
    token: &str,
    stream: &str,
    action: Action,
    now: SystemTime,
) -> Result<Claims, AuthError> {
    let keys = KeyRing::new(vec![("k".into(), secret.clone())]);
    super::authorize(&keys, &Policy::default(), token, stream, action, now)
}

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn exact(s: &str) -> StreamScope {
    StreamScope::Exact(s.to_owned())
}

fn prefix(s: &str) -> StreamScope {
    StreamScope::Prefix(s.to_owned())
}

/// A token with arbitrary (already encoded) header and payload segments, correctly signed.
fn sign_segments(header64: &str, payload64: &str) -> String {
    let signed = format!("{header64}.{payload64}");
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, SECRET), signed.as_bytes());
    format!("{signed}.{}", base64url::encode(tag.as_ref()))
}

fn sign_json(header: &str, payload: &str) -> String {
    sign_segments(&base64url::encode(header.as_bytes()), &base64url::encode(payload.as_bytes()))
}

const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

#[test]
fn minted_token_authorizes_its_stream_and_action() {
    let token = mint(&secret(), exact("live/room1"), Action::Publish, Duration::from_secs(3600), t0());
    let claims = authorize(&secret(), &token, "live/room1", Action::Publish, t0()).unwrap();
    assert_eq!(claims.scope, exact("live/room1"));
    assert_eq!(claims.action, Action::Publish);
    assert_eq!(claims.iat, 1_700_000_000);
    assert_eq!(claims.exp, 1_700_003_600);
    assert_eq!(claims.sub, None);
}

#[test]
fn signed_claims_use_the_documented_json() {
    let mut claims =
        Claims::new(prefix("live/"), Action::View, DEFAULT_AUDIENCE, Duration::from_secs(60), t0());
    claims.sub = Some("alice".into());
    let token = secret().sign(&claims, None);
    let segments: Vec<&str> = token.split('.').collect();
    let header = base64url::decode(segments[0]).unwrap();
    assert_eq!(header, HS256.as_bytes());
    let payload: serde_json::Value =
        serde_json::from_slice(&base64url::decode(segments[1]).unwrap()).unwrap();
    assert_eq!(
        payload,
        serde_json::json!({
            "stream_prefix": "live/", "action": "view", "aud": "ferry", "exp": 1_700_000_060u64,
            "iat": 1_700_000_000u64, "sub": "alice"
        })
    );
    assert_eq!(authorize(&secret(), &token, "live/x", Action::View, t0()).unwrap(), claims);
}

#[test]
fn tampered_payload_is_refused() {
    let token = mint(&secret(), exact("live/a"), Action::View, Duration::from_secs(60), t0());
    let segments: Vec<&str> = token.split('.').collect();
    let forged =
        Claims::new(prefix("live/"), Action::Publish, DEFAULT_AUDIENCE, Duration::from_secs(99_999), t0());
    let forged = base64url::encode(&serde_json::to_vec(&forged).unwrap());
    let tampered = format!("{}.{forged}.{}", segments[0], segments[2]);
    assert_eq!(
        authorize(&secret(), &tampered, "live/a", Action::Publish, t0()),
        Err(AuthError::BadSignature)
    );
}

#[test]
fn tampered_signature_is_refused() {
    let token = mint(&secret(), exact("live/a"), Action::View, Duration::from_secs(60), t0());
    let (signed, sig) = token.rsplit_once('.').unwrap();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    let tampered = format!("{signed}.{flipped}{}", &sig[1..]);
    assert_eq!(authorize(&secret(), &tampered, "live/a", Action::View, t0()), Err(AuthError::BadSignature));
    let truncated = format!("{signed}.{}", &sig[..40]); // 30 of the 32 bytes
    assert_eq!(authorize(&secret(), &truncated, "live/a", Action::View, t0()), Err(AuthError::BadSignature));
    let empty = format!("{signed}.");
    assert_eq!(authorize(&secret(), &empty, "live/a", Action::View, t0()), Err(AuthError::BadSignature));
}

#[test]
fn token_from_another_secret_is_refused() {
    let other = TokenSecret::from_bytes(b"another secret of enough length").unwrap();
    let token = mint(&other, exact("live/a"), Action::View, Duration::from_secs(60), t0());
    assert_eq!(authorize(&secret(), &token, "live/a", Action::View, t0()), Err(AuthError::BadSignature));
}

#[test]
fn alg_none_and_other_algorithms_are_refused() {
    let payload = r#"{"stream":"live/a","action":"view","aud":"ferry","exp":1700000600,"iat":1700000000}"#;
    let p64 = base64url::encode(payload.as_bytes());
    let none = format!("{}.{p64}.", base64url::encode(br#"{"alg":"none","typ":"JWT"}"#));
    assert_eq!(
        authorize(&secret(), &none, "live/a", Action::View, t0()),
        Err(AuthError::UnsupportedAlgorithm("none".into()))
    );
    for alg in ["HS512", "hs256", "RS256", ""] {
        let token = sign_json(&format!(r#"{{"alg":"{alg}"}}"#), payload);
        let err = authorize(&secret(), &token, "live/a", Action::View, t0()).unwrap_err();
        assert_eq!(err, AuthError::UnsupportedAlgorithm(alg.into()), "alg {alg:?}");
        assert_eq!(err.reason(), "token_unsupported_alg");
    }
    let no_alg = sign_json(r#"{"typ":"JWT"}"#, payload);
    assert!(matches!(
        authorize(&secret(), &no_alg, "live/a", Action::View, t0()),
        Err(AuthError::Malformed(_))
    ));
    let crit = sign_json(r#"{"alg":"HS256","crit":["exp"]}"#, payload);
    assert!(matches!(
        authorize(&secret(), &crit, "live/a", Action::View, t0()),
        Err(AuthError::Malformed(_))
    ));
    // A bare header without typ is fine.
    let bare = sign_json(r#"{"alg":"HS256"}"#, payload);
    assert!(authorize(&secret(), &bare, "live/a", Action::View, t0()).is_ok());
}

#[test]
fn expired_token_is_refused_after_the_leeway() {
    let token = mint(&secret(), exact("live/a"), Action::View, Duration::from_secs(60), t0());
    let leeway = CLOCK_LEEWAY.as_secs();
    let at = |s: u64| t0() + Duration::from_secs(s);
    assert!(authorize(&secret(), &token, "live/a", Action::View, at(59)).is_ok());
    assert!(authorize(&secret(), &token, "live/a", Action::View, at(60 + leeway - 1)).is_ok());
    let err = authorize(&secret(), &token, "live/a", Action::View, at(60 + leeway)).unwrap_err();
    assert_eq!(err, AuthError::Expired);
    assert_eq!(err.reason(), "token_expired");
    let zero = mint(&secret(), exact("live/a"), Action::View, Duration::ZERO, t0());
    assert_eq!(authorize(&secret(), &zero, "live/a", Action::View, at(leeway)), Err(AuthError::Expired));
}

#[test]
fn wrong_action_is_refused() {
    let token = mint(&secret(), exact("live/a"), Action::View, Duration::from_secs(60), t0());
    let err = authorize(&secret(), &token, "live/a", Action::Publish, t0()).unwrap_err();
    assert_eq!(err, AuthError::WrongAction { granted: Action::View, wanted: Action::Publish });
    assert_eq!(err.to_string(), "token grants view, not publish");
}

#[test]
fn prefixes_cover_streams_on_slash_boundaries() {
    let cases = [
        (exact("live/a"), "live/a", true),
        (exact("live/a"), "live/ab", false),
        (exact("live/a"), "live/a/b", false),
        (prefix("live/"), "live/a", true),
        (prefix("live/"), "live/a/b", true),
        (prefix("live/"), "live", false),
        (prefix("live/"), "lives/a", false),
        (prefix("live/a"), "live/a", true),
        (prefix("live/a"), "live/a/b", true),
        (prefix("live/a"), "live/ab", false),
        (prefix("live/a/"), "live/a", false),
        (prefix("live"), "live/x", true),
        (prefix("live"), "livestream", false),
        (prefix(""), "live/a", false),
    ];
    for (scope, stream, covered) in cases {
        assert_eq!(scope.covers(stream), covered, "{scope} vs {stream:?}");
        let token = mint(&secret(), scope.clone(), Action::View, Duration::from_secs(60), t0());
        let result = authorize(&secret(), &token, stream, Action::View, t0());
        assert_eq!(result.is_ok(), covered, "{scope} vs {stream:?}: {result:?}");
        if let Err(err) = result {
            assert_eq!(err.reason(), "token_wrong_stream");
        }
    }
}

#[test]
fn invalid_stream_names_are_never_covered() {
    let token = mint(&secret(), prefix("live/"), Action::View, Duration::from_secs(60), t0());
    for stream in ["live/../admin", "live//a", "live/./a", "live/a b", ""] {
        let err = authorize(&secret(), &token, stream, Action::View, t0()).unwrap_err();
        assert!(matches!(err, AuthError::StreamNotCovered { .. }), "{stream:?}: {err:?}");
    }
}

#[test]
fn malformed_tokens_are_refused() {
    let valid = mint(&secret(), exact("live/a"), Action::View, Duration::from_secs(60), t0());
    let h64 = valid.split('.').next().unwrap();
    assert_eq!(authorize(&secret(), "", "live/a", Action::View, t0()), Err(AuthError::Missing));
    for token in [
        "abc",
        "a.b",
        &format!("{valid}.extra"),
        "!!!.e30.AAAA",
        "e30.e30.AAAA",              // `{}` is no JWT header
        &format!("{h64}.e30.A"),     // signature of impossible length
        &format!("{h64}.e30.AAA="),  // padding
        &format!("{h64}.e30.AA+/"),  // standard alphabet
        &sign_segments(h64, "e30="), // signed, but the payload has padding
        &sign_segments(h64, "*"),    // signed, but the payload is not base64
        &sign_json(HS256, "{}"),     // no claims
        &sign_json(HS256, "not json"),
        &sign_json(
            HS256,
            r#"{"stream":"live/a","stream_prefix":"live/","action":"view","exp":1800000000,"iat":0}"#,
        ),
        &sign_json(HS256, r#"{"action":"view","exp":1800000000,"iat":0}"#),
        &sign_json(HS256, r#"{"stream":"live/a","action":"admin","exp":1800000000,"iat":0}"#),
        &sign_json(HS256, r#"{"stream":"live/a","action":"view","exp":-1,"iat":0}"#),
        &sign_json(HS256, r#"{"stream":"live/a","action":"view","exp":"soon","iat":0}"#),
    ] {
        let err = authorize(&secret(), token, "live/a", Action::View, t0()).unwrap_err();
        assert!(matches!(err, AuthError::Malformed(_)), "{token:?}: {err:?}");
        assert_eq!(err.reason(), "token_malformed");
    }
}

#[test]
fn unknown_claims_are_ignored() {
    let token = sign_json(
        HS256,
        r#"{"stream":"live/a","action":"view","aud":"ferry","exp":1700000600,"iat":1700000000,"jti":"x"}"#,
    );
    assert!(authorize(&secret(), &token, "live/a", Action::View, t0()).is_ok());
}

#[test]
fn oversized_tokens_are_refused_before_decoding() {
    let huge = "A".repeat(MAX_TOKEN_LEN + 1);
    assert_eq!(
        authorize(&secret(), &huge, "live/a", Action::View, t0()),
        Err(AuthError::Malformed("token longer than 4 KiB"))
    );
    let mut claims =
        Claims::new(exact("live/a"), Action::View, DEFAULT_AUDIENCE, Duration::from_secs(60), t0());
    claims.sub = Some("x".repeat(MAX_TOKEN_LEN));
    let signed = secret().sign(&claims, None);
    assert_eq!(
        authorize(&secret(), &signed, "live/a", Action::View, t0()),
        Err(AuthError::Malformed("token longer than 4 KiB"))
    );
}

#[test]
fn bearer_header_values_parse() {
    assert_eq!(bearer("Bearer abc.def.ghi"), Some("abc.def.ghi"));
    assert_eq!(bearer("bearer abc"), Some("abc"));
    assert_eq!(bearer("BEARER  abc "), Some("abc"));
    assert_eq!(bearer("Basic abc"), None);
    assert_eq!(bearer("Bearer"), None);
    assert_eq!(bearer("Bearer "), None);
    assert_eq!(bearer("Bearer a b"), None);
    assert_eq!(bearer("Bearerabc"), None);
    assert_eq!(bearer(""), None);
}

#[test]
fn short_secrets_are_refused() {
    assert!(matches!(TokenSecret::from_bytes(b"too short"), Err(SecretError::TooShort { len: 9 })));
    assert!(TokenSecret::from_bytes(&[0u8; MIN_SECRET_LEN]).is_ok());
}

#[test]
fn secret_files_drop_trailing_newline_and_refuse_short_ones() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, [SECRET, b"\r\n"].concat()).unwrap();
    let from_file = TokenSecret::from_file(&file).unwrap();
    let token = mint(&from_file, exact("live/a"), Action::View, Duration::from_secs(60), t0());
    assert!(authorize(&secret(), &token, "live/a", Action::View, t0()).is_ok());

    std::fs::write(&file, b"0123456789abcde\n").unwrap();
    let err = TokenSecret::from_file(&file).unwrap_err();
    assert!(err.to_string().contains("at least 16"), "{err}");
    let err = TokenSecret::from_file(&dir.path().join("missing")).unwrap_err();
    assert!(matches!(err, SecretError::Read { .. }), "{err}");
}

#[test]
fn secrets_do_not_print() {
    assert_eq!(format!("{:?}", secret()), "TokenSecret(<redacted>)");
}

#[test]
fn reasons_are_distinct() {
    let errors = [
        AuthError::Missing,
        AuthError::Malformed("x"),
        AuthError::BadSignature,
        AuthError::UnsupportedAlgorithm("none".into()),
        AuthError::Expired,
        AuthError::WrongAction { granted: Action::View, wanted: Action::Publish },
        AuthError::StreamNotCovered { stream: "a".into(), scope: exact("b") },
    ];
    let reasons: std::collections::HashSet<_> = errors.iter().map(AuthError::reason).collect();
    assert_eq!(reasons.len(), errors.len());
}

#[test]
fn base64url_matches_rfc4648_vectors() {
    for (plain, encoded) in [
        ("", ""),
        ("f", "Zg"),
        ("fo", "Zm8"),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg"),
        ("fooba", "Zm9vYmE"),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64url::encode(plain.as_bytes()), encoded);
        assert_eq!(base64url::decode(encoded).unwrap(), plain.as_bytes());
    }
    assert_eq!(base64url::encode(&[0xfb, 0xff]), "-_8");
    assert_eq!(base64url::decode("-_8").unwrap(), [0xfb, 0xff]);
}

#[test]
fn base64url_refuses_non_canonical_input() {
    for bad in ["Z", "Zg==", "Zh", "Zm9", "Zm+v", "Zm/v", "Zm9v\n", " Zm9v", "Zm9vY"] {
        assert_eq!(base64url::decode(bad), None, "{bad:?}");
    }
}

proptest! {
    #[test]
    fn base64url_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let encoded = base64url::encode(&bytes);
        prop_assert!(encoded.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        prop_assert_eq!(encoded.len(), (bytes.len() * 4).div_ceil(3));
        prop_assert_eq!(base64url::decode(&encoded), Some(bytes));
    }

    #[test]
    fn base64url_decode_is_canonical(text in "[A-Za-z0-9_=+/.-]{0,64}") {
        if let Some(bytes) = base64url::decode(&text) {
            prop_assert_eq!(base64url::encode(&bytes), text);
        }
    }

    #[test]
    fn arbitrary_tokens_never_panic(token in "\\PC{0,300}", stream in "[a-z/.]{0,20}") {
        let _ = authorize(&secret(), &token, &stream, Action::View, t0());
    }
}

/// A token of `json` claims, signed with [`secret`] under key id `kid`.
fn token_with(json: &str, kid: Option<&str>) -> String {
    let header = match kid {
        Some(kid) => format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{kid}"}}"#),
        None => HS256.to_owned(),
    };
    sign_json(&header, json)
}

#[test]
fn audience_nbf_iat_and_the_lifetime_cap_are_checked() {
    let keys = KeyRing::new(vec![("k".into(), secret())]);
    let policy = Policy { audience: "prod".into(), max_ttl: Duration::from_secs(3600) };
    let check = |json: &str| verify(&keys, &policy, &token_with(json, None), t0());
    let t = 1_700_000_000u64;
    let ok = format!(r#"{{"stream":"a","action":"view","aud":"prod","exp":{},"iat":{t}}}"#, t + 60);
    assert!(check(&ok).is_ok());
    let other = format!(r#"{{"stream":"a","action":"view","aud":"staging","exp":{},"iat":{t}}}"#, t + 60);
    assert_eq!(check(&other).unwrap_err().reason(), "token_wrong_audience");
    let none = format!(r#"{{"stream":"a","action":"view","exp":{},"iat":{t}}}"#, t + 60);
    assert_eq!(check(&none).unwrap_err().reason(), "token_wrong_audience", "aud is required");
    let early = format!(
        r#"{{"stream":"a","action":"view","aud":"prod","exp":{},"iat":{t},"nbf":{}}}"#,
        t + 600,
        t + 60
    );
    assert_eq!(check(&early).unwrap_err().reason(), "token_not_yet_valid");
    let future =
        format!(r#"{{"stream":"a","action":"view","aud":"prod","exp":{},"iat":{}}}"#, t + 600, t + 60);
    assert_eq!(check(&future).unwrap_err().reason(), "token_issued_in_future");
    // Issued two hours ago for a day: the one-hour cap ended it an hour ago.
    let long =
        format!(r#"{{"stream":"a","action":"view","aud":"prod","exp":{},"iat":{}}}"#, t + 86_400, t - 7_200);
    assert_eq!(check(&long).unwrap_err().reason(), "token_expired");
}

#[test]
fn a_key_id_picks_its_secret_and_rotation_keeps_both_working() {
    let old = TokenSecret::from_bytes(b"old-secret-0123456789abcdef").unwrap();
    let new = TokenSecret::from_bytes(b"new-secret-0123456789abcdef").unwrap();
    let claims = Claims::new(exact("live/a"), Action::View, DEFAULT_AUDIENCE, Duration::from_secs(60), t0());
    let (by_old, by_new) = (old.sign(&claims, Some("old")), new.sign(&claims, Some("new")));
    let both = KeyRing::new(vec![("old".into(), old.clone()), ("new".into(), new.clone())]);
    let policy = Policy::default();
    assert!(verify(&both, &policy, &by_old, t0()).is_ok());
    assert!(verify(&both, &policy, &by_new, t0()).is_ok());
    let only_new = KeyRing::new(vec![("new".into(), new.clone())]);
    assert_eq!(verify(&only_new, &policy, &by_old, t0()).unwrap_err().reason(), "token_unknown_key");
    // A kid naming another key's secret does not verify.
    let lying = old.sign(&claims, Some("new"));
    assert_eq!(verify(&both, &policy, &lying, t0()).unwrap_err(), AuthError::BadSignature);
    // Without a kid (older minters) every secret is tried.
    assert!(verify(&both, &policy, &old.sign(&claims, None), t0()).is_ok());
}
