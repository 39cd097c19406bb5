//! The `svcproxy` binary as a user runs it: exit statuses, what goes to stdout and
//! stderr, stdin and directory inputs, flag validation.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const NODE_FLAGS: &[&str] = &[
    "--node-name",
    "node-a",
    "--node-ip",
    "192.168.100.1",
    "--cluster-cidr",
    "10.244.0.0/16",
    "--service-cidr",
    "10.96.0.0/16",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn svcproxy(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_svcproxy"))
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn compile(extra: &[&str], stdin: Option<&str>) -> Output {
    let mut args = vec!["compile", "--backend", "nftables"];
    args.extend_from_slice(NODE_FLAGS);
    args.extend_from_slice(extra);
    svcproxy(&args, stdin)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn compiling_a_seed_prints_the_golden_ruleset_and_exits_0() {
    let out = compile(&["fixtures/seeds/000-nginx-service.yaml"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let golden =
        std::fs::read_to_string(root().join("golden/nftables/seeds/000-nginx-service.nft"))
            .unwrap();
    assert_eq!(text(&out.stdout), golden);
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

#[test]
fn bad_input_exits_2_with_one_error_line_per_problem_and_no_output() {
    let out = compile(
        &["fixtures/errors/strict-invalid-objects.yaml", "--strict"],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 5, "{stderr}");
    assert!(stderr.lines().all(|l| l.starts_with("error: fixtures/errors/strict-invalid-objects.yaml (document ")));

    let missing = compile(&["fixtures/no-such-file.yaml"], None);
    assert_eq!(missing.status.code(), Some(2));
    assert!(missing.stdout.is_empty());
    assert!(text(&missing.stderr).starts_with("error: fixtures/no-such-file.yaml: "));
}

#[test]
fn skipped_objects_warn_on_stderr_and_the_rest_compiles() {
    let out = compile(&["fixtures/inputs/skipped-objects.yaml"], None);
    assert_eq!(out.status.code(), Some(0));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 6, "{stderr}");
    assert!(
        stderr
            .lines()
            .all(|l| l.starts_with("warning: ") && l.ends_with("is skipped"))
    );
    assert!(text(&out.stdout).contains("10.96.40.1 . tcp . 80"));
}

#[test]
fn invalid_flags_are_usage_errors() {
    for (flag, value) in [
        ("--service-cidr", "10.96.0.1/16"),
        ("--node-ip", "192.168.100.010"),
        ("--masquerade-bit", "32"),
        ("--cluster-cidr", "banana"),
    ] {
        let out = svcproxy(
            &["compile", flag, value, "fixtures/inputs/allocation.yaml"],
            None,
        );
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        assert!(out.stdout.is_empty());
        assert!(
            text(&out.stderr).contains(value),
            "{flag} {value}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn reads_stdin_and_directories() {
    let manifest =
        std::fs::read_to_string(root().join("fixtures/semantics/protocols.yaml")).unwrap();
    let from_stdin = compile(&["-"], Some(&manifest));
    assert_eq!(
        from_stdin.status.code(),
        Some(0),
        "{}",
        text(&from_stdin.stderr)
    );
    let from_file = compile(&["fixtures/semantics/protocols.yaml"], None);
    assert_eq!(from_stdin.stdout, from_file.stdout);

    // A directory: its YAML and JSON files, recursively, hidden files ignored.
    let dir = std::env::temp_dir().join(format!("svcproxy-cli-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::copy(
        root().join("fixtures/semantics/protocols.yaml"),
        dir.join("a.yaml"),
    )
    .unwrap();
    std::fs::copy(
        root().join("fixtures/inputs/service.json"),
        dir.join("sub/b.json"),
    )
    .unwrap();
    std::fs::write(dir.join(".editor-backup.yaml"), "not: [valid").unwrap();
    std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
    let out = compile(&[dir.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("10.96.0.10 . udp . 53"),
        "protocols.yaml compiled"
    );
    assert!(
        stdout.contains("10.96.22.1 . tcp . 80"),
        "service.json compiled"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn json_output_is_valid_nft_json() {
    let out = compile(
        &[
            "--output",
            "json",
            "fixtures/semantics/session-affinity.yaml",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let objects = value["nftables"].as_array().unwrap();
    assert_eq!(objects[0]["metainfo"]["json_schema_version"], 1);
    // The affinity map, as `nft -j list ruleset` prints it.
    assert!(objects.iter().any(|o| {
        o["map"]["flags"] == serde_json::json!(["timeout"])
            && o["map"]["map"] == "ipv4_addr . inet_service"
    }));
}

fn explain(extra: &[&str]) -> Output {
    let mut args = vec!["explain"];
    args.extend_from_slice(NODE_FLAGS);
    args.extend_from_slice(extra);
    svcproxy(&args, None)
}

#[test]
fn explain_prints_the_way_of_a_packet_and_why() {
    let out = explain(&[
        "fixtures/semantics/external-traffic-policy-local.yaml",
        "--src",
        "10.244.1.5",
        "--dst",
        "10.96.4.1:80",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for line in [
        "tcp 10.244.1.5:40000 -> 10.96.4.1:80, from a pod (arrives on an interface)",
        "prerouting (table ip svcproxy):",
        "services rule 1: ip daddr . meta l4proto . th dport @cluster-ip-ports goto cluster-ip-traffic",
        " 50.0%  DNAT to 10.244.1.10:8080, not masqueraded: accepted",
        " 50.0%  DNAT to 10.244.2.10:8080, not masqueraded: accepted",
        "why: 2 endpoints to choose from at random; not masqueraded",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
}

#[test]
fn explain_json_names_the_deciding_map_element() {
    let out = explain(&[
        "fixtures/semantics/external-traffic-policy-local.yaml",
        "--from",
        "outside",
        "--src",
        "198.51.200.7",
        "--dst",
        "192.168.100.1:30082",
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let outcome = &value["outcomes"][0];
    assert_eq!(outcome["fate"], "dropped");
    assert_eq!(outcome["decidedIn"], "input");
    let steps = outcome["steps"].as_array().unwrap();
    let lookup = &steps.last().unwrap()["lookup"];
    assert_eq!(lookup["map"], "no-endpoint-nodeports");
    assert_eq!(lookup["element"], "prod/remote-web:http");
    assert!(
        value["why"]
            .as_str()
            .unwrap()
            .contains("no endpoint on this node"),
        "{value}"
    );
}

#[test]
fn explain_refuses_mixed_families_and_bad_addresses_with_exit_2() {
    let fixture = "fixtures/semantics/external-traffic-policy-local.yaml";
    let out = explain(&[fixture, "--src", "fd00::1", "--dst", "10.96.4.1:80"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("same address family"));
    let out = explain(&[fixture, "--src", "10.244.1.5", "--dst", "10.96.4.1"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
}
