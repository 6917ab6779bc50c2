//! Raw HTTP/1.1 messages, as read from and written to files (feature `raw-http`): what the
//! `wimse` CLI verifies and signs. Parsing is bounded (128 header fields) and never panics.

use http::{HeaderMap, HeaderName, HeaderValue};

const MAX_HEADERS: usize = 128;

/// Why a raw HTTP message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RawHttpError {
    /// The bytes are not an HTTP/1.1 message of the expected kind (request or response).
    #[error("not an HTTP/1.1 {kind}: {reason}")]
    Malformed {
        /// `request` or `response`.
        kind: &'static str,
        /// What the parser objected to.
        reason: String,
    },
    /// The message ends inside its head.
    #[error("incomplete HTTP {0}")]
    Incomplete(&'static str),
    /// A field name is not a valid HTTP token.
    #[error("invalid header name {0:?}")]
    InvalidHeaderName(String),
    /// A field value holds bytes that HTTP forbids.
    #[error("invalid value for header {0}")]
    InvalidHeaderValue(String),
}

/// A parsed request; header values kept as bytes, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRequest {
    /// The method.
    pub method: String,
    /// The request target as written (origin-form or absolute-form).
    pub target: String,
    /// Header fields in order, values as bytes.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body: `Content-Length` bytes after the empty line when the field is present
    /// (RFC 9112 §6.3; what follows, such as a trailing newline, is not part of it), otherwise
    /// everything after the empty line.
    pub body: Vec<u8>,
}

/// The body of a message whose head ended at `rest`: `Content-Length` bytes when the field is
/// present (several fields must agree), the rest of the input otherwise. A `Transfer-Encoding`
/// is refused: these are files, not streams.
fn framed_body(kind: &'static str, headers: &[httparse::Header<'_>], rest: &[u8]) -> Result<Vec<u8>, RawHttpError> {
    let malformed = |reason: &str| RawHttpError::Malformed { kind, reason: reason.to_owned() };
    if headers.iter().any(|h| h.name.eq_ignore_ascii_case("transfer-encoding")) {
        return Err(malformed("Transfer-Encoding is not supported in a message file; use Content-Length"));
    }
    let mut length = None;
    for header in headers.iter().filter(|h| h.name.eq_ignore_ascii_case("content-length")) {
        let value = std::str::from_utf8(header.value).map(str::trim).unwrap_or_default();
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed("Content-Length is not a number"));
        }
        let parsed: usize = value.parse().map_err(|_| malformed("Content-Length is too large"))?;
        if length.is_some_and(|earlier| earlier != parsed) {
            return Err(malformed("Content-Length fields disagree"));
        }
        length = Some(parsed);
    }
    match length {
        None => Ok(rest.to_vec()),
        Some(length) if length <= rest.len() => Ok(rest[..length].to_vec()),
        Some(_) => Err(RawHttpError::Incomplete(kind)),
    }
}

impl RawRequest {
    /// Parses a request. Line ends may be CRLF or LF; a file that stops after the last header
    /// line (no empty line) is taken to have no body; the body's length is `Content-Length`
    /// when the field is present.
    pub fn parse(bytes: &[u8]) -> Result<Self, RawHttpError> {
        if let Some(request) = Self::parse_complete(bytes)? {
            return Ok(request);
        }
        // One more try with the missing empty line; never more (no unbounded retries).
        let mut terminated = bytes.to_vec();
        terminated.extend_from_slice(b"\r\n");
        match Self::parse_complete(&terminated)? {
            Some(request) if request.body.is_empty() => Ok(request),
            _ => Err(RawHttpError::Incomplete("request")),
        }
    }

