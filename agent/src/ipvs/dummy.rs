//! The dummy interface that holds IPVS mode's virtual addresses (`kube-ipvs0`), over
//! rtnetlink.
//!
//! IPVS only sees packets addressed to a local address, so every ClusterIP, externalIP
//! and LoadBalancer IP is bound to a dummy interface (as /32 or /128: the addresses
//! must not bring prefix routes along). The interface is svcproxy's alone: it is created
//! when missing and its addresses are made equal to the desired set; nothing else on
//! the host is touched. A link of that name that is not a dummy is refused rather than
//! taken over.
//!
//! The requests are few and small, so this speaks rtnetlink synchronously over a plain
//! netlink socket (`netlink-packet-route` messages) instead of bringing a tokio runtime
//! into one-shot commands. The socket acts in the network namespace of the thread that
//! opened it.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REQUEST, NetlinkBuffer,
    NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// `IFNAMSIZ` minus the terminating NUL.
const MAX_NAME_LEN: usize = 15;
const RECV_BUF_SIZE: usize = 64 * 1024;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("rtnetlink socket: {context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel refused a request.
    #[error("{op} failed: {} (errno {errno}){}",
        io::Error::from_raw_os_error(*errno),
        message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Kernel {
        op: String,
        errno: i32,
        message: Option<String>,
    },
    #[error("cannot decode the kernel's reply to {op}: {reason}")]
    Decode { op: String, reason: String },
    #[error(
        "cannot create dummy interface {name}: this kernel has no dummy link type (load it: modprobe dummy)"
    )]
    NoDummy { name: String },
    #[error(
        "{name} exists and is {kind}, not a dummy interface: svcproxy only manages a dummy interface of its own (pick another --ipvs-interface)"
    )]
    NotDummy { name: String, kind: String },
    #[error(
        "interface name {name:?} must be 1 to {MAX_NAME_LEN} bytes without '/', ':' or whitespace"
    )]
    BadName { name: String },
}

impl Error {
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// A link as far as svcproxy cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    /// `IFLA_INFO_KIND` (`dummy`, `veth`, ...); `None` for links without one (`lo`,
    /// physical NICs).
    pub kind: Option<String>,
    pub up: bool,
}

/// One address of an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct IfAddr {
    pub ip: IpAddr,
    pub prefix_len: u8,
}

/// What [`DummyInterface::sync_addresses`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AddressChanges {
    pub added: Vec<IpAddr>,
    pub removed: Vec<IpAddr>,
    /// Requests that failed; the others were still sent.
    pub failed: Vec<String>,
}

/// svcproxy's dummy interface and the addresses on it.
pub struct DummyInterface {
    rtnl: Rtnl,
    name: String,
    /// Known once the link exists.
    index: Option<u32>,
    /// The managed addresses on the link after our last change, when nothing failed
    /// since: lets a steady-state sync skip listing them.
    bound: Option<BTreeSet<IpAddr>>,
}

