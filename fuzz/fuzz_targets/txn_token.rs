//! Txn-Token validation: raw text, and claims of any shape signed by the trusted TTS key.
//! The body is `src/txn_token.rs`; `cargo test -p wimse-core --test fuzz_seeds` runs it over `seeds/txn_token/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wimse_fuzz::txn_token::run(data));
