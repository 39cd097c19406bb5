//! The IPVS syncer: makes the kernel hold the compiler's [`IpvsState`] (virtual
//! servers and real servers, the addresses on the dummy interface, the companion
//! nftables table) and keeps it that way, sending only the difference.
//!
//! One sync, in this order, so that traffic never meets half a change:
//! 1. the companion table, so that a new virtual server's traffic is already
//!    masqueraded (and hairpinned) when it starts flowing;
//! 2. IPVS, in [`diff`]'s order: new virtual servers with their real servers,
//!    additions before drains and removals, deletions of virtual servers last;
//! 3. the addresses, so that a ClusterIP answers only once its virtual server has its
//!    real servers, and an address goes only after its virtual server.
//!
//! IPVS has no transactions. A failed operation is reported and the others still
//! run (a virtual server that could not be created is skipped with its real
//! servers); the next sync reads the kernel back and converges. A steady-state sync
//! trusts what the last successful one left (no dump, except the counters of real
//! servers that are draining); a resync dumps svcproxy's virtual servers and repairs
//! whatever drifted. Which virtual servers are svcproxy's is [`ownership`]'s
//! question: others are never touched.

pub mod companion;
pub mod diff;
pub mod ownership;
pub mod table;

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use svcproxy_compiler::ipvs::IpvsState;

use self::companion::Companion;
use self::diff::{DrainClock, Draining, Op, OpCounts};
use self::ownership::Ownership;
use self::table::{Table, VirtualServer};
use super::dummy::{self, AddressChanges, DummyInterface};
use super::{Client, ServiceKey, sysctl};
use crate::sync::SyncKind;

/// kube-proxy has no such bound: it waits until IPVS counts no connection, which for
/// a busy one can be forever. 15 minutes is IPVS's own idle timeout for established
/// TCP connections, so a connection quiet for that long would have been forgotten by
/// IPVS anyway.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// How the IPVS syncer runs (from the command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsConfig {
    /// The dummy interface holding the virtual addresses.
    pub interface: String,
    /// How long a leaving TCP real server keeps its connections at most.
    pub drain_timeout: Duration,
    /// Whether to program the companion nftables table.
    pub companion: bool,
    /// Where svcproxy records its virtual servers; `None`: in memory only.
    pub state_file: Option<PathBuf>,
}

