//! The security headers of the pages people see: the landing page of a code and every
//! message page (unknown, expired, unavailable), all built on `templates/base.html`.
//!
//! The pages run no script, load no style from elsewhere and may not be framed: the policy
//! allows exactly the base template's `<style>` block (by its SHA-256) and, for a tenant
//! with an accent colour, the one extra block its landing page carries; images (a tenant's
//! logo) from https only. No inline style attribute is allowed, so none is written.

use std::sync::LazyLock;

use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine as _;
use sha2::{Digest, Sha256};

const BASE_TEMPLATE: &str = include_str!("../templates/base.html");

/// The base template's style block, as the page carries it.
fn base_style() -> &'static str {
    let start = BASE_TEMPLATE
        .find("<style>")
        .map_or(0, |at| at + "<style>".len());
    let end = BASE_TEMPLATE[start..]
        .find("</style>")
        .map_or(start, |at| start + at);
    &BASE_TEMPLATE[start..end]
}

fn hash_source(style: &str) -> String {
    let digest = Sha256::digest(style.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// The policy of a page that carries the base style and `extra_styles` (the exact text of
/// each further `<style>` block).
pub fn content_security_policy(extra_styles: &[&str]) -> HeaderValue {
    let mut styles = hash_source(base_style());
    for style in extra_styles {
        styles.push(' ');
        styles.push_str(&hash_source(style));
    }
    let policy = format!(
        "default-src 'none'; style-src {styles}; img-src https: data:; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'"
    );
    HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("default-src 'none'"))
}

/// The policy of a page with the base style only.
pub fn default_policy() -> HeaderValue {
    static POLICY: LazyLock<HeaderValue> = LazyLock::new(|| content_security_policy(&[]));
    POLICY.clone()
}

/// Adds the page headers: the policy, no sniffing, and no referrer (a code's URL carries its
/// unguessable id; the pages a scanner goes on to need not see it).
pub fn add_security_headers(headers: &mut HeaderMap, policy: HeaderValue) {
    headers.insert(header::CONTENT_SECURITY_POLICY, policy);
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_the_base_style_and_nothing_inline_else() {
        assert!(base_style().contains("font:") && !base_style().contains("<style>"));
        let policy = default_policy();
        let policy = policy.to_str().unwrap();
        assert!(policy.contains(&hash_source(base_style())));
        assert!(policy.contains("frame-ancestors 'none'") && policy.contains("default-src 'none'"));
        assert!(!policy.contains("unsafe"));
        let accent = content_security_policy(&["h1.accent{color:#123456}"]);
        assert!(
            accent
                .to_str()
                .unwrap()
                .contains(&hash_source("h1.accent{color:#123456}"))
        );
    }
}
