//! The typed view of IPVS objects: what the agent reasons about, independent of the wire format.
//!
//! The shapes follow the kernel's own split: a virtual [`Service`] (identified by a
//! [`ServiceKey`]), its real servers ([`Destination`]) and the global [`Info`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::{BitOr, BitOrAssign};

/// Address family of a service or destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Inet,
    Inet6,
}

impl Family {
    /// The `AF_*` value the kernel expects in `IPVS_SVC_ATTR_AF` / `IPVS_DEST_ATTR_ADDR_FAMILY`.
    pub fn raw(self) -> u16 {
        match self {
            Family::Inet => libc::AF_INET as u16,
            Family::Inet6 => libc::AF_INET6 as u16,
        }
    }

    pub fn from_raw(af: u16) -> Option<Family> {
        match i32::from(af) {
            libc::AF_INET => Some(Family::Inet),
            libc::AF_INET6 => Some(Family::Inet6),
            _ => None,
        }
    }

    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::Inet,
            IpAddr::V6(_) => Family::Inet6,
        }
    }

    /// The unspecified address of this family (`0.0.0.0` or `::`).
    pub fn unspecified(self) -> IpAddr {
        match self {
            Family::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Family::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        }
    }

    /// Longest prefix: the "one client, one template" persistence granularity.
    pub fn max_prefix(self) -> u8 {
        match self {
            Family::Inet => 32,
            Family::Inet6 => 128,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Inet => "IPv4",
            Family::Inet6 => "IPv6",
        })
    }
}

/// Transport protocol of an address-based virtual service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The `IPPROTO_*` number (`IPVS_SVC_ATTR_PROTOCOL` is a host-order u16).
    pub fn raw(self) -> u16 {
        match self {
            Protocol::Tcp => libc::IPPROTO_TCP as u16,
            Protocol::Udp => libc::IPPROTO_UDP as u16,
            Protocol::Sctp => libc::IPPROTO_SCTP as u16,
        }
    }

    pub fn from_raw(proto: u16) -> Option<Protocol> {
        match i32::from(proto) {
            libc::IPPROTO_TCP => Some(Protocol::Tcp),
            libc::IPPROTO_UDP => Some(Protocol::Udp),
            libc::IPPROTO_SCTP => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// Identity of a virtual service: the kernel looks services up either by
/// (protocol, address, port) or by firewall mark, never by both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceKey {
    Addr {
        protocol: Protocol,
        addr: IpAddr,
        port: u16,
    },
    Fwmark {
        family: Family,
        mark: u32,
    },
}

impl ServiceKey {
    pub fn family(&self) -> Family {
        match self {
            ServiceKey::Addr { addr, .. } => Family::of(addr),
            ServiceKey::Fwmark { family, .. } => *family,
        }
    }
}

/// Formats like `ipvsadm -Ln` does: `TCP 10.96.0.10:80`, `UDP [fd00::a]:53`, `FWM 7 IPv4`.
impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceKey::Addr {
                protocol,
                addr: IpAddr::V4(a),
                port,
            } => write!(f, "{protocol} {a}:{port}"),
            ServiceKey::Addr {
                protocol,
                addr: IpAddr::V6(a),
                port,
            } => write!(f, "{protocol} [{a}]:{port}"),
            ServiceKey::Fwmark { family, mark } => write!(f, "FWM {mark} {family}"),
        }
    }
}

/// Virtual service flags (`IP_VS_SVC_F_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceFlags(u32);

impl ServiceFlags {
    pub const EMPTY: ServiceFlags = ServiceFlags(0);
    /// Session affinity: connections of one client go to the same real server for `timeout`.
    pub const PERSISTENT: ServiceFlags = ServiceFlags(0x0001);
    /// Kernel-internal "service is in the hash table". Set on every live service; the decoder
    /// strips it so a dumped service compares equal to the one that was created.
    pub const HASHED: ServiceFlags = ServiceFlags(0x0002);
    /// One-packet scheduling (UDP): every datagram is scheduled on its own.
    pub const ONEPACKET: ServiceFlags = ServiceFlags(0x0004);
    pub const SCHED1: ServiceFlags = ServiceFlags(0x0008);
    pub const SCHED2: ServiceFlags = ServiceFlags(0x0010);
    pub const SCHED3: ServiceFlags = ServiceFlags(0x0020);
    /// `sh` scheduler: fall back to another server when the hashed one is unavailable.
    pub const SH_FALLBACK: ServiceFlags = ServiceFlags::SCHED1;
    /// `sh` scheduler: hash the source port too.
    pub const SH_PORT: ServiceFlags = ServiceFlags::SCHED2;

    pub const fn from_bits(bits: u32) -> ServiceFlags {
        ServiceFlags(bits)
    }

    pub const fn bits(self) -> u32 {
        self.0
    }

    pub const fn contains(self, other: ServiceFlags) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub const fn without(self, other: ServiceFlags) -> ServiceFlags {
        ServiceFlags(self.0 & !other.0)
    }
}

impl BitOr for ServiceFlags {
    type Output = ServiceFlags;
    fn bitor(self, rhs: ServiceFlags) -> ServiceFlags {
        ServiceFlags(self.0 | rhs.0)
    }
}

impl BitOrAssign for ServiceFlags {
    fn bitor_assign(&mut self, rhs: ServiceFlags) {
        self.0 |= rhs.0;
    }
}

