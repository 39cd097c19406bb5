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
