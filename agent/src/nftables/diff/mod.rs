//! The difference between two rulesets as the operations that turn one into the other
//! inside a single transaction: what incremental syncs send, what drift repair sends
//! after reading the kernel back, and what `svcproxy plan` prints.
//!
//! [`diff`] compares what the kernel holds (`current`: what svcproxy committed last,
//! or what [`super::NftSocket::read_tables`] returned) with what it should hold
//! (`desired`). Tables, chains and sets are matched by name: their order in a table
//! means nothing to nftables, and chains created by an incremental sync are listed by
//! the kernel after the older ones. Only the order of rules inside a chain matters.
//!
//! What changes how:
//! - a table only in `desired` is created whole, one only in `current` deleted;
//! - a table whose comment differs, or that has a chain whose hook, type, priority or
//!   comment differs, is replaced whole (deleted and created again in the same
//!   transaction): the kernel silently ignores comment changes on existing tables and
//!   chains, and cannot re-hook a chain that other chains jump to;
//! - a chain whose rules differ is rewritten: flushed and refilled. Rules are not
//!   diffed one by one: the IR has no rule handles, and a service change rewrites its
//!   random-choice cascade anyway, since every probability in it changes;
//! - a set whose definition (key, data, flags, timeout, comment) differs is deleted
//!   and created again, and the chains whose rules use it are rewritten around that;
//! - elements are diffed one by one, by key: a key whose verdict, datum (the endpoint
//!   maps' `address . port`) or comment changed is deleted and added again (the
//!   kernel keeps an existing element on add, and refuses a different verdict or
//!   datum: EEXIST on Linux 6.18, `agent/tests/nftables_diff.rs` checks it);
//! - single-type interval sets (`nodeport-ips`) are flushed and refilled when their
//!   contents differ: their elements are boundary pairs that neighbouring intervals
//!   share, and a whole refill of a few prefixes is simpler than boundary surgery;
//! - the elements of dynamic sets (session affinity) belong to the packet path and are
//!   never compared, in either direction.
//!
//! Order inside the transaction: the kernel checks every reference as it processes
//! each message, so deletions come before the creations they make room for, new
//! chains and sets before the rules and elements that reference them, and element
//! deletions and chain flushes before deleting the chains and sets they reference.
//! See [`Op`] for the exact phases.
//!
//! Stale chains (see [`StaleChains`]): Linux 6.18 accepts, in one transaction,
//! deleting a map element that points at a chain and then the chain itself
//! (`agent/tests/nftables_diff.rs` checks it). kube-proxy does not rely on this:
//! before Linux 6.2 the kernel noticed only a little later that such a chain had
//! lost its last reference, so kube-proxy flushes stale chains and deletes them in a
//! later sync. [`StaleChains::DeferMapped`] does the same, explicitly.

mod apply;
mod compute;
mod encode;
#[cfg(test)]
mod tests;
mod text;

use std::fmt;

use svcproxy_compiler::nft::ir::{Chain, Element, Family, Rule, Ruleset, Set, Table};

pub use apply::apply_all;
pub(crate) use compute::{definition, same_set_definition, sets_used};
pub use compute::{diff, diff_with};

/// How a diff gets rid of chains that `desired` no longer has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StaleChains {
    /// Flush and delete them in the same transaction as everything else: what Linux
    /// 6.2 and later accept.
    #[default]
    Delete,
    /// Kernels before 6.2: a stale chain that a map element points at in `current`
    /// is only flushed, and listed in [`Changes::deferred`]. A later diff deletes it,
    /// once the commit that removed the element is behind it (nothing maps it then).
    /// Stale chains no map element points at are deleted right away.
    DeferMapped,
}

/// Knobs of [`diff_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiffOptions {
    pub stale_chains: StaleChains,
}

/// The operations that turn `current` into `desired`, in the order the transaction
/// must carry them. Plain data: inspect it, print it ([`Changes::to_nft`]) or encode
/// it ([`Changes::to_batch`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Changes {
    pub ops: Vec<Change>,
    /// Stale chains flushed but not deleted ([`StaleChains::DeferMapped`] only).
    pub deferred: Vec<DeferredChain>,
}

/// One operation on one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub family: Family,
    pub table: String,
    pub op: Op,
}

