//! Names of per-service chains and maps, in kube-proxy's readable style:
//! `service-ULMVA6XW-ns1/svc1/tcp/p80`, `affinity-ULMVA6XW-ns1/svc1/tcp/p80`.
//!
//! The hash prefix keeps names unique even when truncated and makes chains that differ
//! only in a digit easy to tell apart; the rest says what the chain is for. Names of a
//! service port depend only on that port, so a change to one service never renames
//! another's chains, and an endpoint change renames nothing.

use sha2::{Digest, Sha256};

use crate::plan::{Pool, ServicePortId};

/// nftables' limit on object names (NFT_NAME_MAXLEN - 1).
const NAME_MAX: usize = 255;
/// Longest prefix we put in front of a base (`affinity-lport-`, `service-`, ...).
const PREFIX_MAX: usize = 16;

pub fn service_chain(id: &ServicePortId) -> String {
    PortNames::new(id).service_chain()
}

pub fn local_chain(id: &ServicePortId) -> String {
    PortNames::new(id).local_chain()
}

pub fn firewall_chain(id: &ServicePortId) -> String {
    PortNames::new(id).firewall_chain()
}

/// The ClientIP-affinity map of one pool of a service port: client address to the
/// endpoint it was sent to (`address . port`; IPv6: the address, the port being in
/// [`affinity_port_map`]). Each pool has its own: a client recorded on a remote
/// endpoint by the Cluster pool must not be sent there by the Local pool.
pub fn affinity_map(id: &ServicePortId, pool: Pool) -> String {
    PortNames::new(id).affinity_map(pool)
}

/// IPv6 only: client address to the port of its endpoint (see [`affinity_map`]).
pub fn affinity_port_map(id: &ServicePortId, pool: Pool) -> String {
    PortNames::new(id).affinity_port_map(pool)
}

/// The names of one service port's chains and maps, from one hash: a layout names
/// each of them several times (map elements, jumps, the chain itself).
pub struct PortNames {
    base: String,
}

impl PortNames {
    pub fn new(id: &ServicePortId) -> PortNames {
        PortNames {
            base: port_base(id),
        }
    }

    /// ClientIP affinity: sends a known client of the Cluster pool to its endpoint.
    pub fn service_chain(&self) -> String {
        format!("service-{}", self.base)
    }

    /// ClientIP affinity: the same for the Local pool.
    pub fn local_chain(&self) -> String {
        format!("local-{}", self.base)
    }

    pub fn firewall_chain(&self) -> String {
        format!("firewall-{}", self.base)
    }

    /// ClientIP affinity: writes the endpoint of a ClusterIP connection into its
    /// pool's map.
    pub fn record_chain(&self) -> String {
        format!("record-{}", self.base)
    }

    /// ClientIP affinity: the same for external traffic, when its pool differs.
    pub fn external_record_chain(&self) -> String {
        format!("record-external-{}", self.base)
    }

    /// See [`affinity_map`].
    pub fn affinity_map(&self, pool: Pool) -> String {
        match pool {
            Pool::Cluster => format!("affinity-{}", self.base),
            Pool::Local => format!("affinity-local-{}", self.base),
        }
    }

    /// See [`affinity_port_map`].
    pub fn affinity_port_map(&self, pool: Pool) -> String {
        match pool {
            Pool::Cluster => format!("affinity-port-{}", self.base),
            Pool::Local => format!("affinity-lport-{}", self.base),
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
        assert_eq!(
            affinity_map(&id, Pool::Local),
            "affinity-local-ULMVA6XW-ns1/svc1/tcp/p80"
        );
        // Every prefix fits the room kept for it.
        assert!("affinity-lport-".len() <= PREFIX_MAX);
    }
}
