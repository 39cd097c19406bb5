//! Kernel tests of conntrack cleanup through ctnetlink, with real UDP flows in fresh
//! network namespaces:
//!
//! ```text
//!  client 10.0.0.2 ── node 10.0.0.1 ─┬─ 10.244.1.1 ── pod1 10.244.1.10
//!  (fd00:c::2)        (nft DNAT)     └─ 10.244.2.1 ── pod2 10.244.2.10
//! ```
//!
//! The node DNATs the service 10.96.0.53:53 (fd00:96::53) to a pod's port 5353; each pod
//! answers with its own name, so the client sees which pod a packet reached. A client
//! socket keeps its source port (40000), so all it sends to a service is one entry.
//! `conntrack -L` is the oracle for the node's table.
//!
//! Needs root. Without it the tests print "skipped: needs root" and pass, unless
//! `SVCPROXY_REQUIRE_KERNEL=1` (CI), in which case they fail.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use svcproxy_agent::conntrack::{self, Conntrack, DeleteStats, Family, Flow, FlowFilter, TCP, UDP};

mod common;
use common::{Netns, require_kernel};

const CLIENT_PORT: u16 = 40000;
const SERVICE_PORT: u16 = 53;
const POD_PORT: u16 = 5353;
const TIMEOUT: Duration = Duration::from_secs(3);
/// How long to wait before concluding that no pod got a datagram.
const SILENCE: Duration = Duration::from_millis(300);

// ----- the lab -----

/// Addresses of one IP family.
struct Plan {
    family: Family,
    client: IpAddr,
    /// Node side of the client link (the client's gateway).
    node: IpAddr,
    /// (node side, pod) per pod link.
    pods: [(IpAddr, IpAddr); 2],
    service: IpAddr,
    /// A second service, DNAT'd to pod1 as well.
    other_service: IpAddr,
    prefix: &'static str,
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn v4() -> Plan {
    Plan {
        family: Family::V4,
        client: ip("10.0.0.2"),
        node: ip("10.0.0.1"),
        pods: [
            (ip("10.244.1.1"), ip("10.244.1.10")),
            (ip("10.244.2.1"), ip("10.244.2.10")),
        ],
        service: ip("10.96.0.53"),
        other_service: ip("10.96.0.54"),
        prefix: "24",
    }
}

fn v6() -> Plan {
    Plan {
        family: Family::V6,
        client: ip("fd00:c::2"),
        node: ip("fd00:c::1"),
        pods: [
            (ip("fd00:244:1::1"), ip("fd00:244:1::10")),
            (ip("fd00:244:2::1"), ip("fd00:244:2::10")),
        ],
        service: ip("fd00:96::53"),
        other_service: ip("fd00:96::54"),
        prefix: "64",
    }
}

struct Lab {
    plan: Plan,
    client: Netns,
    node: Netns,
    /// Kept for their lifetime: the pods' namespaces.
    _pods: [Netns; 2],
    /// One UDP socket per pod on POD_PORT, plus pod1's TCP listener.
    pod_udp: [UdpSocket; 2],
    pod1_tcp: TcpListener,
}

impl Lab {
    fn new(plan: Plan) -> Lab {
        let client = Netns::new("client");
        let node = Netns::new("node");
        let pods = [Netns::new("pod1"), Netns::new("pod2")];
        let add = |ns: &Netns, addr: IpAddr, dev: &str| {
            ns.ip(&[
                "addr",
                "add",
                &format!("{addr}/{}", plan.prefix),
                "dev",
                dev,
            ]);
            ns.ip(&["link", "set", dev, "up"]);
        };
        let link = |peer: &Netns, node_dev: &str, node_addr: IpAddr, peer_addr: IpAddr| {
            node.ip(&[
                "link",
                "add",
                node_dev,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                peer.name(),
            ]);
            add(&node, node_addr, node_dev);
            add(peer, peer_addr, "eth0");
            peer.ip(&["route", "add", "default", "via", &node_addr.to_string()]);
        };
        link(&client, "cli", plan.node, plan.client);
        for (i, pod) in pods.iter().enumerate() {
            let (node_side, pod_addr) = plan.pods[i];
            link(pod, &format!("pod{}", i + 1), node_side, pod_addr);
        }
        node.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        node.exec("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"]);

