//! IPVS over generic netlink, in pure Rust.
//!
//! A small synchronous client for the kernel's "IPVS" generic netlink family: virtual
//! services, their destinations, global info and flush. It speaks the same protocol as
//! `ipvsadm` (libipvs) without shelling out to it.
//!
//! ```no_run
//! use svcproxy_agent::ipvs::{Client, Destination, Protocol, Service};
//! let mut ipvs = Client::new()?;
//! let svc = Service::new(Protocol::Tcp, "10.96.0.10".parse().unwrap(), 80).scheduler("rr");
//! ipvs.new_service(&svc)?;
//! ipvs.new_destination(&svc.key(), &Destination::new("10.244.0.2".parse().unwrap(), 8080, 1))?;
//! for svc in ipvs.dump_services()? {
//!     println!("{} {:?}", svc.key(), ipvs.dump_destinations(&svc.key())?);
//! }
//! # Ok::<(), svcproxy_agent::ipvs::Error>(())
//! ```
//!
//! Kernel behaviour worth knowing (6.1):
//! - IPVS state is per network namespace; the socket acts in the namespace of the thread that
//!   created the [`Client`].
//! - Errors: adding an existing service or destination is EEXIST; a missing service is ESRCH,
//!   a missing destination ENOENT, an unknown scheduler ENOENT (after the kernel failed to
//!   autoload `ip_vs_<name>`). All commands need CAP_NET_ADMIN (EPERM otherwise).
//! - Dumping the destinations of a service that does not exist returns an empty list, not
//!   an error; use [`Client::get_service`] to tell the two apart.
//! - What we send dumps back unchanged (service flags minus the kernel's HASHED bit, which
//!   the decoder strips): direct-routing destinations keep the port sent, NAT destinations
//!   on local addresses stay `Masq`. So desired and dumped state compare with `==`.

pub mod cmd;
pub mod dummy;
mod error;
pub mod message;
pub mod pipeline;
pub mod sync;
pub mod sysctl;
mod types;

use std::fmt::Debug;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_packet_core::{
    Emitable, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, NlasIterator, ParseableParametrized, parse_string,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};

pub use error::{Error, Operation, Result, Target};
pub use types::{
    Destination, Family, ForwardMethod, Info, Protocol, Service, ServiceFlags, ServiceKey, Version,
};

use message::{Attrs, CmdAttr, Command, IpvsMessage};

/// Replies larger than this cannot happen: the kernel caps a netlink dump skb at 32 KiB and
/// single replies are far smaller. Receiving with MSG_TRUNC still detects a truncation.
const RECV_BUF_SIZE: usize = 64 * 1024;

/// Replies to generic netlink requests are queued before `send` returns, so waiting longer
/// than this means something is badly wrong; better an error than a hung agent.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

// Flags of the NLMSG_ERROR header itself (include/uapi/linux/netlink.h).
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSG_HDRLEN: usize = 16;

/// A connection to the kernel's IPVS generic netlink family.
pub struct Client {
    socket: Socket,
    family_id: u16,
    seq: u32,
    recv_buf: Vec<u8>,
}

