//! JSONPath for operation outputs, compiled once.
//!
//! jsonpath-rust accepts some malformed paths (`$.a.b c`) and matches
//! nothing; [`compile`] rejects those so a typo in the catalog is caught
//! at load time rather than as an empty output at run time.

use jsonpath_rust::parser::model::JpQuery;
use jsonpath_rust::parser::parse_json_path;
use jsonpath_rust::query::js_path_process;
use serde_json::Value;

/// A compiled JSONPath.
#[derive(Debug, Clone)]
pub struct JsonPath {
    source: String,
    query: Option<JpQuery>,
}

/// Compiles a JSONPath; `$` alone selects the whole document.
pub fn compile(path: &str) -> Result<JsonPath, String> {
    if !path.starts_with('$') {
        return Err(format!("JSONPath `{path}` must start with `$`"));
    }
    let mut quote = None;
    let mut depth = 0i32;
    for c in path.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '[' | '(') => depth += 1,
            (None, ']' | ')') => depth -= 1,
            (None, c) if c.is_whitespace() && depth == 0 => {
                return Err(format!("JSONPath `{path}` has a space outside brackets"))
            }
            _ => {}
        }
    }
    if path == "$" {
        return Ok(JsonPath {
            source: path.into(),
            query: None,
        });
    }
    let query = parse_json_path(path).map_err(|e| format!("invalid JSONPath `{path}`: {e}"))?;
    Ok(JsonPath {
        source: path.into(),
        query: Some(query),
    })
}

impl JsonPath {
    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The first match, or `None`.
    pub fn first(&self, value: &Value) -> Option<Value> {
        match &self.query {
            None => Some(value.clone()),
            Some(q) => js_path_process(q, value)
                .ok()?
                .into_iter()
                .next()
                .map(|r| r.val.clone()),
        }
    }

    /// Every match.
    pub fn all(&self, value: &Value) -> Vec<Value> {
        match &self.query {
            None => vec![value.clone()],
            Some(q) => js_path_process(q, value)
                .map(|v| v.into_iter().map(|r| r.val.clone()).collect())
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn extracts_wrapped_output() {
        let p = compile("$.contact").unwrap();
        assert_eq!(
            p.first(&json!({"contact": {"id": "a"}})),
            Some(json!({"id": "a"}))
        );
        assert_eq!(compile("$").unwrap().first(&json!(1)), Some(json!(1)));
    }

    #[test]
    fn rejects_paths_the_library_would_accept_silently() {
        assert!(compile("$.a.b c").is_err());
        assert!(compile("contact").is_err());
        assert!(compile("$[?(@.name == 'a b')]").is_ok());
    }
}
