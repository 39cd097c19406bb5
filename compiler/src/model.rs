//! The validated snapshot: Services, endpoint groups and Pods in plain, checked form.
//!
//! Conversion from the API types happens here, field by field, so that everything
//! downstream can trust its input. The policy for bad input, as kube-proxy would do it:
//! - a problem that makes the snapshot ambiguous (two objects with the same name, an
//!   object without a name) fails the whole snapshot;
//! - a problem inside one object (an invalid IP, an unknown protocol, a port out of
//!   range, an EndpointSlice without its service label) skips that object with a warning
//!   and the rest is programmed. `--strict` turns these warnings into errors.

use std::cmp::Ordering;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::addr::{parse_cidr_lenient, parse_ip};
use crate::api::{self, EndpointSlice, Endpoints, IntOrString, Pod, Service, Str};
use crate::endpoints::Hints;
use crate::error::{Diagnostic, Origin};
use crate::input::{Located, Object};
use crate::nft::ir::{Family, L4Proto};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Per-service IPVS scheduler override.
pub const IPVS_SCHEDULER_ANNOTATION: &str = "svcproxy.io/ipvs-scheduler";
/// The legacy annotation form of `loadBalancerSourceRanges`.
pub const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";
/// kube-proxy's default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

/// `namespace/name` of a Service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalName,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FamilyPolicy {
    SingleStack,
    PreferDualStack,
    RequireDualStack,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    /// A named container port, resolved per Pod.
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortSpec {
    /// The port's name; empty for the single unnamed port of a Service.
    pub name: String,
    pub protocol: L4Proto,
    pub port: u16,
    pub target_port: TargetPort,
    /// Given or allocated NodePort (NodePort and LoadBalancer services).
    pub node_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: ServiceName,
    pub origin: Origin,
    pub service_type: ServiceType,
    /// `clusterIP: None`: no virtual IP, no rules.
    pub headless: bool,
    /// ClusterIPs as given (primary first); filled in by allocation when missing.
    pub cluster_ips: Vec<IpAddr>,
    /// Requested IP families (`spec.ipFamilies`), possibly empty.
    pub ip_families: Vec<Family>,
    pub family_policy: FamilyPolicy,
    pub ports: Vec<ServicePortSpec>,
    /// `None` for a Service without selector (its endpoints are managed by hand).
    pub selector: Option<BTreeMap<String, String>>,
    pub external_ips: Vec<IpAddr>,
    /// LoadBalancer ingress IPs (status), or `spec.loadBalancerIP` when there is none.
    pub load_balancer_ips: Vec<IpAddr>,
    /// `loadBalancerSourceRanges` (or its annotation); empty means "no firewall".
    pub source_ranges: Vec<IpNet>,
    pub external_policy_local: bool,
    pub internal_policy_local: bool,
    /// ClientIP session affinity timeout in seconds, when affinity is on.
    pub affinity_timeout: Option<u32>,
    pub health_check_node_port: Option<u16>,
    pub publish_not_ready_addresses: bool,
    pub allocate_load_balancer_node_ports: bool,
    pub ipvs_scheduler: Option<String>,
}

impl ServiceSpec {
    pub fn is_externally_accessible(&self) -> bool {
        !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
            || self.ports.iter().any(|p| p.node_port.is_some())
    }

    /// Does this Service want a NodePort on its ports?
    pub fn wants_node_ports(&self) -> bool {
        match self.service_type {
            ServiceType::NodePort => true,
            ServiceType::LoadBalancer => self.allocate_load_balancer_node_ports,
            ServiceType::ClusterIp | ServiceType::ExternalName => false,
        }
    }

    /// Services that get rules at all.
    pub fn is_proxied(&self) -> bool {
        !self.headless && self.service_type != ServiceType::ExternalName
    }

    pub fn object(&self) -> String {
        format!("Service {}", self.name)
    }
}

/// One port of an endpoint group (EndpointSlice port, Endpoints subset port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPortSpec {
    pub name: String,
    pub protocol: L4Proto,
    pub port: u16,
}

