//! An AI agent's MCP client whose requests are signed: rmcp's streamable HTTP client over
//! `wimse_mcp::SignedMcpClient`, which sends every request through `wimse-reqwest`'s signing
//! middleware with the agent's WIT, a fresh WPT, and the Txn-Token in which it acts for alice.
//! It lists the tools, calls the one alice's delegation covers, one it does not (refused: 403
//! `txn_scope_denied`), and tries again without signing (refused: 401).
//!
//! Start `cargo run -p wimse-examples --bin mcp-tools` first; it prints this command:
//! `cargo run -p wimse-examples --bin mcp-agent -- <url> <credentials directory>`.

use std::path::Path;

use reqwest_middleware::ClientBuilder;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, ClientConfig};
use rmcp::service::ServiceError;
use wimse_core::prelude::*;
use wimse_core::protocol::txn::TxnToken;
use wimse_mcp::SignedMcpClient;
use wimse_reqwest::WimseSignMiddleware;

type Error = Box<dyn std::error::Error>;

/// Calls `tool` and prints the answer, or the refusal's status and reason.
async fn call(agent: &rmcp::service::RunningService<rmcp::RoleClient, ClientConfig>, tool: &str, item: &str) -> String {
    let arguments = serde_json::json!({ "item": item }).as_object().cloned().unwrap_or_default();
    let line = match agent.call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments)).await {
        Ok(result) => result.content.iter().filter_map(|c| c.as_text().map(|t| t.text.clone())).collect(),
        Err(ServiceError::McpError(error)) => {
            let data = error.data.unwrap_or_default();
            format!("refused: {} {} ({})", data["status"], data["reason"].as_str().unwrap_or_default(), error.message)
        }
        Err(other) => format!("failed: {other}"),
    };
    println!("{tool:<7} {item:<18} -> {line}");
    line
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let usage = "usage: mcp-agent <url> <credentials directory> (mcp-tools prints both)";
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(dir)) = (args.next(), args.next()) else { return Err(usage.into()) };
    let dir = Path::new(&dir);
    let origin = url.trim_end_matches("/mcp").to_owned();
    // The agent's WIT and key, as its node agent keeps them, and alice's delegation.
    let credentials = FileCredentials::new(dir.join("planner.wit.jwt"), dir.join("planner.key.jwk"))?;
    let txn = TxnToken(std::fs::read_to_string(dir.join("alice.txn"))?);
    // Txn-Tokens go only to the trust domain's origins: here, the tool server.
    let signing = WimseSignMiddleware::new(Signer::new(credentials)).trust_domain_origins([origin.as_str()]);
    // Redirects only within the origin: the credentials never follow one elsewhere.
    let client = SignedMcpClient::from_middleware(signing)?.txn_token(txn);
    let agent = ClientConfig::default().serve(client.transport(url.clone())).await?;

    let tools = agent.list_tools(Default::default()).await?;
    let names: Vec<&str> = tools.tools.iter().map(|t| t.name.as_ref()).collect();
    println!("tools: {}", names.join(", "));
    let searched = call(&agent, "search", "flights to Oslo").await;
    let refunded = call(&agent, "refund", "order 7d1f").await;
    let _ = agent.cancel().await;

    // The same client without the signing middleware: the layer answers 401 at once.
    let unsigned = SignedMcpClient::new(ClientBuilder::new(reqwest::Client::new()).build());
    let refused = match ClientConfig::default().serve(unsigned.transport(url)).await {
        Ok(_) => "accepted".to_owned(),
        Err(error) => error.to_string(),
    };
    println!("unsigned client            -> {refused}");

    let expected = searched.contains("agent spiffe://prod.example/agents/planner for user alice")
        && refunded.starts_with("refused: 403 txn_scope_denied")
        && refused.contains("401");
    if !expected {
        return Err("mcp-agent: a call did not behave as expected".into());
    }
    println!("mcp-agent: every call behaved as expected");
    Ok(())
}
