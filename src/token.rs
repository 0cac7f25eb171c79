//! `ferry token`: mint a signed access token (HS256 JWT) for every client: QUIC
//! publish and watch, WHIP and WHEP.
//!
//! The token goes to standard output followed by a newline, nothing else, so
//! `TOKEN=$(ferry token ...)` works.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{ArgGroup, Args};
use ferry_edge::auth::{kid_of, Action, Claims, StreamScope, TokenSecret};
use ferry_proto::StreamName;

use crate::units;

/// Shortest lifetime accepted: `exp` has whole seconds, so less would be
/// expired (or nearly) on arrival.
const MIN_TTL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("scope").required(true).args(["stream", "stream_prefix"])))]
pub struct TokenArgs {
    /// File holding the secret shared with the edges (at least 16 bytes; a
    /// trailing newline is ignored). Create one with `openssl rand -hex 32 > FILE`.
    /// Its name without the extension is the key id (`kid`) the token names, so
    /// edges holding several secrets pick the right one.
    #[arg(long, env = "FERRY_TOKEN_SECRET_FILE", value_name = "FILE")]
    pub secret_file: PathBuf,
    /// The cluster the token is for (`aud`): edges accept only their own
    /// --cluster-id.
    #[arg(long, env = "FERRY_CLUSTER_ID", default_value = ferry_edge::auth::DEFAULT_AUDIENCE)]
    pub cluster_id: String,
    /// Grant exactly this stream, e.g. live/room1.
    #[arg(long, env = "FERRY_TOKEN_STREAM")]
    pub stream: Option<String>,
    /// Grant every stream under this prefix, matched on `/` boundaries
    /// (`live/a` covers `live/a` and `live/a/b`, not `live/ab`).
    #[arg(long, env = "FERRY_TOKEN_STREAM_PREFIX", value_name = "PREFIX")]
    pub stream_prefix: Option<String>,
    /// What the token allows.
    #[arg(long, env = "FERRY_TOKEN_ACTION", value_parser = action_parser())]
    pub action: Action,
    /// How long the token is valid, e.g. 10m, 1h, 24h.
    #[arg(long, env = "FERRY_TOKEN_TTL", default_value = "1h", value_parser = units::duration)]
    pub ttl: Duration,
    /// Who the token is for (the `sub` claim): edges log it, and rollouts place the
    /// session by it (a client cannot choose its own cohort).
    #[arg(long, env = "FERRY_TOKEN_SUBJECT")]
    pub subject: Option<String>,
    /// A publish token that may take the stream over from a publisher that is live
    /// on it (that publisher's session ends with `taken_over`).
    #[arg(long, env = "FERRY_TOKEN_TAKEOVER")]
    pub takeover: bool,
    /// The token becomes valid this long from now (`nbf`; default: at once).
    #[arg(long, env = "FERRY_TOKEN_NOT_BEFORE", value_parser = units::duration)]
    pub not_before: Option<Duration>,
}

fn action_parser() -> impl TypedValueParser<Value = Action> {
    PossibleValuesParser::new(["publish", "view"])
        .try_map(|s| Action::parse(&s).ok_or_else(|| format!("unknown action {s:?}")))
}

/// Prints a token for `args` on standard output.
pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    out!("{}", mint(&args, SystemTime::now())?)?;
    Ok(())
}

/// The token `args` ask for, issued at `now`.
fn mint(args: &TokenArgs, now: SystemTime) -> anyhow::Result<String> {
    let scope = scope(args)?;
    if args.ttl < MIN_TTL {
        bail!("--ttl must be at least 1s");
    }
    if args.takeover && args.action != Action::Publish {
        bail!("--takeover is for publish tokens");
    }
    let secret = TokenSecret::from_file(&args.secret_file)?;
    let mut claims = Claims::new(scope, args.action, &args.cluster_id, args.ttl, now);
    claims.sub = args.subject.clone();
    claims.takeover = args.takeover;
    if let Some(delay) = args.not_before {
        claims.nbf = Some(claims.iat.saturating_add(delay.as_secs()));
        claims.exp = claims.exp.saturating_add(delay.as_secs());
    }
    Ok(secret.sign(&claims, Some(&kid_of(&args.secret_file))))
}

