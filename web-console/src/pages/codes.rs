//! Codes: look one up by its request id (or the URL it encodes), see its binding, versions
//! and scans; revoke it or give it new params.

use std::sync::Arc;

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Deserialize;
use serde_json::json;

use records::Scope;

use crate::chart::{self, grouped};
use crate::pages::links::{QrQuery, image};
use crate::pages::{RangeForm, Scans, daily_points};
use crate::session::Visit;
use crate::{Console, ConsoleError, Frame, Section, encode, render};

#[derive(Debug, Clone, Deserialize)]
pub struct CodeView {
    pub request_id: String,
    pub url: String,
    pub version: u32,
    pub issuer: String,
    pub params: serde_json::Value,
    #[serde(default)]
    pub tags: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Deserialize)]
struct Versions {
    past: Vec<PastVersion>,
}

#[derive(Debug, Deserialize)]
struct PastVersion {
    version: u32,
    params: serde_json::Value,
    expires_at: Option<DateTime<Utc>>,
    replaced_at: DateTime<Utc>,
    replaced_by: String,
}

struct VersionRow {
    version: u32,
    params: String,
    expires: String,
    replaced: String,
}

struct Found {
    code: CodeView,
    params: String,
    expired: bool,
    expires: String,
    created: String,
    versions: Vec<VersionRow>,
    chart: String,
    scans: String,
    visitors: String,
}

