//! The catalog: connectors as data, embedded in the binary and extendable
//! with `--catalog DIR`. Operation references are resolved here once, at
//! validation, into [`OpRef`]s.

pub mod doc;
pub mod model;
pub mod openapi;

use std::path::Path;
use std::sync::{Arc, OnceLock};

use indexmap::IndexMap;

pub use model::*;

use crate::diagnostic::Diagnostic;
use crate::duration::parse_duration;
use crate::jsonpath;
use crate::template;
use crate::yaml::{self, Pos};

/// The connector files built into the binary, as YAML (build.rs embeds
/// them as JSON for the binary; tests check the YAML itself).
#[cfg(test)]
const BUILTIN: &[(&str, &str)] = &[
    ("ghl.yaml", include_str!("connectors/ghl.yaml")),
    ("ghl_v1.yaml", include_str!("connectors/ghl_v1.yaml")),
    ("sendpulse.yaml", include_str!("connectors/sendpulse.yaml")),
    ("store.yaml", include_str!("connectors/store.yaml")),
    ("http.yaml", include_str!("connectors/http.yaml")),
];

/// One loaded connector and the file it came from.
#[derive(Debug)]
pub struct Connector {
    /// The declaration.
    pub def: ConnectorDef,
    /// `builtin:ghl.yaml` or the path of an override file.
    pub source: String,
    /// Each operation's `connector.operation` id, made at its first use:
    /// the engine names an event's operation several times per event.
    ids: Vec<OnceLock<String>>,
    /// Each operation's compiled `output` JSONPath, made at its first use;
    /// it travels with the operation, so a run keeps the declaration it
    /// started with across a catalog reload.
    outputs: Vec<OnceLock<Option<jsonpath::JsonPath>>>,
}

impl Connector {
    /// A connector declared by `source`.
    pub fn new(def: ConnectorDef, source: String) -> Connector {
        let ids = (0..def.operations.len()).map(|_| OnceLock::new()).collect();
        let outputs = (0..def.operations.len()).map(|_| OnceLock::new()).collect();
        Connector {
            def,
            source,
            ids,
            outputs,
        }
    }
}

/// A resolved reference to one operation.
#[derive(Debug, Clone)]
pub struct OpRef {
    connector: Arc<Connector>,
    index: usize,
}

impl OpRef {
    /// `connector.operation`, e.g. `ghl.contacts.create`.
    pub fn id(&self) -> &str {
        self.connector.ids[self.index]
            .get_or_init(|| format!("{}.{}", self.connector.def.connector, self.name()))
    }

    /// The operation name without the connector (`contacts.create`).
    pub fn name(&self) -> &str {
        self.connector
            .def
            .operations
            .get_index(self.index)
            .expect("index valid")
            .0
    }

    /// The operation declaration.
    pub fn def(&self) -> &OperationDef {
        self.connector
            .def
            .operations
            .get_index(self.index)
            .expect("index valid")
            .1
            .get()
    }

    /// The connector declaration.
    pub fn connector(&self) -> &ConnectorDef {
        &self.connector.def
    }

    /// The compiled `output` path; `None` when the operation has none (or
    /// it does not compile, which loading reports).
    pub fn output(&self) -> Option<&jsonpath::JsonPath> {
        self.connector.outputs[self.index]
            .get_or_init(|| {
                self.def()
                    .output
                    .as_deref()
                    .and_then(|p| jsonpath::compile(p).ok())
            })
            .as_ref()
    }

    /// Whether both name the same declaration of the same loaded connector.
    pub fn same_as(&self, other: &OpRef) -> bool {
        Arc::ptr_eq(&self.connector, &other.connector) && self.index == other.index
    }

    /// Whether this is a trigger (webhook or poll).
    pub fn is_trigger(&self) -> bool {
        self.def().kind != OpKind::Action
    }
}

/// All connectors known to one engine or validation run.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    connectors: IndexMap<String, Arc<Connector>>,
}

