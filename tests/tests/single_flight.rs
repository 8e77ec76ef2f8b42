//! A herd on one cold code, or one cold link, reaches the database once. Its own test binary
//! on purpose: it reads the process-wide metrics, which the tests of the system binary move.
//! The two tests here read different counters.

#![allow(clippy::unwrap_used)] // test code: a panic is how a failure is reported

use futures::StreamExt;
use serde_json::{Value, json};

use qrpool::Parts;
use tests::{TestApp, embedded_settings};

/// The value of one counter in Prometheus text, 0 when it has not been counted yet.
fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

async fn herd(app: &TestApp, path: &str, requests: usize) -> Vec<u16> {
    futures::stream::iter(0..requests)
        .map(|_| async { app.get(path).await.status().as_u16() })
        .buffer_unordered(requests)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_on_one_cold_code_makes_one_database_lookup_and_an_unknown_id_too() {
    let dir = tempfile::tempdir().unwrap();
    let pregen_and_binder = Parts {
        pregen: true,
        binder: true,
        middle_page: false,
    };
    let binder = TestApp::spawn(embedded_settings(dir.path()), pregen_and_binder).await;
    let body: Value = binder
        .bind(&json!({"params": {"listing": "billboard"}}))
        .await
        .json()
        .await
        .unwrap();
    let id = body["request_id"].as_str().unwrap();

    // A separate middle page: its in-process cache has never seen the code.
    let mut settings = embedded_settings(dir.path());
    settings.middle_page.negative_ttl_ms = 60_000;
    let scans = TestApp::spawn(settings, Parts::MIDDLE_PAGE).await;
    let hits = r#"bindings_lookups_total{tier="database",outcome="hit"}"#;
    let misses = r#"bindings_lookups_total{tier="database",outcome="miss"}"#;
    let before = scans.get("/metrics").await.text().await.unwrap();

    let statuses = herd(&scans, &format!("/m/{id}"), 300).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let statuses = herd(&scans, "/m/0000000000000000000042", 300).await;
    assert!(statuses.iter().all(|&s| s == 404), "{statuses:?}");

    let after = scans.get("/metrics").await.text().await.unwrap();
    assert_eq!(
        counter(&after, hits) - counter(&before, hits),
        1,
        "300 scans of a bound code, one lookup"
    );
    assert_eq!(
        counter(&after, misses) - counter(&before, misses),
        1,
        "300 scans of an unknown id, one lookup"
    );
    scans.stop().await;
    binder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_on_one_cold_link_makes_one_database_lookup_and_an_unknown_key_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = embedded_settings(dir.path());
    settings.redirect.allowed_hosts =
        [("default".to_owned(), vec!["shop.example".to_owned()])].into();
    let admin = TestApp::spawn(settings, Parts::ALL).await;
    let link: Value = admin
        .client
        .post(admin.url("/v1/links"))
        .json(&json!({"target": {"destination": "https://shop.example/billboard"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = link["key"].as_str().unwrap();

    // A separate scan side: its in-process cache has never seen the link.
    let mut settings = embedded_settings(dir.path());
    settings.middle_page.negative_ttl_ms = 60_000;
    let scans = TestApp::spawn(settings, Parts::MIDDLE_PAGE).await;
    let lookups = r#"redirect_lookups_total{tier="database"}"#;
    let before = counter(&scans.get("/metrics").await.text().await.unwrap(), lookups);

    // The test client follows redirects: a 302 to shop.example would leave the machine.
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let herd = |path: String| {
        let no_follow = no_follow.clone();
        let url = scans.url(&path);
        async move {
            futures::stream::iter(0..300)
                .map(|_| async { no_follow.get(&url).send().await.unwrap().status().as_u16() })
                .buffer_unordered(300)
                .collect::<Vec<u16>>()
                .await
        }
    };
    let statuses = herd(format!("/r/{key}")).await;
    assert!(statuses.iter().all(|&s| s == 302), "{statuses:?}");
    let after_hits = counter(&scans.get("/metrics").await.text().await.unwrap(), lookups);
    assert_eq!(after_hits - before, 1, "300 scans of a link, one lookup");
    let statuses = herd("/r/0000000000".to_owned()).await;
    assert!(statuses.iter().all(|&s| s == 404), "{statuses:?}");
    let after = counter(&scans.get("/metrics").await.text().await.unwrap(), lookups);
    assert_eq!(
        after - after_hits,
        1,
        "300 scans of an unknown key, one lookup"
    );
    scans.stop().await;
    admin.stop().await;
}
