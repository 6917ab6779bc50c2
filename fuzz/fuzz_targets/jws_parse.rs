//! Compact JWS parsing: framing, strict base64url, strict JSON with duplicate detection.
//! The body is `src/jws_parse.rs`; `cargo test -p wimse-core --test fuzz_seeds` runs it over `seeds/jws_parse/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wimse_fuzz::jws_parse::run(data));
