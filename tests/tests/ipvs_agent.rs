//! The IPVS backend's agent half (`svcproxy_agent::ipvs::sync`, `apply/plan/cleanup
//! --backend ipvs`) against a real kernel.
//!
//! The host kernel has no IPVS (and no dummy links), so `ipvs_agent_in_uml` boots
//! user-mode-linux once and runs the `guest_*` tests inside it. The UML kernel has no
//! nftables `ip`/`ip6` families, so everything here runs with `--ipvs-without-nftables`
//! (the companion table is tested on the host by `ipvs_compile.rs`); one check makes sure
//! that without the flag the agent refuses to start, and says why.
//!
//! - every golden IPVS fixture applied by the agent gives the same `ipvsadm -S -n` as
//!   the golden file restored by `ipvsadm -R`, our decoder's dump equals the desired
//!   state, and `kube-ipvs0` holds exactly the service addresses;
//! - real TCP and UDP through ClusterIPs, NodePorts, externalIPs and LoadBalancer IPs
//!   reaches the expected pods (externalTrafficPolicy Local: only the local one),
//!   persistence keeps a client on one pod, a scheduler annotation takes effect;
//! - updates send only the difference (operations counted), a resync repairs drift,
//!   virtual servers someone else added survive sync, restarts and cleanup;
//! - graceful termination: an open TCP connection to a leaving endpoint keeps working
//!   while new ones go elsewhere, and its real server goes once the connection is gone
//!   (or when the drain timeout has passed).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;
use svcproxy_agent::cli::{Cli, NodeFlags};
use svcproxy_agent::daemon::RunConfig;
use svcproxy_agent::ipvs::sync::companion::Companion;
use svcproxy_agent::ipvs::sync::diff::{Op, OpCounts};
use svcproxy_agent::ipvs::sync::table::{self, Table};
use svcproxy_agent::ipvs::sync::{IpvsConfig, IpvsSyncer, SyncOutcome};
use svcproxy_agent::sync::{BackendConfig, SyncKind};
use svcproxy_compiler::Source;
use svcproxy_compiler::ipvs::IpvsState;
use svcproxy_compiler::ipvs::text::{NFTABLES_SECTION, section};
use svcproxy_tests::fixtures::{args_of, fixtures, golden_path, root};
use svcproxy_tests::netns::wait_until;
use svcproxy_tests::topology::{EXT_V4, EXT_V6, EXT2_V4};
use svcproxy_tests::uml::{self, Uml};
use svcproxy_tests::{Cluster, Netns, Outcome, ProbeOpts, Proto, probe_with, require_kernel};

const GUEST_TESTS: &[&str] = &[
    "guest_golden_fixtures_through_the_agent",
    "guest_traffic_through_the_agent",
    "guest_updates_drift_and_ownership",
    "guest_graceful_termination",
    "guest_run_loop_drives_ipvs",
    "guest_scale_timings",
];

#[test]
fn ipvs_agent_in_uml() {
    if !uml::require_uml() {
        return;
    }
    let _ = std::fs::remove_file(report_path());
    let run = Uml::new()
        .timeout(Duration::from_secs(400))
        .run_tests(GUEST_TESTS)
        .expect("run the guest tests under user-mode-linux");
    run.assert_tests_passed(GUEST_TESTS);
    // What the guest measured (operation counts, timings).
    if let Ok(report) = std::fs::read_to_string(report_path()) {
        println!("{report}");
    }
}

/// Where the guest tests leave their measurements for the host test to print: a line
/// printed during a guest test would split libtest's `test NAME ... ok`, which is how
/// the harness tells that it passed.
fn report_path() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/<test> -> target/<profile>
    exe.ancestors()
        .nth(2)
        .expect("test binary path")
        .join("ipvs-agent-report.txt")
}

fn report(text: &str) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(report_path())
        .expect("report file");
    writeln!(file, "{text}").expect("write the report");
}

/// The companion table through the agent's netlink layer, on the host (the UML kernel
/// has no nftables `ip` family): for every fixture, the table synced by
/// [`Companion`] lists exactly like the golden full output's table loaded by `nft -f`,
/// reads back equal (a second full sync sends nothing), and a family that disappears
/// loses its table.
#[test]
fn ipvs_companion_table_through_netlink_on_the_host() {
    if uml::in_guest() || !require_kernel() {
        return;
    }
    let mut checked = 0;
    for fixture in fixtures("") {
        let golden = golden_path("ipvs", &fixture, "full");
        let Ok(full) = std::fs::read_to_string(&golden) else {
            continue;
        };
        let name = fixture.display().to_string();
        let state = fixture_state(&fixture);
        let reference = Netns::new("nft-golden").expect("namespace");
        reference
            .nft(&section(&full, NFTABLES_SECTION).expect("nftables section"))
            .expect("nft -f the golden table");
        let ns = Netns::new("nft-agent").expect("namespace");
        let desired = state.companion.clone();
        let (first, again, differs) = ns
            .enter(move || {
                let mut companion = Companion::open().expect("companion");
                let first = companion.sync(&desired, true).expect("sync");
                let again = companion.sync(&desired, true).expect("resync");
                (first, again, companion.differs(&desired).expect("read"))
            })
            .expect("enter");
        assert!(
            first > 0 && again == 0 && !differs,
            "{name}: {first} {again}"
        );
        let list = |ns: &Netns| ns.exec("nft", &["list", "ruleset"]).expect("list");
        assert_eq!(list(&ns), list(&reference), "{name}");
        checked += 1;
    }
    assert!(checked > 20, "{checked} fixtures");

    // Families come and go; delete removes the rest.
    let state = fixture_state(Path::new("fixtures/traffic/cluster.yaml"));
    let ns = Netns::new("nft-families").expect("namespace");
    let both = state.companion.clone();
    let mut v4 = both.clone();
    v4.tables
        .retain(|t| t.family == svcproxy_compiler::nft::ir::Family::Ip);
    assert_eq!(both.tables.len(), 2);
    let deleted = ns
        .enter(move || {
            let mut companion = Companion::open().expect("companion");
            companion.sync(&both, false).expect("both families");
            companion.sync(&v4, false).expect("IPv4 only");
            assert!(!companion.differs(&v4).expect("read"));
            companion.delete().expect("delete")
        })
        .expect("enter");
    assert_eq!(deleted, 1);
    assert_eq!(ns.exec("nft", &["list", "ruleset"]).expect("list"), "");
}

