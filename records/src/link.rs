//! Links: the records of dynamic redirects (`/r/{key}`).
//!
//! A [`Link`] has an immutable [`LinkKey`] (what the printed code carries) and a list of
//! versions, each a [`LinkTarget`]: a destination and the policy that may send a scanner
//! elsewhere. A change appends a version; nothing is overwritten, so any version can be
//! brought back.
//!
//! Which version serves a scan: the newest one whose effective window holds the scan's time.
//! A version without a window is always effective, so a campaign scheduled as a new version
//! with a window takes over while it runs and hands back to the version before it when it
//! ends. Within the version, the first rule that matches the scanner's device or country
//! wins; otherwise the A/B split picks a variant by the visitor's sticky bucket; otherwise the
//! version's own destination.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{DeviceClass, Tags, Tenant};

/// Characters in a link key: 10 base62 characters, about 59 random bits. Short enough for a
/// small printed code; sparse enough that trying keys finds nothing (a billion guesses hit
/// one of a million links with odds of about one in 600).
pub const LINK_KEY_LEN: usize = 10;
/// Longest destination URL accepted.
pub const MAX_DESTINATION: usize = 2_048;
/// Most rules, and most variants, in one version.
pub const MAX_RULES: usize = 32;
pub const MAX_VARIANTS: usize = 16;
/// Weights are parts of this whole (basis points).
pub const WEIGHT_TOTAL_MAX: u32 = 10_000;

/// The immutable key of a link.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LinkKey(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a link key is {LINK_KEY_LEN} letters and digits")]
pub struct LinkKeyError;

impl LinkKey {
    pub fn generate() -> Self {
        LinkKey(crate::api_key::random_base62(LINK_KEY_LEN))
    }

    pub fn parse(text: &str) -> Result<Self, LinkKeyError> {
        (text.len() == LINK_KEY_LEN && text.bytes().all(|b| b.is_ascii_alphanumeric()))
            .then(|| LinkKey(text.to_owned()))
            .ok_or(LinkKeyError)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for LinkKey {
    type Error = LinkKeyError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        LinkKey::parse(&text)
    }
}

impl From<LinkKey> for String {
    fn from(key: LinkKey) -> Self {
        key.0
    }
}

impl std::fmt::Display for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The status a link answers with. 301 and 308 are cached by browsers for good: a later
/// change of the link does not reach a scanner who followed it before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(try_from = "u16", into = "u16")]
pub enum RedirectStatus {
    MovedPermanently,
    #[default]
    Found,
    TemporaryRedirect,
    PermanentRedirect,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a redirect status is 301, 302, 307 or 308, not {0}")]
pub struct RedirectStatusError(u16);

impl TryFrom<u16> for RedirectStatus {
    type Error = RedirectStatusError;
    fn try_from(code: u16) -> Result<Self, Self::Error> {
        Ok(match code {
            301 => RedirectStatus::MovedPermanently,
            302 => RedirectStatus::Found,
            307 => RedirectStatus::TemporaryRedirect,
            308 => RedirectStatus::PermanentRedirect,
            other => return Err(RedirectStatusError(other)),
        })
    }
}

impl From<RedirectStatus> for u16 {
    fn from(status: RedirectStatus) -> Self {
        match status {
            RedirectStatus::MovedPermanently => 301,
            RedirectStatus::Found => 302,
            RedirectStatus::TemporaryRedirect => 307,
            RedirectStatus::PermanentRedirect => 308,
        }
    }
}

/// One version's destination and policy, as marketers write it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkTarget {
    /// Where scanners go when no rule and no split sends them elsewhere.
    pub destination: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_start: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_end: Option<DateTime<Utc>>,
    /// Checked in order; the first that matches serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// A weighted A/B split among the scanners no rule took.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<Variant>,
    /// Append a click id (`qrclid=…`, random and unguessable) to the destination, recorded in
    /// the scan's event, so that a conversion reported later (`POST /v1/conversions`) is
    /// attributed to the scan and its variant.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub track_conversions: bool,
}

/// Sends scanners of some devices or countries to their own destination. Both lists given:
/// both must match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceClass>,
    /// ISO 3166 alpha-2 codes, as the country header carries them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub countries: Vec<String>,
    pub destination: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub name: String,
    /// Share of the split, against the sum of all weights.
    pub weight: u32,
    pub destination: String,
}

