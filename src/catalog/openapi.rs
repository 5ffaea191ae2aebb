//! `patchbay connector import`: an OpenAPI 3 document (JSON or YAML) to a
//! connector file. What maps one to one is written (operations, inputs by
//! location with types and required flags, the auth scheme, offset or
//! page pagination); everything else is listed in [`Import::unmapped`] and
//! as comments at the top of the file, never guessed.
//!
//! The document is read as plain JSON (`serde_json::Value`) with local
//! `$ref`s resolved: the few fields used here do not justify a typed
//! OpenAPI crate and its build.

use std::fmt::Write as _;

use serde_json::{json, Map, Value};

/// Why a document cannot be imported at all.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Neither JSON nor YAML.
    #[error("not JSON ({json}) nor YAML ({yaml})")]
    Syntax {
        /// The JSON parser's message.
        json: String,
        /// The YAML parser's message.
        yaml: String,
    },
    /// Swagger 2 or something else.
    #[error(
        "not an OpenAPI 3 document (no `openapi: 3.x` field); convert Swagger 2 documents first"
    )]
    NotOpenApi3,
    /// No operation survived the filters.
    #[error("no operation to import{0}")]
    NoOperations(String),
    /// The prefix cannot name a connector.
    #[error("`{0}` cannot name a connector: use lowercase letters, digits and `_`, starting with a letter")]
    BadPrefix(String),
}

/// What to import.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Connector name (`--prefix`); from the document's title when absent.
    pub prefix: Option<String>,
    /// Only operations with one of these tags (`--tag`); all when empty.
    pub tags: Vec<String>,
}

/// The outcome: the connector file and what could not be mapped.
#[derive(Debug, Clone)]
pub struct Import {
    /// The connector name.
    pub connector: String,
    /// The connector file, YAML.
    pub yaml: String,
    /// Operations written.
    pub operations: usize,
    /// One line per thing left out or left to the author, with where it is
    /// in the document (`GET /pets: cookie parameter `session``).
    pub unmapped: Vec<String>,
}

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];
const OTHER_METHODS: [&str; 3] = ["head", "options", "trace"];

/// Imports an OpenAPI document's text.
pub fn import(text: &str, options: &ImportOptions) -> Result<Import, ImportError> {
    let doc: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(json_err) => match crate::yaml::parse(text) {
            Ok((node, _)) => node.to_json(),
            Err(yaml_err) => {
                return Err(ImportError::Syntax {
                    json: json_err.to_string(),
                    yaml: yaml_err.message,
                })
            }
        },
    };
    let version = doc.get("openapi").and_then(Value::as_str).unwrap_or("");
    if !version.starts_with('3') {
        return Err(ImportError::NotOpenApi3);
    }
    Importer {
        doc: &doc,
        unmapped: Vec::new(),
    }
    .run(options)
}

struct Importer<'a> {
    doc: &'a Value,
    unmapped: Vec<String>,
}

/// One operation as it will be written: name, declaration, inputs.
type Op = (String, Map<String, Value>, Vec<(String, Input)>);

/// One input as it will be written.
struct Input {
    ty: &'static str,
    location: &'static str,
    required: bool,
    wire_name: Option<String>,
    allowed: Option<Value>,
    nullable: bool,
    description: String,
}

