//! HTTP/1.1 messages as text, and RFC 9421 signatures over them with any parameters (the
//! forbidden and missing ones too).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderName, HeaderValue};
use wimse_core::jose::Backend;
use wimse_core::protocol::httpsig::{ComponentId, RequestParts, ResponseParts, content_digest, signature_base};

use crate::keys::Key;

/// A request: start line, fields in order, body.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) target: String,
    headers: Vec<(String, String)>,
    body: String,
}

/// A response: status, fields in order, body.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

/// The fields of a message, in order.
fn header_map(headers: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("a valid field name");
        map.append(name, HeaderValue::from_str(value).expect("a valid field value"));
    }
    map
}

fn set(headers: &mut Vec<(String, String)>, name: &str, value: &str) {
    match headers.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
        Some(entry) => entry.1 = value.to_owned(),
        None => headers.push((name.to_owned(), value.to_owned())),
    }
}

fn remove(headers: &mut Vec<(String, String)>, name: &str) {
    headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
}

fn text(start_line: String, headers: &[(String, String)], body: &str) -> String {
    let mut out = start_line;
    out.push_str("\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    out
}

impl Request {
    /// `method target` with a `Host` field: the target's authority for CONNECT, else `host`.
    pub(crate) fn new(method: &str, target: &str, host: &str) -> Self {
        let request = Self { method: method.into(), target: target.into(), headers: Vec::new(), body: String::new() };
        request.with("Host", host)
    }

    /// Adds a field line.
    pub(crate) fn with(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the content with its `Content-Type`, `Content-Length` and `Content-Digest` (RFC 9530, sha-256).
    pub(crate) fn with_body(self, content_type: &str, body: &str) -> Self {
        let mut request = self
            .with("Content-Type", content_type)
            .with("Content-Length", &body.len().to_string())
            .with("Content-Digest", &content_digest(body.as_bytes()));
        request.body = body.into();
        request
    }

    /// Whether the request has the field `name`.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// Replaces the value of a field (or adds it).
    pub(crate) fn set(&mut self, name: &str, value: &str) {
        set(&mut self.headers, name, value);
    }

    /// Removes every line of a field.
    pub(crate) fn remove(&mut self, name: &str) {
        remove(&mut self.headers, name);
    }

    /// Replaces the content, keeping every field (a tampered body).
    pub(crate) fn replace_body(&mut self, body: &str) {
        self.body = body.into();
        self.set("Content-Length", &body.len().to_string());
    }

    /// Adds the signatures' `Signature-Input` and `Signature` fields.
    pub(crate) fn with_signatures(self, signatures: &[&Signed]) -> Self {
        let (inputs, values) = joined(signatures);
        self.with("Signature-Input", &inputs).with("Signature", &values)
    }

    /// The message as sent, with CRLF line ends.
    pub(crate) fn raw(&self) -> String {
        text(format!("{} {} HTTP/1.1", self.method, self.target), &self.headers, &self.body)
    }

    /// What the request's signature base reads, as the recipient derives it: `@authority` is the
    /// target of a CONNECT (authority-form), else the `Host` field.
    fn with_parts<T>(&self, authority: Option<&str>, f: impl FnOnce(&RequestParts<'_, HeaderMap>) -> T) -> T {
        let headers = header_map(&self.headers);
        let host = self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("host")).map(|(_, v)| v.as_str());
        let connect = self.method.eq_ignore_ascii_case("CONNECT");
        let authority = authority.unwrap_or(if connect { &self.target } else { host.unwrap_or_default() });
        let (path, query) = match (connect, self.target.split_once('?')) {
            (true, _) => ("", None),
            (false, Some((path, query))) => (path, Some(query)),
            (false, None) => (self.target.as_str(), None),
        };
        f(&RequestParts { method: &self.method, scheme: "https", authority, path, query, headers: &headers })
    }
}

impl Response {
    /// A response with this status.
    pub(crate) fn new(status: u16) -> Self {
        Self { status, headers: Vec::new(), body: String::new() }
    }

    /// Adds a field line.
    pub(crate) fn with(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the content with its `Content-Type`, `Content-Length` and `Content-Digest`.
    pub(crate) fn with_body(self, content_type: &str, body: &str) -> Self {
        let mut response = self
            .with("Content-Type", content_type)
            .with("Content-Length", &body.len().to_string())
            .with("Content-Digest", &content_digest(body.as_bytes()));
        response.body = body.into();
        response
    }

    /// Whether the response has the field `name`.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// Replaces the content, keeping every field (a tampered body).
    pub(crate) fn replace_body(&mut self, body: &str) {
        self.body = body.into();
        set(&mut self.headers, "Content-Length", &body.len().to_string());
    }

    /// Adds the signatures' `Signature-Input` and `Signature` fields.
    pub(crate) fn with_signatures(self, signatures: &[&Signed]) -> Self {
        let (inputs, values) = joined(signatures);
        self.with("Signature-Input", &inputs).with("Signature", &values)
    }

    /// The message as sent, with CRLF line ends.
    pub(crate) fn raw(&self) -> String {
        let reason = http::StatusCode::from_u16(self.status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
        text(format!("HTTP/1.1 {} {reason}", self.status), &self.headers, &self.body)
    }
}

fn joined(signatures: &[&Signed]) -> (String, String) {
    let inputs: Vec<&str> = signatures.iter().map(|s| s.input.as_str()).collect();
    let values: Vec<&str> = signatures.iter().map(|s| s.value.as_str()).collect();
    (inputs.join(", "), values.join(", "))
}

/// A signature parameter value.
#[derive(Debug, Clone)]
pub(crate) enum Param {
    /// An Integer (`created`, `expires`).
    Int(u64),
    /// A String.
    Str(String),
    /// The Boolean true (serialized as the bare key).
    True,
}

/// A signature to make: its label, covered components and parameters, in order.
#[derive(Debug, Clone)]
pub(crate) struct Signature {
    pub(crate) label: String,
    pub(crate) components: Vec<ComponentId>,
    pub(crate) params: Vec<(String, Param)>,
}

/// A signature made: its `Signature-Input` and `Signature` dictionary members and the base it
/// signed.
#[derive(Debug, Clone)]
pub(crate) struct Signed {
    pub(crate) input: String,
    pub(crate) value: String,
    pub(crate) base: String,
}

impl Signature {
    /// `@signature-params`: the inner list serialized as RFC 8941 does.
    fn params_text(&self) -> String {
        let items: Vec<String> = self.components.iter().map(ToString::to_string).collect();
        let mut out = format!("({})", items.join(" "));
        for (name, value) in &self.params {
            match value {
                Param::Int(v) => out.push_str(&format!(";{name}={v}")),
                Param::Str(v) => out.push_str(&format!(";{name}=\"{v}\"")),
                Param::True => out.push_str(&format!(";{name}")),
            }
        }
        out
    }

    fn finish(&self, params: String, base: String, key: &Key) -> Signed {
        let signature = key.signing.sign(Backend::RustCrypto, base.as_bytes()).expect("the key signs");
        Signed {
            input: format!("{}={params}", self.label),
            value: format!("{}=:{}:", self.label, STANDARD.encode(signature)),
            base,
        }
    }

    /// Signs `request` as its recipient will read it.
    pub(crate) fn sign_request(&self, request: &Request, key: &Key) -> Signed {
        self.sign_request_as(request, None, key)
    }

    /// Signs `request` with `@authority` taken as `authority` (a signer that gets it wrong).
    pub(crate) fn sign_request_as(&self, request: &Request, authority: Option<&str>, key: &Key) -> Signed {
        let params = self.params_text();
        let base = request.with_parts(authority, |parts| {
            signature_base::<HeaderMap, HeaderMap>(&self.components, &params, Some(parts), None)
                .expect("every covered component is in the request")
        });
        self.finish(params, base, key)
    }

    /// Signs `response` to `request`.
    pub(crate) fn sign_response(&self, request: &Request, response: &Response, key: &Key) -> Signed {
        self.sign_response_as(request, None, response, key)
    }

    /// Signs `response` with the request's `@authority` taken as `authority`.
    pub(crate) fn sign_response_as(
        &self,
        request: &Request,
        authority: Option<&str>,
        response: &Response,
        key: &Key,
    ) -> Signed {
        let params = self.params_text();
        let headers = header_map(&response.headers);
        let res = ResponseParts { status: response.status, headers: &headers };
        let base = request.with_parts(authority, |req| {
            signature_base(&self.components, &params, Some(req), Some(&res))
                .expect("every covered component is in the messages")
        });
        self.finish(params, base, key)
    }
}
