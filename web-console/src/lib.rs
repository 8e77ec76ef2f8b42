//! The web console at `/console`: what marketers and operators use instead of curl.
//!
//! Server-rendered pages (askama) over qrpool's own API, called in process with the signed-in
//! session as the caller ([`api`]): the console shows and changes exactly what the session's
//! key may, with the API's checks and errors. Charts and the world map are SVG drawn here
//! ([`chart`], [`map`]); the one script ([`assets`]) only adds polling and previews.
//!
//! | page | for | what |
//! | --- | --- | --- |
//! | `/console/sign-in` | everyone | an API key in, a session out (see [`session`]) |
//! | `/console/overview` | `read` | scans and visitors over time, QR vs click, top codes and links, live counter |
//! | `/console/audience` | `read` | the world map, regions, cities, devices, browsers, OS, referrers, UTM |
//! | `/console/links` | `read`, edits `admin` | list, search, tags; create; a link's versions, schedule, rollback, delete and restore, audit, A/B readout, QR download |
//! | `/console/codes` | `read`, edits `admin` | a code by request id: binding, versions, scans; revoke; new params |
//! | `/console/print` | `bind` | a print run: CSV of params in, a ZIP of codes and a CSV of ids and URLs out |
//! | `/console/pool` | `admin` | pool depth per lane against its marks, drain rate and time left, the schedule, the issuers |
//! | `/console/export/…` | `read` | every table as CSV |

pub mod api;
pub mod assets;
pub mod chart;
pub mod map;
pub mod pages;
pub mod print;
pub mod session;

use std::sync::Arc;

use askama::Template;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Router, middleware};

use records::Scope;
use service::Keys;

use crate::api::Api;
use crate::session::Visit;

pub use pages::pool::PoolView;

/// Where the console lives.
pub const BASE: &str = "/console";

/// What the console's pages share.
#[derive(Debug)]
pub struct Console {
    keys: Keys,
    api: Api,
    /// Cookies get `Secure` when the public URL is https.
    secure_cookie: bool,
    pool: Option<PoolView>,
    print_runs: print::PrintRuns,
    /// The links API is served here (the process runs the scan side as well as the binder).
    links_here: bool,
}

impl Console {
    /// `api`: the process's API routes (codes, links, analytics), which the console calls.
    /// `links_here`: the process serves the links API too (`qrpool up`, or binder and middle
    /// page together); without it the console has no links pages.
    pub fn new(
        keys: Keys,
        api: Router,
        settings: &config::Settings,
        pool: Option<PoolView>,
        links_here: bool,
    ) -> Self {
        Console {
            keys,
            api: Api::new(api.clone()),
            secure_cookie: settings.server.public_base().starts_with("https://"),
            pool,
            print_runs: print::PrintRuns::new(Api::new(api)),
            links_here,
        }
    }
}

pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route(BASE, get(|| async { Redirect::to("/console/overview") }))
        .route(
            "/console/",
            get(|| async { Redirect::to("/console/overview") }),
        )
        .route("/console/assets/{name}", get(assets::serve))
        .route(
            "/console/sign-in",
            get(pages::sign_in::form).post(pages::sign_in::sign_in),
        )
        .route("/console/sign-out", post(pages::sign_in::sign_out))
        .route("/console/overview", get(pages::overview::page))
        .route("/console/live", get(pages::overview::live))
        .route("/console/audience", get(pages::audience::page))
        .route(
            "/console/links",
            get(pages::links::list).post(pages::links::create),
        )
        .route("/console/links/new", get(pages::links::new))
        .route("/console/links/{key}", get(pages::links::detail))
        .route("/console/links/{key}/edit", post(pages::links::edit))
        .route(
            "/console/links/{key}/rollback",
            post(pages::links::rollback),
        )
        .route("/console/links/{key}/delete", post(pages::links::delete))
        .route("/console/links/{key}/restore", post(pages::links::restore))
        .route("/console/links/{key}/qr", get(pages::links::qr))
        .route("/console/codes", get(pages::codes::page))
        .route("/console/codes/{id}/revoke", post(pages::codes::revoke))
        .route(
            "/console/codes/{id}/params",
            post(pages::codes::change_params),
        )
        .route("/console/codes/{id}/qr", get(pages::codes::qr))
        .route(
            "/console/print",
            get(print::form)
                .post(print::start)
                .layer(axum::extract::DefaultBodyLimit::max(
                    print::MAX_UPLOAD_BYTES,
                )),
        )
        .route("/console/print/{run}", get(print::status))
        .route("/console/print/{run}/codes.zip", get(print::zip))
        .route("/console/print/{run}/codes.csv", get(print::csv))
        .route("/console/pool", get(pages::pool::page))
        .route("/console/export/scans.csv", get(pages::export::scans))
        .route("/console/export/links.csv", get(pages::export::links))
        .route(
            "/console/export/links/{key}/audit.csv",
            get(pages::export::audit),
        )
        .route(
            "/console/export/links/{key}/experiment.csv",
            get(pages::export::experiment),
        )
        .layer(middleware::map_response(session::security_headers))
        .with_state(console)
}

