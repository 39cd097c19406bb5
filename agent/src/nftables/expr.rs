//! nf_tables expressions: the bytecode a rule is made of, typed.
//!
//! Each variant is one kernel expression (`payload`, `meta`, `cmp`, ...) restricted to
//! the attributes svcproxy uses, with an encoder to the netlink attribute list and a
//! decoder back. Registers are raw netlink register numbers (see [`super::layout`]).
//! Which sequences of expressions make up an IR statement is [`super::rule`]'s business.

use svcproxy_compiler::nft::ir::Verdict;

use super::attr::{AttrBuf, Attrs};
use super::error::{Error, Result};
use super::uapi::{data, expr as ex, list};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PayloadBase {
    Network,
    Transport,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetaKey {
    Mark,
    L4Proto,
}

/// What a `ct` expression loads: the connection's state or status bits, or a field
/// of the tuple of its original direction (the destination as the client sent it,
/// before any DNAT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CtKey {
    State,
    Status,
    OriginalSrcIp,
    OriginalDstIp,
    OriginalSrcIp6,
    OriginalDstIp6,
    OriginalProtoDst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Neq,
}

/// The data an `immediate` loads: raw bytes into a data register, or a verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Data {
    Value(Vec<u8>),
    Verdict(Verdict),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expr {
    /// `[ payload load LENb @ BASE header + OFFSET => reg DREG ]`
    Payload {
        base: PayloadBase,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    /// `[ meta load KEY => reg DREG ]`
    MetaLoad { key: MetaKey, dreg: u32 },
    /// `[ meta set KEY with reg SREG ]`
    MetaSet { key: MetaKey, sreg: u32 },
    /// `[ cmp OP reg SREG DATA ]`
    Cmp { sreg: u32, op: CmpOp, data: Vec<u8> },
    /// `[ bitwise reg DREG = ( reg SREG & MASK ) ^ XOR ]`
    Bitwise {
        sreg: u32,
        dreg: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    /// `[ lookup reg SREG set SET [dreg DREG] [0x1] ]`; `dreg` is set for maps.
    Lookup {
        sreg: u32,
        set: String,
        set_id: Option<u32>,
        dreg: Option<u32>,
        invert: bool,
    },
    /// `[ immediate reg DREG DATA ]`
    Immediate { dreg: u32, data: Data },
    /// `[ numgen reg DREG = random mod MODULUS ]`
    NumgenRandom { dreg: u32, modulus: u32 },
    /// `[ nat dnat FAMILY addr_min reg A proto_min reg P flags F ]`. `flags` 0 sends no
    /// flags attribute (nft sends none when the address comes from a map; the kernel
    /// then derives them from the registers given and reports those).
    Dnat {
        family: u8,
        addr_reg: u32,
        proto_reg: u32,
        flags: u32,
    },
    /// `[ masq flags F ]`
    Masq { flags: u32 },
    /// `[ reject type T code C ]`
    Reject { kind: u32, code: u8 },
    /// `[ ct load KEY => reg DREG ]`, with `, dir original` for the tuple fields.
    CtLoad { key: CtKey, dreg: u32 },
    /// `[ fib saddr|daddr type => reg DREG ]`
    FibAddrType { flags: u32, dreg: u32 },
    /// `[ dynset update reg_key SREG set SET [sreg_data DATA] ]`: `sreg_data` for maps.
    DynsetUpdate {
        sreg_key: u32,
        sreg_data: Option<u32>,
        set: String,
        set_id: Option<u32>,
    },
}

impl Expr {
    /// The kernel's name for the expression type (`NFTA_EXPR_NAME`).
    pub fn name(&self) -> &'static str {
        match self {
            Expr::Payload { .. } => "payload",
            Expr::MetaLoad { .. } | Expr::MetaSet { .. } => "meta",
            Expr::Cmp { .. } => "cmp",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Lookup { .. } => "lookup",
            Expr::Immediate { .. } => "immediate",
            Expr::NumgenRandom { .. } => "numgen",
            Expr::Dnat { .. } => "nat",
            Expr::Masq { .. } => "masq",
            Expr::Reject { .. } => "reject",
            Expr::CtLoad { .. } => "ct",
            Expr::FibAddrType { .. } => "fib",
            Expr::DynsetUpdate { .. } => "dynset",
        }
    }

    /// Writes the `NFTA_LIST_ELEM` nest for this expression inside
    /// `NFTA_RULE_EXPRESSIONS`. Attribute order follows libnftnl, so a byte dump
    /// compares equal to nft's.
    pub fn encode(&self, w: &mut AttrBuf) {
        w.nest(list::ELEM, |w| {
            w.str(list::EXPR_NAME, self.name());
            w.nest(list::EXPR_DATA, |w| self.encode_data(w));
        });
    }

    fn encode_data(&self, w: &mut AttrBuf) {
        match self {
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                w.u32(ex::payload::DREG, *dreg);
                w.u32(ex::payload::BASE, base.code());
                w.u32(ex::payload::OFFSET, *offset);
                w.u32(ex::payload::LEN, *len);
            }
            Expr::MetaLoad { key, dreg } => {
                w.u32(ex::meta::KEY, key.code());
                w.u32(ex::meta::DREG, *dreg);
            }
            Expr::MetaSet { key, sreg } => {
                w.u32(ex::meta::KEY, key.code());
                w.u32(ex::meta::SREG, *sreg);
            }
            Expr::Cmp { sreg, op, data } => {
                w.u32(ex::cmp::SREG, *sreg);
                w.u32(ex::cmp::OP, op.code());
                write_value(w, ex::cmp::DATA, data);
            }
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => {
                w.u32(ex::bitwise::SREG, *sreg);
                w.u32(ex::bitwise::DREG, *dreg);
                w.u32(ex::bitwise::OP, ex::bitwise::OP_MASK_XOR);
                w.u32(ex::bitwise::LEN, mask.len() as u32);
                write_value(w, ex::bitwise::MASK, mask);
                write_value(w, ex::bitwise::XOR, xor);
            }
            Expr::Lookup {
                sreg,
                set,
                set_id,
                dreg,
                invert,
            } => {
                w.u32(ex::lookup::SREG, *sreg);
                w.str(ex::lookup::SET, set);
                if let Some(id) = set_id {
                    w.u32(ex::lookup::SET_ID, *id);
                }
                if let Some(dreg) = dreg {
                    w.u32(ex::lookup::DREG, *dreg);
                }
                if *invert {
                    w.u32(ex::lookup::FLAGS, ex::lookup::F_INV);
                }
            }
            Expr::Immediate { dreg, data } => {
                w.u32(ex::immediate::DREG, *dreg);
                match data {
                    Data::Value(bytes) => write_value(w, ex::immediate::DATA, bytes),
                    Data::Verdict(verdict) => {
                        w.nest(ex::immediate::DATA, |w| write_verdict(w, verdict))
                    }
                }
            }
            Expr::NumgenRandom { dreg, modulus } => {
                w.u32(ex::numgen::DREG, *dreg);
                w.u32(ex::numgen::MODULUS, *modulus);
                w.u32(ex::numgen::TYPE, ex::numgen::TYPE_RANDOM);
                w.u32(ex::numgen::OFFSET, 0);
            }
            Expr::Dnat {
                family,
                addr_reg,
                proto_reg,
                flags,
            } => {
                w.u32(ex::nat::TYPE, ex::nat::TYPE_DNAT);
                w.u32(ex::nat::FAMILY, u32::from(*family));
                w.u32(ex::nat::REG_ADDR_MIN, *addr_reg);
                w.u32(ex::nat::REG_PROTO_MIN, *proto_reg);
                if *flags != 0 {
                    w.u32(ex::nat::FLAGS, *flags);
                }
            }
            Expr::Masq { flags } => w.u32(ex::masq::FLAGS, *flags),
            Expr::Reject { kind, code } => {
                w.u32(ex::reject::TYPE, *kind);
                w.bytes(ex::reject::ICMP_CODE, &[*code]);
            }
            Expr::CtLoad { key, dreg } => {
                w.u32(ex::ct::KEY, key.code());
                w.u32(ex::ct::DREG, *dreg);
                if key.original() {
                    w.bytes(ex::ct::DIRECTION, &[ex::ct::DIR_ORIGINAL]);
                }
            }
            Expr::FibAddrType { flags, dreg } => {
                w.u32(ex::fib::FLAGS, *flags);
                w.u32(ex::fib::RESULT, ex::fib::RESULT_ADDRTYPE);
                w.u32(ex::fib::DREG, *dreg);
            }
            Expr::DynsetUpdate {
                sreg_key,
                sreg_data,
                set,
                set_id,
            } => {
                w.u32(ex::dynset::SREG_KEY, *sreg_key);
                if let Some(sreg_data) = sreg_data {
                    w.u32(ex::dynset::SREG_DATA, *sreg_data);
                }
                w.u32(ex::dynset::OP, ex::dynset::OP_UPDATE);
                w.str(ex::dynset::SET_NAME, set);
                if let Some(id) = set_id {
                    w.u32(ex::dynset::SET_ID, *id);
                }
            }
        }
    }

    /// Decodes one `NFTA_LIST_ELEM` of a rule's expression list.
    pub fn from_attrs(elem: &Attrs<'_>) -> Result<Expr> {
        let name = elem.need_string(list::EXPR_NAME, "expression name")?;
        let a = elem.nested(list::EXPR_DATA)?.unwrap_or_default();
        let what = |field: &str| format!("{name} {field}");
        let expr = match name.as_str() {
            "payload" => Expr::Payload {
                dreg: a.need_u32(ex::payload::DREG, &what("dreg"))?,
                base: PayloadBase::from_code(a.need_u32(ex::payload::BASE, &what("base"))?)?,
                offset: a.need_u32(ex::payload::OFFSET, &what("offset"))?,
                len: a.need_u32(ex::payload::LEN, &what("len"))?,
            },
            "meta" => {
                let key = MetaKey::from_code(a.need_u32(ex::meta::KEY, &what("key"))?)?;
                match (a.u32(ex::meta::DREG)?, a.u32(ex::meta::SREG)?) {
                    (Some(dreg), None) => Expr::MetaLoad { key, dreg },
                    (None, Some(sreg)) => Expr::MetaSet { key, sreg },
                    _ => return Err(Error::decode("meta with neither or both of dreg and sreg")),
                }
            }
            "cmp" => Expr::Cmp {
                sreg: a.need_u32(ex::cmp::SREG, &what("sreg"))?,
                op: CmpOp::from_code(a.need_u32(ex::cmp::OP, &what("op"))?)?,
                data: parse_value(&a.need_nested(ex::cmp::DATA, &what("data"))?)?,
            },
            "bitwise" => {
                let op = a.u32(ex::bitwise::OP)?.unwrap_or(ex::bitwise::OP_MASK_XOR);
                if op != ex::bitwise::OP_MASK_XOR {
                    return Err(Error::decode(format!(
                        "bitwise operation {op} (only mask-xor is used)"
                    )));
                }
                Expr::Bitwise {
                    sreg: a.need_u32(ex::bitwise::SREG, &what("sreg"))?,
                    dreg: a.need_u32(ex::bitwise::DREG, &what("dreg"))?,
                    mask: parse_value(&a.need_nested(ex::bitwise::MASK, &what("mask"))?)?,
                    xor: parse_value(&a.need_nested(ex::bitwise::XOR, &what("xor"))?)?,
                }
            }
            "lookup" => Expr::Lookup {
                sreg: a.need_u32(ex::lookup::SREG, &what("sreg"))?,
                set: a.need_string(ex::lookup::SET, &what("set"))?,
                set_id: a.u32(ex::lookup::SET_ID)?,
                dreg: a.u32(ex::lookup::DREG)?,
                invert: a.u32(ex::lookup::FLAGS)?.unwrap_or(0) & ex::lookup::F_INV != 0,
            },
            "immediate" => Expr::Immediate {
                dreg: a.need_u32(ex::immediate::DREG, &what("dreg"))?,
                data: parse_data(&a.need_nested(ex::immediate::DATA, &what("data"))?)?,
            },
            "numgen" => {
                let kind = a.need_u32(ex::numgen::TYPE, &what("type"))?;
                let offset = a.u32(ex::numgen::OFFSET)?.unwrap_or(0);
                if kind != ex::numgen::TYPE_RANDOM || offset != 0 {
                    return Err(Error::decode(format!("numgen type {kind} offset {offset}")));
                }
                Expr::NumgenRandom {
                    dreg: a.need_u32(ex::numgen::DREG, &what("dreg"))?,
                    modulus: a.need_u32(ex::numgen::MODULUS, &what("modulus"))?,
                }
            }
            "nat" => {
                let kind = a.need_u32(ex::nat::TYPE, &what("type"))?;
                if kind != ex::nat::TYPE_DNAT {
                    return Err(Error::decode(format!(
                        "nat type {kind} (only dnat is used)"
                    )));
                }
                let family = a.need_u32(ex::nat::FAMILY, &what("family"))?;
                Expr::Dnat {
                    family: u8::try_from(family)
                        .map_err(|_| Error::decode(format!("nat family {family}")))?,
                    addr_reg: a.need_u32(ex::nat::REG_ADDR_MIN, &what("addr_min"))?,
                    proto_reg: a.need_u32(ex::nat::REG_PROTO_MIN, &what("proto_min"))?,
                    flags: a.u32(ex::nat::FLAGS)?.unwrap_or(0),
                }
            }
            "masq" => Expr::Masq {
                flags: a.u32(ex::masq::FLAGS)?.unwrap_or(0),
            },
            "reject" => Expr::Reject {
                kind: a.need_u32(ex::reject::TYPE, &what("type"))?,
                code: match a.get(ex::reject::ICMP_CODE) {
                    Some([code]) => *code,
                    _ => return Err(Error::missing("reject icmp code")),
                },
            },
            "ct" => {
                let key = CtKey::from_code(a.need_u32(ex::ct::KEY, &what("key"))?)?;
                // The kernel reports the direction of the tuple fields (always) and of
                // no other key svcproxy uses.
                let direction = a.get(ex::ct::DIRECTION);
                let expected: Option<&[u8]> = key.original().then_some(&[ex::ct::DIR_ORIGINAL]);
                if direction != expected {
                    return Err(Error::decode(format!(
                        "ct {key:?} with direction {direction:?} (svcproxy reads the tuple fields of the original direction only)"
                    )));
                }
                Expr::CtLoad {
                    key,
                    dreg: a.need_u32(ex::ct::DREG, &what("dreg"))?,
                }
            }
            "fib" => {
                let result = a.need_u32(ex::fib::RESULT, &what("result"))?;
                if result != ex::fib::RESULT_ADDRTYPE {
                    return Err(Error::decode(format!(
                        "fib result {result} (only type is used)"
                    )));
                }
                Expr::FibAddrType {
                    flags: a.need_u32(ex::fib::FLAGS, &what("flags"))?,
                    dreg: a.need_u32(ex::fib::DREG, &what("dreg"))?,
                }
            }
            "dynset" => {
                let op = a.need_u32(ex::dynset::OP, &what("op"))?;
                // The kernel reports a zero timeout for "use the set's default".
                let timeout = a.u64(ex::dynset::TIMEOUT)?.unwrap_or(0);
                if op != ex::dynset::OP_UPDATE || timeout != 0 {
                    return Err(Error::decode(format!(
                        "dynset op {op} timeout {timeout} (only update with the set's timeout is used)"
                    )));
                }
                Expr::DynsetUpdate {
                    sreg_key: a.need_u32(ex::dynset::SREG_KEY, &what("sreg_key"))?,
                    sreg_data: a.u32(ex::dynset::SREG_DATA)?,
                    set: a.need_string(ex::dynset::SET_NAME, &what("set"))?,
                    set_id: a.u32(ex::dynset::SET_ID)?,
                }
            }
            other => {
                return Err(Error::decode(format!(
                    "expression type {other:?} is not one svcproxy emits"
                )));
            }
        };
        Ok(expr)
    }
}

