//! Where data sits: key types and their byte widths, how nft lays a concatenated key
//! out over registers, and the bytes of one key value.
//!
//! The kernel's data registers are one 64-byte area addressed in 4-byte slots.
//! nft places the components of a concatenation in consecutive slots, each component
//! rounded up to whole slots (an IPv4 address takes 1, an IPv6 address 4, a protocol
//! or port 1), and names the register of slot `s` the way `netlink_put_register`
//! does: the 16-byte register `NFT_REG_1 + s/4` when `s` is a multiple of 4, the
//! 4-byte register `NFT_REG32_00 + s` otherwise. So `ip daddr . meta l4proto . th
//! dport` loads into registers 1, 9 and 10, and the IPv6 version into 1, 2 and 13.
//! The set key has the same layout: each component padded to a multiple of 4 bytes.

use std::net::IpAddr;

use ipnet::IpNet;
use svcproxy_compiler::nft::ir::{Family, KeyType, KeyValue, L4Proto, Values};

use super::error::{Error, Result};
use super::uapi::reg;

/// Bits per component in nft's concatenated type id (`TYPE_BITS`).
const TYPE_BITS: u32 = 6;

/// nft's data type ids (`enum datatypes`).
const TYPE_INTEGER: u32 = 4;
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;

/// Bytes of one value of the type, unpadded.
pub(crate) fn type_len(key: KeyType) -> usize {
    match key {
        KeyType::Ipv4Addr => 4,
        KeyType::Ipv6Addr => 16,
        KeyType::InetProto => 1,
        KeyType::InetService => 2,
        KeyType::Integer => 4,
    }
}

/// Bytes a component takes inside a concatenation: rounded up to whole 4-byte slots.
pub(crate) fn padded_len(key: KeyType) -> usize {
    type_len(key).div_ceil(4) * 4
}

/// `NFTA_SET_KEY_LEN`: a single type is unpadded; a concatenation is padded per component.
pub(crate) fn key_len(key: &[KeyType]) -> usize {
    match key {
        [single] => type_len(*single),
        _ => key.iter().copied().map(padded_len).sum(),
    }
}

/// `NFTA_SET_KEY_TYPE`: nft's type id, concatenations folded 6 bits per component.
pub(crate) fn key_type_id(key: &[KeyType]) -> u32 {
    key.iter()
        .fold(0, |acc, k| (acc << TYPE_BITS) | type_id(*k))
}

fn type_id(key: KeyType) -> u32 {
    match key {
        KeyType::Ipv4Addr => TYPE_IPADDR,
        KeyType::Ipv6Addr => TYPE_IP6ADDR,
        KeyType::InetProto => TYPE_INET_PROTOCOL,
        KeyType::InetService => TYPE_INET_SERVICE,
        KeyType::Integer => TYPE_INTEGER,
    }
}

/// Splits a (possibly concatenated) type id back into its components.
pub(crate) fn key_types_from_id(mut id: u32) -> Result<Vec<KeyType>> {
    let mut types = Vec::new();
    let mask = (1 << TYPE_BITS) - 1;
    while id != 0 {
        types.push(match id & mask {
            TYPE_IPADDR => KeyType::Ipv4Addr,
            TYPE_IP6ADDR => KeyType::Ipv6Addr,
            TYPE_INET_PROTOCOL => KeyType::InetProto,
            TYPE_INET_SERVICE => KeyType::InetService,
            TYPE_INTEGER => KeyType::Integer,
            other => return Err(Error::decode(format!("set key data type {other}"))),
        });
        id >>= TYPE_BITS;
    }
    if types.is_empty() {
        return Err(Error::decode("set key data type 0"));
    }
    types.reverse();
    Ok(types)
}

/// The register nft names for 4-byte slot `slot` of the data area.
pub(crate) fn slot_register(slot: u32) -> u32 {
    if slot % 4 == 0 {
        reg::REG_1 + slot / 4
    } else {
        reg::REG32_00 + slot
    }
}

/// The register of the slot `slots` after the one `register` names (a data register
/// as [`slot_register`] names them).
pub(crate) fn shift_register(register: u32, slots: u32) -> u32 {
    let slot = if register >= reg::REG32_00 {
        register - reg::REG32_00
    } else {
        (register - reg::REG_1) * 4
    };
    slot_register(slot + slots)
}

/// The registers nft loads the components of a key into, in order.
pub(crate) fn concat_registers(key: &[KeyType]) -> Vec<u32> {
    let mut slot = 0;
    key.iter()
        .map(|k| {
            let register = slot_register(slot);
            slot += (padded_len(*k) / 4) as u32;
            register
        })
        .collect()
}

