//! ClientIP affinity through the kernel: a client's endpoint is recorded in the
//! service port's affinity map by real traffic, and when that endpoint leaves, the
//! syncer deletes the entry, so the client's next connections reach an endpoint that
//! is still there instead of the address that left (for up to the 3-hour timeout).
//!
//! ```text
//!  ext 192.168.100.2 ── node 192.168.100.1 ─┬─ p1 10.244.1.10:8080
//!  fd00:100::2           fd00:100::1        │   fd00:244:1::10
//!  (the client)          (svcproxy's rules)  └─ p2 10.244.2.10:8080
//!                                                fd00:244:2::10
//! ```
//!
//! Each pod answers a TCP connection with its name. Needs root: without it the test
//! prints a skip notice and passes, unless `SVCPROXY_REQUIRE_KERNEL=1`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use svcproxy_agent::sync::NftSyncer;
use svcproxy_compiler::nft::ir::{Family, Ruleset};
use svcproxy_compiler::{Options, Source};
use svcproxy_tests::{Cluster, Netns, require_kernel};

const PODS: [(&str, u8); 2] = [("p1", 1), ("p2", 2)];

/// The two address families' versions of the test.
#[derive(Clone, Copy)]
struct Variant {
    family: Family,
    /// The table keyword in nft commands.
    keyword: &'static str,
    service: &'static str,
    client: &'static str,
}

const V4: Variant = Variant {
    family: Family::Ip,
    keyword: "ip",
    service: "10.96.0.60:80",
    client: "192.168.100.2",
};

const V6: Variant = Variant {
    family: Family::Ip6,
    keyword: "ip6",
    service: "[fd00:96::60]:80",
    client: "fd00:100::2",
};

impl Variant {
    fn pod_ip(&self, pod: &str) -> String {
        let (_, index) = PODS.iter().find(|(name, _)| *name == pod).expect("a pod");
        match self.family {
            Family::Ip => format!("10.244.{index}.10"),
            Family::Ip6 => format!("fd00:244:{index}::10"),
        }
    }

    /// `sticky` (ClientIP affinity, port 80 to the pods' 8080) over the given pods.
    fn ruleset(&self, pods: &[&str]) -> Ruleset {
        let (cluster_ip, address_type) = match self.family {
            Family::Ip => ("10.96.0.60", "IPv4"),
            Family::Ip6 => ("fd00:96::60", "IPv6"),
        };
        let mut text = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: sticky, namespace: ns}}\n\
             spec: {{clusterIP: \"{cluster_ip}\", sessionAffinity: ClientIP, \
             ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: sticky-1, namespace: ns, labels: {{kubernetes.io/service-name: sticky}}}}\n\
             addressType: {address_type}\nports: [{{name: http, port: 8080}}]\nendpoints:\n",
        );
        for pod in pods {
            text.push_str(&format!("- {{addresses: [\"{}\"]}}\n", self.pod_ip(pod)));
        }
        let plan = svcproxy_compiler::plan(
            &[Source {
                name: "sticky".into(),
                text,
            }],
            &Options::default(),
        )
        .expect("compile");
        svcproxy_compiler::nft::ruleset(&plan)
    }
}

/// A TCP server in the pod's namespace answering every connection with `name`.
fn serve(ns: &Netns, name: &'static str) {
    let listener = ns
        // Both families: IPV6_V6ONLY is off by default.
        .enter(|| TcpListener::bind("[::]:8080"))
        .expect("enter pod")
        .expect("bind 8080");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.write_all(name.as_bytes());
        }
    });
}

