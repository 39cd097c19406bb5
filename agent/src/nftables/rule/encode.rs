//! Lowering IR statements to nf_tables expressions, the way nft does.

use std::net::IpAddr;

use ipnet::IpNet;
use svcproxy_compiler::nft::ir::{
    AddrField, CmpOp as IrCmpOp, Family, KeyExpr, KeyType, KeyValue, L4Proto, Stmt,
};

use super::{R1, addr_len, addr_offset, ct_original_addr_key, key_expr_type};
use crate::nftables::error::{Error, Result};
use crate::nftables::expr::{CmpOp, CtKey, Data, Expr, MetaKey, PayloadBase};
use crate::nftables::layout;
use crate::nftables::msg::nfproto;
use crate::nftables::set::ANON_SET_NAME;
use crate::nftables::uapi::{expr as ex, reg};

/// An anonymous set a rule needs (`ip saddr { ... }`, `meta l4proto { tcp, udp }`),
/// created in the same batch just before the rule and referred to by its transaction
/// id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AnonSet {
    /// What the rule looks up (`KeyExpr::Addr`, `KeyExpr::L4Proto`): the set's key
    /// has its type, and nft records it in the set's userdata.
    pub key: KeyExpr,
    /// The elements (one value each), in the rule's order.
    pub values: Vec<KeyValue>,
}