/// One endpoint address with its conditions, as the EndpointSlice API defines them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    pub ip: IpAddr,
    /// Shared with every endpoint on the same node (and zone).
    pub node_name: Option<Arc<str>>,
    pub zone: Option<Arc<str>>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// Topology hints, shared with the plan's copies of the endpoint; `None` when
    /// there are none.
    pub hints: Option<Arc<Hints>>,
}

/// Endpoints of one Service that share one port list: an EndpointSlice, or one subset
/// of a legacy Endpoints object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointGroup {
    pub origin: Origin,
    /// `EndpointSlice default/web-abc12`, for diagnostics and ordering.
    pub object: String,
    pub ports: Vec<EndpointPortSpec>,
    pub endpoints: Vec<EndpointSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPortSpec {
    pub name: Option<String>,
    pub protocol: L4Proto,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub node_name: Option<Arc<str>>,
    pub ips: Vec<IpAddr>,
    pub ready: bool,
    pub terminating: bool,
    pub container_ports: Vec<ContainerPortSpec>,
}

/// The whole validated input.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Sorted by namespace/name.
    pub services: Vec<ServiceSpec>,
    /// EndpointSlices per Service, sorted by slice name.
    pub slices: BTreeMap<ServiceName, Vec<EndpointGroup>>,
    /// Legacy Endpoints subsets per Service.
    pub endpoints: BTreeMap<ServiceName, Vec<EndpointGroup>>,
    /// Pods per namespace, sorted by name.
    pub pods: BTreeMap<String, Vec<PodSpec>>,
    /// Objects (or parts) skipped because they were invalid.
    pub warnings: Vec<Diagnostic>,
}

impl Snapshot {
    /// Validates parsed objects. Fatal problems are returned as `Err`; per-object
    /// problems skip the object and are kept in `warnings`.
    pub fn from_objects(objects: Vec<Located<Object<'_>>>) -> Result<Snapshot, Vec<Diagnostic>> {
        let mut builder = SnapshotBuilder::default();
        for object in objects {
            builder.add(object);
        }
        builder.finish()
    }
}

/// Builds a [`Snapshot`] one object at a time, so that the parser can hand each API
/// object over as soon as it is read and it is dropped once converted: a large
/// snapshot's API objects are never all alive at once (docs/design.md, "Performance
/// at scale").
#[derive(Default)]
pub struct SnapshotBuilder {
    snapshot: Snapshot,
    fatal: Vec<Diagnostic>,
    /// (kind, namespace, name) -> where it was first seen: duplicates are fatal. A hash
    /// map: the order is never observed, and a B-tree spent most of its time comparing
    /// the shared namespace prefixes of 100k keys.
    seen: HashMap<(&'static str, String, String), Origin, FastHash>,
    /// In the order read; sorted by name once all are in (duplicates are fatal, so
    /// there is nothing to merge).
    services: Vec<ServiceSpec>,
    /// Node names and zones, shared by every endpoint on the node: a handful of
    /// distinct values for hundreds of thousands of endpoints, each copied into every
    /// pool of the plan.
    names: Interner,
}

impl SnapshotBuilder {
    /// Validates one object into the snapshot.
    pub fn add(&mut self, located: Located<Object<'_>>) {
        let Located { origin, mut object } = located;
        // The name and namespace are moved out of the object (no converter reads
        // them there): they key the duplicate check and name what is built.
        let (kind, name, namespace) = match &mut object {
            Object::Service(s) => ("Service", &mut s.metadata.name, &mut s.metadata.namespace),
            Object::EndpointSlice(s) => (
                "EndpointSlice",
                &mut s.metadata.name,
                &mut s.metadata.namespace,
            ),
            Object::Endpoints(e) => ("Endpoints", &mut e.metadata.name, &mut e.metadata.namespace),
            Object::Pod(p) => ("Pod", &mut p.metadata.name, &mut p.metadata.namespace),
        };
        let namespace = namespace
            .take()
            .map_or_else(|| "default".into(), Str::into_owned);
        let Some(name) = name.take().map(Str::into_owned).filter(|n| !n.is_empty()) else {
            self.fatal.push(
                Diagnostic::new(&origin, "an object needs a name")
                    .object(format!("{kind} {namespace}/<unnamed>"))
                    .field("metadata.name"),
            );
            return;
        };
        match self.seen.entry((kind, namespace, name)) {
            Entry::Occupied(first) => {
                let (_, namespace, name) = first.key();
                self.fatal.push(
                    Diagnostic::new(
                        &origin,
                        format!("duplicate object, first defined in {}", first.get()),
                    )
                    .object(format!("{kind} {namespace}/{name}")),
                );
            }
            Entry::Vacant(vacant) => {
                let (_, namespace, name) = vacant.key();
                let (namespace, name) = (namespace.clone(), name.clone());
                vacant.insert(origin.clone());
                self.convert(origin, object, namespace, name);
            }
        }
    }

