//! The nftables syncer.

use std::time::{Duration, Instant};

use svcproxy_compiler::nft::TABLE_NAME;
use svcproxy_compiler::nft::ir::{Element, Family, Rule, Ruleset};

use super::affinity::{StaleAffinity, stale_affinity};
use super::fragment;
use crate::nftables::{self, Batch, Change, Changes, Error, NftSocket, Op, apply_all, diff};

/// Attempts at deleting stale affinity entries: an entry can time out between the
/// dump and the deletion, which fails the batch (ENOENT); the next dump will not have
/// it.
const AFFINITY_ATTEMPTS: usize = 3;

/// The tables svcproxy owns, whichever families are in use: a family that disappears
/// from the desired state gets its table deleted.
const OWNED: [(Family, &str); 2] = [(Family::Ip, TABLE_NAME), (Family::Ip6, TABLE_NAME)];

/// A failpoint for the fault tests: with `SVCPROXY_FAILPOINT_REJECT_COMMITS=N` in its
/// environment, the syncer spoils the N commits that follow its first successful one
/// with a message the kernel refuses (a rule for a chain that does not exist), so that
/// a test can watch a real kernel reject a real batch and the agent report it, keep
/// the previous ruleset and retry. Unset (always, outside tests), it does nothing.
pub const FAILPOINT_REJECT_COMMITS: &str = "SVCPROXY_FAILPOINT_REJECT_COMMITS";

/// Whether a change only adds or deletes elements (of sets that exist before and after).
fn is_element_change(change: &Change) -> bool {
    matches!(
        change.op,
        Op::AddElements { .. } | Op::DeleteElements { .. }
    )
}

/// The chain the failpoint's rule names; it never exists.
const FAILPOINT_CHAIN: &str = "failpoint-no-such-chain";

/// How a sync found out what the kernel holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncKind {
    /// Diffed against what svcproxy committed last: no kernel listing.
    Partial,
    /// Diffed against a read-back of svcproxy's tables (first sync, resync, or after
    /// someone else changed the ruleset).
    Full,
}

/// What one sync did.
#[derive(Debug, Clone)]
pub struct SyncOutcome {
    pub kind: SyncKind,
    /// The changes sent; empty when the kernel already matched.
    pub changes: Changes,
    /// Messages in the transaction (0 when nothing was sent).
    pub messages: usize,
    pub duration: Duration,
    /// Where the time went, when something was committed.
    pub timing: Option<CommitTiming>,
    /// ClientIP-affinity entries deleted after the commit because their endpoint left
    /// (see `sync::affinity`).
    pub affinity_entries_deleted: usize,
}

/// How long each step of a committed sync took: what is ours (diff, encoding, acks)
/// against what is the kernel's (the transaction inside `sendmsg`).
#[derive(Debug, Clone, Copy, Default)]
pub struct CommitTiming {
    pub diff: Duration,
    /// IR to netlink messages, and messages to wire bytes.
    pub encode: Duration,
    pub kernel: Duration,
    pub acks: Duration,
    pub bytes: usize,
}

/// Keeps svcproxy's nftables tables equal to a desired ruleset.
pub struct NftSyncer {
    socket: NftSocket,
    /// What the kernel held after our last successful commit, and its generation.
    committed: Option<(Ruleset, u32)>,
    /// Timing of the last commit, for the outcome.
    timing: Option<CommitTiming>,
    /// Commits still to spoil ([`FAILPOINT_REJECT_COMMITS`]), and whether one has
    /// succeeded yet (the failpoint spares the first).
    failpoint_rejects: u32,
    committed_once: bool,
    /// Stale affinity entries the last sync deleted, for the outcome.
    affinity_deleted: usize,
    /// Element changes that fragment syncs committed and `committed` does not show
    /// yet ([`NftSyncer::settle`]).
    pending: Vec<Change>,
    /// Endpoint counts of the kernel's state: made by whole syncs, kept up to date
    /// by fragment syncs; `None` when `committed` is.
    endpoint_users: Option<fragment::EndpointUsers>,
}