/// A virtual service (`ipvsadm -A`).
///
/// The flat shape mirrors `struct ip_vs_service_user`. When `fwmark` is `Some`, the service
/// is matched by firewall mark and `protocol`, `addr` and `port` are not sent; the decoder
/// fills them with `Tcp`, the unspecified address and 0 (what the kernel stores internally).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub family: Family,
    pub protocol: Protocol,
    pub addr: IpAddr,
    pub port: u16,
    pub fwmark: Option<u32>,
    /// Scheduler name (`rr`, `wrr`, `lc`, `sh`, `mh`, ...); its module must be loaded (or
    /// loadable) or the kernel answers ENOENT.
    pub scheduler: String,
    pub flags: ServiceFlags,
    /// Persistence timeout in seconds (meaningful with [`ServiceFlags::PERSISTENT`]).
    pub timeout: u32,
    /// Persistence granularity as a prefix length: 32 (IPv4) or 128 (IPv6) means per client.
    pub netmask: u8,
}

impl Service {
    /// An address-based service with the kernel's defaults: `rr`, no flags, per-client netmask.
    pub fn new(protocol: Protocol, addr: IpAddr, port: u16) -> Service {
        let family = Family::of(&addr);
        Service {
            family,
            protocol,
            addr,
            port,
            fwmark: None,
            scheduler: "rr".to_string(),
            flags: ServiceFlags::EMPTY,
            timeout: 0,
            netmask: family.max_prefix(),
        }
    }

    /// A firewall-mark service.
    pub fn with_fwmark(family: Family, mark: u32) -> Service {
        Service {
            family,
            protocol: Protocol::Tcp,
            addr: family.unspecified(),
            port: 0,
            fwmark: Some(mark),
            scheduler: "rr".to_string(),
            flags: ServiceFlags::EMPTY,
            timeout: 0,
            netmask: family.max_prefix(),
        }
    }

    /// Builder: choose the scheduler.
    pub fn scheduler(mut self, name: &str) -> Service {
        self.scheduler = name.to_string();
        self
    }

    /// Builder: session affinity for `timeout` seconds.
    pub fn persistent(mut self, timeout: u32) -> Service {
        self.flags |= ServiceFlags::PERSISTENT;
        self.timeout = timeout;
        self
    }

    /// The identity the kernel looks this service up by.
    pub fn key(&self) -> ServiceKey {
        match self.fwmark {
            Some(mark) => ServiceKey::Fwmark {
                family: self.family,
                mark,
            },
            None => ServiceKey::Addr {
                protocol: self.protocol,
                addr: self.addr,
                port: self.port,
            },
        }
    }
}

/// How IPVS forwards packets to a real server (`IP_VS_CONN_F_FWD_MASK` of the conn flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ForwardMethod {
    /// NAT (`-m`): what a Kubernetes service proxy uses.
    Masq,
    /// `IP_VS_CONN_F_LOCALNODE`. Old kernels reported NAT destinations on a local address
    /// this way; 6.1 reports them as `Masq`, as sent.
    Local,
    /// IP-in-IP (`-i`).
    Tunnel,
    /// Direct routing (`-g`).
    Route,
    /// Cache bypass; kernel-internal.
    Bypass,
}

impl ForwardMethod {
    pub fn raw(self) -> u32 {
        match self {
            ForwardMethod::Masq => 0,
            ForwardMethod::Local => 1,
            ForwardMethod::Tunnel => 2,
            ForwardMethod::Route => 3,
            ForwardMethod::Bypass => 4,
        }
    }

    /// Decodes the forwarding method from conn flags (only the low 3 bits matter).
    pub fn from_raw(conn_flags: u32) -> Option<ForwardMethod> {
        match conn_flags & 0x7 {
            0 => Some(ForwardMethod::Masq),
            1 => Some(ForwardMethod::Local),
            2 => Some(ForwardMethod::Tunnel),
            3 => Some(ForwardMethod::Route),
            4 => Some(ForwardMethod::Bypass),
            _ => None,
        }
    }
}

/// A real server of a service (`ipvsadm -a`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub addr: IpAddr,
    pub port: u16,
    /// 0 keeps existing connections but schedules no new ones (graceful termination).
    /// The kernel stores an `int`: values above `i32::MAX` are rejected.
    pub weight: u32,
    pub forward: ForwardMethod,
    /// Upper connection threshold (0 = none).
    pub upper_threshold: u32,
    /// Lower connection threshold (0 = none).
    pub lower_threshold: u32,
    /// Read-only (ignored when sending): connections in ESTABLISHED-like states.
    pub active_conns: u32,
    /// Read-only: connections in other states (e.g. TIME_WAIT, UDP).
    pub inactive_conns: u32,
    /// Read-only: persistence templates pointing at this server.
    pub persistent_conns: u32,
}

impl Destination {
    /// A NAT destination with no thresholds.
    pub fn new(addr: IpAddr, port: u16, weight: u32) -> Destination {
        Destination {
            addr,
            port,
            weight,
            forward: ForwardMethod::Masq,
            upper_threshold: 0,
            lower_threshold: 0,
            active_conns: 0,
            inactive_conns: 0,
            persistent_conns: 0,
        }
    }

    pub fn family(&self) -> Family {
        Family::of(&self.addr)
    }

    /// The same destination with the read-only counters zeroed, for comparing desired state
    /// with dumped state.
    pub fn config(&self) -> Destination {
        Destination {
            active_conns: 0,
            inactive_conns: 0,
            persistent_conns: 0,
            ..self.clone()
        }
    }
}

/// IPVS version (`IP_VS_VERSION_CODE`, e.g. 1.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version {
    pub major: u8,
    pub minor: u8,
    pub patch: u8,
}

impl Version {
    pub fn from_code(code: u32) -> Version {
        let [_, major, minor, patch] = code.to_be_bytes();
        Version {
            major,
            minor,
            patch,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Global IPVS information (`IPVS_CMD_GET_INFO`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Info {
    pub version: Version,
    /// Size of the connection hash table (the `ip_vs_conn_tab_bits` module parameter).
    pub conn_table_size: u32,
}
