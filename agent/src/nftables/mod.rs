//! nf_tables over netlink: svcproxy's IR ([`svcproxy_compiler::nft::ir`]) encoded as
//! atomic batches and decoded back from kernel dumps, without libnftnl or the nft binary.
//!
//! Layers, bottom up:
//! - `attr`: netlink attributes; `udata`: nft's userdata blobs; `uapi`: kernel constants;
//! - `expr`: typed nf_tables expressions; `layout`: key types, register slots, key bytes;
//! - `rule`: IR statements to expressions and back; `set`: sets and maps; `element`:
//!   set elements, intervals included;
//! - `msg`: request messages; `batch`: transactions built from IR objects;
//! - `socket`: sending batches and reading acks, errors and dumps;
//! - `apply`: whole-ruleset replacement; `readback`: kernel state back into the IR;
//!   `diff`: the changes between two rulesets, as IR operations, a batch or nft text.
//!
//! Every encoding matches what `nft` 1.0 sends for the statement's text form, so an
//! operator's `nft list ruleset` shows svcproxy's rules exactly as if nft had loaded them.

mod apply;
mod attr;
mod batch;
pub(crate) mod diff;
mod element;
mod error;
mod expr;
mod layout;
mod msg;
mod readback;
mod rule;
mod set;
mod socket;
mod uapi;
mod udata;

pub use apply::{apply_full, full_replacement};
pub use batch::Batch;
pub use diff::{
    Change, Changes, DeferredChain, DiffOptions, Op, StaleChains, Summary, apply_all, diff,
    diff_with,
};
pub use element::MapEntry;
pub use error::{BatchRejected, Error, MessageFailure, Result};
pub use socket::{Commit, NftSocket};
