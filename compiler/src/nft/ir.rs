//! A small typed model of an nftables ruleset: tables, chains, rules, sets and maps.
//!
//! This is the contract between the compiler and everything downstream: the text and
//! JSON renderers print it, the agent encodes it into netlink messages and decodes the
//! kernel's state back into it. Rules are therefore not strings but a closed list of
//! statements ([`Stmt`]), each of which has exactly one nft text form and one bytecode
//! form. Adding a statement means teaching all three (text, JSON, netlink) about it.

use std::net::IpAddr;

use ipnet::IpNet;

/// Address family of a table. svcproxy uses one `ip` and one `ip6` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Ip,
    Ip6,
}

impl Family {
    /// The nft keyword for the family (`ip`, `ip6`), also the payload protocol keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }

    /// The nft data type of an address of this family.
    pub fn addr_type(self) -> KeyType {
        match self {
            Family::Ip => KeyType::Ipv4Addr,
            Family::Ip6 => KeyType::Ipv6Addr,
        }
    }

    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::Ip,
            IpAddr::V6(_) => Family::Ip6,
        }
    }
}

/// Layer-4 protocols a service port can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L4Proto {
    Tcp,
    Udp,
    Sctp,
}

impl L4Proto {
    pub fn keyword(self) -> &'static str {
        match self {
            L4Proto::Tcp => "tcp",
            L4Proto::Udp => "udp",
            L4Proto::Sctp => "sctp",
        }
    }

    /// IANA protocol number (what `meta l4proto` compares against).
    pub fn number(self) -> u8 {
        match self {
            L4Proto::Tcp => 6,
            L4Proto::Udp => 17,
            L4Proto::Sctp => 132,
        }
    }
}

/// A whole ruleset: the tables svcproxy owns. Nothing outside these tables is ever
/// described, created or deleted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ruleset {
    pub tables: Vec<Table>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub family: Family,
    pub name: String,
    pub comment: Option<String>,
    /// Sets and maps, in declaration order (a set must exist before a rule refers to it).
    pub sets: Vec<Set>,
    /// Chains, in declaration order. Rules may jump to chains declared later: nft and
    /// the netlink batch both create every chain before adding any rule.
    pub chains: Vec<Chain>,
}

/// Base-chain hook points used by svcproxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl Hook {
    pub fn keyword(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChainType {
    Filter,
    Nat,
}

impl ChainType {
    pub fn keyword(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
        }
    }
}

/// What makes a chain a base chain: it is attached to a netfilter hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BaseChain {
    pub chain_type: ChainType,
    pub hook: Hook,
    /// Numeric priority (`dstnat` is -100, `srcnat` is 100).
    pub priority: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub base: Option<BaseChain>,
    pub comment: Option<String>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Statements in evaluation order; the last one is usually a verdict.
    pub stmts: Vec<Stmt>,
    pub comment: Option<String>,
}

/// Which address of the packet a statement looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrField {
    Saddr,
    Daddr,
}

impl AddrField {
    pub fn keyword(self) -> &'static str {
        match self {
            AddrField::Saddr => "saddr",
            AddrField::Daddr => "daddr",
        }
    }
}

/// One element of a lookup key: what `ip daddr . meta l4proto . th dport` is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyExpr {
    /// `ip saddr` / `ip6 daddr` (the family comes from the table).
    Addr(AddrField),
    /// `meta l4proto`
    L4Proto,
    /// `th dport`: the transport header's destination port, whatever the protocol.
    ThDport,
    /// `numgen random mod N`: a random bucket in `0..N` (the random choice of an
    /// endpoint, as the last component of an endpoint map's key).
    Numgen { modulus: u32 },
    /// `ct original ip daddr` / `ct original ip saddr`: the connection's address as
    /// the client first sent it, before any DNAT (the family comes from the table).
    CtOriginalAddr(AddrField),
    /// `ct original proto-dst`: the connection's destination port before any DNAT.
    /// nft needs a protocol match earlier in the rule to type it
    /// ([`Stmt::L4ProtoIn`] of the transport protocols).
    CtOriginalProtoDst,
}

/// Comparison operator of a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Eq,
    Ne,
}