impl<'a> Importer<'a> {
    fn run(mut self, options: &ImportOptions) -> Result<Import, ImportError> {
        let info = self.doc.get("info").cloned().unwrap_or(json!({}));
        let title = info
            .get("title")
            .and_then(Value::as_str)
            .unwrap_or("Imported API")
            .to_string();
        let connector = match &options.prefix {
            Some(p) => {
                let ok = p.starts_with(|c: char| c.is_ascii_lowercase())
                    && p.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                if !ok {
                    return Err(ImportError::BadPrefix(p.clone()));
                }
                p.clone()
            }
            None => {
                let s = snake(&title);
                if s.starts_with(|c: char| c.is_ascii_lowercase()) {
                    s
                } else {
                    format!("api_{s}")
                }
            }
        };
        let description = first_paragraph(info.get("description"));

        let mut out = Map::new();
        out.insert("connector".into(), json!(connector));
        out.insert("title".into(), json!(title));
        if !description.is_empty() {
            out.insert("description".into(), json!(description));
        }
        if let Some(url) = self.base_url() {
            out.insert("base_url".into(), json!(url));
        }
        let (auth, connection) = self.auth();
        if let Some(a) = auth {
            out.insert("auth".into(), a);
        }

        // Collect operations first: constant headers become connector headers.
        let mut ops: Vec<Op> = Vec::new();
        let paths = self.doc.get("paths").and_then(Value::as_object);
        for (path, item) in paths.into_iter().flatten() {
            let item = self.resolve(item).clone();
            for m in OTHER_METHODS {
                if item.get(m).is_some() {
                    self.note(format!(
                        "{} {path}: method not supported by connectors",
                        m.to_uppercase()
                    ));
                }
            }
            for m in METHODS {
                let Some(op) = item.get(m) else { continue };
                if !options.tags.is_empty() {
                    let tags = op.get("tags").and_then(Value::as_array);
                    let hit = tags.into_iter().flatten().any(|t| {
                        t.as_str()
                            .is_some_and(|t| options.tags.iter().any(|w| w == t))
                    });
                    if !hit {
                        continue;
                    }
                }
                if let Some((name, def, inputs)) = self.operation(path, m, &item, op) {
                    ops.push((name, def, inputs));
                }
            }
        }
        if ops.is_empty() {
            let why = if options.tags.is_empty() {
                String::new()
            } else {
                format!(" with tag {}", options.tags.join(" or "))
            };
            return Err(ImportError::NoOperations(why));
        }

        let headers = self.constant_headers(&mut ops);
        if !headers.is_empty() {
            out.insert("headers".into(), Value::Object(headers));
        }
        if !connection.is_empty() {
            out.insert("connection".into(), Value::Object(connection));
        }

        // Unique operation names.
        let mut operations = Map::new();
        let count = ops.len();
        for (name, mut def, inputs) in ops {
            let mut unique = name.clone();
            let mut n = 2;
            while operations.contains_key(&unique) {
                unique = format!("{name}_{n}");
                n += 1;
            }
            if unique != name {
                self.note(format!(
                    "operation name `{name}` is taken twice; the second is `{unique}`"
                ));
            }
            let mut ins = Map::new();
            for (k, i) in inputs {
                ins.insert(k, i.to_json());
            }
            if !ins.is_empty() {
                // Keep `inputs` before `output` as the built-in files do.
                let output = def.remove("output");
                let pagination = def.remove("pagination");
                def.insert("inputs".into(), Value::Object(ins));
                if let Some(o) = output {
                    def.insert("output".into(), o);
                }
                if let Some(p) = pagination {
                    def.insert("pagination".into(), p);
                }
            }
            operations.insert(unique, Value::Object(def));
        }
        out.insert("operations".into(), Value::Object(operations));
        if self.doc.get("webhooks").is_some() {
            self.note(
                "webhooks: not imported (a webhook trigger needs how deliveries split and name their type; write `webhook:` and the triggers by hand)".into(),
            );
        }

        let mut yaml = String::new();
        let _ = writeln!(
            yaml,
            "# Imported by `patchbay connector import` from \"{title}\"."
        );
        if self.unmapped.is_empty() {
            yaml.push_str("# Everything in the document was mapped.\n");
        } else {
            yaml.push_str("# Not mapped (decide by hand):\n");
            for u in &self.unmapped {
                let _ = writeln!(yaml, "#   - {}", u.replace('\n', " "));
            }
        }
        emit(&mut yaml, &Value::Object(out), 0);
        Ok(Import {
            connector,
            yaml,
            operations: count,
            unmapped: self.unmapped,
        })
    }

    fn note(&mut self, s: String) {
        self.unmapped.push(s);
    }

