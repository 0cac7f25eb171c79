//! The layers of the workspace stay as docs/architecture.md draws them: which crate
//! may depend on which (read from `cargo metadata`), that voters never link the
//! WebRTC stack, and that within each crate a lower module never uses a higher one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// The Ferry crates each workspace crate may depend on (normal dependencies).
const ALLOWED: &[(&str, &[&str])] = &[
    ("ferry-proto", &[]),
    ("ferry-net", &["ferry-proto"]),
    ("ferry-media", &["ferry-proto"]),
    ("ferry-edge", &["ferry-proto", "ferry-net", "ferry-media"]),
    ("ferry-client", &["ferry-proto", "ferry-net", "ferry-media"]),
    ("ferry-control-plane", &["ferry-proto", "ferry-net"]),
    (
        "ferry",
        &["ferry-proto", "ferry-net", "ferry-media", "ferry-edge", "ferry-client", "ferry-control-plane"],
    ),
];

/// Top-level modules of each library crate, bottom layer first: a module may use
/// only modules before it in this list.
const MODULE_LAYERS: &[(&str, &[&str])] = &[
    ("proto/src", &["error", "ids", "media", "codec", "message", "placement", "cohort", "rollout", "api"]),
    (
        "net/src",
        &[
            "error",
            "files",
            "random",
            "time",
            "shares",
            "seal",
            "identity",
            "keys",
            "tls",
            "certs",
            "wire",
            "dial",
            "http",
            "http_server",
            "proof",
            "gossip",
        ],
    ),
    ("media/src", &["synthetic", "keyframe", "ivf", "throttle", "rtp", "peer"]),
    ("client/src", &["error", "stats", "publish", "watch", "whep", "routed", "whip"]),
    (
        "edge/src",
        &[
            "auth", "error", "certs", "track", "metrics", "config", "access", "rollouts", "cluster", "relay",
            "webrtc", "http", "server",
        ],
    ),
    (
        "src",
        &[
            "process",
            "units",
            "config",
            "cluster_args",
            "args",
            "token",
            "ca",
            "edge",
            "publish",
            "watch",
            "control",
            "ctl",
            "dev",
            "bench",
            "docs",
            "cli",
        ],
    ),
    (
        "control-plane/src",
        &[
            "linearizable",
            "raft_codec",
            "state",
            "versions",
            "backup",
            "storage",
            "node",
            "error",
            "transport",
            "guard",
            "failover",
            "expiry",
            "relays",
            "api",
            "server",
            "golden",
        ],
    ),
];

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Offline (tests talk to no network) and for this platform only (the packages of
    // other platforms were never downloaded).
    let rustc = Command::new("rustc").arg("-vV").output().expect("rustc -vV runs");
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc -vV names the host");
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline", "--filter-platform", &host])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

#[test]
fn crates_depend_only_on_the_crates_below_them() {
    let meta = metadata();
    let members: BTreeSet<String> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let mut seen = BTreeSet::new();
    for package in meta["packages"].as_array().unwrap() {
        if !members.contains(package["id"].as_str().unwrap()) {
            continue;
        }
        let name = package["name"].as_str().unwrap();
        let allowed = ALLOWED
            .iter()
            .find(|(crate_name, _)| *crate_name == name)
            .unwrap_or_else(|| {
                panic!("workspace crate {name} has no place in the layering: add it to ALLOWED")
            })
            .1;
        seen.insert(name.to_owned());
        for dep in package["dependencies"].as_array().unwrap() {
            let dep_name = dep["name"].as_str().unwrap();
            let normal = dep["kind"].is_null();
            if dep_name.starts_with("ferry") && normal {
                assert!(
                    allowed.contains(&dep_name),
                    "{name} must not depend on {dep_name} (allowed: {allowed:?})"
                );
            }
        }
    }
    assert_eq!(seen.len(), ALLOWED.len(), "every crate of the layering is in the workspace");
}

#[test]
fn voters_never_link_the_webrtc_stack_or_the_edge() {
    let meta = metadata();
    let nodes = meta["resolve"]["nodes"].as_array().unwrap();
    let name_of = |id: &str| -> String {
        meta["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let deps: BTreeMap<&str, Vec<&str>> = nodes
        .iter()
        .map(|n| {
            let normal = n["deps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["dep_kinds"].as_array().unwrap().iter().any(|k| k["kind"].is_null()))
                .map(|d| d["pkg"].as_str().unwrap())
                .collect();
            (n["id"].as_str().unwrap(), normal)
        })
        .collect();
    let root = nodes
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .find(|id| name_of(id) == "ferry-control-plane")
        .unwrap();
    let mut stack = vec![root];
    let mut linked = BTreeSet::new();
    while let Some(id) = stack.pop() {
        if linked.insert(name_of(id)) {
            stack.extend(deps.get(id).into_iter().flatten().copied());
        }
    }
    for forbidden in ["webrtc", "rtc", "ferry-edge", "ferry-client", "ferry-media"] {
        assert!(!linked.contains(forbidden), "ferry-control-plane links {forbidden}");
    }
    assert!(!linked.iter().any(|n| n.starts_with("rtc-")), "ferry-control-plane links an rtc-* crate");
    assert!(linked.contains("raft") && linked.contains("ferry-net"), "the walk saw the real graph");
}

/// `crate::module` references in `text`, comments left out.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            // `ferry_crate::x` is another crate; only a bare `crate::` counts.
            let bare = at == 0 || !rest[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
            if bare && !name.is_empty() && name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                refs.insert(name);
            }
            rest = after;
        }
    }
    refs
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn within_each_crate_lower_modules_never_use_higher_ones() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (src, layers) in MODULE_LAYERS {
        let src = root.join(src);
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        for file in files {
            let relative = file.strip_prefix(&src).unwrap();
            let top = relative.iter().next().unwrap().to_string_lossy().trim_end_matches(".rs").to_owned();
            if top == "lib" || top == "main" {
                continue;
            }
            let Some(level) = layers.iter().position(|m| *m == top) else {
                panic!("{}: module {top} has no layer: add it to MODULE_LAYERS", src.display());
            };
            let text = std::fs::read_to_string(&file).unwrap();
            for used in crate_refs(&text) {
                let Some(used_level) = layers.iter().position(|m| *m == used) else { continue };
                assert!(
                    used_level <= level,
                    "{} (layer {top}) uses crate::{used}, a higher layer",
                    file.strip_prefix(root).unwrap().display()
                );
            }
        }
    }
}
