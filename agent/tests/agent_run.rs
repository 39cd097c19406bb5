//! `svcproxy run` and `svcproxy apply` end to end, as a node runs them: the real
//! binary in the node namespace of the test topology, real traffic, edits to the
//! snapshot on disk, drift made by hand, bad snapshots, signals and kills.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use svcproxy_tests::netns::wait_until;
use svcproxy_tests::{
    Cluster, Netns, Outcome, ProbeOpts, Process, Proto, probe_with, require_kernel, set_testd_path,
};

const FIXTURE: &str = "fixtures/traffic/cluster.yaml";
/// Long enough not to interfere, short enough for a test to wait for it.
const SYNC_PERIOD: &str = "2s";
const MIN_SYNC_PERIOD: &str = "200ms";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn fixture_args() -> Vec<String> {
    svcproxy_tests::fixtures::args_of(Path::new(FIXTURE))
}

fn kernel() -> bool {
    set_testd_path(svcproxy_tests_testd());
    require_kernel()
}

/// The testd binary lives in the tests package; build it on demand.
fn svcproxy_tests_testd() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let testd = dir.join("svcproxy-testd");
    if !testd.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "svcproxy-tests", "--bin", "svcproxy-testd"])
            .current_dir(root())
            .status()
            .unwrap();
        assert!(status.success(), "building svcproxy-testd");
    }
    testd
}

/// The traffic topology: pods a1 a2 (node-a), b1 b2 (node-b) serving on 8080, a client
/// pod, the node with ext as its default gateway (see tests/tests/traffic.rs).
fn topology() -> Cluster {
    let mut c = Cluster::new().unwrap();
    for (name, index) in [("a1", 1), ("a2", 2), ("b1", 3), ("b2", 4)] {
        c.add_pod(name, index).unwrap();
        c.serve(name, name, &[(Proto::Tcp, 8080), (Proto::Udp, 8080)])
            .unwrap();
    }
    c.add_pod("client", 9).unwrap();
    c.node
        .ip(&["route", "add", "default", "via", "192.168.100.2"])
        .unwrap();
    c
}

/// A snapshot directory holding the traffic fixture, which tests then edit.
struct SnapshotDir {
    dir: PathBuf,
}