impl PayloadBase {
    fn code(self) -> u32 {
        match self {
            PayloadBase::Network => ex::payload::BASE_NETWORK,
            PayloadBase::Transport => ex::payload::BASE_TRANSPORT,
        }
    }

    fn from_code(code: u32) -> Result<PayloadBase> {
        match code {
            ex::payload::BASE_NETWORK => Ok(PayloadBase::Network),
            ex::payload::BASE_TRANSPORT => Ok(PayloadBase::Transport),
            other => Err(Error::decode(format!("payload base {other}"))),
        }
    }
}

impl MetaKey {
    fn code(self) -> u32 {
        match self {
            MetaKey::Mark => ex::meta::KEY_MARK,
            MetaKey::L4Proto => ex::meta::KEY_L4PROTO,
        }
    }

    fn from_code(code: u32) -> Result<MetaKey> {
        match code {
            ex::meta::KEY_MARK => Ok(MetaKey::Mark),
            ex::meta::KEY_L4PROTO => Ok(MetaKey::L4Proto),
            other => Err(Error::decode(format!("meta key {other}"))),
        }
    }
}

impl CtKey {
    /// `enum nft_ct_keys`.
    pub(crate) fn code(self) -> u32 {
        match self {
            CtKey::State => ex::ct::KEY_STATE,
            CtKey::Status => ex::ct::KEY_STATUS,
            CtKey::OriginalSrcIp => ex::ct::KEY_SRC_IP,
            CtKey::OriginalDstIp => ex::ct::KEY_DST_IP,
            CtKey::OriginalSrcIp6 => ex::ct::KEY_SRC_IP6,
            CtKey::OriginalDstIp6 => ex::ct::KEY_DST_IP6,
            CtKey::OriginalProtoDst => ex::ct::KEY_PROTO_DST,
        }
    }

