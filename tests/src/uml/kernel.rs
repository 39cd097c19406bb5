//! Which user-mode-linux kernel the IPVS tests and the IPVS bench boot.
//!
//! Debian 12's `user-mode-linux` (6.1) boots on AMD hosts, but on Intel hosts with AMX its
//! init dies at once (`userspace - ptrace set fp regs failed, errno = 14`, then `Kernel
//! panic - not syncing: Attempted to kill init!`): UML hands the host a fixed-size XSAVE
//! buffer, and AMX's is larger. Debian unstable's (7.2) sizes it from the host and boots on
//! both. `scripts/uml-provide` installs that one, with its own libc, into a cache that
//! outlives the checkout ([`cache_dir`]).
//!
//! [`kernel`] settles the choice once per process:
//! 1. When `scripts/test` has chosen for the whole run (`svcproxy-uml select`, which writes
//!    the variables below), that choice is taken without another boot: [`ENV_KERNEL`] with
//!    [`ENV_MODULES`] and [`ENV_DESCRIPTION`], or [`ENV_ERROR`] when no kernel booted, with
//!    what was tried.
//! 2. Otherwise every [`candidates`] entry in turn gets one quick boot ([`probe`]) that must
//!    load `ip_vs`; the first that boots is used.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Result, bail};

use super::Uml;

/// The chosen kernel binary, set by `svcproxy-uml select` for the rest of a run.
pub const ENV_KERNEL: &str = "SVCPROXY_UML_KERNEL";
/// Its module tree (`<dir>/<release>/kernel/...`).
pub const ENV_MODULES: &str = "SVCPROXY_UML_MODULES";
/// What it is, for messages: origin and release.
pub const ENV_DESCRIPTION: &str = "SVCPROXY_UML_DESCRIPTION";
/// Set instead of the three above when no kernel booted: what was tried, and why each failed.
pub const ENV_ERROR: &str = "SVCPROXY_UML_KERNEL_ERROR";
/// "1": leave Debian's installed kernel out of the candidates, so that a host where it boots
/// can still run everything on the provided one (how the fallback is tried on AMD hosts).
pub const ENV_SKIP_INSTALLED: &str = "SVCPROXY_UML_SKIP_INSTALLED";

/// Debian's package `user-mode-linux`.
pub const INSTALLED_KERNEL: &str = "/usr/bin/linux.uml";
/// Its modules.
pub const INSTALLED_MODULES: &str = "/usr/lib/uml/modules";

/// Modules the quick boot loads: what every IPVS test needs before anything else.
const PROBE_MODULES: &[&str] = &["ip_vs", "ip_vs_rr", "dummy", "veth"];

/// A user-mode-linux kernel and the module tree it boots with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kernel {
    pub binary: PathBuf,
    pub modules: PathBuf,
    /// Where it comes from, e.g. "Debian package user-mode-linux 6.1um4+b13".
    pub origin: String,
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.origin, self.binary.display())
    }
}

/// A kernel that booted: [`Kernel`] and the release its guest reported.
#[derive(Clone, Debug)]
pub struct Booted {
    pub kernel: Kernel,
    /// `uname -r` in the guest.
    pub release: String,
    /// How long the quick boot took, from start to power-off.
    pub elapsed: Duration,
}

impl Booted {
    /// One line: origin, release, path.
    pub fn describe(&self) -> String {
        format!(
            "{}, kernel {} ({})",
            self.kernel.origin,
            self.release,
            self.kernel.binary.display()
        )
    }
}

/// Where provided kernels are kept between runs: `$SVCPROXY_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/svcproxy`, else `~/.cache/svcproxy`; kernels under `uml/`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SVCPROXY_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("svcproxy");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache").join("svcproxy")
}

/// Debian's installed kernel, when the package is installed.
pub fn installed() -> Option<Kernel> {
    if !Path::new(INSTALLED_KERNEL).exists() {
        return None;
    }
    let version = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "user-mode-linux"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|v| !v.is_empty());
    Some(Kernel {
        binary: INSTALLED_KERNEL.into(),
        modules: INSTALLED_MODULES.into(),
        origin: match version {
            Some(v) => format!("Debian package user-mode-linux {v}"),
            None => "installed user-mode-linux".to_string(),
        },
    })
}

/// Kernels `scripts/uml-provide` left in `dir` (one folder per package version, complete
/// ones only), newest first.
pub fn provided_in(dir: &Path) -> Vec<Kernel> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(std::time::SystemTime, Kernel)> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("complete").exists() && p.join("linux.uml").exists())
        .map(|p| {
            let modified = std::fs::metadata(p.join("complete"))
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            let origin = std::fs::read_to_string(p.join("origin"))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| format!("provided user-mode-linux in {}", p.display()));
            let kernel = Kernel {
                binary: p.join("linux.uml"),
                modules: p.join("root/usr/lib/uml/modules"),
                origin,
            };
            (modified, kernel)
        })
        .collect();
    found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.binary.cmp(&b.1.binary)));
    found.into_iter().map(|(_, k)| k).collect()
}

