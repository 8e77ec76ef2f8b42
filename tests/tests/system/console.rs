//! The web console's sessions and guards, over HTTP: what the browser tests
//! (`web-console/tests/browser`) cannot see from inside a page — a session outliving a
//! restart, ending everywhere at once, idling out, ending with its key — and the console's
//! refusals. The pages themselves are tested in Chromium.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};

use bindings::DurableStore;
use config::Settings;
use qrpool::Parts;
use records::Tenant;
use tests::{Backends, TestApp, TestDatabase, distributed_settings, embedded_settings, unique};

use tests::no_redirects as client;

/// Signs in with `key`; the session cookie (`name=value`).
async fn sign_in(app: &TestApp, key: &str) -> String {
    app.console_sign_in(key).await
}

/// The overview's status with `cookie`: 200 signed in, 303 to the sign-in page otherwise.
async fn overview(app: &TestApp, cookie: &str) -> StatusCode {
    let answer = client()
        .get(app.url("/console/overview"))
        .header(COOKIE, cookie)
        .send()
        .await
        .unwrap();
    if answer.status() == StatusCode::SEE_OTHER {
        assert_eq!(answer.headers()[LOCATION], "/console/sign-in");
    }
    answer.status()
}

/// The CSRF token on a signed-in page.
async fn csrf(app: &TestApp, cookie: &str) -> String {
    let page = client()
        .get(app.url("/console/links"))
        .header(COOKIE, cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (_, rest) = page.split_once(r#"name="csrf" value=""#).unwrap();
    rest.split('"').next().unwrap().to_owned()
}

async fn sign_out(app: &TestApp, cookie: &str) {
    let token = csrf(app, cookie).await;
    let answer = client()
        .post(app.url("/console/sign-out"))
        .header(COOKIE, cookie)
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    assert_eq!(answer.headers()[LOCATION], "/console/sign-in?signed_out=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_outlives_a_restart_and_a_sign_out_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(embedded_settings(dir.path()), Parts::ALL).await;
    let cookie = sign_in(&app, app.key.as_deref().unwrap()).await;
    assert_eq!(overview(&app, &cookie).await, StatusCode::OK);
    app.stop().await;

    let app = TestApp::spawn(embedded_settings(dir.path()), Parts::ALL).await;
    assert_eq!(
        overview(&app, &cookie).await,
        StatusCode::OK,
        "the session survived the restart"
    );
    sign_out(&app, &cookie).await;
    assert_eq!(overview(&app, &cookie).await, StatusCode::SEE_OTHER);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_a_sign_out_in_one_process_ends_the_session_in_another_at_once() {
    let backends = Backends::from_env();
    let database = TestDatabase::create(&backends).await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}:", unique("qrpool-console"));
    let settings = || {
        let mut settings = distributed_settings(&backends, &database, "unused", &prefix);
        settings.pool.backend = config::PoolBackend::Embedded;
        settings.embedded.data_dir = dir.path().to_owned();
        settings
    };
    let one = TestApp::spawn(settings(), Parts::ALL).await;
    let two = TestApp::spawn(settings(), Parts::BINDER).await;
    let cookie = sign_in(&one, one.key.as_deref().unwrap()).await;
    assert_eq!(
        overview(&two, &cookie).await,
        StatusCode::OK,
        "one session, every process"
    );
    // Seen by both: the API calls of each process have it in memory now.
    let bearer = cookie.split_once('=').unwrap().1.to_owned();
    let links = client()
        .get(two.url("/v1/analytics/scans"))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(links.status(), StatusCode::OK);
    sign_out(&one, &cookie).await;
    assert_eq!(overview(&two, &cookie).await, StatusCode::SEE_OTHER);
    two.stop().await;
    one.stop().await;
    database.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_ends_and_revoking_its_key_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings: Settings = embedded_settings(dir.path());
    settings.console.session_idle_minutes = 1;
    let app = TestApp::spawn(settings, Parts::ALL).await;
    let store = DurableStore::connect(&embedded_settings(dir.path()))
        .await
        .unwrap();

    // Idle for two minutes (moved back in the store: nobody waits a minute in a test).
    let cookie = sign_in(&app, app.key.as_deref().unwrap()).await;
    let session_id = cookie.split('_').nth(2).unwrap().to_owned();
    assert_eq!(overview(&app, &cookie).await, StatusCode::OK);
    let store_settings = embedded_settings(dir.path());
    let database = bindings::Bindings::connect(&store_settings)
        .await
        .unwrap()
        .durable()
        .database();
    let two_minutes_ago = chrono::Utc::now() - chrono::Duration::minutes(2);
    match database {
        bindings::Database::Sqlite(pool) => {
            sqlx::query("UPDATE console_sessions SET last_seen_at = $1 WHERE session_id = $2")
                .bind(two_minutes_ago)
                .bind(&session_id)
                .execute(&pool)
                .await
                .unwrap();
        }
        bindings::Database::Postgres(_) => unreachable!("embedded settings"),
    }
    assert_eq!(
        overview(&app, &cookie).await,
        StatusCode::SEE_OTHER,
        "idle too long"
    );

    // A key revoked: its sessions end (within the key cache's 10 s).
    let (token, key) = store
        .create_api_key(&Tenant::default(), records::Scopes::all(), 1_000)
        .await
        .unwrap();
    let cookie = sign_in(&app, &token.reveal()).await;
    assert_eq!(overview(&app, &cookie).await, StatusCode::OK);
    assert!(store.revoke_api_key(&key.key_id).await.unwrap());
    let started = std::time::Instant::now();
    while overview(&app, &cookie).await == StatusCode::OK {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the session outlived its key"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_refuses_strangers_and_forgeries_and_says_so_in_its_headers() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(embedded_settings(dir.path()), Parts::ALL).await;

    // Signed out: every page leads to the sign-in page, which carries the policy.
    assert_eq!(
        overview(&app, "qrpool_console=qrs_nonsense").await,
        StatusCode::SEE_OTHER
    );
    let sign_in_page = client()
        .get(app.url("/console/sign-in"))
        .send()
        .await
        .unwrap();
    let policy = sign_in_page.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"));
    assert!(!policy.contains("unsafe-inline"));
    assert_eq!(sign_in_page.headers()["x-content-type-options"], "nosniff");
    assert!(sign_in_page.headers().contains_key("referrer-policy"));

    // A wrong key is a 401 page; a sign-in posted from another site is refused.
    let wrong = client()
        .post(app.url("/console/sign-in"))
        .form(&[("key", "qrp_AAAAAAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let forged = client()
        .post(app.url("/console/sign-in"))
        .header("sec-fetch-site", "cross-site")
        .form(&[("key", app.key.as_deref().unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert!(!forged.headers().contains_key(SET_COOKIE));

    // Signed in: a form without the session's token, or from another origin, is refused.
    let cookie = sign_in(&app, app.key.as_deref().unwrap()).await;
    let token = csrf(&app, &cookie).await;
    for (csrf, origin) in [
        ("wrong", None),
        (token.as_str(), Some("http://evil.example")),
    ] {
        let mut request = client()
            .post(app.url("/console/sign-out"))
            .header(COOKIE, &cookie)
            .form(&[("csrf", csrf)]);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        assert_eq!(
            request.send().await.unwrap().status(),
            StatusCode::FORBIDDEN
        );
    }
    assert_eq!(
        overview(&app, &cookie).await,
        StatusCode::OK,
        "still signed in"
    );

    // Assets carry their content's hash and are kept for a year.
    let page = client()
        .get(app.url("/console/overview"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (_, rest) = page.split_once(r#"<link rel="stylesheet" href=""#).unwrap();
    let stylesheet = rest.split('"').next().unwrap();
    assert!(stylesheet.starts_with("/console/assets/console.") && stylesheet.ends_with(".css"));
    let css = client().get(app.url(stylesheet)).send().await.unwrap();
    assert_eq!(css.status(), StatusCode::OK);
    assert!(
        css.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    assert_eq!(
        client()
            .get(app.url("/console/assets/console.css"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_acts_with_its_keys_scopes_on_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let settings = embedded_settings(dir.path());
    let app = TestApp::spawn(settings, Parts::ALL).await;
    let read_key =
        TestApp::make_key(&embedded_settings(dir.path()), &Tenant::default(), "read").await;
    let cookie = sign_in(&app, &read_key).await;
    let bearer = cookie.split_once('=').unwrap().1.to_owned();
    let listed = client()
        .get(app.url("/v1/links"))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), StatusCode::OK);
    let made = client()
        .post(app.url("/v1/links"))
        .bearer_auth(&bearer)
        .json(&serde_json::json!({"target": {"destination": "https://example.com/"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), StatusCode::FORBIDDEN);
    // The console's own pages for a read key: no editing.
    let new_link = client()
        .get(app.url("/console/links/new"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(new_link.status(), StatusCode::FORBIDDEN);
    let pool = client()
        .get(app.url("/console/pool"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(pool.status(), StatusCode::FORBIDDEN);
    app.stop().await;
}

/// A link changed a thousand times: its page lists the latest 50 lines of its audit log,
/// newest first, and says how many there are; the CSV export follows the API's pages and
/// holds every line, oldest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_audit_log_is_listed_in_part_and_exported_whole() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(embedded_settings(dir.path()), Parts::ALL).await;
    let cookie = sign_in(&app, app.key.as_deref().unwrap()).await;
    let durable = DurableStore::connect(&embedded_settings(dir.path()))
        .await
        .unwrap();
    let store = redirect::LinkStore::open(durable.database()).await.unwrap();
    let tenant = Tenant::default();
    let target = serde_json::json!({"destination": "https://shop.example/"});
    let link = tests::new_link(&tenant, serde_json::from_value(target).unwrap(), "k1");
    let key = link.key.clone();
    assert!(store.create(&link, "k1").await.unwrap());
    let changes = 1_100;
    for change in 1..=changes {
        let status = if change % 2 == 1 {
            records::RedirectStatus::TemporaryRedirect
        } else {
            records::RedirectStatus::Found
        };
        let edit = redirect::store::Edit {
            key: &key,
            tenant: &tenant,
            base_version: 1,
            target: None,
            status: Some(status),
            tags: None,
            note: Some(format!("change {change}")),
            actor: "k1",
        };
        store.edit(edit, "update").await.unwrap();
    }
    let lines = changes + 1;

    let page = client()
        .get(app.url(&format!("/console/links/{key}")))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.unwrap();
    let (_, audit) = page.split_once(r#"id="audit-title""#).unwrap();
    let (audit, _) = audit.split_once("</section>").unwrap();
    assert!(
        audit.contains(&format!("The latest 50 of {lines}; the CSV holds them all")),
        "{audit}"
    );
    assert_eq!(audit.matches("<tr><td").count(), 50);
    let first_listed = audit.find(&format!("change {changes}")).unwrap();
    let second_listed = audit.find(&format!("change {}", changes - 1)).unwrap();
    assert!(first_listed < second_listed, "newest first");
    assert!(audit.contains(&format!("change {}", changes - 49)));
    assert!(!audit.contains(&format!("change {}", changes - 50)));

    let csv = client()
        .get(app.url(&format!("/console/export/links/{key}/audit.csv")))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), StatusCode::OK);
    let csv = csv.text().await.unwrap();
    let rows: Vec<&str> = csv.split_terminator("\r\n").collect();
    assert_eq!(rows.len(), 1 + lines as usize, "a header and every line");
    assert!(rows[1].contains(",k1,create,1,"), "{}", rows[1]);
    for (change, row) in (1..=changes).zip(&rows[2..]) {
        assert!(
            row.contains(&format!("change {change}\"")),
            "line {change} in order: {row}"
        );
    }
    app.stop().await;
}
