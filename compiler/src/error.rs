//! Diagnostics: every problem names where it was found (file, document, object, field).

use std::fmt;
use std::sync::Arc;

/// Where an object came from: a file, the document inside it, and for `kind: List`,
/// the item inside the list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Origin {
    /// Shared by every object of the file: each object, slice and diagnostic keeps
    /// its origin.
    pub file: Arc<str>,
    /// 1-based document number in a multi-document YAML stream.
    pub document: usize,
    /// Index inside `items` of a `kind: List` document.
    pub item: Option<usize>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.document > 0 {
            write!(f, " (document {}", self.document)?;
            if let Some(item) = self.item {
                write!(f, ", items[{item}]")?;
            }
            write!(f, ")")?;
        }
        Ok(())
    }
}

/// One problem with the input, rendered on one line:
/// `FILE (document N): KIND NAMESPACE/NAME: FIELD: MESSAGE`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Diagnostic {
    pub origin: Origin,
    /// `Service default/web`, when the object is known.
    pub object: Option<String>,
    /// The field path inside the object, like `spec.ports[0].port`.
    pub field: Option<String>,
    pub message: String,
    /// What svcproxy did about it when it carried on (`the Service is skipped`);
    /// `None` when the problem is fatal.
    pub skipped: Option<String>,
}

impl Diagnostic {
    pub fn new(origin: &Origin, message: impl Into<String>) -> Self {
        Diagnostic {
            origin: origin.clone(),
            object: None,
            field: None,
            message: message.into(),
            skipped: None,
        }
    }

    /// Marks the problem as tolerated: the named thing is left out, the rest compiles.
    pub fn skipping(mut self, what: &str) -> Self {
        self.skipped = Some(format!("the {what} is skipped"));
        self
    }

    /// The same problem, reported as fatal (`--strict`).
    pub fn fatal(mut self) -> Self {
        self.skipped = None;
        self
    }

    pub fn object(mut self, object: impl Into<String>) -> Self {
        self.object = Some(object.into());
        self
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(object) = &self.object {
            write!(f, ": {object}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        // Keep the whole diagnostic on one line whatever the underlying error printed.
        write!(f, ": {}", self.message.replace('\n', " "))?;
        if let Some(skipped) = &self.skipped {
            write!(f, "; {skipped}")?;
        }
        Ok(())
    }
}

/// A snapshot that cannot be compiled at all. Nothing is produced; the agent keeps the
/// last good state.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// The input itself is broken: unreadable syntax, duplicates, conflicts.
    #[error("{}", join_lines(.0))]
    Invalid(Vec<Diagnostic>),
    /// A node-context setting (a flag) is invalid.
    #[error("invalid node configuration: {0}")]
    Config(String),
}

fn join_lines(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
