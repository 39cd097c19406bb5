//! The command line of the IPVS backend: its flags, and what `apply`, `plan` and
//! `cleanup` do with `--backend ipvs` (`run` goes through [`crate::sync::Syncer`]).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use svcproxy_compiler::ipvs::{DEFAULT_INTERFACE, IpvsState};

use super::sync::ownership::DEFAULT_STATE_FILE;
use super::sync::{IpvsConfig, IpvsSyncer, SyncError};
use crate::cli::{Backend, EXIT_FAILURE, NodeFlags, SnapshotArgs};
use crate::ops::{duration_arg, kernel_error};
use crate::sync::BackendConfig;

/// `--backend` and the IPVS backend's agent flags, for `apply`, `plan` and `run`.
#[derive(Debug, Clone, Args)]
pub struct BackendArgs {
    /// What programs the Services: nftables rules, or IPVS virtual servers (with a small
    /// companion nftables table).
    #[arg(long, value_enum, default_value_t = Backend::Nftables)]
    pub backend: Backend,
    #[command(flatten)]
    pub ipvs: IpvsArgs,
}

/// Agent flags of `--backend ipvs`.
#[derive(Debug, Clone, Args)]
pub struct IpvsArgs {
    /// IPVS: how long a TCP real server that left its Service keeps its open
    /// connections (at weight 0, so no new ones) before it is deleted anyway; it goes
    /// as soon as IPVS counts none. UDP and SCTP real servers go at once. 0s: no
    /// draining.
    #[arg(long, default_value = "15m", value_name = "DURATION", value_parser = duration_arg)]
    pub ipvs_drain_timeout: Duration,
    /// IPVS: leave the companion nftables table out (for kernels without nftables'
    /// ip/ip6 families). Without it nothing masquerades, hairpin traffic fails and
    /// traffic to Services without endpoints is not rejected.
    #[arg(long)]
    pub ipvs_without_nftables: bool,
    /// IPVS: where svcproxy records the virtual servers it created, so that after a
    /// restart it deletes its own and no one else's.
    #[arg(long, default_value = DEFAULT_STATE_FILE, value_name = "PATH")]
    pub ipvs_state_file: PathBuf,
}

/// `svcproxy cleanup`'s flags.
#[derive(Debug, Clone, Args)]
pub struct CleanupArgs {
    /// The IPVS dummy interface to delete (with its addresses).
    #[arg(long, default_value = DEFAULT_INTERFACE, value_name = "NAME")]
    pub ipvs_interface: String,
    /// The record of svcproxy's IPVS virtual servers (see `run --help`).
    #[arg(long, default_value = DEFAULT_STATE_FILE, value_name = "PATH")]
    pub ipvs_state_file: PathBuf,
}

impl IpvsArgs {
    pub fn config(&self, node: &NodeFlags) -> IpvsConfig {
        IpvsConfig {
            interface: node.ipvs_interface.clone(),
            drain_timeout: self.ipvs_drain_timeout,
            companion: !self.ipvs_without_nftables,
            state_file: Some(self.ipvs_state_file.clone()),
        }
    }
}

impl BackendArgs {
    /// What `svcproxy run` drives.
    pub fn config(&self, node: &NodeFlags) -> BackendConfig {
        match self.backend {
            Backend::Nftables => BackendConfig::Nftables,
            Backend::Ipvs => BackendConfig::Ipvs {
                options: node.ipvs_options(),
                syncer: self.ipvs.config(node),
            },
        }
    }
}

/// Compiles the snapshot into the IPVS state; on failure prints why and returns the
/// exit status.
fn compile(
    node: &NodeFlags,
    snapshot: &SnapshotArgs,
    err: &mut dyn Write,
) -> Result<IpvsState, u8> {
    let plan = crate::ops::compile(node, snapshot, err)?;
    let state = svcproxy_compiler::ipvs::state(&plan, &node.ipvs_options());
    for warning in &state.warnings {
        let _ = writeln!(err, "warning: {warning}");
    }
    Ok(state)
}