/// Lowers one rule's statements. `new_anon_set` registers an anonymous set and returns
/// the set id the lookup must use.
pub(crate) fn encode_stmts(
    family: Family,
    stmts: &[Stmt],
    new_anon_set: &mut dyn FnMut(AnonSet) -> u32,
) -> Result<Vec<Expr>> {
    let mut out = Vec::new();
    // The protocol an earlier statement of this rule already matched: nft omits the
    // implied `meta l4proto` of `tcp dport` when the rule has established it.
    let mut l4_context: Option<L4Proto> = None;
    for stmt in stmts {
        match stmt {
            Stmt::CtStateNew => out.extend(ct_bit_set(CtKey::State, ex::ct::STATE_NEW)),
            Stmt::CtStatusDnat => out.extend(ct_bit_set(CtKey::Status, ex::ct::STATUS_DNAT)),
            Stmt::Addr { field, op, value } => {
                check_family(family, &value.addr())?;
                encode_addr_match(family, *field, *op, value, &mut out);
            }
            Stmt::AddrInSet { field, op, set } => out.extend([
                load_addr(family, *field),
                Expr::Lookup {
                    sreg: R1,
                    set: set.clone(),
                    set_id: None,
                    dreg: None,
                    invert: *op == IrCmpOp::Ne,
                },
            ]),
            Stmt::AddrInList { field, op, values } => {
                for value in values {
                    check_family(family, &value.addr())?;
                }
                // nft folds a one-element list into a plain match; so do we, so the
                // kernel holds what `nft -f` of the text form would load (it reads
                // back as `Stmt::Addr`).
                if let [value] = values.as_slice() {
                    encode_addr_match(family, *field, *op, value, &mut out);
                    continue;
                }
                if values.is_empty() {
                    return Err(Error::encode("an empty anonymous address list"));
                }
                let id = new_anon_set(AnonSet {
                    key: KeyExpr::Addr(*field),
                    values: values.iter().map(|v| KeyValue::Net(*v)).collect(),
                });
                out.extend([
                    load_addr(family, *field),
                    anon_lookup(id, *op == IrCmpOp::Ne),
                ]);
            }
            Stmt::KeyInSet { key, op, set } => {
                if key.len() < 2 {
                    return Err(Error::encode(format!(
                        "@{set} with a key of {} components: a concatenation needs two or more",
                        key.len()
                    )));
                }
                encode_key(family, key, &mut out);
                out.push(Expr::Lookup {
                    sreg: R1,
                    set: set.clone(),
                    set_id: None,
                    dreg: None,
                    invert: *op == IrCmpOp::Ne,
                });
            }
            Stmt::L4Proto(proto) => {
                out.extend(match_l4proto(*proto));
                l4_context = Some(*proto);
            }
            Stmt::L4ProtoIn(protos) => match protos.as_slice() {
                [] => return Err(Error::encode("an empty protocol list")),
                // nft folds a one-protocol list into a plain match (it reads back as
                // `Stmt::L4Proto`).
                [proto] => {
                    out.extend(match_l4proto(*proto));
                    l4_context = Some(*proto);
                }
                _ => {
                    // The kernel's set reads back in protocol order: a list in another
                    // order, or with a repeat, would never read back equal.
                    if !protos.windows(2).all(|pair| pair[0] < pair[1]) {
                        let list: Vec<&str> = protos.iter().map(|p| p.keyword()).collect();
                        return Err(Error::encode(format!(
                            "meta l4proto {{ {} }}: list each protocol once, in the order tcp, udp, sctp",
                            list.join(", ")
                        )));
                    }
                    let id = new_anon_set(AnonSet {
                        key: KeyExpr::L4Proto,
                        values: protos.iter().map(|p| KeyValue::Proto(*p)).collect(),
                    });
                    out.extend([
                        Expr::MetaLoad {
                            key: MetaKey::L4Proto,
                            dreg: R1,
                        },
                        anon_lookup(id, false),
                    ]);
                }
            },
            Stmt::Dport { proto, port } => {
                if l4_context != Some(*proto) {
                    out.extend(match_l4proto(*proto));
                }
                out.extend([load_dport(R1), cmp(CmpOp::Eq, port.to_be_bytes().to_vec())]);
                l4_context = Some(*proto);
            }
            Stmt::FibAddrTypeLocal(field) => out.extend([
                Expr::FibAddrType {
                    flags: match field {
                        AddrField::Saddr => ex::fib::F_SADDR,
                        AddrField::Daddr => ex::fib::F_DADDR,
                    },
                    dreg: R1,
                },
                cmp(CmpOp::Eq, ex::fib::RTN_LOCAL.to_ne_bytes().to_vec()),
            ]),
            Stmt::MarkBitsClear(bits) => out.extend([
                load_mark(),
                mark_bitwise(*bits, 0),
                cmp(CmpOp::Eq, 0u32.to_ne_bytes().to_vec()),
            ]),
            Stmt::NumgenRandomEq { modulus, value } => out.extend([
                Expr::NumgenRandom {
                    dreg: R1,
                    modulus: *modulus,
                },
                cmp(CmpOp::Eq, value.to_ne_bytes().to_vec()),
            ]),
            // Marks are host-endian 32-bit values; `| B` is `& !B ^ B`, `^ B` is `& ~0 ^ B`.
            Stmt::MarkSetOr(bits) => {
                out.extend([load_mark(), mark_bitwise(!bits, *bits), set_mark()])
            }
            Stmt::MarkSetXor(bits) => {
                out.extend([load_mark(), mark_bitwise(u32::MAX, *bits), set_mark()])
            }
            Stmt::UpdateMap { map, field, data } => {
                if data.is_empty() {
                    return Err(Error::encode(format!("update @{map} without data")));
                }
                // The key (an address) in reg 1; the data, one immediate per
                // component, from reg 2 on in nft's concatenation layout.
                out.push(load_addr(family, *field));
                let types = data_types(map, data)?;
                for ((value, ty), dreg) in data.iter().zip(&types).zip(data_registers(&types)) {
                    out.push(Expr::Immediate {
                        dreg,
                        data: Data::Value(layout::key_bytes(&[*ty], std::slice::from_ref(value))?),
                    });
                }
                out.push(Expr::DynsetUpdate {
                    sreg_key: R1,
                    sreg_data: Some(reg::REG_2),
                    set: map.clone(),
                    set_id: None,
                });
            }
            Stmt::UpdateMapFromPacket { map, field, data } => {
                if data.is_empty() {
                    return Err(Error::encode(format!("update @{map} without data")));
                }
                // As `Stmt::UpdateMap`, with the datum's components loaded from the
                // packet instead of immediates.
                out.push(load_addr(family, *field));
                let types: Vec<KeyType> = data.iter().map(|k| key_expr_type(family, *k)).collect();
                for (key, dreg) in data.iter().zip(data_registers(&types)) {
                    out.push(load_key_expr(family, *key, dreg));
                }
                out.push(Expr::DynsetUpdate {
                    sreg_key: R1,
                    sreg_data: Some(reg::REG_2),
                    set: map.clone(),
                    set_id: None,
                });
            }
            Stmt::MasqueradeFullyRandom => out.push(Expr::Masq {
                flags: ex::masq::F_FULLY_RANDOM,
            }),
            Stmt::Dnat { proto, addr, port } => {
                check_family(family, addr)?;
                out.extend(match_l4proto(*proto));
                out.extend([
                    Expr::Immediate {
                        dreg: reg::REG_1,
                        data: Data::Value(layout::addr_bytes(addr)),
                    },
                    Expr::Immediate {
                        dreg: reg::REG_2,
                        data: Data::Value(port.to_be_bytes().to_vec()),
                    },
                    Expr::Dnat {
                        family: nfproto(family),
                        addr_reg: reg::REG_1,
                        proto_reg: reg::REG_2,
                        flags: ex::nat::F_PROTO_SPECIFIED,
                    },
                ]);
            }
            Stmt::DnatFromMap {
                proto,
                field,
                map,
                port_map,
            } => {
                out.extend(match_l4proto(*proto));
                out.extend([load_addr(family, *field), map_lookup(map)]);
                let proto_reg = match port_map {
                    // `address . port`: the port follows the address in the registers.
                    None => map_port_register(family),
                    Some(port_map) => {
                        out.extend([
                            Expr::Payload {
                                base: PayloadBase::Network,
                                offset: addr_offset(family, *field),
                                len: addr_len(family),
                                dreg: reg::REG_2,
                            },
                            Expr::Lookup {
                                sreg: reg::REG_2,
                                set: port_map.clone(),
                                set_id: None,
                                dreg: Some(reg::REG_2),
                                invert: false,
                            },
                        ]);
                        reg::REG_2
                    }
                };
                out.push(Expr::Dnat {
                    family: nfproto(family),
                    addr_reg: R1,
                    proto_reg,
                    flags: 0,
                });
            }
            Stmt::DnatMap { key, map } => {
                if key.is_empty() {
                    return Err(Error::encode(format!("dnat map @{map} with an empty key")));
                }
                // The key in nft's concatenation registers (the numgen bucket in the
                // slot after the packet fields), the lookup writes the `address .
                // port` datum over it from reg 1 on, and nat reads the address from
                // reg 1 and the port from the slot after the address. nft sends no
                // nat flags here; the kernel derives (and dumps) 0x3.
                encode_key(family, key, &mut out);
                out.extend([
                    map_lookup(map),
                    Expr::Dnat {
                        family: nfproto(family),
                        addr_reg: R1,
                        proto_reg: map_port_register(family),
                        flags: 0,
                    },
                ]);
            }
            Stmt::Vmap { key, map } => {
                if key.is_empty() {
                    return Err(Error::encode(format!("vmap @{map} with an empty key")));
                }
                encode_key(family, key, &mut out);
                out.push(Expr::Lookup {
                    sreg: R1,
                    set: map.clone(),
                    set_id: None,
                    dreg: Some(reg::VERDICT),
                    invert: false,
                });
            }
            Stmt::Reject => out.push(Expr::Reject {
                kind: ex::reject::TYPE_ICMP_UNREACH,
                code: match family {
                    Family::Ip => ex::reject::ICMP_PORT_UNREACH,
                    Family::Ip6 => ex::reject::ICMPV6_PORT_UNREACH,
                },
            }),
            Stmt::Verdict(verdict) => out.push(Expr::Immediate {
                dreg: reg::VERDICT,
                data: Data::Verdict(verdict.clone()),
            }),
        }
    }
    Ok(out)
}

