//! Where a Service becomes rules: the plan rendered as one nftables table per family.
//!
//! The layout follows kube-proxy's nftables mode where that costs nothing, so
//! operators who know it can read ours:
//! - verdict maps keyed `daddr . l4proto . dport` (`service-ips`) and `l4proto . dport`
//!   (`service-nodeports`) dispatch a new connection to the chains of a port that has
//!   its own (ClientIP affinity);
//! - `no-endpoint-*` maps reject (no endpoint at all) or drop (none usable here), from
//!   filter chains, because `reject` is only allowed there; a `firewall-…` chain per
//!   port with LoadBalancer source ranges;
//! - hairpin traffic (a pod reaching itself through a service) is masqueraded in
//!   postrouting, from the `hairpin-endpoints` set of `endpoint . endpoint` pairs.
//!
//! Where it differs, it is because the kernel's commit walks every chain, and a rule
//! or a jumping map element makes it re-validate the whole table (docs/design.md,
//! "Performance at scale"):
//! - a service port has no chain of its own. Its keys are elements of plain sets
//!   (`cluster-ip-ports`, `external-ports`, ...), each matched by one rule that goes
//!   to a chain shared by every port (`cluster-ip-traffic`, `external-traffic`,
//!   `external-local-traffic`, `nodeport-traffic`, `nodeport-local-traffic`), which
//!   makes the masquerade and traffic-policy decisions and goes on to a `pick-…`
//!   chain. (Sets, not `goto` elements of the verdict maps: validation walks every
//!   verdict-map element.) The random choice is one
//!   rule per endpoint count N present, `dnat ip to ip daddr . meta l4proto . th dport
//!   . numgen random mod N map @endpoints-N`; the port's endpoints are the elements
//!   `DESTINATION . i : ENDPOINT_i` of the map of its count. So an endpoint change is
//!   an element change (data maps need no validation), unless it brings a count no
//!   other port has. No anonymous map either: those made kube-proxy's rule insertion
//!   quadratic (10,000 services: 199 s against 7.2 s through `nft -f`,
//!   `shared/notes/ruleset-scaling.md`);
//! - except with ClientIP affinity: recording the client's endpoint needs it as a
//!   constant, so such a port keeps per-port chains (`service-…`, `local-…`,
//!   `external-…`) with a cascade of `numgen random mod (n-i) == 0` rules, each
//!   recording the client in the pool's dynamic map (`affinity-…`, IPv6 also
//!   `affinity-port-…`) before its DNAT; a known client is sent back first;
//! - the no-endpoint check for locally generated traffic runs after DNAT
//!   (`filter-output-post-dnat`), so the node's own connections to an externalIP or
//!   LoadBalancer IP of a Local-policy service without local endpoints are
//!   short-circuited to the cluster endpoints, as the policy says, instead of dropped.

use std::cell::LazyCell;
use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::build::{TableParts, addr_match, commented, dispatch_exprs, goto, jump, net, rule};
use super::ir::*;
use crate::endpoints::Endpoint;
use crate::names;
use crate::node::NodePortAddresses;
use crate::plan::{
    Disposition, FamilyPlan, Masquerade, Plan, Pool, ServicePortId, ServicePortPlan,
};

/// The name of svcproxy's table in each family.
pub const TABLE_NAME: &str = "svcproxy";

// Skeleton chains and sets; every per-service name contains a slash, these never do.
const CLUSTER_IPS: &str = "cluster-ips";
const NODEPORT_IPS: &str = "nodeport-ips";
const SERVICE_IPS: &str = "service-ips";
const SERVICE_NODEPORTS: &str = "service-nodeports";
const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
const FIREWALL_IPS: &str = "firewall-ips";
const HAIRPIN_ENDPOINTS: &str = "hairpin-endpoints";
const SERVICES: &str = "services";
const NODEPORT_SERVICES: &str = "nodeport-services";
const MASQUERADING: &str = "masquerading";
const MARK_FOR_MASQUERADE: &str = "mark-for-masquerade";
const REJECT_CHAIN: &str = "reject-chain";
const SERVICE_ENDPOINTS_CHECK: &str = "service-endpoints-check";
const NODEPORT_ENDPOINTS_CHECK: &str = "nodeport-endpoints-check";
const FIREWALL_CHECK: &str = "firewall-check";
const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";
const CLUSTER_IP_TRAFFIC: &str = "cluster-ip-traffic";
/// The plain sets that send a service port's traffic to a shared chain: sets rather
/// than `goto` elements of the verdict maps, because the kernel's validation of the
/// table (after any new rule) walks every element of every verdict map, and would
/// walk one per service port (docs/design.md).
const CLUSTER_IP_PORTS: &str = "cluster-ip-ports";
const EXTERNAL_PORTS: &str = "external-ports";
const EXTERNAL_LOCAL_PORTS: &str = "external-local-ports";
const NODEPORTS: &str = "nodeports";
const NODEPORTS_LOCAL: &str = "nodeports-local";
const EXTERNAL_TRAFFIC: &str = "external-traffic";
const EXTERNAL_LOCAL_TRAFFIC: &str = "external-local-traffic";
const NODEPORT_TRAFFIC: &str = "nodeport-traffic";
const NODEPORT_LOCAL_TRAFFIC: &str = "nodeport-local-traffic";