        let any: IpAddr = match plan.family {
            Family::V4 => ip("0.0.0.0"),
            Family::V6 => ip("::"),
        };
        let pod_udp = [0, 1]
            .map(|i| pods[i].enter(|| UdpSocket::bind((any, POD_PORT)).expect("bind pod udp")));
        let pod1_tcp = pods[0].enter(|| TcpListener::bind((any, POD_PORT)).expect("listen"));
        let lab = Lab {
            plan,
            client,
            node,
            _pods: pods,
            pod_udp,
            pod1_tcp,
        };
        lab.route_service_to(Some(0));
        lab
    }

    /// (Re)writes the node's DNAT rules: the service's UDP port to pod `pod`, or nowhere;
    /// its TCP port and the other service's UDP port to pod1, always.
    fn route_service_to(&self, pod: Option<usize>) {
        let l3 = match self.plan.family {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        };
        let to = |i: usize| SocketAddr::new(self.plan.pods[i].1, POD_PORT);
        let (svc, other) = (self.plan.service, self.plan.other_service);
        let udp_rule = pod.map_or(String::new(), |pod| {
            format!(
                "{l3} daddr {svc} udp dport {SERVICE_PORT} dnat {l3} to {}",
                to(pod)
            )
        });
        let ruleset = format!(
            "flush ruleset
            table inet svc {{
                chain prerouting {{
                    type nat hook prerouting priority dstnat; policy accept;
                    {udp_rule}
                    {l3} daddr {svc} tcp dport {SERVICE_PORT} dnat {l3} to {}
                    {l3} daddr {other} udp dport {SERVICE_PORT} dnat {l3} to {}
                }}
            }}",
            to(0),
            to(0)
        );
        self.node.nft_load(&ruleset);
    }

    /// A client UDP socket on `port`: every datagram it sends to a service belongs to
    /// one conntrack entry.
    fn client_socket(&self, port: u16) -> UdpSocket {
        let addr = SocketAddr::new(self.plan.client, port);
        let socket = self
            .client
            .enter(|| UdpSocket::bind(addr).expect("bind client"));
        socket.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        socket
    }

    /// Sends one datagram to `service`; the pod that gets it answers with its name,
    /// which the client must receive from the service address. Returns the pod's name.
    fn exchange(&self, client: &UdpSocket, service: IpAddr) -> &'static str {
        let pod = self.try_exchange(client, service, TIMEOUT);
        pod.unwrap_or_else(|| panic!("no pod received the datagram to {service}"))
    }

    /// Like [`Lab::exchange`], but `None` if no pod gets the datagram within `wait`.
    fn try_exchange(
        &self,
        client: &UdpSocket,
        service: IpAddr,
        wait: Duration,
    ) -> Option<&'static str> {
        let service = SocketAddr::new(service, SERVICE_PORT);
        client.send_to(b"ping", service).expect("client send");

        let mut fds = self.pod_udp.each_ref().map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: `fds` is a live array of pollfd and its length is passed alongside.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, wait.as_millis() as i32) };
        assert!(ready >= 0, "poll: {}", std::io::Error::last_os_error());
        let pod = fds.iter().position(|f| f.revents & libc::POLLIN != 0)?;
        let name = ["pod1", "pod2"][pod];
        let mut buf = [0u8; 64];
        let (_, from) = self.pod_udp[pod].recv_from(&mut buf).expect("pod recv");
        // No source NAT: the pod sees the client as it is.
        assert_eq!(from, client.local_addr().expect("client address"));
        self.pod_udp[pod]
            .send_to(name.as_bytes(), from)
            .expect("pod reply");

        let (n, from) = client
            .recv_from(&mut buf)
            .expect("client receives the reply");
        assert_eq!(from, service, "reply un-NATed to the service address");
        assert_eq!(&buf[..n], name.as_bytes());
        Some(name)
    }

    fn pod(&self, i: usize) -> IpAddr {
        self.plan.pods[i].1
    }

    /// kube-proxy's filter for "endpoint `pod` of the service's UDP port went away".
    fn stale_endpoint_filter(&self, pod: usize) -> FlowFilter {
        FlowFilter {
            orig_dst: Some(self.plan.service),
            orig_dst_port: Some(SERVICE_PORT),
            reply_src: Some(self.pod(pod)),
            ..FlowFilter::any(self.plan.family, UDP)
        }
    }

    fn delete(&self, filters: &[FlowFilter]) -> usize {
        self.node
            .enter(|| conntrack::delete_flows(filters))
            .expect("delete_flows")
    }

    fn delete_with_stats(&self, filters: &[FlowFilter]) -> DeleteStats {
        self.node
            .enter(|| Conntrack::open()?.delete_matching(filters))
            .expect("delete_matching")
    }

    fn list(&self, filter: &FlowFilter) -> Vec<Flow> {
        self.node
            .enter(|| Conntrack::open()?.list(filter))
            .expect("list")
    }
}

