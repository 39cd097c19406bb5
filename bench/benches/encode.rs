//! Encoding a whole ruleset into its netlink transaction (the cold start's batch):
//! IR to messages, and messages to the wire bytes one `sendmsg` carries.

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
    // What a cold apply spends before `sendmsg`: the batch and its bytes.
    group.bench_function("to-bytes/10000x5", |b| {
        b.iter(|| {
            let batch = full_replacement(&ruleset).expect("encodes");
            batch.encode(1, Some(1)).len()
        })
    });
    // The emission alone, from a batch built once.
    let batch = full_replacement(&ruleset).expect("encodes");
    group.bench_function("emit/10000x5", |b| {
        b.iter(|| batch.encode(1, Some(1)).len())
    });
    group.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
