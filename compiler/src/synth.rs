//! Synthetic clusters for benchmarks and scale tests: N Services of mixed types and
//! ports with M endpoints each, deterministic for a given seed.
//!
//! The output is one `kind: List` JSON document, what `kubectl get svc,endpointslices
//! -A -o json` prints, so it goes through the same parser as a real snapshot. The mix,
//! per Service (drawn from a seeded generator, so the same [`Spec`] always gives the
//! same bytes):
//! - type: ClusterIP mostly, NodePort and LoadBalancer for a few percent (NodePorts are
//!   scarce: 2,768 per cluster, so externally reachable Services are capped by what the
//!   range holds);
//! - 1 port (80 %), 2 ports (15 %) or 3 (5 %); TCP mostly, some UDP;
//! - `externalTrafficPolicy: Local` on a third of the external Services,
//!   `sessionAffinity: ClientIP` on every 25th Service, dual-stack on every 10th;
//! - endpoints spread over 20 nodes, one of which is this node ([`NODE_NAME`]).
//!
//! Addresses are laid out so that none collide: ClusterIPs in 10.96.0.0/12
//! (fd00:96::/108 for IPv6), endpoints in 10.128.0.0/9 (fd00:128::/64), LoadBalancer IPs
//! in 172.16.0.0/12.

use std::fmt::Write;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::input::Source;
use crate::node::NodeContext;

/// The node the generated snapshot is compiled for.
pub const NODE_NAME: &str = "node-0";
pub const NODE_IP: &str = "192.168.100.1";
pub const NODE_IP6: &str = "fd00:100::1";
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
pub const SERVICE_CIDR6: &str = "fd00:96::/108";
pub const CLUSTER_CIDR: &str = "10.128.0.0/9";
pub const CLUSTER_CIDR6: &str = "fd00:128::/48";

const NODES: u64 = 20;
const NODE_PORT_FIRST: u32 = 30000;
const NODE_PORT_LAST: u32 = 32767;

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    pub services: usize,
    /// Endpoints per Service (each serves every port of its Service).
    pub endpoints: usize,
    pub seed: u64,
}

impl Spec {
    pub fn new(services: usize, endpoints: usize) -> Spec {
        Spec {
            services,
            endpoints,
            seed: 1,
        }
    }
}

/// A generated snapshot and its size.
#[derive(Debug, Clone)]
pub struct Synthetic {
    pub source: Source,
    /// Service ports, counting both families of a dual-stack Service.
    pub service_ports: usize,
    pub endpoints: usize,
}

/// The node flags a generated snapshot is meant for (both families).
pub fn node_context() -> NodeContext {
    let parse_ip = |s: &str| s.parse().expect("constant address");
    let parse_net = |s: &str| s.parse().expect("constant prefix");
    NodeContext {
        node_name: Some(NODE_NAME.into()),
        node_ips: vec![parse_ip(NODE_IP), parse_ip(NODE_IP6)],
        cluster_cidrs: vec![parse_net(CLUSTER_CIDR), parse_net(CLUSTER_CIDR6)],
        service_cidrs: vec![parse_net(SERVICE_CIDR), parse_net(SERVICE_CIDR6)],
        ..NodeContext::default()
    }
}

/// The same flags as command-line arguments (`svcproxy compile ARGS`).
pub fn node_args() -> Vec<String> {
    [
        ("--node-name", NODE_NAME),
        ("--node-ip", NODE_IP),
        ("--node-ip", NODE_IP6),
        ("--cluster-cidr", CLUSTER_CIDR),
        ("--cluster-cidr", CLUSTER_CIDR6),
        ("--service-cidr", SERVICE_CIDR),
        ("--service-cidr", SERVICE_CIDR6),
    ]
    .iter()
    .flat_map(|(flag, value)| [flag.to_string(), value.to_string()])
    .collect()
}

/// One Service as the generator drew it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceShape {
    pub namespace: String,
    pub name: String,
    pub kind: &'static str,
    /// `(name, protocol, port, nodePort)`
    pub ports: Vec<(String, &'static str, u16, Option<u16>)>,
    pub dual_stack: bool,
    pub local: bool,
    pub affinity: bool,
    pub cluster_ip: Ipv4Addr,
    pub cluster_ip6: Ipv6Addr,
    pub lb_ip: Option<Ipv4Addr>,
    /// The first endpoint's index in the cluster-wide endpoint numbering.
    pub first_endpoint: u64,
}

