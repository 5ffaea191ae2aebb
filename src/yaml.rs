//! A YAML document as a tree of nodes that remember where they came from.
//!
//! serde-based YAML readers stop at the first error and forget the position
//! of values that parsed; recipe validation needs both every problem and the
//! `line:column` of every value, so recipes are read into this tree first
//! (see `docs/decisions.md`).

use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, Span as YSpan};
use serde_json::{Map, Number, Value};

/// A position in a source file: 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Pos {
    /// 1-based line.
    pub line: u32,
    /// 1-based column, counted in characters.
    pub col: u32,
}

impl Pos {
    /// A position from 1-based line and column.
    pub fn new(line: u32, col: u32) -> Pos {
        Pos { line, col }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// The source span of a node: start position plus start/end char offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Span {
    /// Where the node starts.
    pub start: Pos,
    /// Char offset of the start in the source.
    pub start_index: usize,
    /// Char offset one past the end in the source.
    pub end_index: usize,
}

impl Span {
    fn from_yaml(s: &YSpan) -> Span {
        Span {
            start: Pos::new(s.start.line() as u32, s.start.col() as u32 + 1),
            start_index: s.start.index(),
            end_index: s.end.index(),
        }
    }
}

/// How a scalar was written; decides typing and how offsets map to columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Unquoted.
    Plain,
    /// `'...'` or `"..."`.
    Quoted,
    /// `|` or `>` block.
    Block,
    /// A sequence or mapping.
    Collection,
}

/// One node of the tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The value.
    pub kind: NodeKind,
    /// Where it is.
    pub span: Span,
    /// How it was written.
    pub style: Style,
}

