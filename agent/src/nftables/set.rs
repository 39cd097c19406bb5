//! Sets and maps: their `NEWSET` attributes, and their description in a dump.

use svcproxy_compiler::nft::ir::{
    AddrField, Element, Family, KeyExpr, KeyType, MapData, Set, SetExprs, SetFlags,
};

use super::attr::{Attr, Attrs};
use super::error::{Error, Result};
use super::layout;
use super::uapi::{data, expr as ex, set as st};
use super::udata;

/// Name template of an anonymous set; the kernel replaces `%d`.
pub(crate) const ANON_SET_NAME: &str = "__set%d";

/// Which kind of set a `NEWSET` creates: a named IR set, or the anonymous set behind a
/// rule's list (for which nft records the key expression in userdata).
#[derive(Debug, Clone, Copy)]
pub(crate) enum SetKind {
    /// A set of a table of `family` (which names the fields of its `typeof`, if any).
    Named { family: Family },
    /// `ip saddr { ... }`, `meta l4proto { tcp, udp }`: an anonymous constant set of
    /// the values of `key` (an interval set if any of them is a prefix).
    Anon {
        family: Family,
        key: KeyExpr,
        elements: u32,
    },
}

impl SetKind {
    fn family(self) -> Family {
        match self {
            SetKind::Named { family } | SetKind::Anon { family, .. } => family,
        }
    }
}

/// The attributes of `NEWSET` for `set` in `table`.
pub(crate) fn set_attrs(table: &str, set: &Set, id: u32, kind: SetKind) -> Result<Vec<Attr>> {
    if set.key.is_empty() {
        return Err(Error::encode(format!("set {}: empty key", set.name)));
    }
    if let Some(exprs) = &set.exprs {
        check_exprs(kind.family(), set, exprs)?;
    }
    let concat = set.key.len() > 1;
    let mut flags = 0;
    if set.data.is_some() {
        flags |= st::F_MAP;
    }
    if set.flags.interval {
        flags |= st::F_INTERVAL;
        if concat {
            flags |= st::F_CONCAT;
        }
    }
    if set.flags.timeout {
        flags |= st::F_TIMEOUT;
    }
    if set.flags.dynamic {
        flags |= st::F_EVAL;
    }
    if let SetKind::Anon { .. } = kind {
        flags |= st::F_ANONYMOUS | st::F_CONSTANT;
    }

    let mut attrs = vec![
        Attr::str(st::TABLE, table),
        Attr::str(st::NAME, &set.name),
        Attr::u32(st::FLAGS, flags),
        Attr::u32(st::KEY_TYPE, layout::key_type_id(&set.key)),
        Attr::u32(st::KEY_LEN, layout::key_len(&set.key) as u32),
    ];
    match &set.data {
        Some(MapData::Verdict) => {
            attrs.push(Attr::u32(st::DATA_TYPE, data::TYPE_VERDICT));
            attrs.push(Attr::u32(st::DATA_LEN, 0));
        }
        // Data types are encoded like key types (nft's type id, concatenations
        // folded; lengths padded per component when concatenated).
        Some(MapData::Value(types)) => {
            if types.is_empty() {
                return Err(Error::encode(format!("map {}: empty data type", set.name)));
            }
            attrs.push(Attr::u32(st::DATA_TYPE, layout::key_type_id(types)));
            attrs.push(Attr::u32(st::DATA_LEN, layout::key_len(types) as u32));
        }
        None => {}
    }
    attrs.push(Attr::u32(st::ID, id));
    if let Some(secs) = set.timeout_secs {
        if !set.flags.timeout {
            return Err(Error::encode(format!(
                "set {}: timeout without flags timeout",
                set.name
            )));
        }
        attrs.push(Attr::u64(st::TIMEOUT, u64::from(secs) * 1000));
    }
    match kind {
        SetKind::Anon { elements, .. } => {
            attrs.push(Attr::nested(
                st::DESC,
                vec![Attr::u32(st::DESC_SIZE, elements)],
            ));
        }
        // The kernel needs the field widths to pick the pipapo backend for concatenated
        // intervals; nft sends them only then.
        SetKind::Named { .. } if set.flags.interval && concat => {
            let fields = set
                .key
                .iter()
                .map(|k| {
                    Attr::nested(
                        1,
                        vec![Attr::u32(st::FIELD_LEN, layout::type_len(*k) as u32)],
                    )
                })
                .collect();
            attrs.push(Attr::nested(
                st::DESC,
                vec![Attr::nested(st::DESC_CONCAT, fields)],
            ));
        }
        SetKind::Named { .. } => {}
    }
    attrs.push(Attr::bytes(st::USERDATA, set_userdata(set, kind)?));
    Ok(attrs)
}