impl Catalog {
    /// The built-in connectors. Their semantic checks run in the test
    /// suite rather than at every start (they cost more than the parse), so
    /// a failure here is a bug in the binary.
    pub fn builtin() -> Catalog {
        mod embedded {
            include!(concat!(env!("OUT_DIR"), "/catalog.rs"));
        }
        let mut cat = Catalog::default();
        for (name, header, ops) in embedded::BUILTIN_JSON {
            let mut def: ConnectorDef = serde_json::from_str(header)
                .unwrap_or_else(|e| panic!("built-in connector {name} is invalid: {e}"));
            for (op, json) in *ops {
                def.operations
                    .insert(op.to_string(), LazyOperation::from_static(json));
            }
            cat.insert(Connector::new(def, format!("builtin:{name}")));
        }
        cat
    }

    /// The built-in connectors plus every `*.yaml`/`*.yml` in `dir`, which
    /// add connectors or replace built-in ones of the same name.
    pub fn with_dir(dir: &Path) -> Result<(Catalog, Vec<Diagnostic>), std::io::Error> {
        let mut cat = Catalog::builtin();
        let mut diags = Vec::new();
        let mut files: Vec<_> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .collect();
        files.sort();
        for path in files {
            let text = crate::safefile::read_text(&path)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            let source = path.display().to_string();
            match parse_connector(&source, &text) {
                Ok(c) => cat.insert(c),
                Err(mut d) => diags.append(&mut d),
            }
        }
        Ok((cat, diags))
    }

    /// This catalog with `c` added (or replacing the connector of its name).
    pub fn with_connector(mut self, c: Connector) -> Catalog {
        self.insert(c);
        self
    }

    fn insert(&mut self, c: Connector) {
        self.connectors.insert(c.def.connector.clone(), Arc::new(c));
    }

    /// A connector by name.
    pub fn connector(&self, name: &str) -> Option<&ConnectorDef> {
        self.connectors.get(name).map(|c| &c.def)
    }

    /// All connectors.
    pub fn connectors(&self) -> impl Iterator<Item = &ConnectorDef> {
        self.connectors.values().map(|c| &c.def)
    }

    /// Resolves `connector.operation`.
    pub fn op(&self, id: &str) -> Option<OpRef> {
        let (conn, name) = id.split_once('.')?;
        let c = self.connectors.get(conn)?;
        let index = c.def.operations.get_index_of(name)?;
        Some(OpRef {
            connector: c.clone(),
            index,
        })
    }

    /// Every operation of every connector.
    pub fn operations(&self) -> impl Iterator<Item = OpRef> + '_ {
        self.connectors.values().flat_map(|c| {
            (0..c.def.operations.len()).map(move |index| OpRef {
                connector: c.clone(),
                index,
            })
        })
    }

    /// Every operation of one connector (none for an unknown name).
    pub fn operations_of<'a>(&'a self, connector: &str) -> impl Iterator<Item = OpRef> + 'a {
        let c = self.connectors.get(connector);
        c.into_iter().flat_map(|c| {
            (0..c.def.operations.len()).map(move |index| OpRef {
                connector: c.clone(),
                index,
            })
        })
    }

    /// Every operation id, for suggestions.
    pub fn operation_ids(&self) -> Vec<String> {
        self.operations().map(|o| o.id().to_string()).collect()
    }
}

/// Parses and checks one connector file; every diagnostic carries
/// `file:line:col`.
pub fn parse_connector(file: &str, text: &str) -> Result<Connector, Vec<Diagnostic>> {
    let (connector, root) = read(file, text)?;
    let diags = check_connector(file, &root, &connector.def);
    if diags.is_empty() {
        Ok(connector)
    } else {
        Err(diags)
    }
}