    /// A local `$ref` followed (repeatedly); anything else as it is.
    fn resolve(&self, v: &'a Value) -> &'a Value {
        let mut v = v;
        for _ in 0..16 {
            let Some(r) = v.get("$ref").and_then(Value::as_str) else {
                return v;
            };
            match r.strip_prefix('#').and_then(|p| self.doc.pointer(p)) {
                Some(t) => v = t,
                None => return v,
            }
        }
        v
    }

    fn external_ref(&mut self, v: &Value, at: &str) -> bool {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) if !r.starts_with('#') || self.doc.pointer(&r[1..]).is_none() => {
                self.note(format!("{at}: `$ref: {r}` is not in this document"));
                true
            }
            _ => false,
        }
    }

    fn base_url(&mut self) -> Option<String> {
        let servers = self.doc.get("servers").and_then(Value::as_array)?;
        let first = servers.first()?;
        let mut url = first.get("url").and_then(Value::as_str)?.to_string();
        if let Some(vars) = first.get("variables").and_then(Value::as_object) {
            for (k, v) in vars {
                if let Some(d) = v.get("default").and_then(Value::as_str) {
                    url = url.replace(&format!("{{{k}}}"), d);
                }
            }
        }
        if servers.len() > 1 {
            self.note(format!(
                "servers: {} listed; the first is the base URL (a connection's `base_url` picks another)",
                servers.len()
            ));
        }
        if !url.starts_with("http://") && !url.starts_with("https://") {
            self.note(format!(
                "servers: `{url}` is relative; a connection must set `base_url`"
            ));
            return None;
        }
        Some(url.trim_end_matches('/').to_string())
    }

    /// The auth scheme of the document-wide security requirement (or the
    /// only scheme), and the connection fields it reads.
    fn auth(&mut self) -> (Option<Value>, Map<String, Value>) {
        let schemes = self
            .doc
            .pointer("/components/securitySchemes")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let wanted: Vec<String> = self
            .doc
            .get("security")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
            .flat_map(|m| m.keys().cloned())
            .collect();
        let name = wanted
            .first()
            .cloned()
            .or_else(|| schemes.keys().next().cloned());
        let Some(name) = name else {
            return (None, Map::new());
        };
        for other in schemes.keys().filter(|k| **k != name) {
            self.note(format!(
                "securitySchemes.{other}: only `{name}` is used; a connector has one auth scheme"
            ));
        }
        let Some(scheme) = schemes.get(&name).map(|s| self.resolve(s).clone()) else {
            self.note(format!("security: scheme `{name}` is not defined"));
            return (None, Map::new());
        };
        let ty = scheme.get("type").and_then(Value::as_str).unwrap_or("");
        let mut conn = Map::new();
        let secret = |d: &str| json!({"secret": true, "required": true, "description": d});
        match ty {
            "http"
                if scheme
                    .get("scheme")
                    .and_then(Value::as_str)
                    .is_some_and(|s| s.eq_ignore_ascii_case("bearer")) =>
            {
                conn.insert("token".into(), secret("Bearer token."));
                (Some(json!({"kind": "bearer", "token": "token"})), conn)
            }
            "apiKey" => {
                let at = scheme.get("in").and_then(Value::as_str).unwrap_or("");
                let header = scheme.get("name").and_then(Value::as_str).unwrap_or("");
                if at != "header" {
                    self.note(format!("securitySchemes.{name}: an API key in the {at} is not supported (only in a header)"));
                    return (None, conn);
                }
                if header.eq_ignore_ascii_case("authorization") {
                    self.note(format!("securitySchemes.{name}: the key in `Authorization` is sent as `Bearer <key>`; check the API's prefix"));
                    conn.insert("token".into(), secret("API key."));
                    return (Some(json!({"kind": "bearer", "token": "token"})), conn);
                }
                conn.insert(
                    "api_key".into(),
                    secret(&format!("API key, sent in `{header}`.")),
                );
                (
                    Some(json!({"kind": "api_key_header", "header": header, "key": "api_key"})),
                    conn,
                )
            }
            "oauth2" => {
                let flows = scheme.get("flows").cloned().unwrap_or(json!({}));
                if let Some(cc) = flows.get("clientCredentials") {
                    let url = cc.get("tokenUrl").and_then(Value::as_str).unwrap_or("");
                    conn.insert(
                        "client_id".into(),
                        json!({"required": true, "description": "OAuth2 client id."}),
                    );
                    conn.insert("client_secret".into(), secret("OAuth2 client secret."));
                    self.note(format!("securitySchemes.{name}: OpenAPI does not say how the token request is encoded; `form` (RFC 6749) is written; set `encoding: json` if the API wants JSON"));
                    (
                        Some(
                            json!({"kind": "oauth2_client_credentials", "token_url": url, "encoding": "form",
                                    "client_id": "client_id", "client_secret": "client_secret"}),
                        ),
                        conn,
                    )
                } else {
                    let flows: Vec<&String> = flows
                        .as_object()
                        .into_iter()
                        .flat_map(|m| m.keys())
                        .collect();
                    self.note(format!("securitySchemes.{name}: OAuth2 flow {flows:?}: the connection holds an access token; token refresh is not mapped"));
                    conn.insert("token".into(), secret("OAuth2 access token."));
                    (Some(json!({"kind": "bearer", "token": "token"})), conn)
                }
            }
            other => {
                let detail = scheme.get("scheme").and_then(Value::as_str).unwrap_or("");
                self.note(format!(
                    "securitySchemes.{name}: `{other}` {detail} is not a connector auth scheme"
                ));
                (None, conn)
            }
        }
    }

    fn operation(&mut self, path: &str, method: &str, item: &Value, op: &Value) -> Option<Op> {
        let at = format!("{} {path}", method.to_uppercase());
        let mut def = Map::new();
        let op_id = op.get("operationId").and_then(Value::as_str);
        let title = op
            .get("summary")
            .and_then(Value::as_str)
            .map(|s| s.trim().trim_end_matches('.').to_string())
            .or_else(|| op_id.map(str::to_string))
            .unwrap_or_else(|| at.clone());
        def.insert("title".into(), json!(title));
        let description = first_paragraph(op.get("description"));
        if !description.is_empty() && description != title {
            def.insert("description".into(), json!(description));
        }
        def.insert("method".into(), json!(method.to_uppercase()));
        def.insert("path".into(), json!(path));

        let mut inputs: Vec<(String, Input)> = Vec::new();
        // Path-item parameters, overridden by the operation's (name + in).
        let mut params: Vec<Value> = Vec::new();
        for list in [item.get("parameters"), op.get("parameters")] {
            for p in list.and_then(Value::as_array).into_iter().flatten() {
                if self.external_ref(p, &at) {
                    continue;
                }
                let p = self.resolve(p).clone();
                params.retain(|q| !(q.get("name") == p.get("name") && q.get("in") == p.get("in")));
                params.push(p);
            }
        }
        for p in params {
            let name = p
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let location = match p.get("in").and_then(Value::as_str).unwrap_or("") {
                "path" => "path",
                "query" => "query",
                "header" => {
                    if ["authorization", "content-type", "accept"]
                        .contains(&name.to_ascii_lowercase().as_str())
                    {
                        continue;
                    }
                    "header"
                }
                other => {
                    self.note(format!("{at}: {other} parameter `{name}` is not supported"));
                    continue;
                }
            };
            let schema = p
                .get("schema")
                .map(|s| self.resolve(s).clone())
                .unwrap_or(json!({}));
            if p.get("content").is_some() {
                self.note(format!(
                    "{at}: parameter `{name}` is serialized as content; sent as a plain value"
                ));
            }
            let mut input = self.input(&schema, location);
            input.required = location == "path" || p.get("required") == Some(&json!(true));
            input.description = first_paragraph(p.get("description"));
            add_input(&mut inputs, &name, input, &at, &mut self.unmapped);
        }
        for param in super::path_params(path) {
            if !inputs
                .iter()
                .any(|(n, i)| n == param && i.location == "path")
            {
                self.note(format!(
                    "{at}: path parameter `{param}` is not declared; written as a required string"
                ));
                let input = Input {
                    ty: "string",
                    location: "path",
                    required: true,
                    wire_name: None,
                    allowed: None,
                    nullable: false,
                    description: String::new(),
                };
                add_input(&mut inputs, param, input, &at, &mut self.unmapped);
            }
        }
        if let Some(body) = op.get("requestBody") {
            if self.body(body, &at, &mut inputs) {
                def.insert("body_encoding".into(), json!("form"));
            }
        }

        let (success, response) = self.success(op, &at);
        if let Some(s) = success {
            def.insert("success".into(), json!(s));
        }
        def.insert("output".into(), json!("$"));
        if method == "get" {
            if let Some(p) = self.pagination(&inputs, response.as_ref(), &at) {
                def.insert("pagination".into(), p);
            }
        }
        if op.get("callbacks").is_some() {
            self.note(format!("{at}: callbacks are not imported"));
        }
        if let Some(sec) = op.get("security") {
            let schemes: Vec<String> = sec
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_object)
                .flat_map(|m| m.keys().cloned())
                .collect();
            let global: Vec<String> = self
                .doc
                .get("security")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_object)
                .flat_map(|m| m.keys().cloned())
                .collect();
            if schemes.is_empty() && !global.is_empty() {
                self.note(format!("{at}: needs no auth in the document, but the connector authenticates every request"));
            } else if !schemes.is_empty() && global.first() != schemes.first() {
                self.note(format!(
                    "{at}: uses security {schemes:?}, not the connector's"
                ));
            }
        }

        let name = op_name(op, method, path);
        Some((name, def, inputs))
    }

    fn input(&mut self, schema: &Value, location: &'static str) -> Input {
        let (ty, nullable) = value_type(schema);
        Input {
            ty,
            location,
            required: false,
            wire_name: None,
            allowed: schema.get("enum").filter(|e| e.is_array()).cloned(),
            nullable: nullable || schema.get("nullable") == Some(&json!(true)),
            description: first_paragraph(schema.get("description")),
        }
    }

    /// The body's inputs; true when they go as form fields (a body only
    /// declared `application/x-www-form-urlencoded`).
    fn body(&mut self, body: &Value, at: &str, inputs: &mut Vec<(String, Input)>) -> bool {
        if self.external_ref(body, at) {
            return false;
        }
        let body = self.resolve(body).clone();
        let content = body
            .get("content")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let json_type = content
            .keys()
            .find(|k| *k == "application/json" || k.ends_with("+json"))
            .cloned();
        let form_type = content
            .keys()
            .find(|k| k.eq_ignore_ascii_case("application/x-www-form-urlencoded"))
            .cloned();
        let form = json_type.is_none() && form_type.is_some();
        let chosen = json_type.or(form_type);
        for k in content.keys().filter(|k| Some(*k) != chosen.as_ref()) {
            let msg = if k.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
                format!(
                    "{at}: the request body is also declared as `{k}`; the JSON one is imported"
                )
            } else {
                format!(
                    "{at}: request body as `{k}` is not supported (bodies are JSON or form fields)"
                )
            };
            self.note(msg);
        }
        let Some(ct) = chosen else { return false };
        let schema = content[&ct].get("schema").cloned().unwrap_or(json!({}));
        if self.external_ref(&schema, at) {
            return false;
        }
        let schema = self.resolve(&schema).clone();
        let body_required = body.get("required") == Some(&json!(true));
        let mut schema = schema;
        if let Some(all) = schema.get("allOf").and_then(Value::as_array).cloned() {
            // allOf of objects: their properties together.
            let mut props = Map::new();
            let mut req = Vec::new();
            for part in &all {
                let part = self.resolve(part);
                if let Some(p) = part.get("properties").and_then(Value::as_object) {
                    props.extend(p.clone());
                }
                if let Some(r) = part.get("required").and_then(Value::as_array) {
                    req.extend(r.clone());
                }
            }
            schema = json!({"type": "object", "properties": props, "required": req});
        }
        if form
            && (schema.get("properties").is_none()
                || schema.get("oneOf").is_some()
                || schema.get("anyOf").is_some())
        {
            self.note(format!(
                "{at}: the form body has no one set of named fields; not imported"
            ));
            return false;
        }
        if schema.get("oneOf").is_some() || schema.get("anyOf").is_some() {
            self.note(format!("{at}: the request body is one of several shapes; written as one `body` input (in: body_root)"));
            let input = Input {
                ty: "any",
                location: "body_root",
                required: body_required,
                wire_name: None,
                allowed: None,
                nullable: false,
                description: String::new(),
            };
            add_input(inputs, "body", input, at, &mut self.unmapped);
            return false;
        }
        match schema.get("properties").and_then(Value::as_object) {
            Some(props) => {
                let required: Vec<&str> = schema
                    .get("required")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                for (name, prop) in props {
                    if prop.get("readOnly") == Some(&json!(true)) {
                        continue;
                    }
                    let prop = self.resolve(prop).clone();
                    let mut input = self.input(&prop, "body");
                    if form && input.ty == "object" {
                        self.note(format!("{at}: form field `{name}` is an object, which a form cannot carry; not imported"));
                        continue;
                    }
                    input.required = body_required && required.contains(&name.as_str());
                    add_input(inputs, name, input, at, &mut self.unmapped);
                }
                if schema
                    .get("additionalProperties")
                    .is_some_and(|a| a != &json!(false))
                {
                    self.note(format!(
                        "{at}: body keys beyond the declared properties are not inputs"
                    ));
                }
            }
            None => {
                let (ty, _) = value_type(&schema);
                let input = Input {
                    ty,
                    location: "body_root",
                    required: body_required,
                    wire_name: None,
                    allowed: None,
                    nullable: false,
                    description: first_paragraph(schema.get("description")),
                };
                add_input(inputs, "body", input, at, &mut self.unmapped);
            }
        }
        form
    }

    /// The first 2xx status and its JSON schema.
    fn success(&mut self, op: &Value, at: &str) -> (Option<u16>, Option<Value>) {
        let responses = op.get("responses").and_then(Value::as_object);
        let mut codes: Vec<(&String, &Value)> = responses
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.starts_with('2'))
            .collect();
        codes.sort_by(|a, b| a.0.cmp(b.0));
        let Some((code, resp)) = codes.first() else {
            self.note(format!("{at}: no 2xx response declared"));
            return (None, None);
        };
        let resp = self.resolve(resp);
        let schema = resp
            .pointer("/content/application~1json/schema")
            .map(|s| self.resolve(s).clone());
        (code.parse().ok(), schema)
    }

    /// Offset (`limit` + `offset`) or page (`page`) pagination, when the
    /// items are the response or its one array property.
    fn pagination(
        &mut self,
        inputs: &[(String, Input)],
        response: Option<&Value>,
        at: &str,
    ) -> Option<Value> {
        let query = |names: &[&str]| {
            inputs
                .iter()
                .find(|(n, i)| i.location == "query" && names.contains(&n.as_str()))
                .map(|(n, _)| n.clone())
        };
        let limit = query(&[
            "limit",
            "per_page",
            "perPage",
            "pageSize",
            "page_size",
            "size",
        ]);
        let offset = query(&["offset", "skip", "start"]);
        let page = query(&["page", "pageNumber", "page_number"]);
        let cursor = query(&[
            "cursor",
            "after",
            "starting_after",
            "startAfter",
            "next",
            "pageToken",
            "page_token",
        ]);
        if limit.is_none() && offset.is_none() && page.is_none() && cursor.is_none() {
            return None;
        }
        let response = response?;
        let items = if response.get("type") == Some(&json!("array")) {
            "$".to_string()
        } else {
            let arrays: Vec<&String> = response
                .get("properties")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .filter(|(_, p)| self.resolve(p).get("type") == Some(&json!("array")))
                .map(|(k, _)| k)
                .collect();
            match arrays.as_slice() {
                [one] => format!("$.{one}"),
                _ => {
                    self.note(format!("{at}: looks paged, but the items are not the response nor its one array field; pagination not written"));
                    return None;
                }
            }
        };
        let mut p = Map::new();
        match (&offset, &page, &cursor) {
            (Some(o), _, _) => {
                p.insert("style".into(), json!("offset"));
                p.insert("items".into(), json!(items));
                if let Some(l) = &limit {
                    p.insert("limit_input".into(), json!(l));
                }
                p.insert("offset_input".into(), json!(o));
            }
            (None, Some(pg), _) => {
                p.insert("style".into(), json!("page"));
                p.insert("items".into(), json!(items));
                if let Some(l) = &limit {
                    p.insert("limit_input".into(), json!(l));
                }
                p.insert("page_input".into(), json!(pg));
            }
            (None, None, Some(c)) => {
                self.note(format!("{at}: cursor paging by `{c}`: where the next cursor is in the response is not in the document; pagination not written"));
                return None;
            }
            (None, None, None) => {
                self.note(format!(
                    "{at}: a page size but no offset, page or cursor input; pagination not written"
                ));
                return None;
            }
        }
        Some(Value::Object(p))
    }

    /// Header inputs that every operation has, required, with one allowed
    /// value (`Version: 2021-07-28`), become connector headers.
    fn constant_headers(&mut self, ops: &mut [Op]) -> Map<String, Value> {
        let mut headers = Map::new();
        let Some((_, _, first)) = ops.first() else {
            return headers;
        };
        let candidates: Vec<(String, Value)> = first
            .iter()
            .filter(|(_, i)| i.location == "header" && i.required)
            .filter_map(|(n, i)| {
                let one = i.allowed.as_ref()?.as_array().filter(|a| a.len() == 1)?;
                Some((n.clone(), one[0].clone()))
            })
            .collect();
        for (name, value) in candidates {
            let everywhere = ops.iter().all(|(_, _, ins)| {
                ins.iter().any(|(n, i)| {
                    *n == name
                        && i.location == "header"
                        && i.allowed
                            .as_ref()
                            .and_then(|a| a.as_array())
                            .map(Vec::as_slice)
                            == Some(std::slice::from_ref(&value))
                })
            });
            if everywhere {
                for (_, _, ins) in ops.iter_mut() {
                    ins.retain(|(n, i)| !(*n == name && i.location == "header"));
                }
                let text = match &value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                headers.insert(name, json!(text));
            }
        }
        headers
    }
}