/// Where a dispatch key (address . protocol . port, or protocol . NodePort) sends its
/// traffic.
enum Dispatch {
    /// A `goto` element of this verdict map, to the port's own chain.
    Own(&'static str, String),
    /// An element of this set, whose rule in `services` goes to a shared chain.
    Shared(&'static str),
}

/// The endpoint maps: which key picks from which pool. A service port's elements sit in
/// the map for its endpoint count N (`endpoints-3`), keyed by the packet's destination
/// and a random bucket in `0..N`; the `pick-…` chain has one rule per count present,
/// `dnat ip to ip daddr . meta l4proto . th dport . numgen random mod N map
/// @endpoints-N`. A key missing from a count's map falls through to the next rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Pick {
    /// ClusterIP, externalIP and LoadBalancer IP traffic, from the pool its policy names.
    Address,
    /// externalIP and LoadBalancer IP traffic of a Local-policy port that is
    /// short-circuited to the Cluster pool (pods and the node itself).
    AddressCluster,
    /// NodePort traffic, from the pool its policy names.
    NodePort,
    /// Short-circuited NodePort traffic of a Local-policy port.
    NodePortCluster,
}

impl Pick {
    const ALL: [Pick; 4] = [
        Pick::Address,
        Pick::AddressCluster,
        Pick::NodePort,
        Pick::NodePortCluster,
    ];

    fn chain(self) -> &'static str {
        match self {
            Pick::Address => "pick-endpoint",
            Pick::AddressCluster => "pick-cluster-endpoint",
            Pick::NodePort => "pick-nodeport-endpoint",
            Pick::NodePortCluster => "pick-nodeport-cluster-endpoint",
        }
    }

    fn map_prefix(self) -> &'static str {
        match self {
            Pick::Address => "endpoints-",
            Pick::AddressCluster => "cluster-endpoints-",
            Pick::NodePort => "nodeport-endpoints-",
            Pick::NodePortCluster => "nodeport-cluster-endpoints-",
        }
    }

    fn map(self, count: u32) -> String {
        format!("{}{count}", self.map_prefix())
    }

    /// Short: the kernel keeps at most 256 bytes of set userdata, and the `typeof`
    /// declaration already takes 174 of them.
    fn map_comment(self, count: u32) -> String {
        let what = match self {
            Pick::Address => "destination . bucket : endpoint",
            Pick::AddressCluster => "Local-policy external IP . bucket : Cluster endpoint",
            Pick::NodePort => "NodePort . bucket : endpoint",
            Pick::NodePortCluster => "Local-policy NodePort . bucket : Cluster endpoint",
        };
        let plural = if count == 1 { "" } else { "s" };
        format!("{what} ({count} endpoint{plural})")
    }

    /// The packet's part of the key: its destination, or only the port for NodePorts.
    fn key(self) -> Vec<KeyExpr> {
        match self {
            Pick::Address | Pick::AddressCluster => dispatch_exprs(),
            Pick::NodePort | Pick::NodePortCluster => vec![KeyExpr::L4Proto, KeyExpr::ThDport],
        }
    }
}

/// Filter chains run just before DNAT (-100) so they see the original destination;
/// the post-DNAT output chain just after it.
const PRE_DNAT: i32 = -110;
const POST_DNAT: i32 = -90;
const DSTNAT: i32 = -100;
const SRCNAT: i32 = 100;

/// The whole ruleset for a plan: one table per family in use.
pub fn ruleset(plan: &Plan) -> Ruleset {
    Ruleset {
        tables: plan.families.iter().map(table).collect(),
    }
}

/// Whether a chain's rules depend on which Services exist: the per-port chains, and
/// the `pick-…` chains (a rule per endpoint count present). A fragment holds these.
pub fn is_fragment_chain(name: &str) -> bool {
    is_per_service_chain(name) || Pick::ALL.iter().any(|pick| pick.chain() == name)
}

/// Whether a set is one of the endpoint maps (`endpoints-3`, `nodeport-endpoints-1`).
pub fn is_endpoint_map(name: &str) -> bool {
    Pick::ALL.iter().any(|pick| {
        name.strip_prefix(pick.map_prefix())
            .is_some_and(|count| count.parse::<u32>().is_ok())
    })
}

/// Whether a chain belongs to one service port (its name has a slash, as every
/// per-service name does) rather than to the fixed part of the table.
pub fn is_per_service_chain(name: &str) -> bool {
    name.contains('/')
}

fn table(fp: &FamilyPlan) -> Table {
    let mut t = TableBuilder::new(fp);
    t.skeleton();
    for port in &fp.ports {
        t.service_port(port);
    }
    t.finish()
}

/// A key of an endpoint map (without the bucket) and the endpoints it picks from.
type EndpointKey<'a> = (Vec<KeyValue>, &'a [Endpoint]);

/// Accumulates one table. Elements go into sets by name; `finish` sorts them.
struct TableBuilder<'a> {
    fp: &'a FamilyPlan,
    family: Family,
    parts: TableParts,
    /// The endpoints of `hairpin-endpoints`: every port of a Service names the same
    /// endpoints, so they are collected, sorted and deduplicated, and become elements
    /// at the end.
    hairpin: Vec<IpAddr>,
    /// The keys of the endpoint maps with their endpoints, by map kind and endpoint
    /// count. The maps, their elements and their `pick-…` rules are made at the end,
    /// for the counts present: with the keys sorted first, the elements come out in
    /// their canonical order and need no sort of their own (a tenth of the items).
    endpoint_maps: BTreeMap<(Pick, u32), Vec<EndpointKey<'a>>>,
}

