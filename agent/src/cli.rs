//! The command line: flags, subcommands, and what each subcommand does.
//!
//! `main` only parses, sets up logging and calls [`Cli::execute`]; tests call
//! `execute` directly with in-memory writers.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use svcproxy_compiler::addr::{parse_cidr, parse_ip};
use svcproxy_compiler::ipvs::{Scheduler, UnknownScheduler};
use svcproxy_compiler::{NodeContext, Options};

/// svcproxy: a Kubernetes service proxy.
#[derive(Debug, Parser)]
#[command(name = "svcproxy", version, about)]
pub struct Cli {
    /// Log level (error, warn, info, debug, trace) or a tracing filter directive.
    #[arg(long, global = true, default_value = "warn", value_name = "LEVEL")]
    pub log_level: String,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compile a snapshot and print the rules (a dry run: nothing touches the kernel).
    Compile {
        #[arg(long, value_enum, default_value_t = Backend::Nftables)]
        backend: Backend,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
        #[command(flatten)]
        node: NodeFlags,
        #[command(flatten)]
        snapshot: SnapshotArgs,
    },
    /// Make the kernel match a snapshot now (one shot), sending only the difference;
    /// exit 0 when it does.
    Apply {
        #[command(flatten)]
        node: NodeFlags,
        #[command(flatten)]
        snapshot: SnapshotArgs,
        #[command(flatten)]
        backend: crate::ipvs::cmd::BackendArgs,
    },
    /// Print what `apply` would change in the live kernel, as nft commands, without
    /// changing anything.
    Plan {
        #[command(flatten)]
        node: NodeFlags,
        #[command(flatten)]
        snapshot: SnapshotArgs,
        #[command(flatten)]
        backend: crate::ipvs::cmd::BackendArgs,
    },
    /// What svcproxy's rules do to one packet, hook by hook, and why (nothing touches
    /// the kernel).
    Explain(crate::explain::ExplainArgs),
    /// The node agent: watch the snapshot, keep the kernel in sync, serve health and
    /// metrics.
    Run(crate::ops::RunArgs),
    /// Remove everything svcproxy owns in the kernel, and nothing else.
    Cleanup(crate::ipvs::cmd::CleanupArgs),
}

/// Exit status for input that cannot be used (bad snapshot, bad flags), like clap's
/// usage errors.
pub const EXIT_INVALID_INPUT: u8 = 2;
/// Exit status for everything else that fails (writing output, the kernel).
pub const EXIT_FAILURE: u8 = 1;

impl Cli {
    /// Runs the subcommand. Output goes to `out`, errors and warnings to `err`; the
    /// return value is the exit status.
    pub fn execute(&self, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
        match &self.command {
            Command::Compile {
                backend,
                output,
                node,
                snapshot,
            } => compile(*backend, *output, node, snapshot, out, err),
            Command::Apply {
                node,
                snapshot,
                backend,
            } => match backend.backend {
                Backend::Nftables => crate::ops::apply(node, snapshot, err),
                Backend::Ipvs => crate::ipvs::cmd::apply(node, snapshot, &backend.ipvs, err),
            },
            Command::Plan {
                node,
                snapshot,
                backend,
            } => match backend.backend {
                Backend::Nftables => crate::ops::plan(node, snapshot, out, err),
                Backend::Ipvs => crate::ipvs::cmd::plan(node, snapshot, &backend.ipvs, out, err),
            },
            Command::Explain(args) => crate::explain::explain(args, out, err),
            Command::Run(args) => crate::ops::run(args, err),
            // Both backends' leftovers, whichever ran last.
            Command::Cleanup(args) => {
                crate::ops::cleanup(err).max(crate::ipvs::cmd::cleanup(args, err))
            }
        }
    }
}

fn compile(
    backend: Backend,
    output: OutputFormat,
    node: &NodeFlags,
    snapshot: &SnapshotArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    if let Some(message) = unsupported(backend, output) {
        return invalid(err, message);
    }
    let options = node.options();
    let sources = match crate::source::read_sources(&snapshot.snapshots, options.max_input_bytes) {
        Ok(sources) => sources,
        Err(e) => return invalid(err, &e.to_string()),
    };
    let plan = match svcproxy_compiler::plan_owned(sources, &options) {
        Ok(plan) => plan,
        Err(e) => return invalid(err, &e.to_string()),
    };
    for warning in &plan.warnings {
        let _ = writeln!(err, "warning: {warning}");
    }
    let rendered = match backend {
        Backend::Nftables => match output {
            OutputFormat::Json => svcproxy_compiler::render_nftables_json(plan, &options),
            _ => svcproxy_compiler::render_nftables(plan, &options),
        },
        Backend::Ipvs => {
            let state = svcproxy_compiler::ipvs::state(&plan, &node.ipvs_options());
            for warning in &state.warnings {
                let _ = writeln!(err, "warning: {warning}");
            }
            match output {
                OutputFormat::Full => svcproxy_compiler::render_ipvs_full(&plan, &state),
                _ => svcproxy_compiler::render_ipvs(&plan, &state),
            }
        }
    };
    if let Err(e) = out.write_all(rendered.as_bytes()).and_then(|_| out.flush()) {
        let _ = writeln!(err, "error: writing the output: {e}");
        return EXIT_FAILURE;
    }
    0
}

