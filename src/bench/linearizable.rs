//! Linearizability checker for histories of single registers (one per key): Wing &
//! Gong's search with Lowe's memoization, as in Porcupine. Keys are checked apart: a
//! history is linearizable iff every key's sub-history is (P-compositionality).
//!
//! Each op is a call event at `invoked` and a return event at `returned`. Events are
//! sorted by time with calls before returns at equal times, so an op returning at `t`
//! and one invoked at `t` are concurrent (either order is allowed). A write without an
//! answer returns after every other event: it may take effect any time after its
//! invocation, and taking effect last is the same as never. A read without an answer
//! tells nothing and is dropped.

// The chaos soak (src/bench/soak.rs) is the caller; until it lands only tests use this.
#![cfg_attr(not(test), allow(dead_code))]

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// What a client asked of one key (a register holding an optional u64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Write(u64),
    Read,
}

/// What it was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The write was acknowledged.
    Written,
    /// The read saw this value (None: the key does not exist / was never written).
    Read(Option<u64>),
    /// No answer (timeout, connection lost, 5xx): a write may or may not have taken
    /// effect, at any time after its invocation; a read without an answer tells nothing.
    Unknown,
}

/// One operation as one client saw it. Times are offsets from the start of the run
/// on one monotonic clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub key: String,
    pub client: usize,
    pub call: Call,
    pub answer: Answer,
    pub invoked: Duration,
    /// When the answer arrived; ignored for `Answer::Unknown` (such an op stays
    /// pending until the end of the history). Taken as `invoked` if earlier.
    pub returned: Duration,
}

/// The checker's verdict for a whole history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// `key`'s history has no linearization; `detail` names the smallest window /
    /// the operations that could not be ordered, readable by a human.
    Violation {
        key: String,
        detail: String,
    },
    /// The search for `key` exceeded the step budget without deciding.
    Undecided {
        key: String,
    },
}

/// Counts for a report: keys, operations, acknowledged writes, reads, unknown outcomes.
/// `reads` counts answered reads; `unknown` every other op that is not an
/// acknowledged write (unanswered ones, and any with an answer of the wrong kind).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub keys: usize,
    pub ops: usize,
    pub writes_acknowledged: usize,
    pub reads: usize,
    pub unknown: usize,
}

pub fn summarize(ops: &[Op]) -> Summary {
    let keys = ops.iter().map(|op| op.key.as_str()).collect::<HashSet<_>>().len();
    let mut summary = Summary { keys, ops: ops.len(), ..Summary::default() };
    for op in ops {
        match (op.call, op.answer) {
            (Call::Write(_), Answer::Written) => summary.writes_acknowledged += 1,
            (Call::Read, Answer::Read(_)) => summary.reads += 1,
            _ => summary.unknown += 1,
        }
    }
    summary
}

/// Checks every key's history; every key starts absent (`Read(None)`).
/// `budget`: the most search steps spent on one key before it is `Undecided`.
/// Keys are checked in order; a violation anywhere wins over an undecided key.
pub fn check(ops: &[Op], budget: u64) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops.iter().filter(|op| effect(op).is_some()) {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut undecided = None;
    for (key, history) in by_key {
        match check_key(&history, budget) {
            Outcome::Linearizable => {}
            Outcome::Violation(detail) => return Verdict::Violation { key: key.to_owned(), detail },
            Outcome::Undecided => {
                undecided.get_or_insert_with(|| key.to_owned());
            }
        }
    }
    undecided.map_or(Verdict::Linearizable, |key| Verdict::Undecided { key })
}

/// What an op does to the register, and whether it stays pending to the end (a write
/// without an answer). `None`: the op tells nothing (an unanswered read; a read
/// answered `Written` is a recorder bug and is dropped the same way, while a write
/// answered with a read value is taken as unanswered).
fn effect(op: &Op) -> Option<(Effect, bool)> {
    match (op.call, op.answer) {
        (Call::Write(v), Answer::Written) => Some((Effect::Write(v), false)),
        (Call::Write(v), _) => Some((Effect::Write(v), true)),
        (Call::Read, Answer::Read(seen)) => Some((Effect::Read(seen), false)),
        (Call::Read, _) => None,
    }
}

