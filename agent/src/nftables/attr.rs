//! Netlink attributes as nf_tables uses them: a tree of byte values and nested lists.
//!
//! Encoding goes through [`Attr`], which implements `netlink_packet_core::Nla` so the
//! core crate does the header, padding and `NLA_F_NESTED` bookkeeping. Decoding goes
//! through [`Attrs`], a borrowed view of one attribute list with typed getters that
//! report which attribute was missing or malformed instead of panicking: everything
//! it reads comes from the kernel.

use netlink_packet_core::{NLA_F_NESTED, NLA_HEADER_SIZE, NLA_TYPE_MASK, Nla, NlasIterator};

use super::error::{Error, Result};

/// One attribute to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Attr {
    Bytes { kind: u16, value: Vec<u8> },
    Nested { kind: u16, attrs: Vec<Attr> },
}

impl Attr {
    pub fn bytes(kind: u16, value: impl Into<Vec<u8>>) -> Attr {
        Attr::Bytes {
            kind,
            value: value.into(),
        }
    }

    /// nf_tables integers are big endian on the wire (`NLA_BE32`).
    pub fn u32(kind: u16, value: u32) -> Attr {
        Attr::bytes(kind, value.to_be_bytes())
    }

    pub fn u64(kind: u16, value: u64) -> Attr {
        Attr::bytes(kind, value.to_be_bytes())
    }

    /// A NUL-terminated string (`NLA_STRING` as libnftnl sends it).
    pub fn str(kind: u16, value: &str) -> Attr {
        let mut bytes = Vec::with_capacity(value.len() + 1);
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(0);
        Attr::bytes(kind, bytes)
    }

    pub fn nested(kind: u16, attrs: Vec<Attr>) -> Attr {
        Attr::Nested { kind, attrs }
    }

    /// Size of this attribute on the wire, header and padding included.
    pub fn wire_len(&self) -> usize {
        netlink_packet_core::Emitable::buffer_len(self)
    }
}

impl Nla for Attr {
    fn value_len(&self) -> usize {
        match self {
            Attr::Bytes { value, .. } => value.len(),
            Attr::Nested { attrs, .. } => attrs.iter().map(Attr::wire_len).sum(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Attr::Bytes { kind, .. } => *kind,
            Attr::Nested { kind, .. } => *kind | NLA_F_NESTED,
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Attr::Bytes { value, .. } => buffer[..value.len()].copy_from_slice(value),
            Attr::Nested { attrs, .. } => {
                netlink_packet_core::Emitable::emit(&attrs.as_slice(), buffer)
            }
        }
    }
}

/// Attributes already in wire form, written front to back. Messages keep their
/// attributes this way: building a message is then the only walk over its attribute
/// tree, emitting it is one copy, and its length is known without recomputing every
/// nest's size (which the `Nla` route does at each level, several times over).
///
/// The bytes are those `netlink_packet_core`'s `Nla` emission produces for the same
/// [`Attr`] tree: 16-bit length without padding (wrapping as its `as u16` does), type
/// with `NLA_F_NESTED` on nests, value, zero padding to 4 bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AttrBuf {
    buf: Vec<u8>,
}

