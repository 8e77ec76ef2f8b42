//! The module grid of one QR code, with the mask chosen by our own penalty scoring.
//!
//! The `qrcode` crate does the parts it does well and fast: segmenting the text, choosing the
//! version, Reed–Solomon codewords and placing them on the canvas. Choosing the mask is where
//! it spends most of its time (it clones the canvas eight times and scores each clone in
//! several passes over an enum per module), so that step is ours: the unmasked grid is read
//! once into a byte per module, and each of the eight masks is applied and scored in a single
//! pass per row and per column. The scoring is ISO/IEC 18004's (N1 runs, N2 blocks, N3
//! finder-like patterns with the quiet zone counted as light, N4 balance); any mask decodes,
//! the score only keeps scanners comfortable.

use qrcode::canvas::{Canvas, Module};
use qrcode::types::{Color, EcLevel, Version};

/// A finished symbol: `width × width` modules, row by row, 1 for dark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    pub width: usize,
    pub dark: Vec<u8>,
    /// The mask pattern that was applied (0–7, ISO numbering).
    pub mask: u8,
}

impl Symbol {
    pub fn is_dark(&self, x: usize, y: usize) -> bool {
        self.dark[y * self.width + x] != 0
    }
}

/// Encodes `text` at `level` in the smallest version that holds it.
pub fn encode(text: &[u8], level: EcLevel) -> qrcode::types::QrResult<Symbol> {
    let bits = qrcode::bits::encode_auto(text, level)?;
    let version = bits.version();
    let (data, ec) = qrcode::ec::construct_codewords(&bits.into_bytes(), version, level)?;
    let mut canvas = Canvas::new(version, level);
    canvas.draw_all_functional_patterns();
    canvas.draw_data(&data, &ec);
    let grid = Unmasked::read(&canvas, version);
    Ok(if grid.width <= 64 {
        best_masked_bits(&grid, level)
    } else {
        best_masked(&grid, level)
    })
}

/// The grid before masking: colours, and which modules a mask may flip.
struct Unmasked {
    width: usize,
    dark: Vec<u8>,
    /// 1 where the module carries data or error correction (a mask flips it).
    data: Vec<u8>,
}

impl Unmasked {
    fn read(canvas: &Canvas, version: Version) -> Self {
        let width = usize::try_from(version.width()).unwrap_or_default();
        let mut dark = vec![0; width * width];
        let mut data = vec![0; width * width];
        let mut index = 0;
        for y in 0..version.width() {
            for x in 0..version.width() {
                let module = canvas.get(x, y);
                dark[index] = u8::from(Color::from(module) == Color::Dark);
                // Remainder bits are left empty by the canvas; the standard masks them too.
                data[index] = u8::from(matches!(module, Module::Unmasked(_) | Module::Empty));
                index += 1;
            }
        }
        Unmasked { width, dark, data }
    }
}

fn best_masked(grid: &Unmasked, level: EcLevel) -> Symbol {
    let mut best: Option<(u32, Symbol)> = None;
    let mut candidate = vec![0_u8; grid.dark.len()];
    for mask in 0..8_u8 {
        apply_mask(grid, mask, &mut candidate);
        draw_format_bits(&mut candidate, grid.width, level, mask);
        let score = penalty(&candidate, grid.width);
        if best.as_ref().is_none_or(|(lowest, _)| score < *lowest) {
            let symbol = Symbol {
                width: grid.width,
                dark: candidate.clone(),
                mask,
            };
            best = Some((score, symbol));
        }
    }
    // The loop runs eight times, so there is always a best.
    best.map(|(_, symbol)| symbol).unwrap_or(Symbol {
        width: grid.width,
        dark: candidate,
        mask: 7,
    })
}