/// An operation, in IR terms. Within a table the diff emits them in this order, which
/// is the order the kernel needs:
/// 1. `DeleteTable`, then `AddTable` (tables created, deleted or replaced whole);
/// 2. `DeleteElements` and `FlushSet`: drop the elements' references to chains;
/// 3. `FlushChain`: drop the rules' references to chains and sets;
/// 4. `DeleteSet`, then `DeleteChain`: nothing refers to them any more;
/// 5. `AddChain`, then `AddSet` (elements may jump to the new chains);
/// 6. `AddElements`, then `AddRules`: every chain and set they refer to exists.
///
/// Sets carried by an operation other than `AddSet` are definitions: their
/// `elements` are empty, the elements concerned are listed beside them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create the table with everything in it.
    AddTable(Table),
    /// Delete the table with everything in it.
    DeleteTable,
    /// Delete these elements (by key) from `set`.
    DeleteElements {
        set: Set,
        elements: Vec<Element>,
    },
    /// Delete every element of the set (an interval set about to be refilled).
    FlushSet(Set),
    /// Delete every rule of the chain.
    FlushChain(String),
    DeleteSet(Set),
    DeleteChain(String),
    /// Create the chain, without its rules (`AddRules` follows).
    AddChain(Chain),
    /// Create the set with the elements it lists.
    AddSet(Set),
    AddElements {
        set: Set,
        elements: Vec<Element>,
    },
    /// Append these rules, in order, to the chain.
    AddRules {
        chain: String,
        rules: Vec<Rule>,
    },
}

/// A stale chain left in place, empty, for a later diff to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeferredChain {
    pub family: Family,
    pub table: String,
    /// The chain's definition; its rules are empty.
    pub chain: Chain,
}

/// How many objects the changes touch, per kind. A table added counts with all its
/// contents; a table deleted counts alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub tables_added: usize,
    pub tables_deleted: usize,
    pub chains_added: usize,
    pub chains_flushed: usize,
    pub chains_deleted: usize,
    pub rules_added: usize,
    pub sets_added: usize,
    pub sets_flushed: usize,
    pub sets_deleted: usize,
    pub elements_added: usize,
    pub elements_deleted: usize,
}

impl Changes {
    /// True when `current` already is `desired`: nothing to send.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Number of operations (not of netlink messages: see [`Changes::to_batch`]).
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Change> {
        self.ops.iter()
    }

    pub fn deferred(&self) -> &[DeferredChain] {
        &self.deferred
    }

    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for change in &self.ops {
            s.count(&change.op);
        }
        s
    }

    /// What the kernel holds once these changes are committed: `desired`, plus the
    /// empty chains left for later ([`Changes::deferred`]). A caller that keeps the
    /// committed state in memory keeps this, so that its next diff deletes them.
    pub fn state_after_commit(&self, desired: &Ruleset) -> Ruleset {
        let mut state = desired.clone();
        for deferred in &self.deferred {
            let table = state
                .tables
                .iter_mut()
                .find(|t| t.family == deferred.family && t.name == deferred.table);
            // A deferred chain lives in a table that stays: tables that go are deleted
            // whole, chains and all.
            if let Some(table) = table {
                table.chains.push(deferred.chain.clone());
            }
        }
        state
    }
}

impl<'a> IntoIterator for &'a Changes {
    type Item = &'a Change;
    type IntoIter = std::slice::Iter<'a, Change>;

    fn into_iter(self) -> Self::IntoIter {
        self.ops.iter()
    }
}

impl Summary {
    fn count(&mut self, op: &Op) {
        match op {
            Op::AddTable(table) => {
                self.tables_added += 1;
                self.chains_added += table.chains.len();
                self.rules_added += table.chains.iter().map(|c| c.rules.len()).sum::<usize>();
                self.sets_added += table.sets.len();
                self.elements_added += table.sets.iter().map(|s| s.elements.len()).sum::<usize>();
            }
            Op::DeleteTable => self.tables_deleted += 1,
            Op::DeleteElements { elements, .. } => self.elements_deleted += elements.len(),
            Op::FlushSet(_) => self.sets_flushed += 1,
            Op::FlushChain(_) => self.chains_flushed += 1,
            Op::DeleteSet(_) => self.sets_deleted += 1,
            Op::DeleteChain(_) => self.chains_deleted += 1,
            Op::AddChain(_) => self.chains_added += 1,
            Op::AddSet(set) => {
                self.sets_added += 1;
                self.elements_added += set.elements.len();
            }
            Op::AddElements { elements, .. } => self.elements_added += elements.len(),
            Op::AddRules { rules, .. } => self.rules_added += rules.len(),
        }
    }
}

/// `2 chains added, 9 rules added, 1 element deleted`, or `no changes`.
impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts = [
            (self.tables_added, "table", "added"),
            (self.tables_deleted, "table", "deleted"),
            (self.chains_added, "chain", "added"),
            (self.chains_flushed, "chain", "flushed"),
            (self.chains_deleted, "chain", "deleted"),
            (self.rules_added, "rule", "added"),
            (self.sets_added, "set", "added"),
            (self.sets_flushed, "set", "flushed"),
            (self.sets_deleted, "set", "deleted"),
            (self.elements_added, "element", "added"),
            (self.elements_deleted, "element", "deleted"),
        ];
        let mut first = true;
        for (n, noun, verb) in counts {
            if n == 0 {
                continue;
            }
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            let plural = if n == 1 { "" } else { "s" };
            write!(f, "{n} {noun}{plural} {verb}")?;
        }
        if first {
            f.write_str("no changes")?;
        }
        Ok(())
    }
}
