//! Links: the list with search and tags, a new link, and one link's page (its QR code,
//! scans, A/B readout, versions with rollback, edit, delete and restore, audit log).

use std::sync::Arc;

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Deserialize;
use serde_json::json;

use records::{DeviceClass, LinkTarget, LinkVersion, Rule, Scope, Variant};

use crate::chart::{self, grouped};
use crate::pages::{RangeForm, Scans, daily_points};
use crate::session::Visit;
use crate::{Console, ConsoleError, Frame, Section, encode, render};

/// Links whose details the list reads (for destinations and search) at most.
const LIST_DETAILS: usize = 200;
/// Variant and rule rows the form offers.
const VARIANT_ROWS: usize = 4;
const RULE_ROWS: usize = 3;
const DEVICES: [(&str, &str); 3] = [
    ("ios", "iOS"),
    ("android", "Android"),
    ("desktop", "Desktop"),
];
const STATUSES: [(u16, &str); 4] = [
    (302, "302 Found (default)"),
    (307, "307 Temporary"),
    (301, "301 Moved permanently (browsers keep it)"),
    (308, "308 Permanent (browsers keep it)"),
];

/// A link as the API shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct LinkView {
    pub key: String,
    pub url: String,
    pub status: u16,
    pub version: u32,
    pub target: Option<LinkTarget>,
    pub serving_version: Option<u32>,
    pub created_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct LinkPage {
    links: Vec<Summary>,
    next_after: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Summary {
    key: String,
}

/// How many of a link's latest versions its page lists (each can be rolled back to); the API
/// pages through the rest.
const VERSIONS_SHOWN: u32 = 50;

#[derive(Debug, Deserialize)]
struct Versions {
    versions: Vec<LinkVersion>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuditEntry {
    pub seq: u32,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub version: Option<u32>,
    #[serde(default)]
    pub detail: serde_json::Value,
}

#[derive(Debug, Deserialize)]
pub struct Audit {
    pub audit: Vec<AuditEntry>,
    pub next_after: Option<u32>,
}

/// How many of the latest lines of a link's audit log its page lists; the CSV export holds
/// them all.
const AUDIT_SHOWN: u32 = 50;

/// A link's whole audit log, oldest first (the API's pages followed).
pub async fn whole_audit(
    console: &Console,
    visit: &Visit,
    key: &str,
) -> Result<Vec<AuditEntry>, ConsoleError> {
    let mut entries = Vec::new();
    let mut after = 0;
    loop {
        let page: Audit = console
            .api
            .get_json(
                &visit.token,
                format!("/v1/links/{}/audit?after={after}&limit=1000", encode(key)),
            )
            .await?;
        entries.extend(page.audit);
        match page.next_after {
            Some(next) => after = next,
            None => return Ok(entries),
        }
    }
}

/// Every link of the tenant, summaries in key order (the API's pages followed).
pub async fn all_keys(console: &Console, visit: &Visit) -> Result<Vec<String>, ConsoleError> {
    links_here(visit)?;
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(after) => format!("/v1/links?limit=1000&after={}", encode(after)),
            None => "/v1/links?limit=1000".to_owned(),
        };
        let page: LinkPage = console.api.get_json(&visit.token, &path).await?;
        keys.extend(page.links.into_iter().map(|summary| summary.key));
        match page.next_after {
            Some(next) if keys.len() < 100_000 => after = Some(next),
            _ => return Ok(keys),
        }
    }
}

/// Those links in full.
pub async fn details(
    console: &Console,
    visit: &Visit,
    keys: &[String],
) -> Result<Vec<LinkView>, ConsoleError> {
    let answers = futures::future::join_all(keys.iter().map(|key| {
        console
            .api
            .get_json::<LinkView>(&visit.token, format!("/v1/links/{}", encode(key)))
    }))
    .await;
    answers.into_iter().collect()
}

// ---- the list ---------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    q: Option<String>,
    tag: Option<String>,
    /// `on`: deleted links too.
    deleted: Option<String>,
}

struct Row {
    key: String,
    destination: String,
    state: &'static str,
    state_class: &'static str,
    version: u32,
    tags: Vec<String>,
    split: bool,
}

#[derive(Template)]
#[template(path = "links.html")]
struct ListPage {
    frame: Frame,
    rows: Vec<Row>,
    q: String,
    tag: String,
    deleted: bool,
    tags: Vec<String>,
    total: usize,
    truncated: bool,
}

