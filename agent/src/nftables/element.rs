//! Set elements: their encoding in `NEWSETELEM`, and the way back from a dump.
//!
//! Encodings follow nft:
//! - plain keys: one element per value;
//! - single-type interval sets (rbtree): a prefix is a start element plus an element
//!   flagged `INTERVAL_END` holding the first address after it; nft also sends an
//!   end element at address 0 when the first interval does not start there, and
//!   leaves the end out (marking the start "open" in its userdata) when an interval
//!   runs to the top of the address space;
//! - concatenated interval sets (pipapo): one element with `KEY` and `KEY_END`, both
//!   inclusive.

use std::net::IpAddr;

use ipnet::IpNet;
use svcproxy_compiler::nft::ir::{
    Element, KeyType, KeyValue, MAX_DATA, MAX_KEY, MapData, Set, Values, Verdict,
};

use super::attr::{AttrBuf, Attrs};
use super::error::{Error, Result};
use super::expr::{Data, parse_data, write_value, write_verdict};
use super::layout;
use super::set::SetInfo;
use super::uapi::{elem as el, list};
use super::udata;

/// Element nests (`NFTA_LIST_ELEM`) in wire form, and where each one ends: the
/// caller splits them over messages at nest boundaries. Written straight into one
/// buffer because a large map has hundreds of thousands of elements.
#[derive(Debug, Default)]
pub(crate) struct Nests {
    buf: AttrBuf,
    ends: Vec<usize>,
}

impl Nests {
    fn push(&mut self, f: impl FnOnce(&mut AttrBuf) -> Result<()>) -> Result<()> {
        self.buf.nest(list::ELEM, f)?;
        self.ends.push(self.buf.len());
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// All the nests, back to back.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.as_bytes()
    }

    /// Where each nest ends in [`Nests::as_bytes`].
    pub fn ends(&self) -> &[usize] {
        &self.ends
    }
}

/// The element nests for `elements` of `set`, in the order nft sends them.
pub(crate) fn element_attrs(set: &Set, elements: &[Element]) -> Result<Nests> {
    if set.flags.interval && set.key.len() == 1 {
        return rbtree_elements(set, elements);
    }
    let mut out = Nests::default();
    for element in elements {
        out.push(|w| {
            write_key(set, element, w)?;
            write_data_and_comment(set, element, false, w)
        })?;
    }
    Ok(out)
}

/// The element nests naming `elements` of `set` for `DELSETELEM`: keys only, as nft
/// sends them (the kernel finds an element by its key; data and comment are not
/// compared). Single-type interval sets are refused: their elements are pairs of
/// boundaries that neighbouring intervals may share, so they are flushed and refilled
/// instead.
pub(crate) fn element_key_attrs(set: &Set, elements: &[Element]) -> Result<Nests> {
    if set.flags.interval && set.key.len() == 1 {
        return Err(Error::encode(format!(
            "interval set {}: deleting single intervals is not supported (flush and refill the set)",
            set.name
        )));
    }
    let mut out = Nests::default();
    for element in elements {
        out.push(|w| write_key(set, element, w))?;
    }
    Ok(out)
}

/// An element's key: its value, and for a concatenated interval set the interval's
/// end; a non-interval set takes whole addresses only.
fn write_key(set: &Set, element: &Element, w: &mut AttrBuf) -> Result<()> {
    write_value(w, el::KEY, &layout::key_bytes(&set.key, &element.key)?);
    if set.flags.interval {
        write_value(
            w,
            el::KEY_END,
            &layout::key_end_bytes(&set.key, &element.key)?,
        );
        Ok(())
    } else {
        require_hosts(set, element)
    }
}

fn require_hosts(set: &Set, element: &Element) -> Result<()> {
    let prefix = element.key.iter().find_map(|value| match value {
        KeyValue::Net(net) if net.prefix_len() != net.max_prefix_len() => Some(net),
        _ => None,
    });
    match prefix {
        Some(net) => Err(Error::encode(format!(
            "set {}: prefix {net} in a set without flags interval",
            set.name
        ))),
        None => Ok(()),
    }
}

