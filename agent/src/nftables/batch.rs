//! Transactions: an ordered list of requests the kernel applies all together or not
//! at all, built from IR objects.
//!
//! Within a batch, objects refer to each other by name (or, for anonymous sets, by a
//! transaction-local set id), so order matters: a table before its chains and sets,
//! every chain before any rule (rules may jump forward), sets and their elements
//! before the rules that look them up, an anonymous set right before its rule.

use svcproxy_compiler::nft::ir::{Chain, Element, Family, KeyValue, Rule, Set, SetFlags, Table};

use super::attr::{Attr, AttrBuf};
use super::element::{Nests, element_attrs, element_key_attrs};
use super::error::{Error, Result};
use super::msg::Message;
use super::rule::{AnonSet, encode_stmts, key_expr_type};
use super::set::{ANON_SET_NAME, SetKind, set_attrs};

/// Element nests per message are capped so that `NFTA_SET_ELEM_LIST_ELEMENTS`, whose
/// length is a u16, never overflows; 32 KiB also keeps single allocations modest.
const MAX_ELEMENT_BYTES_PER_MESSAGE: usize = 32 * 1024;

/// A transaction under construction.
#[derive(Debug, Default)]
pub struct Batch {
    messages: Vec<Message>,
    /// Transaction-local ids for the sets this batch creates (`NFTA_SET_ID`).
    next_set_id: u32,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Number of requests so far (batch begin/end not counted).
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Size of the requests on the wire.
    pub fn wire_len(&self) -> usize {
        self.messages.iter().map(Message::wire_len).sum()
    }

    pub(crate) fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// The bytes one `sendmsg` carries for this batch: `BATCH_BEGIN` (sequence number
    /// `first_seq`, carrying `expected_generation`), the requests numbered on from it,
    /// then `BATCH_END`. Public so benchmarks and byte-pinning tests see exactly what
    /// [`super::NftSocket::commit`] sends.
    pub fn encode(&self, first_seq: u32, expected_generation: Option<u32>) -> Vec<u8> {
        let begin = Message::batch_begin(expected_generation);
        let end = Message::batch_end();
        // Sized exactly: the batch can be hundreds of megabytes, and growing it by
        // doubling would copy it again and again.
        let mut bytes = Vec::with_capacity(begin.wire_len() + self.wire_len() + end.wire_len());
        let mut seq = first_seq;
        for message in std::iter::once(&begin).chain(&self.messages).chain([&end]) {
            message.emit(seq, &mut bytes);
            seq = seq.wrapping_add(1);
        }
        bytes
    }

    /// Removes the table and everything in it, creating it first if it does not exist:
    /// `DELTABLE` alone would fail the whole batch with `ENOENT` on a fresh host.
    pub fn delete_table_if_exists(&mut self, family: Family, name: &str) -> Result<()> {
        self.messages.push(Message::new_table(family, name, None)?);
        self.messages.push(Message::delete_table(family, name));
        Ok(())
    }

    /// Creates the table with all its sets, elements, chains and rules. The table must
    /// not exist at this point of the transaction.
    pub fn add_table(&mut self, table: &Table) -> Result<()> {
        let family = table.family;
        let name = table.name.as_str();
        self.messages
            .push(Message::new_table(family, name, table.comment.as_deref())?);
        for chain in &table.chains {
            self.messages.push(Message::new_chain(family, name, chain)?);
        }
        for set in &table.sets {
            self.add_set(family, name, set)?;
        }
        for chain in &table.chains {
            for (index, rule) in chain.rules.iter().enumerate() {
                self.add_rule(family, name, &chain.name, index, rule)?;
            }
        }
        Ok(())
    }

    /// Creates a named set or map and adds its elements.
    pub fn add_set(&mut self, family: Family, table: &str, set: &Set) -> Result<()> {
        let id = self.take_set_id();
        self.messages.push(Message::new_set(
            family,
            encoded(&set_attrs(table, set, id, SetKind::Named { family })?),
        ));
        self.push_elements(
            family,
            table,
            &set.name,
            Some(id),
            element_attrs(set, &set.elements)?,
            false,
        );
        Ok(())
    }

    /// Adds elements to an existing set; `set` tells how to encode them (its own
    /// elements are ignored). For single-type interval sets this sends nft's full
    /// interval encoding of `elements`, which suits a set being filled (new, or just
    /// flushed), not intervals added next to existing ones.
    pub fn add_elements(
        &mut self,
        family: Family,
        table: &str,
        set: &Set,
        elements: &[Element],
    ) -> Result<()> {
        let nests = element_attrs(set, elements)?;
        self.push_elements(family, table, &set.name, None, nests, false);
        Ok(())
    }

    /// Deletes elements from an existing set, naming them by key (verdicts and comments
    /// are not sent). Single-type interval sets are refused with [`Error::Encode`]:
    /// flush them ([`Batch::flush_set`]) and add their new contents instead.
    pub fn delete_elements(
        &mut self,
        family: Family,
        table: &str,
        set: &Set,
        elements: &[Element],
    ) -> Result<()> {
        let nests = element_key_attrs(set, elements)?;
        self.push_elements(family, table, &set.name, None, nests, true);
        Ok(())
    }

    /// Deletes a table and everything in it; the table must exist.
    pub fn delete_table(&mut self, family: Family, name: &str) {
        self.messages.push(Message::delete_table(family, name));
    }

    /// Creates an empty chain (a base chain if `chain.base` says so); its rules are
    /// ignored, add them with [`Batch::add_rule`] once every chain they jump to exists.
    pub fn add_chain(&mut self, family: Family, table: &str, chain: &Chain) -> Result<()> {
        self.messages
            .push(Message::new_chain(family, table, chain)?);
        Ok(())
    }

