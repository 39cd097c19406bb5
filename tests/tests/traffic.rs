//! Real traffic through the compiled ruleset: the traffic fixture is compiled, loaded
//! into the node namespace of the test topology, and real TCP and UDP connections from
//! outside the cluster, from a pod, from an endpoint pod and from the node itself show
//! which endpoint answers, whether the source was masqueraded, and whether a packet is
//! rejected or dropped. One test per traffic class of the semantics notes, each run
//! twice: with the ruleset loaded by `nft -f`, and applied by the agent through netlink.
//!
//! Every flow is also run through the IR's interpreter (`svcproxy_compiler::nft::eval`,
//! what `svcproxy explain` uses): each endpoint that answers must be one it predicts,
//! with the masquerade it predicts, and each reject, drop or unrouted packet must be the
//! fate it predicts ([`Oracle`]).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use svcproxy_agent::sync::NftSyncer;
use svcproxy_compiler::nft::eval::{self, Fate, Host, Origin, Packet};
use svcproxy_compiler::nft::ir::{L4Proto, Ruleset};
use svcproxy_tests::fixtures::{compile, plan};
use svcproxy_tests::topology::{EXT_V4, EXT_V6, EXT2_V4, NODE_V4, NODE_V6};
use svcproxy_tests::{
    Cluster, Netns, Outcome, ProbeOpts, Proto, probe, probe_with, require_kernel, set_testd_path,
};

const FIXTURE: &str = "fixtures/traffic/cluster.yaml";
/// Endpoint pods and their topology index (10.244.N.10). a* are on node-a (this
/// node), b* on node-b, as the fixture's nodeName says.
const ENDPOINT_PODS: [(&str, u8); 4] = [("a1", 1), ("a2", 2), ("b1", 3), ("b2", 4)];
const CLIENT: (&str, u8) = ("client", 9);
/// Enough samples that a uniformly random choice misses one of two endpoints with
/// probability 2^-29.
const SAMPLES: usize = 30;

/// How the ruleset gets into the node.
#[derive(Debug, Clone, Copy)]
enum Loader {
    /// `nft -f` of `svcproxy compile`'s text.
    Nft,
    /// The agent's netlink path (the syncer `svcproxy apply` and `run` use).
    Agent,
}

const LOADERS: [Loader; 2] = [Loader::Nft, Loader::Agent];

/// The topology with the fixture's ruleset loaded into the node.
struct Lab {
    c: Cluster,
}

impl Lab {
    /// `None` when the test may not use the kernel (see `require_kernel`).
    fn new(loader: Loader) -> Option<Lab> {
        set_testd_path(env!("CARGO_BIN_EXE_svcproxy-testd"));
        if !require_kernel() {
            return None;
        }
        let c = topology();
        eprintln!("-- the ruleset is loaded by {loader:?}");
        match loader {
            Loader::Nft => {
                let compiled = compile(Path::new(FIXTURE), &[]);
                assert_eq!(compiled.code, 0, "{}", compiled.stderr);
                c.node.nft(&compiled.stdout).unwrap();
            }
            Loader::Agent => {
                let ruleset = svcproxy_compiler::nft::ruleset(&plan(Path::new(FIXTURE)));
                c.node
                    .enter(|| NftSyncer::new().and_then(|mut s| s.sync(&ruleset)))
                    .unwrap()
                    .unwrap();
            }
        }
        let ruleset = svcproxy_compiler::nft::ruleset(&plan(Path::new(FIXTURE)));
        ORACLE.with(|o| *o.borrow_mut() = Some(Oracle::new(&c, ruleset)));
        Some(Lab { c })
    }

    fn pod(&self, name: &str) -> &Netns {
        &self.c.pod(name).unwrap().ns
    }

    fn ip_of(&self, pod: &str) -> IpAddr {
        IpAddr::V4(self.c.pod(pod).unwrap().v4())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        ORACLE.with(|o| *o.borrow_mut() = None);
    }
}

thread_local! {
    /// The interpreter's view of the current test's lab (each test runs in its thread).
    static ORACLE: RefCell<Option<Oracle>> = const { RefCell::new(None) };
}

/// Predicts what the rules do to a probe, from the compiled ruleset.
struct Oracle {
    ruleset: Ruleset,
    host: Host,
    node: String,
    ext: String,
    /// Pod name, its namespace's name, its addresses.
    pods: Vec<(String, String, IpAddr, IpAddr)>,
}