impl Default for IpvsConfig {
    fn default() -> Self {
        IpvsConfig {
            interface: svcproxy_compiler::ipvs::DEFAULT_INTERFACE.to_string(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            companion: true,
            state_file: Some(PathBuf::from(ownership::DEFAULT_STATE_FILE)),
        }
    }
}

/// Why the syncer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "IPVS is not available: the kernel has no \"IPVS\" generic netlink family; load the module \
         (modprobe ip_vs, and ip_vs_<scheduler> for the schedulers in use) or use --backend nftables"
    )]
    NoIpvs,
    #[error("{0}")]
    Ipvs(super::Error),
    #[error(transparent)]
    Sysctl(#[from] sysctl::Error),
    #[error("IPVS interface: {0}")]
    Interface(#[from] dummy::Error),
    #[error(transparent)]
    Companion(#[from] companion::Error),
    #[error(transparent)]
    Ownership(#[from] ownership::Error),
}

/// One step of a sync that failed; the others were still carried out.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// An IPVS operation or dump (the error names the operation and its target).
    #[error(transparent)]
    Ipvs(#[from] super::Error),
    #[error("skipped {0}: its virtual server could not be created")]
    Skipped(Op),
    #[error("IPVS interface: {0}")]
    Interface(#[from] dummy::Error),
    #[error("IPVS interface: {0}")]
    Address(String),
    #[error(transparent)]
    Companion(#[from] companion::Error),
    #[error(transparent)]
    Ownership(#[from] ownership::Error),
}

/// What one sync did.
#[derive(Debug)]
pub struct SyncOutcome {
    pub kind: SyncKind,
    /// The IPVS operations that succeeded, in the order they were sent.
    pub ops: Vec<Op>,
    pub counts: OpCounts,
    pub addresses: AddressChanges,
    /// nftables messages of the companion table's transaction (0: unchanged).
    pub companion_messages: usize,
    /// Leaving TCP real servers still kept for their connections.
    pub draining: usize,
    pub duration: Duration,
}

impl SyncOutcome {
    fn new(kind: SyncKind) -> SyncOutcome {
        SyncOutcome {
            kind,
            ops: Vec::new(),
            counts: OpCounts::default(),
            addresses: AddressChanges::default(),
            companion_messages: 0,
            draining: 0,
            duration: Duration::ZERO,
        }
    }

    /// Nothing was sent.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
            && self.addresses.added.is_empty()
            && self.addresses.removed.is_empty()
            && self.companion_messages == 0
    }

    /// Kernel requests sent: IPVS operations, address changes, nftables messages.
    pub fn messages(&self) -> usize {
        self.ops.len()
            + self.addresses.added.len()
            + self.addresses.removed.len()
            + self.companion_messages
    }

    /// One line for logs.
    pub fn summary(&self) -> String {
        let mut parts = vec![self.counts.to_string()];
        for (n, what) in [
            (self.addresses.added.len(), "added"),
            (self.addresses.removed.len(), "removed"),
        ] {
            if n > 0 {
                parts.push(format!(
                    "{n} address{} {what}",
                    if n == 1 { "" } else { "es" }
                ));
            }
        }
        if self.companion_messages > 0 {
            parts.push(format!(
                "companion table replaced ({} messages)",
                self.companion_messages
            ));
        }
        if self.draining > 0 {
            parts.push(format!("{} real server(s) draining", self.draining));
        }
        parts.join(", ")
    }
}

/// A sync that did not fully succeed: what it did, and what failed.
#[derive(Debug)]
pub struct SyncError {
    pub outcome: Box<SyncOutcome>,
    pub failures: Vec<Failure>,
}

impl fmt::Display for SyncError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} step(s) of the IPVS sync failed (the rest was applied: {}; the next sync retries): ",
            self.failures.len(),
            self.outcome.summary()
        )?;
        for (i, failure) in self.failures.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{failure}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SyncError {}

/// What a sync would do now (`svcproxy plan`), without doing it.
#[derive(Debug, Default)]
pub struct Planned {
    pub ops: Vec<Op>,
    /// Leaving TCP real servers that would be kept for their connections.
    pub draining: usize,
    pub addresses_to_add: Vec<IpAddr>,
    pub addresses_to_remove: Vec<IpAddr>,
    /// `None` without the companion table.
    pub companion_differs: Option<bool>,
}

impl Planned {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
            && self.addresses_to_add.is_empty()
            && self.addresses_to_remove.is_empty()
            && self.companion_differs != Some(true)
    }
}

/// Keeps svcproxy's part of IPVS equal to an [`IpvsState`].
pub struct IpvsSyncer {
    ipvs: Client,
    interface: DummyInterface,
    companion: Option<Companion>,
    ownership: Ownership,
    drain_timeout: Duration,
    draining: Draining,
    /// svcproxy's virtual servers as the kernel held them after the last sync, when
    /// everything in it succeeded; `None` makes the next sync dump.
    view: Option<Table>,
}

impl fmt::Debug for IpvsSyncer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpvsSyncer")
            .field("interface", &self.interface)
            .field("draining", &self.draining.len())
            .finish_non_exhaustive()
    }
}

impl IpvsSyncer {
    /// Connects to IPVS, sets the sysctls IPVS mode needs, checks that the companion
    /// table can be loaded and reads the ownership record, all in the calling
    /// thread's network namespace (which every later call must share). Nothing else
    /// changes until the first sync.
    pub fn new(config: &IpvsConfig) -> Result<IpvsSyncer, StartError> {
        let ipvs = connect()?;
        let changed = sysctl::ensure_required()?;
        if !changed.is_empty() {
            tracing::info!("set sysctls: {}", changed.join(", "));
        }
        let companion = if config.companion {
            Some(Companion::open()?)
        } else {
            None
        };
        Self::with(ipvs, companion, config)
    }

    /// Like [`IpvsSyncer::new`] but changes nothing, not even sysctls: for
    /// [`IpvsSyncer::plan`] (`svcproxy plan`).
    pub fn inspect(config: &IpvsConfig) -> Result<IpvsSyncer, StartError> {
        let ipvs = connect()?;
        let companion = if config.companion {
            Some(Companion::open_unchecked()?)
        } else {
            None
        };
        Self::with(ipvs, companion, config)
    }

