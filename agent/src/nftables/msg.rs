//! nf_tables request messages: what each one carries, how it is framed, and the
//! one-line description an error report names it by.
//!
//! Framing is `nlmsghdr` (netlink-packet-core) + `nfgenmsg` (netlink-packet-netfilter's
//! `NetfilterHeader`) + attributes ([`super::attr`]).

use netlink_packet_core::{NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_netfilter::{NetfilterProtoFamily, nftables::NfTablesMessageType};
use svcproxy_compiler::nft::ir::{Chain, ChainType, Family, Hook};

use super::attr::{AttrBuf, Attrs};
use super::error::Result;
use super::expr::Expr;
use super::uapi::{self, chain as ch, elem as el, rule as ru, set as st, table as tb};
use super::udata;

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
/// `NFNETLINK_V0`, the only `nfgenmsg` version.
const NFNETLINK_V0: u8 = 0;

/// `NF_ACCEPT`, the policy of every svcproxy base chain.
pub(crate) const POLICY_ACCEPT: u32 = 1;

/// One request, its attributes already in wire form ([`AttrBuf`]).
#[derive(Debug, Clone)]
pub(crate) struct Message {
    /// Full netlink message type: `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_*`, or a batch marker.
    msg_type: u16,
    /// `NLM_F_*` beyond `NLM_F_REQUEST`.
    flags: u16,
    family: u8,
    /// `nfgenmsg.res_id`: the subsystem for batch markers, 0 otherwise.
    res_id: u16,
    attrs: Vec<u8>,
    /// What the message does, for [`Message::what`]. Kept as parts rather than text:
    /// a cold apply builds hundreds of thousands of messages and describes only the
    /// few the kernel refuses.
    what: What,
}

/// The parts of a message's description that its attributes do not hold; object
/// names are read back from the attributes when the text is needed.
#[derive(Debug, Clone, Copy)]
enum What {
    BatchBegin(Option<u32>),
    BatchEnd,
    GetGeneration,
    /// `"{verb} table FAMILY NAME"`.
    Table(&'static str),
    /// `"{verb} chain FAMILY TABLE/CHAIN"`, attribute numbers of the chain messages.
    Chain(&'static str),
    /// `"{verb} FAMILY TABLE/CHAIN"`, rule-message attributes (`verb` names the chain).
    RuleChain(&'static str),
    AddRule(usize),
    /// `"{verb} FAMILY TABLE/SET"`, set-message attributes.
    Set(&'static str),
    /// `"{verb} FAMILY TABLE/SET"`, element-message attributes.
    ElementSet(&'static str),
    Elements {
        count: usize,
        delete: bool,
    },
    /// `"{verb} FAMILY TABLE"` with the table's attribute number (dumps of a table).
    TableDump(&'static str, u16),
}

impl Message {
    fn nft(
        kind: NfTablesMessageType,
        flags: u16,
        family: u8,
        attrs: AttrBuf,
        what: What,
    ) -> Message {
        Message {
            msg_type: (u16::from(uapi::NFNL_SUBSYS_NFTABLES) << 8) | u16::from(u8::from(kind)),
            flags,
            family,
            res_id: 0,
            attrs: attrs.into_bytes(),
            what,
        }
    }

    /// A message whose attributes are a table name, or a table and an object name.
    fn named(
        kind: NfTablesMessageType,
        flags: u16,
        family: Family,
        names: &[(u16, &str)],
        what: What,
    ) -> Message {
        let mut attrs = AttrBuf::new();
        for (attr, name) in names {
            attrs.str(*attr, name);
        }
        Message::nft(kind, flags, nfproto(family), attrs, what)
    }

    /// `NFNL_MSG_BATCH_BEGIN`, carrying the generation the batch was computed against:
    /// the kernel refuses the whole batch with `ERESTART` if another change landed since.
    pub fn batch_begin(generation: Option<u32>) -> Message {
        let mut attrs = AttrBuf::new();
        if let Some(g) = generation {
            attrs.u32(uapi::NFNL_BATCH_GENID, g);
        }
        Message {
            msg_type: uapi::NFNL_MSG_BATCH_BEGIN,
            flags: 0,
            family: u8::from(NetfilterProtoFamily::Unspec),
            res_id: u16::from(uapi::NFNL_SUBSYS_NFTABLES),
            attrs: attrs.into_bytes(),
            what: What::BatchBegin(generation),
        }
    }

    pub fn batch_end() -> Message {
        Message {
            msg_type: uapi::NFNL_MSG_BATCH_END,
            flags: 0,
            family: u8::from(NetfilterProtoFamily::Unspec),
            res_id: u16::from(uapi::NFNL_SUBSYS_NFTABLES),
            attrs: Vec::new(),
            what: What::BatchEnd,
        }
    }

    /// `NEWTABLE` without `NLM_F_EXCL`: creates the table, or does nothing if it exists.
    pub fn new_table(family: Family, name: &str, comment: Option<&str>) -> Result<Message> {
        let mut attrs = AttrBuf::new();
        attrs.str(tb::NAME, name);
        if let Some(comment) = comment {
            attrs.bytes(tb::USERDATA, &udata::comment(comment)?);
        }
        Ok(Message::nft(
            NfTablesMessageType::NewTable,
            NLM_F_CREATE | NLM_F_ACK,
            nfproto(family),
            attrs,
            What::Table("add"),
        ))
    }

    pub fn delete_table(family: Family, name: &str) -> Message {
        Message::named(
            NfTablesMessageType::DeleteTable,
            NLM_F_ACK,
            family,
            &[(tb::NAME, name)],
            What::Table("delete"),
        )
    }

    /// `NEWCHAIN` for an empty chain; rules are separate messages.
    pub fn new_chain(family: Family, table: &str, chain: &Chain) -> Result<Message> {
        let mut attrs = AttrBuf::new();
        attrs.str(ch::TABLE, table);
        attrs.str(ch::NAME, &chain.name);
        if let Some(base) = &chain.base {
            let chain_type = match base.chain_type {
                ChainType::Filter => "filter",
                ChainType::Nat => "nat",
            };
            attrs.str(ch::TYPE, chain_type);
            attrs.u32(ch::POLICY, POLICY_ACCEPT);
            attrs.nest(ch::HOOK, |w| {
                w.u32(ch::HOOK_NUM, hook_number(base.hook));
                w.u32(ch::HOOK_PRIORITY, base.priority as u32);
            });
        }
        if let Some(comment) = &chain.comment {
            attrs.bytes(ch::USERDATA, &udata::comment(comment)?);
        }
        Ok(Message::nft(
            NfTablesMessageType::NewChain,
            NLM_F_CREATE | NLM_F_ACK,
            nfproto(family),
            attrs,
            What::Chain("add chain"),
        ))
    }

    /// `DELCHAIN`. The kernel refuses it (`EBUSY`) while a rule or map element still
    /// jumps to the chain, counting removals earlier in the same batch.
    pub fn delete_chain(family: Family, table: &str, chain: &str) -> Message {
        Message::named(
            NfTablesMessageType::DeleteChain,
            NLM_F_ACK,
            family,
            &[(ch::TABLE, table), (ch::NAME, chain)],
            What::Chain("delete chain"),
        )
    }

    /// `DELRULE` naming a chain but no rule: deletes every rule of the chain (what
    /// `nft flush chain` sends).
    pub fn flush_chain(family: Family, table: &str, chain: &str) -> Message {
        Message::named(
            NfTablesMessageType::DeleteRule,
            NLM_F_ACK,
            family,
            &[(ru::TABLE, table), (ru::CHAIN, chain)],
            What::RuleChain("flush chain"),
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
        let mut attrs = AttrBuf::new();
        attrs.str(ru::TABLE, table);
        attrs.str(ru::CHAIN, chain);
        attrs.nest(ru::EXPRESSIONS, |w| {
            for expr in exprs {
                expr.encode(w);
            }
        });
        if let Some(comment) = comment {
            attrs.bytes(ru::USERDATA, &udata::comment(comment)?);
        }
        Ok(Message::nft(
            NfTablesMessageType::NewRule,
            NLM_F_CREATE | NLM_F_APPEND | NLM_F_ACK,
            nfproto(family),
            attrs,
            What::AddRule(index),
        ))
    }

    /// `NEWSET` with attributes from [`super::set::set_attrs`] (which name the set).
    pub fn new_set(family: Family, attrs: AttrBuf) -> Message {
        Message::nft(
            NfTablesMessageType::NewSet,
            NLM_F_CREATE | NLM_F_ACK,
            nfproto(family),
            attrs,
            What::Set("add set"),
        )
    }

    /// `DELSET`: the set and its elements. Refused (`EBUSY`) while a rule looks it up.
    pub fn delete_set(family: Family, table: &str, set: &str) -> Message {
        Message::named(
            NfTablesMessageType::DeleteSet,
            NLM_F_ACK,
            family,
            &[(st::TABLE, table), (st::NAME, set)],
            What::Set("delete set"),
        )
    }

    /// `DELSETELEM` without an element list: removes every element of the set (what
    /// `nft flush set` sends).
    pub fn flush_set(family: Family, table: &str, set: &str) -> Message {
        Message::named(
            NfTablesMessageType::DeleteSetElement,
            NLM_F_ACK,
            family,
            &[(el::LIST_TABLE, table), (el::LIST_SET, set)],
            What::ElementSet("flush set"),
        )
    }

    /// `NEWSETELEM` (or `DELSETELEM` when `delete`) for a chunk of `count` element
    /// nests, `elements` being their wire form.
    pub fn set_elements(
        family: Family,
        table: &str,
        set: &str,
        set_id: Option<u32>,
        elements: &[u8],
        count: usize,
        delete: bool,
    ) -> Message {
        let mut attrs = AttrBuf::new();
        attrs.str(el::LIST_TABLE, table);
        attrs.str(el::LIST_SET, set);
        if let Some(id) = set_id {
            attrs.u32(el::LIST_SET_ID, id);
        }
        attrs.nest(el::LIST_ELEMENTS, |w| w.raw(elements));
        let (kind, flags) = if delete {
            (NfTablesMessageType::DeleteSetElement, NLM_F_ACK)
        } else {
            (NfTablesMessageType::NewSetElement, NLM_F_CREATE | NLM_F_ACK)
        };
        Message::nft(
            kind,
            flags,
            nfproto(family),
            attrs,
            What::Elements { count, delete },
        )
    }

    pub fn get_generation() -> Message {
        Message::nft(
            NfTablesMessageType::GetGen,
            0,
            u8::from(NetfilterProtoFamily::Unspec),
            AttrBuf::new(),
            What::GetGeneration,
        )
    }

    pub fn get_table(family: Family, name: &str) -> Message {
        Message::named(
            NfTablesMessageType::GetTable,
            0,
            family,
            &[(tb::NAME, name)],
            What::Table("get"),
        )
    }

    /// Dumps of one table's chains, sets and rules. The kernel filters rules and sets by
    /// the table attribute; chains are filtered by the caller.
    pub fn dump_chains(family: Family, table: &str) -> Message {
        Message::named(
            NfTablesMessageType::GetChain,
            NLM_F_DUMP,
            family,
            &[(ch::TABLE, table)],
            What::TableDump("list chains of", ch::TABLE),
        )
    }

    pub fn dump_sets(family: Family, table: &str) -> Message {
        Message::named(
            NfTablesMessageType::GetSet,
            NLM_F_DUMP,
            family,
            &[(st::TABLE, table)],
            What::TableDump("list sets of", st::TABLE),
        )
    }

    /// One set's description (not a dump: the kernel answers ENOENT if it is absent).
    pub fn get_set(family: Family, table: &str, set: &str) -> Message {
        Message::named(
            NfTablesMessageType::GetSet,
            0,
            family,
            &[(st::TABLE, table), (st::NAME, set)],
            What::Set("get set"),
        )
    }

    pub fn dump_elements(family: Family, table: &str, set: &str) -> Message {
        Message::named(
            NfTablesMessageType::GetSetElement,
            NLM_F_DUMP,
            family,
            &[(el::LIST_TABLE, table), (el::LIST_SET, set)],
            What::ElementSet("list elements of set"),
        )
    }

    /// The rules of one chain. The kernel serves a whole-table rule dump by walking
    /// the table from its first rule again for every reply buffer, skipping what it
    /// already sent, which is quadratic in the table's rules; a chain's dump starts
    /// at its chain (found by hash) and walks only that chain.
    pub fn dump_chain_rules(family: Family, table: &str, chain: &str) -> Message {
        Message::named(
            NfTablesMessageType::GetRule,
            NLM_F_DUMP,
            family,
            &[(ru::TABLE, table), (ru::CHAIN, chain)],
            What::RuleChain("list rules of chain"),
        )
    }

    pub fn is_dump(&self) -> bool {
        self.flags & NLM_F_DUMP == NLM_F_DUMP
    }

    /// What the message does, for error reports: `add rule #3 to chain ip svc/x`.
    /// Object names come from the message's own attributes.
    pub fn what(&self) -> String {
        let attrs = Attrs::parse(&self.attrs).unwrap_or_default();
        let name = |kind: u16| attrs.string(kind).ok().flatten().unwrap_or_default();
        let family = match self.family {
            f if f == nfproto(Family::Ip) => Family::Ip.keyword(),
            f if f == nfproto(Family::Ip6) => Family::Ip6.keyword(),
            _ => "unspec",
        };
        match self.what {
            What::BatchBegin(Some(g)) => format!("begin batch (expecting generation {g})"),
            What::BatchBegin(None) => "begin batch".to_string(),
            What::BatchEnd => "end batch".to_string(),
            What::GetGeneration => "get generation".to_string(),
            What::Table(verb) => format!("{verb} table {family} {}", name(tb::NAME)),
            What::Chain(verb) => {
                format!("{verb} {family} {}/{}", name(ch::TABLE), name(ch::NAME))
            }
            What::RuleChain(verb) => {
                format!("{verb} {family} {}/{}", name(ru::TABLE), name(ru::CHAIN))
            }
            What::AddRule(index) => format!(
                "add rule #{index} to chain {family} {}/{}",
                name(ru::TABLE),
                name(ru::CHAIN)
            ),
            What::Set(verb) => {
                format!("{verb} {family} {}/{}", name(st::TABLE), name(st::NAME))
            }
            What::ElementSet(verb) => format!(
                "{verb} {family} {}/{}",
                name(el::LIST_TABLE),
                name(el::LIST_SET)
            ),
            What::Elements { count, delete } => {
                let action = if delete { "delete from" } else { "add to" };
                let plural = if count == 1 { "" } else { "s" };
                format!(
                    "{count} element{plural} ({action} set {family} {}/{})",
                    name(el::LIST_TABLE),
                    name(el::LIST_SET)
                )
            }
            What::TableDump(verb, table) => format!("{verb} {family} {}", name(table)),
        }
    }

    /// Bytes this message takes in a batch.
    pub fn wire_len(&self) -> usize {
        NLMSG_HDRLEN + NFGENMSG_LEN + self.attrs.len()
    }

    /// Appends the framed message with sequence number `seq` to `out`: `nlmsghdr`
    /// (native endian, port id 0 as the kernel fills it in), `nfgenmsg` (`res_id` big
    /// endian), then the attributes as built.
    pub fn emit(&self, seq: u32, out: &mut Vec<u8>) {
        out.reserve(self.wire_len());
        out.extend_from_slice(&(self.wire_len() as u32).to_ne_bytes());
        out.extend_from_slice(&self.msg_type.to_ne_bytes());
        out.extend_from_slice(&(NLM_F_REQUEST | self.flags).to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.push(self.family);
        out.push(NFNETLINK_V0);
        out.extend_from_slice(&self.res_id.to_be_bytes());
        out.extend_from_slice(&self.attrs);
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

    /// Descriptions are built from the attributes when asked for; they read as the
    /// eagerly formatted ones did.
    #[test]
    fn descriptions_name_the_objects() {
        let rule = Message::new_rule(Family::Ip, "svc", "c", 3, &[], None).unwrap();
        assert_eq!(rule.what(), "add rule #3 to chain ip svc/c");
        assert_eq!(
            Message::delete_chain(Family::Ip6, "svc", "svc-1").what(),
            "delete chain ip6 svc/svc-1"
        );
        assert_eq!(
            Message::set_elements(Family::Ip, "svc", "m", None, &[], 1, true).what(),
            "1 element (delete from set ip svc/m)"
        );
        assert_eq!(
            Message::set_elements(Family::Ip6, "svc", "m", Some(2), &[], 5, false).what(),
            "5 elements (add to set ip6 svc/m)"
        );
        assert_eq!(
            Message::dump_sets(Family::Ip, "svc").what(),
            "list sets of ip svc"
        );
        assert_eq!(
            Message::get_table(Family::Ip, "svc").what(),
            "get table ip svc"
        );
        assert_eq!(
            Message::batch_begin(Some(7)).what(),
            "begin batch (expecting generation 7)"
        );
        assert_eq!(Message::get_generation().what(), "get generation");
    }
}