    /// Converts one object whose name is not a duplicate.
    fn convert(&mut self, origin: Origin, object: Object<'_>, namespace: String, name: String) {
        let snapshot = &mut self.snapshot;

        match object {
            Object::Service(service) => {
                let service_name = ServiceName { namespace, name };
                match convert_service(&service, service_name, &origin) {
                    Ok(spec) => self.services.push(spec),
                    Err(d) => snapshot.warnings.push(d),
                }
            }
            Object::EndpointSlice(slice) => {
                match convert_slice(
                    &slice,
                    &namespace,
                    &name,
                    &origin,
                    &mut self.names,
                    &mut snapshot.warnings,
                ) {
                    Ok(Some((owner, group))) => {
                        snapshot.slices.entry(owner).or_default().push(group)
                    }
                    Ok(None) => {}
                    Err(d) => snapshot.warnings.push(d),
                }
            }
            Object::Endpoints(endpoints) => {
                let service_name = ServiceName { namespace, name };
                match convert_endpoints(&endpoints, &service_name, &origin, &mut self.names) {
                    Ok(groups) => {
                        snapshot.endpoints.insert(service_name, groups);
                    }
                    Err(d) => snapshot.warnings.push(d),
                }
            }
            Object::Pod(pod) => {
                match convert_pod(&pod, &namespace, &name, &origin, &mut self.names) {
                    Ok(Some(spec)) => snapshot.pods.entry(namespace).or_default().push(spec),
                    Ok(None) => {}
                    Err(d) => snapshot.warnings.push(d),
                }
            }
        }
    }

    /// The snapshot, or every fatal problem seen.
    pub fn finish(self) -> Result<Snapshot, Vec<Diagnostic>> {
        let SnapshotBuilder {
            mut snapshot,
            fatal,
            services,
            ..
        } = self;
        if !fatal.is_empty() {
            return Err(fatal);
        }
        snapshot.services = sorted_moving_once(services, |a, b| a.name.cmp(&b.name));
        for groups in snapshot.slices.values_mut() {
            groups.sort_by(|a, b| a.object.cmp(&b.object));
        }
        for pods in snapshot.pods.values_mut() {
            pods.sort_by(|a, b| a.name.cmp(&b.name));
        }
        Ok(snapshot)
    }
}

/// `items` sorted by `compare` (keys unique, as Service names are: duplicates are
/// fatal), each item moved about once. A `ServiceSpec` is a few hundred bytes, and
/// sorting the specs themselves moved each about log2(n) times: a sixth of the
/// model's time at 10k Services. Input in order already (kubectl lists by namespace
/// and name) costs one pass; other input is sorted through its indices and then
/// permuted in place, cycle by cycle (a new vector would be fresh memory, whose page
/// faults cost more than the moves saved).
fn sorted_moving_once<T>(mut items: Vec<T>, compare: impl Fn(&T, &T) -> Ordering) -> Vec<T> {
    if items.is_sorted_by(|a, b| compare(a, b).is_le()) {
        return items;
    }
    // `order[i]` is the index of the item that goes to position `i`.
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_unstable_by(|&a, &b| compare(&items[a], &items[b]));
    for start in 0..order.len() {
        let mut current = start;
        // A placed position points to itself.
        while order[current] != current {
            let next = order[current];
            order[current] = current;
            if next == start {
                break;
            }
            items.swap(current, next);
            current = next;
        }
    }
    items
}

/// FNV-1a for the builder's hash maps: their keys are short names, hashed once per
/// object and twice per endpoint (node name, zone), and SipHash took a tenth of the
/// model's time. The starting state is random per map, as std's `RandomState` keys
/// SipHash, so that names chosen to collide cannot be prepared in advance.
#[derive(Clone, Copy)]
struct FastHash(u64);

impl Default for FastHash {
    fn default() -> Self {
        use std::hash::BuildHasher;
        FastHash(std::collections::hash_map::RandomState::new().hash_one(0xcbf2_9ce4_8422_2325_u64))
    }
}

impl std::hash::BuildHasher for FastHash {
    type Hasher = Fnv;
    fn build_hasher(&self) -> Fnv {
        Fnv(self.0)
    }
}

struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// One shared copy of each distinct node name and zone.
#[derive(Default)]
struct Interner(HashMap<String, Arc<str>, FastHash>);

impl Interner {
    fn get(&mut self, value: Option<&str>) -> Option<Arc<str>> {
        let value = value?;
        if let Some(shared) = self.0.get(value) {
            return Some(Arc::clone(shared));
        }
        let shared: Arc<str> = Arc::from(value);
        self.0.insert(value.to_owned(), Arc::clone(&shared));
        Some(shared)
    }
}

/// A per-object problem, before it is given its origin and object name.
struct FieldError {
    field: String,
    message: String,
}

fn field_error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

// The field's name is a closure: it is formatted only for an error, not for each of
// the hundreds of thousands of values that are valid.

fn ip_at(text: &str, field: impl FnOnce() -> String) -> Result<IpAddr, FieldError> {
    parse_ip(text).map_err(|m| field_error(field(), m))
}

fn port_at(value: i32, field: impl FnOnce() -> String) -> Result<u16, FieldError> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| field_error(field(), format!("port {value} is out of range 1..=65535")))
}