/// A section of the console, for the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Overview,
    Audience,
    Links,
    Codes,
    Print,
    Pool,
}

/// An entry of the navigation.
#[derive(Debug)]
pub struct NavItem {
    pub href: &'static str,
    pub label: &'static str,
    pub current: bool,
}

/// What every signed-in page's frame shows.
#[derive(Debug)]
pub struct Frame {
    pub title: String,
    pub nav: Vec<NavItem>,
    pub tenant: String,
    pub key_id: String,
    pub scopes: String,
    pub csrf: String,
    /// The key may change links and codes (`admin`).
    pub can_edit: bool,
    pub stylesheet: String,
    pub script: String,
    pub icon: String,
}

impl Frame {
    pub fn new(visit: &Visit, section: Section, title: impl Into<String>) -> Frame {
        let admin = visit.can(Scope::Admin);
        let mut nav = vec![
            (Section::Overview, "/console/overview", "Overview"),
            (Section::Audience, "/console/audience", "Where & who"),
        ];
        if visit.links_here {
            nav.push((Section::Links, "/console/links", "Links"));
        }
        nav.push((Section::Codes, "/console/codes", "Codes"));
        if visit.can(Scope::Bind) {
            nav.push((Section::Print, "/console/print", "Print runs"));
        }
        if admin {
            nav.push((Section::Pool, "/console/pool", "Pool"));
        }
        Frame {
            title: title.into(),
            nav: nav
                .into_iter()
                .map(|(item, href, label)| NavItem {
                    href,
                    label,
                    current: item == section,
                })
                .collect(),
            tenant: visit.tenant().to_owned(),
            key_id: visit.signed_in.key.key_id.clone(),
            scopes: visit.signed_in.key.scopes.to_string(),
            csrf: visit.csrf().to_owned(),
            can_edit: admin,
            stylesheet: assets::STYLESHEET.url(),
            script: assets::SCRIPT.url(),
            icon: assets::ICON.url(),
        }
    }
}

/// Why a console request failed; each is a page a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("not signed in")]
    SignedOut,
    #[error("this form did not come from the console, or it expired")]
    Forged,
    #[error("{message}")]
    Api { status: StatusCode, message: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("something went wrong: {0}")]
    Unexpected(String),
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    heading: &'a str,
    text: &'a str,
    stylesheet: String,
    icon: String,
}

/// A page of its own, for errors and the sign-in form.
pub(crate) fn render(template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(error) => {
            tracing::error!(%error, "rendering a console page failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong.").into_response()
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let (status, heading) = match &self {
            ConsoleError::SignedOut => {
                return Redirect::to("/console/sign-in").into_response();
            }
            ConsoleError::Forged => (StatusCode::FORBIDDEN, "This form can't be accepted"),
            ConsoleError::Api { status, .. } => (
                *status,
                match *status {
                    StatusCode::NOT_FOUND => "Not found",
                    StatusCode::FORBIDDEN => "Your key can't do this",
                    StatusCode::UNAUTHORIZED => "Please sign in again",
                    StatusCode::TOO_MANY_REQUESTS => "Too many requests",
                    status if status.is_server_error() => "Something isn't answering",
                    _ => "That didn't work",
                },
            ),
            ConsoleError::BadRequest(_) => (StatusCode::UNPROCESSABLE_ENTITY, "That didn't work"),
            ConsoleError::Forbidden(_) => (StatusCode::FORBIDDEN, "Your key can't do this"),
            ConsoleError::NotFound(_) => (StatusCode::NOT_FOUND, "Not found"),
            ConsoleError::Unavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "Something isn't answering")
            }
            ConsoleError::Unexpected(detail) => {
                tracing::error!(%detail, "a console page failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong")
            }
        };
        let text = self.to_string();
        let mut response = render(&ErrorPage {
            heading,
            text: &text,
            stylesheet: assets::STYLESHEET.url(),
            icon: assets::ICON.url(),
        });
        *response.status_mut() = status;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(5));
        }
        response
    }
}

/// A percent-encoded query value.
pub(crate) fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}
