//! Text forms of the IPVS state: the virtual servers as `ipvsadm -R` input, the
//! addresses as `ip -batch` input, and both with the companion nftables table.
//!
//! `ipvsadm -R` has no comment syntax (a `#` line fails, and the restore stops there;
//! only the `ipvsadm-restore` wrapper drops lines starting with `#`), yet an output
//! without a word of explanation is hard to review. The output keeps its `#` lines, all
//! of them whole lines, and says how to load it: `ipvsadm-restore < FILE` or
//! `grep -v '^#' FILE | ipvsadm -R`.

use std::fmt::Write;
use std::net::IpAddr;

use super::{IpvsState, RealServer, Verdict, VirtualServer};
use crate::nft::ir::L4Proto;

/// The first line of each section of the full output; what follows it, up to the next
/// such line, is input for the tool the line names.
pub const SECTION_MARK: &str = "# ==== ";
/// The section with the addresses to bind.
pub const ADDRESSES_SECTION: &str = "# ==== addresses";
/// The section with the companion nftables table.
pub const NFTABLES_SECTION: &str = "# ==== nftables";

/// How to load the `ipvsadm` text, for the header.
pub const LOAD_HINT: &str = "ipvsadm -R refuses comment lines: load with `ipvsadm-restore < FILE` (it clears IPVS first) or `grep -v '^#' FILE | ipvsadm -R`";

/// The virtual servers as `ipvsadm -R` lines, each virtual server after a comment
/// naming its service port.
pub fn render_ipvsadm(state: &IpvsState, header: &[String]) -> String {
    let mut out = String::new();
    for line in header.iter().chain(&state.notes) {
        let _ = writeln!(out, "# {line}");
    }
    for vs in &state.virtual_servers {
        let service = service_arg(vs);
        let _ = writeln!(out, "# {} {}{}", vs.service, vs.kind.label(), why_empty(vs));
        let _ = write!(out, "-A {service} -s {}", vs.scheduler);
        if let Some(p) = &vs.persistence {
            let _ = write!(out, " -p {}", p.timeout_secs);
            if let Some(mask) = netmask_arg(vs.address, p.netmask) {
                let _ = write!(out, " -M {mask}");
            }
        }
        out.push('\n');
        for rs in &vs.real_servers {
            let _ = writeln!(
                out,
                "-a {service} -r {}{}",
                addr_port(rs.address, rs.port),
                rs_flags(rs)
            );
        }
    }
    out
}

/// The addresses to bind as `ip -batch` lines (`replace`, so that loading twice works).
pub fn render_addresses(state: &IpvsState) -> String {
    let mut out = String::new();
    for ip in &state.bind_addresses {
        let _ = match ip {
            IpAddr::V4(v4) => writeln!(out, "address replace {v4}/32 dev {}", state.interface),
            // No duplicate address detection: the address is the node's own, on a
            // dummy interface, and must be usable at once.
            IpAddr::V6(v6) => writeln!(
                out,
                "address replace {v6}/128 dev {} nodad",
                state.interface
            ),
        };
    }
    out
}

/// Everything IPVS mode programs: the virtual servers, then the addresses, then the
/// companion table (`nft_text`, already rendered), each section introduced by a
/// [`SECTION_MARK`] line that names the tool reading it.
pub fn render_full(state: &IpvsState, header: &[String], nft_text: &str) -> String {
    let mut out = render_ipvsadm(state, header);
    let _ = writeln!(
        out,
        "{ADDRESSES_SECTION} to bind on {iface}: `ip -batch` input (after `ip link add {iface} type dummy`) ====",
        iface = state.interface
    );
    out.push_str(&render_addresses(state));
    let _ = writeln!(
        out,
        "{NFTABLES_SECTION}: the companion table, `nft -f` input ===="
    );
    out.push_str(nft_text);
    out
}

/// The lines of one section of a full output (without its mark line), or `None`
/// when there is no such section. `section` is one of the `*_SECTION` constants.
pub fn section(full: &str, section: &str) -> Option<String> {
    let mut lines = full.split_inclusive('\n');
    lines.by_ref().find(|l| l.starts_with(section))?;
    Some(lines.take_while(|l| !l.starts_with(SECTION_MARK)).collect())
}

fn why_empty(vs: &VirtualServer) -> &'static str {
    match vs.verdict {
        Verdict::Forward => "",
        Verdict::Drop => " (no usable endpoint on this node: the nftables table drops)",
        Verdict::Reject => " (no endpoint: the nftables table rejects)",
    }
}

/// `-t 10.0.0.1:80`, `-u [fd00::1]:53`, `--sctp-service 10.0.0.1:9`.
fn service_arg(vs: &VirtualServer) -> String {
    let flag = match vs.protocol {
        L4Proto::Tcp => "-t",
        L4Proto::Udp => "-u",
        L4Proto::Sctp => "--sctp-service",
    };
    format!("{flag} {}", addr_port(vs.address, vs.port))
}

fn addr_port(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

fn rs_flags(rs: &RealServer) -> String {
    match rs.forward {
        super::Forward::Masquerade => format!(" -m -w {}", rs.weight),
    }
}

/// ipvsadm's `-M`: a dotted mask for IPv4, a prefix length for IPv6; nothing for a
/// full-length mask, which is the default (and which `ipvsadm -S` leaves out).
fn netmask_arg(ip: IpAddr, prefix: u8) -> Option<String> {
    match ip {
        IpAddr::V4(_) if prefix < 32 => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            Some(std::net::Ipv4Addr::from(mask).to_string())
        }
        IpAddr::V6(_) if prefix < 128 => Some(prefix.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmasks_print_only_when_not_full_length() {
        let v4: IpAddr = "10.0.0.1".parse().expect("literal");
        let v6: IpAddr = "fd00::1".parse().expect("literal");
        assert_eq!(netmask_arg(v4, 32), None);
        assert_eq!(netmask_arg(v4, 24).as_deref(), Some("255.255.255.0"));
        assert_eq!(netmask_arg(v4, 0).as_deref(), Some("0.0.0.0"));
        assert_eq!(netmask_arg(v6, 128), None);
        assert_eq!(netmask_arg(v6, 64).as_deref(), Some("64"));
    }

    #[test]
    fn sections_split_at_their_marks() {
        let full = "-A -t 1.2.3.4:80 -s rr\n# ==== addresses x\naddress replace 1.2.3.4/32 dev d\n# ==== nftables y\ntable ip t\n";
        assert_eq!(
            section(full, ADDRESSES_SECTION).as_deref(),
            Some("address replace 1.2.3.4/32 dev d\n")
        );
        assert_eq!(
            section(full, NFTABLES_SECTION).as_deref(),
            Some("table ip t\n")
        );
        let empty = "# ==== addresses x\n# ==== nftables y\n";
        assert_eq!(section(empty, ADDRESSES_SECTION).as_deref(), Some(""));
        assert_eq!(section(full, "# ==== other"), None);
    }
}
