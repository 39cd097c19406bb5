//! Incremental syncs of one Service's fragment against the real kernel. The endpoint
//! maps and `pick-…` chains are shared by every port, so a fragment diff must become
//! element changes in them, plus a map and an appended rule for a count no port had.

use svcproxy_agent::nftables::diff;
use svcproxy_agent::sync::{NftSyncer, SyncKind};
use svcproxy_compiler::nft::ir::Ruleset;
use svcproxy_compiler::synth::{self, Spec};
use svcproxy_compiler::{Options, nft};
use svcproxy_tests::{Netns, require_kernel};

fn options() -> Options {
    Options {
        node: synth::node_context(),
        ..Options::default()
    }
}

/// The whole cluster with `extra` more endpoints on Service `service`.
fn whole(spec: &Spec, service: usize, extra: usize) -> Ruleset {
    let source = synth::generate_with_extra(spec, service, extra).source;
    nft::ruleset(&svcproxy_compiler::plan(&[source], &options()).unwrap())
}

/// Service `service`'s fragment with `extra` more endpoints.
fn fragment(spec: &Spec, service: usize, extra: usize) -> Ruleset {
    let shape = synth::shapes(spec).swap_remove(service);
    let source = synth::service_source(&shape, spec.endpoints, extra);
    nft::fragment(&svcproxy_compiler::plan(&[source], &options()).unwrap())
}

fn set_len(ruleset: &Ruleset, name: &str) -> Option<usize> {
    ruleset.tables[0]
        .sets
        .iter()
        .find(|s| s.name == name)
        .map(|s| s.elements.len())
}

#[test]
fn endpoint_changes_through_fragments_touch_only_shared_map_elements() {
    if !require_kernel() {
        return;
    }
    // Every Service of the generator has 3 endpoints: `endpoints-3` is shared by all,
    // `endpoints-4` does not exist until one of them gets a fourth.
    let spec = Spec::new(40, 3);
    let (s, t) = (0, 6);
    let start = whole(&spec, usize::MAX, 0);
    assert_eq!(set_len(&start, "endpoints-4"), None);
    let ns = Netns::new("fragment").unwrap();
    let mut syncer = ns.enter(|| NftSyncer::new().unwrap()).unwrap();
    syncer.sync(&start).unwrap();

    // A fourth endpoint on S: no port has 4, so the fragment brings the map and its
    // `pick-endpoint` rule, appended to the shared chain (the kernel then holds what a
    // whole compile gives: 4 sorts after the counts present).
    let grown = syncer
        .sync_fragment(&fragment(&spec, s, 0), &fragment(&spec, s, 1))
        .unwrap();
    let summary = grown.changes.summary();
    assert!(
        summary.sets_added > 0 && summary.rules_added > 0,
        "{summary:?}"
    );
    assert_eq!(
        (summary.chains_flushed, summary.chains_deleted),
        (0, 0),
        "a shared chain is never rewritten by a fragment: {summary:?}"
    );
    let (held, _) = syncer.read_owned().unwrap();
    let rest = diff(&held, &whole(&spec, s, 1));
    assert!(rest.is_empty(), "kernel differs: {}", rest.to_nft());

    // S back to 3: its elements leave `endpoints-4`, which stays (empty, with its
    // rule) because the shared chain refers to it; `endpoints-3` gets them back.
    let back = syncer
        .sync_fragment(&fragment(&spec, s, 1), &fragment(&spec, s, 0))
        .unwrap();
    assert_eq!(back.kind, SyncKind::Partial);
    let (held, _) = syncer.read_owned().unwrap();
    assert_eq!(set_len(&held, "endpoints-4"), Some(0));
    assert_eq!(
        set_len(&held, "endpoints-3"),
        set_len(&start, "endpoints-3")
    );

    // T to 4 endpoints: `endpoints-4` exists now, so this is elements only, and the
    // kernel then holds exactly what a whole compile of that cluster gives.
    let moved = syncer
        .sync_fragment(&fragment(&spec, t, 0), &fragment(&spec, t, 1))
        .unwrap();
    assert_eq!(moved.kind, SyncKind::Partial);
    let summary = moved.changes.summary();
    assert_eq!(
        (
            summary.rules_added,
            summary.chains_added,
            summary.sets_added
        ),
        (0, 0, 0),
        "elements only: {summary:?}"
    );
    let (held, _) = syncer.read_owned().unwrap();
    let expected = whole(&spec, t, 1);
    let rest = diff(&held, &expected);
    assert!(rest.is_empty(), "kernel differs: {}", rest.to_nft());

    // The syncer's own picture (element changes merged when a whole sync needs it)
    // agrees: a whole sync of the same cluster sends nothing.
    let whole_sync = syncer.sync(&expected).unwrap();
    assert_eq!(
        (whole_sync.kind, whole_sync.messages),
        (SyncKind::Partial, 0)
    );
}
