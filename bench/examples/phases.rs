//! Where compile time goes, phase by phase (a profiling aid).
//!
//! `cargo run --release -p svcproxy-bench --example phases -- SERVICES ENDPOINTS [RUNS]`
//!
//! Prints, per phase, the median over RUNS (default 7) of the wall time, of the
//! thread's CPU time and its system part, and of the minor page faults: on a shared
//! machine the CPU time is the steadier of the times, and the faults do not depend
//! on the machine's speed at all.

/// The allocator the `svcproxy` binary uses, so the figures are the product's, with
/// a count of the bytes allocated (`--rss` prints it per step).
#[global_allocator]
static ALLOCATOR: Counting = Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Counting only in `--rss` mode: the atomics would otherwise weigh on the timings.
static COUNTING: AtomicBool = AtomicBool::new(false);

struct Counting;

impl Counting {
    fn add(size: usize) {
        if !COUNTING.load(Ordering::Relaxed) {
            return;
        }
        let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
        PEAK.fetch_max(live, Ordering::Relaxed);
    }
    fn sub(size: usize) {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_sub(size, Ordering::Relaxed);
        }
    }
}

// SAFETY: every call is forwarded to mimalloc unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Counting::add(layout.size());
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Counting::add(layout.size());
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        Counting::sub(layout.size());
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Counting::sub(layout.size());
        Counting::add(new_size);
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

/// Live and peak allocated bytes (MB), and the process's peak RSS (MB).
fn memory(step: &str) {
    let mb = |b: usize| b as f64 / (1 << 20) as f64;
    println!(
        "{step:<32} live {:>6.0} MB  peak live {:>6.0} MB  peak RSS {:>6.0} MB",
        mb(LIVE.load(Ordering::Relaxed)),
        mb(PEAK.load(Ordering::Relaxed)),
        peak_mb()
    );
}

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use svcproxy_bench::{compile_parsed, compile_ruleset};
use svcproxy_compiler::synth::{self, Spec};
use svcproxy_compiler::{allocate, input, model, nft, plan};

/// One sample of a phase: wall time, this thread's CPU time, the part of it spent
/// in the kernel, and the minor page faults taken (memory touched for the first time,
/// or again after it was returned to the system).
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    wall: Duration,
    cpu: Duration,
    sys: Duration,
    faults: u64,
}

/// This thread's CPU time, its system part, and its minor faults so far.
fn thread_usage() -> (Duration, Duration, u64) {
    // SAFETY: clock_gettime and getrusage fill the structs they are given.
    let (ts, usage) = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        (ts, usage)
    };
    let sys = Duration::new(
        usage.ru_stime.tv_sec as u64,
        usage.ru_stime.tv_usec as u32 * 1000,
    );
    (
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32),
        sys,
        usage.ru_minflt as u64,
    )
}

/// Runs `f`, returning its value and its [`Sample`].
fn timed<T>(f: impl FnOnce() -> T) -> (T, Sample) {
    let (wall, (cpu, sys, faults)) = (Instant::now(), thread_usage());
    let value = f();
    let (cpu_after, sys_after, faults_after) = thread_usage();
    let sample = Sample {
        wall: wall.elapsed(),
        cpu: cpu_after - cpu,
        sys: sys_after - sys,
        faults: faults_after - faults,
    };
    (value, sample)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Peak RSS of the process so far, in MB.
fn peak_mb() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    usage.ru_maxrss as f64 / 1024.0
}

