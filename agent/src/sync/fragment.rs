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

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use svcproxy_compiler::nft::ir::{Family, KeyValue, Ruleset, Table};
use svcproxy_compiler::nft::is_per_service_chain;
use svcproxy_compiler::nft::layout::{HAIRPIN_ENDPOINTS, is_endpoint_map};

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
///   [`NeedsWholeSync`];
/// - an address leaves `hairpin-endpoints` only when no endpoint map sends to it any
///   more ([`keep_shared_hairpin`]).
///
/// `pending` are element changes committed to the kernel but not yet merged into
/// `committed`; `users` are their endpoint counts, if already made (made here when
/// needed, for the caller to keep).
pub fn fit_to_committed(
    changes: Changes,
    before: &Ruleset,
    committed: &Ruleset,
    pending: &[Change],
    users: &mut Option<EndpointUsers>,
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
    let mut fitted = Changes {
        ops,
        deferred: changes.deferred,
    };
    // Last: it counts the element changes the shared sets' rewrites above made.
    keep_shared_hairpin(&mut fitted, committed, pending, users);
    Ok(fitted)
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

/// How many endpoint-map elements send to each address, in the state the kernel
/// holds: what tells a fragment whether an address it no longer uses may leave
/// `hairpin-endpoints`, which holds each endpoint address once, however many service
/// ports send to it (a fragment knows only its own Services, and another Service's
/// pods may share the address).
///
/// The syncer makes these counts with each whole sync and keeps them up to date
/// through fragment syncs. Most of them never change, so they are a sorted list of
/// the addresses (one entry per element: a count is a binary search) with the
/// changes since in a small map: sorting the 350k addresses of 50k Services takes
/// about 15 ms where filling a hash map took 60 (random writes over 11 MB).
#[derive(Debug, Default)]
pub struct EndpointUsers {
    /// The address of every endpoint-map element of the state counted, sorted.
    base: Vec<(Family, IpAddr)>,
    /// Endpoint-map element changes since, per address.
    since: HashMap<(Family, IpAddr), i64>,
}

impl EndpointUsers {
    /// The counts of `committed` with the `pending` element changes applied.
    pub fn of(committed: &Ruleset, pending: &[Change]) -> EndpointUsers {
        let mut base: Vec<(Family, IpAddr)> = committed
            .tables
            .iter()
            .flat_map(|t| {
                t.sets
                    .iter()
                    .filter(|s| is_endpoint_map(&s.name))
                    .flat_map(|s| &s.elements)
                    .filter_map(move |e| address(e.data.first()).map(|ip| (t.family, ip)))
            })
            .collect();
        base.sort_unstable();
        let mut users = EndpointUsers {
            base,
            since: HashMap::new(),
        };
        users.apply(pending);
        users
    }

    /// Counts the endpoint-map element changes of a commit.
    pub fn apply(&mut self, changes: &[Change]) {
        for change in changes {
            let (elements, delta) = match &change.op {
                Op::AddElements { set, elements } if is_endpoint_map(&set.name) => (elements, 1),
                Op::DeleteElements { set, elements } if is_endpoint_map(&set.name) => {
                    (elements, -1)
                }
                _ => continue,
            };
            for ip in elements.iter().filter_map(|e| address(e.data.first())) {
                *self.since.entry((change.family, ip)).or_default() += delta;
            }
        }
    }

    /// Endpoint-map elements sending to `ip`.
    fn users(&self, family: Family, ip: IpAddr) -> i64 {
        let key = (family, ip);
        let first = self.base.partition_point(|k| *k < key);
        let end = self.base.partition_point(|k| *k <= key);
        (end - first) as i64 + self.since.get(&key).copied().unwrap_or(0)
    }
}

fn address(value: Option<&KeyValue>) -> Option<IpAddr> {
    match value {
        Some(KeyValue::Net(net)) => Some(net.addr()),
        _ => None,
    }
}

/// Keeps a fragment's deletion of a hairpin address only when no endpoint map sends
/// to it once this change is made ([`EndpointUsers`]; made here if the syncer has
/// none yet).
fn keep_shared_hairpin(
    changes: &mut Changes,
    committed: &Ruleset,
    pending: &[Change],
    users: &mut Option<EndpointUsers>,
) {
    let deletes_hairpin = changes
        .ops
        .iter()
        .any(|c| matches!(&c.op, Op::DeleteElements { set, .. } if set.name == HAIRPIN_ENDPOINTS));
    if !deletes_hairpin {
        return;
    }
    let users = users.get_or_insert_with(|| EndpointUsers::of(committed, pending));
    // This change's own counts, apart: a few elements.
    let mut delta = EndpointUsers::default();
    delta.apply(&changes.ops);
    let after = |family: Family, ip: IpAddr| users.users(family, ip) + delta.users(family, ip);
    for change in &mut changes.ops {
        let family = change.family;
        if let Op::DeleteElements { set, elements } = &mut change.op
            && set.name == HAIRPIN_ENDPOINTS
        {
            elements.retain(|e| address(e.key.first()).is_none_or(|ip| after(family, ip) <= 0));
        }
    }
    changes.ops.retain(|c| {
        !matches!(&c.op, Op::DeleteElements { set, elements }
            if set.name == HAIRPIN_ENDPOINTS && elements.is_empty())
    });
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
    use svcproxy_compiler::nft::ir::{Element, KeyValue, Set, Stmt};

    /// A set as these tests need it: a name and elements (the types do not matter to
    /// the fitting).
    fn set(name: &str, elements: Vec<Element>) -> Set {
        Set {
            name: name.into(),
            key: vec![],
            data: None,
            flags: Default::default(),
            timeout_secs: None,
            comment: None,
            exprs: None,
            elements,
        }
    }

    /// A table with one shared chain using `endpoints-2`, as the layout makes it.
    fn committed() -> Ruleset {
        let element = |port: u16| Element::new([KeyValue::Port(port)].into());
        Ruleset {
            tables: vec![Table {
                family: Family::Ip,
                name: "svcproxy".into(),
                comment: None,
                sets: vec![set("endpoints-2", vec![element(1), element(2)])],
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
        let fitted = fit_to_committed(gone, &before, &committed, &[], &mut None).expect("fits");
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
        let fitted = fit_to_committed(joined, &before, &committed, &[], &mut None).expect("fits");
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
            fit_to_committed(created, &before, &committed, &[], &mut None),
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
        let fitted =
            fit_to_committed(changes, &committed, &committed, &[], &mut None).expect("fits");
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

    #[test]
    fn a_hairpin_address_another_service_still_sends_to_stays() {
        let net = |ip: &str| KeyValue::Net(ip.parse::<IpAddr>().expect("literal").into());
        // Two service ports send to 10.0.0.9 (bucket 0 of ports 80 and 81).
        let to = |port: u16, ip: &str| {
            Element::new([KeyValue::Port(port), KeyValue::Int(0)].into())
                .with_data([net(ip), KeyValue::Port(8080)].into())
        };
        let hairpin = |ip: &str| Element::new([net(ip), net(ip)].into());
        let map = set("endpoints-1", vec![to(80, "10.0.0.9"), to(81, "10.0.0.9")]);
        let pairs = set(HAIRPIN_ENDPOINTS, vec![hairpin("10.0.0.9")]);
        let committed = Ruleset {
            tables: vec![Table {
                family: Family::Ip,
                name: "svcproxy".into(),
                comment: None,
                sets: vec![map.clone(), pairs.clone()],
                chains: vec![],
            }],
        };
        // Port 80's Service moves to 10.0.0.7: its fragment diff deletes 10.0.0.9.
        let moved = || Changes {
            ops: vec![
                change(Op::DeleteElements {
                    set: definition(&map),
                    elements: vec![to(80, "10.0.0.9")],
                }),
                change(Op::AddElements {
                    set: definition(&map),
                    elements: vec![to(80, "10.0.0.7")],
                }),
                change(Op::DeleteElements {
                    set: definition(&pairs),
                    elements: vec![hairpin("10.0.0.9")],
                }),
                change(Op::AddElements {
                    set: definition(&pairs),
                    elements: vec![hairpin("10.0.0.7")],
                }),
            ],
            deferred: vec![],
        };
        let fitted =
            fit_to_committed(moved(), &committed, &committed, &[], &mut None).expect("fits");
        let expected: Vec<Change> = moved()
            .ops
            .into_iter()
            .filter(|c| !matches!(&c.op, Op::DeleteElements { set, .. } if set.name == HAIRPIN_ENDPOINTS))
            .collect();
        assert_eq!(fitted.ops, expected, "port 81 still sends to 10.0.0.9");

        // Once port 81 left 10.0.0.9 too (committed, not yet merged), it goes.
        let pending = [change(Op::DeleteElements {
            set: definition(&map),
            elements: vec![to(81, "10.0.0.9")],
        })];
        let fitted =
            fit_to_committed(moved(), &committed, &committed, &pending, &mut None).expect("fits");
        assert_eq!(fitted.ops, moved().ops);
    }
}
