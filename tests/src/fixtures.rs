//! Fixtures and golden files: where they are, how to compile them, how to compare.
//!
//! A fixture is a snapshot under `fixtures/`; its compile flags are on `# args:` lines
//! at the top (or, for JSON, in a sibling `NAME.args` file). Its expected outputs live
//! under `golden/` at the same relative path. `UPDATE_GOLDEN=1` rewrites the golden
//! files instead of comparing; review the diff before committing.

use std::path::{Path, PathBuf};

use clap::Parser;
use svcproxy_agent::cli::Cli;

/// The workspace root (fixtures/ and golden/ are there).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// Every fixture file under `fixtures/<dir>`, sorted, as paths relative to the root.
pub fn fixtures(dir: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    collect(&root().join("fixtures").join(dir), &mut found);
    found.sort();
    found
        .into_iter()
        .map(|p| p.strip_prefix(root()).expect("under root").to_path_buf())
        .collect()
}

fn collect(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, found);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            found.push(path);
        }
    }
}

/// The compile flags of a fixture.
pub fn args_of(fixture: &Path) -> Vec<String> {
    let path = root().join(fixture);
    let sidecar = PathBuf::from(format!("{}.args", path.display()));
    let text = match std::fs::read_to_string(&sidecar) {
        Ok(args) => args,
        Err(_) => std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("# args:"))
            .collect::<Vec<_>>()
            .join(" "),
    };
    text.split_whitespace().map(str::to_owned).collect()
}

/// What one run of the CLI produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub code: u8,
    pub stdout: String,
    /// With the workspace root removed from paths, so golden files are portable.
    pub stderr: String,
}

/// Runs `svcproxy ARGS...` in-process, from the workspace root's point of view.
pub fn svcproxy(args: &[String]) -> Run {
    let root = root();
    let mut argv = vec!["svcproxy".to_string()];
    for arg in args {
        // Fixture paths are relative to the root; the test's working directory is not.
        if arg.starts_with("fixtures/") {
            argv.push(root.join(arg).display().to_string());
        } else {
            argv.push(arg.clone());
        }
    }
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(e) => {
            return Run {
                code: 2,
                stdout: String::new(),
                stderr: e.to_string(),
            };
        }
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = cli.execute(&mut out, &mut err);
    let prefix = format!("{}/", root.display());
    Run {
        code,
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).replace(&prefix, ""),
    }
}

/// `svcproxy compile [fixture args] EXTRA... FIXTURE`.
pub fn compile(fixture: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["compile".to_string()];
    args.extend(args_of(fixture));
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(fixture.display().to_string());
    svcproxy(&args)
}

/// The plan of a fixture, compiled in-process with its `# args:` flags (for tests that
/// need the compiler's data rather than its text).
pub fn plan(fixture: &Path) -> svcproxy_compiler::Plan {
    let mut argv = vec!["svcproxy".to_string(), "apply".to_string()];
    argv.extend(args_of(fixture));
    argv.push(root().join(fixture).display().to_string());
    let cli = Cli::try_parse_from(&argv).expect("fixture flags parse");
    let svcproxy_agent::cli::Command::Apply { node, snapshot, .. } = cli.command else {
        unreachable!("parsed as apply")
    };
    let sources = svcproxy_agent::source::read_sources(&snapshot.snapshots, usize::MAX)
        .expect("fixture readable");
    svcproxy_compiler::plan(&sources, &node.options()).expect("fixture compiles")
}

/// The golden file for a fixture: `golden/<kind>/<fixture path without fixtures/ and
/// extension>.<ext>`.
pub fn golden_path(kind: &str, fixture: &Path, ext: &str) -> PathBuf {
    let relative = fixture.strip_prefix("fixtures").unwrap_or(fixture);
    root()
        .join("golden")
        .join(kind)
        .join(relative)
        .with_extension(ext)
}

pub fn updating() -> bool {
    std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1")
}

/// Compares `actual` with a golden file (or rewrites it under `UPDATE_GOLDEN=1`).
/// An absent golden file means "expected empty", so most fixtures need no
/// `.warnings` file. Returns a description of the mismatch.
pub fn check_golden(path: &Path, actual: &str) -> Result<(), String> {
    if updating() {
        if actual.is_empty() {
            let _ = std::fs::remove_file(path);
        } else {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            }
            std::fs::write(path, actual).map_err(|e| e.to_string())?;
        }
        return Ok(());
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    if expected == actual {
        return Ok(());
    }
    let first_difference = expected
        .lines()
        .zip(actual.lines())
        .position(|(e, a)| e != a)
        .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
    Err(format!(
        "{} differs from the output at line {} (expected {:?}, got {:?}); run with UPDATE_GOLDEN=1 and review the diff if the change is intended",
        path.strip_prefix(root()).unwrap_or(path).display(),
        first_difference + 1,
        expected.lines().nth(first_difference).unwrap_or("<end>"),
        actual.lines().nth(first_difference).unwrap_or("<end>"),
    ))
}
