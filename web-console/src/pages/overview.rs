//! The overview: scans and visitors over time, QR against click, the top codes and links,
//! and a live counter.

use std::sync::Arc;

use askama::Template;
use axum::Json;
use axum::extract::{Query, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::chart::{self, Point, grouped};
use crate::pages::{self, Figures, Range, RangeForm, Scans, Share, delta};
use crate::session::Visit;
use crate::{Console, ConsoleError, Frame, Section, encode, render};

/// The live counter's window.
const LIVE_MINUTES: i64 = 5;

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    frame: Frame,
    range: Range,
    presets: &'static [(&'static str, &'static str)],
    granularities: &'static [&'static str],
    zones: Vec<String>,
    problem: Option<String>,
    scans: String,
    visitors: String,
    scans_delta: Option<(String, bool)>,
    visitors_delta: Option<(String, bool)>,
    qr_share: String,
    qr_scans: String,
    click_scans: String,
    live: String,
    chart: String,
    points: Vec<Point>,
    top: Vec<Share>,
    page_query: String,
}

/// The label of a bucket at `granularity`, read from the API's local RFC 3339 time.
fn bucket_label(bucket: &str, granularity: &str) -> String {
    let Ok(time) = DateTime::parse_from_rfc3339(bucket) else {
        return bucket.to_owned();
    };
    match granularity {
        "hour" => time.format("%a %H:%M").to_string(),
        "month" => time.format("%b %Y").to_string(),
        _ => time.format("%b %-d").to_string(),
    }
}

/// Where a scanned key is managed: a link (10 characters) or a code's request id.
pub fn key_href(key: &str) -> String {
    if records::LinkKey::parse(key).is_ok() {
        format!("/console/links/{}", encode(key))
    } else {
        format!("/console/codes?id={}", encode(key))
    }
}

pub async fn page(
    State(console): State<Arc<Console>>,
    visit: Visit,
    Query(form): Query<RangeForm>,
) -> Result<Response, ConsoleError> {
    let now = Utc::now();
    let range = form.resolve(&visit, now);
    let compare = if range.compare {
        "&compare=previous"
    } else {
        ""
    };
    let series_query = range.api_query(&format!(
        "granularity={}{compare}",
        encode(&range.granularity)
    ));
    let via_query = range.api_query("group_by=via_qr");
    let top_query = range.api_query("group_by=key&limit=10");
    let api = &console.api;
    let (series, via, top, live) = futures::join!(
        api.get(&visit.token, &series_query),
        api.get(&visit.token, &via_query),
        api.get(&visit.token, &top_query),
        live_scans(&console, &visit, now),
    );
    let series = series?;
    // A refused parameter (a custom range the wrong way round, say) is shown above an empty
    // page, not as an error page: the form is right there to fix it.
    let (problem, series, via, top) = if series.status.is_client_error() {
        (Some(series.message()), empty(), empty(), empty())
    } else {
        (
            None,
            series.json::<Scans>()?,
            via?.json::<Scans>()?,
            top?.json::<Scans>()?,
        )
    };
    let points: Vec<Point> = series
        .rows
        .iter()
        .map(|row| Point {
            label: row
                .bucket
                .as_deref()
                .map(|bucket| bucket_label(bucket, &range.granularity))
                .unwrap_or_default(),
            scans: row.scans,
            visitors: row.visitors,
            previous: row.previous.map(|previous| previous.scans),
        })
        .collect();
    let by_flag = |flag: &str| {
        via.rows
            .iter()
            .filter(|row| row.group.as_deref() == Some(flag))
            .map(|row| row.scans)
            .sum::<u64>()
    };
    let (qr, click) = (by_flag("true"), by_flag("false"));
    let qr_share = if qr + click == 0 {
        "–".to_owned()
    } else {
        format!("{:.0} %", qr as f64 * 100.0 / (qr + click) as f64)
    };
    let mut top_shares = pages::shares(&top.rows, |group| group.unwrap_or("(unknown)").to_owned());
    for (share, row) in top_shares.iter_mut().zip(&top.rows) {
        share.href = row.group.as_deref().map(key_href);
    }
    let Figures {
        scans,
        visitors,
        previous,
    } = series.totals;
    let chart = chart::time_series(
        &points,
        &format!(
            "Scans and visitors per {} from {} to {}",
            range.granularity, range.from, range.to
        ),
    );
    Ok(render(&OverviewPage {
        frame: Frame::new(&visit, Section::Overview, "Overview"),
        zones: range.zones(),
        page_query: range.page_query(),
        presets: &pages::PRESETS,
        granularities: &pages::GRANULARITIES,
        problem,
        scans: grouped(scans),
        visitors: grouped(visitors),
        scans_delta: delta(scans, previous.map(|previous| previous.scans)),
        visitors_delta: delta(visitors, previous.map(|previous| previous.visitors)),
        qr_share,
        qr_scans: grouped(qr),
        click_scans: grouped(click),
        live: live.map(grouped).unwrap_or_else(|_| "–".to_owned()),
        chart,
        points,
        top: top_shares,
        range,
    }))
}

fn empty() -> Scans {
    Scans {
        totals: Figures::default(),
        rows: Vec::new(),
    }
}

async fn live_scans(
    console: &Console,
    visit: &Visit,
    now: DateTime<Utc>,
) -> Result<u64, ConsoleError> {
    let from = (now - chrono::Duration::minutes(LIVE_MINUTES))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let to =
        (now + chrono::Duration::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let scans: Scans = console
        .api
        .get_json(
            &visit.token,
            format!(
                "/v1/analytics/scans?from={}&to={}",
                encode(&from),
                encode(&to)
            ),
        )
        .await?;
    Ok(scans.totals.scans)
}

#[derive(Debug, Serialize)]
pub struct Live {
    scans: u64,
    minutes: i64,
}

/// `GET /console/live`: scans in the last minutes, for the overview's counter.
pub async fn live(
    State(console): State<Arc<Console>>,
    visit: Visit,
) -> Result<Json<Live>, ConsoleError> {
    Ok(Json(Live {
        scans: live_scans(&console, &visit, Utc::now()).await?,
        minutes: LIVE_MINUTES,
    }))
}