/// The closed list of statements svcproxy emits. Matches first, then actions, then
/// verdicts; a rule is a sequence of these.
///
/// `Dport`, `NumgenRandomEq`, `UpdateMap` and `Dnat` are no longer emitted by the
/// layout (until 2026-12-03 the ClientIP-affinity cascades used them). They stay,
/// with their text, JSON and netlink forms, because the agent must read back and
/// replace the rules an earlier svcproxy left in the kernel: a statement it cannot
/// decode fails the read-back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stmt {
    // ----- matches -----
    /// `ct state new`
    CtStateNew,
    /// `ip daddr 10.0.0.1`, `ip saddr != 10.0.0.0/8`: one address or one prefix.
    Addr {
        field: AddrField,
        op: CmpOp,
        value: IpNet,
    },
    /// `ip daddr @cluster-ips`: membership in a named set.
    AddrInSet {
        field: AddrField,
        op: CmpOp,
        set: String,
    },
    /// `ip saddr != { 1.2.3.0/24, 5.6.7.8 }`: membership in an anonymous interval set.
    /// Only used where the list is short and per-service (firewall source ranges).
    AddrInList {
        field: AddrField,
        op: CmpOp,
        values: Vec<IpNet>,
    },
    /// `ip saddr . ip daddr @hairpin-endpoints`: membership of a concatenated key (two
    /// or more components) in a named set (`!=`: not a member).
    KeyInSet {
        key: Vec<KeyExpr>,
        op: CmpOp,
        set: String,
    },
    /// `meta l4proto tcp`
    L4Proto(L4Proto),
    /// `meta l4proto { tcp, udp, sctp }`: one of several protocols (an anonymous set).
    L4ProtoIn(Vec<L4Proto>),
    /// `ct status dnat`: the connection's destination was translated.
    CtStatusDnat,
    /// `tcp dport 80`: protocol-specific destination port (implies the protocol).
    Dport {
        proto: L4Proto,
        port: u16,
    },
    /// `fib saddr type local` / `fib daddr type local`: is the address one of this host's?
    FibAddrTypeLocal(AddrField),
    /// `meta mark & 0x00004000 == 0x00000000`: the given mark bits are all clear.
    MarkBitsClear(u32),
    /// `numgen random mod N == V`: the earlier random-choice cascade (not emitted).
    NumgenRandomEq {
        modulus: u32,
        value: u32,
    },

    // ----- actions -----
    /// `meta mark set meta mark | BITS`
    MarkSetOr(u32),
    /// `meta mark set meta mark ^ BITS`
    MarkSetXor(u32),
    /// `update @map { ip saddr : 10.0.0.1 . 8080 }`: add or refresh the packet's
    /// address as a key of a timeout map, with constant data (the element gets the
    /// map's default timeout). The earlier affinity cascades recorded so (not emitted).
    UpdateMap {
        map: String,
        field: AddrField,
        data: Vec<KeyValue>,
    },
    /// `update @map { ip saddr : ip daddr . th dport }`: add or refresh the packet's
    /// address as a key of a timeout map, with data read from the packet (one
    /// component per expression). ClientIP affinity records the endpoint a new
    /// connection was sent to so, in a hook after the DNAT: the endpoint is never a
    /// constant in a rule, so an endpoint change adds or removes no rule.
    UpdateMapFromPacket {
        map: String,
        field: AddrField,
        data: Vec<KeyExpr>,
    },
    /// `masquerade fully-random`
    MasqueradeFullyRandom,
    /// `meta l4proto tcp dnat to 10.0.0.1:80` (`dnat to [fd00::1]:80` for IPv6). The
    /// protocol match is part of the statement because nft needs it to accept a port.
    Dnat {
        proto: L4Proto,
        addr: IpAddr,
        port: u16,
    },

    /// `meta l4proto tcp dnat ip to ip saddr map @m` (IPv4: `m` maps the address to
    /// `address . port`), or, with `port_map`, `meta l4proto tcp dnat ip6 to ip6 saddr
    /// map @m : ip6 saddr map @p` (address and port from two maps: nft 1.0.6 cannot
    /// write an IPv6 `address . port` datum, see docs/design.md). A key missing from a
    /// map makes the rule not match, so evaluation goes on with the next rule.
    DnatFromMap {
        proto: L4Proto,
        field: AddrField,
        map: String,
        port_map: Option<String>,
    },

    /// `dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 3 map @m`:
    /// DNAT to the `address . port` that the map holds for the key. A key missing
    /// from the map makes the rule not match, so evaluation goes on with the next
    /// rule. (No protocol match is needed: nft accepts a port mapping whose key has
    /// `th dport`.)
    DnatMap {
        key: Vec<KeyExpr>,
        map: String,
    },

    // ----- verdicts -----
    /// `KEY vmap @map`: look the key up in a named verdict map.
    Vmap {
        key: Vec<KeyExpr>,
        map: String,
    },
    /// `reject` (ICMP port unreachable for the table's family).
    Reject,
    Verdict(Verdict),
}

