use super::*;

/// Applies requests at consecutive indexes, like a raft log would.
struct Log {
    state: State,
    index: u64,
    next_id: u64,
}

impl Log {
    fn new() -> Self {
        Log { state: State::default(), index: 0, next_id: 0 }
    }

    fn run(&mut self, command: Command) -> Outcome {
        self.next_id += 1;
        let id = format!("req-{}", self.next_id);
        self.run_as(&id, command)
    }

    fn run_as(&mut self, request_id: &str, command: Command) -> Outcome {
        self.index += 1;
        let request = Request {
            request_id: request_id.to_owned(),
            actor: "alice".to_owned(),
            role: "operator".to_owned(),
            source: "10.1.2.3:5555".to_owned(),
            at_ms: self.index * 1000,
            command,
        };
        apply(&mut self.state, self.index, &request)
    }

    /// Runs a command that must be rejected and checks that only the applied index and the
    /// exactly-once memory moved.
    fn rejects(&mut self, command: Command) -> String {
        let before = self.state.clone();
        let outcome = self.run(command);
        let Outcome::Rejected { code, .. } = outcome else { panic!("expected a rejection, got {outcome:?}") };
        let mut after = self.state.clone();
        assert_eq!(after.applied_index, self.index);
        after.applied_index = before.applied_index;
        after.applied_requests = before.applied_requests.clone();
        assert_eq!(after, before, "a rejection changed the state");
        code
    }
}

fn register(id: &str, region: &str) -> Command {
    Command::RegisterEdge {
        id: id.to_owned(),
        region: region.to_owned(),
        quic_addr: "10.0.0.1:4433".to_owned(),
        http_addr: "10.0.0.1:8080".to_owned(),
        version: "0.1.0".to_owned(),
        capacity: 100,
    }
}

fn put_stream(name: &str, origin: &str, relays: &[(&str, &[&str])]) -> Command {
    Command::PutStream {
        name: name.to_owned(),
        origin: origin.to_owned(),
        relays: relays
            .iter()
            .map(|(region, edges)| (region.to_string(), edges.iter().map(|e| e.to_string()).collect()))
            .collect(),
    }
}

fn spec(json: serde_json::Value) -> RolloutSpec {
    serde_json::from_value(json).unwrap()
}

fn rollout(id: &str) -> Command {
    Command::CreateRollout { id: id.to_owned(), spec: spec(json!({"description": "ferry:0.2"})) }
}

fn level(id: &str, level: u8) -> Command {
    Command::SetRolloutLevel { id: id.to_owned(), level }
}

fn id(s: &str) -> String {
    s.to_owned()
}

#[test]
fn registering_an_edge_stores_it_and_audits_it() {
    let mut log = Log::new();
    let outcome = log.run(register("edge-a", "eu-west"));
    assert_eq!(outcome, Outcome::Ok { detail: json!({"edge": "edge-a", "created": true}) });
    let edge = &log.state.edges["edge-a"];
    assert_eq!((edge.region.as_str(), edge.capacity, edge.registered_at_ms), ("eu-west", 100, 1000));
    let event = &log.state.audit[0];
    assert_eq!(
        (event.id, event.index, event.action.as_str(), event.target.as_str()),
        (1, 1, "edge.register", "edge-a")
    );
    assert_eq!((event.actor.as_str(), event.request_id.as_str(), event.at_ms), ("alice", "req-1", 1000));
}

#[test]
fn re_registering_an_edge_keeps_its_registration_time() {
    let mut log = Log::new();
    log.run(register("edge-a", "eu-west"));
    let outcome = log.run(register("edge-a", "us-east"));
    assert_eq!(outcome, Outcome::Ok { detail: json!({"edge": "edge-a", "created": false}) });
    let edge = &log.state.edges["edge-a"];
    assert_eq!((edge.region.as_str(), edge.registered_at_ms, edge.updated_at_ms), ("us-east", 1000, 2000));
    assert_eq!(log.state.audit.len(), 2);
}

#[test]
fn bad_edge_fields_are_invalid() {
    let mut log = Log::new();
    assert_eq!(log.rejects(register("edge a", "eu")), REJECT_INVALID);
    assert_eq!(log.rejects(register("edge-a", "")), REJECT_INVALID);
    assert_eq!(log.rejects(register("edge-a", "eu west")), REJECT_INVALID);
    let Command::RegisterEdge { id, region, http_addr, version, capacity, .. } = register("edge-a", "eu")
    else {
        unreachable!()
    };
    let bad_addr =
        Command::RegisterEdge { id, region, quic_addr: "".to_owned(), http_addr, version, capacity };
    assert_eq!(log.rejects(bad_addr), REJECT_INVALID);
}

