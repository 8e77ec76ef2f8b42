//! The pages people see — a code's landing page, the unknown, expired and unavailable pages,
//! a link's not-found page — carry a content security policy (no script; only the base
//! style block, and a tenant's accent block, by hash; no framing), `nosniff` and no referrer.
//! That a browser applies the styles under that policy is tested in Chromium
//! (`web-console/tests/browser`).
#![allow(clippy::unwrap_used)]

use serde_json::json;

use qrpool::Parts;
use tests::{TestApp, embedded_settings};

fn assert_guarded(answer: &reqwest::Response, what: &str) {
    let headers = answer.headers();
    let policy = headers["content-security-policy"].to_str().unwrap();
    for part in [
        "default-src 'none'",
        "style-src 'sha256-",
        "frame-ancestors 'none'",
    ] {
        assert!(policy.contains(part), "{what}: {policy}");
    }
    assert!(
        !policy.contains("unsafe") && !policy.contains("script-src"),
        "{what}: {policy}"
    );
    assert_eq!(headers["x-content-type-options"], "nosniff", "{what}");
    assert_eq!(headers["referrer-policy"], "no-referrer", "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_people_see_carries_its_security_headers() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = embedded_settings(dir.path());
    settings.landing.insert(
        "default".into(),
        config::LandingSettings {
            title: Some("Spring open house".into()),
            accent: Some("#aa3300".into()),
            ..Default::default()
        },
    );
    let app = TestApp::spawn(settings, Parts::ALL).await;
    let code: serde_json::Value = app
        .bind(&json!({"params": {"listing": "L-1"}}))
        .await
        .json()
        .await
        .unwrap();
    let id = code["request_id"].as_str().unwrap();
    let client = reqwest::Client::new();

    let landing = client
        .get(app.url(&format!("/m/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(landing.status(), 200);
    assert_guarded(&landing, "landing");
    // The accent block's own hash is allowed: the default policy would not carry it.
    let policy = landing.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(policy.matches("'sha256-").count(), 2, "{policy}");
    let page = landing.text().await.unwrap();
    assert!(page.contains("h1.accent{color:#aa3300}") && !page.contains("style=\""));

    let unknown = client
        .get(app.url("/m/0000000000000000000000"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_guarded(&unknown, "unknown code");
    let link = client.get(app.url("/r/AAAAAAAAAA")).send().await.unwrap();
    assert_eq!(link.status(), 404);
    assert_guarded(&link, "unknown link");
    // Revoked: the expired page.
    let revoked = app
        .client
        .delete(app.url(&format!("/v1/codes/{id}")))
        .send()
        .await
        .unwrap();
    assert!(revoked.status().is_success());
    let expired = client
        .get(app.url(&format!("/m/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(expired.status(), 410);
    assert_guarded(&expired, "expired code");
    app.stop().await;
}
