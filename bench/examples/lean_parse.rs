//! What compiling would cost without k8s-openapi's types: EndpointSlices parsed into
//! structs of only the fields the model reads (borrowing the text), converted into
//! the model's own `EndpointGroup`s, against the compiler's path (k8s-openapi objects,
//! then `model::Snapshot`) on the same text. A measurement for a decision the
//! project has not made (docs/design.md, "Performance at scale", "What is left").
//!
//! `cargo run --release -p svcproxy-bench --example lean_parse -- [SERVICES] [ENDPOINTS] [RUNS]`

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;
use svcproxy_compiler::endpoints::no_hints;
use svcproxy_compiler::error::Origin;
use svcproxy_compiler::input::{self, Source};
use svcproxy_compiler::model::{self, EndpointGroup, EndpointPortSpec, EndpointSpec};
use svcproxy_compiler::nft::ir::L4Proto;
use svcproxy_compiler::synth::{self, Spec};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Deserialize)]
struct List<'a> {
    #[serde(borrow)]
    items: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct Kind<'a> {
    kind: &'a str,
}

#[derive(Deserialize)]
struct Slice<'a> {
    #[serde(borrow)]
    metadata: Meta<'a>,
    #[serde(rename = "addressType")]
    address_type: &'a str,
    #[serde(default, borrow)]
    ports: Vec<SlicePort<'a>>,
    #[serde(default, borrow)]
    endpoints: Vec<Endpoint<'a>>,
}

#[derive(Deserialize)]
struct Meta<'a> {
    name: &'a str,
    namespace: Option<&'a str>,
    #[serde(default, borrow)]
    labels: HashMap<&'a str, &'a str>,
}

#[derive(Deserialize)]
struct SlicePort<'a> {
    name: Option<&'a str>,
    protocol: Option<&'a str>,
    port: Option<i32>,
}

#[derive(Deserialize)]
struct Endpoint<'a> {
    #[serde(borrow)]
    addresses: Vec<&'a str>,
    #[serde(default)]
    conditions: Conditions,
    #[serde(rename = "nodeName")]
    node_name: Option<&'a str>,
    zone: Option<&'a str>,
}

#[derive(Deserialize, Default)]
struct Conditions {
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
}

/// The lean path: the slices of `text` as the model's groups, keyed by owner.
fn lean(text: &str) -> HashMap<String, Vec<EndpointGroup>> {
    let list: List = serde_json::from_str(text).expect("a List");
    let mut names: HashMap<&str, Arc<str>> = HashMap::new();
    let mut groups: HashMap<String, Vec<EndpointGroup>> = HashMap::new();
    for item in list.items {
        let kind: Kind = serde_json::from_str(item.get()).expect("kind");
        if kind.kind != "EndpointSlice" {
            continue;
        }
        let slice: Slice = serde_json::from_str(item.get()).expect("a slice");
        let namespace = slice.metadata.namespace.unwrap_or("default");
        let owner = slice.metadata.labels["kubernetes.io/service-name"];
        let ports = slice
            .ports
            .iter()
            .filter_map(|p| {
                Some(EndpointPortSpec {
                    name: p.name.unwrap_or_default().to_string(),
                    protocol: match p.protocol.unwrap_or("TCP") {
                        "UDP" => L4Proto::Udp,
                        "SCTP" => L4Proto::Sctp,
                        _ => L4Proto::Tcp,
                    },
                    port: u16::try_from(p.port?).ok()?,
                })
            })
            .collect();
        let endpoints = slice
            .endpoints
            .iter()
            .filter_map(|e| {
                let ip: IpAddr = e.addresses.first()?.parse().ok()?;
                let ready = e.conditions.ready.unwrap_or(true);
                Some(EndpointSpec {
                    ip,
                    node_name: intern(&mut names, e.node_name),
                    zone: intern(&mut names, e.zone),
                    ready,
                    serving: e.conditions.serving.unwrap_or(ready),
                    terminating: e.conditions.terminating.unwrap_or(false),
                    zone_hints: no_hints(),
                    node_hints: no_hints(),
                })
            })
            .collect();
        let _ = slice.address_type;
        groups
            .entry(format!("{namespace}/{owner}"))
            .or_default()
            .push(EndpointGroup {
                origin: Origin::default(),
                object: format!("EndpointSlice {namespace}/{}", slice.metadata.name),
                ports,
                endpoints,
            });
    }
    groups
}

/// One shared copy of each node name and zone, as the model keeps them.
fn intern<'t>(names: &mut HashMap<&'t str, Arc<str>>, name: Option<&'t str>) -> Option<Arc<str>> {
    name.map(|n| names.entry(n).or_insert_with(|| Arc::from(n)).clone())
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let arg = |i: usize, default: usize| {
        std::env::args()
            .nth(i)
            .map_or(default, |s| s.parse().expect("a number"))
    };
    let (services, endpoints, runs) = (arg(1, 10_000), arg(2, 10), arg(3, 7));
    let text = synth::generate(&Spec::new(services, endpoints)).source.text;
    // Only the EndpointSlices: they are the bulk, and both paths do the same with them.
    let list: List = serde_json::from_str(&text).expect("a List");
    let slices: Vec<&str> = list
        .items
        .iter()
        .map(|i| i.get())
        .filter(|i| serde_json::from_str::<Kind>(i).is_ok_and(|k| k.kind == "EndpointSlice"))
        .collect();
    let text = format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"List\",\"items\":[{}]}}",
        slices.join(",")
    );
    let source = Source {
        name: "slices.json".into(),
        text,
    };
    let (mut ours, mut leans) = (Vec::new(), Vec::new());
    let mut counts = (0, 0);
    for _ in 0..runs {
        let started = Instant::now();
        let objects = input::parse_source(&source).expect("parses");
        let snapshot = model::Snapshot::from_objects(objects).expect("valid");
        ours.push(started.elapsed());
        counts.0 = snapshot
            .slices
            .values()
            .flatten()
            .map(|g| g.endpoints.len())
            .sum();
        drop(snapshot);
        let started = Instant::now();
        let groups = lean(&source.text);
        leans.push(started.elapsed());
        counts.1 = groups.values().flatten().map(|g| g.endpoints.len()).sum();
        drop(groups);
    }
    assert_eq!(counts.0, counts.1, "both paths read every endpoint");
    println!(
        "{} EndpointSlices, {} endpoints, {} MB of JSON; median of {runs}, parse + convert:",
        slices.len(),
        counts.0,
        source.text.len() >> 20
    );
    println!("  k8s-openapi objects -> model: {:>8.1?}", median(ours));
    println!("  lean structs -> model groups: {:>8.1?}", median(leans));
}
