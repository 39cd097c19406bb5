//! Changes applied to an in-memory ruleset: how a syncer that committed a partial
//! change keeps its picture of the kernel without cloning or re-reading it.

use std::collections::BTreeMap;

use svcproxy_compiler::nft::ir::{Element, Family, MAX_KEY, Ruleset, Set, Table, Values};

use super::{Change, Changes, Op};

impl Changes {
    /// Turns `state` (what the kernel held before these changes) into what it holds
    /// after them. Elements stay sorted, as the IR requires.
    pub fn apply_to(&self, state: &mut Ruleset) {
        apply_all(&self.ops, state);
    }
}

/// The element edits of one set, by key, in effect after a run of changes: the
/// element the set ends with (`None`: deleted).
type Edits = BTreeMap<Values<MAX_KEY>, Option<Element>>;

/// [`Changes::apply_to`] for any run of changes, several transactions' worth included.
/// A set's element changes are collected and merged into it in one pass, at the end
/// of the run or before the next operation that is not an element change: inserting
/// them one by one would move the set's tail each time, milliseconds apiece in an
/// endpoint map of 250,000 elements.
pub fn apply_all(changes: &[Change], state: &mut Ruleset) {
    let mut edits: BTreeMap<(Family, &str, &str), Edits> = BTreeMap::new();
    for change in changes {
        let table = change.table.as_str();
        match &change.op {
            Op::AddElements { set, elements } => {
                let set_edits = edits.entry((change.family, table, &set.name)).or_default();
                for element in elements {
                    set_edits.insert(element.key, Some(element.clone()));
                }
            }
            Op::DeleteElements { set, elements } => {
                let set_edits = edits.entry((change.family, table, &set.name)).or_default();
                for element in elements {
                    set_edits.insert(element.key, None);
                }
            }
            _ => {
                merge_edits(state, std::mem::take(&mut edits));
                apply(state, change);
            }
        }
    }
    merge_edits(state, edits);
}

fn merge_edits(state: &mut Ruleset, edits: BTreeMap<(Family, &str, &str), Edits>) {
    for ((family, table, set), set_edits) in edits {
        let set = state
            .tables
            .iter_mut()
            .filter(|t| t.family == family && t.name == table)
            .flat_map(|t| t.sets.iter_mut())
            .find(|s| s.name == set);
        if let Some(set) = set {
            merge(set, set_edits);
        }
    }
}

/// One pass over the set's sorted elements, taking each edit at its key's place.
fn merge(set: &mut Set, edits: Edits) {
    let old = std::mem::take(&mut set.elements);
    let mut out = Vec::with_capacity(old.len() + edits.len());
    let mut edits = edits.into_iter().peekable();
    for element in old {
        while let Some((key, _)) = edits.peek() {
            if *key >= element.key {
                break;
            }
            if let Some((_, Some(added))) = edits.next() {
                out.push(added);
            }
        }
        match edits.peek() {
            Some((key, _)) if *key == element.key => {
                if let Some((_, Some(replaced))) = edits.next() {
                    out.push(replaced);
                }
            }
            _ => out.push(element),
        }
    }
    out.extend(edits.filter_map(|(_, element)| element));
    set.elements = out;
}

fn apply(state: &mut Ruleset, change: &Change) {
    let position = state
        .tables
        .iter()
        .position(|t| t.family == change.family && t.name == change.table);
    match (&change.op, position) {
        (Op::AddTable(table), _) => state.tables.push(table.clone()),
        (Op::DeleteTable, Some(i)) => {
            state.tables.remove(i);
        }
        (op, Some(i)) => apply_in_table(&mut state.tables[i], op),
        (_, None) => {}
    }
}

fn apply_in_table(table: &mut Table, op: &Op) {
    let set = |table: &mut Table, name: &str| -> Option<usize> {
        table.sets.iter().position(|s| s.name == name)
    };
    let chain = |table: &mut Table, name: &str| -> Option<usize> {
        table.chains.iter().position(|c| c.name == name)
    };
    match op {
        Op::AddTable(_) | Op::DeleteTable => {}
        // Collected and merged by `apply_all`.
        Op::DeleteElements { .. } | Op::AddElements { .. } => {}
        Op::FlushSet(s) => {
            if let Some(i) = set(table, &s.name) {
                table.sets[i].elements.clear();
            }
        }
        Op::FlushChain(name) => {
            if let Some(i) = chain(table, name) {
                table.chains[i].rules.clear();
            }
        }
        Op::DeleteSet(s) => table.sets.retain(|x| x.name != s.name),
        Op::DeleteChain(name) => table.chains.retain(|c| &c.name != name),
        Op::AddChain(c) => table.chains.push(c.clone()),
        Op::AddSet(s) => table.sets.push(s.clone()),
        Op::AddRules { chain: name, rules } => {
            if let Some(i) = chain(table, name) {
                table.chains[i].rules.extend(rules.iter().cloned());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use svcproxy_compiler::nft::ir::{Chain, Family, KeyType, KeyValue, Rule, SetFlags, Stmt};

    use super::super::diff;
    use super::*;

    fn table(elements: &[u16], chains: &[(&str, usize)]) -> Ruleset {
        let set = Set {
            name: "ports".into(),
            key: vec![KeyType::InetService],
            data: None,
            flags: SetFlags::default(),
            timeout_secs: None,
            exprs: None,
            comment: None,
            elements: elements
                .iter()
                .map(|p| Element::new([KeyValue::Port(*p)].into()))
                .collect(),
        };
        let chains = chains
            .iter()
            .map(|(name, rules)| Chain {
                name: name.to_string(),
                base: None,
                comment: None,
                rules: vec![
                    Rule {
                        stmts: vec![Stmt::CtStateNew],
                        comment: None,
                    };
                    *rules
                ],
            })
            .collect();
        Ruleset {
            tables: vec![Table {
                family: Family::Ip,
                name: "t".into(),
                comment: None,
                sets: vec![set],
                chains,
            }],
        }
    }

    #[test]
    fn applying_a_diff_gives_the_desired_ruleset() {
        let before = table(&[1, 3, 5], &[("a", 1), ("b", 2)]);
        let after = table(&[1, 2, 5, 9], &[("a", 3), ("c", 1)]);
        let mut state = before.clone();
        diff(&before, &after).apply_to(&mut state);
        // Chains created by the change come after the old ones, as the kernel lists them.
        let mut want = after.clone();
        want.tables[0].chains.sort_by(|x, y| x.name.cmp(&y.name));
        state.tables[0].chains.sort_by(|x, y| x.name.cmp(&y.name));
        assert_eq!(state, want);
    }

    #[test]
    fn element_changes_of_several_diffs_merge_into_the_same_state() {
        // Three syncs' element changes applied at once, as a syncer settles them: an
        // element added then deleted, one deleted then added back, one added at the
        // end, one before the first.
        let steps = [
            table(&[10, 20, 30], &[("a", 1)]),
            table(&[10, 25, 30, 40], &[("a", 1)]),
            table(&[5, 10, 20, 25, 40], &[("a", 1)]),
            table(&[5, 20, 25, 40, 50], &[("a", 1)]),
        ];
        let changes: Vec<Change> = steps
            .windows(2)
            .flat_map(|w| diff(&w[0], &w[1]).ops)
            .collect();
        assert!(
            changes
                .iter()
                .all(|c| matches!(c.op, Op::AddElements { .. } | Op::DeleteElements { .. }))
        );
        let mut state = steps[0].clone();
        apply_all(&changes, &mut state);
        assert_eq!(state, steps[3]);
    }
}
