//! svcproxy agent library.
pub mod cli;
pub mod conntrack;
pub mod daemon;
pub mod explain;
pub mod health;
pub mod ipvs;
pub mod metrics;
pub mod nftables;
pub mod ops;
pub mod source;
pub mod sync;

/// Returns the memory the allocator holds free to the system: given to the compiler
/// as `Options::release_memory`, between its phases, so a large snapshot's parsed
/// objects do not stay resident beside its ruleset.
pub fn release_memory() {
    // SAFETY: mi_collect takes no pointers; it only releases mimalloc's free pages.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
