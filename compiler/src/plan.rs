//! The backend-neutral plan: for every service port, in every family, what happens to
//! each class of traffic. Plain data, decided once here and rendered by the nftables
//! and IPVS backends (and read by `explain`); no backend makes a decision of its own.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::allocate::Allocation;
use crate::endpoints::{self, Endpoint, EndpointSource};
use crate::error::Diagnostic;
use crate::model::{ServiceName, ServiceSpec, Snapshot};
use crate::nft::ir::{Family, L4Proto};
use crate::node::{NodeContext, NodePortAddresses};
use crate::topology;

/// Everything the backends need, per family in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// IPv4 first, then IPv6; only families that have at least one service port or
    /// node setting.
    pub families: Vec<FamilyPlan>,
    /// Values svcproxy chose for manifests that left them out.
    pub allocations: Vec<Allocation>,
    /// Objects skipped because they were invalid.
    pub warnings: Vec<Diagnostic>,
}

/// The node settings of one family, and its service ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyPlan {
    pub family: Family,
    /// Pod CIDRs of this family: sources inside them are pods.
    pub cluster_cidrs: Vec<IpNet>,
    /// Service CIDRs of this family: unallocated addresses inside are dropped.
    pub service_cidrs: Vec<IpNet>,
    pub nodeport_addresses: NodePortAddresses,
    /// The primary node IP of this family.
    pub node_ip: Option<IpAddr>,
    /// Every node IP of this family, the primary first: the IPVS backend needs concrete
    /// addresses for its NodePort virtual servers where nftables matches prefixes.
    pub node_ips: Vec<IpAddr>,
    pub masquerade_all: bool,
    pub masquerade_mark: u32,
    /// Sorted by namespace, name, port name, protocol.
    pub ports: Vec<ServicePortPlan>,
}

impl Plan {
    /// The Services whose rules differ between this plan and `next`: those with a
    /// service port (in any family) added, removed or changed. `None` when something
    /// beyond Services differs (a family appeared or went, or a family's node
    /// settings changed), which only a whole sync can apply.
    ///
    /// This is what lets the agent sync a snapshot change Service by Service
    /// (`nft::fragment`) instead of diffing the whole ruleset: most changes touch a
    /// few Services of thousands.
    pub fn changed_services(&self, next: &Plan) -> Option<BTreeSet<ServiceName>> {
        if self.families.len() != next.families.len() {
            return None;
        }
        let mut changed = BTreeSet::new();
        for (old, new) in self.families.iter().zip(&next.families) {
            if !old.same_settings(new) {
                return None;
            }
            // Both lists are sorted by id: walk them together. (Were they not, ports
            // would only be reported changed that are not; none would be missed.)
            let (mut a, mut b) = (old.ports.iter().peekable(), new.ports.iter().peekable());
            loop {
                let order = match (a.peek(), b.peek()) {
                    (None, None) => break,
                    (Some(_), None) => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                    (Some(x), Some(y)) => x.id.cmp(&y.id),
                };
                match order {
                    Ordering::Less => {
                        changed.extend(a.next().map(|p| p.id.service.clone()));
                    }
                    Ordering::Greater => {
                        changed.extend(b.next().map(|p| p.id.service.clone()));
                    }
                    Ordering::Equal => {
                        if let (Some(x), Some(y)) = (a.next(), b.next())
                            && x != y
                        {
                            changed.insert(x.id.service.clone());
                        }
                    }
                }
            }
        }
        Some(changed)
    }