impl SnapshotDir {
    fn new(label: &str) -> SnapshotDir {
        let dir = std::env::temp_dir().join(format!("svcproxy-run-{}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(root().join(FIXTURE), dir.join("cluster.yaml")).unwrap();
        SnapshotDir { dir }
    }

    fn file(&self) -> PathBuf {
        self.dir.join("cluster.yaml")
    }

    /// Rewrites the snapshot the way an editor does: a new file renamed over the old.
    fn edit(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(self.file()).unwrap();
        assert!(text.contains(from), "{from:?} not in the snapshot");
        let tmp = self.dir.join(".cluster.yaml.tmp");
        std::fs::write(&tmp, text.replacen(from, to, 1)).unwrap();
        std::fs::rename(&tmp, self.file()).unwrap();
    }
}

impl Drop for SnapshotDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `svcproxy run` in the node namespace and waits until its first sync is done
/// (healthy from the start, like kube-proxy; `lastUpdated` tells the first sync).
fn start_agent(node: &Netns, snapshots: &Path) -> Process {
    start(node, &mut agent_command(node, snapshots, MIN_SYNC_PERIOD))
}

/// `svcproxy run` on `snapshots` in `node`, with the test's periods and addresses.
fn agent_command(node: &Netns, snapshots: &Path, min_sync_period: &str) -> Command {
    let mut cmd = node.command(env!("CARGO_BIN_EXE_svcproxy"));
    cmd.args(["--log-level", "info", "run"])
        .args(fixture_args())
        .args(["--snapshot", snapshots.to_str().unwrap()])
        .args([
            "--sync-period",
            SYNC_PERIOD,
            "--min-sync-period",
            min_sync_period,
        ])
        .args(["--healthz-bind-address", "127.0.0.1:10256"])
        .args(["--metrics-bind-address", "127.0.0.1:10249"]);
    cmd
}

fn start(node: &Netns, cmd: &mut Command) -> Process {
    let agent = node.spawn(cmd).unwrap();
    // /healthz answers 200 from the start; `lastUpdated` turns non-null with the first
    // sync, which is what the tests need before sending traffic.
    wait_until(Duration::from_secs(10), "the agent's first sync", || {
        Ok(http_get(node, 10256, "/healthz")
            .is_some_and(|(code, body)| code == 200 && !body.contains("\"lastUpdated\": null")))
    })
    .unwrap();
    agent
}

/// `GET path` on 127.0.0.1:port inside `ns`: (status code, body).
fn http_get(ns: &Netns, port: u16, path: &str) -> Option<(u16, String)> {
    ns.enter(|| {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let code = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        Some((code, body))
    })
    .ok()
    .flatten()
}

/// Names answering `count` TCP probes from the client pod to `dst` (or the failure,
/// as `Timeout`, `Refused`...). The timeout is generous: the machine may be busy with
/// other tests, and a drop is told by a short probe of its own.
fn answering(c: &Cluster, dst: &str, count: usize) -> BTreeSet<String> {
    answering_within(c, dst, count, Duration::from_secs(2))
}

fn answering_within(c: &Cluster, dst: &str, count: usize, timeout: Duration) -> BTreeSet<String> {
    let opts = ProbeOpts {
        count,
        timeout,
        ..ProbeOpts::default()
    };
    let dst: SocketAddr = dst.parse().unwrap();
    probe_with(&c.pod("client").unwrap().ns, Proto::Tcp, dst, &opts)
        .unwrap()
        .into_iter()
        .map(|o| match o {
            Outcome::Ok { name, .. } => name,
            other => format!("{other:?}"),
        })
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn svcproxy(ns: &Netns, args: &[&str]) -> std::process::Output {
    ns.command(env!("CARGO_BIN_EXE_svcproxy"))
        .args(args)
        .output()
        .unwrap()
}

fn plan_is_empty(ns: &Netns, snapshot: &Path) -> bool {
    plan_output(ns, snapshot).starts_with("# no changes")
}

/// What `svcproxy plan` would change in the kernel for `snapshot`.
fn plan_output(ns: &Netns, snapshot: &Path) -> String {
    let mut args = vec!["plan".to_string()];
    args.extend(fixture_args());
    args.push(snapshot.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = svcproxy(ns, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn run_follows_snapshot_edits_repairs_drift_and_survives_bad_snapshots() {
    if !kernel() {
        return;
    }
    let c = topology();
    let snap = SnapshotDir::new("follow");
    let mut agent = start_agent(&c.node, &snap.dir);
    assert_eq!(answering(&c, "10.96.0.10:80", 30), set(&["a1", "b1"]));

    // An edit on disk: the traffic follows within the min sync period (plus the
    // time to notice; bounded generously, this is not a benchmark).
    snap.edit(
        "addresses: [10.244.3.10], nodeName: node-b}\n- apiVersion",
        "addresses: [10.244.2.10], nodeName: node-a}\n- apiVersion",
    );
    wait_until(Duration::from_secs(5), "traffic to follow the edit", || {
        Ok(answering(&c, "10.96.0.10:80", 30) == set(&["a1", "a2"]))
    })
    .unwrap();
    // The edit was synced by diffing the changed Service alone, and the kernel holds
    // what a whole sync would have made.
    // (At least one: inotify may report the write in more than one event, and a
    // second sync finding nothing to change is a Service sync of no Services.)
    assert!(counter(&c.node, "svcproxy_service_syncs_total") >= 1);
    let plan = plan_output(&c.node, &snap.file());
    assert!(
        plan.starts_with("# no changes"),
        "the Service's sync left the kernel as a whole sync would:\n{plan}"
    );

    // Drift: someone flushes the dispatch chain. Connections are no longer DNAT'd (the
    // ClusterIP check rejects them) until the next resync puts the rules back.
    c.node
        .exec("nft", &["flush", "chain", "ip", "svcproxy", "services"])
        .unwrap();
    assert_eq!(
        answering_within(&c, "10.96.0.10:80", 2, Duration::from_millis(300)),
        set(&["Refused"])
    );
    wait_until(
        Duration::from_secs(6),
        "the resync to repair the drift",
        || Ok(answering(&c, "10.96.0.10:80", 30) == set(&["a1", "a2"])),
    )
    .unwrap();
    let (_, metrics) = http_get(&c.node, 10249, "/metrics").unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("svcproxy_drift_repairs_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(
        plan_is_empty(&c.node, &snap.file()),
        "after the repair the kernel matches"
    );

    // A bad snapshot: the last good rules stay, /healthz says why.
    std::fs::write(
        snap.dir.join("broken.yaml"),
        "kind: Service\nmetadata: {name: [\n",
    )
    .unwrap();
    wait_until(
        Duration::from_secs(5),
        "/healthz to report the bad snapshot",
        || {
            Ok(http_get(&c.node, 10256, "/healthz")
                .is_some_and(|(_, body)| body.contains("broken.yaml")))
        },
    )
    .unwrap();
    assert_eq!(answering(&c, "10.96.0.10:80", 10), set(&["a1", "a2"]));
    std::fs::remove_file(snap.dir.join("broken.yaml")).unwrap();
    wait_until(
        Duration::from_secs(5),
        "/healthz to clear the error",
        || {
            Ok(http_get(&c.node, 10256, "/healthz")
                .is_some_and(|(code, body)| code == 200 && body.contains("\"lastError\": null")))
        },
    )
    .unwrap();

    // SIGTERM: the agent exits 0 and the rules stay: traffic keeps flowing.
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGTERM) };
    wait_until(Duration::from_secs(5), "the agent to exit", || {
        Ok(agent.try_wait()?.is_some_and(|status| status.success()))
    })
    .unwrap();
    assert_eq!(answering(&c, "10.96.0.10:80", 10), set(&["a1", "a2"]));

    // cleanup removes svcproxy's tables and nothing else.
    c.node
        .nft("table inet mine { chain c { type filter hook input priority 0; }; }")
        .unwrap();
    let out = svcproxy(&c.node, &["cleanup"]);
    assert!(out.status.success());
    assert_eq!(
        c.node.exec("nft", &["list", "tables"]).unwrap().trim(),
        "table inet mine"
    );
}

/// The value of a counter on `/metrics` (0 when it is not there yet).
fn counter(node: &Netns, name: &str) -> u64 {
    let (_, metrics) = http_get(node, 10249, "/metrics").unwrap_or_default();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn run_reports_a_rejected_batch_keeps_the_rules_and_retries() {
    if !kernel() {
        return;
    }
    let c = topology();
    let snap = SnapshotDir::new("reject");
    let log = std::env::temp_dir().join(format!("svcproxy-run-{}-reject.log", std::process::id()));
    // The failpoint spoils the three commits after the first with a rule for a chain
    // that does not exist: the kernel itself refuses those batches. One second between
    // attempts leaves time to look at the kernel while they fail.
    let mut cmd = agent_command(&c.node, &snap.dir, "1s");
    cmd.env("SVCPROXY_FAILPOINT_REJECT_COMMITS", "3")
        .stderr(std::fs::File::create(&log).unwrap());
    let _agent = start(&c.node, &mut cmd);
    assert_eq!(answering(&c, "10.96.0.10:80", 30), set(&["a1", "b1"]));
    let before = c
        .node
        .exec("nft", &["list", "table", "ip", "svcproxy"])
        .unwrap();

    snap.edit(
        "addresses: [10.244.3.10], nodeName: node-b}\n- apiVersion",
        "addresses: [10.244.2.10], nodeName: node-a}\n- apiVersion",
    );
    const FAILURES: &str = "kubeproxy_sync_proxy_rules_nftables_sync_failures_total";
    wait_until(Duration::from_secs(5), "a rejected sync", || {
        Ok(counter(&c.node, FAILURES) >= 1)
    })
    .unwrap();
    // While the kernel refuses the batches, the previous ruleset is intact, traffic
    // still goes where it did, and /healthz names the refused message.
    assert_eq!(
        c.node
            .exec("nft", &["list", "table", "ip", "svcproxy"])
            .unwrap(),
        before
    );
    assert_eq!(answering(&c, "10.96.0.10:80", 30), set(&["a1", "b1"]));
    let (_, health) = http_get(&c.node, 10256, "/healthz").unwrap();
    assert!(
        health.contains("failpoint-no-such-chain") && health.contains("No such file"),
        "{health}"
    );

    // The agent retries, and once the kernel accepts, the edit is programmed.
    wait_until(Duration::from_secs(10), "the retries to succeed", || {
        Ok(answering(&c, "10.96.0.10:80", 30) == set(&["a1", "a2"]))
    })
    .unwrap();
    assert_eq!(counter(&c.node, FAILURES), 3);
    let (code, health) = http_get(&c.node, 10256, "/healthz").unwrap();
    assert!(
        code == 200 && health.contains("\"lastError\": null"),
        "{health}"
    );
    assert!(plan_is_empty(&c.node, &snap.file()));
    let log_path = log;
    let log = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_file(&log_path);
    assert_eq!(log.matches("sync failed, will retry").count(), 3, "{log}");
    assert!(log.contains("kernel rejected nf_tables batch"), "{log}");
}

/// One UDP datagram to `dst` from the client pod's fixed source port 40000 (so the
/// conntrack entry is reused across calls); the name of who answered, or `None`.
fn udp_from_fixed_port(c: &Cluster, dst: &str) -> Option<String> {
    let (ip, port) = dst.rsplit_once(':').unwrap();
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('0.0.0.0', 40000))\n\
         s.settimeout(1)\ns.sendto(b'x', ('{ip}', {port}))\nprint(s.recv(200).decode().split()[0])\n"
    );
    let out = c
        .pod("client")
        .unwrap()
        .ns
        .command("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// UDP has no close: a client whose flow was DNAT'd to an endpoint keeps going there
/// until conntrack forgets it. When an endpoint leaves, the agent deletes those
/// entries, so the same client flow moves to a remaining endpoint at once.
#[test]
fn run_deletes_stale_udp_conntrack_entries_when_an_endpoint_leaves() {
    if !kernel() {
        return;
    }
    let c = topology();
    let snap = SnapshotDir::new("udp");
    let _agent = start_agent(&c.node, &snap.dir);
    let first = udp_from_fixed_port(&c, "10.96.0.10:53").expect("an answer");
    assert!(["a1", "b1"].contains(&first.as_str()), "{first}");
    // The flow sticks: same source port, same conntrack entry, same endpoint.
    for _ in 0..3 {
        assert_eq!(
            udp_from_fixed_port(&c, "10.96.0.10:53").as_deref(),
            Some(first.as_str())
        );
    }
    // Take that endpoint out of the service (its pod keeps running and answering).
    let (gone, stays) = if first == "a1" {
        ("10.244.1.10", "b1")
    } else {
        ("10.244.3.10", "a1")
    };
    let text = std::fs::read_to_string(snap.file()).unwrap();
    let line = format!("    - {{addresses: [{gone}], nodeName: node-");
    let start = text.find(&line).expect("endpoint line");
    let end = start + text[start..].find('\n').unwrap() + 1;
    let tmp = snap.dir.join(".edit");
    std::fs::write(&tmp, format!("{}{}", &text[..start], &text[end..])).unwrap();
    std::fs::rename(&tmp, snap.file()).unwrap();
    wait_until(
        Duration::from_secs(5),
        "the client's UDP flow to move",
        || Ok(udp_from_fixed_port(&c, "10.96.0.10:53").as_deref() == Some(stays)),
    )
    .unwrap();
}

/// A generated snapshot with `services` ClusterIP services of 5 endpoints each.
fn generated_snapshot(services: usize, port: u16) -> String {
    let mut text = String::new();
    for i in 0..services {
        let (hi, lo) = (i / 250, i % 250 + 1);
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: gen}}\n\
             spec: {{clusterIP: 10.96.{hi}.{lo}, ports: [{{name: http, port: {port}}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: s{i}-1, namespace: gen, labels: {{kubernetes.io/service-name: s{i}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n"
        ));
        for e in 0..5 {
            text.push_str(&format!(
                "- {{addresses: [10.{}.{}.{}]}}\n",
                100 + e,
                hi,
                lo
            ));
        }
    }
    text
}

/// Killing `svcproxy apply` at any moment leaves either the old ruleset or the new
/// one, never a mix: the change is one netlink transaction.
#[test]
fn killing_apply_never_leaves_a_half_ruleset() {
    if !kernel() {
        return;
    }
    let ns = Netns::new("kill").unwrap();
    let dir = std::env::temp_dir().join(format!("svcproxy-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let old = dir.join("old.yaml");
    let new = dir.join("new.yaml");
    std::fs::write(&old, generated_snapshot(500, 80)).unwrap();
    std::fs::write(&new, generated_snapshot(500, 81)).unwrap();
    let flags = [
        "--service-cidr",
        "10.96.0.0/16",
        "--cluster-cidr",
        "10.244.0.0/16",
    ];
    let apply = |file: &Path| {
        let mut args = vec!["apply"];
        args.extend(flags);
        args.push(file.to_str().unwrap());
        svcproxy(&ns, &args)
    };
    let matches = |file: &Path| {
        let mut args = vec!["plan"];
        args.extend(flags);
        args.push(file.to_str().unwrap());
        let out = svcproxy(&ns, &args);
        String::from_utf8_lossy(&out.stdout).starts_with("# no changes")
    };
    // How long an apply takes here, so the kills can be spread over all of it (most of
    // it is parsing and compiling; the commit comes at the end).
    let started = std::time::Instant::now();
    assert!(apply(&new).status.success());
    let full = started.elapsed();
    assert!(apply(&old).status.success());
    let mut saw_old = false;
    let mut saw_new = false;
    for percent in [20u32, 50, 80, 95, 105, 150] {
        let delay = full * percent / 100;
        let mut args = vec!["apply"];
        args.extend(flags);
        args.push(new.to_str().unwrap());
        let mut child = ns
            .command(env!("CARGO_BIN_EXE_svcproxy"))
            .args(&args)
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        let (is_old, is_new) = (matches(&old), matches(&new));
        assert!(
            is_old ^ is_new,
            "killed after {delay:?}: the kernel holds neither the old nor the new ruleset"
        );
        saw_old |= is_old;
        saw_new |= is_new;
        if is_new {
            // Back to the old state for the next round.
            assert!(apply(&old).status.success());
        }
    }
    // Both outcomes happen, so the kills really landed before and after the commit.
    assert!(
        saw_old && saw_new,
        "old seen: {saw_old}, new seen: {saw_new}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