/// The stream scope, validated like stream names so a typo cannot mint a token
/// that covers nothing.
fn scope(args: &TokenArgs) -> anyhow::Result<StreamScope> {
    match (&args.stream, &args.stream_prefix) {
        (Some(stream), None) => {
            StreamName::new(stream.clone()).context("--stream")?;
            Ok(StreamScope::Exact(stream.clone()))
        }
        (None, Some(prefix)) => {
            let name = prefix.strip_suffix('/').unwrap_or(prefix);
            if name.is_empty() {
                bail!("--stream-prefix must name at least one segment, e.g. live/");
            }
            StreamName::new(name).with_context(|| format!("--stream-prefix {prefix:?}"))?;
            Ok(StreamScope::Prefix(prefix.clone()))
        }
        // clap's `scope` group makes exactly one of them present.
        _ => bail!("give exactly one of --stream and --stream-prefix"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use clap::Parser;
    use ferry_edge::auth::{authorize, KeyRing, Policy};

    fn ring(file: &std::path::Path) -> KeyRing {
        KeyRing::load(&[file.to_owned()]).unwrap()
    }

    use super::*;

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(flatten)]
        args: TokenArgs,
    }

    fn parse(args: &[&str]) -> Result<TokenArgs, clap::Error> {
        TestCli::try_parse_from(std::iter::once("token").chain(args.iter().copied())).map(|c| c.args)
    }

    /// A secret file that lives as long as the returned guard.
    fn secret_file(name: &str, contents: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        (dir, path)
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    #[test]
    fn minted_token_verifies_for_its_stream() {
        let (_dir, file) = secret_file("good", "0123456789abcdef0123456789abcdef\n");
        let f = file.to_str().unwrap();
        let args =
            parse(&["--secret-file", f, "--stream", "live/room1", "--action", "publish", "--ttl", "10m"])
                .unwrap();
        let token = mint(&args, now()).unwrap();
        let (keys, policy) = (ring(&file), Policy::default());
        let claims = authorize(&keys, &policy, &token, "live/room1", Action::Publish, now()).unwrap();
        assert_eq!(claims.exp - claims.iat, 600);
        assert_eq!(claims.aud, "ferry");
        assert!(authorize(&keys, &policy, &token, "live/room1", Action::View, now()).is_err());
        // The key id is the secret file's name: a ring without that name refuses it.
        let other = KeyRing::new(vec![("other".into(), TokenSecret::from_file(&file).unwrap())]);
        assert!(authorize(&other, &policy, &token, "live/room1", Action::Publish, now()).is_err());
    }

    #[test]
    fn prefix_token_carries_subject_and_covers_below_it() {
        let (_dir, file) = secret_file("prefix", "0123456789abcdef0123456789abcdef");
        let f = file.to_str().unwrap();
        let args =
            parse(&["--secret-file", f, "--stream-prefix", "live/", "--action", "view", "--subject", "bob"])
                .unwrap();
        let token = mint(&args, now()).unwrap();
        let claims =
            authorize(&ring(&file), &Policy::default(), &token, "live/any", Action::View, now()).unwrap();
        assert_eq!(claims.sub.as_deref(), Some("bob"));
        assert_eq!(claims.exp - claims.iat, 3600, "default ttl is 1h");
    }

    #[test]
    fn exactly_one_scope_and_a_known_action_are_required() {
        let base = ["--secret-file", "s", "--action", "view"];
        assert!(parse(&base).is_err(), "no scope");
        assert!(parse(&[&base[..], &["--stream", "a", "--stream-prefix", "b/"]].concat()).is_err());
        assert!(parse(&["--secret-file", "s", "--stream", "a", "--action", "admin"]).is_err());
        assert!(parse(&["--secret-file", "s", "--stream", "a", "--action", "view", "--ttl", "soon"]).is_err());
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        let (_good_dir, good) = secret_file("ok", "0123456789abcdef0123456789abcdef");
        let (_short_dir, short) = secret_file("short", "tooshort\n");
        let (g, s) = (good.to_str().unwrap(), short.to_str().unwrap());
        let cases: [(&[&str], &str); 7] = [
            (&["--secret-file", s, "--stream", "live/a", "--action", "view"], "at least 16"),
            (
                &["--secret-file", "/nonexistent/ferry", "--stream", "live/a", "--action", "view"],
                "cannot read",
            ),
            (&["--secret-file", g, "--stream", "live/../a", "--action", "view"], "--stream"),
            (&["--secret-file", g, "--stream-prefix", "/", "--action", "view"], "at least one segment"),
            (&["--secret-file", g, "--stream-prefix", "live//", "--action", "view"], "--stream-prefix"),
            (&["--secret-file", g, "--stream", "live/a", "--action", "view", "--ttl", "0s"], "at least 1s"),
            (&["--secret-file", g, "--stream", "live/a", "--action", "view", "--takeover"], "publish tokens"),
        ];
        for (args, expected) in cases {
            let err = mint(&parse(args).unwrap(), now()).unwrap_err();
            assert!(format!("{err:#}").contains(expected), "{args:?}: {err:#}");
        }
    }
}
