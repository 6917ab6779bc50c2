//! The client layer: a workload's credentials ([`cred`]), the outbound path that proves them on
//! each request, by WPT or HTTP signature ([`sign`]), and the check of signed responses
//! ([`response`]).
//!
//! May import the protocol layer and the base; never the server layer.

pub mod cred;
pub mod response;
pub mod sign;
