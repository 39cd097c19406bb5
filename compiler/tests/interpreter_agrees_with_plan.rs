//! The rules do what the plan says: generated snapshots are compiled, and for every
//! service port the IR's interpreter (`nft::eval`) runs a packet of each traffic class
//! through the ruleset. Its outcome must be the plan's disposition for that class
//! (`plan.rs`): the DNAT targets are exactly the pool's endpoints, each equally likely;
//! masquerade is as the plan says; a Drop drops and a Reject rejects; sources outside
//! `loadBalancerSourceRanges` are dropped at the LoadBalancer IPs. A failing case is
//! shrunk to a small snapshot.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use proptest::prelude::*;
use serde_json::{Value, json};
use svcproxy_compiler::nft::eval::{self, Fate, Host, Origin, Outcome, Packet};
use svcproxy_compiler::plan::{Disposition, Masquerade, Pool, ServicePortPlan};
use svcproxy_compiler::{NodeContext, Options, Source};

const NODE_IP: &str = "192.168.100.1";
/// A pod that is no endpoint (no hairpin).
const CLIENT_POD: &str = "10.244.9.9";
const OUTSIDE: &str = "8.8.4.4";
/// Inside every generated `loadBalancerSourceRanges`.
const ALLOWED: &str = "192.0.2.5";

#[derive(Debug, Clone)]
struct EndpointGen {
    local: bool,
    ready: bool,
    serving: bool,
    terminating: bool,
}

#[derive(Debug, Clone)]
struct ServiceGen {
    kind: &'static str,
    ports: Vec<(bool, u16)>,
    local_policy: bool,
    internal_local: bool,
    external_ip: bool,
    source_ranges: bool,
    affinity: bool,
    endpoints: Vec<EndpointGen>,
}

fn endpoint() -> impl Strategy<Value = EndpointGen> {
    (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(local, ready, serving, terminating)| EndpointGen {
            local,
            ready,
            serving: serving || ready,
            terminating: terminating && !ready,
        },
    )
}

fn service() -> impl Strategy<Value = ServiceGen> {
    (
        prop_oneof![Just("ClusterIP"), Just("NodePort"), Just("LoadBalancer")],
        prop::collection::btree_set(1u16..6, 1..3),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(endpoint(), 0..5),
        any::<bool>(),
    )
        .prop_map(
            |(
                kind,
                ports,
                local_policy,
                internal_local,
                external_ip,
                source_ranges,
                affinity,
                endpoints,
                udp,
            )| {
                ServiceGen {
                    kind,
                    ports: ports
                        .into_iter()
                        .map(|p| (udp && p % 2 == 0, 80 + p))
                        .collect(),
                    local_policy: local_policy && kind != "ClusterIP",
                    internal_local,
                    external_ip,
                    source_ranges: source_ranges && kind == "LoadBalancer",
                    affinity,
                    endpoints,
                }
            },
        )
}

/// The services as one JSON `List`, with their EndpointSlices.
fn snapshot(services: &[ServiceGen]) -> String {
    let mut items: Vec<Value> = Vec::new();
    for (i, s) in services.iter().enumerate() {
        let name = format!("svc-{i}");
        let ports: Vec<Value> = s
            .ports
            .iter()
            .enumerate()
            .map(|(j, (udp, port))| {
                let mut p = json!({
                    "name": format!("p{j}"),
                    "protocol": if *udp { "UDP" } else { "TCP" },
                    "port": port,
                    "targetPort": 8000 + port,
                });
                if s.kind != "ClusterIP" {
                    p["nodePort"] = json!(30000 + i * 10 + j);
                }
                p
            })
            .collect();
        let mut spec = json!({
            "type": s.kind,
            "clusterIP": format!("10.96.0.{}", 10 + i),
            "ports": ports,
            "internalTrafficPolicy": if s.internal_local { "Local" } else { "Cluster" },
        });
        if s.local_policy {
            spec["externalTrafficPolicy"] = json!("Local");
        }
        if s.external_ip {
            spec["externalIPs"] = json!([format!("203.0.113.{}", 10 + i)]);
        }
        if s.source_ranges {
            spec["loadBalancerSourceRanges"] = json!(["192.0.2.0/24"]);
        }
        if s.affinity {
            spec["sessionAffinity"] = json!("ClientIP");
        }
        let mut service = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": "gen"},
            "spec": spec,
        });
        if s.kind == "LoadBalancer" {
            service["status"] =
                json!({"loadBalancer": {"ingress": [{"ip": format!("198.51.100.{}", 10 + i)}]}});
        }
        items.push(service);
        let endpoints: Vec<Value> = s
            .endpoints
            .iter()
            .enumerate()
            .map(|(k, e)| {
                json!({
                    "addresses": [format!("10.244.{}.{}", if e.local { 1 } else { 2 }, 10 + i * 10 + k)],
                    "nodeName": if e.local { "node-a" } else { "node-b" },
                    "conditions": {"ready": e.ready, "serving": e.serving, "terminating": e.terminating},
                })
            })
            .collect();
        let slice_ports: Vec<Value> = s
            .ports
            .iter()
            .enumerate()
            .map(|(j, (udp, port))| {
                json!({"name": format!("p{j}"), "protocol": if *udp { "UDP" } else { "TCP" }, "port": 8000 + port})
            })
            .collect();
        items.push(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-1"), "namespace": "gen",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": slice_ports,
            "endpoints": endpoints,
        }));
    }
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

