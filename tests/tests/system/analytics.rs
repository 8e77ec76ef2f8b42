//! Scan analytics as tenants use them: scans from phones in several countries through a
//! trusted proxy, read back by country, browser, print or click, campaign and tag, as JSON and
//! CSV; an A/B link with conversions read out with its lift; and, on Kafka, the events topic
//! relayed into the embedded store, or fed into ClickHouse (chDB) by the ingest, answering
//! the same questions.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde_json::{Value, json};

use qrpool::Parts;
use records::Tenant;
use tests::chdb::Chdb;
use tests::{Backends, TestApp, TestDatabase, distributed_settings, embedded_settings, unique};

const IPHONE_WECHAT: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.44(0x18002c2e) NetType/WIFI Language/zh_CN";
const PIXEL_CHROME: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.144 Mobile Safari/537.36";
const MAC_FIREFOX: &str =
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.2; rv:121.0) Gecko/20100101 Firefox/121.0";
/// Addresses MaxMind's test database places: London, Milton (US), Linköping.
const LONDON: &str = "81.2.69.142";
const MILTON: &str = "216.160.83.56";
const LINKOPING: &str = "89.160.20.112";

fn geoip_db() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/geoip/GeoIP2-City-Test.mmdb")
}

/// Analytics as a deployment behind a proxy on this host has them.
fn behind_a_proxy(mut settings: config::Settings) -> config::Settings {
    settings.server.trusted_proxies = vec!["127.0.0.1/32".into(), "::1".into()];
    settings.analytics.geoip_db = Some(geoip_db());
    settings.analytics.flush_secs = 1;
    settings.redirect.allowed_hosts =
        BTreeMap::from([("default".to_owned(), vec!["shop.example".to_owned()])]);
    settings
}

/// A scan of `path` from a phone with `agent`, that the proxy says came from `address`.
async fn scan(app: &TestApp, path: &str, agent: &str, address: &str) -> reqwest::Response {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(app.url(path))
        .header("user-agent", agent)
        // The client wrote the first hop itself; the proxy appended the second.
        .header("x-forwarded-for", format!("10.6.6.6, {address}"))
        .send()
        .await
        .unwrap()
}

