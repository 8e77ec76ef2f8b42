//! The console's static files, built into the binary and served under names that carry a
//! hash of their content: a browser may keep them for a year, and a new build's pages name
//! new files.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// One static file.
#[derive(Debug)]
pub struct Asset {
    /// `console.<hash>.css`: what pages link to.
    pub name: String,
    content_type: &'static str,
    bytes: &'static [u8],
}

impl Asset {
    fn new(stem: &str, extension: &str, content_type: &'static str, bytes: &'static [u8]) -> Self {
        let digest = Sha256::digest(bytes);
        let hash: String = digest[..6]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        Asset {
            name: format!("{stem}.{hash}.{extension}"),
            content_type,
            bytes,
        }
    }

    /// Where pages find it.
    pub fn url(&self) -> String {
        format!("{}/assets/{}", crate::BASE, self.name)
    }
}

pub static STYLESHEET: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        "console",
        "css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/console.css"),
    )
});

pub static SCRIPT: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        "console",
        "js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/console.js"),
    )
});

pub static ICON: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        "icon",
        "svg",
        "image/svg+xml",
        include_bytes!("../assets/icon.svg"),
    )
});

/// `GET /console/assets/{name}`.
pub async fn serve(Path(name): Path<String>) -> Response {
    let Some(asset) = [&*STYLESHEET, &*SCRIPT, &*ICON]
        .into_iter()
        .find(|asset| asset.name == name)
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            ),
        ],
        asset.bytes,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_content_hash() {
        assert!(STYLESHEET.name.starts_with("console.") && STYLESHEET.name.ends_with(".css"));
        assert_eq!(STYLESHEET.name.len(), "console..css".len() + 12);
        assert_ne!(STYLESHEET.name, SCRIPT.name);
    }
}