fn protocol_at(value: Option<&str>, field: impl FnOnce() -> String) -> Result<L4Proto, FieldError> {
    match value.unwrap_or("TCP") {
        "TCP" => Ok(L4Proto::Tcp),
        "UDP" => Ok(L4Proto::Udp),
        "SCTP" => Ok(L4Proto::Sctp),
        other => Err(field_error(
            field(),
            format!("unknown protocol {other:?} (expected TCP, UDP or SCTP)"),
        )),
    }
}

fn convert_service(
    service: &Service<'_>,
    name: ServiceName,
    origin: &Origin,
) -> Result<ServiceSpec, Diagnostic> {
    let mut spec = service_spec(service).map_err(|e| {
        Diagnostic::new(origin, e.message)
            .skipping("Service")
            .object(format!("Service {name}"))
            .field(e.field)
    })?;
    spec.name = name;
    spec.origin = origin.clone();
    Ok(spec)
}

/// The Service's spec, checked; [`convert_service`] gives it its name and origin.
fn service_spec(service: &Service<'_>) -> Result<ServiceSpec, FieldError> {
    let default_spec = Default::default();
    let spec = service.spec.as_ref().unwrap_or(&default_spec);
    let annotations = service.metadata.annotations.as_ref();

    let service_type = match spec.type_.as_deref() {
        None | Some("ClusterIP") => ServiceType::ClusterIp,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => ServiceType::ExternalName,
        Some(other) => {
            return Err(field_error(
                "spec.type",
                format!("unknown Service type {other:?}"),
            ));
        }
    };

    // clusterIPs is authoritative when present; clusterIP must agree with its first entry.
    let mut headless = false;
    let mut cluster_ips = Vec::new();
    let listed: Vec<&str> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => {
            if let Some(single) = spec.cluster_ip.as_deref()
                && !single.is_empty()
                && single != ips[0]
            {
                return Err(field_error(
                    "spec.clusterIP",
                    format!("{single:?} disagrees with spec.clusterIPs[0] {:?}", ips[0]),
                ));
            }
            ips.iter().map(String::as_str).collect()
        }
        (_, Some(ip)) if !ip.is_empty() => vec![ip.as_str()],
        _ => Vec::new(),
    };
    for (i, text) in listed.iter().enumerate() {
        if *text == "None" {
            headless = true;
            continue;
        }
        let field = if spec.cluster_ips.is_some() {
            format!("spec.clusterIPs[{i}]")
        } else {
            "spec.clusterIP".to_string()
        };
        let ip = ip_at(text, || field.clone())?;
        if cluster_ips
            .iter()
            .any(|other| Family::of(other) == Family::of(&ip))
        {
            return Err(field_error(field, "two clusterIPs of the same family"));
        }
        cluster_ips.push(ip);
    }

    let mut ip_families = Vec::new();
    for (i, family) in spec.ip_families.iter().flatten().enumerate() {
        let family = match family.as_str() {
            "IPv4" => Family::Ip,
            "IPv6" => Family::Ip6,
            other => {
                return Err(field_error(
                    format!("spec.ipFamilies[{i}]"),
                    format!("unknown IP family {other:?} (expected IPv4 or IPv6)"),
                ));
            }
        };
        if ip_families.contains(&family) {
            return Err(field_error(
                format!("spec.ipFamilies[{i}]"),
                "duplicate IP family",
            ));
        }
        ip_families.push(family);
    }
    for (ip, family) in cluster_ips.iter().zip(&ip_families) {
        if Family::of(ip) != *family {
            return Err(field_error(
                "spec.ipFamilies",
                format!("clusterIP {ip} does not match IP family {family:?}"),
            ));
        }
    }
    let family_policy = match spec.ip_family_policy.as_deref() {
        None | Some("SingleStack") => FamilyPolicy::SingleStack,
        Some("PreferDualStack") => FamilyPolicy::PreferDualStack,
        Some("RequireDualStack") => FamilyPolicy::RequireDualStack,
        Some(other) => {
            return Err(field_error(
                "spec.ipFamilyPolicy",
                format!("unknown IP family policy {other:?}"),
            ));
        }
    };

    let mut ports: Vec<ServicePortSpec> = Vec::new();
    for (i, port) in spec.ports.iter().flatten().enumerate() {
        let at = |field: &str| format!("spec.ports[{i}].{field}");
        let protocol = protocol_at(port.protocol.as_deref(), || at("protocol"))?;
        let number = port_at(port.port, || at("port"))?;
        let target_port = match &port.target_port {
            None => TargetPort::Number(number),
            Some(IntOrString::Int(n)) => TargetPort::Number(port_at(*n, || at("targetPort"))?),
            Some(IntOrString::String(s)) => match s.parse::<i32>() {
                Ok(n) => TargetPort::Number(port_at(n, || at("targetPort"))?),
                Err(_) if s.is_empty() => TargetPort::Number(number),
                Err(_) => TargetPort::Name(s.clone()),
            },
        };
        let node_port = match port.node_port {
            None | Some(0) => None,
            Some(n) => Some(port_at(n, || at("nodePort"))?),
        };
        let port_name = port.name.clone().unwrap_or_default();
        if ports.iter().any(|p| p.name == port_name) {
            return Err(field_error(
                at("name"),
                format!(
                    "duplicate port name {port_name:?} (ports must have distinct names when a Service has several)"
                ),
            ));
        }
        if ports
            .iter()
            .any(|p| p.port == number && p.protocol == protocol)
        {
            return Err(field_error(
                at("port"),
                format!("duplicate port {number}/{}", protocol.keyword()),
            ));
        }
        ports.push(ServicePortSpec {
            name: port_name,
            protocol,
            port: number,
            target_port,
            node_port,
        });
    }

    let mut external_ips = Vec::new();
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        let ip = ip_at(ip, || format!("spec.externalIPs[{i}]"))?;
        if !external_ips.contains(&ip) {
            external_ips.push(ip);
        }
    }

    let mut load_balancer_ips = Vec::new();
    if service_type == ServiceType::LoadBalancer {
        let ingress = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        for (i, entry) in ingress.into_iter().flatten().enumerate() {
            // ipMode Proxy: the load balancer delivers to the node, not to the VIP.
            if entry.ip_mode.as_deref() == Some("Proxy") {
                continue;
            }
            if let Some(ip) = &entry.ip {
                let ip = ip_at(ip, || format!("status.loadBalancer.ingress[{i}].ip"))?;
                if !load_balancer_ips.contains(&ip) {
                    load_balancer_ips.push(ip);
                }
            }
        }
        if load_balancer_ips.is_empty()
            && let Some(ip) = spec.load_balancer_ip.as_deref().filter(|s| !s.is_empty())
        {
            load_balancer_ips.push(ip_at(ip, || "spec.loadBalancerIP".into())?);
        }
    }

    let mut source_ranges = Vec::new();
    let (ranges, field): (Vec<String>, &str) = match &spec.load_balancer_source_ranges {
        Some(ranges) if !ranges.is_empty() => (ranges.clone(), "spec.loadBalancerSourceRanges"),
        _ => match annotations.and_then(|a| a.load_balancer_source_ranges.as_ref()) {
            Some(list) => (
                list.split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(str::to_owned)
                    .collect(),
                "metadata.annotations[service.beta.kubernetes.io/load-balancer-source-ranges]",
            ),
            None => (Vec::new(), ""),
        },
    };
    for (i, range) in ranges.iter().enumerate() {
        let net = parse_cidr_lenient(range).map_err(|m| field_error(format!("{field}[{i}]"), m))?;
        if !source_ranges.contains(&net) {
            source_ranges.push(net);
        }
    }

    let external_policy_local = match spec.external_traffic_policy.as_deref() {
        None | Some("Cluster") | Some("Global") => false,
        Some("Local") => true,
        Some(other) => {
            return Err(field_error(
                "spec.externalTrafficPolicy",
                format!("unknown policy {other:?} (expected Cluster or Local)"),
            ));
        }
    };
    let internal_policy_local = match spec.internal_traffic_policy.as_deref() {
        None | Some("Cluster") => false,
        Some("Local") => true,
        Some(other) => {
            return Err(field_error(
                "spec.internalTrafficPolicy",
                format!("unknown policy {other:?} (expected Cluster or Local)"),
            ));
        }
    };
    let affinity_timeout = match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match timeout {
                None => Some(DEFAULT_AFFINITY_TIMEOUT),
                Some(t @ 1..=86400) => Some(t as u32),
                Some(t) => {
                    return Err(field_error(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        format!("{t} is out of range 1..=86400"),
                    ));
                }
            }
        }
        Some(other) => {
            return Err(field_error(
                "spec.sessionAffinity",
                format!("unknown session affinity {other:?} (expected None or ClientIP)"),
            ));
        }
    };
    let health_check_node_port = match spec.health_check_node_port {
        None | Some(0) => None,
        Some(n) => Some(port_at(n, || "spec.healthCheckNodePort".into())?),
    };
    let selector = spec.selector.clone().filter(|s| !s.is_empty());
    let ipvs_scheduler = annotations.and_then(|a| a.ipvs_scheduler.clone());

    Ok(ServiceSpec {
        name: ServiceName::default(),
        origin: Origin::default(),
        service_type,
        headless,
        cluster_ips,
        ip_families,
        family_policy,
        ports,
        selector,
        external_ips,
        load_balancer_ips,
        source_ranges,
        external_policy_local,
        internal_policy_local,
        affinity_timeout,
        health_check_node_port,
        publish_not_ready_addresses: spec.publish_not_ready_addresses.unwrap_or(false),
        allocate_load_balancer_node_ports: spec.allocate_load_balancer_node_ports.unwrap_or(true),
        ipvs_scheduler,
    })
    .map(|mut s| {
        s.ports
            .sort_by(|a, b| (&a.name, a.protocol).cmp(&(&b.name, b.protocol)));
        s
    })
}

