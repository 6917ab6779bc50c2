//! # wimse-tower
//!
//! WIMSE workload identity for tower: Tower server layer (verifies callers, puts a `VerifiedCaller` in request extensions) and client layer (adds a WIT and a fresh WPT to each outgoing request).
//!
//! **Status:** the adapter itself is being built (see the workspace README's feature table).
//! Today the crate re-exports [`wimse_core`], whose [`Verifier`](wimse_core::verify::Verifier),
//! [`WptBuilder`](wimse_core::wpt::WptBuilder) and [`Rejection`](wimse_core::http::Rejection)
//! are what the adapter wraps.

pub use wimse_core;
