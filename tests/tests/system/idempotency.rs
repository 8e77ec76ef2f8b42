//! `Idempotency-Key` on `POST /v1/codes`: a retried request gets the code the first one bound,
//! on the embedded store and on PostgreSQL, even when the retries race each other.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;

use serde_json::{Value, json};

use qrpool::Parts;
use records::Tenant;
use tests::{Backends, TestApp, TestDatabase, embedded_settings};

async fn bind_with_key(app: &TestApp, key: &str, params: Value) -> reqwest::Response {
    app.client
        .post(app.url("/v1/codes"))
        .header("idempotency-key", key)
        .json(&json!({ "params": params }))
        .send()
        .await
        .unwrap()
}

/// Runs every idempotency check against one app; returns how many distinct binds they make
/// (the first key, the rival tenant's, the race).
async fn check_idempotency(app: &TestApp, settings: &config::Settings) -> usize {
    let first = bind_with_key(app, "order-1001", json!({"listing": "L-1"})).await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();

    let retry = bind_with_key(app, "order-1001", json!({"listing": "L-1"})).await;
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(
        retry["request_id"], first["request_id"],
        "the same code again"
    );

    let other_params = bind_with_key(app, "order-1001", json!({"listing": "L-2"})).await;
    assert_eq!(other_params.status(), 422);
    let problem: Value = other_params.json().await.unwrap();
    assert_eq!(problem["type"], "urn:qrpool:problem:idempotency-key-reused");

    // Keys belong to a tenant: another tenant's equal key is another bind.
    let rival = TestApp::make_key(settings, &Tenant::parse("rival").unwrap(), "bind").await;
    let theirs: Value = reqwest::Client::new()
        .post(app.url("/v1/codes"))
        .bearer_auth(&rival)
        .header("idempotency-key", "order-1001")
        .json(&json!({"params": {"listing": "L-1"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(theirs["request_id"], first["request_id"]);

    // Sixteen retries racing: one code, the others get it too.
    let racing = futures::future::join_all(
        (0..16).map(|_| bind_with_key(app, "order-2002", json!({"listing": "L-9"}))),
    )
    .await;
    let mut ids = HashSet::new();
    for response in racing {
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        ids.insert(body["request_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        ids.len(),
        1,
        "every racing retry got the same code: {ids:?}"
    );

    let too_long = bind_with_key(app, &"k".repeat(256), json!({})).await;
    assert_eq!(too_long.status(), 400);
    3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_bind_gets_the_same_code_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = embedded_settings(dir.path());
    settings.pregen.target_depth = 100;
    settings.pregen.low_water = 0;
    let app = TestApp::spawn(settings, Parts::ALL).await;
    let settings = embedded_settings(dir.path());
    let made = check_idempotency(&app, &settings).await;
    app.stop().await;
    let store = bindings::DurableStore::connect(&settings).await.unwrap();
    assert_eq!(
        store.count().await.unwrap(),
        made as i64,
        "one row per distinct bind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_bind_gets_the_same_code_on_postgres() {
    let backends = Backends::from_env();
    let database = TestDatabase::create(&backends).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = embedded_settings(dir.path());
    settings.store.backend = config::StoreBackend::Postgres;
    settings.postgres.url = Some(secrecy::SecretString::from(database.url.clone()));
    settings.pregen.target_depth = 100;
    settings.pregen.low_water = 0;
    let key_settings = {
        let mut s = embedded_settings(dir.path());
        s.store.backend = config::StoreBackend::Postgres;
        s.postgres.url = Some(secrecy::SecretString::from(database.url.clone()));
        s
    };
    let app = TestApp::spawn(settings, Parts::ALL).await;
    let made = check_idempotency(&app, &key_settings).await;
    app.stop().await;
    assert_eq!(database.count_bindings().await, made as i64);
    database.drop_now().await;
}
