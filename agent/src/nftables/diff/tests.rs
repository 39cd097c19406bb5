//! The diff without a kernel: which operations, in which order, and their text.
//! `agent/tests/nftables_diff.rs` checks that the kernel accepts them.

use ipnet::IpNet;
use svcproxy_compiler::nft::ir::{
    AddrField, BaseChain, Chain, ChainType, Element, Family, Hook, KeyExpr, KeyType, KeyValue,
    L4Proto, MapData, Rule, Ruleset, Set, SetExprs, SetFlags, Stmt, Table, Verdict,
};

use super::*;

/// `10.0.0.0/8`, or a bare address for a host.
fn net(s: &str) -> KeyValue {
    let net = s
        .parse::<IpNet>()
        .unwrap_or_else(|_| IpNet::from(s.parse::<std::net::IpAddr>().unwrap()));
    KeyValue::Net(net)
}

fn rule(stmts: Vec<Stmt>) -> Rule {
    Rule {
        stmts,
        comment: None,
    }
}

fn goto(chain: &str) -> Stmt {
    Stmt::Verdict(Verdict::Goto(chain.into()))
}

fn chain(name: &str, rules: Vec<Rule>) -> Chain {
    Chain {
        name: name.into(),
        base: None,
        comment: None,
        rules,
    }
}

fn dispatch(ip: &str, port: u16, target: &str) -> Element {
    let key = [net(ip), KeyValue::Proto(L4Proto::Tcp), KeyValue::Port(port)];
    Element::new(key.into()).with_verdict(Verdict::Goto(target.into()))
}

fn map(name: &str, elements: Vec<Element>) -> Set {
    Set {
        name: name.into(),
        key: vec![KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService],
        data: Some(MapData::Verdict),
        flags: SetFlags::default(),
        timeout_secs: None,
        exprs: None,
        comment: None,
        elements,
    }
}

fn addr_set(name: &str, flags: SetFlags, nets: &[&str]) -> Set {
    Set {
        name: name.into(),
        key: vec![KeyType::Ipv4Addr],
        data: None,
        flags,
        timeout_secs: flags.timeout.then_some(10800),
        exprs: None,
        comment: None,
        elements: nets.iter().map(|n| Element::new([net(n)].into())).collect(),
    }
}

const AFFINITY: SetFlags = SetFlags {
    interval: false,
    timeout: true,
    dynamic: true,
};
const INTERVAL: SetFlags = SetFlags {
    interval: true,
    timeout: false,
    dynamic: false,
};

/// A small table in svcproxy's shape: a dispatch map, a service chain with ClientIP
/// affinity (its map) choosing between two chains, an interval set.
fn table() -> Table {
    Table {
        family: Family::Ip,
        name: "svcproxy".into(),
        comment: Some("rules for svcproxy".into()),
        sets: vec![
            addr_set("nodeport-ips", INTERVAL, &["192.168.100.1/32"]),
            Set {
                key: vec![KeyType::Ipv4Addr],
                data: Some(MapData::Value(vec![
                    KeyType::Ipv4Addr,
                    KeyType::InetService,
                ])),
                ..addr_set("affinity-a/http", AFFINITY, &[])
            },
            map(
                "service-ips",
                vec![dispatch("10.96.0.10", 80, "service-a/http")],
            ),
        ],
        chains: vec![
            Chain {
                base: Some(BaseChain {
                    chain_type: ChainType::Nat,
                    hook: Hook::Prerouting,
                    priority: -100,
                }),
                ..chain(
                    "nat-prerouting",
                    vec![rule(vec![Stmt::Vmap {
                        key: vec![
                            KeyExpr::Addr(AddrField::Daddr),
                            KeyExpr::L4Proto,
                            KeyExpr::ThDport,
                        ],
                        map: "service-ips".into(),
                    }])],
                )
            },
            chain(
                "service-a/http",
                vec![
                    rule(vec![Stmt::DnatFromMap {
                        proto: L4Proto::Tcp,
                        field: AddrField::Saddr,
                        map: "affinity-a/http".into(),
                        port_map: None,
                    }]),
                    rule(vec![
                        Stmt::NumgenRandomEq {
                            modulus: 2,
                            value: 0,
                        },
                        record("10.244.1.10"),
                        goto("endpoint-a/1"),
                    ]),
                    rule(vec![record("10.244.2.10"), goto("endpoint-a/2")]),
                ],
            ),
            chain(
                "endpoint-a/1",
                vec![
                    rule(vec![Stmt::MarkSetOr(0x4000)]),
                    rule(vec![Stmt::Verdict(Verdict::Accept)]),
                ],
            ),
            chain(
                "endpoint-a/2",
                vec![rule(vec![Stmt::Verdict(Verdict::Accept)])],
            ),
        ],
    }
}

