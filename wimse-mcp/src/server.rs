//! Per-tool authorization for an MCP server whose streamable HTTP transport sits behind
//! [`WimseLayer`](https://docs.rs/wimse-tower/latest/wimse_tower/struct.WimseLayer.html).
//!
//! The layer proves who calls; [`McpToolGuardLayer`] reads each posted JSON-RPC message and,
//! for a `tools/call`, decides with the [`Policy`] of that tool (the action is `tool:<name>`, so
//! a Cedar policy writes `action == Action::"tool:search"`) before the MCP server sees it. The
//! tool then reads the verified caller and its transaction with [`verified_caller`].
//!
//! What is refused, each with its own reason (a JSON-RPC error whose `data.reason` is the
//! [`ErrorKind`]'s code, with the kind's HTTP status):
//! - a body that is not one JSON-RPC request object read unambiguously (a batch, a repeated
//!   `method` or `name`, an `Mcp-Method`/`Mcp-Name` header naming something else):
//!   `mcp_request_malformed`; a body over the limit: `body_too_large`;
//! - a `tools/call` without a tool name: `mcp_tool_name_missing`; a name over 128 bytes or
//!   outside `A-Z a-z 0-9 _ - .`: `mcp_tool_name_invalid`;
//! - a tool no policy names, or whose policy refuses the caller: the policy's own reason
//!   (`policy_denied`, `txn_scope_denied`, `txn_delegation_denied`…);
//! - `tasks/*` (a task is reached by its id alone, whoever asks): `policy_denied`;
//! - a body slower than the deadline (10 s): `body_timeout`.
//!
//! Mount the MCP service on its own route (axum's `route_service`), not under `nest_service`:
//! a nested service sees its path without the prefix, and policies on paths would see another
//! path than the one `WimseLayer` verified.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full, Limited};
use serde::Deserialize;
use tower_layer::Layer;
use tower_service::Service;
use wimse_core::server::caller::VerifiedCaller;
use wimse_core::server::policy::Policy;
use wimse_core::{Answer, Error, ErrorKind};

/// The longest tool name accepted, in bytes (the MCP specification's bound).
pub const MAX_TOOL_NAME: usize = 128;

/// The largest MCP message body the guard reads by default (1 MiB).
pub const DEFAULT_BODY_LIMIT: usize = 1 << 20;

/// How long the guard waits for a body by default (a slow sender holds a buffer no longer).
pub const DEFAULT_BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// The header a streamable HTTP client may repeat a request's method in (MCP 2026-07-28).
const MCP_METHOD_HEADER: &str = "mcp-method";
/// The header a streamable HTTP client may repeat a tool call's name in (MCP 2026-07-28).
const MCP_NAME_HEADER: &str = "mcp-name";

/// The policy of each tool: a tool without one (and without [`others`](Self::others)) is
/// refused to every caller.
#[derive(Debug, Clone, Default)]
pub struct ToolPolicies {
    tools: HashMap<String, Policy>,
    others: Option<Policy>,
}

impl ToolPolicies {
    /// No tool allowed to anyone.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decides calls of the tool `name` with `policy`.
    pub fn tool(mut self, name: impl Into<String>, policy: Policy) -> Self {
        self.tools.insert(name.into(), policy);
        self
    }

    /// Decides calls of tools without a policy of their own with `policy` (for example one
    /// Cedar policy set for every tool).
    pub fn others(mut self, policy: Policy) -> Self {
        self.others = Some(policy);
        self
    }

    /// Whether `caller` may call the tool `name` at `path`: the tool's policy decides with the
    /// action `tool:<name>`. `name` must be a valid tool name (see [`check_tool_name`]).
    pub fn check(&self, caller: &VerifiedCaller, name: &str, path: &str) -> wimse_core::Result<()> {
        check_tool_name(name)?;
        let Some(policy) = self.tools.get(name).or(self.others.as_ref()) else {
            return Err(Error::with_detail(ErrorKind::PolicyDenied, format!("no policy allows the tool `{name}`")));
        };
        policy.check_request(caller, &format!("tool:{name}"), path)
    }