fn state(link: &LinkView) -> (&'static str, &'static str) {
    match (&link.deleted_at, link.serving_version) {
        (Some(_), _) => ("deleted", "bad"),
        (None, Some(_)) => ("live", "good"),
        (None, None) => ("scheduled or ended", "warn"),
    }
}

pub async fn list(
    State(console): State<Arc<Console>>,
    visit: Visit,
    Query(query): Query<ListQuery>,
) -> Result<Response, ConsoleError> {
    let keys = all_keys(&console, &visit).await?;
    let total = keys.len();
    let truncated = total > LIST_DETAILS;
    let links = details(&console, &visit, &keys[..total.min(LIST_DETAILS)]).await?;
    let mut tags: Vec<String> = links.iter().flat_map(|link| link.tags.clone()).collect();
    tags.sort();
    tags.dedup();
    let q = query.q.unwrap_or_default().trim().to_lowercase();
    let tag = query.tag.unwrap_or_default();
    let deleted = query.deleted.as_deref() == Some("on");
    let rows = links
        .iter()
        .filter(|link| deleted || link.deleted_at.is_none())
        .filter(|link| tag.is_empty() || link.tags.contains(&tag))
        .filter(|link| {
            q.is_empty()
                || link.key.to_lowercase().contains(&q)
                || link.tags.iter().any(|tag| tag.to_lowercase().contains(&q))
                || link
                    .target
                    .as_ref()
                    .is_some_and(|target| target.destination.to_lowercase().contains(&q))
        })
        .map(|link| {
            let (state, state_class) = state(link);
            Row {
                key: link.key.clone(),
                destination: link
                    .target
                    .as_ref()
                    .map(|target| target.destination.clone())
                    .unwrap_or_default(),
                state,
                state_class,
                version: link.version,
                tags: link.tags.clone(),
                split: link
                    .target
                    .as_ref()
                    .is_some_and(|target| !target.split.is_empty()),
            }
        })
        .collect();
    Ok(render(&ListPage {
        frame: Frame::new(&visit, Section::Links, "Links"),
        rows,
        q,
        tag,
        deleted,
        tags,
        total,
        truncated,
    }))
}

// ---- the form (new and edit) ------------------------------------------------------------

/// The form's fields as shown: a new link's blanks, a link's current values, or what was
/// sent back with an error.
#[derive(Debug, Clone, Default)]
pub struct LinkForm {
    destination: String,
    status: u16,
    tags: String,
    note: String,
    start: String,
    end: String,
    track_conversions: bool,
    variants: Vec<(String, String, String)>,
    rules: Vec<RuleRow>,
    base_version: Option<u32>,
}

#[derive(Debug, Clone, Default)]
pub struct RuleRow {
    name: String,
    devices: Vec<String>,
    countries: String,
    destination: String,
}

impl RuleRow {
    fn has(&self, device: &&str) -> bool {
        self.devices.iter().any(|chosen| chosen == device)
    }
}

fn local_input(time: Option<DateTime<Utc>>, tz: Tz) -> String {
    time.map(|time| time.with_timezone(&tz).format("%Y-%m-%dT%H:%M").to_string())
        .unwrap_or_default()
}

fn parse_local(text: &str, tz: Tz, field: &str) -> Result<Option<DateTime<Utc>>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let local = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M")
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S"))
        .map_err(|_| format!("{field} is a date and time like 2026-12-24T18:00"))?;
    tz.from_local_datetime(&local)
        .earliest()
        .map(|time| Some(time.with_timezone(&Utc)))
        .ok_or_else(|| format!("{field} does not exist in {tz} (a clock change)"))
}

impl LinkForm {
    fn blank() -> LinkForm {
        LinkForm {
            status: 302,
            ..LinkForm::default()
        }
    }

    fn of(link: &LinkView, tz: Tz) -> LinkForm {
        let Some(target) = &link.target else {
            return LinkForm::blank();
        };
        LinkForm {
            destination: target.destination.clone(),
            status: link.status,
            tags: link.tags.join(", "),
            note: String::new(),
            start: local_input(target.effective_start, tz),
            end: local_input(target.effective_end, tz),
            track_conversions: target.track_conversions,
            variants: target
                .split
                .iter()
                .map(|variant| {
                    (
                        variant.name.clone(),
                        variant.weight.to_string(),
                        variant.destination.clone(),
                    )
                })
                .collect(),
            rules: target
                .rules
                .iter()
                .map(|rule| RuleRow {
                    name: rule.name.clone(),
                    devices: rule
                        .devices
                        .iter()
                        .map(|device| device.as_str().to_owned())
                        .collect(),
                    countries: rule.countries.join(", "),
                    destination: rule.destination.clone(),
                })
                .collect(),
            base_version: Some(link.version),
        }
    }