/// `svcproxy apply --backend ipvs`: one full sync, then a read-back to prove the
/// kernel matches.
pub fn apply(
    node: &NodeFlags,
    snapshot: &SnapshotArgs,
    ipvs: &IpvsArgs,
    err: &mut dyn Write,
) -> u8 {
    let state = match compile(node, snapshot, err) {
        Ok(state) => state,
        Err(code) => return code,
    };
    let mut syncer = match IpvsSyncer::new(&ipvs.config(node)) {
        Ok(syncer) => syncer,
        Err(e) => return kernel_error(err, "starting the IPVS backend", e),
    };
    let outcome = match syncer.resync(&state) {
        Ok(outcome) => outcome,
        Err(e) => return sync_failed(err, &e),
    };
    match syncer.plan(&state) {
        Ok(left) if left.is_empty() => {}
        Ok(left) => {
            let what = format!(
                "{} IPVS operation(s), {} address change(s) left{}",
                left.ops.len(),
                left.addresses_to_add.len() + left.addresses_to_remove.len(),
                if left.companion_differs == Some(true) {
                    ", companion table differs"
                } else {
                    ""
                }
            );
            return kernel_error(err, "the kernel does not match after applying", what);
        }
        Err(e) => return kernel_error(err, "reading IPVS back", e),
    }
    let _ = if outcome.is_empty() {
        writeln!(err, "svcproxy: the kernel already matches")
    } else {
        writeln!(
            err,
            "svcproxy: applied {} ({} kernel messages, {:.1} ms)",
            outcome.summary(),
            outcome.messages(),
            outcome.duration.as_secs_f64() * 1000.0
        )
    };
    if outcome.draining > 0 {
        let _ = writeln!(
            err,
            "svcproxy: {} TCP real server(s) left at weight 0 for their open connections; \
             the next apply (or svcproxy run) deletes them once idle",
            outcome.draining
        );
    }
    0
}

fn sync_failed(err: &mut dyn Write, e: &SyncError) -> u8 {
    let _ = writeln!(
        err,
        "error: the IPVS sync was incomplete (applied: {}); what failed:",
        e.outcome.summary()
    );
    for failure in &e.failures {
        let _ = writeln!(err, "error:   {failure}");
    }
    EXIT_FAILURE
}

/// `svcproxy plan --backend ipvs`: what `apply` would change, as ipvsadm and ip
/// commands, without changing anything.
pub fn plan(
    node: &NodeFlags,
    snapshot: &SnapshotArgs,
    ipvs: &IpvsArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let state = match compile(node, snapshot, err) {
        Ok(state) => state,
        Err(code) => return code,
    };
    let planned = match IpvsSyncer::inspect(&ipvs.config(node)).map(|mut s| s.plan(&state)) {
        Ok(Ok(planned)) => planned,
        Ok(Err(e)) => return kernel_error(err, "reading IPVS", e),
        Err(e) => return kernel_error(err, "starting the IPVS backend", e),
    };
    let mut text = String::new();
    if planned.is_empty() {
        text.push_str("# no changes: the kernel matches the snapshot\n");
    } else {
        let addresses = planned.addresses_to_add.len() + planned.addresses_to_remove.len();
        text.push_str(&format!(
            "# svcproxy plan (IPVS): {} ipvsadm operation(s), {addresses} address change(s){}\n",
            planned.ops.len(),
            match planned.companion_differs {
                Some(true) => ", companion table replaced",
                _ => "",
            }
        ));
        for op in &planned.ops {
            text.push_str(&format!("{op}\n"));
        }
        let iface = &node.ipvs_interface;
        for ip in &planned.addresses_to_remove {
            text.push_str(&format!("ip address del {ip}/{} dev {iface}\n", prefix(ip)));
        }
        for ip in &planned.addresses_to_add {
            text.push_str(&format!("ip address add {ip}/{} dev {iface}\n", prefix(ip)));
        }
        if planned.companion_differs == Some(true) {
            text.push_str(
                "# the companion table differs and is replaced whole: \
                 `svcproxy compile --backend ipvs --output full` shows it\n",
            );
        }
    }
    if planned.draining > 0 {
        text.push_str(&format!(
            "# {} TCP real server(s) draining (weight 0), deleted once idle\n",
            planned.draining
        ));
    }
    match out.write_all(text.as_bytes()) {
        Ok(()) => 0,
        Err(e) => kernel_error(err, "writing the output", e),
    }
}

fn prefix(ip: &std::net::IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

/// `svcproxy cleanup`, IPVS part: svcproxy's virtual servers, its dummy interface and
/// addresses, the ownership record, the companion tables. Others' virtual servers
/// stay.
pub fn cleanup(args: &CleanupArgs, err: &mut dyn Write) -> u8 {
    let (cleaned, failures) =
        super::sync::cleanup(&args.ipvs_interface, Some(args.ipvs_state_file.clone()));
    if let Some(n) = cleaned.virtual_servers {
        let _ = writeln!(
            err,
            "svcproxy: deleted {n} IPVS virtual server(s), left {} of others",
            cleaned.others
        );
    }
    if let Some(n) = cleaned.interface_addresses {
        let _ = writeln!(
            err,
            "svcproxy: deleted interface {} and its {n} address(es)",
            args.ipvs_interface
        );
    }
    if let Some(n) = cleaned.companion_tables.filter(|n| *n > 0) {
        let _ = writeln!(err, "svcproxy: deleted {n} companion nftables table(s)");
    }
    if failures.is_empty() {
        return 0;
    }
    for failure in &failures {
        let _ = writeln!(err, "error: cleanup: {failure}");
    }
    EXIT_FAILURE
}
