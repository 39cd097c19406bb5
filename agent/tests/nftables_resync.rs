//! The periodic resync against the real kernel: it reads svcproxy's tables back only
//! when the ruleset's generation says someone else committed, and then repairs what
//! drifted.

use std::path::Path;

use svcproxy_agent::sync::{NftSyncer, SyncKind};
use svcproxy_tests::{Netns, fixtures, require_kernel};

#[test]
fn resync_reads_the_kernel_back_only_after_someone_elses_commit() {
    if !require_kernel() {
        return;
    }
    let plan = fixtures::plan(Path::new("fixtures/traffic/cluster.yaml"));
    let ruleset = svcproxy_compiler::nft::ruleset(&plan);
    let ns = Netns::new("resync").unwrap();
    let mut syncer = ns.enter(|| NftSyncer::new().unwrap()).unwrap();
    // The syncer's socket belongs to the namespace it was opened in; the calls below
    // may run on any thread.
    let first = syncer.sync(&ruleset).unwrap();
    assert_eq!(
        first.kind,
        SyncKind::Full,
        "the first sync reads the kernel"
    );
    assert!(first.messages > 0);

    // Nobody committed since: no read-back, nothing sent.
    let quiet = syncer.resync(&ruleset).unwrap();
    assert_eq!((quiet.kind, quiet.messages), (SyncKind::Partial, 0));

    // Someone else's commit, in a table of their own: svcproxy reads its tables back
    // (the generation moved) and finds nothing to repair.
    ns.nft("table inet theirs { chain c { type filter hook input priority 0; }; }")
        .unwrap();
    let other = syncer.resync(&ruleset).unwrap();
    assert_eq!((other.kind, other.messages), (SyncKind::Full, 0));
    let quiet = syncer.resync(&ruleset).unwrap();
    assert_eq!((quiet.kind, quiet.messages), (SyncKind::Partial, 0));

    // Drift in svcproxy's own table: read back and repaired, and theirs untouched.
    ns.exec("nft", &["flush", "chain", "ip", "svcproxy", "services"])
        .unwrap();
    let repaired = syncer.resync(&ruleset).unwrap();
    assert_eq!(repaired.kind, SyncKind::Full);
    assert!(repaired.messages > 0);
    let (held, _) = syncer.read_owned().unwrap();
    assert!(svcproxy_agent::nftables::diff(&held, &ruleset).is_empty());
    assert!(
        ns.exec("nft", &["list", "table", "inet", "theirs"])
            .unwrap()
            .contains("hook input")
    );
}
