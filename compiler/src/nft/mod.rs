//! The nftables backend: the typed ruleset model, the layout that turns a plan into a
//! ruleset, and the text and JSON renderers.

pub(crate) mod build;
pub mod eval;
pub mod fragment;
pub mod ir;
pub mod json;
pub mod layout;
pub mod text;

pub use fragment::fragment;
pub use layout::{TABLE_NAME, is_per_service_chain, ruleset, ruleset_owned};