    /// Reads the posted fields (pairs: devices repeat).
    fn read(pairs: &[(String, String)]) -> LinkForm {
        let one = |name: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
                .unwrap_or_default()
        };
        let variants = (0..VARIANT_ROWS)
            .map(|row| {
                (
                    one(&format!("variant_name_{row}")),
                    one(&format!("variant_weight_{row}")),
                    one(&format!("variant_destination_{row}")),
                )
            })
            .filter(|(name, weight, destination)| {
                !(name.trim().is_empty()
                    && weight.trim().is_empty()
                    && destination.trim().is_empty())
            })
            .collect();
        let rules = (0..RULE_ROWS)
            .map(|row| RuleRow {
                name: one(&format!("rule_name_{row}")),
                devices: pairs
                    .iter()
                    .filter(|(key, _)| *key == format!("rule_devices_{row}"))
                    .map(|(_, value)| value.clone())
                    .collect(),
                countries: one(&format!("rule_countries_{row}")),
                destination: one(&format!("rule_destination_{row}")),
            })
            .filter(|rule| {
                !(rule.name.trim().is_empty()
                    && rule.devices.is_empty()
                    && rule.countries.trim().is_empty()
                    && rule.destination.trim().is_empty())
            })
            .collect();
        LinkForm {
            destination: one("destination"),
            status: one("status").parse().unwrap_or(302),
            tags: one("tags"),
            note: one("note"),
            start: one("start"),
            end: one("end"),
            track_conversions: one("track_conversions") == "on",
            variants,
            rules,
            base_version: one("base_version").parse().ok(),
        }
    }

    /// The target the API is sent; a field a person got wrong is named.
    fn target(&self, tz: Tz) -> Result<LinkTarget, String> {
        let split = self
            .variants
            .iter()
            .enumerate()
            .map(|(row, (name, weight, destination))| {
                Ok(Variant {
                    name: name.trim().to_owned(),
                    weight: weight.trim().parse().map_err(|_| {
                        format!("the weight of variant {} is a whole number", row + 1)
                    })?,
                    destination: destination.trim().to_owned(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let rules = self
            .rules
            .iter()
            .enumerate()
            .map(|(row, rule)| {
                let devices = rule
                    .devices
                    .iter()
                    .map(|device| {
                        serde_json::from_value::<DeviceClass>(json!(device))
                            .map_err(|_| format!("rule {}: unknown device `{device}`", row + 1))
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                Ok(Rule {
                    name: rule.name.trim().to_owned(),
                    devices,
                    countries: split_list(&rule.countries)
                        .into_iter()
                        .map(|code| code.to_ascii_uppercase())
                        .collect(),
                    destination: rule.destination.trim().to_owned(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(LinkTarget {
            destination: self.destination.trim().to_owned(),
            effective_start: parse_local(&self.start, tz, "the start")?,
            effective_end: parse_local(&self.end, tz, "the end")?,
            rules,
            split,
            track_conversions: self.track_conversions,
        })
    }

    /// Rows for the template: the filled ones, then blanks up to the form's size.
    fn variant_rows(&self) -> Vec<(usize, (String, String, String))> {
        let mut rows = self.variants.clone();
        rows.resize(VARIANT_ROWS.max(rows.len()), Default::default());
        rows.into_iter().enumerate().collect()
    }

    fn rule_rows(&self) -> Vec<(usize, RuleRow)> {
        let mut rows = self.rules.clone();
        rows.resize(RULE_ROWS.max(rows.len()), RuleRow::default());
        rows.into_iter().enumerate().collect()
    }
}

fn split_list(text: &str) -> Vec<String> {
    text.split([',', ' '])
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

#[derive(Template)]
#[template(path = "link_new.html")]
struct NewPage {
    frame: Frame,
    form: LinkForm,
    problem: Option<String>,
    tz: String,
    statuses: &'static [(u16, &'static str)],
    devices: &'static [(&'static str, &'static str)],
}

/// Links are served with the scan side; a binder alone has none to show.
fn links_here(visit: &Visit) -> Result<(), ConsoleError> {
    if visit.links_here {
        Ok(())
    } else {
        Err(ConsoleError::NotFound(
            "links are managed where the scan side runs (`qrpool up`, or `qrpool middle-page` \
             with the binder): open the console there"
                .into(),
        ))
    }
}

fn zone(visit: &Visit) -> Tz {
    visit.browser_tz.unwrap_or(Tz::UTC)
}

fn require(visit: &Visit, scope: Scope) -> Result<(), ConsoleError> {
    if visit.can(scope) {
        Ok(())
    } else {
        Err(ConsoleError::Forbidden(format!(
            "this needs a key with the `{}` scope; yours has `{}`",
            scope.as_str(),
            visit.signed_in.key.scopes
        )))
    }
}

fn new_page(
    visit: &Visit,
    form: LinkForm,
    problem: Option<String>,
    status: StatusCode,
) -> Response {
    let mut response = render(&NewPage {
        frame: Frame::new(visit, Section::Links, "New link"),
        form,
        problem,
        tz: zone(visit).name().to_owned(),
        statuses: &STATUSES,
        devices: &DEVICES,
    });
    *response.status_mut() = status;
    response
}

pub async fn new(visit: Visit) -> Result<Response, ConsoleError> {
    links_here(&visit)?;
    require(&visit, Scope::Admin)?;
    Ok(new_page(&visit, LinkForm::blank(), None, StatusCode::OK))
}

fn csrf_of(pairs: &[(String, String)]) -> &str {
    pairs
        .iter()
        .find(|(key, _)| key == "csrf")
        .map(|(_, value)| value.as_str())
        .unwrap_or("")
}

pub async fn create(
    State(console): State<Arc<Console>>,
    visit: Visit,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, ConsoleError> {
    visit.check_form(&headers, csrf_of(&pairs))?;
    require(&visit, Scope::Admin)?;
    let form = LinkForm::read(&pairs);
    let target = match form.target(zone(&visit)) {
        Ok(target) => target,
        Err(problem) => {
            return Ok(new_page(
                &visit,
                form,
                Some(problem),
                StatusCode::UNPROCESSABLE_ENTITY,
            ));
        }
    };
    let mut body =
        json!({ "target": target, "status": form.status, "tags": split_list(&form.tags) });
    if !form.note.trim().is_empty() {
        body["note"] = json!(form.note.trim());
    }
    let answer = console
        .api
        .call(&visit.token, Method::POST, "/v1/links", Some(&body), None)
        .await?;
    if answer.status.is_client_error() && answer.status != StatusCode::FORBIDDEN {
        let status = answer.status;
        return Ok(new_page(&visit, form, Some(answer.message()), status));
    }
    let link: LinkView = answer.json()?;
    Ok(Redirect::to(&format!("/console/links/{}?created=1", encode(&link.key))).into_response())
}

// ---- one link ---------------------------------------------------------------------------

struct VersionRow {
    version: u32,
    destination: String,
    summary: String,
    at: String,
    by: String,
    note: String,
    serving: bool,
    current: bool,
}

struct AuditRow {
    at: String,
    actor: String,
    action: String,
    version: String,
    detail: String,
}

struct VariantRow {
    variant: String,
    scans: String,
    visitors: String,
    converted: String,
    rate: String,
    lift: String,
    interval: String,
    p_value: String,
}

#[derive(Debug, Deserialize)]
pub struct Experiment {
    pub enough_data: bool,
    pub variants: Vec<VariantReadout>,
}

#[derive(Debug, Deserialize)]
pub struct VariantReadout {
    pub variant: String,
    pub scans: u64,
    pub visitors: u64,
    pub converted: u64,
    pub conversion_rate: Option<f64>,
    pub lift: Option<Lift>,
}

#[derive(Debug, Deserialize)]
pub struct Lift {
    pub relative: f64,
    pub low: Option<f64>,
    pub high: Option<f64>,
    pub p_value: Option<f64>,
}

fn percent(value: f64) -> String {
    format!("{:+.1} %", value * 100.0)
}

#[derive(Template)]
#[template(path = "link.html")]
struct DetailPage {
    frame: Frame,
    link: LinkView,
    state: &'static str,
    state_class: &'static str,
    notice: Option<String>,
    problem: Option<String>,
    form: LinkForm,
    tz: String,
    statuses: &'static [(u16, &'static str)],
    devices: &'static [(&'static str, &'static str)],
    versions: Vec<VersionRow>,
    /// How many versions came before the ones listed.
    older_versions: u32,
    audit: Vec<AuditRow>,
    /// How many lines the audit log has (more than those listed when it is long).
    audit_total: u32,
    chart: String,
    scans: String,
    visitors: String,
    experiment: Option<(bool, Vec<VariantRow>)>,
}

#[derive(Debug, Default, Deserialize)]
pub struct DetailQuery {
    created: Option<String>,
    done: Option<String>,
}

fn summary(target: &LinkTarget) -> String {
    let mut parts = Vec::new();
    if !target.split.is_empty() {
        let variants: Vec<String> = target
            .split
            .iter()
            .map(|variant| format!("{} {}", variant.name, variant.weight))
            .collect();
        parts.push(format!("split {}", variants.join(" / ")));
    }
    if !target.rules.is_empty() {
        parts.push(format!("{} rule(s)", target.rules.len()));
    }
    if target.effective_start.is_some() || target.effective_end.is_some() {
        parts.push("scheduled".to_owned());
    }
    if target.track_conversions {
        parts.push("conversions tracked".to_owned());
    }
    parts.join(" · ")
}

async fn detail_page(
    console: &Console,
    visit: &Visit,
    key: &str,
    notice: Option<String>,
    problem: Option<(String, LinkForm, StatusCode)>,
) -> Result<Response, ConsoleError> {
    links_here(visit)?;
    let tz = zone(visit);
    let link_path = format!("/v1/links/{}", encode(key));
    let range = RangeForm {
        range: Some("30d".into()),
        ..RangeForm::default()
    }
    .resolve(visit, Utc::now());
    let scans_query = range.api_query(&format!("granularity=day&key={}", encode(key)));
    let experiment_path = format!("/v1/analytics/links/{}/experiment", encode(key));
    let (link, audit, scans) = futures::join!(
        console.api.get(&visit.token, &link_path),
        console.api.get(
            &visit.token,
            format!("{link_path}/audit?order=newest&limit={AUDIT_SHOWN}")
        ),
        console.api.get(&visit.token, &scans_query),
    );
    let link: LinkView = link?.json()?;
    // Versions are numbered without gaps: the latest page starts after this one.
    let versions: Versions = console
        .api
        .get_json(
            &visit.token,
            &format!(
                "{link_path}/versions?after={}&limit={VERSIONS_SHOWN}",
                link.version.saturating_sub(VERSIONS_SHOWN)
            ),
        )
        .await?;
    let audit: Audit = audit?.json()?;
    let scans: Scans = scans?.json()?;
    let has_split = link
        .target
        .as_ref()
        .is_some_and(|target| !target.split.is_empty());
    let experiment = if has_split {
        let readout: Experiment = console.api.get_json(&visit.token, &experiment_path).await?;
        Some((
            readout.enough_data,
            readout
                .variants
                .into_iter()
                .map(|variant| VariantRow {
                    variant: variant.variant,
                    scans: grouped(variant.scans),
                    visitors: grouped(variant.visitors),
                    converted: grouped(variant.converted),
                    rate: variant
                        .conversion_rate
                        .map(|rate| format!("{:.2} %", rate * 100.0))
                        .unwrap_or_else(|| "–".into()),
                    lift: variant
                        .lift
                        .as_ref()
                        .map(|lift| percent(lift.relative))
                        .unwrap_or_else(|| "control".into()),
                    interval: variant
                        .lift
                        .as_ref()
                        .and_then(|lift| {
                            Some(format!("{} to {}", percent(lift.low?), percent(lift.high?)))
                        })
                        .unwrap_or_else(|| "–".into()),
                    p_value: variant
                        .lift
                        .as_ref()
                        .and_then(|lift| lift.p_value)
                        .map(|p| format!("{p:.3}"))
                        .unwrap_or_else(|| "–".into()),
                })
                .collect(),
        ))
    } else {
        None
    };
    let points = daily_points(&scans);
    let when = |time: DateTime<Utc>| time.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string();
    let older_versions = versions
        .versions
        .first()
        .map_or(0, |oldest| oldest.version.saturating_sub(1));
    let version_rows = versions
        .versions
        .iter()
        .rev()
        .map(|version| VersionRow {
            version: version.version,
            destination: version.target.destination.clone(),
            summary: summary(&version.target),
            at: when(version.created_at),
            by: version.created_by.clone(),
            note: version.note.clone().unwrap_or_default(),
            serving: link.serving_version == Some(version.version),
            current: link.version == version.version,
        })
        .collect();
    // Newest first, and numbered without gaps: the first line's number is their count.
    let audit_total = audit.audit.first().map_or(0, |latest| latest.seq);
    let audit_rows = audit
        .audit
        .iter()
        .map(|entry| AuditRow {
            at: when(entry.at),
            actor: entry.actor.clone(),
            action: entry.action.clone(),
            version: entry.version.map(|v| v.to_string()).unwrap_or_default(),
            detail: if entry.detail.is_null() {
                String::new()
            } else {
                entry.detail.to_string()
            },
        })
        .collect();
    let (state, state_class) = state(&link);
    let (problem, form, status) = match problem {
        Some((problem, form, status)) => (Some(problem), form, status),
        None => (None, LinkForm::of(&link, tz), StatusCode::OK),
    };
    let mut response = render(&DetailPage {
        frame: Frame::new(visit, Section::Links, format!("Link {}", link.key)),
        chart: chart::time_series(&points, "Scans of this link per day, last 30 days"),
        scans: grouped(scans.totals.scans),
        visitors: grouped(scans.totals.visitors),
        state,
        state_class,
        notice,
        problem,
        form,
        tz: tz.name().to_owned(),
        statuses: &STATUSES,
        devices: &DEVICES,
        versions: version_rows,
        older_versions,
        audit: audit_rows,
        audit_total,
        experiment,
        link,
    });
    *response.status_mut() = status;
    Ok(response)
}

pub async fn detail(
    State(console): State<Arc<Console>>,
    visit: Visit,
    Path(key): Path<String>,
    Query(query): Query<DetailQuery>,
) -> Result<Response, ConsoleError> {
    let notice = match (query.created, query.done.as_deref()) {
        (Some(_), _) => Some("Link created. Print its code below.".to_owned()),
        (_, Some("edit")) => Some("Saved as a new version.".to_owned()),
        (_, Some("rollback")) => {
            Some("Rolled back: the old destination is a new version.".to_owned())
        }
        (_, Some("delete")) => {
            Some("Deleted: scans get a “no longer active” page until you restore it.".to_owned())
        }
        (_, Some("restore")) => Some("Restored.".to_owned()),
        _ => None,
    };
    detail_page(&console, &visit, &key, notice, None).await
}

pub async fn edit(
    State(console): State<Arc<Console>>,
    visit: Visit,
    headers: HeaderMap,
    Path(key): Path<String>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, ConsoleError> {
    visit.check_form(&headers, csrf_of(&pairs))?;
    require(&visit, Scope::Admin)?;
    let form = LinkForm::read(&pairs);
    let target = match form.target(zone(&visit)) {
        Ok(target) => target,
        Err(problem) => {
            return detail_page(
                &console,
                &visit,
                &key,
                None,
                Some((problem, form, StatusCode::UNPROCESSABLE_ENTITY)),
            )
            .await;
        }
    };
    let mut body = json!({
        "target": target,
        "status": form.status,
        "tags": split_list(&form.tags),
    });
    if let Some(base) = form.base_version {
        body["base_version"] = json!(base);
    }
    if !form.note.trim().is_empty() {
        body["note"] = json!(form.note.trim());
    }
    let answer = console
        .api
        .call(
            &visit.token,
            Method::PATCH,
            &format!("/v1/links/{}", encode(&key)),
            Some(&body),
            None,
        )
        .await?;
    if matches!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY | StatusCode::CONFLICT
    ) {
        let status = answer.status;
        return detail_page(
            &console,
            &visit,
            &key,
            None,
            Some((answer.message(), form, status)),
        )
        .await;
    }
    answer.done()?;
    Ok(Redirect::to(&format!("/console/links/{}?done=edit", encode(&key))).into_response())
}

#[derive(Debug, Deserialize)]
pub struct RollbackForm {
    csrf: String,
    version: u32,
}

pub async fn rollback(
    State(console): State<Arc<Console>>,
    visit: Visit,
    headers: HeaderMap,
    Path(key): Path<String>,
    Form(form): Form<RollbackForm>,
) -> Result<Response, ConsoleError> {
    visit.check_form(&headers, &form.csrf)?;
    require(&visit, Scope::Admin)?;
    console
        .api
        .call(
            &visit.token,
            Method::POST,
            &format!("/v1/links/{}/rollback", encode(&key)),
            Some(&json!({ "version": form.version })),
            None,
        )
        .await?
        .done()?;
    Ok(Redirect::to(&format!("/console/links/{}?done=rollback", encode(&key))).into_response())
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    pub csrf: String,
}

/// `POST /console/links/{key}/delete` and `…/restore`: one API call each, then the page.
async fn change_state(
    console: &Console,
    visit: &Visit,
    headers: &HeaderMap,
    form: &CsrfForm,
    (method, path, done): (Method, String, &str),
    key: &str,
) -> Result<Response, ConsoleError> {
    visit.check_form(headers, &form.csrf)?;
    require(visit, Scope::Admin)?;
    console
        .api
        .call(&visit.token, method, path, None, None)
        .await?
        .done()?;
    Ok(Redirect::to(&format!("/console/links/{}?done={done}", encode(key))).into_response())
}

pub async fn delete(
    State(console): State<Arc<Console>>,
    visit: Visit,
    headers: HeaderMap,
    Path(key): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, ConsoleError> {
    let call = (
        Method::DELETE,
        format!("/v1/links/{}", encode(&key)),
        "delete",
    );
    change_state(&console, &visit, &headers, &form, call, &key).await
}

pub async fn restore(
    State(console): State<Arc<Console>>,
    visit: Visit,
    headers: HeaderMap,
    Path(key): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, ConsoleError> {
    let call = (
        Method::POST,
        format!("/v1/links/{}/restore", encode(&key)),
        "restore",
    );
    change_state(&console, &visit, &headers, &form, call, &key).await
}

/// Image options of a QR download, passed on to the API (which checks them).
#[derive(Debug, Default, Deserialize)]
pub struct QrQuery {
    format: Option<String>,
    scale: Option<String>,
    margin: Option<String>,
    dark: Option<String>,
    light: Option<String>,
    ec: Option<String>,
    download: Option<String>,
}

impl QrQuery {
    /// The API's image path for `base` (`/v1/links/{key}` or `/v1/codes/{id}`) and the name
    /// a download gets.
    pub fn api_path(&self, base: &str, name: &str) -> (String, String, &'static str) {
        let svg = self.format.as_deref() == Some("svg");
        let extension = if svg { "svg" } else { "png" };
        let mut query = Vec::new();
        for (field, value) in [
            ("scale", &self.scale),
            ("margin", &self.margin),
            ("dark", &self.dark),
            ("light", &self.light),
            ("ec", &self.ec),
        ] {
            if let Some(value) = value
                .as_deref()
                .map(str::trim)
                .filter(|value| !value.is_empty())
            {
                let value = value.trim_start_matches('#');
                query.push(format!("{field}={}", encode(value)));
            }
        }
        let path = if query.is_empty() {
            format!("{base}/qr.{extension}")
        } else {
            format!("{base}/qr.{extension}?{}", query.join("&"))
        };
        (path, format!("{name}.{extension}"), extension)
    }
}

/// Passes an image answer of the API on, as a download when asked.
pub async fn image(
    console: &Console,
    visit: &Visit,
    query: &QrQuery,
    base: &str,
    name: &str,
) -> Result<Response, ConsoleError> {
    let (path, file_name, _) = query.api_path(base, name);
    let answer = console.api.get(&visit.token, &path).await?.done()?;
    let mut response = (answer.status, answer.body).into_response();
    let headers = response.headers_mut();
    if let Some(content_type) = answer.content_type {
        headers.insert(header::CONTENT_TYPE, content_type);
    }
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=300"),
    );
    if query.download.is_some() {
        headers.insert(
            header::CONTENT_DISPOSITION,
            crate::pages::export::attachment(&file_name),
        );
    }
    Ok(response)
}

/// `GET /console/links/{key}/qr?format=png|svg&scale=&margin=&dark=&light=&ec=&download=1`.
pub async fn qr(
    State(console): State<Arc<Console>>,
    visit: Visit,
    Path(key): Path<String>,
    Query(query): Query<QrQuery>,
) -> Result<Response, ConsoleError> {
    image(
        &console,
        &visit,
        &query,
        &format!("/v1/links/{}", encode(&key)),
        &format!("link-{key}"),
    )
    .await
}