fn write_data_and_comment(set: &Set, element: &Element, open: bool, w: &mut AttrBuf) -> Result<()> {
    match (&set.data, element.verdict(), element.data.is_empty()) {
        (Some(MapData::Verdict), Some(verdict), true) => {
            w.nest(el::DATA, |w| write_verdict(w, verdict));
        }
        (None, None, true) => {}
        // A dynamic map's elements are written by the packet path (`Stmt::UpdateMap`);
        // the IR never lists them.
        (Some(MapData::Value(_)), _, _) if set.flags.dynamic => {
            return Err(Error::encode(format!(
                "map {}: elements of a dynamic map are the packet path's",
                set.name
            )));
        }
        // A data map's value (the endpoint maps' `address . port`), laid out like a
        // key: each component padded to 4 bytes when concatenated.
        (Some(MapData::Value(types)), None, false) => {
            // A prefix would be written as its first address: refuse it instead.
            if let Some(net) = element.data.iter().find_map(|value| match value {
                KeyValue::Net(net) if net.prefix_len() != net.max_prefix_len() => Some(net),
                _ => None,
            }) {
                return Err(Error::encode(format!(
                    "map {}: prefix {net} as element data",
                    set.name
                )));
            }
            let bytes = layout::key_bytes(types, &element.data)
                .map_err(|e| Error::encode(format!("map {}: element data: {e}", set.name)))?;
            write_value(w, el::DATA, &bytes);
        }
        (Some(MapData::Value(_)), _, _) => {
            return Err(Error::encode(format!(
                "map {}: element without data, or with a verdict",
                set.name
            )));
        }
        (Some(MapData::Verdict), _, _) => {
            return Err(Error::encode(format!(
                "map {}: element without a verdict, or with data",
                set.name
            )));
        }
        (None, _, _) => {
            return Err(Error::encode(format!(
                "set {}: element with a verdict or data",
                set.name
            )));
        }
    }
    if element.comment().is_some() || open {
        let mut u = udata::Writer::new();
        if let Some(comment) = element.comment() {
            udata::check_comment(comment)?;
            u.put_str(udata::elem::COMMENT, comment)?;
        }
        if open {
            u.put_u32(udata::elem::FLAGS, udata::elem::F_INTERVAL_OPEN)?;
        }
        w.bytes(el::USERDATA, &u.finish());
    }
    Ok(())
}

/// Start/end element pairs of a single-type interval set.
fn rbtree_elements(set: &Set, elements: &[Element]) -> Result<Nests> {
    let mut ranges = Vec::with_capacity(elements.len());
    for element in elements {
        match element.key.as_slice() {
            [KeyValue::Net(net)] => ranges.push((*net, element)),
            _ => {
                return Err(Error::encode(format!(
                    "interval set {}: only address keys are supported",
                    set.name
                )));
            }
        }
    }
    ranges.sort_by_key(|(net, _)| addr_number(&net.network()));
    let mut out = Nests::default();
    let end_elem = |out: &mut Nests, addr: &IpAddr| {
        out.push(|w| {
            w.u32(el::FLAGS, el::F_INTERVAL_END);
            write_value(w, el::KEY, &layout::addr_bytes(addr));
            Ok(())
        })
    };
    // nft closes the gap below the first interval with an end element at address 0.
    if let Some((first, _)) = ranges.first() {
        if addr_number(&first.network()) != 0 {
            end_elem(&mut out, &zero_like(&first.network()))?;
        }
    }
    let mut previous_last: Option<u128> = None;
    for (net, element) in &ranges {
        let start = addr_number(&net.network());
        if previous_last.is_some_and(|last| start <= last) {
            return Err(Error::encode(format!(
                "interval set {}: {net} overlaps another element",
                set.name
            )));
        }
        previous_last = Some(addr_number(&net.broadcast()));
        let after = next_addr(&net.broadcast());
        out.push(|w| {
            write_value(w, el::KEY, &layout::addr_bytes(&net.network()));
            write_data_and_comment(set, element, after.is_none(), w)
        })?;
        if let Some(after) = after {
            end_elem(&mut out, &after)?;
        }
    }
    Ok(out)
}

/// An address as a number, for ordering and range arithmetic.
fn addr_number(addr: &IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(*a)),
        IpAddr::V6(a) => u128::from(*a),
    }
}

fn addr_from_number(like: &IpAddr, n: u128) -> Option<IpAddr> {
    match like {
        IpAddr::V4(_) => u32::try_from(n)
            .ok()
            .map(|v| IpAddr::from(std::net::Ipv4Addr::from(v))),
        IpAddr::V6(_) => Some(IpAddr::from(std::net::Ipv6Addr::from(n))),
    }
}

