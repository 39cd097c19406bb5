//! The `NETLINK_NETFILTER` socket conntrack requests go through: one dump at a time,
//! deletes pipelined in chunks, every reply read before the next request.

use netlink_packet_core::{
    ErrorBuffer, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer,
};
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

use super::wire::{self, KernelFilter};
use super::{Error, Family, Flow, Result};

/// Dump replies come in skbs of at most 32 KiB (netlink caps `max_recvmsg_len`).
const RECV_BUF_LEN: usize = 64 << 10;
/// Deletes sent per `sendmsg`. The kernel handles them one by one and queues an ack
/// each; a chunk's acks must fit the default receive buffer (~200 KiB) or the kernel
/// drops them (ENOBUFS). A capped ack's skb costs well under 1 KiB.
const DELETE_CHUNK: usize = 64;
const NLMSG_HDRLEN: usize = 16;
/// Extended-ack attribute with the kernel's error string (`NLMSGERR_ATTR_MSG`).
const NLMSGERR_ATTR_MSG: u16 = 1;

pub(super) struct CtSocket {
    socket: Socket,
    next_seq: u32,
    buf: Vec<u8>,
}

/// One received netlink message, borrowed from the receive buffer.
struct Message<'a> {
    msg_type: u16,
    flags: u16,
    seq: u32,
    payload: &'a [u8],
}

impl CtSocket {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<CtSocket> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|e| Error::io("open", e))?;
        socket.bind_auto().map_err(|e| Error::io("bind", e))?;
        // Errors say why; acks do not echo the request back.
        socket
            .set_ext_ack(true)
            .map_err(|e| Error::io("NETLINK_EXT_ACK", e))?;
        socket
            .set_cap_ack(true)
            .map_err(|e| Error::io("NETLINK_CAP_ACK", e))?;
        Ok(CtSocket {
            socket,
            next_seq: 1,
            buf: Vec::with_capacity(RECV_BUF_LEN),
        })
    }

    /// Dumps the entries of `family` (those the kernel lets through `filter`), handing
    /// each to `each` as it arrives so a large table is never held in memory.
    pub fn dump(
        &mut self,
        family: Family,
        filter: Option<&KernelFilter>,
        mut each: impl FnMut(Flow),
    ) -> Result<()> {
        let op = if filter.is_some() {
            "filtered dump"
        } else {
            "dump"
        };
        let seq = self.take_seq();
        self.send(&wire::dump_request(seq, family, filter), op)?;
        loop {
            self.receive()?;
            for msg in split(&self.buf)? {
                if msg.seq != seq {
                    continue;
                }
                match msg.msg_type {
                    NLMSG_DONE => {
                        // A dump cut short by an error reports it here.
                        let errno = msg
                            .payload
                            .get(..4)
                            .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                        return match errno {
                            0 => Ok(()),
                            e => Err(Error::kernel(op, e.abs(), None)),
                        };
                    }
                    NLMSG_ERROR => {
                        let (errno, detail) = parse_ack(&msg)?;
                        return Err(Error::kernel(op, errno, detail));
                    }
                    t if wire::is_ctnetlink(t) => each(wire::decode_flow(msg.payload)?),
                    _ => {}
                }
            }
        }
    }

    /// Deletes `flows`; returns how many the kernel removed. An entry that is already
    /// gone (expired, deleted by someone else, or replaced since the dump) is not an
    /// error: it is just not counted.
    pub fn delete(&mut self, flows: &[Flow]) -> Result<usize> {
        let mut deleted = 0;
        for chunk in flows.chunks(DELETE_CHUNK) {
            let first = self.next_seq;
            let mut bytes = Vec::with_capacity(chunk.len() * 128);
            for flow in chunk {
                let seq = self.take_seq();
                bytes.extend_from_slice(&wire::delete_request(seq, flow));
            }
            self.send(&bytes, "delete")?;

            // Read every ack of the chunk before reporting a failure, so the socket
            // is clean for the next request.
            let mut pending = chunk.len();
            let mut failure = None;
            while pending > 0 {
                self.receive()?;
                for msg in split(&self.buf)? {
                    let in_chunk = (msg.seq.wrapping_sub(first) as usize) < chunk.len();
                    if msg.msg_type != NLMSG_ERROR || !in_chunk {
                        continue;
                    }
                    pending -= 1;
                    match parse_ack(&msg)? {
                        (0, _) => deleted += 1,
                        (libc::ENOENT, _) => {}
                        (errno, detail) => {
                            failure.get_or_insert(Error::kernel("delete", errno, detail));
                        }
                    }
                }
            }
            if let Some(error) = failure {
                return Err(error);
            }
        }
        Ok(deleted)
    }

    fn take_seq(&mut self) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        seq
    }

    fn send(&self, bytes: &[u8], op: &'static str) -> Result<()> {
        let sent = self.socket.send(bytes, 0).map_err(|e| Error::io(op, e))?;
        if sent != bytes.len() {
            let short = format!("sent {sent} of {} bytes", bytes.len());
            return Err(Error::io(op, std::io::Error::other(short)));
        }
        Ok(())
    }

    fn receive(&mut self) -> Result<()> {
        self.buf.clear();
        self.socket
            .recv(&mut self.buf, 0)
            .map_err(|e| Error::io("receive", e))?;
        Ok(())
    }
}

