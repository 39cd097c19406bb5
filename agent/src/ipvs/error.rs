//! Errors of the IPVS client: every failure says which operation, on which service (and
//! destination), and why.

use std::fmt;
use std::io;
use std::net::IpAddr;

use super::types::ServiceKey;

/// The IPVS operation that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    ResolveFamily,
    GetInfo,
    NewService,
    SetService,
    DelService,
    GetService,
    DumpServices,
    NewDest,
    SetDest,
    DelDest,
    DumpDests,
    Flush,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::ResolveFamily => "resolve generic netlink family IPVS",
            Operation::GetInfo => "get info",
            Operation::NewService => "add service",
            Operation::SetService => "edit service",
            Operation::DelService => "delete service",
            Operation::GetService => "get service",
            Operation::DumpServices => "list services",
            Operation::NewDest => "add destination",
            Operation::SetDest => "edit destination",
            Operation::DelDest => "delete destination",
            Operation::DumpDests => "list destinations",
            Operation::Flush => "flush",
        })
    }
}

/// What an operation was applied to, for error messages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Target {
    pub service: Option<ServiceKey>,
    pub dest: Option<(IpAddr, u16)>,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(svc) = &self.service {
            write!(f, " {svc}")?;
        }
        match self.dest {
            Some((IpAddr::V4(a), port)) => write!(f, " -> {a}:{port}"),
            Some((IpAddr::V6(a), port)) => write!(f, " -> [{a}]:{port}"),
            None => Ok(()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel answered the request with a negative errno.
    #[error("IPVS {op}{target} failed: {} (errno {errno}){}",
        io::Error::from_raw_os_error(*errno),
        message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Kernel {
        op: Operation,
        target: Target,
        /// Positive errno (`libc::EEXIST`, `libc::ESRCH`, ...).
        errno: i32,
        /// Extended-ack message, when the kernel gave one.
        message: Option<String>,
    },
    /// The generic netlink family "IPVS" is not registered: the `ip_vs` module is not loaded
    /// (or this kernel has no IPVS).
    #[error(
        "IPVS is not available: generic netlink family \"IPVS\" not found (is the ip_vs module loaded?)"
    )]
    FamilyNotFound,
    /// The request was rejected before being sent.
    #[error("IPVS {op}{target}: invalid request: {reason}")]
    Invalid {
        op: Operation,
        target: Target,
        reason: String,
    },
    /// Socket-level failure (open, send, receive, timeout).
    #[error("IPVS {op}{target}: netlink socket: {source}")]
    Io {
        op: Operation,
        target: Target,
        #[source]
        source: io::Error,
    },
    /// The kernel sent something we could not decode.
    #[error("IPVS {op}{target}: cannot decode kernel reply: {reason}")]
    Decode {
        op: Operation,
        target: Target,
        reason: String,
    },
}

impl Error {
    /// The kernel's errno, for kernel errors.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// The operation that failed (`None` for [`Error::FamilyNotFound`]).
    pub fn operation(&self) -> Option<Operation> {
        match self {
            Error::Kernel { op, .. }
            | Error::Invalid { op, .. }
            | Error::Io { op, .. }
            | Error::Decode { op, .. } => Some(*op),
            Error::FamilyNotFound => None,
        }
    }

    /// The object already exists (EEXIST): adding a service or destination twice.
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// The object does not exist: IPVS answers ESRCH for a missing service and ENOENT for a
    /// missing destination (and for an unknown scheduler).
    pub fn is_not_found(&self) -> bool {
        matches!(self.errno(), Some(libc::ESRCH) | Some(libc::ENOENT))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