/// An endpoint's hints, shared with the plan's copies; `None` for the many that have
/// none, so that copying them touches no reference count.
fn endpoint_hints(hints: Option<&api::EndpointHints>) -> Option<Arc<Hints>> {
    let hints = hints?;
    let names = |list: &Option<Vec<api::Named>>| -> BTreeSet<String> {
        list.iter().flatten().map(|n| n.name.clone()).collect()
    };
    Hints::shared(names(&hints.for_zones), names(&hints.for_nodes))
}

/// Converts an EndpointSlice. `Ok(None)`: a slice svcproxy ignores on purpose (FQDN).
/// Invalid endpoints inside a valid slice are skipped one by one with a warning.
fn convert_slice(
    slice: &EndpointSlice<'_>,
    namespace: &str,
    name: &str,
    origin: &Origin,
    names: &mut Interner,
    warnings: &mut Vec<Diagnostic>,
) -> Result<Option<(ServiceName, EndpointGroup)>, Diagnostic> {
    let object = format!("EndpointSlice {namespace}/{name}");
    let fail = |e: FieldError| {
        Diagnostic::new(origin, e.message)
            .skipping("EndpointSlice")
            .object(object.clone())
            .field(e.field)
    };
    let Some(owner) = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.service_name.as_deref())
        .filter(|s| !s.is_empty())
    else {
        return Err(fail(field_error(
            format!("metadata.labels[{SERVICE_NAME_LABEL}]"),
            "missing: the slice belongs to no Service",
        )));
    };
    let address_type: &str = &slice.address_type;
    let family = match address_type {
        "IPv4" => Family::Ip,
        "IPv6" => Family::Ip6,
        "FQDN" => {
            tracing::debug!(%origin, "skipping FQDN EndpointSlice {namespace}/{name}");
            return Ok(None);
        }
        other => {
            return Err(fail(field_error(
                "addressType",
                format!("unknown address type {other:?}"),
            )));
        }
    };
    let mut ports = Vec::with_capacity(slice.ports.as_ref().map_or(0, Vec::len));
    for (i, port) in slice.ports.iter().flatten().enumerate() {
        let protocol = protocol_at(port.protocol.as_deref(), || format!("ports[{i}].protocol"))
            .map_err(fail)?;
        // A port without a number means "all ports", which services never use.
        let Some(number) = port.port else { continue };
        let number = port_at(number, || format!("ports[{i}].port")).map_err(fail)?;
        ports.push(EndpointPortSpec {
            name: port.name.as_deref().unwrap_or_default().to_owned(),
            protocol,
            port: number,
        });
    }
    let mut endpoints = Vec::with_capacity(slice.endpoints.len());
    for (i, endpoint) in slice.endpoints.iter().enumerate() {
        let field = || format!("endpoints[{i}].addresses[0]");
        let Some(address) = endpoint.addresses.0.as_deref() else {
            continue;
        };
        let ip = match parse_ip(address) {
            Ok(ip) if Family::of(&ip) == family => ip,
            Ok(ip) => {
                warnings.push(
                    Diagnostic::new(origin, format!("{ip} is not an {address_type} address"))
                        .skipping("endpoint")
                        .object(object.clone())
                        .field(field()),
                );
                continue;
            }
            Err(message) => {
                warnings.push(
                    Diagnostic::new(origin, message)
                        .skipping("endpoint")
                        .object(object.clone())
                        .field(field()),
                );
                continue;
            }
        };
        let conditions = endpoint.conditions.as_ref();
        // API defaults: ready unset means ready; serving unset means "as ready".
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
        let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
        endpoints.push(EndpointSpec {
            ip,
            node_name: names.get(endpoint.node_name.as_deref()),
            zone: names.get(endpoint.zone.as_deref()),
            ready,
            serving,
            terminating,
            hints: endpoint_hints(endpoint.hints.as_ref()),
        });
    }
    let owner = ServiceName {
        namespace: namespace.to_owned(),
        name: owner.to_owned(),
    };
    Ok(Some((
        owner,
        EndpointGroup {
            origin: origin.clone(),
            object,
            ports,
            endpoints,
        },
    )))
}