/// What nft writes into `NFTA_SET_USERDATA`; without it `nft list` cannot name the
/// types of a concatenated key and prints raw hex.
fn set_userdata(set: &Set, kind: SetKind) -> Result<Vec<u8>> {
    use udata::set as u;
    let mut w = udata::Writer::new();
    let key_byteorder = match kind {
        // An anonymous set's key is the expression's: `meta l4proto` is a host-order
        // byte, where the `inet_proto` type has no byte order.
        SetKind::Anon {
            key: KeyExpr::L4Proto,
            ..
        } => u::BYTEORDER_HOST_ENDIAN,
        _ => byteorder(&set.key),
    };
    w.put_u32(u::KEYBYTEORDER, key_byteorder)?;
    let data_byteorder = match &set.data {
        Some(MapData::Verdict) => Some(u::BYTEORDER_INVALID),
        Some(MapData::Value(types)) => Some(byteorder(types)),
        None => None,
    };
    if let Some(order) = data_byteorder {
        w.put_u32(u::DATABYTEORDER, order)?;
    }
    match (kind, &set.exprs) {
        (SetKind::Anon { family, key, .. }, _) => {
            // Only interval sets have elements for nft to merge.
            if set.flags.interval {
                w.put_u32(u::MERGE_ELEMENTS, 1)?;
            }
            w.nest(u::KEY_TYPEOF, |w| write_typeof_expr(w, family, key))?;
        }
        // `typeof ip daddr . numgen random mod 2`: nft records each expression.
        (SetKind::Named { family }, Some(exprs)) => {
            w.nest(u::KEY_TYPEOF, |w| write_typeof(w, family, &exprs.key))?;
        }
        (SetKind::Named { .. }, None) if set.key.len() > 1 => {
            // `type a . b`: nft records "a concatenation" with no sub-expressions.
            w.nest(u::KEY_TYPEOF, |w| {
                w.put_u32(u::TYPEOF_EXPR, u::EXPR_CONCAT)?;
                w.nest(u::TYPEOF_DATA, |_| Ok(()))?;
                Ok(())
            })?;
        }
        (SetKind::Named { .. }, None) => {}
    }
    match (&set.data, &set.exprs) {
        (Some(MapData::Value(_)), Some(exprs)) if !exprs.data.is_empty() => {
            let family = kind.family();
            w.nest(u::DATA_TYPEOF, |w| write_typeof(w, family, &exprs.data))?;
        }
        (Some(MapData::Value(types)), _) if types.len() > 1 => {
            // As for a concatenated key: "a concatenation", no sub-expressions.
            w.nest(u::DATA_TYPEOF, |w| {
                w.put_u32(u::TYPEOF_EXPR, u::EXPR_CONCAT)?;
                w.nest(u::TYPEOF_DATA, |_| Ok(()))?;
                Ok(())
            })?;
        }
        _ => {}
    }
    if set.data.is_some() {
        w.put_u32(u::DATA_INTERVAL, 0)?;
    }
    if let Some(comment) = &set.comment {
        udata::check_comment(comment)?;
        w.put_str(u::COMMENT, comment)?;
    }
    Ok(w.finish())
}

/// The byte order nft records for a key or data type: big endian for a single
/// address or port, host order for a single integer, none for a protocol, a
/// concatenation or verdicts.
fn byteorder(types: &[KeyType]) -> u32 {
    use udata::set as u;
    match types {
        [KeyType::Ipv4Addr | KeyType::Ipv6Addr | KeyType::InetService] => u::BYTEORDER_BIG_ENDIAN,
        [KeyType::Integer] => u::BYTEORDER_HOST_ENDIAN,
        _ => u::BYTEORDER_INVALID,
    }
}

