//! Round trips and nft-compatibility checks of statement encoding.

use ipnet::IpNet;
use svcproxy_compiler::nft::ir::{CmpOp as IrCmpOp, KeyValue, L4Proto, Stmt, Verdict};

use super::*;
use crate::nftables::expr::Expr;
use crate::nftables::set::ANON_SET_NAME;

fn encode(family: Family, stmts: &[Stmt]) -> Vec<Expr> {
    let mut next_id = 10;
    encode_stmts(family, stmts, &mut |_| {
        next_id += 1;
        next_id
    })
    .unwrap()
}

fn round_trip(family: Family, stmts: Vec<Stmt>) {
    let exprs = encode(family, &stmts);
    let anon =
        |name: &str| (name == ANON_SET_NAME).then(|| vec![net("1.2.3.0/24"), net("5.6.7.8/32")]);
    let decoded = decode_exprs(family, &exprs, &anon).unwrap();
    assert_eq!(decoded, stmts, "expressions: {exprs:#?}");
}

#[test]
fn prefix_matches_follow_nft() {
    let addr = |s: &str| Stmt::Addr {
        field: AddrField::Saddr,
        op: IrCmpOp::Ne,
        value: s.parse().unwrap(),
    };
    // /8 loads one byte, /12 masks, /32 compares the whole address.
    let e = encode(Family::Ip, &[addr("10.0.0.0/8")]);
    assert!(matches!(
        e.as_slice(),
        [
            Expr::Payload {
                offset: 12,
                len: 1,
                ..
            },
            Expr::Cmp { .. }
        ]
    ));
    let e = encode(Family::Ip, &[addr("10.16.0.0/12")]);
    assert!(matches!(
        e.as_slice(),
        [
            Expr::Payload { len: 4, .. },
            Expr::Bitwise { .. },
            Expr::Cmp { .. }
        ]
    ));
    let e = encode(Family::Ip6, &[addr("::/0")]);
    assert!(matches!(
        e.as_slice(),
        [
            Expr::Payload { len: 16, .. },
            Expr::Bitwise { .. },
            Expr::Cmp { .. }
        ]
    ));
    for s in [
        "10.0.0.0/8",
        "10.16.0.0/12",
        "10.1.2.3/32",
        "0.0.0.0/0",
        "10.1.0.0/16",
    ] {
        round_trip(Family::Ip, vec![addr(s)]);
    }
    for s in ["fd00::/8", "fd00:1::/65", "fd00::1/128", "::/0"] {
        round_trip(Family::Ip6, vec![addr(s)]);
    }
}

#[test]
fn dport_after_l4proto_drops_the_dependency_like_nft() {
    let stmts = vec![
        Stmt::Dport {
            proto: L4Proto::Tcp,
            port: 80,
        },
        Stmt::Dport {
            proto: L4Proto::Tcp,
            port: 81,
        },
        Stmt::Verdict(Verdict::Accept),
    ];
    // meta+cmp, payload+cmp, payload+cmp, immediate
    assert_eq!(encode(Family::Ip, &stmts).len(), 7);
    round_trip(Family::Ip, stmts);
}

#[test]
fn concatenated_set_membership_round_trips_and_is_not_an_address_lookup() {
    let pair = vec![
        KeyExpr::Addr(AddrField::Saddr),
        KeyExpr::Addr(AddrField::Daddr),
    ];
    for family in [Family::Ip, Family::Ip6] {
        let stmts = vec![
            Stmt::KeyInSet {
                key: pair.clone(),
                op: IrCmpOp::Eq,
                set: "hairpin-endpoints".into(),
            },
            Stmt::Verdict(Verdict::Jump("mark-for-masquerade".into())),
        ];
        round_trip(family, stmts);
    }
    // `ip saddr . ip daddr`: registers 1 and 9 (IPv4), 1 and 2 (IPv6), as nft loads them.
    let e = encode(
        Family::Ip,
        &[Stmt::KeyInSet {
            key: pair.clone(),
            op: IrCmpOp::Eq,
            set: "s".into(),
        }],
    );
    assert!(matches!(e[1], Expr::Payload { dreg: 9, .. }), "{e:?}");
    let one = Stmt::KeyInSet {
        key: vec![KeyExpr::ThDport],
        op: IrCmpOp::Eq,
        set: "s".into(),
    };
    assert!(encode_stmts(Family::Ip, &[one], &mut |_| 0).is_err());
}

