//! HTTP framing shared by every adapter: reading the WIMSE fields from a request's headers, and
//! turning any [`Error`] into the same status, challenge and RFC 9457 problem body everywhere.

use http::header::{CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::Serialize;

use crate::draft::{
    AUTHORIZATION_HEADER, PROBLEM_TYPE_BASE, SIGNATURE_INVALID_PROBLEM, SIGNED_RESPONSE_UNAVAILABLE_PROBLEM,
    SIGNED_RESPONSE_UNSUPPORTED_PROBLEM, TXN_TOKEN_HEADER, WIT_HEADER, WPT_AUTH_SCHEME, WPT_CHALLENGE,
};
use crate::error::{Answer, Error, ErrorKind, Result};

pub use crate::headers::{HeaderSource, is_protocol_field, single_value};
use crate::headers::{as_visible_ascii, oversized};

/// The credentials of a WIT + WPT request, as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WptCredentials<'a> {
    /// The `Workload-Identity-Token` value.
    pub wit: &'a str,
    /// The token after `Authorization: WPT`.
    pub wpt: &'a str,
    /// The `Txn-Token` value, if present.
    pub txn_token: Option<&'a str>,
}

/// Reads the WIT, the WPT and the `Txn-Token` (wpt-02 framing): exactly one
/// `Workload-Identity-Token`, exactly one `Authorization` field with scheme `WPT` (any case),
/// no bearer token beside it, each no larger than `max_token_len` bytes.
pub fn extract_wpt_credentials<H: HeaderSource + ?Sized>(
    headers: &H,
    max_token_len: usize,
) -> Result<WptCredentials<'_>> {
    let wit = single_value(headers, WIT_HEADER, max_token_len, ErrorKind::DuplicateWit)?
        .ok_or_else(|| Error::new(ErrorKind::MissingWit))?;

    let scheme_len = WPT_AUTH_SCHEME.len() + 1;
    let mut auth = headers.header_values(AUTHORIZATION_HEADER);
    let first = auth.next().ok_or_else(|| Error::new(ErrorKind::MissingWpt))?;
    if let Some(second) = auth.next() {
        let has_bearer = [first, second].into_iter().chain(auth).any(|v| scheme_of(v).eq_ignore_ascii_case(b"bearer"));
        return Err(if has_bearer { ErrorKind::BearerWithWpt } else { ErrorKind::DuplicateAuthorization }.into());
    }
    if first.len() > max_token_len + scheme_len + 8 {
        return Err(oversized(AUTHORIZATION_HEADER, first.len(), max_token_len));
    }
    let value = as_visible_ascii(first)?;
    let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case(WPT_AUTH_SCHEME) {
        // A lone bearer (or other) credential is not a WIMSE proof: the caller has to authenticate.
        return Err(Error::with_detail(ErrorKind::MissingWpt, "Authorization scheme is not WPT"));
    }
    let wpt = rest.trim_start_matches([' ', '\t']);
    if wpt.is_empty() || wpt.contains([' ', '\t', ',']) {
        return Err(ErrorKind::MalformedAuthorization.into());
    }
    if wpt.len() > max_token_len {
        return Err(oversized(AUTHORIZATION_HEADER, wpt.len(), max_token_len));
    }
    let txn_token = single_value(headers, TXN_TOKEN_HEADER, max_token_len, ErrorKind::DuplicateContextToken)?;
    Ok(WptCredentials { wit, wpt, txn_token })
}

/// Whether a request carries any WIMSE credential: a `Workload-Identity-Token` field or an
/// `Authorization` field with the `WPT` scheme. Optional authentication lets requests without
/// one through (a bearer-only request is left to other authentication); requests with one
/// must verify.
pub fn has_wimse_credentials<H: HeaderSource + ?Sized>(headers: &H) -> bool {
    headers.header_values(WIT_HEADER).next().is_some()
        || crate::protocol::httpsig::has_signature(headers)
        || headers
            .header_values(AUTHORIZATION_HEADER)
            .any(|v| scheme_of(v).eq_ignore_ascii_case(WPT_AUTH_SCHEME.as_bytes()))
}

