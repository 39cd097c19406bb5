//! Data-plane latency: TCP connection setup through the ruleset, from a client pod to
//! a ClusterIP whose endpoint is another pod, with a small and a large ruleset loaded.
//! Every connection is new (a fresh source port), so its first packet takes the whole
//! path: conntrack miss, the nat chains (dispatch map, service chain, DNAT) and the
//! filter chains; the SYN-ACK comes back through conntrack alone. The figure is
//! `connect()` time, which includes both namespaces' stacks: what stays constant
//! between the two sizes cancels in the ratio.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use svcproxy_agent::sync::NftSyncer;
use svcproxy_bench::table::Row;
use svcproxy_bench::{Stats, human, options};
use svcproxy_compiler::input::Source;
use svcproxy_compiler::synth::{self, Spec};
use svcproxy_tests::Cluster;

use crate::Config;

const PROBE_IP: &str = "10.111.255.250";
const PROBE_PORT: u16 = 80;
const SERVER_PORT: u16 = 8080;
/// The endpoint pod and the client pod (topology indexes: 10.244.N.10).
const ENDPOINT_POD: u8 = 1;
const CLIENT_POD: u8 = 9;

pub fn run(config: &Config) -> Result<Vec<Row>> {
    // Two copies of one topology, each node with its own ruleset, measured in turns:
    // measuring one size after the other let the machine's state between the two
    // phases move the ratio by +-30 % (the direct connection, which the ruleset
    // barely touches, moved as much).
    let small = Lab::new(config, config.latency_small)?;
    let large = Lab::new(config, config.services)?;
    small.warm_up()?;
    large.warm_up()?;
    let (mut small_samples, mut large_samples) = (Samples::default(), Samples::default());
    for _ in 0..10 {
        small_samples.extend(small.sample(config.connects / 10)?);
        large_samples.extend(large.sample(config.connects / 10)?);
    }
    let (small, large) = (small_samples.stats(), large_samples.stats());
    let ratio = large.through.p50.as_secs_f64() / small.through.p50.as_secs_f64();
    Ok(vec![Row {
        what: format!(
            "first-packet latency (TCP connect via ClusterIP, p50 of {}, both sizes measured in turns): {} services vs {} (direct to the pod: {} / {})",
            large.through.n,
            config.services,
            config.latency_small,
            human(large.direct.p50),
            human(small.direct.p50),
        ),
        target: "p50 ratio <= 1.2".into(),
        ours: format!(
            "{} (p99 {})",
            human(large.through.p50),
            human(large.through.p99)
        ),
        baseline: format!(
            "{} services: {} (p99 {})",
            config.latency_small,
            human(small.through.p50),
            human(small.through.p99)
        ),
        ratio: format!("{ratio:.2}"),
        met: Some(ratio <= 1.2),
    }])
}

struct Point {
    through: Stats,
    direct: Stats,
}

#[derive(Default)]
struct Samples {
    through: Vec<Duration>,
    direct: Vec<Duration>,
}

impl Samples {
    fn extend(&mut self, (through, direct): (Vec<Duration>, Vec<Duration>)) {
        self.through.extend(through);
        self.direct.extend(direct);
    }

    fn stats(&self) -> Point {
        Point {
            through: Stats::of(&self.through),
            direct: Stats::of(&self.direct),
        }
    }
}

/// One cluster (a node, an endpoint pod, a client pod) with `services` loaded.
struct Lab {
    // Kept for their lifetimes: the namespaces, and the ruleset's owner.
    _cluster: Cluster,
    _syncer: NftSyncer,
    client: String,
    through: SocketAddr,
    direct: SocketAddr,
}

impl Lab {
    fn new(config: &Config, services: usize) -> Result<Lab> {
        let mut cluster = Cluster::new()?;
        cluster.add_pod("ep", ENDPOINT_POD)?;
        cluster.add_pod("client", CLIENT_POD)?;
        serve(&netns_path(cluster.pod("ep")?.ns.name()))?;
        let mut syncer = cluster.node.enter(NftSyncer::new)??;
        let endpoint = cluster.pod("ep")?.v4();
        let mut sources = vec![synth::generate(&Spec::new(services, config.endpoints)).source];
        sources.push(probe_service(&endpoint.to_string()));
        let plan = svcproxy_compiler::plan(&sources, &options())?;
        let ruleset = svcproxy_compiler::nft::ruleset(&plan);
        let loaded = syncer.sync(&ruleset)?;
        eprintln!(
            "latency: {services} services loaded in {}",
            human(loaded.duration)
        );
        let client = netns_path(cluster.pod("client")?.ns.name());
        Ok(Lab {
            _cluster: cluster,
            _syncer: syncer,
            client,
            through: SocketAddr::new(PROBE_IP.parse()?, PROBE_PORT),
            direct: SocketAddr::new(endpoint.into(), SERVER_PORT),
        })
    }

    /// ARP, routes, the first conntrack entries.
    fn warm_up(&self) -> Result<()> {
        self.sample(20).map(|_| ())
    }

    /// `n` connections through the Service, then `n` straight to the pod.
    fn sample(&self, n: usize) -> Result<(Vec<Duration>, Vec<Duration>)> {
        let (through, direct) = (self.through, self.direct);
        in_netns(
            &self.client,
            move || -> Result<(Vec<Duration>, Vec<Duration>)> {
                Ok((connects(through, n)?, connects(direct, n)?))
            },
        )?
    }
}

fn connects(to: SocketAddr, n: usize) -> Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let stream = TcpStream::connect_timeout(&to, Duration::from_secs(2))
            .with_context(|| format!("connecting to {to}"))?;
        out.push(started.elapsed());
        // RST instead of FIN: no TIME_WAIT pile-up over thousands of connections.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt with a live struct of the size passed.
        unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    }
    Ok(out)
}

/// The Service the probe connects to: one endpoint, the endpoint pod.
fn probe_service(endpoint: &str) -> Source {
    let text = format!(
        r#"{{"apiVersion":"v1","kind":"List","items":[
{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"probe","namespace":"bench"}},
 "spec":{{"clusterIP":"{PROBE_IP}","ports":[{{"port":{PROBE_PORT},"targetPort":{SERVER_PORT}}}]}}}},
{{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{{"name":"probe-1","namespace":"bench",
 "labels":{{"kubernetes.io/service-name":"probe"}}}},"addressType":"IPv4","ports":[{{"port":{SERVER_PORT}}}],
 "endpoints":[{{"addresses":["{endpoint}"],"nodeName":"{}"}}]}}]}}"#,
        synth::NODE_NAME
    );
    Source {
        name: "probe.json".into(),
        text,
    }
}

fn netns_path(name: &str) -> String {
    format!("/run/netns/{name}")
}

/// Runs `f` on a thread inside the named namespace and waits for it.
fn in_netns<T: Send>(path: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<T> {
                enter(path)?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in {path} panicked"))?
    })
}

/// An accept-and-close server on SERVER_PORT inside the namespace, on a detached
/// thread: it blocks in accept() until the process exits (the bench runs a few).
fn serve(path: &str) -> Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = path.to_string();
    std::thread::spawn(move || {
        let bound = enter(&path).and_then(|()| Ok(TcpListener::bind(("0.0.0.0", SERVER_PORT))?));
        match bound {
            Ok(listener) => {
                let _ = tx.send(Ok(()));
                for stream in listener.incoming() {
                    drop(stream);
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    });
    rx.recv().context("server thread")?
}

fn enter(path: &str) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns(2) on a valid namespace fd affects only the calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns {path}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}