/// `update @affinity-a/http { ip saddr : ENDPOINT . 8080 }`
fn record(endpoint: &str) -> Stmt {
    Stmt::UpdateMap {
        map: "affinity-a/http".into(),
        field: AddrField::Saddr,
        data: vec![net(endpoint), KeyValue::Port(8080)],
    }
}

fn ruleset(table: Table) -> Ruleset {
    Ruleset {
        tables: vec![table],
    }
}

fn set_mut<'a>(table: &'a mut Table, name: &str) -> &'a mut Set {
    table.sets.iter_mut().find(|s| s.name == name).unwrap()
}

fn chain_mut<'a>(table: &'a mut Table, name: &str) -> &'a mut Chain {
    table.chains.iter_mut().find(|c| c.name == name).unwrap()
}

/// The operations as short strings, for readable assertions.
fn ops(changes: &Changes) -> Vec<String> {
    changes
        .iter()
        .map(|c| match &c.op {
            Op::AddTable(t) => format!("add table {}", t.name),
            Op::DeleteTable => format!("delete table {}", c.table),
            Op::DeleteElements { set, elements } => {
                format!("delete {} elements from {}", elements.len(), set.name)
            }
            Op::FlushSet(set) => format!("flush set {}", set.name),
            Op::FlushChain(chain) => format!("flush chain {chain}"),
            Op::DeleteSet(set) => format!("delete set {}", set.name),
            Op::DeleteChain(chain) => format!("delete chain {chain}"),
            Op::AddChain(chain) => format!("add chain {}", chain.name),
            Op::AddSet(set) => format!("add set {}", set.name),
            Op::AddElements { set, elements } => {
                format!("add {} elements to {}", elements.len(), set.name)
            }
            Op::AddRules { chain, rules } => format!("add {} rules to {chain}", rules.len()),
        })
        .collect()
}

#[test]
fn equal_rulesets_give_no_changes_whatever_the_order_of_chains_and_sets() {
    let a = ruleset(table());
    let mut b = a.clone();
    b.tables[0].chains.reverse();
    b.tables[0].sets.reverse();
    let changes = diff(&a, &b);
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(changes.len(), 0);
    assert_eq!(changes.to_batch().unwrap().len(), 0);
    assert_eq!(changes.to_nft(), "");
    assert_eq!(changes.summary().to_string(), "no changes");
}

#[test]
fn dynamic_set_elements_are_never_compared() {
    let mut current = table();
    set_mut(&mut current, "affinity-a/http").elements =
        addr_set("x", AFFINITY, &["10.244.9.9/32"]).elements;
    assert!(diff(&ruleset(current.clone()), &ruleset(table())).is_empty());
    assert!(diff(&ruleset(table()), &ruleset(current)).is_empty());
}

#[test]
fn a_removed_endpoint_is_unmapped_flushed_then_deleted() {
    let a = table();
    let mut b = table();
    b.chains.retain(|c| c.name != "endpoint-a/2");
    chain_mut(&mut b, "service-a/http").rules.truncate(1);
    let changes = diff(&ruleset(a), &ruleset(b));
    assert_eq!(
        ops(&changes),
        [
            "flush chain service-a/http",
            "flush chain endpoint-a/2",
            "delete chain endpoint-a/2",
            "add 1 rules to service-a/http",
        ]
    );
    assert_eq!(
        changes.summary().to_string(),
        "2 chains flushed, 1 chain deleted, 1 rule added"
    );
}

