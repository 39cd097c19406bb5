//! Kernel tests of the nf_tables netlink layer, each in fresh network namespaces.
//!
//! The oracle is nft itself: a ruleset applied through netlink must list exactly like
//! the same ruleset written as nft text and loaded with `nft -f`.
//!
//! Needs root. Without it the tests print "skipped: needs root" and pass, unless
//! `SVCPROXY_REQUIRE_KERNEL=1` (CI), in which case they fail.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use ipnet::IpNet;
use svcproxy_agent::cli::NodeFlags;
use svcproxy_agent::nftables::{Batch, Error};
use svcproxy_compiler::nft::ir::{
    AddrField, BaseChain, Chain, ChainType, CmpOp, Element, Family, Hook, KeyExpr, KeyType,
    KeyValue, L4Proto, MapData, Rule, Ruleset, Set, SetExprs, SetFlags, Stmt, Table, Values,
    Verdict,
};

// ----- environment -----

mod common;

use common::{Netns, require_kernel};

/// `nft -j list ruleset` without handles (they depend on creation history).
fn json_listing(ns: &Netns) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                map.remove("handle");
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v: serde_json::Value =
        serde_json::from_str(&ns.nft(&["-j", "list", "ruleset"])).expect("nft json");
    strip(&mut v);
    v
}

// ----- the ruleset -----

fn net(s: &str) -> IpNet {
    s.parse().expect("prefix")
}

fn rule(stmts: Vec<Stmt>) -> Rule {
    Rule {
        stmts,
        comment: None,
    }
}

fn chain(name: &str, base: Option<(ChainType, Hook, i32)>, rules: Vec<Rule>) -> Chain {
    Chain {
        name: name.into(),
        base: base.map(|(chain_type, hook, priority)| BaseChain {
            chain_type,
            hook,
            priority,
        }),
        comment: None,
        rules,
    }
}

fn element(key: Vec<KeyValue>, verdict: Option<Verdict>, comment: Option<&str>) -> Element {
    Element::from_parts(
        Values::try_from_slice(&key).expect("a key of at most 4 values"),
        verdict,
        Values::new(),
        comment.map(str::to_string),
    )
}

fn set(
    name: &str,
    key: Vec<KeyType>,
    data: Option<MapData>,
    flags: SetFlags,
    mut elements: Vec<Element>,
) -> Set {
    elements.sort();
    Set {
        name: name.into(),
        key,
        data,
        flags,
        timeout_secs: None,
        exprs: None,
        comment: None,
        elements,
    }
}

const INTERVAL: SetFlags = SetFlags {
    interval: true,
    timeout: false,
    dynamic: false,
};
const TIMEOUT_DYNAMIC: SetFlags = SetFlags {
    interval: false,
    timeout: true,
    dynamic: true,
};
const PLAIN: SetFlags = SetFlags {
    interval: false,
    timeout: false,
    dynamic: false,
};

fn jump(c: &str) -> Stmt {
    Stmt::Verdict(Verdict::Jump(c.into()))
}

fn goto(c: &str) -> Stmt {
    Stmt::Verdict(Verdict::Goto(c.into()))
}

fn addr(field: AddrField, op: CmpOp, value: &str) -> Stmt {
    Stmt::Addr {
        field,
        op,
        value: net(value),
    }
}

const SVC_KEY: [KeyExpr; 3] = [
    KeyExpr::Addr(AddrField::Daddr),
    KeyExpr::L4Proto,
    KeyExpr::ThDport,
];

/// An endpoint map of the shared-chain layout: `typeof <packet key> . numgen random mod
/// N : <family> daddr . th dport`, each element `key . bucket : endpoint . port`.
fn endpoint_map(
    family: Family,
    name: &str,
    packet_key: &[KeyExpr],
    modulus: u32,
    elements: Vec<(Vec<KeyValue>, &str, u16, Option<&str>)>,
) -> Set {
    let addr = match family {
        Family::Ip => KeyType::Ipv4Addr,
        Family::Ip6 => KeyType::Ipv6Addr,
    };
    let mut key_exprs = packet_key.to_vec();
    key_exprs.push(KeyExpr::Numgen { modulus });
    let key = key_exprs
        .iter()
        .map(|k| match k {
            KeyExpr::Addr(_) | KeyExpr::CtOriginalAddr(_) => addr,
            KeyExpr::L4Proto => KeyType::InetProto,
            KeyExpr::ThDport | KeyExpr::CtOriginalProtoDst => KeyType::InetService,
            KeyExpr::Numgen { .. } => KeyType::Integer,
        })
        .collect();
    let mut elements: Vec<Element> = elements
        .into_iter()
        .map(|(key, endpoint, port, comment)| {
            let endpoint = endpoint.parse::<std::net::IpAddr>().expect("endpoint");
            Element::from_parts(
                Values::try_from_slice(&key).expect("a key of at most 4 values"),
                None,
                [KeyValue::Net(IpNet::from(endpoint)), KeyValue::Port(port)].into(),
                comment.map(str::to_string),
            )
        })
        .collect();
    elements.sort();
    Set {
        name: name.into(),
        key,
        data: Some(MapData::Value(vec![addr, KeyType::InetService])),
        flags: PLAIN,
        timeout_secs: None,
        comment: None,
        exprs: Some(SetExprs {
            key: key_exprs,
            data: vec![KeyExpr::Addr(AddrField::Daddr), KeyExpr::ThDport],
        }),
        elements,
    }
}

/// `dnat to <packet key> . numgen random mod N map @map`
fn dnat_map(packet_key: &[KeyExpr], modulus: u32, map: &str) -> Stmt {
    let mut key = packet_key.to_vec();
    key.push(KeyExpr::Numgen { modulus });
    Stmt::DnatMap {
        key,
        map: map.into(),
    }
}

const NODEPORT_KEY: [KeyExpr; 2] = [KeyExpr::L4Proto, KeyExpr::ThDport];

