//! The IPVS generic netlink client (`svcproxy_agent::ipvs`) against a real kernel.
//!
//! The host kernel has no IPVS, so `ipvs_netlink_in_uml` boots user-mode-linux once and runs
//! the `guest_*` tests inside it (they are `#[ignore]`d so the host never runs them alone).
//! `ipvsadm` is the oracle: what we program through netlink must read back through ipvsadm
//! exactly as if ipvsadm had written it, and through our own decoder as what we sent.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use svcproxy_agent::ipvs::{
    Client, Destination, Error, Family, ForwardMethod, Operation, Protocol, Service, ServiceFlags,
    ServiceKey,
};
use svcproxy_tests::uml::{self, Uml};

const GUEST_TESTS: &[&str] = &["guest_control_plane", "guest_errors", "guest_traffic"];

#[test]
fn ipvs_netlink_in_uml() {
    if !uml::require_uml() {
        return;
    }
    let run = Uml::new()
        .run_tests(GUEST_TESTS)
        .expect("run the guest tests under user-mode-linux");
    run.assert_tests_passed(GUEST_TESTS);
}

/// On a kernel without IPVS loaded (this host), resolving the family fails with a typed
/// error rather than a bare ENOENT.
#[test]
fn family_not_found_without_ip_vs() {
    if uml::in_guest() || std::path::Path::new("/proc/net/ip_vs").exists() {
        eprintln!("ip_vs is loaded here: nothing to check");
        return;
    }
    match Client::new() {
        Err(Error::FamilyNotFound) => {}
        other => panic!("expected FamilyNotFound, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Guest side helpers

fn ip(s: &str) -> IpAddr {
    s.parse().expect("literal address")
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh(script: &str) {
    for line in script.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let args: Vec<&str> = line.split_whitespace().collect();
        run(args[0], &args[1..]);
    }
}

/// `ipvsadm -S -n`, one rule per element. Sorted: ipvsadm lists in hash order, and every
/// `-a` line names its service, so nothing is lost.
fn ipvsadm_save() -> BTreeSet<String> {
    run("ipvsadm", &["-S", "-n"])
        .lines()
        .map(str::to_string)
        .collect()
}

/// `ipvsadm -S` does not save thresholds: read them from `ipvsadm -Ln --thresholds`, as
/// "addr:port upper lower" per destination of a TCP service.
fn thresholds(tcp_service: &str) -> Vec<String> {
    let listing = run("ipvsadm", &["-Ln", "--thresholds", "-t", tcp_service]);
    let mut out: Vec<String> = listing
        .lines()
        .filter_map(|l| l.trim().strip_prefix("-> "))
        .filter(|l| !l.starts_with("RemoteAddress"))
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .collect();
    out.sort();
    out
}

fn lines(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The state we believe the kernel has: services and their destinations.
type Model = BTreeMap<ServiceKey, (Service, Vec<Destination>)>;

/// Our own dump, decoded, must equal the model (destinations without their counters).
fn assert_dump_matches(ipvs: &mut Client, model: &Model) {
    let mut services = ipvs.dump_services().expect("dump services");
    services.sort_by_key(Service::key);
    let want: Vec<Service> = model.values().map(|(s, _)| s.clone()).collect();
    assert_eq!(services, want, "dumped services");
    for (key, (_, dests)) in model {
        let mut got: Vec<Destination> = ipvs
            .dump_destinations(key)
            .expect("dump destinations")
            .iter()
            .map(Destination::config)
            .collect();
        got.sort_by_key(|d| (d.addr, d.port));
        let mut want = dests.clone();
        want.sort_by_key(|d| (d.addr, d.port));
        assert_eq!(got, want, "destinations of {key}");
    }
}

/// Addresses for the whole guest run, set up once: a dummy interface with the virtual IPs
/// (as kube-proxy's kube-ipvs0) and two pods behind veth pairs.
///
/// pod i (1, 2): 10.244.0.{2i}/31 and fd00:244::{2i}/127, node side .{2i+1}.
fn topology() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        sh("
            ip link add kube-ipvs0 type dummy
            ip link set kube-ipvs0 up
            ip addr add 10.96.0.10/32 dev kube-ipvs0
            ip addr add 10.96.0.11/32 dev kube-ipvs0
            ip addr add 10.96.0.12/32 dev kube-ipvs0
            ip -6 addr add fd00:96::10/128 dev kube-ipvs0 nodad
            ip -6 addr add fd00:96::a/128 dev kube-ipvs0 nodad
        ");
        for i in 1..=2 {
            let (pod, node) = (2 * i, 2 * i + 1);
            sh(&format!(
                "
                ip netns add pod{i}
                ip link add vp{i} type veth peer name eth0 netns pod{i}
                ip addr add 10.244.0.{node}/31 dev vp{i}
                ip -6 addr add fd00:244::{node}/127 dev vp{i} nodad
                ip link set vp{i} up
                ip -n pod{i} addr add 10.244.0.{pod}/31 dev eth0
                ip -n pod{i} -6 addr add fd00:244::{pod}/127 dev eth0 nodad
                ip -n pod{i} link set eth0 up
                ip -n pod{i} link set lo up
                ip -n pod{i} route add default via 10.244.0.{node}
                ip -n pod{i} -6 route add default via fd00:244::{node}
                "
            ));
            serve_in(&format!("pod{i}"));
        }
    });
}

/// Runs `f` on a new thread inside network namespace `/run/netns/<ns>`; sockets it creates
/// there stay there.
fn spawn_in_netns(ns: &str, f: impl FnOnce() + Send + 'static) {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: plain syscall on a valid fd; only this thread changes namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f();
    });
}