/// Adds an input; a name already taken (a path `id` and a body `id`) gets
/// a prefixed name and its wire name.
fn add_input(
    inputs: &mut Vec<(String, Input)>,
    name: &str,
    mut input: Input,
    at: &str,
    notes: &mut Vec<String>,
) {
    if !inputs.iter().any(|(n, _)| n == name) {
        inputs.push((name.to_string(), input));
        return;
    }
    let renamed = format!("{}_{}", input.location, name);
    notes.push(format!(
        "{at}: `{name}` is both a {} and a {} input; the second is `{renamed}`",
        inputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, i)| i.location)
            .unwrap_or(""),
        input.location
    ));
    input.wire_name = Some(name.to_string());
    inputs.push((renamed, input));
}

impl Input {
    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("type".into(), json!(self.ty));
        m.insert("in".into(), json!(self.location));
        if self.required {
            m.insert("required".into(), json!(true));
        }
        if let Some(w) = &self.wire_name {
            m.insert("wire_name".into(), json!(w));
        }
        if let Some(a) = &self.allowed {
            m.insert("enum".into(), a.clone());
        }
        if self.nullable {
            m.insert("nullable".into(), json!(true));
        }
        if !self.description.is_empty() {
            m.insert("description".into(), json!(self.description));
        }
        Value::Object(m)
    }
}

