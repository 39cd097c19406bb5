//! The small builders both layouts use (the nftables backend's tables in
//! [`super::layout`] and the IPVS mode's companion table in `crate::ipvs::table`): a
//! table's sets and chains as a layout adds them, and the statements every layout
//! writes.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

use super::ir::*;

/// A table's sets and chains, in the order the layout declares them. Elements go into
/// their set by name; [`TableParts::into_table`] sorts them.
#[derive(Debug, Default)]
pub(crate) struct TableParts {
    pub sets: Vec<Set>,
    pub chains: Vec<Chain>,
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
        key: Vec<KeyValue>,
        verdict: Option<Verdict>,
        comment: Option<String>,
    ) {
        if let Some(set) = self.sets.iter_mut().find(|s| s.name == set) {
            set.elements.push(Element {
                key,
                verdict,
                data: Vec::new(),
                comment,
            });
        }
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
        for set in &mut self.sets {
            sort_elements(&mut set.elements);
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