    fn parse_complete(bytes: &[u8]) -> Result<Option<Self>, RawHttpError> {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut storage);
        let status =
            request.parse(bytes).map_err(|e| RawHttpError::Malformed { kind: "request", reason: e.to_string() })?;
        let httparse::Status::Complete(body_start) = status else { return Ok(None) };
        Ok(Some(Self {
            method: request.method.unwrap_or_default().to_owned(),
            target: request.path.unwrap_or_default().to_owned(),
            headers: request.headers.iter().map(|h| (h.name.to_owned(), h.value.to_vec())).collect(),
            body: framed_body("request", request.headers, &bytes[body_start..])?,
        }))
    }

    /// The path and query of the target (absolute-form targets are reduced to their path).
    pub fn path(&self) -> &str {
        match self.target.split_once("://") {
            Some((_, rest)) => rest.find('/').map(|i| &rest[i..]).unwrap_or("/"),
            None => &self.target,
        }
    }

    /// The scheme of an absolute-form target (`http` in `GET http://api.example/x HTTP/1.1`),
    /// lower-cased; `None` for an origin-form target, which does not say.
    pub fn scheme(&self) -> Option<String> {
        self.target.split_once("://").map(|(scheme, _)| scheme.to_ascii_lowercase())
    }

    /// The authority the request is for: an absolute-form target's (RFC 9112 §3.2.2: it wins
    /// over `Host`), else the `Host` field's; `None` without either, or when `Host` is not text.
    pub fn authority(&self) -> Option<&str> {
        match self.target.split_once("://") {
            Some((_, rest)) => Some(&rest[..rest.find(['/', '?']).unwrap_or(rest.len())]),
            None => self.header("host").and_then(|host| std::str::from_utf8(host).ok()),
        }
    }

    /// The first value of the field `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    /// Whether the field `name` is present.
    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    /// The fields as an `http` header map.
    pub fn header_map(&self) -> Result<HeaderMap, RawHttpError> {
        to_header_map(&self.headers)
    }

    /// Serializes with CRLF line ends.
    pub fn to_bytes(&self) -> Vec<u8> {
        serialize(format!("{} {} HTTP/1.1\r\n", self.method, self.target), &self.headers, &self.body)
    }
}

/// A parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// Header fields in order, values as bytes.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// Parses a response (CRLF or LF line ends); the body's length is `Content-Length` when the
    /// field is present.
    pub fn parse(bytes: &[u8]) -> Result<Self, RawHttpError> {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut storage);
        let httparse::Status::Complete(body_start) =
            response.parse(bytes).map_err(|e| RawHttpError::Malformed { kind: "response", reason: e.to_string() })?
        else {
            return Err(RawHttpError::Incomplete("response"));
        };
        Ok(Self {
            status: response.code.unwrap_or_default(),
            headers: response.headers.iter().map(|h| (h.name.to_owned(), h.value.to_vec())).collect(),
            body: framed_body("response", response.headers, &bytes[body_start..])?,
        })
    }

    /// The fields as an `http` header map.
    pub fn header_map(&self) -> Result<HeaderMap, RawHttpError> {
        to_header_map(&self.headers)
    }

    /// Serializes with CRLF line ends (the reason phrase is the status's canonical one).
    pub fn to_bytes(&self) -> Vec<u8> {
        let reason = http::StatusCode::from_u16(self.status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
        serialize(format!("HTTP/1.1 {} {reason}\r\n", self.status), &self.headers, &self.body)
    }
}