/// Verdicts, as statements and as map values.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
}

/// The data types a set key (or a concatenation component) can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    Ipv4Addr,
    Ipv6Addr,
    InetProto,
    InetService,
    /// A 32-bit number in host byte order (a `numgen` bucket). nft cannot name it in
    /// `type`: a set with such a component is declared with `typeof` ([`SetExprs`]).
    Integer,
}

impl KeyType {
    pub fn keyword(self) -> &'static str {
        match self {
            KeyType::Ipv4Addr => "ipv4_addr",
            KeyType::Ipv6Addr => "ipv6_addr",
            KeyType::InetProto => "inet_proto",
            KeyType::InetService => "inet_service",
            KeyType::Integer => "integer",
        }
    }
}

/// A named set (`data` is `None`) or map (`data` is `Some`): verdict maps, and the
/// ClientIP-affinity maps from a client address to its endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub name: String,
    /// One type, or several for a concatenation (`ipv4_addr . inet_proto . inet_service`).
    pub key: Vec<KeyType>,
    /// `Some(MapData::Verdict)` for a verdict map, `Some(MapData::Value(..))` for a
    /// data map.
    pub data: Option<MapData>,
    pub flags: SetFlags,
    /// Default timeout for elements, in seconds (only with `flags.timeout`).
    pub timeout_secs: Option<u32>,
    pub comment: Option<String>,
    /// The expressions the key and data are typed after (`typeof ip daddr . numgen
    /// random mod 2 : ip daddr . th dport`), for sets whose types nft cannot name;
    /// `None` for `type ...` declarations. `key` and `data` still give the types.
    pub exprs: Option<SetExprs>,
    /// Elements, sorted: the renderer and the diff rely on a canonical order.
    pub elements: Vec<Element>,
}

/// The `typeof` declaration of a set: one expression per key (and data) component.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SetExprs {
    pub key: Vec<KeyExpr>,
    pub data: Vec<KeyExpr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MapData {
    Verdict,
    /// Values of these types (several: a concatenation, `ipv4_addr . inet_service`):
    /// the endpoint maps (elements listed in the IR, with [`Element::data`]) and the
    /// dynamic affinity maps (elements written by the packet path, `Stmt::UpdateMap`,
    /// never listed in the IR).
    Value(Vec<KeyType>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SetFlags {
    /// Elements may be prefixes (`flags interval`).
    pub interval: bool,
    /// Elements expire (`flags timeout`).
    pub timeout: bool,
    /// Rules add elements from the packet path (`flags dynamic`).
    pub dynamic: bool,
}

/// One value inside a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyValue {
    /// An address or, in interval sets, a prefix.
    Net(IpNet),
    Proto(L4Proto),
    Port(u16),
    /// A [`KeyType::Integer`] (a `numgen` bucket).
    Int(u32),
}

/// Up to `N` [`KeyValue`]s, held inline: the key or the data of an [`Element`].
///
/// A ruleset of 10k services has some 285k elements (780k at 50k services). With a
/// `Vec` for the key and one for the data, building and dropping them was ~450k heap
/// allocations at 10k services, the largest cost left in making the ruleset, and the
/// agent paid the same again decoding and diffing the kernel's elements. Keys have at
/// most 4 components (`address . protocol . port . bucket` of the endpoint maps, and
/// `address . protocol . port . address` of the IPVS table's hairpin and firewall
/// maps) and data at most 2 (`address . port`), so they fit a fixed array: an
/// [`Element`] is 136 bytes instead of 56 and two allocations, and at 10k services
/// making the ruleset takes a third fewer instructions.
///
/// It behaves as the slice it holds (`Deref`): comparison, order, hash and `Debug`
/// are the slice's, as they were the `Vec`'s. The slots past the length hold a
/// fixed value (`KeyValue::Int(0)`) and are never seen.
#[derive(Clone, Copy)]
pub struct Values<const N: usize> {
    values: [KeyValue; N],
    len: u8,
}

/// Values that do not fit a [`Values`]: more components than its capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyValues {
    pub capacity: usize,
}