impl<'a> TableBuilder<'a> {
    fn new(fp: &'a FamilyPlan) -> Self {
        TableBuilder {
            fp,
            family: fp.family,
            parts: TableParts::default(),
            hairpin: Vec::new(),
            endpoint_maps: BTreeMap::new(),
        }
    }

    fn finish(mut self) -> Table {
        let mut hairpin = std::mem::take(&mut self.hairpin);
        hairpin.sort_unstable();
        hairpin.dedup();
        if let Some(set) = self
            .parts
            .sets
            .iter_mut()
            .find(|s| s.name == HAIRPIN_ENDPOINTS)
        {
            set.elements.extend(hairpin.into_iter().map(|ip| Element {
                key: vec![net(ip), net(ip)],
                verdict: None,
                data: Vec::new(),
                comment: None,
            }));
        }
        self.endpoint_maps_and_rules();
        self.parts.into_table(
            self.family,
            TABLE_NAME,
            Some("rules for svcproxy".to_string()),
        )
    }

    // ----- the fixed part of the table -----

    fn skeleton(&mut self) {
        let addr = self.family.addr_type();
        let dispatch_key = vec![addr, KeyType::InetProto, KeyType::InetService];
        let port_key = vec![KeyType::InetProto, KeyType::InetService];
        self.parts
            .set(CLUSTER_IPS, vec![addr], None, "Active ClusterIPs");
        let nodeport_cidrs = match &self.fp.nodeport_addresses {
            NodePortAddresses::AllLocal => None,
            NodePortAddresses::Cidrs(cidrs) => Some(cidrs.clone()),
        };
        if let Some(cidrs) = &nodeport_cidrs {
            self.parts.set(
                NODEPORT_IPS,
                vec![addr],
                None,
                "IPs that accept NodePort traffic",
            );
            let set = self.parts.sets.last_mut().expect("just added");
            set.flags.interval = true;
            set.elements = cidrs
                .iter()
                .map(|net| Element {
                    key: vec![KeyValue::Net(*net)],
                    verdict: None,
                    data: Vec::new(),
                    comment: None,
                })
                .collect();
        }
        self.parts.set(
            SERVICE_IPS,
            dispatch_key.clone(),
            Some(MapData::Verdict),
            "ClusterIP, ExternalIP and LoadBalancer IP traffic",
        );
        self.parts.set(
            SERVICE_NODEPORTS,
            port_key.clone(),
            Some(MapData::Verdict),
            "NodePort traffic",
        );
        for (name, comment) in [
            (CLUSTER_IP_PORTS, "ClusterIP traffic to cluster-ip-traffic"),
            (
                EXTERNAL_PORTS,
                "externalIP and LoadBalancer IP traffic to external-traffic",
            ),
            (
                EXTERNAL_LOCAL_PORTS,
                "externalIP and LoadBalancer IP traffic to external-local-traffic",
            ),
        ] {
            self.parts.set(name, dispatch_key.clone(), None, comment);
        }
        self.parts.set(
            NODEPORTS,
            port_key.clone(),
            None,
            "NodePort traffic to nodeport-traffic",
        );
        self.parts.set(
            NODEPORTS_LOCAL,
            port_key.clone(),
            None,
            "NodePort traffic to nodeport-local-traffic",
        );
        self.parts.set(
            NO_ENDPOINT_SERVICES,
            dispatch_key.clone(),
            Some(MapData::Verdict),
            "vmap to drop or reject packets to services with no endpoints",
        );
        self.parts.set(
            NO_ENDPOINT_NODEPORTS,
            port_key,
            Some(MapData::Verdict),
            "vmap to drop or reject packets to service nodeports with no endpoints",
        );
        self.parts.set(
            FIREWALL_IPS,
            dispatch_key,
            Some(MapData::Verdict),
            "destinations that are subject to LoadBalancerSourceRanges",
        );
        self.parts.set(
            HAIRPIN_ENDPOINTS,
            vec![addr, addr],
            None,
            "endpoint . endpoint: a pod reaching itself through a service",
        );

        let new = |target: &str| rule(vec![Stmt::CtStateNew, jump(target)]);
        self.parts.base(
            "filter-prerouting",
            ChainType::Filter,
            Hook::Prerouting,
            PRE_DNAT,
            vec![new(FIREWALL_CHECK)],
        );
        self.parts.base(
            "filter-input",
            ChainType::Filter,
            Hook::Input,
            PRE_DNAT,
            vec![new(NODEPORT_ENDPOINTS_CHECK), new(SERVICE_ENDPOINTS_CHECK)],
        );
        self.parts.base(
            "filter-forward",
            ChainType::Filter,
            Hook::Forward,
            PRE_DNAT,
            vec![new(SERVICE_ENDPOINTS_CHECK), new(CLUSTER_IPS_CHECK)],
        );
        self.parts.base(
            "filter-output",
            ChainType::Filter,
            Hook::Output,
            PRE_DNAT,
            vec![new(FIREWALL_CHECK)],
        );
        self.parts.base(
            "filter-output-post-dnat",
            ChainType::Filter,
            Hook::Output,
            POST_DNAT,
            vec![new(SERVICE_ENDPOINTS_CHECK), new(CLUSTER_IPS_CHECK)],
        );
        self.parts.base(
            "nat-prerouting",
            ChainType::Nat,
            Hook::Prerouting,
            DSTNAT,
            vec![rule(vec![jump(SERVICES)])],
        );
        self.parts.base(
            "nat-output",
            ChainType::Nat,
            Hook::Output,
            DSTNAT,
            vec![rule(vec![jump(SERVICES)])],
        );
        self.parts.base(
            "nat-postrouting",
            ChainType::Nat,
            Hook::Postrouting,
            SRCNAT,
            vec![rule(vec![jump(MASQUERADING)])],
        );

        let mut cluster_ips_check = vec![commented(
            vec![
                Stmt::AddrInSet {
                    field: AddrField::Daddr,
                    op: CmpOp::Eq,
                    set: CLUSTER_IPS.into(),
                },
                Stmt::Reject,
            ],
            "Reject traffic to invalid ports of ClusterIPs",
        )];
        if !self.fp.service_cidrs.is_empty() {
            cluster_ips_check.push(commented(
                vec![
                    addr_match(AddrField::Daddr, CmpOp::Eq, &self.fp.service_cidrs),
                    Stmt::Verdict(Verdict::Drop),
                ],
                "Drop traffic to unallocated ClusterIPs",
            ));
        }
        self.parts.chain(CLUSTER_IPS_CHECK, cluster_ips_check);
        self.parts.chain(
            FIREWALL_CHECK,
            vec![rule(vec![Stmt::Vmap {
                key: dispatch_exprs(),
                map: FIREWALL_IPS.into(),
            }])],
        );
        let mark = self.fp.masquerade_mark;
        self.parts.chain(
            MASQUERADING,
            vec![
                // Hairpin: a pod whose connection to a service was DNATed back to
                // itself must see the node as the source, or its reply would bypass
                // the DNAT. After DNAT, that is exactly source == destination == an
                // endpoint; one set lookup here replaces a rule per endpoint.
                rule(vec![
                    Stmt::KeyInSet {
                        key: vec![
                            KeyExpr::Addr(AddrField::Saddr),
                            KeyExpr::Addr(AddrField::Daddr),
                        ],
                        op: CmpOp::Eq,
                        set: HAIRPIN_ENDPOINTS.into(),
                    },
                    jump(MARK_FOR_MASQUERADE),
                ]),
                rule(vec![
                    Stmt::MarkBitsClear(mark),
                    Stmt::Verdict(Verdict::Return),
                ]),
                rule(vec![Stmt::MarkSetXor(mark)]),
                rule(vec![Stmt::MasqueradeFullyRandom]),
            ],
        );
        self.parts
            .chain(MARK_FOR_MASQUERADE, vec![rule(vec![Stmt::MarkSetOr(mark)])]);

        let port_lookup = |map: &str| Stmt::Vmap {
            key: vec![KeyExpr::L4Proto, KeyExpr::ThDport],
            map: map.into(),
        };
        let not_loopback = Stmt::Addr {
            field: AddrField::Daddr,
            op: CmpOp::Ne,
            value: loopback(self.family),
        };
        let on_nodeport_addr = Stmt::AddrInSet {
            field: AddrField::Daddr,
            op: CmpOp::Eq,
            set: NODEPORT_IPS.into(),
        };
        // Input sees only local destinations, so "every local address" needs no fib.
        let nodeport_check = match nodeport_cidrs {
            None => vec![not_loopback.clone(), port_lookup(NO_ENDPOINT_NODEPORTS)],
            Some(_) => vec![on_nodeport_addr.clone(), port_lookup(NO_ENDPOINT_NODEPORTS)],
        };
        self.parts
            .chain(NODEPORT_ENDPOINTS_CHECK, vec![rule(nodeport_check)]);
        self.parts
            .chain(REJECT_CHAIN, vec![rule(vec![Stmt::Reject])]);
        self.parts.chains.last_mut().expect("just added").comment =
            Some("helper for @no-endpoint-services / @no-endpoint-nodeports".into());
        self.parts.chain(
            SERVICE_ENDPOINTS_CHECK,
            vec![rule(vec![Stmt::Vmap {
                key: dispatch_exprs(),
                map: NO_ENDPOINT_SERVICES.into(),
            }])],
        );
        let on_nodeport = match nodeport_cidrs {
            None => vec![Stmt::FibAddrTypeLocal(AddrField::Daddr), not_loopback],
            Some(_) => vec![on_nodeport_addr],
        };
        let address_in = |set: &str, chain: &str| {
            rule(vec![
                Stmt::KeyInSet {
                    key: dispatch_exprs(),
                    op: CmpOp::Eq,
                    set: set.into(),
                },
                goto(chain),
            ])
        };
        let nodeport_in = |set: &str, chain: &str| {
            rule(vec![
                Stmt::KeyInSet {
                    key: vec![KeyExpr::L4Proto, KeyExpr::ThDport],
                    op: CmpOp::Eq,
                    set: set.into(),
                },
                goto(chain),
            ])
        };
        let mut to_nodeports = on_nodeport;
        to_nodeports.push(goto(NODEPORT_SERVICES));
        self.parts.chain(
            SERVICES,
            vec![
                // Ports with chains of their own (ClientIP affinity).
                rule(vec![Stmt::Vmap {
                    key: dispatch_exprs(),
                    map: SERVICE_IPS.into(),
                }]),
                address_in(CLUSTER_IP_PORTS, CLUSTER_IP_TRAFFIC),
                address_in(EXTERNAL_PORTS, EXTERNAL_TRAFFIC),
                address_in(EXTERNAL_LOCAL_PORTS, EXTERNAL_LOCAL_TRAFFIC),
                rule(to_nodeports),
            ],
        );
        self.parts.chain(
            NODEPORT_SERVICES,
            vec![
                rule(vec![port_lookup(SERVICE_NODEPORTS)]),
                nodeport_in(NODEPORTS, NODEPORT_TRAFFIC),
                nodeport_in(NODEPORTS_LOCAL, NODEPORT_LOCAL_TRAFFIC),
            ],
        );
        self.shared_chains();
    }

