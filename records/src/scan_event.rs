//! [`ScanEvent`]: one scan of a code or a link, as analytics receive it.
//!
//! Written as one JSON object per line (files) or per message (the events topic). The `v`
//! field names the layout. The scanner's IP address is never kept: `visitor` is a digest of
//! it (and the user agent) under a salt that changes every day and is never stored, enough to
//! count distinct visitors within a day and useless to find anyone.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanEvent {
    pub v: u16,
    pub at: DateTime<Utc>,
    /// The request id of a code (or, later, the key of a link).
    pub key: String,
    /// `bound`, `unknown`, `expired` or `unavailable`.
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub device: DeviceClass,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referrer: Option<String>,
    /// The A/B variant or rule that served the scan, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Opened from a printed code (`qr=1` on the URL), not a plain click.
    pub via_qr: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub visitor: Option<String>,
}

impl ScanEvent {
    pub const LAYOUT: u16 = 1;
}

/// What kind of device scanned, from its user agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceClass {
    Ios,
    Android,
    Desktop,
    Bot,
    Unknown,
}

impl DeviceClass {
    pub fn from_user_agent(user_agent: Option<&str>) -> Self {
        let Some(agent) = user_agent.filter(|agent| !agent.is_empty()) else {
            return DeviceClass::Unknown;
        };
        // Compared in place, ignoring ASCII case: a lower-cased copy per scan showed in the
        // scan path's profile.
        let has = |word: &str| contains_ignoring_case(agent, word);
        if ["bot", "spider", "crawl", "preview"].into_iter().any(has) {
            DeviceClass::Bot
        } else if ["iphone", "ipad", "ipod", "ios"].into_iter().any(has) {
            DeviceClass::Ios
        } else if has("android") {
            DeviceClass::Android
        } else if agent
            .get(..8)
            .is_some_and(|start| start.eq_ignore_ascii_case("mozilla/"))
        {
            DeviceClass::Desktop
        } else {
            // curl, scripts, link checkers: not a person at a desk.
            DeviceClass::Unknown
        }
    }
}

/// Whether `haystack` holds `needle` (lower-case ASCII), whatever the case of `haystack`.
fn contains_ignoring_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_told_apart_by_their_user_agent() {
        let cases = [
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) MicroMessenger/8.0",
                DeviceClass::Ios,
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; Pixel 8) Chrome/120 Mobile",
                DeviceClass::Android,
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120",
                DeviceClass::Desktop,
            ),
            (
                "Googlebot/2.1 (+http://www.google.com/bot.html)",
                DeviceClass::Bot,
            ),
            ("", DeviceClass::Unknown),
            ("curl/8.5.0", DeviceClass::Unknown),
        ];
        for (agent, class) in cases {
            assert_eq!(DeviceClass::from_user_agent(Some(agent)), class, "{agent}");
        }
        assert_eq!(DeviceClass::from_user_agent(None), DeviceClass::Unknown);
        assert_eq!(
            DeviceClass::from_user_agent(Some("MOZILLA/5.0 (IPHONE)")),
            DeviceClass::Ios,
            "case does not matter"
        );
        assert_eq!(
            DeviceClass::from_user_agent(Some("Mozill")),
            DeviceClass::Unknown
        );
    }
}
