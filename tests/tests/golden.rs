//! Golden files: every fixture compiles to exactly its expected ruleset (text and
//! JSON), IPVS set (ipvsadm text and the full state) and warnings; every error
//! fixture fails with exactly its expected message,
//! exit status 2 and nothing on stdout. `UPDATE_GOLDEN=1` rewrites the golden files.

use std::path::Path;

use svcproxy_tests::fixtures::{check_golden, compile, fixtures, golden_path, root};

/// Fixtures that must compile: everything except `fixtures/errors`.
fn good_fixtures() -> Vec<std::path::PathBuf> {
    let all = fixtures("");
    assert!(
        all.len() > 20,
        "fixtures not found under {}",
        root().display()
    );
    all.into_iter()
        .filter(|f| !f.starts_with("fixtures/errors"))
        .collect()
}

#[test]
fn every_fixture_matches_its_golden_ruleset() {
    let mut failures = Vec::new();
    for fixture in good_fixtures() {
        let text = compile(&fixture, &[]);
        if text.code != 0 {
            failures.push(format!(
                "{}: exit {}: {}",
                fixture.display(),
                text.code,
                text.stderr
            ));
            continue;
        }
        let json = compile(&fixture, &["--output", "json"]);
        for (ext, actual) in [
            ("nft", text.stdout.as_str()),
            ("json", json.stdout.as_str()),
            ("warnings", text.stderr.as_str()),
        ] {
            if let Err(e) = check_golden(&golden_path("nftables", &fixture, ext), actual) {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// The IPVS backend: `golden/ipvs/<fixture>.ipvs` (virtual servers), `.full` (with the
/// addresses and the companion nftables table) and `.warnings`.
#[test]
fn every_fixture_matches_its_golden_ipvs_set() {
    let mut failures = Vec::new();
    for fixture in good_fixtures() {
        let text = compile(&fixture, &["--backend", "ipvs"]);
        let full = compile(&fixture, &["--backend", "ipvs", "--output", "full"]);
        if text.code != 0 || full.code != 0 {
            failures.push(format!(
                "{}: exit {}/{}: {}",
                fixture.display(),
                text.code,
                full.code,
                full.stderr
            ));
            continue;
        }
        if !full.stdout.starts_with(&text.stdout) || full.stderr != text.stderr {
            failures.push(format!(
                "{}: --output full does not extend the text output",
                fixture.display()
            ));
        }
        for (ext, actual) in [
            ("ipvs", text.stdout.as_str()),
            ("full", full.stdout.as_str()),
            ("warnings", text.stderr.as_str()),
        ] {
            if let Err(e) = check_golden(&golden_path("ipvs", &fixture, ext), actual) {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_error_fixture_fails_cleanly_with_its_golden_message() {
    let mut failures = Vec::new();
    let errors = fixtures("errors");
    assert!(errors.len() >= 10);
    for fixture in errors {
        let run = compile(&fixture, &[]);
        if run.code != 2 || !run.stdout.is_empty() {
            failures.push(format!(
                "{}: expected exit 2 and no output, got exit {} and {} bytes of output",
                fixture.display(),
                run.code,
                run.stdout.len()
            ));
        }
        if !run.stderr.lines().all(|l| l.starts_with("error: ")) || run.stderr.is_empty() {
            failures.push(format!(
                "{}: stderr is not error lines: {}",
                fixture.display(),
                run.stderr
            ));
        }
        if let Err(e) = check_golden(&golden_path("", &fixture, "txt"), &run.stderr) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Determinism: the same snapshot gives byte-identical output, and so does the same
/// set of objects in another order (documents reversed, files given in another order).
#[test]
fn output_does_not_depend_on_object_or_file_order() {
    let dir = std::env::temp_dir().join(format!("svcproxy-golden-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for fixture in good_fixtures() {
        let original = std::fs::read_to_string(root().join(&fixture)).unwrap();
        if fixture.extension().is_some_and(|e| e == "json") || !original.contains("\n---") {
            continue;
        }
        let first = compile(&fixture, &[]);
        let again = compile(&fixture, &[]);
        assert_eq!(first.stdout, again.stdout, "{}", fixture.display());

        // Reverse the documents (keeping the `# args:` header first).
        let body: String = original
            .lines()
            .filter(|l| !l.starts_with("# args:"))
            .map(|l| format!("{l}\n"))
            .collect();
        let mut documents: Vec<&str> = body.split("\n---\n").collect();
        documents.reverse();
        let reversed = dir.join(fixture.file_name().unwrap());
        let args: Vec<&str> = original
            .lines()
            .filter(|l| l.starts_with("# args:"))
            .collect();
        std::fs::write(
            &reversed,
            format!("{}\n{}", args.join("\n"), documents.join("\n---\n")),
        )
        .unwrap();
        let shuffled = compile(Path::new(&reversed), &[]);
        assert_eq!(
            shuffled.code,
            0,
            "{}: {}",
            fixture.display(),
            shuffled.stderr
        );
        assert_eq!(
            first.stdout,
            shuffled.stdout,
            "{} reversed",
            fixture.display()
        );
        let ipvs = ["--backend", "ipvs", "--output", "full"];
        assert_eq!(
            compile(&fixture, &ipvs).stdout,
            compile(Path::new(&reversed), &ipvs).stdout,
            "{} reversed, IPVS",
            fixture.display()
        );
    }
    // Several files in either order.
    let a = "fixtures/semantics/session-affinity.yaml";
    let b = "fixtures/semantics/topology-hints.yaml";
    let args: Vec<String> = svcproxy_tests::fixtures::args_of(Path::new(b));
    let run = |files: [&str; 2]| {
        let mut all = vec!["compile".to_string()];
        all.extend(args.iter().cloned());
        all.extend(files.iter().map(|s| s.to_string()));
        svcproxy_tests::fixtures::svcproxy(&all)
    };
    let ab = run([a, b]);
    assert_eq!(ab.code, 0, "{}", ab.stderr);
    assert_eq!(ab.stdout, run([b, a]).stdout);
    let _ = std::fs::remove_dir_all(&dir);
}
