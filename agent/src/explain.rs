//! `svcproxy explain`: what svcproxy's rules do to one packet, and why.
//!
//! The snapshot is compiled to its nftables ruleset as `compile` would, and the packet is
//! run through it by the IR's interpreter (`svcproxy_compiler::nft::eval`): hook by hook,
//! every rule that matched, the DNAT candidates with their probabilities, masquerade, and
//! in words why it ends where it ends. Nothing touches the kernel.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};

use clap::{Args, ValueEnum};
use ipnet::IpNet;
use serde_json::json;
use svcproxy_compiler::nft::eval::{self, Branch, Fate, Host, Origin, Outcome, Packet, Step};
use svcproxy_compiler::nft::ir::{Family, Hook, L4Proto};

use crate::cli::{EXIT_FAILURE, NodeFlags, SnapshotArgs, invalid};

#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub node: NodeFlags,
    #[command(flatten)]
    pub snapshot: SnapshotArgs,
    /// The packet's source: an address, or address:port (`[v6]:port` for IPv6).
    #[arg(long, value_name = "IP[:PORT]", value_parser = source_arg)]
    pub src: SourceAddr,
    /// The packet's destination address and port (`[v6]:port` for IPv6).
    #[arg(long, value_name = "IP:PORT")]
    pub dst: SocketAddr,
    #[arg(long, value_enum, default_value_t = ProtoArg::Tcp)]
    pub proto: ProtoArg,
    /// Where the packet comes from: a pod or outside (it arrives on an interface), or
    /// the node itself (a process on the node sends it).
    #[arg(long, value_enum, default_value_t = FromArg::Pod)]
    pub from: FromArg,
    #[arg(long, value_enum, default_value_t = ExplainOutput::Text)]
    pub output: ExplainOutput,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceAddr {
    pub ip: IpAddr,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtoArg {
    Tcp,
    Udp,
    Sctp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FromArg {
    Pod,
    Node,
    Outside,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExplainOutput {
    Text,
    Json,
}

fn source_arg(text: &str) -> Result<SourceAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(SourceAddr {
            ip: addr.ip(),
            port: addr.port(),
        });
    }
    let ip = text
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .map_err(|_| format!("{text:?} is not an address or address:port"))?;
    Ok(SourceAddr { ip, port: 40000 })
}

/// Runs `svcproxy explain`; returns the exit status.
pub fn explain(args: &ExplainArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    if args.src.ip.is_ipv4() != args.dst.ip().is_ipv4() {
        return invalid(err, "--src and --dst must be of the same address family");
    }
    let plan = match crate::ops::compile(&args.node, &args.snapshot, err) {
        Ok(plan) => plan,
        Err(code) => return code,
    };
    let ruleset = svcproxy_compiler::nft::ruleset(&plan);
    let packet = Packet {
        proto: match args.proto {
            ProtoArg::Tcp => L4Proto::Tcp,
            ProtoArg::Udp => L4Proto::Udp,
            ProtoArg::Sctp => L4Proto::Sctp,
        },
        src: args.src.ip,
        sport: args.src.port,
        dst: args.dst.ip(),
        dport: args.dst.port(),
        origin: match args.from {
            FromArg::Node => Origin::Host,
            FromArg::Pod | FromArg::Outside => Origin::Arrives,
        },
    };
    let host = Host {
        local: args
            .node
            .node_ips
            .iter()
            .map(|ip| IpNet::from(*ip))
            .collect(),
    };
    let outcome = match eval::evaluate(&ruleset, &host, &packet) {
        Ok(outcome) => outcome,
        Err(e) => {
            let _ = writeln!(err, "error: evaluating the ruleset: {e}");
            return EXIT_FAILURE;
        }
    };
    let text = match args.output {
        ExplainOutput::Text => render_text(&packet, args.from, &outcome),
        ExplainOutput::Json => render_json(&packet, args.from, &outcome),
    };
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        let _ = writeln!(err, "error: writing the output: {e}");
        return EXIT_FAILURE;
    }
    0
}

fn endpoint(addr: IpAddr, port: u16) -> String {
    SocketAddr::new(addr, port).to_string()
}

fn from_words(from: FromArg) -> &'static str {
    match from {
        FromArg::Pod => "from a pod (arrives on an interface)",
        FromArg::Outside => "from outside (arrives on an interface)",
        FromArg::Node => "from the node itself",
    }
}

fn fate_words(fate: Fate) -> &'static str {
    match fate {
        Fate::Accepted => "accepted",
        Fate::Dropped => "dropped",
        Fate::Rejected => "rejected",
    }
}

/// One line per outcome: probability, translation, masquerade, fate.
fn outcome_line(branch: &Branch) -> String {
    let to = match branch.dnat {
        Some((addr, port)) => format!("DNAT to {}", endpoint(addr, port)),
        None => "no DNAT".to_string(),
    };
    let masq = if branch.masquerade {
        "masqueraded"
    } else {
        "not masqueraded"
    };
    match branch.fate {
        Fate::Accepted => format!(
            "{:>5.1}%  {to}, {masq}: accepted",
            branch.probability * 100.0
        ),
        fate => format!("{:>5.1}%  {}", branch.probability * 100.0, fate_words(fate)),
    }
}

fn step_line(step: &Step) -> String {
    let mut line = format!("{} rule {}: {}", step.chain, step.rule, step.text);
    if let Some(lookup) = &step.lookup {
        let key = match &lookup.element_comment {
            Some(c) => format!("the element of {c}"),
            None => "an element".to_string(),
        };
        let bucket = match lookup.bucket {
            Some((b, m)) => format!(" (random bucket {b} of {m})"),
            None => String::new(),
        };
        line.push_str(&format!(
            "\n        @{}: {key}{bucket} -> {}",
            lookup.map, lookup.value
        ));
    }
    line
}