/// Every statement, every set flavour, comments everywhere, in an `ip` and an `ip6` table.
fn full_ruleset() -> Ruleset {
    use AddrField::{Daddr, Saddr};
    use CmpOp::{Eq, Ne};
    let v4 = |s: &str| KeyValue::Net(net(s));
    let svc4 = |addr: &str, proto: L4Proto, port: u16, bucket: u32| {
        vec![
            KeyValue::Net(net(&format!("{addr}/32"))),
            KeyValue::Proto(proto),
            KeyValue::Port(port),
            KeyValue::Int(bucket),
        ]
    };

    let ip = Table {
        family: Family::Ip,
        name: "svcproxy".into(),
        comment: Some("managed by svcproxy".into()),
        sets: vec![
            Set {
                comment: Some("service cluster IPs".into()),
                ..set(
                    "cluster-ips",
                    vec![KeyType::Ipv4Addr],
                    None,
                    PLAIN,
                    vec![
                        element(vec![v4("10.96.0.1/32")], None, Some("default/kubernetes")),
                        element(vec![v4("10.96.0.10/32")], None, None),
                    ],
                )
            },
            set(
                "src-ranges",
                vec![KeyType::Ipv4Addr],
                None,
                INTERVAL,
                vec![
                    element(vec![v4("10.0.0.0/8")], None, None),
                    element(vec![v4("192.168.1.1/32")], None, Some("one host")),
                    element(vec![v4("172.16.0.0/12")], None, None),
                ],
            ),
            Set {
                timeout_secs: Some(10800),
                ..set(
                    "affinity-x",
                    vec![KeyType::Ipv4Addr],
                    Some(MapData::Value(vec![
                        KeyType::Ipv4Addr,
                        KeyType::InetService,
                    ])),
                    TIMEOUT_DYNAMIC,
                    vec![],
                )
            },
            set(
                "service-ips",
                vec![KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService],
                Some(MapData::Verdict),
                PLAIN,
                vec![
                    element(
                        vec![
                            v4("10.96.0.1/32"),
                            KeyValue::Proto(L4Proto::Tcp),
                            KeyValue::Port(443),
                        ],
                        Some(Verdict::Goto("svc-x".into())),
                        Some("default/kubernetes:https"),
                    ),
                    element(
                        vec![
                            v4("10.96.0.10/32"),
                            KeyValue::Proto(L4Proto::Udp),
                            KeyValue::Port(53),
                        ],
                        Some(Verdict::Jump("svc-x".into())),
                        None,
                    ),
                    element(
                        vec![
                            v4("10.96.0.11/32"),
                            KeyValue::Proto(L4Proto::Sctp),
                            KeyValue::Port(9),
                        ],
                        Some(Verdict::Drop),
                        None,
                    ),
                ],
            ),
            set(
                "service-nodeports",
                vec![KeyType::InetProto, KeyType::InetService],
                Some(MapData::Verdict),
                PLAIN,
                vec![
                    element(
                        vec![KeyValue::Proto(L4Proto::Tcp), KeyValue::Port(30080)],
                        Some(Verdict::Goto("svc-x".into())),
                        None,
                    ),
                    element(
                        vec![KeyValue::Proto(L4Proto::Udp), KeyValue::Port(30053)],
                        Some(Verdict::Accept),
                        None,
                    ),
                    element(
                        vec![KeyValue::Proto(L4Proto::Sctp), KeyValue::Port(30009)],
                        Some(Verdict::Return),
                        Some("sctp"),
                    ),
                ],
            ),
            Set {
                comment: Some("endpoints of service ports with 2".into()),
                ..endpoint_map(
                    Family::Ip,
                    "endpoints-2",
                    &SVC_KEY,
                    2,
                    vec![
                        (
                            svc4("10.96.0.1", L4Proto::Tcp, 80, 0),
                            "10.244.1.1",
                            8080,
                            None,
                        ),
                        (
                            svc4("10.96.0.1", L4Proto::Tcp, 80, 1),
                            "10.244.1.2",
                            8080,
                            Some("second"),
                        ),
                        (
                            svc4("10.96.0.2", L4Proto::Udp, 53, 0),
                            "10.244.1.3",
                            53,
                            None,
                        ),
                        (
                            svc4("10.96.0.2", L4Proto::Udp, 53, 1),
                            "10.244.1.4",
                            5353,
                            None,
                        ),
                    ],
                )
            },
            endpoint_map(
                Family::Ip,
                "nodeport-endpoints-3",
                &NODEPORT_KEY,
                3,
                (0..3)
                    .map(|i| {
                        (
                            vec![
                                KeyValue::Proto(L4Proto::Sctp),
                                KeyValue::Port(30080),
                                KeyValue::Int(i),
                            ],
                            ["10.244.2.1", "10.244.2.2", "10.244.2.3"][i as usize],
                            8080,
                            None,
                        )
                    })
                    .collect(),
            ),
        ],
        chains: vec![
            chain(
                "nat-prerouting",
                Some((ChainType::Nat, Hook::Prerouting, -100)),
                vec![rule(vec![jump("services")])],
            ),
            chain(
                "nat-output",
                Some((ChainType::Nat, Hook::Output, -100)),
                vec![rule(vec![jump("services")])],
            ),
            chain(
                "nat-postrouting",
                Some((ChainType::Nat, Hook::Postrouting, 100)),
                vec![
                    rule(vec![
                        Stmt::MarkBitsClear(0x4000),
                        Stmt::Verdict(Verdict::Return),
                    ]),
                    rule(vec![Stmt::MarkSetXor(0x4000)]),
                    rule(vec![Stmt::MasqueradeFullyRandom]),
                ],
            ),
            Chain {
                comment: Some("firewall".into()),
                ..chain(
                    "filter-input",
                    Some((ChainType::Filter, Hook::Input, 0)),
                    vec![
                        rule(vec![
                            Stmt::CtStateNew,
                            addr(Daddr, Eq, "10.0.0.1/32"),
                            addr(Saddr, Ne, "10.0.0.0/8"),
                            Stmt::Reject,
                        ]),
                        rule(vec![
                            addr(Saddr, Eq, "10.16.0.0/12"),
                            addr(Daddr, Ne, "10.1.0.0/16"),
                            Stmt::Verdict(Verdict::Drop),
                        ]),
                        rule(vec![
                            Stmt::AddrInSet {
                                field: Saddr,
                                op: Eq,
                                set: "cluster-ips".into(),
                            },
                            Stmt::AddrInSet {
                                field: Daddr,
                                op: Ne,
                                set: "cluster-ips".into(),
                            },
                            Stmt::Verdict(Verdict::Drop),
                        ]),
                        Rule {
                            comment: Some("source ranges".into()),
                            stmts: vec![
                                Stmt::AddrInList {
                                    field: Saddr,
                                    op: Ne,
                                    values: vec![net("1.2.3.0/24"), net("5.6.7.8/32")],
                                },
                                Stmt::Verdict(Verdict::Drop),
                            ],
                        },
                        rule(vec![
                            Stmt::AddrInList {
                                field: Daddr,
                                op: Eq,
                                values: vec![net("10.0.0.0/8"), net("192.168.0.0/16")],
                            },
                            Stmt::Verdict(Verdict::Accept),
                        ]),
                        rule(vec![
                            Stmt::AddrInSet {
                                field: Saddr,
                                op: Eq,
                                set: "src-ranges".into(),
                            },
                            Stmt::Verdict(Verdict::Accept),
                        ]),
                        rule(vec![
                            Stmt::AddrInList {
                                field: Saddr,
                                op: Eq,
                                values: vec![net("10.1.1.1/32"), net("10.1.1.2/32")],
                            },
                            Stmt::Verdict(Verdict::Accept),
                        ]),
                    ],
                )
            },
            chain(
                "services",
                None,
                vec![
                    rule(vec![Stmt::Vmap {
                        key: SVC_KEY.to_vec(),
                        map: "service-ips".into(),
                    }]),
                    rule(vec![
                        Stmt::FibAddrTypeLocal(Daddr),
                        Stmt::Vmap {
                            key: vec![KeyExpr::L4Proto, KeyExpr::ThDport],
                            map: "service-nodeports".into(),
                        },
                    ]),
                    rule(vec![
                        Stmt::Dport {
                            proto: L4Proto::Tcp,
                            port: 80,
                        },
                        Stmt::FibAddrTypeLocal(Saddr),
                        Stmt::Verdict(Verdict::Return),
                    ]),
                    rule(vec![
                        Stmt::L4Proto(L4Proto::Udp),
                        Stmt::Verdict(Verdict::Accept),
                    ]),
                ],
            ),
            chain(
                "svc-x",
                None,
                vec![
                    rule(vec![Stmt::DnatFromMap {
                        proto: L4Proto::Tcp,
                        field: Saddr,
                        map: "affinity-x".into(),
                        port_map: None,
                    }]),
                    Rule {
                        comment: Some("random endpoint".into()),
                        stmts: vec![
                            Stmt::NumgenRandomEq {
                                modulus: 2,
                                value: 0,
                            },
                            Stmt::UpdateMap {
                                map: "affinity-x".into(),
                                field: Saddr,
                                data: vec![v4("10.244.1.5/32"), KeyValue::Port(8080)],
                            },
                            goto("ep-1"),
                        ],
                    },
                    rule(vec![goto("ep-2")]),
                ],
            ),
            chain(
                "ep-1",
                None,
                vec![
                    rule(vec![addr(Saddr, Eq, "10.244.1.5/32"), jump("mark-masq")]),
                    rule(vec![Stmt::Dnat {
                        proto: L4Proto::Tcp,
                        addr: "10.244.1.5".parse().expect("addr"),
                        port: 8080,
                    }]),
                ],
            ),
            chain(
                "ep-2",
                None,
                vec![rule(vec![Stmt::Dnat {
                    proto: L4Proto::Udp,
                    addr: "10.244.2.7".parse().expect("addr"),
                    port: 53,
                }])],
            ),
            chain("mark-masq", None, vec![rule(vec![Stmt::MarkSetOr(0x4000)])]),
            chain(
                "pick-endpoint",
                None,
                vec![
                    rule(vec![dnat_map(&SVC_KEY, 2, "endpoints-2")]),
                    rule(vec![dnat_map(&NODEPORT_KEY, 3, "nodeport-endpoints-3")]),
                ],
            ),
        ],
    };

    let v6 = |s: &str| KeyValue::Net(net(s));
    let ip6 = Table {
        family: Family::Ip6,
        name: "svcproxy".into(),
        comment: None,
        sets: vec![
            set(
                "local-ranges",
                vec![KeyType::Ipv6Addr],
                None,
                INTERVAL,
                vec![
                    element(vec![v6("fd00::/64")], None, Some("pods")),
                    element(vec![v6("::1/128")], None, None),
                    element(vec![v6("ff00::/8")], None, None),
                ],
            ),
            Set {
                timeout_secs: Some(60),
                ..set(
                    "affinity-y",
                    vec![KeyType::Ipv6Addr],
                    Some(MapData::Value(vec![KeyType::Ipv6Addr])),
                    TIMEOUT_DYNAMIC,
                    vec![],
                )
            },
            Set {
                timeout_secs: Some(60),
                ..set(
                    "affinity-port-y",
                    vec![KeyType::Ipv6Addr],
                    Some(MapData::Value(vec![KeyType::InetService])),
                    TIMEOUT_DYNAMIC,
                    vec![],
                )
            },
            set(
                "service-ips",
                vec![KeyType::Ipv6Addr, KeyType::InetProto, KeyType::InetService],
                Some(MapData::Verdict),
                PLAIN,
                vec![element(
                    vec![
                        v6("fd00:96::1/128"),
                        KeyValue::Proto(L4Proto::Tcp),
                        KeyValue::Port(443),
                    ],
                    Some(Verdict::Goto("svc-y".into())),
                    Some("default/kubernetes:https"),
                )],
            ),
            Set {
                comment: Some("endpoints of service ports with 1".into()),
                ..endpoint_map(
                    Family::Ip6,
                    "endpoints-1",
                    &SVC_KEY,
                    1,
                    vec![(
                        vec![
                            v6("fd00:96::1/128"),
                            KeyValue::Proto(L4Proto::Tcp),
                            KeyValue::Port(80),
                            KeyValue::Int(0),
                        ],
                        "fd00:244::1",
                        8080,
                        None,
                    )],
                )
            },
            endpoint_map(
                Family::Ip6,
                "nodeport-endpoints-2",
                &NODEPORT_KEY,
                2,
                vec![
                    (
                        vec![
                            KeyValue::Proto(L4Proto::Udp),
                            KeyValue::Port(30053),
                            KeyValue::Int(0),
                        ],
                        "fd00:244::2",
                        53,
                        None,
                    ),
                    (
                        vec![
                            KeyValue::Proto(L4Proto::Udp),
                            KeyValue::Port(30053),
                            KeyValue::Int(1),
                        ],
                        "fd00:244::3",
                        53,
                        Some("udp"),
                    ),
                ],
            ),
        ],
        chains: vec![
            chain(
                "nat-prerouting",
                Some((ChainType::Nat, Hook::Prerouting, -100)),
                vec![rule(vec![Stmt::Vmap {
                    key: SVC_KEY.to_vec(),
                    map: "service-ips".into(),
                }])],
            ),
            chain(
                "filter-forward",
                Some((ChainType::Filter, Hook::Forward, -10)),
                vec![
                    rule(vec![
                        Stmt::CtStateNew,
                        addr(Saddr, Ne, "fd00::/8"),
                        addr(Daddr, Eq, "fd00:1::/65"),
                        Stmt::Reject,
                    ]),
                    rule(vec![
                        Stmt::AddrInList {
                            field: Saddr,
                            op: Eq,
                            values: vec![net("::1/128"), net("fd00::/64")],
                        },
                        Stmt::Verdict(Verdict::Accept),
                    ]),
                    rule(vec![
                        Stmt::AddrInSet {
                            field: Daddr,
                            op: Ne,
                            set: "local-ranges".into(),
                        },
                        Stmt::Verdict(Verdict::Drop),
                    ]),
                ],
            ),
            chain(
                "nat-postrouting",
                Some((ChainType::Nat, Hook::Postrouting, 100)),
                vec![rule(vec![Stmt::MasqueradeFullyRandom])],
            ),
            chain(
                "svc-y",
                None,
                vec![
                    rule(vec![Stmt::DnatFromMap {
                        proto: L4Proto::Tcp,
                        field: Saddr,
                        map: "affinity-y".into(),
                        port_map: Some("affinity-port-y".into()),
                    }]),
                    rule(vec![
                        Stmt::UpdateMap {
                            map: "affinity-y".into(),
                            field: Saddr,
                            data: vec![v6("fd00:244::5/128")],
                        },
                        Stmt::UpdateMap {
                            map: "affinity-port-y".into(),
                            field: Saddr,
                            data: vec![KeyValue::Port(8443)],
                        },
                        Stmt::MarkSetOr(0x4000),
                    ]),
                    rule(vec![Stmt::Dnat {
                        proto: L4Proto::Tcp,
                        addr: "fd00:244::5".parse().expect("addr"),
                        port: 8443,
                    }]),
                ],
            ),
            chain(
                "pick-endpoint",
                None,
                vec![
                    rule(vec![dnat_map(&SVC_KEY, 1, "endpoints-1")]),
                    rule(vec![dnat_map(&NODEPORT_KEY, 2, "nodeport-endpoints-2")]),
                ],
            ),
        ],
    };
    Ruleset {
        tables: vec![ip, ip6],
    }
}