    fn with(
        ipvs: Client,
        companion: Option<Companion>,
        config: &IpvsConfig,
    ) -> Result<IpvsSyncer, StartError> {
        Ok(IpvsSyncer {
            ipvs,
            interface: DummyInterface::new(&config.interface)?,
            companion,
            ownership: Ownership::load(config.state_file.clone())?,
            drain_timeout: config.drain_timeout,
            draining: Draining::new(),
            view: None,
        })
    }

    /// Makes the kernel hold `state`, trusting the last sync's view of it when there
    /// is one.
    pub fn sync(&mut self, state: &IpvsState) -> Result<SyncOutcome, SyncError> {
        let full = self.view.is_none();
        self.run(state, full)
    }

    /// Reads svcproxy's part of the kernel back and repairs any difference from
    /// `state` (drift: a real server deleted by hand, an address removed).
    pub fn resync(&mut self, state: &IpvsState) -> Result<SyncOutcome, SyncError> {
        self.run(state, true)
    }

    /// Forgets the view: the next sync reads the kernel back.
    pub fn invalidate(&mut self) {
        self.view = None;
    }

    /// Leaving TCP real servers currently kept for their connections.
    pub fn draining(&self) -> usize {
        self.draining.len()
    }

    fn run(&mut self, state: &IpvsState, full: bool) -> Result<SyncOutcome, SyncError> {
        let started = Instant::now();
        let mut outcome = SyncOutcome::new(if full {
            SyncKind::Full
        } else {
            SyncKind::Partial
        });
        let mut failures = Vec::new();

        if let Some(companion) = &mut self.companion {
            match companion.sync(&state.companion, full) {
                Ok(messages) => outcome.companion_messages = messages,
                Err(e) => failures.push(Failure::Companion(e)),
            }
        }

        let desired = table::desired(state);
        match self.current(&desired, full) {
            Ok(current) => self.apply_ipvs(&desired, current, full, &mut outcome, &mut failures),
            Err(e) => {
                self.view = None;
                failures.push(e);
            }
        }

        let addresses: BTreeSet<IpAddr> = state.bind_addresses.iter().copied().collect();
        match self.interface.sync_addresses(&addresses, full) {
            Ok(changes) => {
                failures.extend(changes.failed.iter().cloned().map(Failure::Address));
                outcome.addresses = changes;
            }
            Err(e) => failures.push(Failure::Interface(e)),
        }

        outcome.draining = self.draining.len();
        outcome.duration = started.elapsed();
        if !failures.is_empty() {
            // Whatever failed, the next sync reads everything back.
            self.view = None;
        }
        if failures.is_empty() {
            Ok(outcome)
        } else {
            Err(SyncError {
                outcome: Box::new(outcome),
                failures,
            })
        }
    }

    /// The diff, the ownership record around it, and the operations.
    fn apply_ipvs(
        &mut self,
        desired: &Table,
        current: Current,
        full: bool,
        outcome: &mut SyncOutcome,
        failures: &mut Vec<Failure>,
    ) {
        let Current {
            table: mut view,
            bound,
        } = current;
        let plan = self.diff(desired, &view, bound.as_ref());
        // Recorded before anything is created: a crash must not leave a virtual
        // server nobody recognises.
        if let Err(e) = self.ownership.claim(desired.keys().copied()) {
            // Without a record, creating would leak after a restart: stop here.
            failures.push(e.into());
            self.view = None;
            return;
        }
        let mut not_created: BTreeSet<ServiceKey> = BTreeSet::new();
        let mut deleted = Vec::new();
        let mut ok = true;
        for op in plan.ops {
            if not_created.contains(&op.service()) {
                failures.push(Failure::Skipped(op));
                continue;
            }
            match self.send(&op) {
                Ok(()) => {
                    if let Op::DeleteService(key) = &op {
                        deleted.push(*key);
                    }
                    diff::apply(&mut view, &op);
                    outcome.ops.push(op);
                }
                Err(e) => {
                    ok = false;
                    if let Op::AddService(s) = &op {
                        not_created.insert(s.key());
                    }
                    failures.push(e.into());
                }
            }
        }
        // Records of virtual servers that are gone (deleted now, or by someone else
        // while nobody wanted them): known only from a dump.
        let mut stale: Vec<ServiceKey> = deleted;
        if full {
            stale.extend(
                self.ownership
                    .keys()
                    .iter()
                    .filter(|k| !desired.contains_key(k) && !view.contains_key(k))
                    .copied(),
            );
        }
        if let Err(e) = self.ownership.release(&stale) {
            failures.push(e.into());
        }
        let now = Instant::now();
        self.draining = plan
            .draining
            .into_iter()
            .map(|key| (key, self.draining.get(&key).copied().unwrap_or(now)))
            .collect();
        outcome.counts = OpCounts::of(&outcome.ops);
        self.view = ok.then_some(view);
    }