    /// The chains shared by every service port without ClientIP affinity: the
    /// masquerade decision of each kind of traffic, then the random choice of an
    /// endpoint from the endpoint maps. A service port has no chain of its own, so an
    /// endpoint change is an element change (docs/design.md, "Performance at scale").
    fn shared_chains(&mut self) {
        let mut cluster_ip = Vec::new();
        match self.fp.internal_masquerade() {
            Masquerade::All => cluster_ip.push(rule(vec![jump(MARK_FOR_MASQUERADE)])),
            Masquerade::NotFrom(cidrs) => cluster_ip.push(rule(vec![
                addr_match(AddrField::Saddr, CmpOp::Ne, &cidrs),
                jump(MARK_FOR_MASQUERADE),
            ])),
            Masquerade::Never => {}
        }
        cluster_ip.push(rule(vec![goto(Pick::Address.chain())]));
        self.shared_chain(CLUSTER_IP_TRAFFIC, "ClusterIP traffic", cluster_ip);
        // The endpoint may be on another node: masquerade so replies come back
        // through this one.
        let masquerade_then = |pick: Pick| {
            vec![
                rule(vec![jump(MARK_FOR_MASQUERADE)]),
                rule(vec![goto(pick.chain())]),
            ]
        };
        self.shared_chain(
            EXTERNAL_TRAFFIC,
            "externalIP and LoadBalancer IP traffic, Cluster policy",
            masquerade_then(Pick::Address),
        );
        let mut external_local = self.local_policy_rules(Pick::AddressCluster.chain());
        external_local.push(rule(vec![goto(Pick::Address.chain())]));
        self.shared_chain(
            EXTERNAL_LOCAL_TRAFFIC,
            "externalIP and LoadBalancer IP traffic, Local policy",
            external_local,
        );
        self.shared_chain(
            NODEPORT_TRAFFIC,
            "NodePort traffic, Cluster policy",
            masquerade_then(Pick::NodePort),
        );
        let mut nodeport_local = self.local_policy_rules(Pick::NodePortCluster.chain());
        nodeport_local.push(rule(vec![goto(Pick::NodePort.chain())]));
        self.shared_chain(
            NODEPORT_LOCAL_TRAFFIC,
            "NodePort traffic, Local policy",
            nodeport_local,
        );
        // Filled at the end, one rule per endpoint count present.
        for pick in Pick::ALL {
            self.parts.chain(pick.chain(), Vec::new());
        }
    }

