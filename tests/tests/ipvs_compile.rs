//! The IPVS backend's golden output against the real tools.
//!
//! - In user-mode-linux (the host kernel has no IPVS), `ipvs_golden_output_in_uml` runs the
//!   `guest_*` tests: every golden `.ipvs` file, its `#` lines left out as its header says,
//!   loads with `ipvsadm -R`, and `ipvsadm -S -n` then lists exactly its lines; and the
//!   traffic fixture's full output (virtual servers and addresses) carries real TCP and UDP
//!   in the standard test topology: round robin over two pods, persistence, and
//!   externalTrafficPolicy Local reaching only the local pod with the client's address.
//! - On the host (the UML kernel has no nftables `ip`/`ip6` families), the companion table
//!   of every golden `.full` output loads with `nft -c -f` and `nft -f` in a fresh network
//!   namespace, loads again over itself, and its addresses section loads with `ip -batch`;
//!   with the traffic tests' topology, it rejects, drops and lets through what it should.
//! - The command line refuses an unknown scheduler and output formats of the other backend.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use svcproxy_compiler::ipvs::text::{ADDRESSES_SECTION, NFTABLES_SECTION, section};
use svcproxy_tests::fixtures::{fixtures, golden_path};
use svcproxy_tests::topology::{EXT_V4, EXT_V6, EXT2_V4};
use svcproxy_tests::uml::{self, Uml};
use svcproxy_tests::{Cluster, Netns, Outcome, ProbeOpts, Proto, probe_with, require_kernel};

const GUEST_TESTS: &[&str] = &[
    "guest_golden_sets_restore_with_ipvsadm",
    "guest_traffic_through_the_compiled_set",
];

#[test]
fn ipvs_golden_output_in_uml() {
    if !uml::require_uml() {
        return;
    }
    let run = Uml::new()
        .run_tests(GUEST_TESTS)
        .expect("run the guest tests under user-mode-linux");
    run.assert_tests_passed(GUEST_TESTS);
}

/// Fixtures that compile (everything but `fixtures/errors`).
fn good_fixtures() -> Vec<PathBuf> {
    let all: Vec<PathBuf> = fixtures("")
        .into_iter()
        .filter(|f| !f.starts_with("fixtures/errors"))
        .collect();
    assert!(all.len() > 20, "fixtures not found");
    all
}