impl Oracle {
    fn new(c: &Cluster, ruleset: Ruleset) -> Oracle {
        let mut local = vec![IpAddr::V4(NODE_V4), IpAddr::V6(NODE_V6)];
        for pod in c.pods() {
            local.push(IpAddr::V4(pod.gateway_v4()));
            local.push(IpAddr::V6(pod.gateway_v6()));
        }
        Oracle {
            ruleset,
            host: Host {
                local: local.into_iter().map(ipnet::IpNet::from).collect(),
            },
            node: c.node.name().to_string(),
            ext: c.ext.name().to_string(),
            pods: c
                .pods()
                .iter()
                .map(|p| {
                    (
                        p.name.clone(),
                        p.ns.name().to_string(),
                        IpAddr::V4(p.v4()),
                        IpAddr::V6(p.v6()),
                    )
                })
                .collect(),
        }
    }

    /// The source address a probe from `ns` has, and the interpreter's outcome.
    fn predict(
        &self,
        ns: &Netns,
        proto: Proto,
        dst: SocketAddr,
        src: Option<IpAddr>,
    ) -> (IpAddr, eval::Outcome) {
        let v4 = dst.is_ipv4();
        let pick = |a: IpAddr, b: IpAddr| if v4 { a } else { b };
        let (origin, own) = if ns.name() == self.node {
            (Origin::Host, pick(IpAddr::V4(NODE_V4), IpAddr::V6(NODE_V6)))
        } else if ns.name() == self.ext {
            (
                Origin::Arrives,
                pick(IpAddr::V4(EXT_V4), IpAddr::V6(EXT_V6)),
            )
        } else {
            let (_, _, a, b) = self
                .pods
                .iter()
                .find(|p| p.1 == ns.name())
                .expect("a namespace of the lab");
            (Origin::Arrives, pick(*a, *b))
        };
        let src = src.unwrap_or(own);
        let packet = Packet {
            proto: match proto {
                Proto::Tcp => L4Proto::Tcp,
                Proto::Udp => L4Proto::Udp,
            },
            src,
            sport: 40000,
            dst: dst.ip(),
            dport: dst.port(),
            origin,
        };
        let outcome = eval::evaluate(&self.ruleset, &self.host, &packet).unwrap();
        (src, outcome)
    }

    fn pod_ip(&self, name: &str, v4: bool) -> IpAddr {
        let (_, _, a, b) = self
            .pods
            .iter()
            .find(|p| p.0 == name)
            .unwrap_or_else(|| panic!("no pod {name}"));
        if v4 { *a } else { *b }
    }
}

/// Checks answers against the interpreter: each answering endpoint is a predicted DNAT
/// target, masqueraded exactly when predicted.
fn check_answers(
    ns: &Netns,
    proto: Proto,
    dst: SocketAddr,
    src: Option<IpAddr>,
    got: &[(String, IpAddr)],
) {
    ORACLE.with(|o| {
        let oracle = o.borrow();
        let Some(oracle) = oracle.as_ref() else {
            return;
        };
        let (src, predicted) = oracle.predict(ns, proto, dst, src);
        for (name, peer) in got {
            let ip = oracle.pod_ip(name, dst.is_ipv4());
            let branch = predicted
                .branches
                .iter()
                .find(|b| b.fate == Fate::Accepted && b.dnat.map(|(a, _)| a) == Some(ip))
                .unwrap_or_else(|| {
                    panic!(
                        "{proto} {src} -> {dst}: {name} ({ip}) answered, the interpreter \
                         predicted {predicted:#?}"
                    )
                });
            assert_eq!(
                branch.masquerade,
                *peer != src,
                "{proto} {src} -> {dst} answered by {name} as seen from {peer}: \
                 the interpreter predicted masquerade {}",
                branch.masquerade
            );
        }
    });
}

/// Checks failed probes against the interpreter: a reject is a predicted reject, a
/// timeout a predicted drop, an unreachable a packet no rule translated.
fn check_failures(ns: &Netns, proto: Proto, dst: SocketAddr, src: Option<IpAddr>, got: &[Outcome]) {
    ORACLE.with(|o| {
        let oracle = o.borrow();
        let Some(oracle) = oracle.as_ref() else {
            return;
        };
        let (src, predicted) = oracle.predict(ns, proto, dst, src);
        for outcome in got {
            let expected = match outcome {
                Outcome::Refused => Some(Fate::Rejected),
                Outcome::Timeout => Some(Fate::Dropped),
                Outcome::Unreachable => Some(Fate::Accepted),
                _ => None,
            };
            let Some(expected) = expected else { continue };
            let agrees = predicted
                .branches
                .iter()
                .any(|b| b.fate == expected && (expected != Fate::Accepted || b.dnat.is_none()));
            assert!(
                agrees,
                "{proto} {src} -> {dst}: the kernel gave {outcome:?}, the interpreter \
                 predicted {predicted:#?}"
            );
        }
    });
}

