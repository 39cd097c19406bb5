//! svcproxy agent library.
pub mod cli;
pub mod ipvs;
pub mod nftables;
pub mod source;
