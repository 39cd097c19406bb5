//! The plan as IPVS virtual servers, mirroring kube-proxy's ipvs mode:
//!
//! - one virtual server per ClusterIP:port, externalIP:port, LoadBalancer IP:port and
//!   node address:nodePort, for TCP, UDP and SCTP, in both families;
//! - its real servers are the plan's pool for that traffic: the ClusterIP uses the
//!   internal disposition (the local pool with internalTrafficPolicy Local), every
//!   external address the external one (the local pool with externalTrafficPolicy
//!   Local). Terminating fallback and topology are already in the pools;
//! - a Drop or Reject disposition leaves the virtual server without real servers (so
//!   nothing changes but its destinations when endpoints come back); the companion
//!   table stops the traffic before IPVS sees it;
//! - ClientIP affinity is IPVS persistence with the affinity timeout.
//!
//! One difference from the nftables backend follows from IPVS itself: a virtual
//! server has one pool for every client, so the externalTrafficPolicy Local
//! short-circuit (pods and the node itself use the cluster pool) does not exist here.
//! Pods and the node reaching an external address get the local pool, and with no
//! local endpoint they are dropped like everyone else. kube-proxy's ipvs mode behaves
//! the same way (except that it lets IPVS answer port-unreachable instead of dropping).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::{
    AddressKind, Forward, IpvsState, Options, Persistence, RealServer, Scheduler, Verdict,
    VirtualServer,
};
use crate::nft::ir::{Family, L4Proto};
use crate::node::NodePortAddresses;
use crate::plan::{Disposition, FamilyPlan, Plan, ServicePortPlan};

/// The IPVS state for a plan.
pub fn state(plan: &Plan, options: &Options) -> IpvsState {
    let mut builder = Builder {
        options,
        virtual_servers: Vec::new(),
        bind_addresses: BTreeSet::new(),
        warnings: BTreeSet::new(),
        notes: Vec::new(),
    };
    for fp in &plan.families {
        builder.family(fp);
    }
    let mut state = IpvsState {
        virtual_servers: builder.virtual_servers,
        interface: options.interface.clone(),
        bind_addresses: builder.bind_addresses.into_iter().collect(),
        companion: Default::default(),
        warnings: builder.warnings.into_iter().collect(),
        notes: builder.notes,
    };
    state.companion = super::table::ruleset(plan, &state);
    state
}

/// Where the NodePort virtual servers of a family listen. IPVS needs concrete
/// addresses where nftables matches a prefix or "any local address", and the compiler
/// does not see the node's interfaces (kube-proxy enumerates them), so:
/// - a host prefix of `--nodeport-addresses` (the default: the node IPs) is that
///   address;
/// - a wider prefix stands for the node IPs inside it;
/// - "every local address" (`0.0.0.0/0`, or no node IP configured) stands for the
///   node IPs: other addresses the node has get no NodePort virtual server.
pub fn nodeport_addresses(fp: &FamilyPlan) -> Vec<IpAddr> {
    let mut addresses = BTreeSet::new();
    match &fp.nodeport_addresses {
        NodePortAddresses::AllLocal => addresses.extend(fp.node_ips.iter().copied()),
        NodePortAddresses::Cidrs(cidrs) => {
            for cidr in cidrs {
                if cidr.prefix_len() == cidr.max_prefix_len() {
                    addresses.insert(cidr.addr());
                } else {
                    addresses.extend(fp.node_ips.iter().filter(|ip| cidr.contains(*ip)));
                }
            }
        }
    }
    addresses.into_iter().collect()
}

/// The full-length client mask: persistence per client address.
fn host_prefix(family: Family) -> u8 {
    match family {
        Family::Ip => 32,
        Family::Ip6 => 128,
    }
}

struct Builder<'a> {
    options: &'a Options,
    virtual_servers: Vec<VirtualServer>,
    bind_addresses: BTreeSet<IpAddr>,
    warnings: BTreeSet<String>,
    notes: Vec<String>,
}

