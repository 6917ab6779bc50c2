//! An MCP tool server behind WIMSE: rmcp's streamable HTTP service behind `WimseLayer` (which
//! verifies the agent's WIT, its proof and the user's Txn-Token) and `McpToolGuardLayer`
//! (which decides each `tools/call` with that tool's policy). It stands in for the trust
//! domain: it writes the planner agent's credentials (as its node agent would) and a Txn-Token
//! in which the planner acts for alice with the purpose `orders.read` (as the Transaction Token
//! Service would issue it), prints the command that runs `mcp-agent`, and serves until Ctrl-C.
//!
//! Run with `cargo run -p wimse-examples --bin mcp-tools` (listens on 127.0.0.1:8790; another
//! address as the argument), then the `mcp-agent` command it prints.

use wimse_examples::Demo;
use wimse_examples::mcp::{AGENTS, router};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8790".to_owned());
    let demo = Demo::new("mcp")?;
    let listener = tokio::net::TcpListener::bind(&address).await?;
    let host = listener.local_addr()?.to_string();
    let origin = format!("http://{host}");
    let planner = format!("{AGENTS}/planner");
    demo.credentials(&planner)?;
    demo.txn_token("alice.txn", "alice", "orders.read", &[&planner])?;

    println!(
        "mcp-tools: serving MCP on {origin}/mcp (search needs orders.read, book orders.purchase, refund orders.refund)"
    );
    println!("mcp-agent: cargo run -p wimse-examples --bin mcp-agent -- {origin}/mcp {}", demo.dir().display());
    let app = router(demo.txn_verifier(&origin)?, host)?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
