//! Which virtual servers are svcproxy's, so that sync and cleanup never delete one
//! that someone else added (`ipvsadm -A`, keepalived, another tool).
//!
//! IPVS stores no owner, comment or tag with a virtual server, so svcproxy records
//! its own in a state file, and also recognises them by address:
//!
//! - the **state file** (`--ipvs-state-file`, default under `/run`, which is cleared at
//!   boot like the IPVS table itself) lists every virtual server svcproxy created or
//!   took over. It is written before a virtual server is created (so a crash cannot
//!   leave an unrecorded one) and after one is deleted; atomically (a new file renamed
//!   over the old). Its header names the boot and the network namespace it was written
//!   in: a file from another boot or namespace is ignored;
//! - a virtual server on an **address bound to svcproxy's dummy interface** is
//!   svcproxy's too: only svcproxy binds addresses there, and nothing else can use
//!   them. This recovers ClusterIP, externalIP and LoadBalancer virtual servers when
//!   the state file is lost; NodePort virtual servers (on node addresses) depend on the
//!   file.
//!
//! A virtual server svcproxy wants is taken over whoever created it: the desired state
//! wins for its own keys.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::ipvs::{Protocol, ServiceKey};

/// Where the state file is unless `--ipvs-state-file` says otherwise.
pub const DEFAULT_STATE_FILE: &str = "/run/svcproxy/ipvs-virtual-servers";

const MAGIC: &str = "# svcproxy IPVS virtual servers (written by svcproxy; do not edit)";

#[derive(Debug, thiserror::Error)]
#[error("IPVS state file {path}: {what}: {source}")]
pub struct Error {
    pub path: String,
    pub what: &'static str,
    #[source]
    pub source: io::Error,
}

/// The virtual servers svcproxy has recorded as its own.
#[derive(Debug)]
pub struct Ownership {
    /// `None`: in memory only (tests, `plan`).
    path: Option<PathBuf>,
    /// Where and when this process runs: boot id and network namespace.
    identity: String,
    keys: BTreeSet<ServiceKey>,
}

impl Ownership {
    /// Reads the state file (a missing one, or one from another boot or network
    /// namespace, records nothing). Must run on the thread that programs IPVS, whose
    /// network namespace is the one recorded.
    pub fn load(path: Option<PathBuf>) -> Result<Ownership, Error> {
        let identity = identity();
        let mut keys = BTreeSet::new();
        if let Some(path) = &path {
            match std::fs::read_to_string(path) {
                Ok(text) => keys = parse(&text, &identity, path),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(Error {
                        path: path.display().to_string(),
                        what: "reading",
                        source,
                    });
                }
            }
        }
        Ok(Ownership {
            path,
            identity,
            keys,
        })
    }

    pub fn contains(&self, key: &ServiceKey) -> bool {
        self.keys.contains(key)
    }

    pub fn keys(&self) -> &BTreeSet<ServiceKey> {
        &self.keys
    }

    /// Records `keys` as svcproxy's (written before they are created).
    pub fn claim(&mut self, keys: impl IntoIterator<Item = ServiceKey>) -> Result<(), Error> {
        let before = self.keys.len();
        self.keys.extend(keys);
        if self.keys.len() != before {
            self.save()?;
        }
        Ok(())
    }

    /// Forgets `keys` (written after they were deleted).
    pub fn release<'a>(
        &mut self,
        keys: impl IntoIterator<Item = &'a ServiceKey>,
    ) -> Result<(), Error> {
        let before = self.keys.len();
        for key in keys {
            self.keys.remove(key);
        }
        if self.keys.len() != before {
            self.save()?;
        }
        Ok(())
    }

    /// Deletes the state file (cleanup).
    pub fn remove_file(&mut self) -> Result<bool, Error> {
        self.keys.clear();
        let Some(path) = &self.path else {
            return Ok(false);
        };
        match std::fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(Error {
                path: path.display().to_string(),
                what: "removing",
                source,
            }),
        }
    }

    fn save(&self) -> Result<(), Error> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let error = |what| {
            move |source| Error {
                path: path.display().to_string(),
                what,
                source,
            }
        };
        let mut text = format!("{MAGIC}\n# {}\n", self.identity);
        for key in &self.keys {
            text.push_str(&key.to_string());
            text.push('\n');
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(error("creating its directory"))?;
        }
        let tmp = temporary(path);
        std::fs::write(&tmp, text).map_err(error("writing"))?;
        std::fs::rename(&tmp, path).map_err(error("replacing"))
    }
}