/// The test topology without rules: endpoint pods serving on 8080 (TCP and UDP) and a
/// client pod. The node's default gateway is ext, as a real node has an upstream
/// router; ext answers anything routed to it that is not its own with "host
/// unreachable". So a packet that no rule translates comes back as `Unreachable`, a
/// rule's reject as `Refused` and a rule's drop as `Timeout`: three outcomes a test
/// can tell apart.
fn topology() -> Cluster {
    let mut c = Cluster::new().unwrap();
    for (name, index) in ENDPOINT_PODS {
        c.add_pod(name, index).unwrap();
        c.serve(name, name, &[(Proto::Tcp, 8080), (Proto::Udp, 8080)])
            .unwrap();
    }
    c.add_pod(CLIENT.0, CLIENT.1).unwrap();
    c.node
        .ip(&["route", "add", "default", "via", "192.168.100.2"])
        .unwrap();
    c.node
        .ip(&["-6", "route", "add", "default", "via", "fd00:100::2"])
        .unwrap();
    c.ext
        .nft(
            "table inet upstream {
                chain prerouting {
                    type filter hook prerouting priority 0;
                    fib daddr type unicast reject with icmpx type host-unreachable
                }
            }",
        )
        .unwrap();
    c
}

fn at(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn v4(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Probes `count` times and requires every probe to be answered.
fn answers(ns: &Netns, proto: Proto, dst: SocketAddr, count: usize) -> Vec<(String, IpAddr)> {
    answers_from(ns, proto, dst, count, None)
}

fn answers_from(
    ns: &Netns,
    proto: Proto,
    dst: SocketAddr,
    count: usize,
    src: Option<IpAddr>,
) -> Vec<(String, IpAddr)> {
    let opts = ProbeOpts {
        count,
        src,
        ..ProbeOpts::default()
    };
    let got: Vec<(String, IpAddr)> = probe_with(ns, proto, dst, &opts)
        .unwrap()
        .into_iter()
        .map(|outcome| match outcome {
            Outcome::Ok { name, peer } => (name, peer),
            other => panic!("{proto} to {dst} from {}: {other:?}", ns.name()),
        })
        .collect();
    check_answers(ns, proto, dst, src, &got);
    got
}

/// Probes that are expected to fail, with a short timeout.
fn outcomes(ns: &Netns, proto: Proto, dst: SocketAddr, src: Option<IpAddr>) -> Vec<Outcome> {
    let opts = ProbeOpts {
        count: 2,
        src,
        timeout: Duration::from_millis(400),
    };
    let got = probe_with(ns, proto, dst, &opts).unwrap();
    check_failures(ns, proto, dst, src, &got);
    got
}

fn names(answers: &[(String, IpAddr)]) -> BTreeSet<&str> {
    answers.iter().map(|(n, _)| n.as_str()).collect()
}

fn peers(answers: &[(String, IpAddr)]) -> BTreeSet<IpAddr> {
    answers.iter().map(|(_, p)| *p).collect()
}

fn set<'a>(items: &[&'a str]) -> BTreeSet<&'a str> {
    items.iter().copied().collect()
}

/// The node's address on the link of pod N: what a masqueraded connection shows.
fn node_side(index: u8) -> IpAddr {
    v4(&format!("10.244.{index}.1"))
}