/// The same ruleset as [`full_ruleset`], written by hand in nft syntax (the statement
/// forms are those of the IR's doc comments).
const FULL_RULESET_NFT: &str = r#"
table ip svcproxy {
    comment "managed by svcproxy"
    set cluster-ips {
        type ipv4_addr
        comment "service cluster IPs"
        elements = { 10.96.0.1 comment "default/kubernetes", 10.96.0.10 }
    }
    set src-ranges {
        type ipv4_addr
        flags interval
        elements = { 10.0.0.0/8, 172.16.0.0/12, 192.168.1.1 comment "one host" }
    }
    map affinity-x {
        type ipv4_addr : ipv4_addr . inet_service
        flags dynamic,timeout
        timeout 3h
    }
    map service-ips {
        type ipv4_addr . inet_proto . inet_service : verdict
        elements = { 10.96.0.1 . tcp . 443 comment "default/kubernetes:https" : goto svc-x,
                     10.96.0.10 . udp . 53 : jump svc-x,
                     10.96.0.11 . sctp . 9 : drop }
    }
    map service-nodeports {
        type inet_proto . inet_service : verdict
        elements = { tcp . 30080 : goto svc-x, udp . 30053 : accept, sctp . 30009 comment "sctp" : return }
    }
    map endpoints-2 {
        typeof ip daddr . meta l4proto . th dport . numgen random mod 2 : ip daddr . th dport
        comment "endpoints of service ports with 2"
        elements = { 10.96.0.1 . tcp . 80 . 0 : 10.244.1.1 . 8080,
                     10.96.0.1 . tcp . 80 . 1 comment "second" : 10.244.1.2 . 8080,
                     10.96.0.2 . udp . 53 . 0 : 10.244.1.3 . 53,
                     10.96.0.2 . udp . 53 . 1 : 10.244.1.4 . 5353 }
    }
    map nodeport-endpoints-3 {
        typeof meta l4proto . th dport . numgen random mod 3 : ip daddr . th dport
        elements = { sctp . 30080 . 0 : 10.244.2.1 . 8080, sctp . 30080 . 1 : 10.244.2.2 . 8080,
                     sctp . 30080 . 2 : 10.244.2.3 . 8080 }
    }
    chain nat-prerouting {
        type nat hook prerouting priority -100; policy accept;
        jump services
    }
    chain nat-output {
        type nat hook output priority -100; policy accept;
        jump services
    }
    chain nat-postrouting {
        type nat hook postrouting priority 100; policy accept;
        meta mark & 0x00004000 == 0x00000000 return
        meta mark set meta mark ^ 0x00004000
        masquerade fully-random
    }
    chain filter-input {
        type filter hook input priority 0; policy accept;
        comment "firewall"
        ct state new ip daddr 10.0.0.1 ip saddr != 10.0.0.0/8 reject
        ip saddr 10.16.0.0/12 ip daddr != 10.1.0.0/16 drop
        ip saddr @cluster-ips ip daddr != @cluster-ips drop
        ip saddr != { 1.2.3.0/24, 5.6.7.8 } drop comment "source ranges"
        ip daddr { 10.0.0.0/8, 192.168.0.0/16 } accept
        ip saddr @src-ranges accept
        ip saddr { 10.1.1.1, 10.1.1.2 } accept
    }
    chain services {
        ip daddr . meta l4proto . th dport vmap @service-ips
        fib daddr type local meta l4proto . th dport vmap @service-nodeports
        tcp dport 80 fib saddr type local return
        meta l4proto udp accept
    }
    chain svc-x {
        meta l4proto tcp dnat ip to ip saddr map @affinity-x
        numgen random mod 2 == 0 update @affinity-x { ip saddr : 10.244.1.5 . 8080 } goto ep-1 comment "random endpoint"
        goto ep-2
    }
    chain ep-1 {
        ip saddr 10.244.1.5 jump mark-masq
        meta l4proto tcp dnat to 10.244.1.5:8080
    }
    chain ep-2 {
        meta l4proto udp dnat to 10.244.2.7:53
    }
    chain mark-masq {
        meta mark set meta mark | 0x00004000
    }
    chain pick-endpoint {
        dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 map @endpoints-2
        dnat ip to meta l4proto . th dport . numgen random mod 3 map @nodeport-endpoints-3
    }
}
table ip6 svcproxy {
    set local-ranges {
        type ipv6_addr
        flags interval
        elements = { fd00::/64 comment "pods", ::1, ff00::/8 }
    }
    map affinity-y {
        type ipv6_addr : ipv6_addr
        flags dynamic,timeout
        timeout 1m
    }
    map affinity-port-y {
        type ipv6_addr : inet_service
        flags dynamic,timeout
        timeout 1m
    }
    map service-ips {
        type ipv6_addr . inet_proto . inet_service : verdict
        elements = { fd00:96::1 . tcp . 443 comment "default/kubernetes:https" : goto svc-y }
    }
    map endpoints-1 {
        typeof ip6 daddr . meta l4proto . th dport . numgen random mod 1 : ip6 daddr . th dport
        comment "endpoints of service ports with 1"
        elements = { fd00:96::1 . tcp . 80 . 0 : fd00:244::1 . 8080 }
    }
    map nodeport-endpoints-2 {
        typeof meta l4proto . th dport . numgen random mod 2 : ip6 daddr . th dport
        elements = { udp . 30053 . 0 : fd00:244::2 . 53, udp . 30053 . 1 comment "udp" : fd00:244::3 . 53 }
    }
    chain nat-prerouting {
        type nat hook prerouting priority -100; policy accept;
        ip6 daddr . meta l4proto . th dport vmap @service-ips
    }
    chain filter-forward {
        type filter hook forward priority -10; policy accept;
        ct state new ip6 saddr != fd00::/8 ip6 daddr fd00:1::/65 reject
        ip6 saddr { ::1, fd00::/64 } accept
        ip6 daddr != @local-ranges drop
    }
    chain nat-postrouting {
        type nat hook postrouting priority 100; policy accept;
        masquerade fully-random
    }
    chain svc-y {
        meta l4proto tcp dnat ip6 to ip6 saddr map @affinity-y : ip6 saddr map @affinity-port-y
        update @affinity-y { ip6 saddr : fd00:244::5 } update @affinity-port-y { ip6 saddr : 8443 } meta mark set meta mark | 0x00004000
        meta l4proto tcp dnat to [fd00:244::5]:8443
    }
    chain pick-endpoint {
        dnat ip6 to ip6 daddr . meta l4proto . th dport . numgen random mod 1 map @endpoints-1
        dnat ip6 to meta l4proto . th dport . numgen random mod 2 map @nodeport-endpoints-2
    }
}
"#;

