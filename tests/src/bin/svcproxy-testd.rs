//! svcproxy-testd: the echo server and prober used by the traffic tests.
//!
//! ```text
//! svcproxy-testd serve --name NAME [--tcp ADDR:PORT]... [--udp ADDR:PORT]...
//! svcproxy-testd probe --tcp|--udp ADDR:PORT [--src IP] [--timeout-ms N] [--count N]
//! ```
//!
//! `serve` answers every TCP connection and every UDP datagram with one line
//! `NAME PEER_IP`, PEER_IP being the source address it saw: that tells a test
//! which endpoint answered and whether the client was masqueraded. It prints
//! `ready` once every socket is bound. `[::]:PORT` also accepts IPv4
//! (reported as plain IPv4, not `::ffff:a.b.c.d`).
//!
//! `probe` prints one line per attempt, each from a fresh socket:
//! `ok NAME PEER_IP`, `refused`, `unreachable`, `timeout`, or `error TEXT`
//! for anything else. It exits 0 whatever the outcomes; only bad usage
//! exits non-zero.
//!
//! std and threads only; libc for the two things std cannot do: bind a TCP
//! socket before connecting (`--src`) and ask for ICMP errors on UDP.

use std::io::{self, BufRead, BufReader, ErrorKind, Write};
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.split_first() {
        Some((mode, rest)) if mode == "serve" => serve(rest),
        Some((mode, rest)) if mode == "probe" => probe(rest),
        _ => Err("usage: svcproxy-testd serve|probe ...".to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("svcproxy-testd: {e}");
            ExitCode::from(2)
        }
    }
}

/// Splits `--flag value --flag value ...` into pairs.
fn pairs(args: &[String]) -> Result<Vec<(&str, &str)>, String> {
    args.chunks(2)
        .map(|c| match c {
            [flag, value] => Ok((flag.as_str(), value.as_str())),
            _ => Err(format!("{} needs a value", c[0])),
        })
        .collect()
}

fn parse<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("bad value for {flag}: {value:?}"))
}