#[test]
fn removing_an_edge_drops_it_from_relays() {
    let mut log = Log::new();
    log.run(register("origin", "eu"));
    log.run(register("relay-1", "us"));
    log.run(register("relay-2", "us"));
    log.run(put_stream("live/a", "origin", &[("us", &["relay-1", "relay-2"])]));
    log.run(put_stream("live/b", "origin", &[("us", &["relay-1"])]));
    let outcome = log.run(Command::RemoveEdge { id: id("relay-1") });
    assert_eq!(
        outcome,
        Outcome::Ok { detail: json!({"edge": "relay-1", "dropped_from_relays": ["live/a", "live/b"]}) }
    );
    assert!(!log.state.edges.contains_key("relay-1"));
    assert_eq!(log.state.streams["live/a"].relays["us"], vec![id("relay-2")]);
    assert!(log.state.streams["live/b"].relays.is_empty(), "an emptied region is not kept");
}

#[test]
fn removing_an_unknown_edge_or_an_origin_is_rejected() {
    let mut log = Log::new();
    assert_eq!(log.rejects(Command::RemoveEdge { id: id("ghost") }), REJECT_NOT_FOUND);
    log.run(register("origin", "eu"));
    log.run(put_stream("live/a", "origin", &[]));
    assert_eq!(log.rejects(Command::RemoveEdge { id: id("origin") }), REJECT_CONFLICT);
}

#[test]
fn putting_a_stream_places_it_and_a_second_put_replaces_it() {
    let mut log = Log::new();
    log.run(register("origin", "eu"));
    log.run(register("relay-1", "us"));
    let outcome = log.run(put_stream("live/a", "origin", &[("us", &["relay-1"]), ("ap", &[])]));
    assert_eq!(outcome, Outcome::Ok { detail: json!({"stream": "live/a", "created": true}) });
    let stream = &log.state.streams["live/a"];
    assert_eq!(stream.origin, "origin");
    assert_eq!(stream.relays.keys().collect::<Vec<_>>(), vec!["us"]);

    let outcome = log.run(put_stream("live/a", "relay-1", &[]));
    assert_eq!(outcome, Outcome::Ok { detail: json!({"stream": "live/a", "created": false}) });
    let stream = &log.state.streams["live/a"];
    assert_eq!((stream.origin.as_str(), stream.created_at_ms, stream.updated_at_ms), ("relay-1", 3000, 4000));
}

#[test]
fn putting_a_stream_checks_its_name_and_edges() {
    let mut log = Log::new();
    log.run(register("origin", "eu"));
    assert_eq!(log.rejects(put_stream("../etc", "origin", &[])), REJECT_INVALID);
    assert_eq!(log.rejects(put_stream("live/a", "nobody", &[])), REJECT_NOT_FOUND);
    assert_eq!(log.rejects(put_stream("live/a", "bad id", &[])), REJECT_INVALID);
    assert_eq!(log.rejects(put_stream("live/a", "origin", &[("us", &["nobody"])])), REJECT_NOT_FOUND);
    assert_eq!(log.rejects(put_stream("live/a", "origin", &[("us", &["origin", "origin"])])), REJECT_INVALID);
    assert!(log.state.streams.is_empty());
}

#[test]
fn deleting_a_stream() {
    let mut log = Log::new();
    log.run(register("origin", "eu"));
    log.run(put_stream("live/a", "origin", &[]));
    assert!(log.run(Command::DeleteStream { name: id("live/a") }).is_ok());
    assert!(log.state.streams.is_empty());
    assert_eq!(log.rejects(Command::DeleteStream { name: id("live/a") }), REJECT_NOT_FOUND);
    assert_eq!(log.state.audit.back().map(|e| e.action.as_str()), Some("stream.delete"));
}

