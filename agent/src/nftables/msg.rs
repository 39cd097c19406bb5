//! nf_tables request messages: what each one carries, how it is framed, and the
//! one-line description an error report names it by.
//!
//! Framing is `nlmsghdr` (netlink-packet-core) + `nfgenmsg` (netlink-packet-netfilter's
//! `NetfilterHeader`) + attributes ([`super::attr`]).

use netlink_packet_core::{
    Emitable, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterProtoFamily, nftables::NfTablesMessageType,
};
use svcproxy_compiler::nft::ir::{Chain, ChainType, Family, Hook};

use super::attr::{Attr, emit_attrs};
use super::error::Result;
use super::expr::Expr;
use super::uapi::{self, chain as ch, elem as el, rule as ru, set as st, table as tb};
use super::udata;

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

/// `NF_ACCEPT`, the policy of every svcproxy base chain.
pub(crate) const POLICY_ACCEPT: u32 = 1;

/// One request. `what` says what it does, for error reports.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    /// Full netlink message type: `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_*`, or a batch marker.
    msg_type: u16,
    /// `NLM_F_*` beyond `NLM_F_REQUEST`.
    flags: u16,
    family: u8,
    /// `nfgenmsg.res_id`: the subsystem for batch markers, 0 otherwise.
    res_id: u16,
    attrs: Vec<Attr>,
    pub what: String,
}

impl Message {
    fn nft(
        kind: NfTablesMessageType,
        flags: u16,
        family: u8,
        attrs: Vec<Attr>,
        what: String,
    ) -> Message {
        Message {
            msg_type: (u16::from(uapi::NFNL_SUBSYS_NFTABLES) << 8) | u16::from(u8::from(kind)),
            flags,
            family,
            res_id: 0,
            attrs,
            what,
        }
    }

    /// `NFNL_MSG_BATCH_BEGIN`, carrying the generation the batch was computed against:
    /// the kernel refuses the whole batch with `ERESTART` if another change landed since.
    pub fn batch_begin(generation: Option<u32>) -> Message {
        let attrs = generation
            .map(|g| vec![Attr::u32(uapi::NFNL_BATCH_GENID, g)])
            .unwrap_or_default();
        Message {
            msg_type: uapi::NFNL_MSG_BATCH_BEGIN,
            flags: 0,
            family: u8::from(NetfilterProtoFamily::Unspec),
            res_id: u16::from(uapi::NFNL_SUBSYS_NFTABLES),
            attrs,
            what: match generation {
                Some(g) => format!("begin batch (expecting generation {g})"),
                None => "begin batch".to_string(),
            },
        }
    }

    pub fn batch_end() -> Message {
        Message {
            msg_type: uapi::NFNL_MSG_BATCH_END,
            flags: 0,
            family: u8::from(NetfilterProtoFamily::Unspec),
            res_id: u16::from(uapi::NFNL_SUBSYS_NFTABLES),
            attrs: Vec::new(),
            what: "end batch".to_string(),
        }
    }

    /// `NEWTABLE` without `NLM_F_EXCL`: creates the table, or does nothing if it exists.
    pub fn new_table(family: Family, name: &str, comment: Option<&str>) -> Result<Message> {
        let mut attrs = vec![Attr::str(tb::NAME, name)];
        if let Some(comment) = comment {
            attrs.push(Attr::bytes(tb::USERDATA, udata::comment(comment)?));
        }
        Ok(Message::nft(
            NfTablesMessageType::NewTable,
            NLM_F_CREATE | NLM_F_ACK,
            nfproto(family),
            attrs,
            format!("add table {} {name}", family.keyword()),
        ))
    }

    pub fn delete_table(family: Family, name: &str) -> Message {
        Message::nft(
            NfTablesMessageType::DeleteTable,
            NLM_F_ACK,
            nfproto(family),
            vec![Attr::str(tb::NAME, name)],
            format!("delete table {} {name}", family.keyword()),
        )
    }

