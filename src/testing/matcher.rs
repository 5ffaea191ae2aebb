//! Matching expected JSON against actual JSON (subset or exact), naming the
//! first difference by JSON pointer, and a line diff of pretty JSON for
//! people.

use std::fmt::Write as _;

use serde_json::Value;

/// The first place two values differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// JSON pointer (`/tags/1`), empty for the root.
    pub path: String,
    /// What differs there.
    pub what: String,
}

impl Difference {
    fn at(path: &str, what: String) -> Difference {
        Difference {
            path: path.to_string(),
            what,
        }
    }
}

/// `expected` is contained in `actual`: objects by their listed keys, lists
/// element by element (same length), other values equal.
pub fn subset(expected: &Value, actual: &Value) -> Option<Difference> {
    compare(expected, actual, "", true)
}

/// `expected` equals `actual`.
pub fn exact(expected: &Value, actual: &Value) -> Option<Difference> {
    compare(expected, actual, "", false)
}

fn compare(expected: &Value, actual: &Value, path: &str, subset: bool) -> Option<Difference> {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                let p = format!("{path}/{}", k.replace('~', "~0").replace('/', "~1"));
                match a.get(k) {
                    None => {
                        return Some(Difference::at(
                            &p,
                            format!("missing (expected {})", short(ev)),
                        ))
                    }
                    Some(av) => {
                        if let Some(d) = compare(ev, av, &p, subset) {
                            return Some(d);
                        }
                    }
                }
            }
            if !subset {
                if let Some(k) = a.keys().find(|k| !e.contains_key(*k)) {
                    let p = format!("{path}/{}", k.replace('~', "~0").replace('/', "~1"));
                    return Some(Difference::at(
                        &p,
                        format!("not expected, got {}", short(&a[k])),
                    ));
                }
            }
            None
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                return Some(Difference::at(
                    path,
                    format!(
                        "expected a list of {}, got a list of {}: {}",
                        e.len(),
                        a.len(),
                        short(actual)
                    ),
                ));
            }
            e.iter()
                .zip(a)
                .enumerate()
                .find_map(|(i, (ev, av))| compare(ev, av, &format!("{path}/{i}"), subset))
        }
        (Value::Number(e), Value::Number(a)) if e.as_f64() == a.as_f64() => None,
        (e, a) if e == a => None,
        (e, a) => Some(Difference::at(
            path,
            format!("expected {}, got {}", short(e), short(a)),
        )),
    }
}

/// A value on one line, cut at 120 characters.
pub fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 120 {
        format!("{}…", s.chars().take(120).collect::<String>())
    } else {
        s
    }
}

/// `actual` cut down to the shape of `expected` (the keys it lists), so a
/// subset diff shows only what was asked for.
pub fn project(expected: &Value, actual: &Value) -> Value {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => Value::Object(
            e.keys()
                .filter_map(|k| a.get(k).map(|av| (k.clone(), project(&e[k], av))))
                .collect(),
        ),
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            Value::Array(e.iter().zip(a).map(|(ev, av)| project(ev, av)).collect())
        }
        (_, a) => a.clone(),
    }
}

/// A unified-style line diff of two texts (`-` expected, `+` actual).
pub fn line_diff(expected: &str, actual: &str, colour: bool) -> String {
    let e: Vec<&str> = expected.lines().collect();
    let a: Vec<&str> = actual.lines().collect();
    // Longest common subsequence table; values here are small.
    let (n, m) = (e.len(), a.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if e[i] == a[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (red, green, reset) = if colour {
        ("\x1b[31m", "\x1b[32m", "\x1b[0m")
    } else {
        ("", "", "")
    };
    let mut out = String::new();
    let _ = writeln!(out, "{red}--- expected{reset}");
    let _ = writeln!(out, "{green}+++ actual{reset}");
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && e[i] == a[j] {
            let _ = writeln!(out, " {}", e[i]);
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            let _ = writeln!(out, "{red}-{}{reset}", e[i]);
            i += 1;
        } else {
            let _ = writeln!(out, "{green}+{}{reset}", a[j]);
            j += 1;
        }
    }
    out
}

/// Pretty JSON for diffs.
pub fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subset_ignores_unlisted_keys_but_not_list_lengths() {
        let a = json!({"email": "a@b.c", "tags": ["x", "y"], "locationId": "l"});
        assert_eq!(subset(&json!({"email": "a@b.c"}), &a), None);
        assert_eq!(subset(&json!({"tags": ["x", "y"]}), &a), None);
        let d = subset(&json!({"tags": ["x"]}), &a).unwrap();
        assert_eq!(d.path, "/tags");
        assert!(d.what.starts_with("expected a list of 1, got a list of 2"));
    }

    #[test]
    fn differences_name_the_pointer() {
        let a = json!({"contact": {"email": "x@y.z"}});
        let d = subset(&json!({"contact": {"email": "a@b.c"}}), &a).unwrap();
        assert_eq!(d.path, "/contact/email");
        assert_eq!(d.what, "expected \"a@b.c\", got \"x@y.z\"");
        let d = subset(&json!({"contact": {"id": 1}}), &a).unwrap();
        assert_eq!(d.what, "missing (expected 1)");
    }

    #[test]
    fn exact_reports_extra_keys_and_types_differ() {
        let d = exact(&json!({"a": 1}), &json!({"a": 1, "b": 2})).unwrap();
        assert_eq!(d.path, "/b");
        assert!(exact(&json!({"a": 1}), &json!({"a": "1"})).is_some());
        assert_eq!(exact(&json!({"a": 1.0}), &json!({"a": 1})), None);
    }

    #[test]
    fn projection_keeps_only_expected_keys() {
        let p = project(
            &json!({"a": {"b": 1}, "c": [ {"d": 1} ]}),
            &json!({"a": {"b": 2, "x": 1}, "c": [ {"d": 1, "y": 2} ], "z": 0}),
        );
        assert_eq!(p, json!({"a": {"b": 2}, "c": [ {"d": 1} ]}));
    }

    #[test]
    fn line_diff_marks_changed_lines() {
        let d = line_diff("{\n  \"a\": 1\n}", "{\n  \"a\": 2\n}", false);
        assert_eq!(
            d,
            "--- expected\n+++ actual\n {\n-  \"a\": 1\n+  \"a\": 2\n }\n"
        );
    }
}
