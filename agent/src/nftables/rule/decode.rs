//! Raising nf_tables expressions back to IR statements.

use ipnet::IpNet;
use svcproxy_compiler::nft::ir::{
    AddrField, CmpOp as IrCmpOp, Family, KeyExpr, KeyType, KeyValue, L4Proto, Stmt,
};

use super::encode::{data_registers, map_port_register};
use super::{R1, addr_field_at, addr_len, ct_original_addr_key, key_expr_type};
use crate::nftables::error::{Error, Result};
use crate::nftables::expr::{CmpOp, CtKey, Data, Expr, MetaKey, PayloadBase};
use crate::nftables::layout;
use crate::nftables::msg::nfproto;
use crate::nftables::uapi::{expr as ex, reg};

/// Raises one rule's expressions back to statements. `anon_set` resolves the name of an
/// anonymous set (as the kernel renamed it) to its elements' values (addresses or
/// protocols).
pub(crate) fn decode_exprs(
    family: Family,
    exprs: &[Expr],
    anon_set: &dyn Fn(&str) -> Option<Vec<KeyValue>>,
) -> Result<Vec<Stmt>> {
    let mut decoder = Decoder {
        family,
        anon_set,
        l4_context: None,
    };
    let mut stmts = Vec::new();
    let mut rest = exprs;
    while !rest.is_empty() {
        let (stmt, used) = decoder.next(rest).ok_or_else(|| {
            let at = exprs.len() - rest.len();
            Error::decode(format!(
                "expressions from #{at} are not a statement svcproxy emits: {:?}",
                &rest[..rest.len().min(4)]
            ))
        })??;
        stmts.push(stmt);
        rest = &rest[used..];
    }
    Ok(stmts)
}

struct Decoder<'a> {
    family: Family,
    anon_set: &'a dyn Fn(&str) -> Option<Vec<KeyValue>>,
    l4_context: Option<L4Proto>,
}

type Step = Option<Result<(Stmt, usize)>>;

