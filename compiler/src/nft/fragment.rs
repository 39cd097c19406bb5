//! One Service's share of the ruleset, for incremental syncs.
//!
//! A fragment is the ruleset of a plan that holds only some Services: every table
//! keeps its set and map definitions (with only those Services' elements), the
//! per-service chains and the `pick-…` chains with the rules for those Services'
//! endpoint counts, without the fixed chains every table has. Diffing a Service's old
//! fragment against its new one gives the operations the change needs (map elements
//! in, map elements out, its own chains rewritten), in microseconds, where diffing two
//! whole rulesets of 50,000 Services takes tens of milliseconds. The endpoint maps and
//! `pick-…` chains are shared with other Services, so the agent fits that diff to the
//! whole table before sending it (`agent/src/sync/fragment.rs`).

use super::ir::Ruleset;
use super::layout::{is_fragment_chain, ruleset};
use crate::plan::Plan;

/// The fragment of the Services in `plan`.
pub fn fragment(plan: &Plan) -> Ruleset {
    let mut rules = ruleset(plan);
    for table in &mut rules.tables {
        table.chains.retain(|c| is_fragment_chain(&c.name));
    }
    rules
}
