//! What to send to make the kernel's IPVS table match the desired one, in an order
//! that traffic can live with.
//!
//! IPVS has no transactions: every operation is visible at once. So:
//! 1. new virtual servers first, each followed at once by its destinations (a virtual
//!    server with no destination refuses connections);
//! 2. then changes to existing ones: settings, destinations added before any is
//!    drained or removed, so a service never has fewer real servers than it needs in
//!    between;
//! 3. virtual servers svcproxy no longer wants last.
//!
//! A leaving TCP destination is drained rather than deleted: weight 0 keeps its open
//! connections and sends new ones elsewhere; it is deleted once IPVS counts no
//! connection to it, or when the drain timeout has passed. UDP and SCTP destinations
//! go at once (kube-proxy's rule: with `expire_nodest_conn`, their flows move to
//! another real server at the next packet).
//!
//! Everything here is a pure function of its inputs, including the clock.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::table::{DestKey, Table, protocol};
use crate::ipvs::{Destination, Protocol, Service, ServiceFlags, ServiceKey};

/// One IPVS operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    AddService(Service),
    /// New scheduler or persistence for an existing virtual server.
    EditService(Service),
    DeleteService(ServiceKey),
    AddDestination(ServiceKey, Destination),
    /// A destination's settings restored (weight back to 1 after a drain, or repaired).
    EditDestination(ServiceKey, Destination),
    /// A leaving destination set to weight 0: its connections stay, new ones go
    /// elsewhere.
    DrainDestination(ServiceKey, Destination),
    DeleteDestination(ServiceKey, DestKey),
}

impl Op {
    pub fn service(&self) -> ServiceKey {
        match self {
            Op::AddService(s) | Op::EditService(s) => s.key(),
            Op::DeleteService(k)
            | Op::AddDestination(k, _)
            | Op::EditDestination(k, _)
            | Op::DrainDestination(k, _)
            | Op::DeleteDestination(k, _) => *k,
        }
    }
}

/// How many operations of each kind a sync sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpCounts {
    pub services_added: usize,
    pub services_edited: usize,
    pub services_deleted: usize,
    pub destinations_added: usize,
    pub destinations_edited: usize,
    pub destinations_drained: usize,
    pub destinations_deleted: usize,
}

impl OpCounts {
    pub fn of<'a>(ops: impl IntoIterator<Item = &'a Op>) -> OpCounts {
        let mut c = OpCounts::default();
        for op in ops {
            let n = match op {
                Op::AddService(_) => &mut c.services_added,
                Op::EditService(_) => &mut c.services_edited,
                Op::DeleteService(_) => &mut c.services_deleted,
                Op::AddDestination(..) => &mut c.destinations_added,
                Op::EditDestination(..) => &mut c.destinations_edited,
                Op::DrainDestination(..) => &mut c.destinations_drained,
                Op::DeleteDestination(..) => &mut c.destinations_deleted,
            };
            *n += 1;
        }
        c
    }

    pub fn total(&self) -> usize {
        self.services_added
            + self.services_edited
            + self.services_deleted
            + self.destinations_added
            + self.destinations_edited
            + self.destinations_drained
            + self.destinations_deleted
    }
}

impl fmt::Display for OpCounts {
    /// `2 virtual servers added, 1 real server drained`; the kinds that are 0 are left
    /// out, and nothing at all reads `no IPVS change`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = [
            (self.services_added, "virtual server", "added"),
            (self.services_edited, "virtual server", "edited"),
            (self.services_deleted, "virtual server", "deleted"),
            (self.destinations_added, "real server", "added"),
            (self.destinations_edited, "real server", "edited"),
            (self.destinations_drained, "real server", "drained"),
            (self.destinations_deleted, "real server", "deleted"),
        ]
        .iter()
        .filter(|(n, ..)| *n > 0)
        .map(|(n, what, done)| format!("{n} {what}{} {done}", if *n == 1 { "" } else { "s" }))
        .collect();
        if parts.is_empty() {
            f.write_str("no IPVS change")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// When each leaving destination was first drained.
pub type Draining = BTreeMap<(ServiceKey, DestKey), Instant>;

/// The operations of one sync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    pub ops: Vec<Op>,
    /// Leaving TCP destinations kept this time for their connections (drained now or
    /// earlier): the caller tracks when their drain started.
    pub draining: Vec<(ServiceKey, DestKey)>,
}