/// `--rss`: one pass through the product's path (`svcproxy_compiler::plan_owned`, step by
/// step), printing the memory after each step, in a fresh process.
fn rss_trace(services: usize, endpoints: usize) {
    let snapshot = synth::generate(&Spec::new(services, endpoints));
    println!("{} MB of JSON", snapshot.source.text.len() >> 20);
    memory("generated");
    let node = synth::node_context();
    let mut builder = model::SnapshotBuilder::default();
    input::parse_source_into(&snapshot.source, &mut |o| builder.add(o)).expect("parses");
    memory("parsed and converted");
    drop(snapshot);
    memory("text dropped");
    // COLLECT=1: the releases `svcproxy compile` makes (after parsing, before the
    // elements); or a comma-separated choice of `parse`, `plan` (the release `apply`
    // and `run` add, as they keep the plan) and `elements`.
    let collect = std::env::var("COLLECT").unwrap_or_default();
    let at = |point: &str| match collect.as_str() {
        "1" => point != "plan",
        list => list.split(',').any(|p| p == point),
    };
    if at("parse") {
        // What `Options::release_memory` does in the product, after parsing.
        svcproxy_agent::release_memory();
        memory("collected");
    }
    let mut snap = builder.finish().expect("valid");
    memory("snapshot");
    let allocated =
        allocate::allocate(std::mem::take(&mut snap.services), &node).expect("allocates");
    memory("allocated");
    let families = plan::build(&snap, &allocated.services, &node);
    memory("planned");
    let p = svcproxy_compiler::Plan {
        families,
        allocations: Vec::new(),
        warnings: Vec::new(),
    };
    drop((snap, allocated));
    memory("snapshot dropped");
    if at("plan") {
        // After planning, as `apply` and `run` do.
        svcproxy_agent::release_memory();
        memory("collected");
    }
    let sizes = std::env::var_os("SIZES").is_some();
    // As the product's compile does: the plan consumed while the ruleset is built;
    // with SIZES kept, for its figures.
    let (rules, p) = if sizes {
        (nft::ruleset(&p), Some(p))
    } else {
        (
            // As the product does, releasing memory before the elements are made.
            nft::ruleset_owned(
                p,
                at("elements").then_some(svcproxy_agent::release_memory as fn()),
            ),
            None,
        )
    };
    memory("ruleset");
    if sizes {
        use svcproxy_compiler::nft::ir::*;
        println!(
            "sizes: Stmt {} Rule {} Chain {} Element {} KeyValue {} Verdict {} Endpoint {} ServicePortPlan {}",
            size_of::<Stmt>(),
            size_of::<Rule>(),
            size_of::<Chain>(),
            size_of::<Element>(),
            size_of::<KeyValue>(),
            size_of::<Verdict>(),
            size_of::<svcproxy_compiler::endpoints::Endpoint>(),
            size_of::<plan::ServicePortPlan>()
        );
        for t in &rules.tables {
            let rules_n: usize = t.chains.iter().map(|c| c.rules.len()).sum();
            let stmts: usize = t
                .chains
                .iter()
                .flat_map(|c| &c.rules)
                .map(|r| r.stmts.len())
                .sum();
            println!(
                "table {:?}: {} chains, {rules_n} rules, {stmts} stmts, {} sets",
                t.family,
                t.chains.len(),
                t.sets.len()
            );
            for set in t.sets.iter().filter(|s| s.elements.len() > 1000) {
                println!(
                    "  set {}: {} elements (capacity {})",
                    set.name,
                    set.elements.len(),
                    set.elements.capacity()
                );
            }
        }
        for f in p.iter().flat_map(|p| &p.families) {
            let cl: usize = f.ports.iter().map(|p| p.cluster_endpoints.len()).sum();
            let lo: usize = f.ports.iter().map(|p| p.local_endpoints.len()).sum();
            println!(
                "plan {:?}: {} ports, endpoints cluster {cl} local {lo}",
                f.family,
                f.ports.len()
            );
        }
    }
    drop(rules);
}