/// Why a link target was refused; each names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkTargetError {
    #[error(
        "`{field}` is not an absolute http(s) URL of at most {MAX_DESTINATION} characters without user info"
    )]
    Destination { field: String },
    #[error("`effective_start` must come before `effective_end`")]
    Window,
    #[error("`{field}`: a name is 1 to 64 letters, digits, `-` or `_`, and unique in the version")]
    Name { field: String },
    #[error("`{field}`: a rule names at least one device or country")]
    EmptyRule { field: String },
    #[error("`{field}` is not a two-letter country code")]
    Country { field: String },
    #[error(
        "`{field}`: a weight is 1 to {WEIGHT_TOTAL_MAX}, and all weights add up to at most {WEIGHT_TOTAL_MAX}"
    )]
    Weight { field: String },
    #[error("at most {MAX_RULES} rules and {MAX_VARIANTS} variants")]
    TooMany,
}

/// A destination that passed the checks every destination must pass (the allow-list is the
/// caller's: it depends on the tenant).
pub fn check_destination(text: &str) -> Option<url::Url> {
    if text.len() > MAX_DESTINATION {
        return None;
    }
    let url = url::Url::parse(text).ok()?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some_and(|host| !host.is_empty())
        && url.username().is_empty()
        && url.password().is_none();
    plain.then_some(url)
}

fn good_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl LinkTarget {
    /// Checks everything but the allow-list.
    pub fn check(&self) -> Result<(), LinkTargetError> {
        let destination = |field: String, text: &str| {
            check_destination(text)
                .map(drop)
                .ok_or(LinkTargetError::Destination { field })
        };
        destination("destination".into(), &self.destination)?;
        if let (Some(start), Some(end)) = (self.effective_start, self.effective_end)
            && start >= end
        {
            return Err(LinkTargetError::Window);
        }
        if self.rules.len() > MAX_RULES || self.split.len() > MAX_VARIANTS {
            return Err(LinkTargetError::TooMany);
        }
        let mut names = std::collections::HashSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let field = |part: &str| format!("rules[{i}].{part}");
            if !good_name(&rule.name) || !names.insert(rule.name.as_str()) {
                return Err(LinkTargetError::Name {
                    field: field("name"),
                });
            }
            if rule.devices.is_empty() && rule.countries.is_empty() {
                return Err(LinkTargetError::EmptyRule {
                    field: format!("rules[{i}]"),
                });
            }
            if let Some(j) = rule
                .countries
                .iter()
                .position(|code| code.len() != 2 || !code.bytes().all(|b| b.is_ascii_uppercase()))
            {
                return Err(LinkTargetError::Country {
                    field: format!("rules[{i}].countries[{j}]"),
                });
            }
            destination(field("destination"), &rule.destination)?;
        }
        let mut total = 0u32;
        for (i, variant) in self.split.iter().enumerate() {
            let field = |part: &str| format!("split[{i}].{part}");
            if !good_name(&variant.name) || !names.insert(variant.name.as_str()) {
                return Err(LinkTargetError::Name {
                    field: field("name"),
                });
            }
            total = total.saturating_add(variant.weight);
            if variant.weight == 0 || total > WEIGHT_TOTAL_MAX {
                return Err(LinkTargetError::Weight {
                    field: field("weight"),
                });
            }
            destination(field("destination"), &variant.destination)?;
        }
        Ok(())
    }

    /// Every destination this version can send a scanner to, with the field naming it.
    pub fn destinations(&self) -> impl Iterator<Item = (String, &str)> {
        std::iter::once(("destination".to_owned(), self.destination.as_str()))
            .chain(
                self.rules.iter().enumerate().map(|(i, rule)| {
                    (format!("rules[{i}].destination"), rule.destination.as_str())
                }),
            )
            .chain(self.split.iter().enumerate().map(|(i, variant)| {
                (
                    format!("split[{i}].destination"),
                    variant.destination.as_str(),
                )
            }))
    }

    pub fn is_effective(&self, at: DateTime<Utc>) -> bool {
        self.effective_start.is_none_or(|start| start <= at)
            && self.effective_end.is_none_or(|end| at < end)
    }

    /// Whether this version serves at every time from `now` on: a version before it can
    /// never serve again once it is the newest.
    pub fn serves_for_good_from(&self, now: DateTime<Utc>) -> bool {
        self.effective_start.is_none_or(|start| start <= now) && self.effective_end.is_none()
    }

    /// Where this version sends one scan.
    pub fn serve<'a>(&'a self, key: &LinkKey, visit: &Visit<'_>) -> Served<'a> {
        let rule = self.rules.iter().find(|rule| {
            (rule.devices.is_empty() || rule.devices.contains(&visit.device))
                && (rule.countries.is_empty()
                    || visit
                        .country
                        .is_some_and(|country| rule.countries.iter().any(|c| c == country)))
        });
        if let Some(rule) = rule {
            return Served {
                destination: &rule.destination,
                by: ServedBy::Rule(&rule.name),
            };
        }
        let total: u32 = self.split.iter().map(|variant| variant.weight).sum();
        if total > 0 {
            let mut bucket = visit.bucket(key, total);
            for variant in &self.split {
                if bucket < variant.weight {
                    return Served {
                        destination: &variant.destination,
                        by: ServedBy::Variant(&variant.name),
                    };
                }
                bucket -= variant.weight;
            }
        }
        Served {
            destination: &self.destination,
            by: ServedBy::Default,
        }
    }

    pub fn has_split(&self) -> bool {
        !self.split.is_empty()
    }
}

