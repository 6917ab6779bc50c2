//! Trust-anchor key sets (JWKS and SPIFFE bundle JSON), each usable key then checking a signature.
//! The body is `src/key_set.rs`; `cargo test -p wimse-core --test fuzz_seeds` runs it over `seeds/key_set/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wimse_fuzz::key_set::run(data));
