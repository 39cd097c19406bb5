//! The IPVS backend: the plan rendered as the IPVS state svcproxy wants, the way
//! kube-proxy's ipvs mode lays it out.
//!
//! - [`layout`] turns the plan into an [`IpvsState`]: virtual servers with their real
//!   servers, and the addresses to bind on the dummy interface;
//! - [`table`] builds the companion nftables table that IPVS mode still needs
//!   (masquerade, hairpin, reject/drop without endpoints, source ranges), in the same
//!   IR as the nftables backend;
//! - [`text`] prints the virtual servers as `ipvsadm -R` input and the whole state.
//!
//! Everything here is plain data decided from the plan; the agent turns it into generic
//! netlink (IPVS), rtnetlink (addresses) and nftables messages.

pub mod layout;
pub mod table;
pub mod text;

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::nft::ir::{L4Proto, Ruleset};
use crate::plan::ServicePortId;

pub use layout::state;

/// The dummy interface that holds the virtual addresses (kube-proxy's name, so that
/// tools and habits carry over).
pub const DEFAULT_INTERFACE: &str = "kube-ipvs0";

/// The annotation that picks a Service's scheduler (the plan carries its value).
pub use crate::model::IPVS_SCHEDULER_ANNOTATION;

/// What the IPVS backend needs beyond the plan: node-wide settings from flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The scheduler of every virtual server whose Service does not choose one.
    pub scheduler: Scheduler,
    /// The dummy interface the virtual addresses are bound to.
    pub interface: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            scheduler: Scheduler::default(),
            interface: DEFAULT_INTERFACE.to_string(),
        }
    }
}

/// Everything IPVS mode programs on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsState {
    /// IPv4 first, then IPv6; within a family in the plan's service-port order, and
    /// for one port: ClusterIP, externalIPs, LoadBalancer IPs, NodePort addresses.
    pub virtual_servers: Vec<VirtualServer>,
    /// The interface [`IpvsState::bind_addresses`] go on.
    pub interface: String,
    /// ClusterIPs, externalIPs and LoadBalancer IPs (not node IPs, which the node
    /// already has), sorted: IPVS only sees packets addressed to a local address.
    pub bind_addresses: Vec<IpAddr>,
    /// The `svcproxy-ipvs` tables, one per family in use.
    pub companion: Ruleset,
    /// Problems with Service settings that were worked around (an unknown scheduler
    /// annotation), one line each, sorted.
    pub warnings: Vec<String>,
    /// Facts about the layout worth a comment in the output (NodePorts without a
    /// known address), one line each.
    pub notes: Vec<String>,
}

/// Which address of a service port a virtual server answers on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddressKind {
    ClusterIp,
    ExternalIp,
    LoadBalancer,
    NodePort,
}

impl AddressKind {
    pub fn label(self) -> &'static str {
        match self {
            AddressKind::ClusterIp => "ClusterIP",
            AddressKind::ExternalIp => "externalIP",
            AddressKind::LoadBalancer => "LoadBalancer IP",
            AddressKind::NodePort => "NodePort",
        }
    }
}

/// One IPVS service: `-A -t ADDR:PORT -s SCHED [-p TIMEOUT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualServer {
    pub protocol: L4Proto,
    pub address: IpAddr,
    pub port: u16,
    pub scheduler: Scheduler,
    /// ClientIP session affinity.
    pub persistence: Option<Persistence>,
    /// Sorted by address and port; empty when the traffic has no usable endpoint (the
    /// companion table then rejects or drops it before IPVS sees it).
    pub real_servers: Vec<RealServer>,
    /// The service port this virtual server belongs to.
    pub service: ServicePortId,
    pub kind: AddressKind,
    /// What happens to the traffic: forwarded, or stopped by the companion table.
    pub verdict: Verdict,
}

/// What the companion table does with new connections to a virtual server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Passed to IPVS, which picks a real server.
    Forward,
    /// Endpoints exist, none usable from here: dropped.
    Drop,
    /// No endpoint at all: rejected.
    Reject,
}

/// IPVS persistence: every connection of a client (a source address masked by
/// `netmask`) goes to the same real server until `timeout_secs` after its last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Persistence {
    pub timeout_secs: u32,
    /// Prefix length of the client mask: 32 or 128, one client per address, as
    /// Kubernetes' ClientIP affinity means.
    pub netmask: u8,
}

/// One destination of a virtual server: `-a ... -r ADDR:PORT -m -w WEIGHT`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RealServer {
    pub address: IpAddr,
    pub port: u16,
    /// 1 for every endpoint: the plan's pools are uniform. (The agent lowers it to 0
    /// while a removed endpoint's connections drain.)
    pub weight: u32,
    pub forward: Forward,
}

/// The IPVS forwarding method. Endpoints are pods, usually on other nodes, so only
/// masquerading (NAT) applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Forward {
    Masquerade,
}

/// The IPVS schedulers svcproxy accepts (kube-proxy's documented set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Scheduler {
    /// Round robin.
    #[default]
    Rr,
    /// Weighted round robin.
    Wrr,
    /// Least connection.
    Lc,
    /// Weighted least connection.
    Wlc,
    /// Source hashing.
    Sh,
    /// Destination hashing.
    Dh,
    /// Maglev hashing.
    Mh,
}

impl Scheduler {
    pub const ALL: [Scheduler; 7] = [
        Scheduler::Rr,
        Scheduler::Wrr,
        Scheduler::Lc,
        Scheduler::Wlc,
        Scheduler::Sh,
        Scheduler::Dh,
        Scheduler::Mh,
    ];

    /// The kernel's (and ipvsadm's) name, also the `ip_vs_<name>` module suffix.
    pub fn name(self) -> &'static str {
        match self {
            Scheduler::Rr => "rr",
            Scheduler::Wrr => "wrr",
            Scheduler::Lc => "lc",
            Scheduler::Wlc => "wlc",
            Scheduler::Sh => "sh",
            Scheduler::Dh => "dh",
            Scheduler::Mh => "mh",
        }
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A scheduler name that is not one of [`Scheduler::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown IPVS scheduler {name:?} (expected one of rr, wrr, lc, wlc, sh, dh, mh)")]
pub struct UnknownScheduler {
    pub name: String,
}

impl FromStr for Scheduler {
    type Err = UnknownScheduler;

    /// Exact, lower-case names only: the kernel's module names are lower case, and an
    /// annotation that differs from them is more likely a mistake than a preference.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Scheduler::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| UnknownScheduler {
                name: name.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_names_round_trip_and_unknown_ones_are_refused() {
        for scheduler in Scheduler::ALL {
            assert_eq!(scheduler.name().parse::<Scheduler>(), Ok(scheduler));
        }
        for bad in ["", "RR", "nq", "rr ", "round-robin"] {
            let err = bad.parse::<Scheduler>().expect_err(bad);
            assert_eq!(err.name, bad);
            assert!(err.to_string().contains("expected one of rr"), "{err}");
        }
        assert_eq!(Scheduler::default(), Scheduler::Rr);
    }
}