/// The IPVS state of a fixture, compiled with its `# args:`.
fn fixture_state(fixture: &Path) -> IpvsState {
    let mut flag_args: Vec<String> = args_of(fixture);
    flag_args.insert(0, "flags".into());
    let flags = Flags::try_parse_from(&flag_args).expect("fixture flags");
    let sources =
        svcproxy_agent::source::read_sources(&[root().join(fixture)], usize::MAX).expect("fixture");
    let plan = svcproxy_compiler::plan(&sources, &flags.node.options()).expect("plan");
    svcproxy_compiler::ipvs::state(&plan, &flags.node.ipvs_options())
}

// ---------------------------------------------------------------------------------------
// Helpers

fn in_guest() -> bool {
    if !uml::in_guest() {
        eprintln!("not in a user-mode-linux guest: nothing to do (run ipvs_agent_in_uml)");
        return false;
    }
    assert!(require_kernel(), "root in the guest");
    true
}

/// A state file per scenario, in the guest's own tmpfs.
fn state_file(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("svcproxy-ipvs-{name}"))
}

fn config(state: &Path, drain: Duration) -> IpvsConfig {
    IpvsConfig {
        drain_timeout: drain,
        companion: false,
        state_file: Some(state.to_path_buf()),
        ..IpvsConfig::default()
    }
}

/// The node flags of a command line, as `svcproxy` parses them.
#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    node: NodeFlags,
}

/// Compiles `yaml` with `args` (node flags) into the IPVS state.
fn compile(args: &[&str], yaml: &str) -> IpvsState {
    let flags = Flags::try_parse_from(std::iter::once("flags").chain(args.iter().copied()))
        .expect("node flags");
    let source = Source {
        name: "test.yaml".into(),
        text: yaml.into(),
    };
    let plan = svcproxy_compiler::plan(&[source], &flags.node.options()).expect("compiles");
    svcproxy_compiler::ipvs::state(&plan, &flags.node.ipvs_options())
}

/// Runs `svcproxy ARGS...` in-process inside `ns`; returns (exit code, stdout, stderr).
fn svcproxy_in(ns: &Netns, args: &[String]) -> (u8, String, String) {
    let argv: Vec<String> = std::iter::once("svcproxy".to_string())
        .chain(args.iter().cloned())
        .collect();
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    ns.enter(move || {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = cli.execute(&mut out, &mut err);
        (
            code,
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        )
    })
    .expect("enter the namespace")
}

fn sorted_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

fn ipvsadm_save(ns: &Netns) -> Vec<String> {
    sorted_lines(&ns.exec("ipvsadm", &["-S", "-n"]).expect("ipvsadm -S"))
}

/// The global addresses on kube-ipvs0 (`ip addr show`), without their prefix length.
fn bound_addresses(ns: &Netns) -> BTreeSet<IpAddr> {
    let out = ns
        .ip(&["-o", "addr", "show", "dev", "kube-ipvs0", "scope", "global"])
        .expect("ip addr show kube-ipvs0");
    out.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet" || *w == "inet6")?;
            let cidr = words.next()?;
            let (ip, prefix) = cidr.split_once('/')?;
            assert!(prefix == "32" || prefix == "128", "{l}");
            ip.parse().ok()
        })
        .collect()
}

/// The destinations of a table without their counters, to compare with a desired one.
fn without_counters(t: &Table) -> Table {
    let mut t = t.clone();
    for vs in t.values_mut() {
        for d in vs.destinations.values_mut() {
            *d = d.config();
        }
    }
    t
}

/// A thread inside a network namespace that owns an [`IpvsSyncer`], so that one
/// syncer (with its in-memory state) serves a whole scenario.
struct Agent {
    tx: mpsc::Sender<Job>,
}

type Job = Box<dyn FnOnce(&mut Option<IpvsSyncer>) + Send>;

impl Agent {
    fn start(ns: &Netns, config: IpvsConfig) -> Agent {
        let (tx, rx) = mpsc::channel::<Job>();
        let path = format!("/run/netns/{}", ns.name());
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("namespace file");
            // SAFETY: setns(2) on a valid namespace fd changes only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let mut syncer = Some(IpvsSyncer::new(&config).expect("IPVS syncer starts"));
            ready_tx.send(()).expect("ready");
            for job in rx {
                job(&mut syncer);
            }
        });
        ready_rx.recv().expect("the agent thread started");
        Agent { tx }
    }

    fn call<T: Send + 'static>(&self, f: impl FnOnce(&mut IpvsSyncer) -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        self.tx
            .send(Box::new(move |syncer: &mut Option<IpvsSyncer>| {
                let syncer = syncer.as_mut().expect("syncer");
                let _ = tx.send(f(syncer));
            }))
            .expect("agent thread alive");
        rx.recv().expect("agent thread answered")
    }

    fn sync(&self, state: &IpvsState) -> SyncOutcome {
        let state = state.clone();
        self.call(move |s| s.sync(&state))
            .unwrap_or_else(|e| panic!("sync: {e}"))
    }

    fn resync(&self, state: &IpvsState) -> SyncOutcome {
        let state = state.clone();
        self.call(move |s| s.resync(&state))
            .unwrap_or_else(|e| panic!("resync: {e}"))
    }

    fn dump(&self) -> Table {
        self.call(|s| s.dump_owned()).expect("dump")
    }
}

fn counts(outcome: &SyncOutcome) -> OpCounts {
    OpCounts::of(&outcome.ops)
}

fn ops(outcome: &SyncOutcome) -> Vec<String> {
    outcome.ops.iter().map(Op::to_string).collect()
}

// ---------------------------------------------------------------------------------------
// Golden fixtures

