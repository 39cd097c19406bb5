//! Fitting a fragment diff to the whole table.
//!
//! A fragment ([`svcproxy_compiler::nft::fragment`]) holds some Services' elements,
//! their own chains, every set their elements sit in and the `pick-…` rules of their
//! endpoint counts. The endpoint maps (`endpoints-3`) and the `pick-…` chains are
//! shared: a map holds the elements of every service port with that many endpoints,
//! and one port moving from 3 to 4 endpoints makes its old fragment have `endpoints-3`
//! and the rule that reads it, its new one `endpoints-4` and its rule. Diffed alone,
//! the two fragments say "create `endpoints-4`, delete `endpoints-3`, rewrite
//! `pick-endpoint`"; against the kernel that means "add these elements, delete those",
//! plus the map and its rule only if no port had 4 endpoints yet. This module rewrites
//! the diff so.

use std::collections::BTreeSet;

use svcproxy_compiler::nft::ir::{Family, Ruleset, Table};
use svcproxy_compiler::nft::is_per_service_chain;

use crate::nftables::diff::{definition, same_set_definition, sets_used};
use crate::nftables::{Change, Changes, Op};

/// The fragment diff needs something only a whole sync can do: a new set that no rule
/// of the fragment refers to, or a set whose definition changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeedsWholeSync {
    pub set: String,
}

/// Rewrites `changes` (the diff of the fragments `before` and `after`) against
/// `committed`, the whole state the kernel holds:
/// - a shared chain is never flushed, created or deleted by a fragment; of the rules
///   the fragment adds to it, those it lacks are appended (a new endpoint count's
///   `pick-…` rule; rule order there does not matter, each key is in one map);
/// - creating a set the kernel already has becomes adding the fragment's elements;
/// - deleting a set that a shared chain still refers to becomes deleting the
///   fragment's elements (the set stays, maybe empty, until a whole sync drops it);
/// - creating a set that no rule of the fitted diff refers to is beyond a fragment:
///   [`NeedsWholeSync`].
pub fn fit_to_committed(
    changes: Changes,
    before: &Ruleset,
    committed: &Ruleset,
) -> Result<Changes, NeedsWholeSync> {
    let changes = fit_shared_chains(changes, committed);
    let added_rule_sets: BTreeSet<(Family, &str, &str)> = changes
        .ops
        .iter()
        .filter_map(|c| match &c.op {
            Op::AddRules { rules, .. } => Some((c, rules)),
            _ => None,
        })
        .flat_map(|(c, rules)| {
            rules
                .iter()
                .flat_map(sets_used)
                .map(move |name| (c.family, c.table.as_str(), name))
        })
        .collect();
    let mut ops = Vec::with_capacity(changes.ops.len());
    for change in &changes.ops {
        let table = find_table(committed, change.family, &change.table);
        let op = match (&change.op, table) {
            (Op::AddSet(set), Some(table)) => {
                match table.sets.iter().find(|s| s.name == set.name) {
                    Some(held) if same_set_definition(held, set) => {
                        if set.elements.is_empty() {
                            continue;
                        }
                        Op::AddElements {
                            set: definition(set),
                            elements: set.elements.clone(),
                        }
                    }
                    Some(_) => {
                        return Err(NeedsWholeSync {
                            set: set.name.clone(),
                        });
                    }
                    None if added_rule_sets.contains(&(
                        change.family,
                        change.table.as_str(),
                        set.name.as_str(),
                    )) =>
                    {
                        change.op.clone()
                    }
                    None => {
                        return Err(NeedsWholeSync {
                            set: set.name.clone(),
                        });
                    }
                }
            }
            (Op::DeleteSet(set), Some(table)) if shared_chain_refers_to(table, &set.name) => {
                let elements = find_table(before, change.family, &change.table)
                    .and_then(|t| t.sets.iter().find(|s| s.name == set.name))
                    .map(|s| s.elements.clone())
                    .unwrap_or_default();
                if elements.is_empty() {
                    continue;
                }
                Op::DeleteElements {
                    set: definition(set),
                    elements,
                }
            }
            (op, _) => op.clone(),
        };
        ops.push(Change {
            family: change.family,
            table: change.table.clone(),
            op,
        });
    }
    Ok(Changes {
        ops,
        deferred: changes.deferred,
    })
}

/// Drops a fragment's flushes, creations and deletions of shared chains, and the
/// rules it adds to them that they already have.
fn fit_shared_chains(changes: Changes, committed: &Ruleset) -> Changes {
    let ops = changes
        .ops
        .into_iter()
        .filter_map(|change| {
            let held = |name: &str| {
                find_table(committed, change.family, &change.table)
                    .and_then(|t| t.chains.iter().find(|c| c.name == name))
            };
            match change.op {
                Op::FlushChain(ref name) | Op::DeleteChain(ref name)
                    if !is_per_service_chain(name) =>
                {
                    None
                }
                Op::AddChain(ref chain)
                    if !is_per_service_chain(&chain.name) && held(&chain.name).is_some() =>
                {
                    None
                }
                Op::AddRules {
                    ref chain,
                    ref rules,
                } if !is_per_service_chain(chain) => {
                    let held = held(chain);
                    let missing: Vec<_> = rules
                        .iter()
                        .filter(|r| !held.is_some_and(|c| c.rules.contains(r)))
                        .cloned()
                        .collect();
                    (!missing.is_empty()).then(|| Change {
                        op: Op::AddRules {
                            chain: chain.clone(),
                            rules: missing,
                        },
                        ..change
                    })
                }
                _ => Some(change),
            }
        })
        .collect();
    Changes {
        ops,
        deferred: changes.deferred,
    }
}

