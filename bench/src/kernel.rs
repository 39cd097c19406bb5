//! The compiler and nftables figures: compile time and memory, cold apply through
//! netlink against `nft -f` of the same text, one-endpoint changes, no-op syncs, and
//! our share of each commit against the kernel's.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use svcproxy_agent::nftables::Op;
use svcproxy_agent::sync::{CommitTiming, NftSyncer};
use svcproxy_bench::table::Row;
use svcproxy_bench::{
    EndpointChange, Stats, compile_parsed, compile_plan, compile_ruleset, compile_ruleset_owned,
    human, parse,
};
use svcproxy_compiler::synth::{self, Spec};
use svcproxy_tests::Netns;

use crate::Config;

/// kube-proxy's reported time for one incremental sync at 44k Services (issue 5).
const KUBE_PROXY_PARTIAL_SYNC: &str = "1.3 s (kube-proxy, 44k, published)";

pub fn compile(config: &Config) -> Result<Vec<Row>> {
    let spec = Spec::new(config.compile_services, config.compile_endpoints);
    let snapshot = synth::generate(&spec);
    eprintln!(
        "compile: {} services x {} endpoints, {} MB of JSON",
        spec.services,
        spec.endpoints,
        snapshot.source.text.len() >> 20
    );
    // Each sample ends when the IR is made; dropping it afterwards is not compiling.
    let mut samples = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let ruleset = std::hint::black_box(compile_ruleset(&snapshot.source));
        samples.push(started.elapsed());
        drop(ruleset);
    }
    let median = Stats::of(&samples).p50;
    // The same without the parsing: the "snapshot parsed -> IR" read literally.
    let mut parsed_samples = Vec::new();
    for _ in 0..5 {
        let objects = parse(&snapshot.source);
        let started = Instant::now();
        let ruleset = std::hint::black_box(compile_parsed(objects));
        parsed_samples.push(started.elapsed());
        drop(ruleset);
    }
    let parsed_median = Stats::of(&parsed_samples).p50;

    // Peak memory in a child of its own, so that nothing else this process holds counts.
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .args([
            "rss-child",
            &config.services.to_string(),
            &config.endpoints.to_string(),
        ])
        .output()
        .context("running the rss child")?;
    if !out.status.success() {
        bail!("rss child: {}", String::from_utf8_lossy(&out.stderr));
    }
    let rss_kb: u64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    let rss_mb = rss_kb as f64 / 1024.0;
    let endpoints = config.services * config.endpoints;
    Ok(vec![
        Row {
            what: format!(
                "compile {}k services x {} endpoints (JSON text -> IR, parsing included), median of 5",
                spec.services / 1000,
                spec.endpoints
            ),
            target: "< 100 ms".into(),
            ours: human(median),
            baseline: "-".into(),
            ratio: "-".into(),
            met: Some(median < Duration::from_millis(100)),
        },
        Row {
            what: format!(
                "compile {}k services x {} endpoints (parsed k8s objects -> IR: model, allocation, plan, ruleset), median of 5",
                spec.services / 1000,
                spec.endpoints
            ),
            target: "< 100 ms".into(),
            ours: human(parsed_median),
            baseline: "-".into(),
            ratio: "-".into(),
            met: Some(parsed_median < Duration::from_millis(100)),
        },
        Row {
            what: format!(
                "peak RSS compiling {}k endpoints (JSON text -> IR; the text is held until parsed)",
                endpoints / 1000
            ),
            target: "< 200 MB".into(),
            ours: format!("{rss_mb:.0} MB"),
            baseline: "-".into(),
            ratio: "-".into(),
            met: Some(rss_mb < 200.0),
        },
    ])
}

/// `rss-child SERVICES ENDPOINTS`: generates and compiles, prints the peak RSS in KiB.
pub fn rss_child(args: &[String]) -> Result<()> {
    let services: usize = args.first().context("services")?.parse()?;
    let endpoints: usize = args.get(1).context("endpoints")?.parse()?;
    let snapshot = synth::generate(&Spec::new(services, endpoints));
    // As `svcproxy compile`, `apply` and `run` do: the compiler takes the text and
    // drops it once parsed.
    std::hint::black_box(compile_ruleset_owned(snapshot.source));
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    println!("{}", usage.ru_maxrss);
    Ok(())
}