    /// This plan with only the ports of `services` (their fragment's plan).
    pub fn only(&self, services: &BTreeSet<ServiceName>) -> Plan {
        Plan {
            families: self.families.iter().map(|f| f.only(services)).collect(),
            allocations: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

impl FamilyPlan {
    /// Whether the two families' node settings (everything but the ports) are equal.
    fn same_settings(&self, other: &FamilyPlan) -> bool {
        self.settings() == other.settings()
    }

    /// A copy without the ports.
    fn settings(&self) -> FamilyPlan {
        // Spelled out, not `..self.clone()`: that would copy every port first; and a
        // new field must be added here, or this does not compile.
        let FamilyPlan {
            family,
            cluster_cidrs,
            service_cidrs,
            nodeport_addresses,
            node_ip,
            node_ips,
            masquerade_all,
            masquerade_mark,
            ports: _,
        } = self;
        FamilyPlan {
            family: *family,
            cluster_cidrs: cluster_cidrs.clone(),
            service_cidrs: service_cidrs.clone(),
            nodeport_addresses: nodeport_addresses.clone(),
            node_ip: *node_ip,
            node_ips: node_ips.clone(),
            masquerade_all: *masquerade_all,
            masquerade_mark: *masquerade_mark,
            ports: Vec::new(),
        }
    }

    fn only(&self, services: &BTreeSet<ServiceName>) -> FamilyPlan {
        FamilyPlan {
            ports: self
                .ports
                .iter()
                .filter(|p| services.contains(&p.id.service))
                .cloned()
                .collect(),
            ..self.settings()
        }
    }

    /// Which ClusterIP traffic is masqueraded: the same for every service port.
    pub fn internal_masquerade(&self) -> Masquerade {
        if self.masquerade_all {
            Masquerade::All
        } else if self.cluster_cidrs.is_empty() {
            Masquerade::Never
        } else {
            Masquerade::NotFrom(self.cluster_cidrs.clone())
        }
    }
}

/// `namespace/name:port-name` plus the protocol: one service port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortId {
    pub service: ServiceName,
    pub port_name: String,
    pub protocol: L4Proto,
}

impl std::fmt::Display for ServicePortId {
    /// kube-proxy's service port name: `namespace/name:port` (`namespace/name` when the
    /// port has no name).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.port_name.is_empty() {
            write!(f, "{}", self.service)
        } else {
            write!(f, "{}:{}", self.service, self.port_name)
        }
    }
}

/// Which endpoint pool traffic is sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    Cluster,
    Local,
}

/// What happens to one class of traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Load-balanced over the endpoints of a pool.
    Forward(Pool),
    /// Endpoints exist, but none this traffic may use (a Local policy with no local
    /// endpoint): silently dropped, the client may find another node.
    Drop,
    /// No usable endpoint anywhere: rejected, so the client fails fast.
    Reject,
}

/// Which ClusterIP traffic is masqueraded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Masquerade {
    /// Everything (`--masquerade-all`).
    All,
    /// Sources outside these pod CIDRs (off-cluster clients, the node itself).
    NotFrom(Vec<IpNet>),
    /// Nothing: no pod CIDR is known, so pods cannot be told apart.
    Never,
}

/// External traffic: NodePorts, externalIPs, LoadBalancer IPs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalPlan {
    /// For traffic from outside the cluster.
    pub disposition: Disposition,
    /// externalTrafficPolicy Local: traffic from pods goes to the cluster pool
    /// unmasqueraded, traffic from the node goes there masqueraded, the rest keeps its
    /// source and uses only local endpoints. With Cluster policy everything is
    /// masqueraded.
    pub policy_local: bool,
    /// loadBalancerSourceRanges, for LoadBalancer IPs only.
    pub firewall: Option<Firewall>,
}

/// Sources allowed to reach the LoadBalancer IPs; everything else is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firewall {
    /// Empty when the ranges are all of the other family: nothing of this family is
    /// allowed (kube-proxy would instead leave this family wide open).
    pub allowed: Vec<IpNet>,
}

/// One service port in one family: the unit every backend renders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortPlan {
    pub id: ServicePortId,
    pub cluster_ip: IpAddr,
    pub port: u16,
    pub node_port: Option<u16>,
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_ips: Vec<IpAddr>,
    /// ClientIP affinity timeout in seconds.
    pub affinity_timeout: Option<u32>,
    pub health_check_node_port: Option<u16>,
    pub ipvs_scheduler: Option<String>,
    pub endpoint_source: EndpointSource,
    /// Endpoints for Cluster policy (empty when the policy is never used).
    pub cluster_endpoints: Vec<Endpoint>,
    /// Endpoints for Local policy (empty when unused or none is local).
    pub local_endpoints: Vec<Endpoint>,
    /// Any usable endpoint anywhere in the cluster.
    pub has_endpoints: bool,
    /// ClusterIP traffic.
    pub internal: Disposition,
    pub internal_masquerade: Masquerade,
    /// `None` unless the port has a NodePort, an externalIP or a LoadBalancer IP.
    pub external: Option<ExternalPlan>,
}