// ----- tests -----

#[test]
fn netlink_ruleset_lists_exactly_like_nft_f() {
    if !require_kernel() {
        return;
    }
    let ruleset = full_ruleset();
    let ours = Netns::new("nl");
    let commit = ours
        .enter(|| svcproxy_agent::nftables::apply_full(&ruleset))
        .expect("apply_full");
    assert!(commit.messages > 0);

    let reference = Netns::new("nl");
    reference.nft_load(FULL_RULESET_NFT);

    let text = ours.nft(&["list", "ruleset"]);
    assert_eq!(
        text,
        reference.nft(&["list", "ruleset"]),
        "nft list ruleset differs"
    );
    assert_eq!(
        json_listing(&ours),
        json_listing(&reference),
        "nft -j list ruleset differs"
    );
    assert_eq!(
        bytecode_listing(&ours),
        bytecode_listing(&reference),
        "the kernel's bytecode differs"
    );
    for garbage in ["unknown", "@nh,", "@th,", "invalid"] {
        assert!(
            !text.contains(garbage),
            "listing contains {garbage:?}:\n{text}"
        );
    }
}

#[test]
fn decoder_reads_back_the_applied_ruleset() {
    if !require_kernel() {
        return;
    }
    let ruleset = full_ruleset();
    let ns = Netns::new("nl");
    let mut socket = ns.socket();
    let (read, generation) = ns.enter(|| {
        let commit = socket.apply_full(&ruleset).expect("apply_full");
        let read = socket
            .read_tables(&[(Family::Ip, "svcproxy"), (Family::Ip6, "svcproxy")])
            .expect("read back");
        assert_eq!(read.1, commit.generation);
        read
    });
    assert_eq!(read, ruleset);

    // Applying again replaces, and a table that does not exist reads as absent.
    ns.enter(|| {
        let commit = socket.apply_full(&ruleset).expect("second apply_full");
        assert!(commit.generation > generation);
        let (again, _) = socket
            .read_tables(&[
                (Family::Ip, "svcproxy"),
                (Family::Ip6, "svcproxy"),
                (Family::Ip, "absent"),
            ])
            .expect("read back");
        assert_eq!(again, ruleset);
    });
}

