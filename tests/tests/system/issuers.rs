//! Pregen against a remote issuer: the stand-in WeChat-style API (the one stand-in we allow),
//! real Redis for the shared budget and token, the embedded pool in a temporary folder.
//! Quota windows are shortened to one second so that several fit in a test.
#![allow(clippy::unwrap_used)]

use qrpool::Parts;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use config::{IssuerSettings, QuotaSettings, Settings, WechatIssuerSettings};
use pool::{EmbeddedPool, PoolReader, PoolWriter};
use pregen::{IssueError, Pregen, PregenError};
use tests::wechat_api::{APP_ID, APP_SECRET, Behaviour, Counts, PAGE, WechatApi};
use tests::{Backends, TestApp, decode_qr, embedded_settings, unique};

const QUOTA: u32 = 40;
const WINDOW_MS: u64 = 1_000;

fn settings_for(
    api: &WechatApi,
    data_dir: &std::path::Path,
    shared_redis: Option<&str>,
) -> Settings {
    let mut settings = embedded_settings(data_dir);
    settings.pregen.batch = 50;
    settings.pregen.issuer = "wx".into();
    settings.pregen.issuers.insert(
        "wx".into(),
        IssuerSettings::Wechat(WechatIssuerSettings {
            endpoint: api.endpoint(),
            app_id: APP_ID.into(),
            app_secret: Some(SecretString::from(APP_SECRET)),
            page: PAGE.into(),
            quota: QuotaSettings {
                calls: QUOTA,
                window_ms: WINDOW_MS,
            },
            concurrency: 8,
            ..WechatIssuerSettings::default()
        }),
    );
    if let Some(prefix) = shared_redis {
        settings.redis.url = Some(SecretString::from(Backends::from_env().redis_url));
        settings.redis.key_prefix = prefix.to_owned();
    }
    settings.validate().unwrap();
    settings
}

/// Windows the workers were busy in from start to end (the first and last are partial).
fn full_windows(counts: &Counts) -> Vec<u64> {
    let calls: Vec<u64> = counts.calls_per_window.values().copied().collect();
    calls[1..calls.len().saturating_sub(1)].to_vec()
}

fn assert_quota_kept_and_used(counts: &Counts) {
    assert_eq!(counts.over_quota, 0, "no call over quota: {counts:?}");
    let full = full_windows(counts);
    assert!(full.len() >= 2, "the run spans full windows: {counts:?}");
    let floor = (f64::from(QUOTA) * 0.95).ceil() as u64;
    for calls in &full {
        assert!(*calls <= u64::from(QUOTA), "{counts:?}");
        assert!(
            *calls >= floor,
            "at least 95 % of the quota used in every full window: {counts:?}"
        );
    }
}

