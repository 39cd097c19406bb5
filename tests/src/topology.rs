//! The standard dual-stack single-node topology for traffic tests.
//!
//! ```text
//!        ext (client outside the cluster)
//!        eth0: 192.168.100.2/24, 192.168.100.3/24
//!              fd00:100::2/64,   fd00:100::3/64
//!        default routes via 192.168.100.1 / fd00:100::1
//!        (source .2 / ::2 unless a probe binds .3 / ::3)
//!          |
//!          | veth
//!          |
//!        eth0: 192.168.100.1/24, fd00:100::1/64   (the node's own IP)
//!        node (the Kubernetes node: rulesets are loaded here)
//!        ip_forward=1, ipv6 forwarding=1, rp_filter=0
//!        vpodN: 10.244.N.1/24, fd00:244:N::1/64   (N in decimal in both)
//!          |
//!          | veth, one per pod, added with Cluster::add_pod(name, N)
//!          |
//!        eth0: 10.244.N.10/24, fd00:244:N::10/64
//!        pod namespace, default routes via 10.244.N.1 / fd00:244:N::1
//! ```
//!
//! ext routes everything to the node, so service IPs (10.96.0.0/16,
//! fd00:96::/112), LB and external IPs (203.0.113.0/24, 2001:db8:113::/64)
//! and pod IPs are all reachable from ext through the node. The node has no
//! default route: what its rules do not translate to a pod (or ext) address
//! gets an ICMP "network unreachable".
//!
//! Every pod hangs off this one node; whether a pod counts as local or
//! remote is only what the snapshot's `nodeName` says.
//!
//! All namespaces get: no IPv6 duplicate address detection (addresses are
//! usable at once), no ICMP rate limiting (so `refused` stays `refused` when
//! a test probes many times) and rp_filter off.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Context, Result, bail, ensure};

use crate::netns::{Netns, Process, veth};
use crate::testd::{Proto, serve};

pub const NODE_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
pub const NODE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 1);
/// ext's primary address: the source of its traffic unless a probe binds
/// another one.
pub const EXT_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 2);
pub const EXT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 2);
/// ext's second address, e.g. for source-range tests (`ProbeOpts::src`).
pub const EXT2_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 3);
pub const EXT2_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 3);
/// The node's interface towards ext.
pub const NODE_UPLINK: &str = "eth0";

/// Sysctls for every namespace of the topology. Set before any interface
/// exists, so that the `default` values reach the new interfaces.
const COMMON_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
    ("net.ipv4.icmp_ratelimit", "0"),
    ("net.ipv6.icmp.ratelimit", "0"),
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
];

const NODE_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
];

/// A pod namespace with one veth to the node.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    pub index: u8,
    pub ns: Netns,
}

impl Pod {
    pub fn v4(&self) -> Ipv4Addr {
        pod_v4(self.index)
    }

    pub fn v6(&self) -> Ipv6Addr {
        pod_v6(self.index)
    }

    /// The node's address on this pod's veth (the pod's gateway).
    pub fn gateway_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, self.index, 1)
    }

    pub fn gateway_v6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x244, decimal_group(self.index), 0, 0, 0, 0, 1)
    }
}

/// 10.244.N.10: the IPv4 address of the pod with index N.
pub fn pod_v4(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, index, 10)
}

/// fd00:244:N::10, N spelled in decimal as in the IPv4 address: pod 12 is
/// 10.244.12.10 and fd00:244:12::10 (so fixtures read naturally), not
/// fd00:244:c::10.
pub fn pod_v6(index: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x244, decimal_group(index), 0, 0, 0, 0, 0x10)
}

/// The IPv6 group whose hex spelling is `n` in decimal: 12 -> 0x12.
fn decimal_group(n: u8) -> u16 {
    let n = u16::from(n);
    ((n / 100) << 8) | ((n / 10 % 10) << 4) | (n % 10)
}

