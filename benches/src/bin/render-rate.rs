//! Our side of render-vs-qrencode.sh: draws the same codes as `peers/qrencode_png.c`, one
//! core, and checks that every tenth one reads back with a real decoder (the check runs
//! outside the timed loop). Prints "<codes> <seconds> <bytes of the last PNG>".
//!
//! `cargo run --release -p benches --bin render-rate -- 20000`

use std::time::Instant;

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let count: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()
        .context("count")?
        .unwrap_or(20_000);
    let style = render::Style::default();
    let texts: Vec<String> = (0..count)
        .map(|i| format!("https://qr.example.com/m/7n42DGM5Tflk9n8mt{i:07}"))
        .collect();

    let started = Instant::now();
    let mut pngs = Vec::with_capacity(count);
    for text in &texts {
        pngs.push(render::png(text, &style)?);
    }
    let seconds = started.elapsed().as_secs_f64();

    for (text, png) in texts.iter().zip(&pngs).step_by(10) {
        let read = render::decode::png_text(png)?;
        if &read != text {
            bail!("a code reads back as {read:?}, not {text:?}");
        }
    }
    let last = pngs.last().map_or(0, Vec::len);
    println!("{count} {seconds:.6} {last}");
    Ok(())
}