fn timed(name: &str, body: impl FnOnce()) {
    let start = Instant::now();
    body();
    println!("{name}: {:?}", start.elapsed());
}

// ----- tests -----

/// The whole story: the entry pins the client to pod1 after the rule moved to pod2,
/// until delete_flows removes it.
fn stale_entry_scenario(plan: Plan) {
    let lab = Lab::new(plan);
    let client = lab.client_socket(CLIENT_PORT);
    let service = lab.plan.service;
    assert_eq!(lab.exchange(&client, service), "pod1");

    // The entry exists: the conntrack tool and our own dump agree.
    let listed = lab.node.conntrack_list("udp", service);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(
        listed[0].contains(&format!("src={}", lab.pod(0))),
        "{listed:?}"
    );
    let filter = lab.stale_endpoint_filter(0);
    let flows = lab.list(&filter);
    assert_eq!(flows.len(), 1, "{flows:?}");
    let flow = &flows[0];
    assert_eq!(
        (flow.orig.src, flow.orig.src_port),
        (lab.plan.client, Some(CLIENT_PORT))
    );
    assert_eq!((flow.orig.dst, flow.orig.dst_port), (service, Some(53)));
    assert_eq!(
        (flow.reply.src, flow.reply.src_port),
        (lab.pod(0), Some(5353))
    );
    assert_eq!(flow.orig.protocol, UDP);
    assert_eq!(flow.zone, 0);

    // The rule now says pod2, but the entry still says pod1.
    lab.route_service_to(Some(1));
    for _ in 0..3 {
        assert_eq!(lab.exchange(&client, service), "pod1", "stale entry");
    }

    // Cleanup: the next packets from the same source port are DNAT'd afresh.
    assert_eq!(lab.delete(std::slice::from_ref(&filter)), 1);
    assert_eq!(lab.exchange(&client, service), "pod2");
    assert_eq!(lab.exchange(&client, service), "pod2");
    let listed = lab.node.conntrack_list("udp", service);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(
        listed[0].contains(&format!("src={}", lab.pod(1))),
        "{listed:?}"
    );
    assert!(lab.list(&filter).is_empty());
}

#[test]
fn udp_client_reaches_the_new_endpoint_only_after_cleanup() {
    if !require_kernel() {
        return;
    }
    timed("ipv4 stale entry scenario", || stale_entry_scenario(v4()));
}

#[test]
fn udp_client_reaches_the_new_endpoint_only_after_cleanup_ipv6() {
    if !require_kernel() {
        return;
    }
    timed("ipv6 stale entry scenario", || stale_entry_scenario(v6()));
}