/// The kernels to try, in order: Debian's installed one (unless [`ENV_SKIP_INSTALLED`]),
/// then the provided ones.
pub fn candidates() -> Vec<Kernel> {
    let skip_installed = std::env::var(ENV_SKIP_INSTALLED).as_deref() == Ok("1");
    let mut all = Vec::new();
    if !skip_installed {
        all.extend(installed());
    }
    all.extend(provided_in(&cache_dir().join("uml")));
    all
}

/// One quick boot of `kernel`: load the IPVS and link modules, report `uname -r`, power
/// off. The error names the kernel and the console's reason.
pub fn probe(kernel: &Kernel) -> Result<Booted> {
    probe_with_timeout(kernel, Duration::from_secs(90))
}

fn probe_with_timeout(kernel: &Kernel, timeout: Duration) -> Result<Booted> {
    for (what, path) in [("binary", &kernel.binary), ("modules", &kernel.modules)] {
        if !path.exists() {
            bail!("{kernel}: {what} {} does not exist", path.display());
        }
    }
    let run = Uml::new()
        .kernel(kernel.clone())
        .modules(PROBE_MODULES)
        .timeout(timeout)
        .mem_mb(256)
        .run(&["uname", "-r"]);
    let run = match run {
        Ok(run) => run,
        Err(e) => bail!("{kernel} did not boot: {}", reason(&format!("{e:#}"))),
    };
    let release = run.output.trim().to_string();
    if !run.success() || release.is_empty() {
        bail!(
            "{kernel} booted, but `uname -r` failed (exit {}): {}",
            run.exit_code,
            reason(&format!("{}\n{}", run.output, run.console))
        );
    }
    Ok(Booted {
        kernel: kernel.clone(),
        release,
        elapsed: run.elapsed,
    })
}

/// The lines of a failed boot's message and console that say why: the failure itself, then
/// what the kernel or the loader said (a panic, a refused ptrace, a missing library, a module
/// that would not load).
pub fn reason(text: &str) -> String {
    const SALIENT: &[&str] = &[
        "ptrace",
        "panic",
        "not syncing",
        "not found",
        "No such file",
        "Permission denied",
        "Exec format error",
        "modprobe",
        "setup failed",
        "timed out",
        "error",
        "Error",
    ];
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let headline = lines.next().unwrap_or("no output").to_string();
    let mut said = vec![headline];
    for line in lines {
        if said.len() >= 4 {
            break;
        }
        if SALIENT.iter().any(|s| line.contains(s)) && !said.iter().any(|l| l == line) {
            said.push(line.to_string());
        }
    }
    said.join(" | ")
}

/// Tries each kernel in turn; the first that boots wins. The error lists every attempt.
pub fn select(candidates: &[Kernel]) -> std::result::Result<(Booted, Vec<String>), String> {
    let mut tried = Vec::new();
    for kernel in candidates {
        match probe(kernel) {
            Ok(booted) => return Ok((booted, tried)),
            Err(e) => tried.push(format!("{e:#}")),
        }
    }
    if candidates.is_empty() {
        tried.push(format!(
            "no user-mode-linux kernel is installed ({INSTALLED_KERNEL}) or provided ({})",
            cache_dir().join("uml").display()
        ));
    }
    Err(format!(
        "no user-mode-linux kernel with IPVS boots on this host; tried:\n  - {}\n\
         (as root, scripts/test installs Debian's and, where that one does not boot, \
         provides Debian unstable's through scripts/uml-provide)",
        tried.join("\n  - ")
    ))
}

/// The kernel this process boots its guests with, chosen once (module docs).
pub fn kernel() -> std::result::Result<&'static Kernel, &'static str> {
    static CHOICE: OnceLock<std::result::Result<Kernel, String>> = OnceLock::new();
    CHOICE.get_or_init(choose).as_ref().map_err(|e| e.as_str())
}

