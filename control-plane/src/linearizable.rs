//! Linearizability checker for histories of single registers (one per key): Wing &
//! Gong's search with Lowe's memoization, as in Porcupine. Keys are checked apart: a
//! history is linearizable iff every key's sub-history is (P-compositionality).
//!
//! Each op is a call event at `invoked` and a return event at `returned`, sorted by
//! time with calls before returns at equal times: an op returning at `t` and one
//! invoked at `t` are concurrent (either order is allowed). A write without an answer
//! returns after every other event: it may take effect any time after its invocation,
//! and taking effect last is the same as never. A read without an answer is dropped,
//! and so is a write without an answer whose value no read saw (never is then as good
//! as any time, and such writes would double the search space each).

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
/// `reads` are answered reads; `unknown` all other ops that are not acknowledged writes.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub keys: usize,
    pub ops: usize,
    pub writes_acknowledged: usize,
    pub reads: usize,
    pub unknown: usize,
}

/// Counts `ops` for a report.
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
/// Keys are checked in order; a violation of any key wins over an undecided one.
pub fn check(ops: &[Op], budget: u64) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut undecided = None;
    for (key, history) in by_key {
        match check_key(&history, budget) {
            Some(Ok(())) => {}
            Some(Err(detail)) => return Verdict::Violation { key: key.to_owned(), detail },
            None => undecided = undecided.or_else(|| Some(key.to_owned())),
        }
    }
    undecided.map_or(Verdict::Linearizable, |key| Verdict::Undecided { key })
}

#[derive(Debug, Clone, Copy)]
enum Effect {
    Write(u64),
    Read(Option<u64>),
}

/// What an op does to the register, and whether it stays pending to the end (a write
/// without an answer). `None`: it tells nothing. A recorder bug (an answer of the
/// wrong kind) is taken as no answer.
fn effect(op: &Op) -> Option<(Effect, bool)> {
    match (op.call, op.answer) {
        (Call::Write(v), answer) => Some((Effect::Write(v), answer != Answer::Written)),
        (Call::Read, Answer::Read(seen)) => Some((Effect::Read(seen), false)),
        (Call::Read, _) => None,
    }
}

/// Doubly linked event list over node indices: lifting an op unlinks its call, then
/// its return; unlifting relinks them in reverse order (dancing links).
struct List {
    next: Vec<usize>,
    prev: Vec<usize>,
}

impl List {
    fn next(&self, node: usize) -> usize {
        self.next.get(node).copied().unwrap_or(usize::MAX)
    }
    /// Unlinks `node` from its neighbours, or links it back between them.
    fn link(&mut self, node: usize, back: bool) {
        let (prev, next) = (self.prev.get(node).copied().unwrap_or(usize::MAX), self.next(node));
        let (to_next, to_prev) = if back { (node, node) } else { (next, prev) };
        if let Some(n) = self.next.get_mut(prev) {
            *n = to_next;
        }
        if let Some(p) = self.prev.get_mut(next) {
            *p = to_prev;
        }
    }
}

fn flip(bits: &mut [u64], op: usize) {
    if let Some(word) = bits.get_mut(op / 64) {
        *word ^= 1 << (op % 64);
    }
}

/// The memo key for a set of linearized ops: the positions where the bitset changes.
/// Exact and short, as ops are numbered in call order and the set is mostly a prefix.
fn runs(bits: &[u64]) -> Box<[usize]> {
    let mut edges = Vec::new();
    let mut carry = 0;
    for (i, &word) in bits.iter().enumerate() {
        let mut changes = word ^ ((word << 1) | carry);
        carry = word >> 63;
        while changes != 0 {
            edges.push(i * 64 + changes.trailing_zeros() as usize);
            changes &= changes - 1;
        }
    }
    edges.into_boxed_slice()
}

/// The deepest point of the search: `depth` ops linearized, leaving the register at
/// `state` (`last` the latest of them), when `blocked` returned before it could take
/// effect and no order of the pending calls `window` helped.
struct Stuck {
    depth: usize,
    state: Option<u64>,
    blocked: usize,
    window: Vec<usize>,
    last: Vec<usize>,
}

const HEAD: usize = 0;