pub fn nftables(config: &Config) -> Result<Vec<Row>> {
    let spec = Spec::new(config.services, config.endpoints);
    let snapshot = synth::generate(&spec);
    let plan = compile_plan(&snapshot.source);
    let ruleset = svcproxy_compiler::nft::ruleset(&plan);
    let text = svcproxy_compiler::render_nftables(plan, &svcproxy_bench::options());
    let chains: usize = ruleset.tables.iter().map(|t| t.chains.len()).sum();
    let rules: usize = ruleset
        .tables
        .iter()
        .flat_map(|t| &t.chains)
        .map(|c| c.rules.len())
        .sum();
    let elements: usize = ruleset
        .tables
        .iter()
        .flat_map(|t| &t.sets)
        .map(|s| s.elements.len())
        .sum();
    // Sets are what the kernel looks up by name, walking a list per table: their number
    // drives the set-lookup share of a cold apply (docs/design.md).
    let sets: usize = ruleset.tables.iter().map(|t| t.sets.len()).sum();
    eprintln!(
        "nftables: {} services ({} service ports), {} endpoints: {chains} chains, {rules} rules, \
         {sets} sets, {elements} map elements, {} MB of nft text",
        spec.services,
        snapshot.service_ports,
        snapshot.endpoints,
        text.len() >> 20
    );
    let mut rows = Vec::new();
    let lockups_before = soft_lockups();

    // Baseline first, in a namespace of its own: `nft -f` of the same compiled text.
    let nft_time = if config.wants("cold") {
        let ns = Netns::new("bench-nft")?;
        let file = std::env::temp_dir().join(format!("svcproxy-bench-{}.nft", std::process::id()));
        std::fs::write(&file, &text)?;
        let started = Instant::now();
        let out = ns
            .command("nft")
            .arg("-f")
            .arg(&file)
            .output()
            .context("running nft -f")?;
        let elapsed = started.elapsed();
        let _ = std::fs::remove_file(&file);
        if !out.status.success() {
            bail!("nft -f failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        eprintln!("  nft -f: {}", human(elapsed));
        Some(elapsed)
    } else {
        None
    };

    // svcproxy: the agent's syncer in a fresh namespace.
    let ns = Netns::new("bench-agent")?;
    let (mut syncer, cold) = ns.enter(|| -> Result<_> {
        let mut syncer = NftSyncer::new()?;
        let outcome = syncer.sync(&ruleset)?;
        Ok((syncer, outcome))
    })??;
    let cold_timing = cold.timing.unwrap_or_default();
    eprintln!(
        "  netlink cold apply: {} ({} messages, {} MB; diff {}, encode {}, kernel {}, acks {})",
        human(cold.duration),
        cold.messages,
        cold_timing.bytes >> 20,
        human(cold_timing.diff),
        human(cold_timing.encode),
        human(cold_timing.kernel),
        human(cold_timing.acks),
    );
    let lockups = soft_lockups().saturating_sub(lockups_before);
    if config.wants("cold") {
        let nft_time = nft_time.expect("measured above");
        let ratio = nft_time.as_secs_f64() / cold.duration.as_secs_f64();
        rows.push(Row {
            what: format!(
                "cold apply {}k services / {}k endpoints via netlink ({} soft lockups in dmesg)",
                spec.services / 1000,
                snapshot.endpoints / 1000,
                lockups
            ),
            target: "< 10 s, >= 5x nft -f".into(),
            ours: human(cold.duration),
            baseline: format!("nft -f: {}", human(nft_time)),
            ratio: format!("{ratio:.1}x"),
            met: Some(cold.duration < Duration::from_secs(10) && ratio >= 5.0 && lockups == 0),
        });
        rows.push(overhead_row("cold apply", &cold_timing));
    }

    if config.wants("change") {
        rows.extend(endpoint_changes(config, &spec, &ruleset, &mut syncer)?);
    }
    if config.wants("noop") {
        let readback = config.sections.iter().any(|s| s == "resync");
        rows.extend(no_op(&ruleset, &mut syncer, readback)?);
    }
    if config.wants("probe") {
        let mut socket = ns.enter(svcproxy_agent::nftables::NftSocket::open)??;
        for (what, time) in crate::probe::probe(&mut socket, &ruleset)? {
            rows.push(Row {
                what: format!("kernel time of one commit at this size: {what}"),
                target: "-".into(),
                ours: human(time),
                baseline: "-".into(),
                ratio: "-".into(),
                met: None,
            });
        }
        // Last: it leaves probe objects behind, and reading the table back to repair
        // that would cost a minute at 50k services.
    }
    Ok(rows)
}

/// One endpoint added to (or removed from) a Service, over and over, through the
/// incremental path: the Service's objects (what a watch event carries) parsed and
/// planned, its fragment rendered and diffed against the previous one, the delta
/// committed.
fn endpoint_changes(
    config: &Config,
    spec: &Spec,
    ruleset: &svcproxy_compiler::nft::ir::Ruleset,
    syncer: &mut NftSyncer,
) -> Result<Vec<Row>> {
    let mut samples = Vec::new();
    let mut kernel = Vec::new();
    let mut timings = Vec::new();
    let mut messages = Vec::new();
    let mut whole_syncs = 0;
    // The changes to Services without ClientIP affinity, reported apart: an affinity
    // Service's endpoint removal also dumps its affinity maps to delete stale entries.
    let mut plain_samples = Vec::new();
    // Services spread over the cluster; each gets an endpoint added, then removed.
    let changes: Vec<EndpointChange> = (0..config.changes / 2)
        .map(|i| EndpointChange::new(spec, (i * 7919 + 13) % spec.services))
        .collect();
    for change in &changes {
        let mut current = change.fragment(0);
        for extra in [1, 0] {
            let started = Instant::now();
            let plan = compile_plan(&change.source(extra));
            let next = svcproxy_compiler::nft::fragment(&plan);
            let outcome = match syncer.sync_fragment(&current, &next) {
                Ok(outcome) => outcome,
                // A set a fragment cannot make (a changed definition): a whole sync
                // of the cluster after the change (counted in the sample).
                Err(svcproxy_agent::nftables::Error::NeedsWholeSync { .. }) => {
                    whole_syncs += 1;
                    syncer.sync(&change.full_ruleset(extra))?
                }
                Err(e) => return Err(e.into()),
            };
            samples.push(started.elapsed());
            if !change.shape.affinity {
                plain_samples.push(started.elapsed());
            }
            let t = outcome.timing.unwrap_or_default();
            kernel.push(t.kernel);
            timings.push(t);
            messages.push(outcome.messages);
            current = next;
        }
    }
    let stats = Stats::of(&samples);
    let plain = (!plain_samples.is_empty()).then(|| Stats::of(&plain_samples));
    let kstats = Stats::of(&kernel);
    let max_messages = messages.iter().max().copied().unwrap_or(0);
    eprintln!("  endpoint change: {whole_syncs} needed a whole sync");
    eprintln!(
        "  endpoint change: p50 {} p99 {} max {} (kernel p50 {} p99 {}), {}..{} messages",
        human(stats.p50),
        human(stats.p99),
        human(stats.max),
        human(kstats.p50),
        human(kstats.p99),
        messages.iter().min().copied().unwrap_or(0),
        max_messages
    );
    // The kernel must hold what a whole sync would have produced. Reading it back takes
    // minutes at 50k services, so only with `--only ...,resync`.
    if config.sections.iter().any(|s| s == "resync") {
        let (held, _) = syncer.read_owned()?;
        let check = svcproxy_agent::nftables::diff(&held, ruleset);
        // Endpoint maps the changes emptied stay, with their `pick-…` rules, until a
        // whole sync (and a whole sync would add empty headroom maps): the only
        // differences allowed.
        let empty_in_held = |name: &str| {
            held.tables
                .iter()
                .flat_map(|t| &t.sets)
                .any(|s| s.name == name && s.elements.is_empty())
        };
        let unexpected: Vec<_> = check
            .iter()
            .filter(|c| match &c.op {
                Op::DeleteSet(set) => !empty_in_held(&set.name),
                Op::AddSet(set) => !set.elements.is_empty(),
                Op::FlushChain(chain) | Op::AddRules { chain, .. } => !chain.starts_with("pick-"),
                _ => true,
            })
            .collect();
        if !unexpected.is_empty() {
            bail!(
                "after the changes the kernel differs from the ruleset: {}",
                check.summary()
            );
        }
    }
    let mean = |f: fn(&CommitTiming) -> Duration| -> Duration {
        timings.iter().map(f).sum::<Duration>() / timings.len() as u32
    };
    let typical = CommitTiming {
        diff: mean(|t| t.diff),
        encode: mean(|t| t.encode),
        kernel: mean(|t| t.kernel),
        acks: mean(|t| t.acks),
        bytes: 0,
    };
    let ratio = 1.3 / stats.p99.as_secs_f64();
    Ok(vec![
        Row {
            what: format!(
                "one endpoint change at {}k services, p99 of {} (event parsed -> kernel commit; {} messages at most)",
                spec.services / 1000,
                stats.n,
                max_messages
            ),
            target: "< 5 ms p99, delta only".into(),
            ours: match plain {
                Some(plain) => format!(
                    "p50 {} / p99 {}; without the {} changes to ClientIP-affinity Services: p99 {} of {}",
                    human(stats.p50),
                    human(stats.p99),
                    stats.n - plain.n,
                    human(plain.p99),
                    plain.n
                ),
                None => format!("p50 {} / p99 {}", human(stats.p50), human(stats.p99)),
            },
            baseline: KUBE_PROXY_PARTIAL_SYNC.into(),
            ratio: format!("{ratio:.0}x"),
            met: Some(stats.p99 < Duration::from_millis(5)),
        },
        overhead_row("endpoint change (mean)", &typical),
    ])
}

fn no_op(
    ruleset: &svcproxy_compiler::nft::ir::Ruleset,
    syncer: &mut NftSyncer,
    with_readback: bool,
) -> Result<Vec<Row>> {
    let mut samples = Vec::new();
    let mut sent = 0;
    for _ in 0..5 {
        let outcome = syncer.sync(ruleset)?;
        sent += outcome.messages;
        samples.push(outcome.duration);
    }
    let steady = Stats::of(&samples).p50;
    eprintln!("  no-op: sync {}, {sent} messages", human(steady));
    let mut rows = vec![Row {
        what: "no-op sync at the same size (diff against the committed state)".into(),
        target: "0 messages, < 50 ms".into(),
        ours: format!("{sent} messages, {}", human(steady)),
        baseline: "-".into(),
        ratio: "-".into(),
        met: Some(sent == 0 && steady < Duration::from_millis(50)),
    }];
    // The periodic resync: nobody else committed, so the generation proves there is
    // no drift and the kernel is not read back.
    let outcome = syncer.resync(ruleset)?;
    let quiet = outcome.duration;
    eprintln!(
        "  resync, generation unchanged: {}, {} messages",
        human(quiet),
        outcome.messages
    );
    rows.push(Row {
        what: "periodic resync, nobody else committed (generation unchanged: no read-back)".into(),
        target: "-".into(),
        ours: format!("{} messages, {}", outcome.messages, human(quiet)),
        baseline: "-".into(),
        ratio: "-".into(),
        met: None,
    });
    // Reading the kernel back (after anyone's commit) is slow at 50k: only on request.
    if !with_readback {
        return Ok(rows);
    }
    let started = std::time::Instant::now();
    let (held, _) = syncer.read_owned()?;
    let readback = started.elapsed();
    let check = svcproxy_agent::nftables::diff(&held, ruleset);
    eprintln!(
        "  read-back {} ({} chains)",
        human(readback),
        held.tables.iter().map(|t| t.chains.len()).sum::<usize>()
    );
    rows.push(Row {
        what: "resync after someone else's commit: read svcproxy's tables back and diff".into(),
        target: "0 messages".into(),
        ours: format!("{} differences, {}", check.len(), human(readback)),
        baseline: "-".into(),
        ratio: "-".into(),
        met: Some(check.is_empty()),
    });
    Ok(rows)
}

/// Our time (diff, encoding, acks) against the kernel's (the transaction itself).
fn overhead_row(what: &str, t: &CommitTiming) -> Row {
    let ours = t.diff + t.encode + t.acks;
    let share = ours.as_secs_f64() / t.kernel.as_secs_f64();
    Row {
        what: format!(
            "our time vs the kernel's, {what}: diff {} + encode {} + acks {} vs kernel {}",
            human(t.diff),
            human(t.encode),
            human(t.acks),
            human(t.kernel)
        ),
        target: "overhead < 25 %".into(),
        ours: format!("{:.0} %", share * 100.0),
        baseline: "-".into(),
        ratio: "-".into(),
        met: Some(share < 0.25),
    }
}

/// `soft lockup` reports in the kernel log so far.
fn soft_lockups() -> usize {
    Command::new("dmesg")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.contains("soft lockup"))
                .count()
        })
        .unwrap_or(0)
}