#[test]
fn rejected_batch_names_the_message_and_changes_nothing() {
    if !require_kernel() {
        return;
    }
    let ns = Netns::new("nl");
    ns.nft_load("table ip bystander {\n chain c {\n  ip daddr 192.0.2.1 drop\n }\n}\n");
    let good = full_ruleset();
    let mut socket = ns.socket();
    ns.enter(|| socket.apply_full(&good))
        .expect("apply good ruleset");
    let before = ns.nft(&["list", "ruleset"]);

    // A rule jumping to a chain that does not exist.
    let mut bad_jump = good.clone();
    bad_jump.tables[0].chains[4]
        .rules
        .push(rule(vec![jump("no-such-chain")]));
    let err = ns
        .enter(|| socket.apply_full(&bad_jump))
        .expect_err("jump to missing chain");
    let Error::Rejected(rejected) = &err else {
        panic!("expected a rejected batch, got {err}");
    };
    let failure = &rejected.failures[0];
    assert_eq!(
        failure.what, "add rule #4 to chain ip svcproxy/services",
        "{err}"
    );
    assert_eq!(failure.errno, libc::ENOENT, "{err}");
    println!("rejected as expected: {err}");
    assert_eq!(ns.nft(&["list", "ruleset"]), before, "kernel state changed");

    // A verdict map element pointing at a missing chain.
    let mut bad_element = good.clone();
    bad_element.tables[1]
        .sets
        .iter_mut()
        .find(|s| s.name == "service-ips")
        .expect("service-ips")
        .elements[0]
        .set_verdict(Some(Verdict::Goto("gone".into())));
    let err = ns
        .enter(|| socket.apply_full(&bad_element))
        .expect_err("map element to missing chain");
    let Error::Rejected(rejected) = &err else {
        panic!("expected a rejected batch, got {err}");
    };
    assert_eq!(
        rejected.failures[0].what, "1 element (add to set ip6 svcproxy/service-ips)",
        "{err}"
    );
    assert_eq!(rejected.failures[0].errno, libc::ENOENT, "{err}");
    assert_eq!(ns.nft(&["list", "ruleset"]), before, "kernel state changed");
}