/// Searches one key's history: `None` if the budget ran out, else whether it is
/// linearizable and if not, why.
fn check_key(history: &[&Op], budget: u64) -> Option<Result<(), String>> {
    let reads = history.iter().filter_map(|op| if let Answer::Read(seen) = op.answer { seen } else { None });
    let seen: HashSet<u64> = reads.collect();
    let unseen = |v| !seen.contains(&v);
    let mut ops: Vec<(&Op, Effect, bool)> = history
        .iter()
        .filter_map(|&op| effect(op).map(|(effect, pending)| (op, effect, pending)))
        .filter(|&(_, effect, pending)| !matches!(effect, Effect::Write(v) if pending && unseen(v)))
        .collect();
    ops.sort_by_key(|&(op, ..)| op.invoked);
    let mut events = Vec::with_capacity(2 * ops.len());
    for (i, &(op, _, pending)) in ops.iter().enumerate() {
        let returned = if pending { Duration::MAX } else { op.returned.max(op.invoked) };
        events.extend([(op.invoked, false, i), (returned, true, i)]);
    }
    events.sort_by_key(|&(time, is_return, _)| (time, is_return));
    let tail = events.len() + 1;
    let mut ret = vec![tail; ops.len()];
    for (pos, &(_, is_return, op)) in events.iter().enumerate() {
        if let (true, Some(slot)) = (is_return, ret.get_mut(op)) {
            *slot = pos + 1;
        }
    }
    // Nodes: (op, its return's node) for a call, (op, None) for a return or a sentinel
    // (head 0, tail).
    let calls_and_returns = events.iter().map(|&(_, is_return, op)| (op, ret.get(op).filter(|_| !is_return)));
    let nodes: Vec<_> =
        [(usize::MAX, None)].into_iter().chain(calls_and_returns).chain([(usize::MAX, None)]).collect();
    let call_of = |node: usize| nodes.get(node).and_then(|&(op, ret)| Some((op, *ret?)));
    let mut list =
        List { next: (1..=tail + 1).collect(), prev: (0..=tail).map(|i| i.wrapping_sub(1)).collect() };

    let mut bits = vec![0u64; ops.len().div_ceil(64)];
    let mut state = None;
    let mut cache = HashSet::new();
    let mut stack: Vec<(usize, Option<u64>)> = Vec::new();
    let mut stuck: Option<Stuck> = None;
    let (mut node, mut steps) = (list.next(HEAD), 0u64);
    while list.next(HEAD) != tail {
        steps += 1;
        if steps > budget {
            return None;
        }
        if let Some((op, ret)) = call_of(node) {
            let after = match ops.get(op) {
                Some(&(_, Effect::Write(v), _)) => Some(Some(v)),
                Some(&(_, Effect::Read(seen), _)) if seen == state => Some(seen),
                _ => None,
            };
            flip(&mut bits, op);
            if let Some(after) = after.filter(|&after| cache.insert((runs(&bits), after))) {
                stack.push((node, state));
                state = after;
                list.link(node, false);
                list.link(ret, false);
                node = list.next(HEAD);
            } else {
                flip(&mut bits, op);
                node = list.next(node);
            }
            continue;
        }
        // The first return in the list: its op could not take effect before it.
        if let Some(&(blocked, _)) = nodes.get(node) {
            if stuck.as_ref().is_none_or(|stuck| stack.len() > stuck.depth) {
                let mut window = Vec::new();
                let mut at = list.next(HEAD);
                while let Some((op, _)) = call_of(at) {
                    window.push(op);
                    at = list.next(at);
                }
                let recent = stack.iter().skip(stack.len().saturating_sub(3));
                let last = recent.filter_map(|&(call, _)| call_of(call).map(|(op, _)| op)).collect();
                stuck = Some(Stuck { depth: stack.len(), state, blocked, window, last });
            }
        }
        // Undo the latest choice and try the next call after it.
        let Some((call, before)) = stack.pop() else {
            let ops: Vec<&Op> = ops.iter().map(|&(op, ..)| op).collect();
            return Some(Err(explain(&ops, stuck)));
        };
        if let Some((op, ret)) = call_of(call) {
            flip(&mut bits, op);
            list.link(ret, true);
            list.link(call, true);
        }
        state = before;
        node = list.next(call);
    }
    Some(Ok(()))
}

/// Names the deepest point of the search (at most 8 of the other pending ops).
fn explain(ops: &[&Op], stuck: Option<Stuck>) -> String {
    let Some(stuck) = stuck else { return "no linearization".to_owned() };
    let list = |which: &mut dyn Iterator<Item = usize>| {
        let shown: Vec<String> = which.filter_map(|i| ops.get(i)).map(|op| describe(op)).collect();
        format!("[{}]", shown.join("; "))
    };
    format!(
        "{} cannot take effect before it returns: after {} of {} ops, the latest {}, the register \
         holds {}, and no order of the other pending ops {} helps",
        ops.get(stuck.blocked).map_or_else(String::new, |op| describe(op)),
        stuck.depth,
        ops.len(),
        list(&mut stuck.last.into_iter()),
        value(stuck.state),
        list(&mut stuck.window.into_iter().filter(|&op| op != stuck.blocked).take(8)),
    )
}

