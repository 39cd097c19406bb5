//! What the run loop needs from a backend, so that one loop drives either: turn the
//! plan into the backend's desired state and make the kernel hold it.

use std::time::Duration;

use svcproxy_compiler::Plan;

use super::{NftSyncer, SyncKind};
use crate::ipvs::sync::{IpvsConfig, IpvsSyncer, StartError};

/// A backend's syncer, as the run loop drives it.
pub trait Syncer {
    /// Makes the kernel match `plan`. With `full`, reads the kernel back first and
    /// repairs whatever drifted (the periodic resync).
    fn sync_plan(&mut self, plan: &Plan, full: bool) -> Result<Synced, BoxError>;
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

impl Syncer for NftSyncer {
    fn sync_plan(&mut self, plan: &Plan, full: bool) -> Result<Synced, BoxError> {
        let ruleset = svcproxy_compiler::nft::ruleset(plan);
        let outcome = if full {
            self.resync(&ruleset)?
        } else {
            self.sync(&ruleset)?
        };
        Ok(Synced {
            kind: outcome.kind,
            changes: (!outcome.changes.is_empty()).then(|| outcome.changes.summary().to_string()),
            messages: outcome.messages,
            duration: outcome.duration,
        })
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
        })
    }
}