    fn shared_chain(&mut self, name: &str, comment: &str, rules: Vec<Rule>) {
        self.parts.chain(name, rules);
        self.parts.chains.last_mut().expect("just added").comment = Some(comment.into());
    }

    /// The first rules of a Local-policy external path: pods and the node itself are
    /// sent to the Cluster pool (`short_circuit`), the node's own connections
    /// masqueraded; what falls through is external traffic, for the Local pool.
    fn local_policy_rules(&self, short_circuit: &str) -> Vec<Rule> {
        let mut rules = Vec::new();
        if !self.fp.cluster_cidrs.is_empty() {
            rules.push(commented(
                vec![
                    addr_match(AddrField::Saddr, CmpOp::Eq, &self.fp.cluster_cidrs),
                    goto(short_circuit),
                ],
                "short-circuit pod traffic",
            ));
        }
        rules.push(commented(
            vec![
                Stmt::FibAddrTypeLocal(AddrField::Saddr),
                jump(MARK_FOR_MASQUERADE),
            ],
            "masquerade local traffic",
        ));
        rules.push(commented(
            vec![
                Stmt::FibAddrTypeLocal(AddrField::Saddr),
                goto(short_circuit),
            ],
            "short-circuit local traffic",
        ));
        rules
    }

    /// Declares the endpoint maps for the counts present, with their elements, and
    /// the `pick-…` rule of each (ascending count).
    ///
    /// Each count present also gets its neighbours' maps and rules, empty if no port
    /// has that count (headroom): a service scaled up or down by one endpoint then
    /// moves into a map that exists, which is an element change, where a new map
    /// needs a new rule and so a validation of the whole table at commit.
    fn endpoint_maps_and_rules(&mut self) {
        let addr = self.family.addr_type();
        let mut maps = std::mem::take(&mut self.endpoint_maps);
        let present: Vec<(Pick, u32)> = maps.keys().copied().collect();
        for (pick, count) in present {
            for neighbour in [count - 1, count + 1] {
                if neighbour > 0 {
                    maps.entry((pick, neighbour)).or_default();
                }
            }
        }
        for ((pick, count), mut keys) in maps {
            keys.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            let mut elements = Vec::with_capacity(keys.len() * count as usize);
            for (key, endpoints) in keys {
                for (i, endpoint) in (0..count).zip(endpoints) {
                    let mut k = Vec::with_capacity(key.len() + 1);
                    k.extend(key.iter().cloned());
                    k.push(KeyValue::Int(i));
                    elements.push(Element {
                        key: k,
                        verdict: None,
                        data: vec![net(endpoint.ip), KeyValue::Port(endpoint.port)],
                        comment: None,
                    });
                }
            }
            let name = pick.map(count);
            let mut key_exprs = pick.key();
            key_exprs.push(KeyExpr::Numgen { modulus: count });
            let mut key = match pick {
                Pick::Address | Pick::AddressCluster => {
                    vec![addr, KeyType::InetProto, KeyType::InetService]
                }
                Pick::NodePort | Pick::NodePortCluster => {
                    vec![KeyType::InetProto, KeyType::InetService]
                }
            };
            key.push(KeyType::Integer);
            self.parts.sets.push(Set {
                name: name.clone(),
                key,
                data: Some(MapData::Value(vec![addr, KeyType::InetService])),
                flags: SetFlags::default(),
                timeout_secs: None,
                comment: Some(pick.map_comment(count)),
                exprs: Some(SetExprs {
                    key: key_exprs.clone(),
                    data: vec![KeyExpr::Addr(AddrField::Daddr), KeyExpr::ThDport],
                }),
                elements,
            });
            if let Some(chain) = self
                .parts
                .chains
                .iter_mut()
                .find(|c| c.name == pick.chain())
            {
                chain.rules.push(rule(vec![Stmt::DnatMap {
                    key: key_exprs,
                    map: name,
                }]));
            }
        }
    }