#[derive(Debug, Clone, Copy)]
enum Effect {
    Write(u64),
    Read(Option<u64>),
}

enum Outcome {
    Linearizable,
    Violation(String),
    Undecided,
}

/// A node of the event list: the head and tail sentinels, a call (with its return's
/// node), or a return.
#[derive(Debug, Clone, Copy)]
enum Node {
    End,
    Call { op: usize, ret: usize },
    Return { op: usize },
}

/// Doubly linked list over node indices; lifting an op unlinks its call and return,
/// unlifting relinks them in reverse order (dancing links).
struct List {
    next: Vec<usize>,
    prev: Vec<usize>,
}

impl List {
    fn next(&self, node: usize) -> usize {
        self.next.get(node).copied().unwrap_or(usize::MAX)
    }
    fn prev(&self, node: usize) -> usize {
        self.prev.get(node).copied().unwrap_or(usize::MAX)
    }
    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev(node), self.next(node));
        if let Some(n) = self.next.get_mut(prev) {
            *n = next;
        }
        if let Some(p) = self.prev.get_mut(next) {
            *p = prev;
        }
    }
    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.prev(node), self.next(node));
        if let Some(n) = self.next.get_mut(prev) {
            *n = node;
        }
        if let Some(p) = self.prev.get_mut(next) {
            *p = node;
        }
    }
}

/// A memoized configuration: which ops are linearized, and the register's value.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Config {
    done: Vec<u64>,
    state: Option<u64>,
}

impl Config {
    fn flip(&mut self, op: usize) {
        if let Some(word) = self.done.get_mut(op / 64) {
            *word ^= 1 << (op % 64);
        }
    }
}

/// The deepest point the search reached: `depth` ops linearized, the register held
/// `state`, and `blocked` returned before it could take effect; `window` are the ops
/// then pending, `last` the most recently linearized.
struct Stuck {
    depth: usize,
    state: Option<u64>,
    blocked: usize,
    window: Vec<usize>,
    last: Vec<usize>,
}

const HEAD: usize = 0;