/// A start line, the fields and the body, with CRLF line ends.
fn serialize(start_line: String, headers: &[(String, Vec<u8>)], body: &[u8]) -> Vec<u8> {
    let mut out = start_line.into_bytes();
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn to_header_map(headers: &[(String, Vec<u8>)]) -> Result<HeaderMap, RawHttpError> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| RawHttpError::InvalidHeaderName(name.clone()))?;
        let value = HeaderValue::from_bytes(value).map_err(|_| RawHttpError::InvalidHeaderValue(name.to_string()))?;
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lf_and_crlf_and_round_trips() {
        let lf = RawRequest::parse(b"POST /p?q=1 HTTP/1.1\nHost: a.example\nX: 1\n\nbody").unwrap();
        assert_eq!((lf.method.as_str(), lf.path(), lf.body.as_slice()), ("POST", "/p?q=1", &b"body"[..]));
        let again = RawRequest::parse(&lf.to_bytes()).unwrap();
        assert_eq!(again, lf);
        let unterminated = RawRequest::parse(b"GET / HTTP/1.1\nHost: a\n").unwrap();
        assert_eq!(unterminated.header("host"), Some(&b"a"[..]));
        let absolute = RawRequest::parse(b"GET https://a.example/x/y?z HTTP/1.1\n\n").unwrap();
        assert_eq!(absolute.path(), "/x/y?z");
        assert_eq!((absolute.scheme().as_deref(), absolute.authority()), (Some("https"), Some("a.example")));
        // The target's authority wins over Host; an origin-form target has only Host, no scheme.
        let plain = RawRequest::parse(b"GET HTTP://127.0.0.1:8080?q HTTP/1.1\nHost: other\n\n").unwrap();
        assert_eq!((plain.scheme().as_deref(), plain.authority()), (Some("http"), Some("127.0.0.1:8080")));
        assert_eq!((lf.scheme(), lf.authority()), (None, Some("a.example")));
        assert_eq!(parse_ok(b"GET / HTTP/1.1\n\n").authority(), None);
        assert!(RawRequest::parse(b"garbage\x00\n\n").is_err());
        assert!(RawRequest::parse(b"GET / HTTP/1.1\nHost").is_err());
        let response = RawResponse::parse(b"HTTP/1.1 201 Created\nX: 1\n\nok").unwrap();
        assert_eq!((response.status, response.body.as_slice()), (201, &b"ok"[..]));
        assert_eq!(response.header_map().unwrap()["x"], "1");
        assert_eq!(RawResponse::parse(b"HTTP/1.1 200 OK\nX: 1\n"), Err(RawHttpError::Incomplete("response")));
    }

    #[test]
    fn names_each_failure() {
        assert!(matches!(
            RawRequest::parse(b"HTTP/1.1 200 OK\n\n"),
            Err(RawHttpError::Malformed { kind: "request", .. })
        ));
        assert_eq!(RawRequest::parse(b"GET / HTTP/1.1\nHost: a"), Err(RawHttpError::Incomplete("request")));
        let too_many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\n")).collect();
        let err = RawRequest::parse(format!("GET / HTTP/1.1\n{too_many}\n").as_bytes()).unwrap_err();
        assert!(matches!(err, RawHttpError::Malformed { .. }), "{err}");
        let bad_name = RawRequest { headers: vec![("a b".into(), b"v".to_vec())], ..parse_ok(b"GET / HTTP/1.1\n\n") };
        assert_eq!(bad_name.header_map(), Err(RawHttpError::InvalidHeaderName("a b".into())));
        let bad_value = RawRequest { headers: vec![("x".into(), b"a\nb".to_vec())], ..bad_name };
        assert_eq!(bad_value.header_map(), Err(RawHttpError::InvalidHeaderValue("x".into())));
    }

    #[test]
    fn content_length_frames_the_body() {
        let request = parse_ok(b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody\n");
        assert_eq!(request.body, b"body", "the trailing newline is not part of the body");
        let none = parse_ok(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n\n");
        assert!(none.body.is_empty());
        let response = RawResponse::parse(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok\n\n").unwrap();
        assert_eq!(response.body, b"ok");
        assert_eq!(RawResponse::parse(&response.to_bytes()).unwrap(), response);
        assert!(response.to_bytes().starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert_eq!(
            RawRequest::parse(b"POST / HTTP/1.1\nContent-Length: 9\n\nbody"),
            Err(RawHttpError::Incomplete("request"))
        );
        for bad in [
            &b"POST / HTTP/1.1\nContent-Length: -1\n\n"[..],
            b"POST / HTTP/1.1\nContent-Length: 1\nContent-Length: 2\n\nab",
            b"POST / HTTP/1.1\nContent-Length: 99999999999999999999999\n\n",
            b"POST / HTTP/1.1\nTransfer-Encoding: chunked\n\n0\r\n\r\n",
        ] {
            assert!(
                matches!(RawRequest::parse(bad), Err(RawHttpError::Malformed { .. })),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // Without the field, the rest of the file is the body (hand-written files).
        assert_eq!(parse_ok(b"POST / HTTP/1.1\n\nrest\n").body, b"rest\n");
    }

    fn parse_ok(bytes: &[u8]) -> RawRequest {
        RawRequest::parse(bytes).unwrap()
    }
}
