//! The `NETLINK_NETFILTER` socket: sending batches and reading what the kernel says
//! about each message, plus plain requests and dumps.
//!
//! How a commit learns its outcome: the kernel processes a batch synchronously inside
//! `sendmsg` and queues an error for every refused message and, since Linux 6.10, an
//! ack for every accepted one (we ask with `NLM_F_ACK`). Right after the batch we send
//! a `GETGEN` request; its reply is queued behind everything the batch produced, so
//! reading up to it collects every ack and error, on old kernels too, and yields the
//! generation the commit produced.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use netlink_packet_core::{
    ErrorBuffer, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP_INTR, NLM_F_MULTIPART, NetlinkBuffer,
};
use netlink_packet_netfilter::nftables::NfTablesMessageType;
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

use super::attr::Attrs;
use super::batch::Batch;
use super::error::{BatchRejected, ERESTART, Error, MessageFailure, Result};
use super::msg::Message;
use super::uapi::{NFNL_SUBSYS_NFTABLES, generation};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
/// Extended-ack attribute carrying the kernel's error string (`NLMSGERR_ATTR_MSG`).
const NLMSGERR_ATTR_MSG: u16 = 1;

/// Receive buffer per datagram: dumps come in chunks of at most a few pages.
const RECV_BUF_LEN: usize = 1 << 20;
/// Receive-queue budget per acked message (an ack skb's true size is well below this).
const RCVBUF_PER_MESSAGE: usize = 1024;
const MIN_RCVBUF: usize = 4 << 20;

/// An open nf_tables netlink socket. Not shared between threads; cheap to open.
pub struct NftSocket {
    socket: Socket,
    next_seq: u32,
    recv_buf: Vec<u8>,
}

/// What a successful commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Requests in the batch (begin/end markers not counted).
    pub messages: usize,
    /// Of those, how many the kernel acked individually (0 before Linux 6.10).
    pub acked: usize,
    /// Bytes sent.
    pub bytes: usize,
    /// The ruleset generation after the commit.
    pub generation: u32,
    /// Time spent serialising the batch into its wire bytes.
    pub emit_time: Duration,
    /// Time inside `sendmsg`: nfnetlink runs the whole transaction (every message and
    /// the commit) synchronously in the sender's context, so this is the kernel's time.
    pub kernel_time: Duration,
    /// Time reading the acks and the generation fence back.
    pub ack_time: Duration,
}

/// One message received from the kernel.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub msg_type: u16,
    pub flags: u16,
    pub seq: u32,
    /// Everything after the netlink header.
    pub payload: Vec<u8>,
}

impl Reply {
    /// The nf_tables message type, if this is one.
    pub fn nft_type(&self) -> Option<NfTablesMessageType> {
        let [subsys, kind] = self.msg_type.to_be_bytes();
        (subsys == NFNL_SUBSYS_NFTABLES).then_some(NfTablesMessageType::from(kind))
    }

    /// The attributes after the `nfgenmsg` header.
    pub fn attrs(&self) -> Result<Attrs<'_>> {
        let body = self
            .payload
            .get(NFGENMSG_LEN..)
            .ok_or_else(|| Error::decode("nf_tables message shorter than nfgenmsg"))?;
        Attrs::parse(body)
    }
}

/// An `NLMSG_ERROR`: an ack (`errno` 0) or a refusal.
struct Ack {
    errno: i32,
    detail: Option<String>,
}

