//! The subcommands that touch the kernel: `apply`, `plan`, `run`, `cleanup`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use svcproxy_compiler::Plan;

use crate::cli::{EXIT_FAILURE, NodeFlags, SnapshotArgs, invalid};
use crate::daemon::{self, RunConfig};
use crate::nftables::NftSocket;
use crate::sync::{self, NftSyncer};

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub node: NodeFlags,
    #[command(flatten)]
    pub backend: crate::ipvs::cmd::BackendArgs,
    /// Snapshot files or directories to watch (repeatable).
    #[arg(long = "snapshot", required = true, value_name = "PATH")]
    pub snapshots: Vec<PathBuf>,
    /// Resync period: the kernel is read back and drift repaired this often.
    #[arg(long, default_value = "30s", value_parser = duration_arg)]
    pub sync_period: Duration,
    /// Minimum time between two syncs: bursts of changes become one sync.
    #[arg(long, default_value = "1s", value_parser = duration_arg)]
    pub min_sync_period: Duration,
    /// Where `/healthz` answers; empty to disable.
    #[arg(long, default_value = "0.0.0.0:10256", value_parser = address_arg)]
    pub healthz_bind_address: BindAddress,
    /// Where `/metrics` answers; empty to disable.
    #[arg(long, default_value = "127.0.0.1:10249", value_parser = address_arg)]
    pub metrics_bind_address: BindAddress,
}

/// A listen address, or none (the flag given as an empty string).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindAddress(pub Option<SocketAddr>);

/// Compiles the snapshot; on failure prints the errors and returns the exit status.
pub(crate) fn compile(
    node: &NodeFlags,
    snapshot: &SnapshotArgs,
    err: &mut dyn Write,
) -> Result<Plan, u8> {
    let options = node.options();
    let sources = crate::source::read_sources(&snapshot.snapshots, options.max_input_bytes)
        .map_err(|e| invalid(err, &e.to_string()))?;
    let plan = svcproxy_compiler::plan_owned(sources, &options)
        .map_err(|e| invalid(err, &e.to_string()))?;
    // The caller builds the ruleset beside the plan: the snapshot's memory goes back
    // now (the compiler releases after parsing and in `ruleset_owned` only).
    if let Some(release) = options.release_memory {
        release();
    }
    for warning in &plan.warnings {
        let _ = writeln!(err, "warning: {warning}");
    }
    Ok(plan)
}

pub(crate) fn kernel_error(err: &mut dyn Write, what: &str, error: impl std::fmt::Display) -> u8 {
    let _ = writeln!(err, "error: {what}: {error}");
    EXIT_FAILURE
}

/// `svcproxy apply`: one sync, then a read-back to prove the kernel matches.
pub fn apply(node: &NodeFlags, snapshot: &SnapshotArgs, err: &mut dyn Write) -> u8 {
    let plan = match compile(node, snapshot, err) {
        Ok(plan) => plan,
        Err(code) => return code,
    };
    let desired = svcproxy_compiler::nft::ruleset(&plan);
    let mut syncer = match NftSyncer::new() {
        Ok(syncer) => syncer,
        Err(e) => return kernel_error(err, "opening the nf_tables netlink socket", e),
    };
    let outcome = match syncer.sync(&desired) {
        Ok(outcome) => outcome,
        Err(e) => return kernel_error(err, "applying the ruleset (nothing was changed)", e),
    };
    match syncer.plan(&desired) {
        Ok(left) if left.is_empty() => {}
        Ok(left) => {
            let summary = left.summary();
            return kernel_error(err, "the kernel does not match after applying", summary);
        }
        Err(e) => return kernel_error(err, "reading the ruleset back", e),
    }
    let _ = if outcome.changes.is_empty() {
        writeln!(err, "svcproxy: the kernel already matches")
    } else {
        writeln!(
            err,
            "svcproxy: applied {} in one transaction ({} messages, {:.1} ms)",
            outcome.changes.summary(),
            outcome.messages,
            outcome.duration.as_secs_f64() * 1000.0
        )
    };
    0
}

/// `svcproxy plan`: what `apply` would send, as nft commands.
pub fn plan(
    node: &NodeFlags,
    snapshot: &SnapshotArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let plan = match compile(node, snapshot, err) {
        Ok(plan) => plan,
        Err(code) => return code,
    };
    let desired = svcproxy_compiler::nft::ruleset(&plan);
    let changes = match NftSyncer::new().and_then(|mut s| s.plan(&desired)) {
        Ok(changes) => changes,
        Err(e) => return kernel_error(err, "reading the ruleset", e),
    };
    let text = if changes.is_empty() {
        "# no changes: the kernel matches the snapshot\n".to_string()
    } else {
        format!(
            "# svcproxy plan: {}\n{}",
            changes.summary(),
            changes.to_nft()
        )
    };
    match out.write_all(text.as_bytes()) {
        Ok(()) => 0,
        Err(e) => kernel_error(err, "writing the output", e),
    }
}

/// `svcproxy run`.
pub fn run(args: &RunArgs, err: &mut dyn Write) -> u8 {
    let config = RunConfig {
        snapshots: args.snapshots.clone(),
        options: args.node.options(),
        sync_period: args.sync_period,
        min_sync_period: args.min_sync_period,
        healthz: args.healthz_bind_address.0,
        metrics: args.metrics_bind_address.0,
        backend: args.backend.config(&args.node),
    };
    match daemon::run(config) {
        Ok(()) => 0,
        Err(e) => kernel_error(err, "svcproxy run", format!("{e:#}")),
    }
}

/// `svcproxy cleanup`.
pub fn cleanup(err: &mut dyn Write) -> u8 {
    let deleted = NftSocket::open().and_then(|mut socket| sync::cleanup(&mut socket));
    match deleted {
        Ok(n) => {
            let _ = writeln!(err, "svcproxy: deleted {n} nftables table(s)");
            0
        }
        Err(e) => kernel_error(err, "cleanup", e),
    }
}

/// `30s`, `1.5s`, `500ms`, `2m`.
pub(crate) fn duration_arg(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| text.split_at(i))
        .ok_or_else(|| format!("{text:?}: expected a duration like 30s, 500ms or 2m"))?;
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a duration like 30s, 500ms or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

fn address_arg(text: &str) -> Result<BindAddress, String> {
    if text.is_empty() {
        return Ok(BindAddress(None));
    }
    text.parse()
        .map(|a| BindAddress(Some(a)))
        .map_err(|_| format!("{text:?} is not an address like 0.0.0.0:10256"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        crate::cli::Cli::command().debug_assert();
        let cli = <crate::cli::Cli as clap::Parser>::try_parse_from([
            "svcproxy",
            "run",
            "--snapshot",
            "x",
            "--healthz-bind-address",
            "",
            "--sync-period",
            "10s",
        ])
        .unwrap();
        let crate::cli::Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.healthz_bind_address, BindAddress(None));
        assert_eq!(
            args.metrics_bind_address,
            BindAddress(Some("127.0.0.1:10249".parse().unwrap()))
        );
        assert_eq!(args.sync_period, Duration::from_secs(10));
    }

    #[test]
    fn durations() {
        assert_eq!(duration_arg("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration_arg("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration_arg("2m"), Ok(Duration::from_secs(120)));
        assert!(duration_arg("30").is_err());
        assert!(duration_arg("5 parsecs").is_err());
    }
}