#[test]
fn a_removed_service_goes_in_reference_order() {
    let a = table();
    let mut b = table();
    b.chains.truncate(1);
    b.sets.retain(|s| s.name != "affinity-a/http");
    set_mut(&mut b, "service-ips").elements.clear();
    let changes = diff(&ruleset(a), &ruleset(b));
    assert_eq!(
        ops(&changes),
        [
            "delete 1 elements from service-ips",
            "flush chain service-a/http",
            "flush chain endpoint-a/1",
            "flush chain endpoint-a/2",
            "delete set affinity-a/http",
            "delete chain service-a/http",
            "delete chain endpoint-a/1",
            "delete chain endpoint-a/2",
        ]
    );
    assert!(changes.deferred().is_empty());
}

#[test]
fn a_new_service_creates_chains_and_sets_before_what_refers_to_them() {
    let mut a = table();
    a.chains.truncate(1);
    a.sets.retain(|s| s.name != "affinity-a/http");
    set_mut(&mut a, "service-ips").elements.clear();
    let changes = diff(&ruleset(a), &ruleset(table()));
    assert_eq!(
        ops(&changes),
        [
            "add chain service-a/http",
            "add chain endpoint-a/1",
            "add chain endpoint-a/2",
            "add set affinity-a/http",
            "add 1 elements to service-ips",
            "add 3 rules to service-a/http",
            "add 2 rules to endpoint-a/1",
            "add 1 rules to endpoint-a/2",
        ]
    );
}

#[test]
fn a_changed_verdict_is_deleted_and_added_again() {
    let a = table();
    let mut b = table();
    set_mut(&mut b, "service-ips").elements[0] = dispatch("10.96.0.10", 80, "endpoint-a/2");
    let changes = diff(&ruleset(a), &ruleset(b));
    assert_eq!(
        ops(&changes),
        [
            "delete 1 elements from service-ips",
            "add 1 elements to service-ips"
        ]
    );
    assert_eq!(
        changes.to_nft(),
        "delete element ip svcproxy service-ips { 10.96.0.10 . tcp . 80 }\n\
         add element ip svcproxy service-ips { 10.96.0.10 . tcp . 80 : goto endpoint-a/2 }\n"
    );
}

/// `endpoints-N`: `typeof meta l4proto . th dport . numgen random mod N : ip daddr .
/// th dport`, one element per (NodePort, bucket).
fn endpoint_map(count: u32, endpoints: &[(u16, &str)]) -> Set {
    let key_exprs = vec![
        KeyExpr::L4Proto,
        KeyExpr::ThDport,
        KeyExpr::Numgen { modulus: count },
    ];
    let mut elements: Vec<Element> = endpoints
        .iter()
        .zip((0..count).cycle())
        .map(|((port, ip), bucket)| {
            let key = [
                KeyValue::Proto(L4Proto::Tcp),
                KeyValue::Port(*port),
                KeyValue::Int(bucket),
            ];
            Element::new(key.into()).with_data([net(ip), KeyValue::Port(8080)].into())
        })
        .collect();
    elements.sort();
    Set {
        name: format!("endpoints-{count}"),
        key: vec![KeyType::InetProto, KeyType::InetService, KeyType::Integer],
        data: Some(MapData::Value(vec![
            KeyType::Ipv4Addr,
            KeyType::InetService,
        ])),
        flags: SetFlags::default(),
        timeout_secs: None,
        exprs: Some(SetExprs {
            key: key_exprs,
            data: vec![KeyExpr::Addr(AddrField::Daddr), KeyExpr::ThDport],
        }),
        comment: None,
        elements,
    }
}

fn pick(counts: &[u32]) -> Chain {
    let rules = counts
        .iter()
        .map(|n| {
            rule(vec![Stmt::DnatMap {
                key: vec![
                    KeyExpr::L4Proto,
                    KeyExpr::ThDport,
                    KeyExpr::Numgen { modulus: *n },
                ],
                map: format!("endpoints-{n}"),
            }])
        })
        .collect();
    chain("pick", rules)
}

fn with_maps(maps: Vec<Set>, counts: &[u32]) -> Ruleset {
    let mut t = table();
    t.sets.extend(maps);
    t.chains.push(pick(counts));
    ruleset(t)
}

