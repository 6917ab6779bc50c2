//! The identity server's integration tests, one module per subject, in one binary (one link
//! instead of one per file).

mod bundle_caching;
mod federation;
mod federation_interop;
mod issuer;
mod openapi;
mod postgres;
mod renewal_outage;
mod tts;
mod wic;
