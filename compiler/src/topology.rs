//! Endpoint choice: which endpoints a service port may use, for Cluster and for Local
//! traffic policy. This is kube-proxy's `CategorizeEndpoints`, stated as data in, data
//! out; the unit tests below read as its specification.

use crate::endpoints::Endpoint;

/// The endpoints one service port may use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Categorized {
    /// Usable with Cluster policy: Ready ones (filtered by topology hints when they
    /// apply), or, if none is Ready anywhere, the Serving+Terminating ones.
    pub cluster: Vec<Endpoint>,
    /// Usable with Local policy: this node's Ready ones, or, if none, this node's
    /// Serving+Terminating ones.
    pub local: Vec<Endpoint>,
    /// Is any endpoint usable anywhere in the cluster? If not, clients are rejected.
    pub has_any: bool,
}

/// Which topology filter applies to Cluster-policy endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopologyMode {
    /// No filtering.
    None,
    /// Only endpoints hinted for this node (`hints.forNodes`).
    SameNode,
    /// Only endpoints hinted for this node's zone (`hints.forZones`).
    SameZone,
}

/// Sorts endpoints into the Cluster and Local pools.
///
/// `uses_cluster` / `uses_local`: whether the service port ever routes by that policy
/// (a pool that is never used is left empty).
pub fn categorize(
    endpoints: &[Endpoint],
    uses_cluster: bool,
    uses_local: bool,
    node_name: Option<&str>,
    zone: Option<&str>,
) -> Categorized {
    let mut result = Categorized::default();
    if endpoints.is_empty() {
        return result;
    }
    if uses_cluster {
        let mode = topology_mode(endpoints, node_name, zone);
        result.cluster = filtered(endpoints, |e| {
            e.ready && available(e, mode, node_name, zone)
        });
        if result.cluster.is_empty() {
            // Nothing ready anywhere: fall back to endpoints that still serve while
            // terminating, so connections keep working during a rolling update.
            result.cluster = filtered(endpoints, Endpoint::is_serving_terminating);
        }
        result.has_any = !result.cluster.is_empty();
    }
    if uses_local {
        let mut local_ready = false;
        let mut local_serving_terminating = false;
        for e in endpoints {
            if e.ready {
                result.has_any = true;
                local_ready |= e.is_local;
            } else if e.is_serving_terminating() {
                result.has_any = true;
                local_serving_terminating |= e.is_local;
            }
        }
        result.local = if local_ready {
            filtered(endpoints, |e| e.is_local && e.ready)
        } else if local_serving_terminating {
            filtered(endpoints, |e| e.is_local && e.is_serving_terminating())
        } else {
            Vec::new()
        };
    }
    result
}

/// The endpoints `keep` selects, in a vector of their exact size: counted first, as
/// a filter gives no size hint and collecting one grew the vector 4, 8, 16 for every
/// pool of every port.
fn filtered(endpoints: &[Endpoint], keep: impl Fn(&Endpoint) -> bool) -> Vec<Endpoint> {
    let mut kept = Vec::with_capacity(endpoints.iter().filter(|e| keep(e)).count());
    kept.extend(endpoints.iter().filter(|e| keep(e)).cloned());
    kept
}

/// Hints apply only when every ready endpoint carries one and at least one matches
/// this node (or its zone); otherwise filtering could starve the node.
pub fn topology_mode(
    endpoints: &[Endpoint],
    node_name: Option<&str>,
    zone: Option<&str>,
) -> TopologyMode {
    // Walked again for each question rather than collected: this runs for every
    // service port, and most have no hints, so the first `all` ends at once.
    let ready = || endpoints.iter().filter(|e| e.ready);
    if ready().next().is_none() {
        return TopologyMode::None;
    }
    if let Some(node) = node_name
        && ready().all(|e| !e.node_hints().is_empty())
        && ready().any(|e| e.node_hints().contains(node))
    {
        return TopologyMode::SameNode;
    }
    if let Some(zone) = zone
        && ready().all(|e| !e.zone_hints().is_empty())
        && ready().any(|e| e.zone_hints().contains(zone))
    {
        return TopologyMode::SameZone;
    }
    TopologyMode::None
}

