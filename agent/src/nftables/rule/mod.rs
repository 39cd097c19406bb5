//! IR statements to expressions and back.
//!
//! Encoding produces exactly the expressions `nft` generates for the statement's text
//! form (checked against `nft --debug=netlink`), so that `nft list ruleset` prints our
//! rules as it prints its own. Decoding recognises those same sequences and nothing
//! else: a rule svcproxy did not write is an error, not a guess.

mod decode;
mod encode;
#[cfg(test)]
mod tests;

use svcproxy_compiler::nft::ir::{AddrField, Family, KeyExpr, KeyType};

use super::expr::CtKey;
use super::layout;
use super::uapi::reg;

pub(crate) use decode::decode_exprs;
pub(crate) use encode::{AnonSet, encode_stmts};

/// The register every single-value match loads into (`reg 1`).
const R1: u32 = reg::REG_1;

pub(crate) fn key_expr_type(family: Family, key: KeyExpr) -> KeyType {
    match key {
        KeyExpr::Addr(_) => layout::addr_type(family),
        KeyExpr::L4Proto => KeyType::InetProto,
        KeyExpr::ThDport => KeyType::InetService,
        KeyExpr::Numgen { .. } => KeyType::Integer,
        KeyExpr::CtOriginalAddr(_) => layout::addr_type(family),
        KeyExpr::CtOriginalProtoDst => KeyType::InetService,
    }
}

/// The `ct` key of `ct original ip saddr` and friends.
pub(crate) fn ct_original_addr_key(family: Family, field: AddrField) -> CtKey {
    match (family, field) {
        (Family::Ip, AddrField::Saddr) => CtKey::OriginalSrcIp,
        (Family::Ip, AddrField::Daddr) => CtKey::OriginalDstIp,
        (Family::Ip6, AddrField::Saddr) => CtKey::OriginalSrcIp6,
        (Family::Ip6, AddrField::Daddr) => CtKey::OriginalDstIp6,
    }
}

fn addr_len(family: Family) -> u32 {
    match family {
        Family::Ip => 4,
        Family::Ip6 => 16,
    }
}

/// Offsets of the source and destination address in the IPv4 and IPv6 headers.
fn addr_offset(family: Family, field: AddrField) -> u32 {
    match (family, field) {
        (Family::Ip, AddrField::Saddr) => 12,
        (Family::Ip, AddrField::Daddr) => 16,
        (Family::Ip6, AddrField::Saddr) => 8,
        (Family::Ip6, AddrField::Daddr) => 24,
    }
}

fn addr_field_at(family: Family, offset: u32) -> Option<AddrField> {
    [AddrField::Saddr, AddrField::Daddr]
        .into_iter()
        .find(|f| addr_offset(family, *f) == offset)
}
