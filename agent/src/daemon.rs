//! `svcproxy run`: the node agent's loop.
//!
//! One task owns the syncer and waits for whichever comes first:
//! - a change to the snapshot (inotify through `notify`): a sync is queued and runs
//!   no sooner than `min_sync_period` after the previous one, so a burst of edits
//!   becomes one sync;
//! - the periodic resync (`sync_period` after the last sync): the kernel is read back
//!   and whatever drifted is repaired;
//! - SIGTERM or SIGINT: the loop stops and the rules stay in place, so traffic keeps
//!   flowing while the agent restarts.
//!
//! A snapshot that cannot be read or compiled is logged and counted; the last good
//! ruleset stays programmed (and is still drift-repaired), and `/healthz` reports the
//! error and turns unhealthy if it lasts longer than twice the sync period.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use svcproxy_compiler::nft::ir::Family;
use svcproxy_compiler::{Options, Plan};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::conntrack::{self, FlowFilter};
use crate::health::{self, Health};
use crate::metrics::Metrics;
use crate::source::{FileSource, SnapshotSource};
use crate::sync::{BackendConfig, SyncKind, Syncer, stale};

/// Everything `svcproxy run` needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub snapshots: Vec<PathBuf>,
    pub options: Options,
    pub sync_period: Duration,
    pub min_sync_period: Duration,
    pub healthz: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub backend: BackendConfig,
}

/// The compiled desired state, shared by `last_good` and `programmed` (a plan of 50k
/// Services is tens of megabytes: not copied per sync).
#[derive(Clone)]
struct Desired {
    plan: Arc<Plan>,
}

/// Runs until SIGTERM or SIGINT.
pub fn run(config: RunConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(Agent::new(config)?.run())
}

struct Agent {
    config: RunConfig,
    source: Box<dyn SnapshotSource>,
    syncer: Box<dyn Syncer>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    /// The last snapshot that compiled, and what was programmed from it.
    last_good: Option<Desired>,
    /// The plan whose rules are in the kernel: a change is synced against it Service
    /// by Service, and stale flows are found from it.
    programmed: Option<Arc<Plan>>,
}

/// Why a sync ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Change,
    Resync,
}

impl Agent {
    fn new(config: RunConfig) -> anyhow::Result<Agent> {
        Ok(Agent {
            source: Box::new(FileSource {
                paths: config.snapshots.clone(),
                max_bytes: config.options.max_input_bytes,
            }),
            syncer: config.backend.open()?,
            health: Arc::new(Health::new(config.sync_period)),
            metrics: Arc::new(Metrics::new()),
            config,
            last_good: None,
            programmed: None,
        })
    }