fn temporary(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// `boot <id> netns <dev>:<inode>`: the file is only valid where it was written.
fn identity() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string());
    let netns = std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| format!("{}:{}", m.dev(), m.ino()))
        .unwrap_or_else(|_| "unknown".to_string());
    format!("boot {boot} netns {netns}")
}

fn parse(text: &str, identity: &str, path: &Path) -> BTreeSet<ServiceKey> {
    let mut lines = text.lines();
    let header_ok = lines.next() == Some(MAGIC)
        && lines.next().and_then(|l| l.strip_prefix("# ")) == Some(identity);
    if !header_ok {
        tracing::warn!(
            "{}: written in another boot or network namespace (or not by svcproxy): ignored",
            path.display()
        );
        return BTreeSet::new();
    }
    lines
        .filter(|l| !l.trim().is_empty())
        .filter_map(|line| {
            let key = parse_key(line);
            if key.is_none() {
                tracing::warn!("{}: ignoring line {line:?}", path.display());
            }
            key
        })
        .collect()
}

/// The inverse of `ServiceKey`'s `Display` for address-based keys:
/// `TCP 10.96.0.10:80`, `UDP [fd00::a]:53`.
pub fn parse_key(line: &str) -> Option<ServiceKey> {
    let (protocol, address) = line.trim().split_once(' ')?;
    let protocol = match protocol {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        "SCTP" => Protocol::Sctp,
        _ => return None,
    };
    let address: SocketAddr = address.parse().ok()?;
    Some(ServiceKey::Addr {
        protocol,
        addr: address.ip(),
        port: address.port(),
    })
}

/// Whether a virtual server on `addr` is svcproxy's because the address is bound to
/// its dummy interface.
pub fn on_interface(key: &ServiceKey, bound: &BTreeSet<IpAddr>) -> bool {
    super::table::address(key).is_some_and(|a| bound.contains(&a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(protocol: Protocol, addr: &str, port: u16) -> ServiceKey {
        ServiceKey::Addr {
            protocol,
            addr: addr.parse().expect("literal"),
            port,
        }
    }

    #[test]
    fn keys_round_trip_through_their_text() {
        for k in [
            key(Protocol::Tcp, "10.96.0.10", 80),
            key(Protocol::Udp, "fd00::a", 53),
            key(Protocol::Sctp, "192.168.1.1", 30000),
        ] {
            assert_eq!(parse_key(&k.to_string()), Some(k), "{k}");
        }
        for bad in ["", "TCP", "TCP 10.0.0.1", "FWM 7 IPv4", "ICMP 10.0.0.1:1"] {
            assert_eq!(parse_key(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_file_is_written_atomically_and_read_back_only_where_it_was_written() {
        let dir = std::env::temp_dir().join(format!("svcproxy-ownership-{}", std::process::id()));
        let path = dir.join("nested").join("state");
        let mut owned = Ownership::load(Some(path.clone())).expect("missing file is fine");
        assert!(owned.keys().is_empty());
        let a = key(Protocol::Tcp, "10.96.0.10", 80);
        let b = key(Protocol::Udp, "fd00::a", 53);
        owned.claim([a, b]).expect("claim");
        assert!(!temporary(&path).exists());
        let again = Ownership::load(Some(path.clone())).expect("load");
        assert_eq!(again.keys(), &BTreeSet::from([a, b]));

        owned.release(&[a]).expect("release");
        let again = Ownership::load(Some(path.clone())).expect("load");
        assert_eq!(again.keys(), &BTreeSet::from([b]));

        // Another boot or namespace: ignored.
        let text = std::fs::read_to_string(&path).expect("read");
        let foreign = text.replace("netns ", "netns 0");
        std::fs::write(&path, foreign).expect("write");
        assert!(
            Ownership::load(Some(path.clone()))
                .expect("load")
                .keys()
                .is_empty()
        );

        assert!(owned.remove_file().expect("remove"));
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
