//! The nftables table IPVS mode still needs: IPVS only load-balances, and kube-proxy's
//! ipvs mode surrounds it with iptables chains and ipsets. svcproxy uses one small
//! table per family (`svcproxy-ipvs`) in the nftables backend's IR, built from named
//! sets and verdict maps so that its size does not grow in chains with the services:
//!
//! - `service-ports` (address . protocol . port): every virtual server, mapped to
//!   `return` (IPVS takes it), `drop` (endpoints exist, none usable here) or `goto
//!   reject-chain` (no endpoint at all). With `bound-ips` and `health-check-ports` it
//!   also closes every other port of the addresses on the dummy interface: they are
//!   local addresses, and without this a node service listening on `0.0.0.0:22` would
//!   answer on every ClusterIP (kube-proxy's KUBE-IPVS-FILTER). Unallocated addresses
//!   of the service CIDRs are dropped.
//! - `firewall-allow` (address . protocol . port . source prefix) and `firewall-ips`:
//!   loadBalancerSourceRanges, checked before the rest.
//! - `masquerade-services` (address . protocol . port): which traffic to a virtual
//!   server is marked for masquerade, in the nat hooks before IPVS rewrites the
//!   destination: ClusterIP traffic by the plan's rule (sources outside the pod CIDRs,
//!   or all), external traffic with Cluster policy always, with Local policy only the
//!   node's own (the plan's "traffic from the node is masqueraded").
//! - `hairpin` (endpoint . protocol . port . endpoint): after IPVS has rewritten the
//!   destination, a packet whose source is the real server it was sent to is a pod
//!   reaching itself through a service. Its reply would go straight back to itself
//!   and never be un-NATed, so it is masqueraded to the node. IPVS rewrites the
//!   destination in LOCAL_IN/LOCAL_OUT, so only postrouting sees both addresses: the
//!   match is an exact lookup of `daddr . l4proto . dport . saddr` against the real
//!   servers (kube-proxy's KUBE-LOOP-BACK ipset, `dst,dst,src`).
//!
//! Hook priorities: IPVS schedules remote traffic in LOCAL_IN at priority 99 and local
//! traffic in LOCAL_OUT at -98, so the filter chains (-110) and the marking nat chains
//! (dstnat, -100) run before it. Masquerade needs `net.ipv4.vs.conntrack=1`, which makes
//! IPVS keep conntrack informed so that the nat postrouting hook sees its packets.

use ipnet::IpNet;

use super::{AddressKind, IpvsState, VirtualServer};
use crate::nft::build::{TableParts, addr_match, commented, dispatch_exprs, jump, net, rule};
use crate::nft::ir::*;
use crate::plan::{FamilyPlan, Masquerade, Plan, ServicePortPlan};

/// The name of the companion table in each family. It differs from the nftables
/// backend's table so that one mode never deletes the other's.
pub const TABLE_NAME: &str = "svcproxy-ipvs";

const BOUND_IPS: &str = "bound-ips";
const SERVICE_PORTS: &str = "service-ports";
const HEALTH_CHECK_PORTS: &str = "health-check-ports";
const FIREWALL_IPS: &str = "firewall-ips";
const FIREWALL_ALLOW: &str = "firewall-allow";
const MASQUERADE_SERVICES: &str = "masquerade-services";
const HAIRPIN: &str = "hairpin";
const FIREWALL_CHECK: &str = "firewall-check";
const SERVICE_CHECK: &str = "service-check";
const REJECT_CHAIN: &str = "reject-chain";
const MASQUERADING: &str = "masquerading";
const MARK_FOR_MASQUERADE: &str = "mark-for-masquerade";
const MASQUERADE_LOCAL_SOURCE: &str = "masquerade-local-source";
const MASQUERADE_OFF_CLUSTER: &str = "masquerade-off-cluster";