    /// The policy that decides on the tool `name`, if any (its own, else `others`).
    pub fn policy_of(&self, name: &str) -> Option<&Policy> {
        self.tools.get(name).or(self.others.as_ref())
    }
}

/// Checks a tool name: 1 to [`MAX_TOOL_NAME`] bytes of `A-Z a-z 0-9 _ - .` (ASCII only, so a
/// policy's name and a look-alike never differ invisibly).
pub fn check_tool_name(name: &str) -> wimse_core::Result<()> {
    let valid = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.');
    if name.is_empty() || name.len() > MAX_TOOL_NAME || !name.bytes().all(valid) {
        let shown: String = name.chars().take(32).collect();
        let detail = format!("tool name of {} bytes, starting {shown:?}", name.len());
        return Err(Error::with_detail(ErrorKind::McpToolNameInvalid, detail));
    }
    Ok(())
}

/// What the guard read from a posted message.
#[derive(Debug, PartialEq)]
enum Message {
    /// A `tools/call` of this tool.
    ToolCall { id: serde_json::Value, name: String },
    /// Any other request or notification (decided by the layer's policy alone).
    Other { id: serde_json::Value, method: Option<String> },
}

/// The members the guard decides on. A repeated member is an error here, as in the MCP
/// server's own parsing, so both read the same method and name.
#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    id: serde_json::Value,
    method: Option<String>,
}

#[derive(Deserialize)]
struct ToolCallEnvelope {
    params: Option<ToolCallParams>,
}

/// A tool call's `params`: an object only (serde's derived structs would also take an array,
/// by position), whose `name` appears at most once.
struct ToolCallParams {
    name: Option<serde_json::Value>,
}

impl<'de> Deserialize<'de> for ToolCallParams {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = ToolCallParams;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ToolCallParams, A::Error> {
                let mut name = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "name" {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    } else if name.is_some() {
                        return Err(serde::de::Error::duplicate_field("name"));
                    } else {
                        name = Some(map.next_value()?);
                    }
                }
                Ok(ToolCallParams { name })
            }
        }
        deserializer.deserialize_map(Members)
    }
}

fn malformed(detail: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::with_detail(ErrorKind::McpRequestMalformed, detail)
}

/// Reads a posted JSON-RPC message and, for a tool call, its tool name (checked).
fn read_message(body: &[u8], headers: &HeaderMap) -> Result<Message, (serde_json::Value, Error)> {
    let null = serde_json::Value::Null;
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        return Err((null, malformed("JSON-RPC batches are not accepted (MCP removed them)")));
    }
    let envelope: Envelope = serde_json::from_slice(body)
        .map_err(|e| (null.clone(), malformed(format!("not a JSON-RPC request object: {e}"))))?;
    let id = envelope.id;
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    if let Some(claimed) = header(MCP_METHOD_HEADER)
        && Some(claimed) != envelope.method.as_deref()
    {
        return Err((id, malformed("the Mcp-Method header names another method than the body")));
    }
    if envelope.method.as_deref() != Some("tools/call") {
        if header(MCP_NAME_HEADER).is_some() && envelope.method.is_none() {
            return Err((id, malformed("an Mcp-Name header on a message without a method")));
        }
        return Ok(Message::Other { id, method: envelope.method });
    }
    let call: ToolCallEnvelope = serde_json::from_slice(body)
        .map_err(|e| (id.clone(), malformed(format!("the tool call's params are unreadable: {e}"))))?;
    let name = match call.params.and_then(|p| p.name) {
        Some(serde_json::Value::String(name)) => name,
        Some(_) => return Err((id, Error::with_detail(ErrorKind::McpToolNameMissing, "params.name is not a string"))),
        None => return Err((id, Error::with_detail(ErrorKind::McpToolNameMissing, "params.name is absent"))),
    };
    check_tool_name(&name).map_err(|e| (id.clone(), e))?;
    if let Some(claimed) = header(MCP_NAME_HEADER)
        && claimed != name
    {
        return Err((id, malformed("the Mcp-Name header names another tool than the body")));
    }
    Ok(Message::ToolCall { id, name })
}

