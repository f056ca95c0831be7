//! Server-side partition assignors: given the members' subscriptions and the partition counts
//! of the subscribed topics, each computes the target assignment of a group.
//!
//! - `range`: per topic, contiguous ranges of partitions to the members subscribed to it.
//! - `roundrobin`: every partition in (topic, partition) order, dealt to the subscribed members
//!   in turn.
//! - `sticky` (the default): keeps every partition where the previous target put it, as long
//!   as its member still subscribes and balance allows; only the excess of overloaded members
//!   and orphaned partitions move. This is what makes rebalances incremental: a member that
//!   joins takes a share from the others, and nobody else's partitions move.
//!
//! Assignors are pure functions of their input (members in id order, partitions sorted), so
//! a coordinator that fails over computes the same target from the same state.

use std::collections::{BTreeMap, BTreeSet};

/// A topic partition as the coordinator tracks it.
pub type Tp = (String, u32);

/// The assignors a member may name.
pub const ASSIGNORS: [&str; 3] = ["sticky", "range", "roundrobin"];

/// What an assignor works from.
pub struct AssignInput<'a> {
    /// Member id -> subscribed topics.
    pub members: &'a BTreeMap<String, BTreeSet<String>>,
    /// Topic -> partition count, for every subscribed topic that exists.
    pub topics: &'a BTreeMap<String, u32>,
    /// The previous target (sticky keeps it where it can).
    pub previous: &'a BTreeMap<String, BTreeSet<Tp>>,
}

/// Computes a target assignment: every partition of a subscribed topic goes to exactly one
/// member subscribed to that topic. `name` must be one of [`ASSIGNORS`].
pub fn assign(name: &str, input: &AssignInput<'_>) -> BTreeMap<String, BTreeSet<Tp>> {
    let mut out: BTreeMap<String, BTreeSet<Tp>> = input
        .members
        .keys()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    match name {
        "range" => range(input, &mut out),
        "roundrobin" => round_robin(input, &mut out),
        _ => sticky(input, &mut out),
    }
    out
}

fn subscribers<'a>(input: &'a AssignInput<'_>, topic: &str) -> Vec<&'a String> {
    input
        .members
        .iter()
        .filter(|(_, subs)| subs.contains(topic))
        .map(|(m, _)| m)
        .collect()
}

fn range(input: &AssignInput<'_>, out: &mut BTreeMap<String, BTreeSet<Tp>>) {
    for (topic, &count) in input.topics {
        let subs = subscribers(input, topic);
        if subs.is_empty() {
            continue;
        }
        let n = subs.len() as u32;
        let (share, extra) = (count / n, count % n);
        let mut next = 0;
        for (i, m) in subs.iter().enumerate() {
            let take = share + u32::from((i as u32) < extra);
            let set = out.get_mut(*m).expect("member listed");
            for p in next..next + take {
                set.insert((topic.clone(), p));
            }
            next += take;
        }
    }
}

fn round_robin(input: &AssignInput<'_>, out: &mut BTreeMap<String, BTreeSet<Tp>>) {
    let members: Vec<&String> = input.members.keys().collect();
    if members.is_empty() {
        return;
    }
    let mut turn = 0usize;
    for (topic, &count) in input.topics {
        for p in 0..count {
            // The next member in turn that subscribes to this topic.
            for step in 0..members.len() {
                let m = members[(turn + step) % members.len()];
                if input.members[m].contains(topic) {
                    out.get_mut(m)
                        .expect("member listed")
                        .insert((topic.clone(), p));
                    turn = (turn + step + 1) % members.len();
                    break;
                }
            }
        }
    }
}