/// The same choice as [`best_masked`] for symbols up to 64 modules wide (versions 1–11, every
/// code we issue): each row is a `u64` (bit x is column x), so a mask is one XOR per row and
/// the penalty rules are shifts and popcounts, about twenty times faster.
fn best_masked_bits(grid: &Unmasked, level: EcLevel) -> Symbol {
    let width = grid.width;
    let as_rows = |modules: &[u8]| -> Vec<u64> {
        modules
            .chunks(width)
            .map(|row| {
                row.iter()
                    .rev()
                    .fold(0, |bits, &module| (bits << 1) | u64::from(module))
            })
            .collect()
    };
    let (dark, data) = (as_rows(&grid.dark), as_rows(&grid.data));
    let mut best = (u32::MAX, 0_u8, vec![0_u64; width]);
    let mut rows = vec![0_u64; width];
    for mask in 0..8_u8 {
        let pattern = &MASK_ROWS[usize::from(mask)];
        for (y, row) in rows.iter_mut().enumerate() {
            *row = dark[y] ^ (data[y] & pattern[y % 12]);
        }
        draw_format_bits_into(width, level, mask, |x, y, value| {
            rows[y] = (rows[y] & !(1 << x)) | (u64::from(value) << x);
        });
        let score = penalty_bits(&rows, width);
        if score < best.0 {
            best = (score, mask, rows.clone());
        }
    }
    let (_, mask, rows) = best;
    let dark = rows
        .iter()
        .flat_map(|&row| (0..width).map(move |x| u8::from((row >> x) & 1 == 1)))
        .collect();
    Symbol { width, dark, mask }
}

/// Row `y % 12` of each mask over 64 columns: every mask repeats every 12 rows (and 6 columns).
static MASK_ROWS: std::sync::LazyLock<[[u64; 12]; 8]> = std::sync::LazyLock::new(|| {
    let mut table = [[0_u64; 12]; 8];
    for (mask, rows) in (0_u8..).zip(table.iter_mut()) {
        for (y, row) in rows.iter_mut().enumerate() {
            *row = (0..64)
                .filter(|&x| mask_flips(mask, x, y))
                .fold(0, |bits, x| bits | (1 << x));
        }
    }
    table
});

/// [`penalty`] on rows of bits; `rows.len() == width <= 64`.
fn penalty_bits(rows: &[u64], width: usize) -> u32 {
    let mut columns = [0_u64; 64];
    columns[..width].copy_from_slice(rows);
    transpose(&mut columns);
    let mut score: u32 = rows
        .iter()
        .chain(&columns[..width])
        .map(|&line| line_penalty_bits(line, width))
        .sum();

    // N2: a 2×2 block at x when rows agree at x and x+1 and the top row agrees with itself.
    let pairs = if width == 64 {
        u64::MAX >> 1
    } else {
        (1 << (width - 1)) - 1
    };
    for pair in rows.windows(2) {
        let (top, bottom) = (pair[0], pair[1]);
        let vertical = !(top ^ bottom);
        let horizontal = !(top ^ (top >> 1));
        score += 3 * (vertical & (vertical >> 1) & horizontal & pairs).count_ones();
    }

    let dark = rows
        .iter()
        .map(|row| row.count_ones() as usize)
        .sum::<usize>();
    let total = width * width;
    let steps = (dark * 20)
        .abs_diff(total * 10)
        .div_ceil(total)
        .saturating_sub(1);
    score + 10 * u32::try_from(steps).unwrap_or(u32::MAX / 20)
}