    /// `key . i : endpoint i` for every endpoint of a pool, in the map of its count
    /// (the elements are made by [`Self::endpoint_maps_and_rules`]).
    fn endpoint_elements(&mut self, pick: Pick, key: Vec<KeyValue>, endpoints: &'a [Endpoint]) {
        let Ok(count) = u32::try_from(endpoints.len()) else {
            return;
        };
        if count == 0 {
            return;
        }
        self.endpoint_maps
            .entry((pick, count))
            .or_default()
            .push((key, endpoints));
    }

    // ----- one service port -----

    fn dispatch_element(&mut self, key: Vec<KeyValue>, to: &Dispatch) {
        match to {
            Dispatch::Own(map, chain) => {
                self.parts
                    .element(map, key, Some(Verdict::Goto(chain.clone())), None)
            }
            Dispatch::Shared(set) => self.parts.element(set, key, None, None),
        }
    }

    /// A service port's elements (and, with ClientIP affinity, its chains). Without
    /// affinity it dispatches to the shared chains and its endpoints are elements of
    /// the endpoint maps; with affinity it keeps kube-proxy's per-port chains, because
    /// recording the client's choice needs the chosen endpoint as a constant.
    fn service_port(&mut self, sp: &'a ServicePortPlan) {
        let id = &sp.id;
        let proto = id.protocol;
        // Only ports without endpoints, firewalls and affinity chains use the comment
        // and the names (a hash each): most ports need neither.
        let comment = || Some(comment_text(&id.to_string()));
        let reject_or_drop = |d: Disposition| match d {
            Disposition::Reject => Verdict::Goto(REJECT_CHAIN.into()),
            Disposition::Drop | Disposition::Forward(_) => Verdict::Drop,
        };
        let own_chains = sp.affinity_timeout.is_some();
        let port_names = LazyCell::new(|| names::PortNames::new(id));
        let pool_chain = |pool: Pool| match pool {
            Pool::Cluster => port_names.service_chain(),
            Pool::Local => port_names.local_chain(),
        };
        let policy_local = sp.external.as_ref().is_some_and(|e| e.policy_local);
        // Where a key's traffic goes: a `goto` element of the verdict map to the port's
        // own chain, or an element of the set that sends it to a shared chain.
        let (external_to, nodeport_to) = if own_chains {
            let chain = port_names.external_chain();
            (
                Dispatch::Own(SERVICE_IPS, chain.clone()),
                Dispatch::Own(SERVICE_NODEPORTS, chain),
            )
        } else if policy_local {
            (
                Dispatch::Shared(EXTERNAL_LOCAL_PORTS),
                Dispatch::Shared(NODEPORTS_LOCAL),
            )
        } else {
            (
                Dispatch::Shared(EXTERNAL_PORTS),
                Dispatch::Shared(NODEPORTS),
            )
        };

        self.parts
            .element(CLUSTER_IPS, vec![net(sp.cluster_ip)], None, None);
        let dispatch = |ip: IpAddr| vec![net(ip), KeyValue::Proto(proto), KeyValue::Port(sp.port)];

        // ClusterIP traffic.
        match sp.internal {
            Disposition::Forward(pool) => {
                let to = if own_chains {
                    Dispatch::Own(SERVICE_IPS, pool_chain(pool))
                } else {
                    self.endpoint_elements(
                        Pick::Address,
                        dispatch(sp.cluster_ip),
                        sp.endpoints(pool),
                    );
                    Dispatch::Shared(CLUSTER_IP_PORTS)
                };
                self.dispatch_element(dispatch(sp.cluster_ip), &to);
            }
            other => self.parts.element(
                NO_ENDPOINT_SERVICES,
                dispatch(sp.cluster_ip),
                Some(reject_or_drop(other)),
                comment(),
            ),
        }

        // External traffic: externalIPs, LoadBalancer IPs, the NodePort.
        if let Some(external) = &sp.external {
            let forwards = matches!(external.disposition, Disposition::Forward(_));
            // Without own chains, the pools of the external keys are map elements: the
            // policy's pool, and for Local policy the Cluster pool of the short-circuits.
            let shared_pools = |pick: Pick, cluster: Pick| {
                let mut pools = Vec::new();
                if !own_chains && sp.has_endpoints {
                    if let Disposition::Forward(pool) = external.disposition {
                        pools.push((pick, sp.endpoints(pool)));
                    }
                    if external.policy_local {
                        pools.push((cluster, sp.endpoints(Pool::Cluster)));
                    }
                }
                pools
            };
            let external_ips = sp.external_ips.iter().chain(&sp.load_balancer_ips);
            for ip in external_ips {
                if sp.has_endpoints {
                    self.dispatch_element(dispatch(*ip), &external_to);
                }
                for (pick, endpoints) in shared_pools(Pick::Address, Pick::AddressCluster) {
                    self.endpoint_elements(pick, dispatch(*ip), endpoints);
                }
                if !forwards {
                    self.parts.element(
                        NO_ENDPOINT_SERVICES,
                        dispatch(*ip),
                        Some(reject_or_drop(external.disposition)),
                        comment(),
                    );
                }
            }
            if let Some(firewall) = &external.firewall {
                let chain = port_names.firewall_chain();
                let stmts = if firewall.allowed.is_empty() {
                    vec![Stmt::Verdict(Verdict::Drop)]
                } else {
                    vec![
                        addr_match(AddrField::Saddr, CmpOp::Ne, &firewall.allowed),
                        Stmt::Verdict(Verdict::Drop),
                    ]
                };
                self.parts.chain(&chain, vec![rule(stmts)]);
                for ip in &sp.load_balancer_ips {
                    self.parts.element(
                        FIREWALL_IPS,
                        dispatch(*ip),
                        Some(Verdict::Goto(chain.clone())),
                        comment(),
                    );
                }
            }
            if let Some(node_port) = sp.node_port {
                let key = vec![KeyValue::Proto(proto), KeyValue::Port(node_port)];
                if sp.has_endpoints {
                    self.dispatch_element(key.clone(), &nodeport_to);
                }
                for (pick, endpoints) in shared_pools(Pick::NodePort, Pick::NodePortCluster) {
                    self.endpoint_elements(pick, key.clone(), endpoints);
                }
                if !forwards {
                    self.parts.element(
                        NO_ENDPOINT_NODEPORTS,
                        key,
                        Some(reject_or_drop(external.disposition)),
                        comment(),
                    );
                }
            }
            if own_chains && sp.has_endpoints {
                let mut rules = if external.policy_local {
                    self.local_policy_rules(&port_names.service_chain())
                } else {
                    // The endpoint may be on another node: masquerade so replies
                    // come back through this one.
                    vec![rule(vec![jump(MARK_FOR_MASQUERADE)])]
                };
                if let Disposition::Forward(pool) = external.disposition {
                    rules.push(rule(vec![goto(&pool_chain(pool))]));
                }
                self.parts.chain(&port_names.external_chain(), rules);
            }
        }

        for endpoint in sp.reachable_endpoints() {
            self.hairpin.push(endpoint.ip);
        }
        let Some(timeout) = sp.affinity_timeout else {
            return;
        };
        // ClientIP affinity: the pool chains pick an endpoint, record it for the
        // client and DNAT to it.
        for pool in [Pool::Cluster, Pool::Local] {
            if !sp.uses_pool(pool) {
                continue;
            }
            let endpoints = sp.endpoints(pool);
            // The masquerade rule, the known-client rule, one rule per endpoint.
            let mut rules = Vec::with_capacity(2 + endpoints.len());
            if sp.internal == Disposition::Forward(pool) {
                if let Some(masq) = self.masquerade_rule(sp) {
                    rules.push(masq);
                }
            }
            let maps = self.affinity_maps(id, pool, timeout);
            if let Some(first) = endpoints.first() {
                rules.push(known_client(id.protocol, &maps, first));
            }
            rules.extend(random_choice(sp, endpoints, &maps));
            self.parts.chain(&pool_chain(pool), rules);
        }
    }

