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

use std::collections::BTreeSet;

use super::ir::{Ruleset, Stmt};
use super::layout::{is_endpoint_map, is_fragment_chain, ruleset};
use crate::plan::Plan;

/// The fragment of the Services in `plan`.
pub fn fragment(plan: &Plan) -> Ruleset {
    let mut rules = ruleset(plan);
    for table in &mut rules.tables {
        table.chains.retain(|c| is_fragment_chain(&c.name));
        // The empty endpoint maps are the layout's headroom (the neighbours of the
        // counts present), which belongs to the whole table, not to these Services.
        let headroom: BTreeSet<String> = table
            .sets
            .iter()
            .filter(|s| is_endpoint_map(&s.name) && s.elements.is_empty())
            .map(|s| s.name.clone())
            .collect();
        table.sets.retain(|s| !headroom.contains(&s.name));
        for chain in &mut table.chains {
            chain.rules.retain(|r| {
                !r.stmts
                    .iter()
                    .any(|s| matches!(s, Stmt::DnatMap { map, .. } if headroom.contains(map)))
            });
        }
    }
    rules
}
