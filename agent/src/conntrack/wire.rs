//! ctnetlink on the wire: request encoding and entry decoding.
//!
//! Constants come from `linux/netfilter/nfnetlink_conntrack.h`, except the
//! `CTA_FILTER_*` flag bits, which the kernel keeps in `net/netfilter/nf_internals.h`
//! (unchanged since they appeared in Linux 5.8; conntrack-tools hard-codes them too).
//!
//! Byte order: attribute headers and netlink headers are host order; addresses, ports,
//! `CTA_ID` and `CTA_ZONE` are network order; the `CTA_FILTER_*_FLAGS` words are host
//! order (`nla_get_u32`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{NLA_F_NESTED, NLA_TYPE_MASK};

use super::{Error, Family, Flow, Result, Tuple};

pub(super) const NFNL_SUBSYS_CTNETLINK: u8 = 1;
pub(super) const IPCTNL_MSG_CT_GET: u8 = 1;
pub(super) const IPCTNL_MSG_CT_DELETE: u8 = 2;

const NFNETLINK_V0: u8 = 0;
pub(super) const NFGENMSG_LEN: usize = 4;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_FILTER: u16 = 25;

const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_TUPLE_ZONE: u16 = 3;

const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;

const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

const CTA_FILTER_ORIG_FLAGS: u16 = 1;
const CTA_FILTER_REPLY_FLAGS: u16 = 2;

const FILTER_IP_SRC: u32 = 1 << 0;
const FILTER_IP_DST: u32 = 1 << 1;
const FILTER_PROTO_NUM: u32 = 1 << 3;
const FILTER_PROTO_SRC_PORT: u32 = 1 << 4;
const FILTER_PROTO_DST_PORT: u32 = 1 << 5;

/// What the kernel should compare in a filtered dump. Unset fields match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct KernelFilter {
    pub protocol: Option<u8>,
    pub orig_dst: Option<IpAddr>,
    pub orig_dst_port: Option<u16>,
    pub reply_src: Option<IpAddr>,
    pub reply_src_port: Option<u16>,
}

/// Some fields of one direction's tuple; what a filter or a delete request carries.
#[derive(Default)]
struct TupleAttrs {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    protocol: Option<u8>,
    src_port: Option<u16>,
    dst_port: Option<u16>,
    zone: Option<u16>,
}

impl TupleAttrs {
    /// The kernel's flag word for these fields. Ports count only with the protocol
    /// (the kernel refuses port flags without `CTA_FILTER_F_CTA_PROTO_NUM`, and so does
    /// [`TupleAttrs::emit`]).
    fn filter_flags(&self) -> u32 {
        let flag = |present: bool, flag: u32| if present { flag } else { 0 };
        let ip = flag(self.src.is_some(), FILTER_IP_SRC) | flag(self.dst.is_some(), FILTER_IP_DST);
        let proto = match self.protocol {
            Some(_) => {
                FILTER_PROTO_NUM
                    | flag(self.src_port.is_some(), FILTER_PROTO_SRC_PORT)
                    | flag(self.dst_port.is_some(), FILTER_PROTO_DST_PORT)
            }
            None => 0,
        };
        ip | proto
    }

    fn emit(&self, kind: u16, out: &mut Vec<u8>) {
        nest(out, kind, |out| {
            if self.src.is_some() || self.dst.is_some() {
                nest(out, CTA_TUPLE_IP, |out| {
                    if let Some(src) = self.src {
                        put_addr(out, src, CTA_IP_V4_SRC, CTA_IP_V6_SRC);
                    }
                    if let Some(dst) = self.dst {
                        put_addr(out, dst, CTA_IP_V4_DST, CTA_IP_V6_DST);
                    }
                });
            }
            if let Some(protocol) = self.protocol {
                nest(out, CTA_TUPLE_PROTO, |out| {
                    put(out, CTA_PROTO_NUM, &[protocol]);
                    if let Some(port) = self.src_port {
                        put(out, CTA_PROTO_SRC_PORT, &port.to_be_bytes());
                    }
                    if let Some(port) = self.dst_port {
                        put(out, CTA_PROTO_DST_PORT, &port.to_be_bytes());
                    }
                });
            }
            if let Some(zone) = self.zone {
                put(out, CTA_TUPLE_ZONE, &zone.to_be_bytes());
            }
        });
    }
}

