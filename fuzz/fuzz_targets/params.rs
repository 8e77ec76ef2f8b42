//! Any JSON body's `params`, within the limits or refused.
#![no_main]
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
        let _ = records::Params::parse(value, &records::ParamsLimits::default());
    }
});
