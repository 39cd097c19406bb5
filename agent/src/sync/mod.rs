//! Making the kernel match what the compiler wants, and keeping it that way.
//!
//! [`NftSyncer`] owns svcproxy's view of its nftables tables: what it committed last.
//! Steady-state syncs diff the new desired ruleset against that and send only the
//! difference, without listing the kernel; a resync (and any sync after someone else
//! changed the ruleset) reads the kernel back instead and repairs whatever drifted.
//! The IPVS backend's syncer is [`crate::ipvs::sync::IpvsSyncer`]; the run loop
//! drives either through the [`Syncer`] trait.

mod affinity;
mod backend;
mod fragment;
mod nft;
pub mod stale;

pub use backend::{BackendConfig, IpvsBackend, OpenError, Synced, Syncer};
pub use nft::{CommitTiming, NftSyncer, SyncKind, SyncOutcome, cleanup};
