//! nft text: what `nft -f` reads. The layout follows `nft list ruleset`, with one set
//! element per line so that golden-file diffs show exactly what changed.

use std::fmt::Write;

use ipnet::IpNet;

use super::ir::*;

/// Renders the ruleset as an `nft -f` script that atomically replaces svcproxy's
/// tables: `table X` creates a table if missing so that `delete table X` always
/// succeeds, and the whole file is one transaction.
pub fn render(ruleset: &Ruleset, header: &[String]) -> String {
    let mut out = String::new();
    for line in header {
        let _ = writeln!(out, "# {line}");
    }
    for table in &ruleset.tables {
        let id = format!("{} {}", table.family.keyword(), table.name);
        let _ = writeln!(out, "table {id}");
        let _ = writeln!(out, "delete table {id}");
        render_table(&mut out, table);
    }
    out
}

/// Renders one table block (`table ip svcproxy { ... }`).
pub fn render_table(out: &mut String, table: &Table) {
    let _ = writeln!(out, "table {} {} {{", table.family.keyword(), table.name);
    if let Some(comment) = &table.comment {
        let _ = writeln!(out, "\tcomment {}", quote(comment));
    }
    for set in &table.sets {
        out.push('\n');
        render_set(out, table.family, set);
    }
    for chain in &table.chains {
        out.push('\n');
        render_chain(out, table.family, chain);
    }
    out.push_str("}\n");
}

fn render_set(out: &mut String, family: Family, set: &Set) {
    let kind = if set.data.is_some() { "map" } else { "set" };
    let _ = writeln!(out, "\t{kind} {} {{", set.name);
    match &set.exprs {
        // nft cannot name a numgen bucket's type: such sets are typed after expressions.
        Some(exprs) => {
            let _ = write!(out, "\t\ttypeof {}", key_text(family, &exprs.key));
            if !exprs.data.is_empty() {
                let _ = write!(out, " : {}", key_text(family, &exprs.data));
            }
        }
        None => {
            let key: Vec<&str> = set.key.iter().map(|k| k.keyword()).collect();
            let _ = write!(out, "\t\ttype {}", key.join(" . "));
            if let Some(data) = &set.data {
                let _ = write!(out, " : {}", map_data_text(data));
            }
        }
    }
    out.push('\n');
    let mut flags = Vec::new();
    if set.flags.dynamic {
        flags.push("dynamic");
    }
    if set.flags.interval {
        flags.push("interval");
    }
    if set.flags.timeout {
        flags.push("timeout");
    }
    if !flags.is_empty() {
        let _ = writeln!(out, "\t\tflags {}", flags.join(","));
    }
    if let Some(timeout) = set.timeout_secs {
        let _ = writeln!(out, "\t\ttimeout {timeout}s");
    }
    if let Some(comment) = &set.comment {
        let _ = writeln!(out, "\t\tcomment {}", quote(comment));
    }
    if !set.elements.is_empty() {
        out.push_str("\t\telements = {\n");
        for element in &set.elements {
            let _ = writeln!(out, "\t\t\t{},", element_text(element));
        }
        out.push_str("\t\t}\n");
    }
    out.push_str("\t}\n");
}

fn render_chain(out: &mut String, family: Family, chain: &Chain) {
    let _ = writeln!(out, "\tchain {} {{", chain.name);
    if let Some(comment) = &chain.comment {
        let _ = writeln!(out, "\t\tcomment {}", quote(comment));
    }
    if let Some(base) = &chain.base {
        let _ = writeln!(
            out,
            "\t\ttype {} hook {} priority {}; policy accept;",
            base.chain_type.keyword(),
            base.hook.keyword(),
            base.priority
        );
    }
    for rule in &chain.rules {
        let _ = writeln!(out, "\t\t{}", rule_text(family, rule));
    }
    out.push_str("\t}\n");
}

/// One rule as nft text, without indentation.
pub fn rule_text(family: Family, rule: &Rule) -> String {
    let mut parts: Vec<String> = rule.stmts.iter().map(|s| stmt_text(family, s)).collect();
    if let Some(comment) = &rule.comment {
        parts.push(format!("comment {}", quote(comment)));
    }
    parts.join(" ")
}

