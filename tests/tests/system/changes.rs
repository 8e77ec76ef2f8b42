//! Changing a bound code: params and expiry as new versions, revocation, the history, and
//! what scanners see afterwards; on the embedded store, and on PostgreSQL with Redis where a
//! second process reads the change.
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};

use qrpool::Parts;
use records::Tenant;
use tests::{Backends, TestApp, TestDatabase, distributed_settings, embedded_settings, unique};

async fn send(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = app.client.request(method, app.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

/// The scene a mini-program gets for `id` from `scanner`.
async fn scene(scanner: &TestApp, id: &str) -> Value {
    scanner
        .get(&format!("/v1/scene/{id}"))
        .await
        .json()
        .await
        .unwrap()
}

/// How long until `done` holds; a change must reach every process within two seconds (it
/// takes milliseconds through change events; the cache's own expiry would take minutes).
async fn until<F, Fut>(mut done: F) -> std::time::Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while !done().await {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "a change did not reach the scanner within 2 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    started.elapsed()
}

/// Binds a code, changes it twice, revokes it; returns its id. `scanner` is where scans go.
async fn change_and_revoke(
    app: &TestApp,
    scanner: &TestApp,
    settings: &config::Settings,
) -> String {
    let code: Value = app
        .bind(&json!({"params": {"listing": "L-1", "price": 100}}))
        .await
        .json()
        .await
        .unwrap();
    let id = code["request_id"].as_str().unwrap().to_owned();
    let path = format!("/v1/codes/{id}");
    assert_eq!(code["version"], 1);
    // Scanned once first: version 1's answer is rendered and kept, and must not outlive it.
    assert_eq!(scene(scanner, &id).await["params"]["price"], 100);

    let changed = send(
        app,
        reqwest::Method::PATCH,
        &path,
        Some(json!({"params": {"listing": "L-1", "price": 90}})),
    )
    .await;
    assert_eq!(changed.status(), 200);
    let changed: Value = changed.json().await.unwrap();
    assert_eq!(changed["version"], 2);
    assert_eq!(changed["params"]["price"], 90);
    let took = until(|| async { scene(scanner, &id).await["params"]["price"] == 90 }).await;
    eprintln!("the new params reached the scanner in {took:?}");

    let expiry = "2999-01-01T00:00:00Z";
    let dated: Value = send(
        app,
        reqwest::Method::PATCH,
        &path,
        Some(json!({"expires_at": expiry})),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(dated["version"], 3);
    assert_eq!(
        dated["params"]["price"], 90,
        "params kept when only the expiry changes"
    );
    assert_eq!(dated["expires_at"], expiry);

    let nothing = send(app, reqwest::Method::PATCH, &path, Some(json!({}))).await;
    assert_eq!(nothing.status(), 422);
    let bad = send(
        app,
        reqwest::Method::PATCH,
        &path,
        Some(json!({"params": [1]})),
    )
    .await;
    assert_eq!(bad.status(), 422);

    // Who may change: an admin key of the tenant, no one else.
    let reader = TestApp::make_key(settings, &Tenant::default(), "bind read").await;
    let rival = TestApp::make_key(
        settings,
        &Tenant::parse("rival").unwrap(),
        "bind read admin",
    )
    .await;
    for (key, status) in [(&reader, 403), (&rival, 404)] {
        let refused = reqwest::Client::new()
            .patch(app.url(&path))
            .bearer_auth(key)
            .json(&json!({"params": {"price": 1}}))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), status);
    }

    let revoked = send(app, reqwest::Method::DELETE, &path, None).await;
    assert_eq!(revoked.status(), 200);
    assert_eq!(revoked.json::<Value>().await.unwrap()["version"], 4);
    let took = until(|| async { scanner.get(&format!("/m/{id}")).await.status() == 410 }).await;
    eprintln!("the revocation reached the scanner in {took:?}");
    assert_eq!(scanner.get(&format!("/v1/scene/{id}")).await.status(), 410);

    let versions: Value = send(app, reqwest::Method::GET, &format!("{path}/versions"), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(versions["current"]["version"], 4);
    let past = versions["past"].as_array().unwrap();
    let prices: Vec<&Value> = past.iter().map(|v| &v["params"]["price"]).collect();
    assert_eq!(
        prices,
        [&json!(100), &json!(90), &json!(90)],
        "every earlier version kept, oldest first"
    );
    let key_id = app.key.as_deref().unwrap().split('_').nth(1).unwrap();
    assert!(
        past.iter().all(|v| v["replaced_by"] == key_id),
        "each change names its key"
    );
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_versions_and_revocation_is_a_410_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(embedded_settings(dir.path()), Parts::ALL).await;
    change_and_revoke(&app, &app, &embedded_settings(dir.path())).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_another_process_through_redis() {
    let backends = Backends::from_env();
    let database = TestDatabase::create(&backends).await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}:", unique("qrpool-changes"));
    // Kafka is not the point here: the embedded pool feeds the binder; the store is shared.
    let store_settings = || {
        let mut settings = distributed_settings(&backends, &database, "unused", &prefix);
        settings.pool.backend = config::PoolBackend::Embedded;
        settings.embedded.data_dir = dir.path().to_owned();
        settings
    };
    let binder = TestApp::spawn(store_settings(), Parts::ALL).await;
    let scanner = TestApp::spawn(store_settings(), Parts::MIDDLE_PAGE).await;
    change_and_revoke(&binder, &scanner, &store_settings()).await;
    scanner.stop().await;
    binder.stop().await;
    database.drop_now().await;
}