impl ServicePortPlan {
    pub fn endpoints(&self, pool: Pool) -> &[Endpoint] {
        match pool {
            Pool::Cluster => &self.cluster_endpoints,
            Pool::Local => &self.local_endpoints,
        }
    }

    /// Endpoints some traffic of this node can reach: the union of both pools, sorted.
    pub fn reachable_endpoints(&self) -> Vec<&Endpoint> {
        let mut all: Vec<&Endpoint> = self
            .cluster_endpoints
            .iter()
            .chain(&self.local_endpoints)
            .collect();
        all.sort_by_key(|e| (e.ip, e.port));
        all.dedup_by(|a, b| a.ip == b.ip && a.port == b.port);
        all
    }

    /// Does any traffic use this pool? Then its rules must exist. (Pools are only
    /// filled when some traffic class may use them.)
    pub fn uses_pool(&self, pool: Pool) -> bool {
        !self.endpoints(pool).is_empty()
    }
}

/// Builds the plan. `services` are validated and allocated.
pub fn build(snapshot: &Snapshot, services: &[ServiceSpec], node: &NodeContext) -> Vec<FamilyPlan> {
    let mut families = Vec::new();
    for family in [Family::Ip, Family::Ip6] {
        let cluster_ip = |service: &ServiceSpec| {
            let mut ips = service.cluster_ips.iter().copied();
            ips.find(|ip| Family::of(ip) == family)
                .filter(|_| service.is_proxied())
        };
        // Sized first: a port plan is a few hundred bytes, and growing the vector
        // copied each several times.
        let count = services
            .iter()
            .filter(|s| cluster_ip(s).is_some())
            .map(|s| s.ports.len())
            .sum();
        let mut ports = Vec::with_capacity(count);
        for service in services {
            let Some(cluster_ip) = cluster_ip(service) else {
                continue;
            };
            for port in &service.ports {
                ports.push(plan_port(snapshot, service, port, family, cluster_ip, node));
            }
        }
        let in_use = !ports.is_empty()
            || node.node_ip(family).is_some()
            || !node.service_cidrs(family).is_empty();
        if !in_use {
            continue;
        }
        ports.sort_by(|a, b| a.id.cmp(&b.id));
        let cluster_cidrs = node.cluster_cidrs(family);
        families.push(FamilyPlan {
            family,
            service_cidrs: node.service_cidrs(family),
            nodeport_addresses: node.nodeport_addresses(family),
            node_ip: node.node_ip(family),
            node_ips: node.node_ips(family),
            masquerade_all: node.masquerade_all,
            masquerade_mark: node.masquerade_mark(),
            cluster_cidrs,
            ports,
        });
    }
    families
}