/// Entries that look alike but are not stale for this endpoint stay: the same service
/// over TCP, another service DNAT'd to the same pod, filters that match nothing.
fn cleanup_is_precise(plan: Plan) {
    let lab = Lab::new(plan);
    let (service, other) = (lab.plan.service, lab.plan.other_service);
    let client = lab.client_socket(CLIENT_PORT);
    assert_eq!(lab.exchange(&client, service), "pod1");
    // Another source port: from the same one, both entries would have the same reply
    // tuple (pod1:5353 -> client:40000), and NAT would remap the port to tell them apart.
    let other_client = lab.client_socket(CLIENT_PORT + 1);
    assert_eq!(lab.exchange(&other_client, other), "pod1");
    let tcp_client = lab.client.enter(|| {
        TcpStream::connect_timeout(&SocketAddr::new(service, SERVICE_PORT), TIMEOUT)
            .expect("tcp connect through the DNAT")
    });
    let (_tcp_server, _) = lab.pod1_tcp.accept().expect("accept");
    let count = |proto: &str, dst: IpAddr| lab.node.conntrack_list(proto, dst).len();
    let before = (
        count("udp", service),
        count("udp", other),
        count("tcp", service),
    );
    assert_eq!(before, (1, 1, 1));

    // Filters that match nothing delete nothing.
    let wrong_endpoint = lab.stale_endpoint_filter(1);
    let wrong_port = FlowFilter {
        reply_src_port: Some(9999),
        ..lab.stale_endpoint_filter(0)
    };
    let nobody = FlowFilter {
        orig_dst_port: Some(30053),
        ..FlowFilter::any(lab.plan.family, UDP)
    };
    assert_eq!(lab.delete(&[wrong_endpoint, wrong_port, nobody]), 0);
    assert_eq!(lab.delete(&[]), 0);

    // The stale-endpoint filter takes the service's UDP entry and nothing else. The
    // kernel did the filtering: for IPv4 it returned only that entry; for IPv6, where
    // it is given protocol and ports only, both UDP entries to port 53, not the TCP one.
    let stats = lab.delete_with_stats(&[lab.stale_endpoint_filter(0)]);
    let dumped = match lab.plan.family {
        Family::V4 => 1,
        Family::V6 => 2,
    };
    assert_eq!(
        stats,
        DeleteStats {
            dumps: 1,
            dumped,
            matched: 1,
            deleted: 1,
            unfiltered_retries: 0
        }
    );
    assert_eq!(
        (
            count("udp", service),
            count("udp", other),
            count("tcp", service)
        ),
        (0, 1, 1)
    );

    // A TCP filter leaves UDP alone, and the other way round.
    let tcp = FlowFilter {
        protocol: TCP,
        ..lab.stale_endpoint_filter(0)
    };
    let flows = lab.list(&tcp);
    assert_eq!(flows.len(), 1, "{flows:?}");
    assert_eq!(flows[0].orig.protocol, TCP);
    // Deleting a flow twice: the second time it is already gone.
    assert!(
        lab.node
            .enter(|| Conntrack::open()?.delete(&flows[0]))
            .unwrap()
    );
    assert!(
        !lab.node
            .enter(|| Conntrack::open()?.delete(&flows[0]))
            .unwrap()
    );
    assert_eq!((count("udp", other), count("tcp", service)), (1, 0));
    drop(tcp_client);

    // Many filters share one dump, narrowed by what they have in common (UDP to port
    // 53); a NodePort-style filter on the port alone takes the other service's entry.
    assert_eq!(lab.exchange(&client, service), "pod1");
    let mut filters: Vec<FlowFilter> = (1..=9)
        .map(|i| FlowFilter {
            reply_src_port: Some(i),
            ..lab.stale_endpoint_filter(0)
        })
        .collect();
    filters.push(FlowFilter {
        orig_dst_port: Some(SERVICE_PORT),
        ..FlowFilter::any(lab.plan.family, UDP)
    });
    let stats = lab.delete_with_stats(&filters);
    assert_eq!(
        (stats.dumps, stats.dumped, stats.matched, stats.deleted),
        (1, 2, 2, 2),
        "{stats:?}"
    );
    assert_eq!((count("udp", service), count("udp", other)), (0, 0));

    // With a TCP filter among them they agree on nothing the kernel can use: the dump
    // goes unfiltered rather than refused.
    assert_eq!(lab.exchange(&client, service), "pod1");
    filters.push(FlowFilter {
        protocol: TCP,
        ..lab.stale_endpoint_filter(0)
    });
    let stats = lab.delete_with_stats(&filters);
    assert_eq!(
        (stats.dumps, stats.deleted, stats.unfiltered_retries),
        (1, 1, 0),
        "{stats:?}"
    );
}