#[test]
fn an_expiry_removes_a_record_only_as_the_leader_saw_it() {
    let mut log = Log::new();
    log.run(register("e1", "eu"));
    log.run(Command::ClaimStream { name: id("live/a"), origin: id("e1"), takeover: false });
    let seen = log.state.streams["live/a"].updated_at_ms;
    let expire = |updated_at_ms: u64, origin_lost: bool| Command::ReleaseStream {
        name: id("live/a"),
        origin: id("e1"),
        expired: Some(Expiration { updated_at_ms, origin_lost, reason: "unused for 60s".into() }),
    };
    // The record changed since the leader looked (lost, or claimed again): kept.
    log.run(Command::EdgeFailed { id: id("e1") });
    assert!(log.run(expire(seen, false)).is_ok());
    assert!(log.state.streams.contains_key("live/a"));
    let lost = log.state.streams["live/a"].updated_at_ms;
    assert!(log.run(expire(lost, true)).is_ok());
    assert!(!log.state.streams.contains_key("live/a"));
    let event = log.state.audit.back().unwrap();
    assert_eq!((event.action.as_str(), event.detail.as_str()), ("stream.expire", "expired: unused for 60s"));
    // A plain release still names only the origin.
    log.run(Command::ClaimStream { name: id("live/a"), origin: id("e1"), takeover: false });
    assert!(log.run(Command::ReleaseStream { name: id("live/a"), origin: id("e1"), expired: None }).is_ok());
    assert!(log.state.streams.is_empty());
    assert_eq!(log.state.audit.back().map(|e| e.action.as_str()), Some("stream.release"));
}

#[test]
fn a_rollout_moves_through_levels_and_states() {
    let mut log = Log::new();
    assert!(log.run(rollout("r1")).is_ok());
    assert_eq!(log.state.rollouts["r1"].state, RolloutState::Active);
    assert_eq!(log.state.rollouts["r1"].spec.description, "ferry:0.2");
    assert!(log.run(level("r1", 2)).is_ok());
    assert!(log.run(Command::PauseRollout { id: id("r1") }).is_ok());
    assert_eq!(log.rejects(Command::PauseRollout { id: id("r1") }), REJECT_CONFLICT);
    assert!(log.run(level("r1", 3)).is_ok(), "a paused rollout may still be moved by hand");
    assert!(log.run(Command::ResumeRollout { id: id("r1") }).is_ok());
    assert_eq!(log.rejects(Command::ResumeRollout { id: id("r1") }), REJECT_CONFLICT);
    assert!(log.run(Command::AbortRollout { id: id("r1") }).is_ok());

    let r1 = &log.state.rollouts["r1"];
    assert_eq!((r1.level, r1.state), (3, RolloutState::Aborted));
    let history: Vec<_> = r1.history.iter().map(|e| (e.what.as_str(), e.level)).collect();
    assert_eq!(
        history,
        [
            ("created", 0),
            ("level 0 -> 2", 2),
            ("paused", 2),
            ("level 2 -> 3", 3),
            ("resumed", 3),
            ("aborted", 3)
        ]
    );
}

#[test]
fn rollout_rejections() {
    let mut log = Log::new();
    assert_eq!(log.rejects(level("r1", 1)), REJECT_NOT_FOUND);
    assert_eq!(log.rejects(Command::AbortRollout { id: id("r1") }), REJECT_NOT_FOUND);
    assert_eq!(log.rejects(rollout("bad id")), REJECT_INVALID);
    log.run(rollout("r1"));
    assert_eq!(log.rejects(rollout("r1")), REJECT_CONFLICT);
    assert_eq!(log.rejects(level("r1", 5)), REJECT_INVALID);
    log.run(Command::AbortRollout { id: id("r1") });
    assert_eq!(log.rejects(level("r1", 1)), REJECT_CONFLICT);
    assert_eq!(log.rejects(Command::AbortRollout { id: id("r1") }), REJECT_CONFLICT);
    assert_eq!(log.rejects(Command::ResumeRollout { id: id("r1") }), REJECT_CONFLICT);
}

#[test]
fn a_live_rollouts_share_moves_and_apply_checks_only_its_range() {
    let mut log = Log::new();
    let share = |bp| Command::SetRolloutShare { id: id("lag"), share_bp: bp };
    assert_eq!(log.rejects(share(1000)), REJECT_NOT_FOUND);
    let created = spec(json!({"description": "d", "override": {"max_lag_ms": 500}, "salt": "s"}));
    log.run(Command::CreateRollout { id: id("lag"), spec: created });
    log.run(level("lag", 3));
    assert!(log.run(share(1000)).is_ok());
    assert!(log.run(share(3000)).is_ok());
    let lag = &log.state.rollouts["lag"];
    // The rest of the spec is kept as written; only the share changed.
    assert_eq!(
        lag.spec,
        spec(
            json!({"description": "d", "override": {"max_lag_ms": 500}, "salt": "s", "gates": {"share_bp": 3000}})
        )
    );
    let history: Vec<_> = lag.history.iter().map(|e| (e.what.as_str(), e.level)).collect();
    assert_eq!(history[2..], [("share 0 -> 1000 bp", 3), ("share 1000 -> 3000 bp", 3)]);
    assert_eq!(log.state.audit.back().map(|e| e.action.as_str()), Some("rollout.set_share"));

    let before = log.state.rollouts["lag"].clone();
    assert_eq!(log.rejects(share(10_001)), REJECT_INVALID);
    assert_eq!(log.state.rollouts["lag"], before);
    // Apply checks only the command's own rule (the range above), never the spec's rules,
    // which a newer build may change: those are checked before proposing (the API). So
    // a spec those rules refuse still takes a share here, the same on every build.
    log.run(rollout("opaque"));
    assert!(log.run(Command::SetRolloutShare { id: id("opaque"), share_bp: 10 }).is_ok());
    log.run(Command::AbortRollout { id: id("lag") });
    assert_eq!(log.rejects(share(100)), REJECT_CONFLICT);
}

