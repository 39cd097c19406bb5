//! The diff engine on large rulesets: what a sync computes before it sends anything.
//! - `no-op`: the desired ruleset equals what was committed (a resync that finds
//!   nothing to do);
//! - `one-endpoint`: one Service gained an endpoint;
//! - `fragment`: the same change, diffed over that Service's rules only
//!   (`svcproxy_compiler::nft::fragment`), as the incremental path does.

/// The allocator the `svcproxy` binary uses, so the figures are the product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{Criterion, criterion_group, criterion_main};
use svcproxy_agent::nftables::diff;
use svcproxy_bench::{EndpointChange, compile_ruleset};
use svcproxy_compiler::synth::{self, Spec};

fn diffs(c: &mut Criterion) {
    let mut group = c.benchmark_group("diff");
    group.sample_size(10);
    let spec = Spec::new(10_000, 5);
    let base = compile_ruleset(&synth::generate(&spec).source);
    let same = base.clone();
    group.bench_function("no-op/10000x5", |b| b.iter(|| diff(&base, &same)));

    let change = EndpointChange::new(&spec, 4242);
    let bumped = change.full_ruleset(1);
    group.bench_function("one-endpoint/10000x5", |b| b.iter(|| diff(&base, &bumped)));
    let (before, after) = (change.fragment(0), change.fragment(1));
    group.bench_function("fragment/one-endpoint", |b| {
        b.iter(|| diff(&before, &after))
    });
    group.finish();
}

criterion_group!(benches, diffs);
criterion_main!(benches);