/// A schema's connector type and whether it admits null (3.1 type lists).
fn value_type(schema: &Value) -> (&'static str, bool) {
    let (ty, nullable) = match schema.get("type") {
        Some(Value::String(t)) => (t.as_str(), false),
        Some(Value::Array(ts)) => {
            let null = ts.iter().any(|t| t == "null");
            let rest: Vec<&str> = ts
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .collect();
            (if rest.len() == 1 { rest[0] } else { "" }, null)
        }
        _ if schema.get("properties").is_some() => ("object", false),
        _ => ("", false),
    };
    let ty = match ty {
        "string" => "string",
        "integer" => "integer",
        "number" => "number",
        "boolean" => "boolean",
        "array" => "array",
        "object" => "object",
        _ => "any",
    };
    (ty, nullable)
}

/// `contacts.get_contact` from the first tag and the operationId, else
/// `get_contacts_contact_id` from the method and path.
fn op_name(op: &Value, method: &str, path: &str) -> String {
    let base = match op.get("operationId").and_then(Value::as_str) {
        Some(id) => snake(id),
        None => {
            let segs: Vec<String> = path
                .split('/')
                .filter(|s| !s.is_empty())
                .map(|s| snake(s.trim_matches(|c| c == '{' || c == '}')))
                .collect();
            format!("{method}_{}", segs.join("_"))
        }
    };
    match op
        .get("tags")
        .and_then(Value::as_array)
        .and_then(|t| t.first())
        .and_then(Value::as_str)
    {
        Some(tag) if !snake(tag).is_empty() => format!("{}.{base}", snake(tag)),
        _ => base,
    }
}

