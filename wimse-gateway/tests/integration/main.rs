//! The gateway's integration tests, one module per subject, in one binary (one link instead of
//! one per file): the forward-auth endpoint, Envoy ext_authz, the reverse and egress proxies,
//! the gateway behind real nginx and Caddy, and the README's snippets.

#[path = "../common/mod.rs"]
mod common;

mod ext_authz;
mod forward_auth;
mod identity_server;
mod proxies;
mod readme;
mod real_proxies;
mod tls;
mod workload_api;
