//! The analytics API: tenant-scoped, described in `api/openapi.json`.
//!
//! | route | scope | answer |
//! | --- | --- | --- |
//! | `GET /v1/analytics/scans` | `read` | scans and visitors: time series in the caller's zone, grouped by any dimension, filtered, with the previous period beside them; JSON or CSV (`format=csv` or `Accept: text/csv`) |
//! | `GET /v1/analytics/links/{key}/experiment` | `read` | a link's A/B readout: per variant scans, visitors, conversions, rate, lift against the first variant with its 95 % interval, and the funnel of goals |
//! | `POST /v1/conversions` | `bind` | records a conversion of a tracked click, once per `conversion_id` |
//! | `GET /v1/analytics/openapi.json` | anyone | the OpenAPI 3.1 document of these routes |
//!
//! A bad parameter is a `422` problem naming it; a store that does not answer, a `503`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use records::{LinkKey, Scope};
use redirect::LinkStore;
use service::{JsonObject, Keys, Problem};

use crate::AnalyticsError;
use crate::conversions::{Conversion, Conversions, Recorded, link_of_click};
use crate::experiment::{self, Observed};
use crate::query::{
    Answer, Dimension, Filter, FilterOn, Granularity, Presentation, Row, ScansQuery,
};
use crate::store::Store;

/// The analytics API's OpenAPI 3.1 document, kept by hand beside the routes.
pub const OPENAPI: &str = include_str!("../api/openapi.json");

const SCANS: &str = "/v1/analytics/scans";
const EXPERIMENT: &str = "/v1/analytics/links/{key}/experiment";
const CONVERSIONS: &str = "/v1/conversions";
const OPENAPI_PATH: &str = "/v1/analytics/openapi.json";
/// Every path the router serves, for the document check.
pub const API_PATHS: [&str; 4] = [SCANS, EXPERIMENT, CONVERSIONS, OPENAPI_PATH];

/// What the analytics routes share.
#[derive(Debug)]
pub struct AnalyticsService {
    pub store: Store,
    pub keys: Keys,
    pub conversions: Conversions,
    pub links: LinkStore,
}

pub fn router(service: Arc<AnalyticsService>) -> Router {
    Router::new()
        .route(SCANS, get(scans))
        .route(EXPERIMENT, get(experiment))
        .route(CONVERSIONS, post(record_conversion))
        .route(OPENAPI_PATH, get(openapi))
        .with_state(service)
}

fn invalid(error: crate::query::BadParameter) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "urn:qrpool:problem:invalid-parameter",
        "Invalid parameter",
    )
    .with_detail(error.to_string())
}

fn unavailable(error: AnalyticsError) -> Problem {
    tracing::error!(error = %error, source = ?std::error::Error::source(&error), "the analytics store failed");
    metrics::counter!("analytics_query_errors_total").increment(1);
    Problem::unavailable("the analytics store is unavailable")
}

fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect()
}

fn wants_csv(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| {
            accept
                .split(',')
                .any(|item| item.trim().starts_with("text/csv"))
        })
}