impl NftSocket {
    /// Opens a socket in the caller's network namespace.
    pub fn open() -> Result<NftSocket> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|e| Error::io("open", e))?;
        socket.bind_auto().map_err(|e| Error::io("bind", e))?;
        // Errors name the bad attribute and say why; acks stay small.
        socket
            .set_ext_ack(true)
            .map_err(|e| Error::io("NETLINK_EXT_ACK", e))?;
        socket
            .set_cap_ack(true)
            .map_err(|e| Error::io("NETLINK_CAP_ACK", e))?;
        Ok(NftSocket {
            socket,
            next_seq: 1,
            recv_buf: Vec::with_capacity(RECV_BUF_LEN),
        })
    }

    /// The current ruleset generation (`NFT_MSG_GETGEN`).
    pub fn generation(&mut self) -> Result<u32> {
        let seq = self.send_one(&Message::get_generation())?;
        loop {
            for reply in self.receive()? {
                if reply.seq != seq {
                    continue;
                }
                return generation_of(&reply);
            }
        }
    }

    /// Sends `batch` as one transaction. With `expected_generation`, the kernel refuses
    /// it (and we return [`Error::GenerationChanged`]) if the ruleset changed since.
    pub fn commit(&mut self, batch: &Batch, expected_generation: Option<u32>) -> Result<Commit> {
        let started = Instant::now();
        // One sequence number per message, begin and end markers included.
        let messages = batch.len() + 2;
        let first_seq = self.next_seq;
        self.next_seq = first_seq.wrapping_add(messages as u32);
        let bytes = batch.encode(first_seq, expected_generation);
        // Descriptions are only needed for refused messages: build them then.
        let what = |seq: u32| -> String {
            let index = seq.wrapping_sub(first_seq) as usize;
            match index {
                0 => Message::batch_begin(expected_generation).what(),
                i if i <= batch.len() => batch.messages()[i - 1].what(),
                i if i == batch.len() + 1 => Message::batch_end().what(),
                _ => format!("message seq {seq}"),
            }
        };

        self.size_buffers(bytes.len(), batch.len())?;
        let emitted = Instant::now();
        self.send(&bytes, "send batch")?;
        let sent = Instant::now();
        let fence = self.send_one(&Message::get_generation())?;

        let mut failures = Vec::new();
        let mut acked = 0;
        let generation = 'read: loop {
            for reply in self.receive()? {
                if reply.seq == fence {
                    break 'read generation_of(&reply)?;
                }
                let in_batch = (reply.seq.wrapping_sub(first_seq) as usize) < messages;
                if reply.msg_type != NLMSG_ERROR || !in_batch {
                    continue;
                }
                let ack = parse_ack(&reply)?;
                if ack.errno == 0 {
                    acked += 1;
                } else {
                    failures.push(MessageFailure {
                        seq: reply.seq,
                        what: what(reply.seq),
                        errno: ack.errno,
                        detail: ack.detail,
                    });
                }
            }
        };

        // A stale generation is reported against BATCH_BEGIN.
        let stale = failures
            .iter()
            .any(|f| f.seq == first_seq && f.errno == ERESTART);
        if let (true, Some(expected)) = (stale, expected_generation) {
            return Err(Error::GenerationChanged { expected });
        }
        if !failures.is_empty() {
            return Err(Error::Rejected(BatchRejected { failures }));
        }
        Ok(Commit {
            messages: batch.len(),
            acked,
            bytes: bytes.len(),
            generation,
            emit_time: emitted - started,
            kernel_time: sent - emitted,
            ack_time: sent.elapsed(),
        })
    }

    /// Sends a dump request and collects its replies. Fails with [`Error::Interrupted`]
    /// if the kernel flags the dump as cut by a concurrent change; callers retry.
    pub(crate) fn dump(&mut self, request: &Message) -> Result<Vec<Reply>> {
        debug_assert!(request.is_dump());
        let seq = self.send_one(request)?;
        let mut out = Vec::new();
        let mut interrupted = false;
        loop {
            for reply in self.receive()? {
                if reply.seq != seq {
                    continue;
                }
                match reply.msg_type {
                    // Read to the end even when interrupted: the kernel refuses a new
                    // dump on a socket whose previous one is still running.
                    NLMSG_DONE if interrupted => return Err(Error::Interrupted),
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let ack = parse_ack(&reply)?;
                        return Err(request_error(request, ack));
                    }
                    _ => {
                        interrupted |= reply.flags & NLM_F_DUMP_INTR != 0;
                        let multipart = reply.flags & NLM_F_MULTIPART != 0;
                        out.push(reply);
                        if !multipart {
                            return if interrupted {
                                Err(Error::Interrupted)
                            } else {
                                Ok(out)
                            };
                        }
                    }
                }
            }
        }
    }

    /// Sends a single get request; `Ok(None)` if the object does not exist.
    pub(crate) fn get(&mut self, request: &Message) -> Result<Option<Reply>> {
        let seq = self.send_one(request)?;
        loop {
            for reply in self.receive()? {
                if reply.seq != seq {
                    continue;
                }
                if reply.msg_type == NLMSG_ERROR {
                    let ack = parse_ack(&reply)?;
                    return match ack.errno {
                        0 => continue,
                        libc::ENOENT => Ok(None),
                        _ => Err(request_error(request, ack)),
                    };
                }
                return Ok(Some(reply));
            }
        }
    }

    fn take_seq(&mut self) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        seq
    }

    fn send_one(&mut self, message: &Message) -> Result<u32> {
        let seq = self.take_seq();
        let mut bytes = Vec::with_capacity(message.wire_len());
        message.emit(seq, &mut bytes);
        self.send(&bytes, "send request")?;
        Ok(seq)
    }

    fn send(&self, bytes: &[u8], context: &'static str) -> Result<()> {
        let sent = self
            .socket
            .send(bytes, 0)
            .map_err(|e| Error::io(context, e))?;
        if sent != bytes.len() {
            return Err(Error::io(
                context,
                std::io::Error::other(format!("sent {sent} of {} bytes", bytes.len())),
            ));
        }
        Ok(())
    }

    /// Makes room for the batch in one `sendmsg`, and for one ack per message in the
    /// receive queue. As root the `*FORCE` variants lift the sysctl caps (nft does the
    /// same); otherwise we ask for what the caps allow.
    fn size_buffers(&self, batch_bytes: usize, messages: usize) -> Result<()> {
        let fd = self.socket.as_raw_fd();
        // The kernel doubles the value and keeps some for bookkeeping.
        let sndbuf = batch_bytes + (64 << 10);
        let rcvbuf = MIN_RCVBUF.max(messages * RCVBUF_PER_MESSAGE);
        set_buffer(fd, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, sndbuf)?;
        set_buffer(fd, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, rcvbuf)?;
        Ok(())
    }

    /// Reads one datagram and splits it into messages.
    fn receive(&mut self) -> Result<Vec<Reply>> {
        self.recv_buf.clear();
        match self.socket.recv(&mut self.recv_buf, 0) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Err(Error::RepliesLost),
            Err(e) => return Err(Error::io("receive", e)),
        }
        split_messages(&self.recv_buf)
    }
}

