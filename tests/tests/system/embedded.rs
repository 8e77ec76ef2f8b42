//! The whole flow on the embedded backends, exactly as `qrpool up` runs it with no
//! configuration: pregen → pool → binder → bindings → middle page, over real HTTP.

#![allow(clippy::unwrap_used)] // test code: a panic is how a failure is reported

use std::collections::HashSet;

use serde_json::{Value, json};

use qrpool::Parts;
use tests::{TestApp, decode_qr, embedded_settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_are_bound_once_each_and_resolve_on_the_middle_page() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(embedded_settings(dir.path()), Parts::ALL).await;

    let bound = app.bind_many(200, 32).await;

    let ids: HashSet<&str> = bound
        .iter()
        .map(|b| b["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 200, "every bind got its own code");
    for body in &bound {
        let id = body["request_id"].as_str().unwrap();
        assert_eq!(
            body["url"],
            format!("{}/m/{id}?qr=1", app.base),
            "the code opens the fixed middle page, marked as printed"
        );
        assert!(id.len() <= 32, "fits a WeChat scene");

        let scene: Value = app
            .get(&format!("/v1/scene/{id}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(scene["params"], body["params"]);

        let page = app.get(&format!("/m/{id}")).await;
        assert_eq!(page.status(), 200);
        assert!(
            page.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let listing = body["params"]["listing"].as_str().unwrap();
        assert!(
            page.text()
                .await
                .unwrap()
                .contains(&format!("<dd>{listing}</dd>"))
        );
    }
    app.stop().await;

    let store = bindings::DurableStore::connect(&embedded_settings(dir.path()))
        .await
        .unwrap();
    assert_eq!(store.count().await.unwrap(), 200, "one durable row per 201");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_png_decodes_to_the_middle_page_url_and_the_svg_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(embedded_settings(dir.path()), Parts::ALL).await;
    let body: Value = app
        .bind(&json!({"params": {"listing": 7}}))
        .await
        .json()
        .await
        .unwrap();

    let png = app
        .client
        .get(body["image"]["png"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(png.status(), 200);
    assert_eq!(png.headers()["content-type"], "image/png");
    let png = png.bytes().await.unwrap();
    assert_eq!(decode_qr(&png), body["url"].as_str().unwrap());

    let svg = app
        .client
        .get(body["image"]["svg"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(svg.status(), 200);
    assert_eq!(svg.headers()["content-type"], "image/svg+xml");
    assert!(svg.text().await.unwrap().starts_with("<?xml"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn params_are_escaped_on_the_landing_page() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(embedded_settings(dir.path()), Parts::ALL).await;
    let attack = "<script>alert('x')</script>";
    let body: Value = app
        .bind(&json!({"params": {"title": attack}}))
        .await
        .json()
        .await
        .unwrap();
    let html = app
        .get(&format!("/m/{}", body["request_id"].as_str().unwrap()))
        .await
        .text()
        .await
        .unwrap();
    assert!(!html.contains("<script>"), "{html}");
    assert!(html.contains("&#60;script&#62;"), "{html}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_landing_page_shows_its_brand_and_chosen_fields_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = embedded_settings(dir.path());
    settings.targets.insert(
        "default".into(),
        [(
            "app".to_owned(),
            "https://m.acme.example/l/{listing_id}".to_owned(),
        )]
        .into(),
    );
    settings.landing.insert(
        "default".into(),
        config::LandingSettings {
            title: Some("Acme <Realty>".into()),
            accent: Some("#0a7d5a".into()),
            logo_url: Some("https://cdn.acme.example/logo.png".into()),
            fields: Some(vec!["listing_id".into(), "price".into(), "missing".into()]),
            labels: [("listing_id".to_owned(), "Listing".to_owned())].into(),
            button_target: Some("app".into()),
            button_label: Some("Open in the app".into()),
        },
    );
    let app = TestApp::spawn(settings, Parts::ALL).await;
    let body: Value = app
        .bind(&json!({"params": {"listing_id": "L 7/\"x\"", "price": "<b>1</b>", "internal": "hidden"}}))
        .await
        .json()
        .await
        .unwrap();
    let html = app
        .get(&format!("/m/{}", body["request_id"].as_str().unwrap()))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("<title>Acme &#60;Realty&#62;</title>"),
        "{html}"
    );
    // The accent colour, in the style block the page's policy allows by hash.
    assert!(html.contains("h1.accent{color:#0a7d5a}"), "{html}");
    assert!(html.contains(r#"<h1 class="accent">"#), "{html}");
    assert!(
        html.contains(r#"src="https://cdn.acme.example/logo.png""#),
        "{html}"
    );
    let listing = html
        .find("<dt>Listing</dt>")
        .expect("the label replaces the name");
    let price = html
        .find("<dt>price</dt>")
        .expect("an unlabelled field keeps its name");
    assert!(listing < price, "fields in the configured order");
    assert!(html.contains("&#60;b&#62;1&#60;/b&#62;"), "{html}");
    assert!(
        !html.contains("hidden") && !html.contains("missing"),
        "only the chosen params: {html}"
    );
    assert!(
        html.contains(r#"href="https://m.acme.example/l/L%207%2F%22x%22""#),
        "the button is the tenant's target, its values percent-encoded: {html}"
    );
    assert!(html.contains(">Open in the app</a>"), "{html}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let settings = embedded_settings(dir.path());
    let target = settings.pregen.target_depth;
    let app = TestApp::spawn(settings, Parts::ALL).await;

    let oversized = format!(r#"{{"params": {{"x": "{}"}}}}"#, "a".repeat(70_000));
    let too_big_params = format!(r#"{{"params": {{"x": "{}"}}}}"#, "a".repeat(5_000));
    let cases: [(&str, String, &str, u16); 9] = [
        (
            "malformed JSON",
            r#"{"params": "#.into(),
            "application/json",
            400,
        ),
        (
            "params an array",
            r#"{"params": [1, 2]}"#.into(),
            "application/json",
            422,
        ),
        (
            "params a string",
            r#"{"params": "x"}"#.into(),
            "application/json",
            422,
        ),
        ("params missing", "{}".into(), "application/json", 422),
        (
            // serde would read the fields in order from an array; no client means that.
            "the body an array of the fields",
            r#"[{"listing": 1}, null, []]"#.into(),
            "application/json",
            422,
        ),
        ("no content type", r#"{"params": {}}"#.into(), "", 415),
        (
            "not JSON at all",
            "params=1".into(),
            "application/x-www-form-urlencoded",
            415,
        ),
        ("body over the limit", oversized, "application/json", 413),
        (
            "params over their limit",
            too_big_params,
            "application/json",
            422,
        ),
    ];
    for (case, body, content_type, status) in cases {
        let response = app.bind_raw(body, content_type).await;
        assert_eq!(response.status(), status, "{case}");

        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{case}"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["status"], status, "{case}");
        assert!(
            problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{case}: {problem}"
        );
    }

    for path in [
        "/m/not-an-id",
        "/m/0000000000000000000000",
        "/m/zzzzzzzzzzzzzzzzzzzzzz",
        "/m/%3Cscript%3E",
    ] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 404, "{path}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{path}"
        );
        assert!(
            response
                .text()
                .await
                .unwrap()
                .contains("doesn't lead anywhere"),
            "{path}"
        );
    }
    for path in [
        "/v1/scene/not-an-id",
        "/v1/scene/0000000000000000000000",
        "/v1/codes/0000000000000000000000/qr.png",
    ] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 404, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{path}"
        );
    }
    app.stop().await;

    let store = bindings::DurableStore::connect(&embedded_settings(dir.path()))
        .await
        .unwrap();
    assert_eq!(
        store.count().await.unwrap(),
        0,
        "no bad request bound anything"
    );
    let pool = pool::PoolWriter::Embedded(pool::EmbeddedPool::open(dir.path()).await.unwrap());
    assert_eq!(
        pool.depth("local").await.unwrap(),
        target,
        "no bad request used up a code"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_never_hands_out_a_code_bound_before() {
    let dir = tempfile::tempdir().unwrap();
    let first = TestApp::spawn(embedded_settings(dir.path()), Parts::ALL).await;
    let before: Vec<Value> = first.bind_many(50, 8).await;
    first.stop().await;

    let second = TestApp::spawn(embedded_settings(dir.path()), Parts::ALL).await;
    let after: Vec<Value> = second.bind_many(50, 8).await;
    // Everything bound before the restart still resolves after it.
    for body in &before {
        let response = second
            .get(&format!(
                "/v1/scene/{}",
                body["request_id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(response.status(), 200);
    }
    second.stop().await;

    let ids: HashSet<&str> = before
        .iter()
        .chain(&after)
        .map(|b| b["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_answer() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(embedded_settings(dir.path()), Parts::ALL).await;
    app.bind(&json!({"params": {}})).await;

    assert_eq!(app.get("/healthz").await.status(), 200);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    assert_eq!(
        ready.text().await.unwrap(),
        "bindings: ok\npool: ok\nissuer: ok\nanalytics: ok\n"
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"http_requests_total{route="/v1/codes",method="POST",status="201"}"#),
        "{metrics}"
    );
    assert!(metrics.contains("binder_binds_total"), "{metrics}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_part_runs_alone_and_they_meet_in_the_shared_stores() {
    let dir = tempfile::tempdir().unwrap();
    let pregen = TestApp::spawn(embedded_settings(dir.path()), Parts::PREGEN).await;
    let binder = TestApp::spawn(embedded_settings(dir.path()), Parts::BINDER).await;
    let middle_page = TestApp::spawn(embedded_settings(dir.path()), Parts::MIDDLE_PAGE).await;

    let body: Value = binder
        .bind(&json!({"params": {"listing": "apart"}}))
        .await
        .json()
        .await
        .unwrap();
    let id = body["request_id"].as_str().unwrap();
    let scene: Value = middle_page
        .get(&format!("/v1/scene/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(scene["params"]["listing"], "apart");

    // Each part serves only its own routes, and checks only what it depends on.
    assert_eq!(binder.get(&format!("/m/{id}")).await.status(), 404);
    assert_eq!(middle_page.bind(&json!({"params": {}})).await.status(), 404);
    assert_eq!(
        pregen.get("/readyz").await.text().await.unwrap(),
        "pool: ok\nissuer: ok\n"
    );
    assert_eq!(
        binder.get("/readyz").await.text().await.unwrap(),
        "bindings: ok\npool: ok\nanalytics: ok\n"
    );
    assert_eq!(
        middle_page.get("/readyz").await.text().await.unwrap(),
        "bindings: ok\n"
    );

    for app in [pregen, binder, middle_page] {
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_with_binds_in_flight_loses_no_code_and_no_acknowledged_bind() {
    let dir = tempfile::tempdir().unwrap();
    let settings = embedded_settings(dir.path());
    let made = settings.pregen.target_depth;
    let app = TestApp::spawn(settings, Parts::ALL).await;

    // 32 clients keep binding; the app is told to stop once 50 binds are acknowledged, so
    // that binds are certainly in flight (300 codes, up to 640 attempts) when it stops.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let (client, url, done) = (app.client.clone(), app.url("/v1/codes"), done.clone());
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for _ in 0..20 {
                    let Ok(response) = client.post(&url).json(&json!({"params": {}})).send().await
                    else {
                        break;
                    };
                    if response.status() != 201 {
                        break;
                    }
                    let body: Value = response.json().await.unwrap();
                    acknowledged.push(body["request_id"].as_str().unwrap().to_owned());
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                acknowledged
            })
        })
        .collect();
    while done.load(std::sync::atomic::Ordering::SeqCst) < 50 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    app.stop().await;
    let mut acknowledged = Vec::new();
    for client in clients {
        acknowledged.extend(client.await.unwrap());
    }
    assert!(
        !acknowledged.is_empty(),
        "some binds finished before the stop"
    );

    let settings = embedded_settings(dir.path());
    let bindings = bindings::Bindings::connect(&settings).await.unwrap();
    for id in &acknowledged {
        let id = records::RequestId::parse(id).unwrap();
        assert!(
            bindings.resolve(id).await.unwrap().is_some(),
            "a 201 was not durable"
        );
    }
    let bound = bindings.durable().count().await.unwrap() as u64;
    let pooled = pool::PoolWriter::Embedded(pool::EmbeddedPool::open(dir.path()).await.unwrap())
        .depth("local")
        .await
        .unwrap();
    assert_eq!(
        bound,
        acknowledged.len() as u64,
        "every bound code was acknowledged to its client"
    );
    assert_eq!(
        bound + pooled,
        made,
        "every code is either bound or still in the pool"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_local_lane_draws_codes_on_demand_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = embedded_settings(dir.path());
    settings.binder.on_demand_local = true;
    settings.pregen.target_depth = 3;
    settings.pregen.low_water = 0;
    let app = TestApp::spawn(settings, Parts::ALL).await;

    // Three from the pool, then five more than it holds, each answered at once.
    let codes = app.bind_many(8, 2).await;
    let ids: std::collections::HashSet<&str> = codes
        .iter()
        .map(|code| code["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 8, "no code handed out twice");
    for code in &codes {
        let id = code["request_id"].as_str().unwrap();
        let png = app.get(&format!("/v1/codes/{id}/qr.png")).await;
        assert_eq!(
            decode_qr(&png.bytes().await.unwrap()),
            format!("{}/m/{id}?qr=1", app.base),
            "an on-demand code is a real code of the middle page"
        );
        assert_eq!(app.get(&format!("/m/{id}")).await.status(), 200);
    }
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let on_demand = metrics
        .lines()
        .find(|line| line.starts_with("binder_on_demand_codes_total"))
        .unwrap_or_default();
    assert_eq!(
        on_demand, "binder_on_demand_codes_total{issuer=\"local\"} 5",
        "the five the pool lacked were drawn on demand, and counted"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_drawn_to_the_options_asked_for_and_still_decode() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(embedded_settings(dir.path()), Parts::ALL).await;
    let code: Value = app.bind(&json!({"params": {}})).await.json().await.unwrap();
    let id = code["request_id"].as_str().unwrap();
    let url = format!("{}/m/{id}?qr=1", app.base);

    let default = app
        .get(&format!("/v1/codes/{id}/qr.png"))
        .await
        .bytes()
        .await
        .unwrap();
    let small = app
        .get(&format!(
            "/v1/codes/{id}/qr.png?scale=3&margin=2&ec=H&dark=1a237e&light=fff8e1"
        ))
        .await;
    assert_eq!(small.status(), 200);
    let small = small.bytes().await.unwrap();
    let side = |png: &[u8]| u32::from_be_bytes(png[16..20].try_into().unwrap());
    assert!(
        side(&small) < side(&default),
        "scale 3 is smaller than the default 8"
    );
    assert_eq!(side(&small) % 3, 0);
    assert_eq!(small[25], 3, "colours make a palette PNG");
    assert_eq!(
        decode_qr(&small),
        url,
        "the options keep it a readable code"
    );

    let svg = app
        .get(&format!("/v1/codes/{id}/qr.svg?dark=004d40"))
        .await
        .text()
        .await
        .unwrap();
    assert!(svg.contains(r##"fill="#004d40""##));

    for bad in [
        "scale=0",
        "scale=21",
        "margin=11",
        "dark=zzz",
        "ec=X",
        "size=3",
    ] {
        let response = app.get(&format!("/v1/codes/{id}/qr.png?{bad}")).await;
        assert_eq!(response.status(), 400, "{bad}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(
            problem["type"], "urn:qrpool:problem:bad-image-options",
            "{bad}"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_answer_head_and_revalidate_by_version() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(embedded_settings(dir.path()), Parts::ALL).await;
    let code: Value = app
        .bind(&json!({"params": {"price": 1}}))
        .await
        .json()
        .await
        .unwrap();
    let id = code["request_id"].as_str().unwrap();

    for path in [format!("/m/{id}"), format!("/v1/scene/{id}")] {
        let first = app.get(&path).await;
        assert_eq!(first.status(), 200, "{path}");
        assert_eq!(first.headers()["cache-control"], "private, no-cache");
        let etag = first.headers()["etag"].to_str().unwrap().to_owned();

        let head = app.client.head(app.url(&path)).send().await.unwrap();
        assert_eq!(head.status(), 200);
        assert_eq!(head.headers()["etag"], etag.as_str());
        assert!(head.bytes().await.unwrap().is_empty(), "HEAD has no body");

        let again = app
            .client
            .get(app.url(&path))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(
            again.status(),
            304,
            "{path}: the scanner holds this version"
        );
        assert!(again.bytes().await.unwrap().is_empty());
    }

    // A change is a new version: the old tag no longer matches.
    let old = app.get(&format!("/m/{id}")).await.headers()["etag"].clone();
    let changed = app
        .client
        .patch(app.url(&format!("/v1/codes/{id}")))
        .json(&json!({"params": {"price": 2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    let fresh = app
        .client
        .get(app.url(&format!("/m/{id}")))
        .header("if-none-match", old.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status(), 200);
    assert_ne!(fresh.headers()["etag"], old);

    let unknown = app.get("/m/0000000000000000000000").await;
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.headers()["cache-control"], "no-store");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scan_leaves_an_event_and_never_the_scanners_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = embedded_settings(dir.path());
    settings.scans.country_header = Some("cf-ipcountry".into());
    let app = TestApp::spawn(settings, Parts::ALL).await;
    let code: Value = app.bind(&json!({"params": {}})).await.json().await.unwrap();
    let id = code["request_id"].as_str().unwrap().to_owned();

    let scanned = app
        .client
        .get(app.url(&format!("/m/{id}?qr=1")))
        .header(
            "user-agent",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) MicroMessenger/8.0",
        )
        .header("referer", "https://poster.example/summer")
        .header("x-forwarded-for", "198.51.100.23")
        .header("cf-ipcountry", "cn")
        .send()
        .await
        .unwrap();
    assert_eq!(scanned.status(), 200);
    assert_eq!(app.get(&format!("/v1/scene/{id}")).await.status(), 200);
    assert_eq!(app.get("/m/0000000000000000000000").await.status(), 404);
    // A link checker's HEAD is answered but is nobody scanning.
    let checked = app.client.head(app.url(&format!("/m/{id}"))).send().await;
    assert_eq!(checked.unwrap().status(), 200);
    app.stop().await; // drains the event queue

    let file = dir
        .path()
        .join("scans")
        .join(format!("{}.jsonl", chrono::Utc::now().date_naive()));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("198.51.100"), "the address is never written");
    let events: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(events.len(), 3, "{text}");
    let qr = &events[0];
    assert_eq!(qr["key"], id.as_str());
    assert_eq!(qr["outcome"], "bound");
    assert_eq!(qr["tenant"], "default");
    assert_eq!(qr["device"], "ios");
    assert_eq!(qr["browser"], "WeChat");
    assert_eq!(qr["os"], "iOS");
    assert_eq!(qr["kind"], "code");
    assert_eq!(qr["country"], "CN");
    assert_eq!(
        qr["referrer"], "poster.example",
        "the referrer's host, no path"
    );
    assert!(
        !text.contains("summer") && !text.contains("Mozilla"),
        "nor its path or the raw agent"
    );
    assert_eq!(qr["via_qr"], true);
    assert_eq!(qr["visitor"].as_str().unwrap().len(), 16);
    assert_eq!(
        events[1]["via_qr"], false,
        "the scene fetch is no printed-code scan"
    );
    assert_eq!(events[2]["outcome"], "unknown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_naming_a_target_redirects_scanners_there_and_only_there() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = embedded_settings(dir.path());
    settings.targets.insert(
        "default".into(),
        [(
            "listing".to_owned(),
            "https://m.acme.example/listing/{listing_id}?agent={agent}".to_owned(),
        )]
        .into(),
    );
    let app = TestApp::spawn(settings, Parts::ALL).await;
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let scan = |params: Value| {
        let app = &app;
        let no_follow = no_follow.clone();
        async move {
            let code: Value = app
                .bind(&json!({ "params": params }))
                .await
                .json()
                .await
                .unwrap();
            let id = code["request_id"].as_str().unwrap().to_owned();
            no_follow
                .get(app.url(&format!("/m/{id}")))
                .send()
                .await
                .unwrap()
        }
    };

    let redirected =
        scan(json!({"target": "listing", "listing_id": "L 7", "agent": "a/1@x"})).await;
    assert_eq!(redirected.status(), 302);
    assert_eq!(
        redirected.headers()["location"],
        "https://m.acme.example/listing/L%207?agent=a%2F1%40x",
        "values are encoded: they cannot leave the operator's host"
    );

    for params in [
        json!({"target": "listing", "listing_id": "L 7"}),
        json!({"target": "elsewhere", "listing_id": "L 7", "agent": "a"}),
        json!({"listing_id": "L 7", "agent": "a"}),
    ] {
        assert_eq!(
            scan(params.clone()).await.status(),
            200,
            "landing page for {params}"
        );
    }
    app.stop().await;
}