/// Splits a datagram into netlink messages.
fn split(mut buf: &[u8]) -> Result<Vec<Message<'_>>> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let msg = NetlinkBuffer::new_checked(buf)
            .map_err(|e| Error::Decode(format!("netlink header: {e}")))?;
        let len = msg.length() as usize;
        out.push(Message {
            msg_type: msg.message_type(),
            flags: msg.flags(),
            seq: msg.sequence_number(),
            payload: buf.get(NLMSG_HDRLEN..len).unwrap_or_default(),
        });
        buf = buf.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(out)
}

/// Decodes an `NLMSG_ERROR`: `(errno, extended-ack message)`; errno 0 is an ack.
fn parse_ack(msg: &Message<'_>) -> Result<(i32, Option<String>)> {
    let err = ErrorBuffer::new_checked(msg.payload)
        .map_err(|e| Error::Decode(format!("netlink error message: {e}")))?;
    let errno = err.code().map_or(0, |c| c.get().abs());
    let mut detail = None;
    if msg.flags & NLM_F_ACK_TLVS != 0 {
        // The echoed request (just its header, with NETLINK_CAP_ACK), then attributes.
        let echoed = if msg.flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            NetlinkBuffer::new_checked(err.payload()).map_or(0, |b| b.length() as usize)
        };
        let mut tlvs = err
            .payload()
            .get(echoed.next_multiple_of(4)..)
            .unwrap_or_default();
        while let (Some(len), Some(kind)) = (tlvs.get(0..2), tlvs.get(2..4)) {
            let len = usize::from(u16::from_ne_bytes([len[0], len[1]]));
            let kind = u16::from_ne_bytes([kind[0], kind[1]]);
            let Some(value) = tlvs.get(4..len) else { break };
            if kind == NLMSGERR_ATTR_MSG {
                let text = value.split(|b| *b == 0).next().unwrap_or_default();
                detail = Some(String::from_utf8_lossy(text).into_owned());
            }
            tlvs = tlvs.get(len.next_multiple_of(4)..).unwrap_or_default();
        }
    }
    Ok((errno, detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_with_extended_message_is_decoded() {
        // NLMSG_ERROR { -EINVAL, capped request header, NLMSGERR_ATTR_MSG "bad" }
        let mut payload = (-libc::EINVAL).to_ne_bytes().to_vec();
        payload.extend_from_slice(&[0; NLMSG_HDRLEN]);
        payload.extend_from_slice(&[8, 0, 1, 0, b'b', b'a', b'd', 0]);
        let msg = Message {
            msg_type: NLMSG_ERROR,
            flags: NLM_F_ACK_TLVS | NLM_F_CAPPED,
            seq: 1,
            payload: &payload,
        };
        assert_eq!(parse_ack(&msg).unwrap(), (libc::EINVAL, Some("bad".into())));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(split(&[1, 2, 3]).is_err());
        let msg = Message {
            msg_type: NLMSG_ERROR,
            flags: 0,
            seq: 1,
            payload: &[1],
        };
        assert!(parse_ack(&msg).is_err());
    }
}
