//! Deleting stale conntrack entries through ctnetlink, without the `conntrack` binary.
//!
//! Why: a UDP "connection" never closes, so once conntrack has DNAT'd a client to an
//! endpoint, every later packet of that flow keeps going there, even after a sync
//! removed the endpoint from the rules: the entry, not the ruleset, decides. Like
//! kube-proxy's `CleanStaleEntries`, the sync deletes, for each UDP service port that
//! lost an endpoint, the entries whose original destination is the service address
//! and port and whose reply source is that endpoint; and for a UDP service port that
//! goes from no endpoints to some, every entry to the service address and port (they
//! were created, and rejected, while it had none).
//!
//! How: one `IPCTNL_MSG_CT_GET` dump per [`FlowFilter`], narrowed in the kernel with
//! `CTA_FILTER` (Linux 5.8+), then one `IPCTNL_MSG_CT_DELETE` per match carrying its
//! original tuple, zone and id. More than a few filters of a family share one dump,
//! narrowed by what they have in common, so a sync that removes hundreds of endpoints
//! does not walk the table hundreds of times. Every entry the kernel returns is checked
//! again here: older kernels ignore `CTA_FILTER` silently, some refuse it (`EINVAL`;
//! we then dump the family unfiltered), and the kernel compares IPv6 addresses the
//! wrong way round (see `meet`), so for IPv6 it narrows by protocol and ports only.

mod socket;
mod wire;

use std::collections::HashSet;
use std::net::IpAddr;

use socket::CtSocket;
use wire::KernelFilter;

pub const TCP: u8 = libc::IPPROTO_TCP as u8;
pub const UDP: u8 = libc::IPPROTO_UDP as u8;
pub const SCTP: u8 = libc::IPPROTO_SCTP as u8;

/// Up to this many filters of a family get one kernel-filtered dump each; more share
/// a single dump of the family.
const DUMPS_PER_FAMILY: usize = 8;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket itself failed (open, send, receive).
    #[error("conntrack netlink socket: {op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// The kernel refused a request. Displays as, e.g., "conntrack delete failed:
    /// Operation not permitted (os error 1)", plus the kernel's message if any.
    #[error("conntrack {op} failed: {}{}",
        std::io::Error::from_raw_os_error(*.errno),
        .detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    Kernel {
        op: &'static str,
        errno: i32,
        /// The kernel's extended-ack message, if it gave one.
        detail: Option<String>,
    },

    /// The kernel sent something we cannot parse.
    #[error("cannot decode conntrack entry: {0}")]
    Decode(String),

    /// A filter that makes no sense: a protocol without ports, an address of the
    /// other family.
    #[error("invalid conntrack filter: {0}")]
    InvalidFilter(String),
}

impl Error {
    fn io(op: &'static str, source: std::io::Error) -> Error {
        Error::Io { op, source }
    }

    fn kernel(op: &'static str, errno: i32, detail: Option<String>) -> Error {
        Error::Kernel { op, errno, detail }
    }
}

/// Address family of the entries to look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    fn af(self) -> u8 {
        match self {
            Family::V4 => libc::AF_INET as u8,
            Family::V6 => libc::AF_INET6 as u8,
        }
    }
}

/// Which entries to delete: those of `family` and `protocol` whose every set field
/// equals the entry's. Unset fields match anything.
///
/// - endpoint removed: `orig_dst`/`orig_dst_port` = service address and port,
///   `reply_src` (and `reply_src_port`) = the endpoint;
/// - NodePort on any address: only `orig_dst_port`;
/// - service port that had no endpoints: `orig_dst`/`orig_dst_port` only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowFilter {
    pub family: Family,
    /// [`UDP`], [`TCP`] or [`SCTP`]: the protocols whose entries have ports.
    pub protocol: u8,
    /// Destination of the client's packets (before DNAT): the service address.
    pub orig_dst: Option<IpAddr>,
    pub orig_dst_port: Option<u16>,
    /// Source of the replies (after DNAT): the endpoint the client was sent to.
    pub reply_src: Option<IpAddr>,
    pub reply_src_port: Option<u16>,
}

