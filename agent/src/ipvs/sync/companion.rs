//! The companion nftables table of IPVS mode (`svcproxy-ipvs`, one per family), kept
//! equal to the compiler's through the nf_tables netlink layer.
//!
//! Each change replaces the tables whole in one transaction (`apply_full`'s batch),
//! carrying the generation it was computed against, so a concurrent writer makes it
//! fail and start over from a read-back rather than interleave. Like the nftables
//! syncer, a steady-state sync trusts what it committed last (the generation check
//! proves nobody changed it since); a full sync reads the tables back and repairs any
//! drift.

use svcproxy_compiler::ipvs::table::TABLE_NAME;
use svcproxy_compiler::nft::ir::{Family, Ruleset};

use crate::nftables::{self, Batch, NftSocket};

/// The tables of this module, whichever families are in use: a family that
/// disappears from the desired state gets its table deleted.
const OWNED: [(Family, &str); 2] = [(Family::Ip, TABLE_NAME), (Family::Ip6, TABLE_NAME)];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// nf_tables is there but not for this family (the user-mode-linux test kernel
    /// has neither `ip` nor `ip6`), or not there at all.
    #[error(
        "nftables cannot hold the companion table {family} {TABLE_NAME}: {reason}; IPVS mode needs it \
         for masquerading, hairpin traffic and rejecting traffic without endpoints \
         (--ipvs-without-nftables runs without it)"
    )]
    Unavailable {
        family: &'static str,
        reason: String,
    },
    #[error("companion table {TABLE_NAME}: {0}")]
    Nft(#[from] nftables::Error),
}

/// Keeps the companion tables equal to a desired ruleset.
pub struct Companion {
    socket: NftSocket,
    /// What the kernel held after our last successful commit, and its generation.
    committed: Option<(Ruleset, u32)>,
}

impl std::fmt::Debug for Companion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Companion").finish_non_exhaustive()
    }
}

impl Companion {
    /// Opens a socket and checks that both families can hold a table, so that a
    /// kernel without them fails at start, not at the first sync.
    pub fn open() -> Result<Companion, Error> {
        let socket = NftSocket::open().map_err(|e| Error::Unavailable {
            family: "ip",
            reason: format!("no nf_tables netlink ({e})"),
        })?;
        let mut companion = Companion {
            socket,
            committed: None,
        };
        companion.probe()?;
        Ok(companion)
    }

    /// Opens a socket without checking the families (cleanup deletes what exists).
    pub fn open_unchecked() -> Result<Companion, Error> {
        Ok(Companion {
            socket: NftSocket::open()?,
            committed: None,
        })
    }

    /// Creates and deletes, in one transaction, the table of each family that does
    /// not exist yet: nothing changes, but a missing family is refused.
    fn probe(&mut self) -> Result<(), Error> {
        let (current, generation) = self.socket.read_tables(&OWNED)?;
        let mut batch = Batch::new();
        for (family, name) in OWNED {
            if !current.tables.iter().any(|t| t.family == family) {
                batch.delete_table_if_exists(family, name)?;
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        match self.socket.commit(&batch, Some(generation)) {
            // Someone committed meanwhile; their change says nothing about us.
            Ok(_) | Err(nftables::Error::GenerationChanged { .. }) => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Makes the kernel hold `desired`; returns the messages sent (0: it already
    /// did). With `full`, reads the tables back first.
    pub fn sync(&mut self, desired: &Ruleset, full: bool) -> Result<usize, Error> {
        if !full && let Some((committed, generation)) = &self.committed {
            if same(committed, desired) {
                return Ok(0);
            }
            let generation = *generation;
            let batch = replacement(committed, desired)?;
            match self.commit(&batch, generation, desired) {
                Ok(messages) => return Ok(messages),
                Err(Error::Nft(nftables::Error::GenerationChanged { .. })) => {
                    tracing::info!("nftables changed since the last sync; reading it back");
                }
                Err(e) => return Err(e),
            }
        }
        let (current, generation) = self.read()?;
        if same(&current, desired) {
            self.committed = Some((desired.clone(), generation));
            return Ok(0);
        }
        let batch = replacement(&current, desired)?;
        self.commit(&batch, generation, desired)
    }

    /// Whether the kernel's tables differ from `desired` (read back, nothing changed).
    pub fn differs(&mut self, desired: &Ruleset) -> Result<bool, Error> {
        let (current, _) = self.read()?;
        Ok(!same(&current, desired))
    }

    /// Deletes the companion tables; returns how many there were.
    pub fn delete(&mut self) -> Result<usize, Error> {
        let (current, _) = self.read()?;
        if current.tables.is_empty() {
            return Ok(0);
        }
        let mut batch = Batch::new();
        for table in &current.tables {
            batch.delete_table_if_exists(table.family, &table.name)?;
        }
        self.socket.commit(&batch, None)?;
        self.committed = None;
        Ok(current.tables.len())
    }

    fn read(&mut self) -> Result<(Ruleset, u32), Error> {
        Ok(self.socket.read_tables(&OWNED)?)
    }

    fn commit(
        &mut self,
        batch: &Batch,
        generation: u32,
        desired: &Ruleset,
    ) -> Result<usize, Error> {
        match self.socket.commit(batch, Some(generation)) {
            Ok(commit) => {
                self.committed = Some((desired.clone(), commit.generation));
                Ok(commit.messages)
            }
            Err(e) => {
                // The batch failed as a whole: the kernel is unchanged, but the next
                // attempt reads it back rather than trust our copy.
                self.committed = None;
                Err(unavailable(e))
            }
        }
    }
}

/// Both rulesets hold the same tables (in any order).
fn same(current: &Ruleset, desired: &Ruleset) -> bool {
    current.tables.len() == desired.tables.len()
        && current.tables.iter().all(|t| desired.tables.contains(t))
}

/// Deletes the tables of `current` whose family `desired` no longer has, and replaces
/// every desired table whole.
fn replacement(current: &Ruleset, desired: &Ruleset) -> Result<Batch, nftables::Error> {
    let mut batch = Batch::new();
    for table in &current.tables {
        if !desired.tables.iter().any(|t| t.family == table.family) {
            batch.delete_table_if_exists(table.family, &table.name)?;
        }
    }
    for table in &desired.tables {
        batch.delete_table_if_exists(table.family, &table.name)?;
        batch.add_table(table)?;
    }
    Ok(batch)
}

/// A refusal that means "this kernel has no such family" becomes [`Error::Unavailable`].
fn unavailable(e: nftables::Error) -> Error {
    if let nftables::Error::Rejected(rejected) = &e
        && let Some(failure) = rejected
            .failures
            .iter()
            .find(|f| matches!(f.errno, libc::EOPNOTSUPP | libc::EAFNOSUPPORT))
    {
        let family = if failure.what.contains(" ip6 ") {
            "ip6"
        } else {
            "ip"
        };
        return Error::Unavailable {
            family,
            reason: format!("the kernel refuses it ({failure})"),
        };
    }
    Error::Nft(e)
}
