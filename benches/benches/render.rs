//! Rendering one code, the unit of pregen's work: the payload issue #3 names (a version-4
//! middle-page URL, error correction M, 4-module quiet zone, 8 px per module).
//!
//! `cargo bench -p benches --bench render`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use render::Style;

const URL: &str = "https://qr.example.com/m/7n42DGM5Tflk9n8mt7Fhc7";

fn single_codes(c: &mut Criterion) {
    let style = Style::default();
    let mut group = c.benchmark_group("render");
    group.throughput(Throughput::Elements(1));
    group.bench_function("png_v4_m_8px", |b| {
        b.iter(|| render::png(std::hint::black_box(URL), &style))
    });
    group.bench_function("svg_v4_m", |b| {
        b.iter(|| render::svg(std::hint::black_box(URL), &style))
    });
    group.finish();
}

fn batches_on_rayon(c: &mut Criterion) {
    let style = Style::default();
    let urls: Vec<String> = (0..256).map(|i| format!("{URL}{i:03}")).collect();
    let mut group = c.benchmark_group("render_batch");
    group.throughput(Throughput::Elements(urls.len() as u64));
    group.bench_function("png_256_all_cores", |b| {
        b.iter(|| render::png_batch(&urls, &style))
    });
    group.finish();
}

criterion_group!(benches, single_codes, batches_on_rayon);
criterion_main!(benches);
