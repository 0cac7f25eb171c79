//! Catching a WHEP viewer up after loss (sans-IO; the caller passes the clock).
//!
//! UDP writes never block, so a viewer on a link slower than the stream never falls
//! behind its cursor: it loses packets instead, and asks for a keyframe (PLI/FIR).
//!
//! - A single request (none in the [`CALM`] before it): the viewer waits for the next
//!   keyframe, then gets whole groups again. An isolated loss costs one resync.
//! - Repeated requests (another within [`CALM`]): the link cannot carry the stream.
//!   The viewer gets keyframes only — each decodable on its own, a fraction of the
//!   stream's rate — until a keyframe goes out with no request for [`CALM`]; then whole
//!   groups resume, and if they are still too much the viewer asks again.
//!
//! While waiting or in keyframes-only mode, the source is asked for a fresh keyframe
//! every [`KEYFRAME_RETRY`] (the per-track throttle still applies). Other viewers are
//! untouched: each has its own cursor and its own `CatchUp`.

use std::time::{Duration, Instant};

/// Quiet time that separates an isolated loss from a link too slow for the stream.
pub const CALM: Duration = Duration::from_millis(1500);
/// While catching up, ask the source for a keyframe this often.
pub const KEYFRAME_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct CatchUp {
    /// When the viewer last asked for a keyframe.
    last_request: Option<Instant>,
    /// Nothing until the next keyframe.
    waiting: bool,
    /// Keyframes only, until calm.
    keyframes_only: bool,
    /// Delta frames held back so far.
    held_back: u64,
}

/// What to do with a frame read from the track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Send,
    /// A delta frame the viewer could not use: skip it.
    HoldBack,
}

impl CatchUp {
    /// The viewer asked for a keyframe at `now`.
    pub fn keyframe_requested(&mut self, now: Instant) {
        if self.last_request.is_some_and(|last| now.saturating_duration_since(last) < CALM) {
            self.keyframes_only = true;
        }
        self.last_request = Some(now);
        self.waiting = true;
    }

    /// Whether the viewer is waiting for keyframes (the caller keeps asking for them).
    pub fn active(&self) -> bool {
        self.waiting || self.keyframes_only
    }

    /// Whether the viewer gets keyframes only.
    pub fn keyframes_only(&self) -> bool {
        self.keyframes_only
    }

    /// Decides for one frame at `now`.
    pub fn admit(&mut self, keyframe: bool, now: Instant) -> Admit {
        if !self.active() {
            return Admit::Send;
        }
        if !keyframe {
            self.held_back += 1;
            return Admit::HoldBack;
        }
        self.waiting = false;
        let calm = self.last_request.is_none_or(|last| now.saturating_duration_since(last) >= CALM);
        if calm {
            self.keyframes_only = false;
        }
        Admit::Send
    }

    /// Delta frames held back so far.
    pub fn held_back(&self) -> u64 {
        self.held_back
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_viewer_without_loss_gets_everything() {
        let mut c = CatchUp::default();
        let now = Instant::now();
        assert_eq!(c.admit(true, now), Admit::Send);
        assert_eq!(c.admit(false, now), Admit::Send);
        assert!(!c.active());
    }

    #[test]
    fn an_isolated_loss_waits_for_one_keyframe_then_gets_whole_groups() {
        let mut c = CatchUp::default();
        let t0 = Instant::now();
        c.keyframe_requested(t0);
        assert!(c.active());
        assert_eq!(c.admit(false, t0), Admit::HoldBack);
        assert_eq!(c.admit(true, t0 + 200 * MS), Admit::Send);
        assert!(!c.active());
        assert_eq!(c.admit(false, t0 + 230 * MS), Admit::Send);
        assert_eq!(c.held_back(), 1);
    }

    #[test]
    fn repeated_losses_get_keyframes_only_until_calm() {
        let mut c = CatchUp::default();
        let t0 = Instant::now();
        c.keyframe_requested(t0);
        assert_eq!(c.admit(true, t0 + 200 * MS), Admit::Send);
        c.keyframe_requested(t0 + 400 * MS);
        assert!(c.keyframes_only());
        assert_eq!(c.admit(false, t0 + 450 * MS), Admit::HoldBack);
        // A keyframe soon after the last request: sent, still keyframes only.
        assert_eq!(c.admit(true, t0 + 1000 * MS), Admit::Send);
        assert_eq!(c.admit(false, t0 + 1030 * MS), Admit::HoldBack);
        assert!(c.active());
        // A keyframe after a calm period: sent, and whole groups resume.
        assert_eq!(c.admit(true, t0 + 400 * MS + CALM), Admit::Send);
        assert!(!c.active());
        assert_eq!(c.admit(false, t0 + 430 * MS + CALM), Admit::Send);
    }

    #[test]
    fn requests_further_apart_than_calm_stay_isolated() {
        let mut c = CatchUp::default();
        let t0 = Instant::now();
        c.keyframe_requested(t0);
        assert_eq!(c.admit(true, t0 + 100 * MS), Admit::Send);
        c.keyframe_requested(t0 + CALM + 200 * MS);
        assert!(!c.keyframes_only());
    }
}
