//! `--config FILE` support: TOML values are turned into ordinary command-line
//! arguments, so clap applies the precedence
//! command line > environment > config file > default.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Arg, ArgAction as A, Command};
use toml::Value;

const CONFIG_LONG: &str = "config";
const DEFAULT_CONFIG_ENV: &str = "FERRY_CONFIG";

/// Expands `--config FILE` into ordinary arguments for `cmd`'s chosen subcommand.
///
/// Keys are taken from the top level of the file, overridden by `[sub]` and
/// `[sub.nested]` sections along the chosen subcommand path. Each value is
/// injected as `--long=value` (a bare `--long` for boolean flags) right after
/// the name of the (sub)command owning the argument, unless the argument is
/// on the command line or its environment variable is set. Everything else in
/// `args`, including `--config`, is kept. Help/version requests and an
/// incomplete subcommand path are returned unchanged for clap to report.
pub fn args_with_config_file(cmd: &Command, args: Vec<OsString>) -> Result<Vec<OsString>> {
    let Some(path) = config_path(cmd, &args) else {
        return Ok(args);
    };
    let mut cmd = cmd.clone();
    cmd.build();
    let scan = scan_args(&cmd, &args);
    let incomplete = scan
        .chain
        .last()
        .is_some_and(|(c, _)| c.is_subcommand_required_set() && c.get_subcommands().next().is_some());
    if args.is_empty() || scan.help_or_version || incomplete {
        return Ok(args);
    }
    let shown = path.display();
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read config file {shown}"))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("cannot parse config file {shown}"))?;

    // (depth in chain, key prefix, table); later layers override earlier ones.
    let mut layers = vec![(0, String::new(), &table)];
    for (depth, (sub, _)) in scan.chain.iter().enumerate().skip(1) {
        let Some((_, prefix, parent)) = layers.last() else {
            break;
        };
        let Some(Value::Table(t)) = parent.get(sub.get_name()) else {
            break;
        };
        layers.push((depth, format!("{prefix}{}.", sub.get_name()), t));
    }

    // (chain level, arg id) -> (key as written, value, arg)
    let mut chosen: BTreeMap<(usize, String), (String, &Value, &Arg)> = BTreeMap::new();
    for (depth, prefix, layer) in &layers {
        let here = scan.chain.get(*depth).map(|(c, _)| *c);
        for (key, value) in layer.iter() {
            if value.is_table() && here.is_some_and(|c| c.find_subcommand(key).is_some()) {
                continue; // a subcommand's section: a later layer, or not chosen
            }
            let full = format!("{prefix}{key}");
            let Some((level, arg)) = resolve_key(&scan.chain, key) else {
                // A top-level key belongs to whichever commands have that flag (one file
                // serves `ferry edge` and `ferry ctl`); it is an error only when no
                // command has it. A key in a `[command]` table must be that command's.
                if *depth == 0 && flag_anywhere(&cmd, key) {
                    continue;
                }
                let names: Vec<&str> = scan.chain.iter().map(|(c, _)| c.get_name()).collect();
                let (names, opt) = (names.join(" "), key.replace('_', "-"));
                bail!("unknown key `{full}` in config file {shown}: `{names}` has no --{opt}");
            };
            chosen.insert((level, arg.get_id().to_string()), (full, value, arg));
        }
    }

    let mut inject: Vec<(usize, Vec<OsString>)> = scan.chain.iter().map(|(_, pos)| (*pos, vec![])).collect();
    for ((level, _), (key, value, arg)) in chosen {
        let ctx = format!("key `{key}` in config file {shown}");
        let values = to_args(arg, value, &ctx)?;
        check_values(arg, &values, &ctx)?;
        let env = arg.get_env().and_then(std::env::var_os);
        if scan.given(arg) || env.is_some_and(|v| !v.is_empty()) {
            continue;
        }
        if let Some((_, slot)) = inject.get_mut(level) {
            slot.extend(values);
        }
    }
    let mut out = Vec::with_capacity(args.len());
    for (i, a) in args.into_iter().enumerate() {
        out.push(a);
        for (_, extra) in inject.iter_mut().filter(|(pos, _)| *pos == i) {
            out.append(extra);
        }
    }
    Ok(out)
}

