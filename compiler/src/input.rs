//! Parsing: Kubernetes YAML or JSON text into typed objects ([`crate::api`]).
//!
//! Accepts multi-document YAML, JSON (one value or a stream), `kind: List` exactly as
//! `kubectl get -o yaml` prints it, and the typed lists the API returns (`ServiceList`,
//! ...). Kinds svcproxy does not use are skipped with a debug log. Structural problems
//! (unreadable syntax, a document without `kind`, a field of the wrong type) are errors
//! that fail the whole snapshot: we cannot tell what the author meant.

use serde::Deserialize;
use serde_json::Value;

use crate::api::{EndpointSlice, Endpoints, Pod, Service};
use crate::error::{Diagnostic, Origin};

/// One input file (or stdin) as text.
#[derive(Debug, Clone)]
pub struct Source {
    /// What diagnostics call it: the path as the user gave it, or `<stdin>`.
    pub name: String,
    pub text: String,
}

/// A Kubernetes object svcproxy understands. `'a` is the text it was read from: JSON
/// objects borrow their strings from it where they can (YAML's are owned).
#[derive(Debug, Clone)]
pub enum Object<'a> {
    Service(Box<Service<'a>>),
    EndpointSlice(Box<EndpointSlice<'a>>),
    Endpoints(Box<Endpoints<'a>>),
    Pod(Box<Pod<'a>>),
}

/// An object and where it was read.
#[derive(Debug, Clone)]
pub struct Located<T> {
    pub origin: Origin,
    pub object: T,
}

/// Parses every document of one source. All structural errors are collected.
pub fn parse_source(source: &Source) -> Result<Vec<Located<Object<'_>>>, Vec<Diagnostic>> {
    let mut objects = Vec::new();
    parse_source_into(source, &mut |object| objects.push(object))?;
    Ok(objects)
}

/// Parses every document of one source, handing each object to `sink` as soon as it is
/// typed, so that the caller can convert it and drop it before the next one is read.
/// All structural errors are collected; objects read before an error still reach the
/// sink.
pub fn parse_source_into<'a>(
    source: &'a Source,
    sink: &mut dyn FnMut(Located<Object<'a>>),
) -> Result<(), Vec<Diagnostic>> {
    if looks_like_json(source) {
        return raw::parse_json(source, sink);
    }
    parse_yaml(source, sink)
}

/// A YAML stream, one document at a time: each is read into a `Value`, typed and
/// dropped before the next is parsed, so the stream's `Value` trees are never all
/// resident (at 10k Services x 5 endpoints, peak RSS 191 -> 64 MB; docs/design.md).
/// A syntax error refuses the whole source, with no other error beside it: objects
/// read before it reach the sink, but the caller discards them with the error.
fn parse_yaml<'a>(
    source: &'a Source,
    sink: &mut dyn FnMut(Located<Object<'a>>),
) -> Result<(), Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let mut reader = source.text.as_bytes();
    let mut index = 0;
    for document in
        serde_saphyr::read_with_options::<_, Value>(&mut reader, yaml_options(&source.text))
    {
        let document = match document {
            Ok(document) => document,
            Err(e) => {
                let origin = Origin {
                    file: source.name.as_str().into(),
                    document: 0,
                    item: None,
                };
                // The snippet form spans several lines; a diagnostic is one line.
                let message = e.without_snippet().to_string();
                let message = message.trim_start_matches("error: ");
                return Err(vec![Diagnostic::new(
                    &origin,
                    format!("malformed YAML: {message}"),
                )]);
            }
        };
        // Empty documents (`---` at the end of a stream, comment-only files) are not
        // objects, and are not counted.
        if document.is_null() {
            continue;
        }
        index += 1;
        let origin = Origin {
            file: source.name.as_str().into(),
            document: index,
            item: None,
        };
        read_document(document, &origin, None, sink, &mut errors);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn looks_like_json(source: &Source) -> bool {
    source.name.ends_with(".json") || source.text.trim_start().starts_with('{')
}

/// serde-saphyr's default budget stops at 1,024 documents and 250,000 nodes, which a
/// real cluster's snapshot exceeds. The size of the input is already bounded by
/// `--max-input-bytes`, so the counts that grow with the input (documents, nodes,
/// events, scalar bytes) are allowed to grow with it; what protects against
/// amplification (aliases, anchors, nesting depth) keeps its defaults.
fn yaml_options(text: &str) -> serde_saphyr::Options {
    // Every document, node or event takes at least one byte of input.
    let size = text.len();
    let mut budget = serde_saphyr::Budget::default();
    budget.max_reader_input_bytes = None;
    budget.max_documents = budget.max_documents.max(size);
    budget.max_nodes = budget.max_nodes.max(size);
    budget.max_events = budget.max_events.max(size);
    budget.max_total_scalar_bytes = budget.max_total_scalar_bytes.max(size);
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// Reads one document (or list item), handing its objects to `sink`. `list_kind` is the item kind
/// implied by a typed list (`ServiceList` items carry no `kind` of their own).
fn read_document<'a>(
    value: Value,
    origin: &Origin,
    list_kind: Option<(&str, &str)>,
    sink: &mut dyn FnMut(Located<Object<'a>>),
    errors: &mut Vec<Diagnostic>,
) {
    let Value::Object(map) = &value else {
        errors.push(Diagnostic::new(
            origin,
            "expected a Kubernetes object (a mapping with apiVersion and kind)",
        ));
        return;
    };
    let text_field = |name: &str| map.get(name).and_then(Value::as_str).map(str::to_owned);
    let kind = text_field("kind").or_else(|| list_kind.map(|(k, _)| k.to_owned()));
    let api_version = text_field("apiVersion").or_else(|| list_kind.map(|(_, v)| v.to_owned()));
    let (Some(kind), Some(api_version)) = (kind, api_version) else {
        errors.push(Diagnostic::new(origin, "missing apiVersion or kind"));
        return;
    };

    if kind == "List" || (kind.ends_with("List") && map.contains_key("items")) {
        let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
        let Value::Object(mut map) = value else {
            return;
        };
        let items = match map.remove("items") {
            Some(Value::Array(items)) => items,
            Some(Value::Null) | None => Vec::new(),
            Some(_) => {
                errors.push(Diagnostic::new(origin, "items: expected a list").object(kind));
                return;
            }
        };
        for (index, item) in items.into_iter().enumerate() {
            let item_origin = Origin {
                item: Some(index),
                ..origin.clone()
            };
            let implied = item_kind.map(|k| (k, api_version.as_str()));
            read_document(item, &item_origin, implied, sink, errors);
        }
        return;
    }

    let object_name = describe(&kind, map);
    let typed = match (kind.as_str(), api_version.as_str()) {
        ("Service", "v1") => typed(value, origin, &object_name).map(Object::Service),
        ("Endpoints", "v1") => typed(value, origin, &object_name).map(Object::Endpoints),
        ("Pod", "v1") => typed(value, origin, &object_name).map(Object::Pod),
        ("EndpointSlice", "discovery.k8s.io/v1") => {
            typed(value, origin, &object_name).map(Object::EndpointSlice)
        }
        _ => {
            tracing::debug!(%origin, kind, api_version, "skipping a kind svcproxy does not use");
            return;
        }
    };
    match typed {
        Ok(object) => sink(Located {
            origin: origin.clone(),
            object,
        }),
        Err(diagnostic) => errors.push(diagnostic),
    }
}

/// Deserializes into an [`crate::api`] type, keeping the path of a failing field. The
/// `Value` owns its strings, so the object does too (`'static`).
fn typed<T: Deserialize<'static>>(
    value: Value,
    origin: &Origin,
    object_name: &str,
) -> Result<Box<T>, Diagnostic> {
    serde_path_to_error::deserialize::<_, T>(value)
        .map(Box::new)
        .map_err(|e| {
            let path = e.path().to_string();
            let diagnostic =
                Diagnostic::new(origin, e.into_inner().to_string()).object(object_name);
            if path == "." {
                diagnostic
            } else {
                diagnostic.field(path)
            }
        })
}

/// `Service default/web`, from the raw document (before it is known to be valid).
fn describe(kind: &str, map: &serde_json::Map<String, Value>) -> String {
    let meta = map.get("metadata");
    let get = |field: &str| meta.and_then(|m| m.get(field)).and_then(Value::as_str);
    object_name(kind, get("namespace"), get("name"))
}

fn object_name(kind: &str, namespace: Option<&str>, name: Option<&str>) -> String {
    let namespace = namespace.unwrap_or("default");
    match name {
        Some(name) => format!("{kind} {namespace}/{name}"),
        None => format!("{kind} {namespace}/<unnamed>"),
    }
}

/// JSON without a `Value` tree: each document (and each item of a list) is kept as
/// its raw text, its head (`kind`, `apiVersion`, `metadata.name`) read from it, and
/// the object typed straight from the text. Half the time and a fraction of the
/// memory of going through `Value` for a 70 MB snapshot (docs/design.md). Errors read
/// as those of the `Value` path: same messages, same field paths.
mod raw {
    use std::borrow::Cow;

    use serde::Deserialize;
    use serde_json::value::RawValue;

    use super::{Located, Object, Source, object_name};
    use crate::api::Str;
    use crate::error::{Diagnostic, Origin};

    /// The fields of a document that decide what it is. Anything of the wrong type
    /// reads as absent, as with `Value::as_str`.
    #[derive(Deserialize)]
    struct Head<'a> {
        #[serde(borrow)]
        kind: Option<&'a RawValue>,
        #[serde(borrow, rename = "apiVersion")]
        api_version: Option<&'a RawValue>,
        #[serde(borrow)]
        metadata: Option<&'a RawValue>,
        #[serde(borrow)]
        items: Option<&'a RawValue>,
    }

    #[derive(Deserialize, Default)]
    struct Meta {
        name: Option<serde_json::Value>,
        namespace: Option<serde_json::Value>,
    }

    /// A string field of the head, borrowed from the text when it has no escapes.
    fn text(raw: Option<&RawValue>) -> Option<Cow<'_, str>> {
        raw.and_then(|r| serde_json::from_str::<Str<'_>>(r.get()).ok())
            .map(|s| s.0)
    }

    pub(super) fn parse_json<'a>(
        source: &'a Source,
        sink: &mut dyn FnMut(Located<Object<'a>>),
    ) -> Result<(), Vec<Diagnostic>> {
        let origin = Origin {
            file: source.name.as_str().into(),
            document: 0,
            item: None,
        };
        let documents = serde_json::Deserializer::from_str(&source.text)
            .into_iter::<&RawValue>()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| vec![Diagnostic::new(&origin, format!("malformed JSON: {e}"))])?;
        let mut errors = Vec::new();
        for (index, document) in documents
            .into_iter()
            .filter(|d| d.get() != "null")
            .enumerate()
        {
            let origin = Origin {
                file: source.name.as_str().into(),
                document: index + 1,
                item: None,
            };
            read(document, &origin, None, sink, &mut errors);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn read<'a>(
        raw: &'a RawValue,
        origin: &Origin,
        list_kind: Option<(&str, &str)>,
        sink: &mut dyn FnMut(Located<Object<'a>>),
        errors: &mut Vec<Diagnostic>,
    ) {
        let Ok(head) = serde_json::from_str::<Head<'_>>(raw.get()) else {
            errors.push(Diagnostic::new(
                origin,
                "expected a Kubernetes object (a mapping with apiVersion and kind)",
            ));
            return;
        };
        let kind = text(head.kind).or_else(|| list_kind.map(|(k, _)| Cow::Owned(k.to_owned())));
        let api_version =
            text(head.api_version).or_else(|| list_kind.map(|(_, v)| Cow::Owned(v.to_owned())));
        let (Some(kind), Some(api_version)) = (kind, api_version) else {
            errors.push(Diagnostic::new(origin, "missing apiVersion or kind"));
            return;
        };

        if kind == "List" || (kind.ends_with("List") && head.items.is_some()) {
            let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
            let items: Vec<&'a RawValue> = match head.items {
                None => Vec::new(),
                Some(items) if items.get() == "null" => Vec::new(),
                Some(items) => match serde_json::from_str(items.get()) {
                    Ok(items) => items,
                    Err(_) => {
                        errors.push(
                            Diagnostic::new(origin, "items: expected a list").object(kind.as_ref()),
                        );
                        return;
                    }
                },
            };
            for (index, item) in items.into_iter().enumerate() {
                let item_origin = Origin {
                    item: Some(index),
                    ..origin.clone()
                };
                let implied = item_kind.map(|k| (k, api_version.as_ref()));
                read(item, &item_origin, implied, sink, errors);
            }
            return;
        }

        // `Service default/web`, for an error only: formatting it for every object
        // would be a parse of `metadata` and an allocation each.
        let object_name = || {
            let meta: Meta = head
                .metadata
                .and_then(|m| serde_json::from_str(m.get()).ok())
                .unwrap_or_default();
            let field = |v: &Option<serde_json::Value>| {
                v.as_ref().and_then(|v| v.as_str()).map(str::to_owned)
            };
            object_name(
                &kind,
                field(&meta.namespace).as_deref(),
                field(&meta.name).as_deref(),
            )
        };
        let typed = match (kind.as_ref(), api_version.as_ref()) {
            ("Service", "v1") => typed(raw, origin, object_name).map(Object::Service),
            ("Endpoints", "v1") => typed(raw, origin, object_name).map(Object::Endpoints),
            ("Pod", "v1") => typed(raw, origin, object_name).map(Object::Pod),
            ("EndpointSlice", "discovery.k8s.io/v1") => {
                typed(raw, origin, object_name).map(Object::EndpointSlice)
            }
            _ => {
                tracing::debug!(
                    %origin,
                    kind = kind.as_ref(),
                    api_version = api_version.as_ref(),
                    "skipping a kind svcproxy does not use"
                );
                return;
            }
        };
        match typed {
            Ok(object) => sink(Located {
                origin: origin.clone(),
                object,
            }),
            Err(diagnostic) => errors.push(diagnostic),
        }
    }

    /// Deserializes into an [`crate::api`] type from the document's text (borrowing
    /// its strings where it can), keeping the path of a failing field. serde_json adds
    /// the position to its messages; the `Value` path has none to give, so it is left
    /// out for the two to read the same.
    fn typed<'a, T: Deserialize<'a>>(
        raw: &'a RawValue,
        origin: &Origin,
        object_name: impl FnOnce() -> String,
    ) -> Result<Box<T>, Diagnostic> {
        // Tracking the path costs a wrapper around every field of every object; errors
        // are rare, and reading the same text again with tracking gives the same error,
        // now with its path.
        if let Ok(object) = serde_json::from_str::<T>(raw.get()) {
            return Ok(Box::new(object));
        }
        let mut deserializer = serde_json::Deserializer::from_str(raw.get());
        serde_path_to_error::deserialize::<_, T>(&mut deserializer)
            .map(Box::new)
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let mut message = inner.to_string();
                if inner.line() != 0 {
                    if let Some(at) = message.rfind(" at line ") {
                        message.truncate(at);
                    }
                }
                let diagnostic = Diagnostic::new(origin, message).object(object_name());
                if path == "." {
                    diagnostic
                } else {
                    diagnostic.field(path)
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Located<Object<'static>>>, Vec<Diagnostic>> {
        // Objects borrow their source; a test's source lives as long as the test.
        let source = Box::leak(Box::new(Source {
            name: "in.yaml".into(),
            text: text.into(),
        }));
        parse_source(source)
    }

    #[test]
    fn reads_multi_document_yaml_and_skips_other_kinds() {
        let objects = parse(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\n\
             apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\n",
        )
        .unwrap();
        assert_eq!(objects.len(), 1);
        assert!(matches!(objects[0].object, Object::Service(_)));
        assert_eq!(objects[0].origin.document, 1);
    }

    #[test]
    fn reads_kubectl_lists_and_typed_lists() {
        let objects = parse(
            "apiVersion: v1\nkind: List\nitems:\n\
             - {apiVersion: v1, kind: Service, metadata: {name: a}}\n\
             - {apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {name: a-x}, addressType: IPv4, endpoints: []}\n\
             ---\napiVersion: v1\nkind: PodList\nitems:\n- {metadata: {name: p}}\n",
        )
        .unwrap();
        assert_eq!(objects.len(), 3);
        assert!(matches!(objects[2].object, Object::Pod(_)));
        assert_eq!(objects[1].origin.item, Some(1));
    }

    #[test]
    fn reads_json() {
        let source = Source {
            name: "in.json".into(),
            text: r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"}}"#.into(),
        };
        let objects = parse_source(&source).unwrap();
        assert_eq!(objects.len(), 1);
    }

    #[test]
    fn malformed_yaml_is_one_clear_error() {
        let errors = parse("apiVersion: v1\nkind: Service\nmetadata: {name: a\n").unwrap_err();
        assert_eq!(errors.len(), 1);
        let line = errors[0].to_string();
        assert!(line.starts_with("in.yaml: malformed YAML:"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn wrong_field_type_names_object_and_field() {
        let errors = parse(
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
             spec:\n  ports:\n  - port: eighty\n",
        )
        .unwrap_err();
        let line = errors[0].to_string();
        assert!(
            line.starts_with("in.yaml (document 1): Service shop/web: spec.ports[0].port: "),
            "{line}"
        );
    }

    /// The `Value` path, as YAML takes it, on JSON text.
    fn parse_through_value(text: &str) -> Result<Vec<Located<Object<'static>>>, Vec<Diagnostic>> {
        let source = Source {
            name: "in.json".into(),
            text: text.into(),
        };
        let documents: Vec<Value> = serde_json::Deserializer::from_str(&source.text)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .map_err(|e| {
                vec![Diagnostic::new(
                    &Origin::default(),
                    format!("malformed JSON: {e}"),
                )]
            })?;
        let (mut objects, mut errors) = (Vec::new(), Vec::new());
        for (index, document) in documents.into_iter().filter(|d| !d.is_null()).enumerate() {
            let origin = Origin {
                file: source.name.as_str().into(),
                document: index + 1,
                item: None,
            };
            read_document(
                document,
                &origin,
                None,
                &mut |o| objects.push(o),
                &mut errors,
            );
        }
        if errors.is_empty() {
            Ok(objects)
        } else {
            Err(errors)
        }
    }

    #[test]
    fn json_without_a_value_tree_reads_like_the_value_path() {
        let cases = [
            r#"{"apiVersion":"v1","kind":"List","items":[
                {"apiVersion":"v1","kind":"Service","metadata":{"name":"a","namespace":"n"}},
                {"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"d"}},
                {"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"a-x"},"addressType":"IPv4","endpoints":[]}]}
             {"apiVersion":"v1","kind":"PodList","items":[{"metadata":{"name":"p"}}]}
             null"#,
            r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"web","namespace":"shop"},
                "spec":{"ports":[{"port":"eighty"}]}}"#,
            r#"{"apiVersion":"v1","metadata":{"name":"a"}}"#,
            r#"{"apiVersion":"v1","kind":5}"#,
            r#"{"apiVersion":"v1","kind":"List","items":{"a":1}}"#,
            r#"["not", "an", "object"]"#,
            r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":7}}"#,
        ];
        for case in cases {
            let source = Source {
                name: "in.json".into(),
                text: case.into(),
            };
            let raw = parse_source(&source);
            let value = parse_through_value(case);
            let show = |r: &Result<Vec<Located<Object>>, Vec<Diagnostic>>| match r {
                Ok(objects) => format!(
                    "{:?}",
                    objects
                        .iter()
                        .map(|o| (o.origin.to_string(), format!("{:?}", o.object)))
                        .collect::<Vec<_>>()
                ),
                Err(errors) => format!(
                    "{:?}",
                    errors.iter().map(|e| e.to_string()).collect::<Vec<_>>()
                ),
            };
            assert_eq!(show(&raw), show(&value), "{case}");
        }
    }

    #[test]
    fn document_without_kind_is_an_error() {
        let errors = parse("apiVersion: v1\nmetadata: {name: a}\n").unwrap_err();
        assert!(errors[0].to_string().contains("missing apiVersion or kind"));
    }
}