    fn from_code(code: u32) -> Result<CtKey> {
        [
            CtKey::State,
            CtKey::Status,
            CtKey::OriginalSrcIp,
            CtKey::OriginalDstIp,
            CtKey::OriginalSrcIp6,
            CtKey::OriginalDstIp6,
            CtKey::OriginalProtoDst,
        ]
        .into_iter()
        .find(|k| k.code() == code)
        .ok_or_else(|| Error::decode(format!("ct key {code}")))
    }

    /// A field of the original direction's tuple: the kernel needs (and reports) the
    /// direction.
    fn original(self) -> bool {
        !matches!(self, CtKey::State | CtKey::Status)
    }
}

impl CmpOp {
    fn code(self) -> u32 {
        match self {
            CmpOp::Eq => ex::cmp::OP_EQ,
            CmpOp::Neq => ex::cmp::OP_NEQ,
        }
    }

    fn from_code(code: u32) -> Result<CmpOp> {
        match code {
            ex::cmp::OP_EQ => Ok(CmpOp::Eq),
            ex::cmp::OP_NEQ => Ok(CmpOp::Neq),
            other => Err(Error::decode(format!("cmp operator {other}"))),
        }
    }
}

/// `KIND { NFTA_DATA_VALUE bytes }`
pub(crate) fn write_value(w: &mut AttrBuf, kind: u16, bytes: &[u8]) {
    w.nest(kind, |w| w.bytes(data::VALUE, bytes));
}

