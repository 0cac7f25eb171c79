//! `--config FILE` support: TOML values are turned into ordinary command-line
//! arguments so clap applies them with the precedence
//! command line > environment > config file > default.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Arg, ArgAction, Command};

const CONFIG_LONG: &str = "config";
const DEFAULT_CONFIG_ENV: &str = "FERRY_CONFIG";

/// Expands `--config FILE` into ordinary arguments for `cmd`'s chosen subcommand.
///
/// Values from the file are injected as `--long=value` (or a bare `--long` for
/// boolean flags) right after the name of the (sub)command owning the argument,
/// unless the argument was given on the command line or its environment
/// variable is set. Everything else in `args`, including `--config`, is kept.
pub fn args_with_config_file(cmd: &Command, args: Vec<OsString>) -> Result<Vec<OsString>> {
    let Some(path) = config_path(cmd, &args) else {
        return Ok(args);
    };
    let mut cmd = cmd.clone();
    cmd.build();
    let scan = scan_args(&cmd, &args);
    let leaf_incomplete = scan.chain.last().is_some_and(|(c, _)| {
        c.is_subcommand_required_set() && c.get_subcommands().next().is_some()
    });
    // Let clap report help, version, a missing subcommand or the `help` subcommand itself.
    if args.is_empty() || scan.help_or_version || leaf_incomplete {
        return Ok(args);
    }
    let shown = path.display();
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read config file {shown}"))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("cannot parse config file {shown}"))?;

    // Layers: top level, then `[sub]`, then `[sub.nested]`; later layers override.
    let mut layers = vec![(0usize, String::new(), &table)];
    let mut current = &table;
    for (depth, (sub, _)) in scan.chain.iter().enumerate().skip(1) {
        let Some(toml::Value::Table(t)) = current.get(sub.get_name()) else {
            break;
        };
        let prefix = layers.last().map(|(_, p, _)| format!("{p}{}.", sub.get_name()));
        layers.push((depth, prefix.unwrap_or_default(), t));
        current = t;
    }

    // (level, arg id) -> (key as written, value, arg)
    let mut chosen: BTreeMap<(usize, String), (String, &toml::Value, &Arg)> = BTreeMap::new();
    for (depth, prefix, layer) in &layers {
        let here = scan.chain.get(*depth).map(|(c, _)| *c);
        for (key, value) in layer.iter() {
            if value.is_table() && here.is_some_and(|c| c.find_subcommand(key).is_some()) {
                continue; // section of a subcommand (handled as a layer, or not chosen)
            }
            let full_key = format!("{prefix}{key}");
            let (level, arg) = resolve_key(&scan.chain, key).ok_or_else(|| {
                let names: Vec<&str> = scan.chain.iter().map(|(c, _)| c.get_name()).collect();
                anyhow!(
                    "unknown key `{full_key}` in config file {shown}: `{}` has no option --{}",
                    names.join(" "),
                    key.replace('_', "-")
                )
            })?;
            chosen.insert((level, arg.get_id().to_string()), (full_key, value, arg));
        }
    }

    let mut inject: Vec<(usize, Vec<OsString>)> =
        scan.chain.iter().map(|(_, pos)| (*pos, Vec::new())).collect();
    for ((level, _), (key, value, arg)) in chosen {
        let ctx = format!("key `{key}` in config file {shown}");
        let values = to_args(arg, value, &ctx)?;
        if scan.given(arg) || env_is_set(arg) {
            continue;
        }
        if let Some((_, slot)) = inject.get_mut(level) {
            slot.extend(values);
        }
    }

    let mut out = Vec::with_capacity(args.len() + inject.iter().map(|(_, v)| v.len()).sum::<usize>());
    for (i, a) in args.into_iter().enumerate() {
        out.push(a);
        for (_, extra) in inject.iter_mut().filter(|(pos, _)| *pos == i) {
            out.append(extra);
        }
    }
    Ok(out)
}