/// The value of a node, typed with the YAML 1.2 core schema (strict booleans).
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// `null`, `~` or nothing.
    Null,
    /// `true` / `false` only (never `yes`/`no`/`on`).
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping in source order; duplicate keys are reported by the parser.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// A short name of the node's type for messages.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            NodeKind::Null => "null",
            NodeKind::Bool(_) => "a boolean",
            NodeKind::Int(_) => "an integer",
            NodeKind::Float(_) => "a number",
            NodeKind::Str(_) => "a string",
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a mapping",
        }
    }

    /// The string value, if the node is a string.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The entries, if the node is a mapping.
    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.kind {
            NodeKind::Map(m) => Some(m),
            _ => None,
        }
    }

    /// Looks a key up in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// Whether this node looks like an unquoted `{{ x }}`: YAML reads that as
    /// a flow mapping whose only key is another flow mapping.
    pub fn is_unquoted_template(&self) -> bool {
        match &self.kind {
            NodeKind::Map(m) if m.len() == 1 => {
                matches!(m[0].0.kind, NodeKind::Map(_)) && matches!(m[0].1.kind, NodeKind::Null)
            }
            _ => false,
        }
    }

    /// The node as JSON (mapping keys rendered as strings).
    pub fn to_json(&self) -> Value {
        match &self.kind {
            NodeKind::Null => Value::Null,
            NodeKind::Bool(b) => Value::Bool(*b),
            NodeKind::Int(i) => Value::Number((*i).into()),
            NodeKind::Float(f) => Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            NodeKind::Str(s) => Value::String(s.clone()),
            NodeKind::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeKind::Map(entries) => {
                let mut m = Map::new();
                for (k, v) in entries {
                    m.insert(k.key_string(), v.to_json());
                }
                Value::Object(m)
            }
        }
    }

    /// A mapping key as a string.
    pub fn key_string(&self) -> String {
        match &self.kind {
            NodeKind::Str(s) => s.clone(),
            NodeKind::Null => "null".into(),
            NodeKind::Bool(b) => b.to_string(),
            NodeKind::Int(i) => i.to_string(),
            NodeKind::Float(f) => f.to_string(),
            _ => self.to_json().to_string(),
        }
    }

    /// Finds the node at a JSON pointer (`/steps/0/with`).
    pub fn at_pointer(&self, pointer: &str) -> Option<&Node> {
        let mut node = self;
        for part in pointer.split('/').skip(1) {
            let part = part.replace("~1", "/").replace("~0", "~");
            node = match &node.kind {
                NodeKind::Map(m) => &m.iter().find(|(k, _)| k.key_string() == part)?.1,
                NodeKind::Seq(items) => items.get(part.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(node)
    }

    /// Finds the key node of the last segment of a JSON pointer.
    pub fn key_at_pointer(&self, pointer: &str) -> Option<&Node> {
        let (parent, last) = pointer.rsplit_once('/')?;
        let parent = self.at_pointer(parent)?;
        parent
            .as_map()?
            .iter()
            .find(|(k, _)| k.key_string() == last)
            .map(|(k, _)| k)
    }
}

/// A YAML error with its position.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct YamlError {
    /// Where.
    pub pos: Pos,
    /// Which rule: `yaml-syntax` or `duplicate-key`.
    pub code: &'static str,
    /// What.
    pub message: String,
}

/// Alias expansion cap: a document may not grow past this many nodes
/// through aliases ("billion laughs").
const MAX_NODES: usize = 100_000;

/// Alias expansion cap in bytes: the text of every scalar, each alias
/// counted again for what it repeats (one long string aliased many times).
pub const MAX_EXPANDED_BYTES: usize = 16 * 1024 * 1024;

/// The largest document parsed (also the largest configuration file read,
/// `safefile`). Here too: the build script includes this file.
pub const MAX_DOCUMENT_BYTES: usize = 4 * 1024 * 1024;

/// Nesting cap: the tree is built (and later walked) recursively, so a
/// document of ten thousand `[` would otherwise overflow the stack.
pub const MAX_DEPTH: usize = 64;

/// Parses one YAML document into a tree. Duplicate keys are returned as
/// extra errors; the tree keeps the first occurrence.
pub fn parse(source: &str) -> Result<(Node, Vec<YamlError>), YamlError> {
    if source.len() > MAX_DOCUMENT_BYTES {
        return Err(YamlError {
            pos: Pos::new(1, 1),
            code: "yaml-syntax",
            message: format!("document too large: more than {MAX_DOCUMENT_BYTES} bytes"),
        });
    }
    let chars: Vec<char> = source.chars().collect();
    let mut b = Builder {
        parser: Parser::new_from_str(source),
        anchors: Vec::new(),
        dup: Vec::new(),
        count: 0,
        bytes: 0,
        depth: 0,
        chars: &chars,
        open_flows: Vec::new(),
    };
    let mut root = None;
    loop {
        let (ev, span) = b.next()?;
        match ev {
            Event::StreamStart | Event::DocumentEnd => {}
            Event::DocumentStart(_) => {
                if root.is_some() {
                    return Err(YamlError {
                        pos: Span::from_yaml(&span).start,
                        code: "yaml-syntax",
                        message:
                            "a recipe file holds exactly one YAML document; remove the second `---`"
                                .into(),
                    });
                }
                let (ev, span) = b.next()?;
                root = Some(b.node(ev, span)?);
            }
            Event::StreamEnd => break,
            _ => {}
        }
    }
    let root = root.unwrap_or(Node {
        kind: NodeKind::Null,
        span: Span::default(),
        style: Style::Plain,
    });
    Ok((root, b.dup))
}

struct Builder<'a> {
    parser: Parser<'a, saphyr_parser::StrInput<'a>>,
    anchors: Vec<(usize, Node)>,
    dup: Vec<YamlError>,
    count: usize,
    /// Scalar bytes so far, aliases expanded.
    bytes: usize,
    /// Collections open around the node being read.
    depth: usize,
    chars: &'a [char],
    /// Flow collections (`[`, `{`) opened and not yet closed, for errors.
    open_flows: Vec<(char, Pos)>,
}

impl<'a> Builder<'a> {
    fn next(&mut self) -> Result<(Event<'a>, YSpan), YamlError> {
        match self.parser.next_event() {
            Some(Ok(ev)) => Ok(ev),
            Some(Err(e)) => {
                let mut pos = Pos::new(e.marker().line() as u32, e.marker().col() as u32 + 1);
                let mut message = format!("invalid YAML: {}", e.info());
                let open = self.open_flows.last().filter(|(_, at)| at.line < pos.line);
                if let Some((c, at)) = open {
                    // The scanner notices a missing `]` only lines later.
                    let close = if *c == '[' { ']' } else { '}' };
                    message = format!(
                        "`{c}` is never closed (add `{close}`); the YAML reader says: {}",
                        e.info()
                    );
                    pos = *at;
                } else if e.info().contains("tab") {
                    // Point at the tab itself.
                    let idx = LineIndex::new(&self.chars.iter().collect::<String>());
                    if let Some(i) = idx.line_text(pos.line).find('\t') {
                        pos.col = idx.line_text(pos.line)[..i].chars().count() as u32 + 1;
                    }
                }
                Err(YamlError {
                    pos,
                    code: "yaml-syntax",
                    message,
                })
            }
            None => Err(YamlError {
                pos: Pos::default(),
                code: "yaml-syntax",
                message: "unexpected end of YAML".into(),
            }),
        }
    }