/// What is known about one scan when choosing its destination.
#[derive(Debug, Clone, Copy)]
pub struct Visit<'a> {
    pub device: DeviceClass,
    /// Upper-case ISO alpha-2, when a trusted header told it.
    pub country: Option<&'a str>,
    /// A stable id of the visitor (a cookie it carries): the same visitor lands in the same
    /// bucket of a link every time. `None`: a bucket drawn at random.
    pub visitor: Option<&'a str>,
}

impl Visit<'_> {
    /// The visitor's bucket of `key`'s split, in `0..total`.
    fn bucket(&self, key: &LinkKey, total: u32) -> u32 {
        let Some(visitor) = self.visitor else {
            return rand::random_range(0..total);
        };
        let digest = Sha256::new()
            .chain_update(key.as_str())
            .chain_update([0])
            .chain_update(visitor)
            .finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        // A 64-bit draw folded into at most 10,000 buckets: the bias is below 1e-15.
        u32::try_from(u64::from_be_bytes(first) % u64::from(total)).unwrap_or(0)
    }
}

/// Where a scan goes, and which part of the policy sent it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served<'a> {
    pub destination: &'a str,
    pub by: ServedBy<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServedBy<'a> {
    Rule(&'a str),
    Variant(&'a str),
    Default,
}

impl ServedBy<'_> {
    /// As the scan event records it: `rule:<name>`, `variant:<name>`, or nothing.
    pub fn label(&self) -> Option<String> {
        match self {
            ServedBy::Rule(name) => Some(format!("rule:{name}")),
            ServedBy::Variant(name) => Some(format!("variant:{name}")),
            ServedBy::Default => None,
        }
    }
}

/// The query parameter a conversion-tracked link's destination gets its click id in.
pub const CLICK_ID_PARAM: &str = "qrclid";

/// `destination` with `qrclid=<click_id>` added to its query (before any fragment). The
/// click id is base62, so it needs no encoding.
pub fn with_click_id(destination: &str, click_id: &str) -> String {
    let (before_fragment, fragment) = match destination.split_once('#') {
        Some((before, fragment)) => (before, Some(fragment)),
        None => (destination, None),
    };
    let separator = match before_fragment.split_once('?') {
        None => "?",
        Some((_, "")) => "",
        Some((_, query)) if query.ends_with('&') => "",
        Some(_) => "&",
    };
    let mut url = format!("{before_fragment}{separator}{CLICK_ID_PARAM}={click_id}");
    if let Some(fragment) = fragment {
        url.push('#');
        url.push_str(fragment);
    }
    url
}