/// `getContactById` / `Get contact-by id` -> `get_contact_by_id`.
pub fn snake(s: &str) -> String {
    let mut out = String::new();
    let mut prev_lower = false;
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            if c.is_ascii_uppercase() && prev_lower && !out.ends_with('_') {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        } else {
            if !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
            prev_lower = false;
        }
    }
    out.trim_end_matches('_').to_string()
}

/// The first paragraph of a Markdown description, on one line.
fn first_paragraph(v: Option<&Value>) -> String {
    let s = v.and_then(Value::as_str).unwrap_or("").trim();
    let para = s.split("\n\n").next().unwrap_or("");
    para.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Writes JSON as block YAML: strings double-quoted (JSON escapes are YAML
/// escapes), plain keys where they are safe.
fn emit(out: &mut String, v: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) => {
            // serde_json's map is sorted; known keys go in the order the
            // built-in files use, names (operations, inputs) alphabetically.
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            entries.sort_by_key(|(k, _)| {
                KEY_ORDER
                    .iter()
                    .position(|o| o == k)
                    .unwrap_or(KEY_ORDER.len())
            });
            for (k, v) in entries {
                let key = yaml_key(k);
                match v {
                    Value::Object(inner) if !inner.is_empty() => {
                        let _ = writeln!(out, "{pad}{key}:");
                        emit(out, v, indent + 2);
                    }
                    Value::Array(items)
                        if !items.is_empty() && items.iter().any(|i| i.is_object()) =>
                    {
                        let _ = writeln!(out, "{pad}{key}:");
                        emit(out, v, indent + 2);
                    }
                    _ => {
                        let _ = writeln!(out, "{pad}{key}: {}", scalar(v));
                    }
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::Object(m) if !m.is_empty() => {
                        let mut inner = String::new();
                        emit(&mut inner, item, indent + 2);
                        let _ = write!(out, "{pad}- {}", &inner[indent + 2..]);
                    }
                    _ => {
                        let _ = writeln!(out, "{pad}- {}", scalar(item));
                    }
                }
            }
        }
        _ => {
            let _ = writeln!(out, "{pad}{}", scalar(v));
        }
    }
}

