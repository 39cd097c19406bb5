//! The compile figure's path (parsed objects -> IR, as `compile_parsed` runs it) in its
//! two calls, with and without releasing memory between phases: what
//! `Options::release_memory` costs in time (the pages it returns are faulted in again
//! by the next phase).
//!
//! `cargo run --release -p svcproxy-bench --example breakdown` (10k x 10, 9 runs,
//! sorted by total); `NOCOLLECT=1` leaves memory unreleased.

use std::time::Instant;

use svcproxy_compiler::synth::{self, Spec};
use svcproxy_compiler::{input, nft};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let snapshot = synth::generate(&Spec::new(10_000, 10));
    let mut options = svcproxy_bench::options();
    if std::env::var_os("NOCOLLECT").is_some() {
        options.release_memory = None;
    }
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
    let mut rows = Vec::new();
    for _ in 0..9 {
        let objects = input::parse_source(&snapshot.source).expect("parses");
        let t0 = Instant::now();
        let plan = svcproxy_compiler::plan_objects(objects, &options).expect("compiles");
        let t1 = Instant::now();
        let rules = nft::ruleset_owned(plan, options.release_memory);
        let t2 = Instant::now();
        drop(rules);
        let t3 = Instant::now();
        rows.push((ms(t0, t1), ms(t1, t2), ms(t2, t3)));
    }
    rows.sort_by(|a, b| (a.0 + a.1).total_cmp(&(b.0 + b.1)));
    for (plan, ruleset, drop) in rows {
        println!(
            "plan_objects {plan:.1}  ruleset_owned {ruleset:.1}  drop {drop:.1}  total {:.1} ms",
            plan + ruleset
        );
    }
}
