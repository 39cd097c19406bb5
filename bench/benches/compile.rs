//! The compiler's pure path: snapshot text parsed, validated and planned, and the plan
//! rendered as the nftables IR (what `svcproxy apply` and `run` hand to the netlink
//! layer). Target (issue 5): 10k services x 10 endpoints under 100 ms.

/// The allocator the `svcproxy` binary uses, so the figures are the product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{Criterion, criterion_group, criterion_main};
use svcproxy_bench::compile_ruleset;
use svcproxy_compiler::synth::{self, Spec};

fn compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    for (services, endpoints) in [(1_000, 10), (10_000, 10)] {
        let snapshot = synth::generate(&Spec::new(services, endpoints));
        group.bench_function(format!("{services}x{endpoints}"), |b| {
            b.iter(|| compile_ruleset(&snapshot.source))
        });
    }
    group.finish();
}

criterion_group!(benches, compile);
criterion_main!(benches);