fn describe(op: &Op) -> String {
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

    fn op(client: usize, call: Call, answer: Answer, invoked: u64, returned: u64) -> Op {
        let (invoked, returned) = (Duration::from_millis(invoked), Duration::from_millis(returned));
        Op { key: "k".to_owned(), client, call, answer, invoked, returned }
    }
    fn w(client: usize, v: u64, invoked: u64, returned: u64) -> Op {
        op(client, Call::Write(v), Answer::Written, invoked, returned)
    }
    fn lost(client: usize, v: u64, invoked: u64) -> Op {
        op(client, Call::Write(v), Answer::Unknown, invoked, invoked)
    }
    fn r(client: usize, seen: Option<u64>, invoked: u64, returned: u64) -> Op {
        op(client, Call::Read, Answer::Read(seen), invoked, returned)
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
        assert!(detail.starts_with("client 1 read 1 [10ms, 11ms] cannot take effect"), "{detail}");
        assert!(detail.contains("after 5 of 6 ops") && detail.contains("the register holds 2,"), "{detail}");
    }

    #[test]
    fn concurrent_overlaps_in_one_order_only() {
        // A read inside a write that sees it: the write went first.
        assert!(ok(&[w(0, 1, 0, 10), r(1, Some(1), 2, 3)]));
        // Overlapping writes, then reads that fix which went last.
        let h = [w(0, 1, 0, 10), w(1, 2, 1, 11), r(2, Some(1), 12, 13)];
        assert!(ok(&h) && !ok(&[&h[..], &[r(2, Some(2), 14, 15)]].concat()));
        assert_eq!(check(&h, 2), Verdict::Undecided { key: "k".to_owned() });
        // Ops that touch are concurrent: a read invoked as the write returns may miss it.
        assert!(ok(&[w(0, 1, 0, 5), r(1, None, 5, 6)]) && !ok(&[w(0, 1, 0, 5), r(1, None, 6, 7)]));
    }

    #[test]
    fn new_then_old_reads_are_a_violation() {
        // Two reads, one after the other, both inside the second write; then after it.
        assert!(!ok(&[w(0, 1, 0, 1), w(0, 2, 2, 20), r(1, Some(2), 3, 4), r(2, Some(1), 5, 6)]));
        assert!(ok(&[w(0, 1, 0, 1), w(0, 2, 2, 20), r(1, Some(1), 3, 4), r(2, Some(2), 5, 6)]));
        assert!(!ok(&[w(0, 1, 0, 1), w(0, 2, 2, 3), r(1, Some(2), 4, 5), r(2, Some(1), 6, 7)]));
    }

    #[test]
    fn unknown_writes_may_take_effect_late_or_never() {
        assert!(ok(&[w(0, 1, 0, 1), lost(1, 7, 2), r(0, Some(1), 20, 21), r(0, Some(7), 30, 31)]));
        assert!(ok(&[lost(1, 7, 0), r(0, None, 10, 11), w(0, 8, 12, 13), r(0, Some(8), 20, 21)]));
        assert!(!ok(&[r(0, Some(7), 0, 1), lost(1, 7, 5)]), "read before the write was invoked");
        // An unanswered read tells nothing.
        assert!(ok(&[w(0, 1, 0, 1), op(0, Call::Read, Answer::Unknown, 2, 2), r(1, Some(1), 3, 4)]));
    }

    #[test]
    fn absent_only_before_the_first_write() {
        assert!(ok(&[r(0, None, 0, 1), w(1, 1, 0, 5), r(0, None, 2, 3), r(0, Some(1), 4, 6)]));
        // Keys are never deleted: absent after an acknowledged write, or after an
        // unanswered one was seen, is a violation; unseen, it may never have happened.
        assert!(!ok(&[w(1, 1, 0, 1), r(0, None, 2, 3)]));
        assert!(!ok(&[lost(1, 1, 0), r(0, Some(1), 1, 2), r(0, None, 3, 4)]));
        assert!(ok(&[lost(1, 1, 0), r(0, None, 3, 4)]));
    }

    #[test]
    fn keys_are_checked_apart_and_the_violating_one_is_named() {
        let on = |key: &str, op: Op| Op { key: key.to_owned(), ..op };
        let h = [
            on("a", w(0, 1, 0, 1)),
            on("b", w(0, 1, 0, 1)),
            on("c", w(1, 1, 0, 1)),
            on("a", r(1, Some(1), 2, 3)),
            on("b", r(1, None, 2, 3)),
            on("c", op(0, Call::Read, Answer::Unknown, 4, 5)),
        ];
        let Verdict::Violation { key, detail } = check(&h, BUDGET) else { panic!() };
        assert!(key == "b" && detail.starts_with("client 1 read absent"), "{detail}");
        let expected = Summary { keys: 3, ops: 6, writes_acknowledged: 3, reads: 2, unknown: 1 };
        assert_eq!(summarize(&h), expected);
    }

    /// splitmix64.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let z = (self.0 ^ (self.0 >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) % n
        }
    }

    /// Sequential clients on one register: each op takes effect at a random instant of
    /// its interval (an unanswered write at any later one, or never); reads see the
    /// register then.
    fn simulate(rng: &mut Rng, clients: usize, per_client: usize, unknown_percent: u64) -> Vec<Op> {
        let (mut ops, mut effective) = (Vec::new(), Vec::new());
        for client in 0..clients {
            let mut t = rng.below(4);
            for _ in 0..per_client {
                let invoked = t + rng.below(3);
                t = invoked + rng.below(10);
                let mut at = Some(invoked + rng.below(t - invoked + 1));
                let call = if rng.below(2) == 0 { Call::Read } else { Call::Write(ops.len() as u64 + 1) };
                let answer = match (call, rng.below(100) < unknown_percent) {
                    (_, true) => Answer::Unknown,
                    (Call::Read, false) => Answer::Read(None),
                    (Call::Write(_), false) => Answer::Written,
                };
                if answer == Answer::Unknown {
                    at = (rng.below(3) > 0).then(|| invoked + rng.below(40));
                }
                effective.extend(at.map(|at| (at, rng.below(1000), ops.len())));
                ops.push(op(client, call, answer, invoked, t));
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

    /// Ground truth: can the ops go in some order (an unanswered write last standing for
    /// never) that respects real time and the register, from `state`?
    fn brute_force(ops: &[&Op], state: Option<u64>) -> bool {
        ops.is_empty()
            || (0..ops.len()).any(|i| {
                let (op, rest) = (ops[i], [&ops[..i], &ops[i + 1..]].concat());
                let first = rest.iter().all(|o| o.answer == Answer::Unknown || o.returned >= op.invoked);
                let after = match (op.call, op.answer) {
                    (Call::Write(v), _) => Some(Some(v)),
                    (Call::Read, Answer::Read(seen)) => (seen == state).then_some(seen),
                    (Call::Read, _) => Some(state),
                };
                first && after.is_some_and(|after| brute_force(&rest, after))
            })
    }

    #[test]
    fn random_small_histories_agree_with_brute_force() {
        let (mut rng, mut violations, mut harmless) = (Rng(7), 0, 0);
        for _ in 0..1500 {
            let clients = 1 + rng.below(3);
            let per_client = 1 + rng.below(7 / clients);
            let mut h = simulate(&mut rng, clients as usize, per_client as usize, 20);
            assert!(brute_force(&h.iter().collect::<Vec<_>>(), None) && ok(&h), "{h:#?}");
            let reads: Vec<usize> =
                (0..h.len()).filter(|&i| matches!(h[i].answer, Answer::Read(_))).collect();
            let Some(&i) = reads.get(rng.below(reads.len().max(1) as u64) as usize) else { continue };
            let v = rng.below(8);
            let corrupt = Answer::Read((v > 0).then_some(v));
            if h[i].answer != corrupt {
                h[i].answer = corrupt;
                let truth = brute_force(&h.iter().collect::<Vec<_>>(), None);
                assert_eq!(ok(&h), truth, "{h:#?}");
                *if truth { &mut harmless } else { &mut violations } += 1;
            }
        }
        assert!(violations > 200 && harmless > 50, "{violations} violations, {harmless} harmless");
    }

    #[test]
    fn three_clients_two_thousand_ops_each_decide() {
        let mut h = simulate(&mut Rng(3), 3, 2000, 5);
        assert_eq!(check(&h, BUDGET), Verdict::Linearizable);
        // A read in the middle that saw what nobody wrote.
        let i = (3000..).find(|&i| matches!(h[i].answer, Answer::Read(_))).unwrap();
        h[i].answer = Answer::Read(Some(u64::MAX));
        assert!(matches!(check(&h, BUDGET), Verdict::Violation { .. }));
        for seed in 0..20 {
            assert!(ok(&simulate(&mut Rng(seed), 5, 50, 5)));
        }
    }
}