fn scheme_of(value: &[u8]) -> &[u8] {
    value.split(|b| *b == b' ' || *b == b'\t').next().unwrap_or_default()
}

/// An RFC 9457 problem details body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Problem {
    /// `urn:wimse-rs:problem:<reason>`.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// Human-readable summary of the failed check.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// The stable reason code (extension member); absent for signed requests, whose rejections
    /// do not say which check failed (unless reasons are [revealed](Rejection::revealing)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// What exactly failed (the error's detail); only when reasons are
    /// [revealed](Rejection::revealing), for development.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// How a rejected request is answered. Every adapter uses this, so all answer alike:
///
/// | errors | status | challenge |
/// |---|---|---|
/// | duplicate or malformed fields, oversized values, a bearer token beside the WPT | 400 | none |
/// | an invalid `Txn-Token` (each check its own reason) | 400 | none |
/// | missing, invalid, expired, unbound or replayed credentials | 401 | `WWW-Authenticate: WPT` |
/// | authenticated caller refused by a policy, or without a required `Txn-Token` | 403 | none |
/// | caller over its replay quota | 429 (`Retry-After`) | none |
/// | replay store full, unavailable or recovering; trust anchors stale | 503 | none |
/// | key or configuration errors | 500 | none |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    status: StatusCode,
    challenge: bool,
    problem: Problem,
    retry_after: Option<u64>,
}

impl Rejection {
    /// The answer to a request that failed with `error`.
    pub fn from_error(error: &Error) -> Self {
        use ErrorKind::*;
        let kind = error.kind();
        let (status, challenge) = match kind.answer() {
            Answer::Status(code) => (StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), false),
            // http-signature-08: any failure of a signed request is a 400 that does not say
            // which check failed (the logs do).
            Answer::Credential if error.is_signature_mode() => {
                let problem = Problem {
                    type_uri: SIGNATURE_INVALID_PROBLEM.to_owned(),
                    title: "the signed request is invalid".to_owned(),
                    status: 400,
                    reason: None,
                    detail: None,
                };
                return Self { status: StatusCode::BAD_REQUEST, challenge: false, problem, retry_after: None };
            }
            Answer::Credential => (StatusCode::UNAUTHORIZED, true),
        };
        let type_uri = match kind {
            SignedResponseUnsupported => SIGNED_RESPONSE_UNSUPPORTED_PROBLEM.to_owned(),
            SignedResponseUnavailable => SIGNED_RESPONSE_UNAVAILABLE_PROBLEM.to_owned(),
            _ => format!("{PROBLEM_TYPE_BASE}{}", kind.reason()),
        };
        let problem = Problem {
            type_uri,
            title: kind.description().into_owned(),
            status: status.as_u16(),
            reason: Some(kind.reason()),
            detail: None,
        };
        Self { status, challenge, problem, retry_after: error.retry_after() }
    }

    /// [`from_error`](Self::from_error), with the failed check in the problem body whatever the
    /// proof mode: `reason` (a signed request's too) and `detail`. Status and challenge are
    /// unchanged. For development only: adapters answer this way when the verifier was built
    /// with [`VerifierConfig::reveal_reasons`](crate::server::verify::VerifierConfig::reveal_reasons)
    /// (see [`Pipeline::rejection`](crate::server::pipeline::Pipeline::rejection)).
    pub fn revealing(error: &Error) -> Self {
        let mut rejection = Self::from_error(error);
        rejection.problem.reason = Some(error.reason());
        rejection.problem.detail = error.detail().map(str::to_owned);
        rejection
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The `WWW-Authenticate` value, for credential failures.
    pub fn challenge(&self) -> Option<&'static str> {
        self.challenge.then_some(WPT_CHALLENGE)
    }

    /// The problem details.
    pub fn problem(&self) -> &Problem {
        &self.problem
    }

    /// When to retry, in seconds (`Retry-After`), if the rejection says.
    pub fn retry_after(&self) -> Option<u64> {
        self.retry_after
    }

    /// Response headers: `Content-Type: application/problem+json`, `Cache-Control: no-store`,
    /// the challenge and `Retry-After` if any.
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(challenge) = self.challenge() {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        if let Some(secs) = self.retry_after {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        headers
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&self.problem).unwrap_or_default()
    }

    /// A complete response.
    pub fn into_response(self) -> http::Response<Vec<u8>> {
        let mut response = http::Response::new(self.body());
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers();
        response
    }

    /// The gRPC status code for this rejection (gRPC's HTTP-to-status mapping, with 403 as
    /// `PERMISSION_DENIED` and 429 as `RESOURCE_EXHAUSTED`).
    pub fn grpc_code(&self) -> u32 {
        match self.status.as_u16() {
            400 | 413 => 3, // INVALID_ARGUMENT
            401 => 16,      // UNAUTHENTICATED
            403 => 7,       // PERMISSION_DENIED
            429 => 8,       // RESOURCE_EXHAUSTED
            501 => 12,      // UNIMPLEMENTED
            503 => 14,      // UNAVAILABLE
            _ => 13,        // INTERNAL
        }
    }

    /// The rejection as a gRPC "trailers-only" answer: HTTP 200, `content-type:
    /// application/grpc`, `grpc-status` and `grpc-message` (the reason code), and
    /// `Retry-After` / `WWW-Authenticate` as for HTTP. A gRPC client then reports the status
    /// instead of failing to parse a problem document.
    pub fn into_grpc_response(self) -> http::Response<Vec<u8>> {
        let mut headers = self.headers();
        headers.remove(http::header::CONTENT_TYPE);
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from(self.grpc_code()));
        let message = self.problem.reason.unwrap_or("rejected");
        if let Ok(value) = HeaderValue::from_str(message) {
            headers.insert("grpc-message", value);
        }
        let mut response = http::Response::new(Vec::new());
        *response.headers_mut() = headers;
        response
    }
}

