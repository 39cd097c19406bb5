//! Endpoint resolution: which addresses back one port of one Service, in one family.
//!
//! Sources, in order of preference (the first that exists for the Service wins):
//! 1. EndpointSlices labelled with the Service's name (what kube-proxy reads);
//! 2. a legacy Endpoints object of the same name;
//! 3. the Service's selector applied to the snapshot's Pods, the way the endpoints
//!    controller would build the slices (snapshots taken without slices).

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::model::{EndpointGroup, PodSpec, ServicePortSpec, ServiceSpec, Snapshot, TargetPort};
use crate::nft::ir::Family;
use crate::node::NodeContext;

/// One backend of a service port. Plain data but for the rare hints: the plan copies
/// each endpoint into every pool of every port, hundreds of thousands of copies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    /// On this node (`nodeName` equals `--node-name`).
    pub is_local: bool,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// Topology hints, shared with the model; `None` (most endpoints) when there are
    /// none, so that a copy touches no reference count.
    pub hints: Option<Arc<Hints>>,
}

/// The topology hints of an EndpointSlice endpoint (`hints.forZones`, `hints.forNodes`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hints {
    pub zones: BTreeSet<String>,
    pub nodes: BTreeSet<String>,
}

impl Hints {
    /// Shared hints, or `None` when there are none.
    pub fn shared(zones: BTreeSet<String>, nodes: BTreeSet<String>) -> Option<Arc<Hints>> {
        (!zones.is_empty() || !nodes.is_empty()).then(|| Arc::new(Hints { zones, nodes }))
    }
}

static NO_HINTS: BTreeSet<String> = BTreeSet::new();

impl Endpoint {
    pub fn zone_hints(&self) -> &BTreeSet<String> {
        self.hints.as_deref().map_or(&NO_HINTS, |h| &h.zones)
    }

    pub fn node_hints(&self) -> &BTreeSet<String> {
        self.hints.as_deref().map_or(&NO_HINTS, |h| &h.nodes)
    }

    /// Usable as a fallback when nothing is ready: still serving, but going away.
    pub fn is_serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }

    /// Preference when one address appears twice: ready, then serving-terminating.
    fn rank(&self) -> u8 {
        if self.ready {
            2
        } else if self.is_serving_terminating() {
            1
        } else {
            0
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}", self.port),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}", self.port),
        }
    }
}

/// Where a Service's endpoints came from (for `explain` and diagnostics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointSource {
    EndpointSlices,
    Endpoints,
    Pods,
    None,
}

/// All endpoints of one service port in one family, sorted by address and port, with
/// duplicates (the same address in two slices) merged.
pub fn resolve(
    snapshot: &Snapshot,
    service: &ServiceSpec,
    port: &ServicePortSpec,
    family: Family,
    node: &NodeContext,
) -> (Vec<Endpoint>, EndpointSource) {
    let mut found: Vec<Endpoint> = Vec::new();
    let source = if let Some(groups) = snapshot.slices.get(&service.name) {
        from_groups(groups, port, family, node, &mut found);
        EndpointSource::EndpointSlices
    } else if let Some(groups) = snapshot.endpoints.get(&service.name) {
        from_groups(groups, port, family, node, &mut found);
        EndpointSource::Endpoints
    } else if let Some(selector) = &service.selector {
        let pods = snapshot.pods.get(&service.name.namespace);
        for pod in pods.into_iter().flatten() {
            if selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v)) {
                from_pod(pod, service, port, family, node, &mut found);
            }
        }
        EndpointSource::Pods
    } else {
        EndpointSource::None
    };

    // A slice usually lists its endpoints in order already: then this is one pass.
    if !found.is_sorted_by_key(|e| (e.ip, e.port)) {
        found.sort_by_key(|e| (e.ip, e.port));
    }
    // Merge duplicates, keeping the most usable copy (the first one on a tie), in
    // place: `later` is dropped, `kept` stays.
    found.dedup_by(|later, kept| {
        let same = later.ip == kept.ip && later.port == kept.port;
        if same && later.rank() > kept.rank() {
            std::mem::swap(later, kept);
        }
        same
    });
    (found, source)
}

fn from_groups(
    groups: &[EndpointGroup],
    port: &ServicePortSpec,
    family: Family,
    node: &NodeContext,
    found: &mut Vec<Endpoint>,
) {
    for group in groups {
        // Service ports and endpoint ports are matched by name and protocol.
        let Some(number) = group
            .ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol)
            .map(|p| p.port)
        else {
            continue;
        };
        found.reserve(group.endpoints.len());
        for endpoint in group
            .endpoints
            .iter()
            .filter(|e| Family::of(&e.ip) == family)
        {
            found.push(Endpoint {
                ip: endpoint.ip,
                port: number,
                is_local: node.is_local_node(endpoint.node_name.as_deref()),
                ready: endpoint.ready,
                serving: endpoint.serving,
                terminating: endpoint.terminating,
                hints: endpoint.hints.clone(),
            });
        }
    }
}

fn from_pod(
    pod: &PodSpec,
    service: &ServiceSpec,
    port: &ServicePortSpec,
    family: Family,
    node: &NodeContext,
    found: &mut Vec<Endpoint>,
) {
    let number = match &port.target_port {
        TargetPort::Number(n) => *n,
        TargetPort::Name(name) => {
            let named = pod
                .container_ports
                .iter()
                .find(|c| c.name.as_deref() == Some(name) && c.protocol == port.protocol);
            match named {
                Some(c) => c.port,
                // This Pod does not expose the named port: it is not an endpoint of it.
                None => return,
            }
        }
    };
    // The endpoints controller's rules: publishNotReadyAddresses makes every Pod
    // ready; a Pod being deleted is terminating and no longer ready.
    let ready = (pod.ready || service.publish_not_ready_addresses) && !pod.terminating;
    let serving = pod.ready || service.publish_not_ready_addresses;
    for ip in pod.ips.iter().filter(|ip| Family::of(ip) == family) {
        found.push(Endpoint {
            ip: *ip,
            port: number,
            is_local: node.is_local_node(pod.node_name.as_deref()),
            ready,
            serving,
            terminating: pod.terminating,
            hints: None,
        });
    }
}
