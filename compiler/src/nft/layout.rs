//! Where a Service becomes rules: the plan rendered as one nftables table per family.
//!
//! The layout follows kube-proxy's nftables mode where that costs nothing, so
//! operators who know it can read ours:
//! - sets and verdict maps keyed `daddr . l4proto . dport` and `l4proto . dport`;
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
//!   chain. (Sets, not `goto` elements of verdict maps: validation walks every
//!   verdict-map element.) The random choice is one
//!   rule per endpoint count N present, `dnat ip to ip daddr . meta l4proto . th dport
//!   . numgen random mod N map @endpoints-N`; the port's endpoints are the elements
//!   `DESTINATION . i : ENDPOINT_i` of the map of its count. So an endpoint change is
//!   an element change (data maps need no validation), unless it brings a count no
//!   other port has. No anonymous map either: those made kube-proxy's rule insertion
//!   quadratic (10,000 services: 199 s against 7.2 s through `nft -f`,
//!   `shared/notes/ruleset-scaling.md`);
//! - ClientIP affinity names no endpoint in a rule either. Each pool of such a port
//!   has a dynamic map from client to endpoint (`affinity-…`, IPv6 also
//!   `affinity-port-…`); the `pick-…` chains first jump, through a verdict map keyed
//!   like the pick (`affinity-clients`, ...), to the port's chain for that pool
//!   (`service-…`, `local-…`), which DNATs a client found in the map. A client not
//!   found is picked at random like any other. After the DNAT, `affinity-record`
//!   (filter hooks at priority -90) finds the port's record chain (`record-…`) from
//!   the connection's original destination (`ct original ip daddr . meta l4proto .
//!   ct original proto-dst`), which writes the endpoint the packet now goes to (`ip
//!   daddr . th dport`) into the map. Records are per port and pool, shared by the
//!   ClusterIP, external IPs and NodePort, as kube-proxy's are;
//! - the no-endpoint check for locally generated traffic runs after DNAT
//!   (`filter-output-post-dnat`), so the node's own connections to an externalIP or
//!   LoadBalancer IP of a Local-policy service without local endpoints are
//!   short-circuited to the cluster endpoints, as the policy says, instead of dropped.

use std::cell::LazyCell;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
/// ClientIP affinity: the original destination of a new connection after DNAT, to
/// its port's record chain (`goto` elements), and the chain that looks it up.
const AFFINITY_RECORDS: &str = "affinity-records";
const AFFINITY_NODEPORT_RECORDS: &str = "affinity-nodeport-records";
const AFFINITY_RECORD: &str = "affinity-record";
const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
const FIREWALL_IPS: &str = "firewall-ips";
/// Every endpoint address once (`address . address`), whichever service ports use it.
pub const HAIRPIN_ENDPOINTS: &str = "hairpin-endpoints";
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

    /// The verdict map the pick chain looks the key up in first: `jump` elements to
    /// the known-client chains of ClientIP-affinity ports.
    fn clients_map(self) -> &'static str {
        match self {
            Pick::Address => "affinity-clients",
            Pick::AddressCluster => "affinity-cluster-clients",
            Pick::NodePort => "affinity-nodeport-clients",
            Pick::NodePortCluster => "affinity-nodeport-cluster-clients",
        }
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
        tables: plan
            .families
            .iter()
            .map(|fp| table(fp, fp.ports.iter(), None))
            .collect(),
    }
}

