//! An rmcp MCP server behind `WimseLayer` and `McpToolGuardLayer`, called over real HTTP by an
//! rmcp client whose requests `wimse-reqwest` signs: an agent acting for a user calls the tools
//! its delegation covers, and every other request is refused with its own reason.

use axum::Router;
use reqwest_middleware::ClientBuilder;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolRequestParams, ClientConfig};
use rmcp::service::ServiceError;
use rmcp::transport::streamable_http_server::StreamableHttpService;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::{ServiceExt, schemars, tool, tool_router};
use wimse_core::prelude::*;
use wimse_core::protocol::txn::TxnToken;
use wimse_mcp::{McpToolGuardLayer, SignedMcpClient, ToolPolicies, server_config, verified_caller};
use wimse_reqwest::{ProofMode, WimseSignMiddleware};
use wimse_testkit::{Capture, Deployment};

const AGENT: &str = "spiffe://prod.example/agents/planner";
const OTHER_AGENT: &str = "spiffe://prod.example/agents/stranger";

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct Query {
    city: String,
}

#[derive(Debug, Clone)]
struct Travel;

#[tool_router(server_handler)]
impl Travel {
    #[tool(description = "Finds flights to a city")]
    fn search(
        &self,
        Parameters(Query { city }): Parameters<Query>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> String {
        answer("search", &city, &parts)
    }

    #[tool(description = "Books a flight to a city")]
    fn book(
        &self,
        Parameters(Query { city }): Parameters<Query>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> String {
        answer("book", &city, &parts)
    }
}

/// What a tool saw of its caller: "search Oslo: agent X for user Y (chain A > B)".
fn answer(tool: &str, city: &str, parts: &http::request::Parts) -> String {
    let Some(caller) = verified_caller(parts) else { return format!("{tool} {city}: no verified caller") };
    match caller.transaction() {
        Some(txn) => {
            let chain: Vec<String> = txn.actors().iter().map(ToString::to_string).collect();
            format!("{tool} {city}: agent {} for user {} (chain {})", caller.id(), txn.subject(), chain.join(" > "))
        }
        None => format!("{tool} {city}: {} for itself", caller.id()),
    }
}

/// Serves the tools at `/mcp` behind `guard`, and behind a `WimseLayer` with the verifier
/// `verifier` makes for the server's base URL (none: a misplaced guard).
async fn serve_tools(verifier: impl FnOnce(&str) -> Option<Verifier>, guard: McpToolGuardLayer) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let hosts = [listener.local_addr().unwrap().to_string()];
    let mcp = StreamableHttpService::new(|| Ok(Travel), NeverSessionManager::default().into(), server_config(hosts));
    let app = match verifier(&base) {
        Some(verifier) => {
            let layers = tower::ServiceBuilder::new().layer(wimse_tower::WimseLayer::new(verifier)).layer(guard);
            Router::new().route_service("/mcp", layers.service(mcp))
        }
        None => Router::new().route_service("/mcp", tower::ServiceBuilder::new().layer(guard).service(mcp)),
    };
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

/// Serves the tools behind the WIMSE layer (Txn-Tokens validated) and the guard: `search`
/// needs a delegated transaction with the purpose `travel:read`, `book` one with `travel:book`.
async fn serve(deployment: &Deployment) -> String {
    let delegated = |scope: &str| {
        Policy::named(scope)
            .allow(Rule::path_prefix("spiffe://prod.example/agents").unwrap())
            .require(Rule::txn_delegated())
            .require(Rule::txn_scope(scope))
    };
    let tools = ToolPolicies::new().tool("search", delegated("travel:read")).tool("book", delegated("travel:book"));
    serve_tools(|base| Some(deployment.txn_verifier(base, false)), McpToolGuardLayer::new(tools)).await
}

type Agent = rmcp::service::RunningService<rmcp::RoleClient, ClientConfig>;

/// An MCP client signing as `id` (with WPTs), carrying `txn` to the server's origin.
async fn agent(deployment: &Deployment, base: &str, id: &str, txn: Option<String>) -> Agent {
    agent_with(WimseSignMiddleware::new(deployment.signer(id)), base, txn).await
}

async fn agent_with(signing: WimseSignMiddleware, base: &str, txn: Option<String>) -> Agent {
    let mut client = SignedMcpClient::from_middleware(signing.trust_domain_origins([base])).unwrap();
    if let Some(txn) = txn {
        client = client.txn_token(TxnToken(txn));
    }
    ClientConfig::default().serve(client.transport(format!("{base}/mcp"))).await.expect("the MCP client starts")
}

fn call(tool: &str, city: &str) -> CallToolRequestParams {
    CallToolRequestParams::new(tool.to_owned())
        .with_arguments(serde_json::json!({ "city": city }).as_object().cloned().unwrap())
}

fn text(result: &rmcp::model::CallToolResult) -> String {
    result.content.iter().filter_map(|c| c.as_text().map(|t| t.text.clone())).collect()
}

/// The `data.reason` of a refused call.
fn reason(error: &ServiceError) -> String {
    match error {
        ServiceError::McpError(data) => {
            data.data.as_ref().and_then(|d| d["reason"].as_str()).unwrap_or_default().to_owned()
        }
        other => format!("not a JSON-RPC error: {other}"),
    }
}

#[tokio::test]
async fn an_agent_calls_the_tools_its_delegation_covers_and_no_other() {
    let deployment = Deployment::new();
    let base = serve(&deployment).await;
    let txn = deployment.delegated_txn_token("user:alice", "travel:read", &[AGENT]);
    let client = agent(&deployment, &base, AGENT, Some(txn)).await;

    let tools = client.list_tools(Default::default()).await.expect("tools/list passes the guard");
    let mut names: Vec<_> = tools.tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(names, ["book", "search"]);

    let found = client.call_tool(call("search", "Oslo")).await.expect("search is delegated");
    assert_eq!(text(&found), format!("search Oslo: agent {AGENT} for user user:alice (chain {AGENT})"));

    // Alice's delegation is for reading: booking is refused before the tool runs.
    let refused = client.call_tool(call("book", "Oslo")).await.expect_err("book is not delegated");
    assert_eq!(reason(&refused), "txn_scope_denied", "{refused}");
    // A tool nobody configured.
    let unknown = client.call_tool(call("delete_everything", "Oslo")).await.expect_err("no policy");
    assert_eq!(reason(&unknown), "policy_denied", "{unknown}");
    let _ = client.cancel().await;
}

#[tokio::test]
async fn an_agent_signing_its_requests_with_http_signatures_calls_tools_too() {
    let deployment = Deployment::new();
    let base = serve(&deployment).await;
    let txn = deployment.delegated_txn_token("user:alice", "travel:read", &[AGENT]);
    let signing = WimseSignMiddleware::new(deployment.signer(AGENT)).http_signatures();
    let client = agent_with(signing, &base, Some(txn)).await;
    let found = client.call_tool(call("search", "Lima")).await.expect("search is delegated");
    assert!(text(&found).starts_with(&format!("search Lima: agent {AGENT} for user user:alice")), "{}", text(&found));
    let refused = client.call_tool(call("book", "Lima")).await.expect_err("book is not delegated");
    assert_eq!(reason(&refused), "txn_scope_denied", "{refused}");
    let _ = client.cancel().await;
}

#[tokio::test]
async fn without_a_delegation_or_as_another_agent_the_tools_are_refused() {
    let deployment = Deployment::new();
    let base = serve(&deployment).await;
    // The agent on its own account, without a user's transaction.
    let alone = agent(&deployment, &base, AGENT, None).await;
    let refused = alone.call_tool(call("search", "Oslo")).await.expect_err("no transaction");
    assert_eq!(reason(&refused), "missing_txn_token", "{refused}");
    let _ = alone.cancel().await;
    // The user's own transaction, with no agent acting for them in it.
    let own = agent(&deployment, &base, AGENT, Some(deployment.txn_token("user:alice", "travel:read", false))).await;
    let refused = own.call_tool(call("search", "Oslo")).await.expect_err("not delegated");
    assert_eq!(reason(&refused), "txn_delegation_denied", "{refused}");
    let _ = own.cancel().await;
    // A workload outside the agents' path, with a transaction naming it as the actor.
    let stranger = "spiffe://prod.example/batch";
    let txn = deployment.delegated_txn_token("user:alice", "travel:read", &[stranger]);
    let outsider = agent(&deployment, &base, stranger, Some(txn)).await;
    let refused = outsider.call_tool(call("search", "Oslo")).await.expect_err("not an agent");
    assert_eq!(reason(&refused), "policy_denied", "{refused}");
    let _ = outsider.cancel().await;
    // An agent whose token names another agent as the actor is refused too: the chain, not
    // the caller, says who acts.
    let txn = deployment.delegated_txn_token("user:alice", "travel:read", &[OTHER_AGENT]);
    let borrowed = agent(&deployment, &base, AGENT, Some(txn)).await;
    let found =
        borrowed.call_tool(call("search", "Oslo")).await.expect("the policy does not tie the chain to the caller");
    assert!(text(&found).contains(&format!("chain {OTHER_AGENT}")), "{}", text(&found));
    let _ = borrowed.cancel().await;
}

/// Posts `body` to the MCP endpoint with `headers` and returns the status and the JSON body.
async fn post(base: &str, headers: &http::HeaderMap, body: &str) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/mcp"))
        .headers(headers.clone())
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

/// The header fields `id` signs a POST of `body` to the MCP endpoint with (a WPT), carrying
/// `txn`; captured, not sent.
async fn signed(deployment: &Deployment, base: &str, id: &str, txn: &str, body: &str) -> http::HeaderMap {
    let capture = Capture::default();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(WimseSignMiddleware::new(deployment.signer(id)).trust_domain_origins([base]))
        .with(capture.clone())
        .build();
    let url = format!("{base}/mcp");
    let _ = client
        .post(url)
        .body(body.to_owned())
        .with_extension(TxnToken(txn.to_owned()))
        .with_extension(ProofMode::Wpt)
        .send()
        .await;
    capture.take().expect("captured").headers
}

#[tokio::test]
async fn unsigned_replayed_and_malformed_requests_are_refused() {
    let deployment = Deployment::new();
    let base = serve(&deployment).await;
    let txn = deployment.delegated_txn_token("user:alice", "travel:read", &[AGENT]);
    let search =
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","arguments":{"city":"Rome"}}}"#;

    // Unsigned: the layer answers 401 before the guard or the tools see anything; an rmcp
    // client without the middleware cannot even start.
    let (status, problem) = post(&base, &http::HeaderMap::new(), search).await;
    assert_eq!(status, 401, "{problem}");
    let plain = SignedMcpClient::new(ClientBuilder::new(reqwest::Client::new()).build());
    let started = ClientConfig::default().serve(plain.transport(format!("{base}/mcp"))).await;
    let Err(error) = started.map(drop) else { panic!("an unsigned client is refused") };
    let error = error.to_string();
    assert!(error.contains("401"), "{error}");

    // Signed once, sent twice: the second is a replay.
    let headers = signed(&deployment, &base, AGENT, &txn, search).await;
    let (status, first) = post(&base, &headers, search).await;
    assert_eq!(status, 200, "{first}");
    assert!(
        first["result"]["content"][0]["text"].as_str().unwrap_or_default().contains("for user user:alice"),
        "{first}"
    );
    let (status, replayed) = post(&base, &headers, search).await;
    assert_eq!(status, 401, "{replayed}");
    assert_eq!(replayed["reason"], "replayed_proof", "{replayed}");

    // Properly signed, but not a tool call the guard can read: each with its own reason.
    let cases = [
        (
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"arguments":{}}}"#.to_owned(),
            400,
            "mcp_tool_name_missing",
        ),
        (
            format!(r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"name":"{}"}}}}"#, "s".repeat(129)),
            400,
            "mcp_tool_name_invalid",
        ),
        (
            r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"search","name":"book"}}"#.to_owned(),
            400,
            "mcp_request_malformed",
        ),
        (
            r#"[{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"book"}}]"#.to_owned(),
            400,
            "mcp_request_malformed",
        ),
        (
            r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"book"}}"#.to_owned(),
            403,
            "txn_scope_denied",
        ),
    ];
    for (body, status, reason) in cases {
        let headers = signed(&deployment, &base, AGENT, &txn, &body).await;
        let (got, answer) = post(&base, &headers, &body).await;
        assert_eq!((got, answer["error"]["data"]["reason"].as_str()), (status, Some(reason)), "{body}: {answer}");
        assert!(answer["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{answer}");
    }
    // An Mcp-Name header naming another tool than the body (a router deciding on the header
    // would see `search`).
    let book = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"book","arguments":{"city":"Rome"}}}"#;
    let mut headers = signed(&deployment, &base, AGENT, &txn, book).await;
    headers.insert("mcp-name", http::HeaderValue::from_static("search"));
    let (status, answer) = post(&base, &headers, book).await;
    assert_eq!((status, answer["error"]["data"]["reason"].as_str()), (400, Some("mcp_request_malformed")), "{answer}");
}