    fn diff(
        &self,
        desired: &Table,
        current: &Table,
        bound: Option<&BTreeSet<IpAddr>>,
    ) -> diff::Diff {
        let owned = |key: &ServiceKey| {
            self.ownership.contains(key) || bound.is_some_and(|b| ownership::on_interface(key, b))
        };
        diff::diff(
            desired,
            current,
            owned,
            DrainClock {
                draining: &self.draining,
                now: Instant::now(),
                timeout: self.drain_timeout,
            },
        )
    }

    /// What the kernel holds of the virtual servers that matter: with `full` (or no
    /// view), a dump of those that are desired or svcproxy's; otherwise the view, with
    /// fresh counters for the virtual servers whose real servers may be draining.
    fn current(&mut self, desired: &Table, full: bool) -> Result<Current, Failure> {
        // Taken, not copied: the sync gives it back updated, or leaves `None` after a
        // failure so that the next one dumps.
        if !full && let Some(mut table) = self.view.take() {
            for key in diff::with_leaving(desired, &table) {
                let destinations = self.ipvs.dump_destinations(&key)?;
                if let Some(vs) = table.get_mut(&key) {
                    vs.destinations = destinations
                        .into_iter()
                        .map(|d| ((d.addr, d.port), d))
                        .collect();
                }
            }
            return Ok(Current { table, bound: None });
        }
        let bound = self.interface.addresses()?;
        let mut table = Table::new();
        for service in self.ipvs.dump_services()? {
            let key = service.key();
            let ours = self.ownership.contains(&key) || ownership::on_interface(&key, &bound);
            if !desired.contains_key(&key) && !ours {
                continue;
            }
            let destinations = self
                .ipvs
                .dump_destinations(&key)?
                .into_iter()
                .map(|d| ((d.addr, d.port), d))
                .collect();
            table.insert(
                key,
                VirtualServer {
                    service,
                    destinations,
                },
            );
        }
        Ok(Current {
            table,
            bound: Some(bound),
        })
    }

    fn send(&mut self, op: &Op) -> Result<(), super::Error> {
        match op {
            Op::AddService(s) => self.ipvs.new_service(s),
            Op::EditService(s) => self.ipvs.set_service(s),
            Op::DeleteService(k) => self.ipvs.del_service(k),
            Op::AddDestination(k, d) => self.ipvs.new_destination(k, d),
            Op::EditDestination(k, d) | Op::DrainDestination(k, d) => {
                self.ipvs.set_destination(k, d)
            }
            Op::DeleteDestination(k, (addr, port)) => self.ipvs.del_destination(k, *addr, *port),
        }
    }

    /// What a sync would send now, reading everything back and changing nothing.
    pub fn plan(&mut self, state: &IpvsState) -> Result<Planned, Failure> {
        let desired = table::desired(state);
        let current = self.current(&desired, true)?;
        let plan = self.diff(&desired, &current.table, current.bound.as_ref());
        let bound = current.bound.unwrap_or_default();
        let want: BTreeSet<IpAddr> = state.bind_addresses.iter().copied().collect();
        let companion_differs = match &mut self.companion {
            Some(companion) => Some(companion.differs(&state.companion)?),
            None => None,
        };
        Ok(Planned {
            ops: plan.ops,
            draining: plan.draining.len(),
            addresses_to_add: want.difference(&bound).copied().collect(),
            addresses_to_remove: bound.difference(&want).copied().collect(),
            companion_differs,
        })
    }