#[test]
fn a_changed_datum_is_deleted_and_added_again() {
    let a = with_maps(
        vec![endpoint_map(2, &[(30080, "10.0.0.1"), (30080, "10.0.0.2")])],
        &[2],
    );
    let b = with_maps(
        vec![endpoint_map(2, &[(30080, "10.0.0.1"), (30080, "10.0.0.3")])],
        &[2],
    );
    let changes = diff(&a, &b);
    assert_eq!(
        ops(&changes),
        [
            "delete 1 elements from endpoints-2",
            "add 1 elements to endpoints-2"
        ]
    );
    assert_eq!(
        changes.to_nft(),
        "delete element ip svcproxy endpoints-2 { tcp . 30080 . 1 }\n\
         add element ip svcproxy endpoints-2 { tcp . 30080 . 1 : 10.0.0.3 . 8080 }\n"
    );
}

/// A service moving from 2 to 3 endpoints, the last with 2: the new map and its rule
/// come before the elements and rule that use it, the old map goes after the flush
/// that drops its rule.
#[test]
fn endpoint_maps_come_and_go_with_their_rules() {
    let a = with_maps(
        vec![endpoint_map(2, &[(30080, "10.0.0.1"), (30080, "10.0.0.2")])],
        &[2],
    );
    let b = with_maps(
        vec![endpoint_map(
            3,
            &[
                (30080, "10.0.0.1"),
                (30080, "10.0.0.2"),
                (30080, "10.0.0.3"),
            ],
        )],
        &[3],
    );
    let changes = diff(&a, &b);
    assert_eq!(
        ops(&changes),
        [
            "flush chain pick",
            "delete set endpoints-2",
            "add set endpoints-3",
            "add 1 rules to pick",
        ]
    );
    assert!(changes.to_nft().contains(
        "add map ip svcproxy endpoints-3 { typeof meta l4proto . th dport . numgen random mod 3 : ip daddr . th dport; }\n"
    ));
    // A typeof that changes (same types) recreates the map around its rule.
    let mut c = with_maps(vec![endpoint_map(2, &[(30080, "10.0.0.1")])], &[2]);
    let d = c.clone();
    if let Some(exprs) = &mut c.tables[0].sets[3].exprs {
        exprs.data = vec![KeyExpr::Addr(AddrField::Saddr), KeyExpr::ThDport];
    }
    assert_eq!(
        ops(&diff(&c, &d)),
        [
            "flush chain pick",
            "delete set endpoints-2",
            "add set endpoints-2",
            "add 1 rules to pick",
        ]
    );
}

#[test]
fn an_interval_set_is_flushed_and_refilled() {
    let a = table();
    let mut b = table();
    set_mut(&mut b, "nodeport-ips").elements =
        addr_set("x", INTERVAL, &["10.0.0.0/8", "192.168.100.1/32"]).elements;
    let changes = diff(&ruleset(a), &ruleset(b));
    assert_eq!(
        ops(&changes),
        ["flush set nodeport-ips", "add 2 elements to nodeport-ips"]
    );
    assert_eq!(
        changes.to_nft(),
        "flush set ip svcproxy nodeport-ips\n\
         add element ip svcproxy nodeport-ips {\n\t10.0.0.0/8,\n\t192.168.100.1,\n}\n"
    );
}

#[test]
fn a_redefined_set_is_recreated_around_the_rules_that_use_it() {
    let a = table();
    let mut b = table();
    set_mut(&mut b, "affinity-a/http").timeout_secs = Some(60);
    let changes = diff(&ruleset(a), &ruleset(b));
    // The rules are the same, but they hold references to the old map.
    assert_eq!(
        ops(&changes),
        [
            "flush chain service-a/http",
            "delete set affinity-a/http",
            "add set affinity-a/http",
            "add 3 rules to service-a/http",
        ]
    );
    assert!(changes.to_nft().contains(
        "add map ip svcproxy affinity-a/http { type ipv4_addr : ipv4_addr . inet_service; flags dynamic,timeout; timeout 60s; }\n"
    ));
}

#[test]
fn a_chain_the_kernel_cannot_update_replaces_the_table() {
    let a = table();
    let mut b = table();
    b.chains[0].base.as_mut().unwrap().priority = -99;
    assert_eq!(
        ops(&diff(&ruleset(a.clone()), &ruleset(b))),
        ["delete table svcproxy", "add table svcproxy"]
    );
    let mut c = table();
    c.comment = None;
    assert_eq!(
        ops(&diff(&ruleset(a), &ruleset(c))),
        ["delete table svcproxy", "add table svcproxy"]
    );
}

