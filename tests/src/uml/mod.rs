//! Run code under a user-mode-linux kernel, for features the host kernel lacks (IPVS).
//!
//! A `linux.uml` kernel (with `ip_vs`, `dummy`, `veth` as modules) boots in about two seconds
//! with the host's `/` as its root filesystem (hostfs), so binaries built on the host run
//! unchanged in the guest. Which kernel (Debian 12's, or Debian unstable's where that one
//! cannot boot) is settled once per run by [`kernel::kernel`]. The
//! harness writes an init script that prepares the guest (proc, sys, a tmpfs on `/run`
//! with `TMPDIR` in it, `/run/netns`, kernel modules, `lo` up), runs one command, stores its output and
//! exit status in a host directory and powers off.
//!
//! The usual pattern re-executes the current test binary inside the guest, so a test is a
//! host half that boots the guest and a guest half (marked `#[ignore]`, so the host never
//! runs it by itself) that does the work:
//!
//! ```no_run
//! use svcproxy_tests::uml::{self, Uml};
//!
//! #[test]
//! fn ipvs_works() {
//!     if !uml::require_uml() {
//!         return;
//!     }
//!     let run = Uml::new().run_tests(&["guest_ipvs_works"]).unwrap();
//!     run.assert_tests_passed(&["guest_ipvs_works"]);
//! }
//!
//! #[test]
//! #[ignore = "runs inside user-mode-linux, started by ipvs_works"]
//! fn guest_ipvs_works() {
//!     if !uml::in_guest() {
//!         return;
//!     }
//!     // root in a fresh 6.1 kernel with ip_vs loaded
//! }
//! ```
//!
//! Boot once per test binary where possible: one guest can run several guest tests in a row
//! (`run_tests(&["a", "b"])`), a boot costs ~2 s.
//!
//! The guest sees the host filesystem except where it mounts its own: `/run` (with its
//! `TMPDIR` at `/run/tmp`), `/proc`, `/sys`. The command, its working directory and the run directory must therefore
//! live elsewhere (cargo's target directory does).

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Set (to "1") in the guest's environment: the code runs under user-mode-linux.
pub const GUEST_ENV: &str = "SVCPROXY_UML_GUEST";
pub mod kernel;

pub use kernel::Kernel;
/// Loaded before the command runs: IPVS with the schedulers kube-proxy offers, and the link
/// types tests build topologies with.
pub const DEFAULT_MODULES: &[&str] = &[
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "ip_vs_lc",
    "ip_vs_wlc",
    "ip_vs_sh",
    "ip_vs_dh",
    "ip_vs_mh",
    "dummy",
    "veth",
];

/// Paths the guest mounts over: anything below them is invisible to it.
const SHADOWED: &[&str] = &["/run", "/proc", "/sys", "/dev"];

/// Whether this process runs inside a guest started by [`Uml`].
pub fn in_guest() -> bool {
    std::env::var(GUEST_ENV).as_deref() == Ok("1")
}

/// Whether user-mode-linux tests can run here: a kernel with IPVS boots ([`kernel::kernel`]).
/// If not, the test is skipped (returns false after saying why on stderr), unless
/// `SVCPROXY_REQUIRE_KERNEL=1` (as CI sets), in which case it panics with what was tried:
/// CI must never go green by skipping.
///
/// Booting UML needs no host privileges, only the kernel and its modules; inside, the test
/// is root in its own kernel.
pub fn require_uml() -> bool {
    let why = match kernel::kernel() {
        Ok(_) => return true,
        Err(why) => why,
    };
    let test = std::thread::current()
        .name()
        .unwrap_or("uml test")
        .to_owned();
    if std::env::var("SVCPROXY_REQUIRE_KERNEL").as_deref() == Ok("1") {
        panic!("{test}: SVCPROXY_REQUIRE_KERNEL=1, and {why}");
    }
    // Straight to stderr: libtest captures eprintln!, and a skip nobody sees looks like a pass.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {why}\n(set SVCPROXY_REQUIRE_KERNEL=1 to fail instead)"
    );
    false
}