impl std::fmt::Display for TooManyValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "more than {} components, the most svcproxy's sets have",
            self.capacity
        )
    }
}

impl std::error::Error for TooManyValues {}

impl<const N: usize> Values<N> {
    /// What the unused slots hold.
    const PAD: KeyValue = KeyValue::Int(0);

    /// No values.
    pub const fn new() -> Self {
        const { assert!(N <= u8::MAX as usize, "the length is a u8") };
        Values {
            values: [Self::PAD; N],
            len: 0,
        }
    }

    /// The values, or an error if there are more than `N`.
    pub fn try_from_slice(values: &[KeyValue]) -> Result<Self, TooManyValues> {
        let mut out = Self::new();
        out.values
            .get_mut(..values.len())
            .ok_or(TooManyValues { capacity: N })?
            .copy_from_slice(values);
        out.len = values.len() as u8;
        Ok(out)
    }

    /// Appends a value, or returns an error if all `N` slots are taken.
    pub fn push(&mut self, value: KeyValue) -> Result<(), TooManyValues> {
        let slot = self
            .values
            .get_mut(usize::from(self.len))
            .ok_or(TooManyValues { capacity: N })?;
        *slot = value;
        self.len += 1;
        Ok(())
    }

    pub fn as_slice(&self) -> &[KeyValue] {
        &self.values[..usize::from(self.len)]
    }
}

impl<const N: usize> Default for Values<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> std::ops::Deref for Values<N> {
    type Target = [KeyValue];

    fn deref(&self) -> &[KeyValue] {
        self.as_slice()
    }
}

impl<const N: usize> std::ops::DerefMut for Values<N> {
    fn deref_mut(&mut self) -> &mut [KeyValue] {
        &mut self.values[..usize::from(self.len)]
    }
}

/// `[a, b].into()`: a literal key, checked against the capacity at compile time.
impl<const N: usize, const M: usize> From<[KeyValue; M]> for Values<N> {
    fn from(values: [KeyValue; M]) -> Self {
        const { assert!(M <= N, "more values than the capacity") };
        let mut out = Self::new();
        out.values[..M].copy_from_slice(&values);
        out.len = M as u8;
        out
    }
}

impl<const N: usize> TryFrom<&[KeyValue]> for Values<N> {
    type Error = TooManyValues;

    fn try_from(values: &[KeyValue]) -> Result<Self, TooManyValues> {
        Self::try_from_slice(values)
    }
}

impl<'a, const N: usize> IntoIterator for &'a Values<N> {
    type Item = &'a KeyValue;
    type IntoIter = std::slice::Iter<'a, KeyValue>;

    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

impl<const N: usize> std::fmt::Debug for Values<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl<const N: usize> PartialEq for Values<N> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<const N: usize> Eq for Values<N> {}

impl<const N: usize> std::hash::Hash for Values<N> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl<const N: usize> PartialOrd for Values<N> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<const N: usize> Ord for Values<N> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

/// The most components a set key has.
pub const MAX_KEY: usize = 4;
/// The most components a map's data has.
pub const MAX_DATA: usize = 2;

/// An element of a set or map: its key, and a map's verdict or data; maybe a comment.
///
/// Almost every element has neither a verdict nor a comment: the address sets and
/// the endpoint maps hold nearly all of the ~700k elements of a 50k-service ruleset.
/// So those two live behind one pointer, `None` for most elements: an element is 136
/// bytes instead of 184 with both inline, and fresh memory is slow to fault in (the
/// elements were the largest part of the ruleset's).
///
/// Elements order by key, then verdict, then data, then comment (the order they had
/// as four fields): [`sort_elements`], and with it the order of the output, is this
/// order. Equality and hash are structural, which agrees with it because an element
/// with neither verdict nor comment never holds a box.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Element {
    /// One value per key component.
    pub key: Values<MAX_KEY>,
    /// The value, for data-map elements (one value per data component); empty otherwise.
    pub data: Values<MAX_DATA>,
    /// The verdict and the comment, if the element has either (never a box of two
    /// `None`s).
    extra: Option<Box<ElementExtra>>,
}

