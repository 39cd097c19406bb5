//! The IPVS table as the syncer reasons about it: virtual servers by key, each with
//! its destinations by address and port. The same shape holds what the compiler wants
//! ([`desired`]) and what the kernel has (a dump), so the two compare field by field.

use std::collections::BTreeMap;
use std::net::IpAddr;

use svcproxy_compiler::ipvs::{Forward, IpvsState, VirtualServer as CompiledServer};
use svcproxy_compiler::nft::ir::L4Proto;

use crate::ipvs::{Destination, ForwardMethod, Protocol, Service, ServiceFlags, ServiceKey};

/// A destination's identity within its virtual server.
pub type DestKey = (IpAddr, u16);

/// One virtual server and its real servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualServer {
    pub service: Service,
    pub destinations: BTreeMap<DestKey, Destination>,
}

/// Virtual servers by key.
pub type Table = BTreeMap<ServiceKey, VirtualServer>;

/// The kernel objects for the compiler's state.
pub fn desired(state: &IpvsState) -> Table {
    state
        .virtual_servers
        .iter()
        .map(|vs| {
            let service = service(vs);
            let destinations = vs
                .real_servers
                .iter()
                .map(|rs| {
                    let mut dest = Destination::new(rs.address, rs.port, rs.weight);
                    dest.forward = match rs.forward {
                        Forward::Masquerade => ForwardMethod::Masq,
                    };
                    ((rs.address, rs.port), dest)
                })
                .collect();
            (
                service.key(),
                VirtualServer {
                    service,
                    destinations,
                },
            )
        })
        .collect()
}

fn service(vs: &CompiledServer) -> Service {
    let protocol = match vs.protocol {
        L4Proto::Tcp => Protocol::Tcp,
        L4Proto::Udp => Protocol::Udp,
        L4Proto::Sctp => Protocol::Sctp,
    };
    let mut service = Service::new(protocol, vs.address, vs.port).scheduler(vs.scheduler.name());
    if let Some(p) = vs.persistence {
        service.flags |= ServiceFlags::PERSISTENT;
        service.timeout = p.timeout_secs;
        service.netmask = p.netmask;
    }
    service
}

/// The key's protocol, for address-based services (svcproxy makes no others).
pub fn protocol(key: &ServiceKey) -> Option<Protocol> {
    match key {
        ServiceKey::Addr { protocol, .. } => Some(*protocol),
        ServiceKey::Fwmark { .. } => None,
    }
}

/// The key's address, for address-based services.
pub fn address(key: &ServiceKey) -> Option<IpAddr> {
    match key {
        ServiceKey::Addr { addr, .. } => Some(*addr),
        ServiceKey::Fwmark { .. } => None,
    }
}
