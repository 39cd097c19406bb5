//! What the agent's kernel tests share: the test namespace (`svcproxy_tests::Netns`,
//! created with `lo` up and deleted on drop) with shorthands that fail the test on
//! error. Each test file uses some of them.
#![allow(dead_code)]

use std::net::IpAddr;

use svcproxy_agent::nftables::NftSocket;

pub use svcproxy_tests::require_kernel;

pub struct Netns(svcproxy_tests::Netns);

impl Netns {
    pub fn new(label: &str) -> Netns {
        let ns = svcproxy_tests::Netns::new(label).expect("creating a network namespace");
        // Links come up at once: no duplicate address detection, not even for the
        // link-local addresses that neighbour discovery uses (it would take ~2 s).
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0")
            .expect("accept_dad");
        Netns(ns)
    }

    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// Runs `f` on a thread that has entered the namespace. Sockets it creates stay
    /// in the namespace wherever they are used later.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.0.enter(f).expect("entering the namespace")
    }

    /// An nf_tables socket in the namespace.
    pub fn socket(&self) -> NftSocket {
        self.enter(|| NftSocket::open().expect("open nf_tables socket"))
    }

    pub fn ip(&self, args: &[&str]) -> String {
        self.0.ip(args).expect("ip")
    }

    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        self.0
            .exec(program, args)
            .expect("command in the namespace")
    }

    /// `nft ARGS...`, returning stdout.
    pub fn nft(&self, args: &[&str]) -> String {
        self.exec("nft", args)
    }

    /// `nft -f -` of `text`.
    pub fn nft_load(&self, text: &str) {
        self.0.nft(text).expect("nft -f")
    }

    /// `nft -f -` of `text`, nft's complaint as the error.
    pub fn try_nft_load(&self, text: &str) -> Result<(), String> {
        self.0.nft(text).map_err(|e| format!("{e:#}"))
    }

    /// The oracle of the conntrack tests: `conntrack -L` lines of `protocol` to
    /// `orig_dst`.
    pub fn conntrack_list(&self, protocol: &str, orig_dst: IpAddr) -> Vec<String> {
        let family = if orig_dst.is_ipv4() { "ipv4" } else { "ipv6" };
        let dst = orig_dst.to_string();
        let out = self.exec(
            "conntrack",
            &["-L", "-f", family, "-p", protocol, "--orig-dst", &dst],
        );
        out.lines().map(str::to_owned).collect()
    }
}