#[test]
#[ignore = "runs inside user-mode-linux, started by ipvs_agent_in_uml"]
fn guest_golden_fixtures_through_the_agent() {
    if !in_guest() {
        return;
    }
    let golden_files = {
        let mut n = 0;
        let mut stack = vec![root().join("golden/ipvs")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("golden dir").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "ipvs") {
                    n += 1;
                }
            }
        }
        n
    };
    let mut checked = 0;
    let mut servers = 0;
    let started = Instant::now();
    for fixture in fixtures("") {
        let golden = golden_path("ipvs", &fixture, "ipvs");
        if !golden.exists() {
            continue;
        }
        let name = fixture.display().to_string();
        let rules: String = std::fs::read_to_string(&golden)
            .expect("golden")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();

        // The reference: the golden file restored by ipvsadm.
        let reference = Netns::new("golden").expect("namespace");
        let mut restore = reference.command("ipvsadm");
        restore.arg("-R").stdin(std::process::Stdio::piped());
        let mut child = restore
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ipvsadm -R");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(rules.as_bytes())
            .expect("feed ipvsadm");
        let out = child.wait_with_output().expect("ipvsadm -R");
        assert!(out.status.success() && out.stderr.is_empty(), "{name}");

        // The agent, one-shot, through the command line.
        let ns = Netns::new("agent").expect("namespace");
        let state_path = state_file(&format!("golden-{checked}"));
        let fixture_path = root().join(&fixture).display().to_string();
        let mut args = vec![
            "apply".to_string(),
            "--backend".into(),
            "ipvs".into(),
            "--ipvs-without-nftables".into(),
            "--ipvs-state-file".into(),
            state_path.display().to_string(),
        ];
        args.extend(args_of(&fixture));
        args.push(fixture_path);
        let (code, _, stderr) = svcproxy_in(&ns, &args);
        assert_eq!(code, 0, "{name}: {stderr}");
        assert_eq!(
            ipvsadm_save(&ns),
            ipvsadm_save(&reference),
            "{name}: the agent's IPVS table differs from the golden file's"
        );

        // Our decoder reads back exactly the desired state, and the addresses are
        // bound.
        let state = fixture_state(&fixture);
        let config = config(&state_path, Duration::from_secs(60));
        let dumped = ns
            .enter(move || {
                IpvsSyncer::inspect(&config)
                    .expect("inspect")
                    .dump_owned()
                    .expect("dump")
            })
            .expect("enter");
        assert_eq!(
            without_counters(&dumped),
            table::desired(&state),
            "{name}: dump"
        );
        assert_eq!(
            bound_addresses(&ns),
            state.bind_addresses.iter().copied().collect(),
            "{name}: kube-ipvs0"
        );

        // Applying again changes nothing.
        let (code, _, stderr) = svcproxy_in(&ns, &args);
        assert_eq!(code, 0, "{name}: {stderr}");
        assert!(
            stderr.contains("the kernel already matches"),
            "{name}: {stderr}"
        );
        servers += state.virtual_servers.len();
        checked += 1;
    }
    assert_eq!(
        checked, golden_files,
        "every golden IPVS file has a fixture"
    );
    assert!(
        checked > 20 && servers > 100,
        "{checked} fixtures, {servers} virtual servers"
    );
    report(&format!(
        "golden: {checked} fixtures, {servers} virtual servers applied and checked in {:.1?}",
        started.elapsed()
    ));

    // Without --ipvs-without-nftables the agent refuses to start on this kernel (no
    // nftables ip family), and says what to do.
    let ns = Netns::new("companion").expect("namespace");
    let args: Vec<String> = [
        "apply",
        "--backend",
        "ipvs",
        "--ipvs-state-file",
        "/run/tmp/unused",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([root()
        .join("fixtures/semantics/protocols.yaml")
        .display()
        .to_string()])
    .collect();
    let (code, _, stderr) = svcproxy_in(&ns, &args);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("--ipvs-without-nftables") && stderr.contains("companion table"),
        "{stderr}"
    );
    assert!(ipvsadm_save(&ns).is_empty(), "nothing was programmed");
}

// ---------------------------------------------------------------------------------------
// Traffic

const CLUSTER_ARGS: &[&str] = &[
    "--node-name",
    "node-a",
    "--node-ip",
    "192.168.100.1",
    "--node-ip",
    "fd00:100::1",
    "--cluster-cidr",
    "10.244.0.0/16",
    "--cluster-cidr",
    "fd00:244::/32",
    "--service-cidr",
    "10.96.0.0/16",
    "--service-cidr",
    "fd00:96::/108",
];

fn ip(s: &str) -> IpAddr {
    s.parse().expect("literal")
}

/// Who answered `n` probes from ext (each a new connection), by pod name.
fn ask(
    c: &Cluster,
    proto: Proto,
    dst: &str,
    n: usize,
    src: Option<IpAddr>,
) -> BTreeMap<String, usize> {
    let dst: SocketAddr = dst.parse().expect("socket address");
    let opts = ProbeOpts {
        count: n,
        src,
        ..ProbeOpts::default()
    };
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    for outcome in probe_with(&c.ext, proto, dst, &opts).expect("probe") {
        match outcome {
            Outcome::Ok { name, peer } => {
                // No masquerade without the companion table: pods see ext itself.
                let client = match dst.ip() {
                    IpAddr::V4(_) => IpAddr::V4(EXT_V4),
                    IpAddr::V6(_) => IpAddr::V6(EXT_V6),
                };
                assert_eq!(peer, src.unwrap_or(client), "{dst}");
                *names.entry(name).or_default() += 1;
            }
            other => panic!("{dst} ({proto:?}): {other:?}"),
        }
    }
    names
}

fn answered(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(n, c)| (n.to_string(), *c)).collect()
}