fn convert_endpoints(
    endpoints: &Endpoints<'_>,
    name: &ServiceName,
    origin: &Origin,
    names: &mut Interner,
) -> Result<Vec<EndpointGroup>, Diagnostic> {
    let object = format!("Endpoints {name}");
    let fail = |e: FieldError| {
        Diagnostic::new(origin, e.message)
            .skipping("Endpoints object")
            .object(object.clone())
            .field(e.field)
    };
    let mut groups = Vec::new();
    for (s, subset) in endpoints.subsets.iter().flatten().enumerate() {
        let mut ports = Vec::new();
        for (i, port) in subset.ports.iter().flatten().enumerate() {
            let at = |f: &str| format!("subsets[{s}].ports[{i}].{f}");
            ports.push(EndpointPortSpec {
                name: port.name.clone().unwrap_or_default(),
                protocol: protocol_at(port.protocol.as_deref(), || at("protocol")).map_err(fail)?,
                port: port_at(port.port, || at("port")).map_err(fail)?,
            });
        }
        let mut list = Vec::new();
        let ready = subset
            .addresses
            .iter()
            .flatten()
            .map(|a| (a, true, "addresses"));
        let not_ready = subset
            .not_ready_addresses
            .iter()
            .flatten()
            .map(|a| (a, false, "notReadyAddresses"));
        for (i, (address, is_ready, field)) in ready.chain(not_ready).enumerate() {
            let ip =
                ip_at(&address.ip, || format!("subsets[{s}].{field}[{i}].ip")).map_err(fail)?;
            list.push(EndpointSpec {
                ip,
                node_name: names.get(address.node_name.as_deref()),
                zone: None,
                ready: is_ready,
                serving: is_ready,
                terminating: false,
                hints: None,
            });
        }
        groups.push(EndpointGroup {
            origin: origin.clone(),
            object: format!("{object} subsets[{s}]"),
            ports,
            endpoints: list,
        });
    }
    Ok(groups)
}

