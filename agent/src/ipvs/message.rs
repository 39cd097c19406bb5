//! Wire format of the IPVS generic netlink family (`include/uapi/linux/ip_vs.h`).
//!
//! Two layers: raw attributes ([`ServiceAttr`], [`DestAttr`], [`InfoAttr`], nested in
//! [`CmdAttr`]) that round-trip anything the kernel sends, and the conversions between those
//! attributes and the typed [`Service`], [`Destination`] and [`Info`].
//!
//! Byte order is the kernel's, attribute by attribute: ports and the IPv4 netmask are
//! big-endian (`nla_put_be16/be32`), everything else is host order; addresses are always the
//! 16 bytes of `union nf_inet_addr`, IPv4 in the first 4.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, NLA_F_NESTED, Nla, NlaBuffer, NlasIterator, Parseable,
    ParseableParametrized, parse_string, parse_u16, parse_u16_be, parse_u32,
};
use netlink_packet_generic::{GenlFamily, GenlHeader};

use super::types::{
    Destination, Family, ForwardMethod, Info, Protocol, Service, ServiceFlags, ServiceKey, Version,
};

/// Generic netlink family name, resolved to a dynamic id through `nlctrl`.
pub const IPVS_GENL_NAME: &str = "IPVS";
/// `IPVS_GENL_VERSION`.
pub const IPVS_GENL_VERSION: u8 = 1;

/// Longest scheduler name, without its NUL (`IP_VS_SCHEDNAME_MAXLEN` - 1).
pub const SCHED_NAME_MAX: usize = 15;

/// `IPVS_CMD_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Command {
    NewService = 1,
    SetService = 2,
    DelService = 3,
    GetService = 4,
    NewDest = 5,
    SetDest = 6,
    DelDest = 7,
    GetDest = 8,
    NewDaemon = 9,
    DelDaemon = 10,
    GetDaemon = 11,
    SetConfig = 12,
    GetConfig = 13,
    /// Only used as the command of the `GetInfo` reply.
    SetInfo = 14,
    GetInfo = 15,
    Zero = 16,
    Flush = 17,
}

impl Command {
    pub fn from_raw(cmd: u8) -> Option<Command> {
        use Command::*;
        Some(match cmd {
            1 => NewService,
            2 => SetService,
            3 => DelService,
            4 => GetService,
            5 => NewDest,
            6 => SetDest,
            7 => DelDest,
            8 => GetDest,
            9 => NewDaemon,
            10 => DelDaemon,
            11 => GetDaemon,
            12 => SetConfig,
            13 => GetConfig,
            14 => SetInfo,
            15 => GetInfo,
            16 => Zero,
            17 => Flush,
            _ => return None,
        })
    }
}

// IPVS_CMD_ATTR_*
const CMD_ATTR_SERVICE: u16 = 1;
const CMD_ATTR_DEST: u16 = 2;

// IPVS_SVC_ATTR_*
const SVC_ATTR_AF: u16 = 1;
const SVC_ATTR_PROTOCOL: u16 = 2;
const SVC_ATTR_ADDR: u16 = 3;
const SVC_ATTR_PORT: u16 = 4;
const SVC_ATTR_FWMARK: u16 = 5;
const SVC_ATTR_SCHED_NAME: u16 = 6;
const SVC_ATTR_FLAGS: u16 = 7;
const SVC_ATTR_TIMEOUT: u16 = 8;
const SVC_ATTR_NETMASK: u16 = 9;
const SVC_ATTR_PE_NAME: u16 = 11;

// IPVS_DEST_ATTR_*
const DEST_ATTR_ADDR: u16 = 1;
const DEST_ATTR_PORT: u16 = 2;
const DEST_ATTR_FWD_METHOD: u16 = 3;
const DEST_ATTR_WEIGHT: u16 = 4;
const DEST_ATTR_U_THRESH: u16 = 5;
const DEST_ATTR_L_THRESH: u16 = 6;
const DEST_ATTR_ACTIVE_CONNS: u16 = 7;
const DEST_ATTR_INACT_CONNS: u16 = 8;
const DEST_ATTR_PERSIST_CONNS: u16 = 9;
const DEST_ATTR_ADDR_FAMILY: u16 = 11;

// IPVS_INFO_ATTR_*
const INFO_ATTR_VERSION: u16 = 1;
const INFO_ATTR_CONN_TAB_SIZE: u16 = 2;