fn send(
    ruleset: &svcproxy_compiler::nft::ir::Ruleset,
    port: &ServicePortPlan,
    origin: Origin,
    src: &str,
    dst: IpAddr,
    dport: u16,
) -> Outcome {
    let host = Host {
        local: vec![IpNet::from(NODE_IP.parse::<IpAddr>().unwrap())],
    };
    let packet = Packet {
        proto: port.id.protocol,
        src: src.parse().unwrap(),
        sport: 40000,
        dst,
        dport,
        origin,
    };
    eval::evaluate(ruleset, &host, &packet).unwrap()
}

/// The outcome is the disposition: `Ok(())` or what differs.
fn agrees(
    outcome: &Outcome,
    port: &ServicePortPlan,
    disposition: Disposition,
    masquerade: bool,
) -> Result<(), String> {
    let fates: BTreeSet<String> = outcome
        .branches
        .iter()
        .map(|b| format!("{:?}", b.fate))
        .collect();
    match disposition {
        Disposition::Drop | Disposition::Reject => {
            let want = if disposition == Disposition::Drop {
                Fate::Dropped
            } else {
                Fate::Rejected
            };
            if outcome.branches.iter().all(|b| b.fate == want) {
                Ok(())
            } else {
                Err(format!(
                    "plan says {disposition:?}, the rules give {fates:?}"
                ))
            }
        }
        Disposition::Forward(pool) => {
            let want: BTreeSet<(IpAddr, u16)> = port
                .endpoints(pool)
                .iter()
                .map(|e| (e.ip, e.port))
                .collect();
            let got: BTreeSet<(IpAddr, u16)> =
                outcome.branches.iter().filter_map(|b| b.dnat).collect();
            if outcome.branches.iter().any(|b| b.fate != Fate::Accepted) || got != want {
                return Err(format!(
                    "plan says {pool:?} pool {want:?}, the rules give {fates:?} to {got:?}"
                ));
            }
            let each = 1.0 / want.len() as f64;
            if let Some(b) = outcome
                .branches
                .iter()
                .find(|b| (b.probability - each).abs() > 1e-9)
            {
                return Err(format!(
                    "{:?} has probability {}, not {each}",
                    b.dnat, b.probability
                ));
            }
            if let Some(b) = outcome.branches.iter().find(|b| b.masquerade != masquerade) {
                return Err(format!(
                    "{:?}: masquerade {}, plan says {masquerade}",
                    b.dnat, b.masquerade
                ));
            }
            Ok(())
        }
    }
}

