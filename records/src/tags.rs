//! [`Tags`]: the labels a tenant puts on its codes and links (`spring-campaign`, `store-12`),
//! carried into each scan's event so that analytics can be filtered by them.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Most tags on one code or link.
pub const MAX_TAGS: usize = 32;
/// Longest tag, in characters.
pub const MAX_TAG_CHARS: usize = 64;

/// A code's or link's tags: distinct, in the order given, each 1 to 64 characters without
/// control characters. Shared, not copied, by every scan's event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct Tags(Arc<[String]>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagsError {
    #[error("at most {MAX_TAGS} tags")]
    TooMany,
    #[error("a tag is 1 to {MAX_TAG_CHARS} characters without control characters: `{0}`")]
    Invalid(String),
}

impl Tags {
    pub fn parse(tags: Vec<String>) -> Result<Tags, TagsError> {
        if tags.len() > MAX_TAGS {
            return Err(TagsError::TooMany);
        }
        let mut kept: Vec<String> = Vec::with_capacity(tags.len());
        for tag in tags {
            let tag = tag.trim().to_owned();
            let chars = tag.chars().count();
            if chars == 0 || chars > MAX_TAG_CHARS || tag.chars().any(char::is_control) {
                return Err(TagsError::Invalid(tag));
            }
            if !kept.contains(&tag) {
                kept.push(tag);
            }
        }
        Ok(Tags(kept.into()))
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<Vec<String>> for Tags {
    type Error = TagsError;
    fn try_from(tags: Vec<String>) -> Result<Self, Self::Error> {
        Tags::parse(tags)
    }
}

impl From<Tags> for Vec<String> {
    fn from(tags: Tags) -> Self {
        tags.0.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_trimmed_deduplicated_and_bounded() {
        let tags =
            Tags::parse(vec![" spring ".into(), "store-12".into(), "spring".into()]).unwrap();
        assert_eq!(tags.as_slice(), ["spring", "store-12"]);
        assert_eq!(
            Tags::parse(vec![String::new()]),
            Err(TagsError::Invalid(String::new()))
        );
        assert!(Tags::parse(vec!["a\nb".into()]).is_err());
        assert!(Tags::parse(vec!["x".repeat(65)]).is_err());
        assert!(Tags::parse(vec!["é".repeat(64)]).is_ok());
        assert_eq!(Tags::parse(vec!["t".into(); 33]), Err(TagsError::TooMany));
        let json: Tags = serde_json::from_str(r#"["a","b"]"#).unwrap();
        assert_eq!(serde_json::to_string(&json).unwrap(), r#"["a","b"]"#);
        assert!(serde_json::from_str::<Tags>(r#"[""]"#).is_err());
    }
}
