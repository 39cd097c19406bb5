//! ClientIP-affinity entries left pointing at endpoints that left.
//!
//! Each pool of an affinity service port has one dynamic map from client address to
//! endpoint (`svcproxy_compiler::nft::layout`), filled by the packet path: a record
//! chain, reached through a verdict-map element keyed by one of the port's
//! destinations, writes the endpoint a new connection was DNATed to. When an
//! endpoint leaves, it leaves the endpoint maps, but the entries already written stay
//! until they time out (3 hours by default) and keep DNATing those clients to an
//! address that is gone. (kube-proxy's set per endpoint disappears with its endpoint.)
//! So after a sync that deleted elements of the endpoint maps, while keeping the
//! affinity maps, the syncer dumps each affinity map the changed destinations write
//! and deletes the entries that are no endpoint of any destination writing it, in a
//! second small transaction. A map that was created again (a new definition, a
//! replaced table) is empty already.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use svcproxy_compiler::nft::ir::{
    AddrField, Family, KeyExpr, KeyValue, MapData, Ruleset, Set, Stmt, Table, Verdict,
};
use svcproxy_compiler::nft::layout::is_endpoint_map;

use crate::nftables::{Changes, Op};

/// One map whose writers lost some endpoints: entries holding anything but `valid`
/// are stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleAffinity {
    pub family: Family,
    pub table: String,
    /// The map's definition (no elements).
    pub map: Set,
    /// The data the map may hold now (`address . port`, or one component).
    pub valid: BTreeSet<Vec<KeyValue>>,
}

/// The affinity maps kept by `changes` (which turn `before` into `after`) that lost
/// some valid data. Only destinations whose endpoint-map elements the changes delete
/// are looked at, so a sync that removes no endpoint costs nothing here.
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
        let mut replaced = false;
        // The destinations (an endpoint map's key without its bucket) that lost an
        // element.
        let mut touched: BTreeSet<&[KeyValue]> = BTreeSet::new();
        for change in changes
            .iter()
            .filter(|c| c.family == table.family && c.table == table.name)
        {
            match &change.op {
                Op::AddTable(_) | Op::DeleteTable => replaced = true,
                Op::DeleteElements { set, elements } if is_endpoint_map(&set.name) => {
                    touched.extend(elements.iter().filter_map(destination));
                }
                Op::DeleteSet(set) if is_endpoint_map(&set.name) => {
                    if let Some(old) = find_set(old_table, &set.name) {
                        touched.extend(old.elements.iter().filter_map(destination));
                    }
                }
                _ => {}
            }
        }
        if replaced || touched.is_empty() {
            continue;
        }
        let old_writers = Writers::of(old_table);
        let maps: BTreeSet<&str> = touched
            .iter()
            .flat_map(|key| old_writers.maps_of(key))
            .collect();
        if maps.is_empty() {
            continue;
        }
        let new_writers = Writers::of(table);
        for map in maps {
            let (Some(now), Some(was)) = (find_set(table, map), find_set(old_table, map)) else {
                continue;
            };
            if !same_definition(now, was) {
                // Deleted and created again by the same transaction: empty.
                continue;
            }
            let valid = new_writers.valid(table, map);
            if old_writers.valid(old_table, map).is_subset(&valid) {
                continue;
            }
            out.push(StaleAffinity {
                family: table.family,
                table: table.name.clone(),
                map: Set {
                    elements: Vec::new(),
                    ..now.clone()
                },
                valid,
            });
        }
    }
    out
}

/// An endpoint-map element's destination: its key without the bucket.
fn destination(element: &svcproxy_compiler::nft::ir::Element) -> Option<&[KeyValue]> {
    element.key.split_last().map(|(_, key)| key)
}

/// Which affinity maps each destination writes: a verdict-map element keyed by the
/// destination goes to a chain whose `update … : ip daddr . th dport` statements
/// write the endpoint the connection was sent to.
struct Writers<'a> {
    by_key: BTreeMap<&'a [KeyValue], Vec<(&'a str, &'a [KeyExpr])>>,
}

impl<'a> Writers<'a> {
    fn of(table: &'a Table) -> Writers<'a> {
        let chains: HashMap<&str, Vec<(&str, &[KeyExpr])>> = table
            .chains
            .iter()
            .filter_map(|chain| {
                let writes: Vec<(&str, &[KeyExpr])> = chain
                    .rules
                    .iter()
                    .flat_map(|r| &r.stmts)
                    .filter_map(|stmt| match stmt {
                        Stmt::UpdateMapFromPacket {
                            map,
                            field: AddrField::Saddr,
                            data,
                        } => Some((map.as_str(), data.as_slice())),
                        _ => None,
                    })
                    .collect();
                (!writes.is_empty()).then_some((chain.name.as_str(), writes))
            })
            .collect();
        let mut by_key: BTreeMap<&[KeyValue], Vec<(&str, &[KeyExpr])>> = BTreeMap::new();
        if chains.is_empty() {
            return Writers { by_key };
        }
        for set in table
            .sets
            .iter()
            .filter(|s| s.data == Some(MapData::Verdict))
        {
            for element in &set.elements {
                let Some(Verdict::Goto(chain) | Verdict::Jump(chain)) = element.verdict() else {
                    continue;
                };
                if let Some(writes) = chains.get(chain.as_str()) {
                    by_key
                        .entry(element.key.as_slice())
                        .or_default()
                        .extend(writes.iter().copied());
                }
            }
        }
        Writers { by_key }
    }

    fn maps_of(&self, key: &[KeyValue]) -> impl Iterator<Item = &'a str> + '_ {
        self.by_key
            .get(key)
            .into_iter()
            .flatten()
            .map(|(map, _)| *map)
    }

    /// What `map` may hold: the endpoints of every destination that writes it, as
    /// its `update` statements write them (`address . port`, the address, the port).
    fn valid(&self, table: &Table, map: &str) -> BTreeSet<Vec<KeyValue>> {
        let endpoint_maps: Vec<&Set> = table
            .sets
            .iter()
            .filter(|s| is_endpoint_map(&s.name))
            .collect();
        let mut valid = BTreeSet::new();
        for (key, writes) in &self.by_key {
            for (_, data) in writes.iter().filter(|(m, _)| *m == map) {
                for set in &endpoint_maps {
                    for endpoint in elements_under(set, key) {
                        let datum: Option<Vec<KeyValue>> = data
                            .iter()
                            .map(|expr| match expr {
                                KeyExpr::Addr(AddrField::Daddr) => endpoint.data.first().cloned(),
                                KeyExpr::ThDport => endpoint.data.get(1).cloned(),
                                _ => None,
                            })
                            .collect();
                        valid.extend(datum);
                    }
                }
            }
        }
        valid
    }
}

/// The elements of a sorted set whose key starts with `prefix`.
fn elements_under<'s>(
    set: &'s Set,
    prefix: &[KeyValue],
) -> impl Iterator<Item = &'s svcproxy_compiler::nft::ir::Element> {
    let start = set
        .elements
        .partition_point(|e| e.key.get(..prefix.len()).is_some_and(|k| k < prefix));
    set.elements[start..]
        .iter()
        .take_while(move |e| e.key.get(..prefix.len()) == Some(prefix))
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