fn set_buffer(fd: i32, force: libc::c_int, plain: libc::c_int, size: usize) -> Result<()> {
    let value = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    let set = |option| {
        // SAFETY: `value` is a live c_int and its size is passed alongside.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    set(force)
        .or_else(|_| set(plain))
        .map_err(|e| Error::io("set socket buffer size", e))
}

/// Splits a datagram into netlink messages.
fn split_messages(mut buf: &[u8]) -> Result<Vec<Reply>> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let msg = NetlinkBuffer::new_checked(buf)
            .map_err(|e| Error::decode(format!("netlink header: {e}")))?;
        let len = msg.length() as usize;
        out.push(Reply {
            msg_type: msg.message_type(),
            flags: msg.flags(),
            seq: msg.sequence_number(),
            payload: msg.payload().to_vec(),
        });
        let aligned = len.div_ceil(4) * 4;
        buf = buf.get(aligned..).unwrap_or_default();
    }
    Ok(out)
}

/// Decodes an `NLMSG_ERROR` payload: `{ i32 error, nlmsghdr of the request, [request
/// payload unless capped], [extended-ack attributes] }`.
fn parse_ack(reply: &Reply) -> Result<Ack> {
    let err = ErrorBuffer::new_checked(reply.payload.as_slice())
        .map_err(|e| Error::decode(format!("netlink error message: {e}")))?;
    let errno = err.code().map_or(0, |c| c.get().abs());
    let mut detail = None;
    if reply.flags & NLM_F_ACK_TLVS != 0 {
        let request = err.payload();
        let echoed = if reply.flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            NetlinkBuffer::new_checked(request).map_or(request.len(), |b| b.length() as usize)
        };
        if let Some(tlvs) = request.get(echoed.div_ceil(4) * 4..) {
            let attrs = Attrs::parse(tlvs)?;
            detail = attrs.string(NLMSGERR_ATTR_MSG)?;
        }
    }
    Ok(Ack { errno, detail })
}

fn request_error(request: &Message, ack: Ack) -> Error {
    let mut source = std::io::Error::from_raw_os_error(ack.errno);
    if let Some(detail) = ack.detail {
        source = std::io::Error::new(source.kind(), format!("{source} ({detail})"));
    }
    Error::Request {
        what: request.what(),
        source,
    }
}

fn generation_of(reply: &Reply) -> Result<u32> {
    if reply.msg_type == NLMSG_ERROR {
        let ack = parse_ack(reply)?;
        return Err(request_error(&Message::get_generation(), ack));
    }
    if reply.nft_type() != Some(NfTablesMessageType::NewGen) {
        return Err(Error::decode(format!(
            "unexpected reply type {:#x} to GETGEN",
            reply.msg_type
        )));
    }
    reply.attrs()?.need_u32(generation::ID, "generation id")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_with_extended_ack_is_decoded() {
        // NLMSG_ERROR { -ENOENT, capped request header (seq 5), NLMSGERR_ATTR_MSG "nope" }
        let mut payload = (-libc::ENOENT).to_ne_bytes().to_vec();
        let mut request_header = vec![0u8; 16];
        request_header[8..12].copy_from_slice(&5u32.to_ne_bytes());
        payload.extend_from_slice(&request_header);
        payload.extend_from_slice(&[9, 0, 1, 0, b'n', b'o', b'p', b'e', 0, 0, 0, 0]);
        let reply = Reply {
            msg_type: NLMSG_ERROR,
            flags: NLM_F_ACK_TLVS | NLM_F_CAPPED,
            seq: 5,
            payload,
        };
        let ack = parse_ack(&reply).unwrap();
        assert_eq!(ack.errno, libc::ENOENT);
        assert_eq!(ack.detail.as_deref(), Some("nope"));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(split_messages(&[1, 2, 3]).is_err());
        let reply = Reply {
            msg_type: NLMSG_ERROR,
            flags: 0,
            seq: 1,
            payload: vec![1],
        };
        assert!(parse_ack(&reply).is_err());
    }
}