    /// svcproxy's virtual servers as the kernel holds them now (a dump), counters
    /// included.
    pub fn dump_owned(&mut self) -> Result<Table, Failure> {
        Ok(self.current(&Table::new(), true)?.table)
    }
}

fn connect() -> Result<Client, StartError> {
    Client::new().map_err(|e| match e {
        super::Error::FamilyNotFound => StartError::NoIpvs,
        other => StartError::Ipvs(other),
    })
}

/// The kernel's table, and (after a dump) the addresses on the dummy interface.
struct Current {
    table: Table,
    bound: Option<BTreeSet<IpAddr>>,
}

/// What `svcproxy cleanup` removed of IPVS mode.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cleaned {
    /// `None`: IPVS is not loaded, so there was nothing to delete.
    pub virtual_servers: Option<usize>,
    /// Virtual servers left alone because they are not svcproxy's.
    pub others: usize,
    /// `None`: no interface; otherwise the addresses it held.
    pub interface_addresses: Option<usize>,
    /// `None`: no nf_tables in this kernel.
    pub companion_tables: Option<usize>,
}

/// Removes svcproxy's virtual servers, its dummy interface (and so its addresses),
/// the ownership record and the companion tables; nothing else. Every part is tried;
/// the failures are returned together.
pub fn cleanup(interface: &str, state_file: Option<PathBuf>) -> (Cleaned, Vec<Failure>) {
    let mut cleaned = Cleaned::default();
    let mut failures: Vec<Failure> = Vec::new();
    let mut link = match DummyInterface::new(interface) {
        Ok(link) => Some(link),
        Err(e) => {
            failures.push(e.into());
            None
        }
    };
    // A link of that name that is not a dummy is not svcproxy's: no address rule.
    let bound = match link.as_mut().map(DummyInterface::addresses) {
        Some(Ok(bound)) => bound,
        Some(Err(e)) => {
            failures.push(e.into());
            BTreeSet::new()
        }
        None => BTreeSet::new(),
    };
    match Client::new() {
        Err(super::Error::FamilyNotFound) => {}
        Err(e) => failures.push(e.into()),
        Ok(mut ipvs) => match Ownership::load(state_file) {
            Err(e) => failures.push(e.into()),
            Ok(mut owned) => {
                let (deleted, others) = delete_owned(&mut ipvs, &owned, &bound, &mut failures);
                cleaned.virtual_servers = Some(deleted);
                cleaned.others = others;
                if failures.is_empty()
                    && let Err(e) = owned.remove_file()
                {
                    failures.push(e.into());
                }
            }
        },
    }
    if let Some(link) = &mut link {
        match link.delete() {
            Ok(addresses) => cleaned.interface_addresses = addresses,
            // Someone else's link of that name: left alone, and said so.
            Err(e @ dummy::Error::NotDummy { .. }) => failures.push(e.into()),
            Err(e) => failures.push(e.into()),
        }
    }
    match Companion::open_unchecked() {
        // No nf_tables at all: no companion table either.
        Err(_) => {}
        Ok(mut companion) => match companion.delete() {
            Ok(n) => cleaned.companion_tables = Some(n),
            Err(e) => failures.push(e.into()),
        },
    }
    (cleaned, failures)
}

fn delete_owned(
    ipvs: &mut Client,
    owned: &Ownership,
    bound: &BTreeSet<IpAddr>,
    failures: &mut Vec<Failure>,
) -> (usize, usize) {
    let services = match ipvs.dump_services() {
        Ok(services) => services,
        Err(e) => {
            failures.push(e.into());
            return (0, 0);
        }
    };
    let (mut deleted, mut others) = (0, 0);
    for service in services {
        let key = service.key();
        if !owned.contains(&key) && !ownership::on_interface(&key, bound) {
            others += 1;
            continue;
        }
        match ipvs.del_service(&key) {
            Ok(()) => deleted += 1,
            Err(e) if e.is_not_found() => {}
            Err(e) => failures.push(e.into()),
        }
    }
    (deleted, others)
}
