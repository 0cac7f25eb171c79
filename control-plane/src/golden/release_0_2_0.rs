//! Release 0.2.0: what command set 2 writes once the cluster is raised to it (see
//! `crate::versions`): versioned log entries (`0x00 | format 2 | command set | JSON`)
//! of every command, [`Command::RaiseCommandSet`] among them; snapshot version 4 (version
//! 3 followed by the command set); `members.json` in its versioned layout; and the hello
//! every raft connection opens with.
//! Until the raise, this release writes release 0.1.0's formats, which that release's
//! files check.

use std::collections::BTreeSet;

use super::release_0_1_0::{commands, members, requests, s, state};
use super::Golden;
use crate::node::Members;
use crate::state::{decode_request, encode_entry, Command, Request, State};
use crate::transport::{decode_stream, hello_stream, Received};
use crate::versions::Hello;

const RELEASE: &str = "0.2.0";

/// The command set of this release.
const SET: u16 = 2;

fn golden() -> Golden {
    Golden::of(RELEASE)
}

/// Release 0.1.0's requests, and the command this release adds.
fn requests_0_2_0() -> Vec<Request> {
    let mut all = requests();
    let n = u64::try_from(commands().len()).unwrap() + 1;
    all.push(Request {
        request_id: s("command-set-2"),
        actor: s("cluster-version"),
        role: String::new(),
        source: String::new(),
        at_ms: 1_700_000_000_000 + n,
        command: Command::RaiseCommandSet { to: SET },
    });
    all
}

fn entry_file(request: &Request) -> String {
    format!("entry-{}.bin", request.command.action())
}

#[test]
fn golden_versioned_entries_decode_and_encode_the_same() {
    let golden = golden();
    let requests = requests_0_2_0();
    let actions: BTreeSet<&str> = requests.iter().map(|r| r.command.action()).collect();
    assert_eq!(actions.len(), 21, "one entry per action: {actions:?}");
    for request in requests {
        let name = entry_file(&request);
        let now = encode_entry(&request, SET).unwrap();
        let file = golden.read(&name, &now);
        let needs = request.command.needs().to_be_bytes();
        assert_eq!(file[..4], [0, 2, needs[0], needs[1]], "{name}");
        let decoded = decode_request(&file).unwrap_or_else(|e| panic!("{RELEASE}/{name}: {e}"));
        assert_eq!(decoded, request, "{name}");
        super::assert_same_bytes(RELEASE, &name, &file, &now);
    }
}

/// Release 0.1.0's state, raised to command set 2.
fn raised_state() -> State {
    let mut state = state();
    let request = Request::internal(s("raise"), "cluster-version", 1, Command::RaiseCommandSet { to: SET });
    // Through `apply`, as there is no other way to set it; the audit event and the
    // remembered request are part of the file.
    let index = state.applied_index + 1;
    crate::state::apply(&mut state, index, &request);
    state
}

#[test]
fn golden_snapshot_v4_decodes_and_encodes_the_same() {
    let now = raised_state().to_snapshot_bytes().unwrap();
    let file = golden().read("snapshot-v4.bin", &now);
    assert_eq!(file.first(), Some(&4));
    let decoded = State::from_snapshot_bytes(&file).unwrap();
    assert_eq!(decoded.command_set(), SET);
    assert_eq!(decoded, raised_state());
    super::assert_same_bytes(RELEASE, "snapshot-v4.bin", &file, &now);
}

#[test]
fn golden_versioned_members_file_loads_and_is_written_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let written = Members::load(dir.path(), &std::collections::BTreeMap::new()).unwrap();
    for (id, addr) in members() {
        written.update(id, Some(addr), true).unwrap();
    }
    let now = std::fs::read(dir.path().join("members.json")).unwrap();
    let file = golden().read_same("members.json", &now);
    assert!(file.starts_with(b"{\n  \"format\": 2,"), "{}", String::from_utf8_lossy(&file));

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("members.json"), &file).unwrap();
    let loaded = Members::load(dir.path(), &std::collections::BTreeMap::new()).unwrap();
    assert_eq!(loaded.snapshot(), members());
}

#[test]
fn golden_raft_hello_decodes_and_encodes_the_same() {
    let hello = Hello { id: 2, command_set: SET, version: s("0.2.0") };
    let now = hello_stream(&hello);
    let file = golden().read("raft-hello.bin", &now);
    match decode_stream(&file).unwrap() {
        Received::Hello(decoded) => assert_eq!(decoded, hello),
        other => panic!("{RELEASE}/raft-hello.bin decodes to {other:?}"),
    }
    super::assert_same_bytes(RELEASE, "raft-hello.bin", &file, &now);
}

#[test]
fn golden_directory_holds_only_checked_files() {
    let mut expected: BTreeSet<String> = requests_0_2_0().iter().map(entry_file).collect();
    for name in ["snapshot-v4.bin", "raft-hello.bin", "members.json"] {
        expected.insert(s(name));
    }
    let present = golden().files();
    let unexpected: Vec<&String> = present.difference(&expected).collect();
    assert!(unexpected.is_empty(), "golden files no test reads: {unexpected:?}");
}