fn zero_like(addr: &IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => IpAddr::from([0u8; 4]),
        IpAddr::V6(_) => IpAddr::from([0u8; 16]),
    }
}

/// The address after `addr`, or `None` at the top of the address space.
fn next_addr(addr: &IpAddr) -> Option<IpAddr> {
    addr_number(addr)
        .checked_add(1)
        .and_then(|n| addr_from_number(addr, n))
}

fn max_addr_like(addr: &IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => IpAddr::from([0xffu8; 4]),
        IpAddr::V6(_) => IpAddr::from([0xffu8; 16]),
    }
}

/// The prefix covering exactly `first..=last`, if there is one.
fn prefix_of_range(first: IpAddr, last: IpAddr) -> Result<IpNet> {
    let bits = match first {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    let (lo, hi) = (addr_number(&first), addr_number(&last));
    let span = hi
        .checked_sub(lo)
        .ok_or_else(|| Error::decode(format!("interval {first}-{last} runs backwards")))?;
    // A prefix range is `lo` with the low `k` bits clear up to `lo` with them set.
    let host_bits = span.count_ones();
    if span.trailing_ones() != host_bits || lo & span != 0 {
        return Err(Error::decode(format!(
            "interval {first}-{last} is not a prefix"
        )));
    }
    IpNet::new(first, (bits - host_bits) as u8).map_err(|e| Error::decode(e.to_string()))
}

/// One element as dumped, before intervals are put back together.
#[derive(Debug, Clone)]
pub(crate) struct RawElement {
    key: Vec<u8>,
    key_end: Option<Vec<u8>>,
    interval_end: bool,
    verdict: Option<Verdict>,
    /// The datum of a data-map element.
    value: Option<Vec<u8>>,
    comment: Option<String>,
}

impl RawElement {
    pub fn from_attrs(a: &Attrs<'_>) -> Result<RawElement> {
        let value = |kind, what| -> Result<Vec<u8>> {
            match parse_data(&a.need_nested(kind, what)?)? {
                Data::Value(bytes) => Ok(bytes),
                Data::Verdict(_) => Err(Error::decode(format!("{what} is a verdict"))),
            }
        };
        let key = value(el::KEY, "element key")?;
        let key_end = if a.has(el::KEY_END) {
            Some(value(el::KEY_END, "element key end")?)
        } else {
            None
        };
        let (verdict, value) = match a.nested(el::DATA)? {
            Some(nest) => match parse_data(&nest)? {
                Data::Verdict(v) => (Some(v), None),
                Data::Value(bytes) => (None, Some(bytes)),
            },
            None => (None, None),
        };
        let comment = match a.get(el::USERDATA) {
            Some(blob) => udata::find_str(blob, udata::elem::COMMENT)?,
            None => None,
        };
        Ok(RawElement {
            key,
            key_end,
            interval_end: a.u32(el::FLAGS)?.unwrap_or(0) & el::F_INTERVAL_END != 0,
            verdict,
            value,
            comment,
        })
    }
}

/// One element of a data map (a ClientIP-affinity map): key and datum.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MapEntry {
    pub key: Values<MAX_KEY>,
    pub data: Values<MAX_DATA>,
}

