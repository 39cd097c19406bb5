//! nft JSON: the ruleset in the schema of `nft -j list ruleset` (without handles),
//! which `nft -j -f` also reads. Objects come in the order `nft -j -f` needs them:
//! table, chains, sets and maps (their verdict elements name chains), then rules chain
//! by chain. (`nft -j list` prints sets before chains; the objects are the same.)

use serde_json::{Value, json};

use super::ir::*;
use super::text::{map_data_text, net_text, stmt_text};

pub fn render(ruleset: &Ruleset) -> Value {
    let mut objects = vec![json!({"metainfo": {"json_schema_version": 1}})];
    for table in &ruleset.tables {
        let family = table.family.keyword();
        // nft 1.0.6 neither prints nor reads table comments in JSON.
        objects.push(json!({"table": {"family": family, "name": table.name}}));
        for chain in &table.chains {
            let mut object = json!({"family": family, "table": table.name, "name": chain.name});
            if let Some(base) = &chain.base {
                object["type"] = json!(base.chain_type.keyword());
                object["hook"] = json!(base.hook.keyword());
                object["prio"] = json!(base.priority);
                object["policy"] = json!("accept");
            }
            if let Some(comment) = &chain.comment {
                object["comment"] = json!(comment);
            }
            objects.push(json!({ "chain": object }));
        }
        for set in &table.sets {
            objects.push(set_json(table, set));
        }
        for chain in &table.chains {
            for rule in &chain.rules {
                let expr: Vec<Value> = rule
                    .stmts
                    .iter()
                    .flat_map(|s| stmt_json(table.family, s))
                    .collect();
                let mut object = json!({
                    "family": family, "table": table.name, "chain": chain.name, "expr": expr,
                });
                if let Some(comment) = &rule.comment {
                    object["comment"] = json!(comment);
                }
                objects.push(json!({ "rule": object }));
            }
        }
    }
    json!({ "nftables": objects })
}

fn set_json(table: &Table, set: &Set) -> Value {
    let key: Vec<&str> = set.key.iter().map(|k| k.keyword()).collect();
    let mut object = json!({
        "family": table.family.keyword(),
        "name": set.name,
        "table": table.name,
        "type": if key.len() == 1 { json!(key[0]) } else { json!(key) },
    });
    // nft's JSON schema (1.0.6) has no "dynamic" flag: it neither prints nor reads it.
    // The kernel marks a set dynamic when an `update` rule binds it.
    let mut flags = Vec::new();
    if set.flags.interval {
        flags.push("interval");
    }
    if set.flags.timeout {
        flags.push("timeout");
    }
    if !flags.is_empty() {
        object["flags"] = json!(flags);
    }
    if let Some(timeout) = set.timeout_secs {
        object["timeout"] = json!(timeout);
    }
    if let Some(comment) = &set.comment {
        object["comment"] = json!(comment);
    }
    // nft 1.0.6 prints a concatenated data type as one string, and cannot read it
    // back ("Invalid map type"): see docs/design.md, "Output formats".
    if let Some(data) = &set.data {
        object["map"] = json!(map_data_text(data));
    }
    if !set.elements.is_empty() {
        let elements: Vec<Value> = set.elements.iter().map(element_json).collect();
        object["elem"] = json!(elements);
    }
    let kind = if set.data.is_some() { "map" } else { "set" };
    json!({ kind: object })
}

fn element_json(element: &Element) -> Value {
    let mut key = if element.key.len() == 1 {
        key_value_json(&element.key[0])
    } else {
        json!({"concat": element.key.iter().map(key_value_json).collect::<Vec<_>>()})
    };
    if let Some(comment) = element.comment() {
        key = json!({"elem": {"val": key, "comment": comment}});
    }
    match element.verdict() {
        Some(verdict) => json!([key, verdict_json(verdict)]),
        None if !element.data.is_empty() => {
            let data = if element.data.len() == 1 {
                key_value_json(&element.data[0])
            } else {
                json!({"concat": element.data.iter().map(key_value_json).collect::<Vec<_>>()})
            };
            json!([key, data])
        }
        None => key,
    }
}

fn key_value_json(value: &KeyValue) -> Value {
    match value {
        KeyValue::Net(net) => net_json(net),
        KeyValue::Proto(proto) => json!(proto.keyword()),
        KeyValue::Port(port) => json!(port),
        KeyValue::Int(n) => json!(n),
    }
}

fn net_json(net: &ipnet::IpNet) -> Value {
    if net.prefix_len() == net.max_prefix_len() {
        json!(net_text(net))
    } else {
        json!({"prefix": {"addr": net.network().to_string(), "len": net.prefix_len()}})
    }
}

pub fn verdict_json(verdict: &Verdict) -> Value {
    match verdict {
        Verdict::Accept => json!({"accept": null}),
        Verdict::Drop => json!({"drop": null}),
        Verdict::Return => json!({"return": null}),
        Verdict::Jump(chain) => json!({"jump": {"target": chain}}),
        Verdict::Goto(chain) => json!({"goto": {"target": chain}}),
    }
}

fn payload(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}

fn op_json(op: CmpOp) -> &'static str {
    match op {
        CmpOp::Eq => "==",
        CmpOp::Ne => "!=",
    }
}

