//! The MCP tool service of the examples (`mcp-tools`, the call-chain demo's agent pass): an rmcp
//! server on streamable HTTP behind `WimseLayer` and `McpToolGuardLayer`. Each tool answers
//! with who called it, for whom and through which agents; each tool's policy says which
//! delegation it needs.

use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::transport::streamable_http_server::StreamableHttpService;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::{schemars, tool, tool_router};
use wimse_core::prelude::*;
use wimse_mcp::{McpToolGuardLayer, ToolPolicies, server_config, verified_caller};

/// Where the agents' identifiers live: the tools serve agents only.
pub const AGENTS: &str = "spiffe://prod.example/agents";

/// A tool's argument.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct Order {
    /// What the tool is about (an order, a city…).
    pub item: String,
}

/// The travel tools: `search` needs the user's `orders.read` delegation, `book`
/// `orders.purchase`, `refund` `orders.refund`.
#[derive(Debug, Clone, Copy)]
pub struct TravelTools;

#[tool_router(server_handler)]
impl TravelTools {
    /// Searches.
    #[tool(description = "Searches the catalogue (needs orders.read)")]
    fn search(
        &self,
        Parameters(order): Parameters<Order>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> String {
        tool_line("search", &order.item, &parts)
    }

    /// Books.
    #[tool(description = "Books an item (needs orders.purchase)")]
    fn book(&self, Parameters(order): Parameters<Order>, Extension(parts): Extension<http::request::Parts>) -> String {
        tool_line("book", &order.item, &parts)
    }

    /// Refunds.
    #[tool(description = "Refunds an order (needs orders.refund)")]
    fn refund(
        &self,
        Parameters(order): Parameters<Order>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> String {
        tool_line("refund", &order.item, &parts)
    }
}

/// What a tool answers and prints: "agent X for user Y (chain X <- Z)", from the verified
/// caller `WimseLayer` put into the request.
pub fn tool_line(tool: &str, item: &str, parts: &http::request::Parts) -> String {
    let who = match verified_caller(parts) {
        None => "no verified caller".to_owned(),
        Some(caller) => match caller.transaction() {
            Some(txn) if !txn.actors().is_empty() => {
                let chain: Vec<&str> = txn.actors().iter().map(|a| a.as_str()).collect();
                format!("agent {} for user {} (chain {})", caller.id(), txn.subject(), chain.join(" <- "))
            }
            Some(txn) => format!("{} for user {} (no agent)", caller.id(), txn.subject()),
            None => format!("{} (no transaction)", caller.id()),
        },
    };
    println!("[tools]   {tool} {item}: {who}");
    format!("{tool} {item}: {who}")
}

/// Each tool's policy: an agent, acting in a delegated transaction of at most two agents, whose
/// purpose includes the tool's scope.
pub fn tool_policies() -> Result<ToolPolicies, wimse_core::id::IdentifierError> {
    let policy = |name: &str, scope: &str| -> Result<Policy, wimse_core::id::IdentifierError> {
        Ok(Policy::named(name.to_owned())
            .allow(Rule::path_prefix(AGENTS)?)
            .require(Rule::txn_delegated())
            .require(Rule::txn_max_actors(2))
            .require(Rule::txn_scope(scope.to_owned())))
    };
    Ok(ToolPolicies::new()
        .tool("search", policy("search", "orders.read")?)
        .tool("book", policy("book", "orders.purchase")?)
        .tool("refund", policy("refund", "orders.refund")?))
}

/// The tool service at `/mcp`, verifying callers with `verifier` (which must validate
/// Txn-Tokens), reached at `host` (`ip:port`).
pub fn router(verifier: Verifier, host: String) -> Result<axum::Router, wimse_core::id::IdentifierError> {
    let mcp =
        StreamableHttpService::new(|| Ok(TravelTools), NeverSessionManager::default().into(), server_config([host]));
    let service = tower::ServiceBuilder::new()
        .layer(wimse_axum::WimseLayer::new(verifier))
        .layer(McpToolGuardLayer::new(tool_policies()?))
        .service(mcp);
    Ok(axum::Router::new().route_service("/mcp", service))
}
