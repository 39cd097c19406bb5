//! Wrappers around the `svcproxy-testd` binary (src/bin/svcproxy-testd.rs):
//! start echo servers and run probes inside namespaces.

use std::fmt;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{OnceLock, mpsc};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::netns::{Netns, Process, run};

static TESTD: OnceLock<PathBuf> = OnceLock::new();

/// Tells the harness where `svcproxy-testd` is. Only integration tests know
/// (Cargo sets `CARGO_BIN_EXE_*` for them alone), so each test calls
/// `svcproxy_tests::set_testd_path(env!("CARGO_BIN_EXE_svcproxy-testd"))`.
/// Repeated calls are fine.
pub fn set_testd_path(path: impl Into<PathBuf>) {
    let _ = TESTD.set(path.into());
}

fn testd() -> Result<&'static PathBuf> {
    TESTD.get().ok_or_else(|| {
        anyhow!(
            "svcproxy-testd path not set: call \
             svcproxy_tests::set_testd_path(env!(\"CARGO_BIN_EXE_svcproxy-testd\")) first"
        )
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn flag(self) -> &'static str {
        match self {
            Proto::Tcp => "--tcp",
            Proto::Udp => "--udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// What one probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Server `name` answered and saw the connection coming from `peer`.
    Ok { name: String, peer: IpAddr },
    /// ECONNREFUSED: a TCP reset or an ICMP port unreachable.
    Refused,
    /// EHOSTUNREACH / ENETUNREACH (typically an ICMP error from a router).
    Unreachable,
    /// No answer within the probe timeout (dropped somewhere).
    Timeout,
}

impl Outcome {
    /// Shorthand for assertions: `Outcome::ok("web-1", EXT_V4)`.
    pub fn ok(name: &str, peer: impl Into<IpAddr>) -> Self {
        Outcome::Ok {
            name: name.to_owned(),
            peer: peer.into(),
        }
    }

    fn parse(line: &str) -> Result<Self> {
        let words: Vec<&str> = line.split_whitespace().collect();
        Ok(match words.as_slice() {
            ["ok", name, peer] => Outcome::Ok {
                name: (*name).to_owned(),
                peer: peer
                    .parse()
                    .with_context(|| format!("bad peer address in probe line {line:?}"))?,
            },
            ["refused"] => Outcome::Refused,
            ["unreachable"] => Outcome::Unreachable,
            ["timeout"] => Outcome::Timeout,
            // testd reports errors it has no outcome for (EACCES, a reset
            // after connecting, ...) as `error ...`: fail loudly on those.
            _ => bail!("unexpected probe result {line:?}"),
        })
    }
}

/// Probe settings beyond protocol and destination.
#[derive(Debug, Clone)]
pub struct ProbeOpts {
    /// Number of probes, each from a fresh socket (so a fresh source port
    /// and a fresh conntrack entry).
    pub count: usize,
    /// Source address to bind; by default the kernel picks one.
    pub src: Option<IpAddr>,
    /// Per probe: for the TCP connect, then again for the reply.
    pub timeout: Duration,
}

impl Default for ProbeOpts {
    fn default() -> Self {
        ProbeOpts {
            count: 1,
            src: None,
            timeout: Duration::from_secs(1),
        }
    }
}

/// Runs `count` probes from inside `ns` with default options.
pub fn probe(ns: &Netns, proto: Proto, addr: SocketAddr, count: usize) -> Result<Vec<Outcome>> {
    probe_with(
        ns,
        proto,
        addr,
        &ProbeOpts {
            count,
            ..ProbeOpts::default()
        },
    )
}

/// Runs probes from inside `ns`; one [`Outcome`] per probe, in order.
pub fn probe_with(
    ns: &Netns,
    proto: Proto,
    addr: SocketAddr,
    opts: &ProbeOpts,
) -> Result<Vec<Outcome>> {
    let mut cmd = ns.command(testd()?);
    cmd.arg("probe")
        .args([proto.flag(), &addr.to_string()])
        .args(["--count", &opts.count.to_string()])
        .args(["--timeout-ms", &opts.timeout.as_millis().to_string()]);
    if let Some(src) = opts.src {
        cmd.args(["--src", &src.to_string()]);
    }
    let out = run(&mut cmd)?;
    let outcomes = out
        .lines()
        .map(Outcome::parse)
        .collect::<Result<Vec<_>>>()?;
    if outcomes.len() != opts.count {
        bail!(
            "asked for {} probes, got {}: {out:?}",
            opts.count,
            outcomes.len()
        );
    }
    Ok(outcomes)
}

/// Starts `svcproxy-testd serve` in `ns`, answering as `name` on each
/// `(proto, addr)`, and returns once all sockets are bound. Dropping the
/// guard stops the server. `[::]:PORT` accepts IPv4 too.
pub fn serve(ns: &Netns, name: &str, listen: &[(Proto, SocketAddr)]) -> Result<Process> {
    let mut cmd = ns.command(testd()?);
    cmd.args(["serve", "--name", name]);
    for (proto, addr) in listen {
        cmd.args([proto.flag(), &addr.to_string()]);
    }
    // stderr is inherited so that bind errors show up in the test output.
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let mut server = ns.spawn(&mut cmd)?;
    let stdout = server
        .child
        .stdout
        .take()
        .context("testd stdout was not captured")?;

    // Reading blocks until testd prints or exits; do it on a thread so that
    // a wedged server cannot hang the test forever.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = tx.send(BufReader::new(stdout).read_line(&mut line).map(|_| line));
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(line)) if line.trim() == "ready" => Ok(server),
        Ok(Ok(line)) => {
            let status = server.try_wait()?;
            bail!(
                "testd {name} in {} did not start: said {line:?}, status {status:?}",
                ns.name()
            )
        }
        Ok(Err(e)) => Err(e).context("reading testd stdout"),
        Err(_) => bail!("testd {name} in {} not ready after 10s", ns.name()),
    }
}
