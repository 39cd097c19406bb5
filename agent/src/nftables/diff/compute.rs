//! Computing the changes: matching tables, chains, sets and elements by name or key,
//! and putting each resulting operation in its phase.

use std::collections::{HashMap, HashSet};

use svcproxy_compiler::nft::ir::{Chain, Element, Rule, Ruleset, Set, Stmt, Table, Verdict};

use super::{Change, Changes, DeferredChain, DiffOptions, Op, StaleChains};

/// The changes that make the kernel hold `desired` when it holds `current`, with
/// stale chains deleted in the same transaction ([`StaleChains::Delete`]).
///
/// `current` lists only svcproxy's own tables: any table in it that `desired` lacks
/// is deleted.
pub fn diff(current: &Ruleset, desired: &Ruleset) -> Changes {
    diff_with(current, desired, DiffOptions::default())
}

/// [`diff`] with explicit options.
pub fn diff_with(current: &Ruleset, desired: &Ruleset, options: DiffOptions) -> Changes {
    let mut out = Changes::default();
    for want in &desired.tables {
        let have = current
            .tables
            .iter()
            .find(|t| t.family == want.family && t.name == want.name);
        match have {
            None => out.ops.push(change(want, Op::AddTable(want.clone()))),
            // The common case of a periodic sync: nothing changed. One comparison in
            // order is much cheaper than matching every chain and set by name.
            Some(have) if tables_equal(have, want) => {}
            Some(have) => diff_table(have, want, options, &mut out),
        }
    }
    for have in &current.tables {
        let wanted = desired
            .tables
            .iter()
            .any(|t| t.family == have.family && t.name == have.name);
        if !wanted {
            out.ops.push(change(have, Op::DeleteTable));
        }
    }
    out
}

/// `a == b`, a large table compared on two threads, each taking half of every set's
/// elements and half of the chains: at 50k Services a table holds 750,000 map elements,
/// and a no-op sync is this comparison.
fn tables_equal(a: &Table, b: &Table) -> bool {
    /// Below this many elements and rules one thread is faster than starting a second.
    const PARALLEL_ITEMS: usize = 100_000;
    let items = |t: &Table| {
        t.sets.iter().map(|s| s.elements.len()).sum::<usize>()
            + t.chains.iter().map(|c| c.rules.len()).sum::<usize>()
    };
    if items(a) < PARALLEL_ITEMS || a.sets.len() != b.sets.len() || a.chains.len() != b.chains.len()
    {
        return a == b;
    }
    // Destructured so that a new field of `Table` cannot be forgotten here.
    let Table {
        family,
        name,
        comment,
        sets,
        chains,
    } = a;
    let head = *family == b.family && *name == b.name && *comment == b.comment;
    let definitions = sets.iter().zip(&b.sets).all(|(x, y)| {
        x.name == y.name && same_set_definition(x, y) && x.elements.len() == y.elements.len()
    });
    if !(head && definitions) {
        return false;
    }
    let half = |second: bool| {
        let part = |len: usize| if second { len / 2..len } else { 0..len / 2 };
        let chains_equal = chains[part(chains.len())] == b.chains[part(chains.len())];
        chains_equal
            && sets.iter().zip(&b.sets).all(|(x, y)| {
                let range = part(x.elements.len());
                x.elements[range.clone()] == y.elements[range]
            })
    };
    std::thread::scope(|scope| {
        let second = scope.spawn(|| half(true));
        let first = half(false);
        // A panic in the comparison is a bug; treat the tables as different so that
        // the slower path decides.
        second.join().unwrap_or(false) && first
    })
}

fn change(table: &Table, op: Op) -> Change {
    Change {
        family: table.family,
        table: table.name.clone(),
        op,
    }
}

/// The operations of one table, by phase (see [`Op`]); concatenated at the end.
#[derive(Default)]
struct Phases {
    delete_elements: Vec<Op>,
    flush_chains: Vec<Op>,
    delete_sets: Vec<Op>,
    delete_chains: Vec<Op>,
    add_chains: Vec<Op>,
    add_sets: Vec<Op>,
    add_elements: Vec<Op>,
    add_rules: Vec<Op>,
}

impl Phases {
    fn into_ops(self) -> impl Iterator<Item = Op> {
        self.delete_elements
            .into_iter()
            .chain(self.flush_chains)
            .chain(self.delete_sets)
            .chain(self.delete_chains)
            .chain(self.add_chains)
            .chain(self.add_sets)
            .chain(self.add_elements)
            .chain(self.add_rules)
    }
}

