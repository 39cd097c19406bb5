//! Prometheus metrics, with kube-proxy's names where kube-proxy has the metric, so
//! existing dashboards and alerts keep working.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::sync::SyncKind;

/// Every metric svcproxy exports.
pub struct Metrics {
    registry: Registry,
    sync_duration: Histogram,
    full_sync_duration: Histogram,
    partial_sync_duration: Histogram,
    last_sync: Gauge<f64, AtomicU64>,
    last_queued: Gauge<f64, AtomicU64>,
    sync_failures: Counter,
    snapshot_errors: Counter,
    messages: Counter,
    drift_repairs: Counter,
    service_syncs: Counter,
    service_ports: Gauge,
    endpoints: Gauge,
}

/// Sync durations from 1 ms to about 16 s.
fn duration_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            sync_duration: duration_buckets(),
            full_sync_duration: duration_buckets(),
            partial_sync_duration: duration_buckets(),
            last_sync: Gauge::default(),
            last_queued: Gauge::default(),
            sync_failures: Counter::default(),
            snapshot_errors: Counter::default(),
            messages: Counter::default(),
            drift_repairs: Counter::default(),
            service_syncs: Counter::default(),
            service_ports: Gauge::default(),
            endpoints: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            m.sync_duration.clone(),
        );
        registry.register(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs (kernel read back)",
            m.full_sync_duration.clone(),
        );
        registry.register(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            m.partial_sync_duration.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            m.last_sync.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            m.last_queued.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_nftables_sync_failures",
            "Failed nftables transactions",
            m.sync_failures.clone(),
        );
        registry.register(
            "svcproxy_snapshot_errors",
            "Snapshots that failed to read, parse or validate (the last good state stays)",
            m.snapshot_errors.clone(),
        );
        registry.register(
            "svcproxy_sync_messages",
            "nf_tables netlink messages sent in sync transactions",
            m.messages.clone(),
        );
        registry.register(
            "svcproxy_drift_repairs",
            "Resyncs that found the kernel different from the desired state and repaired it",
            m.drift_repairs.clone(),
        );
        registry.register(
            "svcproxy_service_syncs",
            "Syncs that diffed only the Services that changed, not the whole ruleset",
            m.service_syncs.clone(),
        );
        registry.register(
            "svcproxy_programmed_service_ports",
            "Service ports (per family) in the programmed rules",
            m.service_ports.clone(),
        );
        registry.register(
            "svcproxy_programmed_endpoints",
            "Endpoints (per service port and family) the programmed rules can send to",
            m.endpoints.clone(),
        );
        Metrics { registry, ..m }
    }

    /// A successful sync; `by_service` when only the changed Services were diffed.
    pub fn synced(&self, kind: SyncKind, duration: Duration, messages: usize, by_service: bool) {
        let seconds = duration.as_secs_f64();
        self.sync_duration.observe(seconds);
        match kind {
            SyncKind::Full => self.full_sync_duration.observe(seconds),
            SyncKind::Partial => self.partial_sync_duration.observe(seconds),
        }
        self.last_sync.set(unix_now());
        self.messages.inc_by(messages as u64);
        if by_service {
            self.service_syncs.inc();
        }
    }

    pub fn queued(&self) {
        self.last_queued.set(unix_now());
    }

    pub fn sync_failed(&self) {
        self.sync_failures.inc();
    }

    pub fn snapshot_failed(&self) {
        self.snapshot_errors.inc();
    }

    pub fn drift_repaired(&self) {
        self.drift_repairs.inc();
    }

    pub fn programmed(&self, service_ports: usize, endpoints: usize) {
        self.service_ports.set(service_ports as i64);
        self.endpoints.set(endpoints as i64);
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