/// Before IPVS in both LOCAL_IN (99) and LOCAL_OUT (-98).
const FILTER: i32 = -110;
const DSTNAT: i32 = -100;
const SRCNAT: i32 = 100;

/// The companion tables: one per family of the plan.
pub fn ruleset(plan: &Plan, state: &IpvsState) -> Ruleset {
    Ruleset {
        tables: plan.families.iter().map(|fp| table(fp, state)).collect(),
    }
}

fn table(fp: &FamilyPlan, state: &IpvsState) -> Table {
    let family = fp.family;
    let mut t = TableBuilder {
        family,
        parts: TableParts::default(),
        off_cluster: Vec::new(),
    };
    t.skeleton(fp);
    t.elements(
        BOUND_IPS,
        state
            .bind_addresses
            .iter()
            .filter(|ip| Family::of(ip) == family)
            .map(|ip| ([net(*ip)].into(), None)),
    );
    for sp in &fp.ports {
        if let (Some(port), Some(_)) = (sp.health_check_node_port, &sp.external) {
            let key = [KeyValue::Proto(L4Proto::Tcp), KeyValue::Port(port)];
            t.elements(HEALTH_CHECK_PORTS, [(key.into(), Some(Verdict::Return))]);
        }
    }
    let servers = state
        .virtual_servers
        .iter()
        .filter(|vs| Family::of(&vs.address) == family);
    for vs in servers {
        // The plan's ports are sorted by id, and the virtual servers were made from them.
        let Ok(index) = fp.ports.binary_search_by(|p| p.id.cmp(&vs.service)) else {
            continue;
        };
        t.virtual_server(&fp.ports[index], vs);
    }
    t.finish()
}

struct TableBuilder {
    family: Family,
    parts: TableParts,
    /// The distinct "not from these pod CIDRs" rules, each with its chain.
    off_cluster: Vec<(Vec<IpNet>, String)>,
}

impl TableBuilder {
    fn finish(self) -> Table {
        let comment = Some("rules for svcproxy's IPVS mode".to_string());
        self.parts.into_table(self.family, TABLE_NAME, comment)
    }

