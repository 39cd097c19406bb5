//! svcproxy's compiler: a snapshot of Kubernetes Services and Endpoints in, an nftables
//! ruleset (or IPVS virtual-server set) out. No kernel access; deterministic.
//!
//! The pipeline, one module per step:
//! 1. [`input`]: YAML/JSON text into typed API objects ([`api`]);
//! 2. [`model`]: validation into a [`model::Snapshot`];
//! 3. [`allocate`]: ClusterIPs and NodePorts that manifests left out;
//! 4. [`plan`]: per service port and family, what each class of traffic does (using
//!    [`endpoints`] and [`topology`]);
//! 5. a backend renders the plan: [`nft::layout`] builds the nftables ruleset that
//!    [`nft::text`] and [`nft::json`] print; [`ipvs::layout`] builds the IPVS virtual
//!    servers and [`ipvs::table`] their companion nftables table, printed by [`ipvs::text`].

// Diagnostics carry file, object, field and message: large, but only on error paths,
// where clarity beats a boxed indirection.
#![allow(clippy::result_large_err)]

pub mod addr;
pub mod allocate;
pub mod api;
pub mod endpoints;
pub mod error;
pub mod input;
pub mod ipvs;
pub mod model;
pub mod names;
pub mod nft;
pub mod node;
pub mod plan;
pub mod synth;
pub mod topology;

use std::net::IpAddr;

pub use error::{CompileError, Diagnostic, Origin};
pub use input::Source;
pub use node::NodeContext;
pub use plan::Plan;

use model::{ServiceSpec, SnapshotBuilder};
use nft::ir::L4Proto;

/// Refuse snapshots larger than this by default (all sources together): a runaway
/// generator or a wrong path must not exhaust the node's memory.
pub const DEFAULT_MAX_INPUT_BYTES: usize = 512 << 20;

#[derive(Debug, Clone)]
pub struct Options {
    pub node: NodeContext,
    /// Treat every skipped object as a fatal error.
    pub strict: bool,
    pub max_input_bytes: usize,
    /// Called between phases, once the previous phase's memory is freed: after
    /// parsing, and in [`nft::ruleset_owned`], when the snapshot and the plan are gone
    /// and the set elements are not yet made. An allocator that keeps freed memory for
    /// reuse (mimalloc) can return it to the system here, so that the peak RSS is the
    /// largest phase's, not that plus what earlier phases left: the parsed objects,
    /// the snapshot and the plan free memory in small pieces, which the elements'
    /// large vectors cannot reuse. Each release costs page faults when the memory is
    /// used again (docs/design.md, "Compile margin"). The compiler itself never
    /// touches the allocator.
    pub release_memory: Option<fn()>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            node: NodeContext::default(),
            strict: false,
            max_input_bytes: DEFAULT_MAX_INPUT_BYTES,
            release_memory: None,
        }
    }
}

impl Options {
    fn release_memory(&self) {
        if let Some(release) = self.release_memory {
            release();
        }
    }
}

/// Parses and validates the sources and builds the plan.
pub fn plan(sources: &[Source], options: &Options) -> Result<Plan, CompileError> {
    check_input(sources, options)?;
    plan_sources(sources.iter(), options)
}

/// [`plan`], taking the sources: each source's text is dropped as soon as it is parsed,
/// so that it is not held beside the model, plan and ruleset built from it.
pub fn plan_owned(sources: Vec<Source>, options: &Options) -> Result<Plan, CompileError> {
    check_input(&sources, options)?;
    plan_sources(sources.into_iter(), options)
}

/// Validates parsed objects and builds the plan: [`plan`] without the parsing.
pub fn plan_objects(
    objects: Vec<input::Located<input::Object<'_>>>,
    options: &Options,
) -> Result<Plan, CompileError> {
    options.node.validate()?;
    let mut builder = SnapshotBuilder::default();
    for object in objects {
        builder.add(object);
    }
    plan_snapshot(builder, options)
}

fn check_input(sources: &[Source], options: &Options) -> Result<(), CompileError> {
    options.node.validate()?;
    let total: usize = sources.iter().map(|s| s.text.len()).sum();
    if total > options.max_input_bytes {
        let origin = Origin {
            file: sources
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
                .into(),
            ..Origin::default()
        };
        return Err(CompileError::Invalid(vec![Diagnostic::new(
            &origin,
            format!(
                "input is {total} bytes, over the limit of {} bytes (--max-input-bytes)",
                options.max_input_bytes
            ),
        )]));
    }
    Ok(())
}

