//! The MCP example pair on loopback: `mcp-tools` in its own process, `mcp-agent` run with the
//! command line the server prints.

mod pair;

#[test]
fn the_agent_calls_the_tool_server_and_each_call_behaves_as_printed() {
    let mut server = pair::Server::start(env!("CARGO_BIN_EXE_mcp-tools"));
    assert!(server.first_line.starts_with("mcp-tools: serving MCP on http://127.0.0.1:"), "{}", server.first_line);
    assert!(server.first_line.contains(&server.client_args[0]), "{} / {:?}", server.first_line, server.client_args);
    let stdout = server.run_client(env!("CARGO_BIN_EXE_mcp-agent"));
    for line in [
        "tools: book, refund, search",
        "search  flights to Oslo    -> search flights to Oslo: agent spiffe://prod.example/agents/planner for user alice (chain spiffe://prod.example/agents/planner)",
        "refund  order 7d1f         -> refused: 403 txn_scope_denied",
        "unsigned client            -> ",
        "mcp-agent: every call behaved as expected",
    ] {
        assert!(stdout.contains(line), "missing `{line}` in\n{stdout}");
    }
    // The tool server printed what the tool saw, and nothing for the refused calls.
    let seen = server.lines.next().unwrap().unwrap();
    assert_eq!(
        seen,
        "[tools]   search flights to Oslo: agent spiffe://prod.example/agents/planner for user alice (chain spiffe://prod.example/agents/planner)"
    );
}