impl FlowFilter {
    /// Every entry of `protocol` in `family`; narrow it by setting fields.
    pub fn any(family: Family, protocol: u8) -> FlowFilter {
        FlowFilter {
            family,
            protocol,
            orig_dst: None,
            orig_dst_port: None,
            reply_src: None,
            reply_src_port: None,
        }
    }

    pub fn matches(&self, flow: &Flow) -> bool {
        let (orig, reply) = (&flow.orig, &flow.reply);
        Family::of(&orig.src) == self.family
            && orig.protocol == self.protocol
            && self.orig_dst.is_none_or(|a| a == orig.dst)
            && self.orig_dst_port.is_none_or(|p| Some(p) == orig.dst_port)
            && self.reply_src.is_none_or(|a| a == reply.src)
            && self
                .reply_src_port
                .is_none_or(|p| Some(p) == reply.src_port)
    }

    fn validate(&self) -> Result<()> {
        if ![TCP, UDP, SCTP].contains(&self.protocol) {
            return Err(Error::InvalidFilter(format!(
                "protocol {} has no ports (expected TCP, UDP or SCTP)",
                self.protocol
            )));
        }
        for addr in [self.orig_dst, self.reply_src].into_iter().flatten() {
            if Family::of(&addr) != self.family {
                let family = match self.family {
                    Family::V4 => "IPv4",
                    Family::V6 => "IPv6",
                };
                return Err(Error::InvalidFilter(format!(
                    "{addr} is not an {family} address"
                )));
            }
        }
        Ok(())
    }
}

/// One direction of an entry, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    /// `None` for protocols without ports.
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
    /// A zone that applies to this direction only (`CTA_TUPLE_ZONE`); rare.
    pub zone: Option<u16>,
}

/// A conntrack entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Flow {
    /// As the client sent it: destination = the service address.
    pub orig: Tuple,
    /// As the endpoint answers: source = the endpoint the entry DNATs to.
    pub reply: Tuple,
    /// Conntrack zone (`CTA_ZONE`), 0 by default.
    pub zone: u16,
    /// The kernel's id of the entry, so a delete cannot hit a newer entry that
    /// happens to have the same tuple.
    pub id: Option<u32>,
}

/// What [`Conntrack::delete_matching`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteStats {
    /// Dump requests sent.
    pub dumps: usize,
    /// Entries the kernel returned. Equal to `matched` when it filtered them all.
    pub dumped: usize,
    /// Entries some filter matched (each counted once).
    pub matched: usize,
    /// Entries deleted; fewer than `matched` if some expired meanwhile.
    pub deleted: usize,
    /// Dumps the kernel refused to filter (`CTA_FILTER` unsupported), redone unfiltered.
    pub unfiltered_retries: usize,
}

/// A ctnetlink socket in the network namespace of the thread that opened it.
pub struct Conntrack {
    socket: CtSocket,
    /// False once the kernel refused `CTA_FILTER`: later dumps go unfiltered at once.
    kernel_filters: bool,
}

impl Conntrack {
    pub fn open() -> Result<Conntrack> {
        Ok(Conntrack {
            socket: CtSocket::open()?,
            kernel_filters: true,
        })
    }

    /// The entries `filter` matches.
    pub fn list(&mut self, filter: &FlowFilter) -> Result<Vec<Flow>> {
        filter.validate()?;
        let mut flows = Vec::new();
        self.dump(filter.family, &meet(&[filter]), |flow| {
            if filter.matches(&flow) {
                flows.push(flow);
            }
        })?;
        Ok(flows)
    }