/// [`line_penalty`] on one row or column of bits.
fn line_penalty_bits(line: u64, width: usize) -> u32 {
    let mut score = 0;
    // N1: bit x of `edges` is set where module x+1 differs from module x; runs lie between.
    let inside = if width == 64 {
        u64::MAX >> 1
    } else {
        (1 << (width - 1)) - 1
    };
    let mut edges = (line ^ (line >> 1)) & inside;
    let mut run_start = 0;
    while edges != 0 {
        let end = edges.trailing_zeros() + 1;
        let run = end - run_start;
        if run >= 5 {
            score += run - 2;
        }
        run_start = end;
        edges &= edges - 1;
    }
    let last_run = u32::try_from(width).unwrap_or(64) - run_start;
    if last_run >= 5 {
        score += last_run - 2;
    }

    // N3: slide both 11-module patterns over the line padded with four light modules a side.
    let padded = u128::from(line) << 4;
    let (mut light_after, mut light_before) = (u128::MAX, u128::MAX);
    for k in 0..11 {
        let shifted = padded >> k;
        let bit = |pattern: u16| (pattern >> (10 - k)) & 1 == 1;
        light_after &= if bit(FINDER_LIKE[0]) {
            shifted
        } else {
            !shifted
        };
        light_before &= if bit(FINDER_LIKE[1]) {
            shifted
        } else {
            !shifted
        };
    }
    let starts = (1_u128 << (width + 8 - 11 + 1)) - 1;
    score + 40 * ((light_after & starts).count_ones() + (light_before & starts).count_ones())
}

/// Transposes a 64×64 bit matrix in place (bit x of row y ↔ bit y of row x), by swapping ever
/// smaller off-diagonal blocks (Hacker's Delight, 7–3).
fn transpose(rows: &mut [u64; 64]) {
    let mut block = 32;
    let mut low: u64 = 0x0000_0000_FFFF_FFFF;
    while block != 0 {
        let mut k = 0;
        while k < 64 {
            let swap = ((rows[k] >> block) ^ rows[k + block]) & low;
            rows[k + block] ^= swap;
            rows[k] ^= swap << block;
            k = (k + block + 1) & !block;
        }
        block >>= 1;
        low ^= low << block;
    }
}

fn apply_mask(grid: &Unmasked, mask: u8, out: &mut [u8]) {
    let width = grid.width;
    for y in 0..width {
        let row = y * width..(y + 1) * width;
        let (dark, data, out) = (
            &grid.dark[row.clone()],
            &grid.data[row.clone()],
            &mut out[row],
        );
        for x in 0..width {
            out[x] = dark[x] ^ (data[x] & u8::from(mask_flips(mask, x, y)));
        }
    }
}

/// The eight mask conditions of ISO/IEC 18004 table 10 (x is the column, y the row).
#[inline]
fn mask_flips(mask: u8, x: usize, y: usize) -> bool {
    match mask {
        0 => (x + y).is_multiple_of(2),
        1 => y.is_multiple_of(2),
        2 => x.is_multiple_of(3),
        3 => (x + y).is_multiple_of(3),
        4 => (y / 2 + x / 3).is_multiple_of(2),
        5 => (x * y) % 2 + (x * y) % 3 == 0,
        6 => ((x * y) % 2 + (x * y) % 3).is_multiple_of(2),
        _ => ((x + y) % 2 + (x * y) % 3).is_multiple_of(2),
    }
}

/// The 15 format bits (level and mask, BCH-protected, XOR-masked) in both copies.
fn draw_format_bits(grid: &mut [u8], width: usize, level: EcLevel, mask: u8) {
    draw_format_bits_into(width, level, mask, |x, y, value| {
        grid[y * width + x] = value
    });
}

fn draw_format_bits_into(
    width: usize,
    level: EcLevel,
    mask: u8,
    mut set: impl FnMut(usize, usize, u8),
) {
    let level_bits: u32 = match level {
        EcLevel::L => 1,
        EcLevel::M => 0,
        EcLevel::Q => 3,
        EcLevel::H => 2,
    };
    let data = (level_bits << 3) | u32::from(mask);
    let mut remainder = data;
    for _ in 0..10 {
        remainder = (remainder << 1) ^ ((remainder >> 9) * 0x537);
    }
    let bits = ((data << 10) | remainder) ^ 0x5412;
    let bit = |i: usize| u8::from((bits >> i) & 1 == 1);

    // The copy around the top-left finder.
    for i in 0..=5 {
        set(8, i, bit(i));
    }
    set(8, 7, bit(6));
    set(8, 8, bit(7));
    set(7, 8, bit(8));
    for i in 9..15 {
        set(14 - i, 8, bit(i));
    }
    // The copy split between the other two finders.
    for i in 0..8 {
        set(width - 1 - i, 8, bit(i));
    }
    for i in 8..15 {
        set(8, width - 15 + i, bit(i));
    }
    set(8, width - 8, 1);
}

