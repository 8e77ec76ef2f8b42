//! Drawing a code on request, for every API that hands out images (codes and links): the
//! options a caller may ask for, checked, and the drawing itself off the async threads.

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::http::StatusCode;
use serde::Deserialize;

use crate::Problem;

/// How to draw a code: `?scale=8&margin=4&dark=1a237e&light=ffffff&ec=M`, each optional
/// (the server's `render` settings otherwise).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageOptions {
    /// Pixels per module (PNG) or user units per module (SVG), 1 to 20.
    pub scale: Option<u32>,
    /// Blank modules around the code, 0 to 10 (scanners want 4).
    pub margin: Option<u32>,
    /// Module colour, `RRGGBB`.
    pub dark: Option<String>,
    /// Background colour, `RRGGBB`.
    pub light: Option<String>,
    /// Error correction: L, M, Q or H.
    pub ec: Option<config::EcLevel>,
}

fn bad_options(detail: impl Into<String>) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "urn:qrpool:problem:bad-image-options",
        "Bad image options",
    )
    .with_detail(detail)
}

/// The options of a request, or the 400 that names what is wrong.
pub fn options(
    options: Result<Query<ImageOptions>, QueryRejection>,
) -> Result<ImageOptions, Problem> {
    options
        .map(|Query(options)| options)
        .map_err(|rejection| bad_options(rejection.body_text()))
}

impl ImageOptions {
    pub fn is_empty(&self) -> bool {
        self.scale.is_none()
            && self.margin.is_none()
            && self.dark.is_none()
            && self.light.is_none()
            && self.ec.is_none()
    }

    /// `base` with these options applied, each checked.
    pub fn style(&self, base: render::Style) -> Result<render::Style, Problem> {
        let colour = |text: &Option<String>, default| match text {
            None => Ok(default),
            Some(text) => render::Rgb::parse_hex(text)
                .ok_or_else(|| bad_options("dark and light are six hex digits, RRGGBB")),
        };
        let scale = self.scale.unwrap_or(base.module_px);
        if !(1..=20).contains(&scale) {
            return Err(bad_options("scale is 1 to 20 pixels per module"));
        }
        let margin = self.margin.unwrap_or(base.quiet_zone);
        if margin > 10 {
            return Err(bad_options("margin is 0 to 10 modules"));
        }
        Ok(render::Style {
            module_px: scale,
            quiet_zone: margin,
            ec_level: self.ec.unwrap_or(base.ec_level),
            dark: colour(&self.dark, base.dark)?,
            light: colour(&self.light, base.light)?,
        })
    }
}

/// Draws on the blocking pool: a large scale is milliseconds of CPU, not for an async worker.
pub async fn draw<T: Send + 'static>(
    content: &str,
    style: render::Style,
    draw: fn(&str, &render::Style) -> Result<T, render::RenderError>,
) -> Result<T, Problem> {
    let content = content.to_owned();
    tokio::task::spawn_blocking(move || draw(&content, &style))
        .await
        .map_err(|error| {
            tracing::error!(%error, "a drawing task failed");
            Problem::unavailable("drawing the code failed")
        })?
        .map_err(|error| {
            tracing::error!(error = %error, "drawing a code failed");
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "about:blank",
                "Internal Server Error",
            )
        })
}