fn read(file: &str, text: &str) -> Result<(Connector, yaml::Node), Vec<Diagnostic>> {
    let (root, dups) =
        yaml::parse(text).map_err(|e| vec![Diagnostic::error(file, e.pos, e.code, e.message)])?;
    if !dups.is_empty() {
        return Err(dups
            .into_iter()
            .map(|e| Diagnostic::error(file, e.pos, e.code, e.message))
            .collect());
    }
    // Through JSON text so operations can stay unparsed until used
    // (`LazyOperation`); every one is parsed below to report problems now.
    let json = root.to_json().to_string();
    let mut de = serde_json::Deserializer::from_str(&json);
    let def: ConnectorDef = match serde_path_to_error::deserialize(&mut de) {
        Ok(d) => d,
        Err(e) => {
            let pointer = to_pointer(e.path());
            return Err(vec![shape_error(
                file,
                &root,
                pointer,
                e.into_inner().to_string(),
            )]);
        }
    };
    let mut diags = Vec::new();
    for (name, op) in &def.operations {
        if let Err(e) = op.try_parse() {
            let pointer = format!(
                "/operations/{}{}",
                escape_pointer(name),
                to_pointer(e.path())
            );
            diags.push(shape_error(
                file,
                &root,
                pointer,
                e.into_inner().to_string(),
            ));
        }
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    let connector = Connector::new(def, file.to_string());
    Ok((connector, root))
}

/// A serde error at a JSON pointer, as a diagnostic at that node (unknown
/// keys at the key itself).
fn shape_error(file: &str, root: &yaml::Node, pointer: String, inner: String) -> Diagnostic {
    let pos = unknown_field(&inner)
        .and_then(|f| {
            root.key_at_pointer(&pointer)
                .filter(|k| k.key_string() == f)
                .or_else(|| root.key_at_pointer(&format!("{pointer}/{f}")))
        })
        .map(|k| k.span.start)
        .or_else(|| root.at_pointer(&pointer).map(|n| n.span.start))
        .unwrap_or(Pos::new(1, 1));
    let at = if pointer.is_empty() {
        "/".to_string()
    } else {
        pointer
    };
    Diagnostic::error(file, pos, "invalid-connector", format!("at {at}: {inner}"))
}

fn escape_pointer(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

fn to_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut s = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => s.push_str(&format!("/{index}")),
            Segment::Map { key } => {
                s.push_str(&format!("/{}", key.replace('~', "~0").replace('/', "~1")))
            }
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    s
}

fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// Semantic checks serde cannot do: path params declared, JSONPaths and
/// templates compile, durations parse, references resolve.
fn check_connector(file: &str, root: &yaml::Node, def: &ConnectorDef) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    let pos_of = |pointer: &str| {
        root.at_pointer(pointer)
            .map(|n| n.span.start)
            .unwrap_or(Pos::new(1, 1))
    };
    let mut err = |pointer: &str, msg: String| {
        diags.push(Diagnostic::error(
            file,
            pos_of(pointer),
            "invalid-connector",
            msg,
        ));
    };
    for (i, w) in def.rate_limits.iter().enumerate() {
        if let Err(e) = parse_duration(&w.per) {
            err(&format!("/rate_limits/{i}/per"), e.to_string());
        }
    }
    if let Some(t) = &def.timeout {
        if let Err(e) = parse_duration(t) {
            err("/timeout", e.to_string());
        }
    }
    if let Some(r) = &def.retry {
        for (k, v) in [("backoff", &r.backoff), ("max_backoff", &r.max_backoff)] {
            if let Err(e) = parse_duration(v) {
                err(&format!("/retry/{k}"), e.to_string());
            }
        }
    }
    let has_field = |f: &str| def.connection.contains_key(f);
    let mut fields_used: Vec<(&str, String)> = Vec::new();
    match &def.auth {
        Auth::None => {}
        Auth::Bearer { token, refresh } => {
            fields_used.push((token, "/auth/token".into()));
            if let Some(r) = refresh {
                fields_used.push((&r.refresh_token, "/auth/refresh/refresh_token".into()));
                fields_used.push((&r.client_id, "/auth/refresh/client_id".into()));
                fields_used.push((&r.client_secret, "/auth/refresh/client_secret".into()));
            }
        }
        Auth::ApiKeyHeader { key, .. } => fields_used.push((key, "/auth/key".into())),
        Auth::Oauth2ClientCredentials {
            client_id,
            client_secret,
            static_token,
            ..
        } => {
            fields_used.push((client_id, "/auth/client_id".into()));
            fields_used.push((client_secret, "/auth/client_secret".into()));
            if let Some(s) = static_token {
                fields_used.push((s, "/auth/static_token".into()));
            }
        }
    }
    if let Some(w) = &def.webhook {
        match &w.verify {
            WebhookVerify::None => {}
            WebhookVerify::Token { token } => {
                fields_used.push((token, "/webhook/verify/token".into()))
            }
            WebhookVerify::Ed25519 {
                public_key,
                max_age,
                legacy,
                ..
            } => {
                fields_used.push((public_key, "/webhook/verify/public_key".into()));
                if let Err(e) = parse_duration(max_age) {
                    err("/webhook/verify/max_age", e.to_string());
                }
                if let Some(l) = legacy {
                    fields_used.push((&l.public_key, "/webhook/verify/legacy/public_key".into()));
                    if let Some(pem) = &l.default_public_key {
                        if let Err(e) = crate::server::verify::rsa_public_key(pem) {
                            err("/webhook/verify/legacy/default_public_key", e);
                        }
                    }
                }
            }
            WebhookVerify::Hmac { secret, .. } => {
                fields_used.push((secret, "/webhook/verify/secret".into()))
            }
        }
    }
    for (name, def_op) in def.operations.iter().map(|(n, o)| (n, o.get())) {
        let base = format!("/operations/{}", name.replace('~', "~0").replace('/', "~1"));
        for (input, idef) in &def_op.inputs {
            if let Some(f) = &idef.from_connection {
                fields_used.push((f, format!("{base}/inputs/{input}/from_connection")));
            }
        }
    }
    for (i, r) in def.errors.rules.iter().enumerate() {
        let at = format!("/errors/rules/{i}");
        if r.status.is_none()
            && r.body_has.is_none()
            && r.body_equals.is_none()
            && r.message_contains.is_none()
        {
            err(&at, "an error rule needs a condition (`status`, `body_has`, `body_equals` or `message_contains`); as written it matches every error".into());
        }
        let paths = r
            .body_has
            .iter()
            .chain(r.body_equals.iter().map(|b| &b.path));
        for p in paths {
            if p.is_empty() || p.split('.').any(str::is_empty) {
                err(&at, format!("body path `{p}` has an empty segment"));
            }
        }
    }
    for (i, p) in def.errors.message.iter().enumerate() {
        if p.is_empty() || p.split('.').any(str::is_empty) {
            err(
                &format!("/errors/message/{i}"),
                format!("message path `{p}` has an empty segment"),
            );
        }
    }
    for (field, pointer) in fields_used {
        if !has_field(field) {
            err(
                &pointer,
                format!("connection field `{field}` is not declared under `connection:`"),
            );
        }
    }

    for (name, op) in def.operations.iter().map(|(n, o)| (n, o.get())) {
        let base = format!("/operations/{name}");
        match op.kind {
            OpKind::Action => {
                let http = op.method.is_some() || op.path.is_some();
                if http == op.native.is_some() {
                    err(&base, format!("operation `{name}` needs either `method` and `path` (HTTP) or `native`, not both"));
                }
                if http && (op.method.is_none() || op.path.is_none()) {
                    err(
                        &base,
                        format!("operation `{name}` needs both `method` and `path`"),
                    );
                }
            }
            OpKind::Webhook => {
                if def.webhook.is_none() {
                    err(
                        &base,
                        format!(
                            "webhook trigger `{name}` needs a connector-level `webhook:` block"
                        ),
                    );
                }
            }
            OpKind::Poll => match &op.poll {
                None => err(
                    &base,
                    format!("poll trigger `{name}` needs a `poll:` block"),
                ),
                Some(p) => {
                    match def.operations.get(&p.operation).map(LazyOperation::get) {
                        Some(list) if list.kind == OpKind::Action => {
                            if !list.inputs.contains_key(&p.cursor_input) {
                                err(
                                    &format!("{base}/poll/cursor_input"),
                                    format!("`{}` has no input `{}`", p.operation, p.cursor_input),
                                );
                            }
                        }
                        _ => err(
                            &format!("{base}/poll/operation"),
                            format!(
                                "no action `{}` in connector `{}`",
                                p.operation, def.connector
                            ),
                        ),
                    }
                    if let Err(e) = jsonpath::compile(&p.records) {
                        err(&format!("{base}/poll/records"), e);
                    }
                }
            },
        }
        if let Some(path) = &op.path {
            for param in path_params(path) {
                match op.inputs.get(param) {
                    Some(i) if i.location == InputLocation::Path => {}
                    _ => err(
                        &format!("{base}/path"),
                        format!("path parameter `{{{param}}}` has no input with `in: path`"),
                    ),
                }
            }
            for (input, i) in &op.inputs {
                if i.location == InputLocation::Path && !path_params(path).any(|p| p == input) {
                    err(
                        &format!("{base}/inputs/{input}"),
                        format!("input `{input}` is `in: path` but the path has no `{{{input}}}`"),
                    );
                }
            }
        }
        for (input, i) in &op.inputs {
            let at = format!("{base}/inputs/{input}");
            if let Some(d) = &i.default {
                if !(i.ty.accepts(d) || d.is_null() && i.nullable) {
                    err(
                        &format!("{at}/default"),
                        format!("default of `{input}` is not a {}", i.ty.as_str()),
                    );
                }
            }
            for (n, v) in i.allowed.iter().flatten().enumerate() {
                if !i.ty.accepts(v) {
                    err(
                        &format!("{at}/enum/{n}"),
                        format!("allowed value {v} of `{input}` is not a {}", i.ty.as_str()),
                    );
                }
            }
            if let Some(e) = i.encode {
                if i.ty != ValueType::Array {
                    err(
                        &format!("{at}/encode"),
                        format!(
                            "`encode: {}` takes a list: `{input}` must be `type: array`",
                            e.as_str()
                        ),
                    );
                }
            }
            if op.body_encoding == Encoding::Form && i.encode.is_none() {
                match (i.location, i.ty) {
                    (InputLocation::BodyRoot, _) => err(
                        &format!("{at}/in"),
                        format!("a form body has named fields: `{input}` cannot be `in: body_root` with `body_encoding: form`"),
                    ),
                    (InputLocation::Body, ValueType::Object) => err(
                        &format!("{at}/type"),
                        format!("a form field takes text, numbers, booleans or lists of them: `{input}` cannot be an object with `body_encoding: form`"),
                    ),
                    _ => {}
                }
            }
        }
        if op.body_encoding == Encoding::Form && op.method.is_none() {
            err(
                &format!("{base}/body_encoding"),
                format!("`body_encoding` applies to HTTP operations; `{name}` has no `method`"),
            );
        }
        if let Some(out) = &op.output {
            if let Err(e) = jsonpath::compile(out) {
                err(&format!("{base}/output"), e);
            }
        }
        if let Some(b) = &op.batch_input {
            if op.inputs.get(b).is_none_or(|i| i.ty != ValueType::Array) {
                err(
                    &format!("{base}/batch_input"),
                    format!("batch input `{b}` must be an input of type array"),
                );
            }
        }
        if let Some(p) = &op.pagination {
            if let Err(e) = jsonpath::compile(&p.items) {
                err(&format!("{base}/pagination/items"), e);
            }
            for input in [&p.limit_input, &p.offset_input, &p.page_input]
                .into_iter()
                .flatten()
                .chain(p.cursor.keys())
            {
                if !op.inputs.contains_key(input) {
                    err(
                        &format!("{base}/pagination"),
                        format!("pagination input `{input}` is not an input of `{name}`"),
                    );
                }
            }
            for path in p.cursor.values() {
                if let Err(e) = jsonpath::compile(path) {
                    err(&format!("{base}/pagination/cursor"), e);
                }
            }
        }
        for (k, tmpl) in [
            ("dedupe_key", &op.dedupe_key),
            ("ordering_key", &op.ordering_key),
        ] {
            if let Some(t) = tmpl {
                if let Err(e) = template::check_syntax(t) {
                    err(&format!("{base}/{k}"), e);
                }
            }
        }
    }
    diags
}

