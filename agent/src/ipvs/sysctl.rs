//! The kernel settings IPVS mode depends on, set when the IPVS syncer starts.
//!
//! `net.*` sysctls belong to a network namespace, and `/proc/sys/net` shows the
//! namespace of the thread that opens the file: these are written from the thread that
//! programs IPVS, so that both act on the same namespace.

use std::io;

/// One `net.*` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sysctl {
    /// Dotted name, as `sysctl` spells it.
    pub name: &'static str,
    pub value: &'static str,
    /// Why svcproxy needs it, for the error message when it cannot be set.
    pub why: &'static str,
}

/// kube-proxy's ipvs mode sets the same ones.
pub const REQUIRED: [Sysctl; 4] = [
    Sysctl {
        name: "net.ipv4.vs.conntrack",
        value: "1",
        why: "IPVS keeps conntrack informed, so the companion table's masquerade applies",
    },
    Sysctl {
        name: "net.ipv4.vs.expire_nodest_conn",
        value: "1",
        why: "connections to a deleted real server are dropped at their next packet instead of hanging",
    },
    Sysctl {
        name: "net.ipv4.vs.expire_quiescent_template",
        value: "1",
        why: "persistence no longer sends clients to a real server with weight 0",
    },
    Sysctl {
        name: "net.ipv4.ip_forward",
        value: "1",
        why: "traffic to remote endpoints is forwarded",
    },
];

#[derive(Debug, thiserror::Error)]
#[error("cannot set {name}={value} ({why}): {path}: {source}")]
pub struct Error {
    pub name: &'static str,
    pub value: &'static str,
    pub why: &'static str,
    pub path: String,
    #[source]
    pub source: io::Error,
}

impl Sysctl {
    pub fn path(&self) -> String {
        format!("/proc/sys/{}", self.name.replace('.', "/"))
    }

    /// Writes the value unless it is already set. Returns whether it changed.
    pub fn ensure(&self) -> Result<bool, Error> {
        let path = self.path();
        let error = |source| Error {
            name: self.name,
            value: self.value,
            why: self.why,
            path: path.clone(),
            source,
        };
        let current = std::fs::read_to_string(&path).map_err(error)?;
        if current.trim() == self.value {
            return Ok(false);
        }
        std::fs::write(&path, self.value).map_err(error)?;
        Ok(true)
    }
}

/// Sets every [`REQUIRED`] sysctl; returns the names of those that changed.
pub fn ensure_required() -> Result<Vec<&'static str>, Error> {
    let mut changed = Vec::new();
    for sysctl in REQUIRED {
        if sysctl.ensure()? {
            changed.push(sysctl.name);
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_proc_paths() {
        assert_eq!(
            REQUIRED[0].path(),
            "/proc/sys/net/ipv4/vs/conntrack",
            "dots become slashes"
        );
    }
}