/// The types of a map datum, from its values (svcproxy's data maps hold addresses
/// and ports).
pub(super) fn data_types(map: &str, data: &[KeyValue]) -> Result<Vec<KeyType>> {
    data.iter()
        .map(|value| match value {
            KeyValue::Net(net) if net.prefix_len() == net.max_prefix_len() => {
                Ok(layout::addr_type(Family::of(&net.addr())))
            }
            KeyValue::Port(_) => Ok(KeyType::InetService),
            other => Err(Error::encode(format!(
                "update @{map}: {other:?} is not an address or a port"
            ))),
        })
        .collect()
}

/// Where nft puts a map datum: from reg 2 on (the key, at most 16 bytes, has reg 1),
/// each component in its concatenation slot.
pub(super) fn data_registers(types: &[KeyType]) -> Vec<u32> {
    layout::concat_registers(types)
        .into_iter()
        .map(|r| layout::shift_register(r, 4))
        .collect()
}

/// The register of the port of an `address . port` datum a lookup wrote to reg 1.
pub(super) fn map_port_register(family: Family) -> u32 {
    layout::concat_registers(&[layout::addr_type(family), KeyType::InetService])[1]
}

fn check_family(family: Family, addr: &IpAddr) -> Result<()> {
    if Family::of(addr) != family {
        return Err(Error::encode(format!(
            "address {addr} in an {} table",
            family.keyword()
        )));
    }
    Ok(())
}

/// nft's prefix matches: a whole address is compared as is; a byte-aligned prefix loads
/// only its bytes; any other prefix loads the address and masks it.
fn encode_addr_match(
    family: Family,
    field: AddrField,
    op: IrCmpOp,
    value: &IpNet,
    out: &mut Vec<Expr>,
) {
    let full = addr_len(family);
    let prefix = u32::from(value.prefix_len());
    let op = cmp_op(op);
    let network = layout::addr_bytes(&value.network());
    if prefix == full * 8 {
        out.extend([load_addr(family, field), cmp(op, network)]);
    } else if prefix > 0 && prefix % 8 == 0 {
        let bytes = prefix / 8;
        out.extend([
            Expr::Payload {
                base: PayloadBase::Network,
                offset: addr_offset(family, field),
                len: bytes,
                dreg: R1,
            },
            cmp(op, network[..bytes as usize].to_vec()),
        ]);
    } else {
        out.extend([
            load_addr(family, field),
            Expr::Bitwise {
                sreg: R1,
                dreg: R1,
                mask: layout::addr_bytes(&value.netmask()),
                xor: vec![0; full as usize],
            },
            cmp(op, network),
        ]);
    }
}

