//! Deterministic allocation of ClusterIPs and NodePorts that hand-written manifests
//! leave out.
//!
//! The API server would allocate them randomly; a compiler must be deterministic, so an
//! address is derived from a stable hash of the Service's namespace/name and probed
//! linearly on collision. Explicit values are reserved first, and Services are processed
//! in name order, so the same snapshot always gets the same addresses.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::error::Diagnostic;
use crate::model::{FamilyPolicy, ServiceSpec};
use crate::nft::ir::Family;
use crate::node::NodeContext;

/// The default NodePort range of the API server.
pub const NODE_PORT_RANGE: std::ops::RangeInclusive<u16> = 30000..=32767;

/// A value svcproxy chose because the manifest left it out; printed as a comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub service: String,
    pub what: String,
}

/// Result of allocation: services that could not get what they need are dropped with a
/// warning; conflicts between explicit values are fatal.
pub struct Allocated {
    pub services: Vec<ServiceSpec>,
    pub allocations: Vec<Allocation>,
    pub warnings: Vec<Diagnostic>,
}

pub fn allocate(
    services: Vec<ServiceSpec>,
    node: &NodeContext,
) -> Result<Allocated, Vec<Diagnostic>> {
    let mut warnings = Vec::new();
    let mut allocations = Vec::new();
    let mut fatal = Vec::new();

    // 1. Families and the validity of explicit ClusterIPs.
    let mut kept = Vec::with_capacity(services.len());
    for mut service in services {
        if !service.is_proxied() {
            kept.push(service);
            continue;
        }
        match families_of(&service, node) {
            Ok(families) => service.ip_families = families,
            Err(message) => {
                warnings.push(skip(&service, "spec.ipFamilies", message));
                continue;
            }
        }
        let outside = service.cluster_ips.iter().find(|ip| {
            let cidrs = node.service_cidrs(Family::of(ip));
            !cidrs.is_empty() && !cidrs.iter().any(|net| net.contains(*ip))
        });
        if let Some(ip) = outside {
            let message = format!("clusterIP {ip} is outside every --service-cidr of its family");
            warnings.push(skip(&service, "spec.clusterIP", message));
            continue;
        }
        kept.push(service);
    }

    // 2. Reserve explicit ClusterIPs and NodePorts; two owners of one value is a conflict.
    // Owners are indices into `kept`: a name string per reserved value was most of
    // this step's time, and the names are only needed for a conflict's message.
    let mut ip_owner: BTreeMap<IpAddr, usize> = BTreeMap::new();
    let mut port_owner: BTreeMap<u16, usize> = BTreeMap::new();
    for (index, service) in kept.iter().enumerate().filter(|(_, s)| s.is_proxied()) {
        for ip in &service.cluster_ips {
            if let Some(other) = ip_owner.insert(*ip, index) {
                fatal.push(conflict(
                    service,
                    "spec.clusterIP",
                    format!(
                        "clusterIP {ip} is also used by Service {}",
                        kept[other].name
                    ),
                ));
            }
        }
        if !service.wants_node_ports() {
            continue;
        }
        for (i, port) in service.ports.iter().enumerate() {
            let Some(node_port) = port.node_port else {
                continue;
            };
            // A NodePort is one number on the node, whatever the protocol: two
            // services cannot share it (one Service may, for TCP and UDP).
            match port_owner.get(&node_port) {
                Some(&other) if other != index => {
                    fatal.push(conflict(
                        service,
                        &format!("spec.ports[{i}].nodePort"),
                        format!(
                            "nodePort {node_port} is also used by Service {}",
                            kept[other].name
                        ),
                    ));
                }
                _ => {
                    port_owner.insert(node_port, index);
                }
            }
        }
    }
    if !fatal.is_empty() {
        return Err(fatal);
    }

    // 3. Allocate what is missing, in name order.
    let mut result = Vec::with_capacity(kept.len());
    for (index, mut service) in kept.into_iter().enumerate() {
        if !service.is_proxied() {
            result.push(service);
            continue;
        }
        let mut failed = None;
        for family in service.ip_families.clone() {
            if service
                .cluster_ips
                .iter()
                .any(|ip| Family::of(ip) == family)
            {
                continue;
            }
            let Some(cidr) = node.service_cidrs(family).first().copied() else {
                failed = Some(format!(
                    "no clusterIP of family {} and no --service-cidr of that family to allocate one from",
                    family_name(family)
                ));
                break;
            };
            match allocate_ip(&service.name.to_string(), cidr, &ip_owner) {
                Some(ip) => {
                    ip_owner.insert(ip, index);
                    service.cluster_ips.push(ip);
                    allocations.push(Allocation {
                        service: service.name.to_string(),
                        what: format!("clusterIP {ip} from {cidr}"),
                    });
                }
                None => {
                    failed = Some(format!("--service-cidr {cidr} is full"));
                    break;
                }
            }
        }
        if let Some(message) = failed {
            warnings.push(skip(&service, "spec.clusterIP", message));
            continue;
        }
        // Primary family first, like spec.clusterIPs.
        let order = service.ip_families.clone();
        service
            .cluster_ips
            .sort_by_key(|ip| order.iter().position(|f| *f == Family::of(ip)));

        if service.wants_node_ports() {
            let name = service.name.to_string();
            for port in service.ports.iter_mut().filter(|p| p.node_port.is_none()) {
                let key = format!("{name}/{}/{}", port.name, port.protocol.keyword());
                let Some(node_port) = allocate_port(&key, &port_owner) else {
                    failed = Some("the NodePort range 30000-32767 is full".to_string());
                    break;
                };
                port_owner.insert(node_port, index);
                port.node_port = Some(node_port);
                allocations.push(Allocation {
                    service: name.clone(),
                    what: format!(
                        "nodePort {node_port} for port {}/{}",
                        display_port_name(&port.name, port.port),
                        port.protocol.keyword()
                    ),
                });
            }
        } else if service.ports.iter().any(|p| p.node_port.is_some()) {
            warnings.push(
                Diagnostic::new(
                    &service.origin,
                    "only NodePort and LoadBalancer Services have NodePorts",
                )
                .skipping("nodePort")
                .object(service.object())
                .field("spec.ports[].nodePort"),
            );
            for port in &mut service.ports {
                port.node_port = None;
            }
        }
        if let Some(message) = failed {
            warnings.push(skip(&service, "spec.ports[].nodePort", message));
            continue;
        }
        result.push(service);
    }
    Ok(Allocated {
        services: result,
        allocations,
        warnings,
    })
}