/// What a guest run produced.
#[derive(Debug)]
pub struct GuestRun {
    /// Exit status of the command (a shell status: 128+N when killed by signal N).
    pub exit_code: i32,
    /// The command's stdout and stderr, interleaved.
    pub output: String,
    /// The guest console: kernel messages and the harness's own setup output.
    pub console: String,
    /// From starting the kernel to its exit.
    pub elapsed: Duration,
    /// The kernel that ran.
    pub kernel: Kernel,
}

impl GuestRun {
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }

    /// Panics with the guest's output unless the command exited 0 and libtest reported each
    /// of `tests` as passed (a filter that matched nothing also exits 0).
    pub fn assert_tests_passed(&self, tests: &[&str]) {
        let missing: Vec<_> = tests
            .iter()
            .filter(|t| !self.output.contains(&format!("test {t} ... ok")))
            .collect();
        if !self.success() || !missing.is_empty() {
            panic!(
                "guest run failed (exit {}, not passed: {missing:?}) after {:.1?}\n\
                 ---- guest output ----\n{}\n---- console (tail) ----\n{}",
                self.exit_code,
                self.elapsed,
                self.output,
                tail(&self.console, 40)
            );
        }
        // Let the host test's own output show what ran in the guest.
        println!("{}", self.output);
        println!(
            "(user-mode-linux run took {:.1?} on {})",
            self.elapsed, self.kernel
        );
    }
}

/// A user-mode-linux guest to run one command in.
#[derive(Clone, Debug)]
pub struct Uml {
    kernel: Option<Kernel>,
    mem_mb: u32,
    timeout: Duration,
    modules: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<PathBuf>,
    keep_run_dir: bool,
}

impl Default for Uml {
    fn default() -> Self {
        Uml::new()
    }
}

impl Uml {
    pub fn new() -> Uml {
        Uml {
            kernel: None,
            mem_mb: 512,
            timeout: Duration::from_secs(180),
            modules: DEFAULT_MODULES.iter().map(|m| m.to_string()).collect(),
            env: Vec::new(),
            cwd: None,
            keep_run_dir: false,
        }
    }

    /// Boot this kernel instead of the one chosen for the run ([`kernel::kernel`]).
    pub fn kernel(mut self, kernel: Kernel) -> Uml {
        self.kernel = Some(kernel);
        self
    }

    /// Kill the guest if it has not powered off after this long (default 180 s).
    pub fn timeout(mut self, timeout: Duration) -> Uml {
        self.timeout = timeout;
        self
    }

    /// Guest memory (default 512 MiB).
    pub fn mem_mb(mut self, mem_mb: u32) -> Uml {
        self.mem_mb = mem_mb;
        self
    }

    /// Replace the list of modules loaded before the command (default [`DEFAULT_MODULES`]).
    /// Modules not listed can still be autoloaded by the guest kernel.
    pub fn modules(mut self, modules: &[&str]) -> Uml {
        self.modules = modules.iter().map(|m| m.to_string()).collect();
        self
    }

