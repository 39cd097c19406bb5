//! `svcproxy-bench`: the kernel half of issue 5's figures, each beside its baseline
//! measured in the same run, printed as one Markdown table.
//!
//! Run as root (it creates network namespaces; the IPVS row boots user-mode-linux):
//!
//! ```sh
//! cargo build --release -p svcproxy-bench && target/release/svcproxy-bench
//! ```
//!
//! `--quick` runs every section at a tenth of the size (a smoke test, not the figures).
//! `--only compile,cold,change,noop,probe,latency,ipvs` picks sections; `resync` (not
//! in the default run: minutes at 50k services) adds a no-op resync that reads the
//! kernel back.

mod kernel;
mod latency;
mod probe;
mod uml_ipvs;

/// The allocator the `svcproxy` binary uses, so the figures are the product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Instant;

use anyhow::{Result, bail};
use svcproxy_bench::table::{self, Row};

#[derive(Debug, Clone)]
pub struct Config {
    /// Services and endpoints per Service of the big cluster (issue 5: 50k / 250k).
    pub services: usize,
    pub endpoints: usize,
    /// The compile figure's cluster (10k x 10).
    pub compile_services: usize,
    pub compile_endpoints: usize,
    /// IPVS: virtual servers x real servers (10k x 10).
    pub ipvs_services: usize,
    pub ipvs_reals: usize,
    /// One-endpoint changes timed.
    pub changes: usize,
    /// Connections timed per latency point.
    pub connects: usize,
    pub latency_small: usize,
    pub sections: Vec<String>,
}

impl Config {
    fn full() -> Config {
        Config {
            services: 50_000,
            endpoints: 5,
            compile_services: 10_000,
            compile_endpoints: 10,
            ipvs_services: 10_000,
            ipvs_reals: 10,
            changes: 60,
            connects: 2000,
            latency_small: 100,
            sections: Vec::new(),
        }
    }

    fn quick() -> Config {
        Config {
            services: 5_000,
            compile_services: 1_000,
            ipvs_services: 1_000,
            changes: 50,
            connects: 300,
            ..Config::full()
        }
    }

    fn wants(&self, section: &str) -> bool {
        self.sections.is_empty() || self.sections.iter().any(|s| s == section)
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Internal entry points: a child process measuring peak memory, the IPVS guest.
    match args.first().map(String::as_str) {
        Some("rss-child") => return kernel::rss_child(&args[1..]),
        Some("ipvs-guest") => return uml_ipvs::guest(&args[1..]),
        _ => {}
    }
    let mut config = Config::full();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--quick" => {
                let sections = std::mem::take(&mut config.sections);
                config = Config {
                    sections,
                    ..Config::quick()
                }
            }
            "--only" => match rest.next() {
                Some(list) => config.sections = list.split(',').map(String::from).collect(),
                None => bail!("--only needs a list of sections"),
            },
            "--services" => config.services = parse(rest.next())?,
            "--endpoints" => config.endpoints = parse(rest.next())?,
            other => bail!("unknown argument {other:?} (see the module docs)"),
        }
    }
    let started = Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    if config.wants("compile") {
        rows.extend(kernel::compile(&config)?);
    }
    if ["cold", "change", "noop", "probe"]
        .iter()
        .any(|s| config.wants(s))
    {
        rows.extend(kernel::nftables(&config)?);
    }
    if config.wants("ipvs") {
        rows.extend(uml_ipvs::run(&config)?);
    }
    if config.wants("latency") {
        rows.extend(latency::run(&config)?);
    }
    println!();
    println!("{}", table::render(&rows));
    println!(
        "{} services x {} endpoints; total bench time {}",
        config.services,
        config.endpoints,
        svcproxy_bench::human(started.elapsed())
    );
    Ok(())
}

fn parse(value: Option<&String>) -> Result<usize> {
    match value {
        Some(v) => Ok(v.parse()?),
        None => bail!("missing number"),
    }
}
