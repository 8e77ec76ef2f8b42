//! Image options as a query string (`?scale=8&margin=4&dark=1a237e&ec=M`), read the way the
//! API reads them; options that are accepted always draw, in PNG and SVG, at the size they
//! say.
#![no_main]
use service::image::ImageOptions;

libfuzzer_sys::fuzz_target!(|query: &str| {
    let Ok(options) = serde_urlencoded::from_str::<ImageOptions>(query) else {
        return;
    };
    let Ok(style) = options.style(render::Style::default()) else {
        return;
    };
    let content = "https://qr.example.com/m/0123456789abcdefghijkl";
    let png = render::png(content, &style).expect("accepted options draw a PNG");
    let svg = render::svg(content, &style).expect("accepted options draw an SVG");
    // The PNG's IHDR holds its width: modules (quiet zone included) times the scale.
    let width = u32::from_be_bytes([png[16], png[17], png[18], png[19]]);
    assert_eq!(width % style.module_px, 0);
    let modules = width / style.module_px;
    assert!(modules >= 21 + 2 * style.quiet_zone, "{modules} modules");
    assert!(svg.starts_with("<svg") || svg.starts_with("<?xml"));
});
