//! Workload identifier and trust domain parsing; a parsed identifier must round-trip.
//! The body is `src/identifier.rs`; `cargo test -p wimse-core --test fuzz_seeds` runs it over `seeds/identifier/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wimse_fuzz::identifier::run(data));
