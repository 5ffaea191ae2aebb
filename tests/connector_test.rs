//! `patchbay connector test`: offline checks with file:line:col, and a
//! smoke test of the read-only operations against the SendPulse emulator.

use std::path::{Path, PathBuf};
use std::process::Output;

use patchbay::emulator::{sendpulse, Fault};
use serde_json::json;

const SP_SECRET: &str = "SECRET-sp-connector-test-5e1";

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("patchbay-conntest-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn patchbay(args: Vec<String>) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_patchbay"));
    cmd.args(args).env("SP_SECRET", SP_SECRET);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn builtin(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/catalog/connectors")
            .join(name),
    )
    .unwrap()
}

#[tokio::test]
async fn a_broken_connector_file_is_reported_at_its_lines() {
    let d = dir("broken");
    let file = d.join("shop.yaml");
    std::fs::write(
        &file,
        "connector: shop\ntitle: Shop\nbase_url: https://shop.example.com\nerrors:\n  rules:\n    - kind: conflict\noperations:\n  orders.get:\n    title: Get an order\n    method: GET\n    path: /orders/{orderId}\n    inputs:\n      id:\n        type: integer\n        in: path\n      status:\n        type: string\n        in: query\n        enum: [1, open]\n    output: $.data[\n",
    )
    .unwrap();
    let o = patchbay(vec![
        "connector".into(),
        "test".into(),
        file.display().to_string(),
    ])
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = text(&o);
    let f = file.display().to_string();
    for (line, col, message) in [
        (6, 7, "an error rule needs a condition"),
        (
            11,
            11,
            "path parameter `{orderId}` has no input with `in: path`",
        ),
        (14, 9, "input `id` is `in: path` but the path has no `{id}`"),
        (19, 16, "allowed value 1 of `status` is not a string"),
        (20, 13, "invalid JSONPath `$.data[`"),
    ] {
        let at = out
            .find(&format!("error[invalid-connector]: {message}"))
            .unwrap_or_else(|| panic!("missing {message} in:\n{out}"));
        let here = format!("--> {f}:{line}:{col}\n");
        let next = out[at..].find(&format!("--> {f}:")).map(|i| &out[at + i..]);
        assert!(
            next.is_some_and(|n| n.starts_with(&here)),
            "{message}: not at {here} in:\n{out}"
        );
    }
}

#[tokio::test]
async fn with_a_connection_each_read_only_operation_is_called_once() {
    let sp = sendpulse::start(sendpulse::SendPulseConfig {
        api_key: Some(SP_SECRET.into()),
        rate_limit: None,
        ..Default::default()
    })
    .await
    .unwrap();
    let d = dir("smoke");
    let file = d.join("sendpulse.yaml");
    std::fs::write(&file, builtin("sendpulse.yaml")).unwrap();
    let conns = d.join("connections.yaml");
    std::fs::write(
        &conns,
        format!(
            "sp:\n  connector: sendpulse\n  base_url: {}\n  api_key: {{ env: SP_SECRET }}\n",
            sp.base_url(),
        ),
    )
    .unwrap();
    let args = |c: &str| {
        vec![
            "connector".to_string(),
            "test".into(),
            file.display().to_string(),
            "--connections".into(),
            conns.display().to_string(),
            "--connection".into(),
            c.into(),
        ]
    };
    let o = patchbay(args("sp")).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = text(&o);
    assert!(!out.contains(SP_SECRET), "{out}");
    for op in [
        "sendpulse.user.info (GET /user/info)",
        "sendpulse.addressbooks.list (GET /addressbooks)",
        "sendpulse.crm.users.list (GET /crm/v1/users)",
        "sendpulse.crm.attributes.list (GET /crm/v1/contacts/attributes)",
    ] {
        assert!(out.contains(&format!("ok   {op}")), "{op} in:\n{out}");
    }
    assert!(
        out.contains("skip sendpulse.addressbooks.get (GET /addressbooks/{id}): needs id"),
        "{out}"
    );
    // Only GETs were sent, one each (token fetches aside).
    let reqs: Vec<_> = sp
        .requests()
        .into_iter()
        .filter(|r| !r.path.starts_with("/oauth/"))
        .collect();
    assert!(reqs.iter().all(|r| r.method == "GET"), "{reqs:?}");
    let users = reqs.iter().filter(|r| r.path == "/crm/v1/users").count();
    assert_eq!(users, 1);

    // A failing answer fails the run and names the operation and the error.
    sp.control().inject(
        Fault::Status(
            403,
            json!({"message": "Access denied! Please change your tariff plan", "error_code": 3030303030u64}),
        ),
        1,
    );
    let o = patchbay(args("sp")).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("forbidden (HTTP 403): Access denied! Please change your tariff plan"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("1 failed"), "{}", text(&o));
}
