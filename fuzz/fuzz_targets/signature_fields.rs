//! `Signature-Input` / `Signature` / `Content-Digest` parsing.
//! The body is `src/signature_fields.rs`; `cargo test -p wimse-core --test fuzz_seeds` runs it over `seeds/signature_fields/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wimse_fuzz::signature_fields::run(data));