fn sticky(input: &AssignInput<'_>, out: &mut BTreeMap<String, BTreeSet<Tp>>) {
    let eligible = |m: &str, tp: &Tp| {
        input.members.get(m).is_some_and(|s| s.contains(&tp.0))
            && input.topics.get(&tp.0).is_some_and(|&c| tp.1 < c)
    };
    // 1. Keep what the previous target gave each member, where still valid.
    let mut taken: BTreeSet<Tp> = BTreeSet::new();
    for (m, set) in input.previous {
        if !out.contains_key(m) {
            continue;
        }
        for tp in set {
            if eligible(m, tp) && taken.insert(tp.clone()) {
                out.get_mut(m).expect("member listed").insert(tp.clone());
            }
        }
    }
    // 2. Orphans go to the least-loaded eligible member.
    for (topic, &count) in input.topics {
        for p in 0..count {
            let tp = (topic.clone(), p);
            if taken.contains(&tp) {
                continue;
            }
            let best = out
                .iter()
                .filter(|(m, _)| eligible(m, &tp))
                .min_by_key(|(m, set)| (set.len(), (*m).clone()))
                .map(|(m, _)| m.clone());
            if let Some(m) = best {
                out.get_mut(&m).expect("member listed").insert(tp.clone());
                taken.insert(tp);
            }
        }
    }
    // 3. Even out: move one partition at a time from the most-loaded member to a member
    //    holding at least two fewer that may take it. Each move lowers the sum of squared
    //    loads, so this ends; only the excess moves.
    loop {
        let mut moved = false;
        let mut by_load: Vec<(usize, String)> =
            out.iter().map(|(m, s)| (s.len(), m.clone())).collect();
        by_load.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        'search: for (load, from) in &by_load {
            for (to_load, to) in by_load.iter().rev() {
                if to_load + 1 >= *load {
                    break;
                }
                let candidate = out[from].iter().rev().find(|tp| eligible(to, tp)).cloned();
                if let Some(tp) = candidate {
                    out.get_mut(from).expect("member listed").remove(&tp);
                    out.get_mut(to).expect("member listed").insert(tp);
                    moved = true;
                    break 'search;
                }
            }
        }
        if !moved {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(list: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        list.iter()
            .map(|(m, t)| (m.to_string(), t.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    fn check_complete(
        out: &BTreeMap<String, BTreeSet<Tp>>,
        topics: &BTreeMap<String, u32>,
        subs: &BTreeMap<String, BTreeSet<String>>,
    ) {
        let mut seen = BTreeSet::new();
        for (m, set) in out {
            for tp in set {
                assert!(
                    subs[m].contains(&tp.0),
                    "{m} got {tp:?} without subscribing"
                );
                assert!(seen.insert(tp.clone()), "{tp:?} assigned twice");
            }
        }
        let total: u32 = topics
            .iter()
            .filter(|(t, _)| subs.values().any(|s| s.contains(*t)))
            .map(|(_, c)| c)
            .sum();
        assert_eq!(seen.len() as u32, total, "not every partition assigned");
    }

    #[test]
    fn every_assignor_covers_each_partition_once() {
        let subs = members(&[("a", &["t", "u"]), ("b", &["t"]), ("c", &["t", "u"])]);
        let topics: BTreeMap<String, u32> = [("t".into(), 7), ("u".into(), 3)].into();
        for name in ASSIGNORS {
            let out = assign(
                name,
                &AssignInput {
                    members: &subs,
                    topics: &topics,
                    previous: &BTreeMap::new(),
                },
            );
            check_complete(&out, &topics, &subs);
            // Range balances per topic only; sticky balances the whole assignment.
            if name == "sticky" {
                let loads: Vec<usize> = out.values().map(|s| s.len()).collect();
                let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
                assert!(max - min <= 1, "{name} unbalanced: {out:?}");
            }
        }
    }

    #[test]
    fn range_gives_contiguous_ranges() {
        let subs = members(&[("a", &["t"]), ("b", &["t"])]);
        let topics: BTreeMap<String, u32> = [("t".into(), 5)].into();
        let out = assign(
            "range",
            &AssignInput {
                members: &subs,
                topics: &topics,
                previous: &BTreeMap::new(),
            },
        );
        let a: Vec<u32> = out["a"].iter().map(|tp| tp.1).collect();
        let b: Vec<u32> = out["b"].iter().map(|tp| tp.1).collect();
        assert_eq!((a, b), (vec![0, 1, 2], vec![3, 4]));
    }

    #[test]
    fn sticky_moves_only_what_it_must_when_a_member_joins_and_leaves() {
        let topics: BTreeMap<String, u32> = [("t".into(), 6)].into();
        let three = members(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
        let first = assign(
            "sticky",
            &AssignInput {
                members: &three,
                topics: &topics,
                previous: &BTreeMap::new(),
            },
        );
        check_complete(&first, &topics, &three);
        assert!(first.values().all(|s| s.len() == 2));
        let four = members(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"]), ("d", &["t"])]);
        let second = assign(
            "sticky",
            &AssignInput {
                members: &four,
                topics: &topics,
                previous: &first,
            },
        );
        check_complete(&second, &topics, &four);
        // Only partitions that moved to d left their owners; nobody gained another's.
        for m in ["a", "b", "c"] {
            assert!(
                second[m].is_subset(&first[m]),
                "{m}: {second:?} vs {first:?}"
            );
        }
        let moved: usize = ["a", "b", "c"]
            .iter()
            .map(|m| first[*m].len() - second[*m].len())
            .sum();
        assert_eq!(moved, second["d"].len());
        assert!(second["d"].len() == 1 || second["d"].len() == 2);
        // b leaves: its partitions move, the others keep theirs.
        let without_b = members(&[("a", &["t"]), ("c", &["t"]), ("d", &["t"])]);
        let third = assign(
            "sticky",
            &AssignInput {
                members: &without_b,
                topics: &topics,
                previous: &second,
            },
        );
        check_complete(&third, &topics, &without_b);
        for m in ["a", "c", "d"] {
            assert!(second[m].is_subset(&third[m]), "{m} lost a partition");
        }
    }

    #[test]
    fn sticky_is_balanced_for_random_memberships() {
        // Deterministic pseudo-random sequence of joins and leaves (seed printed on failure).
        let seed = 0x5eed_u64;
        let mut x = seed;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let topics: BTreeMap<String, u32> = [("t".into(), 12), ("u".into(), 5)].into();
        let mut subs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut prev = BTreeMap::new();
        for step in 0..200 {
            let id = format!("m{}", next() % 9);
            if subs.contains_key(&id) && next() % 2 == 0 {
                subs.remove(&id);
            } else {
                subs.insert(id, ["t".to_string(), "u".to_string()].into());
            }
            let out = assign(
                "sticky",
                &AssignInput {
                    members: &subs,
                    topics: &topics,
                    previous: &prev,
                },
            );
            if !subs.is_empty() {
                check_complete(&out, &topics, &subs);
                let loads: Vec<usize> = out.values().map(|s| s.len()).collect();
                let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
                assert!(
                    max - min <= 1,
                    "seed {seed} step {step}: unbalanced {out:?}"
                );
            }
            prev = out;
        }
    }
}