/// The families a Service is served in, primary first.
fn families_of(service: &ServiceSpec, node: &NodeContext) -> Result<Vec<Family>, String> {
    if !service.ip_families.is_empty() {
        let mut families = service.ip_families.clone();
        // Explicit families can still be widened by a dual-stack policy.
        if service.family_policy != FamilyPolicy::SingleStack && families.len() == 1 {
            let other = other_family(families[0]);
            if has_family(node, other, service) {
                families.push(other);
            } else if service.family_policy == FamilyPolicy::RequireDualStack {
                return Err("RequireDualStack, but only one family is configured".into());
            }
        }
        return Ok(families);
    }
    if !service.cluster_ips.is_empty() {
        let mut families: Vec<Family> = service.cluster_ips.iter().map(Family::of).collect();
        if service.family_policy != FamilyPolicy::SingleStack && families.len() == 1 {
            let other = other_family(families[0]);
            if !node.service_cidrs(other).is_empty() {
                families.push(other);
            }
        }
        return Ok(families);
    }
    // Nothing explicit: the first --service-cidr decides the primary family, like the
    // API server's first --service-cluster-ip-range.
    let mut configured: Vec<Family> = Vec::new();
    for net in &node.service_cidrs {
        let family = Family::of(&net.addr());
        if !configured.contains(&family) {
            configured.push(family);
        }
    }
    let primary = configured.first().copied().unwrap_or(Family::Ip);
    match service.family_policy {
        FamilyPolicy::SingleStack => Ok(vec![primary]),
        FamilyPolicy::PreferDualStack => Ok(if configured.len() == 2 {
            configured
        } else {
            vec![primary]
        }),
        FamilyPolicy::RequireDualStack if configured.len() == 2 => Ok(configured),
        FamilyPolicy::RequireDualStack => {
            Err("RequireDualStack, but --service-cidr gives only one family".into())
        }
    }
}

fn has_family(node: &NodeContext, family: Family, service: &ServiceSpec) -> bool {
    !node.service_cidrs(family).is_empty()
        || service
            .cluster_ips
            .iter()
            .any(|ip| Family::of(ip) == family)
}

