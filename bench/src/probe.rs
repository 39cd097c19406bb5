//! What one small commit costs the kernel, by kind of change, with a large ruleset
//! loaded: the measurement behind the layout (docs/design.md). nf_tables re-validates
//! the table's whole jump graph at commit (`nf_tables_validate` ->
//! `nft_table_validate`, walking every chain reachable from the base chains, verdict
//! maps included) whenever the transaction added a rule containing an expression with
//! a `validate` hook (immediate verdicts, nat, masq, reject, fib, lookups into verdict
//! maps, dynset, ...) or a verdict-map element that jumps. A change that adds neither
//! skips it.

use std::time::{Duration, Instant};

use anyhow::Result;
use svcproxy_agent::nftables::{Batch, NftSocket};
use svcproxy_bench::{Stats, human};
use svcproxy_compiler::nft::ir::{
    AddrField, CmpOp, Element, Family, KeyValue, L4Proto, Rule, Ruleset, Set, Stmt, Values, Verdict,
};

/// Kernel time of `kind` of change, median of a few, in the namespace of `socket`.
pub fn probe(socket: &mut NftSocket, ruleset: &Ruleset) -> Result<Vec<(String, Duration)>> {
    let table = &ruleset.tables[0];
    let family = table.family;
    let set_named = |name: &str| -> Set {
        let mut s = table
            .sets
            .iter()
            .find(|s| s.name == name)
            .expect("skeleton set")
            .clone();
        s.elements.clear();
        s
    };
    let cluster_ips = set_named("cluster-ips");
    // A verdict map whose elements `goto` per-port chains: the ClientIP-affinity
    // record chains.
    let records = set_named("affinity-records");
    let some_record_chain = table
        .chains
        .iter()
        .find(|c| c.name.starts_with("record-"))
        .expect("a ClientIP-affinity record chain")
        .name
        .clone();
    let mut out = Vec::new();
    let mut run =
        |what: &str, build: &mut dyn FnMut(&mut Batch, u32) -> Result<()>| -> Result<()> {
            let mut samples = Vec::new();
            for i in 0..7u32 {
                let mut batch = Batch::new();
                build(&mut batch, i)?;
                let started = Instant::now();
                let commit = socket.commit(&batch, None)?;
                let _ = started;
                samples.push(commit.kernel_time);
            }
            let median = Stats::of(&samples).p50;
            eprintln!("  probe: {what}: kernel {}", human(median));
            out.push((what.to_string(), median));
            Ok(())
        };
    let addr = |i: u32| -> KeyValue {
        KeyValue::Net(std::net::IpAddr::from([10, 111, 200, i as u8]).into())
    };
    run("add one element to a plain set", &mut |b, i| {
        b.add_elements(
            family,
            &table.name,
            &cluster_ips,
            &[element(vec![addr(i)], None)],
        )?;
        Ok(())
    })?;
    // What an endpoint change sends: data-map elements, no rule, no jump.
    if let Some(map) = table.sets.iter().find(|s| s.name.starts_with("endpoints-")) {
        let map = set_named(&map.name);
        run(
            &format!("add one element to the {} endpoint map", map.name),
            &mut |b, i| {
                let key = [
                    addr(i),
                    KeyValue::Proto(L4Proto::Tcp),
                    KeyValue::Port(1),
                    KeyValue::Int(0),
                ];
                let element =
                    Element::new(key.into()).with_data([addr(i), KeyValue::Port(80)].into());
                b.add_elements(family, &table.name, &map, &[element])?;
                Ok(())
            },
        )?;
    }
    run(
        "add one goto element to the affinity-records verdict map",
        &mut |b, i| {
            b.add_elements(
                family,
                &table.name,
                &records,
                &[element(
                    vec![addr(i), KeyValue::Proto(L4Proto::Tcp), KeyValue::Port(1)],
                    Some(Verdict::Goto(some_record_chain.clone())),
                )],
            )?;
            Ok(())
        },
    )?;
    let chain_with = |stmts: Vec<Stmt>| {
        move |b: &mut Batch, i: u32| -> Result<()> {
            let chain = svcproxy_compiler::nft::ir::Chain {
                name: format!("probe-{}-{i}", stmts.len()),
                base: None,
                comment: None,
                rules: Vec::new(),
            };
            b.add_chain(family, &table.name, &chain)?;
            let rule = Rule {
                stmts: stmts.clone(),
                comment: None,
            };
            b.add_rule(family, &table.name, &chain.name, 0, &rule)?;
            Ok(())
        }
    };
    let saddr = Stmt::Addr {
        field: AddrField::Saddr,
        op: CmpOp::Eq,
        value: "10.1.2.3/32".parse()?,
    };
    run(
        "add a chain with a match-only rule (no validate hook)",
        &mut chain_with(vec![saddr.clone()]),
    )?;
    run(
        "add a chain with a dnat rule (nat has a validate hook)",
        &mut chain_with(vec![
            saddr.clone(),
            Stmt::Dnat {
                proto: L4Proto::Tcp,
                addr: "10.128.0.1".parse()?,
                port: 80,
            },
        ]),
    )?;
    let _ = Family::Ip;
    Ok(out)
}

fn element(key: Vec<KeyValue>, verdict: Option<Verdict>) -> Element {
    Element::from_parts(
        Values::try_from_slice(&key).expect("a key of at most 4 values"),
        verdict,
        Values::new(),
        None,
    )
}
