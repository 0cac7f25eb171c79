use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ferry_proto::api::Stream;
use ferry_proto::ErrorCode;

use super::{Action, Origins, PATIENCE};
use crate::cluster::control::LocalPublisher;

fn publisher(stream: &str, session: u64, takeover: bool) -> LocalPublisher {
    LocalPublisher { stream: stream.into(), session, takeover }
}

fn records(list: &[(&str, &str, bool)]) -> BTreeMap<String, Stream> {
    list.iter()
        .map(|(name, origin, lost)| {
            let stream = Stream {
                name: (*name).into(),
                origin: (*origin).into(),
                relays: BTreeMap::new(),
                origin_lost: *lost,
                created_at_ms: 0,
                updated_at_ms: 0,
            };
            ((*name).to_owned(), stream)
        })
        .collect()
}

fn nobody_live(_: &str, _: &str) -> bool {
    false
}

fn everyone_live(_: &str, _: &str) -> bool {
    true
}

fn claim(stream: &str, session: u64, takeover: bool) -> Action {
    Action::Claim { stream: stream.into(), session, takeover }
}

fn revoke(stream: &str, session: u64, reason: ErrorCode) -> Action {
    Action::Revoke { stream: stream.into(), session, reason }
}

#[test]
fn a_new_publisher_claims_once_and_a_recorded_one_costs_nothing() {
    let now = Instant::now();
    let mut o = Origins::new("a");
    let pubs = [publisher("s", 1, false)];
    assert_eq!(o.plan(now, &pubs, &records(&[]), &nobody_live), vec![claim("s", 1, false)]);
    o.granted("s", 1);
    let held = records(&[("s", "a", false)]);
    for _ in 0..5 {
        assert!(o.plan(now, &pubs, &held, &nobody_live).is_empty());
    }
}

#[test]
fn a_publisher_that_left_releases_once() {
    let now = Instant::now();
    let mut o = Origins::new("a");
    let held = records(&[("s", "a", false)]);
    assert!(o.plan(now, &[publisher("s", 1, false)], &held, &nobody_live).is_empty());
    assert_eq!(o.plan(now, &[], &held, &nobody_live), vec![Action::Release { stream: "s".into() }]);
    o.released("s");
    assert!(o.plan(now, &[], &records(&[]), &nobody_live).is_empty());
    // Another edge's record is never released by this one.
    assert!(o.plan(now, &[], &records(&[("s", "b", false)]), &nobody_live).is_empty());
}

#[test]
fn a_refused_claim_against_a_live_holder_ends_the_publisher_with_stream_busy() {
    let now = Instant::now();
    let mut o = Origins::new("b");
    let pubs = [publisher("s", 7, false)];
    let held = records(&[("s", "a", false)]);
    assert_eq!(o.plan(now, &pubs, &held, &everyone_live), vec![claim("s", 7, false)]);
    let action = o.refused(now, "s", 7, held.get("s"), true);
    assert_eq!(action, Some(revoke("s", 7, ErrorCode::StreamBusy)));
}

#[test]
fn a_refused_claim_waits_without_writing_until_the_record_moves() {
    let start = Instant::now();
    let mut o = Origins::new("b");
    let pubs = [publisher("s", 7, false)];
    let held = records(&[("s", "a", false)]);
    assert_eq!(o.plan(start, &pubs, &held, &nobody_live), vec![claim("s", 7, false)]);
    assert_eq!(o.refused(start, "s", 7, held.get("s"), false), None);
    assert!(o.recheck().is_some());
    // The holder is dead by gossip but the failover is not committed: no write.
    for s in 1..10 {
        assert!(o.plan(start + Duration::from_secs(s), &pubs, &held, &nobody_live).is_empty());
    }
    // The failover marks the origin lost: one claim, granted.
    let lost = records(&[("s", "a", true)]);
    assert_eq!(
        o.plan(start + Duration::from_secs(10), &pubs, &lost, &nobody_live),
        vec![claim("s", 7, false)]
    );
    o.granted("s", 7);
    assert!(o.recheck().is_none());
}

#[test]
fn a_waiting_publisher_is_ended_when_the_holder_shows_up_live_or_patience_runs_out() {
    let start = Instant::now();
    let held = records(&[("s", "a", false)]);
    let pubs = [publisher("s", 7, false)];

    let mut o = Origins::new("b");
    o.plan(start, &pubs, &held, &nobody_live);
    o.refused(start, "s", 7, held.get("s"), false);
    assert_eq!(
        o.plan(start + Duration::from_secs(1), &pubs, &held, &everyone_live),
        vec![revoke("s", 7, ErrorCode::StreamBusy)]
    );

    let mut o = Origins::new("b");
    o.plan(start, &pubs, &held, &nobody_live);
    o.refused(start, "s", 7, held.get("s"), false);
    assert!(o.plan(start + PATIENCE - Duration::from_millis(1), &pubs, &held, &nobody_live).is_empty());
    assert_eq!(
        o.plan(start + PATIENCE, &pubs, &held, &nobody_live),
        vec![revoke("s", 7, ErrorCode::StreamBusy)]
    );
}

#[test]
fn publishers_retrying_against_a_held_stream_never_write_again() {
    let start = Instant::now();
    let held = records(&[("s", "a", false)]);
    let mut o = Origins::new("b");
    let mut writes = 0;
    for session in 1..200u64 {
        let now = start + Duration::from_millis(session * 50);
        let pubs = [publisher("s", session, false)];
        for action in o.plan(now, &pubs, &held, &nobody_live) {
            if let Action::Claim { stream, session, .. } = action {
                writes += 1;
                o.refused(now, &stream, session, held.get("s"), false);
            }
        }
    }
    assert_eq!(writes, 1);
}

#[test]
fn a_takeover_is_claimed_with_the_grant_and_the_old_holder_ends_with_taken_over() {
    let now = Instant::now();
    // Edge b: a publisher with a takeover grant.
    let mut b = Origins::new("b");
    let held = records(&[("s", "a", false)]);
    assert_eq!(b.plan(now, &[publisher("s", 3, true)], &held, &everyone_live), vec![claim("s", 3, true)]);
    b.granted("s", 3);
    // Edge a held it for its publisher; the record now names b.
    let mut a = Origins::new("a");
    let pubs = [publisher("s", 1, false)];
    assert!(a.plan(now, &pubs, &held, &everyone_live).is_empty());
    let taken = records(&[("s", "b", false)]);
    assert_eq!(a.plan(now, &pubs, &taken, &everyone_live), vec![revoke("s", 1, ErrorCode::TakenOver)]);
    // And it does not release b's record once its publisher is gone.
    assert!(a.plan(now, &[], &taken, &everyone_live).is_empty());
}

#[test]
fn a_publisher_kept_through_a_partition_claims_its_lost_stream_back() {
    let now = Instant::now();
    let mut a = Origins::new("a");
    let pubs = [publisher("s", 1, false)];
    assert!(a.plan(now, &pubs, &records(&[("s", "a", false)]), &nobody_live).is_empty());
    let lost = records(&[("s", "a", true)]);
    assert_eq!(a.plan(now, &pubs, &lost, &nobody_live), vec![claim("s", 1, false)]);
}