#[derive(Template)]
#[template(path = "codes.html")]
struct CodesPage {
    frame: Frame,
    id: String,
    found: Option<Found>,
    notice: Option<String>,
    problem: Option<String>,
    params_text: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct Lookup {
    id: Option<String>,
    done: Option<String>,
}

/// The request id in what was typed: the id itself, or a URL that ends with it.
fn request_id_in(text: &str) -> String {
    let text = text.trim();
    let last = text
        .split(['?', '#'])
        .next()
        .unwrap_or(text)
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(text);
    last.to_owned()
}

fn zone(visit: &Visit) -> Tz {
    visit.browser_tz.unwrap_or(Tz::UTC)
}

async fn find(console: &Console, visit: &Visit, id: &str) -> Result<Option<Found>, ConsoleError> {
    let tz = zone(visit);
    let when = |time: DateTime<Utc>| time.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string();
    let path = format!("/v1/codes/{}", encode(id));
    let answer = console.api.get(&visit.token, &path).await?;
    if answer.status == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let code: CodeView = answer.json()?;
    let range = RangeForm {
        range: Some("30d".into()),
        ..RangeForm::default()
    }
    .resolve(visit, Utc::now());
    let (versions, scans) = futures::join!(
        console
            .api
            .get_json::<Versions>(&visit.token, format!("{path}/versions")),
        console.api.get_json::<Scans>(
            &visit.token,
            range.api_query(&format!("granularity=day&key={}", encode(id)))
        ),
    );
    let (versions, scans) = (versions?, scans?);
    let points = daily_points(&scans);
    let now = Utc::now();
    Ok(Some(Found {
        params: serde_json::to_string_pretty(&code.params).unwrap_or_default(),
        expired: code.expires_at.is_some_and(|at| at <= now),
        expires: code.expires_at.map(when).unwrap_or_else(|| "never".into()),
        created: when(code.created_at),
        versions: versions
            .past
            .iter()
            .rev()
            .map(|past| VersionRow {
                version: past.version,
                params: past.params.to_string(),
                expires: past.expires_at.map(when).unwrap_or_else(|| "never".into()),
                replaced: format!("{} by {}", when(past.replaced_at), past.replaced_by),
            })
            .collect(),
        chart: chart::time_series(&points, "Scans of this code per day, last 30 days"),
        scans: grouped(scans.totals.scans),
        visitors: grouped(scans.totals.visitors),
        code,
    }))
}

async fn codes_page(
    console: &Console,
    visit: &Visit,
    id: String,
    notice: Option<String>,
    problem: Option<(String, String, StatusCode)>,
) -> Result<Response, ConsoleError> {
    let found = if id.is_empty() {
        None
    } else {
        find(console, visit, &id).await?
    };
    let not_found = !id.is_empty() && found.is_none();
    let (problem, params_text, status) = match problem {
        Some((problem, text, status)) => (Some(problem), text, status),
        None if not_found => (
            Some("No code of yours has that request id.".to_owned()),
            String::new(),
            StatusCode::NOT_FOUND,
        ),
        None => (
            None,
            found
                .as_ref()
                .map(|found| found.params.clone())
                .unwrap_or_default(),
            StatusCode::OK,
        ),
    };
    let mut response = render(&CodesPage {
        frame: Frame::new(visit, Section::Codes, "Codes"),
        id,
        found,
        notice,
        problem,
        params_text,
    });
    *response.status_mut() = status;
    Ok(response)
}

pub async fn page(
    State(console): State<Arc<Console>>,
    visit: Visit,
    Query(lookup): Query<Lookup>,
) -> Result<Response, ConsoleError> {
    let id = lookup.id.as_deref().map(request_id_in).unwrap_or_default();
    let notice = match lookup.done.as_deref() {
        Some("revoke") => Some("Revoked: scans now get the “expired” page.".to_owned()),
        Some("params") => Some("Saved as a new version.".to_owned()),
        _ => None,
    };
    codes_page(&console, &visit, id, notice, None).await
}

#[derive(Debug, Deserialize)]
pub struct RevokeForm {
    csrf: String,
}

pub async fn revoke(
    State(console): State<Arc<Console>>,
    visit: Visit,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<RevokeForm>,
) -> Result<Response, ConsoleError> {
    visit.check_form(&headers, &form.csrf)?;
    if !visit.can(Scope::Admin) {
        return Err(ConsoleError::Forbidden(
            "revoking needs a key with the `admin` scope".into(),
        ));
    }
    console
        .api
        .call(
            &visit.token,
            Method::DELETE,
            &format!("/v1/codes/{}", encode(&id)),
            None,
            None,
        )
        .await?
        .done()?;
    Ok(Redirect::to(&format!("/console/codes?id={}&done=revoke", encode(&id))).into_response())
}

#[derive(Debug, Deserialize)]
pub struct ParamsForm {
    csrf: String,
    params: String,
}

pub async fn change_params(
    State(console): State<Arc<Console>>,
    visit: Visit,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<ParamsForm>,
) -> Result<Response, ConsoleError> {
    visit.check_form(&headers, &form.csrf)?;
    if !visit.can(Scope::Admin) {
        return Err(ConsoleError::Forbidden(
            "changing params needs a key with the `admin` scope".into(),
        ));
    }
    let params: serde_json::Value = match serde_json::from_str(&form.params) {
        Ok(params) => params,
        Err(error) => {
            let problem = format!("The params are not JSON: {error}");
            return codes_page(
                &console,
                &visit,
                id,
                None,
                Some((problem, form.params, StatusCode::UNPROCESSABLE_ENTITY)),
            )
            .await;
        }
    };
    let answer = console
        .api
        .call(
            &visit.token,
            Method::PATCH,
            &format!("/v1/codes/{}", encode(&id)),
            Some(&json!({ "params": params })),
            None,
        )
        .await?;
    if matches!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY | StatusCode::CONFLICT
    ) {
        let status = answer.status;
        return codes_page(
            &console,
            &visit,
            id,
            None,
            Some((answer.message(), form.params, status)),
        )
        .await;
    }
    answer.done()?;
    Ok(Redirect::to(&format!("/console/codes?id={}&done=params", encode(&id))).into_response())
}

/// `GET /console/codes/{id}/qr?format=png|svg&…`: the code's image, through the API.
pub async fn qr(
    State(console): State<Arc<Console>>,
    visit: Visit,
    Path(id): Path<String>,
    Query(query): Query<QrQuery>,
) -> Result<Response, ConsoleError> {
    image(
        &console,
        &visit,
        &query,
        &format!("/v1/codes/{}", encode(&id)),
        &id,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_found_in_what_people_paste() {
        assert_eq!(
            request_id_in(" 3kTMd9fJ2LmQw8ZxYc1Ab4 "),
            "3kTMd9fJ2LmQw8ZxYc1Ab4"
        );
        assert_eq!(
            request_id_in("https://qr.example.com/m/3kTMd9fJ2LmQw8ZxYc1Ab4?x=1"),
            "3kTMd9fJ2LmQw8ZxYc1Ab4"
        );
        assert_eq!(request_id_in("https://qr.example.com/m/abc/"), "abc");
    }
}
