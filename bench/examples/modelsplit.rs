use std::time::Instant;
use svcproxy_compiler::input::{self, Object};
use svcproxy_compiler::model;
use svcproxy_compiler::synth::{self, Spec};
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
fn main() {
    let snapshot = synth::generate(&Spec::new(10_000, 10));
    for kind in ["Service", "EndpointSlice", "Endpoints", "Pod", "all"] {
        let mut t = vec![];
        let mut d = vec![];
        let mut n = 0;
        for _ in 0..7 {
            let objects: Vec<_> = input::parse_source(&snapshot.source)
                .unwrap()
                .into_iter()
                .filter(|o| {
                    kind == "all"
                        || match &o.object {
                            Object::Service(_) => kind == "Service",
                            Object::EndpointSlice(_) => kind == "EndpointSlice",
                            Object::Endpoints(_) => kind == "Endpoints",
                            Object::Pod(_) => kind == "Pod",
                        }
                })
                .collect();
            n = objects.len();
            let t0 = Instant::now();
            let s = model::Snapshot::from_objects(objects).unwrap();
            let t1 = t0.elapsed();
            let t2 = std::time::Instant::now();
            drop(s);
            let t3 = t2.elapsed();
            t.push(t1.as_secs_f64() * 1e3);
            d.push(t3.as_secs_f64() * 1e3);
        }
        t.sort_by(|a, b| a.partial_cmp(b).unwrap());
        d.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "{kind:<14} {n:>7} objects  model {:.1} ms  drop {:.1} ms",
            t[3], d[3]
        );
    }
}
