//! What every HTTP surface of qrpool shares, so that the binder, the middle page and the
//! redirect answer, fail, report and shut down the same way.
//!
//! - [`auth`]: API keys, scopes and a rate limit per key, for every API.
//! - [`problem`]: RFC 9457 `application/problem+json` errors for the APIs.
//! - [`openapi`]: the check that keeps each hand-written OpenAPI document true.
//! - [`ops`]: `/healthz`, `/readyz` (named readiness checks) and `/metrics` (Prometheus).
//! - [`layers`]: body limit, time limit, request ids in spans, per-route metrics.
//! - [`front`]: scan paths answered before the router, observed the same way.
//! - [`serve`]: runs a service until a shutdown future resolves, then drains.

pub mod auth;
pub mod front;
pub mod image;
pub mod json;
pub mod layers;
pub mod openapi;
pub mod ops;
pub mod page;
pub mod problem;
pub mod serve;

pub use auth::{Caller, Keys};
pub use front::{Front, ScanRoute};
pub use json::JsonObject;
pub use ops::{Readiness, ReadinessCheck};
pub use problem::Problem;
pub use serve::serve;

/// A CSV field as every export writes it: quoted when it must be, and never a formula (a
/// value from a scanned URL or a destination could be `=HYPERLINK(…)`; spreadsheets would run
/// it).
pub fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// The value of the cookie `name` a request carries, as sent (the caller checks its shape:
/// a cookie is input like any other).
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_never_formulas() {
        assert_eq!(csv_field("DE"), "DE");
        assert_eq!(csv_field("São Paulo, SP"), "\"São Paulo, SP\"");
        assert_eq!(csv_field("a \"b\""), "\"a \"\"b\"\"\"");
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("-1+2"), "'-1+2");
        assert_eq!(csv_field("@cmd"), "'@cmd");
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut headers = axum::http::HeaderMap::new();
        headers.append(axum::http::header::COOKIE, "a=1; qrv=abc".parse().unwrap());
        headers.append(axum::http::header::COOKIE, "other=2".parse().unwrap());
        assert_eq!(cookie(&headers, "qrv"), Some("abc"));
        assert_eq!(cookie(&headers, "other"), Some("2"));
        assert_eq!(cookie(&headers, "missing"), None);
    }
}
