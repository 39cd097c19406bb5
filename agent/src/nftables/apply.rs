//! Whole-ruleset replacement: one transaction that swaps svcproxy's tables for new ones.

use svcproxy_compiler::nft::ir::Ruleset;

use super::batch::Batch;
use super::error::Result;
use super::socket::{Commit, NftSocket};

impl NftSocket {
    /// Replaces the tables of `ruleset` with their new contents in one transaction,
    /// touching no other table. Each table is created if missing, deleted, and created
    /// again with everything in it (what `nft -f` does for `table ip x; delete table ip
    /// x; table ip x { ... }`); packets see the old ruleset or the new one, never a mix.
    ///
    /// The batch carries the generation read just before it, so a concurrent writer
    /// makes it fail with [`super::Error::GenerationChanged`] rather than interleave.
    /// Tables that svcproxy dropped from `ruleset` are not deleted: list them in a
    /// batch of their own with [`Batch::delete_table_if_exists`].
    pub fn apply_full(&mut self, ruleset: &Ruleset) -> Result<Commit> {
        let batch = full_replacement(ruleset)?;
        let generation = self.generation()?;
        self.commit(&batch, Some(generation))
    }
}

/// The batch [`NftSocket::apply_full`] sends.
pub fn full_replacement(ruleset: &Ruleset) -> Result<Batch> {
    let mut batch = Batch::new();
    for table in &ruleset.tables {
        batch.delete_table_if_exists(table.family, &table.name)?;
        batch.add_table(table)?;
    }
    Ok(batch)
}

/// Opens a socket in the current network namespace and applies `ruleset` with
/// [`NftSocket::apply_full`].
pub fn apply_full(ruleset: &Ruleset) -> Result<Commit> {
    NftSocket::open()?.apply_full(ruleset)
}
