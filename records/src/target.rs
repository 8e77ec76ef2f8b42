//! [`TargetTemplate`]: where a scan is redirected, built from a binding's params.
//!
//! An operator writes templates like `https://m.acme.example/listing/{listing_id}?a={agent}`
//! in the settings; a binding whose params name one (`"target": "listing"`) sends scanners
//! there with a `302`. Only the path, query and fragment may hold placeholders, and every
//! value is percent-encoded, so params can never change the host a scan lands on: no open
//! redirect through a binding.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

use crate::Params;

/// Everything but RFC 3986's unreserved characters is encoded inside a value.
const VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Param(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("must start with https:// or http://")]
    Scheme,
    #[error("the host must be written out: no placeholder before the path")]
    HostPlaceholder,
    #[error("a placeholder is `{{name}}` with a-z, 0-9 and _ (at most 64)")]
    Placeholder,
}

impl TargetTemplate {
    pub fn parse(text: &str) -> Result<Self, TargetError> {
        let rest = text
            .strip_prefix("https://")
            .or_else(|| text.strip_prefix("http://"))
            .ok_or(TargetError::Scheme)?;
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        if authority.is_empty() || authority.contains(['{', '}', '@']) {
            return Err(TargetError::HostPlaceholder);
        }
        let mut parts = Vec::new();
        let mut text_part = String::new();
        let mut chars = text.char_indices();
        while let Some((_, c)) = chars.next() {
            match c {
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for (_, c) in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    if !closed {
                        return Err(TargetError::Placeholder);
                    }
                    let valid = (1..=64).contains(&name.len())
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                    if !valid {
                        return Err(TargetError::Placeholder);
                    }
                    parts.push(Part::Text(std::mem::take(&mut text_part)));
                    parts.push(Part::Param(name));
                }
                '}' => return Err(TargetError::Placeholder),
                c => text_part.push(c),
            }
        }
        parts.push(Part::Text(text_part));
        parts.retain(|part| !matches!(part, Part::Text(text) if text.is_empty()));
        Ok(TargetTemplate { parts })
    }

    /// The URL for `params`; `None` when one it needs is missing or not a string, number or
    /// boolean.
    pub fn fill(&self, params: &Params) -> Option<String> {
        let mut url = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => url.push_str(text),
                Part::Param(name) => {
                    let value = match params.as_map().get(name)? {
                        Value::String(text) => text.clone(),
                        Value::Number(number) => number.to_string(),
                        Value::Bool(flag) => flag.to_string(),
                        _ => return None,
                    };
                    url.extend(utf8_percent_encode(&value, VALUE));
                }
            }
        }
        Some(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ParamsLimits;

    fn params(value: Value) -> Params {
        Params::parse(value, &ParamsLimits::default()).unwrap()
    }

    #[test]
    fn placeholders_are_filled_and_encoded() {
        let template = TargetTemplate::parse(
            "https://m.acme.example/listing/{listing_id}?agent={agent}&n={n}",
        )
        .unwrap();
        let url = template
            .fill(&params(
                serde_json::json!({"listing_id": "L 1/2", "agent": "a&b=c", "n": 7}),
            ))
            .unwrap();
        assert_eq!(
            url,
            "https://m.acme.example/listing/L%201%2F2?agent=a%26b%3Dc&n=7"
        );
    }

    #[test]
    fn a_value_can_never_change_the_host() {
        let template = TargetTemplate::parse("https://m.acme.example/{path}").unwrap();
        let url = template
            .fill(&params(serde_json::json!({"path": "@evil.example//x"})))
            .unwrap();
        assert!(url.starts_with("https://m.acme.example/"), "{url}");
        assert!(!url[8..].contains("//") && !url.contains('@'), "{url}");
    }

    #[test]
    fn templates_that_could_redirect_anywhere_are_refused() {
        for (text, error) in [
            ("ftp://x.example/", TargetError::Scheme),
            ("//x.example/", TargetError::Scheme),
            ("https://{host}/x", TargetError::HostPlaceholder),
            ("https://x.example{port}/", TargetError::HostPlaceholder),
            ("https://user@x.example/", TargetError::HostPlaceholder),
            ("https:///x", TargetError::HostPlaceholder),
            ("https://x.example/{Bad}", TargetError::Placeholder),
            ("https://x.example/{unclosed", TargetError::Placeholder),
            ("https://x.example/}", TargetError::Placeholder),
        ] {
            assert_eq!(TargetTemplate::parse(text), Err(error), "{text}");
        }
    }

    #[test]
    fn a_missing_or_structured_value_fills_nothing() {
        let template = TargetTemplate::parse("https://x.example/{id}").unwrap();
        assert_eq!(template.fill(&params(serde_json::json!({}))), None);
        assert_eq!(
            template.fill(&params(serde_json::json!({"id": {"a": 1}}))),
            None
        );
    }
}