/// One version of a link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkVersion {
    pub version: u32,
    pub target: LinkTarget,
    pub created_at: DateTime<Utc>,
    /// The id of the API key that made it.
    pub created_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A link with its versions, oldest first: what a scan needs to resolve it. As read for scans
/// and edits, only the versions that may still serve ([`Link::servable_from`]); the whole
/// history is paged through apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// Layout of this record where it is cached (Redis); a reader drops other layouts.
    pub v: u16,
    pub key: LinkKey,
    pub tenant: Tenant,
    pub status: RedirectStatus,
    pub created_at: DateTime<Utc>,
    /// Set when deleted: scans get `410` until it is restored or purged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
    /// Labels its scans' events carry; changed without a new version (they do not change
    /// where scanners go), each change in the audit log.
    #[serde(default, skip_serializing_if = "Tags::is_empty")]
    pub tags: Tags,
    pub versions: Vec<LinkVersion>,
}

impl Link {
    pub const LAYOUT: u16 = 1;

    /// The latest version: what an edit starts from.
    pub fn current(&self) -> Option<&LinkVersion> {
        self.versions.last()
    }

    /// The version that serves a scan at `at` (see the module docs); `None` when no version
    /// is effective then.
    pub fn effective(&self, at: DateTime<Utc>) -> Option<&LinkVersion> {
        self.versions
            .iter()
            .rev()
            .find(|version| version.target.is_effective(at))
    }

    /// This link as scans from `now` on see it: without the versions that can never serve
    /// again, those older than the newest one effective from `now` for good, and those whose
    /// window has ended. The current version stays, whatever its window, so that the result
    /// still says which version an edit starts from. [`Link::effective`] answers the same for
    /// every time from `now` on.
    ///
    /// Caches and the store's reads hold this: a link edited every few seconds for months has
    /// thousands of versions, and each scan that missed the cache, and each edit, would
    /// otherwise read all of them.
    #[must_use]
    pub fn servable_from(mut self, now: DateTime<Utc>) -> Link {
        let floor = self
            .versions
            .iter()
            .rposition(|version| version.target.serves_for_good_from(now))
            .unwrap_or(0);
        let last = self.versions.len().saturating_sub(1);
        let mut index = 0;
        self.versions.retain(|version| {
            let keep = index == last
                || (index >= floor && version.target.effective_end.is_none_or(|end| now < end));
            index += 1;
            keep
        });
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(json: serde_json::Value) -> LinkTarget {
        let target: LinkTarget = serde_json::from_value(json).unwrap();
        target.check().unwrap();
        target
    }

    fn visit(
        device: DeviceClass,
        country: Option<&'static str>,
        visitor: Option<&'static str>,
    ) -> Visit<'static> {
        Visit {
            device,
            country,
            visitor,
        }
    }

