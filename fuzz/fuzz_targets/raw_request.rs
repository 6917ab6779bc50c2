//! The raw HTTP/1.1 reader of the CLI: parse, and a parsed request must survive a round trip.
//! The body is `src/raw_request.rs`; `cargo test -p wimse-core --test fuzz_seeds` runs it over `seeds/raw_request/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wimse_fuzz::raw_request::run(data));
