//! The MCP example pair on loopback: `mcp-tools` in its own process, `mcp-agent` run with the
//! command line the server prints.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// The server process, killed (and its demo directory removed) when dropped.
struct Server {
    child: Child,
    dir: Option<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[test]
fn the_agent_calls_the_tool_server_and_each_call_behaves_as_printed() {
    let child = Command::new(env!("CARGO_BIN_EXE_mcp-tools"))
        .arg("127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut server = Server { child, dir: None };
    let mut lines = BufReader::new(server.child.stdout.take().unwrap()).lines();
    let serving = lines.next().unwrap().unwrap();
    assert!(serving.starts_with("mcp-tools: serving MCP on http://127.0.0.1:"), "{serving}");
    let command = lines.next().unwrap().unwrap();
    let args: Vec<&str> = command.rsplit_once(" -- ").expect(&command).1.split(' ').collect();
    let [url, dir] = args[..] else { panic!("{command}") };
    assert!(serving.contains(url), "{serving} / {command}");
    server.dir = Some(dir.to_owned());

    let out = Command::new(env!("CARGO_BIN_EXE_mcp-agent")).args([url, dir]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
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
    let seen: Vec<String> = lines.take(1).map(|l| l.unwrap()).collect();
    assert_eq!(
        seen,
        [
            "[tools]   search flights to Oslo: agent spiffe://prod.example/agents/planner for user alice (chain spiffe://prod.example/agents/planner)"
        ]
    );
}
