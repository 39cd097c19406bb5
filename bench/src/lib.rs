//! Shared pieces of svcproxy's benchmarks: compiling a generated snapshot, the
//! one-endpoint change every incremental figure uses, and small statistics.

use std::time::Duration;

use svcproxy_compiler::input::{Located, Object, Source};
use svcproxy_compiler::nft::ir::Ruleset;
use svcproxy_compiler::synth::{self, ServiceShape, Spec};
use svcproxy_compiler::{Options, Plan};

pub mod table;

/// Compile options for generated snapshots.
pub fn options() -> Options {
    Options {
        node: synth::node_context(),
        // As `svcproxy compile`, `apply` and `run` do.
        release_memory: Some(svcproxy_agent::release_memory),
        ..Options::default()
    }
}

/// Snapshot text to plan. Panics on error: a generated snapshot always compiles.
pub fn compile_plan(source: &Source) -> Plan {
    svcproxy_compiler::plan(std::slice::from_ref(source), &options())
        .expect("generated snapshots compile")
}

/// Snapshot text to the nftables IR: the compile figure. The plan is consumed and
/// memory released between phases, as `svcproxy compile` does.
pub fn compile_ruleset(source: &Source) -> Ruleset {
    svcproxy_compiler::nft::ruleset_owned(compile_plan(source), options().release_memory)
}

/// Snapshot text to the nftables IR, the text dropped once parsed (as the agent does):
/// the memory figure.
pub fn compile_ruleset_owned(source: Source) -> Ruleset {
    let plan = svcproxy_compiler::plan_owned(vec![source], &options())
        .expect("generated snapshots compile");
    svcproxy_compiler::nft::ruleset_owned(plan, options().release_memory)
}

/// Parsed objects to the nftables IR: the compile figure without the parsing (the
/// product's path from there on, as [`compile_ruleset`]).
pub fn compile_parsed(objects: Vec<Located<Object<'_>>>) -> Ruleset {
    let plan =
        svcproxy_compiler::plan_objects(objects, &options()).expect("generated snapshots compile");
    svcproxy_compiler::nft::ruleset_owned(plan, options().release_memory)
}

/// Snapshot text to objects, as [`compile_parsed`] takes them.
pub fn parse(source: &Source) -> Vec<Located<Object<'_>>> {
    svcproxy_compiler::input::parse_source(source).expect("generated snapshots parse")
}

/// Adding endpoints to one Service of a generated cluster: the objects a watch event
/// would carry, and the Service's fragment before and after.
pub struct EndpointChange {
    pub spec: Spec,
    pub service: usize,
    pub shape: ServiceShape,
}

impl EndpointChange {
    pub fn new(spec: &Spec, service: usize) -> EndpointChange {
        let shape = synth::shapes(spec).swap_remove(service);
        EndpointChange {
            spec: *spec,
            service,
            shape,
        }
    }

    /// The Service's own objects with `extra` more endpoints.
    pub fn source(&self, extra: usize) -> Source {
        synth::service_source(&self.shape, self.spec.endpoints, extra)
    }

    /// The Service's fragment of the ruleset with `extra` more endpoints.
    pub fn fragment(&self, extra: usize) -> Ruleset {
        svcproxy_compiler::nft::fragment(&compile_plan(&self.source(extra)))
    }

    /// The whole cluster's ruleset with `extra` more endpoints on this Service.
    pub fn full_ruleset(&self, extra: usize) -> Ruleset {
        compile_ruleset(&synth::generate_with_extra(&self.spec, self.service, extra).source)
    }
}

/// Percentiles of a sample of durations.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub n: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Stats {
    pub fn of(samples: &[Duration]) -> Stats {
        let mut sorted = samples.to_vec();
        sorted.sort();
        let at = |q: f64| sorted[((sorted.len() as f64 - 1.0) * q).round() as usize];
        Stats {
            n: sorted.len(),
            p50: at(0.5),
            p99: at(0.99),
            max: *sorted.last().expect("at least one sample"),
        }
    }
}

/// `1.23 s`, `45.6 ms`, `789 µs`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{:.0} µs", s * 1e6)
    }
}