/// Size of `union nf_inet_addr`: the kernel always sends 16 bytes and `nla_memcpy`s what it
/// receives into 16 bytes, so we always send 16.
const ADDR_LEN: usize = 16;

/// `struct ip_vs_flags`: the kernel computes `(old & ~mask) | (flags & mask)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlagsMask {
    pub flags: u32,
    pub mask: u32,
}

/// Attributes nested in `IPVS_CMD_ATTR_SERVICE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceAttr {
    Af(u16),
    Protocol(u16),
    Addr([u8; ADDR_LEN]),
    /// Host-order value; big-endian on the wire.
    Port(u16),
    Fwmark(u32),
    SchedName(String),
    Flags(FlagsMask),
    Timeout(u32),
    /// Raw 4 bytes: for IPv4 a big-endian mask, for IPv6 a host-order prefix length (the
    /// kernel reads both with `nla_get_be32` and casts for IPv6).
    Netmask([u8; 4]),
    PeName(String),
    /// Statistics and anything newer than this code.
    Other(DefaultNla),
}

/// Attributes nested in `IPVS_CMD_ATTR_DEST`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DestAttr {
    Addr([u8; ADDR_LEN]),
    /// Host-order value; big-endian on the wire.
    Port(u16),
    FwdMethod(u32),
    Weight(u32),
    UpperThreshold(u32),
    LowerThreshold(u32),
    ActiveConns(u32),
    InactiveConns(u32),
    PersistConns(u32),
    AddrFamily(u16),
    /// Statistics, tunnel settings and anything newer than this code.
    Other(DefaultNla),
}

/// Top-level attributes of the `IPVS_CMD_SET_INFO` reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InfoAttr {
    Version(u32),
    ConnTableSize(u32),
    Other(DefaultNla),
}

/// Top-level attributes of the service and destination commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CmdAttr {
    Service(Vec<ServiceAttr>),
    Dest(Vec<DestAttr>),
    Other(DefaultNla),
}

/// The top-level attribute numbers of `GET_INFO` replies collide with the command attributes,
/// so which set applies depends on the command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attrs {
    Cmd(Vec<CmdAttr>),
    Info(Vec<InfoAttr>),
}

/// One IPVS generic netlink message (the part after the genl header).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpvsMessage {
    pub cmd: u8,
    pub attrs: Attrs,
}

impl IpvsMessage {
    pub fn new(cmd: Command, attrs: Vec<CmdAttr>) -> IpvsMessage {
        IpvsMessage {
            cmd: cmd as u8,
            attrs: Attrs::Cmd(attrs),
        }
    }

    /// The nested service attributes, if the message carries one.
    pub fn service_attrs(&self) -> Option<&[ServiceAttr]> {
        match &self.attrs {
            Attrs::Cmd(attrs) => attrs.iter().find_map(|a| match a {
                CmdAttr::Service(s) => Some(s.as_slice()),
                _ => None,
            }),
            Attrs::Info(_) => None,
        }
    }

    /// The nested destination attributes, if the message carries one.
    pub fn dest_attrs(&self) -> Option<&[DestAttr]> {
        match &self.attrs {
            Attrs::Cmd(attrs) => attrs.iter().find_map(|a| match a {
                CmdAttr::Dest(d) => Some(d.as_slice()),
                _ => None,
            }),
            Attrs::Info(_) => None,
        }
    }
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        IPVS_GENL_NAME
    }

    fn command(&self) -> u8 {
        self.cmd
    }

    fn version(&self) -> u8 {
        IPVS_GENL_VERSION
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        match &self.attrs {
            Attrs::Cmd(a) => a.as_slice().buffer_len(),
            Attrs::Info(a) => a.as_slice().buffer_len(),
        }
    }

    fn emit(&self, buffer: &mut [u8]) {
        match &self.attrs {
            Attrs::Cmd(a) => a.as_slice().emit(buffer),
            Attrs::Info(a) => a.as_slice().emit(buffer),
        }
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let info = header.cmd == Command::SetInfo as u8 || header.cmd == Command::GetInfo as u8;
        let attrs = if info {
            Attrs::Info(parse_nlas(buf, InfoAttr::parse_nla)?)
        } else {
            Attrs::Cmd(parse_nlas(buf, CmdAttr::parse_nla)?)
        };
        Ok(IpvsMessage {
            cmd: header.cmd,
            attrs,
        })
    }
}

fn parse_nlas<T>(
    buf: &[u8],
    parse: fn(&NlaBuffer<&[u8]>) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    NlasIterator::new(buf)
        .map(|nla| nla.and_then(|nla| parse(&nla)))
        .collect()
}