#[test]
#[ignore = "runs inside user-mode-linux, started by ipvs_agent_in_uml"]
fn guest_traffic_through_the_agent() {
    if !in_guest() {
        return;
    }
    svcproxy_tests::set_testd_path(env!("CARGO_BIN_EXE_svcproxy-testd"));
    let mut c = Cluster::new().expect("topology");
    for (name, index) in [("a1", 1), ("a2", 2), ("b1", 3), ("b2", 4)] {
        c.add_pod(name, index).expect("pod");
        c.serve(name, name, &[(Proto::Tcp, 8080), (Proto::Udp, 8080)])
            .expect("serve");
    }
    let yaml = std::fs::read_to_string(root().join("fixtures/traffic/cluster.yaml"))
        .expect("traffic fixture");
    let state = compile(CLUSTER_ARGS, &yaml);
    let agent = Agent::start(
        &c.node,
        config(&state_file("traffic"), Duration::from_secs(60)),
    );
    let first = agent.sync(&state);
    assert_eq!(first.kind, SyncKind::Full);
    report(&format!(
        "traffic: first sync {} in {:.1?}",
        first.summary(),
        first.duration
    ));
    assert_eq!(
        bound_addresses(&c.node),
        state.bind_addresses.iter().copied().collect()
    );

    // web: ClusterIP and NodePort over a1 and b1, round robin, TCP and UDP, both
    // families.
    let both = answered(&[("a1", 2), ("b1", 2)]);
    for (proto, dst) in [
        (Proto::Tcp, "10.96.0.10:80"),
        (Proto::Udp, "10.96.0.10:53"),
        (Proto::Tcp, "192.168.100.1:30010"),
        (Proto::Udp, "192.168.100.1:30011"),
        (Proto::Tcp, "[fd00:96::10]:80"),
        (Proto::Udp, "[fd00:100::1]:30011"),
    ] {
        // ext picks its IPv6 source among two addresses on the node's subnet: pin it.
        let src = dst.starts_with('[').then_some(IpAddr::V6(EXT_V6));
        assert_eq!(ask(&c, proto, dst, 4, src), both, "{dst}");
    }
    // local-web: externalTrafficPolicy Local. The ClusterIP spreads over a2 and b2;
    // the externalIP, LoadBalancer IP and NodePort reach only a2, the local one.
    assert_eq!(
        ask(&c, Proto::Tcp, "10.96.0.30:80", 4, None),
        answered(&[("a2", 2), ("b2", 2)])
    );
    for dst in ["203.0.113.60:80", "203.0.113.20:80", "192.168.100.1:30030"] {
        assert_eq!(
            ask(&c, Proto::Tcp, dst, 4, None),
            answered(&[("a2", 4)]),
            "{dst}"
        );
    }
    // admin: a LoadBalancer IP (no companion table here, so no source ranges).
    assert_eq!(
        ask(&c, Proto::Tcp, "203.0.113.40:80", 2, None),
        answered(&[("a1", 2)])
    );
    // sticky: persistence keeps each client on one of four pods.
    for src in [None, Some(IpAddr::V4(EXT2_V4))] {
        let answers = ask(&c, Proto::Tcp, "10.96.0.60:80", 6, src);
        assert_eq!(answers.len(), 1, "persistence from {src:?}: {answers:?}");
    }

    // A scheduler annotation takes effect: source hashing sends every connection of a
    // client to one pod, where round robin alternated. Only web's virtual servers
    // change (ClusterIP and NodePort, TCP and UDP, both families), in place.
    let hashed = yaml.replace(
        "metadata: {name: web, namespace: traffic}",
        "metadata: {name: web, namespace: traffic, annotations: {svcproxy.io/ipvs-scheduler: sh}}",
    );
    let sh = compile(CLUSTER_ARGS, &hashed);
    let outcome = agent.sync(&sh);
    assert_eq!(
        counts(&outcome),
        OpCounts {
            services_edited: 8,
            ..OpCounts::default()
        },
        "{:?}",
        ops(&outcome)
    );
    for dst in ["10.96.0.10:80", "192.168.100.1:30010"] {
        let answers = ask(&c, Proto::Tcp, dst, 6, None);
        assert_eq!(answers.len(), 1, "sh from one client: {answers:?}");
    }
    assert_eq!(without_counters(&agent.dump()), table::desired(&sh));
}

// ---------------------------------------------------------------------------------------
// Updates, drift, ownership, restarts, cleanup

/// A small snapshot, each service optional: `tcp` (ClusterIP 10.96.1.1:80), `udp`
/// (ClusterIP 10.96.1.2:53), `np` (NodePort 30080, ClusterIP 10.96.1.3:80), `extra`
/// (10.96.1.4:80). Endpoints are pods 10.244.0.N:8080, listed by N; `np` can get a
/// scheduler annotation.
#[derive(Clone, Default)]
struct Snapshot {
    tcp: Option<Vec<u8>>,
    udp: Option<Vec<u8>>,
    np: Option<Vec<u8>>,
    extra: Option<Vec<u8>>,
    np_scheduler: Option<&'static str>,
}

const SNAPSHOT_ARGS: &[&str] = &[
    "--node-name",
    "node-a",
    "--node-ip",
    "192.168.100.1",
    "--service-cidr",
    "10.96.0.0/16",
];

impl Snapshot {
    fn yaml(&self) -> String {
        let mut out = String::from("apiVersion: v1\nkind: List\nitems:\n");
        let mut service = |name: &str, spec: &str, proto: &str, pods: &[u8], annotations: &str| {
            out.push_str(&format!(
                "- apiVersion: v1\n  kind: Service\n  metadata: {{name: {name}, namespace: t{annotations}}}\n  spec: {spec}\n"
            ));
            out.push_str(&format!(
                "- apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata: {{name: {name}-1, namespace: t, labels: {{kubernetes.io/service-name: {name}}}}}\n  addressType: IPv4\n  ports: [{{name: p, port: 8080, protocol: {proto}}}]\n  endpoints:\n"
            ));
            if pods.is_empty() {
                out.push_str("    []\n");
            }
            for pod in pods {
                out.push_str(&format!(
                    "    - {{addresses: [10.244.0.{pod}], nodeName: node-a}}\n"
                ));
            }
        };
        if let Some(pods) = &self.tcp {
            service(
                "tcp",
                "{clusterIP: 10.96.1.1, ports: [{name: p, port: 80, targetPort: 8080}]}",
                "TCP",
                pods,
                "",
            );
        }
        if let Some(pods) = &self.udp {
            service(
                "udp",
                "{clusterIP: 10.96.1.2, ports: [{name: p, port: 53, targetPort: 8080, protocol: UDP}]}",
                "UDP",
                pods,
                "",
            );
        }
        if let Some(pods) = &self.np {
            let annotations = self
                .np_scheduler
                .map(|s| format!(", annotations: {{svcproxy.io/ipvs-scheduler: {s}}}"))
                .unwrap_or_default();
            service(
                "np",
                "{type: NodePort, clusterIP: 10.96.1.3, ports: [{name: p, port: 80, targetPort: 8080, nodePort: 30080}]}",
                "TCP",
                pods,
                &annotations,
            );
        }
        if let Some(pods) = &self.extra {
            service(
                "extra",
                "{clusterIP: 10.96.1.4, ports: [{name: p, port: 80, targetPort: 8080}]}",
                "TCP",
                pods,
                "",
            );
        }
        out
    }

