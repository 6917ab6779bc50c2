//! Raw HTTP/1.1 requests, as read from and written to files.

use http::{HeaderMap, HeaderName, HeaderValue};

const MAX_HEADERS: usize = 128;

/// A parsed request; header values kept as bytes, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawRequest {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    pub(crate) body: Vec<u8>,
}

impl RawRequest {
    /// Parses a request. Line ends may be CRLF or LF; a file that stops after the last header
    /// line (no empty line) is taken to have no body.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, String> {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut storage);
        let status = request.parse(bytes).map_err(|e| format!("not an HTTP/1.1 request: {e}"))?;
        let body_start = match status {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => {
                let mut terminated = bytes.to_vec();
                terminated.extend_from_slice(b"\r\n");
                return match Self::parse(&terminated) {
                    Ok(req) if terminated.len() - bytes.len() == 2 => Ok(req),
                    _ => Err("incomplete HTTP request".into()),
                }
                .and_then(|req| if req.body.is_empty() { Ok(req) } else { Err("incomplete HTTP request".into()) });
            }
        };
        Ok(Self {
            method: request.method.unwrap_or_default().to_owned(),
            target: request.path.unwrap_or_default().to_owned(),
            headers: request.headers.iter().map(|h| (h.name.to_owned(), h.value.to_vec())).collect(),
            body: bytes[body_start..].to_vec(),
        })
    }

    /// The path and query of the target (absolute-form targets are reduced to their path).
    pub(crate) fn path(&self) -> &str {
        match self.target.split_once("://") {
            Some((_, rest)) => rest.find('/').map(|i| &rest[i..]).unwrap_or("/"),
            None => &self.target,
        }
    }

    pub(crate) fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    pub(crate) fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    pub(crate) fn header_map(&self) -> Result<HeaderMap, String> {
        to_header_map(&self.headers)
    }

    /// Serializes with CRLF line ends.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.target).into_bytes();
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// A parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawResponse {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    pub(crate) body: Vec<u8>,
}

impl RawResponse {
    /// Parses a response (CRLF or LF line ends).
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, String> {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut storage);
        let httparse::Status::Complete(body_start) =
            response.parse(bytes).map_err(|e| format!("not an HTTP/1.1 response: {e}"))?
        else {
            return Err("incomplete HTTP response".into());
        };
        Ok(Self {
            status: response.code.unwrap_or_default(),
            headers: response.headers.iter().map(|h| (h.name.to_owned(), h.value.to_vec())).collect(),
            body: bytes[body_start..].to_vec(),
        })
    }

    pub(crate) fn header_map(&self) -> Result<HeaderMap, String> {
        to_header_map(&self.headers)
    }
}

fn to_header_map(headers: &[(String, Vec<u8>)]) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name {name:?}"))?;
        let value = HeaderValue::from_bytes(value).map_err(|_| format!("invalid value for {name}"))?;
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
        assert!(RawRequest::parse(b"garbage\x00\n\n").is_err());
        assert!(RawRequest::parse(b"GET / HTTP/1.1\nHost").is_err());
        let response = RawResponse::parse(b"HTTP/1.1 201 Created\nX: 1\n\nok").unwrap();
        assert_eq!((response.status, response.body.as_slice()), (201, &b"ok"[..]));
        assert_eq!(response.header_map().unwrap()["x"], "1");
        assert!(RawResponse::parse(b"HTTP/1.1 200 OK\nX: 1\n").is_err());
    }
}