/// The inputs that decide what happens to a leaving destination.
#[derive(Debug, Clone, Copy)]
pub struct DrainClock<'a> {
    pub draining: &'a Draining,
    pub now: Instant,
    pub timeout: Duration,
}

/// The operations that turn `current` into `desired`. Virtual servers in `current`
/// that are not desired are deleted only when `owned` says they are svcproxy's; those
/// that are desired are taken over whoever made them.
pub fn diff(
    desired: &Table,
    current: &Table,
    owned: impl Fn(&ServiceKey) -> bool,
    clock: DrainClock<'_>,
) -> Diff {
    let mut out = Diff::default();
    // 1. New virtual servers with their destinations.
    for (key, want) in desired {
        if current.contains_key(key) {
            continue;
        }
        out.ops.push(Op::AddService(want.service.clone()));
        out.ops.extend(
            want.destinations
                .values()
                .map(|d| Op::AddDestination(*key, d.clone())),
        );
    }
    // 2. Existing ones: settings, then destinations, additions first.
    for (key, want) in desired {
        let Some(have) = current.get(key) else {
            continue;
        };
        if !same_service(&want.service, &have.service) {
            out.ops.push(Op::EditService(want.service.clone()));
        }
        for (dest_key, dest) in &want.destinations {
            match have.destinations.get(dest_key) {
                None => out.ops.push(Op::AddDestination(*key, dest.clone())),
                Some(old) if old.config() != *dest => {
                    out.ops.push(Op::EditDestination(*key, dest.clone()));
                }
                Some(_) => {}
            }
        }
        for (dest_key, dest) in &have.destinations {
            if want.destinations.contains_key(dest_key) {
                continue;
            }
            match leave(*key, dest, clock) {
                Leave::Delete => out.ops.push(Op::DeleteDestination(*key, *dest_key)),
                Leave::Drain => {
                    let mut drained = dest.config();
                    drained.weight = 0;
                    out.ops.push(Op::DrainDestination(*key, drained));
                    out.draining.push((*key, *dest_key));
                }
                Leave::Wait => out.draining.push((*key, *dest_key)),
            }
        }
    }
    // 3. Virtual servers svcproxy made and no longer wants.
    for key in current.keys() {
        if !desired.contains_key(key) && owned(key) {
            out.ops.push(Op::DeleteService(*key));
        }
    }
    out
}

/// What happens to a destination that is no longer wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leave {
    Delete,
    /// Set its weight to 0 and wait for its connections.
    Drain,
    /// Already at weight 0: keep waiting.
    Wait,
}

fn leave(service: ServiceKey, dest: &Destination, clock: DrainClock<'_>) -> Leave {
    let graceful = protocol(&service) == Some(Protocol::Tcp);
    let idle = dest.active_conns == 0 && dest.inactive_conns == 0;
    let timed_out = clock.timeout.is_zero()
        || clock
            .draining
            .get(&(service, (dest.addr, dest.port)))
            .is_some_and(|since| clock.now.saturating_duration_since(*since) >= clock.timeout);
    if !graceful || idle || timed_out {
        Leave::Delete
    } else if dest.weight != 0 {
        Leave::Drain
    } else {
        Leave::Wait
    }
}

/// Services compare on everything the kernel stores. The netmask only means
/// something with persistence, but a dump returns what was set, so it is compared too
/// (a hand-edited one is repaired).
fn same_service(want: &Service, have: &Service) -> bool {
    want == have
}

