//! Strict parsing of IP addresses and CIDRs.
//!
//! Kubernetes' own Go code historically accepted `10.0.0.010` (and read it as decimal),
//! while C libraries read it as octal: the same string means two addresses. svcproxy
//! rejects such ambiguous forms instead of guessing, and normalises harmless variants
//! (upper-case or zero-padded IPv6) to their canonical text.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

/// Parses an IP address, rejecting ambiguous forms. Returns a message suitable for a
/// diagnostic on failure.
pub fn parse_ip(text: &str) -> Result<IpAddr, String> {
    if let Some(ip) = canonical_ipv4(text.as_bytes()) {
        return Ok(IpAddr::V4(ip));
    }
    match text.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_some() => Err(format!(
            "{text:?} is an IPv4-mapped IPv6 address; write the IPv4 address instead"
        )),
        Ok(ip) => Ok(ip),
        Err(_) if has_leading_zero_octet(text) => Err(format!(
            "{text:?} is not a canonical IPv4 address (a leading zero could mean octal or decimal)"
        )),
        Err(_) => Err(format!("{text:?} is not a valid IP address")),
    }
}

/// Parses a CIDR whose host bits must be zero (`10.0.0.0/8`, not `10.0.0.1/8`).
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let net = parse_net(text)?;
    if net.trunc() != net {
        return Err(format!(
            "{text:?} has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// Parses a CIDR or a single address (as a host prefix), forgiving host bits and
/// surrounding spaces: what `loadBalancerSourceRanges` tolerates in practice.
pub fn parse_cidr_lenient(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if text.contains('/') {
        Ok(parse_net(text)?.trunc())
    } else {
        Ok(IpNet::from(parse_ip(text)?))
    }
}

fn parse_net(text: &str) -> Result<IpNet, String> {
    let Some((addr, len)) = text.split_once('/') else {
        return Err(format!(
            "{text:?} is not a CIDR (expected ADDRESS/PREFIX-LENGTH)"
        ));
    };
    let addr = parse_ip(addr)?;
    let len: u8 = len
        .parse()
        .map_err(|_| format!("{text:?} has an invalid prefix length"))?;
    IpNet::new(addr, len).map_err(|_| format!("{text:?} has a prefix length out of range"))
}

/// The address of a dotted quad in canonical form (four decimal octets of 0-255,
/// without leading zeros), or `None` for any other text, which the general parser
/// then reads. Every text accepted here is read the same by `Ipv4Addr::from_str`;
/// this is only faster: endpoint addresses are most of a snapshot's addresses, and
/// the general parser was a tenth of the model's time.
fn canonical_ipv4(text: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut rest = text;
    for (i, octet) in octets.iter_mut().enumerate() {
        let digits = rest
            .iter()
            .take(4)
            .take_while(|b| b.is_ascii_digit())
            .count();
        let value = match rest[..digits] {
            [a] => u32::from(a - b'0'),
            [b'0', ..] => return None,
            [a, b] => u32::from(a - b'0') * 10 + u32::from(b - b'0'),
            [a, b, c] => u32::from(a - b'0') * 100 + u32::from(b - b'0') * 10 + u32::from(c - b'0'),
            _ => return None,
        };
        *octet = u8::try_from(value).ok()?;
        rest = &rest[digits..];
        if i < 3 {
            rest = rest.strip_prefix(b".")?;
        }
    }
    rest.is_empty().then_some(Ipv4Addr::from(octets))
}

fn has_leading_zero_octet(text: &str) -> bool {
    let octets: Vec<&str> = text.split('.').collect();
    octets.len() == 4
        && octets
            .iter()
            .all(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()))
        && octets.iter().any(|o| o.len() > 1 && o.starts_with('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path reads exactly what the general parser reads, and declines the
    /// rest (which the general parser then accepts or rejects).
    #[test]
    fn canonical_ipv4_agrees_with_the_general_parser() {
        let mut texts: Vec<String> = [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.0.1",
            "1.2.3.4",
            "10.244.3.17",
            "256.0.0.1",
            "1.2.3",
            "1.2.3.4.5",
            "1..2.3",
            ".1.2.3",
            "1.2.3.",
            "01.2.3.4",
            "1.2.3.04",
            "1.2.3.0004",
            "1.2.3.1000",
            "1.2.3.4 ",
            " 1.2.3.4",
            "1.2.3.-4",
            "+1.2.3.4",
            "1.2.3.4/32",
            "",
            "fd00::1",
            "::ffff:1.2.3.4",
            "1.2.3.4x",
            "999.1.1.1",
            "00.1.1.1",
            "0.0.0.00",
            "100.200.250.255",
            "1.2.3.4\n",
        ]
        .iter()
        .map(|t| t.to_string())
        .collect();
        for a in [0, 1, 9, 10, 99, 100, 199, 249, 250, 255, 256, 300] {
            texts.push(format!("{a}.{a}.0.{a}"));
        }
        for text in &texts {
            let fast = canonical_ipv4(text.as_bytes());
            let general = text.parse::<Ipv4Addr>().ok();
            match fast {
                Some(ip) => assert_eq!(Some(ip), general, "{text:?}"),
                // Declined: only non-canonical or invalid texts may be.
                None => assert!(
                    general.is_none_or(|ip| ip.to_string() != *text),
                    "{text:?} is canonical but the fast path declined it"
                ),
            }
        }
    }

    #[test]
    fn rejects_ambiguous_ipv4() {
        let err = parse_ip("172.30.0.041").unwrap_err();
        assert!(err.contains("not a canonical IPv4 address"), "{err}");
        assert!(
            parse_ip("10.0.0.256")
                .unwrap_err()
                .contains("not a valid IP")
        );
    }

    #[test]
    fn normalises_ipv6() {
        assert_eq!(parse_ip("FD00:0:0::01").unwrap().to_string(), "fd00::1");
        assert!(parse_ip("::ffff:10.0.0.1").is_err());
    }

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert!(
            parse_cidr("10.0.0.1/8")
                .unwrap_err()
                .contains("did you mean 10.0.0.0/8")
        );
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("10.0.0.0").is_err());
        assert_eq!(
            parse_cidr_lenient(" 203.0.113.7/24 ").unwrap().to_string(),
            "203.0.113.0/24"
        );
        assert_eq!(
            parse_cidr_lenient("1.2.3.4").unwrap().to_string(),
            "1.2.3.4/32"
        );
    }
}