/// `IPCTNL_MSG_CT_GET` dump of `family`, narrowed by the kernel when `filter` says so.
pub(super) fn dump_request(seq: u32, family: Family, filter: Option<&KernelFilter>) -> Vec<u8> {
    let flags = netlink_packet_core::NLM_F_REQUEST | netlink_packet_core::NLM_F_DUMP;
    message(IPCTNL_MSG_CT_GET, flags, seq, family, |out| {
        let Some(filter) = filter else { return };
        let orig = TupleAttrs {
            dst: filter.orig_dst,
            protocol: filter.protocol,
            dst_port: filter.orig_dst_port,
            ..TupleAttrs::default()
        };
        // The protocol is compared once, on the original tuple; the reply tuple needs
        // it only to carry ports.
        let reply = TupleAttrs {
            src: filter.reply_src,
            protocol: filter.protocol.filter(|_| filter.reply_src_port.is_some()),
            src_port: filter.reply_src_port,
            ..TupleAttrs::default()
        };
        let (orig_flags, reply_flags) = (orig.filter_flags(), reply.filter_flags());
        if orig_flags == 0 && reply_flags == 0 {
            return;
        }
        if orig_flags != 0 {
            orig.emit(CTA_TUPLE_ORIG, out);
        }
        if reply_flags != 0 {
            reply.emit(CTA_TUPLE_REPLY, out);
        }
        nest(out, CTA_FILTER, |out| {
            put(out, CTA_FILTER_ORIG_FLAGS, &orig_flags.to_ne_bytes());
            put(out, CTA_FILTER_REPLY_FLAGS, &reply_flags.to_ne_bytes());
        });
    })
}

/// `IPCTNL_MSG_CT_DELETE` of exactly `flow`: its original tuple, its zone, and its id,
/// so that an entry created since the dump with the same tuple is left alone (ENOENT).
pub(super) fn delete_request(seq: u32, flow: &Flow) -> Vec<u8> {
    let flags = netlink_packet_core::NLM_F_REQUEST | netlink_packet_core::NLM_F_ACK;
    let family = Family::of(&flow.orig.src);
    message(IPCTNL_MSG_CT_DELETE, flags, seq, family, |out| {
        let orig = &flow.orig;
        TupleAttrs {
            src: Some(orig.src),
            dst: Some(orig.dst),
            protocol: Some(orig.protocol),
            src_port: orig.src_port,
            dst_port: orig.dst_port,
            zone: orig.zone,
        }
        .emit(CTA_TUPLE_ORIG, out);
        if flow.zone != 0 {
            put(out, CTA_ZONE, &flow.zone.to_be_bytes());
        }
        if let Some(id) = flow.id {
            put(out, CTA_ID, &id.to_be_bytes());
        }
    })
}

/// A netlink message: header, `nfgenmsg`, then whatever `body` appends.
fn message(
    kind: u8,
    flags: u16,
    seq: u32,
    family: Family,
    body: impl FnOnce(&mut Vec<u8>),
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&0u32.to_ne_bytes()); // length, patched below
    out.extend_from_slice(&u16::from_be_bytes([NFNL_SUBSYS_CTNETLINK, kind]).to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    out.extend_from_slice(&[family.af(), NFNETLINK_V0, 0, 0]);
    body(&mut out);
    let len = out.len() as u32;
    out[..4].copy_from_slice(&len.to_ne_bytes());
    out
}

fn put(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len().next_multiple_of(4), 0);
}

fn nest(out: &mut Vec<u8>, kind: u16, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    body(out);
    let len = (out.len() - start) as u16;
    out[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    out[start + 2..start + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
}

fn put_addr(out: &mut Vec<u8>, addr: IpAddr, v4_kind: u16, v6_kind: u16) {
    match addr {
        IpAddr::V4(a) => put(out, v4_kind, &a.octets()),
        IpAddr::V6(a) => put(out, v6_kind, &a.octets()),
    }
}

// ----- decoding -----

/// One received attribute list, borrowed: `(type without flags, value)`.
struct Attrs<'a>(Vec<(u16, &'a [u8])>);

impl<'a> Attrs<'a> {
    fn parse(mut buf: &'a [u8]) -> Result<Attrs<'a>> {
        let mut items = Vec::new();
        while buf.len() >= 4 {
            let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
            let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
            let value = buf
                .get(4..len)
                .ok_or_else(|| decode(format!("attribute {kind}: bad length {len}")))?;
            items.push((kind, value));
            buf = buf.get(len.next_multiple_of(4)..).unwrap_or_default();
        }
        Ok(Attrs(items))
    }

    fn get(&self, kind: u16) -> Option<&'a [u8]> {
        self.0.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v)
    }

    fn nested(&self, kind: u16, what: &str) -> Result<Attrs<'a>> {
        Attrs::parse(
            self.get(kind)
                .ok_or_else(|| decode(format!("missing {what}")))?,
        )
    }

    fn array<const N: usize>(&self, kind: u16, what: &str) -> Result<Option<[u8; N]>> {
        self.get(kind)
            .map(|v| {
                <[u8; N]>::try_from(v)
                    .map_err(|_| decode(format!("{what}: expected {N} bytes, got {}", v.len())))
            })
            .transpose()
    }
}

