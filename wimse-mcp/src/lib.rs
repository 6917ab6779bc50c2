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