fn plan_sources<S: std::borrow::Borrow<Source>>(
    sources: impl Iterator<Item = S>,
    options: &Options,
) -> Result<Plan, CompileError> {
    // Each object is validated as soon as it is parsed and its API form dropped: the
    // API objects of a large snapshot are never all alive at once.
    let mut builder = SnapshotBuilder::default();
    let mut errors = Vec::new();
    for source in sources {
        if let Err(e) = input::parse_source_into(source.borrow(), &mut |o| builder.add(o)) {
            errors.extend(e);
        }
        // An owned source's text goes here, before the next one is read.
        drop(source);
    }
    if !errors.is_empty() {
        return Err(CompileError::Invalid(errors));
    }
    options.release_memory();
    plan_snapshot(builder, options)
}

fn plan_snapshot(builder: SnapshotBuilder, options: &Options) -> Result<Plan, CompileError> {
    let mut snapshot = builder.finish().map_err(|mut e| {
        e.sort();
        CompileError::Invalid(e)
    })?;
    let mut warnings = std::mem::take(&mut snapshot.warnings);
    // The services move through allocation; the plan reads them from its result.
    let services = std::mem::take(&mut snapshot.services);
    let allocated = allocate::allocate(services, &options.node).map_err(CompileError::Invalid)?;
    warnings.extend(allocated.warnings);
    let conflicts = address_conflicts(&allocated.services);
    if !conflicts.is_empty() {
        return Err(CompileError::Invalid(conflicts));
    }
    warnings.sort();
    if options.strict && !warnings.is_empty() {
        return Err(CompileError::Invalid(
            warnings.into_iter().map(Diagnostic::fatal).collect(),
        ));
    }
    let families = plan::build(&snapshot, &allocated.services, &options.node);
    // No release here: `nft::ruleset_owned` releases once the plan's ports are
    // consumed, and that returns the snapshot's memory too. A release here as well
    // cost 3.4k page faults more per compile at 10k services (about 8 ms) for 7 MB of
    // peak RSS at 250k endpoints. A caller that keeps the plan and builds the ruleset
    // beside it releases after planning itself.
    drop((snapshot, allocated.services));
    Ok(Plan {
        families,
        allocations: allocated.allocations,
        warnings,
    })
}

/// Two Services claiming the same address, protocol and port (an externalIP or
/// LoadBalancer IP of one equal to an address of another) cannot both be programmed:
/// which one wins would depend on ordering. The API server does not prevent this for
/// externalIPs, so it is checked here, and fails the snapshot.
///
/// Every claim is listed and the list sorted, so that equal keys sit together, in the
/// order they were claimed: a sort of one flat vector instead of a tree insert per
/// claim (10k Services, a few claims each).
fn address_conflicts(services: &[ServiceSpec]) -> Vec<Diagnostic> {
    /// (address, protocol, port), then the claim's place: the Service's index, the
    /// claim's order within it, and which field it came from.
    type Claim = ((IpAddr, L4Proto, u16), usize, usize, usize);
    const FIELDS: [&str; 3] = [
        "spec.clusterIPs",
        "spec.externalIPs",
        "status.loadBalancer.ingress",
    ];
    let mut claims: Vec<Claim> = Vec::new();
    for (index, service) in services.iter().enumerate().filter(|(_, s)| s.is_proxied()) {
        let addresses = [
            &service.cluster_ips,
            &service.external_ips,
            &service.load_balancer_ips,
        ];
        let mut order = 0;
        for (field, ips) in addresses.iter().enumerate() {
            for ip in ips.iter() {
                for port in &service.ports {
                    claims.push(((*ip, port.protocol, port.port), index, order, field));
                    order += 1;
                }
            }
        }
    }
    claims.sort_unstable();
    let mut conflicts: Vec<(usize, usize, Diagnostic)> = Vec::new();
    for group in claims.chunk_by(|a, b| a.0 == b.0) {
        let ((ip, protocol, port), owner, _, _) = group[0];
        // The same Service listing an address twice is harmless: a Service's first
        // claim of a key speaks for all of its claims of that key.
        let firsts = group
            .iter()
            .enumerate()
            .filter(|(i, c)| *i == 0 || group[i - 1].1 != c.1);
        for (_, &(_, index, order, field)) in firsts.filter(|(_, c)| c.1 != owner) {
            let service = &services[index];
            let diagnostic = Diagnostic::new(
                &service.origin,
                format!(
                    "{ip} port {port}/{} is also claimed by Service {}",
                    protocol.keyword(),
                    services[owner].name
                ),
            )
            .object(service.object())
            .field(FIELDS[field]);
            conflicts.push((index, order, diagnostic));
        }
    }
    // In the order the Services and their fields were read, as they were reported
    // before.
    conflicts.sort_by_key(|c| (c.0, c.1));
    conflicts.into_iter().map(|c| c.2).collect()
}

