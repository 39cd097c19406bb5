//! Making the kernel match what the compiler wants, and keeping it that way.
//!
//! [`NftSyncer`] owns svcproxy's view of its nftables tables: what it committed last.
//! Steady-state syncs diff the new desired ruleset against that and send only the
//! difference, without listing the kernel; a resync (and any sync after someone else
//! changed the ruleset) reads the kernel back instead and repairs whatever drifted.

mod nft;
pub mod stale;

pub use nft::{NftSyncer, SyncKind, SyncOutcome, cleanup};
