//! The protocol layer: the WIMSE credentials and proofs as pure functions over bytes and claims,
//! with no request pipeline around them. WITs ([`wit`], and the SPIFFE profile [`wit_svid`]),
//! WPTs ([`wpt`]), Transaction Tokens ([`txn`]), DPoP proofs ([`dpop`]), Workload Identity
//! Certificates ([`wic`], feature `mtls`), trust anchors ([`trust`]) and HTTP Message Signatures
//! ([`httpsig`]), and the OAuth identifiers the identity server and its clients share ([`oauth`]).
//!
//! May import the base (identifiers, JOSE, errors, time, header reading, the replay store);
//! never the client or the server layers.

pub mod dpop;
pub mod httpsig;
pub mod oauth;
pub mod trust;
pub mod txn;
#[cfg(feature = "mtls")]
pub mod wic;
pub mod wit;
pub mod wit_svid;
pub mod wpt;