impl AttrBuf {
    pub fn new() -> AttrBuf {
        AttrBuf::default()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    fn header(&mut self, kind: u16, value_len: usize) {
        // Flag bits in `kind` would be treated differently by the `Nla` route; svcproxy
        // passes plain attribute numbers only.
        debug_assert_eq!(kind & !NLA_TYPE_MASK, 0, "attribute type with flag bits");
        let len = (value_len as u16).wrapping_add(NLA_HEADER_SIZE as u16);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
    }

    /// Zero padding up to the next 4-byte boundary. Every attribute starts aligned
    /// relative to the start of the buffer, so aligning the buffer's length aligns
    /// the attribute.
    fn pad(&mut self) {
        let aligned = self.buf.len().next_multiple_of(4);
        self.buf.resize(aligned, 0);
    }

    pub fn bytes(&mut self, kind: u16, value: &[u8]) {
        self.header(kind, value.len());
        self.buf.extend_from_slice(value);
        self.pad();
    }

    /// See [`Attr::u32`].
    pub fn u32(&mut self, kind: u16, value: u32) {
        self.bytes(kind, &value.to_be_bytes());
    }

    /// See [`Attr::str`].
    pub fn str(&mut self, kind: u16, value: &str) {
        self.header(kind, value.len() + 1);
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    /// A nest whose contents `f` writes; its header is filled in once they are.
    pub fn nest<R>(&mut self, kind: u16, f: impl FnOnce(&mut AttrBuf) -> R) -> R {
        debug_assert_eq!(kind & !NLA_TYPE_MASK, 0, "attribute type with flag bits");
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; NLA_HEADER_SIZE]);
        let result = f(self);
        // Children end aligned, so the nest needs no padding of its own.
        let value_len = self.buf.len() - start - NLA_HEADER_SIZE;
        let len = (value_len as u16).wrapping_add(NLA_HEADER_SIZE as u16);
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.buf[start + 2..start + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        result
    }

    /// Writes an [`Attr`] tree.
    pub fn attr(&mut self, attr: &Attr) {
        match attr {
            Attr::Bytes { kind, value } => self.bytes(*kind, value),
            Attr::Nested { kind, attrs } => self.nest(*kind, |w| {
                for attr in attrs {
                    w.attr(attr);
                }
            }),
        }
    }

    /// Appends attributes encoded by another [`AttrBuf`].
    pub fn raw(&mut self, encoded: &[u8]) {
        debug_assert_eq!(encoded.len() % 4, 0, "unaligned attributes");
        self.buf.extend_from_slice(encoded);
    }
}

/// Writes a list of attributes into `out` the `Nla` way: the reference [`AttrBuf`] is
/// tested against.
#[cfg(test)]
pub(crate) fn emit_attrs(attrs: &[Attr], out: &mut Vec<u8>) {
    let start = out.len();
    let len: usize = attrs.iter().map(Attr::wire_len).sum();
    out.resize(start + len, 0);
    netlink_packet_core::Emitable::emit(&attrs, &mut out[start..]);
}

/// A received attribute list: `(type without flags, value)` pairs, borrowed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Attrs<'a> {
    items: Vec<(u16, &'a [u8])>,
}

impl<'a> Attrs<'a> {
    pub fn parse(buf: &'a [u8]) -> Result<Attrs<'a>> {
        let mut items = Vec::new();
        for nla in NlasIterator::new(buf) {
            let nla = nla.map_err(|e| Error::decode(format!("bad attribute: {e}")))?;
            let kind = nla.kind() & NLA_TYPE_MASK;
            let len = nla.value_length();
            // `NlaBuffer::value()` borrows the iterator item; slice the underlying
            // buffer instead so the value lives as long as `buf`.
            let value = nla
                .into_inner()
                .get(NLA_HEADER_SIZE..NLA_HEADER_SIZE + len)
                .ok_or_else(|| Error::decode("truncated attribute"))?;
            items.push((kind, value));
        }
        Ok(Attrs { items })
    }

    pub fn iter(&self) -> impl Iterator<Item = (u16, &'a [u8])> + '_ {
        self.items.iter().copied()
    }

    pub fn get(&self, kind: u16) -> Option<&'a [u8]> {
        self.items.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v)
    }

    pub fn has(&self, kind: u16) -> bool {
        self.get(kind).is_some()
    }

    pub fn u32(&self, kind: u16) -> Result<Option<u32>> {
        self.get(kind)
            .map(|v| {
                <[u8; 4]>::try_from(v).map(u32::from_be_bytes).map_err(|_| {
                    Error::decode(format!(
                        "attribute {kind}: expected 4 bytes, got {}",
                        v.len()
                    ))
                })
            })
            .transpose()
    }