/// One statement as nft text. These strings are the IR's documented forms.
pub fn stmt_text(family: Family, stmt: &Stmt) -> String {
    let fam = family.keyword();
    match stmt {
        Stmt::CtStateNew => "ct state new".into(),
        Stmt::Addr { field, op, value } => {
            format!(
                "{fam} {} {}{}",
                field.keyword(),
                op_text(*op),
                net_text(value)
            )
        }
        Stmt::AddrInSet { field, op, set } => {
            format!("{fam} {} {}@{set}", field.keyword(), op_text(*op))
        }
        Stmt::AddrInList { field, op, values } => {
            let list: Vec<String> = values.iter().map(net_text).collect();
            format!(
                "{fam} {} {}{{ {} }}",
                field.keyword(),
                op_text(*op),
                list.join(", ")
            )
        }
        Stmt::KeyInSet { key, op, set } => {
            format!("{} {}@{set}", key_text(family, key), op_text(*op))
        }
        Stmt::L4Proto(proto) => format!("meta l4proto {}", proto.keyword()),
        Stmt::L4ProtoIn(protos) => {
            let list: Vec<&str> = protos.iter().map(|p| p.keyword()).collect();
            format!("meta l4proto {{ {} }}", list.join(", "))
        }
        Stmt::CtStatusDnat => "ct status dnat".into(),
        Stmt::Dport { proto, port } => format!("{} dport {port}", proto.keyword()),
        Stmt::FibAddrTypeLocal(field) => format!("fib {} type local", field.keyword()),
        Stmt::MarkBitsClear(bits) => format!("meta mark & {} == 0x00000000", hex(*bits)),
        Stmt::NumgenRandomEq { modulus, value } => {
            format!("numgen random mod {modulus} == {value}")
        }
        Stmt::MarkSetOr(bits) => format!("meta mark set meta mark | {}", hex(*bits)),
        Stmt::MarkSetXor(bits) => format!("meta mark set meta mark ^ {}", hex(*bits)),
        Stmt::UpdateMap { map, field, data } => {
            let data: Vec<String> = data.iter().map(key_value_text).collect();
            format!(
                "update @{map} {{ {fam} {} : {} }}",
                field.keyword(),
                data.join(" . ")
            )
        }
        Stmt::UpdateMapFromPacket { map, field, data } => format!(
            "update @{map} {{ {fam} {} : {} }}",
            field.keyword(),
            key_text(family, data)
        ),
        Stmt::MasqueradeFullyRandom => "masquerade fully-random".into(),
        Stmt::Dnat { proto, addr, port } => match addr {
            std::net::IpAddr::V4(v4) => {
                format!("meta l4proto {} dnat to {v4}:{port}", proto.keyword())
            }
            std::net::IpAddr::V6(v6) => {
                format!("meta l4proto {} dnat to [{v6}]:{port}", proto.keyword())
            }
        },
        Stmt::DnatFromMap {
            proto,
            field,
            map,
            port_map,
        } => {
            let key = format!("{fam} {}", field.keyword());
            let mut text = format!(
                "meta l4proto {} dnat {fam} to {key} map @{map}",
                proto.keyword()
            );
            if let Some(port_map) = port_map {
                let _ = write!(text, " : {key} map @{port_map}");
            }
            text
        }
        Stmt::DnatMap { key, map } => {
            format!("dnat {fam} to {} map @{map}", key_text(family, key))
        }
        Stmt::Vmap { key, map } => format!("{} vmap @{map}", key_text(family, key)),
        Stmt::Reject => "reject".into(),
        Stmt::Verdict(v) => verdict_text(v),
    }
}

/// `ip daddr . meta l4proto . th dport`: a (concatenated) key as rules and `typeof`
/// declarations write it.
pub fn key_text(family: Family, key: &[KeyExpr]) -> String {
    let parts: Vec<String> = key.iter().map(|k| key_expr_text(family, *k)).collect();
    parts.join(" . ")
}

fn key_expr_text(family: Family, key: KeyExpr) -> String {
    match key {
        KeyExpr::Addr(field) => format!("{} {}", family.keyword(), field.keyword()),
        KeyExpr::L4Proto => "meta l4proto".into(),
        KeyExpr::ThDport => "th dport".into(),
        KeyExpr::Numgen { modulus } => format!("numgen random mod {modulus}"),
        KeyExpr::CtOriginalAddr(field) => {
            format!("ct original {} {}", family.keyword(), field.keyword())
        }
        KeyExpr::CtOriginalProtoDst => "ct original proto-dst".into(),
    }
}

/// `verdict`, or the data type(s) of a data map (`ipv4_addr . inet_service`).
pub fn map_data_text(data: &MapData) -> String {
    match data {
        MapData::Verdict => "verdict".into(),
        MapData::Value(types) => {
            let types: Vec<&str> = types.iter().map(|t| t.keyword()).collect();
            types.join(" . ")
        }
    }
}

pub fn verdict_text(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Accept => "accept".into(),
        Verdict::Drop => "drop".into(),
        Verdict::Return => "return".into(),
        Verdict::Jump(chain) => format!("jump {chain}"),
        Verdict::Goto(chain) => format!("goto {chain}"),
    }
}

pub fn element_text(element: &Element) -> String {
    let key: Vec<String> = element.key.iter().map(key_value_text).collect();
    let mut text = key.join(" . ");
    if let Some(comment) = element.comment() {
        let _ = write!(text, " comment {}", quote(comment));
    }
    if let Some(verdict) = element.verdict() {
        let _ = write!(text, " : {}", verdict_text(verdict));
    }
    if !element.data.is_empty() {
        let data: Vec<String> = element.data.iter().map(key_value_text).collect();
        let _ = write!(text, " : {}", data.join(" . "));
    }
    text
}

pub fn key_value_text(value: &KeyValue) -> String {
    match value {
        KeyValue::Net(net) => net_text(net),
        KeyValue::Proto(proto) => proto.keyword().into(),
        KeyValue::Port(port) => port.to_string(),
        KeyValue::Int(n) => n.to_string(),
    }
}

/// A host prefix prints as the bare address, like nft does.
pub fn net_text(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

fn op_text(op: CmpOp) -> &'static str {
    match op {
        CmpOp::Eq => "",
        CmpOp::Ne => "!= ",
    }
}

fn hex(bits: u32) -> String {
    format!("{bits:#010x}")
}

/// Quotes a comment. Comments come from Kubernetes names (no quotes possible) and our
/// own constants, but a stray quote must never break the file.
fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "'"))
}