    /// Deletes every entry some filter matches.
    pub fn delete_matching(&mut self, filters: &[FlowFilter]) -> Result<DeleteStats> {
        for filter in filters {
            filter.validate()?;
        }
        let mut stats = DeleteStats::default();
        let mut matched = HashSet::new();
        for family in [Family::V4, Family::V6] {
            let of_family: Vec<&FlowFilter> =
                filters.iter().filter(|f| f.family == family).collect();
            let groups: Vec<&[&FlowFilter]> = if of_family.len() <= DUMPS_PER_FAMILY {
                of_family.chunks(1).collect()
            } else {
                vec![&of_family]
            };
            for group in groups {
                stats.dumps += 1;
                stats.unfiltered_retries += self.dump(family, &meet(group), |flow| {
                    stats.dumped += 1;
                    if group.iter().any(|f| f.matches(&flow)) {
                        matched.insert(flow);
                    }
                })?;
            }
        }
        let matched: Vec<Flow> = matched.into_iter().collect();
        stats.matched = matched.len();
        stats.deleted = self.socket.delete(&matched)?;
        Ok(stats)
    }

    /// Deletes one entry; `Ok(false)` if it no longer exists.
    pub fn delete(&mut self, flow: &Flow) -> Result<bool> {
        Ok(self.socket.delete(std::slice::from_ref(flow))? == 1)
    }

    /// One dump narrowed by `filter` in the kernel; if the kernel refuses the filter,
    /// an unfiltered dump instead (the caller filters either way). Returns 1 if it had
    /// to retry, else 0.
    fn dump(
        &mut self,
        family: Family,
        filter: &KernelFilter,
        mut each: impl FnMut(Flow),
    ) -> Result<usize> {
        if !self.kernel_filters {
            self.socket.dump(family, None, each)?;
            return Ok(0);
        }
        let mut seen = 0;
        let filtered = self.socket.dump(family, Some(filter), |flow| {
            seen += 1;
            each(flow);
        });
        match filtered {
            // The kernel refuses a filter before sending anything; an error after some
            // entries is something else and retrying would hand them out twice.
            Err(Error::Kernel { errno, .. })
                if seen == 0 && (errno == libc::EINVAL || errno == libc::EOPNOTSUPP) =>
            {
                tracing::debug!(errno, "kernel refused CTA_FILTER; dumping unfiltered");
                self.kernel_filters = false;
                self.socket.dump(family, None, each)?;
                Ok(1)
            }
            other => other.map(|()| 0),
        }
    }
}

/// Deletes, in the calling thread's network namespace, every entry one of `filters`
/// matches; returns how many were deleted. Entries that expire meanwhile are skipped.
pub fn delete_flows(filters: &[FlowFilter]) -> Result<usize> {
    if filters.is_empty() {
        return Ok(0);
    }
    for filter in filters {
        filter.validate()?;
    }
    Ok(Conntrack::open()?.delete_matching(filters)?.deleted)
}

