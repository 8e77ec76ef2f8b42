//! Dynamic redirects as marketers and scanners use them: links made, changed, rolled back,
//! deleted and restored through the admin API, and `/r/{key}` following the policy of the
//! version that is in effect. On the embedded store, and on PostgreSQL with Redis where a
//! second process must see a change.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use chrono::Utc;
use reqwest::Method;
use secrecy::SecretString;
use serde_json::{Value, json};

use qrpool::Parts;
use records::Tenant;
use tests::{Backends, TestApp, TestDatabase, distributed_settings, embedded_settings, unique};

const SIGNING_SECRET: &str = "a signing secret of thirty-two bytes or more";

fn with_links(mut settings: config::Settings) -> config::Settings {
    settings.redirect.allowed_hosts = BTreeMap::from([(
        "default".to_owned(),
        vec!["shop.example".to_owned(), "*.promo.example".to_owned()],
    )]);
    settings.redirect.signing_secret = Some(SecretString::from(SIGNING_SECRET));
    settings.scans.country_header = Some("x-country".to_owned());
    settings
}

/// A client that shows redirects instead of following them, as a test of them needs.
fn scanner() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn call(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> reqwest::Response {
    let mut request = app.client.request(method, app.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

async fn json_of(response: reqwest::Response, status: u16) -> Value {
    let actual = response.status().as_u16();
    let body = response.text().await.unwrap();
    assert_eq!(actual, status, "{body}");
    serde_json::from_str(&body).unwrap()
}

async fn create(app: &TestApp, body: Value) -> Value {
    json_of(call(app, Method::POST, "/v1/links", Some(body)).await, 201).await
}

/// Where `/r/{key}` sends a scanner with these headers: (status, location).
async fn scan(app: &TestApp, key: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut request = scanner().get(app.url(&format!("/r/{key}")));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let location = response
        .headers()
        .get("location")
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (response.status().as_u16(), location)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_follows_its_versions_and_keeps_every_change_on_record() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(with_links(embedded_settings(dir.path())), Parts::ALL).await;

    let link = create(
        &app,
        json!({"target": {"destination": "https://shop.example/a"}, "note": "launch"}),
    )
    .await;
    let key = link["key"].as_str().unwrap().to_owned();
    assert_eq!(key.len(), 10);
    assert_eq!(link["url"], app.url(&format!("/r/{key}")));
    assert_eq!(
        (link["version"].clone(), link["serving_version"].clone()),
        (json!(1), json!(1))
    );

    let response = scanner()
        .get(app.url(&format!("/r/{key}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
    assert_eq!(response.headers()["location"], "https://shop.example/a");
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert!(
        response.headers().get("set-cookie").is_none(),
        "no split, no cookie"
    );

    let path = format!("/v1/links/{key}");
    let changed = call(
        &app,
        Method::PATCH,
        &path,
        Some(json!({"target": {"destination": "https://shop.example/b"}, "base_version": 1})),
    )
    .await;
    assert_eq!(json_of(changed, 200).await["version"], 2);
    assert_eq!(
        scan(&app, &key, &[]).await,
        (302, "https://shop.example/b".into())
    );

    let stale = call(
        &app,
        Method::PATCH,
        &path,
        Some(json!({"target": {"destination": "https://shop.example/c"}, "base_version": 1})),
    )
    .await;
    assert_eq!(stale.status(), 409, "an edit of an old version is refused");
    assert_eq!(scan(&app, &key, &[]).await.1, "https://shop.example/b");

    let rolled = call(
        &app,
        Method::POST,
        &format!("{path}/rollback"),
        Some(json!({"version": 1})),
    )
    .await;
    assert_eq!(json_of(rolled, 200).await["version"], 3);
    assert_eq!(scan(&app, &key, &[]).await.1, "https://shop.example/a");

    let status = call(&app, Method::PATCH, &path, Some(json!({"status": 307}))).await;
    assert_eq!(
        json_of(status, 200).await["version"],
        3,
        "a status change is no new version"
    );
    assert_eq!(scan(&app, &key, &[]).await.0, 307);

    let deleted = call(&app, Method::DELETE, &path, None).await;
    assert!(json_of(deleted, 200).await["deleted_at"].is_string());
    let gone = scanner()
        .get(app.url(&format!("/r/{key}")))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 410);
    assert!(
        gone.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(gone.text().await.unwrap().contains("no longer active"));
    let edit_deleted = call(
        &app,
        Method::PATCH,
        &path,
        Some(json!({"target": {"destination": "https://shop.example/d"}})),
    )
    .await;
    assert_eq!(
        edit_deleted.status(),
        409,
        "a deleted link is restored before it is changed"
    );
    let restored = call(&app, Method::POST, &format!("{path}/restore"), None).await;
    assert_eq!(restored.status(), 200);
    assert_eq!(
        scan(&app, &key, &[]).await,
        (307, "https://shop.example/a".into())
    );

    let versions = json_of(
        call(&app, Method::GET, &format!("{path}/versions"), None).await,
        200,
    )
    .await;
    let destinations: Vec<&str> = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["target"]["destination"].as_str().unwrap())
        .collect();
    assert_eq!(
        destinations,
        [
            "https://shop.example/a",
            "https://shop.example/b",
            "https://shop.example/a"
        ]
    );
    assert_eq!(versions["versions"][0]["note"], "launch");
    assert_eq!(versions["versions"][2]["note"], "rollback to version 1");
    assert_eq!(versions["next_after"], Value::Null);
    // A page at a time: versions are numbered without gaps, `next_after` names the next page.
    let first_page = json_of(
        call(&app, Method::GET, &format!("{path}/versions?limit=2"), None).await,
        200,
    )
    .await;
    let numbers = |page: &Value| -> Vec<u64> {
        page["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["version"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(numbers(&first_page), [1, 2]);
    assert_eq!(first_page["next_after"], 2);
    let last_page = json_of(
        call(
            &app,
            Method::GET,
            &format!("{path}/versions?after=2&limit=2"),
            None,
        )
        .await,
        200,
    )
    .await;
    assert_eq!(numbers(&last_page), [3]);
    assert_eq!(last_page["next_after"], Value::Null);
    for bad in ["limit=0", "limit=1001", "after=-1", "after=x", "page=2"] {
        let refused = call(&app, Method::GET, &format!("{path}/versions?{bad}"), None).await;
        assert_eq!(refused.status(), 422, "{bad}");
    }

    let audit = json_of(
        call(&app, Method::GET, &format!("{path}/audit"), None).await,
        200,
    )
    .await;
    let actions: Vec<&str> = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "create", "update", "rollback", "update", "delete", "restore"
        ]
    );
    let key_id = app.key.as_ref().unwrap().split('_').nth(1).unwrap();
    assert!(
        audit["audit"]
            .as_array()
            .unwrap()
            .iter()
            .all(|entry| entry["actor"] == key_id),
        "every change names the API key that made it: {audit}"
    );
    assert_eq!(audit["audit"][3]["detail"]["status"], 307);
    let seqs = |page: &Value| -> Vec<u64> {
        page["audit"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| entry["seq"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(seqs(&audit), [1, 2, 3, 4, 5, 6]);
    assert_eq!(audit["next_after"], Value::Null);
    // A page at a time, either way: the latest first for "what happened last".
    let audit_page = |query: &str| {
        let app = &app;
        let path = format!("{path}/audit?{query}");
        async move { json_of(call(app, Method::GET, &path, None).await, 200).await }
    };
    let newest = audit_page("order=newest&limit=4").await;
    assert_eq!(seqs(&newest), [6, 5, 4, 3]);
    assert_eq!(newest["audit"][0]["action"], "restore");
    assert_eq!(newest["next_after"], 3);
    let older = audit_page("order=newest&after=3&limit=4").await;
    assert_eq!(seqs(&older), [2, 1]);
    assert_eq!(older["next_after"], Value::Null);
    let oldest = audit_page("after=2&limit=2").await;
    assert_eq!(seqs(&oldest), [3, 4]);
    assert_eq!(oldest["next_after"], 4);
    assert_eq!(seqs(&audit_page("order=oldest&after=4").await), [5, 6]);
    for bad in [
        "limit=0",
        "limit=1001",
        "after=-1",
        "order=latest",
        "page=2",
    ] {
        let refused = call(&app, Method::GET, &format!("{path}/audit?{bad}"), None).await;
        assert_eq!(refused.status(), 422, "{bad}");
    }

    let unknown = scanner()
        .get(app.url("/r/0000000000"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert!(unknown.text().await.unwrap().contains("lead anywhere"));
    assert_eq!(scan(&app, "not-a-key!", &[]).await.0, 404);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_link_sends_scanners_off_the_allow_list_unless_signed() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(with_links(embedded_settings(dir.path())), Parts::ALL).await;
    let problem = |response: reqwest::Response| async move {
        assert_eq!(response.status(), 422);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        response.json::<Value>().await.unwrap()
    };

    let refused = problem(
        call(
            &app,
            Method::POST,
            "/v1/links",
            Some(json!({"target": {"destination": "https://shop.example/ok",
                "split": [{"name": "a", "weight": 1, "destination": "https://evil.example/"}]}})),
        )
        .await,
    )
    .await;
    assert_eq!(
        refused["type"],
        "urn:qrpool:problem:destination-not-allowed"
    );
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("split[0].destination"),
        "{refused}"
    );

    for (target, field) in [
        (json!({"destination": "javascript:alert(1)"}), "destination"),
        (json!({"destination": "//evil.example/"}), "destination"),
        (
            json!({"destination": "https://user:pw@shop.example/"}),
            "destination",
        ),
        (
            json!({"destination": "https://promo.example/"}),
            "destination",
        ),
        (
            json!({"destination": "https://shop.example/", "rules": [{"name": "r", "destination": "https://shop.example/x"}]}),
            "rules[0]",
        ),
    ] {
        let body = problem(
            call(
                &app,
                Method::POST,
                "/v1/links",
                Some(json!({"target": target})),
            )
            .await,
        )
        .await;
        assert!(
            body["detail"].as_str().unwrap().contains(field),
            "{target}: {body}"
        );
    }
    let unknown_field = call(
        &app,
        Method::POST,
        "/v1/links",
        Some(json!({"target": {"destination": "https://shop.example/"}, "colour": "red"})),
    )
    .await;
    assert_eq!(unknown_field.status(), 422);
    let listed = json_of(call(&app, Method::GET, "/v1/links", None).await, 200).await;
    assert_eq!(listed["links"], json!([]), "nothing refused was stored");

    // The platform vouches for a partner's page by signing it for this tenant.
    let url = "https://partner.example/offer?id=7";
    let signer =
        redirect::Destinations::new(BTreeMap::new(), Some(SecretString::from(SIGNING_SECRET)));
    let signature = signer.sign(&Tenant::default(), url).unwrap();
    let link = create(
        &app,
        json!({"target": {"destination": url}, "signatures": {url: signature}}),
    )
    .await;
    let key = link["key"].as_str().unwrap();
    assert_eq!(scan(&app, key, &[]).await, (302, url.to_owned()));
    let other_signature = signer.sign(&Tenant::parse("other").unwrap(), url).unwrap();
    let forged = call(
        &app,
        Method::POST,
        "/v1/links",
        Some(json!({"target": {"destination": url}, "signatures": {url: other_signature}})),
    )
    .await;
    assert_eq!(
        forged.status(),
        422,
        "another tenant's signature does not count"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_goes_where_the_effective_policy_says_and_its_event_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(with_links(embedded_settings(dir.path())), Parts::ALL).await;
    let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)";
    let desktop = "Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0";

    let link = create(
        &app,
        json!({"target": {
            "destination": "https://shop.example/default",
            "rules": [
                {"name": "ios", "devices": ["ios"], "destination": "https://shop.example/ios"},
                {"name": "china", "countries": ["CN"], "destination": "https://cn.promo.example/"}
            ],
            "split": [
                {"name": "a", "weight": 50, "destination": "https://a.promo.example/"},
                {"name": "b", "weight": 50, "destination": "https://b.promo.example/"}
            ]
        }}),
    )
    .await;
    let key = link["key"].as_str().unwrap().to_owned();

    assert_eq!(
        scan(&app, &key, &[("user-agent", iphone), ("x-country", "CN")])
            .await
            .1,
        "https://shop.example/ios"
    );
    assert_eq!(
        scan(&app, &key, &[("user-agent", desktop), ("x-country", "cn")])
            .await
            .1,
        "https://cn.promo.example/"
    );

    // A first visit gets a visitor cookie; with it, the visitor keeps its variant.
    let first = scanner()
        .get(app.url(&format!("/r/{key}?qr=1")))
        .header("user-agent", desktop)
        .send()
        .await
        .unwrap();
    let cookie = first.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("Path=/r"),
        "{cookie}"
    );
    let visitor = cookie.split(';').next().unwrap().to_owned();
    let landed = first.headers()["location"].to_str().unwrap().to_owned();
    for _ in 0..5 {
        assert_eq!(
            scan(&app, &key, &[("user-agent", desktop), ("cookie", &visitor)])
                .await
                .1,
            landed,
            "sticky"
        );
    }
    let mut seen = HashSet::new();
    for n in 0..64 {
        let cookie = format!("qrv=visitor{n:04}abcdefgh");
        seen.insert(
            scan(&app, &key, &[("user-agent", desktop), ("cookie", &cookie)])
                .await
                .1,
        );
    }
    assert_eq!(
        seen,
        HashSet::from([
            "https://a.promo.example/".to_owned(),
            "https://b.promo.example/".to_owned()
        ]),
        "64 visitors over a 50/50 split meet both variants"
    );

    // A campaign scheduled ahead does not serve before it starts; one running now does, and
    // the version before it serves again when it ends.
    let path = format!("/v1/links/{key}");
    let later = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let scheduled = call(
        &app,
        Method::PATCH,
        &path,
        Some(json!({"target": {"destination": "https://shop.example/later", "effective_start": later}})),
    )
    .await;
    let scheduled = json_of(scheduled, 200).await;
    assert_eq!(
        (
            scheduled["version"].clone(),
            scheduled["serving_version"].clone()
        ),
        (json!(2), json!(1))
    );
    assert_eq!(
        scan(&app, &key, &[("user-agent", iphone)]).await.1,
        "https://shop.example/ios"
    );

    let ends = Utc::now() + chrono::Duration::milliseconds(1500);
    let running = call(
        &app,
        Method::PATCH,
        &path,
        Some(json!({"target": {"destination": "https://shop.example/flash", "effective_end": ends.to_rfc3339()}})),
    )
    .await;
    assert_eq!(json_of(running, 200).await["serving_version"], 3);
    assert_eq!(
        scan(&app, &key, &[("user-agent", iphone)]).await.1,
        "https://shop.example/flash"
    );
    let until_end = (ends - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(until_end + Duration::from_millis(100)).await;
    assert_eq!(
        scan(&app, &key, &[("user-agent", iphone)]).await.1,
        "https://shop.example/ios",
        "after the flash sale, version 1's policy serves again"
    );

    // A link checker's HEAD is answered like a scan but leaves no event.
    let checked = scanner().head(app.url(&format!("/r/{key}"))).send().await;
    assert_eq!(checked.unwrap().status(), 302);
    let dropped_before_stop = app.get("/metrics").await.text().await.unwrap();
    app.stop().await;
    let day = Utc::now().format("%Y-%m-%d");
    let events = std::fs::read_to_string(dir.path().join(format!("scans/{day}.jsonl"))).unwrap();
    let events: Vec<Value> = events
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|event: &Value| event["key"] == key)
        .collect();
    assert_eq!(
        events.len(),
        2 + 1 + 5 + 64 + 1 + 1 + 1,
        "every scan left an event: {dropped_before_stop}"
    );
    let variants: Vec<Option<&str>> = events.iter().map(|e| e["variant"].as_str()).collect();
    assert_eq!(variants[0], Some("rule:ios"));
    assert_eq!(variants[1], Some("rule:china"));
    assert!(variants[2].is_some_and(|v| v.starts_with("variant:")));
    assert_eq!(events[1]["country"], "CN");
    assert_eq!(events[2]["via_qr"], true);
    assert_eq!(events[0]["device"], "ios");
    assert!(
        events
            .iter()
            .all(|e| e["outcome"] == "redirected" && e["tenant"] == "default")
    );
    assert_eq!(variants.last().copied().flatten(), Some("rule:ios"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_never_sees_nor_changes_another_tenants_links() {
    let dir = tempfile::tempdir().unwrap();
    let settings = || with_links(embedded_settings(dir.path()));
    let app = TestApp::spawn(settings(), Parts::ALL).await;
    let link = create(
        &app,
        json!({"target": {"destination": "https://shop.example/"}}),
    )
    .await;
    let path = format!("/v1/links/{}", link["key"].as_str().unwrap());
    let other =
        TestApp::make_key(&settings(), &Tenant::parse("other").unwrap(), "read admin").await;
    let as_other = |method: Method, path: String| {
        reqwest::Client::new()
            .request(method, app.url(&path))
            .bearer_auth(&other)
    };
    for (method, path, body) in [
        (Method::GET, path.clone(), None),
        (Method::GET, format!("{path}/audit"), None),
        (Method::PATCH, path.clone(), Some(json!({"status": 301}))),
        (Method::DELETE, path.clone(), None),
        (
            Method::POST,
            format!("{path}/rollback"),
            Some(json!({"version": 1})),
        ),
    ] {
        let mut request = as_other(method.clone(), path.clone());
        if let Some(body) = body {
            request = request.json(&body);
        }
        assert_eq!(
            request.send().await.unwrap().status(),
            404,
            "{method} {path}"
        );
    }
    let listed: Value = as_other(Method::GET, "/v1/links".into())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["links"], json!([]));
    let read_only = TestApp::make_key(&settings(), &Tenant::default(), "read").await;
    let refused = reqwest::Client::new()
        .delete(app.url(&path))
        .bearer_auth(&read_only)
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        403,
        "changing a link needs the admin scope"
    );
    let anonymous = reqwest::Client::new()
        .get(app.url("/v1/links"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(
        scan(&app, link["key"].as_str().unwrap(), &[]).await.0,
        302,
        "untouched"
    );
    app.stop().await;
}

/// Links on PostgreSQL with Redis, in a database and under a key prefix of their own, for
/// the tests where more than one process shares them.
struct SharedLinks {
    backends: Backends,
    database: TestDatabase,
    prefix: String,
    topic: String,
}

impl SharedLinks {
    async fn new(label: &str) -> SharedLinks {
        let backends = Backends::from_env();
        let database = TestDatabase::create(&backends).await;
        SharedLinks {
            prefix: unique(label),
            topic: unique("unused"),
            database,
            backends,
        }
    }

    fn settings(&self) -> config::Settings {
        with_links(distributed_settings(
            &self.backends,
            &self.database,
            &self.topic,
            &format!("{}:", self.prefix),
        ))
    }

    /// A process serving links, an admin key of the default tenant, and a link made through
    /// it that sends scanners to `destination`: (process, key, link key).
    async fn admin_with_link(&self, destination: &str) -> (TestApp, String, String) {
        let admin = TestApp::spawn(self.settings(), Parts::MIDDLE_PAGE).await;
        let key_text = TestApp::make_key(&self.settings(), &Tenant::default(), "read admin").await;
        let link: Value = reqwest::Client::new()
            .post(admin.url("/v1/links"))
            .bearer_auth(&key_text)
            .json(&json!({"target": {"destination": destination}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let key = link["key"].as_str().unwrap().to_owned();
        (admin, key_text, key)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_change_reaches_another_process_through_redis_and_purges_keep_the_audit() {
    let links = SharedLinks::new("links").await;
    let (admin, key_text, key) = links.admin_with_link("https://shop.example/old").await;
    let scans = TestApp::spawn(links.settings(), Parts::MIDDLE_PAGE).await;
    let settings = links.settings();
    let client = reqwest::Client::new();
    // The second process caches the link at its first scan.
    assert_eq!(scan(&scans, &key, &[]).await.1, "https://shop.example/old");
    let changed = client
        .patch(admin.url(&format!("/v1/links/{key}")))
        .bearer_auth(&key_text)
        .json(&json!({"target": {"destination": "https://shop.example/new"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    let started = Instant::now();
    while scan(&scans, &key, &[]).await.1 != "https://shop.example/new" {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the change did not arrive in 2 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "a link change reached the other process in {:?}",
        started.elapsed()
    );

    let deleted = client
        .delete(admin.url(&format!("/v1/links/{key}")))
        .bearer_auth(&key_text)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let started = Instant::now();
    while scan(&scans, &key, &[]).await.0 != 410 {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the delete did not arrive in 2 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Past its retention, a deleted link is purged; what happened to it stays on record.
    let durable = bindings::DurableStore::connect(&settings).await.unwrap();
    let store = redirect::LinkStore::open(durable.database()).await.unwrap();
    let key = records::LinkKey::parse(&key).unwrap();
    let purged = store
        .purge_deleted_before(Utc::now() + chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert!(purged.contains(&key));
    assert_eq!(store.servable(&key, Utc::now()).await.unwrap(), None);
    let audit: Vec<String> = store
        .audit(
            &key,
            &Tenant::default(),
            redirect::AuditOrder::OldestFirst,
            None,
            100,
        )
        .await
        .unwrap()
        .into_iter()
        .map(|entry| entry.action)
        .collect();
    assert_eq!(audit, ["create", "update", "delete", "purge"]);

    admin.stop().await;
    scans.stop().await;
    links.database.drop_now().await;
}

/// A link edited again and again: each edit is a version on record, but the copy scans read
/// (Redis's, shared by every process) holds only the version that serves, so a scan's miss
/// does not grow with the link's history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_copy_of_a_link_edited_many_times_holds_only_what_can_still_serve() {
    let links = SharedLinks::new("edited").await;
    let (admin, key_text, key) = links.admin_with_link("https://shop.example/0").await;
    let client = reqwest::Client::new();
    const EDITS: usize = 30;
    for edit in 1..=EDITS {
        let changed = client
            .patch(admin.url(&format!("/v1/links/{key}")))
            .bearer_auth(&key_text)
            .json(&json!({"target": {"destination": format!("https://shop.example/{edit}")}}))
            .send()
            .await
            .unwrap();
        assert_eq!(changed.status(), 200, "{}", changed.text().await.unwrap());
    }

    // Every version stays on record for the admin API and the audit.
    let durable = bindings::DurableStore::connect(&links.settings())
        .await
        .unwrap();
    let store = redirect::LinkStore::open(durable.database()).await.unwrap();
    let parsed = records::LinkKey::parse(&key).unwrap();
    let on_record = store
        .versions(&parsed, &Tenant::default(), 0, 1_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(on_record.len(), EDITS + 1);

    let redis = redis::Client::open(links.backends.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let redis_key = format!("{}:l:{key}", links.prefix);
    let shared_copy = || {
        let (mut redis, redis_key) = (redis.clone(), redis_key.clone());
        async move {
            let text: Option<String> = redis::cmd("GET")
                .arg(&redis_key)
                .query_async(&mut redis)
                .await
                .unwrap();
            serde_json::from_str::<records::Link>(&text.expect("the link is in Redis")).unwrap()
        }
    };
    // Written through by the last edit.
    let copy = shared_copy().await;
    let held: Vec<u32> = copy
        .versions
        .iter()
        .map(|version| version.version)
        .collect();
    assert_eq!(held.len(), 1, "Redis holds versions {held:?}");
    assert_eq!(copy.versions, on_record[EDITS..]);

    // A process that has never seen the link fills Redis from the database the same way.
    let _: () = redis::cmd("DEL")
        .arg(&redis_key)
        .query_async(&mut redis.clone())
        .await
        .unwrap();
    let scans = TestApp::spawn(links.settings(), Parts::MIDDLE_PAGE).await;
    assert_eq!(
        scan(&scans, &key, &[]).await,
        (302, format!("https://shop.example/{EDITS}"))
    );
    assert_eq!(shared_copy().await.versions.len(), 1);

    admin.stop().await;
    scans.stop().await;
    links.database.drop_now().await;
}

/// The read behind scans and edits (`LinkStore::servable`) goes newest first and stops at the
/// newest version that serves for good, so it does not grow with a link's history; whatever
/// the history's shape, it must hold exactly what the whole history would serve from now on.
async fn the_read_for_scans_holds_what_the_whole_history_would_serve(database: bindings::Database) {
    let store = redirect::LinkStore::open(database).await.unwrap();
    let now = Utc::now();
    let tenant = Tenant::default();
    let at = |hours: i64| (now + chrono::Duration::hours(hours)).to_rfc3339();
    let for_good = |n: usize| json!({"destination": format!("https://shop.example/{n}")});
    let window = |n: usize, start: i64, end: i64| {
        json!({"destination": format!("https://shop.example/{n}"),
               "effective_start": at(start), "effective_end": at(end)})
    };
    let starting = |n: usize, start: i64| json!({"destination": format!("https://shop.example/{n}"), "effective_start": at(start)});
    let histories: Vec<(&str, Vec<Value>, usize)> = vec![
        ("edited often", (1..=30).map(for_good).collect(), 1),
        (
            // Forty versions scheduled ahead of one serving now: the read goes through
            // several batches down to version 1.
            "scheduled far ahead",
            std::iter::once(for_good(1))
                .chain((2..=41).map(|n| starting(n, n as i64)))
                .collect(),
            41,
        ),
        (
            "mixed",
            vec![
                for_good(1),
                window(2, -3, -1),
                for_good(3),
                window(4, -1, 1),
                starting(5, 2),
                window(6, -5, -4),
            ],
            4,
        ),
        (
            "only windows, all ended",
            (1..=10).map(|n| window(n, -20, -10)).collect(),
            1,
        ),
    ];
    for (shape, targets, expected_len) in histories {
        let target = |value: &Value| -> records::LinkTarget {
            serde_json::from_value(value.clone()).unwrap()
        };
        let link = tests::new_link(&tenant, target(&targets[0]), "test");
        let key = link.key.clone();
        assert!(store.create(&link, "test").await.unwrap());
        for (base, next) in targets[1..].iter().enumerate() {
            let edit = redirect::store::Edit {
                key: &key,
                tenant: &tenant,
                base_version: base as u32 + 1,
                target: Some(target(next)),
                status: None,
                tags: None,
                note: None,
                actor: "test",
            };
            store.edit(edit, "update").await.unwrap();
        }
        let history = store
            .versions(&key, &tenant, 0, 1_000)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(history.len(), targets.len(), "{shape}");
        let whole = records::Link {
            versions: history,
            ..link.clone()
        }
        .servable_from(now);
        let read = store.servable(&key, now).await.unwrap().unwrap();
        assert_eq!(read.versions, whole.versions, "{shape}");
        assert_eq!(read.versions.len(), expected_len, "{shape}");
        assert_eq!(
            read.current().map(|v| v.version),
            Some(targets.len() as u32),
            "{shape}: the current version is always held"
        );
        // Another tenant sees neither the link nor its versions.
        let other = Tenant::parse("other").unwrap();
        assert_eq!(store.servable_owned(&key, &other, now).await.unwrap(), None);
        assert_eq!(store.versions(&key, &other, 0, 10).await.unwrap(), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_for_scans_holds_what_the_whole_history_would_serve_on_postgres() {
    let backends = Backends::from_env();
    let database = TestDatabase::create(&backends).await;
    let settings = distributed_settings(&backends, &database, &unique("unused"), "unused:");
    let durable = bindings::DurableStore::connect(&settings).await.unwrap();
    the_read_for_scans_holds_what_the_whole_history_would_serve(durable.database()).await;
    database.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_for_scans_holds_what_the_whole_history_would_serve_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let durable = bindings::DurableStore::connect(&embedded_settings(dir.path()))
        .await
        .unwrap();
    the_read_for_scans_holds_what_the_whole_history_would_serve(durable.database()).await;
}

/// Audit lines got their numbers (`seq`) from a migration: lines written before it are
/// numbered in the order they were written, each tenant's log of each link on its own, and
/// the next change goes on from there.
async fn audit_lines_written_before_the_numbering_are_numbered_in_order(
    database: bindings::Database,
    migrations: &str,
) {
    // The link tables as they were before the numbering.
    let before = tempfile::tempdir().unwrap();
    for file in std::fs::read_dir(migrations).unwrap() {
        let file = file.unwrap();
        if file.file_name().to_string_lossy().as_ref() < "20261207000001" {
            std::fs::copy(file.path(), before.path().join(file.file_name())).unwrap();
        }
    }
    let mut migrator = sqlx::migrate::Migrator::new(before.path()).await.unwrap();
    migrator.set_ignore_missing(true);
    let key = records::LinkKey::generate();
    let other_key = records::LinkKey::generate();
    let statements = [
        format!(
            "INSERT INTO links (link_key, tenant, status, created_at, deleted_at, version) \
             VALUES ('{key}', 'default', 302, '2026-01-01T00:00:00Z', '2026-01-03T00:00:00Z', 1)"
        ),
        format!(
            "INSERT INTO link_versions (link_key, version, target, created_at, created_by) \
             VALUES ('{key}', 1, '{{\"destination\": \"https://shop.example/\"}}', \
             '2026-01-01T00:00:00Z', 'k1')"
        ),
    ]
    .into_iter()
    .chain(
        [
            (&key, "default", "create"),
            (&other_key, "default", "create"),
            (&key, "other", "create"),
            (&key, "default", "update"),
            (&other_key, "default", "update"),
            (&key, "default", "delete"),
        ]
        .into_iter()
        .map(|(key, tenant, action)| {
            format!(
                "INSERT INTO link_audit (link_key, tenant, at, actor, action) \
                 VALUES ('{key}', '{tenant}', '2026-01-02T00:00:00Z', 'k1', '{action}')"
            )
        }),
    );
    match &database {
        bindings::Database::Sqlite(pool) => {
            migrator.run(pool).await.unwrap();
            for statement in statements {
                sqlx::query(&statement).execute(pool).await.unwrap();
            }
        }
        bindings::Database::Postgres(pool) => {
            migrator.run(pool).await.unwrap();
            for statement in statements {
                sqlx::query(&statement).execute(pool).await.unwrap();
            }
        }
    }

    let store = redirect::LinkStore::open(database).await.unwrap();
    let tenant = Tenant::default();
    let other = Tenant::parse("other").unwrap();
    let log = |key: &records::LinkKey, tenant: &Tenant, order| {
        let (store, key, tenant) = (&store, key.clone(), tenant.clone());
        async move {
            store
                .audit(&key, &tenant, order, None, 100)
                .await
                .unwrap()
                .into_iter()
                .map(|entry| (entry.seq, entry.action))
                .collect::<Vec<_>>()
        }
    };
    use redirect::AuditOrder::{NewestFirst, OldestFirst};
    let lines = |lines: &[(u32, &str)]| -> Vec<(u32, String)> {
        lines
            .iter()
            .map(|(seq, action)| (*seq, action.to_string()))
            .collect()
    };
    assert_eq!(
        log(&key, &tenant, OldestFirst).await,
        lines(&[(1, "create"), (2, "update"), (3, "delete")])
    );
    assert_eq!(
        log(&other_key, &tenant, OldestFirst).await,
        lines(&[(1, "create"), (2, "update")])
    );
    assert_eq!(
        log(&key, &other, OldestFirst).await,
        lines(&[(1, "create")])
    );

    assert_eq!(
        store.set_deleted(&key, &tenant, false, "k2").await.unwrap(),
        Some(true)
    );
    assert_eq!(
        log(&key, &tenant, NewestFirst).await,
        lines(&[(4, "restore"), (3, "delete"), (2, "update"), (1, "create")])
    );
    assert_eq!(
        log(&key, &other, NewestFirst).await,
        lines(&[(1, "create")])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_lines_written_before_the_numbering_are_numbered_in_order_on_postgres() {
    let backends = Backends::from_env();
    let database = TestDatabase::create(&backends).await;
    let settings = distributed_settings(&backends, &database, &unique("unused"), "unused:");
    let durable = bindings::DurableStore::connect(&settings).await.unwrap();
    audit_lines_written_before_the_numbering_are_numbered_in_order(
        durable.database(),
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../redirect/migrations/postgres"
        ),
    )
    .await;
    database.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_lines_written_before_the_numbering_are_numbered_in_order_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let durable = bindings::DurableStore::connect(&embedded_settings(dir.path()))
        .await
        .unwrap();
    audit_lines_written_before_the_numbering_are_numbered_in_order(
        durable.database(),
        concat!(env!("CARGO_MANIFEST_DIR"), "/../redirect/migrations/sqlite"),
    )
    .await;
}
