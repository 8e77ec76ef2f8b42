//! Every table as CSV: the analytics API's own CSV passed on, and the links' tables written
//! here with the same care (quoted fields, no formula a spreadsheet would run).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use chrono::SecondsFormat;
use serde::Deserialize;

use crate::pages::RangeForm;
use crate::pages::links::{Experiment, all_keys, details, whole_audit};
use crate::session::Visit;
use crate::{Console, ConsoleError, encode};

pub use service::csv_field as field;

/// `Content-Disposition: attachment` naming `file_name`, of which only letters, digits,
/// `-`, `_` and `.` are kept (a name may come from a path a person typed).
pub fn attachment(file_name: &str) -> HeaderValue {
    let safe: String = file_name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    HeaderValue::from_str(&format!("attachment; filename=\"{safe}\""))
        .unwrap_or(HeaderValue::from_static("attachment"))
}

pub fn csv_response(file_name: &str, text: String) -> Response {
    let disposition = attachment(file_name);
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            ),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        text,
    )
        .into_response()
}

#[derive(Debug, Default, Deserialize)]
pub struct ScansExport {
    #[serde(flatten)]
    range: RangeForm,
    group_by: Option<String>,
    /// `on`: the time series (at the range's granularity).
    series: Option<String>,
}

/// `GET /console/export/scans.csv?<range>&group_by=…` or `&series=on`.
pub async fn scans(
    State(console): State<Arc<Console>>,
    visit: Visit,
    Query(export): Query<ScansExport>,
) -> Result<Response, ConsoleError> {
    let range = export.range.resolve(&visit, chrono::Utc::now());
    let mut extra = String::from("format=csv");
    let mut name = String::from("scans");
    if export.series.as_deref() == Some("on") {
        extra.push_str(&format!("&granularity={}", encode(&range.granularity)));
        if range.compare {
            extra.push_str("&compare=previous");
        }
        name.push_str(&format!("-per-{}", range.granularity));
    }
    if let Some(group) = export.group_by.as_deref().filter(|group| !group.is_empty()) {
        extra.push_str(&format!("&group_by={}&limit=10000", encode(group)));
        name.push_str("-by-");
        name.extend(
            group
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_'),
        );
    }
    let answer = console
        .api
        .call(
            &visit.token,
            Method::GET,
            &range.api_query(&extra),
            None,
            None,
        )
        .await?
        .done()?;
    Ok(csv_response(
        &format!("{name}.csv"),
        String::from_utf8_lossy(&answer.body).into_owned(),
    ))
}

/// `GET /console/export/links.csv`: every link with its current destination.
pub async fn links(
    State(console): State<Arc<Console>>,
    visit: Visit,
) -> Result<Response, ConsoleError> {
    let keys = all_keys(&console, &visit).await?;
    let links = details(&console, &visit, &keys).await?;
    let mut text = String::from(
        "key,url,destination,status,version,serving_version,variants,rules,tags,created_at,deleted_at\r\n",
    );
    for link in links {
        let (destination, variants, rules) = match &link.target {
            Some(target) => (
                target.destination.clone(),
                target
                    .split
                    .iter()
                    .map(|variant| format!("{}:{}", variant.name, variant.weight))
                    .collect::<Vec<_>>()
                    .join(" "),
                target.rules.len().to_string(),
            ),
            None => Default::default(),
        };
        let row = [
            field(&link.key),
            field(&link.url),
            field(&destination),
            link.status.to_string(),
            link.version.to_string(),
            link.serving_version
                .map(|v| v.to_string())
                .unwrap_or_default(),
            field(&variants),
            rules,
            field(&link.tags.join(" ")),
            link.created_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            link.deleted_at
                .map(|at| at.to_rfc3339_opts(SecondsFormat::Secs, true))
                .unwrap_or_default(),
        ];
        text.push_str(&row.join(","));
        text.push_str("\r\n");
    }
    Ok(csv_response("links.csv", text))
}

/// `GET /console/export/links/{key}/audit.csv`.
pub async fn audit(
    State(console): State<Arc<Console>>,
    visit: Visit,
    Path(key): Path<String>,
) -> Result<Response, ConsoleError> {
    let audit = whole_audit(&console, &visit, &key).await?;
    let mut text = String::from("at,actor,action,version,detail\r\n");
    for entry in audit {
        let detail = if entry.detail.is_null() {
            String::new()
        } else {
            entry.detail.to_string()
        };
        let row = [
            entry.at.to_rfc3339_opts(SecondsFormat::Secs, true),
            field(&entry.actor),
            field(&entry.action),
            entry.version.map(|v| v.to_string()).unwrap_or_default(),
            field(&detail),
        ];
        text.push_str(&row.join(","));
        text.push_str("\r\n");
    }
    Ok(csv_response(&format!("audit-{key}.csv"), text))
}

/// `GET /console/export/links/{key}/experiment.csv`: the A/B readout, a variant a row.
pub async fn experiment(
    State(console): State<Arc<Console>>,
    visit: Visit,
    Path(key): Path<String>,
) -> Result<Response, ConsoleError> {
    let readout: Experiment = console
        .api
        .get_json(
            &visit.token,
            format!("/v1/analytics/links/{}/experiment", encode(&key)),
        )
        .await?;
    let number = |value: Option<f64>| value.map(|value| value.to_string()).unwrap_or_default();
    let mut text = String::from(
        "variant,scans,visitors,converted,conversion_rate,lift,lift_low,lift_high,p_value\r\n",
    );
    for variant in readout.variants {
        let lift = variant.lift.as_ref();
        let row = [
            field(&variant.variant),
            variant.scans.to_string(),
            variant.visitors.to_string(),
            variant.converted.to_string(),
            number(variant.conversion_rate),
            number(lift.map(|lift| lift.relative)),
            number(lift.and_then(|lift| lift.low)),
            number(lift.and_then(|lift| lift.high)),
            number(lift.and_then(|lift| lift.p_value)),
        ];
        text.push_str(&row.join(","));
        text.push_str("\r\n");
    }
    Ok(csv_response(&format!("experiment-{key}.csv"), text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_names_keep_only_safe_characters() {
        assert_eq!(
            attachment("audit-AbC123.csv"),
            "attachment; filename=\"audit-AbC123.csv\""
        );
        assert_eq!(
            attachment("link-../\"x\r\n.png"),
            "attachment; filename=\"link-..x.png\""
        );
    }
}
