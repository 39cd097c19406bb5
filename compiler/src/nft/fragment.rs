//! One Service's share of the ruleset, for incremental syncs.
//!
//! A fragment is the ruleset of a plan that holds only some Services: every table
//! keeps its set and map definitions (with only those Services' elements) and the
//! per-service chains, without the fixed chains every table has. Diffing a Service's
//! old fragment against its new one gives exactly the operations the change needs (map
//! elements in, map elements out, its own chains rewritten), in microseconds, where
//! diffing two whole rulesets of 50,000 Services takes tens of milliseconds.

use super::ir::Ruleset;
use super::layout::{is_per_service_chain, ruleset};
use crate::plan::Plan;

/// The fragment of the Services in `plan`.
pub fn fragment(plan: &Plan) -> Ruleset {
    let mut rules = ruleset(plan);
    for table in &mut rules.tables {
        table.chains.retain(|c| is_per_service_chain(&c.name));
    }
    rules
}