fn serve(args: &[String]) -> Result<(), String> {
    let mut name = None;
    let (mut tcp, mut udp) = (Vec::new(), Vec::new());
    for (flag, value) in pairs(args)? {
        match flag {
            "--name" => name = Some(value.to_owned()),
            "--tcp" => tcp.push(parse::<SocketAddr>(flag, value)?),
            "--udp" => udp.push(parse::<SocketAddr>(flag, value)?),
            _ => return Err(format!("serve: unknown flag {flag}")),
        }
    }
    let name = name.ok_or("serve needs --name")?;
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(format!("--name must be one word, got {name:?}"));
    }
    if tcp.is_empty() && udp.is_empty() {
        return Err("serve needs at least one --tcp or --udp".to_owned());
    }

    // Bind everything before saying `ready`, so a probe sent right after
    // can never hit a port that is not open yet.
    let listeners = tcp
        .iter()
        .map(|a| TcpListener::bind(a).map_err(|e| format!("binding tcp {a}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let sockets = udp
        .iter()
        .map(|a| UdpSocket::bind(a).map_err(|e| format!("binding udp {a}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;

    let mut threads = Vec::new();
    for listener in listeners {
        let name = name.clone();
        threads.push(thread::spawn(move || serve_tcp(&listener, &name)));
    }
    for socket in sockets {
        let name = name.clone();
        threads.push(thread::spawn(move || serve_udp(&socket, &name)));
    }
    let mut stdout = io::stdout();
    writeln!(stdout, "ready")
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("writing ready: {e}"))?;
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn reply(name: &str, peer: SocketAddr) -> String {
    // A dual-stack `[::]` socket sees IPv4 clients as ::ffff:a.b.c.d.
    format!("{name} {}\n", peer.ip().to_canonical())
}

fn serve_tcp(listener: &TcpListener, name: &str) {
    loop {
        match listener.accept() {
            // Write and close. The client sends nothing, so closing sends a
            // FIN, not a reset.
            Ok((mut conn, peer)) => {
                let _ = conn.write_all(reply(name, peer).as_bytes());
            }
            // E.g. ECONNABORTED: the client gave up. Keep serving.
            Err(e) => eprintln!("svcproxy-testd {name}: accept: {e}"),
        }
    }
}

fn serve_udp(socket: &UdpSocket, name: &str) {
    let mut buf = [0u8; 2048];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((_, peer)) => {
                if let Err(e) = socket.send_to(reply(name, peer).as_bytes(), peer) {
                    eprintln!("svcproxy-testd {name}: send to {peer}: {e}");
                }
            }
            Err(e) => eprintln!("svcproxy-testd {name}: recv: {e}"),
        }
    }
}

#[derive(Clone, Copy)]
enum Proto {
    Tcp,
    Udp,
}

fn probe(args: &[String]) -> Result<(), String> {
    let mut target = None;
    let mut src = None;
    let mut timeout = Duration::from_millis(1000);
    let mut count = 1usize;
    for (flag, value) in pairs(args)? {
        match flag {
            "--tcp" => target = Some((Proto::Tcp, parse::<SocketAddr>(flag, value)?)),
            "--udp" => target = Some((Proto::Udp, parse::<SocketAddr>(flag, value)?)),
            "--src" => src = Some(parse::<IpAddr>(flag, value)?),
            "--timeout-ms" => timeout = Duration::from_millis(parse(flag, value)?),
            "--count" => count = parse(flag, value)?,
            _ => return Err(format!("probe: unknown flag {flag}")),
        }
    }
    let (proto, dst) = target.ok_or("probe needs --tcp ADDR:PORT or --udp ADDR:PORT")?;
    // Zero would mean "no timeout" to set_read_timeout (an error, in fact).
    let timeout = timeout.max(Duration::from_millis(1));

    let mut stdout = io::stdout().lock();
    for _ in 0..count {
        let line = match proto {
            Proto::Tcp => probe_tcp(dst, src, timeout),
            Proto::Udp => probe_udp(dst, src, timeout),
        };
        writeln!(stdout, "{line}").map_err(|e| format!("writing result: {e}"))?;
    }
    stdout.flush().map_err(|e| format!("writing result: {e}"))
}

/// Maps an error to a result line.
fn classify(e: &io::Error) -> String {
    match e.kind() {
        ErrorKind::ConnectionRefused => "refused".to_owned(),
        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => "unreachable".to_owned(),
        ErrorKind::TimedOut | ErrorKind::WouldBlock => "timeout".to_owned(),
        _ => format!("error {e}"),
    }
}

/// `NAME PEER_IP\n` from a server becomes `ok NAME PEER_IP`.
fn answer(reply: &str) -> String {
    match reply.split_whitespace().collect::<Vec<_>>().as_slice() {
        [name, peer] if peer.parse::<IpAddr>().is_ok() => format!("ok {name} {peer}"),
        _ => format!("error unexpected reply {reply:?}"),
    }
}

fn probe_tcp(dst: SocketAddr, src: Option<IpAddr>, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let stream = match tcp_connect(dst, src, timeout) {
        Ok(s) => s,
        Err(e) => return classify(&e),
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if let Err(e) = stream.set_read_timeout(Some(left.max(Duration::from_millis(1)))) {
        return format!("error {e}");
    }
    let mut line = String::new();
    match BufReader::new(stream).read_line(&mut line) {
        Ok(0) => "error connection closed without a reply".to_owned(),
        Ok(_) => answer(&line),
        Err(e) => classify(&e),
    }
}

fn probe_udp(dst: SocketAddr, src: Option<IpAddr>, timeout: Duration) -> String {
    match udp_exchange(dst, src, timeout) {
        Ok(reply) => answer(&reply),
        Err(e) => classify(&e),
    }
}

fn udp_exchange(dst: SocketAddr, src: Option<IpAddr>, timeout: Duration) -> io::Result<String> {
    let any = if dst.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    };
    let socket = UdpSocket::bind(SocketAddr::new(src.unwrap_or(any), 0))?;
    // Linux only reports ICMP port unreachable on a connected UDP socket by
    // default; host/net unreachable are "soft" errors that need RECVERR.
    // Without it, UDP to an unroutable address would read as `timeout`
    // where TCP says `unreachable`.
    set_recverr(socket.as_raw_fd(), dst)?;
    // Connected, so only a reply from `dst` counts (as for a real client)
    // and ICMP errors are reported to us.
    socket.connect(dst)?;
    socket.set_read_timeout(Some(timeout))?;
    socket.send(b"probe\n")?;
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// connect(2) with an optional source address and a timeout.
fn tcp_connect(dst: SocketAddr, src: Option<IpAddr>, timeout: Duration) -> io::Result<TcpStream> {
    let family = if dst.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let flags = libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
    // SAFETY: plain socket(2); the fd is owned (and closed) right away.
    let fd = unsafe { OwnedFd::from_raw_fd(cvt(libc::socket(family, flags, 0))?) };
    if let Some(src) = src {
        let (sa, len) = sockaddr(SocketAddr::new(src, 0));
        // SAFETY: sa is a sockaddr of length len.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_storage).cast(),
                len,
            )
        })?;
    }
    // See queued_icmp_error.
    set_recverr(fd.as_raw_fd(), dst)?;
    let (sa, len) = sockaddr(dst);
    // SAFETY: as above.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd.
    if cvt(unsafe { libc::poll(&mut pfd, 1, ms) })? == 0 {
        return Err(ErrorKind::TimedOut.into());
    }
    let stream = TcpStream::from(fd);
    // The connect's outcome (e.g. ECONNREFUSED) is left in SO_ERROR.
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    if pfd.revents & libc::POLLERR != 0 {
        if let Some(e) = queued_icmp_error(stream.as_raw_fd()) {
            return Err(e);
        }
    }
    stream.set_nonblocking(false)?;
    Ok(stream)
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zeroes is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe {
                (&mut storage as *mut libc::sockaddr_storage)
                    .cast::<libc::sockaddr_in>()
                    .write(sin)
            };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe {
                (&mut storage as *mut libc::sockaddr_storage)
                    .cast::<libc::sockaddr_in6>()
                    .write(sin6)
            };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Asks for ICMP errors on the socket's error queue (IP_RECVERR or
/// IPV6_RECVERR, by the family of `dst`).
fn set_recverr(fd: RawFd, dst: SocketAddr) -> io::Result<()> {
    let (level, opt) = if dst.is_ipv4() {
        (libc::IPPROTO_IP, libc::IP_RECVERR)
    } else {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVERR)
    };
    let on: libc::c_int = 1;
    // SAFETY: a pointer/length pair to a live c_int.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&on as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// The error of an ICMP message queued on a connecting TCP socket.
///
/// Over veth, the SYN is forwarded by the node and its ICMP error (e.g. from
/// an nft `reject`) delivered back, all inside the connect() call, while the
/// socket is locked. IPv6 TCP then only records a "soft" error and waits
/// for the SYN retransmit a second later (TcpExtLockDroppedIcmps counts
/// these). The ICMP still lands on the error queue, which wakes poll() with
/// POLLERR at once: read the errno from there instead of waiting.
fn queued_icmp_error(fd: RawFd) -> Option<io::Error> {
    let mut control = [0u64; 64]; // u64 for cmsghdr alignment
    // SAFETY: all-zeroes is a valid msghdr (no name, no iovecs).
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = mem::size_of_val(&control);
    // SAFETY: msg points at a live control buffer of the given size.
    if unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) } < 0 {
        return None;
    }
    // SAFETY: the CMSG_* walk stays within msg_controllen, as filled in by
    // the kernel; a RECVERR message carries a sock_extended_err.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let c = &*cmsg;
            if (c.cmsg_level, c.cmsg_type) == (libc::IPPROTO_IP, libc::IP_RECVERR)
                || (c.cmsg_level, c.cmsg_type) == (libc::IPPROTO_IPV6, libc::IPV6_RECVERR)
            {
                let ee = libc::CMSG_DATA(cmsg)
                    .cast::<libc::sock_extended_err>()
                    .read_unaligned();
                return Some(io::Error::from_raw_os_error(ee.ee_errno as i32));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    None
}

/// -1 from a libc call becomes the errno as an io::Error.
fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}
