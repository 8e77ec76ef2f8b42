//! Who is using the console: the session cookie, the CSRF check of every form, and the
//! headers every console answer carries.
//!
//! Signing in exchanges an API key for a server-side session (`service::Keys::open_session`):
//! the cookie carries only the session's token (`HttpOnly`, `SameSite=Strict`, `Secure` when
//! the public URL is https, scoped to `/console`), the key itself is never kept. Each page
//! reads the session from the durable store, so a sign-out, a revoked key or an idle limit
//! ends it everywhere at once.
//!
//! Forms that change anything carry the session's CSRF token, compared in constant time, and
//! a request a browser marks as cross-site (`Sec-Fetch-Site`, or an `Origin` that is not ours)
//! is refused before that.

use std::sync::Arc;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use chrono_tz::Tz;
use subtle::ConstantTimeEq;

use records::{Scope, SessionToken};
use service::auth::SignedIn;

use crate::{Console, ConsoleError};

/// The session cookie's name.
pub const COOKIE: &str = "qrpool_console";
/// The cookie console.js sets to the browser's time zone.
const TZ_COOKIE: &str = "qrpool_tz";

/// A signed-in request.
#[derive(Debug, Clone)]
pub struct Visit {
    /// The session token, the credential of the console's calls to the API.
    pub token: String,
    pub signed_in: SignedIn,
    /// The browser's time zone, when console.js told it.
    pub browser_tz: Option<Tz>,
    /// Whether this process serves the links API (it runs the scan side too).
    pub links_here: bool,
}

impl Visit {
    pub fn tenant(&self) -> &str {
        self.signed_in.key.tenant.as_str()
    }

    pub fn can(&self, scope: Scope) -> bool {
        self.signed_in.key.scopes.contains(scope)
    }

    pub fn csrf(&self) -> &str {
        &self.signed_in.session.csrf_token
    }

    /// A state-changing form: from our own pages, with this session's token.
    pub fn check_form(&self, headers: &HeaderMap, csrf: &str) -> Result<(), ConsoleError> {
        same_origin(headers)?;
        let expected = self.signed_in.session.csrf_token.as_bytes();
        if bool::from(expected.ct_eq(csrf.as_bytes())) {
            Ok(())
        } else {
            metrics::counter!("console_csrf_refused_total").increment(1);
            Err(ConsoleError::Forged)
        }
    }
}

/// Refuses what the browser says came from another site.
pub fn same_origin(headers: &HeaderMap) -> Result<(), ConsoleError> {
    let header_text = |name| {
        headers
            .get(name)
            .and_then(|value: &HeaderValue| value.to_str().ok())
    };
    if let Some(site) = header_text("sec-fetch-site")
        && !matches!(site, "same-origin" | "none")
    {
        metrics::counter!("console_csrf_refused_total").increment(1);
        return Err(ConsoleError::Forged);
    }
    if let (Some(origin), Some(host)) = (header_text("origin"), header_text("host")) {
        let origin_host = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
            .unwrap_or("");
        if origin_host != host {
            metrics::counter!("console_csrf_refused_total").increment(1);
            return Err(ConsoleError::Forged);
        }
    }
    Ok(())
}

pub use service::cookie;

fn browser_tz(headers: &HeaderMap) -> Option<Tz> {
    let zone = cookie(headers, TZ_COOKIE)?;
    let zone = percent_encoding::percent_decode_str(zone)
        .decode_utf8()
        .ok()?;
    zone.parse().ok()
}

/// The session cookie as set at sign-in.
pub fn set_cookie(token: &SessionToken, secure: bool) -> Result<HeaderValue, ConsoleError> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={}; Path={}; HttpOnly; SameSite=Strict{secure}",
        token.reveal(),
        crate::BASE
    ))
    .map_err(|error| ConsoleError::Unexpected(error.to_string()))
}

/// The session cookie, emptied (sign-out).
pub fn clear_cookie(secure: bool) -> HeaderValue {
    let value = if secure {
        "qrpool_console=; Path=/console; Max-Age=0; HttpOnly; SameSite=Strict; Secure"
    } else {
        "qrpool_console=; Path=/console; Max-Age=0; HttpOnly; SameSite=Strict"
    };
    HeaderValue::from_static(value)
}

impl FromRequestParts<Arc<Console>> for Visit {
    type Rejection = ConsoleError;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Arc<Console>,
    ) -> Result<Self, Self::Rejection> {
        let token = cookie(&parts.headers, COOKIE)
            .and_then(SessionToken::parse)
            .ok_or(ConsoleError::SignedOut)?;
        let signed_in = console
            .keys
            .session(&token)
            .await
            .map_err(|_| ConsoleError::Unavailable("the session store is not answering".into()))?
            .ok_or(ConsoleError::SignedOut)?;
        Ok(Visit {
            token: token.reveal(),
            signed_in,
            browser_tz: browser_tz(&parts.headers),
            links_here: console.links_here,
        })
    }
}

impl OptionalFromRequestParts<Arc<Console>> for Visit {
    type Rejection = ConsoleError;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Arc<Console>,
    ) -> Result<Option<Self>, Self::Rejection> {
        match <Visit as FromRequestParts<Arc<Console>>>::from_request_parts(parts, console).await {
            Ok(visit) => Ok(Some(visit)),
            Err(ConsoleError::SignedOut) => Ok(None),
            Err(error) => Err(error),
        }
    }
}

/// The headers of every console answer: no inline script or style may run, no other site
/// may frame a page, and nothing is sniffed or told where it came from.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
