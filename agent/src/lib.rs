//! svcproxy agent library.
pub mod cli;
pub mod conntrack;
pub mod daemon;
pub mod health;
pub mod ipvs;
pub mod metrics;
pub mod nftables;
pub mod ops;
pub mod source;
pub mod sync;

unsafe extern "C" {
    /// mimalloc's (linked through the `mimalloc` crate, the binary's allocator):
    /// returns the memory its heaps hold free to the system.
    fn mi_collect(force: bool);
}

/// Returns the memory the allocator holds free to the system: given to the compiler
/// as `Options::release_memory`, between its phases, so a large snapshot's parsed
/// objects do not stay resident beside its ruleset.
pub fn release_memory() {
    // SAFETY: mi_collect takes no pointers; it only releases free pages.
    unsafe { mi_collect(true) }
}