const FINDER_LIKE: [u16; 2] = [0b101_1101_0000, 0b000_0101_1101];
const WINDOW: u16 = (1 << 11) - 1;

/// The total penalty of one masked grid; lower is better.
fn penalty(grid: &[u8], width: usize) -> u32 {
    let mut score = 0;
    for y in 0..width {
        score += line_penalty((0..width).map(|x| grid[y * width + x]));
        score += line_penalty((0..width).map(|x| grid[x * width + y]));
    }

    // N2: each 2×2 block of one colour.
    for y in 0..width - 1 {
        let (top, bottom) = (
            &grid[y * width..(y + 1) * width],
            &grid[(y + 1) * width..(y + 2) * width],
        );
        for x in 0..width - 1 {
            let colour = top[x];
            if top[x + 1] == colour && bottom[x] == colour && bottom[x + 1] == colour {
                score += 3;
            }
        }
    }

    // N4: 10 points for each full 5 % step away from half dark.
    let dark: usize = grid.iter().map(|&module| usize::from(module)).sum();
    let total = width * width;
    let steps = (dark * 20)
        .abs_diff(total * 10)
        .div_ceil(total)
        .saturating_sub(1);
    score + 10 * u32::try_from(steps).unwrap_or(u32::MAX / 20)
}

/// N1 (runs of five or more) and N3 (1:1:3:1:1 with four light modules on a side) of one row
/// or column, with the quiet zone counted as light.
fn line_penalty(line: impl Iterator<Item = u8>) -> u32 {
    let mut score = 0;
    let mut run_colour = 2_u8;
    let mut run_length = 0_u32;
    let mut window: u16 = 0;
    for module in line.chain([0; 4]) {
        window = ((window << 1) | u16::from(module)) & WINDOW;
        if FINDER_LIKE.contains(&window) {
            score += 40;
        }
        if module == run_colour {
            run_length += 1;
        } else {
            if run_length >= 5 {
                score += run_length - 2;
            }
            run_colour = module;
            run_length = 1;
        }
    }
    // The trailing quiet zone is not part of the symbol's own runs.
    if run_colour == 0 {
        run_length = run_length.saturating_sub(4);
    }
    if run_length >= 5 {
        score += run_length - 2;
    }
    score
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmasked(text: &str, level: EcLevel) -> (Canvas, Unmasked) {
        let bits = qrcode::bits::encode_auto(text.as_bytes(), level).unwrap();
        let version = bits.version();
        let (data, ec) =
            qrcode::ec::construct_codewords(&bits.into_bytes(), version, level).unwrap();
        let mut canvas = Canvas::new(version, level);
        canvas.draw_all_functional_patterns();
        canvas.draw_data(&data, &ec);
        let grid = Unmasked::read(&canvas, version);
        (canvas, grid)
    }

    #[test]
    fn every_mask_matches_the_qrcode_crates_drawing_of_it() {
        let patterns = [
            qrcode::canvas::MaskPattern::Checkerboard,
            qrcode::canvas::MaskPattern::HorizontalLines,
            qrcode::canvas::MaskPattern::VerticalLines,
            qrcode::canvas::MaskPattern::DiagonalLines,
            qrcode::canvas::MaskPattern::LargeCheckerboard,
            qrcode::canvas::MaskPattern::Fields,
            qrcode::canvas::MaskPattern::Diamonds,
            qrcode::canvas::MaskPattern::Meadow,
        ];
        for (text, level) in [
            (
                "https://qr.example.com/m/7n42DGM5Tflk9n8mt0000001",
                EcLevel::M,
            ),
            ("HELLO", EcLevel::L),
            (
                "a longer text that needs version seven or more, which carries version information bits",
                EcLevel::H,
            ),
        ] {
            let (canvas, grid) = unmasked(text, level);
            for (mask, pattern) in (0_u8..).zip(patterns) {
                let mut ours = vec![0; grid.dark.len()];
                apply_mask(&grid, mask, &mut ours);
                draw_format_bits(&mut ours, grid.width, level, mask);
                let mut theirs = canvas.clone();
                theirs.apply_mask(pattern);
                let theirs: Vec<u8> = theirs
                    .into_colors()
                    .into_iter()
                    .map(|colour| u8::from(colour == Color::Dark))
                    .collect();
                assert_eq!(ours, theirs, "{text:?} at {level:?}, mask {mask}");
            }
        }
    }

    #[test]
    fn runs_and_finder_like_patterns_score_as_the_standard_says() {
        // A run of 7 light then a finder-like 1011101 with 4 light before it (from the run).
        let line = [0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 1, 1, 0, 1];
        // N1: the run of 7 scores 3 + 2; N3: one pattern with light before, one with the
        // trailing quiet zone after.
        assert_eq!(line_penalty(line.into_iter()), 5 + 40 + 40);
        assert_eq!(line_penalty([1, 0, 1, 0, 1].into_iter()), 0);
        assert_eq!(line_penalty([1; 6].into_iter()), 4);
    }

    #[test]
    fn the_bit_rows_score_every_grid_as_the_byte_grid_does() {
        let mut state = 0x9E37_79B9_u32;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        for width in [21, 33, 45, 57, 61, 64] {
            for _ in 0..50 {
                // Long runs and finder-like stretches appear more often with a biased coin.
                let bias = next() % 4;
                let grid: Vec<u8> = (0..width * width)
                    .map(|_| u8::from(next() % 8 < 2 + bias))
                    .collect();
                let rows: Vec<u64> = grid
                    .chunks(width)
                    .map(|row| {
                        row.iter()
                            .rev()
                            .fold(0, |bits, &m| (bits << 1) | u64::from(m))
                    })
                    .collect();
                assert_eq!(
                    penalty_bits(&rows, width),
                    penalty(&grid, width),
                    "width {width}"
                );
            }
        }
    }

    #[test]
    fn transpose_swaps_rows_and_columns() {
        let mut rows = [0_u64; 64];
        for (y, row) in rows.iter_mut().enumerate() {
            *row = (y as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (1 << y);
        }
        let original = rows;
        transpose(&mut rows);
        for (y, row) in original.iter().enumerate() {
            for (x, column) in rows.iter().enumerate() {
                assert_eq!((column >> y) & 1, (row >> x) & 1, "({x}, {y})");
            }
        }
    }

    #[test]
    fn both_paths_choose_the_same_mask() {
        for (text, level) in [
            (
                "https://qr.example.com/m/7n42DGM5Tflk9n8mt0000001",
                EcLevel::M,
            ),
            ("HELLO", EcLevel::L),
            (
                "a longer text that needs version seven or more, which carries version information bits",
                EcLevel::H,
            ),
        ] {
            let (_, grid) = unmasked(text, level);
            assert_eq!(
                best_masked_bits(&grid, level),
                best_masked(&grid, level),
                "{text:?}"
            );
        }
    }

    #[test]
    fn the_chosen_mask_has_the_lowest_penalty() {
        let level = EcLevel::M;
        let (_, grid) = unmasked("https://qr.example.com/m/7n42DGM5Tflk9n8mt0000001", level);
        let chosen = best_masked(&grid, level);
        let scores: Vec<u32> = (0..8)
            .map(|mask| {
                let mut candidate = vec![0; grid.dark.len()];
                apply_mask(&grid, mask, &mut candidate);
                draw_format_bits(&mut candidate, grid.width, level, mask);
                penalty(&candidate, grid.width)
            })
            .collect();
        let lowest = scores.iter().min().copied();
        assert_eq!(Some(scores[usize::from(chosen.mask)]), lowest, "{scores:?}");
    }
}