#[test]
fn cluster_ip_spreads_over_ready_endpoints_and_masquerades_only_off_cluster_sources() {
    for loader in LOADERS {
        let Some(lab) = Lab::new(loader) else { return };
        let client = lab.pod("client");
        let masqueraded: BTreeSet<IpAddr> = [node_side(1), node_side(3)].into();

        // From a pod: both endpoints, and the pod's own source address.
        let from_pod = answers(client, Proto::Tcp, at(v4("10.96.0.10"), 80), SAMPLES);
        assert_eq!(names(&from_pod), set(&["a1", "b1"]));
        assert_eq!(peers(&from_pod), [lab.ip_of("client")].into());

        // From outside the cluster (routed to the service CIDR through the node):
        // masqueraded, so replies come back through this node.
        let from_ext = answers(&lab.c.ext, Proto::Tcp, at(v4("10.96.0.10"), 80), SAMPLES);
        assert_eq!(names(&from_ext), set(&["a1", "b1"]));
        assert!(peers(&from_ext).is_subset(&masqueraded), "{from_ext:?}");

        // From the node itself: not a pod, so masqueraded too.
        let from_node = answers(&lab.c.node, Proto::Tcp, at(v4("10.96.0.10"), 80), SAMPLES);
        assert_eq!(names(&from_node), set(&["a1", "b1"]));
        assert!(peers(&from_node).is_subset(&masqueraded), "{from_node:?}");

        // UDP takes the same path.
        let udp = answers(client, Proto::Udp, at(v4("10.96.0.10"), 53), SAMPLES);
        assert_eq!(names(&udp), set(&["a1", "b1"]));
        assert_eq!(peers(&udp), [lab.ip_of("client")].into());
    }
}

#[test]
fn ipv6_cluster_ip_and_node_port() {
    for loader in LOADERS {
        let Some(lab) = Lab::new(loader) else { return };
        let client = lab.pod("client");
        let client_v6 = IpAddr::V6(lab.c.pod("client").unwrap().v6());
        let vip: IpAddr = "fd00:96::10".parse().unwrap();
        for proto in [Proto::Tcp, Proto::Udp] {
            let port = if proto == Proto::Tcp { 80 } else { 53 };
            let from_pod = answers(client, proto, at(vip, port), SAMPLES);
            assert_eq!(names(&from_pod), set(&["a1", "b1"]), "{proto}");
            assert_eq!(peers(&from_pod), [client_v6].into(), "{proto}");
        }
        let from_ext = answers(&lab.c.ext, Proto::Tcp, at(vip, 80), SAMPLES);
        assert_eq!(names(&from_ext), set(&["a1", "b1"]));
        assert!(
            !peers(&from_ext).contains(&IpAddr::V6(EXT_V6)),
            "ext must be masqueraded"
        );
        let node_port = answers(&lab.c.ext, Proto::Tcp, at(NODE_V6, 30010), SAMPLES);
        assert_eq!(names(&node_port), set(&["a1", "b1"]));
        assert!(!peers(&node_port).contains(&IpAddr::V6(EXT_V6)));
        assert_eq!(
            outcomes(
                client,
                Proto::Tcp,
                at("fd00:96::20".parse::<IpAddr>().unwrap(), 80),
                None
            ),
            vec![Outcome::Refused; 2],
            "an IPv6 service without endpoints rejects"
        );
    }
}

#[test]
fn services_without_endpoints_reject_on_every_address() {
    for loader in LOADERS {
        let Some(lab) = Lab::new(loader) else { return };
        let client = lab.pod("client");
        let refused = vec![Outcome::Refused; 2];
        assert_eq!(
            outcomes(client, Proto::Tcp, at(v4("10.96.0.20"), 80), None),
            refused
        );
        assert_eq!(
            outcomes(client, Proto::Udp, at(v4("10.96.0.20"), 53), None),
            refused
        );
        assert_eq!(
            outcomes(&lab.c.ext, Proto::Tcp, at(NODE_V4, 30020), None),
            refused
        );
        assert_eq!(
            outcomes(&lab.c.ext, Proto::Udp, at(NODE_V4, 30021), None),
            refused
        );
        assert_eq!(
            outcomes(&lab.c.node, Proto::Tcp, at(v4("10.96.0.20"), 80), None),
            refused
        );
    }
}

#[test]
fn wrong_port_of_a_cluster_ip_rejects_and_unallocated_service_ips_are_dropped() {
    set_testd_path(env!("CARGO_BIN_EXE_svcproxy-testd"));
    if !require_kernel() {
        return;
    }
    // Without rules, a packet to an unallocated service address goes to the upstream
    // router, which says it is unreachable. That makes the drop below visible.
    let bare = topology();
    let unallocated = at(v4("10.96.99.99"), 80);
    let client = &bare.pod("client").unwrap().ns;
    assert_eq!(
        outcomes(client, Proto::Tcp, unallocated, None),
        vec![Outcome::Unreachable; 2]
    );
    drop(bare);

    for loader in LOADERS {
        let Some(lab) = Lab::new(loader) else { return };
        let client = lab.pod("client");
        assert_eq!(
            outcomes(client, Proto::Tcp, at(v4("10.96.0.10"), 81), None),
            vec![Outcome::Refused; 2],
            "a ClusterIP on a port the service does not have"
        );
        assert_eq!(
            outcomes(client, Proto::Tcp, unallocated, None),
            vec![Outcome::Timeout; 2],
            "an address of the service CIDR that no service has"
        );
        assert_eq!(
            outcomes(&lab.c.node, Proto::Tcp, at(v4("10.96.0.10"), 81), None),
            vec![Outcome::Refused; 2],
            "from the node too (a UDP send from the node fails at once with EPERM instead)"
        );
    }
}