    fn skeleton(&mut self, fp: &FamilyPlan) {
        let addr = self.family.addr_type();
        let dispatch = vec![addr, KeyType::InetProto, KeyType::InetService];
        let with_source = vec![addr, KeyType::InetProto, KeyType::InetService, addr];
        self.parts.set(
            BOUND_IPS,
            vec![addr],
            None,
            "Addresses on the dummy interface: only their virtual servers are open",
        );
        self.parts.set(
            SERVICE_PORTS,
            dispatch.clone(),
            Some(MapData::Verdict),
            "Virtual servers: return to let IPVS balance, drop or reject without endpoints",
        );
        self.parts.set(
            HEALTH_CHECK_PORTS,
            vec![KeyType::InetProto, KeyType::InetService],
            Some(MapData::Verdict),
            "healthCheckNodePorts, open on the dummy interface's addresses too",
        );
        self.parts.set(
            FIREWALL_ALLOW,
            with_source.clone(),
            Some(MapData::Verdict),
            "LoadBalancer IP and port . allowed source range (loadBalancerSourceRanges)",
        );
        if let Some(set) = self.parts.sets.last_mut() {
            set.flags.interval = true;
        }
        self.parts.set(
            FIREWALL_IPS,
            dispatch.clone(),
            Some(MapData::Verdict),
            "LoadBalancer IPs and ports subject to loadBalancerSourceRanges",
        );
        self.parts.set(
            MASQUERADE_SERVICES,
            dispatch,
            Some(MapData::Verdict),
            "Which traffic to a virtual server is masqueraded",
        );
        self.parts.set(
            HAIRPIN,
            with_source,
            Some(MapData::Verdict),
            "Real server . protocol . port . itself: a pod reaching itself through a service",
        );

        let new = |target: &str| rule(vec![Stmt::CtStateNew, jump(target)]);
        self.parts.base(
            "filter-input",
            ChainType::Filter,
            Hook::Input,
            FILTER,
            vec![new(FIREWALL_CHECK), new(SERVICE_CHECK)],
        );
        // Pods sending to an unallocated ClusterIP: not a local address, so forwarded.
        self.parts.base(
            "filter-forward",
            ChainType::Filter,
            Hook::Forward,
            FILTER,
            vec![new(SERVICE_CHECK)],
        );
        self.parts.base(
            "filter-output",
            ChainType::Filter,
            Hook::Output,
            FILTER,
            vec![new(FIREWALL_CHECK), new(SERVICE_CHECK)],
        );
        let mark_lookup = || rule(vec![vmap(dispatch_exprs(), MASQUERADE_SERVICES)]);
        self.parts.base(
            "nat-prerouting",
            ChainType::Nat,
            Hook::Prerouting,
            DSTNAT,
            vec![mark_lookup()],
        );
        self.parts.base(
            "nat-output",
            ChainType::Nat,
            Hook::Output,
            DSTNAT,
            vec![mark_lookup()],
        );
        let mut hairpin_key = dispatch_exprs();
        hairpin_key.push(KeyExpr::Addr(AddrField::Saddr));
        self.parts.base(
            "nat-postrouting",
            ChainType::Nat,
            Hook::Postrouting,
            SRCNAT,
            vec![
                rule(vec![vmap(hairpin_key.clone(), HAIRPIN)]),
                rule(vec![jump(MASQUERADING)]),
            ],
        );

        let mut firewall_key = dispatch_exprs();
        firewall_key.push(KeyExpr::Addr(AddrField::Saddr));
        self.parts.chain(
            FIREWALL_CHECK,
            vec![
                rule(vec![vmap(firewall_key, FIREWALL_ALLOW)]),
                rule(vec![vmap(dispatch_exprs(), FIREWALL_IPS)]),
            ],
        );
        let bound = || Stmt::AddrInSet {
            field: AddrField::Daddr,
            op: CmpOp::Eq,
            set: BOUND_IPS.into(),
        };
        let mut service_check = vec![
            rule(vec![vmap(dispatch_exprs(), SERVICE_PORTS)]),
            rule(vec![
                bound(),
                vmap(vec![KeyExpr::L4Proto, KeyExpr::ThDport], HEALTH_CHECK_PORTS),
            ]),
            commented(
                vec![bound(), Stmt::Reject],
                "Reject traffic to other ports of service addresses",
            ),
        ];
        if !fp.service_cidrs.is_empty() {
            service_check.push(commented(
                vec![
                    addr_match(AddrField::Daddr, CmpOp::Eq, &fp.service_cidrs),
                    Stmt::Verdict(Verdict::Drop),
                ],
                "Drop traffic to unallocated ClusterIPs",
            ));
        }
        self.parts.chain(SERVICE_CHECK, service_check);
        self.parts
            .chain(REJECT_CHAIN, vec![rule(vec![Stmt::Reject])]);
        let mark = fp.masquerade_mark;
        self.parts.chain(
            MASQUERADING,
            vec![
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
        // In prerouting the source is never local; in output it always is.
        self.parts.chain(
            MASQUERADE_LOCAL_SOURCE,
            vec![rule(vec![
                Stmt::FibAddrTypeLocal(AddrField::Saddr),
                jump(MARK_FOR_MASQUERADE),
            ])],
        );
    }

    fn virtual_server(&mut self, sp: &ServicePortPlan, vs: &VirtualServer) {
        let proto = vs.protocol;
        let values = [
            net(vs.address),
            KeyValue::Proto(proto),
            KeyValue::Port(vs.port),
        ];
        let key = Values::from(values);
        let comment = Some(crate::nft::layout::comment_text(&sp.id.to_string()));
        let verdict = match vs.verdict {
            super::Verdict::Forward => Verdict::Return,
            super::Verdict::Drop => Verdict::Drop,
            super::Verdict::Reject => Verdict::Goto(REJECT_CHAIN.into()),
        };
        self.parts
            .element(SERVICE_PORTS, key, Some(verdict), comment.clone());

        let external = sp.external.as_ref();
        if vs.kind == AddressKind::LoadBalancer {
            if let Some(firewall) = external.and_then(|e| e.firewall.as_ref()) {
                self.parts
                    .element(FIREWALL_IPS, key, Some(Verdict::Drop), comment.clone());
                // The kernel refuses overlapping ranges in a concatenated interval
                // map: merge them (the same sources are allowed).
                for source in IpNet::aggregate(&firewall.allowed) {
                    let [addr, proto, port] = values;
                    let with_source = [addr, proto, port, KeyValue::Net(source)];
                    self.parts.element(
                        FIREWALL_ALLOW,
                        with_source.into(),
                        Some(Verdict::Return),
                        None,
                    );
                }
            }
        }

        if vs.verdict != super::Verdict::Forward {
            return;
        }
        let masquerade = match vs.kind {
            AddressKind::ClusterIp => match &sp.internal_masquerade {
                Masquerade::All => Some(MARK_FOR_MASQUERADE.to_string()),
                // No pod CIDR at all would make every source off-cluster.
                Masquerade::NotFrom(cidrs) if cidrs.is_empty() => {
                    Some(MARK_FOR_MASQUERADE.to_string())
                }
                Masquerade::NotFrom(cidrs) => Some(self.off_cluster_chain(cidrs)),
                Masquerade::Never => None,
            },
            _ if external.is_some_and(|e| e.policy_local) => {
                Some(MASQUERADE_LOCAL_SOURCE.to_string())
            }
            // Cluster policy: the endpoint may be on another node, so replies must
            // come back through this one.
            _ => Some(MARK_FOR_MASQUERADE.to_string()),
        };
        if let Some(chain) = masquerade {
            self.parts
                .element(MASQUERADE_SERVICES, key, Some(Verdict::Goto(chain)), None);
        }
        for rs in &vs.real_servers {
            let key = [
                net(rs.address),
                KeyValue::Proto(proto),
                KeyValue::Port(rs.port),
                net(rs.address),
            ];
            self.parts.element(
                HAIRPIN,
                key.into(),
                Some(Verdict::Jump(MARK_FOR_MASQUERADE.into())),
                None,
            );
        }
    }

    /// The chain that marks sources outside `cidrs`, made on first use. The plan gives
    /// every port the node's pod CIDRs, so there is one; the plan may differ per port,
    /// so this does not assume it.
    fn off_cluster_chain(&mut self, cidrs: &[IpNet]) -> String {
        if let Some((_, name)) = self.off_cluster.iter().find(|(c, _)| c == cidrs) {
            return name.clone();
        }
        let name = match self.off_cluster.len() {
            0 => MASQUERADE_OFF_CLUSTER.to_string(),
            n => format!("{MASQUERADE_OFF_CLUSTER}-{n}"),
        };
        self.parts.chain(
            &name,
            vec![rule(vec![
                addr_match(AddrField::Saddr, CmpOp::Ne, cidrs),
                jump(MARK_FOR_MASQUERADE),
            ])],
        );
        self.off_cluster.push((cidrs.to_vec(), name.clone()));
        name
    }

    // ----- small builders -----

    fn elements(
        &mut self,
        set: &str,
        elements: impl IntoIterator<Item = (Values<MAX_KEY>, Option<Verdict>)>,
    ) {
        for (key, verdict) in elements {
            self.parts.element(set, key, verdict, None);
        }
    }
}

fn vmap(key: Vec<KeyExpr>, map: &str) -> Stmt {
    Stmt::Vmap {
        key,
        map: map.into(),
    }
}
