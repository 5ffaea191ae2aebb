//! Converts the built-in connector files from YAML to JSON at build time,
//! so the binary does not parse 90 KB of YAML at every start (see
//! docs/performance.md). The YAML stays the source of truth; the same
//! tree builder as at run time reads it.

#[allow(dead_code)]
#[path = "src/yaml.rs"]
mod yaml;

use std::path::Path;

const FILES: &[&str] = &[
    "ghl.yaml",
    "ghl_v1.yaml",
    "sendpulse.yaml",
    "store.yaml",
    "http.yaml",
];

fn main() {
    let dir = Path::new("src/catalog/connectors");
    let mut all = Vec::new();
    for f in FILES {
        let path = dir.join(f);
        println!("cargo::rerun-if-changed={}", path.display());
        let text = std::fs::read_to_string(&path).expect("connector file readable");
        // A broken file is reported by the catalog tests with its position;
        // here it just becomes null and fails loudly at start.
        let json = match yaml::parse(&text) {
            Ok((root, _)) => root.to_json(),
            Err(_) => serde_json::Value::Null,
        };
        all.push(serde_json::json!([f, json]));
    }
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("catalog.json");
    std::fs::write(out, serde_json::to_string(&all).unwrap()).unwrap();
}
