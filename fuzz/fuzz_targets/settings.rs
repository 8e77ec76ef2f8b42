//! A settings file: loaded and validated, or refused with the key named; never a panic.
#![no_main]
use figment::Figment;
use figment::providers::{Format, Toml};

libfuzzer_sys::fuzz_target!(|text: &str| {
    let _ = config::Settings::from_figment(Figment::new().merge(Toml::string(text)));
});