/// The keys of the virtual servers whose destinations `diff` may drain: those with a
/// destination that is not desired. A steady-state sync refreshes their counters.
pub fn with_leaving(desired: &Table, current: &Table) -> BTreeSet<ServiceKey> {
    current
        .iter()
        .filter(|(key, have)| {
            desired.get(key).is_some_and(|want| {
                have.destinations
                    .keys()
                    .any(|k| !want.destinations.contains_key(k))
            })
        })
        .map(|(key, _)| *key)
        .collect()
}

/// Applies an operation that succeeded to a view of the kernel's table.
pub fn apply(view: &mut Table, op: &Op) {
    match op {
        Op::AddService(s) => {
            view.insert(
                s.key(),
                super::table::VirtualServer {
                    service: s.clone(),
                    destinations: BTreeMap::new(),
                },
            );
        }
        Op::EditService(s) => {
            if let Some(vs) = view.get_mut(&s.key()) {
                vs.service = s.clone();
            }
        }
        Op::DeleteService(k) => {
            view.remove(k);
        }
        Op::AddDestination(k, d) | Op::EditDestination(k, d) | Op::DrainDestination(k, d) => {
            if let Some(vs) = view.get_mut(k) {
                let counters = vs
                    .destinations
                    .get(&(d.addr, d.port))
                    .map(|old| (old.active_conns, old.inactive_conns, old.persistent_conns));
                let mut dest = d.clone();
                if let Some((active, inactive, persistent)) = counters {
                    dest.active_conns = active;
                    dest.inactive_conns = inactive;
                    dest.persistent_conns = persistent;
                }
                vs.destinations.insert((d.addr, d.port), dest);
            }
        }
        Op::DeleteDestination(k, dest) => {
            if let Some(vs) = view.get_mut(k) {
                vs.destinations.remove(dest);
            }
        }
    }
}

/// ipvsadm's syntax, for `svcproxy plan` and logs: `-A -t 10.96.0.10:80 -s rr`.
impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::AddService(s) => write!(f, "-A {}{}", service_arg(&s.key()), settings(s)),
            Op::EditService(s) => write!(f, "-E {}{}", service_arg(&s.key()), settings(s)),
            Op::DeleteService(k) => write!(f, "-D {}", service_arg(k)),
            Op::AddDestination(k, d) => write!(f, "-a {}{}", service_arg(k), dest_args(d)),
            Op::EditDestination(k, d) => write!(f, "-e {}{}", service_arg(k), dest_args(d)),
            Op::DrainDestination(k, d) => write!(
                f,
                "-e {}{}  # drain: kept for its connections",
                service_arg(k),
                dest_args(d)
            ),
            Op::DeleteDestination(k, (addr, port)) => {
                write!(f, "-d {} -r {}", service_arg(k), addr_port(*addr, *port))
            }
        }
    }
}

fn service_arg(key: &ServiceKey) -> String {
    match key {
        ServiceKey::Addr {
            protocol,
            addr,
            port,
        } => {
            let flag = match protocol {
                Protocol::Tcp => "-t",
                Protocol::Udp => "-u",
                Protocol::Sctp => "--sctp-service",
            };
            format!("{flag} {}", addr_port(*addr, *port))
        }
        ServiceKey::Fwmark { mark, .. } => format!("-f {mark}"),
    }
}

fn settings(s: &Service) -> String {
    let mut out = format!(" -s {}", s.scheduler);
    if s.flags.contains(ServiceFlags::PERSISTENT) {
        out.push_str(&format!(" -p {}", s.timeout));
        if s.netmask < s.family.max_prefix() {
            out.push_str(&format!(" -M {}", s.netmask));
        }
    }
    out
}

fn dest_args(d: &Destination) -> String {
    let method = match d.forward {
        crate::ipvs::ForwardMethod::Masq => "-m",
        crate::ipvs::ForwardMethod::Tunnel => "-i",
        crate::ipvs::ForwardMethod::Route => "-g",
        crate::ipvs::ForwardMethod::Local | crate::ipvs::ForwardMethod::Bypass => "-m",
    };
    format!(" -r {} {method} -w {}", addr_port(d.addr, d.port), d.weight)
}