fn golden(fixture: &std::path::Path, ext: &str) -> String {
    let path = golden_path("ipvs", fixture, ext);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What `ipvsadm -R` reads: the text without its comment lines.
fn without_comments(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Runs `cmd` with `input` on stdin; returns (success, stdout, stderr).
fn feed(cmd: &mut Command, input: &str) -> (bool, String, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run(program: &str, args: &[&str]) -> String {
    let (ok, stdout, stderr) = feed(Command::new(program).args(args), "");
    assert!(ok, "{program} {args:?}: {stderr}");
    stdout
}

fn sorted_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

// ---------------------------------------------------------------------------------------
// Guest tests

#[test]
#[ignore = "runs inside user-mode-linux, started by ipvs_golden_output_in_uml"]
fn guest_golden_sets_restore_with_ipvsadm() {
    if !uml::in_guest() {
        eprintln!("not in a user-mode-linux guest: nothing to do (run ipvs_golden_output_in_uml)");
        return;
    }
    let mut checked = 0;
    let mut servers = 0;
    for fixture in good_fixtures() {
        let name = fixture.display().to_string();
        let text = golden(&fixture, "ipvs");
        let rules = without_comments(&text);
        run("ipvsadm", &["-C"]);
        // `ipvsadm -R` exits 0 even when a line fails (it reports the last line's
        // status), so stderr and the read-back are the evidence.
        let (ok, _, stderr) = feed(Command::new("ipvsadm").arg("-R"), &rules);
        assert!(ok && stderr.is_empty(), "{name}: ipvsadm -R: {stderr}");
        let saved = run("ipvsadm", &["-S", "-n"]);
        assert_eq!(
            sorted_lines(&saved),
            sorted_lines(&rules),
            "{name}: ipvsadm -S -n differs from the golden set"
        );
        servers += rules.lines().filter(|l| l.starts_with("-A")).count();
        checked += 1;
    }
    assert!(
        checked > 20 && servers > 100,
        "{checked} files, {servers} virtual servers"
    );

    // Why the header says to leave the comments out: ipvsadm -R stops at the first `#`
    // line. The `ipvsadm-restore` wrapper drops them (and clears IPVS first).
    let fixture = PathBuf::from("fixtures/semantics/protocols.yaml");
    let text = golden(&fixture, "ipvs");
    run("ipvsadm", &["-C"]);
    let (ok, _, _) = feed(Command::new("ipvsadm").arg("-R"), &text);
    assert!(
        !ok,
        "ipvsadm -R now accepts comment lines: simplify the header"
    );
    assert_eq!(run("ipvsadm", &["-S", "-n"]), "");
    let (ok, _, stderr) = feed(&mut Command::new("ipvsadm-restore"), &text);
    assert!(ok && stderr.is_empty(), "ipvsadm-restore: {stderr}");
    assert_eq!(
        sorted_lines(&run("ipvsadm", &["-S", "-n"])),
        sorted_lines(&without_comments(&text))
    );
    run("ipvsadm", &["-C"]);
}

#[test]
#[ignore = "runs inside user-mode-linux, started by ipvs_golden_output_in_uml"]
fn guest_traffic_through_the_compiled_set() {
    if !uml::in_guest() {
        eprintln!("not in a user-mode-linux guest: nothing to do (run ipvs_golden_output_in_uml)");
        return;
    }
    assert!(require_kernel(), "root in the guest");
    svcproxy_tests::set_testd_path(env!("CARGO_BIN_EXE_svcproxy-testd"));

    // The traffic tests' topology and snapshot (fixtures/traffic/cluster.yaml), with the
    // node programmed from the golden full output instead of the nftables ruleset. (No
    // nftables here, so no masquerade: ext's replies come back through the node anyway,
    // which is its default route.)
    let mut c = Cluster::new().expect("topology");
    for (name, index) in [("a1", 1), ("a2", 2), ("b1", 3), ("b2", 4)] {
        c.add_pod(name, index).expect("pod");
        c.serve(name, name, &[(Proto::Tcp, 8080), (Proto::Udp, 8080)])
            .expect("serve");
    }
    let full = golden(&PathBuf::from("fixtures/traffic/cluster.yaml"), "full");
    let addresses = section(&full, ADDRESSES_SECTION).expect("addresses section");
    let virtual_servers = without_comments(&full[..full.find(ADDRESSES_SECTION).unwrap_or(0)]);
    c.node
        .ip(&["link", "add", "kube-ipvs0", "type", "dummy"])
        .expect("dummy interface");
    c.node
        .ip(&["link", "set", "kube-ipvs0", "up"])
        .expect("dummy up");
    let (ok, _, stderr) = feed(c.node.command("ip").args(["-batch", "-"]), &addresses);
    assert!(ok, "ip -batch: {stderr}");
    let (ok, _, stderr) = feed(c.node.command("ipvsadm").arg("-R"), &virtual_servers);
    assert!(ok && stderr.is_empty(), "ipvsadm -R: {stderr}");

    let v4 = |s: &str| -> IpAddr { s.parse().expect("literal") };
    let ask = |proto: Proto, ip: IpAddr, port: u16, n: usize, src: Option<IpAddr>| {
        let opts = ProbeOpts {
            count: n,
            src,
            ..ProbeOpts::default()
        };
        let outcomes = probe_with(&c.ext, proto, SocketAddr::new(ip, port), &opts).expect("probe");
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        for outcome in outcomes {
            match outcome {
                Outcome::Ok { name, peer } => {
                    // No masquerade anywhere here: every pod sees the client itself.
                    let client = match ip {
                        IpAddr::V4(_) => IpAddr::V4(EXT_V4),
                        IpAddr::V6(_) => IpAddr::V6(EXT_V6),
                    };
                    assert_eq!(peer, src.unwrap_or(client), "{ip}:{port}");
                    *names.entry(name).or_default() += 1;
                }
                other => panic!("{ip}:{port}: {other:?}"),
            }
        }
        names
    };
    let counts = |pairs: &[(&str, usize)]| -> BTreeMap<String, usize> {
        pairs.iter().map(|(n, c)| (n.to_string(), *c)).collect()
    };

    // web: ClusterIP and NodePort over a1 and b1, round robin: every other connection.
    let web = v4("10.96.0.10");
    assert_eq!(
        ask(Proto::Tcp, web, 80, 4, None),
        counts(&[("a1", 2), ("b1", 2)])
    );
    assert_eq!(
        ask(Proto::Udp, web, 53, 4, None),
        counts(&[("a1", 2), ("b1", 2)])
    );
    assert_eq!(
        ask(Proto::Tcp, v4("192.168.100.1"), 30010, 4, None),
        counts(&[("a1", 2), ("b1", 2)])
    );
    assert_eq!(
        ask(Proto::Tcp, v4("fd00:96::10"), 80, 4, None),
        counts(&[("a1", 2), ("b1", 2)])
    );

    // sticky: ClientIP affinity over four pods; each client stays on one of them.
    let sticky = v4("10.96.0.60");
    for src in [None, Some(IpAddr::V4(EXT2_V4))] {
        let answers = ask(Proto::Tcp, sticky, 80, 6, src);
        assert_eq!(answers.len(), 1, "persistence from {src:?}: {answers:?}");
    }

    // local-web: externalTrafficPolicy Local. The ClusterIP spreads over a2 (local) and
    // b2; the externalIP, LoadBalancer IP and NodePort reach only a2.
    assert_eq!(
        ask(Proto::Tcp, v4("10.96.0.30"), 80, 4, None),
        counts(&[("a2", 2), ("b2", 2)])
    );
    for (ip, port) in [
        ("203.0.113.60", 80),
        ("203.0.113.20", 80),
        ("192.168.100.1", 30030),
    ] {
        assert_eq!(
            ask(Proto::Tcp, v4(ip), port, 4, None),
            counts(&[("a2", 4)]),
            "{ip}:{port}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Host test

#[test]
fn ipvs_companion_tables_load_on_the_host() {
    if uml::in_guest() || !require_kernel() {
        return;
    }
    let mut checked = 0;
    for fixture in good_fixtures() {
        let name = fixture.display().to_string();
        let full = golden(&fixture, "full");
        let table = section(&full, NFTABLES_SECTION)
            .unwrap_or_else(|| panic!("{name}: no nftables section"));
        let addresses = section(&full, ADDRESSES_SECTION)
            .unwrap_or_else(|| panic!("{name}: no addresses section"));
        let path = std::env::temp_dir().join(format!(
            "svcproxy-ipvs-{}-{checked}.nft",
            std::process::id()
        ));
        std::fs::write(&path, &table).expect("write the table");
        let file = path.display().to_string();

        let ns = Netns::new("ipvs-table").expect("namespace");
        ns.exec("nft", &["-c", "-f", &file])
            .unwrap_or_else(|e| panic!("{name}: nft -c rejects the table: {e}"));
        ns.exec("nft", &["-f", &file])
            .unwrap_or_else(|e| panic!("{name}: nft -f rejects the table: {e}"));
        let listing = ns.exec("nft", &["list", "ruleset"]).expect("list");
        // Loading again replaces the tables (the file deletes them first).
        ns.exec("nft", &["-f", &file])
            .unwrap_or_else(|e| panic!("{name}: re-applying fails: {e}"));
        assert_eq!(
            ns.exec("nft", &["list", "ruleset"]).expect("list"),
            listing,
            "{name}: re-applying changed the state"
        );
        let tables = ns.exec("nft", &["list", "tables"]).expect("tables");
        let families = tables.lines().count();
        assert!(
            (1..=2).contains(&families)
                && tables
                    .lines()
                    .all(|l| l == "table ip svcproxy-ipvs" || l == "table ip6 svcproxy-ipvs"),
            "{name}: {tables}"
        );

        // This host kernel has no dummy interfaces: any link holds addresses the same way.
        ns.ip(&[
            "link",
            "add",
            "kube-ipvs0",
            "type",
            "veth",
            "peer",
            "ipvs-peer",
        ])
        .expect("stand-in for the dummy interface");
        let (ok, _, stderr) = feed(ns.command("ip").args(["-batch", "-"]), &addresses);
        assert!(ok, "{name}: ip -batch rejects the addresses: {stderr}");
        let bound = ns
            .ip(&["-o", "addr", "show", "dev", "kube-ipvs0"])
            .expect("addr");
        assert_eq!(
            bound.lines().count(),
            addresses.lines().filter(|l| !l.starts_with('#')).count(),
            "{name}: {bound}"
        );
        let _ = std::fs::remove_file(&path);
        checked += 1;
    }
    assert!(checked > 20, "only {checked} golden IPVS outputs");
}

/// What the companion table does before IPVS, in the kernel: the traffic tests' topology
/// with the node programmed from the traffic fixture's full output (no IPVS on this host).
/// The node itself listens on the service ports, standing in for IPVS: a connection it
/// answers is one the table let through to where IPVS would take it.
#[test]
fn ipvs_companion_table_stops_traffic_before_ipvs() {
    if uml::in_guest() || !require_kernel() {
        return;
    }
    svcproxy_tests::set_testd_path(env!("CARGO_BIN_EXE_svcproxy-testd"));
    let mut c = Cluster::new().expect("topology");
    c.add_pod("client", 9).expect("client pod");
    // As a real node has: otherwise an unallocated ClusterIP is unroutable before any
    // rule sees it.
    c.node
        .ip(&["route", "add", "default", "via", "192.168.100.2"])
        .expect("default route");
    let full = golden(&PathBuf::from("fixtures/traffic/cluster.yaml"), "full");
    c.node
        .ip(&[
            "link",
            "add",
            "kube-ipvs0",
            "type",
            "veth",
            "peer",
            "ipvs-peer",
        ])
        .expect("stand-in for the dummy interface");
    let addresses = section(&full, ADDRESSES_SECTION).expect("addresses section");
    let (ok, _, stderr) = feed(c.node.command("ip").args(["-batch", "-"]), &addresses);
    assert!(ok, "ip -batch: {stderr}");
    c.node
        .nft(&section(&full, NFTABLES_SECTION).expect("nftables section"))
        .expect("load the companion table");
    let any = |port: u16| {
        (
            Proto::Tcp,
            SocketAddr::new("::".parse().expect("literal"), port),
        )
    };
    let _node = svcproxy_tests::serve(&c.node, "node", &[any(80), any(22), any(30040)])
        .expect("node listener");

    let ip = |s: &str| -> IpAddr { s.parse().expect("literal") };
    let probe = |from: &Netns, dst: &str, port: u16, src: Option<IpAddr>| -> Outcome {
        let opts = ProbeOpts {
            src,
            ..ProbeOpts::default()
        };
        let mut outcomes =
            probe_with(from, Proto::Tcp, SocketAddr::new(ip(dst), port), &opts).expect("probe");
        outcomes.pop().expect("one outcome")
    };
    let ext2 = Some(IpAddr::V4(EXT2_V4));
    let client = &c.pod("client").expect("client").ns;
    let cases: Vec<(&str, Outcome, Outcome)> = vec![
        (
            "a virtual server with endpoints is left to IPVS",
            probe(&c.ext, "10.96.0.10", 80, None),
            Outcome::ok("node", EXT_V4),
        ),
        (
            "another port of a service address is rejected",
            probe(&c.ext, "10.96.0.10", 22, None),
            Outcome::Refused,
        ),
        (
            "no endpoint at all: rejected",
            probe(&c.ext, "10.96.0.20", 80, None),
            Outcome::Refused,
        ),
        (
            "no endpoint at all, IPv6: rejected",
            probe(&c.ext, "fd00:96::20", 80, None),
            Outcome::Refused,
        ),
        (
            "externalTrafficPolicy Local without a local endpoint: LoadBalancer IP dropped",
            probe(&c.ext, "203.0.113.21", 80, None),
            Outcome::Timeout,
        ),
        (
            "externalTrafficPolicy Local without a local endpoint: NodePort dropped",
            probe(&c.ext, "192.168.100.1", 30040, None),
            Outcome::Timeout,
        ),
        (
            "loadBalancerSourceRanges: another source is dropped",
            probe(&c.ext, "203.0.113.40", 80, None),
            Outcome::Timeout,
        ),
        (
            "loadBalancerSourceRanges: the allowed source passes",
            probe(&c.ext, "203.0.113.40", 80, ext2),
            Outcome::ok("node", EXT2_V4),
        ),
        (
            "an unallocated ClusterIP is dropped",
            probe(client, "10.96.0.99", 80, None),
            Outcome::Timeout,
        ),
    ];
    let wrong: Vec<String> = cases
        .iter()
        .filter(|(_, got, want)| got != want)
        .map(|(what, got, want)| format!("{what}: got {got:?}, want {want:?}"))
        .collect();
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------------------
// The command line

#[test]
fn ipvs_flags_and_outputs_are_checked_before_compiling() {
    let fixture = "fixtures/semantics/protocols.yaml";
    let cases: [(&[&str], &str); 3] = [
        (
            &["--backend", "ipvs", "--ipvs-scheduler", "nq"],
            "unknown IPVS scheduler \"nq\" (expected one of rr, wrr, lc, wlc, sh, dh, mh)",
        ),
        (
            &["--backend", "nftables", "--output", "full"],
            "error: --output full is for --backend ipvs",
        ),
        (
            &["--backend", "ipvs", "--output", "json"],
            "error: --output json is for --backend nftables",
        ),
    ];
    for (flags, message) in cases {
        let mut args = vec!["compile".to_string()];
        args.extend(flags.iter().map(|s| s.to_string()));
        args.push(fixture.to_string());
        let run = svcproxy_tests::fixtures::svcproxy(&args);
        assert_eq!(run.code, 2, "{flags:?}");
        assert!(run.stdout.is_empty(), "{flags:?}");
        assert!(run.stderr.contains(message), "{flags:?}: {}", run.stderr);
    }
}