    fn bump(&mut self, n: usize, span: &YSpan) -> Result<(), YamlError> {
        self.count += n;
        if self.count > MAX_NODES {
            return Err(YamlError {
                pos: Span::from_yaml(span).start,
                code: "yaml-syntax",
                message: format!(
                    "document too large: more than {MAX_NODES} nodes (alias expansion?)"
                ),
            });
        }
        Ok(())
    }

    fn add_bytes(&mut self, n: usize, span: &YSpan) -> Result<(), YamlError> {
        self.bytes = self.bytes.saturating_add(n);
        if self.bytes > MAX_EXPANDED_BYTES {
            return Err(YamlError {
                pos: Span::from_yaml(span).start,
                code: "yaml-syntax",
                message: format!(
                    "document too large: more than {MAX_EXPANDED_BYTES} bytes of values (alias expansion?)"
                ),
            });
        }
        Ok(())
    }

    fn node(&mut self, ev: Event<'a>, yspan: YSpan) -> Result<Node, YamlError> {
        if matches!(ev, Event::SequenceStart(..) | Event::MappingStart(..)) {
            if self.depth >= MAX_DEPTH {
                return Err(YamlError {
                    pos: Span::from_yaml(&yspan).start,
                    code: "yaml-syntax",
                    message: format!("nested more than {MAX_DEPTH} levels deep"),
                });
            }
            self.depth += 1;
            let node = self.node_at(ev, yspan);
            self.depth -= 1;
            return node;
        }
        self.node_at(ev, yspan)
    }

    fn node_at(&mut self, ev: Event<'a>, yspan: YSpan) -> Result<Node, YamlError> {
        let span = Span::from_yaml(&yspan);
        self.bump(1, &yspan)?;
        let (node, anchor) = match ev {
            Event::Alias(id) => {
                let Some((_, n)) = self.anchors.iter().rev().find(|(a, _)| *a == id) else {
                    return Err(YamlError {
                        pos: span.start,
                        code: "yaml-syntax",
                        message: "alias refers to an unknown anchor".into(),
                    });
                };
                let (size, bytes) = count_nodes(n);
                let n = n.clone();
                self.bump(size, &yspan)?;
                self.add_bytes(bytes, &yspan)?;
                let mut n = n;
                n.span = span;
                return Ok(n);
            }
            Event::Scalar(value, style, anchor, tag) => {
                self.add_bytes(value.len(), &yspan)?;
                let is_str_tag = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let (kind, style) = match style {
                    ScalarStyle::Plain if !is_str_tag => (plain_scalar(&value), Style::Plain),
                    ScalarStyle::Plain => (NodeKind::Str(value.into_owned()), Style::Plain),
                    ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted => {
                        (NodeKind::Str(value.into_owned()), Style::Quoted)
                    }
                    _ => (NodeKind::Str(value.into_owned()), Style::Block),
                };
                (Node { kind, span, style }, anchor)
            }
            Event::SequenceStart(anchor, _) => {
                let flow = self.chars.get(span.start_index) == Some(&'[');
                if flow {
                    self.open_flows.push(('[', span.start));
                }
                let mut items = Vec::new();
                loop {
                    let (ev, s) = self.next()?;
                    if matches!(ev, Event::SequenceEnd) {
                        break;
                    }
                    items.push(self.node(ev, s)?);
                }
                if flow {
                    self.open_flows.pop();
                }
                let node = Node {
                    kind: NodeKind::Seq(items),
                    span,
                    style: Style::Collection,
                };
                (node, anchor)
            }
            Event::MappingStart(anchor, _) => {
                let flow = self.chars.get(span.start_index) == Some(&'{');
                if flow {
                    self.open_flows.push(('{', span.start));
                }
                let mut entries: Vec<(Node, Node)> = Vec::new();
                loop {
                    let (ev, s) = self.next()?;
                    if matches!(ev, Event::MappingEnd) {
                        break;
                    }
                    let key = self.node(ev, s)?;
                    let (ev, s) = self.next()?;
                    let value = self.node(ev, s)?;
                    let name = key.key_string();
                    if entries.iter().any(|(k, _)| k.key_string() == name) {
                        self.dup.push(YamlError {
                            pos: key.span.start,
                            code: "duplicate-key",
                            message: format!("key `{name}` appears twice in this mapping"),
                        });
                    } else {
                        entries.push((key, value));
                    }
                }
                if flow {
                    self.open_flows.pop();
                }
                let node = Node {
                    kind: NodeKind::Map(entries),
                    span,
                    style: Style::Collection,
                };
                (node, anchor)
            }
            other => {
                return Err(YamlError {
                    pos: span.start,
                    code: "yaml-syntax",
                    message: format!("unexpected YAML event {other:?}"),
                })
            }
        };
        if anchor > 0 {
            self.anchors.push((anchor, node.clone()));
        }
        Ok(node)
    }
}

