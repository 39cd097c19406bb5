//! Many IPVS writes in few system calls: requests are packed into one datagram (the
//! kernel's generic netlink receive loop runs every message of a datagram in turn,
//! `netlink_rcv_skb`), and their acks are read back in bulk. The same requests as
//! [`Client::new_service`] and [`Client::new_destination`], without one round trip
//! each: what makes a cold start of 10,000 virtual servers fast, above all under
//! user-mode-linux, where every system call of the guest is expensive.

use std::os::fd::AsRawFd;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_generic::GenlMessage;

use super::message::{self, CmdAttr, Command, IpvsMessage};
use super::{Client, Destination, Error, Operation, Result, Service, ServiceKey, Target};

/// Requests per datagram: their acks (one small skb each) must fit the receive buffer.
const PER_DATAGRAM: usize = 512;
const RCVBUF: libc::c_int = 8 << 20;
const NLMSG_ERROR: u16 = 2;

/// One write.
#[derive(Debug, Clone)]
pub enum Write<'a> {
    NewService(&'a Service),
    NewDest(ServiceKey, &'a Destination),
}

impl Client {
    /// Sends `writes` in order, [`PER_DATAGRAM`] per system call, and checks every ack.
    /// Stops at the first datagram with a refused request and reports the first
    /// refusal (the requests before it in that datagram, and every earlier datagram,
    /// are applied: IPVS has no transactions).
    pub fn write_pipelined(&mut self, writes: &[Write<'_>]) -> Result<usize> {
        let io_err = |op, source| Error::Io {
            op,
            target: Target::default(),
            source,
        };
        let fd = self.socket.as_raw_fd();
        // SAFETY: setsockopt with a live c_int of the size passed.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&RCVBUF as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        let mut buf = Vec::with_capacity(PER_DATAGRAM * 128);
        for chunk in writes.chunks(PER_DATAGRAM) {
            buf.clear();
            let first = self.seq.wrapping_add(1);
            for write in chunk {
                self.seq = self.seq.wrapping_add(1).max(1);
                encode(write, self.family_id, self.seq, &mut buf);
            }
            self.socket
                .send(&buf, 0)
                .map_err(|e| io_err(Operation::NewService, e))?;
            self.read_acks(first, chunk)?;
        }
        Ok(writes.len())
    }

    fn read_acks(&mut self, first: u32, chunk: &[Write<'_>]) -> Result<()> {
        let mut pending = chunk.len();
        let mut refused: Option<Error> = None;
        while pending > 0 {
            self.recv_buf.clear();
            self.recv_buf.reserve(super::RECV_BUF_SIZE);
            let n = self
                .socket
                .recv(&mut self.recv_buf, 0)
                .map_err(|e| Error::Io {
                    op: Operation::NewService,
                    target: Target::default(),
                    source: e,
                })?;
            let mut offset = 0;
            while offset < n {
                let Ok(nl) = NetlinkBuffer::new_checked(&self.recv_buf[offset..n]) else {
                    break;
                };
                let len = nl.length() as usize;
                let (kind, seq) = (nl.message_type(), nl.sequence_number());
                let payload = nl.payload();
                offset += (len + 3) & !3;
                let index = seq.wrapping_sub(first) as usize;
                if kind != NLMSG_ERROR || index >= chunk.len() {
                    continue;
                }
                pending -= 1;
                let errno = i32::from_ne_bytes(payload[..4].try_into().unwrap_or([0; 4]));
                if errno != 0 && refused.is_none() {
                    let (op, target) = describe(&chunk[index]);
                    refused = Some(Error::Kernel {
                        op,
                        target,
                        errno: errno.saturating_abs(),
                        message: None,
                    });
                }
            }
        }
        refused.map_or(Ok(()), Err)
    }
}

fn encode(write: &Write<'_>, family_id: u16, seq: u32, out: &mut Vec<u8>) {
    let msg = match write {
        Write::NewService(svc) => IpvsMessage::new(
            Command::NewService,
            vec![CmdAttr::Service(message::service_attrs(svc))],
        ),
        Write::NewDest(key, dest) => IpvsMessage::new(
            Command::NewDest,
            vec![
                CmdAttr::Service(message::service_key_attrs(key)),
                CmdAttr::Dest(message::dest_attrs(dest)),
            ],
        ),
    };
    let mut genl = GenlMessage::from_payload(msg);
    genl.set_resolved_family_id(family_id);
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    header.sequence_number = seq;
    let mut request = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(genl));
    request.finalize();
    let start = out.len();
    out.resize(start + request.buffer_len(), 0);
    request.serialize(&mut out[start..]);
    // Netlink messages start on 4-byte boundaries.
    out.resize(out.len().div_ceil(4) * 4, 0);
}

fn describe(write: &Write<'_>) -> (Operation, Target) {
    match write {
        Write::NewService(svc) => (
            Operation::NewService,
            Target {
                service: Some(svc.key()),
                dest: None,
            },
        ),
        Write::NewDest(key, dest) => (
            Operation::NewDest,
            Target {
                service: Some(*key),
                dest: Some((dest.addr, dest.port)),
            },
        ),
    }
}