/// Converts a Pod. `Ok(None)` for Pods that can never be endpoints (finished, no IP).
fn convert_pod(
    pod: &Pod<'_>,
    namespace: &str,
    name: &str,
    origin: &Origin,
    names: &mut Interner,
) -> Result<Option<PodSpec>, Diagnostic> {
    let object = format!("Pod {namespace}/{name}");
    let fail = |e: FieldError| {
        Diagnostic::new(origin, e.message)
            .skipping("Pod")
            .object(object.clone())
            .field(e.field)
    };
    let status = pod.status.as_ref();
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    ) {
        return Ok(None);
    }
    let mut ips = Vec::new();
    match status
        .and_then(|s| s.pod_ips.as_ref())
        .filter(|l| !l.is_empty())
    {
        Some(list) => {
            for (i, entry) in list.iter().enumerate() {
                ips.push(ip_at(&entry.ip, || format!("status.podIPs[{i}].ip")).map_err(fail)?);
            }
        }
        None => {
            if let Some(ip) = status
                .and_then(|s| s.pod_ip.as_deref())
                .filter(|s| !s.is_empty())
            {
                ips.push(ip_at(ip, || "status.podIP".into()).map_err(fail)?);
            }
        }
    }
    if ips.is_empty() {
        return Ok(None);
    }
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let spec = pod.spec.as_ref();
    let mut container_ports = Vec::new();
    for (c, container) in spec.iter().flat_map(|s| s.containers.iter()).enumerate() {
        for (i, port) in container.ports.iter().flatten().enumerate() {
            let at = |f: &str| format!("spec.containers[{c}].ports[{i}].{f}");
            container_ports.push(ContainerPortSpec {
                name: port.name.clone(),
                protocol: protocol_at(port.protocol.as_deref(), || at("protocol")).map_err(fail)?,
                port: port_at(port.container_port, || at("containerPort")).map_err(fail)?,
            });
        }
    }
    Ok(Some(PodSpec {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        node_name: names.get(spec.and_then(|s| s.node_name.as_deref())),
        ips,
        ready,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        container_ports,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_moving_once_sorts_any_permutation() {
        // Every permutation of five items, and a longer one with several cycles.
        let mut inputs: Vec<Vec<u32>> = Vec::new();
        let mut permutation = vec![0, 1, 2, 3, 4];
        for _ in 0..120 {
            inputs.push(permutation.clone());
            // Next permutation in lexicographic order (wrapping at the last).
            let Some(i) = (0..4).rev().find(|&i| permutation[i] < permutation[i + 1]) else {
                permutation.reverse();
                continue;
            };
            let j = (i + 1..5)
                .rev()
                .find(|&j| permutation[j] > permutation[i])
                .expect("exists");
            permutation.swap(i, j);
            permutation[i + 1..].reverse();
        }
        inputs.push((0..1000).map(|i| (i * 7919) % 1000).collect());
        for input in inputs {
            let items: Vec<(u32, String)> =
                input.iter().map(|&k| (k, format!("item {k}"))).collect();
            let mut expected = items.clone();
            expected.sort();
            assert_eq!(
                sorted_moving_once(items, |a, b| a.0.cmp(&b.0)),
                expected,
                "{input:?}"
            );
        }
    }
}