#[test]
fn noop_changes_nothing_but_the_applied_index() {
    let mut log = Log::new();
    let outcome = log.run_as("", Command::Noop);
    assert!(outcome.is_ok());
    assert_eq!(log.state, State { applied_index: 1, ..State::default() });
}

#[test]
fn a_retried_request_gets_the_first_outcome_and_changes_nothing() {
    let mut log = Log::new();
    let first = log.run_as("same", register("edge-a", "eu"));
    let before = log.state.clone();
    let again = log.run_as("same", register("edge-a", "us"));
    assert_eq!(again, first);
    assert_eq!(log.state.edges["edge-a"].region, "eu");
    assert_eq!(log.state.applied_index, 2);
    assert_eq!(log.state, State { applied_index: 2, ..before });

    let rejected = log.run_as("gone", Command::DeleteStream { name: id("live/x") });
    log.run(register("origin", "eu"));
    log.run(put_stream("live/x", "origin", &[]));
    assert_eq!(
        log.run_as("gone", Command::DeleteStream { name: id("live/x") }),
        rejected,
        "rejections are remembered too"
    );
    assert!(log.state.streams.contains_key("live/x"));
}

#[test]
fn requests_without_an_id_are_not_deduplicated() {
    let mut log = Log::new();
    log.run_as("", register("edge-a", "eu"));
    log.run_as("", register("edge-a", "us"));
    assert_eq!(log.state.edges["edge-a"].region, "us");
    assert!(log.state.applied_requests.is_empty());
}

#[test]
fn an_oversized_request_id_is_invalid() {
    let mut log = Log::new();
    let outcome = log.run_as(&"x".repeat(MAX_ENVELOPE_TEXT + 1), register("edge-a", "eu"));
    assert!(matches!(outcome, Outcome::Rejected { code, .. } if code == REJECT_INVALID));
    assert!(log.state.edges.is_empty());
}

#[test]
fn the_oldest_remembered_requests_are_forgotten_first() {
    let mut log = Log::new();
    for i in 0..MAX_APPLIED_REQUESTS + 10 {
        log.run_as(&format!("r{i}"), Command::Noop);
    }
    assert_eq!(log.state.applied_requests.len(), MAX_APPLIED_REQUESTS);
    assert!(!log.state.applied_requests.contains_key("r9"));
    assert!(log.state.applied_requests.contains_key("r10"));

    // The eviction order survives a snapshot (it is rebuilt, not stored).
    let mut restored = State::from_snapshot_bytes(&log.state.to_snapshot_bytes().unwrap()).unwrap();
    apply(&mut restored, log.index + 1, &Request::internal(id("new"), "a", 0, Command::Noop));
    assert!(!restored.applied_requests.contains_key("r10"));
    assert!(restored.applied_requests.contains_key("r11"));
}

#[test]
fn the_audit_log_keeps_the_newest_events() {
    let mut log = Log::new();
    for i in 0..MAX_AUDIT_EVENTS + 5 {
        log.run_as("", register(&format!("edge-{}", i % 3), "eu"));
    }
    assert_eq!(log.state.audit.len(), MAX_AUDIT_EVENTS);
    assert_eq!(log.state.audit.front().map(|e| e.id), Some(6));
    assert_eq!(log.state.audit.back().map(|e| e.id), Some(MAX_AUDIT_EVENTS as u64 + 5));
    assert_eq!(log.state.next_audit_id, MAX_AUDIT_EVENTS as u64 + 6);
}