/// The rare parts of an [`Element`].
#[derive(Clone, PartialEq, Eq, Hash)]
struct ElementExtra {
    verdict: Option<Verdict>,
    comment: Option<String>,
}

impl ElementExtra {
    /// Boxed, or `None` if there is neither a verdict nor a comment.
    fn boxed(verdict: Option<Verdict>, comment: Option<String>) -> Option<Box<Self>> {
        (verdict.is_some() || comment.is_some()).then(|| Box::new(Self { verdict, comment }))
    }
}

impl Element {
    /// An element with this key and nothing else: a set's element.
    pub const fn new(key: Values<MAX_KEY>) -> Self {
        Element {
            key,
            data: Values::new(),
            extra: None,
        }
    }

    /// An element from all its parts.
    pub fn from_parts(
        key: Values<MAX_KEY>,
        verdict: Option<Verdict>,
        data: Values<MAX_DATA>,
        comment: Option<String>,
    ) -> Self {
        Element {
            key,
            data,
            extra: ElementExtra::boxed(verdict, comment),
        }
    }

    /// With this data: a data map's element.
    pub fn with_data(mut self, data: Values<MAX_DATA>) -> Self {
        self.data = data;
        self
    }

    /// With this verdict: a verdict map's element.
    pub fn with_verdict(mut self, verdict: Verdict) -> Self {
        self.set_verdict(Some(verdict));
        self
    }

    pub fn with_comment(mut self, comment: impl Into<String>) -> Self {
        self.set_comment(Some(comment.into()));
        self
    }

    /// The verdict, for verdict-map elements.
    pub fn verdict(&self) -> Option<&Verdict> {
        self.extra.as_ref()?.verdict.as_ref()
    }

    pub fn comment(&self) -> Option<&str> {
        self.extra.as_ref()?.comment.as_deref()
    }

    pub fn set_verdict(&mut self, verdict: Option<Verdict>) {
        let comment = self.extra.take().and_then(|extra| extra.comment);
        self.extra = ElementExtra::boxed(verdict, comment);
    }

    pub fn set_comment(&mut self, comment: Option<String>) {
        let verdict = self.extra.take().and_then(|extra| extra.verdict);
        self.extra = ElementExtra::boxed(verdict, comment);
    }
}

/// As the four fields it had, `Element { key, verdict, data, comment }`.
impl std::fmt::Debug for Element {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Element")
            .field("key", &self.key)
            .field("verdict", &self.verdict())
            .field("data", &self.data)
            .field("comment", &self.comment())
            .finish()
    }
}

impl PartialOrd for Element {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Key, verdict, data, comment: see [`Element`].
impl Ord for Element {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key
            .cmp(&other.key)
            .then_with(|| self.verdict().cmp(&other.verdict()))
            .then_with(|| self.data.cmp(&other.data))
            .then_with(|| self.comment().cmp(&other.comment()))
    }
}