/// [`ruleset`], consuming the plan: each service port is dropped once its keys are
/// collected, so that the plan (43 MB at 250k endpoints) and the elements (most of
/// the ruleset's memory) are never whole together (`svcproxy compile`'s peak memory).
/// `release_memory` ([`crate::Options::release_memory`]) runs between the two, when
/// a family's plan is gone and its elements are not yet made.
pub fn ruleset_owned(plan: Plan, release_memory: Option<fn()>) -> Ruleset {
    Ruleset {
        tables: plan
            .families
            .into_iter()
            .map(|mut fp| {
                let ports = std::mem::take(&mut fp.ports);
                table(&fp, ports.into_iter(), release_memory)
            })
            .collect(),
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

fn table<P: std::borrow::Borrow<ServicePortPlan>>(
    fp: &FamilyPlan,
    ports: impl Iterator<Item = P>,
    release_memory: Option<fn()>,
) -> Table {
    let mut t = TableBuilder::new(fp);
    t.skeleton();
    for port in ports {
        t.service_port(port.borrow());
    }
    if let Some(release) = release_memory {
        release();
    }
    t.finish()
}

/// The key of a service port's traffic: its destination address (none for a
/// NodePort, which is matched on protocol and port only), protocol and port.
///
/// The sets and maps with an element per service port collect these rather than
/// their [`Values`]: sorting compares fields directly. Within one set every key has
/// the same shape, and then the derived order (fields in declaration order; an
/// `IpAddr` orders as its host prefix) is the order of the key values they become.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct PortKey {
    addr: Option<IpAddr>,
    proto: L4Proto,
    port: u16,
}

impl PortKey {
    /// The key values.
    fn values(self) -> Values<MAX_KEY> {
        let (proto, port) = (KeyValue::Proto(self.proto), KeyValue::Port(self.port));
        match self.addr {
            Some(ip) => [net(ip), proto, port].into(),
            None => [proto, port].into(),
        }
    }

    /// Integers that order as the key does (the derived `Ord`): sorting compares
    /// these instead of matching the `Option<IpAddr>` field by field, which was a
    /// tenth of building the table.
    fn order(self) -> (u8, u128, u32) {
        let (family, bits) = match self.addr {
            None => (0, 0),
            Some(IpAddr::V4(ip)) => (1, u128::from(ip.to_bits())),
            Some(IpAddr::V6(ip)) => (2, ip.to_bits()),
        };
        (
            family,
            bits,
            (self.proto as u32) << 16 | u32::from(self.port),
        )
    }

    /// The key values and an endpoint map's bucket `i`.
    fn with_bucket(self, i: u32) -> Values<MAX_KEY> {
        let (proto, port) = (KeyValue::Proto(self.proto), KeyValue::Port(self.port));
        match self.addr {
            Some(ip) => [net(ip), proto, port, KeyValue::Int(i)].into(),
            None => [proto, port, KeyValue::Int(i)].into(),
        }
    }
}

/// The addresses of a set of single addresses (`cluster-ips`) or of address pairs
/// (`hairpin-endpoints`), kept as numbers per family: sorting numbers takes a third
/// of the time sorting `IpAddr`s does, and IPv4 first, each family by number, is the
/// order of the elements' keys.
#[derive(Debug, Default)]
struct AddressSet {
    v4: Vec<u32>,
    v6: Vec<u128>,
}

impl AddressSet {
    fn push(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(ip) => self.v4.push(ip.to_bits()),
            IpAddr::V6(ip) => self.v6.push(ip.to_bits()),
        }
    }

    /// The addresses in ascending order, each once.
    fn into_sorted(mut self) -> impl Iterator<Item = IpAddr> {
        radix_sort(&mut self.v4);
        self.v4.dedup();
        self.v6.sort_unstable();
        self.v6.dedup();
        let v4 = self
            .v4
            .into_iter()
            .map(|bits| Ipv4Addr::from_bits(bits).into());
        let v6 = self
            .v6
            .into_iter()
            .map(|bits| Ipv6Addr::from_bits(bits).into());
        v4.chain(v6)
    }
}

/// Sorts numbers a byte at a time (least significant first), skipping the bytes that
/// are the same in every number: the first byte of a cluster's pod addresses is. At
/// 100k endpoint addresses this took a tenth of the instructions of a comparison
/// sort, which was a twentieth of the whole compile. Short inputs take the
/// comparison sort.
fn radix_sort(values: &mut Vec<u32>) {
    if values.len() < 1024 {
        values.sort_unstable();
        return;
    }
    let mut scratch = vec![0u32; values.len()];
    for shift in [0, 8, 16, 24] {
        let digit = |v: u32| (v >> shift) as usize & 0xff;
        let mut starts = [0usize; 256];
        for &v in values.iter() {
            starts[digit(v)] += 1;
        }
        if starts.contains(&values.len()) {
            continue;
        }
        let mut next = 0;
        for start in &mut starts {
            (*start, next) = (next, next + *start);
        }
        for &v in values.iter() {
            let slot = &mut starts[digit(v)];
            scratch[*slot] = v;
            *slot += 1;
        }
        std::mem::swap(values, &mut scratch);
    }
}