    async fn run(mut self) -> anyhow::Result<()> {
        for (address, endpoint) in [
            (
                self.config.healthz,
                health::Endpoint::Health(self.health.clone()),
            ),
            (
                self.config.metrics,
                health::Endpoint::Metrics(self.metrics.clone()),
            ),
        ] {
            if let Some(address) = address {
                let listener = tokio::net::TcpListener::bind(address)
                    .await
                    .with_context(|| format!("listening on {address}"))?;
                tracing::info!(%address, "serving {}", endpoint.path());
                tokio::spawn(health::serve(listener, endpoint));
            }
        }

        let (changed, mut changes) = mpsc::channel::<()>(1);
        let _watch = self
            .source
            .watch(Box::new(move || {
                // A full channel already holds a pending change: nothing to add.
                let _ = changed.try_send(());
            }))
            .map_err(|e| anyhow::anyhow!("watching the snapshot: {e}"))?;
        let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;

        let mut pending = true;
        self.queued();
        let mut last_sync: Option<Instant> = None;
        let mut next_resync = Instant::now() + self.config.sync_period;
        loop {
            let due = if pending {
                last_sync.map_or_else(Instant::now, |t| t + self.config.min_sync_period)
            } else {
                next_resync
            };
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => {
                    let trigger = if pending { Trigger::Change } else { Trigger::Resync };
                    let retry = tokio::task::block_in_place(|| self.sync(trigger));
                    last_sync = Some(Instant::now());
                    next_resync = Instant::now() + self.config.sync_period;
                    // A kernel failure is retried at the next opportunity; a bad
                    // snapshot waits for the next change (or resync).
                    pending = retry;
                }
                Some(()) = changes.recv() => {
                    pending = true;
                    self.queued();
                }
                _ = sigterm.recv() => break,
                _ = sigint.recv() => break,
            }
        }
        tracing::info!("stopping; the programmed rules stay in place");
        Ok(())
    }

    fn queued(&self) {
        self.health.queued();
        self.metrics.queued();
    }

    /// One sync. Returns whether it should be retried soon (the kernel failed).
    fn sync(&mut self, trigger: Trigger) -> bool {
        match self.compile() {
            Ok(desired) => self.program(desired, trigger),
            Err(error) => {
                tracing::error!("snapshot not applied, the last good rules stay: {error:#}");
                self.metrics.snapshot_failed();
                self.health.failed(format!("{error:#}"));
                // Keep repairing drift against the last good state meanwhile.
                if trigger == Trigger::Resync
                    && let Some(last) = self.last_good.clone()
                {
                    let retry = self.program(last, trigger);
                    // `program` succeeded or not, the snapshot error still stands.
                    self.health.failed(format!("{error:#}"));
                    return retry;
                }
                false
            }
        }
    }

    fn compile(&self) -> anyhow::Result<Desired> {
        let sources = self.source.read().map_err(|e| anyhow::anyhow!("{e}"))?;
        let plan = svcproxy_compiler::plan_owned(sources, &self.config.options)?;
        // The plan is kept and the ruleset built beside it: the snapshot's memory goes
        // back now (the compiler releases after parsing and in `ruleset_owned` only).
        if let Some(release) = self.config.options.release_memory {
            release();
        }
        for warning in &plan.warnings {
            tracing::warn!("{warning}");
        }
        Ok(Desired {
            plan: Arc::new(plan),
        })
    }

    /// Makes the kernel match `desired`. Returns whether to retry soon.
    fn program(&mut self, desired: Desired, trigger: Trigger) -> bool {
        let result = match (trigger, &self.programmed) {
            // Only the Services that changed are diffed (when the backend can).
            (Trigger::Change, Some(previous)) => self.syncer.sync_change(previous, &desired.plan),
            _ => self
                .syncer
                .sync_plan(&desired.plan, trigger == Trigger::Resync),
        };
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(error) => {
                tracing::error!("sync failed, will retry: {error}");
                self.metrics.sync_failed();
                self.health.failed(error.to_string());
                return true;
            }
        };
        self.metrics.synced(
            outcome.kind,
            outcome.duration,
            outcome.messages,
            outcome.services.is_some(),
        );
        // Drift is what a read-back of the kernel found. A resync that could trust its
        // view (nftables: nobody committed since) only finishes svcproxy's own
        // deferred work, such as the endpoint maps a Service-by-Service sync left
        // empty: not drift.
        if trigger == Trigger::Resync
            && outcome.kind == SyncKind::Full
            && let Some(changes) = &outcome.changes
        {
            tracing::warn!(
                "resync repaired drift: {changes} ({} messages)",
                outcome.messages
            );
            self.metrics.drift_repaired();
        } else {
            tracing::info!(
                kind = ?outcome.kind,
                services = outcome.services,
                messages = outcome.messages,
                took_ms = outcome.duration.as_secs_f64() * 1000.0,
                "synced: {}",
                outcome.changes.as_deref().unwrap_or("no change")
            );
        }
        if outcome.kind == SyncKind::Full {
            tracing::debug!("full sync (kernel read back)");
        }
        self.health.updated();
        let ports: usize = desired.plan.families.iter().map(|f| f.ports.len()).sum();
        let endpoints: usize = desired
            .plan
            .families
            .iter()
            .flat_map(|f| &f.ports)
            .map(|p| p.reachable_endpoints().len())
            .sum();
        self.metrics.programmed(ports, endpoints);

        let stale = stale::stale_udp_flows(self.programmed.as_deref(), &desired.plan);
        if !stale.is_empty() {
            clear_stale_flows(&stale);
        }
        self.programmed = Some(Arc::clone(&desired.plan));
        self.last_good = Some(desired);
        false
    }
}

/// Deletes conntrack entries of UDP flows that the new rules no longer serve. A
/// failure is logged, not retried: the entries time out eventually, and the next
/// sync's cleanup covers the next change.
fn clear_stale_flows(stale: &[stale::StaleFlows]) {
    let filters: Vec<FlowFilter> = stale
        .iter()
        .map(|flow| FlowFilter {
            orig_dst: flow.dst_addr,
            orig_dst_port: Some(flow.dst_port),
            reply_src: flow.endpoint.map(|(ip, _)| ip),
            reply_src_port: flow.endpoint.map(|(_, port)| port),
            ..FlowFilter::any(conntrack_family(flow.family), conntrack::UDP)
        })
        .collect();
    match conntrack::delete_flows(&filters) {
        Ok(deleted) => tracing::info!(deleted, "stale UDP conntrack entries deleted"),
        Err(error) => tracing::warn!("deleting stale UDP conntrack entries: {error}"),
    }
}

fn conntrack_family(family: Family) -> conntrack::Family {
    match family {
        Family::Ip => conntrack::Family::V4,
        Family::Ip6 => conntrack::Family::V6,
    }
}
