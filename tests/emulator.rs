//! The HighLevel and SendPulse emulators answer like the reference says:
//! statuses, wrappers, error bodies, auth, rate limits and injected faults.

use std::time::Duration;

use patchbay::emulator::ghl::{self, GhlConfig, GhlEmulator};
use patchbay::emulator::sendpulse::{self, SendPulseConfig, SendPulseEmulator, OWNER_ID};
use patchbay::emulator::Fault;
use reqwest::{Client, Method, RequestBuilder};
use serde_json::{json, Value};

fn client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder().build().expect("client")
}

async fn send(rb: RequestBuilder) -> (u16, Value) {
    let resp = rb.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}

// ------------------------------------------------------------- HighLevel

struct Ghl {
    emu: GhlEmulator,
    http: Client,
    token: String,
}

impl Ghl {
    async fn start(config: GhlConfig) -> Ghl {
        let token = config.token.clone();
        let emu = ghl::start(GhlConfig {
            rate_limit: None,
            ..config
        })
        .await
        .expect("start");
        Ghl {
            emu,
            http: client(),
            token,
        }
    }

    fn loc(&self) -> String {
        self.emu.config().location_id.clone()
    }

    fn v2(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.emu.base_url()))
            .bearer_auth(&self.token)
            .header("Version", ghl::VERSION)
    }

    fn v1(&self, method: Method, path: &str) -> RequestBuilder {
        let key = self.emu.config().v1_api_key.clone();
        self.http
            .request(method, format!("{}{path}", self.emu.base_url()))
            .bearer_auth(key)
    }

    async fn create(&self, body: Value) -> String {
        let mut body = body;
        body["locationId"] = json!(self.loc());
        let (status, resp) = send(self.v2(Method::POST, "/contacts/").json(&body)).await;
        assert_eq!(status, 201, "{resp}");
        resp["contact"]["id"].as_str().expect("id").to_string()
    }
}