impl Debug for DummyInterface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DummyInterface")
            .field("name", &self.name)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl DummyInterface {
    /// Opens an rtnetlink socket in the calling thread's network namespace; does not
    /// touch the link yet.
    pub fn new(name: &str) -> Result<DummyInterface> {
        let bad = name.is_empty()
            || name.len() > MAX_NAME_LEN
            || name.contains(['/', ':'])
            || name.contains(char::is_whitespace);
        if bad {
            return Err(Error::BadName {
                name: name.to_string(),
            });
        }
        Ok(DummyInterface {
            rtnl: Rtnl::open()?,
            name: name.to_string(),
            index: None,
            bound: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates the interface if it is missing and brings it up (IPv6 addresses on a
    /// down link are not usable). Returns whether it was created.
    pub fn ensure(&mut self) -> Result<bool> {
        let (link, created) = match self.existing()? {
            Some(link) => (link, false),
            None => {
                self.rtnl.create_dummy(&self.name)?;
                self.bound = Some(BTreeSet::new());
                let link = self.existing()?.ok_or_else(|| Error::Decode {
                    op: format!("create {}", self.name),
                    reason: "the new link is not listed".to_string(),
                })?;
                (link, true)
            }
        };
        if !link.up {
            self.rtnl.set_up(link.index, &self.name)?;
        }
        self.index = Some(link.index);
        Ok(created)
    }

    /// The link, if it exists; refuses one that is not a dummy.
    fn existing(&mut self) -> Result<Option<Link>> {
        let Some(link) = self.rtnl.find_link(&self.name)? else {
            self.index = None;
            self.bound = None;
            return Ok(None);
        };
        if link.kind.as_deref() != Some("dummy") {
            return Err(Error::NotDummy {
                name: self.name.clone(),
                kind: link
                    .kind
                    .map_or("a device without a link kind".to_string(), |k| {
                        format!("a {k} link")
                    }),
            });
        }
        Ok(Some(link))
    }

    /// The addresses svcproxy manages on the interface (every one but IPv6 link-local
    /// addresses, which the kernel adds itself); empty when the interface does not exist.
    pub fn addresses(&mut self) -> Result<BTreeSet<IpAddr>> {
        let Some(link) = self.existing()? else {
            return Ok(BTreeSet::new());
        };
        self.index = Some(link.index);
        let addresses = self.managed(link.index)?;
        Ok(addresses.iter().map(|a| a.ip).collect())
    }

    fn managed(&mut self, index: u32) -> Result<Vec<IfAddr>> {
        let all = self.rtnl.addresses(index)?;
        Ok(all.into_iter().filter(|a| !is_link_local(a.ip)).collect())
    }

    /// Makes the managed addresses equal `desired`, creating the interface first if
    /// needed. With `full`, lists the link's addresses; otherwise trusts what the last
    /// successful sync left. Per-address failures are collected and the rest still
    /// sent; the next sync lists the addresses again.
    pub fn sync_addresses(
        &mut self,
        desired: &BTreeSet<IpAddr>,
        full: bool,
    ) -> Result<AddressChanges> {
        let index = match (self.index, full) {
            (Some(index), false) => index,
            _ => {
                if self.ensure()? {
                    tracing::info!("created dummy interface {}", self.name);
                }
                self.index.ok_or_else(|| Error::Decode {
                    op: format!("find {}", self.name),
                    reason: "no interface index".to_string(),
                })?
            }
        };
        let current: Vec<IfAddr> = match (&self.bound, full) {
            (Some(bound), false) => bound.iter().map(|ip| host_addr(*ip)).collect(),
            _ => self.managed(index)?,
        };
        // Compared as (address, prefix): a desired address bound with another prefix
        // length is replaced. Removals go first, as IPv6 refuses a second prefix of
        // the same address.
        let want: BTreeSet<IfAddr> = desired.iter().map(|ip| host_addr(*ip)).collect();
        let have: BTreeSet<IfAddr> = current.into_iter().collect();
        let mut changes = AddressChanges::default();
        for addr in have.difference(&want) {
            match self.rtnl.delete_address(index, addr, &self.name) {
                Ok(()) => changes.removed.push(addr.ip),
                // Gone already: someone removed it since we listed it.
                Err(e) if e.errno() == Some(libc::EADDRNOTAVAIL) => {}
                Err(e) => changes.failed.push(e.to_string()),
            }
        }
        for addr in want.difference(&have) {
            match self.rtnl.add_address(index, addr.ip, &self.name) {
                Ok(()) => changes.added.push(addr.ip),
                // There already: someone added it since we listed the addresses.
                Err(e) if e.errno() == Some(libc::EEXIST) => {}
                Err(e) => changes.failed.push(e.to_string()),
            }
        }
        self.bound = changes.failed.is_empty().then(|| desired.clone());
        Ok(changes)
    }

    /// Deletes the interface (its addresses go with it) if it exists. Returns how many
    /// managed addresses it held, or `None` when there was no interface.
    pub fn delete(&mut self) -> Result<Option<usize>> {
        let Some(link) = self.existing()? else {
            return Ok(None);
        };
        let addresses = self.managed(link.index)?.len();
        self.rtnl.delete_link(link.index, &self.name)?;
        self.index = None;
        self.bound = None;
        Ok(Some(addresses))
    }
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(_) => false,
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

/// The address as svcproxy binds it: a host prefix.
fn host_addr(ip: IpAddr) -> IfAddr {
    let prefix_len = match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    IfAddr { ip, prefix_len }
}

/// A synchronous rtnetlink socket.
struct Rtnl {
    socket: Socket,
    seq: u32,
    recv_buf: Vec<u8>,
}

impl Rtnl {
    fn open() -> Result<Rtnl> {
        let io = |context| move |source| Error::Io { context, source };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(io("open"))?;
        socket.bind_auto().map_err(io("bind"))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(io("connect"))?;
        // Best effort: readable error messages from the kernel, small acks.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        Ok(Rtnl {
            socket,
            seq: 0,
            recv_buf: Vec::with_capacity(RECV_BUF_SIZE),
        })
    }

    fn find_link(&mut self, name: &str) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        let op = format!("look up link {name}");
        let replies = match self.request(RouteNetlinkMessage::GetLink(msg), 0, &op) {
            Err(e) if e.errno() == Some(libc::ENODEV) => return Ok(None),
            other => other?,
        };
        let link = replies.into_iter().find_map(|reply| match reply {
            RouteNetlinkMessage::NewLink(link) => Some(link),
            _ => None,
        });
        let Some(link) = link else {
            return Err(Error::Decode {
                op,
                reason: "no RTM_NEWLINK in the reply".to_string(),
            });
        };
        let kind = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                LinkInfo::Kind(kind) => Some(kind.to_string()),
                _ => None,
            }),
            _ => None,
        });
        Ok(Some(Link {
            index: link.header.index,
            kind,
            up: link.header.flags.contains(LinkFlags::Up),
        }))
    }

    fn create_dummy(&mut self, name: &str) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Dummy,
            )]));
        let op = format!("create dummy interface {name}");
        match self.request(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &op,
        ) {
            // "Unknown device type": no dummy driver, built in or loadable.
            Err(e) if e.errno() == Some(libc::EOPNOTSUPP) => Err(Error::NoDummy {
                name: name.to_string(),
            }),
            other => other.map(drop),
        }
    }

    fn set_up(&mut self, index: u32, name: &str) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request(
            RouteNetlinkMessage::SetLink(msg),
            0,
            &format!("set {name} up"),
        )
        .map(drop)
    }

    fn delete_link(&mut self, index: u32, name: &str) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.request(
            RouteNetlinkMessage::DelLink(msg),
            0,
            &format!("delete {name}"),
        )
        .map(drop)
    }

    fn addresses(&mut self, index: u32) -> Result<Vec<IfAddr>> {
        let op = "list addresses".to_string();
        let replies = self.request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
            &op,
        )?;
        let mut out = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewAddress(addr) = reply else {
                continue;
            };
            if addr.header.index != index {
                continue;
            }
            // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on
            // point-to-point links); IPv6 sends only IFA_ADDRESS.
            let local = addr.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let address = addr.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = local.or(address) {
                out.push(IfAddr {
                    ip,
                    prefix_len: addr.header.prefix_len,
                });
            }
        }
        Ok(out)
    }

    fn add_address(&mut self, index: u32, ip: IpAddr, name: &str) -> Result<()> {
        let mut msg = address_message(index, host_addr(ip));
        if ip.is_ipv6() {
            // No duplicate address detection: the address is the node's own, on a
            // dummy interface, and must be usable at once.
            msg.header.flags = AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("add address {ip} to {name}"),
        )
        .map(drop)
    }

    fn delete_address(&mut self, index: u32, addr: &IfAddr, name: &str) -> Result<()> {
        self.request(
            RouteNetlinkMessage::DelAddress(address_message(index, *addr)),
            0,
            &format!("remove address {}/{} from {name}", addr.ip, addr.prefix_len),
        )
        .map(drop)
    }

    /// Sends one request and collects its replies: with `NLM_F_DUMP` until
    /// `NLMSG_DONE`, otherwise until the ack (every other request asks for one, so that
    /// success is confirmed rather than assumed).
    fn request(
        &mut self,
        payload: RouteNetlinkMessage,
        flags: u16,
        op: &str,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let io = |context| move |source| Error::Io { context, source };
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        self.seq = self.seq.wrapping_add(1).max(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
        header.sequence_number = seq;
        let mut request = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
        request.finalize();
        let mut buf = vec![0u8; request.buffer_len()];
        request.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(io("send"))?;

        let decode = |reason: String| Error::Decode {
            op: op.to_string(),
            reason,
        };
        let mut out = Vec::new();
        let mut interrupted = false;
        loop {
            self.recv_buf.clear();
            self.recv_buf.reserve(RECV_BUF_SIZE);
            let n = self
                .socket
                .recv(&mut self.recv_buf, libc::MSG_TRUNC)
                .map_err(io("receive"))?;
            if n > self.recv_buf.len() {
                return Err(decode(format!("reply of {n} bytes truncated")));
            }
            let mut offset = 0;
            while offset < n {
                let chunk = &self.recv_buf[offset..n];
                let nl = NetlinkBuffer::new_checked(chunk).map_err(|e| decode(e.to_string()))?;
                let len = nl.length() as usize;
                offset += (len + 3) & !3;
                if nl.sequence_number() != seq {
                    continue;
                }
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&chunk[..len])
                    .map_err(|e| decode(e.to_string()))?;
                interrupted |= msg.header.flags & NLM_F_DUMP_INTR != 0;
                match msg.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        None if !dump => return Ok(out),
                        None => {}
                        Some(code) => {
                            return Err(Error::Kernel {
                                op: op.to_string(),
                                errno: code.get().saturating_abs(),
                                message: None,
                            });
                        }
                    },
                    NetlinkPayload::Done(done) => {
                        if done.code < 0 {
                            return Err(Error::Kernel {
                                op: op.to_string(),
                                errno: done.code.saturating_abs(),
                                message: None,
                            });
                        }
                        if interrupted {
                            // The list changed while it was read: it may miss some.
                            return Err(Error::Kernel {
                                op: op.to_string(),
                                errno: libc::EINTR,
                                message: Some("dump interrupted by a concurrent change".into()),
                            });
                        }
                        return Ok(out);
                    }
                    NetlinkPayload::InnerMessage(inner) => out.push(inner),
                    _ => {}
                }
            }
        }
    }
}

fn address_message(index: u32, addr: IfAddr) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = match addr.ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    msg.header.prefix_len = addr.prefix_len;
    msg.header.scope = AddressScope::Universe;
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Local(addr.ip));
    msg.attributes.push(AddressAttribute::Address(addr.ip));
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_addresses_are_not_managed() {
        for (ip, link_local) in [
            ("fe80::1", true),
            ("febf::1", true),
            ("fec0::1", false),
            ("fd00:96::10", false),
            ("10.96.0.10", false),
            ("169.254.1.1", false),
        ] {
            let ip: IpAddr = ip.parse().expect("literal");
            assert_eq!(is_link_local(ip), link_local, "{ip}");
        }
    }

    #[test]
    fn interface_names_are_checked_before_any_request() {
        for bad in ["", "a-name-longer-than-15", "kube/ipvs", "a:b", "a b"] {
            assert!(
                matches!(DummyInterface::new(bad), Err(Error::BadName { .. })),
                "{bad:?}"
            );
        }
    }
}