/// Whether `host` (a URI host: a name, an IPv4 address, or an IPv6 address with or without
/// brackets) is this machine: `localhost` or a loopback address. Plaintext is acceptable only to
/// such hosts.
///
/// ```
/// use wimse_core::server::framing::is_loopback_host;
/// assert!(is_loopback_host("localhost") && is_loopback_host("127.0.0.1") && is_loopback_host("[::1]"));
/// assert!(!is_loopback_host("db.internal") && !is_loopback_host("10.0.0.1") && !is_loopback_host("127.0.0.1.nip.io"));
/// ```
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether a message's content is gRPC: a `content-type` whose media type is `application/grpc`
/// or one of its variants (`application/grpc+proto`, `application/grpc-web`, parameters after
/// `;`), compared case-insensitively as media types are. Such a body is a stream: an HTTP
/// signature cannot cover it.
pub fn is_grpc<H: HeaderSource + ?Sized>(headers: &H) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    headers.header_values("content-type").next().is_some_and(|value| {
        let value = value.trim_ascii_start();
        value.len() >= GRPC.len()
            && value[..GRPC.len()].eq_ignore_ascii_case(GRPC)
            && matches!(value.get(GRPC.len()), None | Some(b'+' | b'-' | b';' | b' ' | b'\t'))
    })
}

/// Whether a refusal is answered the gRPC way (HTTP 200 with `grpc-status`, a "trailers-only"
/// response; see [`Rejection::into_grpc_response`]): only for what is a gRPC call by the
/// protocol's own definition, an HTTP/2 request with a gRPC content type and `te: trailers`.
/// Anything else, a REST route called with a borrowed gRPC content type included, is refused
/// with its HTTP status, never with a 200.
pub fn answers_as_grpc<H: HeaderSource + ?Sized>(version: http::Version, headers: &H) -> bool {
    version == http::Version::HTTP_2
        && is_grpc(headers)
        && headers
            .header_values("te")
            .any(|v| v.split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers")))
}

impl From<&Error> for Rejection {
    fn from(error: &Error) -> Self {
        Self::from_error(error)
    }
}