impl NftSyncer {
    /// Opens a netlink socket in the calling thread's network namespace.
    pub fn new() -> nftables::Result<NftSyncer> {
        let failpoint_rejects = std::env::var(FAILPOINT_REJECT_COMMITS)
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if failpoint_rejects > 0 {
            tracing::warn!(
                "{FAILPOINT_REJECT_COMMITS}={failpoint_rejects}: the {failpoint_rejects} \
                 commits after the first will be made to fail (a test failpoint)"
            );
        }
        Ok(NftSyncer {
            socket: NftSocket::open()?,
            committed: None,
            timing: None,
            failpoint_rejects,
            committed_once: false,
            affinity_deleted: 0,
            pending: Vec::new(),
            endpoint_users: None,
        })
    }

    /// Makes the kernel hold `desired`, sending only the difference. Uses what was
    /// committed last when nobody has changed the ruleset since (the generation check
    /// in the commit proves it); otherwise reads the kernel back first.
    pub fn sync(&mut self, desired: &Ruleset) -> nftables::Result<SyncOutcome> {
        let started = Instant::now();
        self.reset();
        self.settle();
        if let Some((current, generation)) = &self.committed {
            let changes = diff(current, desired);
            if changes.is_empty() {
                return Ok(self.outcome(SyncKind::Partial, changes, 0, started));
            }
            let generation = *generation;
            let diffed = started.elapsed();
            let stale = stale_affinity(current, desired, &changes);
            match self.commit(&changes, generation, desired, diffed) {
                Ok(messages) => {
                    self.clear_stale_affinity(&stale);
                    return Ok(self.outcome(SyncKind::Partial, changes, messages, started));
                }
                // Someone else committed since our last sync: our view may be stale.
                Err(Error::GenerationChanged { .. }) => {
                    tracing::info!("nftables changed since the last sync; reading it back");
                }
                Err(e) => {
                    // The batch failed as a whole; the kernel is unchanged, but make
                    // the next attempt look at the kernel rather than trust our view.
                    self.committed = None;
                    self.endpoint_users = None;
                    self.pending.clear();
                    return Err(e);
                }
            }
        }
        self.sync_from_kernel(desired, started)
    }

    /// Repairs any difference between the kernel and `desired` (rules, chains or
    /// elements changed behind svcproxy's back).
    ///
    /// Every change to nf_tables, by anyone, is a commit, and every commit moves the
    /// ruleset's generation. So when the generation is still the one svcproxy's last
    /// commit produced, nothing can have drifted and the kernel is not read back
    /// (reading a 50,000-service table back costs seconds of kernel time); the sync
    /// then diffs against the committed state, as [`NftSyncer::sync`] does. When the
    /// generation moved (someone else committed, to any table), svcproxy's tables are
    /// read back and compared.
    pub fn resync(&mut self, desired: &Ruleset) -> nftables::Result<SyncOutcome> {
        self.reset();
        if let Some((_, generation)) = &self.committed {
            let generation = *generation;
            if self.socket.generation()? == generation {
                return self.sync(desired);
            }
        }
        self.sync_from_kernel(desired, Instant::now())
    }

