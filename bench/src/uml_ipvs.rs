//! IPVS cold start in user-mode-linux (the host kernel has no IPVS): 10k virtual
//! servers x 10 real servers, loaded by `ipvsadm -R` and by svcproxy's netlink client,
//! pipelined ([`svcproxy_agent::ipvs::pipeline`]) and one request at a time, in one
//! guest boot. The guest re-runs this binary as `svcproxy-bench ipvs-guest VS RS`.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use svcproxy_agent::ipvs::pipeline::Write;
use svcproxy_agent::ipvs::{Client, Destination, Protocol, Service};
use svcproxy_bench::human;
use svcproxy_bench::table::Row;
use svcproxy_tests::Netns;
use svcproxy_tests::uml::{self, Uml};

use crate::Config;

pub fn run(config: &Config) -> Result<Vec<Row>> {
    // The same choice as the IPVS tests: the kernel scripts/test chose for its run when
    // started from there, else the first candidate that boots (tests/src/uml/kernel.rs).
    let kernel = match uml::kernel::kernel() {
        Ok(kernel) => kernel,
        Err(why) => bail!("{why}"),
    };
    eprintln!("ipvs (uml): {kernel}");
    let exe = std::env::current_exe()?;
    let exe = exe.to_str().context("binary path")?;
    let run = Uml::new()
        .mem_mb(1024)
        .timeout(Duration::from_secs(400))
        .run(&[
            exe,
            "ipvs-guest",
            &config.ipvs_services.to_string(),
            &config.ipvs_reals.to_string(),
        ])?;
    if !run.success() {
        bail!("IPVS guest failed:\n{}", run.output);
    }
    let figure = |key: &str| -> Result<Duration> {
        run.output
            .lines()
            .find_map(|l| l.strip_prefix(&format!("RESULT {key} ")))
            .with_context(|| format!("no {key} in the guest output:\n{}", run.output))
            .and_then(|v| Ok(Duration::from_secs_f64(v.trim().parse()?)))
    };
    let (root, fresh, pipelined, sequential) = (
        figure("ipvsadm-root")?,
        figure("ipvsadm-netns")?,
        figure("pipelined")?,
        figure("sequential")?,
    );
    let ipvsadm = root.min(fresh);
    eprintln!(
        "ipvs (uml): ipvsadm -R {} (guest namespace) / {} (fresh namespace), netlink pipelined {}, \
         netlink one at a time {}",
        human(root),
        human(fresh),
        human(pipelined),
        human(sequential)
    );
    let ratio = ipvsadm.as_secs_f64() / pipelined.as_secs_f64();
    Ok(vec![Row {
        what: format!(
            "IPVS cold apply {}k virtual servers x {} real servers in user-mode-linux {} \
             (one request per round trip: {})",
            config.ipvs_services / 1000,
            config.ipvs_reals,
            kernel_release(&run.console),
            human(sequential)
        ),
        target: ">= 5x ipvsadm -R".into(),
        ours: human(pipelined),
        baseline: format!(
            "ipvsadm -R: {} (guest namespace; {} in a fresh one)",
            human(root),
            human(fresh)
        ),
        ratio: format!("{ratio:.1}x"),
        met: Some(ratio >= 5.0),
    }])
}

/// The virtual servers and their real servers: ClusterIP-like addresses, port 80, rr.
fn services(count: usize, reals: usize) -> Vec<(Service, Vec<Destination>)> {
    (0..count)
        .map(|i| {
            let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + i as u32);
            let svc = Service::new(Protocol::Tcp, IpAddr::V4(vip), 80).scheduler("rr");
            let dests = (0..reals)
                .map(|r| {
                    let n = (i * reals + r) as u32;
                    let rip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + n);
                    Destination::new(IpAddr::V4(rip), 8080, 1)
                })
                .collect();
            (svc, dests)
        })
        .collect()
}

