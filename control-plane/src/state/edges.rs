//! Commands on edges: register, drain, fail over, remove.

use super::checks::{check_addr, check_label, check_node_id};
use super::*;

pub(super) fn register_edge(
    state: &mut State,
    now: u64,
    id: &str,
    fields: (&str, &str, &str, &str),
    capacity: u32,
) -> Step {
    let (region, quic_addr, http_addr, version) = fields;
    check_node_id(id)?;
    check_label("region", region)?;
    check_addr("quic address", quic_addr)?;
    check_addr("http address", http_addr)?;
    check_len("version", version, 1, MAX_LABEL)?;
    let existing = state.edges.get(id);
    let created = existing.is_none();
    let registered_at_ms = existing.map_or(now, |e| e.registered_at_ms);
    let edge = Edge {
        id: id.to_owned(),
        region: region.to_owned(),
        quic_addr: quic_addr.to_owned(),
        http_addr: http_addr.to_owned(),
        version: version.to_owned(),
        capacity,
        draining: false,
        registered_at_ms,
        updated_at_ms: now,
    };
    state.edges.insert(id.to_owned(), edge);
    let verb = if created { "registered" } else { "updated" };
    Ok(Some(Change {
        target: id.to_owned(),
        summary: format!("{verb} in {region} at {quic_addr}, version {version}, capacity {capacity}"),
        detail: json!({ "edge": id, "created": created }),
    }))
}

/// Streams relayed by `id` lose it; returns their names.
pub(super) fn drop_from_relays(state: &mut State, id: &str) -> Vec<String> {
    let mut relayed = Vec::new();
    for stream in state.streams.values_mut() {
        let before: usize = stream.relays.values().map(Vec::len).sum();
        for edges in stream.relays.values_mut() {
            edges.retain(|e| e != id);
        }
        stream.relays.retain(|_, edges| !edges.is_empty());
        if stream.relays.values().map(Vec::len).sum::<usize>() != before {
            relayed.push(stream.name.clone());
        }
    }
    relayed
}

pub(super) fn drain_edge(state: &mut State, now: u64, id: &str) -> Step {
    let edge =
        state.edges.get_mut(id).ok_or_else(|| rejected(REJECT_NOT_FOUND, format!("no edge {id:?}")))?;
    edge.draining = true;
    edge.updated_at_ms = now;
    Ok(Some(Change {
        target: id.to_owned(),
        summary: "asked to drain".into(),
        detail: json!({ "edge": id, "draining": true }),
    }))
}

pub(super) fn edge_failed(state: &mut State, now: u64, id: &str) -> Step {
    if !state.edges.contains_key(id) {
        return Err(rejected(REJECT_NOT_FOUND, format!("no edge {id:?}")));
    }
    let mut lost = Vec::new();
    for stream in state.streams.values_mut().filter(|s| s.origin == id && !s.origin_lost) {
        stream.origin_lost = true;
        stream.updated_at_ms = now;
        lost.push(stream.name.clone());
    }
    let relayed = drop_from_relays(state, id);
    Ok(Some(Change {
        target: id.to_owned(),
        summary: format!(
            "failed: origin lost for {} stream(s), dropped from {} relay list(s)",
            lost.len(),
            relayed.len()
        ),
        detail: json!({ "edge": id, "origin_lost": lost, "dropped_from_relays": relayed }),
    }))
}

pub(super) fn remove_edge(state: &mut State, id: &str) -> Step {
    if !state.edges.contains_key(id) {
        return Err(rejected(REJECT_NOT_FOUND, format!("no edge {id:?}")));
    }
    let origin_of: Vec<&str> =
        state.streams.values().filter(|s| s.origin == id).map(|s| s.name.as_str()).collect();
    if !origin_of.is_empty() {
        // Name a few, not all: the message is stored for exactly-once replies.
        let some: Vec<&str> = origin_of.iter().take(3).copied().collect();
        let count = origin_of.len();
        let message = format!("edge {id:?} is the origin of {count} stream(s), e.g. {}", some.join(", "));
        return Err(rejected(REJECT_CONFLICT, message));
    }
    state.edges.remove(id);
    let relayed = drop_from_relays(state, id);
    Ok(Some(Change {
        target: id.to_owned(),
        summary: format!("removed; dropped from the relays of {} stream(s)", relayed.len()),
        detail: json!({ "edge": id, "dropped_from_relays": relayed }),
    }))
}