    fn state(&self) -> IpvsState {
        compile(SNAPSHOT_ARGS, &self.yaml())
    }
}

#[test]
#[ignore = "runs inside user-mode-linux, started by ipvs_agent_in_uml"]
fn guest_updates_drift_and_ownership() {
    if !in_guest() {
        return;
    }
    let ns = Netns::new("node").expect("namespace");
    let state_path = state_file("updates");
    let start = || Agent::start(&ns, config(&state_path, Duration::from_secs(60)));
    let agent = start();
    let none = OpCounts::default();
    let mut snap = Snapshot {
        tcp: Some(vec![1, 2]),
        udp: Some(vec![1]),
        np: Some(vec![1]),
        ..Snapshot::default()
    };
    // Someone else's virtual servers, before and after svcproxy starts: one on an
    // address of their own, one on the node's address.
    let exec = |args: &[&str]| {
        ns.exec("ipvsadm", args)
            .unwrap_or_else(|e| panic!("ipvsadm {args:?}: {e}"))
    };
    exec(&["-A", "-t", "192.0.2.50:80", "-s", "rr"]);
    exec(&["-a", "-t", "192.0.2.50:80", "-r", "10.244.0.9:80", "-m"]);
    let theirs = || -> Vec<String> {
        ipvsadm_save(&ns)
            .into_iter()
            .filter(|l| l.contains("192.0.2.50") || l.contains(":9999"))
            .collect()
    };

    let mut timings = Vec::new();
    let mut step = |what: &str, outcome: SyncOutcome, want: OpCounts| {
        assert_eq!(counts(&outcome), want, "{what}: {:?}", ops(&outcome));
        timings.push(format!(
            "{what}: {} ({:?} sync, {:.2?})",
            outcome.summary(),
            outcome.kind,
            outcome.duration
        ));
        outcome
    };

    // The first sync creates everything: 4 virtual servers (np has two), 5 real servers,
    // 3 addresses.
    let o = step(
        "first sync",
        agent.sync(&snap.state()),
        OpCounts {
            services_added: 4,
            destinations_added: 5,
            ..none
        },
    );
    assert_eq!(o.kind, SyncKind::Full);
    assert_eq!(o.addresses.added.len(), 3);
    exec(&["-A", "-u", "192.168.100.1:9999", "-s", "rr"]);
    assert_eq!(theirs().len(), 3);

    // Nothing changed: nothing sent, no dump.
    let o = step("unchanged", agent.sync(&snap.state()), none);
    assert_eq!(o.kind, SyncKind::Partial);
    assert!(o.is_empty());

    // One endpoint more on a ClusterIP service: one real server added.
    snap.tcp = Some(vec![1, 2, 3]);
    step(
        "endpoint added",
        agent.sync(&snap.state()),
        OpCounts {
            destinations_added: 1,
            ..none
        },
    );
    // It leaves with no connection open: deleted at once, nothing drained.
    snap.tcp = Some(vec![1, 2]);
    step(
        "idle TCP endpoint removed",
        agent.sync(&snap.state()),
        OpCounts {
            destinations_deleted: 1,
            ..none
        },
    );
    // A UDP endpoint leaves: deleted at once.
    snap.udp = Some(vec![]);
    step(
        "UDP endpoint removed",
        agent.sync(&snap.state()),
        OpCounts {
            destinations_deleted: 1,
            ..none
        },
    );
    // A scheduler annotation: both of np's virtual servers edited in place.
    snap.np_scheduler = Some("wlc");
    step(
        "scheduler changed",
        agent.sync(&snap.state()),
        OpCounts {
            services_edited: 2,
            ..none
        },
    );

    // plan shows what apply would do, as ipvsadm and ip commands, and changes nothing.
    let snapshot_file = state_file("updates-snapshot.yaml");
    let plan = |snap: &Snapshot| {
        std::fs::write(&snapshot_file, snap.yaml()).expect("write the snapshot");
        let mut args: Vec<String> = [
            "plan",
            "--backend",
            "ipvs",
            "--ipvs-without-nftables",
            "--ipvs-state-file",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(state_path.display().to_string());
        args.extend(SNAPSHOT_ARGS.iter().map(|s| s.to_string()));
        args.push(snapshot_file.display().to_string());
        let (code, stdout, stderr) = svcproxy_in(&ns, &args);
        assert_eq!(code, 0, "{stderr}");
        stdout
    };
    assert_eq!(
        plan(&snap),
        "# no changes: the kernel matches the snapshot\n"
    );
    let before = ipvsadm_save(&ns);
    let with_extra = Snapshot {
        extra: Some(vec![4]),
        ..snap.clone()
    };
    assert_eq!(
        plan(&with_extra),
        "# svcproxy plan (IPVS): 2 ipvsadm operation(s), 1 address change(s)\n\
         -A -t 10.96.1.4:80 -s rr\n\
         -a -t 10.96.1.4:80 -r 10.244.0.4:8080 -m -w 1\n\
         ip address add 10.96.1.4/32 dev kube-ipvs0\n"
    );
    assert_eq!(ipvsadm_save(&ns), before, "plan changed nothing");

    // A new service: its virtual server, its real server, its address.
    snap = with_extra;
    let o = step(
        "service added",
        agent.sync(&snap.state()),
        OpCounts {
            services_added: 1,
            destinations_added: 1,
            ..none
        },
    );
    assert_eq!(o.addresses.added, [ip("10.96.1.4")]);
    assert_eq!(
        ops(&o),
        [
            "-A -t 10.96.1.4:80 -s rr",
            "-a -t 10.96.1.4:80 -r 10.244.0.4:8080 -m -w 1"
        ]
    );
    // And gone again.
    snap.extra = None;
    let o = step(
        "service deleted",
        agent.sync(&snap.state()),
        OpCounts {
            services_deleted: 1,
            ..none
        },
    );
    assert_eq!(o.addresses.removed, [ip("10.96.1.4")]);
    assert_eq!(
        without_counters(&agent.dump()),
        table::desired(&snap.state())
    );

    // Drift, repaired by the next resync (a steady-state sync trusts its view).
    let state = snap.state();
    exec(&["-d", "-t", "10.96.1.1:80", "-r", "10.244.0.1:8080"]);
    step("drift, steady-state sync", agent.sync(&state), none);
    step(
        "real server deleted by hand, resync",
        agent.resync(&state),
        OpCounts {
            destinations_added: 1,
            ..none
        },
    );
    exec(&["-E", "-t", "10.96.1.1:80", "-s", "wrr"]);
    exec(&["-a", "-t", "10.96.1.1:80", "-r", "10.244.0.7:8080", "-m"]);
    step(
        "scheduler edited and real server added by hand, resync",
        agent.resync(&state),
        OpCounts {
            services_edited: 1,
            destinations_deleted: 1,
            ..none
        },
    );
    exec(&["-D", "-u", "10.96.1.2:53"]);
    ns.ip(&["addr", "del", "10.96.1.1/32", "dev", "kube-ipvs0"])
        .expect("ip addr del");
    let o = step(
        "virtual server and address deleted by hand, resync",
        agent.resync(&state),
        OpCounts {
            services_added: 1,
            ..none
        },
    );
    assert_eq!(o.addresses.added, [ip("10.96.1.1")]);
    step("after the repairs", agent.resync(&state), none);
    assert_eq!(without_counters(&agent.dump()), table::desired(&state));
    assert_eq!(theirs().len(), 3, "someone else's virtual servers stay");

    // A restart: a new syncer recognises its virtual servers from the state file, the
    // NodePort one on the node's address included, and deletes them when no longer
    // wanted; someone else's stay.
    drop(agent);
    let agent = start();
    step("restart, unchanged", agent.sync(&state), none);
    snap.np = None;
    let o = step(
        "restart, NodePort service deleted",
        agent.sync(&snap.state()),
        OpCounts {
            services_deleted: 2,
            ..none
        },
    );
    assert_eq!(o.addresses.removed, [ip("10.96.1.3")]);
    assert_eq!(theirs().len(), 3);

    // With the state file lost, virtual servers on kube-ipvs0's addresses are still
    // recognised.
    drop(agent);
    std::fs::remove_file(&state_path).expect("remove the state file");
    let agent = start();
    snap.tcp = None;
    step(
        "state file lost, service deleted",
        agent.sync(&snap.state()),
        OpCounts {
            services_deleted: 1,
            ..none
        },
    );
    assert_eq!(theirs().len(), 3);
    assert_eq!(
        without_counters(&agent.dump()),
        table::desired(&snap.state())
    );
    drop(agent);

    // cleanup: svcproxy's virtual servers, interface and addresses go; someone else's
    // virtual servers stay.
    let (code, _, stderr) = svcproxy_in(
        &ns,
        &[
            "cleanup".to_string(),
            "--ipvs-state-file".into(),
            state_path.display().to_string(),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("deleted 1 IPVS virtual server(s), left 2 of others")
            && stderr.contains("deleted interface kube-ipvs0 and its 1 address(es)"),
        "{stderr}"
    );
    assert_eq!(ipvsadm_save(&ns), theirs());
    assert!(ns.ip(&["link", "show", "kube-ipvs0"]).is_err());
    assert!(!state_path.exists());
    report(&format!("updates:\n  {}", timings.join("\n  ")));
}

// ---------------------------------------------------------------------------------------
// Graceful termination

/// A line-echo server in `pod`: answers each line with the pod's name, keeps the
/// connection open until the client closes it.
fn serve_echo(c: &Cluster, pod: &str, port: u16) {
    let name = pod.to_string();
    let path = format!("/run/netns/{}", c.pod(pod).expect("pod").ns.name());
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("namespace");
        // SAFETY: setns(2) on a valid namespace fd changes only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns");
        let listener = TcpListener::bind(("::", port)).expect("bind");
        ready_tx.send(()).expect("ready");
        for conn in listener.incoming().flatten() {
            let name = name.clone();
            std::thread::spawn(move || {
                let mut writer = conn.try_clone().expect("clone");
                for line in BufReader::new(conn).lines() {
                    if line.is_err() || writeln!(writer, "{name}").is_err() {
                        break;
                    }
                }
            });
        }
    });
    ready_rx.recv().expect("echo server ready");
}