/// The key type a value of an address family has.
pub(crate) fn addr_type(family: Family) -> KeyType {
    match family {
        Family::Ip => KeyType::Ipv4Addr,
        Family::Ip6 => KeyType::Ipv6Addr,
    }
}

pub(crate) fn addr_bytes(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The bytes of a key value (for prefixes: of its first address), padded when the key is
/// a concatenation.
pub(crate) fn key_bytes(key: &[KeyType], values: &[KeyValue]) -> Result<Vec<u8>> {
    key_bytes_with(key, values, |net| net.network())
}

/// Like [`key_bytes`] but prefixes contribute their last address: the `KEY_END` of a
/// concatenated interval element.
pub(crate) fn key_end_bytes(key: &[KeyType], values: &[KeyValue]) -> Result<Vec<u8>> {
    key_bytes_with(key, values, |net| net.broadcast())
}

fn key_bytes_with(
    key: &[KeyType],
    values: &[KeyValue],
    addr_of: impl Fn(&IpNet) -> IpAddr,
) -> Result<Vec<u8>> {
    if key.len() != values.len() {
        return Err(Error::encode(format!(
            "element with {} values for a key of {} types",
            values.len(),
            key.len()
        )));
    }
    let concat = key.len() > 1;
    let mut out = Vec::with_capacity(key_len(key));
    for (ty, value) in key.iter().zip(values) {
        let mut bytes = match (ty, value) {
            (KeyType::Ipv4Addr, KeyValue::Net(net @ IpNet::V4(_)))
            | (KeyType::Ipv6Addr, KeyValue::Net(net @ IpNet::V6(_))) => addr_bytes(&addr_of(net)),
            (KeyType::InetProto, KeyValue::Proto(p)) => vec![p.number()],
            (KeyType::InetService, KeyValue::Port(p)) => p.to_be_bytes().to_vec(),
            // nft keeps a numgen bucket as the register holds it: host byte order.
            (KeyType::Integer, KeyValue::Int(n)) => n.to_ne_bytes().to_vec(),
            (ty, value) => {
                return Err(Error::encode(format!(
                    "value {value:?} for key type {}",
                    ty.keyword()
                )));
            }
        };
        if concat {
            bytes.resize(padded_len(*ty), 0);
        }
        out.extend_from_slice(&bytes);
    }
    Ok(out)
}

/// Splits key bytes back into values (addresses as host prefixes); an error if there
/// are more than `N`.
pub(crate) fn key_values<const N: usize>(key: &[KeyType], bytes: &[u8]) -> Result<Values<N>> {
    if bytes.len() != key_len(key) {
        return Err(Error::decode(format!(
            "key of {} bytes for a key of length {}",
            bytes.len(),
            key_len(key)
        )));
    }
    let concat = key.len() > 1;
    let mut rest = bytes;
    let mut values = Values::new();
    for ty in key {
        let width = if concat {
            padded_len(*ty)
        } else {
            type_len(*ty)
        };
        let (field, tail) = rest.split_at(width);
        rest = tail;
        let field = &field[..type_len(*ty)];
        let value = match ty {
            KeyType::Ipv4Addr | KeyType::Ipv6Addr => {
                KeyValue::Net(IpNet::from(addr_from_bytes(field)?))
            }
            KeyType::InetProto => KeyValue::Proto(proto_from_number(field[0])?),
            KeyType::InetService => KeyValue::Port(u16::from_be_bytes([field[0], field[1]])),
            KeyType::Integer => {
                KeyValue::Int(u32::from_ne_bytes([field[0], field[1], field[2], field[3]]))
            }
        };
        values
            .push(value)
            .map_err(|e| Error::decode(format!("key of {} components: {e}", key.len())))?;
    }
    Ok(values)
}

pub(crate) fn addr_from_bytes(bytes: &[u8]) -> Result<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        Ok(IpAddr::from(v4))
    } else if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        Ok(IpAddr::from(v6))
    } else {
        Err(Error::decode(format!("address of {} bytes", bytes.len())))
    }
}