fn diff_table(have: &Table, want: &Table, options: DiffOptions, out: &mut Changes) {
    let have_chains: HashMap<&str, &Chain> =
        have.chains.iter().map(|c| (c.name.as_str(), c)).collect();
    if needs_replacement(have, want, &have_chains) {
        out.ops.push(change(want, Op::DeleteTable));
        out.ops.push(change(want, Op::AddTable(want.clone())));
        return;
    }
    let mut phases = Phases::default();

    // Sets first: which ones are recreated decides which chains must be rewritten.
    let have_sets: HashMap<&str, &Set> = have.sets.iter().map(|s| (s.name.as_str(), s)).collect();
    let want_sets: HashSet<&str> = want.sets.iter().map(|s| s.name.as_str()).collect();
    let mut recreated: HashSet<&str> = HashSet::new();
    for set in &want.sets {
        match have_sets.get(set.name.as_str()) {
            None => phases.add_sets.push(Op::AddSet(set.clone())),
            Some(old) if !same_set_definition(old, set) => {
                recreated.insert(set.name.as_str());
                phases.delete_sets.push(Op::DeleteSet(definition(old)));
                phases.add_sets.push(Op::AddSet(set.clone()));
            }
            Some(old) => diff_elements(old, set, &mut phases),
        }
    }
    for set in &have.sets {
        if !want_sets.contains(set.name.as_str()) {
            phases.delete_sets.push(Op::DeleteSet(definition(set)));
        }
    }

    let want_chains: HashSet<&str> = want.chains.iter().map(|c| c.name.as_str()).collect();
    for chain in &want.chains {
        match have_chains.get(chain.name.as_str()) {
            None => {
                phases
                    .add_chains
                    .push(Op::AddChain(definition_of_chain(chain)));
                add_rules(chain, &mut phases);
            }
            Some(old) => {
                // A recreated set must lose every rule that uses it before it is
                // deleted, and get them back after it is created again.
                let uses_recreated = old
                    .rules
                    .iter()
                    .flat_map(sets_used)
                    .any(|s| recreated.contains(s));
                if old.rules != chain.rules || uses_recreated {
                    if !old.rules.is_empty() {
                        phases.flush_chains.push(Op::FlushChain(chain.name.clone()));
                    }
                    add_rules(chain, &mut phases);
                }
            }
        }
    }

    let mapped = match options.stale_chains {
        StaleChains::Delete => HashSet::new(),
        StaleChains::DeferMapped => mapped_chains(have),
    };
    for chain in &have.chains {
        if want_chains.contains(chain.name.as_str()) {
            continue;
        }
        // Flushed before any chain is deleted, so that stale chains jumping to each
        // other can go in any order.
        if !chain.rules.is_empty() {
            phases.flush_chains.push(Op::FlushChain(chain.name.clone()));
        }
        if mapped.contains(chain.name.as_str()) {
            out.deferred.push(DeferredChain {
                family: have.family,
                table: have.name.clone(),
                chain: definition_of_chain(chain),
            });
        } else {
            phases
                .delete_chains
                .push(Op::DeleteChain(chain.name.clone()));
        }
    }

    out.ops.extend(phases.into_ops().map(|op| change(want, op)));
}

/// Differences the kernel cannot apply to a table in place: a different table comment
/// (ignored on update), or a chain that stays but whose hook, type, priority or comment
/// changes (hooks cannot be moved, chain comments are ignored on update, and deleting
/// the chain would first mean removing everything that jumps to it).
fn needs_replacement(have: &Table, want: &Table, have_chains: &HashMap<&str, &Chain>) -> bool {
    if have.comment != want.comment {
        return true;
    }
    want.chains.iter().any(|chain| {
        have_chains
            .get(chain.name.as_str())
            .is_some_and(|old| old.base != chain.base || old.comment != chain.comment)
    })
}

fn add_rules(chain: &Chain, phases: &mut Phases) {
    if !chain.rules.is_empty() {
        phases.add_rules.push(Op::AddRules {
            chain: chain.name.clone(),
            rules: chain.rules.clone(),
        });
    }
}