#[test]
fn stale_generation_is_refused() {
    if !require_kernel() {
        return;
    }
    let ns = Netns::new("nl");
    let mut socket = ns.socket();
    let stale = ns.enter(|| socket.generation()).expect("generation");
    ns.nft_load("table ip someone-else { }");
    let mut batch = Batch::new();
    batch.add_table(&full_ruleset().tables[0]).expect("batch");
    let err = ns
        .enter(|| socket.commit(&batch, Some(stale)))
        .expect_err("stale generation");
    assert!(
        matches!(err, Error::GenerationChanged { expected } if expected == stale),
        "{err}"
    );
    assert!(!ns.nft(&["list", "tables"]).contains("svcproxy"));
    // With the current generation the same batch goes through.
    let current = ns.enter(|| socket.generation()).expect("generation");
    ns.enter(|| socket.commit(&batch, Some(current)))
        .expect("commit");
}

/// One run each, printed: 10,000 map elements through netlink vs `nft -f`.
#[test]
fn ten_thousand_map_elements() {
    if !require_kernel() {
        return;
    }
    const N: u32 = 10_000;
    let elements: Vec<Element> = (0..N)
        .map(|i| {
            let ip = std::net::Ipv4Addr::from(0x0a60_0000 + i);
            element(
                vec![
                    KeyValue::Net(IpNet::from(std::net::IpAddr::V4(ip))),
                    KeyValue::Proto(L4Proto::Tcp),
                    KeyValue::Port(80),
                ],
                Some(Verdict::Goto("svc".into())),
                None,
            )
        })
        .collect();
    let table = Table {
        family: Family::Ip,
        name: "svcproxy".into(),
        comment: None,
        sets: vec![set(
            "service-ips",
            vec![KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService],
            Some(MapData::Verdict),
            PLAIN,
            elements,
        )],
        chains: vec![
            chain(
                "svc",
                None,
                vec![rule(vec![Stmt::Verdict(Verdict::Accept)])],
            ),
            chain(
                "services",
                Some((ChainType::Nat, Hook::Prerouting, -100)),
                vec![rule(vec![Stmt::Vmap {
                    key: SVC_KEY.to_vec(),
                    map: "service-ips".into(),
                }])],
            ),
        ],
    };
    let ruleset = Ruleset {
        tables: vec![table],
    };

    let ns = Netns::new("nl");
    let mut socket = ns.socket();
    let (commit, netlink_time) = ns.enter(|| {
        let start = Instant::now();
        let commit = socket.apply_full(&ruleset).expect("apply_full");
        (commit, start.elapsed())
    });

    let mut text = String::from(
        "table ip svcproxy\ndelete table ip svcproxy\ntable ip svcproxy {\n map service-ips {\n  type ipv4_addr . inet_proto . inet_service : verdict\n  elements = { ",
    );
    for i in 0..N {
        let ip = std::net::Ipv4Addr::from(0x0a60_0000 + i);
        text.push_str(&format!("{ip} . tcp . 80 : goto svc, "));
    }
    text.push_str(
        "}\n }\n chain svc { accept; }\n chain services { type nat hook prerouting priority -100; policy accept; ip daddr . meta l4proto . th dport vmap @service-ips; }\n}\n",
    );
    let reference = Netns::new("nl");
    let start = Instant::now();
    reference.nft_load(&text);
    let nft_time = start.elapsed();

    println!(
        "10,000 map elements: netlink {netlink_time:?} ({} messages, {} acked, {} bytes), nft -f {nft_time:?}",
        commit.messages, commit.acked, commit.bytes
    );
    assert_eq!(
        ns.nft(&["list", "ruleset"]),
        reference.nft(&["list", "ruleset"])
    );
    let (read, _) = ns
        .enter(|| socket.read_tables(&[(Family::Ip, "svcproxy")]))
        .expect("read back");
    assert_eq!(read, ruleset);
}

