//! Test harness shared by the integration tests: network namespaces
//! ([`netns`]), the standard node/ext/pods topology ([`topology`]) and the
//! `svcproxy-testd` echo server and prober ([`testd`]).
//!
//! A test that needs the kernel starts like this:
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use svcproxy_tests::{Cluster, Proto, require_kernel, set_testd_path};
//! if !require_kernel() {
//!     return Ok(());
//! }
//! set_testd_path("/path/from/env!(CARGO_BIN_EXE_svcproxy-testd)");
//! let mut cluster = Cluster::new()?;
//! cluster.add_pod("web-1", 1)?;
//! cluster.serve("web-1", "web-1", &[(Proto::Tcp, 80)])?;
//! # Ok(())
//! # }
//! ```

use std::io::Write as _;

pub mod fixtures;
pub mod netns;
pub mod testd;
pub mod topology;
pub mod uml;

pub use netns::{Netns, Process};
pub use testd::{Outcome, ProbeOpts, Proto, probe, probe_with, serve, set_testd_path};
pub use topology::{Cluster, Pod};

/// Whether this test may use root and the kernel (namespaces, nftables).
///
/// When not privileged, the test is skipped (returns false after saying
/// so), unless `SVCPROXY_REQUIRE_KERNEL=1`, as CI sets, in which case it
/// panics: a CI run must never go green by skipping everything.
pub fn require_kernel() -> bool {
    if privileged() {
        return true;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("kernel test")
        .to_owned();
    if std::env::var("SVCPROXY_REQUIRE_KERNEL").as_deref() == Ok("1") {
        panic!(
            "{test}: SVCPROXY_REQUIRE_KERNEL=1 but this process lacks root \
             (CAP_SYS_ADMIN and CAP_NET_ADMIN)"
        );
    }
    // Straight to stderr: libtest captures eprintln!, and a skip that
    // nobody sees looks like a pass.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: needs root (set SVCPROXY_REQUIRE_KERNEL=1 to fail instead)"
    );
    false
}

/// Effective capabilities include CAP_SYS_ADMIN (netns) and CAP_NET_ADMIN
/// (links, routes, nftables). Checked instead of uid 0, which is neither
/// necessary (capabilities) nor sufficient (unprivileged containers).
fn privileged() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    [CAP_NET_ADMIN, CAP_SYS_ADMIN]
        .iter()
        .all(|cap| caps & (1 << cap) != 0)
}