    #[test]
    fn keys_are_short_random_and_checked() {
        let key = LinkKey::generate();
        assert_eq!(key.as_str().len(), LINK_KEY_LEN);
        assert_eq!(LinkKey::parse(key.as_str()), Ok(key.clone()));
        assert_ne!(LinkKey::generate(), key);
        for bad in ["", "abc", "abcdefghi!", "abcdefghijk", "abcdéfghij"] {
            assert!(LinkKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_plain_http_urls_are_destinations() {
        for good in [
            "https://example.com/a?b=1",
            "http://shop.example.com:8080/x",
        ] {
            assert!(check_destination(good).is_some(), "{good}");
        }
        for bad in [
            "javascript:alert(1)",
            "//evil.example",
            "/relative",
            "data:text/html,hi",
            "https://user:pw@example.com/",
            "ftp://example.com/",
            &format!("https://example.com/{}", "a".repeat(MAX_DESTINATION)),
        ] {
            assert!(check_destination(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn malformed_policies_are_refused_with_the_field_at_fault() {
        let refused = |json: serde_json::Value| {
            serde_json::from_value::<LinkTarget>(json)
                .unwrap()
                .check()
                .unwrap_err()
        };
        assert_eq!(
            refused(serde_json::json!({"destination": "https://a.example",
                "split": [{"name": "a", "weight": 1, "destination": "mailto:x@y"}]})),
            LinkTargetError::Destination {
                field: "split[0].destination".into()
            }
        );
        assert_eq!(
            refused(serde_json::json!({"destination": "https://a.example",
                "rules": [{"name": "r", "destination": "https://b.example"}]})),
            LinkTargetError::EmptyRule {
                field: "rules[0]".into()
            }
        );
        assert_eq!(
            refused(serde_json::json!({"destination": "https://a.example",
                "rules": [{"name": "r", "countries": ["cn"], "destination": "https://b.example"}]})),
            LinkTargetError::Country {
                field: "rules[0].countries[0]".into()
            }
        );
        assert_eq!(
            refused(serde_json::json!({"destination": "https://a.example",
                "split": [{"name": "a", "weight": 9000, "destination": "https://b.example"},
                          {"name": "b", "weight": 2000, "destination": "https://c.example"}]})),
            LinkTargetError::Weight {
                field: "split[1].weight".into()
            }
        );
        assert_eq!(
            refused(serde_json::json!({"destination": "https://a.example",
                "rules": [{"name": "x", "devices": ["ios"], "destination": "https://b.example"}],
                "split": [{"name": "x", "weight": 1, "destination": "https://c.example"}]})),
            LinkTargetError::Name {
                field: "split[0].name".into()
            }
        );
        assert_eq!(
            refused(serde_json::json!({"destination": "https://a.example",
                "effective_start": "2026-12-02T00:00:00Z", "effective_end": "2026-12-01T00:00:00Z"})),
            LinkTargetError::Window
        );
        assert!(
            serde_json::from_value::<LinkTarget>(
                serde_json::json!({"destination": "https://a.example", "colour": "red"})
            )
            .is_err(),
            "unknown fields are refused, not ignored"
        );
    }

    #[test]
    fn rules_come_first_then_the_split_then_the_destination() {
        let key = LinkKey::generate();
        let target = target(serde_json::json!({
            "destination": "https://default.example",
            "rules": [
                {"name": "ios-cn", "devices": ["ios"], "countries": ["CN"], "destination": "https://ios-cn.example"},
                {"name": "android", "devices": ["android"], "destination": "https://android.example"}
            ],
            "split": [{"name": "a", "weight": 1, "destination": "https://a.example"}]
        }));
        let served = |v: Visit<'_>| {
            let served = target.serve(&key, &v);
            (served.destination.to_owned(), served.by.label())
        };
        assert_eq!(
            served(visit(DeviceClass::Ios, Some("CN"), None)),
            ("https://ios-cn.example".into(), Some("rule:ios-cn".into()))
        );
        assert_eq!(
            served(visit(DeviceClass::Ios, Some("DE"), None)),
            ("https://a.example".into(), Some("variant:a".into())),
            "both conditions must hold"
        );
        assert_eq!(
            served(visit(DeviceClass::Android, None, None)),
            (
                "https://android.example".into(),
                Some("rule:android".into())
            )
        );
        let plain = target_without_split();
        assert_eq!(
            plain.serve(&key, &visit(DeviceClass::Desktop, None, None)),
            Served {
                destination: "https://default.example",
                by: ServedBy::Default
            }
        );
    }

    fn target_without_split() -> LinkTarget {
        target(serde_json::json!({"destination": "https://default.example"}))
    }

    #[test]
    fn a_visitor_keeps_its_variant_and_the_split_follows_the_weights() {
        let key = LinkKey::generate();
        let target = target(serde_json::json!({
            "destination": "https://default.example",
            "split": [
                {"name": "a", "weight": 7000, "destination": "https://a.example"},
                {"name": "b", "weight": 3000, "destination": "https://b.example"}
            ]
        }));
        let mut a = 0;
        for n in 0..10_000 {
            let visitor = format!("visitor-{n}");
            let first = target.serve(
                &key,
                &Visit {
                    device: DeviceClass::Ios,
                    country: None,
                    visitor: Some(&visitor),
                },
            );
            let again = target.serve(
                &key,
                &Visit {
                    device: DeviceClass::Desktop,
                    country: Some("FR"),
                    visitor: Some(&visitor),
                },
            );
            assert_eq!(first, again, "sticky per visitor");
            a += usize::from(first.by == ServedBy::Variant("a"));
        }
        // 7,000 expected; 6,850..7,150 is about 3.3 standard deviations each side.
        assert!((6_850..7_150).contains(&a), "{a} of 10,000 in variant a");
    }

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn version(n: u32, json: serde_json::Value) -> LinkVersion {
        LinkVersion {
            version: n,
            target: target(json),
            created_at: at("2026-11-01T00:00:00Z"),
            created_by: "k".into(),
            note: None,
        }
    }

    fn link_of(versions: Vec<LinkVersion>) -> Link {
        Link {
            v: Link::LAYOUT,
            key: LinkKey::generate(),
            tenant: Tenant::parse("acme").unwrap(),
            status: RedirectStatus::Found,
            created_at: at("2026-11-01T00:00:00Z"),
            deleted_at: None,
            tags: Tags::default(),
            versions,
        }
    }

    #[test]
    fn a_link_edited_many_times_keeps_only_what_can_still_serve() {
        let mut versions: Vec<LinkVersion> = (1..=500)
            .map(|n| {
                version(
                    n,
                    serde_json::json!({"destination": format!("https://v{n}.example")}),
                )
            })
            .collect();
        versions.push(version(
            501,
            serde_json::json!({"destination": "https://xmas.example",
                "effective_start": "2026-12-20T00:00:00Z", "effective_end": "2026-12-25T00:00:00Z"}),
        ));
        versions.push(version(
            502,
            serde_json::json!({"destination": "https://over.example",
                "effective_start": "2026-11-01T00:00:00Z", "effective_end": "2026-11-02T00:00:00Z"}),
        ));
        let servable = link_of(versions).servable_from(at("2026-12-02T00:00:00Z"));
        let kept: Vec<u32> = servable.versions.iter().map(|v| v.version).collect();
        assert_eq!(
            kept,
            [500, 501, 502],
            "the newest for good, the campaign to come, and the current one (ended)"
        );
        let serving = |when: &str| servable.effective(at(when)).map(|v| v.version);
        assert_eq!(serving("2026-12-02T00:00:00Z"), Some(500));
        assert_eq!(serving("2026-12-21T00:00:00Z"), Some(501));
        assert_eq!(serving("2027-01-01T00:00:00Z"), Some(500));
    }

    #[test]
    fn the_newest_effective_version_serves() {
        let link = link_of(vec![
            version(
                1,
                serde_json::json!({"destination": "https://always.example"}),
            ),
            version(
                2,
                serde_json::json!({"destination": "https://xmas.example",
                    "effective_start": "2026-12-01T00:00:00Z", "effective_end": "2026-12-25T00:00:00Z"}),
            ),
        ]);
        let serving = |when: &str| link.effective(at(when)).map(|v| v.version);
        assert_eq!(serving("2026-11-30T23:59:59Z"), Some(1));
        assert_eq!(serving("2026-12-01T00:00:00Z"), Some(2));
        assert_eq!(
            serving("2026-12-25T00:00:00Z"),
            Some(1),
            "the end is exclusive"
        );
        let only_campaign = Link {
            versions: link.versions[1..].to_vec(),
            ..link.clone()
        };
        assert_eq!(only_campaign.effective(at("2027-01-01T00:00:00Z")), None);
    }

    #[test]
    fn a_click_id_joins_the_query_before_the_fragment() {
        let cases = [
            ("https://shop.example/a", "https://shop.example/a?qrclid=C1"),
            (
                "https://shop.example/a?x=1",
                "https://shop.example/a?x=1&qrclid=C1",
            ),
            (
                "https://shop.example/a?",
                "https://shop.example/a?qrclid=C1",
            ),
            (
                "https://shop.example/a?x=1#top",
                "https://shop.example/a?x=1&qrclid=C1#top",
            ),
            (
                "https://shop.example/#/route?y",
                "https://shop.example/?qrclid=C1#/route?y",
            ),
        ];
        for (destination, expected) in cases {
            assert_eq!(with_click_id(destination, "C1"), expected);
        }
    }
}
