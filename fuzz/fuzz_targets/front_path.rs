//! A request target as it arrives on the wire, read by `http` into a URI, then matched by the
//! front against the scan prefixes: a match is exactly the prefix and one plain segment.
#![no_main]
use axum::http::Uri;

const PREFIXES: [&str; 3] = ["/m/", "/v1/scene/", "/r/"];

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let Ok(uri) = Uri::try_from(bytes) else {
        return;
    };
    let path = uri.path();
    for prefix in PREFIXES {
        if let Some(id) = service::front::scan_id(path, prefix) {
            assert!(!id.is_empty());
            assert!(!id.contains(['/', '%', '?', '#']), "{id:?}");
            assert_eq!(format!("{prefix}{id}"), path);
        }
    }
});
