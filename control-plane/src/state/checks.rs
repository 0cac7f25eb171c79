//! Checks of names, labels and addresses that commands carry.

use super::*;

pub(super) fn check_known_edge(state: &State, id: &str) -> Result<(), Rejection> {
    check_node_id(id)?;
    if !state.edges.contains_key(id) {
        return Err(rejected(REJECT_NOT_FOUND, format!("no edge {id:?}")));
    }
    Ok(())
}

pub(super) fn check_node_id(id: &str) -> Result<(), Rejection> {
    NodeId::new(id).map(drop).map_err(|e| rejected(REJECT_INVALID, e.to_string()))
}

/// 1..=[`MAX_LABEL`] bytes of `[A-Za-z0-9._-]`.
pub(super) fn check_label(kind: &str, value: &str) -> Result<(), Rejection> {
    check_len(kind, value, 1, MAX_LABEL)?;
    match value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        Some(c) => Err(rejected(REJECT_INVALID, format!("{kind} {value:?}: character {c:?} not allowed"))),
        None => Ok(()),
    }
}

pub(super) fn check_addr(kind: &str, value: &str) -> Result<(), Rejection> {
    check_len(kind, value, 1, MAX_ADDR)?;
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(rejected(REJECT_INVALID, format!("{kind} {value:?} contains whitespace")));
    }
    Ok(())
}

pub(super) fn check_len(kind: &str, value: &str, min: usize, max: usize) -> Result<(), Rejection> {
    if value.len() < min || value.len() > max {
        return Err(rejected(
            REJECT_INVALID,
            format!("{kind} must be {min}..={max} bytes, got {}", value.len()),
        ));
    }
    Ok(())
}