/// A `typeof` must describe the key (and data) the set is declared with: the kernel
/// only sees the types, and `nft list` only the expressions.
fn check_exprs(family: Family, set: &Set, exprs: &SetExprs) -> Result<()> {
    let types = |exprs: &[KeyExpr]| -> Vec<KeyType> {
        exprs
            .iter()
            .map(|e| crate::nftables::rule::key_expr_type(family, *e))
            .collect()
    };
    if types(&exprs.key) != set.key {
        return Err(Error::encode(format!(
            "set {}: typeof key {:?} does not have the key's types",
            set.name, exprs.key
        )));
    }
    let data_ok = match &set.data {
        Some(MapData::Value(data)) => exprs.data.is_empty() || types(&exprs.data) == *data,
        _ => exprs.data.is_empty(),
    };
    if !data_ok {
        return Err(Error::encode(format!(
            "set {}: typeof data {:?} does not have the data's types",
            set.name, exprs.data
        )));
    }
    Ok(())
}

/// nft's record of a `typeof` declaration: one expression as it is, a concatenation
/// as `EXPR_CONCAT` with one nest per component, numbered from 0.
fn write_typeof(w: &mut udata::Writer, family: Family, exprs: &[KeyExpr]) -> Result<()> {
    use udata::set as u;
    match exprs {
        [] => Err(Error::encode("typeof without expressions")),
        [single] => write_typeof_expr(w, family, *single),
        _ => {
            w.put_u32(u::TYPEOF_EXPR, u::EXPR_CONCAT)?;
            w.nest(u::TYPEOF_DATA, |w| {
                for (i, expr) in exprs.iter().enumerate() {
                    let index = u8::try_from(i)
                        .map_err(|_| Error::encode("typeof with over 255 components"))?;
                    w.nest(index, |w| write_typeof_expr(w, family, *expr))?;
                }
                Ok(())
            })?;
            Ok(())
        }
    }
}

/// One expression of a `typeof`: its nft expression type and what nft's
/// `build_udata` of that type records (`src/payload.c`, `meta.c`, `numgen.c`, `ct.c`).
fn write_typeof_expr(w: &mut udata::Writer, family: Family, expr: KeyExpr) -> Result<()> {
    use udata::set as u;
    match expr {
        KeyExpr::Addr(field) => {
            let (desc, template) = payload_template(family, field);
            write_payload(w, desc, template)
        }
        KeyExpr::ThDport => write_payload(w, u::PROTO_DESC_TH, u::TH_DPORT),
        KeyExpr::L4Proto => {
            w.put_u32(u::TYPEOF_EXPR, u::EXPR_META)?;
            w.nest(u::TYPEOF_DATA, |w| {
                w.put_u32(u::META_KEY, u::META_L4PROTO)?;
                Ok(())
            })?;
            Ok(())
        }
        KeyExpr::Numgen { modulus } => {
            w.put_u32(u::TYPEOF_EXPR, u::EXPR_NUMGEN)?;
            w.nest(u::TYPEOF_DATA, |w| {
                w.put_u32(u::NUMGEN_TYPE, u::NUMGEN_RANDOM)?;
                w.put_u32(u::NUMGEN_MOD, modulus)?;
                w.put_u32(u::NUMGEN_OFFSET, 0)?;
                Ok(())
            })?;
            Ok(())
        }
        KeyExpr::CtOriginalAddr(field) => {
            w.put_u32(u::TYPEOF_EXPR, u::EXPR_CT)?;
            w.nest(u::TYPEOF_DATA, |w| {
                w.put_u32(u::CT_KEY, ct_addr_key(family, field))?;
                w.put_u32(u::CT_DIR, u32::from(ex::ct::DIR_ORIGINAL))?;
                Ok(())
            })?;
            Ok(())
        }
        // nft 1.0.6 types `ct original proto-dst` only from a protocol match in a rule:
        // in a `typeof` it declares the component with the invalid type (0) and then
        // refuses every element ("Can't parse symbolic invalid expressions").
        KeyExpr::CtOriginalProtoDst => Err(Error::encode(
            "typeof ct original proto-dst: nft 1.0.6 gives it no type and cannot add \
             elements to such a set; declare the set with `type ... inet_service`",
        )),
    }
}