async fn analytics(app: &TestApp, key: &str, query: &str) -> Value {
    let response = app
        .client
        .get(app.url(&format!("/v1/analytics/scans?{query}")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "{query}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Asks until the totals reach `scans` (the ingest runs every second), at most 30 s; a store
/// that does not answer yet (a `503`) is asked again too. Rows and totals are two reads of a
/// store being written: an answer counts once its rows add up to its totals as well.
async fn until_scanned(app: &TestApp, key: &str, query: &str, scans: u64) -> Value {
    let started = Instant::now();
    loop {
        let response = app
            .client
            .get(app.url(&format!("/v1/analytics/scans?{query}")))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let answer: Value = response.json().await.unwrap();
        let in_rows: u64 = answer["rows"]
            .as_array()
            .map(|rows| rows.iter().filter_map(|row| row["scans"].as_u64()).sum())
            .unwrap_or_default();
        let grouped = query.contains("group_by=");
        if status == 200 && answer["totals"]["scans"] == scans && (!grouped || in_rows == scans) {
            return answer;
        }
        assert!(status == 200 || status == 503, "{query}: {status} {answer}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{query}: still {status} {answer} after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `group → (scans, visitors)` of an answer.
fn groups(answer: &Value) -> HashMap<String, (u64, u64)> {
    answer["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["group"].as_str().unwrap_or("(unknown)").to_owned(),
                (
                    row["scans"].as_u64().unwrap(),
                    row["visitors"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

/// The scans of the walk-through: three phones in three countries, a preview bot, a campaign
/// parameter, a click without the printed-code marker. Returns the key that read them.
async fn scan_from_three_countries(app: &TestApp) -> String {
    let key = app.key.clone().unwrap();
    let tagged: Value = app
        .bind(&json!({"params": {"listing": "L-1"}, "tags": ["spring"]}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tagged["tags"], json!(["spring"]));
    let plain: Value = app
        .bind(&json!({"params": {"listing": "L-2"}}))
        .await
        .json()
        .await
        .unwrap();
    let tagged = tagged["request_id"].as_str().unwrap();
    let plain = plain["request_id"].as_str().unwrap();
    for _ in 0..3 {
        let scanned = scan(app, &format!("/m/{tagged}?qr=1"), IPHONE_WECHAT, LONDON).await;
        assert_eq!(scanned.status(), 200);
    }
    scan(
        app,
        &format!("/m/{tagged}?qr=1&utm_source=flyer"),
        PIXEL_CHROME,
        MILTON,
    )
    .await;
    scan(app, &format!("/m/{tagged}"), MAC_FIREFOX, LINKOPING).await;
    scan(app, &format!("/m/{tagged}"), "WhatsApp/2.23.20.0 A", LONDON).await;
    scan(
        app,
        &format!("/v1/scene/{plain}?qr=1"),
        PIXEL_CHROME,
        MILTON,
    )
    .await;
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_through_a_trusted_proxy_read_back_by_country_browser_print_campaign_and_tag() {
    let dir = tempfile::tempdir().unwrap();
    let settings = behind_a_proxy(embedded_settings(dir.path()));
    let app = TestApp::spawn(settings, Parts::ALL).await;
    let key = scan_from_three_countries(&app).await;

    // The preview bot is left out: 6 scans by 3 visitors (the Pixel twice, the same day).
    let by_country = until_scanned(&app, &key, "group_by=country", 6).await;
    assert_eq!(by_country["totals"]["visitors"], 3);
    let countries = groups(&by_country);
    assert_eq!(countries["GB"], (3, 1), "{by_country}");
    assert_eq!(countries["US"], (2, 1));
    assert_eq!(countries["SE"], (1, 1));
    assert!(
        !countries.contains_key("(unknown)"),
        "the spoofed hop was not believed"
    );
    let first = by_country["rows"][0]["group"].clone();
    assert_eq!(first, "GB", "most scanned first");

    let browsers = groups(&analytics(&app, &key, "group_by=browser").await);
    assert_eq!(browsers["WeChat"].0, 3);
    assert_eq!(browsers["Chrome Mobile"].0, 2);
    assert_eq!(browsers["Firefox"].0, 1);
    let printed = groups(&analytics(&app, &key, "group_by=via_qr").await);
    assert_eq!((printed["true"].0, printed["false"].0), (5, 1));
    let cities = groups(&analytics(&app, &key, "group_by=city&country=GB&country=SE").await);
    assert_eq!(
        cities.keys().collect::<std::collections::BTreeSet<_>>(),
        [&"Linköping".to_owned(), &"London".to_owned()].into()
    );
    let kinds = analytics(&app, &key, "group_by=kind").await;
    assert_eq!(groups(&kinds)["code"].0, 6);
    assert_eq!(
        analytics(&app, &key, "bots=include").await["totals"]["scans"],
        7
    );
    assert_eq!(
        analytics(&app, &key, "tag=spring").await["totals"]["scans"],
        5
    );
    assert_eq!(
        analytics(&app, &key, "utm_source=flyer").await["totals"]["scans"],
        1
    );
    let devices = groups(&analytics(&app, &key, "group_by=device&bots=include").await);
    assert_eq!(devices["bot"].0, 1);

    // A time series in the caller's zone: every hour of today there, with the day's scans.
    let today = chrono::Utc::now()
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .date_naive();
    let hourly = analytics(
        &app,
        &key,
        &format!("granularity=hour&tz=Asia/Shanghai&from={today}&to={today}&compare=previous"),
    )
    .await;
    let rows = hourly["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 24);
    assert!(
        rows[0]["bucket"]
            .as_str()
            .unwrap()
            .ends_with("T00:00:00+08:00")
    );
    assert_eq!(
        rows.iter()
            .map(|r| r["scans"].as_u64().unwrap())
            .sum::<u64>(),
        6
    );
    assert_eq!(hourly["totals"]["previous"]["scans"], 0);

    // The same rows as CSV, for a spreadsheet.
    let csv = app
        .client
        .get(app.url("/v1/analytics/scans?group_by=country&compare=previous"))
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let text = csv.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "country,scans,visitors,previous_scans,previous_visitors"
    );
    assert_eq!(lines[1], "GB,3,1,0,0");
    assert_eq!(lines.len(), 4);

    // A bad parameter is a 422 naming it; no key is a 401, a key without `read` a 403.
    for (query, parameter) in [
        ("group_by=ip", "group_by"),
        ("from=tomorrow", "from"),
        ("colour=red", "colour"),
    ] {
        let refused = app.get(&format!("/v1/analytics/scans?{query}")).await;
        assert_eq!(refused.status(), 422, "{query}");
        assert_eq!(
            refused.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = refused.json().await.unwrap();
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .starts_with(&format!("`{parameter}`")),
            "{problem}"
        );
    }
    let anonymous = reqwest::get(app.url("/v1/analytics/scans")).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let settings = behind_a_proxy(embedded_settings(dir.path()));
    let binder_only = TestApp::make_key(&settings, &Tenant::default(), "bind").await;
    let forbidden = app
        .client
        .get(app.url("/v1/analytics/scans"))
        .bearer_auth(&binder_only)
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), 403);
    // Another tenant sees none of it.
    let other = TestApp::make_key(&settings, &Tenant::parse("other").unwrap(), "read").await;
    let theirs = analytics(&app, &other, "bots=include").await;
    assert_eq!(theirs["totals"]["scans"], 0);
    assert_eq!(theirs["tenant"], "other");
    app.stop().await;
}

/// Where a scan of a tracked link was sent, and its click id.
async fn click(app: &TestApp, key: &str, n: usize) -> (String, String) {
    let scanned = scan(
        app,
        &format!("/r/{key}?qr=1"),
        &format!("{IPHONE_WECHAT} n{n}"),
        &format!("81.2.{}.{}", n / 200, n % 200 + 1),
    )
    .await;
    assert_eq!(scanned.status(), 302);
    let location = scanned.headers()["location"].to_str().unwrap().to_owned();
    let after = location.split("qrclid=").nth(1).unwrap();
    let click_id = after.split(['&', '#']).next().unwrap().to_owned();
    (location, click_id)
}

async fn convert(app: &TestApp, key: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url("/v1/conversions"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ab_link_with_conversions_reads_out_its_lift() {
    let dir = tempfile::tempdir().unwrap();
    let settings = behind_a_proxy(embedded_settings(dir.path()));
    let app = TestApp::spawn(settings, Parts::ALL).await;
    let key = app.key.clone().unwrap();
    let link: Value = app
        .client
        .post(app.url("/v1/links"))
        .json(&json!({"target": {
            "destination": "https://shop.example/",
            "split": [
                {"name": "a", "weight": 50, "destination": "https://shop.example/a?ref=qr"},
                {"name": "b", "weight": 50, "destination": "https://shop.example/b#offer"}
            ],
            "track_conversions": true
        }, "tags": ["spring"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let link_key = link["key"].as_str().unwrap().to_owned();
    assert_eq!(link["tags"], json!(["spring"]));

    // 80 visitors; every b converts, every third a; each b also signs up.
    let mut expected: HashMap<&str, (u64, u64)> = HashMap::new();
    for n in 0..80 {
        let (location, click_id) = click(&app, &link_key, n).await;
        let variant = if location.starts_with("https://shop.example/a?ref=qr&qrclid=") {
            "a"
        } else {
            assert!(
                location.starts_with("https://shop.example/b?qrclid="),
                "{location}"
            );
            assert!(location.ends_with("#offer"), "{location}");
            "b"
        };
        let entry = expected.entry(variant).or_default();
        entry.0 += 1;
        if variant == "b" || n % 3 == 0 {
            entry.1 += 1;
            let answer = convert(
                &app,
                &key,
                json!({"conversion_id": format!("order-{n}"), "click_id": click_id, "name": "purchase", "value": 20.0}),
            )
            .await;
            assert_eq!(answer.status(), 201);
            if variant == "b" {
                let signup = json!({"conversion_id": format!("signup-{n}"), "click_id": click_id, "name": "signup"});
                assert_eq!(convert(&app, &key, signup.clone()).await.status(), 201);
                // Sent again: the same conversion, not a second one.
                let again = convert(&app, &key, signup).await;
                assert_eq!(again.status(), 200);
                assert_eq!(again.headers()["idempotent-replayed"], "true");
            }
        }
    }
    // The same conversion id with another content is refused; a made-up click is a 422;
    // another tenant's app cannot report on this tenant's clicks.
    let (_, click_id) = click(&app, &link_key, 1_000).await;
    let reused = json!({"conversion_id": "order-0", "click_id": click_id, "name": "purchase"});
    assert_eq!(convert(&app, &key, reused).await.status(), 409);
    let made_up = json!({"conversion_id": "x", "click_id": "not-a-click", "name": "purchase"});
    assert_eq!(convert(&app, &key, made_up).await.status(), 422);
    let settings = behind_a_proxy(embedded_settings(dir.path()));
    let other = TestApp::make_key(&settings, &Tenant::parse("other").unwrap(), "bind read").await;
    let foreign = json!({"conversion_id": "y", "click_id": click_id, "name": "purchase"});
    assert_eq!(convert(&app, &other, foreign).await.status(), 404);
    let peeking = app
        .client
        .get(app.url(&format!("/v1/analytics/links/{link_key}/experiment")))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(peeking.status(), 404);

    // The readout, once the ingest has the 81 scans.
    until_scanned(&app, &key, &format!("key={link_key}"), 81).await;
    let readout: Value = app
        .get(&format!(
            "/v1/analytics/links/{link_key}/experiment?goal=purchase"
        ))
        .await
        .json()
        .await
        .unwrap();
    let variants = readout["variants"].as_array().unwrap();
    assert_eq!(
        variants[0]["variant"], "a",
        "the split's first variant is the control"
    );
    assert_eq!(variants[1]["variant"], "b");
    let (a, b) = (expected["a"], expected["b"]);
    assert_eq!(variants[1]["converted"], b.1);
    assert_eq!(variants[0]["converted"], a.1);
    let scans_a = variants[0]["scans"].as_u64().unwrap();
    let scans_b = variants[1]["scans"].as_u64().unwrap();
    assert_eq!(scans_a + scans_b, 81);
    assert!(variants[0]["lift"].is_null());
    let lift = &variants[1]["lift"];
    let rate = |converted: u64, scans: u64| converted as f64 / scans as f64;
    let expected_lift = rate(b.1, scans_b) / rate(a.1, scans_a) - 1.0;
    assert!(
        (lift["relative"].as_f64().unwrap() - expected_lift).abs() < 1e-9,
        "{readout}"
    );
    assert!(
        lift["low"].as_f64().unwrap() < expected_lift
            && expected_lift < lift["high"].as_f64().unwrap()
    );
    assert!(
        lift["p_value"].as_f64().unwrap() < 0.05,
        "b converts every click: {readout}"
    );
    assert_eq!(variants[1]["value"], 20.0 * b.1 as f64);
    assert_eq!(readout["goals"][0], "purchase");
    assert!(variants[1]["funnel"]["signup"].as_f64().unwrap() > 0.9);
    assert!(readout["method"].as_str().unwrap().contains("Katz"));
    app.stop().await;
}

/// Waits for [`scan_from_three_countries`]'s scans and reads them back by country.
async fn read_back_by_country(app: &TestApp, key: &str) {
    let by_country = until_scanned(app, key, "group_by=country", 6).await;
    let countries = groups(&by_country);
    assert_eq!(countries.get("GB"), Some(&(3, 1)), "{by_country}");
    assert_eq!(countries.get("US"), Some(&(2, 1)), "{by_country}");
    assert_eq!(countries.get("SE"), Some(&(1, 1)), "{by_country}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_the_embedded_store_is_filled_from_the_events_topic_once_across_restarts() {
    let backends = Backends::from_env();
    let database = TestDatabase::create(&backends).await;
    let topic = unique("analytics_relay");
    let prefix = format!("{}:", unique("r"));
    // `analytics.backend` left as it comes: embedded.
    let settings = || behind_a_proxy(distributed_settings(&backends, &database, &topic, &prefix));
    let app = TestApp::spawn(settings(), Parts::ALL).await;
    let key = scan_from_three_countries(&app).await;
    read_back_by_country(&app, &key).await;
    assert_eq!(
        analytics(&app, &key, "bots=include").await["totals"]["scans"],
        7
    );
    assert!(app.metric("analytics_relayed_events_total").await >= 7.0);
    app.stop().await;

    // Started again on the same data folder: the relay goes on from its checkpoint, so what it
    // appended before is not appended twice, and what came while it was down arrives.
    let app = TestApp::spawn(settings(), Parts::ALL).await;
    let key = app.key.clone().unwrap();
    let code: Value = app.bind(&json!({"params": {}})).await.json().await.unwrap();
    let path = format!("/m/{}?qr=1", code["request_id"].as_str().unwrap());
    assert_eq!(
        scan(&app, &path, PIXEL_CHROME, LINKOPING).await.status(),
        200
    );
    let by_country = until_scanned(&app, &key, "group_by=country", 7).await;
    assert_eq!(groups(&by_country).get("SE"), Some(&(2, 2)), "{by_country}");
    // Three more ingest rounds: still 7, nothing came twice.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(analytics(&app, &key, "").await["totals"]["scans"], 7);
    app.stop().await;
    database.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_scans_reach_clickhouse_through_the_ingest_and_read_back_alike() {
    let chdb = Chdb::start();
    let backends = Backends::from_env();
    let database = TestDatabase::create(&backends).await;
    let topic = unique("analytics");
    let prefix = format!("{}:", unique("a"));
    let make_settings = || {
        let mut settings =
            behind_a_proxy(distributed_settings(&backends, &database, &topic, &prefix));
        settings.analytics.backend = config::AnalyticsBackend::Clickhouse;
        settings.analytics.clickhouse.url = chdb.url.clone();
        settings.analytics.clickhouse.database = "qrpool_e2e".into();
        settings.analytics.clickhouse.ingest_group = format!("{topic}-analytics");
        settings.analytics.clickhouse.password = Some(SecretString::from("unused by chdb"));
        settings
    };
    let settings = make_settings();
    let app = TestApp::spawn(make_settings(), Parts::ALL).await;

    // `qrpool analytics ingest`, as its own task.
    let store = analytics::clickhouse::ClickHouseStore::connect(&settings.analytics.clickhouse)
        .await
        .unwrap();
    let feed = analytics::KafkaFeed::connect(&settings, store).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let feeding = tokio::spawn(feed.run(stop.clone()));

    let key = scan_from_three_countries(&app).await;
    read_back_by_country(&app, &key).await;
    assert_eq!(
        analytics(&app, &key, "tag=spring").await["totals"]["scans"],
        5
    );
    assert_eq!(
        analytics(&app, &key, "bots=include").await["totals"]["scans"],
        7
    );
    let browsers = groups(&analytics(&app, &key, "group_by=browser").await);
    assert_eq!(browsers["WeChat"].0, 3);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("analytics_lag_seconds"),
        "the ingest exports its lag"
    );
    assert!(metrics.contains("analytics_ingested_events_total"));

    stop.cancel();
    feeding.await.unwrap().unwrap();
    app.stop().await;
    database.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_clickhouse_is_away_the_api_says_so_and_the_ingest_catches_up_when_it_returns() {
    let chdb_data = tempfile::tempdir().unwrap();
    let port = tests::free_port();
    let chdb = Chdb::start_at(port, chdb_data.path());
    let backends = Backends::from_env();
    let database = TestDatabase::create(&backends).await;
    let topic = unique("analytics_down");
    let prefix = format!("{}:", unique("d"));
    let make_settings = || {
        let mut settings =
            behind_a_proxy(distributed_settings(&backends, &database, &topic, &prefix));
        settings.analytics.backend = config::AnalyticsBackend::Clickhouse;
        settings.analytics.clickhouse.url = chdb.url.clone();
        settings.analytics.clickhouse.database = "qrpool_down".into();
        settings.analytics.clickhouse.ingest_group = format!("{topic}-analytics");
        settings
    };
    let settings = make_settings();
    let app = TestApp::spawn(make_settings(), Parts::ALL).await;
    let store = analytics::clickhouse::ClickHouseStore::connect(&settings.analytics.clickhouse)
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let feeding = tokio::spawn(
        analytics::KafkaFeed::connect(&settings, store)
            .unwrap()
            .run(stop.clone()),
    );
    let key = app.key.clone().unwrap();
    let code: Value = app.bind(&json!({"params": {}})).await.json().await.unwrap();
    let path = format!("/m/{}?qr=1", code["request_id"].as_str().unwrap());
    for _ in 0..3 {
        scan(&app, &path, PIXEL_CHROME, MILTON).await;
    }
    until_scanned(&app, &key, "", 3).await;

    // ClickHouse goes away: the API says so, and scans go on (their events wait in Kafka).
    drop(chdb);
    let answer = app.get("/v1/analytics/scans").await;
    assert_eq!(answer.status(), 503);
    assert_eq!(answer.headers()["content-type"], "application/problem+json");
    assert!(answer.headers().contains_key("retry-after"));
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("analytics:"));
    for _ in 0..2 {
        assert_eq!(scan(&app, &path, IPHONE_WECHAT, LONDON).await.status(), 200);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Back, with its data: the ingest's retried batch lands, and the API answers again.
    let _chdb = Chdb::start_at(port, chdb_data.path());
    let countries = groups(&until_scanned(&app, &key, "group_by=country", 5).await);
    assert_eq!(countries["US"].0, 3);
    assert_eq!(countries["GB"].0, 2);
    assert_eq!(app.get("/readyz").await.status(), 200);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("analytics_ingest_errors_total"),
        "the failed inserts were counted"
    );

    stop.cancel();
    feeding.await.unwrap().unwrap();
    app.stop().await;
    database.drop_now().await;
}