/// Element changes of a set that keeps its definition.
fn diff_elements(have: &Set, want: &Set, phases: &mut Phases) {
    if want.flags.dynamic {
        // The packet path owns these elements.
        return;
    }
    if want.flags.interval && want.key.len() == 1 {
        if !same_elements(&have.elements, &want.elements) {
            if !have.elements.is_empty() {
                phases.delete_elements.push(Op::FlushSet(definition(have)));
            }
            if !want.elements.is_empty() {
                phases.add_elements.push(Op::AddElements {
                    set: definition(want),
                    elements: want.elements.clone(),
                });
            }
        }
        return;
    }
    let (deleted, added) = element_changes(&have.elements, &want.elements);
    if !deleted.is_empty() {
        phases.delete_elements.push(Op::DeleteElements {
            set: definition(have),
            elements: deleted,
        });
    }
    if !added.is_empty() {
        phases.add_elements.push(Op::AddElements {
            set: definition(want),
            elements: added,
        });
    }
}

/// The elements of `have` that are not in `want` as they are, and those of `want` not
/// in `have`. A changed verdict, datum or comment shows in both: the kernel keeps an
/// existing element as it is on add, and refuses one with a different verdict or
/// datum (EEXIST on Linux 6.18, EBUSY on older kernels), so the old one is deleted
/// first.
fn element_changes(have: &[Element], want: &[Element]) -> (Vec<Element>, Vec<Element>) {
    // The IR keeps elements sorted (the compiler and the read-back both sort them):
    // then one merge pass does it, without hashing tens of thousands of keys.
    if !(have.is_sorted() && want.is_sorted()) {
        let mut have = have.to_vec();
        let mut want = want.to_vec();
        have.sort();
        want.sort();
        return element_changes(&have, &want);
    }
    let (mut deleted, mut added) = (Vec::new(), Vec::new());
    let (mut h, mut w) = (have.iter().peekable(), want.iter().peekable());
    loop {
        match (h.peek(), w.peek()) {
            (Some(a), Some(b)) if a == b => {
                h.next();
                w.next();
            }
            // Same key, different verdict, datum or comment.
            (Some(a), Some(b)) if a.key == b.key => {
                deleted.extend(h.next().cloned());
                added.extend(w.next().cloned());
            }
            (Some(a), Some(b)) if a.key < b.key => deleted.extend(h.next().cloned()),
            (Some(_), Some(_)) | (None, Some(_)) => added.extend(w.next().cloned()),
            (Some(_), None) => deleted.extend(h.next().cloned()),
            (None, None) => break,
        }
    }
    (deleted, added)
}

/// Equal as sets of elements, whatever their order.
fn same_elements(a: &[Element], b: &[Element]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let a: HashSet<&Element> = a.iter().collect();
    b.iter().all(|e| a.contains(e))
}

/// Two sets are equal but for their names and elements.
pub(crate) fn same_set_definition(a: &Set, b: &Set) -> bool {
    a.key == b.key
        && a.data == b.data
        && a.flags == b.flags
        && a.timeout_secs == b.timeout_secs
        && a.comment == b.comment
        && a.exprs == b.exprs
}

/// The set without its elements.
pub(crate) fn definition(set: &Set) -> Set {
    Set {
        name: set.name.clone(),
        key: set.key.clone(),
        data: set.data.clone(),
        flags: set.flags,
        timeout_secs: set.timeout_secs,
        comment: set.comment.clone(),
        exprs: set.exprs.clone(),
        elements: Vec::new(),
    }
}

/// The chain without its rules.
fn definition_of_chain(chain: &Chain) -> Chain {
    Chain {
        name: chain.name.clone(),
        base: chain.base,
        comment: chain.comment.clone(),
        rules: Vec::new(),
    }
}