    /// Declares the ClientIP-affinity map(s) of one pool of a service port: client
    /// address to endpoint, entries expiring `timeout` seconds after the client's
    /// last new connection. One map per pool (not a set per endpoint, as kube-proxy):
    /// the kernel finds sets by name in a list per table, and 13k per-endpoint sets at
    /// 50k services made that most of a cold apply's kernel time (docs/design.md).
    /// IPv4 keeps `address . port` in one map; nft 1.0.6 aborts writing an IPv6
    /// `address . port` datum, so IPv6 keeps the port in a second map.
    fn affinity_maps(&mut self, id: &ServicePortId, pool: Pool, timeout: u32) -> AffinityMaps {
        let addr = self.family.addr_type();
        let map = names::affinity_map(id, pool);
        let port_map = match self.family {
            Family::Ip => {
                self.dynamic_map(&map, vec![addr, KeyType::InetService], timeout);
                None
            }
            Family::Ip6 => {
                let port_map = names::affinity_port_map(id, pool);
                self.dynamic_map(&map, vec![addr], timeout);
                self.dynamic_map(&port_map, vec![KeyType::InetService], timeout);
                Some(port_map)
            }
        };
        AffinityMaps { map, port_map }
    }

    fn dynamic_map(&mut self, name: &str, data: Vec<KeyType>, timeout: u32) {
        self.parts.sets.push(Set {
            name: name.to_string(),
            key: vec![self.family.addr_type()],
            data: Some(MapData::Value(data)),
            flags: SetFlags {
                interval: false,
                timeout: true,
                dynamic: true,
            },
            timeout_secs: Some(timeout),
            comment: None,
            exprs: None,
            elements: Vec::new(),
        });
    }