fn matches(op: &str, left: Value, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

/// One key expression, or the concatenation of several.
fn key_json(family: Family, key: &[KeyExpr]) -> Value {
    match key {
        [one] => key_expr_json(family, *one),
        _ => json!({"concat": key.iter().map(|k| key_expr_json(family, *k)).collect::<Vec<_>>()}),
    }
}

fn key_expr_json(family: Family, key: KeyExpr) -> Value {
    match key {
        KeyExpr::Addr(field) => payload(family.keyword(), field.keyword()),
        KeyExpr::L4Proto => meta("l4proto"),
        KeyExpr::ThDport => payload("th", "dport"),
        KeyExpr::Numgen { modulus } => {
            json!({"numgen": {"mode": "random", "mod": modulus, "offset": 0}})
        }
        KeyExpr::CtOriginalAddr(field) => {
            let key = format!("{} {}", family.keyword(), field.keyword());
            json!({"ct": {"key": key, "dir": "original"}})
        }
        KeyExpr::CtOriginalProtoDst => json!({"ct": {"key": "proto-dst", "dir": "original"}}),
    }
}

/// One statement as nft JSON expressions (a DNAT is two: the protocol match and the
/// nat statement).
fn stmt_json(family: Family, stmt: &Stmt) -> Vec<Value> {
    let fam = family.keyword();
    let one = match stmt {
        Stmt::CtStateNew => matches("in", json!({"ct": {"key": "state"}}), json!("new")),
        Stmt::Addr { field, op, value } => {
            matches(op_json(*op), payload(fam, field.keyword()), net_json(value))
        }
        Stmt::AddrInSet { field, op, set } => matches(
            op_json(*op),
            payload(fam, field.keyword()),
            json!(format!("@{set}")),
        ),
        Stmt::AddrInList { field, op, values } => {
            let set: Vec<Value> = values.iter().map(net_json).collect();
            matches(
                op_json(*op),
                payload(fam, field.keyword()),
                json!({ "set": set }),
            )
        }
        Stmt::KeyInSet { key, op, set } => matches(
            op_json(*op),
            key_json(family, key),
            json!(format!("@{set}")),
        ),
        Stmt::L4Proto(proto) => matches("==", meta("l4proto"), json!(proto.keyword())),
        Stmt::L4ProtoIn(protos) => {
            let set: Vec<&str> = protos.iter().map(|p| p.keyword()).collect();
            matches("==", meta("l4proto"), json!({ "set": set }))
        }
        Stmt::CtStatusDnat => matches("in", json!({"ct": {"key": "status"}}), json!("dnat")),
        Stmt::Dport { proto, port } => {
            matches("==", payload(proto.keyword(), "dport"), json!(port))
        }
        Stmt::FibAddrTypeLocal(field) => matches(
            "==",
            json!({"fib": {"result": "type", "flags": [field.keyword()]}}),
            json!("local"),
        ),
        Stmt::MarkBitsClear(bits) => matches("==", json!({"&": [meta("mark"), bits]}), json!(0)),
        Stmt::NumgenRandomEq { modulus, value } => matches(
            "==",
            json!({"numgen": {"mode": "random", "mod": modulus, "offset": 0}}),
            json!(value),
        ),
        Stmt::MarkSetOr(bits) => {
            json!({"mangle": {"key": meta("mark"), "value": {"|": [meta("mark"), bits]}}})
        }
        Stmt::MarkSetXor(bits) => {
            json!({"mangle": {"key": meta("mark"), "value": {"^": [meta("mark"), bits]}}})
        }
        // nft 1.0.6 has no JSON form for the map statement: `nft -j list` prints its
        // text form as a string (and warns "stmt ops map have no json callback"), and
        // `nft -j -f` cannot read that back. This is what nft prints.
        Stmt::UpdateMap { .. } | Stmt::UpdateMapFromPacket { .. } => {
            json!(stmt_text(family, stmt))
        }
        Stmt::MasqueradeFullyRandom => json!({"masquerade": {"flags": "fully-random"}}),
        Stmt::Dnat { proto, addr, port } => {
            return vec![
                matches("==", meta("l4proto"), json!(proto.keyword())),
                json!({"dnat": {"addr": addr.to_string(), "port": port}}),
            ];
        }
        Stmt::DnatFromMap {
            proto,
            field,
            map,
            port_map,
        } => {
            let lookup = |map: &str| json!({"map": {"key": payload(fam, field.keyword()), "data": format!("@{map}")}});
            // nft names the family only when the map holds `address . port`.
            let dnat = match port_map {
                None => json!({"dnat": {"family": fam, "addr": lookup(map)}}),
                Some(port_map) => {
                    json!({"dnat": {"addr": lookup(map), "port": lookup(port_map)}})
                }
            };
            return vec![matches("==", meta("l4proto"), json!(proto.keyword())), dnat];
        }
        Stmt::DnatMap { key, map } => {
            let key = key_json(family, key);
            json!({"dnat": {"family": fam, "addr": {"map": {"key": key, "data": format!("@{map}")}}}})
        }
        Stmt::Vmap { key, map } => {
            json!({"vmap": {"key": key_json(family, key), "data": format!("@{map}")}})
        }
        Stmt::Reject => {
            let icmp = match family {
                Family::Ip => "icmp",
                Family::Ip6 => "icmpv6",
            };
            json!({"reject": {"type": icmp, "expr": "port-unreachable"}})
        }
        Stmt::Verdict(v) => verdict_json(v),
    };
    vec![one]
}