/// Why an output format does not exist for a backend.
fn unsupported(backend: Backend, output: OutputFormat) -> Option<&'static str> {
    match (backend, output) {
        (Backend::Nftables, OutputFormat::Full) => Some("--output full is for --backend ipvs"),
        (Backend::Ipvs, OutputFormat::Json) => Some("--output json is for --backend nftables"),
        _ => None,
    }
}

/// Prints each line of an input error; returns the input-error exit status. Nothing
/// has been written to the output at this point.
pub(crate) fn invalid(err: &mut dyn Write, message: &str) -> u8 {
    for line in message.lines() {
        let _ = writeln!(err, "error: {line}");
    }
    EXIT_INVALID_INPUT
}

/// What the compiler must know about the node (kube-proxy's flags of the same names).
#[derive(Debug, Clone, Args)]
pub struct NodeFlags {
    /// This node's name: endpoints with this nodeName are local.
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// This node's zone, for topology hints (topology.kubernetes.io/zone).
    #[arg(long, value_name = "ZONE")]
    pub node_zone: Option<String>,
    /// This node's IP (repeatable; the first of each family is the primary).
    #[arg(long = "node-ip", value_name = "IP", value_parser = ip_arg)]
    pub node_ips: Vec<IpAddr>,
    /// Pod CIDR (repeatable, per family): sources inside are pods.
    #[arg(long = "cluster-cidr", value_name = "CIDR", value_parser = cidr_arg)]
    pub cluster_cidrs: Vec<IpNet>,
    /// Service CIDR (repeatable): ClusterIPs are allocated from it, unallocated
    /// addresses in it are dropped.
    #[arg(long = "service-cidr", value_name = "CIDR", value_parser = cidr_arg)]
    pub service_cidrs: Vec<IpNet>,
    /// Where NodePorts answer (repeatable CIDRs). Default: the node IPs;
    /// 0.0.0.0/0 or ::/0: every local address.
    #[arg(long = "nodeport-addresses", value_name = "CIDR", value_parser = cidr_arg)]
    pub nodeport_addresses: Vec<IpNet>,
    /// Masquerade every connection to a ClusterIP, not only those from outside the pods.
    #[arg(long)]
    pub masquerade_all: bool,
    /// The packet-mark bit that requests masquerade.
    #[arg(long, default_value_t = 14, value_name = "BIT", value_parser = clap::value_parser!(u8).range(0..=31))]
    pub masquerade_bit: u8,
    /// Fail on any invalid object instead of skipping it with a warning.
    #[arg(long)]
    pub strict: bool,
    /// The IPVS scheduler of virtual servers whose Service has no valid
    /// `svcproxy.io/ipvs-scheduler` annotation: rr, wrr, lc, wlc, sh, dh or mh.
    #[arg(long, default_value_t = Scheduler::Rr, value_name = "SCHEDULER", value_parser = scheduler_arg)]
    pub ipvs_scheduler: Scheduler,
    /// The dummy interface IPVS mode binds service addresses to.
    #[arg(long, default_value = svcproxy_compiler::ipvs::DEFAULT_INTERFACE, value_name = "NAME")]
    pub ipvs_interface: String,
    /// Refuse snapshots larger than this many bytes.
    #[arg(long, default_value_t = svcproxy_compiler::DEFAULT_MAX_INPUT_BYTES, value_name = "BYTES")]
    pub max_input_bytes: usize,
}

impl NodeFlags {
    pub fn options(&self) -> Options {
        Options {
            node: NodeContext {
                node_name: self.node_name.clone(),
                node_zone: self.node_zone.clone(),
                node_ips: self.node_ips.clone(),
                cluster_cidrs: self.cluster_cidrs.clone(),
                service_cidrs: self.service_cidrs.clone(),
                nodeport_addresses: self.nodeport_addresses.clone(),
                masquerade_all: self.masquerade_all,
                masquerade_bit: self.masquerade_bit,
            },
            strict: self.strict,
            max_input_bytes: self.max_input_bytes,
            release_memory: Some(crate::release_memory),
        }
    }

    /// What the IPVS backend needs beyond the plan.
    pub fn ipvs_options(&self) -> svcproxy_compiler::ipvs::Options {
        svcproxy_compiler::ipvs::Options {
            scheduler: self.ipvs_scheduler,
            interface: self.ipvs_interface.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    Nftables,
    /// IPVS virtual servers (with a small companion nftables table).
    Ipvs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// nft text, for `nft -f`; with `--backend ipvs`, `ipvsadm` restore lines.
    Text,
    /// nft JSON, as `nft -j list ruleset` prints it.
    Json,
    /// IPVS only: the virtual servers, then the addresses to bind on the dummy
    /// interface and the companion nftables table, each section after a `# ====` line.
    Full,
}

#[derive(Debug, Clone, Args)]
pub struct SnapshotArgs {
    /// Snapshot files or directories (YAML or JSON; `-` for stdin).
    #[arg(required = true, value_name = "SNAPSHOT")]
    pub snapshots: Vec<PathBuf>,
}

fn ip_arg(text: &str) -> Result<IpAddr, String> {
    parse_ip(text)
}

fn scheduler_arg(text: &str) -> Result<Scheduler, String> {
    text.parse().map_err(|e: UnknownScheduler| e.to_string())
}

fn cidr_arg(text: &str) -> Result<IpNet, String> {
    parse_cidr(text)
}