/// What one endpoint map will hold: its keys (without the bucket) and their
/// endpoints. The endpoints are copied (address and port), because the port they
/// come from may be dropped before the map is made ([`ruleset_owned`]); all of a
/// map's go into one vector, `count` per key, the key giving the first's index.
#[derive(Debug, Default)]
struct EndpointMap {
    keys: Vec<(PortKey, usize)>,
    endpoints: Vec<(IpAddr, u16)>,
}

/// Accumulates one table. Elements go into sets by name; `finish` sorts them.
struct TableBuilder<'a> {
    fp: &'a FamilyPlan,
    family: Family,
    parts: TableParts,
    /// The sets with one element per service port and no verdict: `cluster-ips`,
    /// the `hairpin-endpoints` of every endpoint (ports of one Service name the same
    /// endpoints), and the plain sets of port keys (`cluster-ip-ports`, ...). Their
    /// keys are collected, sorted and deduplicated, and become elements at the end,
    /// in order.
    cluster_ips: AddressSet,
    hairpin: AddressSet,
    port_sets: BTreeMap<&'static str, Vec<PortKey>>,
    /// The keys of the endpoint maps with their endpoints, by map kind and endpoint
    /// count. The maps, their elements and their `pick-…` rules are made at the end,
    /// for the counts present: with the keys sorted first, the elements come out in
    /// their canonical order and need no sort of their own (a tenth of the items).
    endpoint_maps: BTreeMap<(Pick, u32), EndpointMap>,
}

impl<'a> TableBuilder<'a> {
    fn new(fp: &'a FamilyPlan) -> Self {
        TableBuilder {
            fp,
            family: fp.family,
            parts: TableParts::default(),
            cluster_ips: AddressSet::default(),
            hairpin: AddressSet::default(),
            port_sets: BTreeMap::new(),
            endpoint_maps: BTreeMap::new(),
        }
    }

    fn finish(mut self) -> Table {
        self.collected_sets();
        self.endpoint_maps_and_rules();
        self.parts.into_table(
            self.family,
            TABLE_NAME,
            Some("rules for svcproxy".to_string()),
        )
    }