#[test]
fn vmap_registers_and_round_trip() {
    let stmt = Stmt::Vmap {
        key: vec![
            KeyExpr::Addr(AddrField::Daddr),
            KeyExpr::L4Proto,
            KeyExpr::ThDport,
        ],
        map: "svc-ips".into(),
    };
    let e = encode(Family::Ip6, std::slice::from_ref(&stmt));
    let regs: Vec<u32> = e
        .iter()
        .filter_map(|e| match e {
            Expr::Payload { dreg, .. } | Expr::MetaLoad { dreg, .. } => Some(*dreg),
            _ => None,
        })
        .collect();
    assert_eq!(regs, vec![1, 2, 13]);
    round_trip(Family::Ip6, vec![stmt]);
    round_trip(
        Family::Ip,
        vec![Stmt::Vmap {
            key: vec![KeyExpr::ThDport],
            map: "ports".into(),
        }],
    );
}

#[test]
fn every_other_statement_round_trips() {
    round_trip(
        Family::Ip,
        vec![
            Stmt::CtStateNew,
            Stmt::AddrInSet {
                field: AddrField::Daddr,
                op: IrCmpOp::Eq,
                set: "cluster-ips".into(),
            },
            Stmt::AddrInList {
                field: AddrField::Saddr,
                op: IrCmpOp::Ne,
                values: vec![net("1.2.3.0/24"), net("5.6.7.8/32")],
            },
            Stmt::L4Proto(L4Proto::Udp),
            Stmt::FibAddrTypeLocal(AddrField::Daddr),
            Stmt::MarkBitsClear(0x4000),
            Stmt::NumgenRandomEq {
                modulus: 3,
                value: 1,
            },
            Stmt::MarkSetOr(0x4000),
            Stmt::MarkSetXor(0x4000),
            Stmt::UpdateMap {
                map: "affinity".into(),
                field: AddrField::Saddr,
                data: vec![KeyValue::Net(net("10.0.0.1/32")), KeyValue::Port(8080)],
            },
            Stmt::DnatFromMap {
                proto: L4Proto::Tcp,
                field: AddrField::Saddr,
                map: "affinity".into(),
                port_map: None,
            },
            Stmt::MasqueradeFullyRandom,
            Stmt::Dnat {
                proto: L4Proto::Sctp,
                addr: "10.0.0.1".parse().unwrap(),
                port: 8080,
            },
            Stmt::Reject,
            Stmt::Verdict(Verdict::Jump("svc".into())),
        ],
    );
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[test]
fn one_element_list_is_a_plain_match_like_nft() {
    let list = Stmt::AddrInList {
        field: AddrField::Saddr,
        op: IrCmpOp::Ne,
        values: vec![net("1.2.3.0/24")],
    };
    let mut anon_sets = 0;
    let exprs = encode_stmts(Family::Ip, &[list], &mut |_| {
        anon_sets += 1;
        anon_sets
    })
    .unwrap();
    assert_eq!(anon_sets, 0);
    let decoded = decode_exprs(Family::Ip, &exprs, &|_| None).unwrap();
    let plain = Stmt::Addr {
        field: AddrField::Saddr,
        op: IrCmpOp::Ne,
        value: net("1.2.3.0/24"),
    };
    assert_eq!(decoded, vec![plain]);
}

#[test]
fn wrong_family_is_an_encode_error() {
    let stmts = [Stmt::Dnat {
        proto: L4Proto::Tcp,
        addr: "fd00::1".parse().unwrap(),
        port: 80,
    }];
    assert!(encode_stmts(Family::Ip, &stmts, &mut |_| 1).is_err());
}

#[test]
fn unknown_bytecode_is_a_decode_error() {
    let exprs = [Expr::Masq { flags: 0 }];
    assert!(decode_exprs(Family::Ip, &exprs, &|_| None).is_err());
}

/// ClientIP affinity, as `nft --debug=netlink` shows nft 1.0.6 encoding it.
#[test]
fn affinity_maps_use_nfts_registers() {
    let v4 = encode(
        Family::Ip,
        &[
            Stmt::UpdateMap {
                map: "m".into(),
                field: AddrField::Saddr,
                data: vec![KeyValue::Net(net("10.0.0.1/32")), KeyValue::Port(8080)],
            },
            Stmt::DnatFromMap {
                proto: L4Proto::Tcp,
                field: AddrField::Saddr,
                map: "m".into(),
                port_map: None,
            },
        ],
    );
    // [ payload load 4b @ network header + 12 => reg 1 ]
    // [ immediate reg 2 0x0100000a ] [ immediate reg 13 0x0000901f ]
    // [ dynset update reg_key 1 set m sreg_data 2 ]
    // [ meta load l4proto => reg 1 ] [ cmp eq reg 1 0x06 ]
    // [ payload load 4b @ network header + 12 => reg 1 ] [ lookup reg 1 set m dreg 1 ]
    // [ nat dnat ip addr_min reg 1 proto_min reg 9 ]
    assert!(matches!(v4[1], Expr::Immediate { dreg: 2, .. }), "{v4:?}");
    assert!(matches!(v4[2], Expr::Immediate { dreg: 13, .. }), "{v4:?}");
    assert!(
        matches!(
            v4[3],
            Expr::DynsetUpdate {
                sreg_key: 1,
                sreg_data: Some(2),
                ..
            }
        ),
        "{v4:?}"
    );
    assert!(
        matches!(
            v4[7],
            Expr::Lookup {
                sreg: 1,
                dreg: Some(1),
                ..
            }
        ),
        "{v4:?}"
    );
    assert!(
        matches!(
            v4[8],
            Expr::Dnat {
                addr_reg: 1,
                proto_reg: 9,
                flags: 0,
                ..
            }
        ),
        "{v4:?}"
    );

    // IPv6: address and port in two maps.
    let stmts = vec![
        Stmt::DnatFromMap {
            proto: L4Proto::Udp,
            field: AddrField::Saddr,
            map: "a".into(),
            port_map: Some("p".into()),
        },
        Stmt::UpdateMap {
            map: "a".into(),
            field: AddrField::Saddr,
            data: vec![KeyValue::Net(net("fd00::1/128"))],
        },
        Stmt::UpdateMap {
            map: "p".into(),
            field: AddrField::Saddr,
            data: vec![KeyValue::Port(53)],
        },
        Stmt::Dnat {
            proto: L4Proto::Udp,
            addr: "fd00::1".parse().unwrap(),
            port: 53,
        },
    ];
    let v6 = encode(Family::Ip6, &stmts);
    // [ payload load 16b => reg 2 ] [ lookup reg 2 set p dreg 2 ]
    // [ nat dnat ip6 addr_min reg 1 proto_min reg 2 ]
    assert!(matches!(v6[4], Expr::Payload { dreg: 2, .. }), "{v6:?}");
    assert!(
        matches!(
            v6[6],
            Expr::Dnat {
                addr_reg: 1,
                proto_reg: 2,
                ..
            }
        ),
        "{v6:?}"
    );
    round_trip(Family::Ip6, stmts);
    // An IPv6 `address . port` datum (which nft 1.0.6 cannot write) still round trips.
    round_trip(
        Family::Ip6,
        vec![Stmt::UpdateMap {
            map: "m".into(),
            field: AddrField::Saddr,
            data: vec![KeyValue::Net(net("fd00::1/128")), KeyValue::Port(80)],
        }],
    );
}

/// The endpoint maps' rules, exactly as `nft --debug=netlink` shows nft 1.0.6 encoding
/// `dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 map @e` and
/// the NodePort and IPv6 forms (nft sends no nat flags for them).
#[test]
fn endpoint_map_dnat_is_nfts_bytecode() {
    use crate::nftables::expr::{MetaKey, PayloadBase};
    let key = |packet: &[KeyExpr], modulus| {
        let mut key = packet.to_vec();
        key.push(KeyExpr::Numgen { modulus });
        key
    };
    let svc = [
        KeyExpr::Addr(AddrField::Daddr),
        KeyExpr::L4Proto,
        KeyExpr::ThDport,
    ];
    let nodeport = [KeyExpr::L4Proto, KeyExpr::ThDport];
    let payload = |base, offset, len, dreg| Expr::Payload {
        base,
        offset,
        len,
        dreg,
    };
    let l4proto = |dreg| Expr::MetaLoad {
        key: MetaKey::L4Proto,
        dreg,
    };
    let dport = |dreg| payload(PayloadBase::Transport, 2, 2, dreg);
    let numgen = |dreg| Expr::NumgenRandom { dreg, modulus: 2 };
    let lookup = Expr::Lookup {
        sreg: 1,
        set: "e".into(),
        set_id: None,
        dreg: Some(1),
        invert: false,
    };
    let dnat = |family, proto_reg| Expr::Dnat {
        family,
        addr_reg: 1,
        proto_reg,
        flags: 0,
    };
    let cases = [
        (
            Family::Ip,
            key(&svc, 2),
            vec![
                payload(PayloadBase::Network, 16, 4, 1),
                l4proto(9),
                dport(10),
                numgen(11),
                lookup.clone(),
                dnat(2, 9),
            ],
        ),
        (
            Family::Ip,
            key(&nodeport, 2),
            vec![l4proto(1), dport(9), numgen(10), lookup.clone(), dnat(2, 9)],
        ),
        (
            Family::Ip6,
            key(&svc, 2),
            vec![
                payload(PayloadBase::Network, 24, 16, 1),
                l4proto(2),
                dport(13),
                numgen(14),
                lookup.clone(),
                dnat(10, 2),
            ],
        ),
        (
            Family::Ip6,
            key(&nodeport, 2),
            vec![
                l4proto(1),
                dport(9),
                numgen(10),
                lookup.clone(),
                dnat(10, 2),
            ],
        ),
    ];
    for (family, key, expected) in cases {
        let stmt = Stmt::DnatMap {
            key,
            map: "e".into(),
        };
        assert_eq!(encode(family, std::slice::from_ref(&stmt)), expected);
        round_trip(family, vec![stmt]);
    }
    // The kernel dumps the nat flags it derived (0x3): still the same statement.
    let mut dumped = encode(
        Family::Ip,
        &[Stmt::DnatMap {
            key: key(&svc, 3),
            map: "e".into(),
        }],
    );
    if let Some(Expr::Dnat { flags, .. }) = dumped.last_mut() {
        *flags = 3;
    }
    assert!(matches!(
        decode_exprs(Family::Ip, &dumped, &|_| None)
            .unwrap()
            .as_slice(),
        [Stmt::DnatMap { .. }]
    ));
    // A lookup into reg 1 that no nat reads is not a statement svcproxy writes.
    dumped.pop();
    assert!(decode_exprs(Family::Ip, &dumped, &|_| None).is_err());
    let empty = Stmt::DnatMap {
        key: vec![],
        map: "e".into(),
    };
    assert!(encode_stmts(Family::Ip, &[empty], &mut |_| 0).is_err());
}
