//! The Kubernetes API objects as svcproxy reads them: the fields [`crate::model`] uses,
//! named and nested as the API names and nests them, and nothing else.
//!
//! Why not `k8s-openapi`'s types (docs/design.md, "Dependencies"): they hold every
//! field of every object, each string its own allocation, and a 10k-Service snapshot's
//! 110k endpoints spent more time being built, read and dropped as those types than in
//! all the rest of the compiler. Here, a field svcproxy does not read is skipped in the
//! text, and the strings of the many small objects borrow the text when they can.
//!
//! Deserialization follows `k8s-openapi` 0.29 where it matters for errors: a field of
//! the wrong type is an error naming it (serde's own message, as `k8s-openapi` gives),
//! a required field that is missing or `null` takes its default (as `k8s-openapi` does,
//! and validation then names it), unknown fields are ignored. Fields svcproxy does not
//! read are no longer type-checked: a malformed `creationTimestamp` cannot change what
//! is programmed, and no longer fails the snapshot.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};

/// A string that borrows the snapshot's text when it can (JSON without escapes), so
/// that the names, addresses and node names of 100k endpoints are not each copied.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Str<'a>(pub Cow<'a, str>);

impl Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Str<'_> {
    pub fn into_owned(self) -> String {
        self.0.into_owned()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // As `String` says it, so that errors read as they did.
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v))
            }
        }
        deserializer.deserialize_str(StrVisitor).map(Str)
    }
}

/// A required field: missing or `null` reads as the default, as in `k8s-openapi`.
fn required<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// `metadata` of a Service, an Endpoints object or a Pod's: what names it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ObjectMeta<'a> {
    #[serde(borrow)]
    pub name: Option<Str<'a>>,
    #[serde(borrow)]
    pub namespace: Option<Str<'a>>,
}

// ---- Service (core/v1) ----

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Service<'a> {
    #[serde(borrow, deserialize_with = "required")]
    pub metadata: ServiceMeta<'a>,
    pub spec: Option<ServiceSpec>,
    pub status: Option<ServiceStatus>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServiceMeta<'a> {
    #[serde(borrow)]
    pub name: Option<Str<'a>>,
    #[serde(borrow)]
    pub namespace: Option<Str<'a>>,
    pub annotations: Option<ServiceAnnotations>,
}

/// The annotations svcproxy reads; the others are skipped.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServiceAnnotations {
    /// [`crate::model::IPVS_SCHEDULER_ANNOTATION`].
    #[serde(rename = "svcproxy.io/ipvs-scheduler")]
    pub ipvs_scheduler: Option<String>,
    /// [`crate::model::SOURCE_RANGES_ANNOTATION`].
    #[serde(rename = "service.beta.kubernetes.io/load-balancer-source-ranges")]
    pub load_balancer_source_ranges: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(rename = "type")]
    pub type_: Option<String>,
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(rename = "clusterIPs")]
    pub cluster_ips: Option<Vec<String>>,
    pub ip_families: Option<Vec<String>>,
    pub ip_family_policy: Option<String>,
    pub ports: Option<Vec<ServicePort>>,
    pub selector: Option<BTreeMap<String, String>>,
    #[serde(rename = "externalIPs")]
    pub external_ips: Option<Vec<String>>,
    #[serde(rename = "loadBalancerIP")]
    pub load_balancer_ip: Option<String>,
    pub load_balancer_source_ranges: Option<Vec<String>>,
    pub external_traffic_policy: Option<String>,
    pub internal_traffic_policy: Option<String>,
    pub session_affinity: Option<String>,
    pub session_affinity_config: Option<SessionAffinityConfig>,
    pub health_check_node_port: Option<i32>,
    pub publish_not_ready_addresses: Option<bool>,
    pub allocate_load_balancer_node_ports: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub name: Option<String>,
    pub protocol: Option<String>,
    #[serde(default, deserialize_with = "required")]
    pub port: i32,
    pub target_port: Option<IntOrString>,
    pub node_port: Option<i32>,
}