fn find_table<'a>(ruleset: &'a Ruleset, family: Family, name: &str) -> Option<&'a Table> {
    ruleset
        .tables
        .iter()
        .find(|t| t.family == family && t.name == name)
}

fn shared_chain_refers_to(table: &Table, set: &str) -> bool {
    table
        .chains
        .iter()
        .filter(|c| !is_per_service_chain(&c.name))
        .flat_map(|c| &c.rules)
        .any(|r| sets_used(r).any(|name| name == set))
}

#[cfg(test)]
mod tests {
    use super::*;
    use svcproxy_compiler::nft::ir::{Element, KeyValue, Set, Stmt, Values};

    /// A table with one shared chain using `endpoints-2`, as the layout makes it.
    fn committed() -> Ruleset {
        let text_free_set = |name: &str, elements: Vec<Element>| Set {
            name: name.into(),
            key: vec![],
            data: None,
            flags: Default::default(),
            timeout_secs: None,
            comment: None,
            exprs: None,
            elements,
        };
        let element = |port: u16| Element {
            key: [KeyValue::Port(port)].into(),
            verdict: None,
            data: Values::new(),
            comment: None,
        };
        Ruleset {
            tables: vec![Table {
                family: Family::Ip,
                name: "svcproxy".into(),
                comment: None,
                sets: vec![text_free_set("endpoints-2", vec![element(1), element(2)])],
                chains: vec![svcproxy_compiler::nft::ir::Chain {
                    name: "pick-endpoint".into(),
                    base: None,
                    comment: None,
                    rules: vec![svcproxy_compiler::nft::ir::Rule {
                        stmts: vec![Stmt::DnatMap {
                            key: vec![],
                            map: "endpoints-2".into(),
                        }],
                        comment: None,
                    }],
                }],
            }],
        }
    }

    fn change(op: Op) -> Change {
        Change {
            family: Family::Ip,
            table: "svcproxy".into(),
            op,
        }
    }

    #[test]
    fn shared_sets_become_element_changes_and_new_shared_sets_need_a_whole_sync() {
        let committed = committed();
        let held = committed.tables[0].sets[0].clone();
        let mine = Set {
            elements: vec![held.elements[0].clone()],
            ..held.clone()
        };
        let before = Ruleset {
            tables: vec![Table {
                sets: vec![mine.clone()],
                chains: vec![],
                ..committed.tables[0].clone()
            }],
        };
        // Leaving a shared map: its elements go, the map stays.
        let gone = Changes {
            ops: vec![change(Op::DeleteSet(definition(&mine)))],
            deferred: vec![],
        };
        let fitted = fit_to_committed(gone, &before, &committed).expect("fits");
        assert_eq!(
            fitted.ops,
            vec![change(Op::DeleteElements {
                set: definition(&mine),
                elements: mine.elements.clone(),
            })]
        );
        // Joining it: the map exists, so only elements are added.
        let joined = Changes {
            ops: vec![change(Op::AddSet(mine.clone()))],
            deferred: vec![],
        };
        let fitted = fit_to_committed(joined, &before, &committed).expect("fits");
        assert_eq!(
            fitted.ops,
            vec![change(Op::AddElements {
                set: definition(&mine),
                elements: mine.elements.clone(),
            })]
        );
        // A map no fragment rule uses and the kernel lacks needs its shared rule.
        let new = Set {
            name: "endpoints-7".into(),
            ..mine
        };
        let created = Changes {
            ops: vec![change(Op::AddSet(new))],
            deferred: vec![],
        };
        assert_eq!(
            fit_to_committed(created, &before, &committed),
            Err(NeedsWholeSync {
                set: "endpoints-7".into()
            })
        );
    }

    #[test]
    fn shared_chains_only_get_the_rules_they_lack_appended() {
        let committed = committed();
        let held = committed.tables[0].sets[0].clone();
        let new = Set {
            name: "endpoints-7".into(),
            ..held.clone()
        };
        let dnat = |map: &str| svcproxy_compiler::nft::ir::Rule {
            stmts: vec![Stmt::DnatMap {
                key: vec![],
                map: map.into(),
            }],
            comment: None,
        };
        let changes = Changes {
            ops: vec![
                change(Op::FlushChain("pick-endpoint".into())),
                change(Op::AddSet(new.clone())),
                change(Op::AddRules {
                    chain: "pick-endpoint".into(),
                    rules: vec![dnat("endpoints-2"), dnat("endpoints-7")],
                }),
            ],
            deferred: vec![],
        };
        let fitted = fit_to_committed(changes, &committed, &committed).expect("fits");
        assert_eq!(
            fitted.ops,
            vec![
                change(Op::AddSet(new)),
                change(Op::AddRules {
                    chain: "pick-endpoint".into(),
                    rules: vec![dnat("endpoints-7")],
                }),
            ]
        );
    }
}