/// The comment lines printed above a rendered ruleset.
pub fn header(plan: &Plan, backend: &str) -> Vec<String> {
    let mut lines = vec![format!(
        "svcproxy {backend} ruleset, generated by `svcproxy compile`; the same snapshot always gives the same output"
    )];
    for allocation in &plan.allocations {
        lines.push(format!(
            "allocated for {}: {} (the manifest has none)",
            allocation.service, allocation.what
        ));
    }
    lines
}

/// The nftables ruleset as `nft -f` text. The plan is consumed as the ruleset is
/// built ([`nft::ruleset_owned`]), so that both are never whole in memory together.
pub fn render_nftables(plan: Plan, options: &Options) -> String {
    let mut header = header(&plan, "nftables");
    header.push(
        "apply with `nft -f FILE`: it replaces the svcproxy tables in one transaction".into(),
    );
    nft::text::render(&nft::ruleset_owned(plan, options.release_memory), &header)
}

/// The nftables ruleset as `nft -j` JSON (the plan consumed, as [`render_nftables`]).
pub fn render_nftables_json(plan: Plan, options: &Options) -> String {
    let ruleset = nft::ruleset_owned(plan, options.release_memory);
    let mut text = serde_json::to_string_pretty(&nft::json::render(&ruleset)).unwrap_or_default();
    text.push('\n');
    text
}

/// The IPVS virtual servers as `ipvsadm` restore text. Its `#` lines must be left out
/// for `ipvsadm -R` (the header says how); `ipvsadm-restore` drops them itself.
pub fn render_ipvs(plan: &Plan, state: &ipvs::IpvsState) -> String {
    ipvs::text::render_ipvsadm(state, &ipvs_header(plan))
}

/// The whole IPVS-mode state: the virtual servers, the addresses to bind on the dummy
/// interface and the companion nftables table, in sections ([`ipvs::text::section`]).
pub fn render_ipvs_full(plan: &Plan, state: &ipvs::IpvsState) -> String {
    let mut nft_header = header(plan, "IPVS-mode nftables");
    nft_header.push(
        "apply with `nft -f FILE`: it replaces the svcproxy-ipvs tables in one transaction".into(),
    );
    let nft_text = nft::text::render(&state.companion, &nft_header);
    ipvs::text::render_full(state, &ipvs_header(plan), &nft_text)
}

fn ipvs_header(plan: &Plan) -> Vec<String> {
    let mut lines = header(plan, "IPVS");
    lines.push(ipvs::text::LOAD_HINT.into());
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(text: &str) -> Result<Plan, CompileError> {
        let source = Source {
            name: "in.yaml".into(),
            text: text.into(),
        };
        plan(&[source], &Options::default())
    }

    const SERVICE: &str = "apiVersion: v1\nkind: Service\n";

    #[test]
    fn address_conflicts_name_each_later_claimant_once_in_reading_order() {
        let text = format!(
            "{SERVICE}metadata: {{name: a, namespace: demo}}\n\
             spec: {{clusterIP: 10.96.0.1, ports: [{{port: 80}}]}}\n---\n\
             {SERVICE}metadata: {{name: b, namespace: demo}}\n\
             spec: {{type: LoadBalancer, clusterIP: 10.96.0.2, externalIPs: [10.96.0.1],\n\
             ports: [{{port: 80}}]}}\n\
             status: {{loadBalancer: {{ingress: [{{ip: 10.96.0.1}}]}}}}\n---\n\
             {SERVICE}metadata: {{name: c, namespace: demo}}\n\
             spec: {{clusterIP: 10.96.0.3, externalIPs: [10.96.0.2, 10.96.0.1],\n\
             ports: [{{port: 80}}, {{port: 81, name: x}}]}}\n"
        );
        let Err(CompileError::Invalid(errors)) = compile(&text) else {
            panic!("conflicts fail the snapshot");
        };
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            lines,
            [
                // b claims 10.96.0.1:80 twice (externalIP and ingress): one conflict,
                // named by its first field.
                "in.yaml (document 2): Service demo/b: spec.externalIPs: 10.96.0.1 port 80/tcp \
                 is also claimed by Service demo/a",
                "in.yaml (document 3): Service demo/c: spec.externalIPs: 10.96.0.2 port 80/tcp \
                 is also claimed by Service demo/b",
                "in.yaml (document 3): Service demo/c: spec.externalIPs: 10.96.0.1 port 80/tcp \
                 is also claimed by Service demo/a",
            ]
        );
    }
}
