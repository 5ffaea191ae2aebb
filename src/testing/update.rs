//! `--update`: rewrites the `expect.requests` block of cases from the
//! requests actually sent, editing only those lines of the file (comments
//! and the rest of the file are kept).

use serde_json::Value;

use super::canned::Recorded;
use crate::yaml::Node;

/// Why a case could not be rewritten.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UpdateError(pub String);

/// A JSON value as YAML flow text: one line up to 120 characters, else pretty JSON
/// whose continuation lines are indented by `indent` spaces.
fn flow(v: &Value, indent: usize) -> String {
    let one = spaced(v);
    if one.chars().count() <= 120 {
        return one;
    }
    let pretty = serde_json::to_string_pretty(v).unwrap_or_default();
    let pad = " ".repeat(indent);
    pretty
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                l.to_string()
            } else {
                format!("{pad}{l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Compact JSON with a space after `:` and `,` (reads better as YAML).
fn spaced(v: &Value) -> String {
    match v {
        Value::Array(a) => format!("[{}]", a.iter().map(spaced).collect::<Vec<_>>().join(", ")),
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!(
                    "{}: {}",
                    serde_json::to_string(k).unwrap_or_default(),
                    spaced(v)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

/// The `requests:` block at `ind` spaces.
fn block(requests: &[Recorded], ind: usize) -> String {
    let pad = " ".repeat(ind);
    if requests.is_empty() {
        return format!("{pad}requests: []\n");
    }
    let mut s = format!("{pad}requests:\n");
    for r in requests {
        s.push_str(&format!("{pad}  - operation: {}\n", r.operation));
        if let Some(b) = &r.body {
            s.push_str(&format!("{pad}    body: {}\n", flow(b, ind + 6)));
        }
        if !r.query.is_empty() {
            let q = Value::Object(r.query.clone());
            s.push_str(&format!("{pad}    query: {}\n", flow(&q, ind + 6)));
        }
    }
    s
}

fn indentation(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn blank(line: &str) -> bool {
    line.trim().is_empty()
}

/// Whether the node is a block mapping (not `{ ... }`).
fn is_block_map(n: &Node, chars: &[char]) -> bool {
    n.as_map().is_some() && chars.get(n.span.start_index) != Some(&'{')
}

/// Rewrites `expect.requests` of the given cases (`(index in cases, the
/// requests sent)`). Returns the new text and the cases that could not be
/// rewritten.
pub fn rewrite(
    text: &str,
    root: &Node,
    updates: &[(usize, Vec<Recorded>)],
) -> (String, Vec<(usize, UpdateError)>) {
    let chars: Vec<char> = text.chars().collect();
    let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_string).collect();
    if lines.last().is_some_and(|l| !l.ends_with('\n')) {
        lines.last_mut().expect("checked").push('\n');
    }
    // (first line, end line exclusive, replacement), 0-based.
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let mut failed = Vec::new();
    let cases = root
        .get("cases")
        .and_then(|c| match &c.kind {
            crate::yaml::NodeKind::Seq(items) => Some(items.as_slice()),
            _ => None,
        })
        .unwrap_or(&[]);
    for (index, requests) in updates {
        let Some(case) = cases.get(*index) else {
            continue;
        };
        match edit_for(case, requests, &lines, &chars) {
            Ok(e) => edits.push(e),
            Err(e) => failed.push((*index, e)),
        }
    }
    edits.sort_by_key(|e| std::cmp::Reverse(e.0));
    for (start, end, text) in edits {
        lines.splice(start..end, [text]);
    }
    (lines.concat(), failed)
}

/// The end (exclusive, 0-based) of the block value of a key written on
/// `line` (0-based) at indentation `ind`: lines more indented, or list
/// items at the same indentation; trailing blank lines are left out.
fn block_end(lines: &[String], line: usize, ind: usize) -> usize {
    let mut end = line + 1;
    let mut last = line + 1;
    while end < lines.len() {
        let l = &lines[end];
        if blank(l) {
            end += 1;
            continue;
        }
        let i = indentation(l);
        let item = l.trim_start().starts_with("- ") || l.trim() == "-";
        if i > ind || (i == ind && item) {
            end += 1;
            last = end;
        } else {
            break;
        }
    }
    last
}

fn edit_for(
    case: &Node,
    requests: &[Recorded],
    lines: &[String],
    chars: &[char],
) -> Result<(usize, usize, String), UpdateError> {
    if !is_block_map(case, chars) {
        return Err(UpdateError(
            "the case is written as a flow mapping (`{ ... }`); write it as a block to use --update"
                .into(),
        ));
    }
    let entries = case.as_map().expect("a map");
    let expect = entries.iter().find(|(k, _)| k.as_str() == Some("expect"));
    match expect {
        Some((key, value)) if is_block_map(value, chars) => {
            let map = value.as_map().expect("a map");
            let requests_key = map.iter().find(|(k, _)| k.as_str() == Some("requests"));
            match requests_key {
                Some((k, _)) => {
                    let line = k.span.start.line as usize - 1;
                    let ind = k.span.start.col as usize - 1;
                    if indentation(&lines[line]) != ind {
                        return Err(UpdateError("`requests:` does not start its line".into()));
                    }
                    let end = block_end(lines, line, ind);
                    Ok((line, end, block(requests, ind)))
                }
                None => {
                    let (first, _) = &map[0];
                    let line = first.span.start.line as usize - 1;
                    let ind = first.span.start.col as usize - 1;
                    if indentation(&lines[line]) != ind {
                        return Err(UpdateError(
                            "the first key of `expect` does not start its line".into(),
                        ));
                    }
                    Ok((line, line, block(requests, ind)))
                }
            }
        }
        Some((key, value)) => {
            let empty = value.as_map().is_some_and(|m| m.is_empty())
                || matches!(value.kind, crate::yaml::NodeKind::Null);
            let line = key.span.start.line as usize - 1;
            let ind = key.span.start.col as usize - 1;
            if !empty || indentation(&lines[line]) != ind {
                return Err(UpdateError(
                    "`expect` is written as a flow mapping; write it as a block to use --update"
                        .into(),
                ));
            }
            Ok((
                line,
                line + 1,
                format!("{}expect:\n{}", " ".repeat(ind), block(requests, ind + 2)),
            ))
        }
        None => {
            let (first, _) = &entries[0];
            let line = first.span.start.line as usize - 1;
            let ind = first.span.start.col as usize - 1;
            // The case's lines: from its first key to the last line indented
            // at least as much.
            let mut end = line + 1;
            let mut last = line + 1;
            while end < lines.len() {
                let l = &lines[end];
                if blank(l) {
                    end += 1;
                    continue;
                }
                if indentation(l) >= ind {
                    end += 1;
                    last = end;
                } else {
                    break;
                }
            }
            Ok((
                last,
                last,
                format!("{}expect:\n{}", " ".repeat(ind), block(requests, ind + 2)),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map};

    fn rec(op: &str, body: Value) -> Recorded {
        Recorded {
            operation: op.into(),
            method: "POST".into(),
            url: "https://x/y".into(),
            query: Map::new(),
            body: Some(body),
        }
    }

    fn update(text: &str, reqs: Vec<Recorded>) -> String {
        let (root, _) = crate::yaml::parse(text).unwrap();
        let (out, failed) = rewrite(text, &root, &[(0, reqs)]);
        assert!(failed.is_empty(), "{failed:?}");
        // The result parses and holds the requests.
        let (node, _) = crate::yaml::parse(&out).unwrap();
        assert!(
            node.at_pointer("/cases/0/expect/requests").is_some(),
            "{out}"
        );
        out
    }

    #[test]
    fn replaces_an_existing_requests_block_and_keeps_the_rest() {
        let text = "cases:\n  - name: a # the case\n    expect:\n      requests:\n        - operation: x.y\n          body: { a: 1 }\n\n      outcome: completed # kept\n  - name: b\n";
        let out = update(
            text,
            vec![rec("ghl.contacts.upsert", json!({"email": "a@b.c"}))],
        );
        assert_eq!(
            out,
            "cases:\n  - name: a # the case\n    expect:\n      requests:\n        - operation: ghl.contacts.upsert\n          body: {\"email\": \"a@b.c\"}\n\n      outcome: completed # kept\n  - name: b\n"
        );
    }

    #[test]
    fn adds_requests_to_an_expect_block_or_a_case_without_expect() {
        let text = "cases:\n  - name: a\n    expect:\n      outcome: completed\n";
        let out = update(text, vec![rec("a.b", json!({}))]);
        assert!(out.contains("    expect:\n      requests:\n        - operation: a.b\n          body: {}\n      outcome: completed\n"), "{out}");
        let text = "cases:\n  - name: a\n    event: {x: 1}\n\n# trailing comment\n";
        let out = update(text, vec![]);
        assert_eq!(
            out,
            "cases:\n  - name: a\n    event: {x: 1}\n    expect:\n      requests: []\n\n# trailing comment\n"
        );
    }

    #[test]
    fn long_bodies_are_written_over_several_lines() {
        let body = json!({"email": "someone.with.a.long.address@example.com", "firstName": "Someone", "lastName": "With A Long Name"});
        let out = update(
            "cases:\n  - name: a\n    expect:\n      requests: []\n",
            vec![rec("a.b", body.clone())],
        );
        let (node, _) = crate::yaml::parse(&out).unwrap();
        assert_eq!(
            node.at_pointer("/cases/0/expect/requests/0/body")
                .unwrap()
                .to_json(),
            body
        );
    }

    #[test]
    fn flow_cases_are_refused() {
        let text = "cases:\n  - { name: a }\n";
        let (root, _) = crate::yaml::parse(text).unwrap();
        let (_, failed) = rewrite(text, &root, &[(0, vec![])]);
        assert_eq!(failed.len(), 1);
    }
}
