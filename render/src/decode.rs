//! Reading a rendered code back with a real QR decoder (rqrr), which is how tests and
//! benchmarks prove that what we draw scans. Behind the `decode` feature: production code
//! never needs it.

/// Why a picture did not read back as one code.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a readable image: {0}")]
    Image(#[from] image::ImageError),
    #[error("expected exactly one QR code in the picture, found {0}")]
    Codes(usize),
    #[error("the QR code does not decode: {0}")]
    Decode(#[from] rqrr::DeQRError),
}

/// The text of the one QR code in a PNG.
pub fn png_text(png: &[u8]) -> Result<String, DecodeError> {
    let image = image::load_from_memory(png)?.to_luma8();
    let mut prepared = rqrr::PreparedImage::prepare_from_greyscale(
        image.width() as usize,
        image.height() as usize,
        |x, y| image.get_pixel(x as u32, y as u32).0[0],
    );
    let grids = prepared.detect_grids();
    match grids.as_slice() {
        [grid] => Ok(grid.decode()?.1),
        other => Err(DecodeError::Codes(other.len())),
    }
}
