//! Changes as nft commands: what `svcproxy plan` prints, and valid `nft -f` input
//! against the state the changes were computed from (one file is one transaction),
//! with one exception nft 1.0.6 imposes: it refuses a new `dnat ... map @endpoints-N`
//! rule when that map is already in the kernel ("conflicting protocols specified: ip
//! vs. th": the map's `typeof` data, rebuilt from the kernel's userdata, fails nft's
//! own evaluation), so a change that rewrites a `pick-…` chain while keeping one of
//! its maps only loads through netlink.

use std::fmt::Write;

use svcproxy_compiler::nft::ir::{Chain, Element, Family, Set};
use svcproxy_compiler::nft::text::{
    element_text, key_text as typeof_text, key_value_text, map_data_text, render_table, rule_text,
};

use super::{Change, Changes, Op};

impl Changes {
    /// The changes as nft commands, one per line (element lists of more than one
    /// element span several lines), in transaction order.
    pub fn to_nft(&self) -> String {
        let mut out = String::new();
        for change in &self.ops {
            render(&mut out, change);
        }
        out
    }
}

fn render(out: &mut String, change: &Change) {
    let target = format!("{} {}", change.family.keyword(), change.table);
    match &change.op {
        Op::AddTable(table) => render_table(out, table),
        Op::DeleteTable => {
            let _ = writeln!(out, "delete table {target}");
        }
        Op::DeleteElements { set, elements } => {
            // Elements are found by key: nft wants nothing else on delete.
            let keys: Vec<String> = elements.iter().map(key_text).collect();
            let _ = writeln!(out, "delete element {target} {} {}", set.name, list(&keys));
        }
        Op::FlushSet(set) => {
            let _ = writeln!(out, "flush {} {target} {}", set_kind(set), set.name);
        }
        Op::FlushChain(chain) => {
            let _ = writeln!(out, "flush chain {target} {chain}");
        }
        Op::DeleteSet(set) => {
            let _ = writeln!(out, "delete {} {target} {}", set_kind(set), set.name);
        }
        Op::DeleteChain(chain) => {
            let _ = writeln!(out, "delete chain {target} {chain}");
        }
        Op::AddChain(chain) => {
            let _ = writeln!(
                out,
                "add chain {target} {}{}",
                chain.name,
                chain_spec(chain)
            );
        }
        Op::AddSet(set) => {
            let _ = writeln!(
                out,
                "add {} {target} {} {}",
                set_kind(set),
                set.name,
                set_spec(change.family, set)
            );
            add_elements(out, &target, set, &set.elements);
        }
        Op::AddElements { set, elements } => add_elements(out, &target, set, elements),
        Op::AddRules { chain, rules } => {
            for rule in rules {
                let _ = writeln!(
                    out,
                    "add rule {target} {chain} {}",
                    rule_text(change.family, rule)
                );
            }
        }
    }
}

fn add_elements(out: &mut String, target: &str, set: &Set, elements: &[Element]) {
    if elements.is_empty() {
        return;
    }
    let texts: Vec<String> = elements.iter().map(element_text).collect();
    let _ = writeln!(out, "add element {target} {} {}", set.name, list(&texts));
}

/// `{ a }` on one line, longer lists one element per line as `nft list` prints them.
fn list(items: &[String]) -> String {
    match items {
        [one] => format!("{{ {one} }}"),
        _ => {
            let mut text = String::from("{\n");
            for item in items {
                let _ = writeln!(text, "\t{item},");
            }
            text.push('}');
            text
        }
    }
}

fn key_text(element: &Element) -> String {
    let values: Vec<String> = element.key.iter().map(key_value_text).collect();
    values.join(" . ")
}

fn set_kind(set: &Set) -> &'static str {
    if set.data.is_some() { "map" } else { "set" }
}

/// `{ type ipv4_addr; flags dynamic,timeout; timeout 10800s; comment "…"; }`: the same
/// declarations `nft list` prints inside a set block (`typeof …` for the sets the IR
/// types after expressions).
fn set_spec(family: Family, set: &Set) -> String {
    let mut spec = match &set.exprs {
        Some(exprs) => {
            let mut spec = format!("{{ typeof {}", typeof_text(family, &exprs.key));
            if !exprs.data.is_empty() {
                let _ = write!(spec, " : {}", typeof_text(family, &exprs.data));
            }
            spec
        }
        None => {
            let key: Vec<&str> = set.key.iter().map(|k| k.keyword()).collect();
            let mut spec = format!("{{ type {}", key.join(" . "));
            if let Some(data) = &set.data {
                let _ = write!(spec, " : {}", map_data_text(data));
            }
            spec
        }
    };
    spec.push(';');
    let flags: Vec<&str> = [
        (set.flags.dynamic, "dynamic"),
        (set.flags.interval, "interval"),
        (set.flags.timeout, "timeout"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    if !flags.is_empty() {
        let _ = write!(spec, " flags {};", flags.join(","));
    }
    if let Some(timeout) = set.timeout_secs {
        let _ = write!(spec, " timeout {timeout}s;");
    }
    if let Some(comment) = &set.comment {
        let _ = write!(spec, " comment {};", quote(comment));
    }
    spec.push_str(" }");
    spec
}

/// Nothing for a plain chain, ` { type nat hook prerouting priority -100; policy
/// accept; }` for a base chain, the comment inside the braces too.
fn chain_spec(chain: &Chain) -> String {
    let mut parts = Vec::new();
    if let Some(base) = &chain.base {
        parts.push(format!(
            "type {} hook {} priority {}; policy accept;",
            base.chain_type.keyword(),
            base.hook.keyword(),
            base.priority
        ));
    }
    if let Some(comment) = &chain.comment {
        parts.push(format!("comment {};", quote(comment)));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" {{ {} }}", parts.join(" "))
    }
}

/// Quotes a comment the way the compiler's renderer does (a stray double quote becomes
/// a single one rather than ending the string).
fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "'"))
}