impl Builder<'_> {
    fn family(&mut self, fp: &FamilyPlan) {
        let nodeport_ips = nodeport_addresses(fp);
        if fp.ports.iter().any(|p| p.node_port.is_some()) {
            let family = match fp.family {
                Family::Ip => "IPv4",
                Family::Ip6 => "IPv6",
            };
            let all_local = fp.nodeport_addresses == NodePortAddresses::AllLocal;
            if nodeport_ips.is_empty() {
                let why = if all_local {
                    "no node IP of this family is known (--node-ip)"
                } else {
                    "no node IP is inside --nodeport-addresses"
                };
                self.notes
                    .push(format!("{family} NodePorts have no virtual server: {why}"));
            } else if all_local {
                self.notes.push(format!(
                    "{family} NodePorts answer on every local address, but IPVS needs each one: \
                     the node IPs (--node-ip) get NodePort virtual servers"
                ));
            }
        }
        let mut candidates = Vec::new();
        for sp in &fp.ports {
            candidates.extend(self.service_port(fp, sp, &nodeport_ips));
        }
        let winners = self.claims(&candidates);
        for (i, vs) in candidates.into_iter().enumerate() {
            if winners.get(&(vs.protocol, vs.address, vs.port)) != Some(&i) {
                continue;
            }
            // Node IPs are the node's already; binding them to the dummy interface
            // too would only confuse the agent's cleanup.
            if vs.kind != AddressKind::NodePort && !fp.node_ips.contains(&vs.address) {
                self.bind_addresses.insert(vs.address);
            }
            self.virtual_servers.push(vs);
        }
    }

    /// The virtual servers of one service port: ClusterIP, externalIPs, LoadBalancer
    /// IPs, NodePort addresses.
    fn service_port(
        &mut self,
        fp: &FamilyPlan,
        sp: &ServicePortPlan,
        nodeport_ips: &[IpAddr],
    ) -> Vec<VirtualServer> {
        let scheduler = self.scheduler(sp);
        let persistence = sp.affinity_timeout.map(|timeout_secs| Persistence {
            timeout_secs,
            netmask: host_prefix(fp.family),
        });
        let new = |kind, address, port, disposition| VirtualServer {
            protocol: sp.id.protocol,
            address,
            port,
            scheduler,
            persistence,
            real_servers: real_servers(sp, disposition),
            service: sp.id.clone(),
            kind,
            verdict: match disposition {
                Disposition::Forward(_) => Verdict::Forward,
                Disposition::Drop => Verdict::Drop,
                Disposition::Reject => Verdict::Reject,
            },
        };
        let mut servers = vec![new(
            AddressKind::ClusterIp,
            sp.cluster_ip,
            sp.port,
            sp.internal,
        )];
        if let Some(external) = &sp.external {
            let d = external.disposition;
            let mut external_ips = sp.external_ips.clone();
            external_ips.sort();
            let mut lb_ips = sp.load_balancer_ips.clone();
            lb_ips.sort();
            servers.extend(
                external_ips
                    .into_iter()
                    .map(|ip| new(AddressKind::ExternalIp, ip, sp.port, d)),
            );
            servers.extend(
                lb_ips
                    .into_iter()
                    .map(|ip| new(AddressKind::LoadBalancer, ip, sp.port, d)),
            );
            if let Some(node_port) = sp.node_port {
                servers.extend(
                    nodeport_ips
                        .iter()
                        .map(|ip| new(AddressKind::NodePort, *ip, node_port, d)),
                );
            }
        }
        servers
    }

    /// Which candidate gets each (protocol, address, port): IPVS has one virtual server
    /// there. Snapshot validation already refuses two Services on one ClusterIP,
    /// externalIP or LoadBalancer IP; what is left is a node address whose NodePort is
    /// also the port of an externalIP equal to it, or one Service listing an address
    /// twice (harmless). The NodePort yields, as in the nftables backend, which looks
    /// addresses up before NodePorts; otherwise the first candidate wins.
    fn claims(&mut self, candidates: &[VirtualServer]) -> BTreeMap<(L4Proto, IpAddr, u16), usize> {
        let mut order: Vec<usize> = (0..candidates.len()).collect();
        order.sort_by_key(|i| candidates[*i].kind == AddressKind::NodePort);
        let mut winners: BTreeMap<(L4Proto, IpAddr, u16), usize> = BTreeMap::new();
        for i in order {
            let vs = &candidates[i];
            let key = (vs.protocol, vs.address, vs.port);
            let Some(&owner) = winners.get(&key) else {
                winners.insert(key, i);
                continue;
            };
            let owner = &candidates[owner];
            if owner.service != vs.service {
                self.warnings.insert(format!(
                    "{} port {}/{} is both the {} of {} and the {} of {}; the virtual server is {}'s",
                    vs.address,
                    vs.port,
                    vs.protocol.keyword(),
                    owner.kind.label(),
                    owner.service,
                    vs.kind.label(),
                    vs.service,
                    owner.service,
                ));
            }
        }
        winners
    }

    /// The Service's annotation if it names a known scheduler, else the flag's.
    fn scheduler(&mut self, sp: &ServicePortPlan) -> Scheduler {
        let Some(name) = &sp.ipvs_scheduler else {
            return self.options.scheduler;
        };
        match name.parse() {
            Ok(scheduler) => scheduler,
            Err(e) => {
                self.warnings.insert(format!(
                    "Service {}: metadata.annotations[{}]: {e}; the --ipvs-scheduler one ({}) is used",
                    sp.id.service,
                    super::IPVS_SCHEDULER_ANNOTATION,
                    self.options.scheduler
                ));
                self.options.scheduler
            }
        }
    }
}