/// A connection from ext, made inside its namespace (the socket stays there).
fn connect(c: &Cluster, dst: &str) -> BufReader<TcpStream> {
    let dst: SocketAddr = dst.parse().expect("address");
    let stream = c
        .ext
        .enter(move || TcpStream::connect_timeout(&dst, Duration::from_secs(3)))
        .expect("enter ext")
        .expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    BufReader::new(stream)
}

/// Sends a line, returns who answered (`None` when the connection no longer works).
fn who(conn: &mut BufReader<TcpStream>) -> Option<String> {
    conn.get_mut().write_all(b"who\n").ok()?;
    let mut line = String::new();
    match conn.read_line(&mut line) {
        Ok(n) if n > 0 => Some(line.trim().to_string()),
        _ => None,
    }
}

/// Closes with a reset (SO_LINGER 0): IPVS then forgets the connection after its
/// CLOSE timeout (10 s) instead of TIME_WAIT (2 min).
fn reset(conn: BufReader<TcpStream>) {
    let stream = conn.into_inner();
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads a valid linger struct of the size given.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
    drop(stream);
}

fn echo_state(endpoints: &[(&str, u8)]) -> IpvsState {
    let mut yaml = String::from(
        "apiVersion: v1\nkind: List\nitems:\n\
         - apiVersion: v1\n  kind: Service\n  metadata: {name: echo, namespace: t}\n  \
         spec: {clusterIP: 10.96.0.90, ports: [{name: p, port: 9000}]}\n\
         - apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  \
         metadata: {name: echo-1, namespace: t, labels: {kubernetes.io/service-name: echo}}\n  \
         addressType: IPv4\n  ports: [{name: p, port: 9000}]\n  endpoints:\n",
    );
    if endpoints.is_empty() {
        yaml.push_str("    []\n");
    }
    for (_, index) in endpoints {
        yaml.push_str(&format!(
            "    - {{addresses: [10.244.{index}.10], nodeName: node-a}}\n"
        ));
    }
    compile(CLUSTER_ARGS, &yaml)
}