/// A log touching every command, including rejections and retries.
fn busy_log() -> Log {
    let mut log = Log::new();
    log.run(register("origin", "eu"));
    log.run(register("relay-1", "us"));
    log.run(register("relay-2", "ap"));
    log.run(put_stream("live/a", "origin", &[("us", &["relay-1"]), ("ap", &["relay-2"])]));
    log.run(put_stream("live/b", "nobody", &[]));
    log.run_as("retry", rollout("r1"));
    log.run_as("retry", rollout("r1"));
    log.run(level("r1", 4));
    log.run(Command::PauseRollout { id: id("r1") });
    log.run(Command::RemoveEdge { id: id("relay-2") });
    log.run(Command::DeleteStream { name: id("live/zzz") });
    log.run(create_token("alice", TokenRole::Operator));
    log.run(create_token("bob", TokenRole::Viewer));
    log.run(Command::RevokeToken { accessor: id("bob") });
    log.run(Command::Noop);
    log
}

fn create_token(accessor: &str, role: TokenRole) -> Command {
    Command::CreateToken { accessor: id(accessor), role, secret_sha256: "ab".repeat(32) }
}

#[test]
fn tokens_are_created_once_and_revoked() {
    let mut log = Log::new();
    assert!(log.run(create_token("ci", TokenRole::Operator)).is_ok());
    let token = &log.state.tokens["ci"];
    assert_eq!((token.role, token.created_by.as_str()), (TokenRole::Operator, "alice"));
    assert_eq!(log.rejects(create_token("ci", TokenRole::Admin)), REJECT_CONFLICT);
    assert_eq!(log.rejects(create_token(BOOTSTRAP_ACCESSOR, TokenRole::Admin)), REJECT_INVALID);
    assert_eq!(log.rejects(create_token("has space", TokenRole::Admin)), REJECT_INVALID);
    let bad_hash =
        Command::CreateToken { accessor: id("x"), role: TokenRole::Viewer, secret_sha256: id("AB") };
    assert_eq!(log.rejects(bad_hash), REJECT_INVALID);
    assert!(log.run(Command::RevokeToken { accessor: id("ci") }).is_ok());
    assert!(log.state.tokens.is_empty());
    assert_eq!(log.rejects(Command::RevokeToken { accessor: id("ci") }), REJECT_NOT_FOUND);
    let actions: Vec<_> = log.state.audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["token.create", "token.revoke"]);
    // The audit event names the principal, its role and where it called from.
    let event = log.state.audit.back().unwrap();
    assert_eq!((event.role.as_str(), event.source.as_str()), ("operator", "10.1.2.3:5555"));
}

/// Until the cluster raises its command set, entries and snapshots stay in the formats
/// the previous release reads; after it, entries are versioned and snapshots version 4.
#[test]
fn raising_the_command_set_switches_the_formats_and_never_goes_back() {
    let mut log = busy_log();
    assert_eq!(log.state.command_set(), 1);
    let request = Request::internal(id("r"), "ci", 7, Command::Noop);
    assert_eq!(encode_entry(&request, log.state.command_set()).unwrap(), encode_request(&request).unwrap());
    assert_eq!(log.state.to_snapshot_bytes().unwrap()[0], 3);
    // The raise itself is versioned even at set 1: a voter that cannot apply it stops.
    let raise = Request::internal(id("raise"), "ci", 8, Command::RaiseCommandSet { to: COMMAND_SET });
    let bytes = encode_entry(&raise, 1).unwrap();
    assert_eq!(bytes[..4], [0, 2, 0, 2]);
    assert_eq!(decode_request(&bytes).unwrap(), raise);

    log.run(Command::RaiseCommandSet { to: COMMAND_SET });
    assert_eq!(log.state.command_set(), COMMAND_SET);
    assert_eq!(log.state.audit.back().unwrap().action, "cluster.command_set");
    let entry = encode_entry(&request, log.state.command_set()).unwrap();
    assert_eq!(entry[..4], [0, 2, 0, 1], "a command of set 1 names set 1");
    assert_eq!(decode_request(&entry).unwrap(), request);
    let snapshot = log.state.to_snapshot_bytes().unwrap();
    assert_eq!(snapshot[0], 4);
    assert_eq!(State::from_snapshot_bytes(&snapshot).unwrap(), log.state);

    // Never down, never past this build.
    assert_eq!(log.rejects(Command::RaiseCommandSet { to: 1 }), REJECT_CONFLICT);
    assert_eq!(log.rejects(Command::RaiseCommandSet { to: COMMAND_SET }), REJECT_CONFLICT);
    assert_eq!(log.state.command_set(), COMMAND_SET);
    // A version 4 snapshot of a newer set is refused, not guessed at.
    let mut newer = snapshot[..snapshot.len() - 1].to_vec();
    newer.push(u8::try_from(COMMAND_SET + 1).unwrap());
    assert!(matches!(State::from_snapshot_bytes(&newer), Err(StateError::NewerCommandSet { .. })));
}