async fn pooled_codes(pool: EmbeddedPool) -> Vec<records::PoolRecord> {
    let reader = PoolReader::Embedded(pool.lane("wx"));
    let mut records = Vec::new();
    while let Some(delivery) = reader.take(std::time::Duration::ZERO).await.unwrap() {
        records.push(delivery.record);
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_keeps_to_the_quota_and_uses_it() {
    let api = WechatApi::start(Behaviour {
        quota: QUOTA,
        window_ms: WINDOW_MS,
        ..Behaviour::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let settings = settings_for(&api, dir.path(), None);
    let pool = EmbeddedPool::open(dir.path()).await.unwrap();
    let pregen = Pregen::from_settings(PoolWriter::Embedded(pool.clone()), &settings).unwrap();

    let landed = pregen
        .fill(200, 1.0, &CancellationToken::new())
        .await
        .unwrap();

    let counts = api.counts();
    assert_eq!(landed, 200, "{counts:?}");
    assert_eq!(counts.images, 200);
    assert_eq!(counts.token_fetches, 1);
    assert_quota_kept_and_used(&counts);

    // What landed is what the API drew: a PNG of the scene, and the scene is the request id.
    let records = pooled_codes(pool).await;
    assert_eq!(records.len(), 200);
    for record in records.iter().take(5) {
        assert_eq!(record.issuer, "wx");
        assert_eq!(record.content, record.request_id.to_string());
        let image = record.image.as_ref().unwrap();
        assert_eq!(image.media_type, "image/png");
        assert_eq!(tests::decode_qr(&image.bytes), record.content);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_answers_are_retried_and_never_pooled() {
    let api = WechatApi::start(Behaviour {
        busy_every: 4,
        ..Behaviour::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let settings = settings_for(&api, dir.path(), None);
    let pool = EmbeddedPool::open(dir.path()).await.unwrap();
    let pregen = Pregen::from_settings(PoolWriter::Embedded(pool.clone()), &settings).unwrap();

    let landed = pregen
        .fill(30, 1.0, &CancellationToken::new())
        .await
        .unwrap();

    let counts = api.counts();
    assert!(
        counts.busy >= 7,
        "a quarter of the calls answered busy: {counts:?}"
    );
    assert_eq!(
        landed, 30,
        "every busy code was retried until it was drawn: {counts:?}"
    );
    assert_eq!(counts.code_calls, counts.images + counts.busy);
    let records = pooled_codes(pool).await;
    assert_eq!(records.len(), 30);
    assert!(records.iter().all(|r| {
        r.image
            .as_ref()
            .is_some_and(|i| i.bytes.starts_with(b"\x89PNG"))
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_one_quota_and_one_token_through_redis() {
    let api = WechatApi::start(Behaviour {
        quota: QUOTA,
        window_ms: WINDOW_MS,
        ..Behaviour::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}:", unique("quota"));
    let settings = settings_for(&api, dir.path(), Some(&prefix));
    let pool = EmbeddedPool::open(dir.path()).await.unwrap();
    // Three workers, each with its own quota, pacing and token holder, as three processes.
    let workers: Vec<Pregen> = (0..3)
        .map(|_| Pregen::from_settings(PoolWriter::Embedded(pool.clone()), &settings).unwrap())
        .collect();

    let never = CancellationToken::new();
    let fills = workers.iter().map(|worker| worker.fill(80, 1.0, &never));
    let landed: u64 = futures::future::try_join_all(fills)
        .await
        .unwrap()
        .iter()
        .sum();

    let counts = api.counts();
    assert_eq!(landed, 240, "{counts:?}");
    assert_eq!(
        counts.token_fetches, 1,
        "one holder fetched the token: {counts:?}"
    );
    assert_quota_kept_and_used(&counts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_expiring_mid_run_is_recovered_with_one_refresh() {
    let api = WechatApi::start(Behaviour {
        quota: 100,
        window_ms: WINDOW_MS,
        token_expires_after: 60,
        ..Behaviour::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}:", unique("token"));
    let mut settings = settings_for(&api, dir.path(), Some(&prefix));
    if let Some(IssuerSettings::Wechat(wx)) = settings.pregen.issuers.get_mut("wx") {
        wx.quota.calls = 100;
    }
    let pool = EmbeddedPool::open(dir.path()).await.unwrap();
    let workers: Vec<Pregen> = (0..3)
        .map(|_| Pregen::from_settings(PoolWriter::Embedded(pool.clone()), &settings).unwrap())
        .collect();

    let never = CancellationToken::new();
    let fills = workers.iter().map(|worker| worker.fill(50, 1.0, &never));
    let landed: u64 = futures::future::try_join_all(fills)
        .await
        .unwrap()
        .iter()
        .sum();

    let counts = api.counts();
    assert_eq!(landed, 150, "{counts:?}");
    assert!(
        counts.token_rejected > 0,
        "the token did expire mid-run: {counts:?}"
    );
    assert_eq!(
        counts.token_fetches, 2,
        "the first token and one refresh: {counts:?}"
    );
    assert_eq!(counts.forced_token_fetches, 0, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_error_stops_the_issuer_without_a_retry_storm() {
    let api = WechatApi::start(Behaviour {
        published_page: "pages/another/index".into(),
        ..Behaviour::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let settings = settings_for(&api, dir.path(), None);
    let pool = EmbeddedPool::open(dir.path()).await.unwrap();
    let pregen = Pregen::from_settings(PoolWriter::Embedded(pool.clone()), &settings).unwrap();

    let error = pregen
        .fill(200, 1.0, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            PregenError::Issue(IssueError::Misconfigured { code: 41030, .. })
        ),
        "{error:?}"
    );
    let calls = api.counts().code_calls;
    assert!(calls <= 8, "at most the calls already in flight: {calls}");

    // Stopped: asking again makes no call at all.
    assert!(
        pregen
            .fill(10, 1.0, &CancellationToken::new())
            .await
            .is_err()
    );
    assert_eq!(api.counts().code_calls, calls);
    assert!(
        pooled_codes(pool).await.is_empty(),
        "no error was pooled as an image"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_stop_the_issuer_at_the_token() {
    let api = WechatApi::start(Behaviour::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_for(&api, dir.path(), None);
    if let Some(IssuerSettings::Wechat(wx)) = settings.pregen.issuers.get_mut("wx") {
        wx.app_secret = Some(SecretString::from("not-the-secret"));
    }
    let pool = EmbeddedPool::open(dir.path()).await.unwrap();
    let pregen = Pregen::from_settings(PoolWriter::Embedded(pool), &settings).unwrap();

    let error = pregen
        .fill(50, 1.0, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            PregenError::Issue(IssueError::Misconfigured { code: 40125, .. })
        ),
        "{error:?}"
    );
    let counts = api.counts();
    assert_eq!(counts.code_calls, 0);
    assert!(counts.token_fetches <= 8, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_against_an_api_that_keeps_failing_ends_with_an_error() {
    let api = WechatApi::start(Behaviour {
        busy_every: 1,
        ..Behaviour::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_for(&api, dir.path(), None);
    settings.pregen.batch = 4;
    if let Some(IssuerSettings::Wechat(wx)) = settings.pregen.issuers.get_mut("wx") {
        wx.max_retries = 1;
    }
    let pool = EmbeddedPool::open(dir.path()).await.unwrap();
    let pregen = Pregen::from_settings(PoolWriter::Embedded(pool.clone()), &settings).unwrap();

    let error = pregen
        .fill(1_000, 1.0, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            PregenError::Issue(IssueError::Failing { batches: 3, .. })
        ),
        "{error:?}"
    );
    let counts = api.counts();
    assert_eq!(
        counts.code_calls,
        3 * 4 * 2,
        "three batches of four codes, each tried twice: {counts:?}"
    );
    assert!(pooled_codes(pool).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_app_binds_a_mini_program_code_from_that_issuers_lane() {
    let api = WechatApi::start(Behaviour {
        quota: 1_000,
        window_ms: 60_000,
        ..Behaviour::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_for(&api, dir.path(), None);
    settings.pregen.target_depth = 5;
    settings.pregen.low_water = 0;
    settings.binder.claim_wait_ms = 200;
    let app = TestApp::spawn(settings, Parts::ALL).await;

    // No issuer named: the default lane, which is the one pregen fills (`wx`).
    let response = app.bind(&json!({"params": {"listing": 7}})).await;
    assert_eq!(response.status(), 201);
    let code: Value = response.json().await.unwrap();
    assert_eq!(code["issuer"], "wx");
    assert!(code["image"].get("svg").is_none(), "{code}");
    let id = code["request_id"].as_str().unwrap();
    let png = app.get(&format!("/v1/codes/{id}/qr.png")).await;
    assert_eq!(png.status(), 200);
    assert_eq!(
        decode_qr(&png.bytes().await.unwrap()),
        id,
        "the PNG is the one the API made, carrying scene = request id"
    );
    let redrawn = app.get(&format!("/v1/codes/{id}/qr.png?scale=3")).await;
    assert_eq!(
        redrawn.status(),
        422,
        "a mini-program code cannot be redrawn"
    );
    let svg = app.get(&format!("/v1/codes/{id}/qr.svg")).await;
    assert_eq!(svg.status(), 404);
    assert_eq!(svg.headers()["content-type"], "application/problem+json");

    let named = app.bind(&json!({"params": {}, "issuer": "wx"})).await;
    assert_eq!(named.status(), 201);
    // The local lane holds nothing: a plain code is not handed out in place of it.
    let local = app.bind(&json!({"params": {}, "issuer": "local"})).await;
    assert_eq!(local.status(), 503);
    let unknown = app.bind(&json!({"params": {}, "issuer": "alipay"})).await;
    assert_eq!(unknown.status(), 422);
    let problem: Value = unknown.json().await.unwrap();
    assert_eq!(problem["type"], "urn:qrpool:problem:unknown-issuer");

    assert_eq!(
        api.counts().images,
        5,
        "the API was called only to fill the lane"
    );
    app.stop().await;
}