/// The Services of `spec`, in order. Exposed so that benchmarks can change one Service
/// (add an endpoint) and regenerate only its objects.
pub fn shapes(spec: &Spec) -> Vec<ServiceShape> {
    let mut rng = SplitMix64(spec.seed);
    let mut next_node_port = NODE_PORT_FIRST;
    let mut out = Vec::with_capacity(spec.services);
    for i in 0..spec.services {
        let roll = rng.below(100);
        let nports = match rng.below(100) {
            0..80 => 1,
            80..95 => 2,
            _ => 3,
        };
        let mut kind = match roll {
            0..4 => "NodePort",
            4..7 => "LoadBalancer",
            _ => "ClusterIP",
        };
        if kind != "ClusterIP" && next_node_port + nports > NODE_PORT_LAST + 1 {
            kind = "ClusterIP"; // the NodePort range is used up
        }
        let mut ports = Vec::with_capacity(nports as usize);
        for p in 0..nports {
            let proto = if rng.below(10) == 0 { "UDP" } else { "TCP" };
            let port = [80, 443, 8080, 53, 9090, 6379][rng.below(6) as usize] + p as u16;
            let node_port = (kind != "ClusterIP").then(|| {
                next_node_port += 1;
                (next_node_port - 1) as u16
            });
            ports.push((format!("p{p}"), proto, port, node_port));
        }
        let external = kind != "ClusterIP";
        out.push(ServiceShape {
            namespace: format!("ns-{}", i % 97),
            name: format!("svc-{i}"),
            kind,
            ports,
            dual_stack: i % 10 == 3,
            local: external && rng.below(3) == 0,
            affinity: i % 25 == 3,
            cluster_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + i as u32),
            cluster_ip6: Ipv6Addr::from(0xfd00_0096_u128 << 96 | (0x10 + i as u128)),
            lb_ip: (kind == "LoadBalancer")
                .then(|| Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 1)) + i as u32)),
            first_endpoint: (i * spec.endpoints) as u64,
        });
    }
    out
}

/// The whole snapshot.
pub fn generate(spec: &Spec) -> Synthetic {
    generate_with_extra(spec, usize::MAX, 0)
}

/// The whole snapshot, with `extra` more endpoints on Service number `service`: the
/// same cluster after one endpoint change.
pub fn generate_with_extra(spec: &Spec, service: usize, extra: usize) -> Synthetic {
    let shapes = shapes(spec);
    let mut text = String::with_capacity(spec.services * (600 + spec.endpoints * 140));
    text.push_str("{\"apiVersion\":\"v1\",\"kind\":\"List\",\"items\":[\n");
    let mut service_ports = 0;
    for (i, shape) in shapes.iter().enumerate() {
        if i > 0 {
            text.push_str(",\n");
        }
        let more = if i == service { extra } else { 0 };
        write_objects(&mut text, shape, spec.endpoints, more);
        service_ports += shape.ports.len() * if shape.dual_stack { 2 } else { 1 };
    }
    text.push_str("\n]}\n");
    Synthetic {
        source: Source {
            name: format!("synthetic-{}x{}.json", spec.services, spec.endpoints),
            text,
        },
        service_ports,
        endpoints: spec.services * spec.endpoints,
    }
}

/// The objects of one Service (the Service and its EndpointSlices) as one `List`
/// source, with `extra` more endpoints than the shape's base count: what a watch event
/// for that Service carries.
pub fn service_source(shape: &ServiceShape, endpoints: usize, extra: usize) -> Source {
    let mut text = String::from("{\"apiVersion\":\"v1\",\"kind\":\"List\",\"items\":[\n");
    write_objects(&mut text, shape, endpoints, extra);
    text.push_str("\n]}\n");
    Source {
        name: format!("{}-{}.json", shape.namespace, shape.name),
        text,
    }
}