    /// The masquerade rule of the ClusterIP path. It names the ClusterIP and port
    /// because the same chain also serves external traffic, which is marked (or
    /// deliberately not) in the external chain.
    fn masquerade_rule(&self, sp: &ServicePortPlan) -> Option<Rule> {
        let mut stmts = vec![
            Stmt::Addr {
                field: AddrField::Daddr,
                op: CmpOp::Eq,
                value: IpNet::from(sp.cluster_ip),
            },
            Stmt::Dport {
                proto: sp.id.protocol,
                port: sp.port,
            },
        ];
        match &sp.internal_masquerade {
            Masquerade::All => {}
            Masquerade::NotFrom(cidrs) => {
                stmts.push(addr_match(AddrField::Saddr, CmpOp::Ne, cidrs))
            }
            Masquerade::Never => return None,
        }
        stmts.push(jump(MARK_FOR_MASQUERADE));
        Some(rule(stmts))
    }
}

/// The affinity map(s) of one pool, as [`TableBuilder::affinity_maps`] declared them.
struct AffinityMaps {
    map: String,
    port_map: Option<String>,
}

/// The rule that sends a client known to the affinity map(s) back to its endpoint:
/// `ip saddr @m update @m { ip saddr : E } meta l4proto tcp dnat ip to ip saddr map @m`.
/// An unknown client misses the membership check and goes on to the random choice.
/// The `update` refreshes the entry's timeout, as kube-proxy's per-endpoint `update`
/// does on every new connection; it leaves the datum of an existing entry alone, so
/// `E` (the pool's first endpoint) only lands in the map if the entry expired between
/// the check and the update, and then names a valid endpoint. (nft 1.0.6 cannot write
/// the datum as the map lookup itself: `{ ip saddr : ip saddr map @m }` is a syntax
/// error.)
fn known_client(proto: L4Proto, maps: &AffinityMaps, first: &Endpoint) -> Rule {
    let mut stmts = vec![Stmt::AddrInSet {
        field: AddrField::Saddr,
        op: CmpOp::Eq,
        set: maps.map.clone(),
    }];
    if let Some(port_map) = &maps.port_map {
        stmts.push(Stmt::AddrInSet {
            field: AddrField::Saddr,
            op: CmpOp::Eq,
            set: port_map.clone(),
        });
    }
    stmts.extend(record(maps, first));
    stmts.push(Stmt::DnatFromMap {
        proto,
        field: AddrField::Saddr,
        map: maps.map.clone(),
        port_map: maps.port_map.clone(),
    });
    rule(stmts)
}

/// `update @m { ip saddr : ENDPOINT . PORT }` (IPv6: the address and the port into
/// their two maps).
fn record(maps: &AffinityMaps, endpoint: &Endpoint) -> Vec<Stmt> {
    let addr = net(endpoint.ip);
    let port = KeyValue::Port(endpoint.port);
    match &maps.port_map {
        None => vec![Stmt::UpdateMap {
            map: maps.map.clone(),
            field: AddrField::Saddr,
            data: vec![addr, port],
        }],
        Some(port_map) => vec![
            Stmt::UpdateMap {
                map: maps.map.clone(),
                field: AddrField::Saddr,
                data: vec![addr],
            },
            Stmt::UpdateMap {
                map: port_map.clone(),
                field: AddrField::Saddr,
                data: vec![port],
            },
        ],
    }
}

/// Uniform random choice without an anonymous map: rule i (0-based) of n takes the
/// connection with probability 1/(n-i), so every endpoint gets 1/n; the last rule
/// takes what is left. Each rule records the client's choice in the pool's affinity
/// map(s), then DNATs to its endpoint itself (no chain per endpoint). Only ports with
/// ClientIP affinity choose so; the others use the endpoint maps.
fn random_choice(sp: &ServicePortPlan, endpoints: &[Endpoint], maps: &AffinityMaps) -> Vec<Rule> {
    let id = &sp.id;
    let n = endpoints.len();
    endpoints
        .iter()
        .enumerate()
        .map(|(i, endpoint)| {
            let mut stmts = Vec::new();
            if i + 1 < n {
                stmts.push(Stmt::NumgenRandomEq {
                    modulus: (n - i) as u32,
                    value: 0,
                });
            }
            stmts.extend(record(maps, endpoint));
            stmts.push(Stmt::Dnat {
                proto: id.protocol,
                addr: endpoint.ip,
                port: endpoint.port,
            });
            rule(stmts)
        })
        .collect()
}

/// nft refuses comments longer than 128 characters; a service port's name can reach
/// 143 (63 + 63 + 15 and separators). Long ones keep their start, which names the
/// namespace and service.
pub const COMMENT_MAX: usize = 128;

/// `text` as an nft comment: shortened to [`COMMENT_MAX`] if needed.
pub fn comment_text(text: &str) -> String {
    if text.len() <= COMMENT_MAX {
        return text.to_string();
    }
    // Kubernetes names are ASCII, so byte indices are character boundaries.
    format!("{}...", &text[..COMMENT_MAX - 3])
}

fn loopback(family: Family) -> IpNet {
    match family {
        Family::Ip => "127.0.0.0/8".parse().expect("constant"),
        Family::Ip6 => "::1/128".parse().expect("constant"),
    }
}