/// Figures of one row (or the totals), with the previous period's beside them.
#[derive(Debug, Clone, Copy, Serialize)]
struct Figures {
    scans: u64,
    visitors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous: Option<Previous>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Previous {
    scans: u64,
    visitors: u64,
}

#[derive(Debug, Serialize)]
struct RowView {
    #[serde(skip_serializing_if = "Option::is_none")]
    bucket: Option<String>,
    /// Present when grouped: the group's value, `null` when unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<Option<String>>,
    #[serde(flatten)]
    figures: Figures,
}

#[derive(Debug, Serialize)]
struct ScansView {
    tenant: String,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    tz: String,
    granularity: &'static str,
    group_by: Option<&'static str>,
    bots: &'static str,
    totals: Figures,
    rows: Vec<RowView>,
}

async fn scans(
    State(service): State<Arc<AnalyticsService>>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, Problem> {
    let caller = service.keys.authorize(&headers, Scope::Read).await?;
    let (query, presentation) =
        ScansQuery::parse(caller.tenant, &query_pairs(&uri), Utc::now()).map_err(invalid)?;
    let presentation = Presentation {
        csv: presentation.csv || wants_csv(&headers),
        ..presentation
    };
    let current = service
        .store
        .scans(query.clone())
        .await
        .map_err(unavailable)?;
    let previous = if presentation.compare_previous {
        Some(
            service
                .store
                .scans(query.previous_period())
                .await
                .map_err(unavailable)?,
        )
    } else {
        None
    };
    metrics::counter!("analytics_queries_total").increment(1);
    let view = view(&query, &current, previous.as_ref());
    if presentation.csv {
        return Ok(csv(&query, &view, presentation.compare_previous));
    }
    Ok(Json(view).into_response())
}

/// The rows as answered, with every bucket of an ungrouped time series present (zero when
/// nothing was scanned) and the previous period's figures matched by position.
fn view(query: &ScansQuery, current: &Answer, previous: Option<&Answer>) -> ScansView {
    let starts = query.bucket_starts();
    let previous_starts = query.previous_period().bucket_starts();
    let index_of = |starts: &[DateTime<Utc>], bucket: Option<DateTime<Utc>>| {
        bucket.and_then(|bucket| starts.iter().position(|start| *start == bucket))
    };
    let earlier: HashMap<(Option<usize>, Option<String>), Previous> = previous
        .map(|answer| {
            answer
                .rows
                .iter()
                .map(|row| {
                    (
                        (index_of(&previous_starts, row.bucket), row.group.clone()),
                        Previous {
                            scans: row.scans,
                            visitors: row.visitors,
                        },
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut rows: Vec<Row> = current.rows.clone();
    if query.granularity != Granularity::None && query.group_by.is_none() {
        let present: HashSet<Option<DateTime<Utc>>> = rows.iter().map(|row| row.bucket).collect();
        for start in &starts {
            if !present.contains(&Some(*start)) {
                rows.push(Row {
                    bucket: Some(*start),
                    group: None,
                    scans: 0,
                    visitors: 0,
                });
            }
        }
        rows.sort_by_key(|row| row.bucket);
    }
    let rows = rows
        .into_iter()
        .map(|row| {
            let previous = previous.map(|_| {
                earlier
                    .get(&(index_of(&starts, row.bucket), row.group.clone()))
                    .copied()
                    .unwrap_or_default()
            });
            RowView {
                bucket: row
                    .bucket
                    .map(|bucket| bucket.with_timezone(&query.tz).to_rfc3339()),
                group: query.group_by.map(|_| row.group),
                figures: Figures {
                    scans: row.scans,
                    visitors: row.visitors,
                    previous,
                },
            }
        })
        .collect();
    ScansView {
        tenant: query.tenant.as_str().to_owned(),
        from: query.from,
        to: query.to,
        tz: query.tz.name().to_owned(),
        granularity: query.granularity.name(),
        group_by: query.group_by.map(Dimension::name),
        bots: if query.bots { "include" } else { "exclude" },
        totals: Figures {
            scans: current.totals.scans,
            visitors: current.totals.visitors,
            previous: previous.map(|answer| Previous {
                scans: answer.totals.scans,
                visitors: answer.totals.visitors,
            }),
        },
        rows,
    }
}

fn csv(query: &ScansQuery, view: &ScansView, compare: bool) -> Response {
    let mut header = Vec::new();
    if query.granularity != Granularity::None {
        header.push("bucket");
    }
    if let Some(group) = query.group_by {
        header.push(group.name());
    }
    header.extend(["scans", "visitors"]);
    if compare {
        header.extend(["previous_scans", "previous_visitors"]);
    }
    let mut text = header.join(",");
    text.push_str("\r\n");
    for row in &view.rows {
        let mut fields = Vec::new();
        if let Some(bucket) = &row.bucket {
            fields.push(service::csv_field(bucket));
        }
        if let Some(group) = &row.group {
            fields.push(group.as_deref().map(service::csv_field).unwrap_or_default());
        }
        fields.push(row.figures.scans.to_string());
        fields.push(row.figures.visitors.to_string());
        if let Some(previous) = row.figures.previous {
            fields.push(previous.scans.to_string());
            fields.push(previous.visitors.to_string());
        }
        text.push_str(&fields.join(","));
        text.push_str("\r\n");
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"scans.csv\""),
            ),
        ],
        text,
    )
        .into_response()
}

#[derive(Debug, Serialize)]
struct ExperimentView {
    key: String,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    /// The conversion goal compared (`null`: any conversion).
    goal: Option<String>,
    /// Goals reported for this link, most converted first.
    goals: Vec<String>,
    method: &'static str,
    /// Every variant has at least 30 conversions: the intervals can be trusted.
    enough_data: bool,
    variants: Vec<experiment::VariantReadout>,
}

const METHOD: &str = "Conversion rate: scans (bots left out) whose click converted, over scans. Lift against the first variant: rate ratio − 1, with the 95 % interval of the ratio on the log scale (Katz); p-value: two-proportion z-test, pooled, two-sided.";

async fn experiment(
    State(service): State<Arc<AnalyticsService>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, Problem> {
    let caller = service.keys.authorize(&headers, Scope::Read).await?;
    let key = LinkKey::parse(&key).map_err(|_| Problem::not_found("link"))?;
    let link = service
        .links
        .servable_owned(&key, &caller.tenant, Utc::now())
        .await
        .map_err(|error| {
            tracing::error!(%error, "the link store failed");
            Problem::unavailable("the link store is unavailable")
        })?
        .ok_or_else(|| Problem::not_found("link"))?;
    // The range parameters of the scans query, and a goal.
    let mut pairs = query_pairs(&uri);
    let goal = pairs
        .iter()
        .position(|(name, _)| name == "goal")
        .map(|index| pairs.remove(index).1);
    if let Some((name, _)) = pairs
        .iter()
        .find(|(name, _)| !matches!(name.as_str(), "from" | "to" | "tz"))
    {
        return Err(invalid(crate::query::BadParameter {
            parameter: name.clone(),
            problem: "is not a parameter of this readout (from, to, tz, goal)".into(),
        }));
    }
    let (mut query, _) =
        ScansQuery::parse(caller.tenant.clone(), &pairs, Utc::now()).map_err(invalid)?;
    query.group_by = Some(Dimension::Variant);
    query.limit = crate::query::MAX_LIMIT;
    query.filters = vec![
        Filter {
            on: FilterOn::Dimension(Dimension::Key),
            values: vec![key.to_string()],
        },
        Filter {
            on: FilterOn::Dimension(Dimension::Kind),
            values: vec!["link".into()],
        },
    ];
    let answer = service
        .store
        .scans(query.clone())
        .await
        .map_err(unavailable)?;
    // The control is the first variant of the split serving now; variants seen in the
    // range but no longer in the split follow.
    let mut names: Vec<String> = link
        .current()
        .map(|version| {
            version
                .target
                .split
                .iter()
                .map(|v| v.name.clone())
                .collect()
        })
        .unwrap_or_default();
    let mut observed: HashMap<String, Observed> = HashMap::new();
    for row in &answer.rows {
        let Some(name) = row
            .group
            .as_deref()
            .and_then(|g| g.strip_prefix("variant:"))
        else {
            continue;
        };
        if !names.iter().any(|known| known == name) {
            names.push(name.to_owned());
        }
        let entry = observed.entry(name.to_owned()).or_default();
        entry.scans = row.scans;
        entry.visitors = row.visitors;
    }
    let conversions = service
        .conversions
        .of_link(&caller.tenant, &key, query.from)
        .await
        .map_err(|error| {
            tracing::error!(%error, "the conversions table failed");
            Problem::unavailable("the conversions store is unavailable")
        })?;
    let clicks: HashSet<String> = conversions.iter().map(|c| c.click_id.clone()).collect();
    let variants_of_clicks = service
        .store
        .click_variants(
            caller.tenant.as_str(),
            key.as_str(),
            query.from,
            query.to,
            clicks,
        )
        .await
        .map_err(unavailable)?;
    let clicks: HashMap<String, String> = variants_of_clicks
        .into_iter()
        .filter_map(|(click, variant)| Some((click, variant.strip_prefix("variant:")?.to_owned())))
        .collect();
    let reported: Vec<(String, String, Option<f64>)> = conversions
        .iter()
        .map(|c| (c.click_id.clone(), c.name.clone(), c.value))
        .collect();
    experiment::attribute(&mut observed, &clicks, &reported);
    let mut goals: Vec<(String, usize)> = observed
        .values()
        .flat_map(|o| {
            o.converted
                .iter()
                .map(|(goal, set)| (goal.clone(), set.len()))
        })
        .fold(
            HashMap::new(),
            |mut sums: HashMap<String, usize>, (goal, n)| {
                *sums.entry(goal).or_default() += n;
                sums
            },
        )
        .into_iter()
        .collect();
    goals.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let variants: Vec<(String, Observed)> = names
        .iter()
        .map(|name| (name.clone(), observed.remove(name).unwrap_or_default()))
        .collect();
    let readout = experiment::readout(&variants, goal.as_deref());
    Ok(Json(ExperimentView {
        key: key.to_string(),
        from: query.from,
        to: query.to,
        goal,
        goals: goals.into_iter().map(|(goal, _)| goal).collect(),
        method: METHOD,
        enough_data: experiment::enough_data(&readout),
        variants: readout,
    })
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportConversion {
    /// The caller's own id: the same report sent twice is one conversion.
    conversion_id: String,
    click_id: String,
    name: String,
    #[serde(default)]
    value: Option<f64>,
    #[serde(default)]
    at: Option<DateTime<Utc>>,
}

fn invalid_conversion(detail: &str) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "urn:qrpool:problem:invalid-conversion",
        "Invalid conversion",
    )
    .with_detail(detail.to_owned())
}

async fn record_conversion(
    State(service): State<Arc<AnalyticsService>>,
    headers: HeaderMap,
    body: Result<JsonObject<ReportConversion>, Problem>,
) -> Result<Response, Problem> {
    let caller = service.keys.authorize(&headers, Scope::Bind).await?;
    let JsonObject(report) = body?;
    let visible = |text: &str, most: usize| {
        (1..=most).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_graphic())
    };
    if !visible(&report.conversion_id, 128) {
        return Err(invalid_conversion(
            "`conversion_id` is 1 to 128 visible ASCII characters",
        ));
    }
    let name = report.name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(invalid_conversion(
            "`name` is 1 to 64 characters without control characters",
        ));
    }
    if report.value.is_some_and(|value| !value.is_finite()) {
        return Err(invalid_conversion("`value` is a finite number"));
    }
    let Some(link_key) = link_of_click(&report.click_id) else {
        return Err(invalid_conversion(
            "`click_id` is the `qrclid` a tracked link added to its destination",
        ));
    };
    // Another tenant's click is as unknown as no click at all.
    let owned = service
        .links
        .servable_owned(&link_key, &caller.tenant, Utc::now())
        .await
        .map_err(|error| {
            tracing::error!(%error, "the link store failed");
            Problem::unavailable("the link store is unavailable")
        })?
        .is_some();
    if !owned {
        return Err(Problem::not_found("click"));
    }
    let conversion = Conversion {
        tenant: caller.tenant.clone(),
        conversion_id: report.conversion_id,
        click_id: report.click_id,
        link_key: link_key.to_string(),
        name: name.to_owned(),
        value: report.value,
        at: report.at.unwrap_or_else(Utc::now),
    };
    let recorded = service
        .conversions
        .record(&conversion)
        .await
        .map_err(|error| {
            tracing::error!(%error, "the conversions table failed");
            Problem::unavailable("the conversions store is unavailable")
        })?;
    Ok(match recorded {
        Recorded::New => {
            metrics::counter!("analytics_conversions_total").increment(1);
            (StatusCode::CREATED, Json(conversion)).into_response()
        }
        Recorded::Replayed(earlier) => {
            let mut response = (StatusCode::OK, Json(earlier)).into_response();
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            response
        }
        Recorded::Conflict(_) => Problem::new(
            StatusCode::CONFLICT,
            "urn:qrpool:problem:conversion-id-reused",
            "Conversion id reused",
        )
        .with_detail("this conversion_id was recorded before with another click, name or value")
        .into_response(),
    })
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_names_exactly_the_routes_served() {
        service::openapi::check(OPENAPI, &API_PATHS).unwrap();
    }
}