/// The real servers for a disposition: its pool, uniformly weighted, sorted.
fn real_servers(sp: &ServicePortPlan, disposition: Disposition) -> Vec<RealServer> {
    let Disposition::Forward(pool) = disposition else {
        return Vec::new();
    };
    let servers: BTreeSet<RealServer> = sp
        .endpoints(pool)
        .iter()
        .map(|e| RealServer {
            address: e.ip,
            port: e.port,
            weight: 1,
            forward: Forward::Masquerade,
        })
        .collect();
    servers.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnet::IpNet;

    fn family_plan(nodeport_addresses: NodePortAddresses, node_ips: &[&str]) -> FamilyPlan {
        let node_ips: Vec<IpAddr> = node_ips
            .iter()
            .map(|ip| ip.parse().expect("literal"))
            .collect();
        FamilyPlan {
            family: Family::Ip,
            cluster_cidrs: Vec::new(),
            service_cidrs: Vec::new(),
            nodeport_addresses,
            node_ip: node_ips.first().copied(),
            node_ips,
            masquerade_all: false,
            masquerade_mark: 0x4000,
            ports: Vec::new(),
        }
    }

    fn nets(cidrs: &[&str]) -> Vec<IpNet> {
        cidrs.iter().map(|c| c.parse().expect("literal")).collect()
    }

    fn strings(ips: Vec<IpAddr>) -> Vec<String> {
        ips.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn nodeport_addresses_are_concrete_node_addresses() {
        let all = family_plan(NodePortAddresses::AllLocal, &["192.168.1.2", "10.0.0.2"]);
        assert_eq!(
            strings(nodeport_addresses(&all)),
            ["10.0.0.2", "192.168.1.2"]
        );
        let none = family_plan(NodePortAddresses::AllLocal, &[]);
        assert!(nodeport_addresses(&none).is_empty());
        let cidrs = family_plan(
            NodePortAddresses::Cidrs(nets(&["192.168.0.0/16", "172.16.0.9/32"])),
            &["192.168.1.2", "10.0.0.2"],
        );
        assert_eq!(
            strings(nodeport_addresses(&cidrs)),
            ["172.16.0.9", "192.168.1.2"]
        );
    }
}
