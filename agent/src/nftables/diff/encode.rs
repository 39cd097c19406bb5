//! Changes as a netlink transaction.

use super::super::batch::Batch;
use super::super::error::Result;
use super::super::socket::{Commit, NftSocket};
use super::{Change, Changes, Op};

impl Changes {
    /// The transaction that applies the changes, one request per operation except:
    /// `AddRules` sends one per rule (plus two per anonymous set a rule uses), element
    /// lists are split over requests of at most 32 KiB, and `AddTable` sends the table
    /// and everything in it.
    pub fn to_batch(&self) -> Result<Batch> {
        let mut batch = Batch::new();
        for change in &self.ops {
            encode(&mut batch, change)?;
        }
        Ok(batch)
    }
}

fn encode(batch: &mut Batch, change: &Change) -> Result<()> {
    let family = change.family;
    let table = change.table.as_str();
    match &change.op {
        Op::AddTable(t) => batch.add_table(t)?,
        Op::DeleteTable => batch.delete_table(family, table),
        Op::DeleteElements { set, elements } => {
            batch.delete_elements(family, table, set, elements)?
        }
        Op::FlushSet(set) => batch.flush_set(family, table, &set.name),
        Op::FlushChain(chain) => batch.flush_chain(family, table, chain),
        Op::DeleteSet(set) => batch.delete_set(family, table, &set.name),
        Op::DeleteChain(chain) => batch.delete_chain(family, table, chain),
        Op::AddChain(chain) => batch.add_chain(family, table, chain)?,
        Op::AddSet(set) => batch.add_set(family, table, set)?,
        Op::AddElements { set, elements } => batch.add_elements(family, table, set, elements)?,
        Op::AddRules { chain, rules } => {
            for (index, rule) in rules.iter().enumerate() {
                batch.add_rule(family, table, chain, index, rule)?;
            }
        }
    }
    Ok(())
}

impl NftSocket {
    /// Sends `changes` as one transaction, or nothing at all (`Ok(None)`) when they
    /// are empty: a sync that finds nothing to do costs no netlink round trip.
    pub fn commit_changes(
        &mut self,
        changes: &Changes,
        expected_generation: Option<u32>,
    ) -> Result<Option<Commit>> {
        if changes.is_empty() {
            return Ok(None);
        }
        let batch = changes.to_batch()?;
        self.commit(&batch, expected_generation).map(Some)
    }
}
