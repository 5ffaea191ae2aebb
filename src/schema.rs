//! JSON Schemas generated from the Rust types: `schemas/recipe.schema.json`,
//! `schemas/recipe-test.schema.json` and `schemas/connector.schema.json` are
//! these outputs, kept equal by a test.

use crate::catalog::ConnectorDef;
use crate::recipe::Recipe;

/// The recipe JSON Schema, pretty-printed with a trailing newline.
pub fn recipe_schema() -> String {
    let schema = schemars::schema_for!(Recipe);
    let mut s = serde_json::to_string_pretty(&schema).expect("schema serializes");
    s.push('\n');
    s
}

/// The recipe test file JSON Schema (`schemas/recipe-test.schema.json`).
pub fn test_schema() -> String {
    let schema = schemars::schema_for!(crate::testing::file::TestFile);
    let mut s = serde_json::to_string_pretty(&schema).expect("schema serializes");
    s.push('\n');
    s
}

/// The connector-file JSON Schema.
pub fn connector_schema() -> String {
    let schema = schemars::schema_for!(ConnectorDef);
    let mut s = serde_json::to_string_pretty(&schema).expect("schema serializes");
    s.push('\n');
    s
}