#[test]
#[ignore = "runs inside user-mode-linux, started by ipvs_agent_in_uml"]
fn guest_graceful_termination() {
    if !in_guest() {
        return;
    }
    let mut c = Cluster::new().expect("topology");
    let pods = [("a1", 1u8), ("b1", 3u8)];
    for (name, index) in pods {
        c.add_pod(name, index).expect("pod");
        serve_echo(&c, name, 9000);
    }
    let index_of = |name: &str| pods.iter().find(|p| p.0 == name).map(|p| p.1);
    let state_path = state_file("graceful");
    let agent = Agent::start(&c.node, config(&state_path, Duration::from_secs(60)));
    agent.sync(&echo_state(&pods));

    // An open connection to one pod; then its endpoint leaves the Service.
    let mut open = connect(&c, "10.96.0.90:9000");
    let leaving = who(&mut open).expect("first answer");
    let staying = pods
        .iter()
        .find(|p| p.0 != leaving)
        .expect("the other pod")
        .0;
    let rest: Vec<(&str, u8)> = pods.iter().copied().filter(|p| p.0 == staying).collect();
    let o = agent.sync(&echo_state(&rest));
    assert_eq!(
        ops(&o),
        [format!(
            "-e -t 10.96.0.90:9000 -r 10.244.{}.10:9000 -m -w 0  # drain: kept for its connections",
            index_of(&leaving).expect("index")
        )]
    );
    assert_eq!(o.draining, 1);
    // The open connection keeps working; new ones go to the other pod.
    for _ in 0..3 {
        assert_eq!(who(&mut open).as_deref(), Some(leaving.as_str()));
        let mut fresh = connect(&c, "10.96.0.90:9000");
        assert_eq!(who(&mut fresh).as_deref(), Some(staying));
        fresh.get_mut().shutdown(Shutdown::Both).ok();
    }
    // Still draining while the connection is open.
    let o = agent.sync(&echo_state(&rest));
    assert!(o.ops.is_empty(), "{:?}", ops(&o));
    assert_eq!(o.draining, 1);

    // The connection ends: once IPVS has forgotten it, the next sync deletes the real
    // server.
    reset(open);
    let closed = Instant::now();
    let deleted = loop {
        let o = agent.sync(&echo_state(&rest));
        if !o.ops.is_empty() {
            assert_eq!(
                ops(&o),
                [format!(
                    "-d -t 10.96.0.90:9000 -r 10.244.{}.10:9000",
                    index_of(&leaving).expect("index")
                )]
            );
            break closed.elapsed();
        }
        assert!(
            closed.elapsed() < Duration::from_secs(30),
            "the real server was not deleted"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    report(&format!(
        "graceful: real server deleted {deleted:.1?} after its last connection was reset"
    ));
    drop(agent);

    // The drain timeout: a restarted agent with a 2 s timeout deletes a drained real
    // server with an open connection once the timeout has passed.
    let agent = Agent::start(&c.node, config(&state_path, Duration::from_secs(2)));
    let o = agent.sync(&echo_state(&rest));
    assert!(o.is_empty(), "restart changes nothing: {:?}", ops(&o));
    agent.sync(&echo_state(&pods));
    let mut open = loop {
        let mut conn = connect(&c, "10.96.0.90:9000");
        if who(&mut conn).as_deref() == Some(leaving.as_str()) {
            break conn;
        }
    };
    let o = agent.sync(&echo_state(&rest));
    assert_eq!(counts(&o).destinations_drained, 1, "{:?}", ops(&o));
    let drained = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        agent.sync(&echo_state(&rest)).ops.is_empty(),
        "within the timeout"
    );
    assert_eq!(who(&mut open).as_deref(), Some(leaving.as_str()));
    // The syncer started the clock a little after `drained`.
    std::thread::sleep(Duration::from_millis(2300).saturating_sub(drained.elapsed()));
    let o = agent.sync(&echo_state(&rest));
    assert_eq!(counts(&o).destinations_deleted, 1, "{:?}", ops(&o));
    // expire_nodest_conn: the connection is cut at its next packet.
    assert_eq!(
        who(&mut open),
        None,
        "the connection outlived its real server"
    );
    let listing = c.node.exec("ipvsadm", &["-S", "-n"]).expect("ipvsadm");
    assert_eq!(
        sorted_lines(&listing),
        sorted_lines(&format!(
            "-A -t 10.96.0.90:9000 -s rr\n-a -t 10.96.0.90:9000 -r 10.244.{}.10:9000 -m -w 1\n",
            index_of(staying).expect("index")
        ))
    );
}

// ---------------------------------------------------------------------------------------
// The run loop

/// `svcproxy run --backend ipvs`'s loop (in-process, in a namespace): it programs the
/// snapshot, follows an edit of the file, repairs drift at the resync, and stops on
/// SIGTERM leaving the virtual servers in place.
#[test]
#[ignore = "runs inside user-mode-linux, started by ipvs_agent_in_uml"]
fn guest_run_loop_drives_ipvs() {
    if !in_guest() {
        return;
    }
    let ns = Netns::new("run").expect("namespace");
    let snapshot = state_file("run-snapshot.yaml");
    let mut snap = Snapshot {
        tcp: Some(vec![1, 2]),
        udp: Some(vec![1]),
        ..Snapshot::default()
    };
    std::fs::write(&snapshot, snap.yaml()).expect("snapshot");
    let flags =
        Flags::try_parse_from(std::iter::once("flags").chain(SNAPSHOT_ARGS.iter().copied()))
            .expect("flags");
    let run_config = RunConfig {
        snapshots: vec![snapshot.clone()],
        options: flags.node.options(),
        sync_period: Duration::from_secs(1),
        min_sync_period: Duration::from_millis(100),
        healthz: None,
        metrics: None,
        backend: BackendConfig::Ipvs {
            options: flags.node.ipvs_options(),
            syncer: config(&state_file("run"), Duration::from_secs(60)),
        },
    };
    let path = format!("/run/netns/{}", ns.name());
    let agent = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("namespace");
        // SAFETY: setns(2) on a valid namespace fd changes only this thread (and the
        // runtime's threads it starts).
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns");
        svcproxy_agent::daemon::run(run_config)
    });
    let has = |line: &'static str| {
        let ns = &ns;
        move || -> anyhow::Result<bool> { Ok(ipvsadm_save(ns).iter().any(|l| l == line)) }
    };
    let started = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "the first sync",
        has("-a -t 10.96.1.1:80 -r 10.244.0.2:8080 -m -w 1"),
    )
    .expect("programmed");
    let first = started.elapsed();

    snap.tcp = Some(vec![1, 2, 3]);
    std::fs::write(&snapshot, snap.yaml()).expect("snapshot");
    let edited = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "the edit",
        has("-a -t 10.96.1.1:80 -r 10.244.0.3:8080 -m -w 1"),
    )
    .expect("edit applied");
    let followed = edited.elapsed();

    ns.exec(
        "ipvsadm",
        &["-d", "-t", "10.96.1.1:80", "-r", "10.244.0.1:8080"],
    )
    .expect("drift");
    let drifted = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "the resync",
        has("-a -t 10.96.1.1:80 -r 10.244.0.1:8080 -m -w 1"),
    )
    .expect("drift repaired");
    let repaired = drifted.elapsed();

    // SAFETY: kill(2) has no memory-safety preconditions; the runtime handles SIGTERM.
    unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
    agent
        .join()
        .expect("the agent thread")
        .expect("the agent stops cleanly");
    assert_eq!(
        without_counters(
            &ns.enter(
                || IpvsSyncer::inspect(&config(&state_file("run"), Duration::ZERO))
                    .expect("inspect")
                    .dump_owned()
                    .expect("dump")
            )
            .expect("enter")
        ),
        table::desired(&snap.state()),
        "the virtual servers stay after the agent stops"
    );
    report(&format!(
        "run loop: first sync visible after {first:.1?}, file edit after {followed:.1?}, \
         drift repaired after {repaired:.1?} (sync period 1s)"
    ));
}