/// What every filter of `group` requires: the fields on which they all agree.
fn meet(group: &[&FlowFilter]) -> KernelFilter {
    fn common<T: PartialEq + Copy>(
        group: &[&FlowFilter],
        field: impl Fn(&FlowFilter) -> Option<T>,
    ) -> Option<T> {
        let (first, rest) = group.split_first()?;
        let value = field(first)?;
        rest.iter()
            .all(|f| field(f) == Some(value))
            .then_some(value)
    }
    // The kernel compares IPv6 addresses the wrong way round: its filter keeps the
    // entries whose address differs (`!ipv6_addr_cmp()` in
    // ctnetlink_filter_match_tuple, still so in 6.18), and what it drops we never see.
    // So IPv6 dumps are narrowed by protocol and ports only; addresses are compared here.
    let v4 = |addr: Option<IpAddr>| addr.filter(IpAddr::is_ipv4);
    KernelFilter {
        protocol: common(group, |f| Some(f.protocol)),
        orig_dst: common(group, |f| v4(f.orig_dst)),
        orig_dst_port: common(group, |f| f.orig_dst_port),
        reply_src: common(group, |f| v4(f.reply_src)),
        reply_src_port: common(group, |f| f.reply_src_port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn tuple(src: &str, sport: u16, dst: &str, dport: u16) -> Tuple {
        Tuple {
            src: ip(src),
            dst: ip(dst),
            protocol: UDP,
            src_port: Some(sport),
            dst_port: Some(dport),
            zone: None,
        }
    }

    /// Client 10.0.0.2:40000 to service 10.96.0.53:53, DNAT'd to 10.244.1.10:5353.
    fn flow() -> Flow {
        Flow {
            orig: tuple("10.0.0.2", 40000, "10.96.0.53", 53),
            reply: tuple("10.244.1.10", 5353, "10.0.0.2", 40000),
            zone: 0,
            id: Some(1),
        }
    }

    fn stale_endpoint() -> FlowFilter {
        FlowFilter {
            orig_dst: Some(ip("10.96.0.53")),
            orig_dst_port: Some(53),
            reply_src: Some(ip("10.244.1.10")),
            ..FlowFilter::any(Family::V4, UDP)
        }
    }

    #[test]
    fn filters_compare_every_field_they_set() {
        assert!(stale_endpoint().matches(&flow()));
        assert!(FlowFilter::any(Family::V4, UDP).matches(&flow()));
        let misses = [
            FlowFilter {
                protocol: TCP,
                ..stale_endpoint()
            },
            FlowFilter {
                orig_dst: Some(ip("10.96.0.54")),
                ..stale_endpoint()
            },
            FlowFilter {
                orig_dst_port: Some(54),
                ..stale_endpoint()
            },
            FlowFilter {
                reply_src: Some(ip("10.244.2.10")),
                ..stale_endpoint()
            },
            FlowFilter {
                reply_src_port: Some(53),
                ..stale_endpoint()
            },
            FlowFilter::any(Family::V6, UDP),
        ];
        for filter in misses {
            assert!(!filter.matches(&flow()), "{filter:?}");
        }
        // A filter on ports never matches an entry without ports.
        let mut icmp = flow();
        icmp.orig.dst_port = None;
        assert!(!stale_endpoint().matches(&icmp));
    }

    #[test]
    fn nonsense_filters_are_refused_before_touching_the_kernel() {
        let icmp = FlowFilter::any(Family::V4, libc::IPPROTO_ICMP as u8);
        let mixed = FlowFilter {
            reply_src: Some(ip("fd00::10")),
            ..stale_endpoint()
        };
        for filter in [icmp, mixed] {
            assert!(matches!(
                delete_flows(&[filter]),
                Err(Error::InvalidFilter(_))
            ));
        }
        assert_eq!(delete_flows(&[]).unwrap(), 0);
    }

    #[test]
    fn shared_dumps_ask_the_kernel_for_what_all_filters_agree_on() {
        let other_endpoint = FlowFilter {
            reply_src: Some(ip("10.244.2.10")),
            ..stale_endpoint()
        };
        let node_port = FlowFilter {
            orig_dst_port: Some(53),
            ..FlowFilter::any(Family::V4, UDP)
        };
        assert_eq!(
            meet(&[&stale_endpoint(), &other_endpoint]),
            KernelFilter {
                protocol: Some(UDP),
                orig_dst: Some(ip("10.96.0.53")),
                orig_dst_port: Some(53),
                ..KernelFilter::default()
            }
        );
        assert_eq!(
            meet(&[&stale_endpoint(), &node_port]),
            KernelFilter {
                protocol: Some(UDP),
                orig_dst_port: Some(53),
                ..KernelFilter::default()
            }
        );
        let tcp = FlowFilter::any(Family::V4, TCP);
        assert_eq!(meet(&[&node_port, &tcp]), KernelFilter::default());
    }

    #[test]
    fn ipv6_addresses_are_never_left_to_the_kernel() {
        let filter = FlowFilter {
            orig_dst: Some(ip("fd00:96::53")),
            orig_dst_port: Some(53),
            reply_src: Some(ip("fd00:244:1::10")),
            reply_src_port: Some(5353),
            ..FlowFilter::any(Family::V6, UDP)
        };
        assert_eq!(
            meet(&[&filter]),
            KernelFilter {
                protocol: Some(UDP),
                orig_dst_port: Some(53),
                reply_src_port: Some(5353),
                ..KernelFilter::default()
            }
        );
    }
}