impl Decoder<'_> {
    /// The statement at the front of `exprs` and how many expressions it spans.
    fn next(&mut self, exprs: &[Expr]) -> Step {
        if let Some(step) = self.vmap(exprs) {
            return Some(step);
        }
        let family = self.family;
        let addr_len = addr_len(family);
        let u32_is = |data: &[u8], v: u32| data == v.to_ne_bytes();
        match exprs {
            [
                Expr::CtLoad { key, dreg: R1 },
                Expr::Bitwise { mask, xor, .. },
                Expr::Cmp {
                    op: CmpOp::Neq,
                    data,
                    ..
                },
                ..,
            ] if u32_is(xor, 0) && u32_is(data, 0) => match key {
                CtKey::State if u32_is(mask, ex::ct::STATE_NEW) => Some(Ok((Stmt::CtStateNew, 3))),
                CtKey::Status if u32_is(mask, ex::ct::STATUS_DNAT) => {
                    Some(Ok((Stmt::CtStatusDnat, 3)))
                }
                _ => None,
            },

            [
                Expr::Payload {
                    base: PayloadBase::Network,
                    offset,
                    len,
                    dreg: R1,
                },
                tail @ ..,
            ] => {
                let field = addr_field_at(family, *offset)?;
                self.addr_stmt(field, *len, addr_len, tail)
            }

            // `meta l4proto { tcp, udp }`: a lookup in an anonymous set of protocols.
            [
                Expr::MetaLoad {
                    key: MetaKey::L4Proto,
                    dreg: R1,
                },
                Expr::Lookup {
                    sreg: R1,
                    set,
                    dreg: None,
                    invert: false,
                    ..
                },
                ..,
            ] => {
                let protos = (self.anon_set)(set)?
                    .into_iter()
                    .map(|v| match v {
                        KeyValue::Proto(p) => Some(p),
                        _ => None,
                    })
                    .collect::<Option<Vec<L4Proto>>>()?;
                Some(Ok((Stmt::L4ProtoIn(protos), 2)))
            }

            [
                Expr::MetaLoad {
                    key: MetaKey::L4Proto,
                    dreg: R1,
                },
                Expr::Cmp {
                    op: CmpOp::Eq,
                    data,
                    ..
                },
                tail @ ..,
            ] => {
                let proto = match data.as_slice() {
                    [n] => match layout::proto_from_number(*n) {
                        Ok(p) => p,
                        Err(e) => return Some(Err(e)),
                    },
                    _ => return None,
                };
                if let Some(port) = dport_match(tail) {
                    self.l4_context = Some(proto);
                    return Some(Ok((Stmt::Dport { proto, port }, 4)));
                }
                if let Some(dnat) = self.dnat(proto, tail) {
                    return Some(dnat.map(|stmt| (stmt, 5)));
                }
                if let Some((stmt, used)) = self.dnat_from_map(proto, tail) {
                    return Some(Ok((stmt, 2 + used)));
                }
                self.l4_context = Some(proto);
                Some(Ok((Stmt::L4Proto(proto), 2)))
            }

            // `tcp dport` after the rule already matched tcp: no dependency expressions.
            [Expr::Payload { .. }, ..] if self.l4_context.is_some() => {
                let port = dport_match(exprs)?;
                let proto = self.l4_context?;
                Some(Ok((Stmt::Dport { proto, port }, 2)))
            }

            [
                Expr::FibAddrType { flags, dreg: R1 },
                Expr::Cmp {
                    op: CmpOp::Eq,
                    data,
                    ..
                },
                ..,
            ] if u32_is(data, ex::fib::RTN_LOCAL) => {
                let field = match *flags {
                    ex::fib::F_SADDR => AddrField::Saddr,
                    ex::fib::F_DADDR => AddrField::Daddr,
                    _ => return None,
                };
                Some(Ok((Stmt::FibAddrTypeLocal(field), 2)))
            }

            [
                Expr::MetaLoad {
                    key: MetaKey::Mark,
                    dreg: R1,
                },
                Expr::Bitwise { mask, xor, .. },
                next,
                ..,
            ] => {
                let mask = u32::from_ne_bytes(mask.as_slice().try_into().ok()?);
                let xor = u32::from_ne_bytes(xor.as_slice().try_into().ok()?);
                match next {
                    Expr::Cmp {
                        op: CmpOp::Eq,
                        data,
                        ..
                    } if xor == 0 && u32_is(data, 0) => Some(Ok((Stmt::MarkBitsClear(mask), 3))),
                    Expr::MetaSet {
                        key: MetaKey::Mark,
                        sreg: R1,
                    } if mask == u32::MAX => Some(Ok((Stmt::MarkSetXor(xor), 3))),
                    Expr::MetaSet {
                        key: MetaKey::Mark,
                        sreg: R1,
                    } if mask == !xor => Some(Ok((Stmt::MarkSetOr(xor), 3))),
                    _ => None,
                }
            }

            [
                Expr::NumgenRandom { dreg: R1, modulus },
                Expr::Cmp {
                    op: CmpOp::Eq,
                    data,
                    ..
                },
                ..,
            ] => {
                let value = u32::from_ne_bytes(data.as_slice().try_into().ok()?);
                Some(Ok((
                    Stmt::NumgenRandomEq {
                        modulus: *modulus,
                        value,
                    },
                    2,
                )))
            }

            [Expr::Masq { flags }, ..] if *flags == ex::masq::F_FULLY_RANDOM => {
                Some(Ok((Stmt::MasqueradeFullyRandom, 1)))
            }

            [Expr::Reject { kind, code }, ..] if *kind == ex::reject::TYPE_ICMP_UNREACH => {
                let expected = match family {
                    Family::Ip => ex::reject::ICMP_PORT_UNREACH,
                    Family::Ip6 => ex::reject::ICMPV6_PORT_UNREACH,
                };
                (*code == expected).then_some(Ok((Stmt::Reject, 1)))
            }

            [
                Expr::Immediate {
                    dreg: reg::VERDICT,
                    data: Data::Verdict(verdict),
                },
                ..,
            ] => Some(Ok((Stmt::Verdict(verdict.clone()), 1))),

            _ => None,
        }
    }

    /// After `payload load LEN @ network + <address offset> => reg 1`.
    fn addr_stmt(&self, field: AddrField, len: u32, addr_len: u32, tail: &[Expr]) -> Step {
        match tail {
            [Expr::Cmp { sreg: R1, op, data }, ..] if len < addr_len => {
                // A byte-aligned prefix: only its bytes were loaded.
                let mut bytes = data.clone();
                if bytes.len() != len as usize {
                    return None;
                }
                bytes.resize(addr_len as usize, 0);
                Some(addr_from(bytes, len * 8).map(|value| (addr_stmt(field, *op, value), 2)))
            }
            _ if len != addr_len => None,
            [Expr::Cmp { sreg: R1, op, data }, ..] => Some(
                addr_from(data.clone(), addr_len * 8)
                    .map(|value| (addr_stmt(field, *op, value), 2)),
            ),
            [
                Expr::Bitwise {
                    sreg: R1,
                    dreg: R1,
                    mask,
                    xor,
                },
                Expr::Cmp { sreg: R1, op, data },
                ..,
            ] if xor.iter().all(|b| *b == 0) => {
                let prefix = mask_prefix(mask)?;
                Some(addr_from(data.clone(), prefix).map(|value| (addr_stmt(field, *op, value), 3)))
            }
            [
                Expr::Lookup {
                    sreg: R1,
                    set,
                    dreg: None,
                    invert,
                    ..
                },
                ..,
            ] => {
                let op = if *invert { IrCmpOp::Ne } else { IrCmpOp::Eq };
                let stmt = match (self.anon_set)(set) {
                    Some(values) => {
                        let values = values
                            .into_iter()
                            .map(|v| match v {
                                KeyValue::Net(net) => Some(net),
                                _ => None,
                            })
                            .collect::<Option<Vec<IpNet>>>()?;
                        Stmt::AddrInList { field, op, values }
                    }
                    None => Stmt::AddrInSet {
                        field,
                        op,
                        set: set.clone(),
                    },
                };
                Some(Ok((stmt, 2)))
            }
            [Expr::Immediate { .. }, ..] => self.update_map(field, tail),
            [first, ..] if self.key_load(first).is_some() => {
                self.update_map_from_packet(field, tail)
            }
            _ => None,
        }
    }

    /// After `payload load <address> => reg 1`: loads of the datum's components from
    /// the packet into reg 2 on (nft's concatenation layout), then `dynset update
    /// reg_key 1 sreg_data 2`.
    fn update_map_from_packet(&self, field: AddrField, tail: &[Expr]) -> Step {
        let mut data = Vec::new();
        let mut registers = Vec::new();
        for (i, expr) in tail.iter().enumerate() {
            if let Expr::DynsetUpdate {
                sreg_key: R1,
                sreg_data: Some(reg::REG_2),
                set,
                ..
            } = expr
            {
                let types: Vec<KeyType> = data
                    .iter()
                    .map(|k| key_expr_type(self.family, *k))
                    .collect();
                if data.is_empty() || data_registers(&types) != registers {
                    return None;
                }
                let stmt = Stmt::UpdateMapFromPacket {
                    map: set.clone(),
                    field,
                    data,
                };
                // The address load, the datum's loads, the dynset.
                return Some(Ok((stmt, i + 2)));
            }
            let (key, dreg) = self.key_load(expr)?;
            data.push(key);
            registers.push(dreg);
        }
        None
    }

    /// After `payload load <address> => reg 1`: `immediate` loads of the datum from
    /// reg 2 on, then `dynset update reg_key 1 sreg_data 2`.
    fn update_map(&self, field: AddrField, tail: &[Expr]) -> Step {
        let mut data = Vec::new();
        let mut registers = Vec::new();
        for (i, expr) in tail.iter().enumerate() {
            match expr {
                Expr::Immediate {
                    dreg,
                    data: Data::Value(bytes),
                } => {
                    let ty = match bytes.len() {
                        2 => KeyType::InetService,
                        4 => KeyType::Ipv4Addr,
                        16 => KeyType::Ipv6Addr,
                        _ => return None,
                    };
                    let value = match layout::key_values::<1>(&[ty], bytes) {
                        Ok(values) => *values.first()?,
                        Err(e) => return Some(Err(e)),
                    };
                    data.push((ty, value));
                    registers.push(*dreg);
                }
                Expr::DynsetUpdate {
                    sreg_key: R1,
                    sreg_data: Some(reg::REG_2),
                    set,
                    ..
                } if !data.is_empty() => {
                    let (types, data): (Vec<KeyType>, Vec<KeyValue>) = data.into_iter().unzip();
                    if data_registers(&types) != registers {
                        return None;
                    }
                    let stmt = Stmt::UpdateMap {
                        map: set.clone(),
                        field,
                        data,
                    };
                    // The address load, the immediates, the dynset.
                    return Some(Ok((stmt, i + 2)));
                }
                _ => return None,
            }
        }
        None
    }

    /// After `meta l4proto P`: `payload load <address> => reg 1; lookup reg 1 set M
    /// dreg 1`, optionally the same into reg 2 from the port map, then `nat dnat` from
    /// those registers. Returns the statement and the expressions it spans after the
    /// protocol match.
    fn dnat_from_map(&self, proto: L4Proto, tail: &[Expr]) -> Option<(Stmt, usize)> {
        let family = self.family;
        let addr_load = |expr: &Expr, dreg: u32| match expr {
            Expr::Payload {
                base: PayloadBase::Network,
                offset,
                len,
                dreg: d,
            } if *len == addr_len(family) && *d == dreg => addr_field_at(family, *offset),
            _ => None,
        };
        let lookup = |expr: &Expr, register: u32| match expr {
            Expr::Lookup {
                sreg,
                set,
                dreg: Some(dreg),
                invert: false,
                ..
            } if *sreg == register && *dreg == register => Some(set.clone()),
            _ => None,
        };
        let dnat = |expr: &Expr, proto_reg: u32| {
            matches!(expr, Expr::Dnat { family: f, addr_reg: R1, proto_reg: p, .. }
                if *f == nfproto(family) && *p == proto_reg)
        };
        let [first, second, rest @ ..] = tail else {
            return None;
        };
        let field = addr_load(first, R1)?;
        let map = lookup(second, R1)?;
        match rest {
            [next, ..] if dnat(next, map_port_register(family)) => Some((
                Stmt::DnatFromMap {
                    proto,
                    field,
                    map,
                    port_map: None,
                },
                3,
            )),
            [load, port_lookup, next, ..]
                if addr_load(load, reg::REG_2) == Some(field) && dnat(next, reg::REG_2) =>
            {
                let port_map = lookup(port_lookup, reg::REG_2)?;
                Some((
                    Stmt::DnatFromMap {
                        proto,
                        field,
                        map,
                        port_map: Some(port_map),
                    },
                    5,
                ))
            }
            _ => None,
        }
    }

    /// `meta l4proto P` followed by `immediate reg 1 ADDR; immediate reg 2 PORT; nat dnat`.
    fn dnat(&self, proto: L4Proto, tail: &[Expr]) -> Option<Result<Stmt>> {
        match tail {
            [
                Expr::Immediate {
                    dreg: reg::REG_1,
                    data: Data::Value(addr),
                },
                Expr::Immediate {
                    dreg: reg::REG_2,
                    data: Data::Value(port),
                },
                Expr::Dnat {
                    family,
                    addr_reg: reg::REG_1,
                    proto_reg: reg::REG_2,
                    flags,
                },
                ..,
            ] if *family == nfproto(self.family) && flags & ex::nat::F_PROTO_SPECIFIED != 0 => {
                let port = u16::from_be_bytes(port.as_slice().try_into().ok()?);
                Some(layout::addr_from_bytes(addr).map(|addr| Stmt::Dnat { proto, addr, port }))
            }
            _ => None,
        }
    }

    /// One or more key loads into nft's concatenation registers, then a verdict-map
    /// lookup, or a data-map lookup into reg 1 and a `nat dnat` from it; or two or
    /// more, then a set lookup (a single address followed by a set lookup is
    /// `Stmt::AddrInSet`, decoded elsewhere).
    fn vmap(&self, exprs: &[Expr]) -> Step {
        let mut key = Vec::new();
        let mut types = Vec::new();
        for (i, expr) in exprs.iter().enumerate() {
            if let Expr::Lookup {
                sreg: R1,
                set,
                dreg,
                invert,
                ..
            } = expr
            {
                // Only a plain set lookup can be inverted (`!=`).
                if *invert && dreg.is_some() {
                    return None;
                }
                let stmt = match dreg {
                    Some(reg::VERDICT) if !key.is_empty() => Stmt::Vmap {
                        key,
                        map: set.clone(),
                    },
                    Some(R1) if !key.is_empty() => {
                        // The flags are the kernel's (it reports the ones it derived).
                        let Some(Expr::Dnat {
                            family,
                            addr_reg: R1,
                            proto_reg,
                            ..
                        }) = exprs.get(i + 1)
                        else {
                            return None;
                        };
                        if *family != nfproto(self.family)
                            || *proto_reg != map_port_register(self.family)
                        {
                            return None;
                        }
                        return Some(Ok((
                            Stmt::DnatMap {
                                key,
                                map: set.clone(),
                            },
                            i + 2,
                        )));
                    }
                    None if key.len() >= 2 => Stmt::KeyInSet {
                        key,
                        op: if *invert { IrCmpOp::Ne } else { IrCmpOp::Eq },
                        set: set.clone(),
                    },
                    _ => return None,
                };
                return Some(Ok((stmt, i + 1)));
            }
            let (k, dreg) = self.key_load(expr)?;
            types.push(key_expr_type(self.family, k));
            if layout::concat_registers(&types).last() != Some(&dreg) {
                return None;
            }
            key.push(k);
        }
        None
    }

    fn key_load(&self, expr: &Expr) -> Option<(KeyExpr, u32)> {
        match expr {
            Expr::Payload {
                base: PayloadBase::Network,
                offset,
                len,
                dreg,
            } if *len == addr_len(self.family) => {
                Some((KeyExpr::Addr(addr_field_at(self.family, *offset)?), *dreg))
            }
            Expr::Payload {
                base: PayloadBase::Transport,
                offset: 2,
                len: 2,
                dreg,
            } => Some((KeyExpr::ThDport, *dreg)),
            Expr::MetaLoad {
                key: MetaKey::L4Proto,
                dreg,
            } => Some((KeyExpr::L4Proto, *dreg)),
            Expr::NumgenRandom { dreg, modulus } => {
                Some((KeyExpr::Numgen { modulus: *modulus }, *dreg))
            }
            Expr::CtLoad {
                key: CtKey::OriginalProtoDst,
                dreg,
            } => Some((KeyExpr::CtOriginalProtoDst, *dreg)),
            Expr::CtLoad { key, dreg } => [AddrField::Saddr, AddrField::Daddr]
                .into_iter()
                .find(|f| ct_original_addr_key(self.family, *f) == *key)
                .map(|f| (KeyExpr::CtOriginalAddr(f), *dreg)),
            _ => None,
        }
    }
}

