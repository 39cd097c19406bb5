//! Errors of the nf_tables netlink layer.

use std::fmt;

/// `ERESTART` (Linux): what the kernel answers to a batch whose generation id is stale.
pub const ERESTART: i32 = 85;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket itself failed (open, send, receive).
    #[error("nf_tables netlink socket: {context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// The kernel rejected one or more messages of a batch; nothing was applied.
    #[error("{0}")]
    Rejected(BatchRejected),

    /// The batch carried the generation we read, and someone else committed a change
    /// since then. Nothing was applied; re-read and retry.
    #[error("nf_tables ruleset changed concurrently: generation {expected} is stale")]
    GenerationChanged { expected: u32 },

    /// An incremental (fragment) sync cannot make this set: no rule of the fragment
    /// refers to it, or its definition changed. Only a whole sync can.
    #[error("set {set} is beyond an incremental sync: this change needs a whole sync")]
    NeedsWholeSync { set: String },

    /// The ruleset changed while we were reading it; read again.
    #[error("nf_tables ruleset changed while it was being read")]
    Interrupted,

    /// The kernel dropped replies because our receive buffer overflowed, so the outcome
    /// of the batch is unknown: re-read the kernel state.
    #[error("lost netlink replies (receive buffer overrun): outcome of the request unknown")]
    RepliesLost,

    /// A non-batch request (dump, get) failed.
    #[error("nf_tables request {what} failed: {source}")]
    Request {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// The IR asks for something this layer cannot express in netlink.
    #[error("cannot encode {0}")]
    Encode(String),

    /// The kernel sent something we cannot parse or map back to the IR.
    #[error("cannot decode nf_tables data: {0}")]
    Decode(String),
}

impl Error {
    pub(crate) fn io(context: &'static str, source: std::io::Error) -> Error {
        Error::Io { context, source }
    }

    pub(crate) fn encode(what: impl Into<String>) -> Error {
        Error::Encode(what.into())
    }

    pub(crate) fn decode(what: impl Into<String>) -> Error {
        Error::Decode(what.into())
    }

    pub(crate) fn missing(what: &str) -> Error {
        Error::Decode(format!("missing {what}"))
    }
}

/// Every message of a batch the kernel refused, in the order it reported them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRejected {
    pub failures: Vec<MessageFailure>,
}

/// One refused message: its sequence number, what it was meant to do, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageFailure {
    pub seq: u32,
    /// What the message was meant to do, e.g. `add rule to chain ip svcproxy/services`.
    pub what: String,
    /// Positive errno.
    pub errno: i32,
    /// The kernel's extended-ack message, when it sent one.
    pub detail: Option<String>,
}

impl fmt::Display for MessageFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reason = std::io::Error::from_raw_os_error(self.errno);
        write!(f, "{} (message seq {}): {reason}", self.what, self.seq)?;
        if let Some(detail) = &self.detail {
            write!(f, " ({detail})")?;
        }
        Ok(())
    }
}

impl fmt::Display for BatchRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kernel rejected nf_tables batch: ")?;
        for (i, failure) in self.failures.iter().enumerate() {
            if i > 0 {
                write!(f, "; ")?;
            }
            write!(f, "{failure}")?;
        }
        Ok(())
    }
}

impl std::error::Error for BatchRejected {}
