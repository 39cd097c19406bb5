//! The node context: what the compiler must know about the node it compiles for.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::error::CompileError;
use crate::nft::ir::Family;

/// Everything about the node that changes the rules. Filled from flags (or, later, a
/// config file); validated once by [`NodeContext::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeContext {
    /// This node's name: endpoints whose `nodeName` equals it are local.
    pub node_name: Option<String>,
    /// This node's zone (`topology.kubernetes.io/zone`), for topology hints.
    pub node_zone: Option<String>,
    /// This node's IPs (at most one primary per family is used for NodePort defaults).
    pub node_ips: Vec<IpAddr>,
    /// Pod CIDRs: a source inside them is a pod ("local traffic detector").
    pub cluster_cidrs: Vec<IpNet>,
    /// Service CIDRs: ClusterIPs are allocated from them; unallocated addresses inside
    /// them are dropped.
    pub service_cidrs: Vec<IpNet>,
    /// Where NodePorts answer. Empty means "the node IPs"; `0.0.0.0/0` or `::/0` means
    /// every local address.
    pub nodeport_addresses: Vec<IpNet>,
    /// Masquerade all traffic to ClusterIPs, not only traffic from outside the pods.
    pub masquerade_all: bool,
    /// The packet-mark bit that asks for masquerade (kube-proxy's default is 14).
    pub masquerade_bit: u8,
}

impl Default for NodeContext {
    fn default() -> Self {
        NodeContext {
            node_name: None,
            node_zone: None,
            node_ips: Vec::new(),
            cluster_cidrs: Vec::new(),
            service_cidrs: Vec::new(),
            nodeport_addresses: Vec::new(),
            masquerade_all: false,
            masquerade_bit: 14,
        }
    }
}

/// Where NodePorts are accepted, for one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Every local address of the node (except loopback).
    AllLocal,
    /// Only these addresses or prefixes.
    Cidrs(Vec<IpNet>),
}

impl NodeContext {
    pub fn validate(&self) -> Result<(), CompileError> {
        if self.masquerade_bit > 31 {
            return Err(CompileError::Config(format!(
                "--masquerade-bit {} is out of range 0..=31",
                self.masquerade_bit
            )));
        }
        for family in [Family::Ip, Family::Ip6] {
            let node_ips = self.node_ips.iter().filter(|ip| Family::of(ip) == family);
            if node_ips.count() > 1 {
                tracing::debug!(?family, "several node IPs: the first is the primary one");
            }
        }
        Ok(())
    }

    /// The masquerade mark as a bit mask.
    pub fn masquerade_mark(&self) -> u32 {
        1u32 << self.masquerade_bit
    }

    pub fn is_local_node(&self, node_name: Option<&str>) -> bool {
        match (&self.node_name, node_name) {
            (Some(ours), Some(theirs)) => ours == theirs,
            _ => false,
        }
    }

    /// The primary node IP of a family.
    pub fn node_ip(&self, family: Family) -> Option<IpAddr> {
        self.node_ips
            .iter()
            .copied()
            .find(|ip| Family::of(ip) == family)
    }

    /// Every node IP of a family, the primary first.
    pub fn node_ips(&self, family: Family) -> Vec<IpAddr> {
        self.node_ips
            .iter()
            .copied()
            .filter(|ip| Family::of(ip) == family)
            .collect()
    }

    pub fn cluster_cidrs(&self, family: Family) -> Vec<IpNet> {
        of_family(&self.cluster_cidrs, family)
    }

    pub fn service_cidrs(&self, family: Family) -> Vec<IpNet> {
        of_family(&self.service_cidrs, family)
    }

    pub fn nodeport_addresses(&self, family: Family) -> NodePortAddresses {
        let configured = of_family(&self.nodeport_addresses, family);
        if configured.iter().any(|net| net.prefix_len() == 0) {
            return NodePortAddresses::AllLocal;
        }
        if !configured.is_empty() {
            return NodePortAddresses::Cidrs(configured);
        }
        if !self.nodeport_addresses.is_empty() {
            // Configured, but only for the other family: no NodePorts on this one.
            return NodePortAddresses::Cidrs(Vec::new());
        }
        let node_ips: Vec<IpNet> = self
            .node_ips
            .iter()
            .filter(|ip| Family::of(ip) == family)
            .map(|ip| IpNet::from(*ip))
            .collect();
        if node_ips.is_empty() {
            // No node IP known: accept NodePorts on every local address, like
            // kube-proxy without --nodeport-addresses.
            NodePortAddresses::AllLocal
        } else {
            NodePortAddresses::Cidrs(node_ips)
        }
    }
}

fn of_family(nets: &[IpNet], family: Family) -> Vec<IpNet> {
    nets.iter()
        .copied()
        .filter(|net| Family::of(&net.addr()) == family)
        .collect()
}
