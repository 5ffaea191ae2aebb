//! Converts the built-in connector files from YAML to JSON at build time,
//! so the binary does not parse 90 KB of YAML at every start (see
//! docs/performance.md): each connector's header as JSON, and each
//! operation's JSON as its own string, parsed only when used. The YAML
//! stays the source of truth; the same tree builder as at run time reads it.
//! Every `*.yaml` file of `src/catalog/connectors` is built in; one that
//! does not parse fails the build with its `file:line:column`.

#[allow(dead_code)]
#[path = "src/yaml.rs"]
mod yaml;

use std::path::Path;

fn main() {
    let dir = Path::new("src/catalog/connectors");
    let mut out = String::from("/// (operation name, its JSON).\npub type Ops = &'static [(&'static str, &'static str)];\n");
    out.push_str("/// Built-in connectors: (file, header JSON, operations).\n");
    out.push_str("pub static BUILTIN_JSON: &[(&str, &str, Ops)] = &[\n");
    println!("cargo::rerun-if-changed={}", dir.display());
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .expect("src/catalog/connectors is readable")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| f.ends_with(".yaml"))
        .collect();
    files.sort();
    for f in &files {
        let path = dir.join(f);
        println!("cargo::rerun-if-changed={}", path.display());
        let text = std::fs::read_to_string(&path).expect("connector file readable");
        let mut json = match yaml::parse(&text) {
            Ok((root, errors)) if errors.is_empty() => root.to_json(),
            Ok((_, errors)) => fail(&path, &errors[0]),
            Err(e) => fail(&path, &e),
        };
        let ops = json
            .as_object_mut()
            .and_then(|m| m.insert("operations".into(), serde_json::json!({})))
            .and_then(|o| o.as_object().cloned())
            .unwrap_or_default();
        out.push_str(&format!("    ({f:?}, {}, &[\n", raw(&json.to_string())));
        for (name, op) in ops {
            out.push_str(&format!("        ({name:?}, {}),\n", raw(&op.to_string())));
        }
        out.push_str("    ]),\n");
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap()).join("catalog.rs");
    std::fs::write(dest, out).unwrap();
}

/// Stops the build at a connector file that is not valid YAML.
fn fail(path: &Path, e: &yaml::YamlError) -> ! {
    panic!(
        "{}:{}: error[{}]: {}",
        path.display(),
        e.pos,
        e.code,
        e.message
    )
}

/// A Rust raw string literal holding `s`.
fn raw(s: &str) -> String {
    let mut hashes = String::from("#");
    while s.contains(&format!("\"{hashes}")) {
        hashes.push('#');
    }
    format!("r{hashes}\"{s}\"{hashes}")
}
