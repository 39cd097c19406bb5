//! Encoding a whole ruleset into its netlink transaction (the cold start's batch):
//! IR to messages, and every message's wire length (what emitting them walks).

/// The allocator the `svcproxy` binary uses, so the figures are the product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{Criterion, criterion_group, criterion_main};
use svcproxy_agent::nftables::full_replacement;
use svcproxy_bench::compile_ruleset;
use svcproxy_compiler::synth::{self, Spec};

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group.sample_size(10);
    let ruleset = compile_ruleset(&synth::generate(&Spec::new(10_000, 5)).source);
    group.bench_function("full-replacement/10000x5", |b| {
        b.iter(|| {
            let batch = full_replacement(&ruleset).expect("encodes");
            batch.wire_len()
        })
    });
    group.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