fn check_key(history: &[&Op], budget: u64) -> Outcome {
    let n = history.len();
    let effects: Vec<_> = history.iter().map(|op| effect(op)).collect();
    let mut events = Vec::with_capacity(2 * n);
    for (i, op) in history.iter().enumerate() {
        let Some(&Some((_, pending))) = effects.get(i) else { continue };
        let returned = if pending { Duration::MAX } else { op.returned.max(op.invoked) };
        events.push((op.invoked, false, i));
        events.push((returned, true, i));
    }
    events.sort_by_key(|&(time, is_return, _)| (time, is_return));
    let tail = events.len() + 1;
    let mut return_node = vec![0; n];
    for (pos, &(_, is_return, op)) in events.iter().enumerate() {
        if let (true, Some(slot)) = (is_return, return_node.get_mut(op)) {
            *slot = pos + 1;
        }
    }
    let mut nodes = vec![Node::End];
    nodes.extend(events.iter().map(|&(_, is_return, op)| match is_return {
        true => Node::Return { op },
        false => Node::Call { op, ret: return_node.get(op).copied().unwrap_or(tail) },
    }));
    nodes.push(Node::End);
    let mut list =
        List { next: (1..=tail + 1).collect(), prev: (0..=tail).map(|i| i.wrapping_sub(1)).collect() };

    let mut config = Config { done: vec![0; n.div_ceil(64)], state: None };
    let mut cache = HashSet::new();
    let mut stack: Vec<(usize, Option<u64>)> = Vec::new();
    let mut stuck: Option<Stuck> = None;
    let mut node = list.next(HEAD);
    let mut steps = 0u64;
    while list.next(HEAD) != tail {
        steps += 1;
        if steps > budget {
            return Outcome::Undecided;
        }
        if let Some(&Node::Call { op, ret }) = nodes.get(node) {
            let after = match effects.get(op) {
                Some(&Some((Effect::Write(v), _))) => Some(Some(v)),
                Some(&Some((Effect::Read(seen), _))) => (seen == config.state).then_some(seen),
                _ => None,
            };
            if let Some(after) = after {
                let before = config.state;
                config.flip(op);
                config.state = after;
                if !cache.contains(&config) {
                    cache.insert(config.clone());
                    stack.push((node, before));
                    list.unlink(node);
                    list.unlink(ret);
                    node = list.next(HEAD);
                    continue;
                }
                config.flip(op);
                config.state = before;
            }
            node = list.next(node);
            continue;
        }
        // A return (never the tail in a well-formed list): its op did not take effect
        // in time, so undo the last choice.
        if let Some(&Node::Return { op }) = nodes.get(node) {
            if stuck.as_ref().is_none_or(|s| stack.len() > s.depth) {
                let mut window = Vec::new();
                let mut at = list.next(HEAD);
                while at != node && at != tail && at != usize::MAX {
                    if let Some(&Node::Call { op, .. }) = nodes.get(at) {
                        window.push(op);
                    }
                    at = list.next(at);
                }
                let recent = stack.iter().skip(stack.len().saturating_sub(3));
                let last = recent
                    .filter_map(|&(call, _)| match nodes.get(call) {
                        Some(&Node::Call { op, .. }) => Some(op),
                        _ => None,
                    })
                    .collect();
                stuck = Some(Stuck { depth: stack.len(), state: config.state, blocked: op, window, last });
            }
        }
        let Some((call, before)) = stack.pop() else {
            return Outcome::Violation(explain(history, stuck.as_ref()));
        };
        if let Some(&Node::Call { op, ret }) = nodes.get(call) {
            config.flip(op);
            list.relink(ret);
            list.relink(call);
        }
        config.state = before;
        node = list.next(call);
    }
    Outcome::Linearizable
}

fn explain(history: &[&Op], stuck: Option<&Stuck>) -> String {
    let Some(stuck) = stuck else { return "no linearization".to_owned() };
    let show = |ops: &[usize]| {
        let mut shown: Vec<String> =
            ops.iter().take(8).filter_map(|&i| history.get(i)).map(describe).collect();
        if ops.len() > 8 {
            shown.push(format!("and {} more", ops.len() - 8));
        }
        format!("[{}]", shown.join("; "))
    };
    let blocked = history.get(stuck.blocked).map_or_else(String::new, describe);
    format!(
        "at most {} of {} ops linearize; next, {blocked} cannot take effect before it returns: \
         the register holds {} after {}, and no order of the pending ops {} fits",
        stuck.depth,
        history.len(),
        value(stuck.state),
        show(&stuck.last),
        show(&stuck.window),
    )
}

fn describe(op: &&Op) -> String {
    let what = match (op.call, op.answer) {
        (Call::Write(v), Answer::Written) => format!("write {v}"),
        (Call::Write(v), _) => format!("write {v} (no answer)"),
        (Call::Read, Answer::Read(seen)) => format!("read {}", value(seen)),
        (Call::Read, _) => "read (no answer)".to_owned(),
    };
    let end = match effect(op) {
        Some((_, false)) => format!("{:?}", op.returned),
        _ => "…".to_owned(),
    };
    format!("client {} {what} [{:?}, {end}]", op.client, op.invoked)
}

