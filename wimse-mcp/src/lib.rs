//! WIMSE workload identity for the Model Context Protocol, with `rmcp` (the official Rust MCP
//! SDK) and its streamable HTTP transport.
//!
//! - **Server** (feature `server`): put the MCP server's HTTP service behind `WimseLayer` and
//!   [`McpToolGuardLayer`], which decides each `tools/call` with that tool's [`Policy`]
//!   (rule lists, or Cedar with the action `tool:<name>`); a tool reads who called, and for
//!   whom, with [`verified_caller`].
//! - **Client** (feature `client`): [`SignedMcpClient`] sends an MCP client's requests through
//!   `wimse-reqwest`'s signing middleware, so an agent proves itself (and carries its
//!   Txn-Token) on every request.
//!
//! The MCP server runs stateless ([`server_config`]): each request carries its own proof, so
//! there is no session to take over and any replica can answer.
//!
//! ```no_run
//! use rmcp::handler::server::tool::Extension;
//! use rmcp::transport::streamable_http_server::StreamableHttpService;
//! use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
//! use rmcp::{tool, tool_router};
//! use wimse_core::prelude::*;
//! use wimse_mcp::{McpToolGuardLayer, ToolPolicies, server_config, verified_caller};
//!
//! #[derive(Clone)]
//! struct Travel;
//!
//! #[tool_router(server_handler)]
//! impl Travel {
//!     #[tool(description = "Finds flights")]
//!     fn search(&self, Extension(parts): Extension<http::request::Parts>) -> String {
//!         let caller = verified_caller(&parts).map(|c| c.id().to_string()).unwrap_or_default();
//!         format!("flights, for {caller}")
//!     }
//! }
//!
//! # fn app(verifier: Verifier) -> Result<axum::Router, Box<dyn std::error::Error>> {
//! // `search` for agents acting for a user who delegated `travel.read`; any other tool: refused.
//! let search = Policy::named("search")
//!     .allow(Rule::path_prefix("spiffe://prod.example/agents")?)
//!     .require(Rule::txn_delegated())
//!     .require(Rule::txn_scope("travel.read"));
//! let mcp = StreamableHttpService::new(|| Ok(Travel), NeverSessionManager::default().into(), server_config(["tools.prod.example"]));
//! let service = tower::ServiceBuilder::new()
//!     .layer(wimse_tower::WimseLayer::new(verifier))
//!     .layer(McpToolGuardLayer::new(ToolPolicies::new().tool("search", search)))
//!     .service(mcp);
//! Ok(axum::Router::new().route_service("/mcp", service))
//! # }
//! ```
//!
//! [`Policy`]: wimse_core::server::policy::Policy
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub mod client;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub mod server;

#[cfg(feature = "client")]
pub use client::{SignedMcpClient, SignedMcpError};
pub use rmcp;
#[cfg(feature = "server")]
pub use server::{McpToolGuard, McpToolGuardLayer, ToolPolicies, check_tool_name, server_config, verified_caller};