#[test]
fn tables_come_and_go_whole() {
    let ip = table();
    let ip6 = Table {
        family: Family::Ip6,
        sets: Vec::new(),
        chains: Vec::new(),
        ..table()
    };
    let both = Ruleset {
        tables: vec![ip.clone(), ip6.clone()],
    };
    let changes = diff(&ruleset(ip.clone()), &both);
    assert_eq!(ops(&changes), ["add table svcproxy"]);
    assert_eq!(changes.iter().next().unwrap().family, Family::Ip6);
    let changes = diff(&both, &ruleset(ip6));
    assert_eq!(ops(&changes), ["delete table svcproxy"]);
    assert_eq!(changes.to_nft(), "delete table ip svcproxy\n");
    assert_eq!(changes.summary().tables_deleted, 1);
}

#[test]
fn deferred_mode_keeps_mapped_stale_chains_until_the_next_diff() {
    let a = table();
    let mut b = table();
    b.chains.truncate(1);
    b.sets.retain(|s| s.name != "affinity-a/http");
    set_mut(&mut b, "service-ips").elements.clear();
    let options = DiffOptions {
        stale_chains: StaleChains::DeferMapped,
    };
    let changes = diff_with(&ruleset(a), &ruleset(b.clone()), options);
    // service-a/http is the target of a map element: flushed, kept. The endpoint
    // chains are only jumped to by rules, which the kernel always accounts at once.
    assert_eq!(
        ops(&changes),
        [
            "delete 1 elements from service-ips",
            "flush chain service-a/http",
            "flush chain endpoint-a/1",
            "flush chain endpoint-a/2",
            "delete set affinity-a/http",
            "delete chain endpoint-a/1",
            "delete chain endpoint-a/2",
        ]
    );
    let deferred: Vec<&str> = changes
        .deferred()
        .iter()
        .map(|d| d.chain.name.as_str())
        .collect();
    assert_eq!(deferred, ["service-a/http"]);

    // The kernel then holds `b` plus the empty chain; the next diff deletes it.
    let after = changes.state_after_commit(&ruleset(b.clone()));
    let next = diff_with(&after, &ruleset(b), options);
    assert_eq!(ops(&next), ["delete chain service-a/http"]);
    assert!(next.deferred().is_empty());
}

