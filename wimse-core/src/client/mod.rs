//! The client layer: a workload's credentials ([`cred`]), the outbound path that proves them on
//! each request, by WPT or HTTP signature ([`sign`]), and the check of signed responses
//! ([`response`]), and the rules of one exchange that every client adapter shares: audience,
//! Txn-Token forwarding, proof mode, when a response must be verified ([`exchange`]).
//!
//! May import the protocol layer and the base; never the server layer.

pub mod cred;
pub mod exchange;
pub mod response;
pub mod sign;