/// The JSON-RPC error code of a refusal: invalid request, invalid params, or (for a policy's
/// refusal) an implementation-defined server error.
fn json_rpc_code(kind: &ErrorKind) -> i64 {
    match kind {
        ErrorKind::McpRequestMalformed | ErrorKind::BodyTooLarge => -32600,
        ErrorKind::McpToolNameMissing | ErrorKind::McpToolNameInvalid => -32602,
        _ => -32001,
    }
}

/// A refusal as an MCP client reads it: a JSON-RPC error answering `id`, with the kind's HTTP
/// status; `data.reason` is the failed check.
fn refusal<B>(id: serde_json::Value, error: &Error) -> Response<Either<B, Full<Bytes>>> {
    let status = match error.kind().answer() {
        Answer::Status(code) => StatusCode::from_u16(code).unwrap_or(StatusCode::FORBIDDEN),
        Answer::Credential => StatusCode::UNAUTHORIZED,
    };
    let mut message = error.kind().description().into_owned();
    if let Some(detail) = error.detail() {
        message = format!("{message}: {detail}");
    }
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {
            "code": json_rpc_code(error.kind()),
            "message": message,
            "data": { "reason": error.reason(), "status": status.as_u16() },
        },
    });
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

/// Refuses `tools/call` messages their tool's policy does not allow, and messages it cannot
/// read unambiguously; place it inside `WimseLayer` (which puts the [`VerifiedCaller`] into
/// the request), in front of the MCP server.
#[derive(Debug, Clone)]
pub struct McpToolGuardLayer {
    policies: Arc<ToolPolicies>,
    body_limit: usize,
    body_deadline: std::time::Duration,
}

impl McpToolGuardLayer {
    /// Guards with `policies`, reading bodies up to [`DEFAULT_BODY_LIMIT`].
    pub fn new(policies: ToolPolicies) -> Self {
        Self { policies: Arc::new(policies), body_limit: DEFAULT_BODY_LIMIT, body_deadline: DEFAULT_BODY_DEADLINE }
    }

    /// How long a body may take to arrive (else `body_timeout`, 408).
    pub fn body_deadline(mut self, deadline: std::time::Duration) -> Self {
        self.body_deadline = deadline;
        self
    }

    /// The largest body read (a larger one is refused with `body_too_large`, 413).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }
}

impl<S> Layer<S> for McpToolGuardLayer {
    type Service = McpToolGuard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        McpToolGuard {
            inner,
            policies: self.policies.clone(),
            body_limit: self.body_limit,
            body_deadline: self.body_deadline,
        }
    }
}