    /// `NEWCHAIN` for an empty chain; rules are separate messages.
    pub fn new_chain(family: Family, table: &str, chain: &Chain) -> Result<Message> {
        let mut attrs = vec![
            Attr::str(ch::TABLE, table),
            Attr::str(ch::NAME, &chain.name),
        ];
        if let Some(base) = &chain.base {
            let chain_type = match base.chain_type {
                ChainType::Filter => "filter",
                ChainType::Nat => "nat",
            };
            attrs.push(Attr::str(ch::TYPE, chain_type));
            attrs.push(Attr::u32(ch::POLICY, POLICY_ACCEPT));
            attrs.push(Attr::nested(
                ch::HOOK,
                vec![
                    Attr::u32(ch::HOOK_NUM, hook_number(base.hook)),
                    Attr::u32(ch::HOOK_PRIORITY, base.priority as u32),
                ],
            ));
        }
        if let Some(comment) = &chain.comment {
            attrs.push(Attr::bytes(ch::USERDATA, udata::comment(comment)?));
        }
        Ok(Message::nft(
            NfTablesMessageType::NewChain,
            NLM_F_CREATE | NLM_F_ACK,
            nfproto(family),
            attrs,
            format!("add chain {} {table}/{}", family.keyword(), chain.name),
        ))
    }

    /// `DELCHAIN`. The kernel refuses it (`EBUSY`) while a rule or map element still
    /// jumps to the chain, counting removals earlier in the same batch.
    pub fn delete_chain(family: Family, table: &str, chain: &str) -> Message {
        Message::nft(
            NfTablesMessageType::DeleteChain,
            NLM_F_ACK,
            nfproto(family),
            vec![Attr::str(ch::TABLE, table), Attr::str(ch::NAME, chain)],
            format!("delete chain {} {table}/{chain}", family.keyword()),
        )
    }

    /// `DELRULE` naming a chain but no rule: deletes every rule of the chain (what
    /// `nft flush chain` sends).
    pub fn flush_chain(family: Family, table: &str, chain: &str) -> Message {
        Message::nft(
            NfTablesMessageType::DeleteRule,
            NLM_F_ACK,
            nfproto(family),
            vec![Attr::str(ru::TABLE, table), Attr::str(ru::CHAIN, chain)],
            format!("flush chain {} {table}/{chain}", family.keyword()),
        )
    }

    /// `NEWRULE` appended to the end of `chain`.
    pub fn new_rule(
        family: Family,
        table: &str,
        chain: &str,
        index: usize,
        exprs: &[Expr],
        comment: Option<&str>,
    ) -> Result<Message> {
        let mut attrs = vec![
            Attr::str(ru::TABLE, table),
            Attr::str(ru::CHAIN, chain),
            Attr::nested(ru::EXPRESSIONS, exprs.iter().map(Expr::to_attr).collect()),
        ];
        if let Some(comment) = comment {
            attrs.push(Attr::bytes(ru::USERDATA, udata::comment(comment)?));
        }
        Ok(Message::nft(
            NfTablesMessageType::NewRule,
            NLM_F_CREATE | NLM_F_APPEND | NLM_F_ACK,
            nfproto(family),
            attrs,
            format!(
                "add rule #{index} to chain {} {table}/{chain}",
                family.keyword()
            ),
        ))
    }

    /// `NEWSET` with attributes from [`super::set::set_attrs`].
    pub fn new_set(family: Family, table: &str, name: &str, attrs: Vec<Attr>) -> Message {
        Message::nft(
            NfTablesMessageType::NewSet,
            NLM_F_CREATE | NLM_F_ACK,
            nfproto(family),
            attrs,
            format!("add set {} {table}/{name}", family.keyword()),
        )
    }

    /// `DELSET`: the set and its elements. Refused (`EBUSY`) while a rule looks it up.
    pub fn delete_set(family: Family, table: &str, set: &str) -> Message {
        Message::nft(
            NfTablesMessageType::DeleteSet,
            NLM_F_ACK,
            nfproto(family),
            vec![Attr::str(st::TABLE, table), Attr::str(st::NAME, set)],
            format!("delete set {} {table}/{set}", family.keyword()),
        )
    }