#[tokio::test]
async fn an_oversized_body_is_refused_before_it_is_parsed() {
    let deployment = Deployment::new();
    let guard = McpToolGuardLayer::new(ToolPolicies::new().others(Policy::allow_all())).body_limit(256);
    let base = serve_tools(|base| Some(deployment.txn_verifier(base, false)), guard).await;
    let txn = deployment.delegated_txn_token("user:alice", "travel:read", &[AGENT]);
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"search","arguments":{{"city":"{}"}}}}}}"#,
        "x".repeat(300)
    );
    let headers = signed(&deployment, &base, AGENT, &txn, &body).await;
    let (status, answer) = post(&base, &headers, &body).await;
    assert_eq!((status, answer["error"]["data"]["reason"].as_str()), (413, Some("body_too_large")), "{answer}");
    // Within the limit, the same tool answers (any caller: `others` allows all).
    let small =
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"search","arguments":{"city":"Oslo"}}}"#;
    let headers = signed(&deployment, &base, AGENT, &txn, small).await;
    let (status, answer) = post(&base, &headers, small).await;
    assert_eq!(status, 200, "{answer}");
}

/// One Cedar policy set decides every tool (feature `cedar`): the action is `tool:<name>`, and
/// the context has the user's delegation; the deciding policy is named in the refusal.
#[cfg(feature = "cedar")]
#[tokio::test]
async fn cedar_policies_decide_tool_calls_by_name() {
    use wimse_core::server::cedar::CedarPolicies;
    let deployment = Deployment::new();
    let policies = r#"
        @id("agents-search-for-readers")
        permit(principal in TrustDomain::"spiffe://prod.example", action == Action::"tool:search", resource)
        when { context.delegated && context.txn_scope.contains("travel:read") && context.path == "/mcp" };
        @id("no-booking-by-the-planner")
        forbid(principal == Workload::"spiffe://prod.example/agents/planner", action == Action::"tool:book", resource);
        @id("agents-book-for-buyers")
        permit(principal in TrustDomain::"spiffe://prod.example", action == Action::"tool:book", resource)
        when { context.delegated && context.txn_scope.contains("travel:book") };
    "#;
    let tools =
        ToolPolicies::new().others(Policy::cedar(CedarPolicies::new("tools", "travel", policies, None).unwrap()));
    let base = serve_tools(|base| Some(deployment.txn_verifier(base, false)), McpToolGuardLayer::new(tools)).await;

    let txn = deployment.delegated_txn_token("user:alice", "travel:read travel:book", &[AGENT]);
    let client = agent(&deployment, &base, AGENT, Some(txn)).await;
    let found = client.call_tool(call("search", "Oslo")).await.expect("permitted by agents-search-for-readers");
    assert!(text(&found).contains("for user user:alice"), "{}", text(&found));
    let refused = client.call_tool(call("book", "Oslo")).await.expect_err("forbidden for the planner");
    assert_eq!(reason(&refused), "policy_denied", "{refused}");
    assert!(refused.to_string().contains("no-booking-by-the-planner"), "{refused}");
    let _ = client.cancel().await;
    // Another agent, the same delegation: booking is permitted.
    let txn = deployment.delegated_txn_token("user:alice", "travel:book", &[OTHER_AGENT]);
    let booker = agent(&deployment, &base, OTHER_AGENT, Some(txn)).await;
    booker.call_tool(call("book", "Oslo")).await.expect("permitted by agents-book-for-buyers");
    let refused = booker.call_tool(call("search", "Oslo")).await.expect_err("no read delegation");
    assert_eq!(reason(&refused), "policy_denied", "{refused}");
    let _ = booker.cancel().await;
}