#[tokio::test]
async fn ghl_contact_lifecycle() {
    let g = Ghl::start(GhlConfig::default()).await;
    let loc = g.loc();
    let body = json!({"locationId": loc, "firstName": "Jane", "lastName": "Doe", "email": "Jane@Example.com",
                      "phone": "+1 888-888-8888", "gender": "female", "tags": ["vip"]});
    // `/contacts` without the trailing slash works too.
    let (status, created) = send(g.v2(Method::POST, "/contacts").json(&body)).await;
    assert_eq!(status, 201);
    let c = &created["contact"];
    let id = c["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 20);
    assert_eq!(c["name"], "Jane Doe");
    assert_eq!(c["emailLowerCase"], "jane@example.com");
    assert_eq!(c["phone"], "+18888888888");
    assert_eq!(c["locationId"], json!(loc));

    let (status, got) = send(g.v2(Method::GET, &format!("/contacts/{id}"))).await;
    assert_eq!(status, 200);
    assert_eq!(got["contact"], *c);

    // Unknown properties on update answer 422 with a message array.
    let (status, err) = send(
        g.v2(Method::PUT, &format!("/contacts/{id}"))
            .json(&json!({"gender": "male"})),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(
        err,
        json!({"statusCode": 422, "message": ["property gender should not exist"], "error": "Unprocessable Entity"})
    );
    let (status, _) = send(
        g.v2(Method::PUT, &format!("/contacts/{id}"))
            .json(&json!({"locationId": loc})),
    )
    .await;
    assert_eq!(status, 422);

    let (status, updated) = send(
        g.v2(Method::PUT, &format!("/contacts/{id}"))
            .json(&json!({"firstName": "Janet"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(updated["succeded"], true);
    assert_eq!(updated["contact"]["name"], "Janet Doe");
    assert_eq!(g.emu.contact(&id).unwrap()["firstName"], "Janet");

    let (status, err) = send(g.v2(Method::GET, "/contacts/nosuchcontact0000000")).await;
    assert_eq!(
        (status, err),
        (
            400,
            json!({"statusCode": 400, "message": "Contact not found"})
        )
    );

    let (status, deleted) = send(g.v2(Method::DELETE, &format!("/contacts/{id}"))).await;
    assert_eq!((status, deleted), (200, json!({"succeded": true})));
    let (status, err) = send(g.v2(Method::GET, &format!("/contacts/{id}"))).await;
    assert_eq!(
        (status, err["message"].as_str()),
        (400, Some("Contact not found"))
    );
    assert!(g.emu.contacts().is_empty());
}

#[tokio::test]
async fn ghl_duplicates_upsert_and_lookup() {
    let g = Ghl::start(GhlConfig::default()).await;
    let loc = g.loc();
    let id = g
        .create(json!({"email": "a@example.com", "phone": "+15550001111"}))
        .await;

    let (status, err) = send(
        g.v2(Method::POST, "/contacts/")
            .json(&json!({"locationId": loc, "email": "A@example.com"})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        err,
        json!({"statusCode": 400, "message": "This location does not allow duplicated contacts.",
               "meta": {"contactId": id, "matchingField": "email"}})
    );
    let (status, err) = send(
        g.v2(Method::POST, "/contacts/")
            .json(&json!({"locationId": loc, "phone": "+1 555 000 1111"})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        err["meta"],
        json!({"contactId": id, "matchingField": "phone"})
    );

    // Wrong location: 403.
    let (status, err) = send(
        g.v2(Method::POST, "/contacts/")
            .json(&json!({"locationId": "otherLocation0000000", "email": "z@example.com"})),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(
        err,
        json!({"statusCode": 403, "message": "The token does not have access to this location."})
    );

    // Upsert: new, then the same email updates it.
    let (status, first) = send(
        g.v2(Method::POST, "/contacts/upsert")
            .json(&json!({"locationId": loc, "email": "b@example.com", "firstName": "B"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(first["new"], true);
    assert!(first["traceId"].is_string());
    let b = first["contact"]["id"].as_str().unwrap().to_string();
    let (status, second) = send(
        g.v2(Method::POST, "/contacts/upsert")
            .json(&json!({"locationId": loc, "email": "b@example.com", "lastName": "Bee"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(second["new"], false);
    assert_eq!(second["contact"]["id"], json!(b));
    assert_eq!(second["contact"]["name"], "B Bee");
    assert_eq!(g.emu.contacts().len(), 2);

    // Duplicate lookup.
    let url = format!("/contacts/search/duplicate?locationId={loc}");
    let (status, err) = send(g.v2(Method::GET, &url)).await;
    assert_eq!(
        (status, err),
        (
            400,
            json!({"statusCode": 400, "message": "Pass at least one of number, email query parameter"})
        )
    );
    let (status, found) = send(g.v2(Method::GET, &format!("{url}&email=b%40example.com"))).await;
    assert_eq!((status, found["contact"]["id"].clone()), (200, json!(b)));
    let (_, found) = send(g.v2(Method::GET, &format!("{url}&number=%2B15550001111"))).await;
    assert_eq!(found["contact"]["id"], json!(id));
    let (_, found) = send(g.v2(Method::GET, &format!("{url}&email=nobody%40example.com"))).await;
    assert_eq!(found, json!({"contact": null}));
}

#[tokio::test]
async fn ghl_tasks_notes_tags_appointments() {
    let g = Ghl::start(GhlConfig::default()).await;
    let id = g
        .create(json!({"email": "t@example.com", "tags": ["a"]}))
        .await;
    let tasks = format!("/contacts/{id}/tasks");

    let (status, err) = send(g.v2(Method::POST, &tasks).json(&json!({"body": "x"}))).await;
    assert_eq!(status, 422);
    assert_eq!(
        err["message"],
        json!([
            "title should not be empty",
            "dueDate should not be empty",
            "completed should not be empty"
        ])
    );
    let (status, created) = send(
        g.v2(Method::POST, &tasks)
            .json(&json!({"title": "Call", "dueDate": "2030-10-25T11:00:00Z", "completed": false})),
    )
    .await;
    assert_eq!(status, 201);
    let task = created["task"].clone();
    assert_eq!(task["dueDate"], "2030-10-25T11:00:00.000Z");
    assert_eq!(task["contactId"], json!(id));
    let tid = task["id"].as_str().unwrap().to_string();

    let (status, got) = send(g.v2(Method::GET, &format!("{tasks}/{tid}"))).await;
    assert_eq!((status, got), (200, json!({"task": task})));
    let (status, upd) = send(
        g.v2(Method::PUT, &format!("{tasks}/{tid}"))
            .json(&json!({"title": "Call back"})),
    )
    .await;
    assert_eq!(
        (status, upd["task"]["title"].clone()),
        (200, json!("Call back"))
    );
    let (status, done) = send(
        g.v2(Method::PUT, &format!("{tasks}/{tid}/completed"))
            .json(&json!({"completed": true})),
    )
    .await;
    assert_eq!(
        (status, done["task"]["completed"].clone()),
        (200, json!(true))
    );
    let (_, list) = send(g.v2(Method::GET, &tasks)).await;
    assert_eq!(list["tasks"].as_array().unwrap().len(), 1);
    let (status, del) = send(g.v2(Method::DELETE, &format!("{tasks}/{tid}"))).await;
    assert_eq!((status, del), (200, json!({"succeded": true})));
    let (status, err) = send(g.v2(Method::GET, &format!("{tasks}/{tid}"))).await;
    assert_eq!(
        (status, err),
        (400, json!({"statusCode": 400, "message": "Task not found"}))
    );
    assert!(g.emu.tasks(&id).is_empty());

    // Notes.
    let notes = format!("/contacts/{id}/notes");
    let (status, note) = send(
        g.v2(Method::POST, &notes)
            .json(&json!({"body": "hello", "userId": "u1"})),
    )
    .await;
    assert_eq!(status, 201);
    let nid = note["note"]["id"].as_str().unwrap().to_string();
    assert_eq!(note["note"]["body"], "hello");
    let (status, upd) = send(
        g.v2(Method::PUT, &format!("{notes}/{nid}"))
            .json(&json!({"body": "bye"})),
    )
    .await;
    assert_eq!((status, upd["note"]["body"].clone()), (200, json!("bye")));
    let (_, list) = send(g.v2(Method::GET, &notes)).await;
    assert_eq!(list["notes"][0]["body"], "bye");
    assert_eq!(
        send(g.v2(Method::DELETE, &format!("{notes}/{nid}"))).await,
        (200, json!({"succeded": true}))
    );
    assert_eq!(
        send(g.v2(Method::GET, &format!("{notes}/{nid}"))).await.0,
        400
    );

    // Tags: add (201) and remove (200), answered with the contact's tags.
    let tags = format!("/contacts/{id}/tags");
    let (status, added) = send(g.v2(Method::POST, &tags).json(&json!({"tags": ["b", "A"]}))).await;
    assert_eq!((status, added), (201, json!({"tags": ["a", "b"]})));
    let (status, left) = send(g.v2(Method::DELETE, &tags).json(&json!({"tags": ["a"]}))).await;
    assert_eq!((status, left), (200, json!({"tags": ["b"]})));
    assert_eq!(g.emu.contact(&id).unwrap()["tags"], json!(["b"]));

    // Appointments: calendars version, then listed as events.
    let appt = json!({"calendarId": "cal1", "locationId": g.loc(), "contactId": id, "startTime": "2030-06-23T03:30:00+05:30"});
    let wrong_version = g
        .v2(Method::POST, "/calendars/events/appointments")
        .json(&appt);
    assert_eq!(send(wrong_version).await.0, 400);
    let (status, created) = send(
        g.http
            .post(format!(
                "{}/calendars/events/appointments",
                g.emu.base_url()
            ))
            .bearer_auth(&g.token)
            .header("Version", ghl::CALENDARS_VERSION)
            .json(&appt),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert!(created["id"].is_string());
    let (status, events) = send(g.v2(Method::GET, &format!("/contacts/{id}/appointments"))).await;
    assert_eq!(status, 200);
    assert_eq!(events["events"], json!([created]));

    // Campaigns, workflows, followers.
    assert_eq!(
        send(g.v2(Method::POST, &format!("/contacts/{id}/campaigns/camp1"))).await,
        (201, json!({"succeded": true}))
    );
    assert_eq!(g.emu.campaigns(&id), vec!["camp1"]);
    assert_eq!(
        send(g.v2(
            Method::DELETE,
            &format!("/contacts/{id}/campaigns/removeAll")
        ))
        .await
        .0,
        200
    );
    assert!(g.emu.campaigns(&id).is_empty());
    assert_eq!(
        send(g.v2(Method::POST, &format!("/contacts/{id}/workflow/wf1"))).await,
        (200, json!({"succeded": true}))
    );
    assert_eq!(g.emu.workflows(&id), vec!["wf1"]);
    let (status, f) = send(
        g.v2(Method::POST, &format!("/contacts/{id}/followers"))
            .json(&json!({"followers": ["u1"]})),
    )
    .await;
    assert_eq!(
        (status, f),
        (201, json!({"followers": ["u1"], "followersAdded": ["u1"]}))
    );
}

#[tokio::test]
async fn ghl_list_pagination_search_and_bulk() {
    let g = Ghl::start(GhlConfig::default()).await;
    let mut ids = vec![];
    for i in 0..5 {
        ids.push(
            g.create(json!({"email": format!("p{i}@example.com"), "firstName": format!("P{i}")}))
                .await,
        );
    }
    ids.reverse(); // newest first
    let loc = g.loc();
    let mut seen = vec![];
    let mut url = format!("/contacts/?locationId={loc}&limit=2");
    let mut pages = 0;
    loop {
        let (status, page) = send(g.v2(Method::GET, &url)).await;
        assert_eq!(status, 200);
        pages += 1;
        assert_eq!(page["count"], 5);
        assert_eq!(page["meta"]["total"], 5);
        assert_eq!(page["meta"]["currentPage"], pages);
        seen.extend(
            page["contacts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_string()),
        );
        if page["meta"]["nextPageUrl"].is_null() {
            assert_eq!(page["meta"]["nextPage"], Value::Null);
            break;
        }
        let next = page["meta"]["nextPageUrl"].as_str().unwrap();
        assert!(next.contains("startAfterId="));
        url = format!(
            "/contacts/?locationId={loc}&limit=2&startAfter={}&startAfterId={}",
            page["meta"]["startAfter"],
            page["meta"]["startAfterId"].as_str().unwrap()
        );
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids);

    let (status, err) = send(g.v2(
        Method::GET,
        &format!("/contacts/?locationId={loc}&limit=101"),
    ))
    .await;
    assert_eq!(status, 422);
    assert_eq!(
        err["message"],
        json!(["limit must not be greater than 100"])
    );

    // Advanced search with a filter and page limit.
    let search = json!({"locationId": loc, "pageLimit": 10,
                        "filters": [{"field": "firstNameLowerCase", "operator": "eq", "value": "p3"}]});
    let (status, found) = send(g.v2(Method::POST, "/contacts/search").json(&search)).await;
    assert_eq!(status, 200);
    assert_eq!(found["total"], 1);
    assert_eq!(found["contacts"][0]["id"], json!(ids[1]));
    let (status, _) = send(
        g.v2(Method::POST, "/contacts/search")
            .json(&json!({"locationId": loc})),
    )
    .await;
    assert_eq!(status, 422);

    // Business attach, then list by business.
    let (status, attached) = send(
        g.v2(Method::POST, "/contacts/bulk/business")
            .json(&json!({"locationId": loc, "ids": [ids[0], ids[1]], "businessId": "641c094001436dbc2081e642"})),
    )
    .await;
    assert_eq!(
        (status, attached["ids"].as_array().unwrap().len()),
        (200, 2)
    );
    let (_, by) = send(g.v2(
        Method::GET,
        &format!("/contacts/business/641c094001436dbc2081e642?locationId={loc}"),
    ))
    .await;
    assert_eq!(by["count"], 2);

    // Bulk tags, with one bad id.
    let (status, bulk) = send(
        g.v2(Method::POST, "/contacts/bulk/tags/update/add")
            .json(&json!({"locationId": loc, "contacts": [ids[0], "abcdef"], "tags": ["x"]})),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(bulk["errorCount"], 1);
    assert_eq!(
        bulk["responses"][1]["message"],
        "contact id is not a valid firebase id"
    );
    assert_eq!(g.emu.contact(&ids[0]).unwrap()["tags"], json!(["x"]));
}

#[tokio::test]
async fn ghl_auth_version_and_refresh() {
    let g = Ghl::start(GhlConfig::default()).await;
    let loc = g.loc();
    let list = format!("/contacts/?locationId={loc}");

    let no_version = g
        .http
        .get(format!("{}{list}", g.emu.base_url()))
        .bearer_auth(&g.token);
    let (status, err) = send(no_version).await;
    assert_eq!(
        (status, err),
        (
            400,
            json!({"statusCode": 400, "message": "Version header was not found"})
        )
    );

    let unauthorized = json!({"statusCode": 401, "message": "Invalid token: access token is invalid", "error": "Unauthorized"});
    let wrong = g
        .http
        .get(format!("{}{list}", g.emu.base_url()))
        .bearer_auth("nope")
        .header("Version", ghl::VERSION);
    assert_eq!(send(wrong).await, (401, unauthorized.clone()));

    assert_eq!(send(g.v2(Method::GET, &list)).await.0, 200);
    g.emu.expire_tokens();
    assert_eq!(
        send(g.v2(Method::GET, &list)).await,
        (401, unauthorized.clone())
    );

    let cfg = g.emu.config().clone();
    let token_url = format!("{}/oauth/token", g.emu.base_url());
    let form = |refresh: &str| {
        vec![
            ("grant_type", "refresh_token".to_string()),
            ("client_id", cfg.client_id.clone()),
            ("client_secret", cfg.client_secret.clone()),
            ("refresh_token", refresh.to_string()),
        ]
    };
    let (status, tokens) = send(g.http.post(&token_url).form(&form(&cfg.refresh_token))).await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 86399);
    let access = tokens["access_token"].as_str().unwrap().to_string();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(refresh, cfg.refresh_token);
    assert_eq!(g.emu.token_refreshes(), 1);
    assert_eq!(g.emu.refresh_token(), Some(refresh.clone()));

    let with_new = g
        .http
        .get(format!("{}{list}", g.emu.base_url()))
        .bearer_auth(&access)
        .header("Version", ghl::VERSION);
    assert_eq!(send(with_new).await.0, 200);

    // The old refresh token was consumed.
    let (status, err) = send(g.http.post(&token_url).form(&form(&cfg.refresh_token))).await;
    assert_eq!(status, 400);
    assert_eq!(err["error"], "invalid_grant");
    // JSON instead of a form is refused.
    assert_eq!(
        send(
            g.http
                .post(&token_url)
                .json(&json!({"grant_type": "refresh_token"}))
        )
        .await
        .0,
        400
    );
    // The rotated one works once.
    assert_eq!(
        send(g.http.post(&token_url).form(&form(&refresh))).await.0,
        200
    );
    assert_eq!(g.emu.token_refreshes(), 2);

    // A PIT survives expire_tokens.
    let pit = Ghl::start(GhlConfig {
        token: "pit-test-token".into(),
        ..GhlConfig::default()
    })
    .await;
    pit.emu.expire_tokens();
    assert_eq!(
        send(pit.v2(Method::GET, &format!("/contacts/?locationId={loc}")))
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn ghl_agency_token_mints_location_tokens() {
    let g = Ghl::start(GhlConfig::default()).await;
    let cfg = g.emu.config().clone();
    let url = format!("{}/oauth/locationToken", g.emu.base_url());
    let mint = |token: &str, form: &[(&str, &str)]| {
        g.http
            .post(&url)
            .bearer_auth(token)
            .header("Version", ghl::VERSION)
            .form(form)
    };
    let good = [
        ("companyId", cfg.company_id.as_str()),
        ("locationId", cfg.location_id.as_str()),
    ];
    let (status, minted) = send(mint(&cfg.agency_token, &good)).await;
    assert_eq!(status, 200, "{minted}");
    assert_eq!(
        (
            minted["token_type"].clone(),
            minted["expires_in"].clone(),
            minted["locationId"].clone()
        ),
        (json!("Bearer"), json!(86399), json!(cfg.location_id))
    );
    // The minted token works in the location; the agency token does not.
    let id = g.create(json!({"email": "ann@example.com"})).await;
    let get = |token: &str| {
        g.http
            .get(format!("{}/contacts/{id}", g.emu.base_url()))
            .bearer_auth(token)
            .header("Version", ghl::VERSION)
    };
    assert_eq!(
        send(get(minted["access_token"].as_str().unwrap())).await.0,
        200
    );
    assert_eq!(send(get(&cfg.agency_token)).await.0, 401);
    // Only an agency token mints, only with a form, for its own company and location.
    let (status, e) = send(mint(&cfg.token, &good)).await;
    assert_eq!(
        (status, e["message"].clone()),
        (401, json!("This route requires an Agency access token"))
    );
    let as_json = g
        .http
        .post(&url)
        .bearer_auth(&cfg.agency_token)
        .header("Version", ghl::VERSION)
        .json(&json!({"companyId": cfg.company_id, "locationId": cfg.location_id}));
    assert_eq!(send(as_json).await.0, 400);
    let no_version = g.http.post(&url).bearer_auth(&cfg.agency_token).form(&good);
    assert_eq!(
        send(no_version).await,
        (
            400,
            json!({"statusCode": 400, "message": "Version header was not found"})
        )
    );
    let (status, e) = send(mint(
        &cfg.agency_token,
        &[("companyId", "other"), ("locationId", &cfg.location_id)],
    ))
    .await;
    assert_eq!(status, 403, "{e}");
    assert_eq!(
        send(mint(
            &cfg.agency_token,
            &[("companyId", &cfg.company_id), ("locationId", "elsewhere")],
        ))
        .await,
        (
            400,
            json!({"statusCode": 400, "message": "Location not found"})
        )
    );
    let (status, e) = send(mint(&cfg.agency_token, &[("companyId", &cfg.company_id)])).await;
    assert_eq!(
        (status, e["message"].clone()),
        (422, json!(["locationId should not be empty"]))
    );
}

#[tokio::test]
async fn ghl_v1_shapes() {
    let g = Ghl::start(GhlConfig::default()).await;
    let (status, err) = send(
        g.http
            .get(format!("{}/v1/contacts/", g.emu.base_url()))
            .bearer_auth("bad"),
    )
    .await;
    assert_eq!((status, err), (401, json!({"msg": "Unauthorized"})));

    let (status, err) = send(
        g.v1(Method::POST, "/v1/contacts/")
            .json(&json!({"firstName": "No"})),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(
        err,
        json!({"email or phone": {"message": "The email or phone field is mandatory.", "rule": "required"}})
    );

    let (status, created) = send(
        g.v1(Method::POST, "/v1/contacts/")
            .json(&json!({"email": "v1@example.com", "firstName": "Vee", "lastName": "One", "customField": {"f1": "x"}})),
    )
    .await;
    assert_eq!(status, 200);
    let c = &created["contact"];
    assert_eq!(c["contactName"], "Vee One");
    assert_eq!(c["customField"], json!([{"id": "f1", "value": "x"}]));
    let id = c["id"].as_str().unwrap().to_string();
    // The same data through v2.
    assert_eq!(
        send(g.v2(Method::GET, &format!("/contacts/{id}"))).await.1["contact"]["name"],
        "Vee One"
    );

    let tasks = format!("/v1/contacts/{id}/tasks/");
    let (status, err) = send(
        g.v1(Method::POST, &tasks)
            .json(&json!({"description": "d"})),
    )
    .await;
    assert_eq!(status, 422);
    assert!(err["title"]["message"].is_string() && err["dueDate"]["rule"] == "required");
    let (status, task) = send(
        g.v1(Method::POST, &tasks)
            .json(&json!({"title": "T", "dueDate": "2030-01-01T10:00:00Z", "description": "d"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(task["title"], "T");
    assert_eq!(task["description"], "d");
    assert_eq!(task["isCompleted"], false);
    assert!(task.get("task").is_none());
    let tid = task["id"].as_str().unwrap();
    let (status, done) = send(
        g.v1(
            Method::PUT,
            &format!("/v1/contacts/{id}/tasks/{tid}/status"),
        )
        .json(&json!({"status": "completed"})),
    )
    .await;
    assert_eq!((status, done["isCompleted"].clone()), (200, json!(true)));
    assert_eq!(g.emu.tasks(&id)[0]["completed"], true);
    let (status, list) = send(g.v1(Method::GET, &tasks)).await;
    assert_eq!((status, list["tasks"].as_array().unwrap().len()), (200, 1));
    assert_eq!(
        send(g.v1(Method::DELETE, &format!("/v1/contacts/{id}/tasks/{tid}"))).await,
        (200, Value::Null)
    );

    let (status, note) = send(
        g.v1(Method::POST, &format!("/v1/contacts/{id}/notes/"))
            .json(&json!({"body": "n", "userId": "u"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (note["body"].clone(), note["createdBy"].clone()),
        (json!("n"), json!("u"))
    );
    assert!(note["createdAt"].is_string());

    let (status, tags) = send(
        g.v1(Method::POST, &format!("/v1/contacts/{id}/tags/"))
            .json(&json!({"tags": ["q"]})),
    )
    .await;
    assert_eq!((status, tags), (200, json!({"tags": ["q"]})));
    let (status, found) =
        send(g.v1(Method::GET, "/v1/contacts/lookup?email=v1%40example.com")).await;
    assert_eq!(
        (status, found["contacts"][0]["id"].clone()),
        (200, json!(id))
    );

    assert_eq!(
        send(g.v1(Method::DELETE, &format!("/v1/contacts/{id}"))).await,
        (200, Value::Null)
    );
    let (status, err) = send(g.v1(Method::GET, &format!("/v1/contacts/{id}"))).await;
    assert_eq!((status, err), (400, json!({"msg": "Contact not found"})));
}

// -------------------------------------------------------------- SendPulse

struct Sp {
    emu: SendPulseEmulator,
    http: Client,
    token: String,
}

impl Sp {
    async fn start(config: SendPulseConfig) -> Sp {
        let emu = sendpulse::start(config).await.expect("start");
        let http = client();
        let cfg = emu.config().clone();
        let (status, body) = send(http.post(format!("{}/oauth/access_token", emu.base_url())).json(&json!({
            "grant_type": "client_credentials", "client_id": cfg.client_id, "client_secret": cfg.client_secret,
        })))
        .await;
        assert_eq!(status, 200, "{body}");
        let token = body["access_token"].as_str().unwrap().to_string();
        Sp { emu, http, token }
    }

    fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.emu.base_url()))
            .bearer_auth(&self.token)
    }
}

fn sp_config() -> SendPulseConfig {
    SendPulseConfig {
        rate_limit: None,
        ..SendPulseConfig::default()
    }
}

#[tokio::test]
async fn sendpulse_tokens() {
    let sp = Sp::start(SendPulseConfig {
        api_key: Some("static-key".into()),
        ..sp_config()
    })
    .await;
    let url = format!("{}/oauth/access_token", sp.emu.base_url());
    let (status, err) = send(sp.http.post(&url).json(&json!({
        "grant_type": "client_credentials", "client_id": "x", "client_secret": "y",
    })))
    .await;
    assert_eq!(status, 401);
    assert_eq!(
        err,
        json!({"error": "invalid_client", "error_description": "Client authentication failed.",
               "message": "Client authentication failed.", "error_code": 1})
    );
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", "sp-test-client-id"),
        ("client_secret", "sp-test-client-secret"),
    ];
    let (status, err) = send(sp.http.post(&url).form(&form)).await;
    assert_eq!(status, 400);
    assert!(err["message"].as_str().unwrap().contains("JSON"));

    assert_eq!(
        send(sp.req(Method::GET, "/addressbooks")).await,
        (200, json!([]))
    );
    sp.emu.expire_tokens();
    let (status, err) = send(sp.req(Method::GET, "/addressbooks")).await;
    assert_eq!(
        (status, err),
        (401, json!({"message": "Unauthorized!", "error_code": 401}))
    );
    let with_key = sp
        .http
        .get(format!("{}/addressbooks", sp.emu.base_url()))
        .bearer_auth("static-key");
    assert_eq!(send(with_key).await.0, 200);
    assert_eq!(sp.emu.token_fetches(), 1);
    let again = Sp {
        token: String::new(),
        ..sp
    };
    let (status, body) = send(again.http.post(&url).json(&json!({
        "grant_type": "client_credentials", "client_id": "sp-test-client-id", "client_secret": "sp-test-client-secret",
    })))
    .await;
    assert_eq!((status, body["expires_in"].clone()), (200, json!(3600)));
    assert_eq!(again.emu.token_fetches(), 2);
}

#[tokio::test]
async fn sendpulse_books_and_subscribers() {
    let sp = Sp::start(sp_config()).await;
    let (status, created) = send(
        sp.req(Method::POST, "/addressbooks")
            .json(&json!({"bookName": "Book 1"})),
    )
    .await;
    assert_eq!(status, 200);
    let id = created["id"].as_i64().unwrap();
    assert_eq!(
        send(
            sp.req(Method::POST, "/addressbooks")
                .json(&json!({"bookName": "Book 1"}))
        )
        .await,
        (
            422,
            json!({"message": "Name already in use", "error_code": 203})
        )
    );

    let (status, book) = send(sp.req(Method::GET, &format!("/addressbooks/{id}"))).await;
    assert_eq!(status, 200);
    assert_eq!(book.as_array().unwrap().len(), 1);
    assert_eq!(book[0]["name"], "Book 1");

    let emails = format!("/addressbooks/{id}/emails");
    let add = json!({"emails": [{"email": "jane@example.com", "variables": {"name": "Jane", "age": 30}}, "plain@example.com"]});
    assert_eq!(
        send(sp.req(Method::POST, &emails).json(&add)).await,
        (200, json!({"result": true}))
    );
    let (status, list) = send(sp.req(Method::GET, &emails)).await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(
        list[0],
        json!({"email": "jane@example.com", "status": 0, "status_explain": "New", "phone": null,
                               "variables": {"name": "Jane", "age": 30}})
    );
    assert_eq!(
        send(sp.req(Method::GET, &format!("{emails}/total"))).await,
        (200, json!({"total": 2}))
    );
    let (_, one) = send(sp.req(Method::GET, &format!("{emails}/jane%40example.com"))).await;
    assert_eq!(one["abook_id"], json!(id.to_string()));
    let (_, vars) = send(sp.req(Method::GET, &format!("/addressbooks/{id}/variables"))).await;
    assert!(vars
        .as_array()
        .unwrap()
        .contains(&json!({"name": "age", "type": "number"})));

    let too_many: Vec<String> = (0..101).map(|i| format!("u{i}@example.com")).collect();
    assert_eq!(
        send(
            sp.req(Method::POST, &emails)
                .json(&json!({"emails": too_many}))
        )
        .await,
        (
            422,
            json!({"message": "Limit is exceeded. Max count: 100", "error_code": 422})
        )
    );
    assert_eq!(
        send(sp.req(Method::POST, &emails).json(&json!({}))).await,
        (
            422,
            json!({"message": "Argument emails missing", "error_code": 422})
        )
    );
    let not_found = json!({"message": "Book not found", "error_code": 213});
    assert_eq!(
        send(sp.req(Method::POST, "/addressbooks/999/emails").json(&add)).await,
        (404, not_found.clone())
    );

    assert_eq!(
        send(
            sp.req(Method::POST, &format!("{emails}/unsubscribe"))
                .json(&json!({"emails": ["plain@example.com"]}))
        )
        .await
        .0,
        200
    );
    assert_eq!(sp.emu.subscribers(id)[1]["status_explain"], "Unsubscribed");
    assert_eq!(
        send(
            sp.req(Method::DELETE, &emails)
                .json(&json!({"emails": ["jane@example.com"]}))
        )
        .await,
        (200, json!({"result": true}))
    );
    assert_eq!(sp.emu.subscribers(id).len(), 1);

    assert_eq!(
        send(sp.req(Method::DELETE, &format!("/addressbooks/{id}"))).await,
        (200, json!({"result": true}))
    );
    assert_eq!(
        send(sp.req(Method::GET, &format!("/addressbooks/{id}"))).await,
        (404, not_found)
    );
    assert!(sp.emu.books().is_empty());
}

#[tokio::test]
async fn sendpulse_crm_contacts_and_notes() {
    let sp = Sp::start(sp_config()).await;
    let (status, err) = send(
        sp.req(Method::POST, "/crm/v1/contacts/create")
            .json(&json!({"firstName": "Jane"})),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(err["message"], "The responsible id field is required.");

    let (status, created) = send(
        sp.req(Method::POST, "/crm/v1/contacts/create")
            .json(&json!({"responsibleId": OWNER_ID, "firstName": "Jane"})),
    )
    .await;
    assert_eq!(status, 200);
    let id = created["data"]["id"].as_i64().unwrap();
    let contact = format!("/crm/v1/contacts/{id}");

    let (status, note) = send(
        sp.req(Method::POST, &format!("{contact}/comments"))
            .json(&json!({"message": "Called"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(note["data"]["text"], "Called");
    assert!(note["data"].get("message").is_none());
    let (status, got) = send(sp.req(Method::GET, &contact)).await;
    assert_eq!(status, 200);
    assert_eq!(got["data"]["comments"][0]["text"], "Called");

    let (status, upd) = send(
        sp.req(Method::PUT, &contact)
            .json(&json!({"responsibleId": OWNER_ID, "lastName": "Doe"})),
    )
    .await;
    assert_eq!(
        (status, upd["data"]["lastName"].clone()),
        (200, json!("Doe"))
    );

    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let (status, list) = send(
        sp.req(Method::POST, "/crm/v1/contacts/get-list")
            .json(&json!({"updateFrom": today, "limit": 10, "offset": 0})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["data"]["total"], 1);
    let (_, list) = send(
        sp.req(Method::POST, "/crm/v1/contacts/get-list")
            .json(&json!({"updateFrom": "2999-01-01"})),
    )
    .await;
    assert_eq!(list["data"], json!({"list": [], "total": 0}));

    let resp = sp.req(Method::DELETE, &contact).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert!(resp.bytes().await.unwrap().is_empty());
    let (status, err) = send(sp.req(Method::GET, &contact)).await;
    assert_eq!(
        (status, err),
        (
            404,
            json!({"data": {"code": 404, "message": "Record not found"}})
        )
    );
}

#[tokio::test]
async fn sendpulse_crm_tasks() {
    let sp = Sp::start(sp_config()).await;
    let old = sp
        .emu
        .insert_crm_task(json!({"name": "old", "updatedAt": "2020-01-01 00:00:00"}));
    let future = sp
        .emu
        .insert_crm_task(json!({"name": "later", "updatedAt": "2090-01-01 00:00:00"}));
    let (status, created) = send(
        sp.req(Method::POST, "/crm/v1/tasks")
            .json(&json!({"name": "Call Jane", "startAt": "2030-05-03 10:00", "priority": 3})),
    )
    .await;
    assert_eq!(status, 201);
    let id = created["data"]["id"].as_i64().unwrap();
    assert_eq!(created["data"]["startAt"], "2030-05-03 10:00");

    let (status, err) = send(
        sp.req(Method::POST, "/crm/v1/tasks")
            .json(&json!({"startAt": "tomorrow"})),
    )
    .await;
    assert_eq!(status, 422, "{err}");

    let (status, list) = send(
        sp.req(Method::POST, "/crm/v1/tasks/list")
            .json(&json!({"updatedAtFrom": "2021-01-01 00:00"})),
    )
    .await;
    assert_eq!(status, 200);
    let ids: Vec<i64> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![id, future]);
    assert!(!ids.contains(&old));

    let (status, comment) = send(
        sp.req(Method::POST, &format!("/crm/v1/tasks/{id}/comments"))
            .json(&json!({"message": "Left voicemail"})),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(comment["data"]["body"], "Left voicemail");
    assert_eq!(comment["data"]["taskId"], id);

    assert!(sp.emu.update_crm_task(old, json!({"name": "old, edited"})));
    let (_, list) = send(
        sp.req(Method::POST, "/crm/v1/tasks/list")
            .json(&json!({"updatedAtFrom": "2021-01-01 00:00"})),
    )
    .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 3);

    let resp = sp
        .req(Method::DELETE, &format!("/crm/v1/tasks/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(
        send(sp.req(Method::GET, &format!("/crm/v1/tasks/{id}")))
            .await
            .0,
        404
    );
    assert_eq!(sp.emu.crm_tasks().len(), 2);
}

// ------------------------------------------------------ limits and faults

#[tokio::test]
async fn sendpulse_rate_limit_answers_429() {
    let sp = Sp::start(sp_config()).await;
    sp.emu
        .control()
        .set_rate_limit(Some((3, Duration::from_secs(60))));
    for _ in 0..3 {
        assert_eq!(send(sp.req(Method::GET, "/addressbooks")).await.0, 200);
    }
    let (status, body) = send(sp.req(Method::GET, "/addressbooks")).await;
    assert_eq!(
        (status, body),
        (
            429,
            json!({"message": "More than 10 requests per second", "error_code": 2020202020})
        )
    );
    sp.emu.control().set_rate_limit(None);
    assert_eq!(send(sp.req(Method::GET, "/addressbooks")).await.0, 200);
}

#[tokio::test]
async fn injected_faults() {
    let g = Ghl::start(GhlConfig::default()).await;
    let list = format!("/contacts/?locationId={}", g.loc());
    g.emu.control().inject(
        Fault::Status(
            500,
            json!({"statusCode": 500, "message": "Internal server error"}),
        ),
        1,
    );
    assert_eq!(send(g.v2(Method::GET, &list)).await.0, 500);
    assert_eq!(send(g.v2(Method::GET, &list)).await.0, 200);

    g.emu
        .control()
        .inject(Fault::RateLimited(Some("7".into())), 1);
    let resp = g.v2(Method::GET, &list).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers()["retry-after"], "7");

    g.emu.control().inject(Fault::Reset, 1);
    let failed = match g.v2(Method::GET, &list).send().await {
        Err(_) => true,
        Ok(resp) => resp.bytes().await.is_err(),
    };
    assert!(failed, "a reset must surface as a client error");
    assert_eq!(send(g.v2(Method::GET, &list)).await.0, 200);

    // HighLevel's rate-limit headers when a limit is set.
    g.emu
        .control()
        .set_rate_limit(Some((100, Duration::from_secs(10))));
    let resp = g.v2(Method::GET, &list).send().await.unwrap();
    assert_eq!(resp.headers()["x-ratelimit-max"], "100");
    assert_eq!(resp.headers()["x-ratelimit-remaining"], "99");
    assert!(g.emu.requests().len() >= 6);
}

// ------------------------------------------- every other catalog route

#[tokio::test]
async fn ghl_remaining_routes() {
    let g = Ghl::start(GhlConfig::default()).await;
    let id = g.create(json!({"email": "r@example.com"})).await;
    let c = format!("/contacts/{id}");

    let (status, f) = send(
        g.v2(Method::POST, &format!("{c}/followers"))
            .json(&json!({"followers": ["u1", "u2"]})),
    )
    .await;
    assert_eq!(status, 201, "{f}");
    let (status, f) = send(
        g.v2(Method::DELETE, &format!("{c}/followers"))
            .json(&json!({"followers": ["u1"]})),
    )
    .await;
    assert_eq!(
        (status, f),
        (
            200,
            json!({"followers": ["u2"], "followersRemoved": ["u1"]})
        )
    );
    assert_eq!(
        send(g.v2(Method::POST, &format!("{c}/campaigns/c1")))
            .await
            .0,
        201
    );
    assert_eq!(
        send(g.v2(Method::DELETE, &format!("{c}/campaigns/c1"))).await,
        (200, json!({"succeded": true}))
    );
    assert!(g.emu.campaigns(&id).is_empty());
    let wf = g
        .v2(Method::POST, &format!("{c}/workflow/w1"))
        .json(&json!({"eventStartTime": "2030-06-23T03:30:00+01:00"}));
    assert_eq!(send(wf).await.0, 200);
    assert_eq!(
        send(g.v2(Method::DELETE, &format!("{c}/workflow/w1"))).await,
        (200, json!({"succeded": true}))
    );
    assert!(g.emu.workflows(&id).is_empty());
    let (status, err) = send(g.v2(Method::POST, &format!("{c}/tags")).json(&json!({}))).await;
    assert_eq!(
        (status, err["message"].clone()),
        (422, json!(["tags should not be empty"]))
    );
    let (status, err) = send(
        g.v2(Method::POST, "/contacts/nosuchcontact0000000/tags")
            .json(&json!({"tags": ["a"]})),
    )
    .await;
    assert_eq!(
        (status, err["message"].clone()),
        (400, json!("Contact not found"))
    );
    let unknown = g.v2(Method::GET, "/no/such/route");
    assert_eq!(send(unknown).await.0, 404);

    // v1 routes on the same contact.
    let v1c = format!("/v1/contacts/{id}");
    let (status, upd) = send(
        g.v1(Method::PUT, &v1c)
            .json(&json!({"firstName": "Ray", "tags": ["t"]})),
    )
    .await;
    assert_eq!(
        (
            status,
            upd["contact"]["firstName"].clone(),
            upd["contact"]["tags"].clone()
        ),
        (200, json!("Ray"), json!(["t"]))
    );
    let (status, list) = send(g.v1(Method::GET, "/v1/contacts/?limit=1&order=asc")).await;
    assert_eq!(status, 200);
    assert_eq!(list["contacts"][0]["id"], json!(id));
    assert_eq!(list["meta"]["nextPageUrl"], Value::Null);
    assert_eq!(
        send(g.v1(Method::GET, "/v1/contacts?limit=500")).await.0,
        422
    );

    let (_, task) = send(
        g.v1(Method::POST, &format!("{v1c}/tasks"))
            .json(&json!({"title": "T", "dueDate": "2030-01-01T10:00:00Z"})),
    )
    .await;
    let tid = task["id"].as_str().unwrap();
    let (status, got) = send(g.v1(Method::GET, &format!("{v1c}/tasks/{tid}"))).await;
    assert_eq!((status, got), (200, task.clone()));
    let (status, upd) =
        send(g.v1(Method::PUT, &format!("{v1c}/tasks/{tid}")).json(
            &json!({"title": "T2", "dueDate": "2030-01-02T10:00:00Z", "status": "completed"}),
        ))
        .await;
    assert_eq!(
        (status, upd["title"].clone(), upd["isCompleted"].clone()),
        (200, json!("T2"), json!(true))
    );
    assert_eq!(
        send(
            g.v1(Method::PUT, &format!("{v1c}/tasks/{tid}"))
                .json(&json!({"title": "T3"}))
        )
        .await
        .0,
        422
    );

    let (_, note) = send(
        g.v1(Method::POST, &format!("{v1c}/notes"))
            .json(&json!({"body": "n1"})),
    )
    .await;
    let nid = note["id"].as_str().unwrap();
    assert_eq!(
        send(g.v1(Method::GET, &format!("{v1c}/notes/{nid}"))).await,
        (200, note.clone())
    );
    let (status, upd) = send(
        g.v1(Method::PUT, &format!("{v1c}/notes/{nid}"))
            .json(&json!({"body": "n2"})),
    )
    .await;
    assert_eq!((status, upd["body"].clone()), (200, json!("n2")));
    let (_, notes) = send(g.v1(Method::GET, &format!("{v1c}/notes/"))).await;
    assert_eq!(notes["notes"].as_array().unwrap().len(), 1);
    assert_eq!(
        send(g.v1(Method::DELETE, &format!("{v1c}/notes/{nid}"))).await,
        (200, Value::Null)
    );
    assert_eq!(
        send(g.v1(Method::GET, &format!("{v1c}/notes/{nid}"))).await,
        (400, json!({"msg": "Note not found"}))
    );

    assert_eq!(
        send(g.v1(Method::GET, &format!("{v1c}/appointments/"))).await,
        (200, json!({"appointments": []}))
    );
    let (status, tags) = send(
        g.v1(Method::DELETE, &format!("{v1c}/tags/"))
            .json(&json!({"tags": ["t"]})),
    )
    .await;
    assert_eq!((status, tags), (200, json!({"tags": []})));
    assert_eq!(
        send(g.v1(Method::POST, &format!("{v1c}/campaigns/c9"))).await,
        (200, Value::Null)
    );
    assert_eq!(
        send(g.v1(Method::DELETE, &format!("{v1c}/campaigns/c9"))).await,
        (200, Value::Null)
    );
    assert_eq!(
        send(g.v1(Method::POST, &format!("{v1c}/campaigns/c8")))
            .await
            .0,
        200
    );
    assert_eq!(
        send(g.v1(Method::DELETE, &format!("{v1c}/campaigns/remove-all"))).await,
        (200, Value::Null)
    );
    assert!(g.emu.campaigns(&id).is_empty());
    assert_eq!(
        send(
            g.v1(Method::POST, &format!("{v1c}/workflow/w2"))
                .json(&json!({}))
        )
        .await,
        (200, Value::Null)
    );
    assert_eq!(g.emu.workflows(&id), vec!["w2"]);

    // Seeded contacts are listed by their dateAdded.
    let seeded = g
        .emu
        .insert_contact(json!({"firstName": "Old", "dateAdded": "2001-01-01T00:00:00.000Z"}));
    let (_, list) = send(g.v2(
        Method::GET,
        &format!("/contacts/?locationId={}&query=old", g.loc()),
    ))
    .await;
    assert_eq!(list["contacts"][0]["id"], json!(seeded));
    assert_eq!(list["meta"]["startAfter"], json!(978307200000i64));
}

#[tokio::test]
async fn sendpulse_remaining_routes() {
    let sp = Sp::start(sp_config()).await;
    assert_eq!(send(sp.req(Method::GET, "/user/info")).await.0, 200);
    let a = sp.emu.insert_book("A");
    let b = sp.emu.insert_book("B");
    let (status, page) = send(sp.req(Method::GET, "/addressbooks?limit=1&offset=1")).await;
    assert_eq!((status, page[0]["id"].clone()), (200, json!(b)));
    assert_eq!(
        send(sp.req(Method::GET, "/addressbooks?limit=101")).await,
        (
            422,
            json!({"message": "Argument limit may not be greater than 100", "error_code": 422})
        )
    );
    assert_eq!(
        send(
            sp.req(Method::PUT, &format!("/addressbooks/{a}"))
                .json(&json!({"name": "A2"}))
        )
        .await,
        (200, json!({"result": true}))
    );
    assert_eq!(
        send(
            sp.req(Method::PUT, &format!("/addressbooks/{a}"))
                .json(&json!({"name": "B"}))
        )
        .await
        .1["error_code"],
        203
    );
    assert_eq!(sp.emu.books()[0]["name"], "A2");

    let emails = format!("/addressbooks/{a}/emails");
    let add = json!({"emails": [{"email": "x@example.com", "variables": {"city": "Kyiv", "Phone": "+380501234567"}}]});
    assert_eq!(send(sp.req(Method::POST, &emails).json(&add)).await.0, 200);
    let (status, found) = send(sp.req(
        Method::GET,
        &format!("/addressbooks/{a}/variables/city/Kyiv"),
    ))
    .await;
    assert_eq!(
        (status, found),
        (
            200,
            json!([{"email": "x@example.com", "status": 0, "status_explain": "New"}])
        )
    );
    assert_eq!(
        send(sp.req(Method::GET, &format!("/addressbooks/{a}/variables/nope/1")))
            .await
            .1["error_code"],
        299
    );
    let vars = json!({"email": "x@example.com", "variables": [{"name": "city", "value": "Lviv"}]});
    assert_eq!(
        send(
            sp.req(Method::POST, &format!("{emails}/variable"))
                .json(&vars)
        )
        .await,
        (200, json!({"result": true}))
    );
    assert_eq!(
        sp.emu.subscribers(a)[0]["variables"],
        json!({"city": "Lviv"})
    );
    assert_eq!(sp.emu.subscribers(a)[0]["phone"], "+380501234567");
    let missing = json!({"email": "nobody@example.com", "variables": []});
    assert_eq!(
        send(
            sp.req(Method::POST, &format!("{emails}/variable"))
                .json(&missing)
        )
        .await
        .1["error_code"],
        502
    );

    let (status, books) = send(sp.req(Method::GET, "/emails/x%40example.com")).await;
    assert_eq!((status, books[0]["book_id"].clone()), (200, json!(a)));
    let (status, details) = send(sp.req(Method::GET, "/emails/x@example.com/details")).await;
    assert_eq!(
        (status, details[0]["list_name"].clone()),
        (200, json!("A2"))
    );
    assert_eq!(
        send(sp.req(Method::DELETE, "/emails/x@example.com")).await,
        (200, json!({"result": true}))
    );
    assert_eq!(
        send(sp.req(Method::GET, "/emails/x@example.com")).await,
        (
            404,
            json!({"message": "Email address not found", "error_code": 502})
        )
    );

    // Double opt-in needs a known sender.
    let doi = json!({"emails": ["d@example.com"], "confirmation": "force", "sender_email": "who@example.com"});
    assert_eq!(
        send(sp.req(Method::POST, &emails).json(&doi)).await.1,
        json!({"message": "Sender not found", "error_code": 1003})
    );
    let doi = json!({"emails": ["d@example.com"], "confirmation": "force", "sender_email": "news@example.com"});
    assert_eq!(send(sp.req(Method::POST, &emails).json(&doi)).await.0, 200);
    assert_eq!(
        send(sp.req(Method::GET, &format!("{emails}/total?active=true")))
            .await
            .1,
        json!({"total": 0})
    );

    // CRM: users, boards, contacts with phones, emails, tags, notes.
    let (_, users) = send(sp.req(Method::GET, "/crm/v1/users")).await;
    assert_eq!(users["data"][0]["id"], OWNER_ID);
    let (_, boards) = send(sp.req(Method::GET, "/crm/v1/boards")).await;
    assert_eq!(boards["data"][0]["steps"].as_array().unwrap().len(), 3);
    let cid = sp.emu.insert_crm_contact(json!({"firstName": "Ann"}));
    let contact = format!("/crm/v1/contacts/{cid}");
    let (status, phone) = send(
        sp.req(Method::POST, &format!("{contact}/phones"))
            .json(&json!({"phone": "+380501112233"})),
    )
    .await;
    assert_eq!(
        (status, phone["data"]["isMain"].clone()),
        (200, json!(true))
    );
    let (status, added) = send(
        sp.req(Method::POST, &format!("{contact}/emails"))
            .json(&json!({"emails": [{"email": "ann@example.com", "isMain": true}]})),
    )
    .await;
    assert_eq!(
        (status, added["data"][0]["email"].clone()),
        (200, json!("ann@example.com"))
    );
    let (_, by_email) = send(
        sp.req(Method::POST, "/crm/v1/contacts/get-list-by-email")
            .json(&json!({"email": "ann@", "isEmailFullSearch": false})),
    )
    .await;
    assert_eq!(by_email["data"]["total"], 1);
    let (_, by_email) = send(
        sp.req(Method::POST, "/crm/v1/contacts/get-list-by-email")
            .json(&json!({"email": "ann@", "isEmailFullSearch": true})),
    )
    .await;
    assert_eq!(by_email["data"]["total"], 0);

    let (status, tag) = send(
        sp.req(Method::POST, "/crm/v1/contact-tags")
            .json(&json!({"name": "vip"})),
    )
    .await;
    assert_eq!(status, 200);
    let tag_id = tag["data"]["id"].as_i64().unwrap();
    let resp = sp
        .req(
            Method::POST,
            &format!("/crm/v1/contact-tags/{tag_id}/contact/{cid}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let (_, tags) = send(sp.req(Method::GET, "/crm/v1/contact-tags")).await;
    assert_eq!(tags["data"][0]["contactCount"], 1);
    let (_, got) = send(sp.req(Method::GET, &contact)).await;
    assert_eq!(got["data"]["tags"][0]["name"], "vip");
    let (_, tagged) = send(
        sp.req(Method::POST, "/crm/v1/contacts/get-list")
            .json(&json!({"tagIds": [tag_id]})),
    )
    .await;
    assert_eq!(tagged["data"]["total"], 1);
    let resp = sp
        .req(
            Method::DELETE,
            &format!("/crm/v1/contact-tags/{tag_id}/contact/{cid}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);

    let (_, note) = send(
        sp.req(Method::POST, &format!("{contact}/comments"))
            .json(&json!({"message": "a"})),
    )
    .await;
    let note_id = note["data"]["id"].as_i64().unwrap();
    let (status, upd) = send(
        sp.req(Method::PUT, &format!("{contact}/comments/{note_id}"))
            .json(&json!({"message": "b"})),
    )
    .await;
    assert_eq!((status, upd["data"]["text"].clone()), (200, json!("b")));
    let resp = sp
        .req(Method::DELETE, &format!("{contact}/comments/{note_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(sp.emu.crm_contacts()[0]["comments"], json!([]));

    // Tasks: link to the contact, move to Done.
    let (_, task) = send(
        sp.req(Method::POST, "/crm/v1/tasks")
            .json(&json!({"name": "T", "connections": {"contactIds": [cid]}})),
    )
    .await;
    let tid = task["data"]["id"].as_i64().unwrap();
    assert_eq!(task["data"]["contacts"], json!([cid]));
    let (_, got) = send(sp.req(Method::GET, &contact)).await;
    assert_eq!(got["data"]["tasks"], json!([tid]));
    let (status, upd) = send(
        sp.req(Method::PUT, &format!("/crm/v1/tasks/{tid}"))
            .json(&json!({"stepId": 3})),
    )
    .await;
    assert_eq!((status, upd["data"]["status"].clone()), (200, json!(2)));
    assert!(upd["data"]["endedAt"].is_string());
    let (_, done) = send(
        sp.req(Method::POST, "/crm/v1/tasks/list")
            .json(&json!({"status": 2})),
    )
    .await;
    assert_eq!(done["data"].as_array().unwrap().len(), 1);
    let other = sp.emu.insert_crm_task(json!({"name": "sub"}));
    let (status, linked) = send(
        sp.req(Method::POST, &format!("/crm/v1/tasks/{tid}/entity-attach"))
            .json(&json!({"connections": {"subTasksIds": [other], "dealIds": [5]}})),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(
        linked["data"],
        json!({"tasks": [], "deals": [5], "contacts": [cid], "subTasks": [other]})
    );
    let (status, _) = send(
        sp.req(Method::POST, &format!("/crm/v1/tasks/{tid}/entity-attach"))
            .json(&json!({"connections": {"contactIds": [1]}})),
    )
    .await;
    assert_eq!(status, 422);
}

#[tokio::test]
async fn highlevel_webhooks_share_one_client_and_its_kept_alive_connection() {
    // A receiver that keeps the peer address of each delivery.
    let peers = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::<std::net::SocketAddr>::new()));
    let sink = peers.clone();
    let app = axum::Router::new().route(
        "/hooks/ghl",
        axum::routing::post(
            move |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<
                std::net::SocketAddr,
            >| {
                let sink = sink.clone();
                async move {
                    sink.lock().await.push(peer);
                    "ok"
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/ghl", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
        .unwrap()
    });
    let g = Ghl::start(GhlConfig {
        webhook: Some(ghl::WebhookTarget {
            url,
            key: ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]),
        }),
        ..Default::default()
    })
    .await;
    let delivered = |n: usize| {
        let peers = peers.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while peers.lock().await.len() < n && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Time for the answered connection to go back to the pool.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    for email in ["one@example.com", "two@example.com"] {
        let (status, body) = send(
            g.v2(Method::POST, "/contacts/")
                .json(&json!({"locationId": g.loc(), "email": email})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        delivered(if email.starts_with("one") { 1 } else { 2 }).await;
    }
    let peers = peers.lock().await;
    assert_eq!(peers.len(), 2);
    assert_eq!(peers[0], peers[1], "each webhook opened its own connection");
}

#[tokio::test]
async fn highlevel_sends_signed_contact_webhooks_like_a_location_does() {
    use base64::Engine as _;
    use ed25519_dalek::Verifier;
    // A receiver that keeps each delivery's signature and raw body.
    let got = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::<(String, Vec<u8>)>::new()));
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/hooks/ghl",
        axum::routing::post(move |h: axum::http::HeaderMap, body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                let sig = h["x-ghl-signature"].to_str().unwrap().to_string();
                sink.lock().await.push((sig, body.to_vec()));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/ghl", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let g = Ghl::start(GhlConfig {
        webhook: Some(ghl::WebhookTarget {
            url,
            key: key.clone(),
        }),
        ..Default::default()
    })
    .await;
    let (status, body) = send(
        g.v2(Method::POST, "/contacts/")
            .json(&json!({"locationId": g.loc(), "email": "hook@example.com"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = body["contact"]["id"].as_str().unwrap().to_string();
    let (status, _) = send(
        g.v2(Method::PUT, &format!("/contacts/{id}"))
            .json(&json!({"firstName": "Hook"})),
    )
    .await;
    assert_eq!(status, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while got.lock().await.len() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = got.lock().await;
    assert_eq!(got.len(), 2);
    let types: Vec<String> = got
        .iter()
        .map(|(sig, raw)| {
            let sig = base64::engine::general_purpose::STANDARD
                .decode(sig)
                .unwrap();
            let sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
            key.verifying_key()
                .verify(raw, &sig)
                .expect("signed over the raw body");
            let v: Value = serde_json::from_slice(raw).unwrap();
            assert_eq!(v["id"], json!(id));
            assert_eq!(v["locationId"], json!(g.loc()));
            assert!(v["webhookId"].as_str().is_some_and(|w| !w.is_empty()));
            assert!(v["timestamp"].as_str().is_some());
            v["type"].as_str().unwrap().to_string()
        })
        .collect();
    let mut sorted = types.clone();
    sorted.sort();
    assert_eq!(sorted, ["ContactCreate", "ContactUpdate"]);
    // The connection's `webhook_public_key` form of the same key.
    assert!(!ghl::WebhookTarget {
        url: String::new(),
        key
    }
    .public_key()
    .is_empty());
}

#[tokio::test]
async fn sendpulse_crm_attributes_tags_and_external_ids() {
    let sp = Sp::start(sp_config()).await;
    let cid = sp
        .emu
        .insert_crm_contact(json!({"firstName": "Ann", "externalContactId": "crm-42"}));
    let contact = format!("/crm/v1/contacts/{cid}");
    let (status, found) = send(sp.req(Method::GET, "/crm/v1/contacts/external/crm-42")).await;
    assert_eq!((status, found["data"]["id"].clone()), (200, json!(cid)));
    assert_eq!(
        send(sp.req(Method::GET, "/crm/v1/contacts/external/nobody"))
            .await
            .0,
        404
    );

    let (status, def) = send(
        sp.req(Method::POST, "/crm/v1/contacts/attributes")
            .json(&json!({"name": "Colour"})),
    )
    .await;
    assert_eq!((status, def["data"]["type"].clone()), (200, json!(1)));
    let attr = def["data"]["id"].as_i64().unwrap();
    // Names are unique; a value needs a known attribute.
    assert_eq!(
        send(
            sp.req(Method::POST, "/crm/v1/contacts/attributes")
                .json(&json!({"name": "Colour"}))
        )
        .await
        .0,
        422
    );
    let (status, v) = send(
        sp.req(Method::POST, &format!("{contact}/attributes"))
            .json(&json!({"attributeId": attr, "value": "teal"})),
    )
    .await;
    assert_eq!((status, v["data"]["value"].clone()), (200, json!("teal")));
    assert_eq!(v["data"]["name"], "Colour");
    // A batch with one bad item writes nothing.
    let (status, _) = send(
        sp.req(Method::POST, &format!("{contact}/attributes/batch"))
            .json(&json!({"attributes": [{"attributeId": attr, "value": "red"}, {"attributeId": 999_999, "value": "x"}]})),
    )
    .await;
    assert_eq!(status, 422);
    let (_, got) = send(sp.req(Method::GET, &contact)).await;
    assert_eq!(got["data"]["attributes"][0]["value"], "teal");
    let (status, _) = send(
        sp.req(Method::PUT, &format!("/crm/v1/contacts/attributes/{attr}"))
            .json(&json!({"name": "Shade"})),
    )
    .await;
    assert_eq!(status, 200);
    let (_, values) = send(sp.req(Method::GET, &format!("{contact}/attributes"))).await;
    assert_eq!(values["data"][0]["name"], "Shade");
    // Deleting the definition takes its values with it.
    let resp = sp
        .req(
            Method::DELETE,
            &format!("/crm/v1/contacts/attributes/{attr}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let (_, values) = send(sp.req(Method::GET, &format!("{contact}/attributes"))).await;
    assert_eq!(values["data"], json!([]));

    let (_, tag) = send(
        sp.req(Method::POST, "/crm/v1/contact-tags")
            .json(&json!({"name": "vip"})),
    )
    .await;
    let tag_id = tag["data"]["id"].as_i64().unwrap();
    sp.req(
        Method::POST,
        &format!("/crm/v1/contact-tags/{tag_id}/contact/{cid}"),
    )
    .send()
    .await
    .unwrap();
    let (status, renamed) = send(
        sp.req(Method::PUT, &format!("/crm/v1/contact-tags/{tag_id}"))
            .json(&json!({"name": "gold"})),
    )
    .await;
    assert_eq!(
        (status, renamed["data"]["contactCount"].clone()),
        (200, json!(1))
    );
    let resp = sp
        .req(Method::DELETE, &format!("/crm/v1/contact-tags/{tag_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let (_, got) = send(sp.req(Method::GET, &contact)).await;
    assert_eq!(got["data"]["tags"], json!([]));
}

#[tokio::test]
async fn sendpulse_crm_phone_email_and_task_link_edits() {
    let sp = Sp::start(sp_config()).await;
    let cid = sp.emu.insert_crm_contact(json!({"firstName": "Ann"}));
    let contact = format!("/crm/v1/contacts/{cid}");
    let (_, added) = send(
        sp.req(Method::POST, &format!("{contact}/emails"))
            .json(&json!({"emails": [{"email": "a@example.com"}, {"email": "b@example.com"}]})),
    )
    .await;
    let (a, b) = (
        added["data"][0]["id"].as_i64().unwrap(),
        added["data"][1]["id"].as_i64().unwrap(),
    );
    // Making b main takes it from a.
    let (status, upd) = send(
        sp.req(Method::PUT, &format!("{contact}/emails/{b}"))
            .json(&json!({"email": "b2@example.com", "isMain": true})),
    )
    .await;
    assert_eq!((status, upd["data"]["isMain"].clone()), (200, json!(true)));
    let (_, got) = send(sp.req(Method::GET, &contact)).await;
    assert_eq!(got["data"]["emails"][0]["isMain"], false);
    // Deleting the main one makes the first left main.
    let resp = sp
        .req(Method::DELETE, &format!("{contact}/emails/{b}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let (_, got) = send(sp.req(Method::GET, &contact)).await;
    assert_eq!(
        got["data"]["emails"],
        json!([{"id": a, "email": "a@example.com", "isMain": true}])
    );
    assert_eq!(
        send(
            sp.req(Method::PUT, &format!("{contact}/emails/{a}"))
                .json(&json!({"email": "not an email"}))
        )
        .await
        .0,
        422
    );

    let (_, phone) = send(
        sp.req(Method::POST, &format!("{contact}/phones"))
            .json(&json!({"phone": "+380501234567"})),
    )
    .await;
    let p = phone["data"]["id"].as_i64().unwrap();
    let (status, upd) = send(
        sp.req(Method::PUT, &format!("{contact}/phones/{p}"))
            .json(&json!({"phone": "+380509999999"})),
    )
    .await;
    assert_eq!(
        (status, upd["data"]["phone"].clone()),
        (200, json!("+380509999999"))
    );
    let resp = sp
        .req(Method::DELETE, &format!("{contact}/phones/{p}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(
        sp.req(Method::DELETE, &format!("{contact}/phones/{p}"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        404
    );

    let tid = sp
        .emu
        .insert_crm_task(json!({"name": "Call Ann", "contacts": [cid]}));
    let (_, c) = send(
        sp.req(Method::POST, &format!("/crm/v1/tasks/{tid}/comments"))
            .json(&json!({"message": "first"})),
    )
    .await;
    let comment = c["data"]["id"].as_i64().unwrap();
    let (status, upd) = send(
        sp.req(
            Method::PUT,
            &format!("/crm/v1/tasks/{tid}/comments/{comment}"),
        )
        .json(&json!({"message": "second"})),
    )
    .await;
    assert_eq!(
        (status, upd["data"]["body"].clone()),
        (200, json!("second"))
    );
    let resp = sp
        .req(
            Method::DELETE,
            &format!("/crm/v1/task-contacts/{tid}/contact/{cid}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let (_, got) = send(sp.req(Method::GET, &contact)).await;
    assert_eq!(got["data"]["tasks"], json!([]));
}

#[tokio::test]
async fn sendpulse_webhook_management_keeps_one_row_per_action() {
    let sp = Sp::start(sp_config()).await;
    let (status, _) = send(
        sp.req(Method::POST, "/v2/email-service/webhook/")
            .json(&json!({"url": "https://hooks.example.com/a", "actions": ["open", "nonsense"]})),
    )
    .await;
    assert_eq!(status, 422);
    let (status, made) = send(
        sp.req(Method::POST, "/v2/email-service/webhook/")
            .json(&json!({"url": "https://hooks.example.com/a", "actions": ["open", "spam"]})),
    )
    .await;
    assert_eq!(status, 200);
    let rows = made["data"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0]["action"].clone(), rows[1]["action"].clone()),
        (json!("open"), json!("spam"))
    );
    let id = rows[0]["id"].as_i64().unwrap();
    let path = format!("/v2/email-service/webhook/{id}");
    let (status, done) = send(
        sp.req(Method::PUT, &path)
            .json(&json!({"url": "https://hooks.example.com/b"})),
    )
    .await;
    assert_eq!(
        (status, done),
        (200, json!({"success": true, "data": [true]}))
    );
    let (_, got) = send(sp.req(Method::GET, &path)).await;
    assert_eq!(got["data"]["url"], "https://hooks.example.com/b");
    assert_eq!(send(sp.req(Method::DELETE, &path)).await.0, 200);
    assert_eq!(send(sp.req(Method::GET, &path)).await.0, 404);
    let (_, list) = send(sp.req(Method::GET, "/v2/email-service/webhook")).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn sendpulse_books_of_several_emails_and_campaign_stats() {
    let sp = Sp::start(sp_config()).await;
    let book = sp.emu.insert_book("News");
    let (status, _) = send(
        sp.req(Method::POST, &format!("/addressbooks/{book}/emails"))
            .json(&json!({"emails": ["ann@example.com"]})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, many) = send(
        sp.req(Method::POST, "/emails")
            .json(&json!({"emails": ["ann@example.com", "nobody@example.com"]})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(many["ann@example.com"][0]["book_id"], json!(book));
    assert_eq!(many["nobody@example.com"], json!([]));
    let (status, stats) = send(sp.req(Method::GET, "/emails/ann@example.com/campaigns")).await;
    assert_eq!(status, 200);
    assert_eq!(
        stats["addressbooks"],
        json!([{"id": book, "address_book_name": "News"}])
    );
    assert_eq!(stats["blacklist"], false);
    assert_eq!(
        send(sp.req(Method::GET, "/emails/nobody@example.com/campaigns"))
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn sendpulse_blacklist_takes_base64_lists_and_shows_in_campaign_stats() {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let sp = Sp::start(sp_config()).await;
    let book = sp.emu.insert_book("News");
    send(
        sp.req(Method::POST, &format!("/addressbooks/{book}/emails"))
            .json(&json!({"emails": ["ann@example.com", "bob@example.com"]})),
    )
    .await;
    assert_eq!(
        send(sp.req(Method::GET, "/blacklist")).await,
        (200, json!([]))
    );
    let (status, done) = send(
        sp.req(Method::POST, "/blacklist")
            .json(&json!({"emails": b64("Ann@example.com, bob@example.com"), "comment": "asked"})),
    )
    .await;
    assert_eq!((status, done), (200, json!({"result": true})));
    assert_eq!(
        send(sp.req(Method::GET, "/blacklist")).await,
        (200, json!(["Ann@example.com", "bob@example.com"]))
    );
    // The list is matched without case; its campaign stats say so.
    let (_, stats) = send(sp.req(Method::GET, "/emails/ann@example.com/campaigns")).await;
    assert_eq!(stats["blacklist"], true);
    let (status, done) = send(
        sp.req(Method::DELETE, "/blacklist")
            .json(&json!({"emails": b64("ann@example.com")})),
    )
    .await;
    assert_eq!((status, done), (200, json!({"result": true})));
    assert_eq!(sp.emu.blacklist(), vec!["bob@example.com".to_string()]);
    let (_, stats) = send(sp.req(Method::GET, "/emails/ann@example.com/campaigns")).await;
    assert_eq!(stats["blacklist"], false);
    // A plain list (not base64), a bad address, nothing at all.
    for (body, want) in [
        (
            json!({"emails": "ann@example.com"}),
            json!({"message": "Argument emails must be the base64 of a comma-separated list", "error_code": 422}),
        ),
        (
            json!({"emails": ["ann@example.com"]}),
            json!({"message": "Argument emails must be string", "error_code": 422}),
        ),
        (
            json!({"emails": b64("ann@example.com,not-an-email")}),
            json!({"message": "Email syntax error: not-an-email", "error_code": 906}),
        ),
        (
            json!({"emails": b64(" , ")}),
            json!({"message": "No emails", "error_code": 303}),
        ),
        (
            json!({}),
            json!({"message": "Argument emails missing", "error_code": 422}),
        ),
    ] {
        assert_eq!(
            send(sp.req(Method::POST, "/blacklist").json(&body)).await,
            (422, want),
            "{body}"
        );
    }
}

#[tokio::test]
async fn sendpulse_subscriber_phone_change() {
    let sp = Sp::start(sp_config()).await;
    let book = sp.emu.insert_book("News");
    send(
        sp.req(Method::POST, &format!("/addressbooks/{book}/emails"))
            .json(&json!({"emails": ["ann@example.com"]})),
    )
    .await;
    let put = |book: i64, body: Value| {
        sp.req(Method::PUT, &format!("/addressbooks/{book}/phone"))
            .json(&body)
    };
    let (status, done) = send(put(
        book,
        json!({"email": "ANN@example.com", "phone": "+380 50 123-45-67"}),
    ))
    .await;
    assert_eq!((status, done), (200, json!({"result": true})));
    let (_, sub) = send(sp.req(
        Method::GET,
        &format!("/addressbooks/{book}/emails/ann@example.com"),
    ))
    .await;
    assert_eq!(sub["phone"], "+380 50 123-45-67");
    for (book, body, want) in [
        (
            book,
            json!({"email": "ann@example.com", "phone": "call me"}),
            (
                422,
                json!({"message": "Phone is not valid", "error_code": 422}),
            ),
        ),
        (
            book,
            json!({"email": "nope", "phone": "+380501234567"}),
            (
                422,
                json!({"message": "Email is not valid", "error_code": 422}),
            ),
        ),
        (
            book,
            json!({"email": "bob@example.com", "phone": "+380501234567"}),
            (
                422,
                json!({"message": "Email address not found", "error_code": 502}),
            ),
        ),
        (
            book,
            json!({"email": "ann@example.com"}),
            (
                422,
                json!({"message": "Argument phone missing", "error_code": 422}),
            ),
        ),
        (
            book + 1,
            json!({"email": "ann@example.com", "phone": "+380501234567"}),
            (404, json!({"message": "Book not found", "error_code": 213})),
        ),
    ] {
        assert_eq!(send(put(book, body.clone())).await, want, "{body}");
    }
}

#[tokio::test]
async fn sendpulse_crm_messengers_and_contact_deals() {
    let sp = Sp::start(sp_config()).await;
    let cid = sp.emu.insert_crm_contact(json!({"firstName": "Ann"}));
    let contact = format!("/crm/v1/contacts/{cid}");
    let add = |body: Value| {
        sp.req(Method::POST, &format!("{contact}/messengers"))
            .json(&body)
    };
    let (status, tg) = send(add(
        json!({"typeId": 1, "login": "ann", "isMainChatbot": true}),
    ))
    .await;
    assert_eq!(status, 200, "{tg}");
    let tg_id = tg["data"]["id"].as_i64().unwrap();
    assert_eq!(
        tg["data"],
        json!({"id": tg_id, "typeId": 1, "login": "ann", "botId": null, "contactId": null,
               "status": 1, "chatbotUrl": null, "isMainChatbot": true})
    );
    let (_, wa) = send(add(json!({"typeId": 5, "login": "+380501234567"}))).await;
    let wa_id = wa["data"]["id"].as_i64().unwrap();
    assert_eq!(wa["data"]["isMainChatbot"], false);
    // Making WhatsApp the main chatbot takes it from Telegram.
    let (status, upd) = send(
        sp.req(Method::PUT, &format!("{contact}/messengers/{wa_id}"))
            .json(&json!({"typeId": 5, "login": "+380509999999", "isMainChatbot": true})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(upd["data"]["login"], "+380509999999");
    let (_, got) = send(sp.req(Method::GET, &contact)).await;
    let main: Vec<bool> = got["data"]["messengers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["isMainChatbot"] == true)
        .collect();
    assert_eq!(main, vec![false, true]);
    // `typeId` and `login` are required on edits too; types are the five.
    for (body, field) in [
        (json!({"login": "ann"}), "typeId"),
        (json!({"typeId": 3, "login": "ann"}), "typeId"),
        (json!({"typeId": 1, "login": " "}), "login"),
    ] {
        let (status, e) = send(
            sp.req(Method::PUT, &format!("{contact}/messengers/{tg_id}"))
                .json(&body),
        )
        .await;
        assert_eq!(status, 422, "{body}");
        assert!(e["errors"].get(field).is_some(), "{body}: {e}");
    }
    let del = |id: i64| sp.req(Method::DELETE, &format!("{contact}/messengers/{id}"));
    assert_eq!(del(tg_id).send().await.unwrap().status().as_u16(), 204);
    assert_eq!(del(tg_id).send().await.unwrap().status().as_u16(), 404);
    let (_, got) = send(sp.req(Method::GET, &contact)).await;
    assert_eq!(got["data"]["messengers"].as_array().unwrap().len(), 1);

    // Deals: the list envelope with `meta`, and the contact's count.
    let (status, none) = send(sp.req(Method::GET, &format!("{contact}/deals"))).await;
    assert_eq!(
        (status, none),
        (200, json!({"data": [], "meta": {"total": 0}}))
    );
    let other = sp.emu.insert_crm_contact(json!({"firstName": "Bob"}));
    let deal = sp
        .emu
        .insert_crm_deal(&[cid, other], json!({"name": "Pricing", "price": 1200}));
    sp.emu.insert_crm_deal(&[other], json!({}));
    let (status, deals) = send(sp.req(Method::GET, &format!("{contact}/deals"))).await;
    assert_eq!(status, 200);
    assert_eq!(deals["meta"], json!({"total": 1}));
    assert_eq!(
        (
            deals["data"][0]["id"].clone(),
            deals["data"][0]["name"].clone(),
            deals["data"][0]["pipelineId"].clone()
        ),
        (json!(deal), json!("Pricing"), json!(1))
    );
    let (_, got) = send(sp.req(Method::GET, &format!("/crm/v1/contacts/{other}"))).await;
    assert_eq!(got["data"]["dealsQty"], 2);
    assert_eq!(
        send(sp.req(Method::GET, "/crm/v1/contacts/999/deals")).await,
        (
            404,
            json!({"data": {"code": 404, "message": "Record not found"}})
        )
    );
}

#[tokio::test]
async fn sendpulse_crm_history_records_changes() {
    let sp = Sp::start(sp_config()).await;
    let (_, c) = send(sp.req(Method::POST, "/crm/v1/contacts/create").json(
        &json!({"responsibleId": patchbay::emulator::sendpulse::OWNER_ID, "firstName": "Ann"}),
    ))
    .await;
    let cid = c["data"]["id"].as_i64().unwrap();
    send(
        sp.req(Method::POST, &format!("/crm/v1/contacts/{cid}/phones"))
            .json(&json!({"phone": "+380501234567"})),
    )
    .await;
    let (status, h) = send(sp.req(Method::GET, &format!("/crm/v1/contacts/{cid}/history"))).await;
    assert_eq!(status, 200);
    let actions: Vec<&str> = h["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(actions, ["created", "phone_added"]);
    let (_, t) = send(sp.req(Method::POST, "/crm/v1/tasks").json(
        &json!({"name": "Call Ann", "responsibleId": patchbay::emulator::sendpulse::OWNER_ID}),
    ))
    .await;
    let tid = t["data"]["id"].as_i64().unwrap();
    send(
        sp.req(Method::POST, &format!("/crm/v1/tasks/{tid}/comments"))
            .json(&json!({"message": "hi"})),
    )
    .await;
    let (_, h) = send(sp.req(Method::GET, &format!("/crm/v1/tasks/{tid}/history"))).await;
    assert_eq!(h["data"].as_array().map(Vec::len), Some(2), "{h}");
    assert_eq!(
        send(sp.req(Method::GET, "/crm/v1/tasks/999999/history"))
            .await
            .0,
        404
    );
}
