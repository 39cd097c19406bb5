//! Changes applied to an in-memory ruleset: how a syncer that committed a partial
//! change keeps its picture of the kernel without cloning or re-reading it.

use svcproxy_compiler::nft::ir::{Element, Ruleset, Set, Table};

use super::{Change, Changes, Op};

impl Changes {
    /// Turns `state` (what the kernel held before these changes) into what it holds
    /// after them. Elements stay sorted, as the IR requires.
    pub fn apply_to(&self, state: &mut Ruleset) {
        for change in &self.ops {
            apply(state, change);
        }
    }
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
        Op::DeleteElements { set: s, elements } => {
            if let Some(i) = set(table, &s.name) {
                for element in elements {
                    remove_element(&mut table.sets[i], element);
                }
            }
        }
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
        Op::AddElements { set: s, elements } => {
            if let Some(i) = set(table, &s.name) {
                for element in elements {
                    insert_element(&mut table.sets[i], element);
                }
            }
        }
        Op::AddRules { chain: name, rules } => {
            if let Some(i) = chain(table, name) {
                table.chains[i].rules.extend(rules.iter().cloned());
            }
        }
    }
}

/// Deletion names elements by key (the kernel ignores the data).
fn remove_element(set: &mut Set, element: &Element) {
    match set.elements.binary_search_by(|e| e.key.cmp(&element.key)) {
        Ok(i) => {
            set.elements.remove(i);
        }
        Err(_) => set.elements.retain(|e| e.key != element.key),
    }
}

fn insert_element(set: &mut Set, element: &Element) {
    match set.elements.binary_search(element) {
        Ok(_) => {}
        Err(i) => set.elements.insert(i, element.clone()),
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
                .map(|p| Element {
                    key: vec![KeyValue::Port(*p)],
                    verdict: None,
                    data: Vec::new(),
                    comment: None,
                })
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
}