/// Sorts a set's elements into their canonical order (`Element`'s `Ord`) and drops
/// duplicates.
///
/// The derived order compares keys component by component through the enums and
/// `IpNet`, behind a pointer per element: sorting the 300k elements of a large
/// endpoint map that way was a third of building the table. Here each key is first
/// packed into 256 bits whose order is the key's order (see [`pack_key`]), so nearly
/// every comparison is four integer compares; only equal packed keys fall back to the
/// full `Ord`, which also orders the verdict, data and comment. Sets whose keys do
/// not fit 256 bits (two IPv6 addresses and more) are sorted the plain way.
pub fn sort_elements(elements: &mut Vec<Element>) {
    // Layouts often add elements in order already: then one pass of comparisons
    // (strictly increasing: no duplicates either) is all it costs.
    if elements.is_sorted_by(|a, b| a < b) {
        return;
    }
    let packed: Option<Vec<([u64; 4], u32)>> = elements
        .iter()
        .zip(0u32..)
        .map(|(e, i)| pack_key(&e.key).map(|k| (k, i)))
        .collect();
    let Some(mut order) = packed.filter(|_| u32::try_from(elements.len()).is_ok()) else {
        elements.sort_unstable();
        elements.dedup();
        return;
    };
    order.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| elements[a.1 as usize].cmp(&elements[b.1 as usize]))
    });
    // Duplicates are adjacent and have equal packed keys: only those are compared whole.
    let duplicate: Vec<bool> = std::iter::once(false)
        .chain(order.windows(2).map(|pair| {
            pair[0].0 == pair[1].0 && elements[pair[0].1 as usize] == elements[pair[1].1 as usize]
        }))
        .collect();
    // Move each element to its place along the permutation's cycles, in place: a
    // second vector of 300k elements would be as many fresh pages to fault in.
    let mut source: Vec<u32> = order.into_iter().map(|(_, i)| i).collect();
    for start in 0..source.len() {
        let mut at = start;
        loop {
            let from = source[at] as usize;
            source[at] = at as u32;
            if from == start || from == at {
                break;
            }
            elements.swap(at, from);
            at = from;
        }
    }
    if duplicate.contains(&true) {
        let mut flags = duplicate.into_iter();
        elements.retain(|_| !flags.next().unwrap_or(false));
    }
}

/// A key packed into 256 bits, most significant first, so that comparing packed keys
/// as integers orders them as the keys' (slices') `Ord` does, or ties them. Each
/// component is a prefix-free code that keeps the derived order: a 2-bit variant tag
/// (`Net`, `Proto`, `Port`, `Int` in declaration order), then for `Net` the family bit
/// (V4 before V6), the address and the prefix length; for `Proto` its declaration
/// rank; for `Port` 16 bits; for `Int` 32. A key that is a prefix of another packs to
/// less or equal (zero padding): ties are settled by the full order. `None` if the
/// key needs more than 256 bits.
fn pack_key(key: &[KeyValue]) -> Option<[u64; 4]> {
    let mut packer = Packer::default();
    for value in key {
        match value {
            KeyValue::Net(IpNet::V4(net)) => {
                packer.push(0b00, 2)?;
                packer.push(0, 1)?;
                packer.push(u32::from(net.addr()).into(), 32)?;
                packer.push(net.prefix_len().into(), 8)?;
            }
            KeyValue::Net(IpNet::V6(net)) => {
                packer.push(0b00, 2)?;
                packer.push(1, 1)?;
                packer.push(u128::from(net.addr()), 128)?;
                packer.push(net.prefix_len().into(), 8)?;
            }
            KeyValue::Proto(proto) => {
                packer.push(0b01, 2)?;
                packer.push(*proto as u128, 2)?;
            }
            KeyValue::Port(port) => {
                packer.push(0b10, 2)?;
                packer.push((*port).into(), 16)?;
            }
            KeyValue::Int(int) => {
                packer.push(0b11, 2)?;
                packer.push((*int).into(), 32)?;
            }
        }
    }
    Some(packer.words())
}

/// Writes fields of up to 128 bits into a 256-bit number, most significant first.
#[derive(Default)]
struct Packer {
    high: u128,
    low: u128,
    /// Bits written so far.
    used: u32,
}

impl Packer {
    fn push(&mut self, value: u128, width: u32) -> Option<()> {
        debug_assert!((1..=128).contains(&width));
        if self.used + width > 256 {
            return None;
        }
        // Shift the 256 bits left by `width` (1..=128) and put `value` in the gap.
        self.high = if width == 128 {
            self.low
        } else {
            (self.high << width) | (self.low >> (128 - width))
        };
        self.low = if width == 128 {
            value
        } else {
            (self.low << width) | (value & ((1u128 << width) - 1))
        };
        self.used += width;
        Some(())
    }

