//! Where compile time goes, phase by phase (a profiling aid).
use std::time::Instant;

use svcproxy_compiler::synth::{self, Spec};
use svcproxy_compiler::{allocate, input, model, nft, plan};

fn main() {
    let services = std::env::args()
        .nth(1)
        .map_or(10_000, |s| s.parse().unwrap());
    let endpoints = std::env::args().nth(2).map_or(10, |s| s.parse().unwrap());
    let snapshot = synth::generate(&Spec::new(services, endpoints));
    let node = synth::node_context();
    for _ in 0..3 {
        let t = Instant::now();
        let objects = input::parse_source(&snapshot.source).unwrap();
        let parsed = t.elapsed();
        let t = Instant::now();
        let snap = model::Snapshot::from_objects(objects).unwrap();
        let modelled = t.elapsed();
        let t = Instant::now();
        let allocated = allocate::allocate(snap.services.clone(), &node).unwrap();
        let alloc = t.elapsed();
        let t = Instant::now();
        let families = plan::build(&snap, &allocated.services, &node);
        let planned = t.elapsed();
        let p = svcproxy_compiler::Plan {
            families,
            allocations: Vec::new(),
            warnings: Vec::new(),
        };
        let t = Instant::now();
        let rules = nft::ruleset(&p);
        let rendered = t.elapsed();
        println!(
            "parse {parsed:?} model {modelled:?} allocate {alloc:?} plan {planned:?} ruleset {rendered:?} ({} chains)",
            rules.tables.iter().map(|t| t.chains.len()).sum::<usize>()
        );
    }
}
