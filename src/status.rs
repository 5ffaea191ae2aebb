//! `patchbay status`: what a running engine serves, from its admin API —
//! each recipe's active version, file and load time, the files a reload
//! rejected with their diagnostics, and the last reload.

use serde_json::Value;

use crate::cli::{EXIT_INVALID, EXIT_OK, EXIT_USAGE};

/// Arguments of `status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// The engine's admin address (its `--admin-listen`), e.g. `http://127.0.0.1:8790`.
    #[arg(long)]
    pub admin: String,
    /// The admin token (or `PATCHBAY_ADMIN_TOKEN`).
    #[arg(long)]
    pub admin_token: Option<String>,
    /// Print the admin API's JSON as is.
    #[arg(long)]
    pub json: bool,
}

/// Prints the engine's recipes and reload state; exit 1 when some file is
/// rejected, 2 when the engine cannot be asked.
pub fn status(args: StatusArgs) -> i32 {
    let token = args
        .admin_token
        .clone()
        .or_else(|| std::env::var("PATCHBAY_ADMIN_TOKEN").ok())
        .unwrap_or_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let url = format!("{}/admin/recipes", args.admin.trim_end_matches('/'));
    let got = rt.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let r = reqwest::Client::new()
            .get(&url)
            .bearer_auth(&token)
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| {
                format!(
                    "cannot reach {url}: {}",
                    crate::connectors::auth::without_url(&e)
                )
            })?;
        let code = r.status();
        let body: Value = r
            .json()
            .await
            .map_err(|e| format!("{url}: not JSON: {e}"))?;
        if !code.is_success() {
            let msg = body["error"].as_str().unwrap_or("").to_string();
            return Err(format!("{url} answered {code}: {msg}"));
        }
        Ok(body)
    });
    let body = match got {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let rejected = body["rejected"].as_array().map_or(0, Vec::len);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&body).unwrap_or_default()
        );
    } else {
        print!("{}", render(&body));
    }
    if rejected > 0 {
        EXIT_INVALID
    } else {
        EXIT_OK
    }
}

/// The human table.
pub fn render(body: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let empty = Vec::new();
    let recipes = body["recipes"].as_array().unwrap_or(&empty);
    let _ = writeln!(
        out,
        "{:<40} {:<12}  {:<9} {:<20} FILE",
        "RECIPE", "VERSION", "TRIGGER", "LOADED AT (UTC)"
    );
    for r in recipes {
        let loaded = r["loaded_at"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<40} {:<12}  {:<9} {:<20} {}{}",
            r["name"].as_str().unwrap_or(""),
            r["version"].as_str().unwrap_or(""),
            r["trigger"].as_str().unwrap_or(""),
            loaded,
            r["file"].as_str().unwrap_or(""),
            if r["last_error"].is_null() {
                ""
            } else {
                "  (last edit rejected: previous version running)"
            }
        );
    }
    if recipes.is_empty() {
        let _ = writeln!(out, "(no recipes)");
    }
    let rejected = body["rejected"].as_array().unwrap_or(&empty);
    if !rejected.is_empty() {
        let _ = writeln!(out, "\nrejected files:");
        for f in rejected {
            for d in f["diagnostics"].as_array().unwrap_or(&empty) {
                let _ = writeln!(out, "  {}", d.as_str().unwrap_or(""));
            }
        }
    }
    if let Some(last) = body["last_reload"].as_object() {
        let list = |k: &str| {
            last.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "-".into())
        };
        let _ = writeln!(
            out,
            "\nlast reload: {} ({}) {}: added {}; changed {}; removed {}; connections {}{}",
            last.get("at").and_then(Value::as_str).unwrap_or(""),
            last.get("trigger").and_then(Value::as_str).unwrap_or(""),
            last.get("result").and_then(Value::as_str).unwrap_or(""),
            list("added"),
            list("changed"),
            list("removed"),
            list("connections"),
            last.get("error")
                .and_then(Value::as_str)
                .map(|e| format!("; error: {e}"))
                .unwrap_or_default(),
        );
    }
    out
}
