//! An MCP client whose streamable HTTP requests are signed: [`SignedMcpClient`] sends rmcp's
//! messages through a `reqwest_middleware` client carrying `wimse-reqwest`'s `WimseMiddleware`,
//! so each POST carries the agent's WIT and a fresh proof (WPT or HTTP signature), and a
//! Txn-Token when the middleware has one.
//!
//! Refusals come back readable: a JSON-RPC error (which is how `McpToolGuardLayer` refuses a
//! tool) reaches the caller of `call_tool` as an `McpError` whose `data.reason` names the
//! failed check, whatever the HTTP status; any other failed answer becomes an error quoting the
//! status and the start of the body (where `WimseLayer`'s problem details name the reason).

use std::borrow::Cow;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use http::{HeaderName, HeaderValue, StatusCode};
use reqwest_middleware::ClientWithMiddleware;
use rmcp::model::{ClientJsonRpcMessage, JsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::{
    HttpStatusError, SseError, StreamableHttpClient, StreamableHttpClientTransportConfig, StreamableHttpError,
    StreamableHttpPostResponse, StreamableHttpResponseLimits,
};
use sse_stream::{Sse, SseStream};
use wimse_core::protocol::txn::TxnToken;

const SESSION_HEADER: &str = "mcp-session-id";
/// The fields a custom header may not set: the transport's, and the credentials, proofs and
/// Txn-Token the WIMSE middleware writes.
const RESERVED_HEADERS: &[&str] = &[
    "accept",
    "content-type",
    SESSION_HEADER,
    LAST_EVENT_ID_HEADER,
    "authorization",
    "workload-identity-token",
    "txn-token",
    "signature",
    "signature-input",
    "content-digest",
];
const LAST_EVENT_ID_HEADER: &str = "last-event-id";
const EVENT_STREAM: &str = "text/event-stream";
const JSON: &str = "application/json";

/// An rmcp streamable HTTP client over a signing `reqwest_middleware` client.
#[derive(Debug, Clone)]
pub struct SignedMcpClient {
    http: ClientWithMiddleware,
    txn: Option<TxnToken>,
}

impl SignedMcpClient {
    /// Sends through `signing` on a reqwest client that follows redirects within the origin
    /// only ([`wimse_reqwest::same_origin_redirects`]): the WIT, the Txn-Token and the tool
    /// arguments never follow a redirect to another host.
    pub fn from_middleware(signing: wimse_reqwest::WimseSignMiddleware) -> Result<Self, SignedMcpError> {
        let http = reqwest::Client::builder()
            .redirect(wimse_reqwest::same_origin_redirects())
            .build()
            .map_err(|e| SignedMcpError(e.into()))?;
        Ok(Self::new(reqwest_middleware::ClientBuilder::new(http).with(signing).build()))
    }

    /// Sends through `http` (built with `WimseSignMiddleware`, and any other middleware). Build
    /// its reqwest client with [`wimse_reqwest::same_origin_redirects`] (or no redirects):
    /// reqwest follows redirects below the middleware, and would carry the credentials and
    /// the Txn-Token along to another origin.
    pub fn new(http: ClientWithMiddleware) -> Self {
        Self { http, txn: None }
    }

    /// Carries `token` (the transaction the agent works in: the user it acts for and the
    /// chain of agents) on every request. The middleware sends it only to the origins it is
    /// told are the trust domain's (`trust_domain_origins`), and refuses the request elsewhere.
    pub fn txn_token(mut self, token: TxnToken) -> Self {
        self.txn = Some(token);
        self
    }

    /// A request of `method` to `uri`, with the Txn-Token when there is one.
    fn request(&self, method: http::Method, uri: &str) -> reqwest_middleware::RequestBuilder {
        let request = self.http.request(method, uri);
        match &self.txn {
            Some(token) => request.with_extension(token.clone()),
            None => request,
        }
    }

    /// The rmcp transport to the MCP server at `uri` (serve a client handler over it, e.g.
    /// `ClientInfo::default().serve(transport)`).
    pub fn transport(self, uri: impl Into<Arc<str>>) -> StreamableHttpClientTransport<Self> {
        StreamableHttpClientTransport::with_client(self, StreamableHttpClientTransportConfig::with_uri(uri))
    }
}

/// Why a signed MCP request failed on this side.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct SignedMcpError(#[from] reqwest_middleware::Error);

type Failure = StreamableHttpError<SignedMcpError>;

fn sent(error: impl Into<reqwest_middleware::Error>) -> Failure {
    StreamableHttpError::Client(SignedMcpError(error.into()))
}

/// The media type of a `Content-Type` value, without parameters, in lower case.
fn media_type(headers: &http::HeaderMap) -> Option<String> {
    let value = headers.get(http::header::CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
}

/// Reads at most `limit` bytes of a response body: `Ok(Err(prefix))` when it was longer.
async fn read_at_most(response: reqwest::Response, limit: usize) -> Result<Result<Vec<u8>, Vec<u8>>, Failure> {
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(sent)?;
        if body.len() + chunk.len() > limit {
            body.extend_from_slice(&chunk[..limit - body.len()]);
            return Ok(Err(body));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Ok(body))
}

fn with_headers(
    mut request: reqwest_middleware::RequestBuilder,
    auth_header: Option<String>,
    custom_headers: HashMap<HeaderName, HeaderValue>,
) -> Result<reqwest_middleware::RequestBuilder, Failure> {
    // The workload proves itself with its WIT and proof: a bearer token configured on the
    // transport would replace that `Authorization` field, so it is refused, not sent.
    if auth_header.is_some() {
        return Err(StreamableHttpError::ReservedHeaderConflict("authorization".into()));
    }
    for (name, value) in custom_headers {
        // The fields this client, the transport and the WIMSE middleware write: a custom
        // header must not add a second one, nor smuggle a credential or a Txn-Token past the
        // middleware's rules.
        if RESERVED_HEADERS.contains(&name.as_str()) {
            return Err(StreamableHttpError::ReservedHeaderConflict(name.as_str().to_owned()));
        }
        request = request.header(name, value);
    }
    Ok(request)
}

/// The error of a failed answer whose body is not a JSON-RPC error.
fn failed(status: StatusCode, headers: &http::HeaderMap, body: &[u8]) -> Failure {
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        let retry_after = headers.get(http::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        return HttpStatusError::new(status.as_u16(), retry_after).into();
    }
    StreamableHttpError::UnexpectedServerResponse(Cow::Owned(format!(
        "HTTP {status}: {}",
        String::from_utf8_lossy(body)
    )))
}

/// The events of an SSE body, none larger than `limit` bytes.
fn events(response: reqwest::Response, limit: usize) -> BoxStream<'static, Result<Sse, SseError>> {
    let bytes = EventBound::new(response.bytes_stream().boxed(), limit);
    SseStream::from_bytes_stream(bytes).boxed()
}

/// Why an SSE body ended early.
#[derive(Debug, thiserror::Error)]
enum EventStreamError {
    #[error("an SSE event is larger than {0} bytes")]
    TooLarge(usize),
    #[error(transparent)]
    Read(#[from] reqwest::Error),
}

/// Counts the bytes of the current SSE event (since the last blank line) and ends the stream
/// with an error when one exceeds the limit, before the parser buffers it. Lines end with CRLF,
/// LF or CR, as the SSE parser reads them.
struct EventBound {
    inner: BoxStream<'static, reqwest::Result<Bytes>>,
    limit: usize,
    /// Bytes of the current event.
    in_event: usize,
    /// Bytes of the current line.
    in_line: usize,
    /// The last byte was a CR (a LF right after it ends no second line).
    after_cr: bool,
    over: bool,
}

impl EventBound {
    fn new(inner: BoxStream<'static, reqwest::Result<Bytes>>, limit: usize) -> Self {
        Self { inner, limit, in_event: 0, in_line: 0, after_cr: false, over: false }
    }

    /// Counts `byte`; false when the event is over the limit.
    fn within_limit_after(&mut self, byte: u8) -> bool {
        match byte {
            b'\n' if self.after_cr => self.after_cr = false,
            b'\r' | b'\n' => {
                self.after_cr = byte == b'\r';
                if self.in_line == 0 {
                    // A blank line: the event ends.
                    self.in_event = 0;
                }
                self.in_line = 0;
            }
            _ => {
                self.after_cr = false;
                self.in_line += 1;
                self.in_event += 1;
            }
        }
        self.in_event <= self.limit
    }
}

impl Stream for EventBound {
    type Item = Result<Bytes, EventStreamError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.over {
            return Poll::Ready(None);
        }
        match self.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                for &byte in chunk.iter() {
                    if !self.within_limit_after(byte) {
                        self.over = true;
                        return Poll::Ready(Some(Err(EventStreamError::TooLarge(self.limit))));
                    }
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl StreamableHttpClient for SignedMcpClient {
    type Error = SignedMcpError;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, Failure> {
        let limits = StreamableHttpResponseLimits::default();
        self.post_message_with_response_limits(uri, message, session_id, auth_header, custom_headers, limits).await
    }

    async fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<StreamableHttpPostResponse, Failure> {
        let mut limits = StreamableHttpResponseLimits::default();
        limits.max_sse_event_size = max_sse_event_size;
        self.post_message_with_response_limits(uri, message, session_id, auth_header, custom_headers, limits).await
    }

    async fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> Result<StreamableHttpPostResponse, Failure> {
        let body = serde_json::to_vec(&message)?;
        let mut request = self
            .request(http::Method::POST, uri.as_ref())
            .header(http::header::ACCEPT, format!("{JSON}, {EVENT_STREAM}"))
            .header(http::header::CONTENT_TYPE, JSON);
        request = with_headers(request, auth_header, custom_headers)?;
        if let Some(session) = &session_id {
            request = request.header(SESSION_HEADER, session.as_ref());
        }
        let response = request.body(body).send().await.map_err(sent)?;
        let status = response.status();
        if matches!(status, StatusCode::ACCEPTED | StatusCode::NO_CONTENT) {
            return Ok(StreamableHttpPostResponse::Accepted);
        }
        if status == StatusCode::NOT_FOUND && session_id.is_some() {
            return Err(StreamableHttpError::SessionExpired);
        }
        let headers = response.headers().clone();
        let media = media_type(&headers);
        let session = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let awaits_no_answer = !matches!(message, JsonRpcMessage::Request(_));
        if !status.is_success() {
            // A JSON-RPC error is read whole (within the JSON limit); any other body only as far
            // as an error message quotes it.
            let limit = if media.as_deref() == Some(JSON) {
                limits.max_json_response_size
            } else {
                limits.max_error_response_size
            };
            let body = match read_at_most(response, limit).await? {
                Ok(body) => body,
                Err(prefix) => {
                    return Err(failed(status, &headers, &prefix[..prefix.len().min(limits.max_error_response_size)]));
                }
            };
            if media.as_deref() == Some(JSON)
                && let Ok(error @ JsonRpcMessage::Error(_)) = serde_json::from_slice::<ServerJsonRpcMessage>(&body)
            {
                return Ok(StreamableHttpPostResponse::Json(error, session));
            }
            return Err(failed(status, &headers, &body[..body.len().min(limits.max_error_response_size)]));
        }
        match media.as_deref() {
            Some(EVENT_STREAM) => {
                Ok(StreamableHttpPostResponse::Sse(events(response, limits.max_sse_event_size), session))
            }
            Some(JSON) => {
                let body = match read_at_most(response, limits.max_json_response_size).await? {
                    Ok(body) => body,
                    Err(_) => {
                        return Err(StreamableHttpError::ResponseBodyTooLarge {
                            max_size: limits.max_json_response_size,
                        });
                    }
                };
                match serde_json::from_slice::<ServerJsonRpcMessage>(&body) {
                    Ok(answer) => Ok(StreamableHttpPostResponse::Json(answer, session)),
                    Err(_) if awaits_no_answer => Ok(StreamableHttpPostResponse::Accepted),
                    Err(error) => Err(error.into()),
                }
            }
            _ if awaits_no_answer => Ok(StreamableHttpPostResponse::Accepted),
            other => Err(StreamableHttpError::UnexpectedContentType(other.map(str::to_owned))),
        }
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), Failure> {
        let request = with_headers(self.request(http::Method::DELETE, uri.as_ref()), auth_header, custom_headers)?;
        let response = request.header(SESSION_HEADER, session_id.as_ref()).send().await.map_err(sent)?;
        match response.status() {
            StatusCode::METHOD_NOT_ALLOWED => Ok(()),
            status if status.is_success() => Ok(()),
            status => Err(failed(status, &response.headers().clone(), b"")),
        }
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, Failure> {
        let limit = StreamableHttpResponseLimits::default().max_sse_event_size;
        self.get_stream_with_max_sse_event_size(uri, session_id, last_event_id, auth_header, custom_headers, limit)
            .await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, Failure> {
        let mut request = self.request(http::Method::GET, uri.as_ref()).header(http::header::ACCEPT, EVENT_STREAM);
        request = with_headers(request, auth_header, custom_headers)?;
        if let Some(session) = session_id {
            request = request.header(SESSION_HEADER, session.as_ref());
        }
        if let Some(last) = last_event_id {
            request = request.header(LAST_EVENT_ID_HEADER, last);
        }
        let response = request.send().await.map_err(sent)?;
        let status = response.status();
        if status == StatusCode::METHOD_NOT_ALLOWED {
            return Err(StreamableHttpError::ServerDoesNotSupportSse);
        }
        if !status.is_success() {
            let headers = response.headers().clone();
            let prefix = match read_at_most(response, 4096).await? {
                Ok(body) | Err(body) => body,
            };
            return Err(failed(status, &headers, &prefix));
        }
        match media_type(response.headers()).as_deref() {
            Some(EVENT_STREAM) => Ok(events(response, max_sse_event_size)),
            other => Err(StreamableHttpError::UnexpectedContentType(other.map(str::to_owned))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(chunks: &[&'static str], limit: usize) -> Vec<Result<usize, String>> {
        let chunks: Vec<reqwest::Result<Bytes>> = chunks.iter().map(|c| Ok(Bytes::from_static(c.as_bytes()))).collect();
        let stream = EventBound::new(futures_util::stream::iter(chunks).boxed(), limit);
        let waker = std::task::Waker::noop();
        let mut stream = std::pin::pin!(stream);
        let mut seen = Vec::new();
        while let Poll::Ready(Some(item)) = stream.as_mut().poll_next(&mut Context::from_waker(waker)) {
            seen.push(item.map(|b| b.len()).map_err(|e| e.to_string()));
        }
        seen
    }

    #[test]
    fn custom_headers_cannot_set_credentials_proofs_or_the_transport_s_fields() {
        let request = || ClientWithMiddleware::from(reqwest::Client::new()).post("http://127.0.0.1:9/mcp");
        for name in
            ["Txn-Token", "workload-identity-token", "Authorization", "signature-input", "Accept", "mcp-session-id"]
        {
            let headers = HashMap::from([(HeaderName::try_from(name).unwrap(), HeaderValue::from_static("x"))]);
            let refused = with_headers(request(), None, headers).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(refused.contains(&name.to_ascii_lowercase()), "{name}: {refused}");
        }
        let allowed = HashMap::from([(HeaderName::from_static("x-request-tag"), HeaderValue::from_static("a"))]);
        assert!(with_headers(request(), None, allowed).is_ok());
        // A bearer token configured on the transport would replace the WPT: refused.
        assert!(with_headers(request(), Some("token".into()), HashMap::new()).is_err());
    }

    #[test]
    fn sse_events_are_bounded_one_by_one_across_chunks() {
        // Two events of 10 bytes each pass a 12-byte limit, split anywhere.
        assert!(bound(&["data: 1234\n", "\n", "data: 5678\n\n"], 12).iter().all(Result::is_ok));
        assert!(bound(&["data: 1234\r\n\r\ndata: 5678\r\n\r\n"], 12).iter().all(Result::is_ok));
        assert!(bound(&["data: 1234\r", "\rdata: 5678\r\r", "data: 9012\r\n", "\r\n"], 12).iter().all(Result::is_ok));
        // One event of 22 bytes does not, and nothing follows its error.
        let seen = bound(&["data: 1234\n", "data: 5678901\n", "\n", "data: x\n\n"], 12);
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1], Err("an SSE event is larger than 12 bytes".into()));
    }
}
