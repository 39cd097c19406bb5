//! Strict parsing of IP addresses and CIDRs.
//!
//! Kubernetes' own Go code historically accepted `10.0.0.010` (and read it as decimal),
//! while C libraries read it as octal: the same string means two addresses. svcproxy
//! rejects such ambiguous forms instead of guessing, and normalises harmless variants
//! (upper-case or zero-padded IPv6) to their canonical text.

use std::net::IpAddr;

use ipnet::IpNet;

/// Parses an IP address, rejecting ambiguous forms. Returns a message suitable for a
/// diagnostic on failure.
pub fn parse_ip(text: &str) -> Result<IpAddr, String> {
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
