//! [`JsonObject`]: a request body that is a JSON object, read as `T`.
//!
//! axum's `Json` hands the body to serde, and a derived `Deserialize` also reads a struct from
//! a JSON array of its fields in order: `[null, null]` was accepted as a change of a code that
//! sets nothing and clears its expiry. No client means that, and the OpenAPI documents say
//! "object", so an array is refused here with 422 before serde sees it. Everything else
//! answers as `Json` does: 415 without a JSON content type, 413 over the body limit, 400 for
//! bad syntax, 422 for a body of the wrong shape.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use crate::Problem;

#[derive(Debug, Clone, Copy, Default)]
pub struct JsonObject<T>(pub T);

impl<T, S> FromRequest<S> for JsonObject<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        if !has_json_content_type(request.headers()) {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "about:blank",
                "Unsupported Media Type",
            )
            .with_detail("Expected request with `Content-Type: application/json`"));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                let status = rejection.status();
                Problem::new(
                    status,
                    "about:blank",
                    status.canonical_reason().unwrap_or("Bad Request"),
                )
                .with_detail(rejection.body_text())
            })?;
        if bytes.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'[') {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "about:blank",
                "Unprocessable Entity",
            )
            .with_detail("the body must be a JSON object, not an array"));
        }
        axum::Json::<T>::from_bytes(&bytes)
            .map(|axum::Json(value)| JsonObject(value))
            .map_err(Problem::from)
    }
}

/// Reads a version number: a JSON number that is whole, as JSON Schema's `integer` (what the
/// documents say) counts `3.0` too. JSON itself has one number type.
pub fn whole_u32<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let number = <serde_json::Number as serde::Deserialize>::deserialize(deserializer)?;
    let whole = match (number.as_u64(), number.as_f64()) {
        (Some(whole), _) => u32::try_from(whole).ok(),
        (None, Some(float))
            if float.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&float) =>
        {
            Some(float as u32)
        }
        _ => None,
    };
    whole.ok_or_else(|| {
        serde::de::Error::invalid_value(
            serde::de::Unexpected::Other(&number.to_string()),
            &"a whole number from 0 to 4294967295",
        )
    })
}

/// [`whole_u32`] for a field that may be absent or `null`.
pub fn whole_u32_or_null<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u32>, D::Error> {
    #[derive(serde::Deserialize)]
    struct Whole(#[serde(deserialize_with = "whole_u32")] u32);
    let whole = <Option<Whole> as serde::Deserialize>::deserialize(deserializer)?;
    Ok(whole.map(|Whole(value)| value))
}

/// `application/json`, or any `application/…+json`, as axum's `Json` accepts.
fn has_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json")
            || subtype.len() > 5
                && subtype
                    .get(subtype.len() - 5..)
                    .is_some_and(|suffix| suffix.eq_ignore_ascii_case("+json")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_whole_numbers_however_written() {
        #[derive(serde::Deserialize)]
        struct Body {
            #[serde(deserialize_with = "whole_u32")]
            version: u32,
            #[serde(default, deserialize_with = "whole_u32_or_null")]
            base: Option<u32>,
        }
        let read =
            |json: &str| serde_json::from_str::<Body>(json).map(|body| (body.version, body.base));
        assert_eq!(read(r#"{"version": 3}"#).ok(), Some((3, None)));
        assert_eq!(
            read(r#"{"version": 3.0, "base": 2.0}"#).ok(),
            Some((3, Some(2)))
        );
        assert_eq!(
            read(r#"{"version": 1, "base": null}"#).ok(),
            Some((1, None))
        );
        assert!(read(r#"{"version": 3.5}"#).is_err());
        assert!(read(r#"{"version": -1}"#).is_err());
        assert!(read(r#"{"version": 4294967296}"#).is_err());
        assert!(read(r#"{"version": "3"}"#).is_err());
    }

    #[test]
    fn json_content_types_are_recognised() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                value.parse().unwrap_or_else(|_| unreachable!()),
            );
            has_json_content_type(&headers)
        };
        assert!(with("application/json"));
        assert!(with("application/json; charset=utf-8"));
        assert!(with("Application/JSON"));
        assert!(with("application/merge-patch+json"));
        assert!(!with("text/json"));
        assert!(!with("application/jsonx"));
        assert!(!with("application/+json"));
        assert!(!has_json_content_type(&HeaderMap::new()));
    }
}