    /// `DELSETELEM` without an element list: removes every element of the set (what
    /// `nft flush set` sends).
    pub fn flush_set(family: Family, table: &str, set: &str) -> Message {
        Message::nft(
            NfTablesMessageType::DeleteSetElement,
            NLM_F_ACK,
            nfproto(family),
            vec![
                Attr::str(el::LIST_TABLE, table),
                Attr::str(el::LIST_SET, set),
            ],
            format!("flush set {} {table}/{set}", family.keyword()),
        )
    }

    /// `NEWSETELEM` (or `DELSETELEM` when `delete`) for a chunk of element nests.
    pub fn set_elements(
        family: Family,
        table: &str,
        set: &str,
        set_id: Option<u32>,
        elements: Vec<Attr>,
        delete: bool,
    ) -> Message {
        let count = elements.len();
        let mut attrs = vec![
            Attr::str(el::LIST_TABLE, table),
            Attr::str(el::LIST_SET, set),
        ];
        if let Some(id) = set_id {
            attrs.push(Attr::u32(el::LIST_SET_ID, id));
        }
        attrs.push(Attr::nested(el::LIST_ELEMENTS, elements));
        let (kind, flags, action) = if delete {
            (
                NfTablesMessageType::DeleteSetElement,
                NLM_F_ACK,
                "delete from",
            )
        } else {
            (
                NfTablesMessageType::NewSetElement,
                NLM_F_CREATE | NLM_F_ACK,
                "add to",
            )
        };
        let plural = if count == 1 { "" } else { "s" };
        Message::nft(
            kind,
            flags,
            nfproto(family),
            attrs,
            format!(
                "{count} element{plural} ({action} set {} {table}/{set})",
                family.keyword()
            ),
        )
    }

    pub fn get_generation() -> Message {
        Message::nft(
            NfTablesMessageType::GetGen,
            0,
            u8::from(NetfilterProtoFamily::Unspec),
            Vec::new(),
            "get generation".to_string(),
        )
    }

    pub fn get_table(family: Family, name: &str) -> Message {
        Message::nft(
            NfTablesMessageType::GetTable,
            0,
            nfproto(family),
            vec![Attr::str(tb::NAME, name)],
            format!("get table {} {name}", family.keyword()),
        )
    }

    /// Dumps of one table's chains, sets and rules. The kernel filters rules and sets by
    /// the table attribute; chains are filtered by the caller.
    pub fn dump_chains(family: Family, table: &str) -> Message {
        Message::nft(
            NfTablesMessageType::GetChain,
            NLM_F_DUMP,
            nfproto(family),
            vec![Attr::str(ch::TABLE, table)],
            format!("list chains of {} {table}", family.keyword()),
        )
    }

    pub fn dump_sets(family: Family, table: &str) -> Message {
        Message::nft(
            NfTablesMessageType::GetSet,
            NLM_F_DUMP,
            nfproto(family),
            vec![Attr::str(st::TABLE, table)],
            format!("list sets of {} {table}", family.keyword()),
        )
    }

    /// One set's description (not a dump: the kernel answers ENOENT if it is absent).
    pub fn get_set(family: Family, table: &str, set: &str) -> Message {
        Message::nft(
            NfTablesMessageType::GetSet,
            0,
            nfproto(family),
            vec![Attr::str(st::TABLE, table), Attr::str(st::NAME, set)],
            format!("get set {} {table}/{set}", family.keyword()),
        )
    }

    pub fn dump_elements(family: Family, table: &str, set: &str) -> Message {
        Message::nft(
            NfTablesMessageType::GetSetElement,
            NLM_F_DUMP,
            nfproto(family),
            vec![
                Attr::str(el::LIST_TABLE, table),
                Attr::str(el::LIST_SET, set),
            ],
            format!("list elements of set {} {table}/{set}", family.keyword()),
        )
    }