fn render_text(packet: &Packet, from: FromArg, outcome: &Outcome) -> String {
    let mut out = format!(
        "{} {} -> {}, {}\n",
        packet.proto.keyword(),
        endpoint(packet.src, packet.sport),
        endpoint(packet.dst, packet.dport),
        from_words(from)
    );
    let Some(first) = outcome.branches.first() else {
        return out;
    };
    let mut hook: Option<Hook> = None;
    for step in &first.steps {
        if hook != Some(step.hook) {
            hook = Some(step.hook);
            out.push_str(&format!(
                "\n{} (table {} {}):\n",
                step.hook.keyword(),
                Family::of(&packet.dst).keyword(),
                step.table
            ));
        }
        out.push_str(&format!("    {}\n", step_line(step)));
    }
    if outcome.branches.len() > 1 {
        out.push_str(&format!(
            "\n(the steps of the first outcome; {} outcomes by random choice)\n",
            outcome.branches.len()
        ));
    }
    out.push_str("\noutcome:\n");
    for branch in &outcome.branches {
        out.push_str(&format!("    {}\n", outcome_line(branch)));
    }
    out.push_str(&format!("why: {}\n", why(outcome)));
    out
}

fn render_json(packet: &Packet, from: FromArg, outcome: &Outcome) -> String {
    let branches: Vec<_> = outcome
        .branches
        .iter()
        .map(|b| {
            json!({
                "probability": b.probability,
                "fate": fate_words(b.fate),
                "decidedIn": b.decided_in.map(|h| h.keyword()),
                "dnat": b.dnat.map(|(a, p)| endpoint(a, p)),
                "masquerade": b.masquerade,
                "steps": b.steps.iter().map(|s| json!({
                    "hook": s.hook.keyword(),
                    "table": s.table,
                    "chain": s.chain,
                    "rule": s.rule,
                    "text": s.text,
                    "comment": s.comment,
                    "lookup": s.lookup.as_ref().map(|l| json!({
                        "map": l.map,
                        "element": l.element_comment,
                        "value": l.value,
                        "bucket": l.bucket.map(|(b, m)| json!({"bucket": b, "of": m})),
                    })),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let value = json!({
        "packet": {
            "proto": packet.proto.keyword(),
            "src": endpoint(packet.src, packet.sport),
            "dst": endpoint(packet.dst, packet.dport),
            "from": match from { FromArg::Pod => "pod", FromArg::Node => "node", FromArg::Outside => "outside" },
        },
        "outcomes": branches,
        "why": why(outcome),
    });
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text
}

/// Why the packet ends where it ends, in words, read off the rules and maps that decided
/// it (the layout's map names and rule comments).
pub fn why(outcome: &Outcome) -> String {
    let Some(first) = outcome.branches.first() else {
        return "no outcome".into();
    };
    let service = |branch: &Branch, map_prefix: &str| {
        branch
            .steps
            .iter()
            .rev()
            .filter_map(|s| s.lookup.as_ref())
            .find(|l| l.map.starts_with(map_prefix))
            .map(|l| l.element_comment.clone().unwrap_or_else(|| l.map.clone()))
    };
    match first.fate {
        Fate::Rejected | Fate::Dropped => {
            let verb = fate_words(first.fate);
            if let Some(name) = service(first, "firewall-ips") {
                return format!(
                    "the source is outside the loadBalancerSourceRanges of {name}: {verb}"
                );
            }
            if let Some(name) = service(first, "no-endpoint-") {
                return match first.fate {
                    Fate::Rejected => format!("{name} has no endpoints: {verb}"),
                    _ => format!(
                        "{name} has endpoints, but none this traffic may use (traffic policy \
                         Local and no endpoint on this node): {verb}"
                    ),
                };
            }
            let last = first.steps.last();
            match last.and_then(|s| s.comment.as_deref()) {
                Some("Drop traffic to unallocated ClusterIPs") => {
                    format!(
                        "the address is in a Service CIDR but no Service has it (unallocated ClusterIP): {verb}"
                    )
                }
                Some("Reject traffic to invalid ports of ClusterIPs") => {
                    format!(
                        "the address is a ClusterIP, but no Service port of it is this protocol and port: {verb}"
                    )
                }
                Some(comment) => format!("{comment}: {verb}"),
                None => match last {
                    Some(step) => format!("rule {} of chain {}: {verb}", step.rule, step.chain),
                    None => verb.to_string(),
                },
            }
        }
        Fate::Accepted => {
            let translated: Vec<&Branch> = outcome
                .branches
                .iter()
                .filter(|b| b.dnat.is_some())
                .collect();
            if translated.is_empty() {
                return "not a Service address and port: svcproxy's rules leave it untouched"
                    .into();
            }
            let masqueraded: Vec<String> = outcome
                .branches
                .iter()
                .filter(|b| b.masquerade)
                .filter_map(|b| b.dnat.map(|(a, p)| endpoint(a, p)))
                .collect();
            let masq = match masqueraded.len() {
                0 => "not masqueraded".to_string(),
                n if n == outcome.branches.len() => "masqueraded".to_string(),
                _ => format!("masqueraded when sent to {}", masqueraded.join(", ")),
            };
            format!(
                "{} endpoint{} to choose from at random; {masq}",
                translated.len(),
                if translated.len() == 1 { "" } else { "s" }
            )
        }
    }
}