    /// Deletes every rule of a chain, dropping the references they hold to other chains
    /// and to sets.
    pub fn flush_chain(&mut self, family: Family, table: &str, chain: &str) {
        self.messages
            .push(Message::flush_chain(family, table, chain));
    }

    /// Deletes a chain. Nothing may jump to it any more at this point of the batch.
    pub fn delete_chain(&mut self, family: Family, table: &str, chain: &str) {
        self.messages
            .push(Message::delete_chain(family, table, chain));
    }

    /// Deletes a set or map with its elements. No rule may look it up any more at this
    /// point of the batch.
    pub fn delete_set(&mut self, family: Family, table: &str, set: &str) {
        self.messages.push(Message::delete_set(family, table, set));
    }

    /// Deletes every element of a set or map.
    pub fn flush_set(&mut self, family: Family, table: &str, set: &str) {
        self.messages.push(Message::flush_set(family, table, set));
    }

    /// Appends a rule to a chain, preceded by the anonymous sets it uses. `index` is the
    /// rule's position in the chain, used only to name the message in errors.
    pub fn add_rule(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
        index: usize,
        rule: &Rule,
    ) -> Result<()> {
        let mut anon_sets = Vec::new();
        let exprs = encode_stmts(family, &rule.stmts, &mut |anon| {
            let id = self.take_set_id();
            anon_sets.push((id, anon));
            id
        })
        .map_err(|e| Error::encode(format!("rule #{index} of chain {table}/{chain}: {e}")))?;
        for (id, anon) in anon_sets {
            self.add_anon_set(family, table, id, anon)?;
        }
        self.messages.push(Message::new_rule(
            family,
            table,
            chain,
            index,
            &exprs,
            rule.comment.as_deref(),
        )?);
        Ok(())
    }

    fn add_anon_set(&mut self, family: Family, table: &str, id: u32, anon: AnonSet) -> Result<()> {
        let set = anon_set(family, &anon);
        let elements = element_attrs(&set, &set.elements)?;
        let kind = SetKind::Anon {
            family,
            key: anon.key,
            elements: elements.len() as u32,
        };
        self.messages.push(Message::new_set(
            family,
            encoded(&set_attrs(table, &set, id, kind)?),
        ));
        self.push_elements(family, table, ANON_SET_NAME, Some(id), elements, false);
        Ok(())
    }

    /// Splits element nests over as many messages as their size needs; each message
    /// carries a run of the encoded nests as they are.
    fn push_elements(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        set_id: Option<u32>,
        nests: Nests,
        delete: bool,
    ) {
        let bytes = nests.as_bytes();
        // Chunks of whole elements, (start, end, count), each within the message limit.
        let mut chunks = Vec::new();
        let (mut chunk_start, mut chunk_end, mut count) = (0, 0, 0);
        for &end in nests.ends() {
            if count > 0 && end - chunk_start > MAX_ELEMENT_BYTES_PER_MESSAGE {
                chunks.push((chunk_start, chunk_end, count));
                chunk_start = chunk_end;
                count = 0;
            }
            chunk_end = end;
            count += 1;
        }
        if count > 0 {
            chunks.push((chunk_start, chunk_end, count));
        }
        for (start, end, count) in chunks {
            self.messages.push(Message::set_elements(
                family,
                table,
                set,
                set_id,
                &bytes[start..end],
                count,
                delete,
            ));
        }
    }

    fn take_set_id(&mut self) -> u32 {
        self.next_set_id += 1;
        self.next_set_id
    }
}

/// Attributes built as a list (set descriptions), in wire form.
fn encoded(attrs: &[Attr]) -> AttrBuf {
    let mut w = AttrBuf::new();
    for attr in attrs {
        w.attr(attr);
    }
    w
}

/// The IR set an anonymous list (`{ address-or-prefix, ... }`, `{ tcp, udp }`) stands
/// for. Like nft, a list of plain values becomes a hash set, a list with a prefix an
/// interval set.
fn anon_set(family: Family, anon: &AnonSet) -> Set {
    let interval = anon
        .values
        .iter()
        .any(|v| matches!(v, KeyValue::Net(net) if net.prefix_len() != net.max_prefix_len()));
    Set {
        name: ANON_SET_NAME.to_string(),
        key: vec![key_expr_type(family, anon.key)],
        data: None,
        flags: SetFlags {
            interval,
            ..SetFlags::default()
        },
        timeout_secs: None,
        comment: None,
        exprs: None,
        elements: anon
            .values
            .iter()
            .map(|v| Element::new([*v].into()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnet::IpNet;
    use svcproxy_compiler::nft::ir::{KeyType, L4Proto, MapData, Verdict};

    #[test]
    fn large_element_lists_are_split() {
        let elements: Vec<Element> = (0..5000u32)
            .map(|i| {
                let key = [
                    KeyValue::Net(IpNet::from(std::net::IpAddr::from(
                        (0x0a00_0000 + i).to_be_bytes(),
                    ))),
                    KeyValue::Proto(L4Proto::Tcp),
                    KeyValue::Port(80),
                ];
                Element::new(key.into()).with_verdict(Verdict::Goto(format!("svc-{i}")))
            })
            .collect();
        let set = Set {
            name: "svc-ips".into(),
            key: vec![KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService],
            data: Some(MapData::Verdict),
            flags: SetFlags::default(),
            timeout_secs: None,
            exprs: None,
            comment: None,
            elements,
        };
        let mut batch = Batch::new();
        batch.add_set(Family::Ip, "svc", &set).unwrap();
        let element_messages = &batch.messages()[1..];
        assert!(element_messages.len() > 5);
        for m in element_messages {
            assert!(m.wire_len() < MAX_ELEMENT_BYTES_PER_MESSAGE + 256);
        }
    }
}