/// The service made by [`McpToolGuardLayer`]. It hands the MCP server the body it read.
#[derive(Debug, Clone)]
pub struct McpToolGuard<S> {
    inner: S,
    policies: Arc<ToolPolicies>,
    body_limit: usize,
    body_deadline: std::time::Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B, ResBody> Service<Request<B>> for McpToolGuard<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<Either<ResBody, Full<Bytes>>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The clone that was made ready is the one called (tower's rule for moving a service
        // into a future).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let policies = self.policies.clone();
        let (limit, deadline) = (self.body_limit, self.body_deadline);
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let caller = parts.extensions.get::<VerifiedCaller>().cloned();
            let read = tokio::time::timeout(deadline, Limited::new(body, limit).collect()).await;
            let body = match read {
                Ok(Ok(collected)) => collected.to_bytes(),
                Err(_) => {
                    let error =
                        Error::with_detail(ErrorKind::BodyTimeout, format!("no whole MCP message within {deadline:?}"));
                    return Ok(refuse(serde_json::Value::Null, caller.as_ref(), &error));
                }
                Ok(Err(error)) => {
                    let error = if error.is::<http_body_util::LengthLimitError>() {
                        Error::with_detail(ErrorKind::BodyTooLarge, format!("an MCP message over {limit} bytes"))
                    } else {
                        malformed("the body could not be read")
                    };
                    return Ok(refuse(serde_json::Value::Null, caller.as_ref(), &error));
                }
            };
            if parts.method == Method::POST {
                let decision = match read_message(&body, &parts.headers) {
                    Ok(Message::ToolCall { id, name }) => match &caller {
                        Some(caller) => {
                            // Recorded as a decision on the tool (the layer recorded the POST).
                            let decided = policies.check(caller, &name, parts.uri.path());
                            let action = format!("tool:{name}");
                            // The tool's policy is named when it decided (a name refused before
                            // it ran is not its decision).
                            let by = policies.policy_of(&name).filter(|_| check_tool_name(&name).is_ok());
                            let recorded = match by {
                                Some(policy) => {
                                    caller.audit_decision_by(&action, policy.name(), decided.as_ref().err())
                                }
                                None => caller.audit_decision(&action, decided.as_ref().err()),
                            };
                            // An allow the audit log refuses to record (`WhenFull::Refuse`) is refused.
                            match decided.and(recorded) {
                                Ok(()) => Ok(Some(name)),
                                Err(error) => return Ok(refusal(id, &error)),
                            }
                        }
                        // Misplaced (outside WimseLayer, or behind an optional one): closed.
                        None => Err((
                            id,
                            Error::with_detail(
                                ErrorKind::InvalidConfiguration,
                                "McpToolGuardLayer has no verified caller: place it inside a WimseLayer that is not optional",
                            ),
                        )),
                    },
                    // Tasks are reached by their id alone, whoever asks: a task of a tool the
                    // caller may not call would hand over its result. Not served.
                    Ok(Message::Other { id, method: Some(method) }) if method.starts_with("tasks/") => Err((
                        id,
                        Error::with_detail(
                            ErrorKind::PolicyDenied,
                            format!("`{method}`: MCP tasks are not served behind McpToolGuardLayer"),
                        ),
                    )),
                    Ok(Message::Other { method, .. }) => {
                        tracing::trace!(
                            method = method.as_deref().unwrap_or("(response)"),
                            "wimse: MCP message passed"
                        );
                        Ok(None)
                    }
                    Err(refused) => Err(refused),
                };
                match decision {
                    Ok(Some(tool)) => {
                        tracing::debug!(target: "wimse::audit", tool, caller = %caller.as_ref().map(|c| c.id().to_string()).unwrap_or_default(), "wimse: MCP tool call allowed");
                    }
                    Ok(None) => {}
                    Err((id, error)) => return Ok(refuse(id, caller.as_ref(), &error)),
                }
            }
            let response = inner.call(Request::from_parts(parts, Full::new(body))).await?;
            Ok(response.map(Either::Left))
        })
    }
}

/// Logs a refusal as every adapter does and answers it.
fn refuse<B>(
    id: serde_json::Value,
    caller: Option<&VerifiedCaller>,
    error: &Error,
) -> Response<Either<B, Full<Bytes>>> {
    match caller {
        Some(caller) => caller.audit_refused(error),
        None => wimse_core::server::audit::rejected("none", None, error),
    }
    refusal(id, error)
}

/// The verified caller of the MCP request a tool answers (its identifier, proof and
/// [`transaction`](VerifiedCaller::transaction): the user and the agents acting for them), from
/// the HTTP request the streamable HTTP server hands to each tool as
/// `Extension<http::request::Parts>`; `None` when the server is not behind `WimseLayer`.
pub fn verified_caller(parts: &http::request::Parts) -> Option<&VerifiedCaller> {
    parts.extensions.get::<VerifiedCaller>()
}

