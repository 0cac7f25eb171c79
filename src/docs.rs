//! `ferry docs configuration`: docs/configuration.md, generated from the clap
//! definitions, so the page lists every flag, its environment variable and default,
//! and cannot drift from the binary (a test compares the two).

use std::collections::HashSet;
use std::fmt::Write;

use clap::{Command, Subcommand};

#[derive(Debug, Subcommand)]
pub enum DocsCommand {
    /// Print docs/configuration.md: every subcommand's flags, environment variables
    /// and defaults, as Markdown.
    Configuration,
}

/// Runs `cmd` over `root`, the whole command line's definition.
pub fn run(cmd: DocsCommand, root: Command) -> anyhow::Result<()> {
    match cmd {
        DocsCommand::Configuration => out!("{}", configuration(root).trim_end())?,
    }
    Ok(())
}

const HEADER: &str = "# Configuration

Every flag of every `ferry` subcommand, generated from the binary's own definitions by
`ferry docs configuration > docs/configuration.md` (a test fails when this page and the
binary disagree).

Each flag can be given three more ways, and the first that is set wins:

1. on the command line (`--max-lag 2s`);
2. in its environment variable (`FERRY_MAX_LAG=2s`);
3. in the TOML file named by `--config FILE` (or `FERRY_CONFIG`): keys are the long flag
   names, at the top level or in a table per subcommand, for example

   ```toml
   log = \"info\"
   [edge]
   region = \"eu\"
   quic-listen = \"0.0.0.0:4433\"
   control-plane = [\"http://ferry-control:9000\"]
   [control]
   data-dir = \"/var/lib/ferry\"
   ```

then the default. Durations take units (`500ms`, `10s`, `5m`), bit rates `k`/`M`/`G`.
Lists take commas or repeated flags.
";

/// The whole page, for the command line `root`.
pub fn configuration(mut root: Command) -> String {
    root.build();
    let mut out = String::from(HEADER);
    let _ = writeln!(out, "\n## Global flags\n");
    let globals: Vec<_> = root.get_arguments().filter(|a| a.is_global_set()).collect();
    // A global flag is listed where it is defined, not again in every subcommand.
    let mut listed: HashSet<String> = globals.iter().map(|a| a.get_id().to_string()).collect();
    table(&mut out, globals.into_iter());
    for sub in root.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        section(&mut out, &format!("ferry {}", sub.get_name()), sub, &mut listed);
    }
    out
}

fn section(out: &mut String, path: &str, cmd: &Command, listed: &mut HashSet<String>) {
    let _ = writeln!(out, "\n## `{path}`\n");
    if let Some(about) = cmd.get_about() {
        let _ = writeln!(out, "{about}\n");
    }
    let own: Vec<_> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !matches!(a.get_long(), None | Some("help") | Some("version")))
        .filter(|a| !a.is_global_set() || !listed.contains(a.get_id().as_str()))
        .collect();
    listed.extend(own.iter().filter(|a| a.is_global_set()).map(|a| a.get_id().to_string()));
    if !own.is_empty() {
        table(out, own.into_iter());
    }
    let positional: Vec<_> = cmd.get_positionals().collect();
    if !positional.is_empty() {
        let names: Vec<String> = positional.iter().map(|p| format!("`{}`", p.get_id())).collect();
        let _ = writeln!(out, "\nPositional: {}.", names.join(", "));
    }
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        section(out, &format!("{path} {}", sub.get_name()), sub, listed);
    }
}

fn table<'a>(out: &mut String, args: impl Iterator<Item = &'a clap::Arg>) {
    let _ = writeln!(out, "| flag | environment | default | meaning |");
    let _ = writeln!(out, "|---|---|---|---|");
    for arg in args {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" || long == "version" {
            continue;
        }
        let env = arg.get_env().map(|e| format!("`{}`", e.to_string_lossy())).unwrap_or_default();
        let defaults: Vec<String> =
            arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
        let default = match defaults.is_empty() {
            true => String::new(),
            false => format!("`{}`", defaults.join(",")),
        };
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        let help = help.replace('|', "\\|").replace('\n', " ");
        let _ = writeln!(out, "| `--{long}` | {env} | {default} | {help} |");
    }
}
