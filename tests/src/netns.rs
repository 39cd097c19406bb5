//! RAII helpers over the `ip` command for network namespaces.
//!
//! Everything here shells out to `ip`, `sysctl` and friends rather than
//! talking netlink: when a test fails, each step can be replayed by hand
//! (`ip netns list` shows the namespaces, named `spt-<pid>-<n>-<label>`).

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Process-wide counter so that namespace names never repeat: the pid keeps
/// parallel test binaries (and other engineers' runs) apart, the counter
/// keeps the tests inside one binary apart.
static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A named network namespace that is deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named `spt-<pid>-<n>-<label>` with `lo` up.
    /// The label is only there to make `ip netns list` readable.
    pub fn new(label: &str) -> Result<Self> {
        let label: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("spt-{}-{id}-{label}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        // From here on, Drop cleans up even if a later step fails.
        let ns = Netns { name };
        // Without lo, traffic to the namespace's own addresses goes nowhere.
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> ARGS...`, returning stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// A command that will run inside the namespace (`ip netns exec`).
    /// Add arguments, then hand it to [`run`], [`Netns::spawn`] or
    /// `.output()`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `program args...` inside the namespace; fails on a non-zero exit.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        run(self.command(program).args(args))
    }

    /// Sets a sysctl inside the namespace (`net.*` sysctls are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])
            .map(drop)
    }

    /// Adds an address (`10.0.0.1/24` or `fd00::1/64`) to `dev`. IPv6
    /// addresses skip duplicate address detection, which would otherwise
    /// leave them unusable ("tentative") for a second or more. That does not
    /// cover the kernel's own link-local addresses: for those, set
    /// `net.ipv6.conf.{all,default}.accept_dad=0` before adding interfaces.
    pub fn add_addr(&self, dev: &str, cidr: &str) -> Result<()> {
        let mut args = vec!["addr", "add", cidr, "dev", dev];
        if cidr.contains(':') {
            args.push("nodad");
        }
        self.ip(&args).map(drop)
    }

    /// Adds a route to `dst` (a prefix, or `default`) via gateway `via`.
    /// The address family is taken from `via`, so `default` works for both.
    pub fn add_route(&self, dst: &str, via: &str) -> Result<()> {
        let family = if via.contains(':') { "-6" } else { "-4" };
        self.ip(&[family, "route", "add", dst, "via", via])
            .map(drop)
    }

    /// Runs `f` on a fresh thread that has entered this namespace, so sockets it
    /// opens (netlink included) belong to the namespace. The test's own threads stay
    /// where they are.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = format!("/run/netns/{}", self.name);
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        let inside = std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    use std::os::fd::AsRawFd;
                    // SAFETY: setns(2) on a valid namespace fd affects only this thread.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    if rc != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(f())
                })
                .join()
        });
        match inside {
            Ok(result) => result.with_context(|| format!("setns into {path}")),
            Err(_) => bail!("the thread inside {path} panicked"),
        }
    }

    /// Loads an nftables ruleset (`nft -f -`) into the namespace.
    pub fn nft(&self, ruleset: &str) -> Result<()> {
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning nft")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(ruleset.as_bytes())
                .context("writing ruleset to nft")?;
        }
        let out = child.wait_with_output().context("waiting for nft")?;
        if !out.status.success() {
            bail!(
                "nft -f - in {} failed ({}): {}\nruleset:\n{ruleset}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Starts `cmd` (from [`Netns::command`]) in the background and returns
    /// once it runs inside the namespace. The returned guard kills it on
    /// drop.
    pub fn spawn(&self, cmd: &mut Command) -> Result<Process> {
        let what = describe(cmd);
        let child = cmd.spawn().with_context(|| format!("spawning {what}"))?;
        let mut process = Process { child, what };
        // Until `ip netns exec` has called setns(), the process is not listed
        // by `ip netns pids`, so a Drop right now would miss it and it would
        // keep the namespace alive. Wait for it to get in.
        let ns_inode = fs::metadata(Path::new("/run/netns").join(&self.name))
            .with_context(|| format!("stat of namespace {}", self.name))?
            .ino();
        let proc_ns = format!("/proc/{}/ns/net", process.pid());
        wait_until(
            Duration::from_secs(5),
            &format!("{} to enter {}", process.what, self.name),
            || {
                if let Some(status) = process.try_wait()? {
                    bail!(
                        "{} exited ({status}) before entering {}",
                        process.what,
                        self.name
                    );
                }
                Ok(fs::metadata(&proc_ns).is_ok_and(|m| m.ino() == ns_inode))
            },
        )?;
        Ok(process)
    }

    /// Polls (every 10ms, up to `timeout`) until something listens on `port`
    /// inside the namespace. For servers that do not announce readiness.
    pub fn wait_listening(&self, proto: crate::Proto, port: u16, timeout: Duration) -> Result<()> {
        let kind = match proto {
            crate::Proto::Tcp => "-Hltn",
            crate::Proto::Udp => "-Hlun",
        };
        let filter = format!("sport = :{port}");
        wait_until(
            timeout,
            &format!("{proto} port {port} listening in {}", self.name),
            || Ok(!self.exec("ss", &[kind, &filter])?.trim().is_empty()),
        )
    }

    /// Whether a namespace with this name exists (`/run/netns/<name>`).
    pub fn exists(name: &str) -> bool {
        Path::new("/run/netns").join(name).exists()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // `ip netns del` only removes the name: processes still inside keep
        // the namespace (and its interfaces and addresses) alive. Kill them
        // first so that the namespace really goes away.
        if let Ok(pids) = run(Command::new("ip").args(["netns", "pids", &self.name])) {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &self.name])) {
            // Never panic in drop: this may run while unwinding a failed test.
            eprintln!("warning: {e:#}");
        }
    }
}

/// Creates a veth pair with `a_dev` in `a` and `b_dev` in `b`, both up.
/// The pair is created directly inside the namespaces, so interface names
/// only have to be unique per namespace and the host is never touched.
pub fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) -> Result<()> {
    a.ip(&[
        "link",
        "add",
        a_dev,
        "type",
        "veth",
        "peer",
        "name",
        b_dev,
        "netns",
        b.name(),
    ])?;
    a.ip(&["link", "set", a_dev, "up"])?;
    b.ip(&["link", "set", b_dev, "up"])?;
    Ok(())
}

/// A background process; killed (and reaped) on drop.
#[derive(Debug)]
pub struct Process {
    pub(crate) child: Child,
    what: String,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the process has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("checking on {}", self.what))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Fails harmlessly if it already exited; wait() reaps the zombie.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command to completion; a non-zero exit is an error that carries
/// the command line and its stderr. Returns stdout.
pub fn run(cmd: &mut Command) -> Result<String> {
    let what = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("non-UTF-8 output from {what}"))
}

/// Calls `check` every 10ms until it returns true; an error after `timeout`.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if check()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `prog arg arg...` for error messages.
fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let _ = write!(s, " {}", arg.to_string_lossy());
    }
    s
}