/// The `enum nft_ct_keys` key of `ct original ip saddr` and friends.
fn ct_addr_key(family: Family, field: AddrField) -> u32 {
    crate::nftables::rule::ct_original_addr_key(family, field).code()
}

fn write_payload(w: &mut udata::Writer, desc: u32, template: u32) -> Result<()> {
    use udata::set as u;
    w.put_u32(u::TYPEOF_EXPR, u::EXPR_PAYLOAD)?;
    w.nest(u::TYPEOF_DATA, |w| {
        w.put_u32(u::PAYLOAD_DESC, desc)?;
        w.put_u32(u::PAYLOAD_TYPE, template)?;
        Ok(())
    })?;
    Ok(())
}

/// The expressions of a `typeof` record (`KEY_TYPEOF` or `DATA_TYPEOF`), or `None`
/// for the record of a `type a . b` declaration (a concatenation without components).
fn parse_typeof(family: Family, blob: &[u8]) -> Result<Option<Vec<KeyExpr>>> {
    use udata::set as u;
    let (expr, data) = expr_records(blob)?;
    if expr != u::EXPR_CONCAT {
        return parse_typeof_expr(family, expr, data).map(|e| Some(vec![e]));
    }
    let components = udata::parse(data)?;
    if components.is_empty() {
        return Ok(None);
    }
    components
        .into_iter()
        .enumerate()
        .map(|(i, (index, sub))| {
            if usize::from(index) != i {
                return Err(Error::decode(format!(
                    "typeof component {index} at position {i}"
                )));
            }
            let (expr, data) = expr_records(sub)?;
            parse_typeof_expr(family, expr, data)
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// The `TYPEOF_EXPR` and `TYPEOF_DATA` records of one expression.
fn expr_records(blob: &[u8]) -> Result<(u32, &[u8])> {
    use udata::set as u;
    let expr = udata::find(blob, u::TYPEOF_EXPR)?
        .ok_or_else(|| Error::decode("typeof record without an expression type"))?;
    let data = udata::find(blob, u::TYPEOF_DATA)?.unwrap_or_default();
    Ok((udata::parse_u32(expr)?, data))
}

fn parse_typeof_expr(family: Family, expr: u32, data: &[u8]) -> Result<KeyExpr> {
    use udata::set as u;
    let field = |kind: u8| -> Result<u32> {
        let value = udata::find(data, kind)?.ok_or_else(|| {
            Error::decode(format!("typeof expression {expr} without record {kind}"))
        })?;
        udata::parse_u32(value)
    };
    let key = match expr {
        u::EXPR_PAYLOAD => {
            let (desc, template) = (field(u::PAYLOAD_DESC)?, field(u::PAYLOAD_TYPE)?);
            if (desc, template) == (u::PROTO_DESC_TH, u::TH_DPORT) {
                Some(KeyExpr::ThDport)
            } else {
                [AddrField::Saddr, AddrField::Daddr]
                    .into_iter()
                    .find(|f| payload_template(family, *f) == (desc, template))
                    .map(KeyExpr::Addr)
            }
        }
        u::EXPR_META => (field(u::META_KEY)? == u::META_L4PROTO).then_some(KeyExpr::L4Proto),
        u::EXPR_CT => {
            let (key, dir) = (field(u::CT_KEY)?, field(u::CT_DIR)?);
            [AddrField::Saddr, AddrField::Daddr]
                .into_iter()
                .find(|f| dir == u32::from(ex::ct::DIR_ORIGINAL) && ct_addr_key(family, *f) == key)
                .map(KeyExpr::CtOriginalAddr)
        }
        u::EXPR_NUMGEN => {
            let random = field(u::NUMGEN_TYPE)? == u::NUMGEN_RANDOM;
            let offset = field(u::NUMGEN_OFFSET)?;
            let modulus = field(u::NUMGEN_MOD)?;
            (random && offset == 0).then_some(KeyExpr::Numgen { modulus })
        }
        _ => None,
    };
    key.ok_or_else(|| {
        Error::decode(format!(
            "typeof expression {expr} ({data:02x?}) is not one svcproxy writes"
        ))
    })
}

/// nft's `(enum proto_desc_id, header field template)` of `ip saddr` and friends.
fn payload_template(family: Family, field: AddrField) -> (u32, u32) {
    use AddrField::{Daddr, Saddr};
    match (family, field) {
        (Family::Ip, Saddr) => (12, 11),
        (Family::Ip, Daddr) => (12, 12),
        (Family::Ip6, Saddr) => (13, 8),
        (Family::Ip6, Daddr) => (13, 9),
    }
}

/// A set as the kernel describes it (`NEWSET` of a dump).
#[derive(Debug, Clone)]
pub(crate) struct SetInfo {
    pub name: String,
    pub flags: u32,
    pub key: Vec<KeyType>,
    pub data: Option<MapData>,
    pub timeout_ms: Option<u64>,
    pub comment: Option<String>,
    /// The `typeof` expressions nft would print, from the userdata.
    pub exprs: Option<SetExprs>,
}

impl SetInfo {
    /// The set a `NEWSET` of a dump describes, in a table of `family`.
    pub fn from_attrs(family: Family, a: &Attrs<'_>) -> Result<SetInfo> {
        let name = a.need_string(st::NAME, "set name")?;
        let key = layout::key_types_from_id(a.need_u32(st::KEY_TYPE, "set key type")?)?;
        let key_len = a.need_u32(st::KEY_LEN, "set key length")?;
        if key_len as usize != layout::key_len(&key) {
            return Err(Error::decode(format!(
                "set {name}: key length {key_len} for its key type"
            )));
        }
        let data = match a.u32(st::DATA_TYPE)? {
            None => None,
            Some(data::TYPE_VERDICT) => Some(MapData::Verdict),
            Some(id) => {
                let types = layout::key_types_from_id(id)
                    .map_err(|e| Error::decode(format!("set {name}: map data type: {e}")))?;
                let len = a.need_u32(st::DATA_LEN, "map data length")?;
                if len as usize != layout::key_len(&types) {
                    return Err(Error::decode(format!(
                        "set {name}: data length {len} for its data type"
                    )));
                }
                Some(MapData::Value(types))
            }
        };
        let blob = a.get(st::USERDATA).unwrap_or_default();
        let comment = udata::find_str(blob, udata::set::COMMENT)?;
        let exprs = set_exprs(family, blob, &key, data.as_ref())
            .map_err(|e| Error::decode(format!("set {name}: {e}")))?;
        Ok(SetInfo {
            name,
            flags: a.u32(st::FLAGS)?.unwrap_or(0),
            key,
            data,
            timeout_ms: a.u64(st::TIMEOUT)?,
            comment,
            exprs,
        })
    }

    pub fn anonymous(&self) -> bool {
        self.flags & st::F_ANONYMOUS != 0
    }

    /// Rules add elements from the packet path (`flags dynamic`).
    pub fn dynamic(&self) -> bool {
        self.flags & st::F_EVAL != 0
    }

    pub fn interval(&self) -> bool {
        self.flags & st::F_INTERVAL != 0
    }

    pub fn into_ir(self, elements: Vec<Element>) -> Set {
        let flags = SetFlags {
            interval: self.interval(),
            timeout: self.flags & st::F_TIMEOUT != 0,
            dynamic: self.dynamic(),
        };
        Set {
            name: self.name,
            key: self.key,
            data: self.data,
            flags,
            // The IR counts whole seconds; nft writes what it was given in ms.
            timeout_secs: self.timeout_ms.map(|ms| (ms / 1000) as u32),
            comment: self.comment,
            exprs: self.exprs,
            elements,
        }
    }
}

/// The `typeof` of a set from its userdata, checked against the types the kernel
/// holds (nft prints the expressions; the kernel matches on the types).
fn set_exprs(
    family: Family,
    blob: &[u8],
    key: &[KeyType],
    data: Option<&MapData>,
) -> Result<Option<SetExprs>> {
    use udata::set as u;
    let key_exprs = match udata::find(blob, u::KEY_TYPEOF)? {
        Some(record) => parse_typeof(family, record)?,
        None => None,
    };
    let data_exprs = match udata::find(blob, u::DATA_TYPEOF)? {
        Some(record) => parse_typeof(family, record)?,
        None => None,
    };
    let Some(key_exprs) = key_exprs else {
        if data_exprs.is_some() {
            return Err(Error::decode("typeof data without a typeof key"));
        }
        return Ok(None);
    };
    let exprs = SetExprs {
        key: key_exprs,
        data: data_exprs.unwrap_or_default(),
    };
    let types = |exprs: &[KeyExpr]| -> Vec<KeyType> {
        exprs
            .iter()
            .map(|e| crate::nftables::rule::key_expr_type(family, *e))
            .collect()
    };
    let data_ok = match data {
        Some(MapData::Value(data)) => exprs.data.is_empty() || types(&exprs.data) == *data,
        _ => exprs.data.is_empty(),
    };
    if types(&exprs.key) != key || !data_ok {
        return Err(Error::decode(format!(
            "typeof {exprs:?} does not match the set's types"
        )));
    }
    Ok(Some(exprs))
}

#[cfg(test)]
mod tests {
    use svcproxy_compiler::nft::ir::KeyExpr;

    use super::*;
    use crate::nftables::attr::AttrBuf;

    /// The `NEWSET` of an endpoint map as nft 1.0.6 sends it for
    /// `map endpoints-2 { typeof <packet key> . numgen random mod 2 : <family> daddr .
    /// th dport; [comment] }`.
    fn endpoint_map(family: Family, nodeport: bool, comment: Option<&str>) -> Set {
        let addr = match family {
            Family::Ip => KeyType::Ipv4Addr,
            Family::Ip6 => KeyType::Ipv6Addr,
        };
        let (mut key, mut key_exprs) = if nodeport {
            (
                vec![KeyType::InetProto, KeyType::InetService],
                vec![KeyExpr::L4Proto, KeyExpr::ThDport],
            )
        } else {
            (
                vec![addr, KeyType::InetProto, KeyType::InetService],
                vec![
                    KeyExpr::Addr(AddrField::Daddr),
                    KeyExpr::L4Proto,
                    KeyExpr::ThDport,
                ],
            )
        };
        key.push(KeyType::Integer);
        key_exprs.push(KeyExpr::Numgen { modulus: 2 });
        Set {
            name: "endpoints-2".into(),
            key,
            data: Some(MapData::Value(vec![addr, KeyType::InetService])),
            flags: SetFlags::default(),
            timeout_secs: None,
            comment: comment.map(str::to_string),
            exprs: Some(SetExprs {
                key: key_exprs,
                data: vec![KeyExpr::Addr(AddrField::Daddr), KeyExpr::ThDport],
            }),
            elements: Vec::new(),
        }
    }

    fn encoded(family: Family, set: &Set) -> Vec<u8> {
        let mut w = AttrBuf::new();
        for attr in set_attrs("t", set, 1, SetKind::Named { family }).unwrap() {
            w.attr(&attr);
        }
        w.into_bytes()
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Userdata captured with `nft --debug=mnl -f` (nft 1.0.6, x86_64: the integers in
    /// userdata are host order, so these bytes hold on little-endian hosts only).
    #[test]
    #[cfg(target_endian = "little")]
    fn endpoint_map_userdata_is_nfts() {
        const V4_COMMENT: &str = "000400000000010400000000036000040d00000001580014000407000000010c00040c00000001040c000000010e00040900000001060004100000000214000407000000010c00040b000000010402000000031a0004170000000112000401000000010402000000020400000000043400040d000000012c0014000407000000010c00040c00000001040c0000000114000407000000010c00040b0000000104020000000604000000000722656e64706f696e7473206f66207365727669636520706f7274732077697468203200";
        const V6_COMMENT: &str = "000400000000010400000000036000040d00000001580014000407000000010c00040d000000010409000000010e00040900000001060004100000000214000407000000010c00040b000000010402000000031a0004170000000112000401000000010402000000020400000000043400040d000000012c0014000407000000010c00040d0000000104090000000114000407000000010c00040b0000000104020000000604000000000722656e64706f696e7473206f66207365727669636520706f7274732077697468203200";
        const V4_NODEPORT: &str = "000400000000010400000000034a00040d0000000142000e00040900000001060004100000000114000407000000010c00040b000000010402000000021a0004170000000112000401000000010402000000020400000000043400040d000000012c0014000407000000010c00040c00000001040c0000000114000407000000010c00040b000000010402000000060400000000";
        const V6_NODEPORT: &str = "000400000000010400000000034a00040d0000000142000e00040900000001060004100000000114000407000000010c00040b000000010402000000021a0004170000000112000401000000010402000000020400000000043400040d000000012c0014000407000000010c00040d0000000104090000000114000407000000010c00040b000000010402000000060400000000";
        let comment = Some("endpoints of service ports with 2");
        let cases = [
            (Family::Ip, false, comment, V4_COMMENT),
            (Family::Ip6, false, comment, V6_COMMENT),
            (Family::Ip, true, None, V4_NODEPORT),
            (Family::Ip6, true, None, V6_NODEPORT),
        ];
        for (family, nodeport, comment, expected) in cases {
            let set = endpoint_map(family, nodeport, comment);
            let bytes = encoded(family, &set);
            let attrs = Attrs::parse(&bytes).unwrap();
            assert_eq!(attrs.get(st::USERDATA), Some(&hex(expected)[..]), "{set:?}");
        }
    }

    /// Flags, key and data types and lengths as nft sends them, and the way back.
    #[test]
    fn endpoint_map_attributes_match_nft_and_decode() {
        for family in [Family::Ip, Family::Ip6] {
            for nodeport in [false, true] {
                let set = endpoint_map(family, nodeport, Some("c"));
                let bytes = encoded(family, &set);
                let attrs = Attrs::parse(&bytes).unwrap();
                assert_eq!(attrs.u32(st::FLAGS).unwrap(), Some(st::F_MAP));
                let (key_type, key_len, data_type, data_len) = match (family, nodeport) {
                    (Family::Ip, false) => (0x001c_c344, 16, 0x1cd, 8),
                    (Family::Ip, true) => (0x0000_c344, 12, 0x1cd, 8),
                    (Family::Ip6, false) => (0x0020_c344, 28, 0x20d, 20),
                    (Family::Ip6, true) => (0x0000_c344, 12, 0x20d, 20),
                };
                assert_eq!(attrs.u32(st::KEY_TYPE).unwrap(), Some(key_type));
                assert_eq!(attrs.u32(st::KEY_LEN).unwrap(), Some(key_len));
                assert_eq!(attrs.u32(st::DATA_TYPE).unwrap(), Some(data_type));
                assert_eq!(attrs.u32(st::DATA_LEN).unwrap(), Some(data_len));
                let info = SetInfo::from_attrs(family, &attrs).unwrap();
                assert_eq!(info.into_ir(Vec::new()), set);
            }
        }
    }

    #[test]
    fn typeof_must_match_the_types() {
        let mut set = endpoint_map(Family::Ip, false, None);
        set.key[3] = KeyType::InetService;
        assert!(set_attrs("t", &set, 1, SetKind::Named { family: Family::Ip }).is_err());
        let mut set = endpoint_map(Family::Ip, false, None);
        set.exprs.as_mut().unwrap().data.pop();
        assert!(set_attrs("t", &set, 1, SetKind::Named { family: Family::Ip }).is_err());
        // An IPv4 typeof read in an IPv6 table is not svcproxy's.
        let set = endpoint_map(Family::Ip, false, None);
        let bytes = encoded(Family::Ip, &set);
        let attrs = Attrs::parse(&bytes).unwrap();
        assert!(SetInfo::from_attrs(Family::Ip6, &attrs).is_err());
    }

    /// `typeof` with `ct original` addresses, as nft 1.0.6 sends it (`strace` of `nft
    /// -f`): `set s { typeof ct original ip daddr . meta l4proto . th dport; }`, the
    /// IPv6 version, and `map m { typeof ct original ip saddr : ct original ip daddr; }`.
    #[test]
    #[cfg(target_endian = "little")]
    fn ct_original_typeof_userdata_is_nfts() {
        use KeyExpr::{CtOriginalAddr, L4Proto, ThDport};
        const V4_SET: &str = "000400000000034400040d000000013c001400040c000000010c000414000000010400000000010e00040900000001060004100000000214000407000000010c00040b000000010402000000";
        const V6_SET: &str = "000400000000034400040d000000013c001400040c000000010c000416000000010400000000010e00040900000001060004100000000214000407000000010c00040b000000010402000000";
        const V4_MAP: &str = "000402000000010402000000031400040c000000010c000413000000010400000000041400040c000000010c000414000000010400000000060400000000";
        let service = |family: Family| Set {
            name: "s".into(),
            key: vec![
                layout::addr_type(family),
                KeyType::InetProto,
                KeyType::InetService,
            ],
            data: None,
            flags: SetFlags::default(),
            timeout_secs: None,
            comment: None,
            exprs: Some(SetExprs {
                key: vec![CtOriginalAddr(AddrField::Daddr), L4Proto, ThDport],
                data: vec![],
            }),
            elements: Vec::new(),
        };
        let map = Set {
            name: "m".into(),
            key: vec![KeyType::Ipv4Addr],
            data: Some(MapData::Value(vec![KeyType::Ipv4Addr])),
            exprs: Some(SetExprs {
                key: vec![CtOriginalAddr(AddrField::Saddr)],
                data: vec![CtOriginalAddr(AddrField::Daddr)],
            }),
            ..service(Family::Ip)
        };
        for (family, set, expected) in [
            (Family::Ip, service(Family::Ip), V4_SET),
            (Family::Ip6, service(Family::Ip6), V6_SET),
            (Family::Ip, map, V4_MAP),
        ] {
            let bytes = encoded(family, &set);
            let attrs = Attrs::parse(&bytes).unwrap();
            assert_eq!(attrs.get(st::USERDATA), Some(&hex(expected)[..]), "{set:?}");
            let info = SetInfo::from_attrs(family, &attrs).unwrap();
            assert_eq!(info.into_ir(Vec::new()), set);
        }
    }

    /// nft 1.0.6 declares `typeof ct original proto-dst` with the invalid type and then
    /// refuses every element: svcproxy refuses the declaration.
    #[test]
    fn typeof_ct_original_proto_dst_is_refused() {
        let set = Set {
            name: "s".into(),
            key: vec![KeyType::InetProto, KeyType::InetService],
            data: None,
            flags: SetFlags::default(),
            timeout_secs: None,
            comment: None,
            exprs: Some(SetExprs {
                key: vec![KeyExpr::L4Proto, KeyExpr::CtOriginalProtoDst],
                data: vec![],
            }),
            elements: Vec::new(),
        };
        let err = set_attrs("t", &set, 1, SetKind::Named { family: Family::Ip }).unwrap_err();
        assert!(err.to_string().contains("proto-dst"), "{err}");
    }

    /// The anonymous set of `meta l4proto { tcp, udp, sctp }` as nft 1.0.6 sends it:
    /// flags anonymous and constant, key `inet_proto` of 1 byte, size 3, and userdata
    /// with a host-order key (the `meta` expression's) typed `meta l4proto`.
    #[test]
    #[cfg(target_endian = "little")]
    fn anonymous_protocol_set_is_nfts() {
        let set = Set {
            name: ANON_SET_NAME.into(),
            key: vec![KeyType::InetProto],
            data: None,
            flags: SetFlags::default(),
            timeout_secs: None,
            comment: None,
            exprs: None,
            elements: Vec::new(),
        };
        let kind = SetKind::Anon {
            family: Family::Ip,
            key: KeyExpr::L4Proto,
            elements: 3,
        };
        let mut w = AttrBuf::new();
        for attr in set_attrs("t", &set, 9, kind).unwrap() {
            w.attr(&attr);
        }
        let bytes = w.into_bytes();
        let attrs = Attrs::parse(&bytes).unwrap();
        assert_eq!(
            attrs.u32(st::FLAGS).unwrap(),
            Some(st::F_ANONYMOUS | st::F_CONSTANT)
        );
        assert_eq!(attrs.u32(st::KEY_TYPE).unwrap(), Some(12));
        assert_eq!(attrs.u32(st::KEY_LEN).unwrap(), Some(1));
        assert_eq!(attrs.u32(st::ID).unwrap(), Some(9));
        let desc = attrs.need_nested(st::DESC, "desc").unwrap();
        assert_eq!(desc.u32(st::DESC_SIZE).unwrap(), Some(3));
        assert_eq!(
            attrs.get(st::USERDATA),
            Some(&hex("000401000000030e0004090000000106000410000000")[..])
        );
        let info = SetInfo::from_attrs(Family::Ip, &attrs).unwrap();
        assert!(info.anonymous());
        assert_eq!(info.exprs.map(|e| e.key), Some(vec![KeyExpr::L4Proto]));
    }
}