#[test]
fn node_port_with_cluster_policy_masquerades_and_uses_all_endpoints() {
    for loader in LOADERS {
        let Some(lab) = Lab::new(loader) else { return };
        let masqueraded: BTreeSet<IpAddr> = [node_side(1), node_side(3)].into();
        for (proto, port) in [(Proto::Tcp, 30010), (Proto::Udp, 30011)] {
            let got = answers(&lab.c.ext, proto, at(NODE_V4, port), SAMPLES);
            assert_eq!(names(&got), set(&["a1", "b1"]), "{proto}");
            assert!(peers(&got).is_subset(&masqueraded), "{proto}: {got:?}");
        }
    }
}

#[test]
fn external_traffic_policy_local_keeps_the_source_and_short_circuits_pods_and_the_node() {
    for loader in LOADERS {
        let Some(lab) = Lab::new(loader) else { return };
        let ext_v4 = IpAddr::V4(EXT_V4);
        // From outside, to the LoadBalancer IP, the externalIP and the NodePort: only the
        // local endpoint, and the client's own address.
        for dst in [
            at(v4("203.0.113.20"), 80),
            at(v4("203.0.113.60"), 80),
            at(NODE_V4, 30030),
        ] {
            let got = answers(&lab.c.ext, Proto::Tcp, dst, SAMPLES);
            assert_eq!(names(&got), set(&["a2"]), "{dst}");
            assert_eq!(
                peers(&got),
                [ext_v4].into(),
                "{dst}: the source must be preserved"
            );
        }
        // From a pod: every endpoint, unmasqueraded.
        let client = lab.pod("client");
        let from_pod = answers(client, Proto::Tcp, at(v4("203.0.113.20"), 80), SAMPLES);
        assert_eq!(names(&from_pod), set(&["a2", "b2"]));
        assert_eq!(peers(&from_pod), [lab.ip_of("client")].into());
        // From the node: every endpoint, masqueraded.
        let from_node = answers(&lab.c.node, Proto::Tcp, at(v4("203.0.113.20"), 80), SAMPLES);
        assert_eq!(names(&from_node), set(&["a2", "b2"]));
        assert!(
            peers(&from_node).is_subset(&[node_side(2), node_side(4)].into()),
            "{from_node:?}"
        );

        // No local endpoint: outside traffic is dropped (another node may serve it),
        // pods and the node still reach the remote endpoint.
        for dst in [at(v4("203.0.113.21"), 80), at(NODE_V4, 30040)] {
            assert_eq!(
                outcomes(&lab.c.ext, Proto::Tcp, dst, None),
                vec![Outcome::Timeout; 2],
                "{dst}"
            );
        }
        let from_pod = answers(client, Proto::Tcp, at(v4("203.0.113.21"), 80), 5);
        assert_eq!(names(&from_pod), set(&["b1"]));
        let from_node = answers(&lab.c.node, Proto::Tcp, at(v4("203.0.113.21"), 80), 5);
        assert_eq!(names(&from_node), set(&["b1"]));
    }
}

#[test]
fn load_balancer_source_ranges_drop_other_sources_but_not_on_the_node_port() {
    for loader in LOADERS {
        let Some(lab) = Lab::new(loader) else { return };
        let lb = at(v4("203.0.113.40"), 80);
        let allowed = answers_from(&lab.c.ext, Proto::Tcp, lb, 3, Some(IpAddr::V4(EXT2_V4)));
        assert_eq!(names(&allowed), set(&["a1"]));
        assert_eq!(
            outcomes(&lab.c.ext, Proto::Tcp, lb, Some(IpAddr::V4(EXT_V4))),
            vec![Outcome::Timeout; 2],
            "192.168.100.2 is outside loadBalancerSourceRanges"
        );
        let node_port = answers_from(
            &lab.c.ext,
            Proto::Tcp,
            at(NODE_V4, 30050),
            3,
            Some(IpAddr::V4(EXT_V4)),
        );
        assert_eq!(
            names(&node_port),
            set(&["a1"]),
            "NodePorts are not firewalled"
        );
    }
}

