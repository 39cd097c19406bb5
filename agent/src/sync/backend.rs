//! What the run loop needs from a backend, so that one loop drives either: turn the
//! plan into the backend's desired state and make the kernel hold it.

use std::time::Duration;

use svcproxy_compiler::Plan;

use super::{NftSyncer, SyncKind, SyncOutcome};
use crate::ipvs::sync::{IpvsConfig, IpvsSyncer, StartError};

/// A backend's syncer, as the run loop drives it.
pub trait Syncer {
    /// Makes the kernel match `plan`. With `full`, reads the kernel back first and
    /// repairs whatever drifted (the periodic resync).
    fn sync_plan(&mut self, plan: &Plan, full: bool) -> Result<Synced, BoxError>;

    /// Makes the kernel match `plan` after a snapshot change, given `previous`, the
    /// plan the last successful sync programmed. A backend that can diff only the
    /// Services that changed does; the default is [`Syncer::sync_plan`].
    fn sync_change(&mut self, previous: &Plan, plan: &Plan) -> Result<Synced, BoxError> {
        let _ = previous;
        self.sync_plan(plan, false)
    }
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What one sync did, whatever the backend.
#[derive(Debug, Clone)]
pub struct Synced {
    pub kind: SyncKind,
    /// One line describing the changes; `None` when the kernel already matched.
    pub changes: Option<String>,
    /// Kernel messages sent.
    pub messages: usize,
    pub duration: Duration,
    /// The Services diffed, when only the changed ones were (`sync_change`); `None`
    /// for a sync of the whole ruleset.
    pub services: Option<usize>,
}

/// Which backend `svcproxy run` drives, with its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConfig {
    Nftables,
    Ipvs {
        /// Compiler settings (scheduler, interface).
        options: svcproxy_compiler::ipvs::Options,
        syncer: IpvsConfig,
    },
}

/// Why a backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("opening the nf_tables netlink socket: {0}")]
    Nftables(#[from] crate::nftables::Error),
    #[error(transparent)]
    Ipvs(#[from] StartError),
}

impl BackendConfig {
    /// Opens the backend's kernel connections in the calling thread's network
    /// namespace.
    pub fn open(&self) -> Result<Box<dyn Syncer>, OpenError> {
        Ok(match self {
            BackendConfig::Nftables => Box::new(NftSyncer::new()?),
            BackendConfig::Ipvs { options, syncer } => Box::new(IpvsBackend {
                syncer: IpvsSyncer::new(syncer)?,
                options: options.clone(),
            }),
        })
    }
}

/// The most Services a change may touch for the nftables syncer to diff them one by one
/// (their fragments) rather than the whole ruleset: a tenth of them, or this many in
/// a small cluster. A fragment costs in proportion to its Services, a whole diff to
/// all of them.
const MIN_CHANGED_LIMIT: usize = 64;

impl Syncer for NftSyncer {
    fn sync_plan(&mut self, plan: &Plan, full: bool) -> Result<Synced, BoxError> {
        let ruleset = svcproxy_compiler::nft::ruleset(plan);
        let outcome = if full {
            self.resync(&ruleset)?
        } else {
            self.sync(&ruleset)?
        };
        Ok(synced(&outcome, None))
    }

    /// Diffs the fragments of the Services that changed
    /// ([`Plan::changed_services`], [`NftSyncer::sync_fragment`]); falls back to a
    /// whole sync when the change is not confined to Services, touches more than a
    /// tenth of them (and more than [`MIN_CHANGED_LIMIT`]), needs a set a fragment
    /// cannot make, or someone else committed since the last sync.
    fn sync_change(&mut self, previous: &Plan, plan: &Plan) -> Result<Synced, BoxError> {
        // Ports are sorted by Service: count the runs (the largest family has them all).
        let services = plan
            .families
            .iter()
            .map(|f| {
                f.ports
                    .chunk_by(|a, b| a.id.service == b.id.service)
                    .count()
            })
            .max()
            .unwrap_or(0);
        let limit = (services / 10).max(MIN_CHANGED_LIMIT);
        let changed = previous
            .changed_services(plan)
            .filter(|changed| changed.len() <= limit);
        let Some(changed) = changed else {
            return self.sync_plan(plan, false);
        };
        let before = svcproxy_compiler::nft::fragment(&previous.only(&changed));
        let after = svcproxy_compiler::nft::fragment(&plan.only(&changed));
        match self.sync_fragment(&before, &after) {
            Ok(outcome) => Ok(synced(&outcome, Some(changed.len()))),
            Err(
                error @ (crate::nftables::Error::GenerationChanged { .. }
                | crate::nftables::Error::NeedsWholeSync { .. }),
            ) => {
                tracing::debug!("whole sync instead of the changed Services': {error}");
                self.sync_plan(plan, false)
            }
            Err(error) => Err(error.into()),
        }
    }
}

fn synced(outcome: &SyncOutcome, services: Option<usize>) -> Synced {
    Synced {
        kind: outcome.kind,
        changes: (!outcome.changes.is_empty()).then(|| outcome.changes.summary().to_string()),
        messages: outcome.messages,
        duration: outcome.duration,
        services,
    }
}

/// The IPVS syncer with the compiler settings that turn a plan into its state.
pub struct IpvsBackend {
    syncer: IpvsSyncer,
    options: svcproxy_compiler::ipvs::Options,
}

impl Syncer for IpvsBackend {
    fn sync_plan(&mut self, plan: &Plan, full: bool) -> Result<Synced, BoxError> {
        let state = svcproxy_compiler::ipvs::state(plan, &self.options);
        for warning in &state.warnings {
            tracing::warn!("{warning}");
        }
        let outcome = if full {
            self.syncer.resync(&state)?
        } else {
            self.syncer.sync(&state)?
        };
        Ok(Synced {
            kind: outcome.kind,
            changes: (!outcome.is_empty()).then(|| outcome.summary()),
            messages: outcome.messages(),
            duration: outcome.duration,
            services: None,
        })
    }
}