fn plan_port(
    snapshot: &Snapshot,
    service: &ServiceSpec,
    port: &crate::model::ServicePortSpec,
    family: Family,
    cluster_ip: IpAddr,
    node: &NodeContext,
) -> ServicePortPlan {
    let of_family = |ips: &[IpAddr]| -> Vec<IpAddr> {
        ips.iter()
            .copied()
            .filter(|ip| Family::of(ip) == family)
            .collect()
    };
    let external_ips = of_family(&service.external_ips);
    let load_balancer_ips = of_family(&service.load_balancer_ips);
    let externally_accessible =
        port.node_port.is_some() || !external_ips.is_empty() || !load_balancer_ips.is_empty();
    let external_local = externally_accessible && service.external_policy_local;
    let internal_local = service.internal_policy_local;

    // kube-proxy's UsesClusterEndpoints / UsesLocalEndpoints: the cluster pool also
    // serves the short-circuit of a Local external policy.
    let uses_cluster = !internal_local || externally_accessible;
    let uses_local = internal_local || external_local;
    let (all, source) = endpoints::resolve(snapshot, service, port, family, node);
    let pools = topology::categorize(
        &all,
        uses_cluster,
        uses_local,
        node.node_name.as_deref(),
        node.node_zone.as_deref(),
    );

    let internal = if !pools.has_any {
        Disposition::Reject
    } else if internal_local {
        if pools.local.is_empty() {
            Disposition::Drop
        } else {
            Disposition::Forward(Pool::Local)
        }
    } else {
        Disposition::Forward(Pool::Cluster)
    };
    let cluster_cidrs = node.cluster_cidrs(family);
    let internal_masquerade = if node.masquerade_all {
        Masquerade::All
    } else if cluster_cidrs.is_empty() {
        Masquerade::Never
    } else {
        Masquerade::NotFrom(cluster_cidrs)
    };

    let external = externally_accessible.then(|| {
        let disposition = if !pools.has_any {
            Disposition::Reject
        } else if external_local {
            if pools.local.is_empty() {
                Disposition::Drop
            } else {
                Disposition::Forward(Pool::Local)
            }
        } else {
            Disposition::Forward(Pool::Cluster)
        };
        let firewall =
            (!load_balancer_ips.is_empty() && !service.source_ranges.is_empty()).then(|| {
                let mut allowed: Vec<IpNet> = service
                    .source_ranges
                    .iter()
                    .copied()
                    .filter(|net| Family::of(&net.addr()) == family)
                    .collect();
                // A LoadBalancer VIP often loops back to the node with itself as source:
                // when the ranges admit the node, admit the VIPs too.
                let admits_node = node
                    .node_ip(family)
                    .is_some_and(|ip| allowed.iter().any(|net| net.contains(&ip)));
                if admits_node {
                    allowed.extend(load_balancer_ips.iter().map(|ip| IpNet::from(*ip)));
                }
                Firewall { allowed }
            });
        ExternalPlan {
            disposition,
            policy_local: external_local,
            firewall,
        }
    });

    ServicePortPlan {
        id: ServicePortId {
            service: service.name.clone(),
            port_name: port.name.clone(),
            protocol: port.protocol,
        },
        cluster_ip,
        port: port.port,
        node_port: port.node_port,
        external_ips,
        load_balancer_ips,
        affinity_timeout: service.affinity_timeout,
        health_check_node_port: service.health_check_node_port,
        ipvs_scheduler: service.ipvs_scheduler.clone(),
        endpoint_source: source,
        cluster_endpoints: pools.cluster,
        local_endpoints: pools.local,
        has_endpoints: pools.has_any,
        internal,
        internal_masquerade,
        external,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_plan_lists_every_node_ip_of_its_family_primary_first() {
        let node = NodeContext {
            node_ips: ["192.168.1.1", "fd00::1", "10.0.0.1", "fd00::2"]
                .iter()
                .map(|ip| ip.parse().expect("literal"))
                .collect(),
            ..NodeContext::default()
        };
        let snapshot = Snapshot::from_objects(Vec::new()).expect("empty snapshot");
        let families = build(&snapshot, &[], &node);
        let ips = |i: usize| -> Vec<String> {
            families[i]
                .node_ips
                .iter()
                .map(|ip| ip.to_string())
                .collect()
        };
        assert_eq!(families.len(), 2);
        assert_eq!(ips(0), ["192.168.1.1", "10.0.0.1"]);
        assert_eq!(ips(1), ["fd00::1", "fd00::2"]);
        assert_eq!(
            families[0].node_ip,
            Some("192.168.1.1".parse().expect("literal"))
        );
    }
}

#[cfg(test)]
mod changes {
    use super::*;
    use crate::synth::{self, Spec};
    use crate::{Options, plan};

    fn compile(spec: &Spec, service: usize, extra: usize) -> Plan {
        let options = Options {
            node: synth::node_context(),
            ..Options::default()
        };
        let source = synth::generate_with_extra(spec, service, extra).source;
        plan(&[source], &options).expect("generated snapshots compile")
    }

    #[test]
    fn an_endpoint_change_is_confined_to_its_service() {
        let spec = Spec::new(40, 3);
        let before = compile(&spec, 7, 0);
        let after = compile(&spec, 7, 2);
        let shape = &synth::shapes(&spec)[7];
        let changed = before
            .changed_services(&after)
            .expect("only Services differ");
        let names: Vec<String> = changed.iter().map(|s| s.to_string()).collect();
        assert_eq!(names, [format!("{}/{}", shape.namespace, shape.name)]);
        assert_eq!(before.changed_services(&before), Some(BTreeSet::new()));

        // The fragment plans hold that Service's ports and nothing else, whole.
        let only = after.only(&changed);
        assert_eq!(only.families.len(), after.families.len());
        for (part, whole) in only.families.iter().zip(&after.families) {
            let expected: Vec<&ServicePortPlan> = whole
                .ports
                .iter()
                .filter(|p| changed.contains(&p.id.service))
                .collect();
            assert_eq!(part.ports.iter().collect::<Vec<_>>(), expected);
            assert!(part.same_settings(whole));
        }
        assert!(!only.families[0].ports.is_empty());
    }

    #[test]
    fn services_added_or_removed_count_as_changed_and_node_settings_do_not_fit() {
        let small = compile(&Spec::new(10, 2), usize::MAX, 0);
        let large = compile(&Spec::new(12, 2), usize::MAX, 0);
        let changed = small
            .changed_services(&large)
            .expect("only Services differ");
        let added: BTreeSet<ServiceName> = large
            .families
            .iter()
            .flat_map(|f| &f.ports)
            .map(|p| p.id.service.clone())
            .filter(|s| {
                !small
                    .families
                    .iter()
                    .flat_map(|f| &f.ports)
                    .any(|p| &p.id.service == s)
            })
            .collect();
        assert!(!added.is_empty());
        assert!(
            added.is_subset(&changed),
            "{changed:?} misses some of {added:?}"
        );
        assert_eq!(
            large.changed_services(&small).map(|c| c.len()),
            Some(changed.len())
        );

        let mut masquerade_all = small.clone();
        masquerade_all.families[0].masquerade_all = !masquerade_all.families[0].masquerade_all;
        assert_eq!(small.changed_services(&masquerade_all), None);
        let mut one_family = small.clone();
        one_family.families.truncate(1);
        if small.families.len() > 1 {
            assert_eq!(small.changed_services(&one_family), None);
        }
    }
}

#[cfg(test)]
mod dispositions {
    //! The dispositions of the plan, as a specification: snapshot in, decision out.

    use super::*;
    use crate::input::{Source, parse_source};

    fn node_flags() -> NodeContext {
        NodeContext {
            node_name: Some("node-a".into()),
            node_ips: vec!["192.168.100.1".parse().unwrap()],
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            service_cidrs: vec!["10.96.0.0/16".parse().unwrap()],
            ..NodeContext::default()
        }
    }

    /// The IPv4 plan of the only port of Service `demo/svc`, whose spec is `spec` and
    /// whose endpoints are `(address, node, ready)`.
    fn plan_of(spec: &str, endpoints: &[(&str, &str, bool)], node: NodeContext) -> ServicePortPlan {
        let mut yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc, namespace: demo}}\nspec: {spec}\n"
        );
        if !endpoints.is_empty() {
            yaml.push_str(
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {name: svc-1, namespace: demo, labels: {kubernetes.io/service-name: svc}}\n\
                 addressType: IPv4\nports: [{port: 80}]\nendpoints:\n",
            );
            for (ip, node, ready) in endpoints {
                yaml.push_str(&format!(
                    "- {{addresses: [{ip}], nodeName: {node}, conditions: {{ready: {ready}}}}}\n"
                ));
            }
        }
        let source = Source {
            name: "spec.yaml".into(),
            text: yaml,
        };
        let objects = parse_source(&source).unwrap();
        let snapshot = Snapshot::from_objects(objects).unwrap();
        assert!(snapshot.warnings.is_empty(), "{:?}", snapshot.warnings);
        let allocated = crate::allocate::allocate(snapshot.services.clone(), &node).unwrap();
        let mut families = build(&snapshot, &allocated.services, &node);
        families.remove(0).ports.remove(0)
    }

    const LB: &str = "{type: LoadBalancer, clusterIP: 10.96.0.1, ports: [{port: 80, nodePort: 30080}], \
                      externalTrafficPolicy: Local, loadBalancerSourceRanges: [192.168.100.0/24]}";

    #[test]
    fn cluster_ip_forwards_to_the_cluster_pool_and_masquerades_off_cluster_sources() {
        let p = plan_of(
            "{clusterIP: 10.96.0.1, ports: [{port: 80}]}",
            &[("10.244.1.10", "node-a", true)],
            node_flags(),
        );
        assert_eq!(p.internal, Disposition::Forward(Pool::Cluster));
        assert_eq!(
            p.internal_masquerade,
            Masquerade::NotFrom(vec!["10.244.0.0/16".parse().unwrap()])
        );
        assert_eq!(p.external, None, "a ClusterIP service has no external path");
    }

    #[test]
    fn without_any_usable_endpoint_every_path_rejects() {
        let p = plan_of(LB, &[("10.244.1.10", "node-a", false)], node_flags());
        assert_eq!(p.internal, Disposition::Reject);
        assert_eq!(p.external.unwrap().disposition, Disposition::Reject);
    }

    #[test]
    fn local_external_policy_without_local_endpoints_drops_outside_traffic_only() {
        let p = plan_of(LB, &[("10.244.2.10", "node-b", true)], node_flags());
        assert_eq!(p.internal, Disposition::Forward(Pool::Cluster));
        let external = p.external.unwrap();
        assert_eq!(external.disposition, Disposition::Drop);
        assert!(
            external.policy_local,
            "pods and the node are still short-circuited"
        );
        assert_eq!(p.cluster_endpoints.len(), 1);
    }

    #[test]
    fn local_external_policy_with_a_local_endpoint_forwards_to_the_local_pool() {
        let p = plan_of(
            LB,
            &[
                ("10.244.1.10", "node-a", true),
                ("10.244.2.10", "node-b", true),
            ],
            node_flags(),
        );
        assert_eq!(
            p.external.unwrap().disposition,
            Disposition::Forward(Pool::Local)
        );
        assert_eq!(p.local_endpoints.len(), 1);
        assert_eq!(p.cluster_endpoints.len(), 2);
    }

    #[test]
    fn local_internal_policy_drops_cluster_ip_traffic_without_local_endpoints() {
        let spec = "{clusterIP: 10.96.0.1, internalTrafficPolicy: Local, ports: [{port: 80}]}";
        let remote_only = plan_of(spec, &[("10.244.2.10", "node-b", true)], node_flags());
        assert_eq!(remote_only.internal, Disposition::Drop);
        assert!(
            remote_only.cluster_endpoints.is_empty(),
            "the cluster pool is unused"
        );
        let local = plan_of(spec, &[("10.244.1.10", "node-a", true)], node_flags());
        assert_eq!(local.internal, Disposition::Forward(Pool::Local));
    }

    #[test]
    fn a_loadbalancer_firewall_admits_the_vips_when_the_ranges_admit_the_node() {
        let spec = "{type: LoadBalancer, clusterIP: 10.96.0.1, ports: [{port: 80}], \
                    loadBalancerIP: 203.0.113.9, loadBalancerSourceRanges: [192.168.100.0/24]}";
        let p = plan_of(spec, &[("10.244.1.10", "node-a", true)], node_flags());
        let firewall = p.external.unwrap().firewall.unwrap();
        assert_eq!(
            firewall.allowed,
            vec![
                "192.168.100.0/24".parse::<IpNet>().unwrap(),
                "203.0.113.9/32".parse().unwrap()
            ]
        );
    }

    #[test]
    fn source_ranges_of_the_other_family_only_close_this_family() {
        let spec = "{type: LoadBalancer, clusterIP: 10.96.0.1, ports: [{port: 80}], \
                    loadBalancerIP: 203.0.113.9, loadBalancerSourceRanges: [\"2001:db8::/64\"]}";
        let p = plan_of(spec, &[("10.244.1.10", "node-a", true)], node_flags());
        assert_eq!(
            p.external.unwrap().firewall.unwrap().allowed,
            Vec::<IpNet>::new()
        );
    }

    #[test]
    fn masquerade_all_and_unknown_pod_cidrs() {
        let spec = "{clusterIP: 10.96.0.1, ports: [{port: 80}]}";
        let eps = [("10.244.1.10", "node-a", true)];
        let all = NodeContext {
            masquerade_all: true,
            ..node_flags()
        };
        assert_eq!(
            plan_of(spec, &eps, all).internal_masquerade,
            Masquerade::All
        );
        let unknown = NodeContext {
            cluster_cidrs: Vec::new(),
            ..node_flags()
        };
        assert_eq!(
            plan_of(spec, &eps, unknown).internal_masquerade,
            Masquerade::Never
        );
    }
}