/// A pod's servers: TCP 8080 and UDP 5353, dual-stack, answering with the pod's name.
fn serve_in(ns: &str) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let name = ns.to_string();
    let ready = ready_tx.clone();
    spawn_in_netns(ns, move || {
        let listener = TcpListener::bind("[::]:8080").expect("bind tcp");
        ready.send(()).expect("signal ready");
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(name.as_bytes());
        }
    });
    let name = ns.to_string();
    spawn_in_netns(ns, move || {
        let socket = UdpSocket::bind("[::]:5353").expect("bind udp");
        ready_tx.send(()).expect("signal ready");
        let mut buf = [0u8; 64];
        while let Ok((_, peer)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(name.as_bytes(), peer);
        }
    });
    for _ in 0..2 {
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("server ready");
    }
}

fn tcp_who(addr: SocketAddr) -> String {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    conn.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut who = String::new();
    conn.read_to_string(&mut who)
        .unwrap_or_else(|e| panic!("read from {addr}: {e}"));
    who
}

fn udp_who(addr: SocketAddr) -> String {
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = UdpSocket::bind(bind).expect("bind client");
    socket
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    socket.send_to(b"who", addr).expect("send");
    let mut buf = [0u8; 64];
    let (n, _) = socket
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("udp reply from {addr}: {e}"));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn count(answers: &[String]) -> BTreeMap<&str, usize> {
    let mut counts = BTreeMap::new();
    for a in answers {
        *counts.entry(a.as_str()).or_default() += 1;
    }
    counts
}

fn guest() -> Option<Client> {
    if !uml::in_guest() {
        eprintln!("not in a user-mode-linux guest: nothing to do (run ipvs_netlink_in_uml)");
        return None;
    }
    topology();
    let mut ipvs = Client::new().expect("IPVS client");
    ipvs.flush().expect("flush");
    Some(ipvs)
}

// ---------------------------------------------------------------------------------------
// Guest tests

