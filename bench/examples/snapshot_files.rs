//! Writes the synthetic cluster (`compiler/src/synth.rs`) as the files a user would
//! feed `svcproxy compile`: one JSON `kind: List` and the same objects as multi-document
//! YAML in the block style `kubectl get -o yaml` prints.
//!
//! ```sh
//! cargo run --release -p svcproxy-bench --example snapshot_files -- SERVICES ENDPOINTS DIR
//! ```

use anyhow::{Context, Result};
use svcproxy_compiler::synth::{self, Spec};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [services, endpoints, dir] = args.as_slice() else {
        anyhow::bail!("usage: snapshot_files SERVICES ENDPOINTS DIR");
    };
    let spec = Spec::new(services.parse()?, endpoints.parse()?);
    let snapshot = synth::generate(&spec);
    let dir = std::path::Path::new(dir);
    let json = dir.join(format!("synthetic-{services}x{endpoints}.json"));
    std::fs::write(&json, &snapshot.source.text).with_context(|| json.display().to_string())?;
    let yaml = dir.join(format!("synthetic-{services}x{endpoints}.yaml"));
    std::fs::write(&yaml, yaml_documents(&snapshot.source.text)?)
        .with_context(|| yaml.display().to_string())?;
    println!("{}\n{}", json.display(), yaml.display());
    Ok(())
}

/// The items of a JSON `List` as YAML documents, `---` between them.
fn yaml_documents(json: &str) -> Result<String> {
    let list: serde_json::Value = serde_json::from_str(json)?;
    let items = list["items"].as_array().context("a List")?;
    let mut out = String::with_capacity(json.len());
    for item in items {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(item)?);
    }
    Ok(out)
}