impl Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("family_id", &self.family_id)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Opens a generic netlink socket and resolves the "IPVS" family id (once).
    ///
    /// Fails with [`Error::FamilyNotFound`] when the `ip_vs` module is not loaded: the kernel
    /// does not autoload it for generic netlink lookups.
    pub fn new() -> Result<Client> {
        let op = Operation::ResolveFamily;
        let io_err = |source| Error::Io {
            op,
            target: Target::default(),
            source,
        };
        let mut socket = Socket::new(NETLINK_GENERIC).map_err(io_err)?;
        socket.bind_auto().map_err(io_err)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(io_err)?;
        // Best effort: extended acks give readable messages for policy violations, capped acks
        // keep error replies small. Old kernels without them still work.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        let mut client = Client {
            socket,
            family_id: 0,
            seq: 0,
            recv_buf: Vec::with_capacity(RECV_BUF_SIZE),
        };
        client.set_timeout(DEFAULT_TIMEOUT).map_err(io_err)?;
        client.family_id = client.resolve_family()?;
        Ok(client)
    }

    /// The dynamically assigned generic netlink id of "IPVS".
    pub fn family_id(&self) -> u16 {
        self.family_id
    }

    /// Sets how long to wait for a kernel reply before failing with a timeout.
    pub fn set_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: timeout.as_secs().try_into().unwrap_or(libc::time_t::MAX),
            tv_usec: timeout.subsec_micros().into(),
        };
        // SAFETY: setsockopt reads `size_of::<timeval>()` bytes from a valid, live timeval.
        let rc = unsafe {
            libc::setsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn resolve_family(&mut self) -> Result<u16> {
        let op = Operation::ResolveFamily;
        let target = Target::default();
        let request = GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(
                message::IPVS_GENL_NAME.to_string(),
            )],
        };
        let replies = match self.transact(request, false, op, &target) {
            Err(e) if e.errno() == Some(libc::ENOENT) => return Err(Error::FamilyNotFound),
            other => other?,
        };
        replies
            .iter()
            .flat_map(|r| r.nlas.iter())
            .find_map(|a| match a {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            })
            .ok_or_else(|| Error::Decode {
                op,
                target,
                reason: "CTRL_CMD_GETFAMILY reply without CTRL_ATTR_FAMILY_ID".to_string(),
            })
    }

    /// Global IPVS information (version, connection table size).
    pub fn info(&mut self) -> Result<Info> {
        let op = Operation::GetInfo;
        let target = Target::default();
        let replies = self.transact(
            IpvsMessage::new(Command::GetInfo, vec![]),
            false,
            op,
            &target,
        )?;
        let attrs = replies
            .iter()
            .find_map(|m| match &m.attrs {
                Attrs::Info(a) => Some(a),
                Attrs::Cmd(_) => None,
            })
            .ok_or_else(|| decode_error(op, &target, "no IPVS_CMD_SET_INFO reply"))?;
        message::parse_info(attrs).map_err(|e| decode_error(op, &target, e))
    }

    /// Adds a virtual service (`ipvsadm -A`). EEXIST if it exists.
    pub fn new_service(&mut self, svc: &Service) -> Result<()> {
        self.write_service(Command::NewService, Operation::NewService, svc)
    }

    /// Replaces the scheduler, flags, timeout and netmask of an existing service
    /// (`ipvsadm -E`). ESRCH if it does not exist.
    pub fn set_service(&mut self, svc: &Service) -> Result<()> {
        self.write_service(Command::SetService, Operation::SetService, svc)
    }

    fn write_service(&mut self, cmd: Command, op: Operation, svc: &Service) -> Result<()> {
        let target = Target {
            service: Some(svc.key()),
            dest: None,
        };
        validate_service(svc).map_err(|reason| Error::Invalid {
            op,
            target: target.clone(),
            reason,
        })?;
        let msg = IpvsMessage::new(cmd, vec![CmdAttr::Service(message::service_attrs(svc))]);
        self.transact(msg, false, op, &target).map(drop)
    }

    /// Deletes a virtual service and its destinations (`ipvsadm -D`). ESRCH if missing.
    pub fn del_service(&mut self, key: &ServiceKey) -> Result<()> {
        let op = Operation::DelService;
        let target = service_target(key);
        let msg = IpvsMessage::new(
            Command::DelService,
            vec![CmdAttr::Service(message::service_key_attrs(key))],
        );
        self.transact(msg, false, op, &target).map(drop)
    }

    /// Looks one service up; `None` if the kernel does not know it.
    pub fn get_service(&mut self, key: &ServiceKey) -> Result<Option<Service>> {
        let op = Operation::GetService;
        let target = service_target(key);
        let msg = IpvsMessage::new(
            Command::GetService,
            vec![CmdAttr::Service(message::service_key_attrs(key))],
        );
        let replies = match self.transact(msg, false, op, &target) {
            Err(e) if e.errno() == Some(libc::ESRCH) => return Ok(None),
            other => other?,
        };
        match replies.iter().find_map(IpvsMessage::service_attrs) {
            Some(attrs) => message::parse_service(attrs)
                .map(Some)
                .map_err(|e| decode_error(op, &target, e)),
            None => Err(decode_error(op, &target, "reply without a service")),
        }
    }

    /// All virtual services of this network namespace.
    pub fn dump_services(&mut self) -> Result<Vec<Service>> {
        let op = Operation::DumpServices;
        let target = Target::default();
        // The kernel's dumpit ignores attributes here; like libipvs we send an empty nested
        // service attribute, which every kernel version accepts.
        let msg = IpvsMessage::new(Command::GetService, vec![CmdAttr::Service(vec![])]);
        let replies = self.transact(msg, true, op, &target)?;
        replies
            .iter()
            .filter_map(IpvsMessage::service_attrs)
            .map(|attrs| message::parse_service(attrs).map_err(|e| decode_error(op, &target, e)))
            .collect()
    }

    /// Adds a destination to a service (`ipvsadm -a`). EEXIST if it exists, ESRCH if the
    /// service does not.
    pub fn new_destination(&mut self, svc: &ServiceKey, dest: &Destination) -> Result<()> {
        self.write_dest(Command::NewDest, Operation::NewDest, svc, dest)
    }

    /// Changes weight, forwarding method and thresholds of a destination (`ipvsadm -e`).
    /// ENOENT if the destination does not exist.
    pub fn set_destination(&mut self, svc: &ServiceKey, dest: &Destination) -> Result<()> {
        self.write_dest(Command::SetDest, Operation::SetDest, svc, dest)
    }

    fn write_dest(
        &mut self,
        cmd: Command,
        op: Operation,
        svc: &ServiceKey,
        dest: &Destination,
    ) -> Result<()> {
        let target = Target {
            service: Some(*svc),
            dest: Some((dest.addr, dest.port)),
        };
        if i32::try_from(dest.weight).is_err() {
            return Err(Error::Invalid {
                op,
                target,
                reason: format!("weight {} exceeds i32::MAX", dest.weight),
            });
        }
        let msg = IpvsMessage::new(
            cmd,
            vec![
                CmdAttr::Service(message::service_key_attrs(svc)),
                CmdAttr::Dest(message::dest_attrs(dest)),
            ],
        );
        self.transact(msg, false, op, &target).map(drop)
    }

    /// Removes a destination from a service (`ipvsadm -d`). ENOENT if missing.
    pub fn del_destination(&mut self, svc: &ServiceKey, addr: IpAddr, port: u16) -> Result<()> {
        let op = Operation::DelDest;
        let target = Target {
            service: Some(*svc),
            dest: Some((addr, port)),
        };
        let msg = IpvsMessage::new(
            Command::DelDest,
            vec![
                CmdAttr::Service(message::service_key_attrs(svc)),
                CmdAttr::Dest(message::dest_key_attrs(&addr, port)),
            ],
        );
        self.transact(msg, false, op, &target).map(drop)
    }

    /// The destinations of a service, with their connection counters. Empty (not an error)
    /// when the service does not exist.
    pub fn dump_destinations(&mut self, svc: &ServiceKey) -> Result<Vec<Destination>> {
        let op = Operation::DumpDests;
        let target = service_target(svc);
        // Unlike the service dump, the kernel needs the service attribute to know whose
        // destinations to dump.
        let msg = IpvsMessage::new(
            Command::GetDest,
            vec![CmdAttr::Service(message::service_key_attrs(svc))],
        );
        let replies = self.transact(msg, true, op, &target)?;
        replies
            .iter()
            .filter_map(IpvsMessage::dest_attrs)
            .map(|attrs| {
                message::parse_dest(attrs, svc.family()).map_err(|e| decode_error(op, &target, e))
            })
            .collect()
    }

    /// Deletes every service and destination of this network namespace (`ipvsadm -C`).
    pub fn flush(&mut self) -> Result<()> {
        let msg = IpvsMessage::new(Command::Flush, vec![]);
        self.transact(msg, false, Operation::Flush, &Target::default())
            .map(drop)
    }

    /// Sends one request and collects the payloads of its replies.
    ///
    /// Non-dump requests carry NLM_F_ACK so that success is confirmed too (a missing error
    /// is not proof of success); dumps end with NLMSG_DONE. Replies are matched by sequence
    /// number so that leftovers of an earlier, failed exchange are skipped.
    fn transact<T>(
        &mut self,
        payload: T,
        dump: bool,
        op: Operation,
        target: &Target,
    ) -> Result<Vec<T>>
    where
        T: GenlFamily + Emitable + ParseableParametrized<[u8], GenlHeader> + Debug,
    {
        let io_err = |source| Error::Io {
            op,
            target: target.clone(),
            source,
        };
        self.seq = self.seq.wrapping_add(1).max(1);
        let seq = self.seq;

        let mut genl = GenlMessage::from_payload(payload);
        // Ignored by families with a static id (nlctrl).
        genl.set_resolved_family_id(self.family_id);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
        header.sequence_number = seq;
        let mut request = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(genl));
        request.finalize();
        let mut buf = vec![0u8; request.buffer_len()];
        request.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(io_err)?;

        let mut out = Vec::new();
        // A decode failure in the middle of a dump must not leave the dump half-read: the
        // kernel would answer the next dump on this socket with EBUSY. Keep reading to the
        // end and report the first failure then.
        let mut failure: Option<Error> = None;
        loop {
            self.recv_buf.clear();
            self.recv_buf.reserve(RECV_BUF_SIZE);
            let n = self
                .socket
                .recv(&mut self.recv_buf, libc::MSG_TRUNC)
                .map_err(|e| {
                    if e.kind() == io::ErrorKind::WouldBlock {
                        io_err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "timed out waiting for the kernel's reply",
                        ))
                    } else {
                        io_err(e)
                    }
                })?;
            if n > self.recv_buf.len() {
                return Err(io_err(io::Error::other(format!(
                    "reply of {n} bytes truncated to {}",
                    self.recv_buf.len()
                ))));
            }
            let mut offset = 0;
            while offset < n {
                let chunk = &self.recv_buf[offset..n];
                let nl =
                    NetlinkBuffer::new_checked(chunk).map_err(|e| decode_error(op, target, e))?;
                let len = nl.length() as usize;
                offset += (len + 3) & !3;
                if nl.sequence_number() != seq {
                    continue;
                }
                let msg = match NetlinkMessage::<GenlMessage<T>>::deserialize(&chunk[..len]) {
                    Ok(msg) => msg,
                    Err(e) => {
                        // Keep reading: the ack (or NLMSG_DONE) still follows.
                        failure.get_or_insert(decode_error(op, target, e));
                        continue;
                    }
                };
                let flags = msg.header.flags;
                match msg.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        None => {
                            if !dump {
                                return failure.map_or(Ok(out), Err);
                            }
                        }
                        Some(code) => {
                            return Err(Error::Kernel {
                                op,
                                target: target.clone(),
                                errno: code.get().saturating_abs(),
                                message: ext_ack_message(flags, &e.header),
                            });
                        }
                    },
                    NetlinkPayload::Done(done) => {
                        if done.code < 0 {
                            return Err(Error::Kernel {
                                op,
                                target: target.clone(),
                                errno: done.code.saturating_abs(),
                                message: None,
                            });
                        }
                        return failure.map_or(Ok(out), Err);
                    }
                    NetlinkPayload::InnerMessage(genl) => {
                        // IPVS does not track dump consistency today; if a kernel ever flags
                        // an interrupted dump, a partial list must not pass for the table.
                        if flags & NLM_F_DUMP_INTR != 0 {
                            failure.get_or_insert(Error::Kernel {
                                op,
                                target: target.clone(),
                                errno: libc::EINTR,
                                message: Some("dump interrupted by a concurrent change".into()),
                            });
                        }
                        out.push(genl.payload);
                    }
                    NetlinkPayload::Overrun(_) => {
                        return Err(io_err(io::Error::other("netlink overrun")));
                    }
                    _ => {}
                }
            }
        }
    }
}