#[test]
fn client_ip_affinity_keeps_a_client_on_one_endpoint() {
    for loader in LOADERS {
        let Some(lab) = Lab::new(loader) else { return };
        let vip = at(v4("10.96.0.60"), 80);
        for ns in [lab.pod("client"), &lab.c.ext, lab.pod("b1")] {
            let got = answers(ns, Proto::Tcp, vip, 20);
            assert_eq!(names(&got).len(), 1, "from {}: {got:?}", ns.name());
        }
        // The client's endpoint is recorded per service port, as kube-proxy's
        // nftables mode does: the externalIP and the NodePort send it to the one its
        // ClusterIP connections went to.
        let first = answers(&lab.c.ext, Proto::Tcp, vip, 1);
        let first = names(&first);
        for dst in [at(v4("203.0.113.61"), 80), at(NODE_V4, 30060)] {
            let got = answers(&lab.c.ext, Proto::Tcp, dst, 10);
            assert_eq!(names(&got), first, "{dst}: {got:?}");
        }
    }
}

#[test]
fn client_ip_affinity_with_local_policy_sticks_within_the_policys_pool() {
    for loader in LOADERS {
        let Some(lab) = Lab::new(loader) else { return };
        // From outside: one of the local endpoints, the same on every address.
        let mut seen = BTreeSet::new();
        for dst in [at(v4("203.0.113.62"), 80), at(NODE_V4, 30062)] {
            let got = answers(&lab.c.ext, Proto::Tcp, dst, 10);
            assert_eq!(names(&got).len(), 1, "{dst}: {got:?}");
            assert!(names(&got).is_subset(&set(&["a1", "a2"])), "{dst}: {got:?}");
            seen.extend(names(&got).into_iter().map(str::to_string));
        }
        assert_eq!(
            seen.len(),
            1,
            "the externalIP and the NodePort differ: {seen:?}"
        );
        // From a pod (short-circuited to the Cluster pool): one endpoint, the same
        // through the externalIP and the ClusterIP.
        let client = lab.pod("client");
        let got = answers(client, Proto::Tcp, at(v4("203.0.113.62"), 80), 10);
        assert_eq!(names(&got).len(), 1, "{got:?}");
        let via_cluster_ip = answers(client, Proto::Tcp, at(v4("10.96.0.62"), 80), 10);
        assert_eq!(names(&via_cluster_ip), names(&got));
    }
}

#[test]
fn internal_traffic_policy_local_uses_only_this_nodes_endpoints() {
    for loader in LOADERS {
        let Some(lab) = Lab::new(loader) else { return };
        let got = answers(
            lab.pod("client"),
            Proto::Tcp,
            at(v4("10.96.0.70"), 80),
            SAMPLES,
        );
        assert_eq!(names(&got), set(&["a1"]));
    }
}

#[test]
fn hairpin_an_endpoint_reaching_itself_through_the_service_is_masqueraded() {
    for loader in LOADERS {
        let Some(lab) = Lab::new(loader) else { return };
        let a1 = lab.ip_of("a1");
        let got = answers(lab.pod("a1"), Proto::Tcp, at(v4("10.96.0.10"), 80), SAMPLES);
        assert_eq!(names(&got), set(&["a1", "b1"]));
        for (name, peer) in &got {
            if name == "a1" {
                // Without masquerade the reply would skip the node's de-NAT and the
                // connection would never complete.
                assert_eq!(*peer, node_side(1), "hairpin answer from {name}");
            } else {
                assert_eq!(*peer, a1, "a1 is a pod: no masquerade towards b1");
            }
        }
    }
}

#[test]
fn serving_terminating_endpoints_take_over_when_none_is_ready() {
    for loader in LOADERS {
        let Some(lab) = Lab::new(loader) else { return };
        let got = answers(lab.pod("client"), Proto::Tcp, at(v4("10.96.0.80"), 80), 10);
        assert_eq!(names(&got), set(&["b2"]));
        let _ = probe(&lab.c.ext, Proto::Tcp, at(v4("10.96.0.80"), 80), 1).unwrap();
    }
}