#[test]
fn text_of_new_objects() {
    let mut a = table();
    a.chains.truncate(1);
    a.sets.retain(|s| s.name != "affinity-a/http");
    set_mut(&mut a, "service-ips").elements.clear();
    let mut b = table();
    chain_mut(&mut b, "endpoint-a/2").comment = Some("say \"hi\"".into());
    set_mut(&mut b, "service-ips").elements[0].set_comment(Some("ns/a:http".into()));
    let text = diff(&ruleset(a), &ruleset(b)).to_nft();
    let expected = "\
add chain ip svcproxy service-a/http
add chain ip svcproxy endpoint-a/1
add chain ip svcproxy endpoint-a/2 { comment \"say 'hi'\"; }
add map ip svcproxy affinity-a/http { type ipv4_addr : ipv4_addr . inet_service; flags dynamic,timeout; timeout 10800s; }
add element ip svcproxy service-ips { 10.96.0.10 . tcp . 80 comment \"ns/a:http\" : goto service-a/http }
add rule ip svcproxy service-a/http meta l4proto tcp dnat ip to ip saddr map @affinity-a/http
add rule ip svcproxy service-a/http numgen random mod 2 == 0 update @affinity-a/http { ip saddr : 10.244.1.10 . 8080 } goto endpoint-a/1
add rule ip svcproxy service-a/http update @affinity-a/http { ip saddr : 10.244.2.10 . 8080 } goto endpoint-a/2
add rule ip svcproxy endpoint-a/1 meta mark set meta mark | 0x00004000
add rule ip svcproxy endpoint-a/1 accept
add rule ip svcproxy endpoint-a/2 accept
";
    assert_eq!(text, expected);
}

#[test]
fn batch_message_counts() {
    let mut a = table();
    a.chains.truncate(1);
    a.sets.retain(|s| s.name != "affinity-a/http");
    set_mut(&mut a, "service-ips").elements.clear();
    let changes = diff(&ruleset(a), &ruleset(table()));
    // 3 chains, 1 set (no elements: no element message), 1 element message, 6 rules.
    assert_eq!(changes.to_batch().unwrap().len(), 3 + 1 + 1 + 6);
}

#[test]
fn elements_are_matched_by_key_in_any_order() {
    let elements = vec![
        dispatch("10.96.0.1", 80, "a"),
        dispatch("10.96.0.2", 80, "b"),
        dispatch("10.96.0.3", 80, "c"),
    ];
    let mut a = table();
    set_mut(&mut a, "service-ips").elements = elements.clone();
    let mut b = table();
    // Reversed (not the IR's canonical order), one verdict changed, one key gone,
    // one new.
    set_mut(&mut b, "service-ips").elements = vec![
        dispatch("10.96.0.4", 80, "d"),
        dispatch("10.96.0.3", 80, "c"),
        dispatch("10.96.0.2", 80, "changed"),
    ];
    let changes = diff(&ruleset(a), &ruleset(b));
    let [delete, add] = changes.ops.as_slice() else {
        panic!("{:?}", ops(&changes));
    };
    let Op::DeleteElements {
        elements: deleted, ..
    } = &delete.op
    else {
        panic!("{delete:?}");
    };
    let Op::AddElements {
        elements: added, ..
    } = &add.op
    else {
        panic!("{add:?}");
    };
    assert_eq!(deleted, &elements[..2]);
    assert_eq!(
        added,
        &[
            dispatch("10.96.0.2", 80, "changed"),
            dispatch("10.96.0.4", 80, "d")
        ]
    );
}

/// Element-only affinity's objects in plan text: the compiler's words for `ct
/// original` keys, protocol lists, negated lookups and updates from the packet.
#[test]
fn text_of_element_only_affinity() {
    let empty = Table {
        family: Family::Ip,
        name: "svcproxy".into(),
        comment: None,
        sets: Vec::new(),
        chains: Vec::new(),
    };
    let original = vec![
        KeyExpr::CtOriginalAddr(AddrField::Daddr),
        KeyExpr::L4Proto,
        KeyExpr::CtOriginalProtoDst,
    ];
    let mut b = empty.clone();
    b.sets.push(Set {
        exprs: Some(SetExprs {
            key: vec![
                KeyExpr::CtOriginalAddr(AddrField::Daddr),
                KeyExpr::L4Proto,
                KeyExpr::ThDport,
            ],
            data: Vec::new(),
        }),
        data: None,
        ..map("sticky", Vec::new())
    });
    b.sets.push(Set {
        key: vec![KeyType::Ipv4Addr],
        data: Some(MapData::Value(vec![
            KeyType::Ipv4Addr,
            KeyType::InetService,
        ])),
        flags: SetFlags {
            dynamic: true,
            timeout: true,
            interval: false,
        },
        timeout_secs: Some(10800),
        ..map("a", Vec::new())
    });
    b.chains.push(chain(
        "rec",
        vec![rule(vec![
            Stmt::CtStateNew,
            Stmt::CtStatusDnat,
            Stmt::L4ProtoIn(vec![L4Proto::Tcp, L4Proto::Udp, L4Proto::Sctp]),
            Stmt::KeyInSet {
                key: original,
                op: svcproxy_compiler::nft::ir::CmpOp::Ne,
                set: "sticky".into(),
            },
            Stmt::UpdateMapFromPacket {
                map: "a".into(),
                field: AddrField::Saddr,
                data: vec![KeyExpr::Addr(AddrField::Daddr), KeyExpr::ThDport],
            },
        ])],
    ));
    let text = diff(&ruleset(empty), &ruleset(b)).to_nft();
    let expected = "\
add chain ip svcproxy rec
add set ip svcproxy sticky { typeof ct original ip daddr . meta l4proto . th dport; }
add map ip svcproxy a { type ipv4_addr : ipv4_addr . inet_service; flags dynamic,timeout; timeout 10800s; }
add rule ip svcproxy rec ct state new ct status dnat meta l4proto { tcp, udp, sctp } ct original ip daddr . meta l4proto . ct original proto-dst != @sticky update @a { ip saddr : ip daddr . th dport }
";
    assert_eq!(text, expected);
}