fn write_objects(out: &mut String, s: &ServiceShape, endpoints: usize, extra: usize) {
    let ports: Vec<String> = s
        .ports
        .iter()
        .map(|(name, proto, port, node_port)| {
            let mut p = format!(
                "{{\"name\":\"{name}\",\"protocol\":\"{proto}\",\"port\":{port},\"targetPort\":{}",
                port + 8000
            );
            if let Some(np) = node_port {
                let _ = write!(p, ",\"nodePort\":{np}");
            }
            p.push('}');
            p
        })
        .collect();
    let (families, cluster_ips) = if s.dual_stack {
        (
            "\"ipFamilyPolicy\":\"PreferDualStack\",\"ipFamilies\":[\"IPv4\",\"IPv6\"]".to_string(),
            format!("[\"{}\",\"{}\"]", s.cluster_ip, s.cluster_ip6),
        )
    } else {
        (
            "\"ipFamilies\":[\"IPv4\"]".to_string(),
            format!("[\"{}\"]", s.cluster_ip),
        )
    };
    let _ = write!(
        out,
        "{{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{{\"name\":\"{}\",\"namespace\":\"{}\"}},\
         \"spec\":{{\"type\":\"{}\",\"clusterIP\":\"{}\",\"clusterIPs\":{cluster_ips},{families},\"ports\":[{}]",
        s.name,
        s.namespace,
        s.kind,
        s.cluster_ip,
        ports.join(",")
    );
    if s.local {
        out.push_str(",\"externalTrafficPolicy\":\"Local\"");
    }
    if s.affinity {
        out.push_str(",\"sessionAffinity\":\"ClientIP\"");
    }
    out.push('}');
    if let Some(lb) = s.lb_ip {
        let _ = write!(
            out,
            ",\"status\":{{\"loadBalancer\":{{\"ingress\":[{{\"ip\":\"{lb}\"}}]}}}}"
        );
    }
    out.push('}');

    let slice_ports: Vec<String> = s
        .ports
        .iter()
        .map(|(name, proto, port, _)| {
            format!(
                "{{\"name\":\"{name}\",\"protocol\":\"{proto}\",\"port\":{}}}",
                port + 8000
            )
        })
        .collect();
    let count = endpoints + extra;
    let families: &[&str] = if s.dual_stack {
        &["IPv4", "IPv6"]
    } else {
        &["IPv4"]
    };
    for family in families {
        let _ = write!(
            out,
            ",\n{{\"apiVersion\":\"discovery.k8s.io/v1\",\"kind\":\"EndpointSlice\",\
             \"metadata\":{{\"name\":\"{}-{}\",\"namespace\":\"{}\",\
             \"labels\":{{\"kubernetes.io/service-name\":\"{}\"}}}},\
             \"addressType\":\"{family}\",\"ports\":[{}],\"endpoints\":[",
            s.name,
            family.to_lowercase(),
            s.namespace,
            s.name,
            slice_ports.join(",")
        );
        for e in 0..count {
            // Extra endpoints are numbered after every base endpoint of the cluster,
            // so they never collide with another Service's.
            let n = if e < endpoints {
                s.first_endpoint + e as u64
            } else {
                (1 << 30) + s.first_endpoint + e as u64
            };
            let addr = match *family {
                "IPv4" => {
                    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + n as u32).to_string()
                }
                _ => Ipv6Addr::from(0xfd00_0128_u128 << 96 | u128::from(n)).to_string(),
            };
            let node = (n * 7919 + e as u64) % NODES;
            if e > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{{\"addresses\":[\"{addr}\"],\"conditions\":{{\"ready\":true}},\"nodeName\":\"node-{node}\"}}"
            );
        }
        out.push_str("]}");
    }
}

/// A small, fast, seedable generator (SplitMix64): deterministic across platforms and
/// releases, which a crate's generator need not be.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_compiles_without_warnings() {
        let spec = Spec::new(300, 3);
        let a = generate(&spec);
        assert_eq!(a.source.text, generate(&spec).source.text);
        let options = crate::Options {
            node: node_context(),
            ..crate::Options::default()
        };
        let plan = crate::plan(std::slice::from_ref(&a.source), &options).unwrap();
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        let ports: usize = plan.families.iter().map(|f| f.ports.len()).sum();
        assert_eq!(ports, a.service_ports);
        let shapes = shapes(&spec);
        assert!(shapes.iter().any(|s| s.kind == "NodePort"));
        assert!(shapes.iter().any(|s| s.kind == "LoadBalancer" && s.local));
        assert!(shapes.iter().any(|s| s.affinity && s.dual_stack));
    }

    #[test]
    fn node_ports_never_run_out() {
        let shapes = shapes(&Spec::new(60_000, 0));
        let node_ports: Vec<u16> = shapes
            .iter()
            .flat_map(|s| s.ports.iter().filter_map(|p| p.3))
            .collect();
        assert!(node_ports.len() > 2000);
        assert!(node_ports.iter().all(|p| (30000..=32767).contains(p)));
    }
}