pub(crate) fn proto_from_number(n: u8) -> Result<L4Proto> {
    [L4Proto::Tcp, L4Proto::Udp, L4Proto::Sctp]
        .into_iter()
        .find(|p| p.number() == n)
        .ok_or_else(|| Error::decode(format!("layer-4 protocol {n}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4_SVC: [KeyType; 3] = [KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService];
    const V6_SVC: [KeyType; 3] = [KeyType::Ipv6Addr, KeyType::InetProto, KeyType::InetService];
    const V4_BUCKET: [KeyType; 4] = [
        KeyType::Ipv4Addr,
        KeyType::InetProto,
        KeyType::InetService,
        KeyType::Integer,
    ];

    #[test]
    fn registers_match_nft() {
        // From `nft --debug=netlink`: reg 1, 9, 10 for IPv4 and reg 1, 2, 13 for IPv6.
        assert_eq!(concat_registers(&V4_SVC), vec![1, 9, 10]);
        assert_eq!(concat_registers(&V6_SVC), vec![1, 2, 13]);
        assert_eq!(
            concat_registers(&[KeyType::InetProto, KeyType::InetService]),
            vec![1, 9]
        );
        assert_eq!(slot_register(8), 3);
        assert_eq!(slot_register(15), 23);
        // A map datum from reg 2 on: `ip saddr : 10.0.0.1 . 8080` loads reg 2 and 13.
        assert_eq!(shift_register(1, 4), 2);
        assert_eq!(shift_register(9, 4), 13);
        assert_eq!(shift_register(2, 4), 3);
    }

    #[test]
    fn type_ids_and_lengths_match_nft() {
        assert_eq!(key_type_id(&V4_SVC), 0x730d);
        assert_eq!(key_len(&V4_SVC), 12);
        assert_eq!(key_len(&V6_SVC), 24);
        assert_eq!(
            key_type_id(&[KeyType::InetProto, KeyType::InetService]),
            0x30d
        );
        assert_eq!(key_len(&[KeyType::InetService]), 2);
        assert_eq!(key_types_from_id(0x730d).unwrap(), V4_SVC.to_vec());
        assert!(key_types_from_id(0x3f).is_err());
    }

    #[test]
    fn concatenated_key_bytes() {
        let values = vec![
            KeyValue::Net("10.96.0.1/32".parse().unwrap()),
            KeyValue::Proto(L4Proto::Tcp),
            KeyValue::Port(443),
        ];
        let bytes = key_bytes(&V4_SVC, &values).unwrap();
        assert_eq!(bytes, [10, 96, 0, 1, 6, 0, 0, 0, 1, 187, 0, 0]);
        assert_eq!(*key_values::<4>(&V4_SVC, &bytes).unwrap(), values);
        assert!(key_bytes(&V6_SVC, &values).is_err());
    }

    #[test]
    fn endpoint_map_key_matches_nft() {
        // `typeof ip daddr . meta l4proto . th dport . numgen random mod 2`: nft 1.0.6
        // sends key type 0x001cc344, key length 16, and registers 1, 9, 10, 11.
        assert_eq!(key_type_id(&V4_BUCKET), 0x001c_c344);
        assert_eq!(key_len(&V4_BUCKET), 16);
        assert_eq!(concat_registers(&V4_BUCKET), vec![1, 9, 10, 11]);
        assert_eq!(key_types_from_id(0x001c_c344).unwrap(), V4_BUCKET.to_vec());
        // IPv6: 1, 2, 13, 14 (`nft --debug=netlink`).
        let mut v6 = V6_SVC.to_vec();
        v6.push(KeyType::Integer);
        assert_eq!(concat_registers(&v6), vec![1, 2, 13, 14]);
        assert_eq!(key_len(&v6), 28);
        // The element `10.96.0.1 . tcp . 80 . 1` as nft prints its key:
        // 0100600a 00000006 00005000 00000001 (32-bit words in host order).
        let values = vec![
            KeyValue::Net("10.96.0.1/32".parse().unwrap()),
            KeyValue::Proto(L4Proto::Tcp),
            KeyValue::Port(80),
            KeyValue::Int(1),
        ];
        let bytes = key_bytes(&V4_BUCKET, &values).unwrap();
        let words: Vec<u32> = bytes
            .chunks(4)
            .map(|w| u32::from_ne_bytes(w.try_into().unwrap()))
            .collect();
        assert_eq!(words, [0x0100_600a, 0x0000_0006, 0x0000_5000, 0x0000_0001]);
        assert_eq!(*key_values::<4>(&V4_BUCKET, &bytes).unwrap(), values);
        assert!(key_values::<3>(&V4_BUCKET, &bytes).is_err());
        // A bucket is not a port.
        assert!(key_bytes(&[KeyType::Integer], &[KeyValue::Port(1)]).is_err());
    }
}