#[test]
fn a_snapshot_of_the_previous_version_upgrades() {
    let mut state = busy_log().state;
    let old = state.to_v2_snapshot_bytes();
    assert_eq!(old[0], 2);
    let upgraded = State::from_snapshot_bytes(&old).unwrap();
    // What version 2 could not hold is empty; everything else is kept.
    state.tokens.clear();
    for event in &mut state.audit {
        event.role.clear();
        event.source.clear();
    }
    assert_eq!(upgraded, state);
    assert!(!upgraded.audit.is_empty() && !upgraded.applied_requests.is_empty());
}

#[test]
fn a_snapshot_round_trips_the_whole_state() {
    let mut log = busy_log();
    let bytes = log.state.to_snapshot_bytes().unwrap();
    assert_eq!(State::from_snapshot_bytes(&bytes).unwrap(), log.state);
    log.run(Command::RaiseCommandSet { to: COMMAND_SET });
    let bytes = log.state.to_snapshot_bytes().unwrap();
    assert_eq!(State::from_snapshot_bytes(&bytes).unwrap(), log.state);
}

#[test]
fn a_damaged_snapshot_is_refused() {
    let bytes = busy_log().state.to_snapshot_bytes().unwrap();
    assert!(matches!(State::from_snapshot_bytes(&[]), Err(StateError::MalformedSnapshot(_))));
    assert!(matches!(State::from_snapshot_bytes(&[9, 0]), Err(StateError::UnsupportedSnapshotVersion(9))));
    assert!(State::from_snapshot_bytes(&bytes[..bytes.len() / 2]).is_err());
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(State::from_snapshot_bytes(&longer), Err(StateError::MalformedSnapshot(_))));
}

#[test]
fn a_snapshot_claiming_a_huge_string_is_refused_before_allocating_it() {
    // Found by fuzz/fuzz_targets/snapshot.rs: bincode allocated the length a string
    // claimed before reading it, so 8 bytes asked for 4 GiB, and a bigger claim aborted
    // the voter. One edge whose id claims 1 TiB, in both snapshot versions:
    for version in [SNAPSHOT_VERSION, SNAPSHOT_V3, 2] {
        let mut bytes = vec![version, 1, 0xfd];
        bytes.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let refused = State::from_snapshot_bytes(&bytes);
        assert!(matches!(refused, Err(StateError::MalformedSnapshot(_))), "{refused:?}");
    }
    // The limit grows with the snapshot: a state past the first tier still decodes.
    let mut log = busy_log();
    for i in 0..2000 {
        log.run(register(&format!("edge-{i}"), "eu"));
    }
    let bytes = log.state.to_snapshot_bytes().unwrap();
    assert!(bytes.len() > 0x1_0000, "{} bytes", bytes.len());
    assert_eq!(State::from_snapshot_bytes(&bytes).unwrap(), log.state);
}

#[test]
fn state_and_outcomes_serialize_as_readable_json() {
    let state = busy_log().state;
    let text = serde_json::to_value(&state).unwrap();
    assert_eq!(text["rollouts"]["r1"]["spec"]["description"], "ferry:0.2");
    assert_eq!(text["applied_requests"]["retry"][1]["result"], "ok");
    let back: State = serde_json::from_value(text).unwrap();
    assert_eq!(back, state);

    let rejected = Outcome::Rejected { code: id(REJECT_NOT_FOUND), message: id("no edge") };
    let json = serde_json::to_value(&rejected).unwrap();
    assert_eq!(json, json!({"result": "rejected", "code": "not_found", "message": "no edge"}));
}

