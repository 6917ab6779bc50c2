//! The client layer: a workload's credentials ([`cred`]) and the outbound path that proves them
//! on each request, by WPT or HTTP signature, and checks signed responses ([`sign`]).
//!
//! May import the protocol layer and the base; never the server layer.

pub mod cred;
pub mod sign;