fn decode(what: String) -> Error {
    Error::Decode(what)
}

/// Decodes one entry of a dump (the payload after the netlink header).
pub(super) fn decode_flow(payload: &[u8]) -> Result<Flow> {
    let attrs = Attrs::parse(
        payload
            .get(NFGENMSG_LEN..)
            .ok_or_else(|| decode("conntrack message shorter than nfgenmsg".into()))?,
    )?;
    Ok(Flow {
        orig: decode_tuple(&attrs.nested(CTA_TUPLE_ORIG, "CTA_TUPLE_ORIG")?, "original")?,
        reply: decode_tuple(&attrs.nested(CTA_TUPLE_REPLY, "CTA_TUPLE_REPLY")?, "reply")?,
        zone: attrs
            .array(CTA_ZONE, "CTA_ZONE")?
            .map_or(0, u16::from_be_bytes),
        id: attrs.array(CTA_ID, "CTA_ID")?.map(u32::from_be_bytes),
    })
}

fn decode_tuple(tuple: &Attrs<'_>, direction: &str) -> Result<Tuple> {
    let ip = tuple.nested(CTA_TUPLE_IP, "CTA_TUPLE_IP")?;
    let proto = tuple.nested(CTA_TUPLE_PROTO, "CTA_TUPLE_PROTO")?;
    let v4 = |kind, what| -> Result<Option<IpAddr>> {
        Ok(ip.array(kind, what)?.map(|a| IpAddr::V4(Ipv4Addr::from(a))))
    };
    let v6 = |kind, what| -> Result<Option<IpAddr>> {
        Ok(ip.array(kind, what)?.map(|a| IpAddr::V6(Ipv6Addr::from(a))))
    };
    let src = v4(CTA_IP_V4_SRC, "CTA_IP_V4_SRC")?.or(v6(CTA_IP_V6_SRC, "CTA_IP_V6_SRC")?);
    let dst = v4(CTA_IP_V4_DST, "CTA_IP_V4_DST")?.or(v6(CTA_IP_V6_DST, "CTA_IP_V6_DST")?);
    let (Some(src), Some(dst)) = (src, dst) else {
        return Err(decode(format!("{direction} tuple without addresses")));
    };
    let port = |kind, what| -> Result<Option<u16>> {
        Ok(proto.array(kind, what)?.map(u16::from_be_bytes))
    };
    Ok(Tuple {
        src,
        dst,
        protocol: proto
            .array::<1>(CTA_PROTO_NUM, "CTA_PROTO_NUM")?
            .ok_or_else(|| decode(format!("{direction} tuple without protocol")))?[0],
        // Absent for protocols without ports (ICMP, GRE...).
        src_port: port(CTA_PROTO_SRC_PORT, "CTA_PROTO_SRC_PORT")?,
        dst_port: port(CTA_PROTO_DST_PORT, "CTA_PROTO_DST_PORT")?,
        zone: tuple
            .array(CTA_TUPLE_ZONE, "CTA_TUPLE_ZONE")?
            .map(u16::from_be_bytes),
    })
}