#[test]
fn cleanup_spares_tcp_other_services_and_non_matching_filters() {
    if !require_kernel() {
        return;
    }
    timed("ipv4 precision", || cleanup_is_precise(v4()));
}

#[test]
fn cleanup_spares_tcp_other_services_and_non_matching_filters_ipv6() {
    if !require_kernel() {
        return;
    }
    timed("ipv6 precision", || cleanup_is_precise(v6()));
}

/// kube-proxy's other case: while the service's UDP port had no endpoints, the node
/// routed the client's packets on, un-NATed, and conntrack remembered that. Once an
/// endpoint appears, only deleting the entries to the service port gets the client's
/// packets DNAT'd.
#[test]
fn service_port_that_gains_endpoints_needs_cleanup_too() {
    if !require_kernel() {
        return;
    }
    timed("ipv4 no endpoints, then one", || {
        let lab = Lab::new(v4());
        let service = lab.plan.service;
        lab.route_service_to(None);
        // Somewhere for un-NATed service traffic to go (pod2 does not forward it).
        lab.node.ip(&[
            "route",
            "add",
            "10.96.0.0/16",
            "via",
            &lab.pod(1).to_string(),
        ]);
        let client = lab.client_socket(CLIENT_PORT);
        assert_eq!(lab.try_exchange(&client, service, SILENCE), None);
        let listed = lab.node.conntrack_list("udp", service);
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert!(!listed[0].contains("10.244."), "not DNAT'd: {listed:?}");

        lab.route_service_to(Some(0));
        assert_eq!(
            lab.try_exchange(&client, service, SILENCE),
            None,
            "stale entry"
        );

        let to_service = FlowFilter {
            orig_dst: Some(service),
            orig_dst_port: Some(SERVICE_PORT),
            ..FlowFilter::any(Family::V4, UDP)
        };
        assert_eq!(lab.delete(&[to_service]), 1);
        assert_eq!(lab.exchange(&client, service), "pod1");
    });
}

/// Dumps that span many datagrams and deletes sent in many chunks.
#[test]
fn thousands_of_stale_entries() {
    if !require_kernel() {
        return;
    }
    const FLOWS: u16 = 3000;
    let lab = Lab::new(v4());
    let service = SocketAddr::new(lab.plan.service, SERVICE_PORT);
    let client = lab.plan.client;
    lab.client.enter(|| {
        for port in 20000..20000 + FLOWS {
            let socket = UdpSocket::bind((client, port)).expect("bind client");
            socket.send_to(b"ping", service).expect("send");
        }
    });
    let listed = lab.node.conntrack_list("udp", service.ip());
    assert_eq!(listed.len(), usize::from(FLOWS));

    let start = Instant::now();
    let stats = lab.delete_with_stats(&[lab.stale_endpoint_filter(0)]);
    println!("{FLOWS} entries: {stats:?} in {:?}", start.elapsed());
    assert_eq!(stats.deleted, usize::from(FLOWS));
    assert!(lab.node.conntrack_list("udp", service.ip()).is_empty());
}