fn other_family(family: Family) -> Family {
    match family {
        Family::Ip => Family::Ip6,
        Family::Ip6 => Family::Ip,
    }
}

pub fn family_name(family: Family) -> &'static str {
    match family {
        Family::Ip => "IPv4",
        Family::Ip6 => "IPv6",
    }
}

fn display_port_name(name: &str, port: u16) -> String {
    if name.is_empty() {
        port.to_string()
    } else {
        name.to_string()
    }
}

fn skip(service: &ServiceSpec, field: &str, message: String) -> Diagnostic {
    Diagnostic::new(&service.origin, message)
        .skipping("Service")
        .object(service.object())
        .field(field)
}

fn conflict(service: &ServiceSpec, field: &str, message: String) -> Diagnostic {
    Diagnostic::new(&service.origin, message)
        .object(service.object())
        .field(field)
}

fn stable_hash(key: &str) -> u64 {
    let digest = Sha256::digest(key.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes)
}

/// Picks a free address in `cidr`, never the network address (nor, for IPv4, the
/// broadcast address) nor the first host, which clusters give to the `kubernetes`
/// Service.
fn allocate_ip<V>(key: &str, cidr: IpNet, taken: &BTreeMap<IpAddr, V>) -> Option<IpAddr> {
    let host_bits = u32::from(cidr.max_prefix_len() - cidr.prefix_len());
    // Usable offsets are 2..size-1 (IPv4) or 2..size (IPv6); cap the space at 2^63.
    let size: u128 = if host_bits >= 63 {
        1 << 63
    } else {
        1u128 << host_bits
    };
    let reserved_top: u128 = if matches!(cidr, IpNet::V4(_)) { 1 } else { 0 };
    if size <= 2 + reserved_top {
        return None;
    }
    let usable = size - 2 - reserved_top;
    let start = u128::from(stable_hash(key)) % usable;
    let base = match cidr.network() {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    };
    // Probe at most a bounded number of addresses: a nearly full range is reported as
    // full rather than scanned for ever.
    let attempts = usable.min(1 << 20);
    for step in 0..attempts {
        let offset = 2 + (start + step) % usable;
        let ip = match cidr {
            IpNet::V4(_) => IpAddr::from(std::net::Ipv4Addr::from((base + offset) as u32)),
            IpNet::V6(_) => IpAddr::from(std::net::Ipv6Addr::from(base + offset)),
        };
        if !taken.contains_key(&ip) {
            return Some(ip);
        }
    }
    None
}

fn allocate_port<V>(key: &str, taken: &BTreeMap<u16, V>) -> Option<u16> {
    let first = *NODE_PORT_RANGE.start();
    let count = u64::from(*NODE_PORT_RANGE.end() - first) + 1;
    let start = stable_hash(key) % count;
    (0..count)
        .map(|step| first + ((start + step) % count) as u16)
        .find(|port| !taken.contains_key(port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_is_stable_and_probes_on_collision() {
        let cidr: IpNet = "10.96.0.0/16".parse().unwrap();
        let mut taken = BTreeMap::new();
        let first = allocate_ip("default/web", cidr, &taken).unwrap();
        assert_eq!(first, allocate_ip("default/web", cidr, &taken).unwrap());
        assert!(cidr.contains(&first));
        taken.insert(first, "x".to_string());
        let second = allocate_ip("default/web", cidr, &taken).unwrap();
        assert_ne!(first, second);
    }

    #[test]
    fn tiny_ranges_fill_up() {
        let cidr: IpNet = "10.96.0.0/30".parse().unwrap();
        let mut taken = BTreeMap::new();
        // /30: .0 network, .1 reserved, .3 broadcast: only .2 is allocatable.
        let ip = allocate_ip("a/b", cidr, &taken).unwrap();
        assert_eq!(ip.to_string(), "10.96.0.2");
        taken.insert(ip, "a/b".to_string());
        assert_eq!(allocate_ip("c/d", cidr, &taken), None);
    }

    #[test]
    fn node_ports_stay_in_range() {
        let port = allocate_port("default/web/http/tcp", &BTreeMap::<u16, ()>::new()).unwrap();
        assert!(NODE_PORT_RANGE.contains(&port));
    }
}