fn service_target(key: &ServiceKey) -> Target {
    Target {
        service: Some(*key),
        dest: None,
    }
}

fn decode_error(op: Operation, target: &Target, reason: impl ToString) -> Error {
    Error::Decode {
        op,
        target: target.clone(),
        reason: reason.to_string(),
    }
}

/// The human-readable message of an extended ack (`NLMSGERR_ATTR_MSG`), if any. The TLVs
/// follow the echoed request, which is only its header when the ack is capped.
fn ext_ack_message(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        let len = payload.get(..4)?;
        u32::from_ne_bytes(len.try_into().ok()?) as usize
    };
    let tlvs = payload.get((echoed + 3) & !3..)?;
    NlasIterator::new(tlvs).find_map(|nla| {
        let nla = nla.ok()?;
        (nla.kind() == NLMSGERR_ATTR_MSG)
            .then(|| parse_string(nla.value()).ok())
            .flatten()
    })
}

/// Checks what the kernel would reject with a bare EINVAL, to give a better message.
fn validate_service(svc: &Service) -> Result<(), String> {
    let sched = &svc.scheduler;
    if sched.is_empty() || sched.len() > message::SCHED_NAME_MAX || sched.contains('\0') {
        return Err(format!(
            "scheduler name {sched:?} must be 1..={} bytes without NUL",
            message::SCHED_NAME_MAX
        ));
    }
    match svc.fwmark {
        Some(0) => return Err("fwmark 0 means \"no fwmark\" to the kernel".to_string()),
        Some(_) => {}
        None => {
            if Family::of(&svc.addr) != svc.family {
                return Err(format!(
                    "address {} is not of family {}",
                    svc.addr, svc.family
                ));
            }
        }
    }
    let max = svc.family.max_prefix();
    if svc.netmask > max || (svc.family == Family::Inet6 && svc.netmask == 0) {
        return Err(format!(
            "netmask /{} out of range for {}",
            svc.netmask, svc.family
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_catches_what_the_kernel_would_reject_silently() {
        let ok = Service::new(Protocol::Tcp, "10.0.0.1".parse().unwrap(), 80);
        assert!(validate_service(&ok).is_ok());
        assert!(validate_service(&ok.clone().scheduler("")).is_err());
        assert!(validate_service(&ok.clone().scheduler("a-very-long-scheduler")).is_err());
        let mut wrong_family = ok.clone();
        wrong_family.family = Family::Inet6;
        assert!(validate_service(&wrong_family).is_err());
        assert!(validate_service(&Service::with_fwmark(Family::Inet, 0)).is_err());
        let mut v6 = Service::new(Protocol::Udp, "fd00::1".parse().unwrap(), 53);
        v6.netmask = 0;
        assert!(validate_service(&v6).is_err());
        v6.netmask = 64;
        assert!(validate_service(&v6).is_ok());
    }

    #[test]
    fn ext_ack_message_is_found_after_a_capped_header() {
        let mut payload = vec![0u8; NLMSG_HDRLEN];
        payload[..4].copy_from_slice(&100u32.to_ne_bytes()); // original length, capped away
        let text = b"Attribute failed policy validation\0";
        let nla_len = 4 + text.len();
        payload.extend_from_slice(&(nla_len as u16).to_ne_bytes());
        payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend_from_slice(text);
        payload.resize((payload.len() + 3) & !3, 0);
        assert_eq!(
            ext_ack_message(NLM_F_CAPPED | NLM_F_ACK_TLVS, &payload).as_deref(),
            Some("Attribute failed policy validation")
        );
        assert_eq!(ext_ack_message(NLM_F_CAPPED, &payload), None);
        assert_eq!(ext_ack_message(NLM_F_ACK_TLVS, &payload[..3]), None);
    }

    #[test]
    fn errors_name_operation_target_and_errno() {
        let e = Error::Kernel {
            op: Operation::NewService,
            target: Target {
                service: Some(ServiceKey::Addr {
                    protocol: Protocol::Tcp,
                    addr: "10.96.0.10".parse().unwrap(),
                    port: 80,
                }),
                dest: None,
            },
            errno: libc::EEXIST,
            message: None,
        };
        let text = e.to_string();
        assert!(text.contains("add service TCP 10.96.0.10:80"), "{text}");
        assert!(text.contains("errno 17"), "{text}");
        assert!(e.is_exists());
    }
}
