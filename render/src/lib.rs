//! Draws QR codes: the only place that knows about modules, pixels and PNG.
//!
//! - [`Style`]: size, margin and error correction, from the `render` settings.
//! - [`png`] / [`svg`]: one code, deterministic (the same text and style always give the same
//!   bytes, which is why locally issued codes can be drawn again instead of stored).
//! - [`png_batch`]: many codes on the rayon pool, for pregen.
//!
//! Where the time goes, and why some of it is ours: the `qrcode` crate segments the text,
//! picks the version, computes Reed–Solomon codewords and places them; `symbol` chooses the
//! mask on rows of bits (the crate's own mask search was half our time); `png_file` and
//! `deflate` write the PNG knowing where its repeats are (zlib searching for them was the other
//! half). Together about 6× libqrencode + libpng per core, with smaller files
//! (`benches/render-vs-qrencode.sh`).
//!
//! This crate has no tokio and no network dependency on purpose: it is CPU work that callers
//! move off their async runtime, and it must stay cheap to benchmark on its own.

#[cfg(any(test, feature = "decode"))]
pub mod decode;
mod deflate;
mod png_file;
mod symbol;

use rayon::prelude::*;
pub use symbol::Symbol;

/// How a code is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// Pixels per module in the PNG (and user units per module in the SVG).
    pub module_px: u32,
    /// Blank modules around the code; scanners want 4.
    pub quiet_zone: u32,
    pub ec_level: config::EcLevel,
    /// The modules' colour; black by default.
    pub dark: Rgb,
    /// The background's colour; white by default.
    pub light: Rgb,
}

/// A colour as red, green and blue bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rgb(pub [u8; 3]);

impl Rgb {
    pub const BLACK: Rgb = Rgb([0, 0, 0]);
    pub const WHITE: Rgb = Rgb([0xFF, 0xFF, 0xFF]);

    /// Reads `RRGGBB` (six hex digits, an optional leading `#`).
    pub fn parse_hex(text: &str) -> Option<Rgb> {
        let hex = text.strip_prefix('#').unwrap_or(text);
        if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let byte = |at: usize| u8::from_str_radix(&hex[at..at + 2], 16).ok();
        Some(Rgb([byte(0)?, byte(2)?, byte(4)?]))
    }

    fn hex(self) -> String {
        let [r, g, b] = self.0;
        format!("#{r:02x}{g:02x}{b:02x}")
    }
}

impl From<config::RenderSettings> for Style {
    fn from(settings: config::RenderSettings) -> Self {
        Style {
            module_px: settings.module_px,
            quiet_zone: settings.quiet_zone,
            ec_level: settings.ec_level,
            dark: Rgb::BLACK,
            light: Rgb::WHITE,
        }
    }
}

impl Default for Style {
    fn default() -> Self {
        config::RenderSettings::default().into()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("the text does not fit in a QR code: {0}")]
    TooLong(qrcode::types::QrError),
    #[error("a {0}-pixel picture is larger than PNG allows")]
    TooLarge(usize),
}

fn symbol(text: &str, style: &Style) -> Result<Symbol, RenderError> {
    let level = match style.ec_level {
        config::EcLevel::L => qrcode::EcLevel::L,
        config::EcLevel::M => qrcode::EcLevel::M,
        config::EcLevel::Q => qrcode::EcLevel::Q,
        config::EcLevel::H => qrcode::EcLevel::H,
    };
    symbol::encode(text.as_bytes(), level).map_err(RenderError::TooLong)
}

/// A 1-bit PNG: the smallest lossless form a QR code has, and every decoder reads it.
/// Grayscale in black and white; other colours are a two-entry palette.
pub fn png(text: &str, style: &Style) -> Result<Vec<u8>, RenderError> {
    let symbol = symbol(text, style)?;
    let palette = (style.dark != Rgb::BLACK || style.light != Rgb::WHITE)
        .then_some([style.dark.0, style.light.0]);
    png_file::write(
        &symbol,
        style.quiet_zone as usize,
        style.module_px as usize,
        palette,
    )
}

/// An SVG with one path of unit squares, scaled by `module_px`; crisp at any zoom.
pub fn svg(text: &str, style: &Style) -> Result<String, RenderError> {
    use std::fmt::Write;

    let grid = symbol(text, style)?;
    let qz = style.quiet_zone as usize;
    let side = grid.width + 2 * qz;
    let size = side * style.module_px as usize;
    let mut path = String::with_capacity(grid.width * grid.width * 4);
    for y in 0..grid.width {
        let mut x = 0;
        while x < grid.width {
            if grid.is_dark(x, y) {
                // Merge horizontal runs into one rectangle: smaller files, same picture.
                let run = grid.dark[y * grid.width + x..(y + 1) * grid.width]
                    .iter()
                    .take_while(|&&dark| dark != 0)
                    .count();
                let _ = write!(path, "M{},{}h{}v1h-{}z", x + qz, y + qz, run, run);
                x += run;
            } else {
                x += 1;
            }
        }
    }
    Ok(format!(
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" viewBox="0 0 {side} {side}" shape-rendering="crispEdges">"#,
            r#"<rect width="{side}" height="{side}" fill="{light}"/><path fill="{dark}" d="{path}"/></svg>"#
        ),
        size = size,
        side = side,
        light = style.light.hex(),
        dark = style.dark.hex(),
        path = path
    ))
}