/// Key order of connector files.
const KEY_ORDER: &[&str] = &[
    "connector",
    "title",
    "kind",
    "method",
    "path",
    "success",
    "type",
    "in",
    "required",
    "wire_name",
    "enum",
    "nullable",
    "secret",
    "description",
    "base_url",
    "auth",
    "headers",
    "connection",
    "header",
    "key",
    "token",
    "token_url",
    "encoding",
    "client_id",
    "client_secret",
    "body_encoding",
    "inputs",
    "output",
    "pagination",
    "style",
    "items",
    "limit_input",
    "offset_input",
    "page_input",
    "operations",
];

/// A value on one line: JSON flow style is YAML; strings that cannot be
/// misread are written plain.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) if plain_ok(s) => s.clone(),
        _ => v.to_string(),
    }
}

fn plain_ok(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    (first.is_ascii_alphabetic() || first == '/' || first == '$')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || " _-./{}$(),'".contains(c))
        && !s.ends_with(' ')
        && !s.contains(" #")
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n"
        )
}

fn yaml_key(k: &str) -> String {
    let plain = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'))
        && !k.starts_with(['-', '.', '/'])
        && !matches!(
            k.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n" | "~"
        );
    if plain {
        k.to_string()
    } else {
        Value::String(k.to_string()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_snake_case() {
        assert_eq!(snake("getContactById"), "get_contact_by_id");
        assert_eq!(snake("Contacts API"), "contacts_api");
        assert_eq!(snake("list-pets"), "list_pets");
    }

    #[test]
    fn swagger_2_is_refused() {
        let e = import(
            r#"{"swagger": "2.0", "paths": {}}"#,
            &ImportOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(e, ImportError::NotOpenApi3));
    }

    #[test]
    fn what_does_not_map_is_listed_and_not_written() {
        let doc = json!({
            "openapi": "3.0.3",
            "info": {"title": "Shop"},
            "servers": [{"url": "https://shop.example.com/v1"}],
            "components": {"securitySchemes": {
                "key": {"type": "apiKey", "in": "query", "name": "k"}
            }},
            "paths": {"/orders/{id}": {
                "get": {
                    "operationId": "getOrder",
                    "parameters": [
                        {"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}},
                        {"name": "session", "in": "cookie", "schema": {"type": "string"}}
                    ],
                    "responses": {"200": {"description": "ok"}}
                },
                "head": {"responses": {"200": {"description": "ok"}}},
                "put": {
                    "requestBody": {"content": {"multipart/form-data": {"schema": {"type": "object"}}}},
                    "responses": {"204": {"description": "done"}}
                }
            }}
        });
        let out = import(&doc.to_string(), &ImportOptions::default()).unwrap();
        let all = out.unmapped.join("\n");
        for expected in [
            "HEAD /orders/{id}: method not supported",
            "GET /orders/{id}: cookie parameter `session` is not supported",
            "PUT /orders/{id}: request body as `multipart/form-data` is not supported",
            "securitySchemes.key: an API key in the query is not supported",
        ] {
            assert!(all.contains(expected), "{expected} missing from:\n{all}");
        }
        assert!(!out.yaml.contains("session:"), "{}", out.yaml);
        assert!(!out.yaml.contains("\nauth:"), "{}", out.yaml);
        assert!(out.yaml.contains("#   - HEAD /orders/{id}"), "{}", out.yaml);
        super::super::parse_connector("shop.yaml", &out.yaml)
            .unwrap_or_else(|d| panic!("{d:?}\n{}", out.yaml));
    }
}