/// The request's message type as the kernel echoes it; for matching replies.
pub(super) fn is_ctnetlink(msg_type: u16) -> bool {
    msg_type >> 8 == u16::from(NFNL_SUBSYS_CTNETLINK)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The netlink header; the `nfgenmsg` follows, then the attributes at byte 20.
    const NLMSG_HDRLEN: usize = 16;

    fn flow() -> Flow {
        Flow {
            orig: Tuple {
                src: "10.0.0.2".parse().unwrap(),
                dst: "10.96.0.53".parse().unwrap(),
                protocol: 17,
                src_port: Some(40000),
                dst_port: Some(53),
                zone: None,
            },
            reply: Tuple {
                src: "10.244.1.10".parse().unwrap(),
                dst: "10.0.0.2".parse().unwrap(),
                protocol: 17,
                src_port: Some(5353),
                dst_port: Some(40000),
                zone: None,
            },
            zone: 7,
            id: Some(0xdead_beef),
        }
    }

    #[test]
    fn delete_request_carries_the_original_tuple_zone_and_id() {
        let msg = delete_request(9, &flow());
        assert_eq!(
            msg.len(),
            u32::from_ne_bytes(msg[..4].try_into().unwrap()) as usize
        );
        assert_eq!(u16::from_ne_bytes([msg[4], msg[5]]), 0x0102);
        assert_eq!(msg[16], libc::AF_INET as u8);
        let attrs = Attrs::parse(&msg[20..]).unwrap();
        let orig = decode_tuple(&attrs.nested(CTA_TUPLE_ORIG, "orig").unwrap(), "o").unwrap();
        assert_eq!(orig, flow().orig);
        assert_eq!(attrs.get(CTA_ZONE), Some(&[0, 7][..]));
        assert_eq!(attrs.get(CTA_ID), Some(&[0xde, 0xad, 0xbe, 0xef][..]));
        assert!(attrs.get(CTA_TUPLE_REPLY).is_none());
    }

    #[test]
    fn dump_filter_flags_follow_the_fields() {
        let filter = KernelFilter {
            protocol: Some(17),
            orig_dst: Some("fd00::53".parse().unwrap()),
            orig_dst_port: Some(53),
            reply_src: Some("fd00::10".parse().unwrap()),
            reply_src_port: None,
        };
        let msg = dump_request(1, Family::V6, Some(&filter));
        assert_eq!(msg[16], libc::AF_INET6 as u8);
        let attrs = Attrs::parse(&msg[20..]).unwrap();
        let flags = attrs.nested(CTA_FILTER, "filter").unwrap();
        let word = |kind| u32::from_ne_bytes(flags.array(kind, "f").unwrap().unwrap());
        assert_eq!(
            word(CTA_FILTER_ORIG_FLAGS),
            FILTER_IP_DST | FILTER_PROTO_NUM | FILTER_PROTO_DST_PORT
        );
        // The reply tuple has no port to compare, so no protocol either.
        assert_eq!(word(CTA_FILTER_REPLY_FLAGS), FILTER_IP_SRC);
        let reply = attrs.nested(CTA_TUPLE_REPLY, "reply").unwrap();
        let ip = reply.nested(CTA_TUPLE_IP, "ip").unwrap();
        assert_eq!(ip.get(CTA_IP_V6_SRC).map(<[u8]>::len), Some(16));
        assert!(ip.get(CTA_IP_V6_DST).is_none());

        // Protocol alone still needs a filter on the original tuple.
        let only_udp = KernelFilter {
            protocol: Some(17),
            ..KernelFilter::default()
        };
        let msg = dump_request(1, Family::V4, Some(&only_udp));
        let attrs = Attrs::parse(&msg[20..]).unwrap();
        let flags = attrs.nested(CTA_FILTER, "filter").unwrap();
        assert_eq!(
            flags.array(CTA_FILTER_ORIG_FLAGS, "f").unwrap(),
            Some(FILTER_PROTO_NUM.to_ne_bytes())
        );
        // Filters that disagree on the protocol: their common port means nothing.
        let port_only = KernelFilter {
            orig_dst_port: Some(53),
            ..KernelFilter::default()
        };
        let msg = dump_request(1, Family::V4, Some(&port_only));
        assert_eq!(msg.len(), NLMSG_HDRLEN + NFGENMSG_LEN);
        // Nothing to compare: no filter at all.
        let msg = dump_request(1, Family::V4, Some(&KernelFilter::default()));
        assert_eq!(msg.len(), NLMSG_HDRLEN + NFGENMSG_LEN);
    }

    #[test]
    fn malformed_entries_are_errors_not_panics() {
        let mut payload = vec![libc::AF_INET as u8, 0, 0, 0];
        assert!(decode_flow(&payload).is_err()); // no tuples
        payload.extend_from_slice(&[8, 0, 1, 0x80, 4, 0, 1, 0x80]); // empty CTA_TUPLE_IP
        assert!(decode_flow(&payload).is_err());
        assert!(decode_flow(&[2, 0]).is_err());
        assert!(Attrs::parse(&[200, 0, 1, 0, 1, 2, 3, 4]).is_err());
        let bad_port = {
            let mut out = Vec::new();
            put(&mut out, CTA_PROTO_SRC_PORT, &[1]);
            out
        };
        let attrs = Attrs::parse(&bad_port).unwrap();
        assert!(attrs.array::<2>(CTA_PROTO_SRC_PORT, "port").is_err());
    }
}