#[test]
fn replaying_the_same_log_gives_the_same_state() {
    let first = busy_log();
    let second = busy_log();
    assert_eq!(first.state, second.state);
    assert_eq!(first.state.to_snapshot_bytes().unwrap(), second.state.to_snapshot_bytes().unwrap());

    // Restoring a snapshot taken midway and replaying the rest also agrees.
    let requests: Vec<Request> = (1..=6)
        .map(|i| Request::internal(format!("k{i}"), "bob", i, register(&format!("e{i}"), "eu")))
        .collect();
    let mut straight = State::default();
    for (i, request) in requests.iter().enumerate() {
        apply(&mut straight, i as u64 + 1, request);
    }
    let mut restored = State::default();
    for (i, request) in requests.iter().take(3).enumerate() {
        apply(&mut restored, i as u64 + 1, request);
    }
    let mut restored = State::from_snapshot_bytes(&restored.to_snapshot_bytes().unwrap()).unwrap();
    for (i, request) in requests.iter().enumerate().skip(3) {
        apply(&mut restored, i as u64 + 1, request);
    }
    assert_eq!(restored, straight);
}

#[test]
fn requests_round_trip_as_entry_data() {
    let request = Request::internal(id("r"), "ci", 7, rollout("r1"));
    let bytes = encode_request(&request).unwrap();
    let text = std::str::from_utf8(&bytes).unwrap();
    assert!(text.contains(r#""type":"create_rollout""#), "{text}");
    assert_eq!(decode_request(&bytes).unwrap(), request);
    assert!(matches!(decode_request(b"{}"), Err(StateError::MalformedRequest(_))));
}

#[test]
fn oversized_requests_are_refused_both_ways() {
    let big = spec(json!({ "description": "x".repeat(MAX_REQUEST_BYTES) }));
    let request = Request::internal(id("r"), "ci", 7, Command::CreateRollout { id: id("r1"), spec: big });
    assert!(matches!(encode_request(&request), Err(StateError::RequestTooLarge { .. })));
    let bytes = vec![b' '; MAX_REQUEST_BYTES + 1];
    assert!(matches!(decode_request(&bytes), Err(StateError::RequestTooLarge { .. })));
}

#[test]
fn a_failed_edge_loses_its_origins_and_relays_until_a_publisher_returns() {
    let mut log = Log::new();
    for (edge, region) in [("a", "eu"), ("b", "eu"), ("c", "us")] {
        log.run(register(edge, region));
    }
    log.run(put_stream("live/x", "a", &[("eu", &["b"]), ("us", &["c"])]));
    log.run(put_stream("live/y", "b", &[("eu", &["a"])]));

    let outcome = log.run(Command::EdgeFailed { id: id("a") });
    let Outcome::Ok { detail } = outcome else { panic!("{outcome:?}") };
    assert_eq!(detail["origin_lost"], json!(["live/x"]));
    assert_eq!(detail["dropped_from_relays"], json!(["live/y"]));
    let x = &log.state.streams["live/x"];
    assert!(x.origin_lost);
    assert_eq!(x.origin, "a", "the record keeps who the origin was");
    assert!(log.state.streams["live/y"].relays.is_empty());
    assert!(log.state.edges.contains_key("a"), "a failed edge stays registered");
    assert_eq!(log.state.audit.back().map(|e| e.action.as_str()), Some("edge.failed"));

    // The publisher comes back on another edge: the origin is found again.
    log.run(put_stream("live/x", "c", &[]));
    let x = &log.state.streams["live/x"];
    assert!(!x.origin_lost);
    assert_eq!(x.origin, "c");
    assert_eq!(log.rejects(Command::EdgeFailed { id: id("nope") }), REJECT_NOT_FOUND);
}

#[test]
fn a_drained_edge_is_marked_until_it_registers_again() {
    let mut log = Log::new();
    log.run(register("a", "eu"));
    assert!(log.run(Command::DrainEdge { id: id("a") }).is_ok());
    assert!(log.state.edges["a"].draining);
    assert_eq!(log.state.audit.back().map(|e| e.action.as_str()), Some("edge.drain"));
    log.run(register("a", "eu"));
    assert!(!log.state.edges["a"].draining, "a new registration is a new process");
    assert_eq!(log.rejects(Command::DrainEdge { id: id("b") }), REJECT_NOT_FOUND);
}

#[test]
fn relays_are_placed_only_while_the_origin_is_unchanged() {
    let mut log = Log::new();
    for (edge, region) in [("a", "eu"), ("b", "us"), ("c", "us")] {
        log.run(register(edge, region));
    }
    log.run(put_stream("live/x", "a", &[]));
    let place = |origin: &str, relay: &str| Command::PlaceRelays {
        name: id("live/x"),
        origin: id(origin),
        relays: [(id("us"), vec![id(relay)])].into_iter().collect(),
    };
    assert!(log.run(place("a", "b")).is_ok());
    assert_eq!(log.state.streams["live/x"].relays["us"], vec![id("b")]);
    assert_eq!(log.state.audit.back().map(|e| e.action.as_str()), Some("stream.place_relays"));
    // The same placement again changes nothing and is not audited twice.
    let audited = log.state.audit.len();
    assert!(log.run(place("a", "b")).is_ok());
    assert_eq!(log.state.audit.len(), audited);
    // The leader looked before the origin moved (or was lost): refused.
    assert_eq!(log.rejects(place("c", "b")), REJECT_CONFLICT);
    log.run(Command::EdgeFailed { id: id("a") });
    assert_eq!(log.rejects(place("a", "c")), REJECT_CONFLICT);
    assert_eq!(log.rejects(place("a", "nope")), REJECT_NOT_FOUND);
    let missing = Command::PlaceRelays { name: id("live/none"), origin: id("a"), relays: Default::default() };
    assert_eq!(log.rejects(missing), REJECT_NOT_FOUND);
}

#[test]
fn a_guard_trip_falls_back_once_and_holds_until_resumed() {
    let mut log = Log::new();
    log.run(Command::CreateRollout { id: id("r"), spec: spec(json!({"override": {"pacing": true}})) });
    log.run(Command::SetRolloutLevel { id: id("r"), level: 2 });
    log.run(Command::SetRolloutLevel { id: id("r"), level: 3 });
    let trip = |guard: &str| Command::TripRollout { id: id("r"), guard: guard.to_owned() };
    assert!(log.run(trip("cpu on edge e1")).is_ok());
    let r = &log.state.rollouts["r"];
    assert_eq!((r.level, r.state), (2, RolloutState::Tripped), "back to the previous level");
    assert_eq!(r.history.last().unwrap().what, "tripped by cpu on edge e1: level 3 -> 2");
    assert_eq!(log.state.audit.back().map(|e| e.action.as_str()), Some("rollout.trip"));
    // A second report changes nothing.
    let audited = log.state.audit.len();
    assert!(log.run(trip("cpu on edge e2")).is_ok());
    assert_eq!((log.state.rollouts["r"].level, log.state.audit.len()), (2, audited));
    // on_trip = off goes to 0; a paused rollout cannot trip.
    log.run(Command::CreateRollout {
        id: id("z"),
        spec: spec(json!({"override": {"webrtc_nack": true}, "on_trip": "off"})),
    });
    log.run(Command::SetRolloutLevel { id: id("z"), level: 4 });
    assert!(log.run(Command::TripRollout { id: id("z"), guard: "errors".into() }).is_ok());
    assert_eq!(log.state.rollouts["z"].level, 0);
    log.run(Command::ResumeRollout { id: id("z") });
    log.run(Command::PauseRollout { id: id("z") });
    assert_eq!(log.rejects(Command::TripRollout { id: id("z"), guard: "cpu".into() }), REJECT_CONFLICT);
}

/// Entries of this release are bare JSON (command set 1, readable by every release);
/// a versioned entry is read when its command set is known, and refused, never
/// skipped or guessed at, when it is newer or its layout is unknown.
#[test]
fn log_entries_carry_their_command_set_and_newer_ones_are_refused() {
    let request = Request::internal(id("r"), "ci", 7, Command::Noop);
    let legacy = encode_request(&request).unwrap();
    assert_eq!(legacy.first(), Some(&b'{'));
    assert_eq!(decode_request(&legacy).unwrap(), request);

    let versioned = |format: u8, set: u16| {
        let mut bytes = vec![0, format];
        bytes.extend_from_slice(&set.to_be_bytes());
        bytes.extend_from_slice(&legacy);
        bytes
    };
    assert_eq!(decode_request(&versioned(2, 1)).unwrap(), request);
    let err = decode_request(&versioned(2, COMMAND_SET + 1)).unwrap_err();
    assert!(
        matches!(err, StateError::NewerCommandSet { needs, supports } if needs == COMMAND_SET + 1 && supports == COMMAND_SET),
        "{err}"
    );
    assert!(err.to_string().contains(&format!("command set {}", COMMAND_SET + 1)), "{err}");
    assert!(matches!(decode_request(&versioned(3, 1)), Err(StateError::UnknownEntryFormat(3))));
    assert!(matches!(decode_request(&[0, 2, 0]), Err(StateError::UnknownEntryFormat(2))));
    // A command this build does not know, in an entry that claims set 1.
    let future = br#"{"request_id":"x","actor":"a","at_ms":1,"command":{"type":"teleport_edge","id":"e"}}"#;
    assert!(matches!(decode_request(future), Err(StateError::MalformedRequest(_))));
}