/// Nodes and scalar bytes in a tree.
fn count_nodes(n: &Node) -> (usize, usize) {
    let add = |(a, b): (usize, usize), (c, d): (usize, usize)| (a + c, b.saturating_add(d));
    match &n.kind {
        NodeKind::Seq(items) => items.iter().map(count_nodes).fold((1, 0), add),
        NodeKind::Map(m) => m
            .iter()
            .map(|(k, v)| add(count_nodes(k), count_nodes(v)))
            .fold((1, 0), add),
        NodeKind::Str(s) => (1, s.len()),
        _ => (1, 0),
    }
}

/// Types a plain scalar with the YAML 1.2 core schema.
fn plain_scalar(s: &str) -> NodeKind {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return NodeKind::Null,
        "true" | "True" | "TRUE" => return NodeKind::Bool(true),
        "false" | "False" | "FALSE" => return NodeKind::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" => return NodeKind::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return NodeKind::Float(f64::NEG_INFINITY),
        _ => {}
    }
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = s.parse::<i64>() {
            return NodeKind::Int(i);
        }
    }
    if let Some(hex) = s.strip_prefix("0x") {
        if let Ok(i) = i64::from_str_radix(hex, 16) {
            return NodeKind::Int(i);
        }
    }
    if let Some(oct) = s.strip_prefix("0o") {
        if let Ok(i) = i64::from_str_radix(oct, 8) {
            return NodeKind::Int(i);
        }
    }
    let looks_float = digits
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_digit() || b == b'.')
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'));
    if looks_float {
        if let Ok(f) = s.parse::<f64>() {
            return NodeKind::Float(f);
        }
    }
    NodeKind::Str(s.to_string())
}

/// Maps char offsets of a source file to positions.
#[derive(Debug, Clone)]
pub struct LineIndex {
    /// Char offset at which each line starts.
    starts: Vec<usize>,
    chars: Vec<char>,
}

impl LineIndex {
    /// Indexes a source text.
    pub fn new(source: &str) -> LineIndex {
        let chars: Vec<char> = source.chars().collect();
        let mut starts = vec![0];
        for (i, c) in chars.iter().enumerate() {
            if *c == '\n' {
                starts.push(i + 1);
            }
        }
        LineIndex { starts, chars }
    }

    /// The position of a char offset.
    pub fn pos(&self, index: usize) -> Pos {
        let line = match self.starts.binary_search(&index) {
            Ok(l) => l,
            Err(l) => l - 1,
        };
        Pos::new(line as u32 + 1, (index - self.starts[line]) as u32 + 1)
    }

    /// The whole source text.
    pub fn text(&self) -> String {
        self.chars.iter().collect()
    }

    /// The text of a 1-based line, without its newline.
    pub fn line_text(&self, line: u32) -> String {
        let Some(&start) = self.starts.get(line.saturating_sub(1) as usize) else {
            return String::new();
        };
        self.chars[start..]
            .iter()
            .take_while(|c| **c != '\n' && **c != '\r')
            .collect()
    }