/// `PHASE=model|allocate|plan|ruleset`: runs that one phase RUNS times (the others
/// once), for a profiler to look at; `PHASE=parsed`: parsing and `compile_parsed`.
fn profile_phase(
    phase: &str,
    source: &input::Source,
    node: &svcproxy_compiler::NodeContext,
    runs: usize,
) {
    if phase == "parsed" {
        for _ in 0..runs {
            let objects = input::parse_source(source).expect("parses");
            std::hint::black_box(compile_parsed(objects));
        }
        return;
    }
    let repeat = |name: &str| if name == phase { runs } else { 1 };
    let mut snap = None;
    for _ in 0..repeat("model") {
        let objects = input::parse_source(source).expect("parses");
        snap = Some(model::Snapshot::from_objects(objects).expect("valid"));
    }
    let snap = snap.expect("one run");
    let mut allocated = None;
    for _ in 0..repeat("allocate") {
        allocated = Some(allocate::allocate(snap.services.clone(), node).expect("allocates"));
    }
    let allocated = allocated.expect("one run");
    let mut families = Vec::new();
    for _ in 0..repeat("plan") {
        families = plan::build(&snap, &allocated.services, node);
    }
    let p = svcproxy_compiler::Plan {
        families,
        allocations: Vec::new(),
        warnings: Vec::new(),
    };
    for _ in 0..repeat("ruleset") {
        std::hint::black_box(nft::ruleset(&p));
    }
}

fn main() {
    if std::env::args().any(|a| a == "--rss") {
        let mut numbers = std::env::args().skip(1).filter_map(|a| a.parse().ok());
        let services = numbers.next().unwrap_or(50_000);
        let endpoints = numbers.next().unwrap_or(5);
        COUNTING.store(true, Ordering::Relaxed);
        return rss_trace(services, endpoints);
    }
    let arg = |i: usize, default: usize| {
        std::env::args()
            .nth(i)
            .map_or(default, |s| s.parse().expect("a number"))
    };
    let (services, endpoints, runs) = (arg(1, 10_000), arg(2, 10), arg(3, 7));
    let snapshot = synth::generate(&Spec::new(services, endpoints));
    let node = synth::node_context();
    if let Ok(phase) = std::env::var("PHASE") {
        return profile_phase(&phase, &snapshot.source, &node, runs);
    }
    let phases = [
        "parse (text -> objects)",
        "model (objects -> snapshot)",
        "allocate",
        "plan",
        "ruleset (plan -> IR)",
        "parsed objects -> IR (compile_parsed)",
        "text -> IR (compile_ruleset)",
    ];
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); phases.len()];
    let mut chains = 0;
    for _ in 0..runs {
        let (objects, t) = timed(|| input::parse_source(&snapshot.source).expect("parses"));
        samples[0].push(t);
        let (snap, t) = timed(|| model::Snapshot::from_objects(objects).expect("valid"));
        samples[1].push(t);
        let (allocated, t) = timed(|| allocate::allocate(snap.services.clone(), &node));
        let allocated = allocated.expect("allocates");
        samples[2].push(t);
        let (families, t) = timed(|| plan::build(&snap, &allocated.services, &node));
        samples[3].push(t);
        let p = svcproxy_compiler::Plan {
            families,
            allocations: Vec::new(),
            warnings: Vec::new(),
        };
        let (rules, t) = timed(|| nft::ruleset(&p));
        samples[4].push(t);
        chains = rules.tables.iter().map(|t| t.chains.len()).sum::<usize>();
        drop((rules, p, allocated, snap));

        let objects = input::parse_source(&snapshot.source).expect("parses");
        let (rules, t) = timed(|| compile_parsed(objects));
        samples[5].push(t);
        drop(rules);
        let (rules, t) = timed(|| compile_ruleset(&snapshot.source));
        samples[6].push(t);
        drop(rules);
    }
    println!(
        "{services} services x {endpoints} endpoints, {} MB of JSON, {chains} chains; median of {runs}",
        snapshot.source.text.len() >> 20
    );
    println!(
        "{:<40} {:>10} {:>10} {:>10} {:>8}",
        "phase", "wall", "cpu", "sys", "faults"
    );
    for (name, s) in phases.iter().zip(samples) {
        let wall = median(s.iter().map(|t| t.wall).collect());
        let cpu = median(s.iter().map(|t| t.cpu).collect());
        let sys = median(s.iter().map(|t| t.sys).collect());
        let mut faults: Vec<u64> = s.iter().map(|t| t.faults).collect();
        faults.sort_unstable();
        let faults = faults[faults.len() / 2];
        println!("{name:<40} {wall:>10.1?} {cpu:>10.1?} {sys:>10.1?} {faults:>8}");
    }
}
