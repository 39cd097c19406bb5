//! Kernel acceptance: every golden ruleset is accepted by `nft -c -f` and `nft -f` in
//! a fresh network namespace, and what the kernel then holds is exactly what our JSON
//! rendering says (after removing what the kernel adds: handles, set sizes). Loading
//! the JSON rendering with `nft -j -f` gives the same kernel state as loading the text.

use serde_json::Value;
use svcproxy_tests::Netns;
use svcproxy_tests::fixtures::{fixtures, golden_path, root};
use svcproxy_tests::require_kernel;

/// `nft -j list ruleset` of a namespace, normalised for comparison.
fn listing(ns: &Netns) -> Value {
    let text = ns.exec("nft", &["-j", "list", "ruleset"]).unwrap();
    normalise(serde_json::from_str(&text).unwrap())
}

/// Drops what the kernel adds or nft 1.0.6 does not print in JSON (handles, `size` of
/// dynamic sets, the `dynamic` flag, chain comments) and sorts set elements, which the
/// kernel lists in hash order. (The text listing, checked elsewhere, does show the
/// comments.)
fn normalise(mut value: Value) -> Value {
    let objects = value["nftables"].as_array_mut().unwrap();
    objects.retain(|o| o.get("metainfo").is_none());
    // Tables, then sets and maps, then chains, then rules (in their order): the
    // listing's order, whatever order the objects were written in.
    let rank = |o: &Value| {
        if o.get("table").is_some() {
            0
        } else if o.get("set").is_some() || o.get("map").is_some() {
            1
        } else if o.get("chain").is_some() {
            2
        } else {
            3
        }
    };
    objects.sort_by_key(rank);
    for object in objects.iter_mut() {
        let is_chain = object.get("chain").is_some();
        let body = object
            .as_object_mut()
            .and_then(|o| o.values_mut().next())
            .unwrap();
        let body = body.as_object_mut().unwrap();
        body.remove("handle");
        body.remove("size");
        if is_chain {
            body.remove("comment");
        }
        if let Some(flags) = body.get_mut("flags").and_then(Value::as_array_mut) {
            flags.retain(|f| f != "dynamic");
        }
        if let Some(elements) = body.get_mut("elem").and_then(Value::as_array_mut) {
            elements.sort_by_key(|e| e.to_string());
        }
    }
    value
}

fn without_set_comments(mut value: Value) -> Value {
    for object in value["nftables"].as_array_mut().unwrap() {
        for kind in ["set", "map"] {
            if let Some(body) = object.get_mut(kind).and_then(Value::as_object_mut) {
                body.remove("comment");
            }
        }
    }
    value
}

fn write_temp(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("svcproxy-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn every_golden_ruleset_loads_and_lists_back_as_rendered() {
    if !require_kernel() {
        return;
    }
    let mut checked = 0;
    for fixture in fixtures("")
        .into_iter()
        .filter(|f| !f.starts_with("fixtures/errors"))
    {
        let nft_path = golden_path("nftables", &fixture, "nft");
        let json_path = golden_path("nftables", &fixture, "json");
        let name = fixture.display().to_string();
        let json = std::fs::read_to_string(&json_path).unwrap();

        // 1. nft accepts the text, first as a check, then for real.
        let from_text = Netns::new("accept").unwrap();
        let nft = nft_path.display().to_string();
        from_text
            .exec("nft", &["-c", "-f", &nft])
            .unwrap_or_else(|e| panic!("{name}: nft -c rejects the ruleset: {e}"));
        from_text
            .exec("nft", &["-f", &nft])
            .unwrap_or_else(|e| panic!("{name}: nft -f rejects the ruleset: {e}"));
        let kernel = listing(&from_text);

        // 2. The kernel holds exactly what the JSON rendering describes.
        let rendered = normalise(serde_json::from_str(&json).unwrap());
        assert_eq!(
            kernel, rendered,
            "{name}: the kernel's listing differs from our JSON rendering"
        );

        // 3. Loading the JSON gives the same state as loading the text.
        let from_json = Netns::new("json").unwrap();
        let path = write_temp("ruleset.json", &json);
        from_json
            .exec("nft", &["-j", "-f", &path.display().to_string()])
            .unwrap_or_else(|e| panic!("{name}: nft -j -f rejects the JSON: {e}"));
        // (nft 1.0.6 ignores the comment of a set when it reads JSON.)
        assert_eq!(
            without_set_comments(listing(&from_json)),
            without_set_comments(kernel.clone()),
            "{name}: JSON and text load differently"
        );

        // 4. Applying the text again replaces the tables atomically (the preamble
        //    deletes the old ones) and leaves the same state.
        from_text
            .exec("nft", &["-f", &nft])
            .unwrap_or_else(|e| panic!("{name}: re-applying fails: {e}"));
        assert_eq!(
            listing(&from_text),
            kernel,
            "{name}: re-applying changed the state"
        );
        let _ = std::fs::remove_file(path);
        checked += 1;
    }
    assert!(
        checked > 20,
        "only {checked} golden rulesets under {}",
        root().display()
    );
}

/// The ruleset replaces only svcproxy's own tables: a table of someone else's in the
/// same namespace survives an apply.
#[test]
fn applying_leaves_other_tables_alone() {
    if !require_kernel() {
        return;
    }
    let ns = Netns::new("others").unwrap();
    ns.nft("table inet firewall { chain input { type filter hook input priority 0; }; }")
        .unwrap();
    let nft = golden_path(
        "nftables",
        std::path::Path::new("fixtures/semantics/dual-stack.yaml"),
        "nft",
    );
    ns.exec("nft", &["-f", &nft.display().to_string()]).unwrap();
    ns.exec("nft", &["-f", &nft.display().to_string()]).unwrap();
    let tables = ns.exec("nft", &["list", "tables"]).unwrap();
    assert_eq!(
        tables.lines().collect::<Vec<_>>(),
        [
            "table inet firewall",
            "table ip svcproxy",
            "table ip6 svcproxy"
        ]
    );
}