#[test]
#[ignore = "runs inside user-mode-linux, started by ipvs_netlink_in_uml"]
fn guest_control_plane() {
    let Some(mut ipvs) = guest() else { return };

    let info = ipvs.info().expect("info");
    let header = run("ipvsadm", &["-Ln"]);
    assert_eq!(
        header.lines().next(),
        Some(
            format!(
                "IP Virtual Server version {} (size={})",
                info.version, info.conn_table_size
            )
            .as_str()
        )
    );

    let web = Service::new(Protocol::Tcp, ip("10.96.0.10"), 80);
    let dns = Service::new(Protocol::Udp, ip("10.96.0.10"), 53)
        .scheduler("wrr")
        .persistent(600);
    let sctp = Service::new(Protocol::Sctp, ip("10.96.0.11"), 9999).scheduler("dh");
    let mut subnet = Service::new(Protocol::Tcp, ip("10.96.0.12"), 80).persistent(60);
    subnet.netmask = 24;
    let mut v6 = Service::new(Protocol::Tcp, ip("fd00:96::10"), 443).scheduler("sh");
    v6.flags = ServiceFlags::SH_FALLBACK | ServiceFlags::SH_PORT;
    let mut v6dns = Service::new(Protocol::Udp, ip("fd00:96::a"), 53)
        .scheduler("mh")
        .persistent(300);
    v6dns.netmask = 64;
    let fwm = Service::with_fwmark(Family::Inet, 7).scheduler("lc");
    // nq is not preloaded: the guest kernel autoloads it through the harness's modprobe.
    let fwm6 = Service::with_fwmark(Family::Inet6, 8).scheduler("nq");

    let mut heavy = Destination::new(ip("10.244.0.4"), 8080, 2);
    heavy.upper_threshold = 100;
    heavy.lower_threshold = 10;
    let route = |addr, port, weight| Destination {
        forward: ForwardMethod::Route,
        ..Destination::new(ip(addr), port, weight)
    };
    let tunnel = Destination {
        forward: ForwardMethod::Tunnel,
        ..Destination::new(ip("10.244.0.6"), 0, 1)
    };
    let mut model: Model = BTreeMap::new();
    for (svc, dests) in [
        (
            &web,
            vec![Destination::new(ip("10.244.0.2"), 8080, 1), heavy.clone()],
        ),
        (
            &dns,
            vec![
                Destination::new(ip("10.244.0.2"), 5353, 1),
                Destination::new(ip("10.244.0.4"), 5353, 1),
            ],
        ),
        (&sctp, vec![route("10.244.0.8", 9999, 1)]),
        (&subnet, vec![]),
        (
            &v6,
            vec![
                Destination::new(ip("fd00:244::2"), 8443, 5),
                Destination::new(ip("fd00:244::4"), 8443, 0),
            ],
        ),
        (&v6dns, vec![route("fd00:244::6", 53, 3)]),
        (&fwm, vec![tunnel.clone()]),
        (&fwm6, vec![]),
    ] {
        ipvs.new_service(svc).unwrap_or_else(|e| panic!("{e}"));
        for d in &dests {
            ipvs.new_destination(&svc.key(), d)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        model.insert(svc.key(), (svc.clone(), dests));
    }

    let mut expected = lines(
        "
        -A -t 10.96.0.10:80 -s rr
        -a -t 10.96.0.10:80 -r 10.244.0.2:8080 -m -w 1
        -a -t 10.96.0.10:80 -r 10.244.0.4:8080 -m -w 2
        -A -u 10.96.0.10:53 -s wrr -p 600
        -a -u 10.96.0.10:53 -r 10.244.0.2:5353 -m -w 1
        -a -u 10.96.0.10:53 -r 10.244.0.4:5353 -m -w 1
        -A --sctp-service 10.96.0.11:9999 -s dh
        -a --sctp-service 10.96.0.11:9999 -r 10.244.0.8:9999 -g -w 1
        -A -t 10.96.0.12:80 -s rr -p 60 -M 255.255.255.0
        -A -t [fd00:96::10]:443 -s sh -b sh-fallback,sh-port
        -a -t [fd00:96::10]:443 -r [fd00:244::2]:8443 -m -w 5
        -a -t [fd00:96::10]:443 -r [fd00:244::4]:8443 -m -w 0
        -A -u [fd00:96::a]:53 -s mh -p 300 -M 64
        -a -u [fd00:96::a]:53 -r [fd00:244::6]:53 -g -w 3
        -A -f 7 -s lc
        -a -f 7 -r 10.244.0.6:0 -i -w 1 --tun-type ipip
        -A -f 8 -6 -s nq
        ",
    );
    assert_eq!(ipvsadm_save(), expected, "ipvsadm -S -n after creating");
    assert_eq!(
        thresholds("10.96.0.10:80"),
        ["10.244.0.2:8080 0 0", "10.244.0.4:8080 100 10"]
    );
    assert_dump_matches(&mut ipvs, &model);
    assert_eq!(
        ipvs.get_service(&web.key()).expect("get"),
        Some(web.clone())
    );
    assert_eq!(
        ipvs.get_service(&fwm6.key()).expect("get"),
        Some(fwm6.clone())
    );

    // Edit a destination's weight: thresholds and forwarding stay as sent.
    let mut heavier = heavy.clone();
    heavier.weight = 7;
    ipvs.set_destination(&web.key(), &heavier)
        .expect("set dest");
    expected.remove("-a -t 10.96.0.10:80 -r 10.244.0.4:8080 -m -w 2");
    expected.insert("-a -t 10.96.0.10:80 -r 10.244.0.4:8080 -m -w 7".into());
    model.get_mut(&web.key()).expect("web").1[1] = heavier;

    // Edit services: the flags we send replace the old ones (mask = all ones), so dropping
    // persistence really drops it.
    let web_wlc = web.clone().scheduler("wlc");
    ipvs.set_service(&web_wlc).expect("set web");
    expected.remove("-A -t 10.96.0.10:80 -s rr");
    expected.insert("-A -t 10.96.0.10:80 -s wlc".into());
    model.get_mut(&web.key()).expect("web").0 = web_wlc.clone();
    let mut dns_plain = dns.clone();
    dns_plain.flags = ServiceFlags::EMPTY;
    dns_plain.timeout = 0;
    ipvs.set_service(&dns_plain).expect("set dns");
    expected.remove("-A -u 10.96.0.10:53 -s wrr -p 600");
    expected.insert("-A -u 10.96.0.10:53 -s wrr".into());
    model.get_mut(&dns.key()).expect("dns").0 = dns_plain;

    assert_eq!(ipvsadm_save(), expected, "ipvsadm -S -n after edits");
    assert_eq!(
        thresholds("10.96.0.10:80"),
        ["10.244.0.2:8080 0 0", "10.244.0.4:8080 100 10"]
    );
    assert_dump_matches(&mut ipvs, &model);

    // Delete a destination, then a whole service (with its destination).
    ipvs.del_destination(&web.key(), ip("10.244.0.2"), 8080)
        .expect("del dest");
    expected.remove("-a -t 10.96.0.10:80 -r 10.244.0.2:8080 -m -w 1");
    model.get_mut(&web.key()).expect("web").1.remove(0);
    ipvs.del_service(&sctp.key()).expect("del sctp");
    expected.remove("-A --sctp-service 10.96.0.11:9999 -s dh");
    expected.remove("-a --sctp-service 10.96.0.11:9999 -r 10.244.0.8:9999 -g -w 1");
    model.remove(&sctp.key());
    ipvs.del_service(&fwm.key()).expect("del fwm");
    expected.remove("-A -f 7 -s lc");
    expected.remove("-a -f 7 -r 10.244.0.6:0 -i -w 1 --tun-type ipip");
    model.remove(&fwm.key());

    assert_eq!(ipvsadm_save(), expected, "ipvsadm -S -n after deletes");
    assert_dump_matches(&mut ipvs, &model);
    assert_eq!(ipvs.get_service(&sctp.key()).expect("get"), None);

    ipvs.flush().expect("flush");
    assert_eq!(ipvsadm_save(), BTreeSet::new(), "ipvsadm -S -n after flush");
    assert_eq!(ipvs.dump_services().expect("dump"), vec![]);
}

#[test]
#[ignore = "runs inside user-mode-linux, started by ipvs_netlink_in_uml"]
fn guest_errors() {
    let Some(mut ipvs) = guest() else { return };
    let web = Service::new(Protocol::Tcp, ip("10.96.0.10"), 80);
    let pod1 = Destination::new(ip("10.244.0.2"), 8080, 1);
    ipvs.new_service(&web).expect("add web");
    ipvs.new_destination(&web.key(), &pod1).expect("add pod1");

    let kernel = |r: Result<(), Error>, op: Operation, errno: i32| {
        let e = r.expect_err("must fail");
        match &e {
            Error::Kernel {
                op: got, errno: n, ..
            } => {
                assert_eq!((*got, *n), (op, errno), "{e}");
            }
            other => panic!("expected a kernel error, got {other:?}"),
        }
        e.to_string()
    };

    let text = kernel(ipvs.new_service(&web), Operation::NewService, libc::EEXIST);
    assert!(
        text.contains("add service TCP 10.96.0.10:80") && text.contains("errno 17"),
        "{text}"
    );
    let text = kernel(
        ipvs.new_destination(&web.key(), &pod1),
        Operation::NewDest,
        libc::EEXIST,
    );
    assert!(
        text.contains("TCP 10.96.0.10:80 -> 10.244.0.2:8080"),
        "{text}"
    );

    let missing = Service::new(Protocol::Udp, ip("10.96.0.99"), 53);
    kernel(
        ipvs.del_service(&missing.key()),
        Operation::DelService,
        libc::ESRCH,
    );
    kernel(
        ipvs.set_service(&missing),
        Operation::SetService,
        libc::ESRCH,
    );
    kernel(
        ipvs.new_destination(&missing.key(), &pod1),
        Operation::NewDest,
        libc::ESRCH,
    );
    kernel(
        ipvs.del_destination(&web.key(), ip("10.244.0.4"), 8080),
        Operation::DelDest,
        libc::ENOENT,
    );
    kernel(
        ipvs.set_destination(&web.key(), &Destination::new(ip("10.244.0.4"), 8080, 1)),
        Operation::SetDest,
        libc::ENOENT,
    );
    kernel(
        ipvs.new_service(&missing.clone().scheduler("nosuch")),
        Operation::NewService,
        libc::ENOENT,
    );

    // Rejected before reaching the kernel.
    assert!(matches!(
        ipvs.new_service(&Service::with_fwmark(Family::Inet, 0)),
        Err(Error::Invalid { .. })
    ));
    assert!(matches!(
        ipvs.new_destination(
            &web.key(),
            &Destination::new(ip("10.244.0.4"), 80, u32::MAX)
        ),
        Err(Error::Invalid { .. })
    ));

    // Quirk: the destinations of a missing service dump as empty, not as an error.
    assert_eq!(
        ipvs.dump_destinations(&missing.key()).expect("dump"),
        vec![]
    );
    // What we send is what we dump, so desired and actual state compare directly: a
    // direct-routing destination keeps the port we sent (ipvsadm, not the kernel, replaces
    // it with the service port) and a NAT destination on a local address stays Masq (older
    // kernels reported it as Local).
    let dr = Destination {
        forward: ForwardMethod::Route,
        ..Destination::new(ip("10.244.0.4"), 9000, 1)
    };
    ipvs.new_destination(&web.key(), &dr).expect("add DR");
    let local = Destination::new(ip("10.244.0.3"), 8080, 1);
    ipvs.new_destination(&web.key(), &local).expect("add local");
    let mut got: Vec<(IpAddr, u16, ForwardMethod)> = ipvs
        .dump_destinations(&web.key())
        .expect("dump")
        .iter()
        .map(|d| (d.addr, d.port, d.forward))
        .collect();
    got.sort_by_key(|(a, p, _)| (*a, *p));
    assert_eq!(
        got,
        vec![
            (ip("10.244.0.2"), 8080, ForwardMethod::Masq),
            (ip("10.244.0.3"), 8080, ForwardMethod::Masq),
            (ip("10.244.0.4"), 9000, ForwardMethod::Route),
        ]
    );

    // After all these errors the socket is still in step with the kernel.
    assert_eq!(ipvs.dump_services().expect("dump"), vec![web.clone()]);
    ipvs.flush().expect("flush");
}

#[test]
#[ignore = "runs inside user-mode-linux, started by ipvs_netlink_in_uml"]
fn guest_traffic() {
    let Some(mut ipvs) = guest() else { return };
    let pods = ["pod1", "pod2"];
    let cases = [
        (
            Protocol::Tcp,
            "10.96.0.10",
            80,
            ["10.244.0.2", "10.244.0.4"],
            8080,
        ),
        (
            Protocol::Udp,
            "10.96.0.10",
            53,
            ["10.244.0.2", "10.244.0.4"],
            5353,
        ),
        (
            Protocol::Tcp,
            "fd00:96::10",
            80,
            ["fd00:244::2", "fd00:244::4"],
            8080,
        ),
    ];
    for (proto, vip, port, backends, target) in cases {
        let svc = Service::new(proto, ip(vip), port);
        ipvs.new_service(&svc).expect("add service");
        for b in backends {
            ipvs.new_destination(&svc.key(), &Destination::new(ip(b), target, 1))
                .expect("add destination");
        }
    }

    let ask = |proto: Protocol, vip: &str, port: u16, n: usize| -> Vec<String> {
        let addr = SocketAddr::new(ip(vip), port);
        (0..n)
            .map(|_| match proto {
                Protocol::Tcp => tcp_who(addr),
                _ => udp_who(addr),
            })
            .collect()
    };

    // Round robin over two equal destinations: every other new connection on each pod.
    for (proto, vip, port, ..) in cases {
        let answers = ask(proto, vip, port, 4);
        assert_eq!(
            count(&answers),
            BTreeMap::from([(pods[0], 2), (pods[1], 2)]),
            "{proto} {vip}:{port}: {answers:?}"
        );
    }

    // The connection counters we decode are the kernel's: each pod got two TCP connections
    // (closed by now, so inactive, but still in the connection table), and ipvsadm agrees.
    let web = ServiceKey::Addr {
        protocol: Protocol::Tcp,
        addr: ip("10.96.0.10"),
        port: 80,
    };
    for d in ipvs.dump_destinations(&web).expect("dump") {
        assert_eq!(d.active_conns + d.inactive_conns, 2, "{d:?}");
    }
    let listing = run("ipvsadm", &["-Ln", "-t", "10.96.0.10:80"]);
    let ours: BTreeSet<String> = ipvs
        .dump_destinations(&web)
        .expect("dump")
        .iter()
        .map(|d| {
            format!(
                "{}:{} {} {}",
                d.addr, d.port, d.active_conns, d.inactive_conns
            )
        })
        .collect();
    let theirs: BTreeSet<String> = listing
        .lines()
        .filter_map(|l| l.trim().strip_prefix("-> "))
        .filter(|l| !l.starts_with("RemoteAddress"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            format!("{} {} {}", f[0], f[3], f[4])
        })
        .collect();
    assert_eq!(ours, theirs, "ipvsadm -Ln:\n{listing}");

    // Weight 0 drains pod1: new connections all go to pod2.
    ipvs.set_destination(&web, &Destination::new(ip("10.244.0.2"), 8080, 0))
        .expect("drain pod1");
    assert_eq!(
        count(&ask(Protocol::Tcp, "10.96.0.10", 80, 4)),
        BTreeMap::from([(pods[1], 4)])
    );

    // Remove pod2 and restore pod1: everything to pod1.
    ipvs.del_destination(&web, ip("10.244.0.4"), 8080)
        .expect("remove pod2");
    ipvs.set_destination(&web, &Destination::new(ip("10.244.0.2"), 8080, 1))
        .expect("restore pod1");
    assert_eq!(
        count(&ask(Protocol::Tcp, "10.96.0.10", 80, 3)),
        BTreeMap::from([(pods[0], 3)])
    );

    ipvs.flush().expect("flush");
}