#[tokio::test]
async fn a_guard_without_a_verified_caller_fails_closed_and_slow_bodies_time_out() {
    // A misplaced guard: no WimseLayer in front.
    let guard = McpToolGuardLayer::new(ToolPolicies::new().others(Policy::allow_all()))
        .body_deadline(std::time::Duration::from_millis(300));
    let base = serve_tools(|_| None, guard).await;
    let call =
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","arguments":{"city":"Oslo"}}}"#;
    let (status, answer) = post(&base, &http::HeaderMap::new(), call).await;
    assert_eq!((status, answer["error"]["data"]["reason"].as_str()), (500, Some("invalid_configuration")), "{answer}");

    // A body announced and never sent: the guard stops waiting at its deadline.
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let authority = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(authority).await.unwrap();
    let head = format!(
        "POST /mcp HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\ncontent-length: 100\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 12];
    tokio::time::timeout(std::time::Duration::from_secs(20), stream.read_exact(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(&answer[9..12], b"408", "{}", String::from_utf8_lossy(&answer));
}

#[tokio::test]
async fn mcp_tasks_are_not_served_behind_the_guard() {
    let deployment = Deployment::new();
    let base = serve(&deployment).await;
    let txn = deployment.delegated_txn_token("user:alice", "travel:read", &[AGENT]);
    for method in ["tasks/get", "tasks/result", "tasks/cancel", "tasks/list"] {
        let body = format!(r#"{{"jsonrpc":"2.0","id":9,"method":"{method}","params":{{"taskId":"0b2f"}}}}"#);
        let headers = signed(&deployment, &base, AGENT, &txn, &body).await;
        let (status, answer) = post(&base, &headers, &body).await;
        assert_eq!(
            (status, answer["error"]["data"]["reason"].as_str()),
            (403, Some("policy_denied")),
            "{method}: {answer}"
        );
    }
}

#[tokio::test]
async fn the_agent_never_follows_a_redirect_to_another_origin() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let deployment = Deployment::new();
    // Elsewhere: counts what reaches it, and whether a Txn-Token or a WIT came along.
    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let elsewhere_url = format!("http://{}/mcp", elsewhere.local_addr().unwrap());
    let reached = Arc::new(AtomicUsize::new(0));
    let counted = reached.clone();
    let catcher = axum::routing::any(move |headers: http::HeaderMap| async move {
        assert!(headers.get("txn-token").is_none() && headers.get("workload-identity-token").is_none());
        counted.fetch_add(1, Ordering::SeqCst);
        "caught"
    });
    tokio::spawn(async move { axum::serve(elsewhere, Router::new().route("/mcp", catcher)).await.unwrap() });
    // The tool server's origin answers every request with a redirect there.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let target = elsewhere_url.clone();
    let redirect = axum::routing::any(move || {
        let target = target.clone();
        async move { (http::StatusCode::TEMPORARY_REDIRECT, [(http::header::LOCATION, target)]) }
    });
    tokio::spawn(async move { axum::serve(listener, Router::new().route("/mcp", redirect)).await.unwrap() });
    let txn = deployment.delegated_txn_token("user:alice", "travel:read", &[AGENT]);
    let signing = WimseSignMiddleware::new(deployment.signer(AGENT)).trust_domain_origins([base.as_str()]);
    let client = SignedMcpClient::from_middleware(signing).unwrap().txn_token(TxnToken(txn));
    let started = ClientConfig::default().serve(client.transport(format!("{base}/mcp"))).await;
    let Err(error) = started.map(drop) else { panic!("a redirect elsewhere is not followed") };
    assert!(error.to_string().contains("307"), "{error}");
    assert_eq!(reached.load(Ordering::SeqCst), 0, "nothing reached the other origin");
}