    /// An environment variable for the command (the guest starts with an almost empty one).
    pub fn env(mut self, key: &str, value: &str) -> Uml {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Working directory of the command (default: the host test's current directory).
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Uml {
        self.cwd = Some(dir.into());
        self
    }

    /// Keep the run directory (init script, logs) even on success.
    pub fn keep_run_dir(mut self, keep: bool) -> Uml {
        self.keep_run_dir = keep;
        self
    }

    /// Boots the guest, runs the current test binary restricted to `tests` (exact names,
    /// ignored tests included, one thread, output not captured) and powers off.
    pub fn run_tests(&self, tests: &[&str]) -> Result<GuestRun> {
        let exe = std::env::current_exe().context("current test executable")?;
        let mut argv: Vec<String> = vec![path_str(&exe)?.to_string()];
        argv.extend(tests.iter().map(|t| t.to_string()));
        argv.extend(
            [
                "--exact",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ]
            .map(String::from),
        );
        self.run(&argv)
    }

    /// Boots the guest, runs `argv` as root with [`GUEST_ENV`]=1 and powers off.
    pub fn run(&self, argv: &[impl AsRef<OsStr>]) -> Result<GuestRun> {
        if argv.is_empty() {
            bail!("empty command");
        }
        let kernel = match &self.kernel {
            Some(kernel) => kernel.clone(),
            None => kernel::kernel().map_err(anyhow::Error::msg)?.clone(),
        };
        check_visible("kernel module tree", &kernel.modules)?;
        let run_dir = new_run_dir()?;
        let cwd = match &self.cwd {
            Some(dir) => dir.clone(),
            None => std::env::current_dir().context("current directory")?,
        };
        for (what, path) in [
            ("run directory", run_dir.as_path()),
            ("working directory", &cwd),
        ] {
            check_visible(what, path)?;
        }
        let mut command = String::new();
        for arg in argv {
            let arg = arg.as_ref();
            let arg = arg
                .to_str()
                .with_context(|| format!("argument {arg:?} is not UTF-8"))?;
            if arg.starts_with('/') {
                check_visible("command path", Path::new(arg))?;
            }
            let _ = write!(command, "{} ", shell_quote(arg));
        }

        let init = run_dir.join("init");
        fs::write(&init, self.init_script(&kernel, &run_dir, &cwd, &command)?)
            .with_context(|| format!("writing {}", init.display()))?;
        fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
        let modprobe = run_dir.join("modprobe");
        // The guest kernel autoloads modules (an unlisted scheduler, a link type) by running
        // /proc/sys/kernel/modprobe; point it at the UML module tree, which is not at
        // /lib/modules on the host and so not in the guest either.
        fs::write(
            &modprobe,
            "#!/bin/sh\nexec /usr/sbin/modprobe -d /run/uml-modroot \"$@\"\n",
        )?;
        fs::set_permissions(&modprobe, fs::Permissions::from_mode(0o755))?;

        let console_path = run_dir.join("console.log");
        let console = fs::File::create(&console_path)?;
        let started = Instant::now();
        let mut child = Command::new(&kernel.binary)
            .arg(format!("mem={}M", self.mem_mb))
            .args(["root=/dev/root", "rootfstype=hostfs", "rootflags=/", "rw"])
            .arg(format!("init={}", path_str(&init)?))
            .args(["con=null", "con0=fd:0,fd:1"])
            .stdin(Stdio::null())
            .stdout(console.try_clone()?)
            .stderr(console)
            // Own process group: UML runs as several host processes; a timeout kills them all.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", kernel.binary.display()))?;
        let pgid = child.id() as libc::pid_t;
        let timed_out = loop {
            if child.try_wait()?.is_some() {
                break false;
            }
            if started.elapsed() > self.timeout {
                // SAFETY: plain syscall; the group is the one we created for this child.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                let _ = child.wait();
                break true;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let elapsed = started.elapsed();

        let console = fs::read_to_string(&console_path).unwrap_or_default();
        let output = fs::read_to_string(run_dir.join("output")).unwrap_or_default();
        let setup = fs::read_to_string(run_dir.join("setup.log")).unwrap_or_default();
        let status = fs::read_to_string(run_dir.join("status")).unwrap_or_default();
        let status = status.trim();
        let failure = if timed_out {
            Some(format!("guest timed out after {:?}", self.timeout))
        } else if status.is_empty() {
            Some("guest powered off without reporting a status".to_string())
        } else {
            status
                .strip_prefix("setup-failed ")
                .map(|rc| format!("guest setup failed ({rc}):\n{setup}"))
        };
        if let Some(failure) = failure {
            bail!(
                "{failure}\nrun directory kept: {}\n---- output ----\n{output}\n---- console (tail) ----\n{}",
                run_dir.display(),
                tail(&console, 40)
            );
        }
        let exit_code = status
            .parse()
            .with_context(|| format!("guest status {status:?}"))?;
        if exit_code == 0 && !self.keep_run_dir {
            let _ = fs::remove_dir_all(&run_dir);
        }
        Ok(GuestRun {
            exit_code,
            output,
            console,
            elapsed,
            kernel,
        })
    }

    fn init_script(
        &self,
        kernel: &Kernel,
        run_dir: &Path,
        cwd: &Path,
        command: &str,
    ) -> Result<String> {
        let r = shell_quote(path_str(run_dir)?);
        let mut env = format!("export {GUEST_ENV}=1 RUST_BACKTRACE=1\n");
        if let Ok(v) = std::env::var("SVCPROXY_REQUIRE_KERNEL") {
            let _ = writeln!(env, "export SVCPROXY_REQUIRE_KERNEL={}", shell_quote(&v));
        }
        for (k, v) in &self.env {
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                bail!("bad environment variable name {k:?}");
            }
            let _ = writeln!(env, "export {k}={}", shell_quote(v));
        }
        let modules = self
            .modules
            .iter()
            .map(|m| shell_quote(m))
            .collect::<Vec<_>>()
            .join(" ");
        let cwd = shell_quote(path_str(cwd)?);
        let modules_dir = shell_quote(path_str(&kernel.modules)?);
        Ok(format!(
            r#"#!/bin/sh
# init of a user-mode-linux guest, generated by svcproxy-tests (tests/src/uml.rs)
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
# The guest's temporary files stay in its own tmpfs. /tmp itself is left as the host's,
# so a checkout or target directory under /tmp stays visible to the guest.
export TMPDIR=/run/tmp
R={r}
setup() {{
    set -e
    mount -t proc proc /proc
    mount -t sysfs sys /sys
    mount -t tmpfs tmpfs /run
    mkdir -p /run/netns /run/tmp /run/uml-modroot/lib/modules
    mount --bind {modules_dir} /run/uml-modroot/lib/modules
    echo "$R/modprobe" > /proc/sys/kernel/modprobe
    for m in {modules}; do "$R/modprobe" "$m"; done
    ip link set lo up
}}
( setup ) > "$R/setup.log" 2>&1
rc=$?
if [ $rc -ne 0 ]; then
    echo "setup-failed $rc" > "$R/status"
else
    {env}    cd {cwd} && {command}> "$R/output" 2>&1 < /dev/null
    echo $? > "$R/status"
fi
sync
poweroff -f
"#
        ))
    }
}

static RUN_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh directory the guest can write to: under cargo's target directory (next to the
/// test binary), which the guest sees at the same path.
fn new_run_dir() -> Result<PathBuf> {
    let base = match std::env::var_os("SVCPROXY_UML_RUN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().context("current executable")?;
            // target/<profile>/deps/<test> -> target/<profile>/uml-runs
            exe.ancestors()
                .nth(2)
                .context("test binary path too short")?
                .join("uml-runs")
        }
    };
    let dir = base.join(format!(
        "{}-{}",
        std::process::id(),
        RUN_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn check_visible(what: &str, path: &Path) -> Result<()> {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    if let Some(s) = SHADOWED.iter().find(|s| path.starts_with(s)) {
        bail!(
            "{what} {} is under {s}, which the user-mode-linux guest mounts over; \
             build in a target directory elsewhere (or set SVCPROXY_UML_RUN_DIR)",
            path.display()
        );
    }
    Ok(())
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("path {path:?} is not UTF-8"))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn shadowed_paths_are_refused() {
        assert!(check_visible("x", Path::new("/run/target/debug/t")).is_err());
        assert!(check_visible("x", Path::new("/tmp/target/debug/t")).is_ok());
        assert!(check_visible("x", Path::new("/work/main/target")).is_ok());
    }
}