    /// The bits written, left-aligned (zero padding at the end), as four words.
    fn words(&self) -> [u64; 4] {
        let pad = 256 - self.used;
        let (high, low) = match pad {
            0 => (self.high, self.low),
            1..128 => (
                (self.high << pad) | (self.low >> (128 - pad)),
                self.low << pad,
            ),
            128 => (self.low, 0),
            129..256 => (self.low << (pad - 128), 0),
            // Nothing written.
            _ => (0, 0),
        };
        [
            (high >> 64) as u64,
            high as u64,
            (low >> 64) as u64,
            low as u64,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys of every shape the layouts use, and some they do not (mixed families,
    /// different lengths), in a scrambled order with duplicates.
    fn scrambled_elements() -> Vec<Element> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut elements = Vec::new();
        for _ in 0..4000 {
            let v4 = |x: u64| IpNet::new(IpAddr::from([10, 0, (x >> 8) as u8, x as u8]), 32);
            let v6 = |x: u64| IpNet::new(IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, x as u16]), 128);
            let addr = |x: u64, six: bool| {
                KeyValue::Net(if six { v6(x) } else { v4(x) }.expect("valid prefix"))
            };
            let proto = [L4Proto::Tcp, L4Proto::Udp, L4Proto::Sctp][next(3) as usize];
            let mut key = match next(6) {
                5 => Vec::new(),
                0 => vec![addr(next(40), next(4) == 0)],
                1 => vec![addr(next(40), false), addr(next(40), false)],
                2 => vec![addr(next(40), true), addr(next(40), true)],
                3 => vec![
                    KeyValue::Proto(proto),
                    KeyValue::Port([0, 30000, 65535][next(3) as usize]),
                ],
                _ => vec![
                    addr(next(40), next(8) == 0),
                    KeyValue::Proto(proto),
                    KeyValue::Port(next(4) as u16),
                ],
            };
            if next(2) == 0 {
                key.push(KeyValue::Int([0, 1, u32::MAX][next(3) as usize]));
            }
            let verdict = match next(3) {
                0 => None,
                1 => Some(Verdict::Goto(format!("chain-{}", next(3)))),
                _ => Some(Verdict::Drop),
            };
            let comment = (next(4) == 0).then(|| "c".to_string());
            let key = Values::try_from_slice(&key).expect("at most 4 values");
            elements.push(Element::from_parts(key, verdict, Values::new(), comment));
        }
        elements
    }

    /// `Values` compares, orders, hashes and prints as the slice it holds: the
    /// padding is never seen.
    #[test]
    fn values_behave_as_their_slice() {
        use std::hash::{BuildHasher, RandomState};
        let keys = scrambled_elements().into_iter().map(|e| e.key);
        let keys: Vec<Values<4>> = keys.take(300).collect();
        let hasher = RandomState::new();
        for a in &keys {
            assert_eq!(format!("{a:?}"), format!("{:?}", a.to_vec()));
            assert_eq!(format!("{a:#?}"), format!("{:#?}", a.to_vec()));
            assert_eq!(hasher.hash_one(a), hasher.hash_one(a.to_vec()));
            for b in &keys {
                assert_eq!(a.cmp(b), a.to_vec().cmp(&b.to_vec()), "{a:?} vs {b:?}");
                assert_eq!(a == b, a.to_vec() == b.to_vec());
            }
        }
        // Padding is `Int(0)`: a key of it still differs from a shorter one.
        let zero = KeyValue::Int(0);
        let empty = Values::<2>::default();
        assert!(empty.is_empty());
        assert_eq!(format!("{empty:?}"), "[]");
        assert!(empty < Values::from([zero]));
        assert_ne!(Values::<2>::from([zero]), Values::from([zero, zero]));
        assert_ne!(
            hasher.hash_one(empty),
            hasher.hash_one(Values::<2>::from([zero]))
        );
    }

    #[test]
    fn values_refuse_more_than_their_capacity() {
        let port = KeyValue::Port(80);
        let mut values = Values::<2>::try_from_slice(&[port]).unwrap();
        assert_eq!(values.push(port), Ok(()));
        assert_eq!(*values, [port, port]);
        let full = TooManyValues { capacity: 2 };
        assert_eq!(values.push(port), Err(full));
        assert_eq!(values.len(), 2);
        assert_eq!(Values::<2>::try_from(&[port; 3][..]), Err(full));
        assert_eq!(Values::<2>::try_from(&[port; 2][..]), Ok(values));
        assert_eq!(
            full.to_string(),
            "more than 2 components, the most svcproxy's sets have"
        );
    }