fn addr_port(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::table::VirtualServer;
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("literal")
    }

    fn server(proto: Protocol, vip: &str, dests: &[(&str, u32)]) -> (ServiceKey, VirtualServer) {
        let service = Service::new(proto, ip(vip), 80);
        let destinations = dests
            .iter()
            .map(|(a, w)| ((ip(a), 8080), Destination::new(ip(a), 8080, *w)))
            .collect();
        (
            service.key(),
            VirtualServer {
                service,
                destinations,
            },
        )
    }

    fn table(servers: &[(ServiceKey, VirtualServer)]) -> Table {
        servers.iter().cloned().collect()
    }

    fn with_conns(mut t: Table, dest: &str, active: u32, inactive: u32) -> Table {
        for vs in t.values_mut() {
            if let Some(d) = vs.destinations.get_mut(&(ip(dest), 8080)) {
                d.active_conns = active;
                d.inactive_conns = inactive;
            }
        }
        t
    }

    fn lines(d: &Diff) -> Vec<String> {
        d.ops.iter().map(|op| op.to_string()).collect()
    }

    fn clock(draining: &Draining, timeout: Duration) -> DrainClock<'_> {
        DrainClock {
            draining,
            now: Instant::now(),
            timeout,
        }
    }

    const DRAIN: Duration = Duration::from_secs(60);

    #[test]
    fn new_servers_come_with_their_destinations_and_deletions_come_last() {
        let old = table(&[server(Protocol::Tcp, "10.96.0.1", &[("10.244.0.1", 1)])]);
        let new = table(&[
            server(
                Protocol::Tcp,
                "10.96.0.2",
                &[("10.244.0.2", 1), ("10.244.0.3", 1)],
            ),
            server(Protocol::Udp, "10.96.0.3", &[]),
        ]);
        let d = diff(&new, &old, |_| true, clock(&Draining::new(), DRAIN));
        assert_eq!(
            lines(&d),
            [
                "-A -t 10.96.0.2:80 -s rr",
                "-a -t 10.96.0.2:80 -r 10.244.0.2:8080 -m -w 1",
                "-a -t 10.96.0.2:80 -r 10.244.0.3:8080 -m -w 1",
                "-A -u 10.96.0.3:80 -s rr",
                "-D -t 10.96.0.1:80",
            ]
        );
    }

    #[test]
    fn additions_come_before_removals_and_tcp_drains_while_udp_goes_at_once() {
        for (proto, removal) in [
            (
                Protocol::Tcp,
                "-e -t 10.96.0.1:80 -r 10.244.0.1:8080 -m -w 0  # drain: kept for its connections",
            ),
            (Protocol::Udp, "-d -u 10.96.0.1:80 -r 10.244.0.1:8080"),
            (
                Protocol::Sctp,
                "-d --sctp-service 10.96.0.1:80 -r 10.244.0.1:8080",
            ),
        ] {
            let old = with_conns(
                table(&[server(proto, "10.96.0.1", &[("10.244.0.1", 1)])]),
                "10.244.0.1",
                1,
                0,
            );
            let new = table(&[server(proto, "10.96.0.1", &[("10.244.0.2", 1)])]);
            let d = diff(&new, &old, |_| true, clock(&Draining::new(), DRAIN));
            let key = server(proto, "10.96.0.1", &[]).0;
            let add = format!("-a {} -r 10.244.0.2:8080 -m -w 1", service_arg(&key));
            assert_eq!(lines(&d), [add, removal.to_string()], "{proto}");
            assert_eq!(d.draining.len(), usize::from(proto == Protocol::Tcp));
        }
    }

    #[test]
    fn a_drained_destination_goes_when_idle_or_timed_out_and_not_before() {
        let key = server(Protocol::Tcp, "10.96.0.1", &[]).0;
        let old = table(&[server(Protocol::Tcp, "10.96.0.1", &[("10.244.0.1", 0)])]);
        let new = table(&[server(Protocol::Tcp, "10.96.0.1", &[])]);
        let busy = with_conns(old.clone(), "10.244.0.1", 0, 1);
        let now = Instant::now();
        let mut draining = Draining::new();
        draining.insert((key, (ip("10.244.0.1"), 8080)), now);
        let at = |t: Duration, current: &Table| {
            diff(
                &new,
                current,
                |_| true,
                DrainClock {
                    draining: &draining,
                    now: now + t,
                    timeout: DRAIN,
                },
            )
        };
        // Weight 0 already, connections left: wait.
        let d = at(Duration::from_secs(1), &busy);
        assert!(d.ops.is_empty(), "{:?}", d.ops);
        assert_eq!(d.draining, [(key, (ip("10.244.0.1"), 8080))]);
        // Connections gone: delete.
        assert_eq!(
            lines(&at(Duration::from_secs(1), &old)),
            ["-d -t 10.96.0.1:80 -r 10.244.0.1:8080"]
        );
        // Timed out: delete despite the connection.
        assert_eq!(
            lines(&at(DRAIN, &busy)),
            ["-d -t 10.96.0.1:80 -r 10.244.0.1:8080"]
        );
        // A zero timeout turns draining off.
        let off = diff(
            &new,
            &busy,
            |_| true,
            clock(&Draining::new(), Duration::ZERO),
        );
        assert_eq!(lines(&off), ["-d -t 10.96.0.1:80 -r 10.244.0.1:8080"]);
    }

    #[test]
    fn a_returning_endpoint_gets_its_weight_back_and_settings_are_repaired() {
        let old = table(&[server(Protocol::Tcp, "10.96.0.1", &[("10.244.0.1", 0)])]);
        let mut new = table(&[server(Protocol::Tcp, "10.96.0.1", &[("10.244.0.1", 1)])]);
        for vs in new.values_mut() {
            vs.service = vs.service.clone().scheduler("wrr").persistent(10800);
        }
        let d = diff(&new, &old, |_| true, clock(&Draining::new(), DRAIN));
        assert_eq!(
            lines(&d),
            [
                "-E -t 10.96.0.1:80 -s wrr -p 10800",
                "-e -t 10.96.0.1:80 -r 10.244.0.1:8080 -m -w 1",
            ]
        );
    }

    #[test]
    fn servers_svcproxy_does_not_own_stay_and_nothing_changes_when_equal() {
        let theirs = server(Protocol::Tcp, "192.0.2.1", &[("10.244.0.9", 1)]);
        let ours = server(Protocol::Tcp, "10.96.0.1", &[("10.244.0.1", 1)]);
        let current = table(&[theirs.clone(), ours.clone()]);
        let desired = table(std::slice::from_ref(&ours));
        let d = diff(
            &desired,
            &current,
            |k| *k == ours.0,
            clock(&Draining::new(), DRAIN),
        );
        assert_eq!(d, Diff::default());
    }

    #[test]
    fn applying_the_ops_to_the_view_reaches_the_desired_table() {
        let old = table(&[
            server(Protocol::Tcp, "10.96.0.1", &[("10.244.0.1", 1)]),
            server(Protocol::Udp, "10.96.0.2", &[("10.244.0.1", 1)]),
        ]);
        let new = table(&[
            server(Protocol::Tcp, "10.96.0.1", &[("10.244.0.2", 1)]),
            server(Protocol::Tcp, "10.96.0.3", &[("10.244.0.3", 1)]),
        ]);
        let d = diff(
            &new,
            &old,
            |_| true,
            clock(&Draining::new(), Duration::ZERO),
        );
        let mut view = old.clone();
        for op in &d.ops {
            apply(&mut view, op);
        }
        assert_eq!(view, new);
        assert_eq!(
            OpCounts::of(&d.ops).to_string(),
            "1 virtual server added, 1 virtual server deleted, 2 real servers added, 1 real server deleted"
        );
    }
}