fn available(
    e: &Endpoint,
    mode: TopologyMode,
    node_name: Option<&str>,
    zone: Option<&str>,
) -> bool {
    match mode {
        TopologyMode::None => true,
        TopologyMode::SameNode => node_name.is_some_and(|n| e.node_hints().contains(n)),
        TopologyMode::SameZone => zone.is_some_and(|z| e.zone_hints().contains(z)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::Hints;

    /// An endpoint: `ep("10.0.0.1", "ready", "node-a")`.
    fn ep(ip: &str, state: &str, node: &str) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            port: 80,
            is_local: node == "node-a",
            ready: state == "ready",
            serving: state == "ready" || state == "serving-terminating",
            terminating: state != "ready",
            hints: None,
        }
    }

    fn ips(endpoints: &[Endpoint]) -> Vec<String> {
        endpoints.iter().map(|e| e.ip.to_string()).collect()
    }

    fn zoned(mut e: Endpoint, zones: &[&str]) -> Endpoint {
        e.hints = Hints::shared(
            zones.iter().map(|z| z.to_string()).collect(),
            Default::default(),
        );
        e
    }

    #[test]
    fn cluster_policy_uses_ready_endpoints_only() {
        let eps = [
            ep("10.0.0.1", "ready", "node-a"),
            ep("10.0.0.2", "serving-terminating", "node-b"),
            ep("10.0.0.3", "not-ready", "node-b"),
        ];
        let c = categorize(&eps, true, false, Some("node-a"), None);
        assert_eq!(ips(&c.cluster), ["10.0.0.1"]);
        assert!(c.has_any);
    }

    #[test]
    fn with_nothing_ready_serving_terminating_endpoints_take_over() {
        let eps = [
            ep("10.0.0.2", "serving-terminating", "node-b"),
            ep("10.0.0.3", "not-ready", "node-b"),
        ];
        let c = categorize(&eps, true, false, Some("node-a"), None);
        assert_eq!(ips(&c.cluster), ["10.0.0.2"]);
        assert!(c.has_any);
    }

    #[test]
    fn not_ready_and_not_serving_means_no_endpoints_at_all() {
        let eps = [ep("10.0.0.3", "not-ready", "node-b")];
        let c = categorize(&eps, true, true, Some("node-a"), None);
        assert!(c.cluster.is_empty() && c.local.is_empty());
        assert!(!c.has_any, "the service must reject, not drop");
    }

    #[test]
    fn local_policy_uses_this_nodes_ready_endpoints() {
        let eps = [
            ep("10.0.0.1", "ready", "node-a"),
            ep("10.0.0.2", "ready", "node-b"),
            ep("10.0.0.4", "serving-terminating", "node-a"),
        ];
        let c = categorize(&eps, false, true, Some("node-a"), None);
        assert_eq!(ips(&c.local), ["10.0.0.1"]);
        assert!(c.cluster.is_empty(), "the cluster pool is unused");
    }

    #[test]
    fn local_policy_falls_back_to_local_terminating_independently_of_cluster() {
        let eps = [
            ep("10.0.0.2", "ready", "node-b"),
            ep("10.0.0.4", "serving-terminating", "node-a"),
        ];
        let c = categorize(&eps, true, true, Some("node-a"), None);
        assert_eq!(ips(&c.cluster), ["10.0.0.2"]);
        assert_eq!(ips(&c.local), ["10.0.0.4"]);
    }

    #[test]
    fn no_local_endpoints_but_remote_ones_means_has_any() {
        let eps = [ep("10.0.0.2", "ready", "node-b")];
        let c = categorize(&eps, false, true, Some("node-a"), None);
        assert!(c.local.is_empty());
        assert!(c.has_any, "remote endpoints exist: drop, not reject");
    }

    #[test]
    fn zone_hints_filter_when_every_ready_endpoint_has_one_and_one_matches() {
        let eps = [
            zoned(ep("10.0.0.1", "ready", "node-a"), &["zone-a"]),
            zoned(ep("10.0.0.2", "ready", "node-b"), &["zone-b"]),
        ];
        let c = categorize(&eps, true, false, Some("node-a"), Some("zone-a"));
        assert_eq!(ips(&c.cluster), ["10.0.0.1"]);
    }

    #[test]
    fn zone_hints_are_ignored_when_one_ready_endpoint_lacks_them() {
        let eps = [
            zoned(ep("10.0.0.1", "ready", "node-a"), &["zone-a"]),
            ep("10.0.0.2", "ready", "node-b"),
        ];
        let c = categorize(&eps, true, false, Some("node-a"), Some("zone-a"));
        assert_eq!(ips(&c.cluster), ["10.0.0.1", "10.0.0.2"]);
    }

    #[test]
    fn zone_hints_are_ignored_when_none_matches_this_zone() {
        let eps = [
            zoned(ep("10.0.0.1", "ready", "node-a"), &["zone-b"]),
            zoned(ep("10.0.0.2", "ready", "node-b"), &["zone-b"]),
        ];
        let c = categorize(&eps, true, false, Some("node-a"), Some("zone-a"));
        assert_eq!(ips(&c.cluster), ["10.0.0.1", "10.0.0.2"]);
        let c = categorize(&eps, true, false, Some("node-a"), None);
        assert_eq!(
            ips(&c.cluster).len(),
            2,
            "a node without zone ignores hints"
        );
    }

    #[test]
    fn node_hints_take_precedence_over_zone_hints() {
        let mut a = zoned(ep("10.0.0.1", "ready", "node-a"), &["zone-a"]);
        let mut b = zoned(ep("10.0.0.2", "ready", "node-b"), &["zone-a"]);
        for (e, node) in [(&mut a, "node-a"), (&mut b, "node-b")] {
            let hints = e.hints.as_mut().expect("zoned");
            std::sync::Arc::make_mut(hints).nodes.insert(node.into());
        }
        let c = categorize(&[a, b], true, false, Some("node-a"), Some("zone-a"));
        assert_eq!(ips(&c.cluster), ["10.0.0.1"]);
    }
}