    /// The elements of the sets whose keys were collected (see [`TableBuilder`]).
    fn collected_sets(&mut self) {
        let cluster_ips = std::mem::take(&mut self.cluster_ips).into_sorted();
        let elements = cluster_ips
            .map(|ip| Element::new([net(ip)].into()))
            .collect();
        self.parts.fill_sorted(CLUSTER_IPS, elements);
        let hairpin = std::mem::take(&mut self.hairpin).into_sorted();
        let elements = hairpin
            .map(|ip| Element::new([net(ip), net(ip)].into()))
            .collect();
        self.parts.fill_sorted(HAIRPIN_ENDPOINTS, elements);
        for (set, mut keys) in std::mem::take(&mut self.port_sets) {
            keys.sort_unstable_by_key(|k| k.order());
            keys.dedup();
            let elements = keys.into_iter().map(|k| Element::new(k.values())).collect();
            self.parts.fill_sorted(set, elements);
        }
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
                .map(|net| Element::new([KeyValue::Net(*net)].into()))
                .collect();
        }
        for pick in Pick::ALL {
            let key = match pick {
                Pick::Address | Pick::AddressCluster => dispatch_key.clone(),
                Pick::NodePort | Pick::NodePortCluster => port_key.clone(),
            };
            self.parts.set(
                pick.clients_map(),
                key,
                Some(MapData::Verdict),
                "ClientIP affinity: known clients of a key to its pool's chain",
            );
        }
        self.parts.set(
            AFFINITY_RECORDS,
            dispatch_key.clone(),
            Some(MapData::Verdict),
            "ClientIP affinity: original destination to its record chain",
        );
        self.parts.set(
            AFFINITY_NODEPORT_RECORDS,
            port_key.clone(),
            Some(MapData::Verdict),
            "ClientIP affinity: original NodePort to its record chain",
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
        // ClientIP affinity records the endpoint a new connection was DNATed to.
        let record = || {
            rule(vec![
                Stmt::CtStateNew,
                Stmt::CtStatusDnat,
                jump(AFFINITY_RECORD),
            ])
        };
        self.parts.base(
            "filter-prerouting-post-dnat",
            ChainType::Filter,
            Hook::Prerouting,
            POST_DNAT,
            vec![record()],
        );
        self.parts.base(
            "filter-output-post-dnat",
            ChainType::Filter,
            Hook::Output,
            POST_DNAT,
            vec![
                new(SERVICE_ENDPOINTS_CHECK),
                new(CLUSTER_IPS_CHECK),
                record(),
            ],
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
                address_in(CLUSTER_IP_PORTS, CLUSTER_IP_TRAFFIC),
                address_in(EXTERNAL_PORTS, EXTERNAL_TRAFFIC),
                address_in(EXTERNAL_LOCAL_PORTS, EXTERNAL_LOCAL_TRAFFIC),
                rule(to_nodeports),
            ],
        );
        self.parts.chain(
            NODEPORT_SERVICES,
            vec![
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
        // Known clients of affinity ports first; the random picks are added at the
        // end, one rule per endpoint count present.
        for pick in Pick::ALL {
            let known = rule(vec![Stmt::Vmap {
                key: pick.key(),
                map: pick.clients_map().into(),
            }]);
            self.parts.chain(pick.chain(), vec![known]);
        }
        self.affinity_record_chain();
    }

    /// `affinity-record`: a new DNATed connection's original destination (address .
    /// protocol . port, else protocol . NodePort) to its port's record chain. The
    /// transport protocols are matched first because nft must know the protocol to
    /// read `ct original proto-dst`. A NodePort is only what is no service address:
    /// the address keys of the other ports are excluded by their sets.
    fn affinity_record_chain(&mut self) {
        let transport = Stmt::L4ProtoIn(vec![L4Proto::Tcp, L4Proto::Udp, L4Proto::Sctp]);
        let original = vec![
            KeyExpr::CtOriginalAddr(AddrField::Daddr),
            KeyExpr::L4Proto,
            KeyExpr::CtOriginalProtoDst,
        ];
        let mut nodeport = vec![transport.clone()];
        for set in [CLUSTER_IP_PORTS, EXTERNAL_PORTS, EXTERNAL_LOCAL_PORTS] {
            nodeport.push(Stmt::KeyInSet {
                key: original.clone(),
                op: CmpOp::Ne,
                set: set.into(),
            });
        }
        nodeport.push(Stmt::Vmap {
            key: vec![KeyExpr::L4Proto, KeyExpr::CtOriginalProtoDst],
            map: AFFINITY_NODEPORT_RECORDS.into(),
        });
        self.parts.chain(
            AFFINITY_RECORD,
            vec![
                rule(vec![
                    transport,
                    Stmt::Vmap {
                        key: original,
                        map: AFFINITY_RECORDS.into(),
                    },
                ]),
                rule(nodeport),
            ],
        );
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
        for ((pick, count), map) in maps {
            let (elements, in_order) = endpoint_map_elements(map, count);
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
            let set = Set {
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
            };
            if in_order {
                self.parts.sorted_set(set);
            } else {
                self.parts.sets.push(set);
            }
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
    fn endpoint_elements(&mut self, pick: Pick, key: PortKey, endpoints: &[Endpoint]) {
        let Ok(count) = u32::try_from(endpoints.len()) else {
            return;
        };
        if count == 0 {
            return;
        }
        let map = self.endpoint_maps.entry((pick, count)).or_default();
        map.keys.push((key, map.endpoints.len()));
        map.endpoints
            .extend(endpoints.iter().map(|e| (e.ip, e.port)));
    }

    // ----- one service port -----

    /// A service port's elements, and with ClientIP affinity its small chains. Every
    /// port dispatches to the shared chains and its endpoints are elements of the
    /// endpoint maps; affinity adds a known-client check before the random pick and
    /// a record after the DNAT, neither of which names an endpoint (see
    /// [`Self::affinity`]).
    fn service_port(&mut self, sp: &ServicePortPlan) {
        let id = &sp.id;
        let proto = id.protocol;
        // Only ports without endpoints, firewalls and affinity chains use the comment
        // and the names (a hash each): most ports need neither.
        let comment = || Some(comment_text(&id.to_string()));
        let reject_or_drop = |d: Disposition| match d {
            Disposition::Reject => Verdict::Goto(REJECT_CHAIN.into()),
            Disposition::Drop | Disposition::Forward(_) => Verdict::Drop,
        };
        let port_names = LazyCell::new(|| names::PortNames::new(id));
        let affinity = sp
            .affinity_timeout
            .map(|timeout| self.affinity(sp, &port_names, timeout));
        let policy_local = sp.external.as_ref().is_some_and(|e| e.policy_local);
        let (external_set, nodeport_set) = if policy_local {
            (EXTERNAL_LOCAL_PORTS, NODEPORTS_LOCAL)
        } else {
            (EXTERNAL_PORTS, NODEPORTS)
        };

        self.cluster_ips.push(sp.cluster_ip);
        let dispatch = |ip: IpAddr| PortKey {
            addr: Some(ip),
            proto,
            port: sp.port,
        };

        // ClusterIP traffic.
        match sp.internal {
            Disposition::Forward(pool) => {
                let key = dispatch(sp.cluster_ip);
                self.pick_from(Pick::Address, key, sp, pool, affinity.as_ref());
                if let Some(affinity) = &affinity {
                    self.parts.element(
                        AFFINITY_RECORDS,
                        key.values(),
                        Some(Verdict::Goto(affinity.record_chain.clone())),
                        None,
                    );
                }
                self.port_set(CLUSTER_IP_PORTS, key);
            }
            other => self.parts.element(
                NO_ENDPOINT_SERVICES,
                dispatch(sp.cluster_ip).values(),
                Some(reject_or_drop(other)),
                comment(),
            ),
        }

        // External traffic: externalIPs, LoadBalancer IPs, the NodePort.
        if let Some(external) = &sp.external {
            let forwards = matches!(external.disposition, Disposition::Forward(_));
            // The pools of the external keys: the policy's, and for Local policy the
            // Cluster pool of the short-circuits.
            let pools = |pick: Pick, cluster: Pick| {
                let mut pools = Vec::new();
                if sp.has_endpoints {
                    if let Disposition::Forward(pool) = external.disposition {
                        pools.push((pick, pool));
                    }
                    if external.policy_local {
                        pools.push((cluster, Pool::Cluster));
                    }
                }
                pools
            };
            let record = affinity
                .as_ref()
                .filter(|_| forwards)
                .map(|a| Verdict::Goto(a.external_record_chain.clone()));
            let external_ips = sp.external_ips.iter().chain(&sp.load_balancer_ips);
            for ip in external_ips {
                let key = dispatch(*ip);
                if sp.has_endpoints {
                    self.port_set(external_set, key);
                }
                for (pick, pool) in pools(Pick::Address, Pick::AddressCluster) {
                    self.pick_from(pick, key, sp, pool, affinity.as_ref());
                }
                if let Some(record) = &record {
                    self.parts
                        .element(AFFINITY_RECORDS, key.values(), Some(record.clone()), None);
                }
                if !forwards {
                    self.parts.element(
                        NO_ENDPOINT_SERVICES,
                        key.values(),
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
                        dispatch(*ip).values(),
                        Some(Verdict::Goto(chain.clone())),
                        comment(),
                    );
                }
            }
            if let Some(node_port) = sp.node_port {
                let key = PortKey {
                    addr: None,
                    proto,
                    port: node_port,
                };
                if sp.has_endpoints {
                    self.port_set(nodeport_set, key);
                }
                for (pick, pool) in pools(Pick::NodePort, Pick::NodePortCluster) {
                    self.pick_from(pick, key, sp, pool, affinity.as_ref());
                }
                if let Some(record) = &record {
                    self.parts.element(
                        AFFINITY_NODEPORT_RECORDS,
                        key.values(),
                        Some(record.clone()),
                        None,
                    );
                }
                if !forwards {
                    self.parts.element(
                        NO_ENDPOINT_NODEPORTS,
                        key.values(),
                        Some(reject_or_drop(external.disposition)),
                        comment(),
                    );
                }
            }
        }

        // Every endpoint some traffic can reach; the set drops the repeats.
        let pools = sp.cluster_endpoints.iter().chain(&sp.local_endpoints);
        for endpoint in pools {
            self.hairpin.push(endpoint.ip);
        }
    }

    /// Adds `key` to `set`, one of the plain sets of port keys (`cluster-ip-ports`,
    /// ...), whose elements are made at the end.
    fn port_set(&mut self, set: &'static str, key: PortKey) {
        self.port_sets.entry(set).or_default().push(key);
    }

    /// The key picks from `pool`: its endpoints become elements of `pick`'s endpoint
    /// map, and with affinity a known client is sent back first (a `jump` element of
    /// the pick's clients map to the pool's known-client chain).
    fn pick_from(
        &mut self,
        pick: Pick,
        key: PortKey,
        sp: &ServicePortPlan,
        pool: Pool,
        affinity: Option<&Affinity>,
    ) {
        self.endpoint_elements(pick, key, sp.endpoints(pool));
        let known = affinity.and_then(|a| match pool {
            Pool::Cluster => a.cluster_chain.as_ref(),
            Pool::Local => a.local_chain.as_ref(),
        });
        if let Some(chain) = known {
            self.parts.element(
                pick.clients_map(),
                key.values(),
                Some(Verdict::Jump(chain.clone())),
                None,
            );
        }
    }

    /// ClientIP affinity of one service port, without naming an endpoint in any rule
    /// (so that an endpoint change stays an element change):
    /// - each pool the port uses has a dynamic map from client address to endpoint
    ///   (`affinity-…`, `affinity-local-…`) and a chain (`service-…`, `local-…`)
    ///   that DNATs a client found in it; the `pick-…` chains jump there (through
    ///   their clients map) before the random pick, and a client not found returns
    ///   to the random pick;
    /// - after the DNAT, in `affinity-record` (filter hooks after dstnat), the
    ///   connection's original destination finds the port's record chain, which
    ///   writes the endpoint the packet now goes to, `ip daddr . th dport`, into the
    ///   map of the pool that was used. A known client's new connection writes the
    ///   same endpoint again, which refreshes the entry's timeout as kube-proxy's
    ///   `update` does.
    ///
    /// Entries pointing at an endpoint that left are deleted by the agent in the same
    /// sync (`agent/src/sync/affinity.rs`).
    fn affinity(
        &mut self,
        sp: &ServicePortPlan,
        port_names: &names::PortNames,
        timeout: u32,
    ) -> Affinity {
        let id = &sp.id;
        let mut maps = |pool: Pool| -> Option<AffinityMaps> {
            sp.uses_pool(pool)
                .then(|| self.affinity_maps(id, pool, timeout))
        };
        let cluster = maps(Pool::Cluster);
        let local = maps(Pool::Local);
        let mut known_chain = |pool: Pool, maps: &Option<AffinityMaps>| {
            let maps = maps.as_ref()?;
            let chain = match pool {
                Pool::Cluster => port_names.service_chain(),
                Pool::Local => port_names.local_chain(),
            };
            let known = Stmt::DnatFromMap {
                proto: id.protocol,
                field: AddrField::Saddr,
                map: maps.map.clone(),
                port_map: maps.port_map.clone(),
            };
            self.parts.chain(&chain, vec![rule(vec![known])]);
            Some(chain)
        };
        let cluster_chain = known_chain(Pool::Cluster, &cluster);
        let local_chain = known_chain(Pool::Local, &local);

        // The ClusterIP's record chain writes the map of the pool ClusterIP traffic
        // uses; external traffic's may differ (Local policy, or Local internal policy).
        let record_chain = port_names.record_chain();
        let internal_maps = match sp.internal {
            Disposition::Forward(Pool::Local) => local.as_ref(),
            _ => cluster.as_ref(),
        };
        let internal_record = record(internal_maps);
        let rules = if internal_record.is_empty() {
            Vec::new()
        } else {
            vec![rule(internal_record)]
        };
        self.parts.chain(&record_chain, rules);
        let external = sp.external.as_ref();
        let external_policy_local = external.is_some_and(|e| e.policy_local);
        let same =
            !external_policy_local && !matches!(sp.internal, Disposition::Forward(Pool::Local));
        let external_record_chain = if external.is_none() || same {
            record_chain.clone()
        } else {
            let chain = port_names.external_record_chain();
            let mut rules = Vec::new();
            if external_policy_local {
                // The short-circuits of the Local policy use the Cluster pool: the
                // same conditions as `local_policy_rules`, which this hook sees
                // unchanged (DNAT changed the destination only).
                let mut cluster_record = record(cluster.as_ref());
                cluster_record.push(Stmt::Verdict(Verdict::Return));
                if !self.fp.cluster_cidrs.is_empty() {
                    let mut stmts = vec![addr_match(
                        AddrField::Saddr,
                        CmpOp::Eq,
                        &self.fp.cluster_cidrs,
                    )];
                    stmts.extend(cluster_record.iter().cloned());
                    rules.push(rule(stmts));
                }
                let mut stmts = vec![Stmt::FibAddrTypeLocal(AddrField::Saddr)];
                stmts.extend(cluster_record);
                rules.push(rule(stmts));
                rules.push(rule(record(local.as_ref())));
            } else {
                rules.push(rule(record(cluster.as_ref())));
            }
            rules.retain(|r| {
                r.stmts
                    .iter()
                    .any(|s| matches!(s, Stmt::UpdateMapFromPacket { .. }))
            });
            self.parts.chain(&chain, rules);
            chain
        };
        Affinity {
            cluster_chain,
            local_chain,
            record_chain,
            external_record_chain,
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
}

/// The elements of an endpoint map whose keys have `count` endpoints each: `key . i :
/// endpoint i`, in key order. They come out in their canonical order (keys sorted,
/// then `i` rising; every key of a map has the same shape), unless two ports share a
/// key: the second value says whether all keys differ, else the elements must still
/// be sorted.
fn endpoint_map_elements(mut map: EndpointMap, count: u32) -> (Vec<Element>, bool) {
    // Equal keys (the elements are then sorted again) are ordered by their index.
    map.keys
        .sort_unstable_by_key(|&(key, first)| (key.order(), first));
    let distinct = map.keys.windows(2).all(|pair| pair[0].0 != pair[1].0);
    let mut elements = Vec::with_capacity(map.endpoints.len());
    for (key, first) in map.keys {
        let endpoints = &map.endpoints[first..first + count as usize];
        for (i, &(ip, port)) in (0..count).zip(endpoints) {
            let data = [net(ip), KeyValue::Port(port)].into();
            elements.push(Element::new(key.with_bucket(i)).with_data(data));
        }
    }
    (elements, distinct)
}

/// The affinity map(s) of one pool, as [`TableBuilder::affinity_maps`] declared them.
struct AffinityMaps {
    map: String,
    port_map: Option<String>,
}

/// The chains of one affinity port ([`TableBuilder::affinity`]): known-client chains
/// per pool used, and the record chains of ClusterIP and of external traffic (the
/// same chain when both use the same pool).
struct Affinity {
    cluster_chain: Option<String>,
    local_chain: Option<String>,
    record_chain: String,
    external_record_chain: String,
}

/// `update @m { ip saddr : ip daddr . th dport }`: the client's endpoint, read from
/// the packet after DNAT, into the pool's map (IPv6: the address and the port into
/// their two maps). Nothing for a pool without maps (no endpoints).
fn record(maps: Option<&AffinityMaps>) -> Vec<Stmt> {
    let Some(maps) = maps else {
        return Vec::new();
    };
    let update = |map: &str, data: Vec<KeyExpr>| Stmt::UpdateMapFromPacket {
        map: map.to_string(),
        field: AddrField::Saddr,
        data,
    };
    match &maps.port_map {
        None => vec![update(
            &maps.map,
            vec![KeyExpr::Addr(AddrField::Daddr), KeyExpr::ThDport],
        )],
        Some(port_map) => vec![
            update(&maps.map, vec![KeyExpr::Addr(AddrField::Daddr)]),
            update(port_map, vec![KeyExpr::ThDport]),
        ],
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn v6(last: u16) -> IpAddr {
        IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, last])
    }

    /// Keys of both shapes, with both families, protocols and ports.
    fn port_keys() -> Vec<PortKey> {
        let mut keys = Vec::new();
        for addr in [None, Some(v4(2)), Some(v4(1)), Some(v6(1)), Some(v6(0))] {
            for proto in [L4Proto::Udp, L4Proto::Tcp, L4Proto::Sctp] {
                for port in [443, 80] {
                    keys.push(PortKey { addr, proto, port });
                }
            }
        }
        keys
    }

    #[test]
    fn port_keys_order_as_their_values() {
        let keys = port_keys();
        for a in &keys {
            for b in keys.iter().filter(|b| b.addr.is_some() == a.addr.is_some()) {
                assert_eq!(a.cmp(b), a.values().cmp(&b.values()), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn port_key_order_is_the_derived_order() {
        let mut keys = port_keys();
        // An IPv6 address numerically below an IPv4 one still orders after it.
        for addr in [Ipv4Addr::BROADCAST.into(), Ipv6Addr::LOCALHOST.into()] {
            keys.push(PortKey {
                addr: Some(addr),
                proto: L4Proto::Tcp,
                port: 1,
            });
        }
        for a in &keys {
            for b in &keys {
                assert_eq!(a.order().cmp(&b.order()), a.cmp(b), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn radix_sort_sorts() {
        // Pseudo-random numbers with repeats, all sharing their first byte (that pass
        // is skipped); then the same with a few that differ in every byte.
        let mut state = 0x2545_f491_u32;
        let shared: Vec<u32> = (0..5000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                0x0a00_0000 | (state & 0x00ff_0fff)
            })
            .collect();
        let mut mixed = shared.clone();
        mixed.extend([u32::MAX, 0, 0x0a00_0000, 7, u32::MAX]);
        for mut values in [shared, mixed] {
            let mut expected = values.clone();
            expected.sort_unstable();
            radix_sort(&mut values);
            assert_eq!(values, expected);
        }
        let mut short = vec![3, 1, 2];
        radix_sort(&mut short);
        assert_eq!(short, [1, 2, 3]);
    }

    #[test]
    fn address_sets_come_out_in_key_order() {
        let addresses = [v6(3), v4(9), v6(1), v4(1), v4(9), v6(3), v4(200)];
        let mut set = AddressSet::default();
        for ip in addresses {
            set.push(ip);
        }
        let mut expected: Vec<Vec<KeyValue>> = addresses.iter().map(|ip| vec![net(*ip)]).collect();
        expected.sort();
        expected.dedup();
        let sorted: Vec<Vec<KeyValue>> = set.into_sorted().map(|ip| vec![net(ip)]).collect();
        assert_eq!(sorted, expected);
    }

    /// Endpoint map elements are made in canonical order; when two ports share a key
    /// (which validation should prevent), they are flagged to be sorted as elements.
    #[test]
    fn endpoint_map_elements_are_in_order_unless_keys_repeat() {
        let endpoint = |last: u8| (v4(last), 8080);
        let map = |keys: &[PortKey]| {
            let mut map = EndpointMap::default();
            for (n, key) in keys.iter().enumerate() {
                map.keys.push((*key, map.endpoints.len()));
                let n = u8::try_from(n).expect("few keys");
                map.endpoints.extend([endpoint(100 - n), endpoint(n)]);
            }
            map
        };
        let keys: Vec<PortKey> = port_keys()
            .into_iter()
            .filter(|k| k.addr.is_some())
            .collect();
        let (elements, in_order) = endpoint_map_elements(map(&keys), 2);
        assert!(in_order);
        assert!(elements.is_sorted_by(|a, b| a < b));
        assert_eq!(elements.len(), 2 * keys.len());

        let repeated = [keys[3], keys[1], keys[3]];
        let (mut elements, in_order) = endpoint_map_elements(map(&repeated), 2);
        assert!(!in_order);
        sort_elements(&mut elements);
        assert!(elements.is_sorted_by(|a, b| a < b));
        assert_eq!(elements.len(), 6);
    }
}
