//! Names of per-service chains and sets, in kube-proxy's readable style:
//! `service-ULMVA6XW-ns1/svc1/tcp/p80`, `endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80`.
//!
//! The hash prefix keeps names unique even when truncated and makes chains that differ
//! only in a digit easy to tell apart; the rest says what the chain is for. Names of a
//! service port depend only on that port (and endpoint), so a change to one service
//! never renames another's chains.

use sha2::{Digest, Sha256};

use crate::endpoints::Endpoint;
use crate::plan::ServicePortId;

/// nftables' limit on object names (NFT_NAME_MAXLEN - 1).
const NAME_MAX: usize = 255;
/// Longest prefix we put in front of a base (`affinity-`, `endpoint-`, ...).
const PREFIX_MAX: usize = 16;

pub fn service_chain(id: &ServicePortId) -> String {
    PortNames::new(id).service_chain()
}

pub fn local_chain(id: &ServicePortId) -> String {
    PortNames::new(id).local_chain()
}

pub fn external_chain(id: &ServicePortId) -> String {
    PortNames::new(id).external_chain()
}

pub fn firewall_chain(id: &ServicePortId) -> String {
    PortNames::new(id).firewall_chain()
}

pub fn endpoint_chain(id: &ServicePortId, endpoint: &Endpoint) -> String {
    EndpointNames::new(id, endpoint).chain
}

pub fn affinity_set(id: &ServicePortId, endpoint: &Endpoint) -> String {
    EndpointNames::new(id, endpoint).affinity_set
}

/// The names of one service port's chains, from one hash: a layout names each of them
/// several times (map elements, jumps, the chain itself).
pub struct PortNames {
    base: String,
}

impl PortNames {
    pub fn new(id: &ServicePortId) -> PortNames {
        PortNames {
            base: port_base(id),
        }
    }

    pub fn service_chain(&self) -> String {
        format!("service-{}", self.base)
    }

    pub fn local_chain(&self) -> String {
        format!("local-{}", self.base)
    }

    pub fn external_chain(&self) -> String {
        format!("external-{}", self.base)
    }

    pub fn firewall_chain(&self) -> String {
        format!("firewall-{}", self.base)
    }
}

/// The names of one endpoint's chain and affinity set, from one hash.
#[derive(Debug, Clone)]
pub struct EndpointNames {
    pub chain: String,
    pub affinity_set: String,
}

impl EndpointNames {
    pub fn new(id: &ServicePortId, endpoint: &Endpoint) -> EndpointNames {
        let base = endpoint_base(id, endpoint);
        EndpointNames {
            chain: format!("endpoint-{base}"),
            affinity_set: format!("affinity-{base}"),
        }
    }
}

/// Is this one of the per-service names (as opposed to the fixed skeleton)? Only
/// these contain a slash.
pub fn is_service_object(name: &str) -> bool {
    name.contains('/')
}

fn port_base(id: &ServicePortId) -> String {
    hash_and_truncate(&format!(
        "{}/{}/{}/{}",
        id.service.namespace,
        id.service.name,
        id.protocol.keyword(),
        id.port_name
    ))
}

fn endpoint_base(id: &ServicePortId, endpoint: &Endpoint) -> String {
    // Colons are not allowed in names: IPv6 addresses are written with dots.
    let ip = endpoint.ip.to_string().replace(':', ".");
    hash_and_truncate(&format!(
        "{}/{}/{}/{}__{}/{}",
        id.service.namespace,
        id.service.name,
        id.protocol.keyword(),
        id.port_name,
        ip,
        endpoint.port
    ))
}

fn hash_and_truncate(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let hash = data_encoding::BASE32.encode(&digest);
    let mut full = format!("{}-{}", &hash[..8], name);
    let max = NAME_MAX - PREFIX_MAX;
    if full.len() > max {
        // Names are ASCII (Kubernetes names, protocols, addresses), so byte
        // truncation is safe.
        full.truncate(max - 3);
        full.push_str("...");
    }
    full
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ServiceName;
    use crate::nft::ir::L4Proto;

    #[test]
    fn names_match_kube_proxy() {
        // The example from kube-proxy's own documentation of these names.
        let id = ServicePortId {
            service: ServiceName {
                namespace: "ns1".into(),
                name: "svc1".into(),
            },
            port_name: "p80".into(),
            protocol: L4Proto::Tcp,
        };
        assert_eq!(service_chain(&id), "service-ULMVA6XW-ns1/svc1/tcp/p80");
        let endpoint = Endpoint {
            ip: "10.180.0.1".parse().unwrap(),
            port: 80,
            node_name: None,
            is_local: false,
            ready: true,
            serving: true,
            terminating: false,
            zone_hints: Default::default(),
            node_hints: Default::default(),
        };
        assert_eq!(
            endpoint_chain(&id, &endpoint),
            "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
    }
}
