//! Commands on streams: put (origin and relays), relay placement, delete.

use super::checks::{check_known_edge, check_label};
use super::*;

pub(super) fn put_stream(
    state: &mut State,
    now: u64,
    name: &str,
    origin: &str,
    relays: &BTreeMap<String, Vec<String>>,
) -> Step {
    StreamName::new(name).map_err(|e| rejected(REJECT_INVALID, e.to_string()))?;
    check_known_edge(state, origin)?;
    let placed = checked_relays(state, relays)?;
    let created_at_ms = state.streams.get(name).map_or(now, |s| s.created_at_ms);
    let created = !state.streams.contains_key(name);
    let relay_count: usize = placed.values().map(Vec::len).sum();
    let stream = Stream {
        name: name.to_owned(),
        origin: origin.to_owned(),
        relays: placed,
        origin_lost: false,
        created_at_ms,
        updated_at_ms: now,
    };
    state.streams.insert(name.to_owned(), stream);
    Ok(Some(Change {
        target: name.to_owned(),
        summary: format!("origin {origin}, {relay_count} relay(s)"),
        detail: json!({ "stream": name, "created": created }),
    }))
}

pub(super) fn claim_stream(state: &mut State, now: u64, name: &str, origin: &str, takeover: bool) -> Step {
    StreamName::new(name).map_err(|e| rejected(REJECT_INVALID, e.to_string()))?;
    check_known_edge(state, origin)?;
    let (before, created_at_ms) = match state.streams.get(name) {
        None => (None, now),
        Some(s) if s.origin == origin && !s.origin_lost => return Ok(None),
        Some(s) if s.origin == origin || s.origin_lost || takeover => {
            (Some(s.origin.clone()), s.created_at_ms)
        }
        Some(s) => {
            return Err(rejected(
                REJECT_CONFLICT,
                format!(
                    "stream {name:?} is published on edge {:?}; taking it over needs a takeover grant",
                    s.origin
                ),
            ))
        }
    };
    // The relays pulled from the old origin; the leader places them again.
    let stream = Stream {
        name: name.to_owned(),
        origin: origin.to_owned(),
        relays: BTreeMap::new(),
        origin_lost: false,
        created_at_ms,
        updated_at_ms: now,
    };
    state.streams.insert(name.to_owned(), stream);
    let summary = match (&before, takeover) {
        (None, _) => format!("origin {origin}"),
        (Some(old), true) if old != origin => format!("origin {old} -> {origin} (takeover)"),
        (Some(old), _) => format!("origin {old} -> {origin}"),
    };
    Ok(Some(Change {
        target: name.to_owned(),
        summary,
        detail: json!({ "stream": name, "origin": origin, "previous": before }),
    }))
}

pub(super) fn release_stream(
    state: &mut State,
    name: &str,
    origin: &str,
    expired: Option<&Expiration>,
) -> Step {
    let unchanged = |s: &Stream| {
        expired.is_none_or(|e| s.updated_at_ms == e.updated_at_ms && s.origin_lost == e.origin_lost)
    };
    match state.streams.get(name) {
        Some(s) if s.origin == origin && unchanged(s) => {
            state.streams.remove(name);
            let summary = match expired {
                Some(e) => format!("expired: {}", e.reason),
                None => format!("released by {origin}"),
            };
            Ok(Some(Change {
                target: name.to_owned(),
                summary,
                detail: json!({ "stream": name, "released": true, "expired": expired.is_some() }),
            }))
        }
        // Another edge holds it now (a takeover), a publisher came back since the
        // leader looked, or it is gone: nothing to do.
        _ => Ok(None),
    }
}

/// Relay lists with known edges, valid regions, no edge twice in a region; empty
/// regions dropped.
pub(super) fn checked_relays(
    state: &State,
    relays: &BTreeMap<String, Vec<String>>,
) -> Result<BTreeMap<String, Vec<String>>, Rejection> {
    let mut placed = BTreeMap::new();
    for (region, edges) in relays {
        check_label("region", region)?;
        let mut seen = BTreeSet::new();
        for edge in edges {
            check_known_edge(state, edge)?;
            if !seen.insert(edge.as_str()) {
                return Err(rejected(
                    REJECT_INVALID,
                    format!("edge {edge:?} listed twice in region {region:?}"),
                ));
            }
        }
        if !edges.is_empty() {
            placed.insert(region.clone(), edges.clone());
        }
    }
    Ok(placed)
}

pub(super) fn place_relays(
    state: &mut State,
    now: u64,
    name: &str,
    origin: &str,
    relays: &BTreeMap<String, Vec<String>>,
) -> Step {
    let placed = checked_relays(state, relays)?;
    let stream = state
        .streams
        .get_mut(name)
        .ok_or_else(|| rejected(REJECT_NOT_FOUND, format!("no stream {name:?}")))?;
    if stream.origin != origin || stream.origin_lost {
        return Err(rejected(
            REJECT_CONFLICT,
            format!("stream {name:?} is no longer originated by {origin:?}"),
        ));
    }
    if stream.relays == placed {
        return Ok(None);
    }
    let summary = format!("relays {}", describe_relays(&placed));
    stream.relays = placed;
    stream.updated_at_ms = now;
    Ok(Some(Change { target: name.to_owned(), summary, detail: json!({ "stream": name }) }))
}

pub(super) fn describe_relays(relays: &BTreeMap<String, Vec<String>>) -> String {
    if relays.is_empty() {
        return "none".to_owned();
    }
    let parts: Vec<String> =
        relays.iter().map(|(region, edges)| format!("{region}: {}", edges.join(","))).collect();
    parts.join("; ")
}

pub(super) fn delete_stream(state: &mut State, name: &str) -> Step {
    if state.streams.remove(name).is_none() {
        return Err(rejected(REJECT_NOT_FOUND, format!("no stream {name:?}")));
    }
    Ok(Some(Change {
        target: name.to_owned(),
        summary: "deleted".to_owned(),
        detail: json!({ "stream": name }),
    }))
}