/// Draws many codes at once on the rayon pool, each result in the order of `texts`.
/// Blocks the calling thread: call it from `spawn_blocking` or a rayon task, never on an
/// async worker.
pub fn png_batch<S: AsRef<str> + Sync>(
    texts: &[S],
    style: &Style,
) -> Vec<Result<Vec<u8>, RenderError>> {
    texts
        .par_iter()
        .map(|text| png(text.as_ref(), style))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "http://127.0.0.1:8080/m/7n42DGM5Tflk9n8mt7Fhc7";

    /// Decodes a PNG with a real decoder (rqrr) and returns what the code says.
    fn decode(png_bytes: &[u8]) -> String {
        let image = image::load_from_memory(png_bytes)
            .expect("a valid PNG")
            .to_luma8();
        let mut prepared = rqrr::PreparedImage::prepare_from_greyscale(
            image.width() as usize,
            image.height() as usize,
            |x, y| image.get_pixel(x as u32, y as u32).0[0],
        );
        let grids = prepared.detect_grids();
        assert_eq!(grids.len(), 1, "exactly one code in the picture");
        grids[0].decode().expect("decodes").1
    }

    #[test]
    fn a_rendered_png_decodes_to_the_url() {
        let bytes = png(URL, &Style::default()).unwrap();
        assert_eq!(decode(&bytes), URL);
    }

    #[test]
    fn every_error_correction_level_and_margin_decodes() {
        for ec_level in [
            config::EcLevel::L,
            config::EcLevel::M,
            config::EcLevel::Q,
            config::EcLevel::H,
        ] {
            for (module_px, quiet_zone) in [(3, 4), (8, 4), (5, 2)] {
                let style = Style {
                    module_px,
                    quiet_zone,
                    ec_level,
                    ..Style::default()
                };
                assert_eq!(decode(&png(URL, &style).unwrap()), URL, "{style:?}");
            }
        }
    }

    #[test]
    fn coloured_codes_are_a_two_entry_palette_and_still_decode() {
        let style = Style {
            dark: Rgb::parse_hex("#1a237e").unwrap(),
            light: Rgb::parse_hex("fff8e1").unwrap(),
            ..Style::default()
        };
        let bytes = png(URL, &style).unwrap();
        assert_eq!(bytes[25], 3, "IHDR colour type: palette");
        assert_eq!(&bytes[37..41], b"PLTE");
        assert_eq!(&bytes[41..47], &[0x1a, 0x23, 0x7e, 0xff, 0xf8, 0xe1]);
        assert_eq!(decode(&bytes), URL);
        let svg = svg(URL, &style).unwrap();
        assert!(svg.contains(r##"fill="#fff8e1""##) && svg.contains(r##"fill="#1a237e""##));
    }

    #[test]
    fn colours_are_six_hex_digits() {
        assert_eq!(Rgb::parse_hex("#000000"), Some(Rgb::BLACK));
        assert_eq!(Rgb::parse_hex("FFFFFF"), Some(Rgb::WHITE));
        for bad in [
            "",
            "#fff",
            "12345",
            "1234567",
            "gg0000",
            "#+1+1+1",
            "\u{e9}\u{e9}\u{e9}",
        ] {
            assert_eq!(Rgb::parse_hex(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_png_is_one_bit_grayscale_of_the_expected_size() {
        let style = Style::default();
        let bytes = png(URL, &style).unwrap();
        let image = image::load_from_memory(&bytes).unwrap();
        // A 46-byte URL at level M is version 4: 33 modules, plus 2 × 4 quiet modules, × 8 px.
        assert_eq!(image.width(), (33 + 8) * 8);
        assert_eq!(bytes[24], 1, "IHDR bit depth");
        assert_eq!(bytes[25], 0, "IHDR colour type: grayscale");
    }

    #[test]
    fn rendering_is_deterministic() {
        assert_eq!(
            png(URL, &Style::default()).unwrap(),
            png(URL, &Style::default()).unwrap()
        );
        assert_eq!(
            svg(URL, &Style::default()).unwrap(),
            svg(URL, &Style::default()).unwrap()
        );
    }

    #[test]
    fn the_svg_has_the_right_size_and_only_our_markup() {
        let svg = svg(URL, &Style::default()).unwrap();
        assert!(svg.contains(r#"viewBox="0 0 41 41""#), "{svg}");
        assert!(svg.contains(r#"width="328""#));
        assert!(
            !svg.contains("127.0.0.1"),
            "the SVG draws the code, it does not embed the text"
        );
    }

    #[test]
    fn a_batch_keeps_the_order_of_its_texts() {
        let texts: Vec<String> = (0..32).map(|i| format!("{URL}?n={i}")).collect();
        let pngs = png_batch(&texts, &Style::default());
        for (text, png) in texts.iter().zip(pngs) {
            assert_eq!(&decode(&png.unwrap()), text);
        }
    }

    #[test]
    fn text_too_long_for_any_version_is_an_error() {
        let huge = "x".repeat(8000);
        assert!(matches!(
            png(&huge, &Style::default()),
            Err(RenderError::TooLong(_))
        ));
    }
}
