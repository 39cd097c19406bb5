use std::time::Instant;
use svcproxy_compiler::synth::{self, Spec};
use svcproxy_compiler::{input, nft};
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
fn main() {
    let snapshot = synth::generate(&Spec::new(10_000, 10));
    let collect = std::env::var_os("NOCOLLECT").is_none();
    let mut opts = svcproxy_bench::options();
    if !collect {
        opts.release_memory = None;
    }
    let mut rows = vec![];
    for _ in 0..9 {
        let objects = input::parse_source(&snapshot.source).unwrap();
        let t0 = Instant::now();
        let plan = svcproxy_compiler::plan_objects(objects, &opts).unwrap();
        let t1 = Instant::now();
        let rules = nft::ruleset_owned(plan);
        let t2 = Instant::now();
        drop(rules);
        let t3 = Instant::now();
        rows.push((
            (t1 - t0).as_secs_f64() * 1e3,
            (t2 - t1).as_secs_f64() * 1e3,
            (t3 - t2).as_secs_f64() * 1e3,
        ));
    }
    rows.sort_by(|a, b| (a.0 + a.1).partial_cmp(&(b.0 + b.1)).unwrap());
    for r in &rows {
        println!(
            "plan_objects {:.1}  ruleset_owned {:.1}  drop {:.1}  total {:.1}",
            r.0,
            r.1,
            r.2,
            r.0 + r.1
        );
    }
}
