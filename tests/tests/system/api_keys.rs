//! API keys on the codes API: who may call, what they may do, and whose codes they see.
//! Embedded backends in a temporary folder; the same checks run whatever the store.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::{Value, json};

use bindings::DurableStore;
use qrpool::Parts;
use records::{Scopes, Tenant};
use tests::{TestApp, embedded_settings};

struct Setup {
    app: TestApp,
    store: DurableStore,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = embedded_settings(dir.path());
    settings.pregen.target_depth = 50;
    settings.pregen.low_water = 10;
    let app = TestApp::spawn(settings, Parts::ALL).await;
    let store = DurableStore::connect(&embedded_settings(dir.path()))
        .await
        .unwrap();
    Setup {
        app,
        store,
        _dir: dir,
    }
}

async fn key(store: &DurableStore, tenant: &str, scopes: &str, rate: u32) -> String {
    let (token, _) = store
        .create_api_key(
            &Tenant::parse(tenant).unwrap(),
            Scopes::parse(scopes).unwrap(),
            rate,
        )
        .await
        .unwrap();
    token.reveal()
}

/// A request with `key` (or none) instead of the test app's own key.
async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = reqwest::Client::new().request(method, app.url(path));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

async fn bind_as(app: &TestApp, key: Option<&str>) -> reqwest::Response {
    call(
        app,
        reqwest::Method::POST,
        "/v1/codes",
        key,
        Some(json!({"params": {"listing": "L-1"}})),
    )
    .await
}