    /// Where char `offset` of a string scalar's value sits in the source.
    ///
    /// The value is aligned with the source text char by char: quotes,
    /// escapes, indentation and folded line breaks exist only in the source,
    /// so a value char is matched with the next source char equal to it (a
    /// space in the value may be a folded line break). Exact for everything
    /// but escape sequences such as `\n`, where it stays close.
    pub fn pos_in_scalar(&self, node: &Node, offset: usize) -> Pos {
        let Some(value) = node.as_str() else {
            return node.span.start;
        };
        let mut src = node.span.start_index;
        match node.style {
            Style::Quoted => src += 1,
            Style::Block => {
                // Content starts on the line after the `|`/`>` indicator.
                if matches!(self.chars.get(src), Some('|' | '>')) {
                    while src < self.chars.len() && self.chars[src] != '\n' {
                        src += 1;
                    }
                    src += 1;
                }
            }
            Style::Plain => {}
            Style::Collection => return node.span.start,
        }
        for (i, c) in value.chars().enumerate() {
            while src < self.chars.len() {
                let s = self.chars[src];
                let matches = s == c || (c == ' ' && s == '\n');
                if matches {
                    break;
                }
                src += 1;
            }
            if i == offset {
                return self.pos(src.min(self.chars.len()));
            }
            src += 1;
        }
        self.pos(src.min(self.chars.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        // Block mappings: the YAML reader itself bounds only flow ones.
        let block = |levels: usize| {
            (0..levels)
                .map(|i| format!("{}k:\n", " ".repeat(i)))
                .collect::<String>()
        };
        let e = parse(&block(1_000)).unwrap_err();
        assert!(e.message.contains("nested more than"), "{}", e.message);
        assert!(parse(&block(MAX_DEPTH - 1)).is_ok());
        let flow = format!("a: {}1{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse(&flow).is_err());
    }

    #[test]
    fn aliases_of_a_long_string_are_capped_in_bytes() {
        // 1 MiB string, aliased 64 times: few nodes, 64 MiB of values.
        let long = "x".repeat(1024 * 1024);
        let doc = format!("a: &s \"{long}\"\nb: [{}]\n", vec!["*s"; 64].join(", "));
        let e = parse(&doc).unwrap_err();
        assert!(e.message.contains("bytes of values"), "{}", e.message);
    }

    #[test]
    fn a_document_over_the_file_limit_is_refused() {
        let doc = format!("a: \"{}\"\n", "x".repeat(MAX_DOCUMENT_BYTES));
        let e = parse(&doc).unwrap_err();
        assert!(e.message.contains("document too large"), "{}", e.message);
    }

    #[test]
    fn positions_are_one_based_and_point_at_values() {
        let (n, _) = parse("a: 1\nb:\n  c: \"x\"\n").unwrap();
        assert_eq!(n.get("a").unwrap().span.start, Pos::new(1, 4));
        assert_eq!(
            n.get("b").unwrap().get("c").unwrap().span.start,
            Pos::new(3, 6)
        );
    }

    #[test]
    fn strict_booleans_keep_yes_as_string() {
        let (n, _) = parse("a: yes\nb: true\nc: 010\nd: 1.5\ne: ~").unwrap();
        assert_eq!(n.get("a").unwrap().kind, NodeKind::Str("yes".into()));
        assert_eq!(n.get("b").unwrap().kind, NodeKind::Bool(true));
        assert_eq!(n.get("c").unwrap().kind, NodeKind::Int(10));
        assert_eq!(n.get("d").unwrap().kind, NodeKind::Float(1.5));
        assert_eq!(n.get("e").unwrap().kind, NodeKind::Null);
    }

    #[test]
    fn duplicate_keys_are_reported_with_position() {
        let (_, dups) = parse("a: 1\na: 2\n").unwrap();
        assert_eq!(dups.len(), 1);
        assert_eq!(dups[0].pos, Pos::new(2, 1));
    }

    #[test]
    fn syntax_error_has_position() {
        let e = parse("a: [1, 2\nb: 3").unwrap_err();
        assert_eq!(e.code, "yaml-syntax");
        assert!(e.pos.line >= 1);
    }

    #[test]
    fn alias_bomb_is_bounded() {
        let mut s = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..8 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("l{}", i - 1)
            };
            s.push_str(&format!(
                "l{i}: &l{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        assert!(parse(&s).unwrap_err().message.contains("too large"));
    }

    #[test]
    fn unquoted_template_is_recognised() {
        let (n, _) = parse("a: {{ event.x }}").unwrap();
        assert!(n.get("a").unwrap().is_unquoted_template());
    }

    #[test]
    fn offsets_inside_scalars_map_to_columns() {
        let src = "a: \"{{ x }}\"\nb: |\n  line one\n  {{ y }}\n";
        let idx = LineIndex::new(src);
        let (n, _) = parse(src).unwrap();
        assert_eq!(idx.pos_in_scalar(n.get("a").unwrap(), 3), Pos::new(1, 8));
        assert_eq!(idx.pos_in_scalar(n.get("b").unwrap(), 12), Pos::new(4, 6));
    }
}
