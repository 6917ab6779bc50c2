//! The whole request path (WIT, WPT or HTTP signature, replay claim), from live seeds.
//! The body is `src/verify_request.rs`; `cargo test -p wimse-core --test fuzz_seeds` runs it over `seeds/verify_request/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wimse_fuzz::verify_request::run(data));