/// The named sets and maps a rule looks up or updates.
pub(crate) fn sets_used(rule: &Rule) -> impl Iterator<Item = &str> {
    rule.stmts.iter().flat_map(|stmt| {
        let (first, second) = match stmt {
            Stmt::AddrInSet { set, .. } | Stmt::KeyInSet { set, .. } => (Some(set), None),
            Stmt::Vmap { map, .. }
            | Stmt::UpdateMap { map, .. }
            | Stmt::UpdateMapFromPacket { map, .. }
            | Stmt::DnatMap { map, .. } => (Some(map), None),
            Stmt::DnatFromMap { map, port_map, .. } => (Some(map), port_map.as_ref()),
            // Listed so that a new statement cannot be forgotten here.
            Stmt::CtStateNew
            | Stmt::Addr { .. }
            | Stmt::AddrInList { .. }
            | Stmt::L4Proto(_)
            | Stmt::L4ProtoIn(_)
            | Stmt::CtStatusDnat
            | Stmt::Dport { .. }
            | Stmt::FibAddrTypeLocal(_)
            | Stmt::MarkBitsClear(_)
            | Stmt::NumgenRandomEq { .. }
            | Stmt::MarkSetOr(_)
            | Stmt::MarkSetXor(_)
            | Stmt::MasqueradeFullyRandom
            | Stmt::Dnat { .. }
            | Stmt::Reject
            | Stmt::Verdict(_) => (None, None),
        };
        first.into_iter().chain(second).map(String::as_str)
    })
}

/// Chains some map element of the table jumps or goes to.
fn mapped_chains(table: &Table) -> HashSet<&str> {
    table
        .sets
        .iter()
        .flat_map(|s| &s.elements)
        .filter_map(|e| match e.verdict() {
            Some(Verdict::Jump(chain) | Verdict::Goto(chain)) => Some(chain.as_str()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use svcproxy_compiler::nft::ir::{Family, KeyType, KeyValue, SetFlags};

    use super::*;

    fn big_table() -> Table {
        Table {
            family: Family::Ip,
            name: "svcproxy".into(),
            comment: None,
            sets: vec![Set {
                name: "s".into(),
                key: vec![KeyType::Ipv4Addr],
                data: None,
                flags: SetFlags::default(),
                timeout_secs: None,
                comment: None,
                exprs: None,
                elements: (0..120_000u32)
                    .map(|i| {
                        Element::new([KeyValue::Int(i)].into())
                            .with_data([KeyValue::Port(80)].into())
                    })
                    .collect(),
            }],
            chains: (0..5000)
                .map(|i| Chain {
                    name: format!("c{i}"),
                    base: None,
                    comment: None,
                    rules: Vec::new(),
                })
                .collect(),
        }
    }

    /// Element-only affinity's record rule updates its maps from the packet: the diff
    /// must order it against them like any other user of a set.
    #[test]
    fn updates_from_the_packet_use_their_map() {
        use svcproxy_compiler::nft::ir::{AddrField, CmpOp, KeyExpr, L4Proto};
        let rule = Rule {
            stmts: vec![
                Stmt::L4ProtoIn(vec![L4Proto::Tcp, L4Proto::Udp]),
                Stmt::KeyInSet {
                    key: vec![KeyExpr::CtOriginalAddr(AddrField::Daddr), KeyExpr::ThDport],
                    op: CmpOp::Ne,
                    set: "live".into(),
                },
                Stmt::UpdateMapFromPacket {
                    map: "a".into(),
                    field: AddrField::Saddr,
                    data: vec![KeyExpr::Addr(AddrField::Daddr)],
                },
                Stmt::UpdateMapFromPacket {
                    map: "p".into(),
                    field: AddrField::Saddr,
                    data: vec![KeyExpr::ThDport],
                },
            ],
            comment: None,
        };
        assert_eq!(sets_used(&rule).collect::<Vec<_>>(), ["live", "a", "p"]);
    }

    /// The two-thread comparison of large tables says what `==` says, wherever the
    /// difference is.
    #[test]
    fn large_tables_compare_like_eq() {
        let a = big_table();
        assert!(tables_equal(&a, &a.clone()));
        let edits: [fn(&mut Table); 9] = [
            |t| t.chains[10].name.push('x'),
            |t| t.chains[4000].comment = Some("x".into()),
            |t| t.sets[0].timeout_secs = Some(1),
            |t| {
                t.sets[0].exprs = Some(svcproxy_compiler::nft::ir::SetExprs {
                    key: vec![],
                    data: vec![],
                })
            },
            |t| t.sets[0].elements[10].data = [KeyValue::Port(81)].into(),
            |t| t.sets[0].elements[100_000].key = [KeyValue::Int(7)].into(),
            |t| t.sets[0].elements.truncate(119_999),
            |t| t.comment = Some("x".into()),
            |t| t.chains.truncate(4999),
        ];
        for edit in edits {
            let mut b = a.clone();
            edit(&mut b);
            assert!(!tables_equal(&a, &b) && !tables_equal(&b, &a));
            assert_eq!(tables_equal(&a, &b), a == b);
        }
    }
}