/// The config file named by `--config FILE` / `--config=FILE`, else by the env var.
fn config_path(cmd: &Command, args: &[OsString]) -> Option<PathBuf> {
    let mut iter = args.iter().skip(1);
    while let Some(a) = iter.next() {
        match a.to_str() {
            Some("--") => break,
            Some("--config") => return iter.next().map(PathBuf::from),
            Some(s) => {
                if let Some(v) = s.strip_prefix("--config=") {
                    return Some(PathBuf::from(v));
                }
            }
            None => {}
        }
    }
    let env_name = cmd
        .get_arguments()
        .find(|a| a.get_long() == Some(CONFIG_LONG))
        .and_then(Arg::get_env)
        .map_or_else(|| OsString::from(DEFAULT_CONFIG_ENV), ToOwned::to_owned);
    std::env::var_os(env_name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

struct Scan<'a> {
    /// Root and chosen subcommands, each with the index of its name in args.
    chain: Vec<(&'a Command, usize)>,
    longs: HashSet<String>,
    shorts: HashSet<char>,
    help_or_version: bool,
}

impl Scan<'_> {
    fn given(&self, arg: &Arg) -> bool {
        let long = arg.get_long().into_iter().chain(arg.get_all_aliases().unwrap_or_default());
        let short = arg.get_short().into_iter().chain(arg.get_all_short_aliases().unwrap_or_default());
        long.into_iter().any(|l| self.longs.contains(l))
            || short.into_iter().any(|s| self.shorts.contains(&s))
    }
}

fn find_arg<'a>(chain: &[(&'a Command, usize)], pred: impl Fn(&Arg) -> bool) -> Option<&'a Arg> {
    chain.iter().rev().find_map(|(c, _)| c.get_arguments().find(|a| pred(a)))
}

fn takes_value(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Set | ArgAction::Append)
}

fn is_help_or_version(arg: &Arg) -> bool {
    matches!(
        arg.get_action(),
        ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
    )
}

/// Walks args after argv[0]: records flags given and the subcommand path.
fn scan_args<'a>(cmd: &'a Command, args: &[OsString]) -> Scan<'a> {
    let mut scan = Scan { chain: vec![(cmd, 0)], longs: HashSet::new(), shorts: HashSet::new(), help_or_version: false };
    let mut i = 1;
    while let Some(tok) = args.get(i) {
        i += 1;
        let Some(tok) = tok.to_str() else { continue };
        if tok == "--" {
            break;
        }
        if let Some(rest) = tok.strip_prefix("--") {
            let (name, inline) = rest.split_once('=').map_or((rest, false), |(n, _)| (n, true));
            let arg = find_arg(&scan.chain, |a| {
                a.get_long() == Some(name) || a.get_all_aliases().unwrap_or_default().contains(&name)
            });
            scan.help_or_version |= arg.is_some_and(is_help_or_version);
            if !inline && (arg.is_some_and(takes_value) || (arg.is_none() && name == CONFIG_LONG)) {
                i += 1;
            }
            scan.longs.insert(name.to_owned());
        } else if let Some(rest) = tok.strip_prefix('-').filter(|r| !r.is_empty()) {
            for (at, c) in rest.char_indices() {
                scan.shorts.insert(c);
                let arg = find_arg(&scan.chain, |a| {
                    a.get_short() == Some(c) || a.get_all_short_aliases().unwrap_or_default().contains(&c)
                });
                scan.help_or_version |= arg.is_some_and(is_help_or_version);
                if arg.is_some_and(takes_value) {
                    if at + c.len_utf8() == rest.len() {
                        i += 1;
                    }
                    break;
                }
            }
        } else if let Some(sub) = scan.chain.last().and_then(|(c, _)| c.find_subcommand(tok)) {
            scan.help_or_version |= sub.get_name() == "help";
            scan.chain.push((sub, i - 1));
        }
    }
    scan
}

/// Finds the argument a config key names, searching the leaf command first.
fn resolve_key<'a>(chain: &[(&'a Command, usize)], key: &str) -> Option<(usize, &'a Arg)> {
    let norm = key.replace('_', "-");
    chain.iter().enumerate().rev().find_map(|(level, (c, _))| {
        c.get_arguments()
            .find(|a| {
                let Some(long) = a.get_long() else { return false };
                long != CONFIG_LONG
                    && !is_help_or_version(a)
                    && (long == norm
                        || a.get_id().as_str().replace('_', "-") == norm
                        || a.get_all_aliases().unwrap_or_default().contains(&norm.as_str()))
            })
            .map(|a| (level, a))
    })
}