    /// Applies a change confined to some Services, given their fragments
    /// ([`svcproxy_compiler::nft::fragment`]) before and after it: only those
    /// Services' rules and map elements are compared and sent, so the cost does not
    /// grow with the rest of the ruleset. Needs a previous sync (the generation it
    /// committed proves the kernel still holds what it did); without one, or when
    /// someone else changed the ruleset since, it returns
    /// [`Error::GenerationChanged`] and the caller does a whole [`NftSyncer::sync`];
    /// so does a change that needs a set a fragment cannot make (one no rule of the
    /// fragment refers to, or one whose definition changed): [`Error::NeedsWholeSync`].
    pub fn sync_fragment(
        &mut self,
        before: &Ruleset,
        after: &Ruleset,
    ) -> nftables::Result<SyncOutcome> {
        let started = Instant::now();
        self.reset();
        let Some((_, generation)) = &self.committed else {
            return Err(Error::GenerationChanged { expected: 0 });
        };
        let generation = *generation;
        let changes = diff(before, after);
        let changes = match &self.committed {
            Some((state, _)) => fragment::fit_to_committed(
                changes,
                before,
                state,
                &self.pending,
                &mut self.endpoint_users,
            )
            .map_err(|e| Error::NeedsWholeSync { set: e.set })?,
            None => changes,
        };
        if changes.is_empty() {
            return Ok(self.outcome(SyncKind::Partial, changes, 0, started));
        }
        let diffed = started.elapsed();
        let encoding = Instant::now();
        let mut batch = changes.to_batch()?;
        let encode = encoding.elapsed();
        self.failpoint(&mut batch)?;
        match self.socket.commit(&batch, Some(generation)) {
            Ok(commit) => {
                self.committed_once = true;
                let (state, _) = self.committed.take().expect("checked above");
                let mut state = state;
                // Element changes wait in `pending`: merging them into the committed
                // state costs a pass over sets of 250,000 elements, which the next
                // whole sync pays once for all of them.
                if changes.ops.iter().all(is_element_change) {
                    self.pending.extend(changes.ops.iter().cloned());
                } else {
                    apply_all(&std::mem::take(&mut self.pending), &mut state);
                    changes.apply_to(&mut state);
                }
                self.committed = Some((state, commit.generation));
                if let Some(users) = &mut self.endpoint_users {
                    users.apply(&changes.ops);
                }
                self.timing = Some(timing(diffed, encode, &commit));
                let messages = commit.messages;
                self.clear_stale_affinity(&stale_affinity(before, after, &changes));
                Ok(self.outcome(SyncKind::Partial, changes, messages, started))
            }
            Err(e) => {
                self.committed = None;
                self.endpoint_users = None;
                self.pending.clear();
                Err(e)
            }
        }
    }

    /// Reads the kernel back and returns what a sync would change, without changing it.
    pub fn plan(&mut self, desired: &Ruleset) -> nftables::Result<Changes> {
        let (current, _) = self.read_owned()?;
        Ok(diff(&current, desired))
    }

    /// The kernel's copy of svcproxy's tables.
    pub fn read_owned(&mut self) -> nftables::Result<(Ruleset, u32)> {
        self.socket.read_tables(&OWNED)
    }

    /// Brings the committed state up to date with the element changes of fragment
    /// syncs, all at once.
    fn settle(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        if let Some((state, _)) = &mut self.committed {
            apply_all(&pending, state);
        }
    }

    /// Forgets what was committed: the next sync reads the kernel back.
    pub fn invalidate(&mut self) {
        self.committed = None;
        self.endpoint_users = None;
        self.pending.clear();
    }

    fn sync_from_kernel(
        &mut self,
        desired: &Ruleset,
        started: Instant,
    ) -> nftables::Result<SyncOutcome> {
        let (current, generation) = self.read_owned()?;
        let diffing = Instant::now();
        let changes = diff(&current, desired);
        if changes.is_empty() {
            self.committed = Some((desired.clone(), generation));
            self.endpoint_users = Some(fragment::EndpointUsers::of(desired, &[]));
            self.pending.clear();
            return Ok(self.outcome(SyncKind::Full, changes, 0, started));
        }
        let diffed = diffing.elapsed();
        let messages = self
            .commit(&changes, generation, desired, diffed)
            .inspect_err(|_| {
                self.committed = None;
                self.endpoint_users = None;
                self.pending.clear();
            })?;
        self.clear_stale_affinity(&stale_affinity(&current, desired, &changes));
        Ok(self.outcome(SyncKind::Full, changes, messages, started))
    }

    fn reset(&mut self) {
        self.timing = None;
        self.affinity_deleted = 0;
    }

    /// Deletes the affinity entries that point at endpoints the commit just removed
    /// (see `sync::affinity`), in a transaction of their own on top of the commit's
    /// generation. A failure is logged, not returned: the sync itself succeeded, and
    /// the entries only live until their timeout.
    fn clear_stale_affinity(&mut self, stale: &[StaleAffinity]) {
        for map in stale {
            match self.clear_stale_map(map) {
                Ok(0) => {}
                Ok(deleted) => {
                    self.affinity_deleted += deleted;
                    tracing::info!(
                        map = %map.map.name,
                        family = map.family.keyword(),
                        deleted,
                        "deleted ClientIP-affinity entries of removed endpoints"
                    );
                }
                Err(e) => tracing::warn!(
                    map = %map.map.name,
                    family = map.family.keyword(),
                    "could not delete ClientIP-affinity entries of removed endpoints: {e}"
                ),
            }
        }
    }