/// Decodes dumped elements of a data map, whatever writes them (the packet path for a
/// dynamic map, whose elements the IR does not list).
pub(crate) fn map_entries(info: &SetInfo, raw: Vec<RawElement>) -> Result<Vec<MapEntry>> {
    let Some(MapData::Value(types)) = &info.data else {
        return Err(Error::decode(format!(
            "set {} is not a data map",
            info.name
        )));
    };
    check_fits(info, Some(types))?;
    let mut out = raw
        .into_iter()
        .map(|r| {
            let value = r.value.ok_or_else(|| {
                Error::decode(format!("element of data map {} without data", info.name))
            })?;
            Ok(MapEntry {
                key: layout::key_values(&info.key, &r.key)?,
                data: layout::key_values(types, &value)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    out.sort();
    Ok(out)
}

/// Turns dumped elements back into IR elements, intervals merged into prefixes,
/// sorted canonically. Not for dynamic maps: their elements are the packet path's.
pub(crate) fn elements_to_ir(info: &SetInfo, raw: Vec<RawElement>) -> Result<Vec<Element>> {
    let data_types = match &info.data {
        Some(MapData::Value(_)) if info.dynamic() => {
            return Err(Error::decode(format!(
                "map {}: the IR has no elements of dynamic maps",
                info.name
            )));
        }
        Some(MapData::Value(types)) => Some(types.as_slice()),
        _ => None,
    };
    check_fits(info, data_types)?;
    let mut out = if info.interval() && info.key.len() == 1 {
        if data_types.is_some() {
            return Err(Error::decode(format!(
                "map {}: an interval data map (svcproxy writes none)",
                info.name
            )));
        }
        rbtree_to_ir(raw)?
    } else {
        raw.into_iter()
            .map(|r| {
                let mut key = layout::key_values(&info.key, &r.key)?;
                if let Some(end) = &r.key_end {
                    let last = layout::key_values::<MAX_KEY>(&info.key, end)?;
                    merge_range_values(&mut key, &last)?;
                }
                let data = match (data_types, &r.value) {
                    (Some(types), Some(value)) => layout::key_values(types, value)?,
                    (Some(_), None) => {
                        return Err(Error::decode(format!(
                            "element of data map {} without data",
                            info.name
                        )));
                    }
                    (None, Some(_)) => {
                        return Err(Error::decode(format!(
                            "element of {} with data it has no type for",
                            info.name
                        )));
                    }
                    (None, None) => Values::new(),
                };
                Ok(Element::from_parts(key, r.verdict, data, r.comment))
            })
            .collect::<Result<Vec<_>>>()?
    };
    out.sort();
    Ok(out)
}

/// The sets and maps svcproxy makes have keys of at most [`MAX_KEY`] components and
/// data of at most [`MAX_DATA`], all an [`Element`] holds: an error for a set of
/// someone else's making with more.
fn check_fits(info: &SetInfo, data: Option<&[KeyType]>) -> Result<()> {
    let data_len = data.map_or(0, <[KeyType]>::len);
    if info.key.len() > MAX_KEY || data_len > MAX_DATA {
        return Err(Error::decode(format!(
            "set {}: key of {} components and data of {}, more than svcproxy's sets have \
             ({MAX_KEY} and {MAX_DATA})",
            info.name,
            info.key.len(),
            data_len
        )));
    }
    Ok(())
}

/// Componentwise `first..=last` of a concatenated interval element back to values,
/// in `first`.
fn merge_range_values(first: &mut [KeyValue], last: &[KeyValue]) -> Result<()> {
    for (a, b) in first.iter_mut().zip(last) {
        *a = match (*a, *b) {
            (KeyValue::Net(a), KeyValue::Net(b)) => {
                KeyValue::Net(prefix_of_range(a.addr(), b.addr())?)
            }
            (a, b) if a == b => a,
            (a, b) => {
                return Err(Error::decode(format!(
                    "range {a:?}-{b:?} over a non-address field"
                )));
            }
        };
    }
    Ok(())
}

fn rbtree_to_ir(mut raw: Vec<RawElement>) -> Result<Vec<Element>> {
    // Kernels dump rbtree sets in descending order; walk them ascending, ends before
    // starts with the same key (an end at X closes the interval before a start at X).
    raw.sort_by(|a, b| a.key.cmp(&b.key).then(b.interval_end.cmp(&a.interval_end)));
    let mut out = Vec::new();
    let mut open: Option<(IpAddr, RawElement)> = None;
    for r in raw {
        let addr = layout::addr_from_bytes(&r.key)?;
        if r.interval_end {
            // An end without a start is nft's leading end element at 0.
            if let Some((first, start)) = open.take() {
                let last = addr_from_number(&addr, addr_number(&addr).wrapping_sub(1))
                    .ok_or_else(|| Error::decode("interval end at 0"))?;
                out.push(range_element(first, last, start)?);
            }
        } else if let Some((first, start)) = open.replace((addr, r)) {
            return Err(Error::decode(format!(
                "interval starting at {first} has no end ({start:?})"
            )));
        }
    }
    // A trailing start is an interval open towards the top of the address space.
    if let Some((first, start)) = open {
        out.push(range_element(first, max_addr_like(&first), start)?);
    }
    Ok(out)
}

fn range_element(first: IpAddr, last: IpAddr, start: RawElement) -> Result<Element> {
    let key = [KeyValue::Net(prefix_of_range(first, last)?)].into();
    Ok(Element::from_parts(
        key,
        start.verdict,
        Values::new(),
        start.comment,
    ))
}

#[cfg(test)]
mod tests {
    use svcproxy_compiler::nft::ir::{KeyType, SetFlags};

    use super::*;

    fn net(s: &str) -> KeyValue {
        KeyValue::Net(s.parse().unwrap())
    }

    fn interval_set(nets: &[&str]) -> Set {
        Set {
            name: "ranges".into(),
            key: vec![KeyType::Ipv4Addr],
            data: None,
            flags: SetFlags {
                interval: true,
                ..SetFlags::default()
            },
            timeout_secs: None,
            exprs: None,
            comment: None,
            elements: nets.iter().map(|n| Element::new([net(n)].into())).collect(),
        }
    }

    /// Encodes, then decodes the way a dump would hand the elements back.
    fn through_the_kernel_format(set: &Set) -> Vec<Element> {
        let nests = element_attrs(set, &set.elements).unwrap();
        let mut raw: Vec<RawElement> = Attrs::parse(nests.as_bytes())
            .unwrap()
            .iter()
            .map(|(_, v)| RawElement::from_attrs(&Attrs::parse(v).unwrap()).unwrap())
            .collect();
        // The kernel dumps rbtree sets backwards.
        raw.reverse();
        let info = SetInfo {
            name: set.name.clone(),
            flags: crate::nftables::uapi::set::F_INTERVAL,
            key: set.key.clone(),
            data: None,
            timeout_ms: None,
            exprs: None,
            comment: None,
        };
        elements_to_ir(&info, raw).unwrap()
    }

    #[test]
    fn interval_elements_like_nft() {
        // nft: 0.0.0.0 end, 10.0.0.0, 11.0.0.0 end, 192.168.1.1, 192.168.1.2 end.
        let set = interval_set(&["10.0.0.0/8", "192.168.1.1/32"]);
        let elems = element_attrs(&set, &set.elements).unwrap();
        assert_eq!(elems.len(), 5);
        let mut elements = set.elements.clone();
        elements.sort();
        assert_eq!(through_the_kernel_format(&set), elements);
    }

    #[test]
    fn intervals_at_the_edges_of_the_address_space() {
        // Starting at 0: no leading end element. Ending at the top: open, no end element.
        let set = interval_set(&["0.0.0.0/8", "255.0.0.0/8"]);
        assert_eq!(element_attrs(&set, &set.elements).unwrap().len(), 3);
        let mut elements = set.elements.clone();
        elements.sort();
        assert_eq!(through_the_kernel_format(&set), elements);
        let all = interval_set(&["0.0.0.0/0"]);
        assert_eq!(element_attrs(&all, &all.elements).unwrap().len(), 1);
        assert_eq!(through_the_kernel_format(&all), all.elements);
    }

    fn endpoint_map(elements: Vec<Element>) -> Set {
        Set {
            name: "endpoints-2".into(),
            key: vec![KeyType::InetProto, KeyType::InetService, KeyType::Integer],
            data: Some(MapData::Value(vec![
                KeyType::Ipv4Addr,
                KeyType::InetService,
            ])),
            flags: SetFlags::default(),
            timeout_secs: None,
            comment: None,
            exprs: None,
            elements,
        }
    }

    fn endpoint(bucket: u32, ip: &str, port: u16) -> Element {
        let key = [
            KeyValue::Proto(svcproxy_compiler::nft::ir::L4Proto::Tcp),
            KeyValue::Port(30080),
            KeyValue::Int(bucket),
        ];
        let comment = (bucket == 1).then(|| "b".to_string());
        Element::from_parts(
            key.into(),
            None,
            [net(ip), KeyValue::Port(port)].into(),
            comment,
        )
    }

    /// `tcp . 30080 . 1 : 10.244.1.2 . 8080`: a 12-byte key, and the datum as
    /// `NFTA_SET_ELEM_DATA { NFTA_DATA_VALUE }` of 8 bytes (nft prints it as
    /// `0201f40a 0000901f`), read back into `Element::data`.
    #[test]
    fn data_map_elements_carry_their_datum() {
        let set = endpoint_map(vec![
            endpoint(0, "10.244.1.1/32", 8080),
            endpoint(1, "10.244.1.2/32", 8080),
        ]);
        let nests = element_attrs(&set, &set.elements).unwrap();
        let outer = Attrs::parse(nests.as_bytes()).unwrap();
        let raw: Vec<RawElement> = outer
            .iter()
            .map(|(_, v)| RawElement::from_attrs(&Attrs::parse(v).unwrap()).unwrap())
            .collect();
        assert_eq!(raw[1].key.len(), 12);
        assert_eq!(
            raw[1].value.as_deref(),
            Some(&[10, 244, 1, 2, 0x1f, 0x90, 0, 0][..])
        );
        let info = SetInfo {
            name: set.name.clone(),
            flags: crate::nftables::uapi::set::F_MAP,
            key: set.key.clone(),
            data: set.data.clone(),
            timeout_ms: None,
            comment: None,
            exprs: None,
        };
        assert_eq!(elements_to_ir(&info, raw).unwrap(), set.elements);
        // Deletion names the key only.
        let keys = element_key_attrs(&set, &set.elements).unwrap();
        let first = Attrs::parse(keys.as_bytes()).unwrap();
        let (_, nest) = first.iter().next().unwrap();
        assert!(!Attrs::parse(nest).unwrap().has(el::DATA));
    }

    #[test]
    fn data_map_elements_need_data_of_the_maps_types() {
        let mut no_data = endpoint(0, "10.244.1.1/32", 8080);
        no_data.data = Values::new();
        let mut verdict = endpoint(0, "10.244.1.1/32", 8080);
        verdict.set_verdict(Some(Verdict::Accept));
        let wrong_type = endpoint(0, "fd00::1/128", 8080);
        // A datum is one endpoint, not a network.
        let prefix = endpoint(0, "10.244.1.0/24", 8080);
        for bad in [no_data, verdict, wrong_type, prefix] {
            let set = endpoint_map(vec![bad.clone()]);
            assert!(element_attrs(&set, &set.elements).is_err(), "{bad:?}");
        }
        // Data on a verdict map or a set, and listed elements of a dynamic map.
        let mut verdict_map = endpoint_map(vec![endpoint(0, "10.244.1.1/32", 1)]);
        verdict_map.data = Some(MapData::Verdict);
        assert!(element_attrs(&verdict_map, &verdict_map.elements).is_err());
        let mut dynamic = endpoint_map(vec![endpoint(0, "10.244.1.1/32", 1)]);
        dynamic.flags.dynamic = true;
        assert!(element_attrs(&dynamic, &dynamic.elements).is_err());
    }

    /// A set of someone else's making in our table, with a longer key (or datum)
    /// than an `Element` holds: a decode error naming it.
    #[test]
    fn keys_longer_than_an_element_holds_are_refused() {
        let five = vec![
            KeyType::Ipv4Addr,
            KeyType::InetProto,
            KeyType::InetService,
            KeyType::Ipv4Addr,
            KeyType::InetService,
        ];
        let raw = || {
            vec![RawElement {
                key: vec![0; layout::key_len(&five)],
                key_end: None,
                interval_end: false,
                verdict: None,
                value: Some(vec![0; 12]),
                comment: None,
            }]
        };
        let info = |key: Vec<KeyType>, data| SetInfo {
            name: "theirs".into(),
            flags: 0,
            key,
            data,
            timeout_ms: None,
            exprs: None,
            comment: None,
        };
        let long_key = info(five.clone(), None);
        let mut element = raw();
        element[0].value = None;
        let error = elements_to_ir(&long_key, element).unwrap_err().to_string();
        assert!(error.contains("set theirs: key of 5 components"), "{error}");
        let long_data = info(
            vec![KeyType::Ipv4Addr],
            Some(MapData::Value(vec![KeyType::Ipv4Addr; 3])),
        );
        let mut element = raw();
        element[0].key = vec![0; 4];
        assert!(elements_to_ir(&long_data, element.clone()).is_err());
        let error = map_entries(&long_data, element).unwrap_err().to_string();
        assert!(error.contains("set theirs:"), "{error}");
    }

    #[test]
    fn overlapping_intervals_are_refused() {
        let set = interval_set(&["10.0.0.0/8", "10.1.0.0/16"]);
        assert!(element_attrs(&set, &set.elements).is_err());
    }

    #[test]
    fn prefixes_from_ranges() {
        let p = |a: &str, b: &str| prefix_of_range(a.parse().unwrap(), b.parse().unwrap());
        assert_eq!(
            p("10.0.0.0", "10.255.255.255").unwrap(),
            "10.0.0.0/8".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            p("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff").unwrap(),
            "::/0".parse::<IpNet>().unwrap()
        );
        assert!(p("10.0.0.1", "10.0.0.2").is_err());
        assert!(p("10.0.0.0", "10.0.0.2").is_err());
    }
}