/// `ipvs-guest VS RS`, inside user-mode-linux: prints `RESULT name seconds` lines.
///
/// Each method gets a network namespace of its own: IPVS keeps deleted real servers in
/// a per-namespace trash list for a minute and every new real server walks that list,
/// so a method run after another one's flush would pay for it (10k x 10: 164 s
/// instead of ~1 s).
pub fn guest(args: &[String]) -> Result<()> {
    let count: usize = args.first().context("VS")?.parse()?;
    let reals: usize = args.get(1).context("RS")?.parse()?;
    let set = services(count, reals);
    let mut text = String::new();
    for (svc, dests) in &set {
        let addr = format!("{}:{}", svc_addr(svc), 80);
        text.push_str(&format!("-A -t {addr} -s rr\n"));
        for d in dests {
            text.push_str(&format!("-a -t {addr} -r {}:{} -m -w 1\n", d.addr, d.port));
        }
    }

    // ipvsadm twice: in the guest's own namespace (first, while IPVS is untouched) and,
    // like our client, in a fresh one (spawned from a thread inside it: a child inherits
    // the thread's namespace, and no `ip netns exec` setup is timed). The faster one is
    // the baseline.
    let root = restore(&text, count)?;
    let fresh = Netns::new("ipvsadm")?.enter(|| restore(&text, count))??;
    println!("RESULT ipvsadm-root {}", root.as_secs_f64());
    println!("RESULT ipvsadm-netns {}", fresh.as_secs_f64());
    let ipvsadm = root.min(fresh);
    println!("RESULT ipvsadm {}", ipvsadm.as_secs_f64());

    let pipelined = Netns::new("pipelined")?.enter(|| -> Result<Duration> {
        let mut client = Client::new()?;
        let started = Instant::now();
        let mut writes = Vec::with_capacity(count * (1 + reals));
        for (svc, dests) in &set {
            writes.push(Write::NewService(svc));
            writes.extend(dests.iter().map(|d| Write::NewDest(svc.key(), d)));
        }
        client.write_pipelined(&writes)?;
        let elapsed = started.elapsed();
        check(count)?;
        Ok(elapsed)
    })??;
    println!("RESULT pipelined {}", pipelined.as_secs_f64());

    let sequential = Netns::new("sequential")?.enter(|| -> Result<Duration> {
        let mut client = Client::new()?;
        let started = Instant::now();
        for (svc, dests) in &set {
            client.new_service(svc)?;
            for d in dests {
                client.new_destination(&svc.key(), d)?;
            }
        }
        let elapsed = started.elapsed();
        check(count)?;
        Ok(elapsed)
    })??;
    println!("RESULT sequential {}", sequential.as_secs_f64());
    Ok(())
}

fn svc_addr(svc: &Service) -> String {
    match svc.key() {
        svcproxy_agent::ipvs::ServiceKey::Addr { addr, .. } => addr.to_string(),
        other => other.to_string(),
    }
}

/// `ipvsadm -R` of `text` in the calling thread's namespace, checked.
fn restore(text: &str, count: usize) -> Result<Duration> {
    let started = Instant::now();
    let mut child = Command::new("ipvsadm")
        .arg("-R")
        .stdin(Stdio::piped())
        .spawn()
        .context("ipvsadm")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(text.as_bytes())?;
    let status = child.wait()?;
    let elapsed = started.elapsed();
    if !status.success() {
        bail!("ipvsadm -R failed: {status}");
    }
    check(count)?;
    Ok(elapsed)
}

/// The calling thread's namespace holds `count` virtual servers.
fn check(count: usize) -> Result<()> {
    let services = Client::new()?.dump_services()?;
    if services.len() != count {
        bail!(
            "{} virtual servers loaded, {count} expected",
            services.len()
        );
    }
    Ok(())
}

/// The guest kernel's release, from its boot banner ("Linux version 6.1.176 ...").
fn kernel_release(console: &str) -> String {
    console
        .lines()
        .find_map(|l| l.split("Linux version ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("(release unknown)")
        .to_string()
}