/// A streamable HTTP server configuration for running behind `WimseLayer`: stateless (every
/// request proves itself, so there is no session to hijack and any replica answers) with JSON
/// answers, accepting the `hosts` the service is reached at (`host` or `host:port`).
pub fn server_config(
    hosts: impl IntoIterator<Item = impl Into<String>>,
) -> rmcp::transport::streamable_http_server::StreamableHttpServerConfig {
    rmcp::transport::streamable_http_server::StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_allowed_hosts(hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(body: &str) -> Result<Message, ErrorKind> {
        read_message(body.as_bytes(), &HeaderMap::new()).map_err(|(_, e)| e.kind().clone())
    }

    #[test]
    fn a_tool_call_is_read_with_its_id_and_name() {
        let message =
            read(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search","arguments":{}}}"#);
        assert_eq!(message, Ok(Message::ToolCall { id: serde_json::json!(7), name: "search".into() }));
        let other = read(r#"{"jsonrpc":"2.0","id":"a","method":"tools/list"}"#);
        assert_eq!(other, Ok(Message::Other { id: serde_json::json!("a"), method: Some("tools/list".into()) }));
    }

    #[test]
    fn ambiguous_messages_are_refused_as_malformed() {
        for body in [
            r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search"}}]"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{"name":"x"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","name":"delete"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["search"]}"#,
            r#""tools/call""#,
            r#"{"method":7}"#,
            "",
            "{",
        ] {
            assert_eq!(read(body), Err(ErrorKind::McpRequestMalformed), "{body}");
        }
    }

    #[test]
    fn a_tool_name_is_required_and_bounded() {
        let call = |name: &str| format!(r#"{{"id":1,"method":"tools/call","params":{{"name":{name}}}}}"#);
        assert_eq!(read(r#"{"id":1,"method":"tools/call"}"#), Err(ErrorKind::McpToolNameMissing));
        assert_eq!(read(r#"{"id":1,"method":"tools/call","params":{}}"#), Err(ErrorKind::McpToolNameMissing));
        assert_eq!(read(&call("5")), Err(ErrorKind::McpToolNameMissing));
        assert_eq!(read(&call("null")), Err(ErrorKind::McpToolNameMissing));
        let longest = "a".repeat(MAX_TOOL_NAME);
        assert!(read(&call(&format!("\"{longest}\""))).is_ok());
        for bad in
            [format!("\"{longest}b\""), "\"\"".into(), "\"se arch\"".into(), "\"séarch\"".into(), "\"a/b\"".into()]
        {
            assert_eq!(read(&call(&bad)), Err(ErrorKind::McpToolNameInvalid), "{bad}");
        }
        assert!(read(&call("\"get_weather-v2.1\"")).is_ok());
    }

    #[test]
    fn mcp_headers_must_agree_with_the_body() {
        let body = br#"{"id":1,"method":"tools/call","params":{"name":"search"}}"#;
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.insert(*name, http::HeaderValue::from_static(value));
            }
            read_message(body, &headers).map_err(|(_, e)| e.kind().clone())
        };
        assert!(with(&[("mcp-method", "tools/call"), ("mcp-name", "search")]).is_ok());
        assert_eq!(with(&[("mcp-name", "read_only")]), Err(ErrorKind::McpRequestMalformed));
        assert_eq!(with(&[("mcp-method", "tools/list")]), Err(ErrorKind::McpRequestMalformed));
    }

    #[test]
    fn a_refusal_is_a_json_rpc_error_with_the_reason_and_status() {
        let error = Error::with_detail(ErrorKind::McpToolNameInvalid, "too long");
        let response = refusal::<Full<Bytes>>(serde_json::json!(3), &error);
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let Either::Right(body) = response.into_body() else { panic!("a refusal body") };
        let bytes = futures_executor_block_on(body);
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["id"], 3);
        assert_eq!(value["error"]["code"], -32602);
        assert_eq!(value["error"]["data"]["reason"], "mcp_tool_name_invalid");
        assert!(value["error"]["message"].as_str().unwrap().ends_with("too long"));
    }

    /// A `Full` body is ready at once: its one frame is read without a runtime.
    fn futures_executor_block_on(body: Full<Bytes>) -> Bytes {
        let mut body = std::pin::pin!(body);
        let waker = std::task::Waker::noop();
        match body.as_mut().poll_frame(&mut Context::from_waker(waker)) {
            Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
            _ => Bytes::new(),
        }
    }
}