    pub fn u64(&self, kind: u16) -> Result<Option<u64>> {
        self.get(kind)
            .map(|v| {
                <[u8; 8]>::try_from(v).map(u64::from_be_bytes).map_err(|_| {
                    Error::decode(format!(
                        "attribute {kind}: expected 8 bytes, got {}",
                        v.len()
                    ))
                })
            })
            .transpose()
    }

    pub fn string(&self, kind: u16) -> Result<Option<String>> {
        self.get(kind).map(parse_string).transpose()
    }

    pub fn nested(&self, kind: u16) -> Result<Option<Attrs<'a>>> {
        self.get(kind).map(Attrs::parse).transpose()
    }

    /// Like [`Attrs::u32`] but the attribute must be present; `what` names it in errors.
    pub fn need_u32(&self, kind: u16, what: &str) -> Result<u32> {
        self.u32(kind)?.ok_or_else(|| Error::missing(what))
    }

    pub fn need_string(&self, kind: u16, what: &str) -> Result<String> {
        self.string(kind)?.ok_or_else(|| Error::missing(what))
    }

    pub fn need_nested(&self, kind: u16, what: &str) -> Result<Attrs<'a>> {
        self.nested(kind)?.ok_or_else(|| Error::missing(what))
    }
}

/// Strings arrive NUL-terminated (and possibly padded); stop at the first NUL.
pub(crate) fn parse_string(value: &[u8]) -> Result<String> {
    let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
    String::from_utf8(value[..end].to_vec())
        .map_err(|_| Error::decode("string attribute is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_attributes_round_trip() {
        let attrs = vec![
            Attr::str(1, "svc"),
            Attr::nested(2, vec![Attr::u32(1, 7), Attr::bytes(2, vec![1, 2, 3])]),
            Attr::u64(3, 10_800_000),
        ];
        let mut buf = Vec::new();
        emit_attrs(&attrs, &mut buf);
        // "svc\0" fits 4 bytes; 3 bytes pad to 4; nested header carries NLA_F_NESTED.
        assert_eq!(&buf[..8], &[8, 0, 1, 0, b's', b'v', b'c', 0]);
        assert_eq!(u16::from_ne_bytes([buf[10], buf[11]]), 2 | NLA_F_NESTED);

        let parsed = Attrs::parse(&buf).unwrap();
        assert_eq!(parsed.need_string(1, "name").unwrap(), "svc");
        let inner = parsed.need_nested(2, "inner").unwrap();
        assert_eq!(inner.need_u32(1, "n").unwrap(), 7);
        assert_eq!(inner.get(2), Some(&[1u8, 2, 3][..]));
        assert_eq!(parsed.u64(3).unwrap(), Some(10_800_000));
        assert!(parsed.u32(9).unwrap().is_none());
    }

    #[test]
    fn wrong_sizes_are_errors_not_panics() {
        let mut buf = Vec::new();
        emit_attrs(&[Attr::bytes(1, vec![1, 2])], &mut buf);
        let parsed = Attrs::parse(&buf).unwrap();
        assert!(parsed.u32(1).is_err());
        assert!(Attrs::parse(&[5, 0, 1]).is_err());
    }

    /// `AttrBuf` writes what the `Nla` route writes, padding and nest flags included.
    #[test]
    fn attr_buf_matches_nla_emission() {
        let attrs = vec![
            Attr::str(1, "svc"),
            Attr::str(4, "four"),
            Attr::nested(
                2,
                vec![
                    Attr::u32(1, 7),
                    Attr::bytes(2, vec![1, 2, 3]),
                    Attr::nested(3, vec![]),
                    Attr::nested(4, vec![Attr::bytes(5, vec![9]), Attr::u64(6, 1 << 40)]),
                ],
            ),
            Attr::bytes(3, Vec::new()),
        ];
        let mut expected = Vec::new();
        emit_attrs(&attrs, &mut expected);
        let mut w = AttrBuf::new();
        for attr in &attrs {
            w.attr(attr);
        }
        assert_eq!(w.as_bytes(), expected.as_slice());
        assert_eq!(w.len(), attrs.iter().map(Attr::wire_len).sum::<usize>());
    }
}