/// The file named by `--config FILE` / `--config=FILE`, else by the env var.
fn config_path(cmd: &Command, args: &[OsString]) -> Option<PathBuf> {
    let mut iter = args.iter().skip(1).map(|a| a.to_str().unwrap_or_default());
    while let Some(a) = iter.next() {
        match a {
            "--" => break,
            "--config" => return iter.next().map(PathBuf::from),
            _ => {}
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    let mut args = cmd.get_arguments();
    let config = args.find(|a| a.get_long() == Some(CONFIG_LONG));
    let env = config.and_then(Arg::get_env).map(ToOwned::to_owned);
    let env = std::env::var_os(env.unwrap_or_else(|| DEFAULT_CONFIG_ENV.into()));
    env.filter(|v| !v.is_empty()).map(PathBuf::from)
}

struct Scan<'a> {
    /// Root and chosen subcommands, each with the index of its name in args.
    chain: Vec<(&'a Command, usize)>,
    longs: HashSet<String>,
    shorts: HashSet<char>,
    help_or_version: bool,
}

impl<'a> Scan<'a> {
    /// Whether `arg` appears on the command line (long, short or an alias).
    fn given(&self, arg: &Arg) -> bool {
        let longs = arg.get_all_aliases().unwrap_or_default();
        let shorts = arg.get_all_short_aliases().unwrap_or_default();
        let mut longs = arg.get_long().into_iter().chain(longs);
        let mut shorts = arg.get_short().into_iter().chain(shorts);
        longs.any(|l| self.longs.contains(l)) || shorts.any(|s| self.shorts.contains(&s))
    }

    /// The argument for a flag seen in args, searching the innermost command first.
    fn find(&self, long: Option<&str>, short: Option<char>) -> Option<&'a Arg> {
        let is = |a: &&Arg| {
            let aliases = a.get_all_aliases().unwrap_or_default();
            let shorts = a.get_all_short_aliases().unwrap_or_default();
            long.is_some_and(|l| a.get_long() == Some(l) || aliases.contains(&l))
                || short.is_some_and(|s| a.get_short() == Some(s) || shorts.contains(&s))
        };
        let mut cmds = self.chain.iter().rev();
        cmds.find_map(|(c, _)| c.get_arguments().find(is))
    }

    /// Records a flag; returns whether it takes a value.
    fn flag(&mut self, long: Option<&str>, short: Option<char>) -> bool {
        let action = self.find(long, short).map(Arg::get_action);
        self.help_or_version |= action.is_some_and(is_help_or_version);
        self.longs.extend(long.map(str::to_owned));
        self.shorts.extend(short);
        matches!(action, Some(A::Set | A::Append)) || (action.is_none() && long == Some(CONFIG_LONG))
    }
}

fn is_help_or_version(action: &A) -> bool {
    matches!(action, A::Help | A::HelpShort | A::HelpLong | A::Version)
}

/// Walks args after argv[0], recording flags given and the subcommand path.
fn scan_args<'a>(cmd: &'a Command, args: &[OsString]) -> Scan<'a> {
    let (chain, longs, shorts) = (vec![(cmd, 0)], HashSet::new(), HashSet::new());
    let mut scan = Scan { chain, longs, shorts, help_or_version: false };
    let mut i = 1;
    while let Some(tok) = args.get(i) {
        i += 1;
        let tok = tok.to_str().unwrap_or_default();
        if tok == "--" {
            break;
        } else if let Some(rest) = tok.strip_prefix("--") {
            let (name, inline) = rest.split_once('=').map_or((rest, false), |(n, _)| (n, true));
            if scan.flag(Some(name), None) && !inline {
                i += 1; // skip the flag's value
            }
        } else if let Some(rest) = tok.strip_prefix('-').filter(|r| !r.is_empty()) {
            for (at, c) in rest.char_indices() {
                if scan.flag(None, Some(c)) {
                    i += usize::from(at + c.len_utf8() == rest.len());
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

/// The argument a config key names (`node-id` or `node_id`), leaf command first.
fn resolve_key<'a>(chain: &[(&'a Command, usize)], key: &str) -> Option<(usize, &'a Arg)> {
    let norm = key.replace('_', "-");
    let names = |a: &&Arg| {
        let long = a.get_long().unwrap_or_default();
        let aliases = a.get_all_aliases().unwrap_or_default();
        !long.is_empty()
            && long != CONFIG_LONG
            && !is_help_or_version(a.get_action())
            && (long == norm || aliases.contains(&norm.as_str()))
    };
    let mut levels = chain.iter().enumerate().rev();
    levels.find_map(|(level, (c, _))| c.get_arguments().find(names).map(|a| (level, a)))
}

/// Whether any command of the whole command line has the flag `key`.
fn flag_anywhere(cmd: &Command, key: &str) -> bool {
    let chain = [(cmd, 0)];
    resolve_key(&chain, key).is_some() || cmd.get_subcommands().any(|sub| flag_anywhere(sub, key))
}

/// Runs a config key's `--flag=value`s through the flag's own parser (alone, without
/// its relations to other flags), so a bad value is reported with the file and the
/// key, not as if it had been typed on the command line.
fn check_values(arg: &Arg, values: &[OsString], ctx: &str) -> Result<()> {
    if !matches!(arg.get_action(), A::Set | A::Append) || values.is_empty() {
        return Ok(());
    }
    let Some(long) = arg.get_long() else { return Ok(()) };
    let mut alone = Arg::new(arg.get_id().clone())
        .long(long.to_owned())
        .action(arg.get_action().clone())
        .value_parser(arg.get_value_parser().clone());
    if let Some(delimiter) = arg.get_value_delimiter() {
        alone = alone.value_delimiter(delimiter);
    }
    let command = Command::new("ferry").arg(alone).no_binary_name(true);
    if let Err(e) = command.try_get_matches_from(values) {
        let why = e.to_string();
        let why = why.lines().next().unwrap_or_default().trim_start_matches("error: ").to_owned();
        bail!("{ctx}: {why}");
    }
    Ok(())
}

fn scalar(value: &Value, ctx: &str) -> Result<String> {
    Ok(match value {
        Value::String(s) => s.clone(),
        Value::Integer(n) => n.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Boolean(b) => b.to_string(),
        Value::Datetime(d) => d.to_string(),
        Value::Array(_) => bail!("{ctx}: expected a single value, found an array"),
        Value::Table(_) => bail!("{ctx}: expected a value, found a table"),
    })
}

/// Converts one config value into the command-line arguments for `arg`.
fn to_args(arg: &Arg, value: &Value, ctx: &str) -> Result<Vec<OsString>> {
    let long = arg.get_long().unwrap_or_default();
    let flag = || vec![OsString::from(format!("--{long}"))];
    let with_value = |v: String| OsString::from(format!("--{long}={v}"));
    Ok(match (arg.get_action(), value) {
        (A::SetTrue | A::Count, Value::Boolean(b)) => flag().into_iter().filter(|_| *b).collect(),
        (A::SetFalse, Value::Boolean(b)) => flag().into_iter().filter(|_| !*b).collect(),
        (A::SetTrue | A::SetFalse, _) => bail!("{ctx}: expected true or false"),
        (A::Count, Value::Integer(n)) => {
            let n = u8::try_from(*n).with_context(|| format!("{ctx}: count out of range"))?;
            (0..n).flat_map(|_| flag()).collect()
        }
        (A::Count, _) => bail!("{ctx}: expected a boolean or a count"),
        (A::Append, Value::Array(items)) => {
            let values: Result<Vec<String>> = items.iter().map(|v| scalar(v, ctx)).collect();
            values?.into_iter().map(with_value).collect()
        }
        (_, Value::Array(items)) => match items.as_slice() {
            [one] => vec![with_value(scalar(one, ctx)?)],
            _ => bail!("{ctx}: --{long} takes one value, not an array"),
        },
        _ => vec![with_value(scalar(value, ctx)?)],
    })
}

/// A token or key kept in a file (the file named by `flag`), without surrounding
/// whitespace.
pub fn read_secret(file: &std::path::Path, flag: &str) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {flag} {}", file.display()))?;
    Ok(text.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};
    use std::path::Path;

    #[derive(clap::Parser)]
    struct Cli {
        #[arg(long, global = true, env = "FERRY_CFGTEST_CONFIG")]
        config: Option<PathBuf>,
        #[command(subcommand)]
        cmd: Sub,
    }

    #[derive(clap::Subcommand)]
    enum Sub {
        Edge(EdgeArgs),
        #[command(subcommand)]
        Bench(BenchSub),
        Ctl(CtlArgs),
    }

    #[derive(clap::Args)]
    struct CtlArgs {
        #[arg(long)]
        json: bool,
    }

    #[derive(clap::Subcommand)]
    enum BenchSub {
        Fanout(EdgeArgs),
    }

    #[derive(clap::Args)]
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

    const BODY: &str = "node-id = \"n1\"\nport = 7\nverbose = true\npeer = [\"a\", \"b\"]\n";

    /// The test command, with `edge --node-id` reading `env_var`.
    fn command(env_var: &'static str) -> Command {
        Cli::command().mut_subcommand("edge", |s| s.mut_arg("node_id", |a| a.env(env_var)))
    }

    /// A config file in the temp dir, removed when dropped.
    struct TempConfig(tempfile::TempPath);

    impl std::ops::Deref for TempConfig {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    fn write_config(body: &str) -> TempConfig {
        let file = tempfile::Builder::new().prefix("ferry-cfgtest-").suffix(".toml").tempfile().unwrap();
        std::fs::write(file.path(), body).unwrap();
        TempConfig(file.into_temp_path())
    }

    /// Expands and parses `ferry --config FILE <rest>`; summarises the leaf's args.
    fn expand(env_var: &'static str, path: &std::path::Path, rest: &[&str]) -> Result<String> {
        let cmd = command(env_var);
        let mut args: Vec<OsString> = vec!["ferry".into(), "--config".into(), path.into()];
        args.extend(rest.iter().map(OsString::from));
        let args = args_with_config_file(&cmd, args)?;
        let (Sub::Edge(a) | Sub::Bench(BenchSub::Fanout(a))) =
            (match Cli::from_arg_matches(&cmd.try_get_matches_from(args)?)?.cmd {
                Sub::Ctl(c) => return Ok(format!("ctl {}", c.json)),
                other => other,
            })
        else {
            unreachable!("ctl returned above")
        };
        let (node, peers) = (a.node_id.unwrap_or_default(), a.peer.join(","));
        Ok(format!("{node} {} {} [{peers}]", a.port, a.verbose))
    }

    fn run(env_var: &'static str, body: &str, rest: &[&str]) -> Result<String> {
        expand(env_var, &write_config(body), rest)
    }

    #[test]
    fn file_values_used_when_absent() {
        let got = run("FERRY_CFGTEST_E1", BODY, &["edge"]).unwrap();
        assert_eq!(got, "n1 7 true [a,b]");
        let body = "verbose = false\nnode_id = \"x\"";
        assert_eq!(run("FERRY_CFGTEST_E1", body, &["edge"]).unwrap(), "x 1 false []");
    }

    #[test]
    fn command_line_wins_over_file() {
        let cli = ["edge", "--port=9", "-n", "n2", "--peer", "c"];
        let got = run("FERRY_CFGTEST_E2", BODY, &cli).unwrap();
        assert_eq!(got, "n2 9 true [c]");
    }

    #[test]
    fn environment_wins_over_file() {
        std::env::set_var("FERRY_CFGTEST_E3", "from-env");
        let got = run("FERRY_CFGTEST_E3", BODY, &["edge"]).unwrap();
        assert_eq!(got, "from-env 7 true [a,b]");
    }

    #[test]
    fn sections_override_top_level() {
        let body = "port = 2\nnode-id = \"top\"\n[edge]\nport = 3\n\
                    [bench]\nport = 4\n[bench.fanout]\nverbose = true\n";
        let run = |rest: &[&str]| run("FERRY_CFGTEST_E4", body, rest).unwrap();
        assert_eq!(run(&["edge"]), "top 3 false []");
        assert_eq!(run(&["bench", "fanout"]), "top 4 true []");
        assert_eq!(run(&["bench", "fanout", "--port", "5"]), "top 5 true []");
    }

    #[test]
    fn config_path_from_environment_and_injection_position() {
        let file = write_config("port = 3");
        std::env::set_var("FERRY_CFGTEST_CONFIG_PATH", file.as_os_str());
        let cmd = Cli::command().mut_arg("config", |a| a.env("FERRY_CFGTEST_CONFIG_PATH"));
        let args = ["ferry", "bench", "fanout", "--verbose"].map(OsString::from).to_vec();
        let got = args_with_config_file(&cmd, args).unwrap();
        assert_eq!(got, ["ferry", "bench", "fanout", "--port=3", "--verbose"]);
    }

    #[test]
    fn unknown_key_and_bad_values_are_errors() {
        let path = write_config("port = 2\nbogus_key = 1\n");
        let err = expand("FERRY_CFGTEST_E5", &path, &["edge"]).unwrap_err();
        let (err, shown) = (err.to_string(), path.display().to_string());
        assert!(err.contains("`bogus_key`") && err.contains(&shown), "{err}");
        for bad in ["[port]\nx = 1\n", "port = [1, 2]", "verbose = \"yes\""] {
            assert!(run("FERRY_CFGTEST_E5", bad, &["edge"]).is_err(), "{bad}");
        }
    }

    #[test]
    fn top_level_keys_of_other_commands_are_ignored_and_bad_values_name_the_key() {
        // One file serves several commands: `ctl` ignores the edge's top-level keys...
        assert_eq!(run("FERRY_CFGTEST_E7", "node-id = \"a\"\njson = true", &["ctl"]).unwrap(), "ctl true");
        // ...but a key no command has, or another command's key in `[ctl]`, is an error.
        let err = run("FERRY_CFGTEST_E7", "nonsense = 1", &["ctl"]).unwrap_err().to_string();
        assert!(err.contains("`nonsense`"), "{err}");
        assert!(run("FERRY_CFGTEST_E7", "[ctl]\nnode-id = \"a\"", &["ctl"]).is_err());
        // A value the flag's parser refuses names the file and the key.
        let path = write_config("port = \"four\"");
        let err = expand("FERRY_CFGTEST_E7", &path, &["edge"]).unwrap_err().to_string();
        let shown = path.display().to_string();
        assert!(err.contains("key `port`") && err.contains(&shown) && err.contains("four"), "{err}");
    }

    #[test]
    fn missing_or_invalid_file_errors_with_path() {
        let missing = std::env::temp_dir().join("ferry-cfgtest-does-not-exist.toml");
        let invalid = write_config("port = = 2");
        for path in [missing, invalid.to_path_buf()] {
            let err = expand("FERRY_CFGTEST_E6", &path, &["edge"]).unwrap_err();
            let shown = path.display().to_string();
            assert!(err.to_string().contains(&shown), "{err}");
        }
    }

    #[test]
    fn no_config_leaves_args_unchanged() {
        let args: Vec<OsString> = vec!["ferry".into(), "edge".into(), "--port".into(), "3".into()];
        let got = args_with_config_file(&command("FERRY_CFGTEST_E7"), args.clone()).unwrap();
        assert_eq!(got, args);
    }
}