/// The topology pictured in the module docs. Dropping it stops the servers
/// and deletes every namespace.
#[derive(Debug)]
pub struct Cluster {
    // Fields drop in order: servers first, then the namespaces.
    servers: Vec<Process>,
    pods: Vec<Pod>,
    pub ext: Netns,
    pub node: Netns,
}

impl Cluster {
    /// Builds node and ext; pods are added with [`Cluster::add_pod`].
    pub fn new() -> Result<Self> {
        let node = Netns::new("node")?;
        let ext = Netns::new("ext")?;
        for (key, value) in COMMON_SYSCTLS.iter().chain(NODE_SYSCTLS) {
            node.sysctl(key, value)?;
        }
        for (key, value) in COMMON_SYSCTLS {
            ext.sysctl(key, value)?;
        }

        veth(&node, NODE_UPLINK, &ext, "eth0")?;
        node.add_addr(NODE_UPLINK, "192.168.100.1/24")?;
        node.add_addr(NODE_UPLINK, "fd00:100::1/64")?;
        // Added in this order, .2 is the primary address and .3 a
        // secondary; `src` on the default routes pins the source for IPv6
        // too, where address order is no guarantee.
        for cidr in [
            "192.168.100.2/24",
            "192.168.100.3/24",
            "fd00:100::2/64",
            "fd00:100::3/64",
        ] {
            ext.add_addr("eth0", cidr)?;
        }
        ext.ip(&[
            "-4",
            "route",
            "add",
            "default",
            "via",
            "192.168.100.1",
            "src",
            "192.168.100.2",
        ])?;
        ext.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd00:100::1",
            "src",
            "fd00:100::2",
        ])?;

        Ok(Cluster {
            servers: Vec::new(),
            pods: Vec::new(),
            ext,
            node,
        })
    }

    /// Adds pod namespace `name` with index `index` (1..=250), wired to the
    /// node as in the module docs.
    pub fn add_pod(&mut self, name: &str, index: u8) -> Result<&Pod> {
        ensure!(
            (1..=250).contains(&index),
            "pod index {index} not in 1..=250"
        );
        if let Some(p) = self
            .pods
            .iter()
            .find(|p| p.name == name || p.index == index)
        {
            bail!(
                "pod {name}/{index} clashes with existing pod {}/{}",
                p.name,
                p.index
            );
        }
        let ns = Netns::new(name)?;
        for (key, value) in COMMON_SYSCTLS {
            ns.sysctl(key, value)?;
        }
        let pod = Pod {
            name: name.to_owned(),
            index,
            ns,
        };
        let host_dev = format!("vpod{index}");
        veth(&self.node, &host_dev, &pod.ns, "eth0")?;
        let (gw4, gw6) = (pod.gateway_v4(), pod.gateway_v6());
        self.node.add_addr(&host_dev, &format!("{gw4}/24"))?;
        self.node.add_addr(&host_dev, &format!("{gw6}/64"))?;
        pod.ns.add_addr("eth0", &format!("{}/24", pod.v4()))?;
        pod.ns.add_addr("eth0", &format!("{}/64", pod.v6()))?;
        pod.ns.add_route("default", &gw4.to_string())?;
        pod.ns.add_route("default", &gw6.to_string())?;
        self.pods.push(pod);
        // Just pushed, so last() is there; no unwrap in library code.
        self.pods.last().context("pod vanished")
    }

    pub fn pod(&self, name: &str) -> Result<&Pod> {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("no pod named {name}"))
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Starts svcproxy-testd in pod `pod`, answering as `name` on each
    /// `(proto, port)` for IPv4 and IPv6 (it binds `[::]:port`). Runs until
    /// the cluster is dropped.
    pub fn serve(&mut self, pod: &str, name: &str, ports: &[(Proto, u16)]) -> Result<()> {
        let listen: Vec<(Proto, SocketAddr)> = ports
            .iter()
            .map(|&(proto, port)| {
                (
                    proto,
                    SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
                )
            })
            .collect();
        let server = serve(&self.pod(pod)?.ns, name, &listen)?;
        self.servers.push(server);
        Ok(())
    }
}