/// `NFTA_DATA_VERDICT { NFTA_VERDICT_CODE, [NFTA_VERDICT_CHAIN] }`
pub(crate) fn write_verdict(w: &mut AttrBuf, verdict: &Verdict) {
    let (code, chain) = match verdict {
        Verdict::Accept => (data::NF_ACCEPT, None),
        Verdict::Drop => (data::NF_DROP, None),
        Verdict::Return => (data::NFT_RETURN, None),
        Verdict::Jump(chain) => (data::NFT_JUMP, Some(chain)),
        Verdict::Goto(chain) => (data::NFT_GOTO, Some(chain)),
    };
    w.nest(data::VERDICT, |w| {
        w.u32(data::VERDICT_CODE, code);
        if let Some(chain) = chain {
            w.str(data::VERDICT_CHAIN, chain);
        }
    });
}

/// Decodes the content of an `NFTA_DATA_*` nest that must hold a value.
pub(crate) fn parse_value(nest: &Attrs<'_>) -> Result<Vec<u8>> {
    match parse_data(nest)? {
        Data::Value(bytes) => Ok(bytes),
        Data::Verdict(v) => Err(Error::decode(format!(
            "expected a value, got verdict {v:?}"
        ))),
    }
}

/// Decodes the content of an `NFTA_DATA_*` nest.
pub(crate) fn parse_data(nest: &Attrs<'_>) -> Result<Data> {
    if let Some(value) = nest.get(data::VALUE) {
        return Ok(Data::Value(value.to_vec()));
    }
    let verdict = nest.need_nested(data::VERDICT, "data value or verdict")?;
    let code = verdict.need_u32(data::VERDICT_CODE, "verdict code")?;
    let chain = || verdict.need_string(data::VERDICT_CHAIN, "verdict chain");
    let verdict = match code {
        data::NF_ACCEPT => Verdict::Accept,
        data::NF_DROP => Verdict::Drop,
        data::NFT_RETURN => Verdict::Return,
        data::NFT_JUMP => Verdict::Jump(chain()?),
        data::NFT_GOTO => Verdict::Goto(chain()?),
        other => return Err(Error::decode(format!("verdict code {:#x}", other))),
    };
    Ok(Data::Verdict(verdict))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(expr: Expr) {
        let mut w = AttrBuf::new();
        expr.encode(&mut w);
        let outer = Attrs::parse(w.as_bytes()).unwrap();
        let elem = outer.need_nested(list::ELEM, "elem").unwrap();
        assert_eq!(Expr::from_attrs(&elem).unwrap(), expr);
    }

    #[test]
    fn every_expression_round_trips() {
        let exprs = [
            Expr::Payload {
                base: PayloadBase::Network,
                offset: 16,
                len: 4,
                dreg: 1,
            },
            Expr::MetaLoad {
                key: MetaKey::L4Proto,
                dreg: 9,
            },
            Expr::MetaSet {
                key: MetaKey::Mark,
                sreg: 1,
            },
            Expr::Cmp {
                sreg: 1,
                op: CmpOp::Neq,
                data: vec![6],
            },
            Expr::Bitwise {
                sreg: 1,
                dreg: 1,
                mask: vec![0, 0x40, 0, 0],
                xor: vec![0; 4],
            },
            Expr::Lookup {
                sreg: 1,
                set: "svc-ips".into(),
                set_id: Some(3),
                dreg: Some(0),
                invert: false,
            },
            Expr::Lookup {
                sreg: 1,
                set: "cluster-ips".into(),
                set_id: None,
                dreg: None,
                invert: true,
            },
            Expr::Immediate {
                dreg: 0,
                data: Data::Verdict(Verdict::Goto("svc-x".into())),
            },
            Expr::Immediate {
                dreg: 2,
                data: Data::Value(vec![0, 80]),
            },
            Expr::NumgenRandom {
                dreg: 1,
                modulus: 3,
            },
            Expr::Dnat {
                family: 10,
                addr_reg: 1,
                proto_reg: 2,
                flags: 2,
            },
            Expr::Masq { flags: 0x10 },
            Expr::Reject { kind: 0, code: 3 },
            Expr::CtLoad {
                key: CtKey::State,
                dreg: 1,
            },
            Expr::CtLoad {
                key: CtKey::Status,
                dreg: 1,
            },
            Expr::CtLoad {
                key: CtKey::OriginalDstIp6,
                dreg: 2,
            },
            Expr::CtLoad {
                key: CtKey::OriginalProtoDst,
                dreg: 10,
            },
            Expr::FibAddrType { flags: 2, dreg: 1 },
            Expr::DynsetUpdate {
                sreg_key: 1,
                sreg_data: None,
                set: "affinity".into(),
                set_id: None,
            },
            Expr::DynsetUpdate {
                sreg_key: 1,
                sreg_data: Some(2),
                set: "affinity".into(),
                set_id: Some(4),
            },
            // From a map: nft sends no flags.
            Expr::Dnat {
                family: 2,
                addr_reg: 1,
                proto_reg: 9,
                flags: 0,
            },
        ];
        for expr in exprs {
            round_trip(expr);
        }
    }

    /// The tuple fields carry the direction (nft sends it, the kernel requires and
    /// reports it); state and status carry none. Anything else is not svcproxy's.
    #[test]
    fn ct_loads_carry_the_direction_of_tuple_fields_only() {
        let ct = |key: u32, dir: Option<u8>| {
            let mut w = AttrBuf::new();
            w.nest(list::ELEM, |w| {
                w.str(list::EXPR_NAME, "ct");
                w.nest(list::EXPR_DATA, |w| {
                    w.u32(ex::ct::KEY, key);
                    w.u32(ex::ct::DREG, 1);
                    if let Some(dir) = dir {
                        w.bytes(ex::ct::DIRECTION, &[dir]);
                    }
                });
            });
            w.into_bytes()
        };
        let decode = |bytes: Vec<u8>| {
            let outer = Attrs::parse(&bytes).unwrap();
            Expr::from_attrs(&outer.need_nested(list::ELEM, "elem").unwrap())
        };
        assert_eq!(
            decode(ct(ex::ct::KEY_DST_IP, Some(0))).unwrap(),
            Expr::CtLoad {
                key: CtKey::OriginalDstIp,
                dreg: 1
            }
        );
        // Reply direction, no direction, a direction where none belongs, a key
        // svcproxy does not use.
        assert!(decode(ct(ex::ct::KEY_DST_IP, Some(1))).is_err());
        assert!(decode(ct(ex::ct::KEY_PROTO_DST, None)).is_err());
        assert!(decode(ct(ex::ct::KEY_STATUS, Some(0))).is_err());
        assert!(decode(ct(3, None)).is_err());
    }

    #[test]
    fn verdict_codes_match_the_kernel() {
        let mut w = AttrBuf::new();
        write_verdict(&mut w, &Verdict::Jump("services".into()));
        let buf = w.as_bytes();
        // NFTA_DATA_VERDICT { NFTA_VERDICT_CODE = NFT_JUMP (-3), NFTA_VERDICT_CHAIN }
        assert_eq!(&buf[4..12], &[8, 0, 1, 0, 0xff, 0xff, 0xff, 0xfd]);
    }
}