fn env_is_set(arg: &Arg) -> bool {
    arg.get_env().and_then(std::env::var_os).is_some_and(|v| !v.is_empty())
}

fn scalar(value: &toml::Value, ctx: &str) -> Result<String> {
    Ok(match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(n) => n.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(_) => bail!("{ctx}: expected a single value, found an array"),
        toml::Value::Table(_) => bail!("{ctx}: expected a value, found a table"),
    })
}

/// Converts one config value into the command-line arguments for `arg`.
fn to_args(arg: &Arg, value: &toml::Value, ctx: &str) -> Result<Vec<OsString>> {
    let long = arg.get_long().unwrap_or_default();
    let flag = OsString::from(format!("--{long}"));
    let with_value = |v: String| OsString::from(format!("--{long}={v}"));
    match (arg.get_action(), value) {
        (ArgAction::SetTrue, toml::Value::Boolean(b)) => Ok(if *b { vec![flag] } else { vec![] }),
        (ArgAction::SetFalse, toml::Value::Boolean(b)) => Ok(if *b { vec![] } else { vec![flag] }),
        (ArgAction::SetTrue | ArgAction::SetFalse, _) => bail!("{ctx}: expected true or false"),
        (ArgAction::Count, toml::Value::Boolean(b)) => Ok(if *b { vec![flag] } else { vec![] }),
        (ArgAction::Count, toml::Value::Integer(n)) if (0..=255).contains(n) => {
            Ok(std::iter::repeat_n(flag, usize::try_from(*n).unwrap_or_default()).collect())
        }
        (ArgAction::Count, _) => bail!("{ctx}: expected a boolean or a count from 0 to 255"),
        (ArgAction::Append, toml::Value::Array(items)) => {
            items.iter().map(|v| scalar(v, ctx).map(with_value)).collect()
        }
        (_, toml::Value::Array(items)) => match items.as_slice() {
            [one] => Ok(vec![with_value(scalar(one, ctx)?)]),
            _ => bail!("{ctx}: option --{long} takes one value, found an array of {}", items.len()),
        },
        _ => Ok(vec![with_value(scalar(value, ctx)?)]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[arg(long, global = true, env = "FERRY_CFGTEST_CONFIG")]
        config: Option<PathBuf>,
        #[command(subcommand)]
        cmd: Sub,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Sub {
        Edge(EdgeArgs),
        Bench {
            #[command(subcommand)]
            cmd: BenchSub,
        },
    }

    #[derive(clap::Subcommand, Debug)]
    enum BenchSub {
        Fanout(EdgeArgs),
    }

    #[derive(clap::Args, Debug)]
    struct EdgeArgs {
        #[arg(long, short = 'n', env = "FERRY_CFGTEST_UNSET")]
        node_id: Option<String>,
        #[arg(long, default_value_t = 1)]
        port: u32,
        #[arg(long)]
        verbose: bool,
        #[arg(long)]
        peer: Vec<String>,
    }

    /// The test command, with `edge --node-id` reading `env_var`.
    fn command(env_var: &'static str) -> Command {
        Cli::command().mut_subcommand("edge", |s| s.mut_arg("node_id", |a| a.env(env_var)))
    }

    fn write_config(name: &str, body: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("ferry-cfgtest-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, body).unwrap();
        path
    }

    fn expand(cmd: &Command, path: &std::path::Path, rest: &[&str]) -> Result<EdgeArgs> {
        let mut args: Vec<OsString> = vec!["ferry".into(), "--config".into(), path.into()];
        args.extend(rest.iter().map(OsString::from));
        let args = args_with_config_file(cmd, args)?;
        let cli = Cli::from_arg_matches(&cmd.clone().try_get_matches_from(args)?)?;
        Ok(match cli.cmd {
            Sub::Edge(a) | Sub::Bench { cmd: BenchSub::Fanout(a) } => a,
        })
    }

    const BODY: &str = "node-id = \"n1\"\nport = 7\nverbose = true\npeer = [\"a\", \"b\"]\n";

    #[test]
    fn file_values_used_when_absent() {
        let path = write_config("absent", BODY);
        let a = expand(&command("FERRY_CFGTEST_ENV_ABSENT"), &path, &["edge"]).unwrap();
        assert_eq!(a.node_id.as_deref(), Some("n1"));
        assert_eq!((a.port, a.verbose), (7, true));
        assert_eq!(a.peer, ["a", "b"]);
        let a = expand(&command("FERRY_CFGTEST_ENV_ABSENT"), &write_config("off", "verbose = false\nnode_id = \"x\""), &["edge"]).unwrap();
        assert_eq!((a.port, a.verbose, a.node_id.as_deref()), (1, false, Some("x")));
    }

    #[test]
    fn command_line_wins_over_file() {
        let path = write_config("cli", BODY);
        let cmd = command("FERRY_CFGTEST_ENV_CLI");
        let a = expand(&cmd, &path, &["edge", "--port=9", "-n", "n2", "--peer", "c"]).unwrap();
        assert_eq!((a.node_id.as_deref(), a.port, a.verbose), (Some("n2"), 9, true));
        assert_eq!(a.peer, ["c"]);
    }

    #[test]
    fn environment_wins_over_file() {
        std::env::set_var("FERRY_CFGTEST_ENV_WINS", "from-env");
        let path = write_config("env", BODY);
        let a = expand(&command("FERRY_CFGTEST_ENV_WINS"), &path, &["edge"]).unwrap();
        assert_eq!((a.node_id.as_deref(), a.port), (Some("from-env"), 7));
    }

    #[test]
    fn config_path_from_environment() {
        std::env::set_var("FERRY_CFGTEST_CONFIG_PATH", write_config("envpath", "port = 3"));
        let cmd = Cli::command().mut_arg("config", |a| a.env("FERRY_CFGTEST_CONFIG_PATH"));
        let args = args_with_config_file(&cmd, vec!["ferry".into(), "edge".into()]).unwrap();
        assert_eq!(args, ["ferry", "edge", "--port=3"]);
    }

    #[test]
    fn sections_override_top_level() {
        let body = "port = 2\nnode-id = \"top\"\n[edge]\nport = 3\n[bench]\nport = 4\n[bench.fanout]\nverbose = true\n";
        let path = write_config("sections", body);
        let cmd = command("FERRY_CFGTEST_ENV_SECTIONS");
        let a = expand(&cmd, &path, &["edge"]).unwrap();
        assert_eq!((a.port, a.verbose, a.node_id.as_deref()), (3, false, Some("top")));
        let a = expand(&cmd, &path, &["--verbose", "bench", "fanout"]).unwrap_err();
        assert!(a.to_string().contains("verbose"), "{a}");
        let a = expand(&cmd, &path, &["bench", "fanout", "--port", "5"]).unwrap();
        assert_eq!((a.port, a.verbose), (5, true));
        let a = expand(&cmd, &path, &["bench", "fanout"]).unwrap();
        assert_eq!((a.port, a.verbose, a.node_id.as_deref()), (4, true, Some("top")));
    }

    #[test]
    fn unknown_key_is_an_error() {
        let path = write_config("unknown", "port = 2\nbogus_key = 1\n");
        let err = expand(&command("FERRY_CFGTEST_ENV_UNKNOWN"), &path, &["edge"]).unwrap_err().to_string();
        assert!(err.contains("bogus_key") && err.contains(&path.display().to_string()), "{err}");
        let path = write_config("table", "[port]\nx = 1\n");
        assert!(expand(&command("FERRY_CFGTEST_ENV_UNKNOWN"), &path, &["edge"]).is_err());
    }

    #[test]
    fn missing_or_invalid_file_errors_with_path() {
        let path = std::env::temp_dir().join("ferry-cfgtest-does-not-exist.toml");
        let err = expand(&command("FERRY_CFGTEST_ENV_MISSING"), &path, &["edge"]).unwrap_err();
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        let path = write_config("invalid", "port = = 2");
        let err = expand(&command("FERRY_CFGTEST_ENV_MISSING"), &path, &["edge"]).unwrap_err();
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    }

    #[test]
    fn no_config_leaves_args_unchanged() {
        let args: Vec<OsString> = vec!["ferry".into(), "edge".into(), "--port".into(), "3".into()];
        assert_eq!(args_with_config_file(&command("FERRY_CFGTEST_ENV_NONE"), args.clone()).unwrap(), args);
    }
}