fn parse_addr(value: &[u8]) -> Result<[u8; ADDR_LEN], DecodeError> {
    // Tolerate 4-byte IPv4 addresses (the kernel itself zero-pads short ones).
    if value.len() != ADDR_LEN && value.len() != 4 {
        return Err(DecodeError::invalid_ip_address(value.len()));
    }
    let mut addr = [0u8; ADDR_LEN];
    addr[..value.len()].copy_from_slice(value);
    Ok(addr)
}

fn parse_4(value: &[u8]) -> Result<[u8; 4], DecodeError> {
    value
        .try_into()
        .map_err(|_| DecodeError::invalid_number(4, value.len()))
}

fn emit_nested<T: Nla>(attrs: &[T], buffer: &mut [u8]) {
    attrs.emit(buffer)
}

impl Nla for ServiceAttr {
    fn value_len(&self) -> usize {
        use ServiceAttr::*;
        match self {
            Af(_) | Protocol(_) | Port(_) => 2,
            Fwmark(_) | Timeout(_) | Netmask(_) => 4,
            Addr(_) => ADDR_LEN,
            SchedName(s) | PeName(s) => s.len() + 1,
            Flags(_) => 8,
            Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        use ServiceAttr::*;
        match self {
            Af(_) => SVC_ATTR_AF,
            Protocol(_) => SVC_ATTR_PROTOCOL,
            Addr(_) => SVC_ATTR_ADDR,
            Port(_) => SVC_ATTR_PORT,
            Fwmark(_) => SVC_ATTR_FWMARK,
            SchedName(_) => SVC_ATTR_SCHED_NAME,
            Flags(_) => SVC_ATTR_FLAGS,
            Timeout(_) => SVC_ATTR_TIMEOUT,
            Netmask(_) => SVC_ATTR_NETMASK,
            PeName(_) => SVC_ATTR_PE_NAME,
            Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        use ServiceAttr::*;
        match self {
            Af(v) | Protocol(v) => buffer[..2].copy_from_slice(&v.to_ne_bytes()),
            Port(v) => buffer[..2].copy_from_slice(&v.to_be_bytes()),
            Fwmark(v) | Timeout(v) => buffer[..4].copy_from_slice(&v.to_ne_bytes()),
            Netmask(raw) => buffer[..4].copy_from_slice(raw),
            Addr(a) => buffer[..ADDR_LEN].copy_from_slice(a),
            SchedName(s) | PeName(s) => {
                buffer[..s.len()].copy_from_slice(s.as_bytes());
                buffer[s.len()] = 0;
            }
            Flags(f) => {
                buffer[..4].copy_from_slice(&f.flags.to_ne_bytes());
                buffer[4..8].copy_from_slice(&f.mask.to_ne_bytes());
            }
            Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl ServiceAttr {
    fn parse_nla(buf: &NlaBuffer<&[u8]>) -> Result<Self, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() {
            SVC_ATTR_AF => ServiceAttr::Af(parse_u16(v)?),
            SVC_ATTR_PROTOCOL => ServiceAttr::Protocol(parse_u16(v)?),
            SVC_ATTR_ADDR => ServiceAttr::Addr(parse_addr(v)?),
            SVC_ATTR_PORT => ServiceAttr::Port(parse_u16_be(v)?),
            SVC_ATTR_FWMARK => ServiceAttr::Fwmark(parse_u32(v)?),
            SVC_ATTR_SCHED_NAME => ServiceAttr::SchedName(parse_string(v)?),
            SVC_ATTR_FLAGS => {
                if v.len() != 8 {
                    return Err(DecodeError::invalid_number(8, v.len()));
                }
                ServiceAttr::Flags(FlagsMask {
                    flags: parse_u32(&v[..4])?,
                    mask: parse_u32(&v[4..8])?,
                })
            }
            SVC_ATTR_TIMEOUT => ServiceAttr::Timeout(parse_u32(v)?),
            SVC_ATTR_NETMASK => ServiceAttr::Netmask(parse_4(v)?),
            SVC_ATTR_PE_NAME => ServiceAttr::PeName(parse_string(v)?),
            _ => ServiceAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

impl Nla for DestAttr {
    fn value_len(&self) -> usize {
        use DestAttr::*;
        match self {
            Addr(_) => ADDR_LEN,
            Port(_) | AddrFamily(_) => 2,
            FwdMethod(_) | Weight(_) | UpperThreshold(_) | LowerThreshold(_) | ActiveConns(_)
            | InactiveConns(_) | PersistConns(_) => 4,
            Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        use DestAttr::*;
        match self {
            Addr(_) => DEST_ATTR_ADDR,
            Port(_) => DEST_ATTR_PORT,
            FwdMethod(_) => DEST_ATTR_FWD_METHOD,
            Weight(_) => DEST_ATTR_WEIGHT,
            UpperThreshold(_) => DEST_ATTR_U_THRESH,
            LowerThreshold(_) => DEST_ATTR_L_THRESH,
            ActiveConns(_) => DEST_ATTR_ACTIVE_CONNS,
            InactiveConns(_) => DEST_ATTR_INACT_CONNS,
            PersistConns(_) => DEST_ATTR_PERSIST_CONNS,
            AddrFamily(_) => DEST_ATTR_ADDR_FAMILY,
            Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        use DestAttr::*;
        match self {
            Addr(a) => buffer[..ADDR_LEN].copy_from_slice(a),
            Port(v) => buffer[..2].copy_from_slice(&v.to_be_bytes()),
            AddrFamily(v) => buffer[..2].copy_from_slice(&v.to_ne_bytes()),
            FwdMethod(v) | Weight(v) | UpperThreshold(v) | LowerThreshold(v) | ActiveConns(v)
            | InactiveConns(v) | PersistConns(v) => buffer[..4].copy_from_slice(&v.to_ne_bytes()),
            Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl DestAttr {
    fn parse_nla(buf: &NlaBuffer<&[u8]>) -> Result<Self, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() {
            DEST_ATTR_ADDR => DestAttr::Addr(parse_addr(v)?),
            DEST_ATTR_PORT => DestAttr::Port(parse_u16_be(v)?),
            DEST_ATTR_FWD_METHOD => DestAttr::FwdMethod(parse_u32(v)?),
            DEST_ATTR_WEIGHT => DestAttr::Weight(parse_u32(v)?),
            DEST_ATTR_U_THRESH => DestAttr::UpperThreshold(parse_u32(v)?),
            DEST_ATTR_L_THRESH => DestAttr::LowerThreshold(parse_u32(v)?),
            DEST_ATTR_ACTIVE_CONNS => DestAttr::ActiveConns(parse_u32(v)?),
            DEST_ATTR_INACT_CONNS => DestAttr::InactiveConns(parse_u32(v)?),
            DEST_ATTR_PERSIST_CONNS => DestAttr::PersistConns(parse_u32(v)?),
            DEST_ATTR_ADDR_FAMILY => DestAttr::AddrFamily(parse_u16(v)?),
            _ => DestAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

impl Nla for InfoAttr {
    fn value_len(&self) -> usize {
        match self {
            InfoAttr::Version(_) | InfoAttr::ConnTableSize(_) => 4,
            InfoAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            InfoAttr::Version(_) => INFO_ATTR_VERSION,
            InfoAttr::ConnTableSize(_) => INFO_ATTR_CONN_TAB_SIZE,
            InfoAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            InfoAttr::Version(v) | InfoAttr::ConnTableSize(v) => {
                buffer[..4].copy_from_slice(&v.to_ne_bytes())
            }
            InfoAttr::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl InfoAttr {
    fn parse_nla(buf: &NlaBuffer<&[u8]>) -> Result<Self, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() {
            INFO_ATTR_VERSION => InfoAttr::Version(parse_u32(v)?),
            INFO_ATTR_CONN_TAB_SIZE => InfoAttr::ConnTableSize(parse_u32(v)?),
            _ => InfoAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

impl Nla for CmdAttr {
    fn value_len(&self) -> usize {
        match self {
            CmdAttr::Service(a) => a.as_slice().buffer_len(),
            CmdAttr::Dest(a) => a.as_slice().buffer_len(),
            CmdAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        // The kernel parses these with the deprecated (lenient) parser and replies without
        // NLA_F_NESTED; setting it is correct and accepted.
        match self {
            CmdAttr::Service(_) => CMD_ATTR_SERVICE | NLA_F_NESTED,
            CmdAttr::Dest(_) => CMD_ATTR_DEST | NLA_F_NESTED,
            CmdAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            CmdAttr::Service(a) => emit_nested(a, buffer),
            CmdAttr::Dest(a) => emit_nested(a, buffer),
            CmdAttr::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl CmdAttr {
    fn parse_nla(buf: &NlaBuffer<&[u8]>) -> Result<Self, DecodeError> {
        Ok(match buf.kind() {
            CMD_ATTR_SERVICE => CmdAttr::Service(parse_nlas(buf.value(), ServiceAttr::parse_nla)?),
            CMD_ATTR_DEST => CmdAttr::Dest(parse_nlas(buf.value(), DestAttr::parse_nla)?),
            _ => CmdAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

// ---- typed <-> attributes ----

fn addr_bytes(addr: &IpAddr) -> [u8; ADDR_LEN] {
    let mut out = [0u8; ADDR_LEN];
    match addr {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out.copy_from_slice(&a.octets()),
    }
    out
}

fn addr_from_bytes(family: Family, raw: &[u8; ADDR_LEN]) -> IpAddr {
    match family {
        Family::Inet => IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
        Family::Inet6 => IpAddr::V6(Ipv6Addr::from(*raw)),
    }
}

/// Wire form of the persistence netmask: IPv4 sends the mask itself in network order, IPv6
/// sends the prefix length as a host-order u32 (that is what ipvsadm does and what
/// `ip_vs_add_service` checks: 1..=128).
fn netmask_raw(family: Family, prefix: u8) -> [u8; 4] {
    match family {
        Family::Inet => {
            let prefix = u32::from(prefix.min(32));
            let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
            mask.to_be_bytes()
        }
        Family::Inet6 => u32::from(prefix).to_ne_bytes(),
    }
}

/// Inverse of [`netmask_raw`]. A non-contiguous IPv4 mask (possible through ipvsadm, never
/// through us) is reported by its leading ones.
fn netmask_prefix(family: Family, raw: [u8; 4]) -> Result<u8, DecodeError> {
    match family {
        Family::Inet => Ok(u32::from_be_bytes(raw).leading_ones() as u8),
        Family::Inet6 => {
            let plen = u32::from_ne_bytes(raw);
            u8::try_from(plen)
                .ok()
                .filter(|p| *p <= 128)
                .ok_or_else(|| DecodeError::from(format!("IPv6 netmask prefix {plen} > 128")))
        }
    }
}

/// Attributes that identify a service: AF plus either FWMARK or PROTOCOL/ADDR/PORT.
/// Enough for delete, get and the destination commands.
pub fn service_key_attrs(key: &ServiceKey) -> Vec<ServiceAttr> {
    match key {
        ServiceKey::Addr {
            protocol,
            addr,
            port,
        } => vec![
            ServiceAttr::Af(Family::of(addr).raw()),
            ServiceAttr::Protocol(protocol.raw()),
            ServiceAttr::Addr(addr_bytes(addr)),
            ServiceAttr::Port(*port),
        ],
        ServiceKey::Fwmark { family, mark } => {
            vec![ServiceAttr::Af(family.raw()), ServiceAttr::Fwmark(*mark)]
        }
    }
}

/// The full service entry, as `IPVS_CMD_NEW_SERVICE` / `SET_SERVICE` require: the kernel
/// rejects (EINVAL) a full entry missing any of SCHED_NAME, FLAGS, TIMEOUT, NETMASK.
pub fn service_attrs(svc: &Service) -> Vec<ServiceAttr> {
    let mut attrs = service_key_attrs(&svc.key());
    attrs.extend([
        ServiceAttr::SchedName(svc.scheduler.clone()),
        // mask = all ones: the flags we send become the service's flags exactly (declarative),
        // instead of being merged with whatever a previous writer left.
        ServiceAttr::Flags(FlagsMask {
            flags: svc.flags.bits(),
            mask: u32::MAX,
        }),
        ServiceAttr::Timeout(svc.timeout),
        ServiceAttr::Netmask(netmask_raw(svc.family, svc.netmask)),
    ]);
    attrs
}

fn missing(what: &str) -> DecodeError {
    DecodeError::from(format!("missing attribute {what}"))
}

/// Decodes a service from its nested attributes (dump or get reply).
pub fn parse_service(attrs: &[ServiceAttr]) -> Result<Service, DecodeError> {
    let mut af = None;
    let mut protocol = None;
    let mut addr = None;
    let mut port = None;
    let mut fwmark = None;
    let mut sched = None;
    let mut flags = None;
    let mut timeout = None;
    let mut netmask = None;
    for a in attrs {
        match a {
            ServiceAttr::Af(v) => af = Some(*v),
            ServiceAttr::Protocol(v) => protocol = Some(*v),
            ServiceAttr::Addr(v) => addr = Some(*v),
            ServiceAttr::Port(v) => port = Some(*v),
            ServiceAttr::Fwmark(v) => fwmark = Some(*v),
            ServiceAttr::SchedName(v) => sched = Some(v.clone()),
            ServiceAttr::Flags(v) => flags = Some(*v),
            ServiceAttr::Timeout(v) => timeout = Some(*v),
            ServiceAttr::Netmask(v) => netmask = Some(*v),
            ServiceAttr::PeName(_) | ServiceAttr::Other(_) => {}
        }
    }
    let af = af.ok_or_else(|| missing("IPVS_SVC_ATTR_AF"))?;
    let family = Family::from_raw(af)
        .ok_or_else(|| DecodeError::from(format!("unknown service address family {af}")))?;
    // The kernel sends FWMARK only for fwmark services (and then no protocol/addr/port).
    let fwmark = fwmark.filter(|m| *m != 0);
    let (protocol, addr, port) = match fwmark {
        Some(_) => (Protocol::Tcp, family.unspecified(), 0),
        None => {
            let raw = protocol.ok_or_else(|| missing("IPVS_SVC_ATTR_PROTOCOL"))?;
            let protocol = Protocol::from_raw(raw)
                .ok_or_else(|| DecodeError::from(format!("unknown service protocol {raw}")))?;
            let addr = addr.ok_or_else(|| missing("IPVS_SVC_ATTR_ADDR"))?;
            let port = port.ok_or_else(|| missing("IPVS_SVC_ATTR_PORT"))?;
            (protocol, addr_from_bytes(family, &addr), port)
        }
    };
    let flags = flags.ok_or_else(|| missing("IPVS_SVC_ATTR_FLAGS"))?;
    let netmask = netmask.ok_or_else(|| missing("IPVS_SVC_ATTR_NETMASK"))?;
    Ok(Service {
        family,
        protocol,
        addr,
        port,
        fwmark,
        scheduler: sched.ok_or_else(|| missing("IPVS_SVC_ATTR_SCHED_NAME"))?,
        // HASHED is kernel bookkeeping, set on every live service.
        flags: ServiceFlags::from_bits(flags.flags & flags.mask).without(ServiceFlags::HASHED),
        timeout: timeout.ok_or_else(|| missing("IPVS_SVC_ATTR_TIMEOUT"))?,
        netmask: netmask_prefix(family, netmask)?,
    })
}

/// Attributes that identify a destination within its service (enough for delete).
pub fn dest_key_attrs(addr: &IpAddr, port: u16) -> Vec<DestAttr> {
    vec![
        DestAttr::Addr(addr_bytes(addr)),
        DestAttr::Port(port),
        DestAttr::AddrFamily(Family::of(addr).raw()),
    ]
}

/// The full destination entry (`NEW_DEST` / `SET_DEST` require FWD_METHOD, WEIGHT and both
/// thresholds). The connection counters are read-only and not sent.
pub fn dest_attrs(dest: &Destination) -> Vec<DestAttr> {
    let mut attrs = dest_key_attrs(&dest.addr, dest.port);
    attrs.extend([
        DestAttr::FwdMethod(dest.forward.raw()),
        DestAttr::Weight(dest.weight),
        DestAttr::UpperThreshold(dest.upper_threshold),
        DestAttr::LowerThreshold(dest.lower_threshold),
    ]);
    attrs
}

/// Decodes a destination. `service_family` is used when the kernel does not send
/// `IPVS_DEST_ATTR_ADDR_FAMILY` (kernels before 4.1 only support same-family destinations).
pub fn parse_dest(attrs: &[DestAttr], service_family: Family) -> Result<Destination, DecodeError> {
    let mut addr = None;
    let mut port = None;
    let mut fwd = None;
    let mut weight = None;
    let mut upper = 0;
    let mut lower = 0;
    let mut active = 0;
    let mut inactive = 0;
    let mut persist = 0;
    let mut family = service_family;
    for a in attrs {
        match a {
            DestAttr::Addr(v) => addr = Some(*v),
            DestAttr::Port(v) => port = Some(*v),
            DestAttr::FwdMethod(v) => fwd = Some(*v),
            DestAttr::Weight(v) => weight = Some(*v),
            DestAttr::UpperThreshold(v) => upper = *v,
            DestAttr::LowerThreshold(v) => lower = *v,
            DestAttr::ActiveConns(v) => active = *v,
            DestAttr::InactiveConns(v) => inactive = *v,
            DestAttr::PersistConns(v) => persist = *v,
            DestAttr::AddrFamily(v) => {
                family = Family::from_raw(*v).ok_or_else(|| {
                    DecodeError::from(format!("unknown destination address family {v}"))
                })?
            }
            DestAttr::Other(_) => {}
        }
    }
    let addr = addr.ok_or_else(|| missing("IPVS_DEST_ATTR_ADDR"))?;
    let fwd = fwd.ok_or_else(|| missing("IPVS_DEST_ATTR_FWD_METHOD"))?;
    Ok(Destination {
        addr: addr_from_bytes(family, &addr),
        port: port.ok_or_else(|| missing("IPVS_DEST_ATTR_PORT"))?,
        weight: weight.ok_or_else(|| missing("IPVS_DEST_ATTR_WEIGHT"))?,
        forward: ForwardMethod::from_raw(fwd)
            .ok_or_else(|| DecodeError::from(format!("unknown forwarding method {fwd}")))?,
        upper_threshold: upper,
        lower_threshold: lower,
        active_conns: active,
        inactive_conns: inactive,
        persistent_conns: persist,
    })
}

/// Decodes the `GET_INFO` reply.
pub fn parse_info(attrs: &[InfoAttr]) -> Result<Info, DecodeError> {
    let mut version = None;
    let mut size = None;
    for a in attrs {
        match a {
            InfoAttr::Version(v) => version = Some(*v),
            InfoAttr::ConnTableSize(v) => size = Some(*v),
            InfoAttr::Other(_) => {}
        }
    }
    Ok(Info {
        version: Version::from_code(version.ok_or_else(|| missing("IPVS_INFO_ATTR_VERSION"))?),
        conn_table_size: size.ok_or_else(|| missing("IPVS_INFO_ATTR_CONN_TAB_SIZE"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(msg: &IpvsMessage) -> IpvsMessage {
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.emit(&mut buf);
        IpvsMessage::parse_with_param(
            &buf,
            GenlHeader {
                cmd: msg.cmd,
                version: IPVS_GENL_VERSION,
            },
        )
        .expect("parse back")
    }

    #[test]
    fn service_roundtrip_ipv4_persistent() {
        let svc = Service::new(Protocol::Tcp, "10.96.0.10".parse().unwrap(), 80)
            .scheduler("wrr")
            .persistent(10800);
        let msg = IpvsMessage::new(
            Command::NewService,
            vec![CmdAttr::Service(service_attrs(&svc))],
        );
        let back = roundtrip(&msg);
        assert_eq!(back, msg);
        let parsed = parse_service(back.service_attrs().unwrap()).unwrap();
        assert_eq!(parsed, svc);
    }

    #[test]
    fn service_roundtrip_ipv6_and_fwmark() {
        let svc = Service::new(Protocol::Udp, "fd00::53".parse().unwrap(), 53).scheduler("mh");
        let attrs = service_attrs(&svc);
        assert_eq!(parse_service(&attrs).unwrap(), svc);

        let fwm = Service::with_fwmark(Family::Inet6, 0x4000).scheduler("sh");
        let attrs = service_attrs(&fwm);
        assert!(!attrs.iter().any(|a| matches!(a, ServiceAttr::Addr(_))));
        assert_eq!(parse_service(&attrs).unwrap(), fwm);
    }

    #[test]
    fn wire_bytes_of_key_attributes() {
        // Port is big-endian, AF host order, address zero-padded to 16 bytes.
        let key = ServiceKey::Addr {
            protocol: Protocol::Udp,
            addr: "10.0.0.1".parse().unwrap(),
            port: 0x1234,
        };
        let attrs = service_key_attrs(&key);
        let nested = CmdAttr::Service(attrs);
        let mut buf = vec![0u8; nested.buffer_len()];
        nested.emit(&mut buf);
        // outer header: len, type = 1 | NESTED
        assert_eq!(&buf[2..4], &(1u16 | NLA_F_NESTED).to_ne_bytes());
        // AF: 8 bytes (4 hdr + 2 value + 2 pad)
        assert_eq!(&buf[4..10], &[6, 0, 1, 0, 2, 0]);
        // PROTOCOL = 17
        assert_eq!(&buf[12..18], &[6, 0, 2, 0, 17, 0]);
        // ADDR: 20 bytes, 10.0.0.1 then zeros
        assert_eq!(&buf[20..28], &[20, 0, 3, 0, 10, 0, 0, 1]);
        assert!(buf[28..40].iter().all(|b| *b == 0));
        // PORT big-endian
        assert_eq!(&buf[40..46], &[6, 0, 4, 0, 0x12, 0x34]);
    }

    #[test]
    fn netmask_encodings() {
        assert_eq!(netmask_raw(Family::Inet, 32), [255, 255, 255, 255]);
        assert_eq!(netmask_raw(Family::Inet, 24), [255, 255, 255, 0]);
        assert_eq!(netmask_raw(Family::Inet, 0), [0, 0, 0, 0]);
        assert_eq!(netmask_raw(Family::Inet6, 128), 128u32.to_ne_bytes());
        for p in [0u8, 1, 16, 31, 32] {
            assert_eq!(
                netmask_prefix(Family::Inet, netmask_raw(Family::Inet, p)).unwrap(),
                p
            );
        }
        assert!(netmask_prefix(Family::Inet6, 129u32.to_ne_bytes()).is_err());
    }

    #[test]
    fn hashed_flag_is_stripped() {
        let mut attrs = service_attrs(&Service::new(Protocol::Tcp, "1.2.3.4".parse().unwrap(), 1));
        for a in &mut attrs {
            if let ServiceAttr::Flags(f) = a {
                *f = FlagsMask {
                    flags: 0x3,
                    mask: u32::MAX,
                };
            }
        }
        assert_eq!(
            parse_service(&attrs).unwrap().flags,
            ServiceFlags::PERSISTENT
        );
    }

    #[test]
    fn dest_roundtrip_with_counters_and_unknown_attrs() {
        let mut d = Destination::new("fd00::2".parse().unwrap(), 8080, 3);
        d.forward = ForwardMethod::Tunnel;
        d.upper_threshold = 100;
        let mut attrs = dest_attrs(&d);
        attrs.push(DestAttr::ActiveConns(5));
        attrs.push(DestAttr::Other(DefaultNla::new(14, vec![1, 2]))); // TUN_PORT
        let msg = IpvsMessage::new(
            Command::NewDest,
            vec![
                CmdAttr::Service(service_key_attrs(&ServiceKey::Fwmark {
                    family: Family::Inet6,
                    mark: 1,
                })),
                CmdAttr::Dest(attrs),
            ],
        );
        let back = roundtrip(&msg);
        assert_eq!(back, msg);
        let parsed = parse_dest(back.dest_attrs().unwrap(), Family::Inet).unwrap();
        assert_eq!(parsed.active_conns, 5);
        assert_eq!(parsed.config(), d);
    }

    #[test]
    fn dest_family_defaults_to_service_family() {
        let d = Destination::new("10.0.0.2".parse().unwrap(), 80, 1);
        let attrs: Vec<_> = dest_attrs(&d)
            .into_iter()
            .filter(|a| !matches!(a, DestAttr::AddrFamily(_)))
            .collect();
        assert_eq!(parse_dest(&attrs, Family::Inet).unwrap(), d);
    }

    #[test]
    fn info_reply_uses_info_attribute_numbers() {
        let msg = IpvsMessage {
            cmd: Command::SetInfo as u8,
            attrs: Attrs::Info(vec![
                InfoAttr::Version(0x010201),
                InfoAttr::ConnTableSize(4096),
            ]),
        };
        let back = roundtrip(&msg);
        let Attrs::Info(attrs) = &back.attrs else {
            panic!("expected info attributes, got {back:?}");
        };
        let info = parse_info(attrs).unwrap();
        assert_eq!(info.version.to_string(), "1.2.1");
        assert_eq!(info.conn_table_size, 4096);
    }

    #[test]
    fn truncated_attributes_are_errors_not_panics() {
        let svc = Service::new(Protocol::Tcp, "10.0.0.1".parse().unwrap(), 80);
        let msg = IpvsMessage::new(
            Command::NewService,
            vec![CmdAttr::Service(service_attrs(&svc))],
        );
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.emit(&mut buf);
        for cut in 1..buf.len() {
            let header = GenlHeader {
                cmd: msg.cmd,
                version: 1,
            };
            // Must never panic; most cuts are errors.
            let _ = IpvsMessage::parse_with_param(&buf[..cut], header);
        }
        // A wrong-size PORT is an error.
        let bad = [6u8, 0, 4, 0, 1, 0, 0, 0, 7, 0, 4, 0, 1, 2, 3];
        assert!(parse_nlas(&bad[..], ServiceAttr::parse_nla).is_err());
    }
}