    fn clear_stale_map(&mut self, stale: &StaleAffinity) -> nftables::Result<usize> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some(entries) =
                self.socket
                    .read_map_entries(stale.family, &stale.table, &stale.map.name)?
            else {
                return Ok(0);
            };
            let keys: Vec<Element> = entries
                .into_iter()
                .filter(|e| !stale.valid.contains(e.data.as_slice()))
                .map(|e| Element::new(e.key))
                .collect();
            if keys.is_empty() {
                return Ok(0);
            }
            let mut batch = Batch::new();
            batch.delete_elements(stale.family, &stale.table, &stale.map, &keys)?;
            // On top of what we committed: if someone else changed the ruleset since,
            // the next sync reads it back, and this waits for another removal.
            let expected = self.committed.as_ref().map(|(_, generation)| *generation);
            match self.socket.commit(&batch, expected) {
                Ok(commit) => {
                    // Elements of dynamic maps are not part of the committed IR; only
                    // the generation moved.
                    if let Some((_, generation)) = &mut self.committed {
                        *generation = commit.generation;
                    }
                    return Ok(keys.len());
                }
                Err(Error::Rejected(_)) if attempt < AFFINITY_ATTEMPTS => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Commits `changes` on top of `generation`; on success `desired` is what the
    /// kernel holds.
    fn commit(
        &mut self,
        changes: &Changes,
        generation: u32,
        desired: &Ruleset,
        diffed: Duration,
    ) -> nftables::Result<usize> {
        let encoding = Instant::now();
        let mut batch = changes.to_batch()?;
        let encode = encoding.elapsed();
        self.failpoint(&mut batch)?;
        let commit = self.socket.commit(&batch, Some(generation))?;
        self.committed_once = true;
        self.committed = Some((desired.clone(), commit.generation));
        // Made now, with the whole sync, rather than by the first endpoint change
        // after it: tens of milliseconds at 50k Services.
        self.endpoint_users = Some(fragment::EndpointUsers::of(desired, &[]));
        self.pending.clear();
        self.timing = Some(timing(diffed, encode, &commit));
        Ok(commit.messages)
    }

    /// Spoils `batch` if the failpoint says so (see [`FAILPOINT_REJECT_COMMITS`]).
    fn failpoint(&mut self, batch: &mut nftables::Batch) -> nftables::Result<()> {
        if self.failpoint_rejects == 0 || !self.committed_once {
            return Ok(());
        }
        self.failpoint_rejects -= 1;
        let rule = Rule {
            stmts: Vec::new(),
            comment: None,
        };
        batch.add_rule(Family::Ip, TABLE_NAME, FAILPOINT_CHAIN, 0, &rule)
    }

    fn outcome(
        &self,
        kind: SyncKind,
        changes: Changes,
        messages: usize,
        started: Instant,
    ) -> SyncOutcome {
        SyncOutcome {
            kind,
            changes,
            messages,
            duration: started.elapsed(),
            timing: self.timing,
            affinity_entries_deleted: self.affinity_deleted,
        }
    }
}

fn timing(diff: Duration, encode: Duration, commit: &nftables::Commit) -> CommitTiming {
    CommitTiming {
        diff,
        encode: encode + commit.emit_time,
        kernel: commit.kernel_time,
        acks: commit.ack_time,
        bytes: commit.bytes,
    }
}

/// Deletes svcproxy's tables (both families) and nothing else. Returns how many existed.
pub fn cleanup(socket: &mut NftSocket) -> nftables::Result<usize> {
    let (current, _) = socket.read_tables(&OWNED)?;
    if current.tables.is_empty() {
        return Ok(0);
    }
    let mut batch = nftables::Batch::new();
    for table in &current.tables {
        batch.delete_table_if_exists(table.family, &table.name)?;
    }
    socket.commit(&batch, None)?;
    Ok(current.tables.len())
}
