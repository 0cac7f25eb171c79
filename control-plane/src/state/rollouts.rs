//! Commands on rollouts: create, level, share, pause/resume/abort, trip.

use super::checks::check_label;
use super::*;
use ferry_proto::cohort::ALL_BP;

pub(super) fn create_rollout(state: &mut State, now: u64, actor: &str, id: &str, spec: &RolloutSpec) -> Step {
    check_label("rollout id", id)?;
    if state.rollouts.contains_key(id) {
        return Err(rejected(REJECT_CONFLICT, format!("rollout {id:?} already exists")));
    }
    // Only one rollout that is not aborted may change a given setting.
    let settings = spec.settings();
    for other in state.rollouts.values().filter(|r| r.state != RolloutState::Aborted) {
        let theirs = other.spec.settings();
        if let Some(shared) = settings.iter().find(|s| theirs.contains(s)) {
            return Err(rejected(
                REJECT_INVALID,
                format!("setting {shared} is already changed by rollout {:?}", other.id),
            ));
        }
    }
    let event = RolloutEvent { at_ms: now, actor: actor.to_owned(), what: "created".to_owned(), level: 0 };
    let rollout = Rollout {
        id: id.to_owned(),
        spec: spec.clone(),
        level: 0,
        state: RolloutState::Active,
        history: vec![event],
        created_at_ms: now,
    };
    state.rollouts.insert(id.to_owned(), rollout);
    Ok(Some(Change {
        target: id.to_owned(),
        summary: "created at level 0".to_owned(),
        detail: json!({ "rollout": id, "level": 0, "state": RolloutState::Active }),
    }))
}

pub(super) fn set_rollout_level(state: &mut State, now: u64, actor: &str, id: &str, level: u8) -> Step {
    if level > MAX_ROLLOUT_LEVEL {
        return Err(rejected(REJECT_INVALID, format!("level {level} is outside 0..={MAX_ROLLOUT_LEVEL}")));
    }
    let rollout = find_rollout(state, id)?;
    if rollout.state == RolloutState::Aborted {
        return Err(rejected(REJECT_CONFLICT, format!("rollout {id:?} is aborted")));
    }
    let what = format!("level {} -> {level}", rollout.level);
    rollout.level = level;
    push_history(rollout, RolloutEvent { at_ms: now, actor: actor.to_owned(), what: what.clone(), level });
    Ok(Some(Change {
        target: id.to_owned(),
        summary: what,
        detail: json!({ "rollout": id, "level": level, "state": rollout.state }),
    }))
}

pub(super) fn set_rollout_share(state: &mut State, now: u64, actor: &str, id: &str, share_bp: u32) -> Step {
    let rollout = find_rollout(state, id)?;
    if rollout.state == RolloutState::Aborted {
        return Err(rejected(REJECT_CONFLICT, format!("rollout {id:?} is aborted")));
    }
    // Only this command's own rule, fixed for command set 1. The spec's rules (which a
    // newer build may tighten) were checked before the command was proposed: two builds
    // applying the same entry must agree.
    if share_bp > ALL_BP {
        return Err(rejected(REJECT_INVALID, format!("gates.share_bp: {share_bp} is above {ALL_BP}")));
    }
    let before = rollout.spec.gates.share_bp;
    rollout.spec.gates.share_bp = share_bp;
    let level = rollout.level;
    let what = format!("share {before} -> {share_bp} bp");
    push_history(rollout, RolloutEvent { at_ms: now, actor: actor.to_owned(), what: what.clone(), level });
    Ok(Some(Change {
        target: id.to_owned(),
        summary: what,
        detail: json!({ "rollout": id, "level": level, "share_bp": share_bp, "state": rollout.state }),
    }))
}

/// Pause (from active), resume (from paused or tripped) or abort (from anything but aborted).
pub(super) fn move_rollout(state: &mut State, now: u64, actor: &str, id: &str, to: RolloutState) -> Step {
    let rollout = find_rollout(state, id)?;
    let from = rollout.state;
    let (allowed, what) = match to {
        RolloutState::Paused => (from == RolloutState::Active, "paused"),
        RolloutState::Active => (matches!(from, RolloutState::Paused | RolloutState::Tripped), "resumed"),
        RolloutState::Aborted => (from != RolloutState::Aborted, "aborted"),
        RolloutState::Tripped => (from == RolloutState::Active, "tripped"),
    };
    if !allowed {
        return Err(rejected(REJECT_CONFLICT, format!("rollout {id:?} is {from}, cannot be {what}")));
    }
    rollout.state = to;
    let level = rollout.level;
    push_history(rollout, RolloutEvent { at_ms: now, actor: actor.to_owned(), what: what.to_owned(), level });
    Ok(Some(Change {
        target: id.to_owned(),
        summary: what.to_owned(),
        detail: json!({ "rollout": id, "level": level, "state": to }),
    }))
}

pub(super) fn trip_rollout(state: &mut State, now: u64, actor: &str, id: &str, guard: &str) -> Step {
    let rollout = find_rollout(state, id)?;
    match rollout.state {
        // Several guards (or edges) may report one trip: the first one counts.
        RolloutState::Tripped => return Ok(None),
        RolloutState::Active => {}
        other => {
            return Err(rejected(REJECT_CONFLICT, format!("rollout {id:?} is {other}, not active")));
        }
    }
    let on_trip = rollout.spec.on_trip;
    let from = rollout.level;
    let to = match on_trip {
        ferry_proto::rollout::OnTrip::Off => 0,
        // The level before the current one: the newest earlier level in the history.
        ferry_proto::rollout::OnTrip::Previous => {
            rollout.history.iter().rev().map(|e| e.level).find(|l| *l != from).unwrap_or(0).min(from)
        }
    };
    rollout.level = to;
    rollout.state = RolloutState::Tripped;
    let what = format!("tripped by {guard}: level {from} -> {to}");
    push_history(
        rollout,
        RolloutEvent { at_ms: now, actor: actor.to_owned(), what: what.clone(), level: to },
    );
    Ok(Some(Change {
        target: id.to_owned(),
        summary: what,
        detail: json!({ "rollout": id, "level": to, "state": RolloutState::Tripped, "guard": guard }),
    }))
}

pub(super) fn find_rollout<'a>(state: &'a mut State, id: &str) -> Result<&'a mut Rollout, Rejection> {
    state.rollouts.get_mut(id).ok_or_else(|| rejected(REJECT_NOT_FOUND, format!("no rollout {id:?}")))
}

pub(super) fn push_history(rollout: &mut Rollout, event: RolloutEvent) {
    rollout.history.push(event);
    let excess = rollout.history.len().saturating_sub(MAX_ROLLOUT_HISTORY);
    rollout.history.drain(..excess);
}
