//! The Workload API's messages, client and server, generated from `proto/workload.proto` by
//! prost and tonic (see that file for what it keeps from the standard and how to regenerate).

#![allow(missing_docs, unreachable_pub, missing_debug_implementations, clippy::all, rust_2018_idioms)]

include!("generated.rs");