// ---------------------------------------------------------------------------------------
// Scale

/// `n` ClusterIP services (10.97.x.y:80), each with two endpoints; the first one gets a
/// third endpoint when `one_more`.
fn many_services(n: usize, one_more: bool) -> IpvsState {
    let mut yaml = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for i in 0..n {
        let (hi, lo) = (i / 250, i % 250 + 1);
        yaml.push_str(&format!(
            "- apiVersion: v1\n  kind: Service\n  metadata: {{name: s{i}, namespace: t}}\n  \
             spec: {{clusterIP: 10.97.{hi}.{lo}, ports: [{{name: p, port: 80, targetPort: 8080}}]}}\n\
             - apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  \
             metadata: {{name: s{i}-1, namespace: t, labels: {{kubernetes.io/service-name: s{i}}}}}\n  \
             addressType: IPv4\n  ports: [{{name: p, port: 8080}}]\n  endpoints:\n\
             \x20   - {{addresses: [10.244.{hi}.{lo}]}}\n\
             \x20   - {{addresses: [10.245.{hi}.{lo}]}}\n"
        ));
        if one_more && i == 0 {
            yaml.push_str("    - {addresses: [10.246.0.1]}\n");
        }
    }
    compile(&["--service-cidr", "10.96.0.0/12"], &yaml)
}

/// How long syncs take with many services (in UML, whose syscalls are slow: a lower
/// bound for what a real kernel does).
#[test]
#[ignore = "runs inside user-mode-linux, started by ipvs_agent_in_uml"]
fn guest_scale_timings() {
    if !in_guest() {
        return;
    }
    const N: usize = 2000;
    let ns = Netns::new("scale").expect("namespace");
    let agent = Agent::start(&ns, config(&state_file("scale"), Duration::from_secs(60)));
    let state = many_services(N, false);
    let first = agent.sync(&state);
    assert_eq!(first.counts.services_added, N);
    assert_eq!(first.counts.destinations_added, 2 * N);
    assert_eq!(first.addresses.added.len(), N);
    let unchanged = agent.sync(&state);
    assert!(unchanged.is_empty());
    let more = many_services(N, true);
    let one = agent.sync(&more);
    assert_eq!(ops(&one).len(), 1, "{:?}", ops(&one));
    let resync = agent.resync(&more);
    assert!(resync.is_empty());
    assert_eq!(without_counters(&agent.dump()), table::desired(&more));
    report(&format!(
        "scale ({N} services, {} real servers): first sync {:.2?} ({} kernel messages), \
         unchanged {:.2?}, one endpoint added {:.2?}, full resync {:.2?}",
        2 * N,
        first.duration,
        first.messages(),
        unchanged.duration,
        one.duration,
        resync.duration
    ));
}