/// `[ ct load KEY => reg 1 ] [ bitwise reg 1 = (reg 1 & BITS) ^ 0 ] [ cmp neq reg 1 0 ]`:
/// `ct state new`, `ct status dnat` (the state and status are host-order words).
fn ct_bit_set(key: CtKey, bits: u32) -> [Expr; 3] {
    [
        Expr::CtLoad { key, dreg: R1 },
        Expr::Bitwise {
            sreg: R1,
            dreg: R1,
            mask: bits.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        },
        cmp(CmpOp::Neq, 0u32.to_ne_bytes().to_vec()),
    ]
}

/// The lookup of reg 1 in the anonymous set the batch creates as `set_id`.
fn anon_lookup(set_id: u32, invert: bool) -> Expr {
    Expr::Lookup {
        sreg: R1,
        set: ANON_SET_NAME.to_string(),
        set_id: Some(set_id),
        dreg: None,
        invert,
    }
}

/// `KEY map @map` with the key from register 1 on: the datum lands in register 1 on,
/// a miss ends the rule.
fn map_lookup(map: &str) -> Expr {
    Expr::Lookup {
        sreg: R1,
        set: map.to_string(),
        set_id: None,
        dreg: Some(R1),
        invert: false,
    }
}

fn cmp(op: CmpOp, data: Vec<u8>) -> Expr {
    Expr::Cmp { sreg: R1, op, data }
}

fn cmp_op(op: IrCmpOp) -> CmpOp {
    match op {
        IrCmpOp::Eq => CmpOp::Eq,
        IrCmpOp::Ne => CmpOp::Neq,
    }
}

fn match_l4proto(proto: L4Proto) -> [Expr; 2] {
    [
        Expr::MetaLoad {
            key: MetaKey::L4Proto,
            dreg: R1,
        },
        cmp(CmpOp::Eq, vec![proto.number()]),
    ]
}

fn load_mark() -> Expr {
    Expr::MetaLoad {
        key: MetaKey::Mark,
        dreg: R1,
    }
}

fn set_mark() -> Expr {
    Expr::MetaSet {
        key: MetaKey::Mark,
        sreg: R1,
    }
}

fn mark_bitwise(mask: u32, xor: u32) -> Expr {
    Expr::Bitwise {
        sreg: R1,
        dreg: R1,
        mask: mask.to_ne_bytes().to_vec(),
        xor: xor.to_ne_bytes().to_vec(),
    }
}

/// `th dport`: bytes 2-3 of the transport header, whatever the protocol.
fn load_dport(dreg: u32) -> Expr {
    Expr::Payload {
        base: PayloadBase::Transport,
        offset: 2,
        len: 2,
        dreg,
    }
}

fn load_addr(family: Family, field: AddrField) -> Expr {
    Expr::Payload {
        base: PayloadBase::Network,
        offset: addr_offset(family, field),
        len: addr_len(family),
        dreg: R1,
    }
}

/// The components of a concatenated key, each loaded into its slot as nft lays them out.
fn encode_key(family: Family, key: &[KeyExpr], out: &mut Vec<Expr>) {
    let types: Vec<KeyType> = key.iter().map(|k| key_expr_type(family, *k)).collect();
    for (k, dreg) in key.iter().zip(layout::concat_registers(&types)) {
        out.push(load_key_expr(family, *k, dreg));
    }
}

fn load_key_expr(family: Family, key: KeyExpr, dreg: u32) -> Expr {
    match key {
        KeyExpr::Addr(field) => Expr::Payload {
            base: PayloadBase::Network,
            offset: addr_offset(family, field),
            len: addr_len(family),
            dreg,
        },
        KeyExpr::L4Proto => Expr::MetaLoad {
            key: MetaKey::L4Proto,
            dreg,
        },
        KeyExpr::ThDport => load_dport(dreg),
        KeyExpr::Numgen { modulus } => Expr::NumgenRandom { dreg, modulus },
        KeyExpr::CtOriginalAddr(field) => Expr::CtLoad {
            key: ct_original_addr_key(family, field),
            dreg,
        },
        KeyExpr::CtOriginalProtoDst => Expr::CtLoad {
            key: CtKey::OriginalProtoDst,
            dreg,
        },
    }
}