fn value(state: Option<u64>) -> String {
    state.map_or_else(|| "absent".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
    use super::*;

    const BUDGET: u64 = 10_000_000;

    fn op(key: &str, client: usize, call: Call, answer: Answer, invoked: u64, returned: u64) -> Op {
        let (invoked, returned) = (Duration::from_millis(invoked), Duration::from_millis(returned));
        Op { key: key.to_owned(), client, call, answer, invoked, returned }
    }
    fn w(client: usize, v: u64, a: u64, b: u64) -> Op {
        op("k", client, Call::Write(v), Answer::Written, a, b)
    }
    fn lost(client: usize, v: u64, a: u64) -> Op {
        op("k", client, Call::Write(v), Answer::Unknown, a, a)
    }
    fn r(client: usize, seen: Option<u64>, a: u64, b: u64) -> Op {
        op("k", client, Call::Read, Answer::Read(seen), a, b)
    }
    fn ok(ops: &[Op]) -> bool {
        match check(ops, BUDGET) {
            Verdict::Linearizable => true,
            Verdict::Violation { .. } => false,
            Verdict::Undecided { key } => panic!("undecided {key}"),
        }
    }

    #[test]
    fn sequential_histories() {
        let mut h =
            vec![r(0, None, 0, 1), w(0, 1, 2, 3), r(1, Some(1), 4, 5), w(1, 2, 6, 7), r(0, Some(2), 8, 9)];
        assert_eq!(check(&h, BUDGET), Verdict::Linearizable);
        h.push(r(1, Some(1), 10, 11));
        let Verdict::Violation { key, detail } = check(&h, BUDGET) else { panic!() };
        assert_eq!(key, "k");
        assert!(detail.contains("client 1 read 1 [10ms, 11ms]"), "{detail}");
    }

    #[test]
    fn concurrent_overlaps_in_one_order_only() {
        // The read inside the write sees it: the write goes first.
        assert!(ok(&[w(0, 1, 0, 10), r(1, Some(1), 2, 3)]));
        // Two overlapping writes, then reads fixing which went last.
        let h = [w(0, 1, 0, 10), w(1, 2, 1, 11), r(2, Some(1), 12, 13)];
        assert!(ok(&h));
        assert!(!ok(&[h.as_slice(), &[r(2, Some(2), 14, 15)]].concat()));
        // Touching ops are concurrent: a read invoked when the write returns may miss it.
        assert!(ok(&[w(0, 1, 0, 5), r(1, None, 5, 6)]));
        assert!(!ok(&[w(0, 1, 0, 5), r(1, None, 6, 7)]));
    }

    #[test]
    fn new_then_old_reads_are_a_violation() {
        // Both reads inside the second write, one after the other: new, then old.
        assert!(!ok(&[w(0, 1, 0, 1), w(0, 2, 2, 20), r(1, Some(2), 3, 4), r(2, Some(1), 5, 6)]));
        assert!(ok(&[w(0, 1, 0, 1), w(0, 2, 2, 20), r(1, Some(1), 3, 4), r(2, Some(2), 5, 6)]));
        // The same after the write returned.
        assert!(!ok(&[w(0, 1, 0, 1), w(0, 2, 2, 3), r(1, Some(2), 4, 5), r(2, Some(1), 6, 7)]));
    }

    #[test]
    fn unknown_writes_may_take_effect_late_or_never() {
        assert!(ok(&[w(0, 1, 0, 1), lost(1, 7, 2), r(0, Some(1), 20, 21), r(0, Some(7), 30, 31)]));
        assert!(ok(&[lost(1, 7, 0), r(0, None, 10, 11), r(0, None, 20, 21)]));
        // Read before the write was invoked.
        assert!(!ok(&[r(0, Some(7), 0, 1), lost(1, 7, 5)]));
        // Once seen, it stays until overwritten.
        assert!(!ok(&[lost(1, 7, 0), r(0, Some(7), 1, 2), r(0, None, 3, 4)]));
        // An unanswered read tells nothing.
        let blind = op("k", 0, Call::Read, Answer::Unknown, 0, 0);
        assert!(ok(&[w(0, 1, 0, 1), blind, r(1, Some(1), 2, 3)]));
    }

    #[test]
    fn absent_before_first_write_only() {
        assert!(ok(&[r(0, None, 0, 1), w(1, 1, 0, 5), r(0, None, 2, 3), r(0, Some(1), 4, 6)]));
        // Keys are never deleted: absent after an acknowledged write is a violation...
        assert!(!ok(&[w(1, 1, 0, 1), r(0, None, 2, 3)]));
        // ...and after a seen unknown write too; unseen, it may never have happened.
        assert!(!ok(&[lost(1, 1, 0), r(0, Some(1), 1, 2), r(0, None, 3, 4)]));
        assert!(ok(&[lost(1, 1, 0), r(0, None, 3, 4)]));
    }

    #[test]
    fn keys_are_checked_apart_and_the_violating_one_is_named() {
        let on = |key: &str, mut op: Op| {
            op.key = key.to_owned();
            op
        };
        let h = vec![
            on("a", w(0, 1, 0, 1)),
            on("b", w(0, 1, 0, 1)),
            on("c", w(1, 2, 0, 1)),
            on("a", r(1, Some(1), 2, 3)),
            on("c", r(0, Some(2), 2, 3)),
            on("b", r(1, None, 2, 3)),
            on("c", op("c", 0, Call::Read, Answer::Unknown, 4, 5)),
        ];
        match check(&h, BUDGET) {
            Verdict::Violation { key, detail } => {
                assert!(key == "b" && detail.contains("read absent"), "{detail}")
            }
            v => panic!("{v:?}"),
        }
        assert_eq!(summarize(&h), Summary { keys: 3, ops: 7, writes_acknowledged: 3, reads: 3, unknown: 1 });
    }

    #[test]
    fn budget_exhaustion_is_undecided() {
        let h = [w(0, 1, 0, 10), w(1, 2, 0, 10), r(2, Some(1), 11, 12)];
        assert_eq!(check(&h, 2), Verdict::Undecided { key: "k".to_owned() });
    }

    /// splitmix64.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) % n
        }
    }

    /// `clients` sequential clients on one register; each op takes effect at a random
    /// instant of its interval (an unanswered write at any later instant, or never)
    /// and reads see what the register held then.
    fn simulate(rng: &mut Rng, clients: usize, per_client: usize, unknown_percent: u64) -> Vec<Op> {
        let (mut ops, mut effective) = (Vec::new(), Vec::new());
        let mut written = 0;
        for client in 0..clients {
            let mut t = rng.below(4);
            for _ in 0..per_client {
                let invoked = t + rng.below(3);
                let returned = invoked + rng.below(10);
                let mut at = Some(invoked + rng.below(returned - invoked + 1));
                let unknown = rng.below(100) < unknown_percent;
                let (call, answer) = if rng.below(2) == 0 {
                    written += 1;
                    if unknown {
                        at = (rng.below(3) > 0).then(|| invoked + rng.below(40));
                    }
                    (Call::Write(written), if unknown { Answer::Unknown } else { Answer::Written })
                } else {
                    (Call::Read, if unknown { Answer::Unknown } else { Answer::Read(None) })
                };
                let tie = rng.below(1000);
                effective.extend(at.map(|at| (at, tie, ops.len())));
                ops.push(op("k", client, call, answer, invoked, returned));
                t = returned;
            }
        }
        effective.sort_unstable();
        let mut register = None;
        for (_, _, i) in effective {
            match (ops[i].call, &mut ops[i].answer) {
                (Call::Write(v), _) => register = Some(v),
                (Call::Read, Answer::Read(seen)) => *seen = register,
                _ => {}
            }
        }
        ops
    }

    /// Ground truth: some order of all ops (unanswered reads dropped; an unanswered
    /// write placed last stands for never) respects real time and the register.
    fn brute_force(ops: &[Op]) -> bool {
        fn extend(ops: &[&Op], used: &mut Vec<bool>, order: &mut Vec<usize>, state: Option<u64>) -> bool {
            if order.len() == ops.len() {
                return true;
            }
            for i in 0..ops.len() {
                // Every unused op that returned before this one's invocation must come first.
                let blocked = (0..ops.len()).any(|j| {
                    !used[j] && j != i && ops[j].answer != Answer::Unknown && ops[j].returned < ops[i].invoked
                });
                let after = match (ops[i].call, ops[i].answer) {
                    (Call::Write(v), _) => Some(Some(v)),
                    (Call::Read, Answer::Read(seen)) => (seen == state).then_some(seen),
                    _ => None,
                };
                if let (false, false, Some(after)) = (used[i], blocked, after) {
                    used[i] = true;
                    order.push(i);
                    let found = extend(ops, used, order, after);
                    used[i] = false;
                    order.pop();
                    if found {
                        return true;
                    }
                }
            }
            false
        }
        let kept: Vec<&Op> = ops.iter().filter(|op| effect(op).is_some()).collect();
        extend(&kept, &mut vec![false; kept.len()], &mut Vec::new(), None)
    }

    #[test]
    fn random_small_histories_match_brute_force() {
        let mut rng = Rng(7);
        let (mut violations, mut harmless) = (0, 0);
        for _ in 0..1500 {
            let clients = 1 + rng.below(3) as usize;
            let per_client = 1 + rng.below(7 / clients as u64) as usize;
            let mut h = simulate(&mut rng, clients, per_client, 20);
            assert!(brute_force(&h) && ok(&h), "{h:#?}");
            let reads: Vec<usize> =
                (0..h.len()).filter(|&i| matches!(h[i].answer, Answer::Read(_))).collect();
            if reads.is_empty() {
                continue;
            }
            let i = reads[rng.below(reads.len() as u64) as usize];
            let Answer::Read(seen) = h[i].answer else { unreachable!() };
            let corrupt = match rng.below(4) {
                0 => None,
                _ => Some(rng.below(4) + 1),
            };
            if corrupt == seen {
                continue;
            }
            h[i].answer = Answer::Read(corrupt);
            let truth = brute_force(&h);
            assert_eq!(ok(&h), truth, "{h:#?}");
            *if truth { &mut harmless } else { &mut violations } += 1;
        }
        assert!(violations > 200 && harmless > 50, "{violations} violations, {harmless} harmless");
    }

    #[test]
    fn random_long_histories_linearize() {
        let mut rng = Rng(11);
        for _ in 0..30 {
            let clients = 2 + rng.below(4) as usize;
            let h = simulate(&mut rng, clients, 50, 5);
            assert!(ok(&h), "{h:#?}");
        }
    }

    #[test]
    fn zz_probe() {
        for (unk, seed) in [(1u64, 3u64), (5, 4), (10, 5), (20, 6)] {
            let mut h = simulate(&mut Rng(seed), 3, 2000, unk);
            let t = std::time::Instant::now();
            let v = check(&h, 100_000_000);
            eprintln!("unk {unk}% ok: {:?} {:?}", matches!(v, Verdict::Linearizable), t.elapsed());
            // corrupt a read in the middle
            let mut rng = Rng(seed);
            for _ in 0..3 {
                let i = 2000 + rng.below(2000) as usize;
                if let Answer::Read(s) = h[i].answer {
                    h[i].answer = Answer::Read(Some(s.unwrap_or(0) + 100000));
                    break;
                }
            }
            let t = std::time::Instant::now();
            let v = check(&h, 100_000_000);
            let s = format!("{v:?}");
            eprintln!("corrupt: {} {:?}", &s[..s.len().min(600)], t.elapsed());
        }
    }

    #[test]
    fn three_clients_two_thousand_ops_each_decide() {
        let h = simulate(&mut Rng(3), 3, 2000, 1);
        assert_eq!(check(&h, BUDGET), Verdict::Linearizable);
    }
}