/// `targetPort`: a number or a named container port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntOrString {
    Int(i32),
    String(String),
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntOrStringVisitor;
        impl Visitor<'_> for IntOrStringVisitor {
            type Value = IntOrString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("IntOrString")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                i32::try_from(v)
                    .map(IntOrString::Int)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &"a 32-bit integer"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i32::try_from(v)
                    .map(IntOrString::Int)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &"a 32-bit integer"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(IntOrString::String(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(IntOrString::String(v))
            }
        }
        deserializer.deserialize_any(IntOrStringVisitor)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SessionAffinityConfig {
    #[serde(rename = "clientIP")]
    pub client_ip: Option<ClientIpConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ClientIpConfig {
    #[serde(rename = "timeoutSeconds")]
    pub timeout_seconds: Option<i32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServiceStatus {
    #[serde(rename = "loadBalancer")]
    pub load_balancer: Option<LoadBalancerStatus>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct LoadBalancerStatus {
    pub ingress: Option<Vec<LoadBalancerIngress>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct LoadBalancerIngress {
    pub ip: Option<String>,
    #[serde(rename = "ipMode")]
    pub ip_mode: Option<String>,
}

// ---- EndpointSlice (discovery.k8s.io/v1) ----

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct EndpointSlice<'a> {
    #[serde(borrow, deserialize_with = "required")]
    pub metadata: SliceMeta<'a>,
    #[serde(borrow, deserialize_with = "required")]
    pub address_type: Str<'a>,
    #[serde(borrow, deserialize_with = "required")]
    pub endpoints: Vec<Endpoint<'a>>,
    #[serde(borrow)]
    pub ports: Option<Vec<SlicePort<'a>>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SliceMeta<'a> {
    #[serde(borrow)]
    pub name: Option<Str<'a>>,
    #[serde(borrow)]
    pub namespace: Option<Str<'a>>,
    #[serde(borrow)]
    pub labels: Option<SliceLabels<'a>>,
}

/// The one label svcproxy reads on a slice ([`crate::model::SERVICE_NAME_LABEL`]).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SliceLabels<'a> {
    #[serde(borrow, rename = "kubernetes.io/service-name")]
    pub service_name: Option<Str<'a>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SlicePort<'a> {
    #[serde(borrow)]
    pub name: Option<Str<'a>>,
    #[serde(borrow)]
    pub protocol: Option<Str<'a>>,
    pub port: Option<i32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Endpoint<'a> {
    #[serde(borrow, deserialize_with = "required")]
    pub addresses: FirstAddress<'a>,
    pub conditions: Option<EndpointConditions>,
    pub hints: Option<EndpointHints>,
    #[serde(borrow)]
    pub node_name: Option<Str<'a>>,
    #[serde(borrow)]
    pub zone: Option<Str<'a>>,
}

/// An endpoint's `addresses`: consumers use only the first (the API says so: "the
/// consumer ... can use the first one"), so the rest are skipped, not kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirstAddress<'a>(pub Option<Str<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for FirstAddress<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FirstVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for FirstVisitor<'a> {
            type Value = FirstAddress<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence")
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
                let first = seq.next_element::<Str<'a>>()?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(FirstAddress(first))
            }
        }
        deserializer.deserialize_seq(FirstVisitor(std::marker::PhantomData))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct EndpointConditions {
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointHints {
    pub for_zones: Option<Vec<Named>>,
    pub for_nodes: Option<Vec<Named>>,
}

/// `ForZone` and `ForNode`: a name.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Named {
    #[serde(default, deserialize_with = "required")]
    pub name: String,
}

// ---- Endpoints (core/v1) ----

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Endpoints<'a> {
    #[serde(borrow, deserialize_with = "required")]
    pub metadata: ObjectMeta<'a>,
    pub subsets: Option<Vec<EndpointSubset>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSubset {
    pub addresses: Option<Vec<EndpointAddress>>,
    pub not_ready_addresses: Option<Vec<EndpointAddress>>,
    pub ports: Option<Vec<EndpointPort>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointAddress {
    #[serde(default, deserialize_with = "required")]
    pub ip: String,
    pub node_name: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct EndpointPort {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "required")]
    pub port: i32,
    pub protocol: Option<String>,
}

// ---- Pod (core/v1) ----

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Pod<'a> {
    #[serde(borrow, deserialize_with = "required")]
    pub metadata: PodMeta<'a>,
    pub spec: Option<PodSpec>,
    pub status: Option<PodStatus>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodMeta<'a> {
    #[serde(borrow)]
    pub name: Option<Str<'a>>,
    #[serde(borrow)]
    pub namespace: Option<Str<'a>>,
    pub labels: Option<BTreeMap<String, String>>,
    /// Only whether it is set matters: the Pod is being deleted.
    pub deletion_timestamp: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default, deserialize_with = "required")]
    pub containers: Vec<Container>,
    pub node_name: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Container {
    pub ports: Option<Vec<ContainerPort>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default, deserialize_with = "required")]
    pub container_port: i32,
    pub name: Option<String>,
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    pub phase: Option<String>,
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(rename = "podIPs")]
    pub pod_ips: Option<Vec<PodIp>>,
    pub conditions: Option<Vec<PodCondition>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PodIp {
    #[serde(default, deserialize_with = "required")]
    pub ip: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PodCondition {
    #[serde(rename = "type", default, deserialize_with = "required")]
    pub type_: String,
    #[serde(default, deserialize_with = "required")]
    pub status: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_borrow_the_text_unless_escaped() {
        let text = r#"{"metadata":{"name":"web-1","namespace":"a\/b"},"addressType":"IPv4",
            "endpoints":[{"addresses":["10.0.0.1","10.0.0.2"],"nodeName":"n1"}]}"#;
        let slice: EndpointSlice<'_> = serde_json::from_str(text).unwrap();
        let name = slice.metadata.name.unwrap();
        assert!(matches!(name.0, Cow::Borrowed("web-1")));
        // An escape cannot be borrowed: the string is unescaped into its own copy.
        assert!(matches!(slice.metadata.namespace.unwrap().0, Cow::Owned(ref s) if s == "a/b"));
        let endpoint = &slice.endpoints[0];
        // Only the first address is kept (consumers use only the first).
        assert_eq!(endpoint.addresses.0.as_deref(), Some("10.0.0.1"));
        assert!(matches!(
            endpoint.node_name.as_ref().unwrap().0,
            Cow::Borrowed("n1")
        ));
    }

    #[test]
    fn required_fields_read_null_or_missing_as_their_default() {
        let port: ServicePort = serde_json::from_str(r#"{"port":null,"name":"x"}"#).unwrap();
        assert_eq!(port.port, 0);
        let slice: EndpointSlice<'_> = serde_json::from_str(r#"{"endpoints":null}"#).unwrap();
        assert!(slice.endpoints.is_empty());
        assert_eq!(&*slice.address_type, "");
    }

    #[test]
    fn wrong_types_are_errors_with_serde_messages() {
        let error = serde_json::from_str::<ServicePort>(r#"{"port":"eighty"}"#).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with(r#"invalid type: string "eighty", expected i32"#),
            "{error}"
        );
        let error = serde_json::from_str::<Endpoint<'_>>(r#"{"addresses":[7]}"#).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("invalid type: integer `7`, expected a string"),
            "{error}"
        );
    }

    #[test]
    fn target_port_is_a_number_or_a_name() {
        let read = |t: &str| serde_json::from_str::<IntOrString>(t);
        assert_eq!(read("8080").unwrap(), IntOrString::Int(8080));
        assert_eq!(
            read(r#""http""#).unwrap(),
            IntOrString::String("http".into())
        );
        assert!(read("4294967296").is_err());
        assert!(read("true").is_err());
    }

    #[test]
    fn the_renamed_keys_are_the_models_constants() {
        use crate::model::{
            IPVS_SCHEDULER_ANNOTATION, SERVICE_NAME_LABEL, SOURCE_RANGES_ANNOTATION,
        };
        let text = format!(
            r#"{{"metadata":{{"annotations":{{"{IPVS_SCHEDULER_ANNOTATION}":"rr",
                "{SOURCE_RANGES_ANNOTATION}":"10.0.0.0/8"}}}}}}"#
        );
        let service: Service<'_> = serde_json::from_str(&text).unwrap();
        let annotations = service.metadata.annotations.unwrap();
        assert_eq!(annotations.ipvs_scheduler.as_deref(), Some("rr"));
        assert_eq!(
            annotations.load_balancer_source_ranges.as_deref(),
            Some("10.0.0.0/8")
        );
        let text = format!(r#"{{"metadata":{{"labels":{{"{SERVICE_NAME_LABEL}":"web"}}}}}}"#);
        let slice: EndpointSlice<'_> = serde_json::from_str(&text).unwrap();
        assert_eq!(
            slice.metadata.labels.unwrap().service_name.as_deref(),
            Some("web")
        );
    }

    #[test]
    fn only_the_annotations_and_label_svcproxy_reads_are_kept() {
        let service: Service<'_> = serde_json::from_str(
            r#"{"metadata":{"name":"a","annotations":{"svcproxy.io/ipvs-scheduler":"wrr",
                "other":"x"}},"spec":{"ports":[{"port":80,"targetPort":"http"}]}}"#,
        )
        .unwrap();
        let annotations = service.metadata.annotations.unwrap();
        assert_eq!(annotations.ipvs_scheduler.as_deref(), Some("wrr"));
        assert_eq!(annotations.load_balancer_source_ranges, None);
        let slice: EndpointSlice<'_> = serde_json::from_str(
            r#"{"metadata":{"labels":{"app":"x","kubernetes.io/service-name":"web"}}}"#,
        )
        .unwrap();
        let labels = slice.metadata.labels.unwrap();
        assert_eq!(labels.service_name.as_deref(), Some("web"));
    }
}
