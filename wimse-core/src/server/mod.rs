//! The server layer: the inbound pipeline every server adapter drives. [`framing`] reads the
//! WIMSE fields and gives every refusal one format; [`verify`] checks credentials and claims;
//! [`pipeline`] holds the steps as one value, a [`Pipeline`](pipeline::Pipeline) (admit:
//! authenticate and the [`policy`]; confirm: the replay claim); [`exchange`] is a signed request and its signed response; [`caller`] is who
//! called; [`audit`] records each decision, and [`audit_log`] keeps tamper-evident records of them; [`signals`] receives revocations. The verified-token caches are internal.
//!
//! May import the client and protocol layers and the base.

pub mod audit;
pub mod audit_log;
pub mod caller;
#[cfg(feature = "cedar")]
#[cfg_attr(docsrs, doc(cfg(feature = "cedar")))]
pub mod cedar;
pub mod exchange;
pub mod framing;
pub mod pipeline;
pub mod policy;
pub mod signals;
pub(crate) mod token_cache;
pub mod verify;
