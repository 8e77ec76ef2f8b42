//! [`Binding`]: what a request id was bound to, and the [`Params`] a listing app sends.
//!
//! A binding is written once by the binder and read many times at scan time. Its JSON form
//! (the one stored in Redis) carries a `v` field so that a reader can tell layouts apart.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{RequestId, Tags};

/// One bound code: the request id a printed code carries, and what it stands for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Binding {
    /// Layout of this JSON form; readers reject layouts they do not know.
    pub v: u16,
    pub request_id: RequestId,
    pub tenant: Tenant,
    pub params: Params,
    /// What the code encodes (the middle-page URL), kept so the image can be rendered again.
    pub content: String,
    /// Which issuer made the code.
    pub issuer: String,
    /// Starts at 1; an update of the params appends a version instead of overwriting.
    pub version: u32,
    pub created_at: DateTime<Utc>,
    /// After this instant the code resolves to "expired" and caches drop it.
    pub expires_at: Option<DateTime<Utc>>,
    /// Labels its scans' events carry (a campaign, a print run); absent in records written
    /// before tags existed.
    #[serde(default, skip_serializing_if = "Tags::is_empty")]
    pub tags: Tags,
}

impl Binding {
    pub const LAYOUT: u16 = 1;

    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// The tenant that owns a binding: a short slug, safe in keys, paths and logs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Tenant(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a tenant is 1 to 64 characters of a-z, 0-9, '-' and '_'")]
pub struct TenantError;

impl Tenant {
    pub fn parse(text: &str) -> Result<Self, TenantError> {
        let valid = (1..=64).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if valid {
            Ok(Tenant(text.to_owned()))
        } else {
            Err(TenantError)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `default`: the tenant of a single-tenant deployment.
impl Default for Tenant {
    fn default() -> Self {
        Tenant("default".to_owned())
    }
}

impl TryFrom<String> for Tenant {
    type Error = TenantError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Tenant::parse(&value)
    }
}

impl From<Tenant> for String {
    fn from(value: Tenant) -> Self {
        value.0
    }
}

impl std::fmt::Display for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The parameters a code stands for: a JSON object, bounded so that one app cannot fill
/// Redis with a single request. Values are untrusted: every page that shows them escapes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Params(Map<String, Value>);

/// The bounds a [`Params`] object must keep.
#[derive(Debug, Clone, Copy)]
pub struct ParamsLimits {
    /// Size of the compact JSON text.
    pub max_bytes: usize,
    pub max_keys: usize,
    /// Nesting of objects and arrays; a flat object has depth 1.
    pub max_depth: usize,
}

impl Default for ParamsLimits {
    fn default() -> Self {
        ParamsLimits {
            max_bytes: 4096,
            max_keys: 64,
            max_depth: 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    #[error("`params` must be a JSON object, not {0}")]
    NotAnObject(&'static str),
    #[error("`params` is {actual} bytes of JSON; at most {limit} are allowed")]
    TooLarge { actual: usize, limit: usize },
    #[error("`params` has {actual} keys; at most {limit} are allowed")]
    TooManyKeys { actual: usize, limit: usize },
    #[error("`params` nests deeper than {limit} levels")]
    TooDeep { limit: usize },
}

impl Params {
    /// Accepts a JSON value as params if it is an object within `limits`.
    pub fn parse(value: Value, limits: &ParamsLimits) -> Result<Self, ParamsError> {
        let Value::Object(map) = value else {
            return Err(ParamsError::NotAnObject(kind_of(&value)));
        };
        if map.len() > limits.max_keys {
            return Err(ParamsError::TooManyKeys {
                actual: map.len(),
                limit: limits.max_keys,
            });
        }
        if depth_of_map(&map) > limits.max_depth {
            return Err(ParamsError::TooDeep {
                limit: limits.max_depth,
            });
        }
        let params = Params(map);
        let size = params.to_json().len();
        if size > limits.max_bytes {
            return Err(ParamsError::TooLarge {
                actual: size,
                limit: limits.max_bytes,
            });
        }
        Ok(params)
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_default()
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn depth_of_map(map: &Map<String, Value>) -> usize {
    1 + map.values().map(depth_of).max().unwrap_or(0)
}

fn depth_of(value: &Value) -> usize {
    match value {
        Value::Object(map) => depth_of_map(map),
        Value::Array(items) => 1 + items.iter().map(depth_of).max().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_object_within_limits_is_accepted() {
        let params = Params::parse(
            json!({"listing": 42, "agent": "a-7"}),
            &ParamsLimits::default(),
        );
        assert_eq!(params.unwrap().as_map().len(), 2);
    }

    #[test]
    fn anything_but_an_object_is_rejected_by_kind() {
        let limits = ParamsLimits::default();
        assert_eq!(
            Params::parse(json!([1]), &limits),
            Err(ParamsError::NotAnObject("an array"))
        );
        assert_eq!(
            Params::parse(json!("x"), &limits),
            Err(ParamsError::NotAnObject("a string"))
        );
        assert_eq!(
            Params::parse(Value::Null, &limits),
            Err(ParamsError::NotAnObject("null"))
        );
    }

    #[test]
    fn size_keys_and_depth_are_bounded() {
        let limits = ParamsLimits {
            max_bytes: 32,
            max_keys: 2,
            max_depth: 2,
        };
        assert!(matches!(
            Params::parse(json!({"a": "x".repeat(40)}), &limits),
            Err(ParamsError::TooLarge { limit: 32, .. })
        ));
        assert!(matches!(
            Params::parse(json!({"a": 1, "b": 2, "c": 3}), &limits),
            Err(ParamsError::TooManyKeys {
                actual: 3,
                limit: 2
            })
        ));
        assert_eq!(
            Params::parse(json!({"a": {"b": {"c": 1}}}), &limits),
            Err(ParamsError::TooDeep { limit: 2 })
        );
        assert!(Params::parse(json!({"a": {"b": 1}}), &limits).is_ok());
    }

    #[test]
    fn tenants_are_slugs() {
        assert!(Tenant::parse("acme-realty_2").is_ok());
        for bad in ["", "Acme", "a b", "a/b", "ü", &"a".repeat(65)] {
            assert_eq!(Tenant::parse(bad), Err(TenantError), "{bad:?}");
        }
    }

    #[test]
    fn a_binding_round_trips_through_json() {
        let binding = Binding {
            v: Binding::LAYOUT,
            request_id: RequestId::generate(),
            tenant: Tenant::parse("default").unwrap(),
            params: Params::parse(json!({"listing": 1}), &ParamsLimits::default()).unwrap(),
            content: "http://x/m/1".into(),
            issuer: "local".into(),
            version: 1,
            created_at: DateTime::from_timestamp_millis(1_700_000_000_000).unwrap(),
            expires_at: None,
            tags: Tags::default(),
        };
        let json = serde_json::to_string(&binding).unwrap();
        assert!(!json.contains("tags"), "no tags, no field: {json}");
        assert_eq!(serde_json::from_str::<Binding>(&json).unwrap(), binding);
        let tagged = Binding {
            tags: Tags::parse(vec!["spring".into()]).unwrap(),
            ..binding
        };
        let json = serde_json::to_string(&tagged).unwrap();
        assert_eq!(serde_json::from_str::<Binding>(&json).unwrap(), tagged);
    }
}
