//! Self-test of the namespace harness: plain routed traffic, no svcproxy
//! rules loaded, so every answer must come from the pod itself and see
//! ext's real address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use svcproxy_tests::netns::{run, veth, wait_until};
use svcproxy_tests::topology::{EXT_V4, EXT_V6, EXT2_V4, EXT2_V6, pod_v4, pod_v6};
use svcproxy_tests::{
    Cluster, Netns, Outcome, ProbeOpts, Proto, probe, probe_with, require_kernel, set_testd_path,
};

/// Every kernel test starts here.
fn kernel() -> bool {
    set_testd_path(env!("CARGO_BIN_EXE_svcproxy-testd"));
    require_kernel()
}

fn addr(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn cluster_with_two_pods() -> Cluster {
    let mut c = Cluster::new().unwrap();
    c.add_pod("web-1", 1).unwrap();
    c.add_pod("web-2", 2).unwrap();
    for pod in ["web-1", "web-2"] {
        c.serve(pod, pod, &[(Proto::Tcp, 80), (Proto::Udp, 53)])
            .unwrap();
    }
    c
}

#[test]
fn pods_answer_ext_directly() {
    if !kernel() {
        return;
    }
    let c = cluster_with_two_pods();
    for pod in c.pods() {
        for (proto, port) in [(Proto::Tcp, 80), (Proto::Udp, 53)] {
            let v4 = probe(&c.ext, proto, addr(pod.v4(), port), 3).unwrap();
            assert_eq!(
                v4,
                vec![Outcome::ok(&pod.name, EXT_V4); 3],
                "{proto} v4 to {}",
                pod.name
            );
            let v6 = probe(&c.ext, proto, addr(pod.v6(), port), 3).unwrap();
            assert_eq!(
                v6,
                vec![Outcome::ok(&pod.name, EXT_V6); 3],
                "{proto} v6 to {}",
                pod.name
            );

            // ext's second address, as source-range tests will use it.
            let pairs: [(IpAddr, IpAddr); 2] = [
                (pod.v4().into(), EXT2_V4.into()),
                (pod.v6().into(), EXT2_V6.into()),
            ];
            for (dst, src) in pairs {
                let opts = ProbeOpts {
                    src: Some(src),
                    ..ProbeOpts::default()
                };
                let got = probe_with(&c.ext, proto, addr(dst, port), &opts).unwrap();
                assert_eq!(
                    got,
                    vec![Outcome::ok(&pod.name, src)],
                    "{proto} from {src} to {dst}"
                );
            }
        }
    }
}

#[test]
fn refused_unreachable_and_timeout() {
    if !kernel() {
        return;
    }
    let c = cluster_with_two_pods();
    let pod = c.pod("web-1").unwrap();

    // No listener: TCP reset / ICMP port unreachable. Ten in a row, so that
    // ICMP rate limiting would show up here rather than in a service test.
    for proto in [Proto::Tcp, Proto::Udp] {
        for ip in [IpAddr::from(pod.v4()), pod.v6().into()] {
            let got = probe(&c.ext, proto, addr(ip, 9), 10).unwrap();
            assert_eq!(got, vec![Outcome::Refused; 10], "{proto} to {ip}:9");
        }
    }

    // The node has no route (and no default route) for these: ICMP network
    // unreachable, for UDP too.
    for proto in [Proto::Tcp, Proto::Udp] {
        for ip in ["198.51.100.1", "2001:db8:dead::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            let got = probe(&c.ext, proto, addr(ip, 80), 2).unwrap();
            assert_eq!(got, vec![Outcome::Unreachable; 2], "{proto} to {ip}");
        }
    }

    // Silently dropped on the node: a blackhole route for the address of a
    // pod index that does not exist.
    c.node
        .ip(&["route", "add", "blackhole", "10.244.251.0/24"])
        .unwrap();
    c.node
        .ip(&["-6", "route", "add", "blackhole", "fd00:244:251::/64"])
        .unwrap();
    let short = ProbeOpts {
        timeout: Duration::from_millis(200),
        ..ProbeOpts::default()
    };
    for proto in [Proto::Tcp, Proto::Udp] {
        for ip in [IpAddr::from(pod_v4(251)), pod_v6(251).into()] {
            let got = probe_with(&c.ext, proto, addr(ip, 80), &short).unwrap();
            assert_eq!(got, vec![Outcome::Timeout], "{proto} to {ip}");
        }
    }
}

#[test]
fn namespace_is_gone_after_drop() {
    if !kernel() {
        return;
    }
    let a = Netns::new("gone").unwrap();
    let b = Netns::new("peer").unwrap();
    veth(&a, "eth0", &b, "peer0").unwrap();
    let name = a.name().to_owned();
    assert!(Netns::exists(&name));

    // A server that does not announce readiness, found by polling; loopback
    // works in a fresh namespace.
    let mut server = a
        .spawn(
            a.command(env!("CARGO_BIN_EXE_svcproxy-testd"))
                .args(["serve", "--name", "lo", "--udp", "127.0.0.1:7000"])
                .stdout(Stdio::null()),
        )
        .unwrap();
    a.wait_listening(Proto::Udp, 7000, Duration::from_secs(5))
        .unwrap();
    let got = probe(&a, Proto::Udp, "127.0.0.1:7000".parse().unwrap(), 1).unwrap();
    assert_eq!(got, vec![Outcome::ok("lo", Ipv4Addr::LOCALHOST)]);

    drop(a);

    assert!(!Netns::exists(&name), "{name} still in /run/netns");
    let list = run(Command::new("ip").args(["netns", "list"])).unwrap();
    assert!(!list.contains(&name), "{name} still listed:\n{list}");
    // The process inside was killed, not left holding the namespace ...
    wait_until(Duration::from_secs(5), "server to be killed", || {
        Ok(server.try_wait()?.is_some())
    })
    .unwrap();
    // ... so the kernel really dismantled it: that destroys the veth pair,
    // taking b's end with it (asynchronously, hence the polling).
    wait_until(Duration::from_secs(5), "peer0 to vanish from b", || {
        Ok(b.ip(&["link", "show", "dev", "peer0"]).is_err())
    })
    .unwrap();
}

#[test]
fn pod_addresses_follow_the_index() {
    // No kernel needed: this pins the addressing the fixtures rely on.
    assert_eq!(pod_v4(12).to_string(), "10.244.12.10");
    assert_eq!(pod_v6(12).to_string(), "fd00:244:12::10");
    assert_eq!(pod_v6(250).to_string(), "fd00:244:250::10");
    assert_eq!(pod_v6(7).to_string(), "fd00:244:7::10");
}