    /// Elements are most of a ruleset's memory (~700k of them at 50k services), and
    /// fresh memory is slow to fault in: an element is its key, its data and one
    /// pointer to the rare verdict and comment.
    #[test]
    fn elements_are_small() {
        assert!(
            size_of::<Element>() <= 136,
            "Element is {} bytes",
            size_of::<Element>()
        );
    }

    /// Key, then verdict, then data, then comment: the order the output has always had.
    #[test]
    fn elements_order_by_key_verdict_data_comment() {
        let key = |port| Values::from([KeyValue::Port(port)]);
        let data = |port| Values::from([KeyValue::Port(port)]);
        let expected = [
            Element::new(key(1)).with_verdict(Verdict::Drop),
            // No verdict sorts first; then data.
            Element::new(key(2)).with_data(data(9)),
            // The verdict before the data.
            Element::new(key(2))
                .with_verdict(Verdict::Accept)
                .with_data(data(2)),
            Element::new(key(2))
                .with_verdict(Verdict::Drop)
                .with_data(data(1)),
            // The data before the comment.
            Element::new(key(3)).with_data(data(1)).with_comment("b"),
            Element::new(key(3)).with_data(data(2)),
            Element::new(key(3)).with_data(data(2)).with_comment("a"),
        ];
        assert!(expected.is_sorted_by(|a, b| a < b), "{expected:#?}");
        let mut elements: Vec<Element> = expected.iter().rev().cloned().collect();
        sort_elements(&mut elements);
        assert_eq!(elements, expected);
    }

    /// An element without verdict and comment is one, however it was made: equality
    /// and hash are structural.
    #[test]
    fn elements_without_verdict_or_comment_are_alike() {
        use std::hash::{BuildHasher, RandomState};
        let plain = Element::new([KeyValue::Port(80)].into());
        let mut cleared = plain
            .clone()
            .with_verdict(Verdict::Accept)
            .with_comment("c");
        assert_ne!(cleared, plain);
        cleared.set_verdict(None);
        assert_eq!(cleared.comment(), Some("c"));
        cleared.set_comment(None);
        assert_eq!(cleared, plain);
        let hasher = RandomState::new();
        assert_eq!(hasher.hash_one(&cleared), hasher.hash_one(&plain));
        let parts = Element::from_parts(plain.key, None, Values::new(), None);
        assert_eq!(parts, plain);
        assert_eq!(parts.cmp(&plain), std::cmp::Ordering::Equal);
    }

    /// `Debug` prints the four parts, as the struct of four fields did.
    #[test]
    fn elements_debug_as_four_fields() {
        let element = Element::new([KeyValue::Port(80)].into())
            .with_verdict(Verdict::Goto("svc".into()))
            .with_comment("c");
        assert_eq!(
            format!("{element:?}"),
            r#"Element { key: [Port(80)], verdict: Some(Goto("svc")), data: [], comment: Some("c") }"#
        );
    }

    #[test]
    fn sorting_by_packed_keys_gives_the_canonical_order() {
        let all = scrambled_elements();
        // Whole, and split by key length as a set holds them.
        let mut groups = vec![all.clone()];
        for len in 0..=4 {
            groups.push(all.iter().filter(|e| e.key.len() == len).cloned().collect());
        }
        for elements in groups {
            let mut expected = elements.clone();
            expected.sort();
            expected.dedup();
            let mut fast = elements;
            sort_elements(&mut fast);
            assert_eq!(fast, expected);
        }
    }

    #[test]
    fn packed_keys_order_as_the_keys_do() {
        let elements = scrambled_elements();
        for pair in elements.windows(2) {
            let (a, b) = (&pair[0].key, &pair[1].key);
            if let (Some(pa), Some(pb)) = (pack_key(a), pack_key(b)) {
                if pa != pb {
                    assert_eq!(pa.cmp(&pb), a.cmp(b), "{a:?} vs {b:?}");
                }
            }
        }
    }
}