fn choose() -> std::result::Result<Kernel, String> {
    if let Ok(error) = std::env::var(ENV_ERROR) {
        return Err(error);
    }
    if let Some(binary) = std::env::var_os(ENV_KERNEL) {
        let modules = std::env::var_os(ENV_MODULES)
            .map(PathBuf::from)
            .unwrap_or_else(|| INSTALLED_MODULES.into());
        let origin = std::env::var(ENV_DESCRIPTION)
            .unwrap_or_else(|_| format!("{ENV_KERNEL}={}", PathBuf::from(&binary).display()));
        return Ok(Kernel {
            binary: binary.into(),
            modules,
            origin,
        });
    }
    let (booted, tried) = select(&candidates())?;
    // Straight to stderr, once per process: which kernel the guests of this binary run.
    let mut stderr = std::io::stderr();
    let _ = writeln!(stderr, "user-mode-linux: {}", booted.describe());
    for t in tried {
        let _ = writeln!(stderr, "user-mode-linux: not used: {t}");
    }
    Ok(booted.kernel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A "kernel" that dies as Debian 12's does on an Intel host with AMX.
    fn fake_kernel(dir: &Path, script: &str) -> Kernel {
        std::fs::create_dir_all(dir).unwrap();
        let binary = dir.join("linux.uml");
        std::fs::write(&binary, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
        let modules = dir.join("modules");
        std::fs::create_dir_all(&modules).unwrap();
        Kernel {
            binary,
            modules,
            origin: "fake kernel".into(),
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let exe = std::env::current_exe().unwrap();
        let dir = exe
            .ancestors()
            .nth(2)
            .unwrap()
            .join("uml-kernel-tests")
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_kernel_that_panics_is_refused_with_the_console_reason() {
        let dir = scratch("panics");
        let kernel = fake_kernel(
            &dir,
            "echo 'Linux version 6.1.176 (fake)'\n\
             echo 'userspace - ptrace set fp regs failed, errno = 14'\n\
             echo 'Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b'\n\
             exit 1",
        );
        let error = format!("{:#}", probe(&kernel).unwrap_err());
        assert!(error.contains("fake kernel"), "{error}");
        assert!(error.contains("did not boot"), "{error}");
        assert!(
            error.contains("ptrace set fp regs failed, errno = 14"),
            "{error}"
        );
        assert!(error.contains("Attempted to kill init!"), "{error}");
    }

    #[test]
    fn a_kernel_whose_libc_is_too_old_is_refused_with_the_loader_message() {
        let dir = scratch("glibc");
        let kernel = fake_kernel(
            &dir,
            "echo \"$0: /lib/x86_64-linux-gnu/libc.so.6: version \\`GLIBC_2.38' not found\" >&2\n\
             exit 1",
        );
        let error = format!("{:#}", probe(&kernel).unwrap_err());
        assert!(error.contains("GLIBC_2.38' not found"), "{error}");
    }

    #[test]
    fn a_kernel_that_hangs_is_refused_after_the_timeout() {
        let dir = scratch("hangs");
        let kernel = fake_kernel(&dir, "exec sleep 30");
        let error = format!(
            "{:#}",
            probe_with_timeout(&kernel, Duration::from_millis(300)).unwrap_err()
        );
        assert!(error.contains("timed out"), "{error}");
    }

    #[test]
    fn a_missing_kernel_is_refused_without_a_boot() {
        let kernel = Kernel {
            binary: "/nonexistent/linux.uml".into(),
            modules: INSTALLED_MODULES.into(),
            origin: "nowhere".into(),
        };
        let error = format!("{:#}", probe(&kernel).unwrap_err());
        assert!(
            error.contains("/nonexistent/linux.uml does not exist"),
            "{error}"
        );
    }

    #[test]
    fn selection_lists_every_failed_attempt() {
        let dir = scratch("select");
        let first = fake_kernel(&dir.join("a"), "echo 'Kernel panic - first'; exit 1");
        let second = fake_kernel(&dir.join("b"), "echo 'Kernel panic - second'; exit 1");
        let error = select(&[first, second]).unwrap_err();
        assert!(error.contains("Kernel panic - first"), "{error}");
        assert!(error.contains("Kernel panic - second"), "{error}");
        assert!(error.contains("scripts/uml-provide"), "{error}");
        let none = select(&[]).unwrap_err();
        assert!(
            none.contains("no user-mode-linux kernel is installed"),
            "{none}"
        );
    }

    #[test]
    fn provided_kernels_are_complete_ones_newest_first() {
        let dir = scratch("provided");
        for (version, complete) in [("7.1um1", true), ("7.2um1", true), ("7.3um1", false)] {
            let d = dir.join(version);
            std::fs::create_dir_all(d.join("root/usr/lib/uml/modules")).unwrap();
            std::fs::write(d.join("linux.uml"), "").unwrap();
            std::fs::write(d.join("origin"), format!("unstable {version}\n")).unwrap();
            if complete {
                std::fs::write(d.join("complete"), "").unwrap();
                // Distinct modification times, newest last.
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let found = provided_in(&dir);
        let origins: Vec<_> = found.iter().map(|k| k.origin.as_str()).collect();
        assert_eq!(origins, ["unstable 7.2um1", "unstable 7.1um1"]);
        assert_eq!(
            found[0].modules,
            dir.join("7.2um1/root/usr/lib/uml/modules")
        );
        assert!(provided_in(&dir.join("absent")).is_empty());
    }

    #[test]
    fn reason_keeps_the_headline_and_the_telling_lines() {
        let text = "guest powered off without reporting a status\nrun directory kept: /x\n\
                    ---- console (tail) ----\nLocating the bottom of the address space ... 0x10000\n\
                    userspace - ptrace set fp regs failed, errno = 14\n\
                    Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b\n";
        assert_eq!(
            reason(text),
            "guest powered off without reporting a status | \
             userspace - ptrace set fp regs failed, errno = 14 | \
             Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b"
        );
    }
}