/// `payload load 2b @ transport header + 2 => reg 1; cmp eq reg 1 PORT`
fn dport_match(exprs: &[Expr]) -> Option<u16> {
    match exprs {
        [
            Expr::Payload {
                base: PayloadBase::Transport,
                offset: 2,
                len: 2,
                dreg: R1,
            },
            Expr::Cmp {
                sreg: R1,
                op: CmpOp::Eq,
                data,
            },
            ..,
        ] => Some(u16::from_be_bytes(data.as_slice().try_into().ok()?)),
        _ => None,
    }
}

fn addr_stmt(field: AddrField, op: CmpOp, value: IpNet) -> Stmt {
    Stmt::Addr {
        field,
        op: match op {
            CmpOp::Eq => IrCmpOp::Eq,
            CmpOp::Neq => IrCmpOp::Ne,
        },
        value,
    }
}

fn addr_from(bytes: Vec<u8>, prefix: u32) -> Result<IpNet> {
    let addr = layout::addr_from_bytes(&bytes)?;
    let net = IpNet::new(addr, prefix as u8).map_err(|e| Error::decode(e.to_string()))?;
    if net.network() != addr {
        return Err(Error::decode(format!(
            "address match {addr}/{prefix} has host bits set"
        )));
    }
    Ok(net)
}

/// The prefix length of a contiguous netmask.
fn mask_prefix(mask: &[u8]) -> Option<u32> {
    let ones: u32 = mask.iter().map(|b| b.count_ones()).sum();
    let expected: Vec<u8> = (0..mask.len() as u32)
        .map(|i| {
            let bits = ones.saturating_sub(i * 8).min(8);
            (0xff00u16 >> bits) as u8
        })
        .collect();
    (expected == mask).then_some(ones)
}
