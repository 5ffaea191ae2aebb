//! Actions per second through the connector runtime against the HighLevel
//! emulator on loopback (rate limits lifted; the emulator shares the two
//! cores with the client, so this is a floor for a remote API).
//!
//! `cargo bench --bench actions`; results go to `docs/performance.md`.

use std::sync::Arc;
use std::time::Instant;

use patchbay::catalog::{Catalog, RateWindow};
use patchbay::connections::{FieldValue, ResolvedConnection};
use patchbay::connectors::native::MemoryStore;
use patchbay::connectors::Runtime;
use patchbay::secret::Secret;
use serde_json::json;

mod common;

fn main() {
    common::block_on(async {
        let e = common::ghl().await;
        let id = e.insert_contact(json!({"email": "a@b.c"}));
        let conn = ResolvedConnection {
            name: "ghl-main".into(),
            connector: "ghl".into(),
            fields: [
                ("base_url".to_string(), FieldValue::Plain(e.base_url())),
                (
                    "token".to_string(),
                    FieldValue::Secret(Secret::new("pit-bench")),
                ),
                (
                    "location_id".to_string(),
                    FieldValue::Plain(e.config().location_id.clone()),
                ),
            ]
            .into_iter()
            .collect(),
            rate_limits: Some(vec![RateWindow {
                requests: 1_000_000,
                per: "1s".into(),
            }]),
            concurrency: Some(64),
        };
        let store = Arc::new(MemoryStore::default());
        let runtime = Arc::new(Runtime::new(
            Catalog::builtin(),
            vec![conn],
            store.clone(),
            store,
        ));
        let op = Catalog::builtin().op("ghl.contacts.get").unwrap();
        let input = json!({"contactId": id}).as_object().unwrap().clone();
        for (label, n, workers) in [("warm-up", 2_000, 32), ("measured", 20_000, 64)] {
            let start = Instant::now();
            let per_worker = n / workers;
            let mut tasks = Vec::new();
            for _ in 0..workers {
                let (runtime, op, input) = (runtime.clone(), op.clone(), input.clone());
                tasks.push(tokio::spawn(async move {
                    for _ in 0..per_worker {
                        runtime.call(&op, None, &input, None).await.unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{label}: {} actions ({workers} concurrent) in {secs:.2} s = {:.0} actions/s",
                per_worker * workers,
                (per_worker * workers) as f64 / secs
            );
            let seen = e.requests();
            assert_eq!(seen.len(), per_worker * workers);
            assert!(seen.iter().all(|r| r.status == 200));
            e.control().clear_requests();
        }
    });
}
