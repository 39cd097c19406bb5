//! Pins the wire bytes of whole-ruleset batches: for each fixture (and a generated
//! cluster) the length and a hash of what `NftSocket::apply_full` would send. Encoding
//! work may change how the bytes are produced, never which bytes; a mismatch here means
//! the kernel would receive something different. No kernel needed.
//!
//! `UPDATE_GOLDEN=1` rewrites `golden/nftables/batch-bytes.txt`; only do that for an
//! intended change of the encoding, checked against the kernel tests.

use svcproxy_agent::nftables::full_replacement;
use svcproxy_compiler::nft::ir::Ruleset;
use svcproxy_compiler::synth::{self, Spec};
use svcproxy_tests::fixtures;

/// FNV-1a, 64 bits: stable across Rust releases, unlike `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn line(name: &str, ruleset: &Ruleset) -> String {
    let batch = full_replacement(ruleset).expect("fixture encodes");
    // A generation and a sequence start that are not zero, so both are pinned too.
    let bytes = batch.encode(1000, Some(77));
    format!(
        "{name} messages={} bytes={} fnv1a={:016x}\n",
        batch.len(),
        bytes.len(),
        fnv1a(&bytes)
    )
}

#[test]
fn full_replacement_bytes_are_pinned() {
    let mut actual = String::new();
    for dir in ["semantics", "inputs"] {
        for fixture in fixtures::fixtures(dir) {
            let ruleset = svcproxy_compiler::nft::ruleset(&fixtures::plan(&fixture));
            actual.push_str(&line(&fixture.display().to_string(), &ruleset));
        }
    }
    let source = synth::generate(&Spec::new(300, 3)).source;
    let plan = svcproxy_compiler::plan(std::slice::from_ref(&source), &synth_options())
        .expect("generated snapshots compile");
    actual.push_str(&line(
        "synth 300x3",
        &svcproxy_compiler::nft::ruleset(&plan),
    ));
    let golden = fixtures::root().join("golden/nftables/batch-bytes.txt");
    if let Err(e) = fixtures::check_golden(&golden, &actual) {
        panic!("{e}");
    }
}

fn synth_options() -> svcproxy_compiler::Options {
    svcproxy_compiler::Options {
        node: synth::node_context(),
        ..svcproxy_compiler::Options::default()
    }
}