async fn problem_type(response: reqwest::Response) -> String {
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    problem["type"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_call_without_a_valid_key_is_refused_and_binds_nothing() {
    let Setup { app, store, _dir } = setup().await;
    let revoked = key(&store, "default", "bind read", 100).await;
    let revoked_id = revoked.split('_').nth(1).unwrap().to_owned();
    assert!(store.revoke_api_key(&revoked_id).await.unwrap());
    let good = key(&store, "default", "bind", 100).await;
    // Same key id, another secret.
    let forged = format!("{}{}", &good[..good.len() - 4], "AAAA");
    let forged = if forged == good {
        good.replace("A", "B")
    } else {
        forged
    };

    for (case, key) in [
        ("no key", None),
        ("not a key", Some("hunter2")),
        (
            "unknown id",
            Some("qrp_AAAAAAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"),
        ),
        ("wrong secret", Some(forged.as_str())),
        ("revoked", Some(revoked.as_str())),
    ] {
        let response = bind_as(&app, key).await;
        assert_eq!(response.status(), 401, "{case}");
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer realm=\"qrpool\"",
            "{case}"
        );
        assert_eq!(
            problem_type(response).await,
            "urn:qrpool:problem:unauthenticated",
            "{case}"
        );
    }
    // Even a malformed body is answered 401 first: nothing about the API leaks.
    let response = call(
        &app,
        reqwest::Method::POST,
        "/v1/codes",
        None,
        Some(json!([1])),
    )
    .await;
    assert_eq!(response.status(), 401);
    assert_eq!(store.count().await.unwrap(), 0, "nothing was bound");

    assert_eq!(bind_as(&app, Some(&good)).await.status(), 201);
    // The API's description is public.
    let document = call(&app, reqwest::Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(document.status(), 200);
    let document: Value = document.json().await.unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    app.stop().await;
}

#[tokio::test]
async fn each_route_asks_for_its_scope() {
    let Setup { app, store, _dir } = setup().await;
    let read_only = key(&store, "default", "read", 100).await;
    let bind_only = key(&store, "default", "bind", 100).await;

    let refused = bind_as(&app, Some(&read_only)).await;
    assert_eq!(refused.status(), 403);
    assert_eq!(
        problem_type(refused).await,
        "urn:qrpool:problem:missing-scope"
    );

    let bound = bind_as(&app, Some(&bind_only)).await;
    assert_eq!(bound.status(), 201);
    let id = bound.json::<Value>().await.unwrap()["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/v1/codes/{id}");
    let get = |key| call(&app, reqwest::Method::GET, &path, Some(key), None);
    assert_eq!(get(&bind_only).await.status(), 403);
    assert_eq!(get(&read_only).await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn a_tenant_never_sees_another_tenants_codes() {
    let Setup { app, store, _dir } = setup().await;
    let acme = key(&store, "acme", "bind read", 100).await;
    let rival = key(&store, "rival", "bind read", 100).await;

    let bound: Value = bind_as(&app, Some(&acme)).await.json().await.unwrap();
    assert_eq!(bound["tenant"], "acme", "the key names the tenant");
    let id = bound["request_id"].as_str().unwrap();

    for path in [
        format!("/v1/codes/{id}"),
        format!("/v1/codes/{id}/qr.png"),
        format!("/v1/codes/{id}/qr.svg"),
    ] {
        let theirs = call(&app, reqwest::Method::GET, &path, Some(&rival), None).await;
        assert_eq!(theirs.status(), 404, "{path}");
        let unknown = call(
            &app,
            reqwest::Method::GET,
            "/v1/codes/0000000000000000000000",
            Some(&rival),
            None,
        )
        .await;
        assert_eq!(
            theirs_body(theirs).await,
            theirs_body(unknown).await,
            "another tenant's code looks exactly like an unknown one"
        );
        let mine = call(&app, reqwest::Method::GET, &path, Some(&acme), None).await;
        assert_eq!(mine.status(), 200, "{path}");
    }
    app.stop().await;
}

async fn theirs_body(response: reqwest::Response) -> Value {
    response.json().await.unwrap()
}

#[tokio::test]
async fn a_key_over_its_rate_is_told_when_to_come_back() {
    let Setup { app, store, _dir } = setup().await;
    let slow = key(&store, "default", "bind read", 3).await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..10 {
        let response = call(
            &app,
            reqwest::Method::GET,
            "/v1/codes/0000000000000000000000",
            Some(&slow),
            None,
        )
        .await;
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            retry_after = Some(
                response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .to_owned(),
            );
            assert_eq!(
                problem_type(response).await,
                "urn:qrpool:problem:rate-limited"
            );
        }
    }
    assert_eq!(
        &statuses[..3],
        &[404, 404, 404],
        "a burst of the rate passes: {statuses:?}"
    );
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    // Another key is not slowed by this one.
    assert_eq!(bind_as(&app, app.key.as_deref()).await.status(), 201);
    app.stop().await;
}

/// Statuses of `count` requests with `key`, sent in turn to each app.
async fn lookups_across(apps: &[&TestApp], key: &str, count: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for turn in 0..count {
        let app = apps[turn % apps.len()];
        let response = call(
            app,
            reqwest::Method::GET,
            "/v1/codes/0000000000000000000000",
            Some(key),
            None,
        )
        .await;
        statuses.push(response.status().as_u16());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_rate_is_one_budget_across_processes_and_each_ones_own_while_redis_is_cut_off() {
    let backends = tests::Backends::from_env();
    let link = tests::FaultyLink::to(backends.redis_address()).await;
    let database = tests::TestDatabase::create(&backends).await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}:", tests::unique("rates"));
    let settings = || {
        let mut settings = embedded_settings(dir.path());
        settings.store.backend = config::StoreBackend::Postgres;
        settings.postgres.url = Some(secrecy::SecretString::from(database.url.clone()));
        settings.pregen.target_depth = 10;
        settings.pregen.low_water = 0;
        settings.redis.url = Some(secrecy::SecretString::from(format!(
            "redis://{}",
            link.address
        )));
        settings.redis.key_prefix = prefix.clone();
        settings
    };
    // Two processes of one deployment: one store, one Redis.
    let first = TestApp::spawn(settings(), Parts::ALL).await;
    let second = TestApp::spawn(settings(), Parts::ALL).await;
    let store = DurableStore::connect(&settings()).await.unwrap();
    let key = key(&store, "default", "read", 5).await;
    let passed = |statuses: &[u16]| statuses.iter().filter(|status| **status == 404).count();

    // Twenty requests in well under a second: the burst of five, once, not once per process.
    let shared = lookups_across(&[&first, &second], &key, 20).await;
    assert!(
        (5..=6).contains(&passed(&shared)),
        "one budget of 5 a second across both: {shared:?}"
    );

    // A busier key is taken from Redis two slots at a time (1 % of 200): still one budget,
    // give or take the blocks the two processes hold.
    let busy = self::key(&store, "default", "read", 200).await;
    let started = std::time::Instant::now();
    let many = lookups_across(&[&first, &second], &busy, 600).await;
    let elapsed = started.elapsed().as_secs_f64();
    let most = 200 + (200.0 * elapsed).ceil() as usize + 2 * 2;
    assert!(
        (200..=most).contains(&passed(&many)),
        "{} passed in {elapsed:.2} s; one budget allows 200 at once, 200 a second after, and \
         each process's unused block",
        passed(&many)
    );

    // Redis cut off: each process limits the key on its own (a burst of five each).
    link.cut();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let apart = lookups_across(&[&first, &second], &key, 20).await;
    assert!(
        (10..=12).contains(&passed(&apart)),
        "each process's own budget, no request refused for Redis: {apart:?}"
    );
    assert!(
        apart.iter().all(|status| [404, 429].contains(status)),
        "{apart:?}"
    );

    // Back: shared again, without a restart, once Redis's rest after the failure is over and
    // each process's connection is up again (the first command after a cut reconnects).
    link.restore();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    for app in [&first, &second] {
        for _ in 0..2 {
            app.get("/v1/codes/0000000000000000000000").await;
        }
    }
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let again = lookups_across(&[&first, &second], &key, 20).await;
    assert!(
        (5..=6).contains(&passed(&again)),
        "one budget again: {again:?}"
    );
    first.stop().await;
    second.stop().await;
    database.drop_now().await;
}
