//! svcproxy agent library.
pub mod cli;
pub mod source;
pub mod ipvs;
