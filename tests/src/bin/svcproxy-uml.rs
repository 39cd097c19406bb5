//! svcproxy-uml: chooses the user-mode-linux kernel a test run boots (`scripts/test` runs it
//! once, before the tests).
//!
//! ```text
//! svcproxy-uml select [--provide SCRIPT] [--env-file PATH]
//! ```
//!
//! Tries each candidate kernel with one quick boot (tests/src/uml/kernel.rs: Debian's
//! installed one, then those provided earlier). When none boots and `--provide` is given, it
//! runs SCRIPT (`scripts/uml-provide`: Debian unstable's kernel into the cache) and tries
//! again. Prints the chosen kernel with its release, once, and writes the choice to PATH as
//! shell assignments (`SVCPROXY_UML_KERNEL`, `SVCPROXY_UML_MODULES`,
//! `SVCPROXY_UML_DESCRIPTION`) that the run exports, so no test binary boots to choose again.
//! When nothing boots it writes `SVCPROXY_UML_KERNEL_ERROR` (what was tried, and why each
//! failed) instead, so every IPVS test fails with that message, and exits 1.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

use svcproxy_tests::uml::kernel::{self, Booted};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut provide: Option<PathBuf> = None;
    let mut env_file: Option<PathBuf> = None;
    let mut rest = args.iter();
    match rest.next().map(String::as_str) {
        Some("select") => {}
        _ => return usage(),
    }
    while let Some(arg) = rest.next() {
        match (arg.as_str(), rest.next()) {
            ("--provide", Some(v)) => provide = Some(v.into()),
            ("--env-file", Some(v)) => env_file = Some(v.into()),
            _ => return usage(),
        }
    }

    let mut attempts = Vec::new();
    let mut chosen = kernel::select(&kernel::candidates());
    if let (Err(first), Some(script)) = (&chosen, &provide) {
        attempts.push(first.clone());
        println!(
            "user-mode-linux: no known kernel boots here; providing one ({})",
            script.display()
        );
        chosen = match provide_kernel(script) {
            Ok(()) => kernel::select(&kernel::candidates()),
            Err(e) => Err(format!("{first}\nproviding one failed: {e}")),
        };
    }
    match chosen {
        Ok((booted, not_used)) => {
            println!(
                "user-mode-linux: {} (quick boot {:.1?})",
                booted.describe(),
                booted.elapsed
            );
            for reason in not_used {
                println!("user-mode-linux: not used: {reason}");
            }
            write_env(env_file, &assignments(&booted))
        }
        Err(error) => {
            let error = if attempts.is_empty() {
                error
            } else {
                format!("{}\nafter providing one: {error}", attempts.join("\n"))
            };
            eprintln!("user-mode-linux: {error}");
            let mut env = String::new();
            let _ = writeln!(env, "{}={}", kernel::ENV_ERROR, shell_quote(&error));
            match write_env(env_file, &env) {
                ExitCode::SUCCESS => ExitCode::FAILURE,
                other => other,
            }
        }
    }
}

fn provide_kernel(script: &PathBuf) -> Result<(), String> {
    let status = Command::new("bash")
        .arg(script)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} exited with {status}", script.display()))
    }
}

fn assignments(booted: &Booted) -> String {
    let mut env = String::new();
    for (key, value) in [
        (
            kernel::ENV_KERNEL,
            booted.kernel.binary.display().to_string(),
        ),
        (
            kernel::ENV_MODULES,
            booted.kernel.modules.display().to_string(),
        ),
        (
            kernel::ENV_DESCRIPTION,
            format!("{}, kernel {}", booted.kernel.origin, booted.release),
        ),
    ] {
        let _ = writeln!(env, "{key}={}", shell_quote(&value));
    }
    env
}

fn write_env(path: Option<PathBuf>, text: &str) -> ExitCode {
    let Some(path) = path else {
        print!("{text}");
        return ExitCode::SUCCESS;
    };
    match std::fs::write(&path, text) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("svcproxy-uml: writing {}: {e}", path.display());
            ExitCode::from(2)
        }
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn usage() -> ExitCode {
    eprintln!("usage: svcproxy-uml select [--provide SCRIPT] [--env-file PATH]");
    ExitCode::from(2)
}
