//! Which UDP conntrack entries a sync made stale.
//!
//! UDP has no connection close: once conntrack has DNAT'd a client's flow to an
//! endpoint, the client's packets keep going there for as long as it keeps sending,
//! even after the endpoint left the service. So after each sync, entries are deleted
//! (as kube-proxy does):
//! - toward an endpoint a UDP service port no longer uses, on every address of the
//!   port (ClusterIP, externalIPs, LoadBalancer IPs, the NodePort on any address);
//! - toward the addresses of a UDP service port that had no endpoint and now has one:
//!   entries created while it was rejecting would otherwise keep the client out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use svcproxy_compiler::Plan;
use svcproxy_compiler::nft::ir::{Family, L4Proto};
use svcproxy_compiler::plan::{ServicePortId, ServicePortPlan};

/// Conntrack entries to delete: UDP flows whose original destination is `dst_addr`
/// (any address when `None`, for NodePorts) and `dst_port`, and, when `endpoint` is
/// set, whose reply comes from that endpoint.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StaleFlows {
    pub family: Family,
    pub dst_addr: Option<IpAddr>,
    pub dst_port: u16,
    pub endpoint: Option<(IpAddr, u16)>,
}

/// The stale UDP flows between two plans (`old` is what was programmed before).
pub fn stale_udp_flows(old: Option<&Plan>, new: &Plan) -> Vec<StaleFlows> {
    let old_ports = udp_ports(old);
    let new_ports = udp_ports(Some(new));
    let mut stale = BTreeSet::new();
    for (key, before) in &old_ports {
        let after = new_ports.get(key);
        let kept: BTreeSet<(IpAddr, u16)> = after.map(|p| endpoints_of(p)).unwrap_or_default();
        for endpoint in endpoints_of(before).difference(&kept) {
            for (dst_addr, dst_port) in addresses(before) {
                stale.insert(StaleFlows {
                    family: key.0,
                    dst_addr,
                    dst_port,
                    endpoint: Some(*endpoint),
                });
            }
        }
    }
    for (key, after) in &new_ports {
        let had_none = old_ports
            .get(key)
            .is_none_or(|p| endpoints_of(p).is_empty());
        // A port new in this plan had no entries worth keeping either, but one that
        // existed without endpoints may have left rejected flows behind.
        if had_none && old_ports.contains_key(key) && !endpoints_of(after).is_empty() {
            for (dst_addr, dst_port) in addresses(after) {
                stale.insert(StaleFlows {
                    family: key.0,
                    dst_addr,
                    dst_port,
                    endpoint: None,
                });
            }
        }
    }
    stale.into_iter().collect()
}

fn udp_ports(plan: Option<&Plan>) -> BTreeMap<(Family, ServicePortId), &ServicePortPlan> {
    plan.into_iter()
        .flat_map(|p| &p.families)
        .flat_map(|f| f.ports.iter().map(move |p| ((f.family, p.id.clone()), p)))
        .filter(|((_, id), _)| id.protocol == L4Proto::Udp)
        .collect()
}

fn endpoints_of(port: &ServicePortPlan) -> BTreeSet<(IpAddr, u16)> {
    port.reachable_endpoints()
        .into_iter()
        .map(|e| (e.ip, e.port))
        .collect()
}

/// Every destination the port answers on; `None` stands for "any address" (NodePort).
fn addresses(port: &ServicePortPlan) -> Vec<(Option<IpAddr>, u16)> {
    let mut all = vec![(Some(port.cluster_ip), port.port)];
    all.extend(
        port.external_ips
            .iter()
            .chain(&port.load_balancer_ips)
            .map(|ip| (Some(*ip), port.port)),
    );
    if let Some(node_port) = port.node_port {
        all.push((None, node_port));
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use svcproxy_compiler::{NodeContext, Options, Source};

    fn plan(endpoints: &[&str]) -> Plan {
        let mut text = String::from(
            "apiVersion: v1\nkind: Service\nmetadata: {name: dns, namespace: kube-system}\n\
             spec: {type: NodePort, clusterIP: 10.96.0.10, externalIPs: [203.0.113.5], \
             ports: [{name: dns, port: 53, protocol: UDP, nodePort: 30053}, {name: tcp, port: 53}]}\n",
        );
        if !endpoints.is_empty() {
            text.push_str(
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {name: dns-1, namespace: kube-system, labels: {kubernetes.io/service-name: dns}}\n\
                 addressType: IPv4\nports: [{name: dns, port: 5353, protocol: UDP}, {name: tcp, port: 53}]\nendpoints:\n",
            );
            for ip in endpoints {
                text.push_str(&format!("- {{addresses: [{ip}]}}\n"));
            }
        }
        let options = Options {
            node: NodeContext::default(),
            ..Options::default()
        };
        svcproxy_compiler::plan(
            &[Source {
                name: "t".into(),
                text,
            }],
            &options,
        )
        .unwrap()
    }

    fn flows(old: Option<&Plan>, new: &Plan) -> Vec<String> {
        stale_udp_flows(old, new)
            .iter()
            .map(|f| {
                let dst = f.dst_addr.map_or("*".to_string(), |a| a.to_string());
                match f.endpoint {
                    Some((ip, port)) => format!("{dst}:{} via {ip}:{port}", f.dst_port),
                    None => format!("{dst}:{}", f.dst_port),
                }
            })
            .collect()
    }

    #[test]
    fn a_removed_endpoint_makes_its_flows_stale_on_every_service_address() {
        let before = plan(&["10.244.1.10", "10.244.2.10"]);
        let after = plan(&["10.244.2.10"]);
        assert_eq!(
            flows(Some(&before), &after),
            [
                "*:30053 via 10.244.1.10:5353",
                "10.96.0.10:53 via 10.244.1.10:5353",
                "203.0.113.5:53 via 10.244.1.10:5353",
            ]
        );
    }

    #[test]
    fn a_port_getting_its_first_endpoint_clears_flows_to_its_addresses() {
        let before = plan(&[]);
        let after = plan(&["10.244.1.10"]);
        assert_eq!(
            flows(Some(&before), &after),
            ["*:30053", "10.96.0.10:53", "203.0.113.5:53"]
        );
    }

    #[test]
    fn nothing_is_stale_without_a_change_or_on_the_first_sync() {
        let now = plan(&["10.244.1.10"]);
        assert!(flows(Some(&now), &now).is_empty());
        assert!(
            flows(None, &now).is_empty(),
            "no previous plan: nothing known to be stale"
        );
    }

    #[test]
    fn a_removed_service_makes_all_its_flows_stale() {
        let before = plan(&["10.244.1.10"]);
        let empty = svcproxy_compiler::plan(&[], &Options::default()).unwrap();
        assert_eq!(flows(Some(&before), &empty).len(), 3);
    }
}