/// The compile flags on a fixture's `# args:` lines.
#[derive(Parser)]
struct FixtureArgs {
    #[command(flatten)]
    node: NodeFlags,
}

fn fixture_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    let mut files: Vec<PathBuf> = ["semantics", "seeds", "traffic"]
        .iter()
        .filter_map(|dir| std::fs::read_dir(root.join(dir)).ok())
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// What the compiler really produces, applied through netlink, lists like its own nft
/// text loaded with `nft -f`, and reads back as the same IR.
#[test]
fn compiled_fixtures_apply_like_their_nft_text() {
    if !require_kernel() {
        return;
    }
    let fixtures = fixture_files();
    assert!(fixtures.len() >= 10, "fixtures not found");
    let mut failures = Vec::new();
    for fixture in &fixtures {
        let text = std::fs::read_to_string(fixture).expect("read fixture");
        let args = text
            .lines()
            .filter_map(|l| l.strip_prefix("# args:"))
            .flat_map(str::split_whitespace);
        let flags = FixtureArgs::try_parse_from(std::iter::once("fixture").chain(args))
            .expect("fixture args");
        let source = svcproxy_compiler::Source {
            name: fixture.display().to_string(),
            text,
        };
        let plan =
            svcproxy_compiler::plan(&[source], &flags.node.options()).expect("compile fixture");
        let ruleset = svcproxy_compiler::nft::ruleset(&plan);
        let names: Vec<(Family, &str)> = ruleset
            .tables
            .iter()
            .map(|t| (t.family, t.name.as_str()))
            .collect();

        let ours = Netns::new("nl");
        let mut socket = ours.socket();
        let outcome = ours.enter(|| {
            socket.apply_full(&ruleset)?;
            socket.read_tables(&names)
        });
        let reference = Netns::new("nl");
        reference.nft_load(&svcproxy_compiler::nft::text::render(&ruleset, &[]));

        let name = fixture
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        match outcome {
            Err(e) => failures.push(format!("{name}: {e}")),
            Ok((read, _)) if read != ruleset => {
                failures.push(format!("{name}: read back differs from the IR"))
            }
            Ok(_) => {}
        }
        if ours.nft(&["list", "ruleset"]) != reference.nft(&["list", "ruleset"]) {
            failures.push(format!(
                "{name}: nft list ruleset differs from nft -f of the compiler's text"
            ));
        }
        if bytecode_listing(&ours) != bytecode_listing(&reference) {
            failures.push(format!(
                "{name}: the kernel's bytecode differs from nft -f of the compiler's text"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} fixtures:\n{}",
        fixtures.len(),
        failures.join("\n")
    );
}

/// The kernel's bytecode of every rule and the elements of every set, as `nft
/// --debug=netlink list ruleset` prints them, without what depends on creation history
/// or hashing: rule handles and positions, and the order of a set's elements.
fn bytecode_listing(ns: &Netns) -> String {
    let listing = ns.nft(&["--debug=netlink", "list", "ruleset"]);
    let debug = listing.split("\ntable ").next().unwrap_or_default();
    let mut lines: Vec<String> = Vec::new();
    let mut elements: Vec<&str> = Vec::new();
    for line in debug.lines() {
        if line.starts_with("\telement ") {
            elements.push(line);
            continue;
        }
        elements.sort_unstable();
        lines.extend(elements.drain(..).map(str::to_string));
        // `ip t rec 11 9`: family, table, chain, handle, position.
        let words: Vec<&str> = line.split(' ').collect();
        let rule_header = matches!(words.first(), Some(&"ip" | &"ip6")) && !line.contains('@');
        lines.push(if rule_header && words.len() > 3 {
            words[..3].join(" ")
        } else {
            line.to_string()
        });
    }
    elements.sort_unstable();
    lines.extend(elements.drain(..).map(str::to_string));
    lines.join("\n")
}

/// Element-only ClientIP affinity's statements, in an `ip` and an `ip6` table: the
/// record hook's gate (`ct state new ct status dnat meta l4proto { tcp, udp, sctp }`
/// and a verdict map keyed by the original destination, or a negated set lookup of
/// it), and the records written from the packet (`update @a { ip saddr : ip daddr .
/// th dport }`, the IPv6 pair of updates).
fn element_only_affinity_ruleset() -> Ruleset {
    use AddrField::{Daddr, Saddr};
    let protos = || Stmt::L4ProtoIn(vec![L4Proto::Tcp, L4Proto::Udp, L4Proto::Sctp]);
    let original_key = vec![
        KeyExpr::CtOriginalAddr(Daddr),
        KeyExpr::L4Proto,
        KeyExpr::CtOriginalProtoDst,
    ];
    let gate = |family: Family| {
        let addr = match family {
            Family::Ip => KeyType::Ipv4Addr,
            Family::Ip6 => KeyType::Ipv6Addr,
        };
        let service_key = vec![addr, KeyType::InetProto, KeyType::InetService];
        let records = |elements| {
            set(
                "records",
                service_key.clone(),
                Some(MapData::Verdict),
                PLAIN,
                elements,
            )
        };
        let service = |s: &str| {
            vec![
                KeyValue::Net(net(s)),
                KeyValue::Proto(L4Proto::Tcp),
                KeyValue::Port(80),
            ]
        };
        let (records, sticky_ports) = match family {
            Family::Ip => (
                records(vec![element(
                    service("10.96.0.10/32"),
                    Some(Verdict::Goto("record-a".into())),
                    None,
                )]),
                vec![element(service("10.96.0.10/32"), None, None)],
            ),
            Family::Ip6 => (
                records(vec![element(
                    service("fd00:96::10/128"),
                    Some(Verdict::Goto("record-a".into())),
                    None,
                )]),
                vec![element(service("fd00:96::10/128"), None, None)],
            ),
        };
        let sets = vec![
            records,
            set(
                "records-np",
                vec![KeyType::InetProto, KeyType::InetService],
                Some(MapData::Verdict),
                PLAIN,
                vec![element(
                    vec![KeyValue::Proto(L4Proto::Udp), KeyValue::Port(30053)],
                    Some(Verdict::Goto("record-a".into())),
                    None,
                )],
            ),
            set("s", service_key.clone(), None, PLAIN, vec![]),
            // A `typeof` with a `ct original` address.
            Set {
                exprs: Some(SetExprs {
                    key: vec![
                        KeyExpr::CtOriginalAddr(Daddr),
                        KeyExpr::L4Proto,
                        KeyExpr::ThDport,
                    ],
                    data: vec![],
                }),
                ..set("sticky", service_key, None, PLAIN, sticky_ports)
            },
        ];
        let chain = chain(
            "rec",
            Some((ChainType::Filter, Hook::Prerouting, -99)),
            vec![
                rule(vec![
                    Stmt::CtStateNew,
                    Stmt::CtStatusDnat,
                    protos(),
                    Stmt::Vmap {
                        key: original_key.clone(),
                        map: "records".into(),
                    },
                ]),
                rule(vec![
                    Stmt::CtStateNew,
                    Stmt::CtStatusDnat,
                    protos(),
                    Stmt::KeyInSet {
                        key: original_key.clone(),
                        op: CmpOp::Ne,
                        set: "s".into(),
                    },
                    Stmt::Vmap {
                        key: vec![KeyExpr::L4Proto, KeyExpr::CtOriginalProtoDst],
                        map: "records-np".into(),
                    },
                ]),
                rule(vec![
                    Stmt::L4ProtoIn(vec![L4Proto::Tcp, L4Proto::Sctp]),
                    Stmt::KeyInSet {
                        key: vec![
                            KeyExpr::CtOriginalAddr(Daddr),
                            KeyExpr::L4Proto,
                            KeyExpr::ThDport,
                        ],
                        op: CmpOp::Eq,
                        set: "sticky".into(),
                    },
                    Stmt::Verdict(Verdict::Accept),
                ]),
            ],
        );
        (sets, chain)
    };
    let affinity_map = |name: &str, data: Vec<KeyType>, key: KeyType| Set {
        timeout_secs: Some(10800),
        ..set(
            name,
            vec![key],
            Some(MapData::Value(data)),
            TIMEOUT_DYNAMIC,
            vec![],
        )
    };

    let (mut sets, rec) = gate(Family::Ip);
    sets.insert(
        0,
        affinity_map(
            "a",
            vec![KeyType::Ipv4Addr, KeyType::InetService],
            KeyType::Ipv4Addr,
        ),
    );
    let ip = Table {
        family: Family::Ip,
        name: "svcproxy".into(),
        comment: None,
        sets,
        chains: vec![
            chain(
                "record-a",
                None,
                vec![rule(vec![Stmt::UpdateMapFromPacket {
                    map: "a".into(),
                    field: Saddr,
                    data: vec![KeyExpr::Addr(Daddr), KeyExpr::ThDport],
                }])],
            ),
            rec,
        ],
    };

    let (mut sets, rec) = gate(Family::Ip6);
    sets.insert(
        0,
        affinity_map("a", vec![KeyType::Ipv6Addr], KeyType::Ipv6Addr),
    );
    sets.insert(
        1,
        affinity_map("p", vec![KeyType::InetService], KeyType::Ipv6Addr),
    );
    let ip6 = Table {
        family: Family::Ip6,
        name: "svcproxy".into(),
        comment: None,
        sets,
        chains: vec![
            chain(
                "record-a",
                None,
                vec![rule(vec![
                    Stmt::UpdateMapFromPacket {
                        map: "a".into(),
                        field: Saddr,
                        data: vec![KeyExpr::Addr(Daddr)],
                    },
                    Stmt::UpdateMapFromPacket {
                        map: "p".into(),
                        field: Saddr,
                        data: vec![KeyExpr::ThDport],
                    },
                ])],
            ),
            rec,
        ],
    };
    Ruleset {
        tables: vec![ip, ip6],
    }
}

/// Element-only affinity's statements through netlink give the kernel the bytecode,
/// anonymous sets and listing `nft -f` of the compiler's text gives it, and read back
/// as the same IR.
#[test]
fn element_only_affinity_statements_load_like_nft_f() {
    if !require_kernel() {
        return;
    }
    let ruleset = element_only_affinity_ruleset();
    let ours = Netns::new("nl");
    let mut socket = ours.socket();
    let (read, _) = ours.enter(|| {
        socket.apply_full(&ruleset).expect("apply_full");
        socket
            .read_tables(&[(Family::Ip, "svcproxy"), (Family::Ip6, "svcproxy")])
            .expect("read back")
    });

    let text = svcproxy_compiler::nft::text::render(&ruleset, &[]);
    let reference = Netns::new("nl");
    reference.nft_load(&text);

    let listing = ours.nft(&["list", "ruleset"]);
    assert_eq!(
        listing,
        reference.nft(&["list", "ruleset"]),
        "nft list ruleset differs from nft -f of:\n{text}"
    );
    assert_eq!(
        bytecode_listing(&ours),
        bytecode_listing(&reference),
        "the kernel's bytecode differs from nft -f of:\n{text}"
    );
    assert_eq!(json_listing(&ours), json_listing(&reference));
    for expected in [
        "ct state new ct status dnat meta l4proto { tcp, udp, sctp } ct original ip daddr . meta l4proto . ct original proto-dst vmap @records",
        "ct original ip6 daddr . meta l4proto . ct original proto-dst != @s meta l4proto . ct original proto-dst vmap @records-np",
        "update @a { ip saddr : ip daddr . th dport }",
        "update @a { ip6 saddr : ip6 daddr } update @p { ip6 saddr : th dport }",
        "typeof ct original ip6 daddr . meta l4proto . th dport",
    ] {
        assert!(
            listing.contains(expected),
            "{expected:?} not in:\n{listing}"
        );
    }
    assert_eq!(read, ruleset);
}
