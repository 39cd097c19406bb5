//! The small builders both layouts use (the nftables backend's tables in
//! [`super::layout`] and the IPVS mode's companion table in `crate::ipvs::table`): a
//! table's sets and chains as a layout adds them, and the statements every layout
//! writes.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

use super::ir::*;

/// A table's sets and chains, in the order the layout declares them. Elements go into
/// their set by name; [`TableParts::into_table`] sorts them, except those the layout
/// made in their canonical order already ([`TableParts::fill_sorted`],
/// [`TableParts::sorted_set`]).
#[derive(Debug, Default)]
pub(crate) struct TableParts {
    pub sets: Vec<Set>,
    pub chains: Vec<Chain>,
    /// Indices in `sets` of the sets whose elements are in canonical order already:
    /// `sort_elements` would still compare every pair of neighbours to find that
    /// out (1.6 ms of the 25 a table of 10k services took).
    sorted: Vec<usize>,
}

impl TableParts {
    /// Declares a plain (static) set or map.
    pub fn set(&mut self, name: &str, key: Vec<KeyType>, data: Option<MapData>, comment: &str) {
        self.sets.push(Set {
            name: name.into(),
            key,
            data,
            flags: SetFlags::default(),
            timeout_secs: None,
            comment: Some(comment.into()),
            exprs: None,
            elements: Vec::new(),
        });
    }

    /// Adds an element to the set `set`, which must have been declared. Layouts
    /// declare a handful of fixed sets, so finding one by name is a short scan.
    pub fn element(
        &mut self,
        set: &str,
        key: Values<MAX_KEY>,
        verdict: Option<Verdict>,
        comment: Option<String>,
    ) {
        if let Some(set) = self.sets.iter_mut().find(|s| s.name == set) {
            let element = Element::from_parts(key, verdict, Values::new(), comment);
            set.elements.push(element);
        }
    }

    /// Gives the declared set `set` its elements, which must be in their canonical
    /// order, strictly increasing (sorted, without duplicates): they are not sorted
    /// again. The set must have no elements yet.
    pub fn fill_sorted(&mut self, set: &str, elements: Vec<Element>) {
        debug_assert!(is_canonical(&elements), "{set}: elements out of order");
        if let Some(index) = self.sets.iter().position(|s| s.name == set) {
            debug_assert!(self.sets[index].elements.is_empty(), "{set} filled twice");
            self.sets[index].elements = elements;
            self.sorted.push(index);
        }
    }

    /// Declares a set whose elements are in their canonical order already, strictly
    /// increasing: they are not sorted again.
    pub fn sorted_set(&mut self, set: Set) {
        debug_assert!(
            is_canonical(&set.elements),
            "{}: elements out of order",
            set.name
        );
        self.sorted.push(self.sets.len());
        self.sets.push(set);
    }

    /// Declares a regular chain.
    pub fn chain(&mut self, name: &str, rules: Vec<Rule>) {
        self.chains.push(Chain {
            name: name.into(),
            base: None,
            comment: None,
            rules,
        });
    }

    /// Declares a base chain on `hook`.
    pub fn base(
        &mut self,
        name: &str,
        chain_type: ChainType,
        hook: Hook,
        priority: i32,
        rules: Vec<Rule>,
    ) {
        self.chains.push(Chain {
            name: name.into(),
            base: Some(BaseChain {
                chain_type,
                hook,
                priority,
            }),
            comment: None,
            rules,
        });
    }

    /// The table, its sets' elements sorted and deduplicated, so that the output does
    /// not depend on the order in which services added them.
    pub fn into_table(mut self, family: Family, name: &str, comment: Option<String>) -> Table {
        for (index, set) in self.sets.iter_mut().enumerate() {
            if !self.sorted.contains(&index) {
                sort_elements(&mut set.elements);
            }
        }
        Table {
            family,
            name: name.to_string(),
            comment,
            sets: self.sets,
            chains: self.chains,
        }
    }
}

/// Whether `elements` are in the order [`sort_elements`] gives, without duplicates.
fn is_canonical(elements: &[Element]) -> bool {
    elements.is_sorted_by(|a, b| a < b)
}

/// `ip saddr 10.0.0.0/8` for one prefix, `ip saddr { a, b }` for several: nft turns a
/// one-element anonymous set into a plain comparison, so we write it that way.
pub(crate) fn addr_match(field: AddrField, op: CmpOp, nets: &[IpNet]) -> Stmt {
    let unique: BTreeSet<IpNet> = nets.iter().copied().collect();
    match unique.first() {
        Some(only) if unique.len() == 1 => Stmt::Addr {
            field,
            op,
            value: *only,
        },
        _ => Stmt::AddrInList {
            field,
            op,
            values: unique.into_iter().collect(),
        },
    }
}

/// The `daddr . l4proto . dport` key of the dispatch maps.
pub(crate) fn dispatch_exprs() -> Vec<KeyExpr> {
    vec![
        KeyExpr::Addr(AddrField::Daddr),
        KeyExpr::L4Proto,
        KeyExpr::ThDport,
    ]
}

pub(crate) fn net(ip: IpAddr) -> KeyValue {
    KeyValue::Net(IpNet::from(ip))
}

pub(crate) fn rule(stmts: Vec<Stmt>) -> Rule {
    Rule {
        stmts,
        comment: None,
    }
}

pub(crate) fn commented(stmts: Vec<Stmt>, comment: &str) -> Rule {
    Rule {
        stmts,
        comment: Some(comment.into()),
    }
}

pub(crate) fn jump(chain: &str) -> Stmt {
    Stmt::Verdict(Verdict::Jump(chain.into()))
}

pub(crate) fn goto(chain: &str) -> Stmt {
    Stmt::Verdict(Verdict::Goto(chain.into()))
}
