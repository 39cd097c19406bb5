//! Incremental syncs of one Service's fragment against the real kernel. The endpoint
//! maps and `pick-…` chains are shared by every port, so a fragment diff must become
//! element changes in them, plus a map and an appended rule for a count no port had.

use svcproxy_agent::nftables::{Op, diff};
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

/// Whether `held` differs from `want` only in the layout's headroom: empty endpoint
/// maps one side lacks, and the `pick-…` rules that read them. Every element matches.
fn only_headroom_differs(held: &Ruleset, want: &Ruleset) -> Result<(), String> {
    let changes = diff(held, want);
    let empty = |ruleset: &Ruleset, name: &str| {
        ruleset
            .tables
            .iter()
            .flat_map(|t| &t.sets)
            .any(|s| s.name == name && s.elements.is_empty())
    };
    for change in changes.iter() {
        let fine = match &change.op {
            Op::AddSet(set) => set.elements.is_empty(),
            Op::DeleteSet(set) => empty(held, &set.name),
            Op::FlushChain(chain) | Op::AddRules { chain, .. } => chain.starts_with("pick-"),
            _ => false,
        };
        if !fine {
            return Err(changes.to_nft());
        }
    }
    Ok(())
}

#[test]
fn endpoint_changes_through_fragments_touch_only_shared_map_elements() {
    if !require_kernel() {
        return;
    }
    // Every Service of the generator has 3 endpoints: `endpoints-3` is shared by all,
    // `endpoints-2` and `endpoints-4` are there empty (headroom), `endpoints-5` is not.
    let spec = Spec::new(40, 3);
    let (s, t) = (0, 6);
    let start = whole(&spec, usize::MAX, 0);
    assert_eq!(set_len(&start, "endpoints-4"), Some(0));
    assert_eq!(set_len(&start, "endpoints-5"), None);
    let ns = Netns::new("fragment").unwrap();
    let mut syncer = ns.enter(|| NftSyncer::new().unwrap()).unwrap();
    syncer.sync(&start).unwrap();

    // A fourth endpoint on S: into the headroom map, elements only.
    let grown = syncer
        .sync_fragment(&fragment(&spec, s, 0), &fragment(&spec, s, 1))
        .unwrap();
    assert_eq!(grown.kind, SyncKind::Partial);
    let summary = grown.changes.summary();
    assert_eq!(
        (
            summary.rules_added,
            summary.sets_added,
            summary.chains_flushed
        ),
        (0, 0, 0),
        "elements only: {summary:?}"
    );
    let (held, _) = syncer.read_owned().unwrap();
    only_headroom_differs(&held, &whole(&spec, s, 1)).unwrap();

    // S back to 3: exactly the starting state again.
    syncer
        .sync_fragment(&fragment(&spec, s, 1), &fragment(&spec, s, 0))
        .unwrap();
    let (held, _) = syncer.read_owned().unwrap();
    let rest = diff(&held, &start);
    assert!(rest.is_empty(), "kernel differs: {}", rest.to_nft());

    // Two more on T: no map for 5 endpoints, so the fragment brings it and appends
    // its rule to the shared chain, which is never flushed by a fragment.
    let jumped = syncer
        .sync_fragment(&fragment(&spec, t, 0), &fragment(&spec, t, 2))
        .unwrap();
    let summary = jumped.changes.summary();
    assert!(
        summary.sets_added > 0 && summary.rules_added > 0,
        "{summary:?}"
    );
    assert_eq!(
        (summary.chains_flushed, summary.chains_deleted),
        (0, 0),
        "a shared chain is never rewritten by a fragment: {summary:?}"
    );
    let expected = whole(&spec, t, 2);
    let (held, _) = syncer.read_owned().unwrap();
    only_headroom_differs(&held, &expected).unwrap();

    // The syncer's own picture (fragment element changes are merged into it when a
    // whole sync needs it) agrees with the kernel: a whole sync adds only the new
    // headroom, and a second one sends nothing.
    let whole_sync = syncer.sync(&expected).unwrap();
    let summary = whole_sync.changes.summary();
    assert_eq!(
        (summary.elements_added, summary.elements_deleted),
        (0, 0),
        "{summary:?}"
    );
    let again = syncer.sync(&expected).unwrap();
    assert_eq!((again.kind, again.messages), (SyncKind::Partial, 0));
    let (held, _) = syncer.read_owned().unwrap();
    assert!(diff(&held, &expected).is_empty());
}