fn check(services: &[ServiceGen]) -> Result<(), String> {
    let options = Options {
        node: NodeContext {
            node_name: Some("node-a".into()),
            node_ips: vec![NODE_IP.parse().unwrap()],
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            service_cidrs: vec!["10.96.0.0/16".parse().unwrap()],
            ..NodeContext::default()
        },
        ..Options::default()
    };
    let source = Source {
        name: "generated.json".into(),
        text: snapshot(services),
    };
    let plan = svcproxy_compiler::plan(&[source], &options).map_err(|e| e.to_string())?;
    let ruleset = svcproxy_compiler::nft::ruleset(&plan);
    for family in &plan.families {
        for port in &family.ports {
            let masq_node = !matches!(family.internal_masquerade(), Masquerade::Never);
            let masq_pod = matches!(family.internal_masquerade(), Masquerade::All);
            let context = |class: &str, e: String| format!("{} {class}: {e}", port.id);
            let from_pod = send(
                &ruleset,
                port,
                Origin::Arrives,
                CLIENT_POD,
                port.cluster_ip,
                port.port,
            );
            agrees(&from_pod, port, port.internal, masq_pod)
                .map_err(|e| context("ClusterIP from a pod", e))?;
            let from_node = send(
                &ruleset,
                port,
                Origin::Host,
                NODE_IP,
                port.cluster_ip,
                port.port,
            );
            agrees(&from_node, port, port.internal, masq_node)
                .map_err(|e| context("ClusterIP from the node", e))?;
            let Some(external) = &port.external else {
                continue;
            };
            let masq_outside = !external.policy_local;
            let mut targets: Vec<(IpAddr, u16, bool)> = Vec::new();
            if let Some(node_port) = port.node_port {
                targets.push((NODE_IP.parse().unwrap(), node_port, false));
            }
            targets.extend(port.external_ips.iter().map(|ip| (*ip, port.port, false)));
            targets.extend(
                port.load_balancer_ips
                    .iter()
                    .map(|ip| (*ip, port.port, true)),
            );
            for &(dst, dport, is_lb) in &targets {
                // From a pod and from the node: with Local policy short-circuited to the
                // Cluster pool (pods keep their source, the node is masqueraded); with
                // Cluster policy as from outside, masqueraded. (Not through a firewalled
                // LoadBalancer IP: these sources are outside its ranges.)
                if is_lb && external.firewall.is_some() {
                    continue;
                }
                for (class, origin, src, masq_local) in [
                    ("a pod", Origin::Arrives, CLIENT_POD, false),
                    ("the node", Origin::Host, NODE_IP, true),
                ] {
                    let (disposition, masquerade) = if !external.policy_local {
                        (external.disposition, true)
                    } else if port.uses_pool(Pool::Cluster) {
                        (Disposition::Forward(Pool::Cluster), masq_local)
                    } else {
                        (external.disposition, masq_local)
                    };
                    let outcome = send(&ruleset, port, origin, src, dst, dport);
                    agrees(&outcome, port, disposition, masquerade)
                        .map_err(|e| context(&format!("{dst}:{dport} from {class}"), e))?;
                }
            }
            for (dst, dport, is_lb) in targets {
                let outcome = send(&ruleset, port, Origin::Arrives, OUTSIDE, dst, dport);
                let class = format!("{dst}:{dport} from outside");
                match (&external.firewall, is_lb) {
                    (Some(_), true) => {
                        agrees(&outcome, port, Disposition::Drop, false).map_err(|e| {
                            context(&format!("{class}, outside the source ranges"), e)
                        })?;
                        let allowed = send(&ruleset, port, Origin::Arrives, ALLOWED, dst, dport);
                        agrees(&allowed, port, external.disposition, masq_outside).map_err(
                            |e| context(&format!("{dst}:{dport} from an allowed source"), e),
                        )?;
                    }
                    _ => agrees(&outcome, port, external.disposition, masq_outside)
                        .map_err(|e| context(&class, e))?,
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn the_rules_do_what_the_plan_says(services in prop::collection::vec(service(), 1..5)) {
        if let Err(e) = check(&services) {
            prop_assert!(false, "{e}\nsnapshot: {}", snapshot(&services));
        }
    }
}

/// The pools a generated snapshot reaches (so that a generator that never makes, say, a
/// Local pool or a drop is caught): every disposition appears over a fixed seed's cases.
#[test]
fn the_generator_reaches_every_disposition() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut seen = BTreeSet::new();
    let options = Options {
        node: NodeContext {
            node_name: Some("node-a".into()),
            node_ips: vec![NODE_IP.parse().unwrap()],
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            service_cidrs: vec!["10.96.0.0/16".parse().unwrap()],
            ..NodeContext::default()
        },
        ..Options::default()
    };
    for _ in 0..300 {
        let services = prop::collection::vec(service(), 1..5)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let source = Source {
            name: "generated.json".into(),
            text: snapshot(&services),
        };
        let plan = svcproxy_compiler::plan(&[source], &options).unwrap();
        for port in plan.families.iter().flat_map(|f| &f.ports) {
            seen.insert(format!("internal {:?}", port.internal));
            if let Some(external) = &port.external {
                seen.insert(format!("external {:?}", external.disposition));
                if external.firewall.is_some() {
                    seen.insert("firewall".into());
                }
            }
        }
    }
    for want in [
        "internal Forward(Cluster)",
        "internal Forward(Local)",
        "internal Drop",
        "internal Reject",
        "external Forward(Cluster)",
        "external Forward(Local)",
        "external Drop",
        "external Reject",
        "firewall",
    ] {
        assert!(
            seen.contains(want),
            "never generated: {want}; seen {seen:?}"
        );
    }
}