    /// The rules of one chain. The kernel serves a whole-table rule dump by walking
    /// the table from its first rule again for every reply buffer, skipping what it
    /// already sent, which is quadratic in the table's rules; a chain's dump starts
    /// at its chain (found by hash) and walks only that chain.
    pub fn dump_chain_rules(family: Family, table: &str, chain: &str) -> Message {
        Message::nft(
            NfTablesMessageType::GetRule,
            NLM_F_DUMP,
            nfproto(family),
            vec![Attr::str(ru::TABLE, table), Attr::str(ru::CHAIN, chain)],
            format!("list rules of chain {} {table}/{chain}", family.keyword()),
        )
    }

    pub fn is_dump(&self) -> bool {
        self.flags & NLM_F_DUMP == NLM_F_DUMP
    }

    /// Bytes this message takes in a batch.
    pub fn wire_len(&self) -> usize {
        NLMSG_HDRLEN + NFGENMSG_LEN + self.attrs.iter().map(Attr::wire_len).sum::<usize>()
    }

    /// Appends the framed message with sequence number `seq` to `out`.
    pub fn emit(&self, seq: u32, out: &mut Vec<u8>) {
        let start = out.len();
        let mut header = NetlinkHeader::default();
        header.length = self.wire_len() as u32;
        header.message_type = self.msg_type;
        header.flags = NLM_F_REQUEST | self.flags;
        header.sequence_number = seq;
        out.resize(start + NLMSG_HDRLEN + NFGENMSG_LEN, 0);
        header.emit(&mut out[start..start + NLMSG_HDRLEN]);
        NetfilterHeader::new(NetfilterProtoFamily::from(self.family), 0, self.res_id)
            .emit(&mut out[start + NLMSG_HDRLEN..]);
        emit_attrs(&self.attrs, out);
    }
}

pub(crate) fn nfproto(family: Family) -> u8 {
    u8::from(match family {
        Family::Ip => NetfilterProtoFamily::IPv4,
        Family::Ip6 => NetfilterProtoFamily::IPv6,
    })
}

/// `NF_INET_*` hook numbers.
fn hook_number(hook: Hook) -> u32 {
    match hook {
        Hook::Prerouting => 0,
        Hook::Input => 1,
        Hook::Forward => 2,
        Hook::Output => 3,
        Hook::Postrouting => 4,
    }
}

pub(crate) fn hook_from_number(n: u32) -> Option<Hook> {
    [
        Hook::Prerouting,
        Hook::Input,
        Hook::Forward,
        Hook::Output,
        Hook::Postrouting,
    ]
    .into_iter()
    .find(|h| hook_number(*h) == n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_begin_carries_the_generation() {
        let mut buf = Vec::new();
        Message::batch_begin(Some(7)).emit(1, &mut buf);
        // nlmsghdr: len 28, type 0x10, flags REQUEST, seq 1
        assert_eq!(&buf[..8], &[28, 0, 0, 0, 0x10, 0, 1, 0]);
        // nfgenmsg: AF_UNSPEC, v0, res_id = NFNL_SUBSYS_NFTABLES (big endian)
        assert_eq!(&buf[16..20], &[0, 0, 0, 10]);
        // NFNL_BATCH_GENID = 7 (big endian)
        assert_eq!(&buf[20..28], &[8, 0, 1, 0, 0, 0, 0, 7]);
    }

    #[test]
    fn table_message_framing() {
        let mut buf = Vec::new();
        let msg = Message::new_table(Family::Ip6, "svc", None).unwrap();
        msg.emit(42, &mut buf);
        assert_eq!(buf.len(), msg.wire_len());
        let msg_type = u16::from_ne_bytes([buf[4], buf[5]]);
        assert_eq!(msg_type, 0x0a00);
        assert_eq!(u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]), 42);
        assert_eq!(buf[16], 10); // NFPROTO_IPV6
    }
}
