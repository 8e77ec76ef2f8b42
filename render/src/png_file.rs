//! A symbol as a 1-bit PNG (grayscale, or a two-colour palette): scanlines, our own DEFLATE
//! stream, and the chunks.
//!
//! Written by hand because the general encoders spend their time discovering repeats that we
//! know by construction (see [`crate::deflate`]); the container itself is a few fixed chunks.

use crate::RenderError;
use crate::deflate;
use crate::symbol::Symbol;

const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1A, b'\n'];
/// zlib header: deflate, 32 KiB window, "maximum compression" hint; (0x78 << 8 | 0xDA) % 31 == 0.
const ZLIB_HEADER: [u8; 2] = [0x78, 0xDA];
/// PNG limits width and height to 2³¹ − 1.
const MAX_SIDE: usize = i32::MAX as usize;

/// `palette`: `[dark, light]` colours, or `None` for black on white (grayscale). Pixel bit 0
/// is dark and 1 is light in both forms.
pub fn write(
    symbol: &Symbol,
    quiet_zone: usize,
    module_px: usize,
    palette: Option<[[u8; 3]; 2]>,
) -> Result<Vec<u8>, RenderError> {
    let side_modules = symbol.width + 2 * quiet_zone;
    let side = side_modules * module_px;
    if side > MAX_SIDE || side == 0 {
        return Err(RenderError::TooLarge(side));
    }
    let row_bytes = side.div_ceil(8);
    // Each scanline is its filter byte (0: none) and the pixels, 1 bit each, 1 for white.
    let line_len = 1 + row_bytes;
    let mut scanlines = vec![0xFF_u8; line_len * side];
    let mut line = vec![0xFF_u8; line_len];
    for y in 0..side_modules {
        line.fill(0xFF);
        line[0] = 0;
        if let Some(row) = y.checked_sub(quiet_zone).filter(|&row| row < symbol.width) {
            for x in (0..symbol.width).filter(|&x| symbol.is_dark(x, row)) {
                let start = (x + quiet_zone) * module_px;
                if module_px.is_multiple_of(8) && start.is_multiple_of(8) {
                    line[1 + start / 8..1 + (start + module_px) / 8].fill(0);
                } else {
                    for bit in start..start + module_px {
                        line[1 + bit / 8] &= !(0x80 >> (bit % 8));
                    }
                }
            }
        }
        for copy in 0..module_px {
            let at = (y * module_px + copy) * line_len;
            scanlines[at..at + line_len].copy_from_slice(&line);
        }
    }

    let mut png = Vec::with_capacity(640);
    png.extend_from_slice(&SIGNATURE);
    let side = u32::try_from(side).map_err(|_| RenderError::TooLarge(side))?;
    let mut header = [0_u8; 13];
    header[..4].copy_from_slice(&side.to_be_bytes());
    header[4..8].copy_from_slice(&side.to_be_bytes());
    header[8] = 1; // bit depth
    // Colour type 0 (grayscale) or 3 (palette); compression, filter, interlace stay 0.
    header[9] = if palette.is_some() { 3 } else { 0 };
    chunk(&mut png, *b"IHDR", |out| out.extend_from_slice(&header));
    if let Some(colours) = palette {
        chunk(&mut png, *b"PLTE", |out| {
            out.extend_from_slice(&colours[0]);
            out.extend_from_slice(&colours[1]);
        });
    }
    chunk(&mut png, *b"IDAT", |out| {
        out.extend_from_slice(&ZLIB_HEADER);
        deflate::compress(&scanlines, line_len, out);
        out.extend_from_slice(&adler2::adler32_slice(&scanlines).to_be_bytes());
    });
    chunk(&mut png, *b"IEND", |_| {});
    Ok(png)
}

/// Appends one chunk: length, type, the data `fill` writes, and the CRC of type and data.
fn chunk(png: &mut Vec<u8>, kind: [u8; 4], fill: impl FnOnce(&mut Vec<u8>)) {
    let length_at = png.len();
    png.extend_from_slice(&[0; 4]);
    png.extend_from_slice(&kind);
    fill(png);
    let data_len = png.len() - length_at - 8;
    // Chunks are a few hundred bytes; the u32 length cannot overflow.
    let length = u32::try_from(data_len).unwrap_or(u32::MAX);
    png[length_at..length_at + 4].copy_from_slice(&length.to_be_bytes());
    let crc = crc32fast::hash(&png[length_at + 4..]);
    png.extend_from_slice(&crc.to_be_bytes());
}