/// One new connection from ext to the service: the name of the pod that answered.
fn connect(ext: &Netns, v: Variant) -> String {
    let service: SocketAddr = v.service.parse().expect("address");
    ext.enter(|| {
        let mut stream = TcpStream::connect_timeout(&service, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("connect to {service}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let mut name = String::new();
        stream.read_to_string(&mut name).expect("read answer");
        name
    })
    .expect("enter ext")
}

/// What `nft list map` shows for `client` in `map` (`10.244.1.10 . 8080` from
/// `192.168.100.2 expires 2h59m59s : 10.244.1.10 . 8080`), if anything.
fn entry(node: &Netns, v: Variant, map: &str, client: &str) -> Option<String> {
    let listing = node
        .exec("nft", &["list", "map", v.keyword, "svcproxy", map])
        .expect("nft list map");
    let (_, rest) = listing.split_once(&format!("{client} "))?;
    let (_, data) = rest.split_once(" : ")?;
    let end = data.find([',', '}', '\n']).unwrap_or(data.len());
    Some(data[..end].trim().to_string())
}

fn removed_endpoint(v: Variant) {
    let mut cluster = Cluster::new().expect("topology");
    for (name, index) in PODS {
        cluster.add_pod(name, index).expect("pod");
        serve(&cluster.pod(name).expect("pod").ns, name);
    }

    let both = v.ruleset(&["p1", "p2"]);
    let table = &both.tables[0];
    assert_eq!(table.family, v.family);
    // IPv4: one map, client to `address . port`; IPv6: the address in one map and
    // the port in another (nft 1.0.6 cannot write an IPv6 `address . port` datum).
    let maps: Vec<String> = table
        .sets
        .iter()
        .filter(|s| s.flags.dynamic)
        .map(|s| s.name.clone())
        .collect();
    let expected_entry = |pod: &str| match v.family {
        Family::Ip => vec![format!("{} . 8080", v.pod_ip(pod))],
        Family::Ip6 => vec![v.pod_ip(pod), "8080".to_string()],
    };
    assert_eq!(maps.len(), expected_entry("p1").len(), "{maps:?}");
    let entries = |cluster: &Cluster| -> Vec<Option<String>> {
        maps.iter()
            .map(|m| entry(&cluster.node, v, m, v.client))
            .collect()
    };

    let mut syncer = cluster
        .node
        .enter(NftSyncer::new)
        .expect("enter node")
        .expect("syncer");
    syncer.sync(&both).expect("apply both endpoints");

    // The first connection records the client; the next ones stick to that pod.
    let chosen = connect(&cluster.ext, v);
    for _ in 0..5 {
        assert_eq!(connect(&cluster.ext, v), chosen, "affinity holds");
    }
    let recorded: Vec<Option<String>> = expected_entry(&chosen).into_iter().map(Some).collect();
    assert_eq!(entries(&cluster), recorded);

    // The chosen pod leaves the service (it still answers on its address, so a stale
    // entry would show as its name); the map stays, the entry must go.
    let other = PODS
        .iter()
        .map(|(n, _)| *n)
        .find(|n| *n != chosen)
        .expect("another pod");
    let outcome = syncer
        .sync(&v.ruleset(&[other]))
        .expect("apply one endpoint");
    assert_eq!(outcome.affinity_entries_deleted, 1, "{outcome:?}");
    let left = entries(&cluster);
    assert_eq!(left[0], None, "stale entry left: {left:?}");

    // The client now reaches the remaining pod, and sticks to it.
    for _ in 0..5 {
        assert_eq!(connect(&cluster.ext, v), other);
    }
    let recorded: Vec<Option<String>> = expected_entry(other).into_iter().map(Some).collect();
    assert_eq!(entries(&cluster), recorded);

    // Nothing left to clean when nothing is removed.
    let again = syncer.sync(&v.ruleset(&[other])).expect("no-op");
    assert_eq!(again.affinity_entries_deleted, 0);
}

#[test]
fn affinity_entries_of_a_removed_endpoint_are_deleted() {
    if !require_kernel() {
        return;
    }
    removed_endpoint(V4);
}

#[test]
fn affinity_entries_of_a_removed_endpoint_are_deleted_ipv6() {
    if !require_kernel() {
        return;
    }
    removed_endpoint(V6);
}