/// The `{name}` parameters of a path template.
pub fn path_params(path: &str) -> impl Iterator<Item = &str> {
    path.split('{')
        .skip(1)
        .filter_map(|s| s.split_once('}').map(|(p, _)| p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_connectors_pass_the_semantic_checks() {
        for (name, text) in BUILTIN {
            if let Err(d) = parse_connector(name, text) {
                panic!(
                    "{}",
                    d.iter()
                        .map(Diagnostic::one_line)
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
        }
    }

    #[test]
    fn embedded_json_equals_the_yaml_files() {
        let cat = Catalog::builtin();
        for (name, text) in BUILTIN {
            let from_yaml = parse_connector(name, text).unwrap();
            let embedded = cat.connector(&from_yaml.def.connector).unwrap();
            assert_eq!(
                serde_json::to_value(&from_yaml.def).unwrap(),
                serde_json::to_value(embedded).unwrap()
            );
        }
    }

    #[test]
    fn builtin_catalog_loads() {
        let cat = Catalog::builtin();
        assert!(cat.op("ghl.contacts.create").is_some());
        assert!(cat.op("sendpulse.subscriber.added").unwrap().is_trigger());
    }

    #[test]
    fn broken_connector_reports_file_line_col() {
        let text = "connector: x\ntitle: X\noperations:\n  a.b:\n    title: A\n    methd: GET\n";
        let d = parse_connector("x.yaml", text).unwrap_err();
        assert_eq!(d[0].code, "invalid-connector");
        assert_eq!((d[0].line, d[0].column), (6, 5), "{}", d[0].one_line());
        assert!(
            d[0].message.contains("unknown field `methd`"),
            "{}",
            d[0].message
        );
    }

    #[test]
    fn undeclared_path_param_is_reported() {
        let text = "connector: x\ntitle: X\noperations:\n  a.get:\n    title: A\n    method: GET\n    path: /a/{id}\n";
        let d = parse_connector("x.yaml", text).unwrap_err();
        assert!(
            d[0].message.contains("path parameter `{id}`"),
            "{}",
            d[0].message
        );
        assert_eq!(d[0].line, 7);
    }

    #[test]
    fn form_bodies_and_value_encodings_are_checked() {
        let text = "connector: x\ntitle: X\noperations:\n  a.b:\n    title: A\n    method: POST\n    path: /a\n    body_encoding: form\n    inputs:\n      whole: { type: object, in: body_root }\n      nested: { type: object }\n      csv: { type: string, encode: base64_comma_list }\n      ok: { type: array }\n";
        let d = parse_connector("x.yaml", text).unwrap_err();
        let lines: Vec<String> = d.iter().map(Diagnostic::one_line).collect();
        assert_eq!(d.len(), 3, "{lines:#?}");
        for (at, says) in [
            ("x.yaml:10:34:", "`in: body_root`"),
            ("x.yaml:11:23:", "cannot be an object"),
            ("x.yaml:12:36:", "must be `type: array`"),
        ] {
            assert!(
                lines.iter().any(|l| l.starts_with(at) && l.contains(says)),
                "{at} {says}: {lines:#?}"
            );
        }
    }

    #[test]
    fn wrong_type_points_at_value() {
        let text = "connector: x\ntitle: X\nrate_limits:\n  - requests: many\n    per: 1s\noperations: {}\n";
        let d = parse_connector("x.yaml", text).unwrap_err();
        assert_eq!((d[0].line, d[0].column), (4, 15), "{}", d[0].one_line());
    }
}
