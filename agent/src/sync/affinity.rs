//! ClientIP-affinity entries left pointing at endpoints that left.
//!
//! Each pool of an affinity service port has one dynamic map from client address to
//! endpoint (`svcproxy_compiler::nft::layout`), filled by the packet path. When an
//! endpoint leaves, the rules stop writing it, but the entries already written stay
//! until they time out (3 hours by default) and keep DNATing those clients to an
//! address that is gone. (kube-proxy's set per endpoint disappears with its endpoint.)
//! So after a sync that removed endpoints from such a map's rules, while keeping the
//! map itself, the syncer dumps that one map and deletes the entries whose datum no
//! rule writes any more, in a second small transaction. A map that was created again
//! (a new definition, a replaced table) is empty already.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use svcproxy_compiler::nft::ir::{Chain, Family, KeyValue, Ruleset, Set, Stmt, Table};

use crate::nftables::{Changes, Op};

/// One map whose rules stopped writing some data: entries holding anything but
/// `valid` are stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleAffinity {
    pub family: Family,
    pub table: String,
    /// The map's definition (no elements).
    pub map: Set,
    /// The data the rules write now (`address . port`, or one component).
    pub valid: BTreeSet<Vec<KeyValue>>,
}

/// The data maps kept by `changes` (which turn `before` into `after`) whose writers
/// lost some data. Only chains the changes rewrite are looked at, so a sync that
/// touches no affinity rule costs nothing here.
pub fn stale_affinity(before: &Ruleset, after: &Ruleset, changes: &Changes) -> Vec<StaleAffinity> {
    let mut out = Vec::new();
    for table in &after.tables {
        let Some(old_table) = before
            .tables
            .iter()
            .find(|t| t.family == table.family && t.name == table.name)
        else {
            continue;
        };
        let mut touched: HashSet<&str> = HashSet::new();
        let mut replaced = false;
        for change in changes
            .iter()
            .filter(|c| c.family == table.family && c.table == table.name)
        {
            match &change.op {
                Op::AddTable(_) | Op::DeleteTable => replaced = true,
                Op::FlushChain(chain) | Op::DeleteChain(chain) => {
                    touched.insert(chain);
                }
                Op::AddRules { chain, .. } => {
                    touched.insert(chain);
                }
                _ => {}
            }
        }
        if replaced || touched.is_empty() {
            continue;
        }
        // What the rewritten chains wrote before, per map.
        let mut old_data: BTreeMap<&str, BTreeSet<&[KeyValue]>> = BTreeMap::new();
        for chain in old_table
            .chains
            .iter()
            .filter(|c| touched.contains(c.name.as_str()))
        {
            for (map, data) in written(chain) {
                old_data.entry(map).or_default().insert(data);
            }
        }
        if old_data.is_empty() {
            continue;
        }
        // What every chain writes into those maps now.
        let mut new_data: BTreeMap<&str, BTreeSet<&[KeyValue]>> = BTreeMap::new();
        for chain in &table.chains {
            for (map, data) in written(chain) {
                if old_data.contains_key(map) {
                    new_data.entry(map).or_default().insert(data);
                }
            }
        }
        for (map, old) in old_data {
            let (Some(now), Some(was)) = (find_set(table, map), find_set(old_table, map)) else {
                continue;
            };
            if !same_definition(now, was) {
                // Deleted and created again by the same transaction: empty.
                continue;
            }
            let valid = new_data.remove(map).unwrap_or_default();
            if old.is_subset(&valid) {
                continue;
            }
            out.push(StaleAffinity {
                family: table.family,
                table: table.name.clone(),
                map: Set {
                    elements: Vec::new(),
                    ..now.clone()
                },
                valid: valid.into_iter().map(<[KeyValue]>::to_vec).collect(),
            });
        }
    }
    out
}

/// `(map, datum)` of every `update @map { … : datum }` in the chain.
fn written(chain: &Chain) -> impl Iterator<Item = (&str, &[KeyValue])> {
    chain
        .rules
        .iter()
        .flat_map(|r| &r.stmts)
        .filter_map(|stmt| match stmt {
            Stmt::UpdateMap { map, data, .. } => Some((map.as_str(), data.as_slice())),
            _ => None,
        })
}

fn find_set<'a>(table: &'a Table, name: &str) -> Option<&'a Set> {
    table.sets.iter().find(|s| s.name == name)
}

fn same_definition(a: &Set, b: &Set) -> bool {
    a.key == b.key
        && a.data == b.data
        && a.flags == b.flags
        && a.timeout_secs == b.timeout_secs
        && a.comment == b.comment
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nftables::diff;
    use svcproxy_compiler::{NodeContext, Options, Source};

    /// `sticky` (ClientIP affinity) with these endpoints, and `plain` without.
    fn ruleset(endpoints: &[&str]) -> Ruleset {
        let mut text = String::from(
            "apiVersion: v1\nkind: Service\nmetadata: {name: sticky, namespace: ns}\n\
             spec: {clusterIP: 10.96.0.60, sessionAffinity: ClientIP, ports: [{name: http, port: 80}]}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {name: plain, namespace: ns}\n\
             spec: {clusterIP: 10.96.0.61, ports: [{name: http, port: 80}]}\n",
        );
        for (service, ips) in [("sticky", endpoints), ("plain", endpoints)] {
            text.push_str(&format!(
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: {service}-1, namespace: ns, labels: {{kubernetes.io/service-name: {service}}}}}\n\
                 addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n"
            ));
            for ip in ips.iter() {
                text.push_str(&format!("- {{addresses: [{ip}]}}\n"));
            }
        }
        let options = Options {
            node: NodeContext::default(),
            ..Options::default()
        };
        let plan = svcproxy_compiler::plan(
            &[Source {
                name: "t".into(),
                text,
            }],
            &options,
        )
        .unwrap();
        svcproxy_compiler::nft::ruleset(&plan)
    }

    fn stale(before: &Ruleset, after: &Ruleset) -> Vec<StaleAffinity> {
        stale_affinity(before, after, &diff(before, after))
    }

    #[test]
    fn a_removed_endpoint_leaves_the_others_valid() {
        let before = ruleset(&["10.244.1.10", "10.244.2.10", "10.244.3.10"]);
        let after = ruleset(&["10.244.1.10", "10.244.3.10"]);
        let found = stale(&before, &after);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].map.name.starts_with("affinity-"));
        let valid: Vec<String> = found[0]
            .valid
            .iter()
            .map(|d| {
                let parts: Vec<String> = d
                    .iter()
                    .map(svcproxy_compiler::nft::text::key_value_text)
                    .collect();
                parts.join(" . ")
            })
            .collect();
        assert_eq!(valid, ["10.244.1.10 . 8080", "10.244.3.10 . 8080"]);
    }

    #[test]
    fn nothing_is_stale_when_endpoints_are_only_added_or_nothing_changes() {
        let one = ruleset(&["10.244.1.10"]);
        let two = ruleset(&["10.244.1.10", "10.244.2.10"]);
        assert!(stale(&one, &two).is_empty());
        assert!(stale(&two, &two).is_empty());
    }

    #[test]
    fn a_map_that_goes_needs_no_cleanup() {
        // No endpoint left: the pool chain and its map go away with their entries.
        let before = ruleset(&["10.244.1.10"]);
        let after = ruleset(&[]);
        assert!(stale(&before, &after).is_empty());
    }
}
