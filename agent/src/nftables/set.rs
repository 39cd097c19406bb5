//! Sets and maps: their `NEWSET` attributes, and their description in a dump.

use svcproxy_compiler::nft::ir::{AddrField, Element, Family, KeyType, MapData, Set, SetFlags};

use super::attr::{Attr, Attrs};
use super::error::{Error, Result};
use super::layout;
use super::uapi::{data, set as st};
use super::udata;

/// Name template of an anonymous set; the kernel replaces `%d`.
pub(crate) const ANON_SET_NAME: &str = "__set%d";

/// Which kind of set a `NEWSET` creates: a named IR set, or the anonymous set behind a
/// rule's address list (for which nft records the key expression in userdata).
#[derive(Debug, Clone, Copy)]
pub(crate) enum SetKind {
    Named,
    /// `ip saddr { ... }`: an anonymous constant set of `field` addresses (an interval
    /// set if any of them is a prefix).
    AnonAddrs {
        family: Family,
        field: AddrField,
        elements: u32,
    },
}

/// The attributes of `NEWSET` for `set` in `table`.
pub(crate) fn set_attrs(table: &str, set: &Set, id: u32, kind: SetKind) -> Result<Vec<Attr>> {
    if set.key.is_empty() {
        return Err(Error::encode(format!("set {}: empty key", set.name)));
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
    if let SetKind::AnonAddrs { .. } = kind {
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
        SetKind::AnonAddrs { elements, .. } => {
            attrs.push(Attr::nested(
                st::DESC,
                vec![Attr::u32(st::DESC_SIZE, elements)],
            ));
        }
        // The kernel needs the field widths to pick the pipapo backend for concatenated
        // intervals; nft sends them only then.
        SetKind::Named if set.flags.interval && concat => {
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
        SetKind::Named => {}
    }
    attrs.push(Attr::bytes(st::USERDATA, set_userdata(set, kind)?));
    Ok(attrs)
}

/// What nft writes into `NFTA_SET_USERDATA`; without it `nft list` cannot name the
/// types of a concatenated key and prints raw hex.
fn set_userdata(set: &Set, kind: SetKind) -> Result<Vec<u8>> {
    use udata::set as u;
    let mut w = udata::Writer::new();
    w.put_u32(u::KEYBYTEORDER, byteorder(&set.key))?;
    let data_byteorder = match &set.data {
        Some(MapData::Verdict) => Some(u::BYTEORDER_INVALID),
        Some(MapData::Value(types)) => Some(byteorder(types)),
        None => None,
    };
    if let Some(order) = data_byteorder {
        w.put_u32(u::DATABYTEORDER, order)?;
    }
    match kind {
        SetKind::AnonAddrs { family, field, .. } => {
            // Only interval sets have elements for nft to merge.
            if set.flags.interval {
                w.put_u32(u::MERGE_ELEMENTS, 1)?;
            }
            let (desc, template) = payload_template(family, field);
            w.nest(u::KEY_TYPEOF, |w| {
                w.put_u32(u::TYPEOF_EXPR, u::EXPR_PAYLOAD)?;
                w.nest(u::TYPEOF_DATA, |w| {
                    w.put_u32(u::PAYLOAD_DESC, desc)?;
                    w.put_u32(u::PAYLOAD_TYPE, template)?;
                    Ok(())
                })?;
                Ok(())
            })?;
        }
        SetKind::Named if set.key.len() > 1 => {
            // `type a . b`: nft records "a concatenation" with no sub-expressions.
            w.nest(u::KEY_TYPEOF, |w| {
                w.put_u32(u::TYPEOF_EXPR, u::EXPR_CONCAT)?;
                w.nest(u::TYPEOF_DATA, |_| Ok(()))?;
                Ok(())
            })?;
        }
        SetKind::Named => {}
    }
    if let Some(MapData::Value(types)) = &set.data {
        if types.len() > 1 {
            // As for a concatenated key: "a concatenation", no sub-expressions.
            w.nest(u::DATA_TYPEOF, |w| {
                w.put_u32(u::TYPEOF_EXPR, u::EXPR_CONCAT)?;
                w.nest(u::TYPEOF_DATA, |_| Ok(()))?;
                Ok(())
            })?;
        }
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
/// address or port, none for a protocol, a concatenation or verdicts.
fn byteorder(types: &[KeyType]) -> u32 {
    use udata::set as u;
    match types {
        [KeyType::Ipv4Addr | KeyType::Ipv6Addr | KeyType::InetService] => u::BYTEORDER_BIG_ENDIAN,
        _ => u::BYTEORDER_INVALID,
    }
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
}

impl SetInfo {
    pub fn from_attrs(a: &Attrs<'_>) -> Result<SetInfo> {
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
        let comment = match a.get(st::USERDATA) {
            Some(blob) => udata::find_str(blob, udata::set::COMMENT)?,
            None => None,
        };
        Ok(SetInfo {
            name,
            flags: a.u32(st::FLAGS)?.unwrap_or(0),
            key,
            data,
            timeout_ms: a.u64(st::TIMEOUT)?,
            comment,
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
            elements,
        }
    }
}
