//! The signature base (RFC 9421 §2.5) over a framework-neutral view of a message.

use std::fmt::Write as _;

use super::sf::ComponentId;
use crate::error::{Error, ErrorKind, Result};
use crate::headers::HeaderSource;

/// What the signature base reads from a request. Values are as received: nothing is
/// normalized beyond what RFC 9421 §2.2 prescribes.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a, H: ?Sized> {
    /// The method, e.g. `POST`.
    pub method: &'a str,
    /// The URI scheme (`https`), for `@scheme` and `@target-uri`.
    pub scheme: &'a str,
    /// The authority (`api.example:8443`), for `@authority` and `@target-uri`.
    pub authority: &'a str,
    /// The absolute path (`/orders`); empty means `/`.
    pub path: &'a str,
    /// The query without `?`, if the target has one (even empty).
    pub query: Option<&'a str>,
    /// The header fields.
    pub headers: &'a H,
}

/// What the signature base reads from a response.
#[derive(Debug, Clone, Copy)]
pub struct ResponseParts<'a, H: ?Sized> {
    /// The status code.
    pub status: u16,
    /// The header fields.
    pub headers: &'a H,
}

fn missing(component: &ComponentId) -> Error {
    Error::with_detail(ErrorKind::MissingCoveredComponent, format!("{component} is not in the message"))
}

/// The value of a header field for the base: all field lines, trimmed, joined with `", "`.
pub(crate) fn field_value<H: HeaderSource + ?Sized>(headers: &H, name: &str) -> Result<Option<String>> {
    let mut combined: Option<String> = None;
    for value in headers.header_values(name) {
        let text = std::str::from_utf8(value).map_err(|_| Error::new(ErrorKind::InvalidHeaderValue))?;
        let text = text.trim_matches([' ', '\t']);
        match &mut combined {
            Some(c) => {
                c.push_str(", ");
                c.push_str(text);
            }
            None => combined = Some(text.to_owned()),
        }
    }
    Ok(combined)
}

fn request_component<H: HeaderSource + ?Sized>(req: &RequestParts<'_, H>, id: &ComponentId) -> Result<String> {
    let path = if req.path.is_empty() { "/" } else { req.path };
    Ok(match id.name.as_str() {
        "@method" => req.method.to_owned(),
        "@scheme" => req.scheme.to_ascii_lowercase(),
        "@authority" => authority_component(req),
        "@path" => path.to_owned(),
        "@query" => format!("?{}", req.query.unwrap_or_default()),
        "@request-target" => match req.query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        },
        "@target-uri" => {
            let query = req.query.map(|q| format!("?{q}")).unwrap_or_default();
            format!("{}://{}{path}{query}", req.scheme.to_ascii_lowercase(), authority_component(req))
        }
        name if name.starts_with('@') => {
            return Err(Error::with_detail(ErrorKind::SignatureMalformed, format!("unsupported component {id}")));
        }
        name => field_value(req.headers, name)?.ok_or_else(|| missing(id))?,
    })
}

/// Builds the signature base of a request (`response` is `None`) or a response (components
/// with `;req` read from `request`). `signature_params` is the `@signature-params` value.
pub fn signature_base<Q: HeaderSource + ?Sized, R: HeaderSource + ?Sized>(
    components: &[ComponentId],
    signature_params: &str,
    request: Option<&RequestParts<'_, Q>>,
    response: Option<&ResponseParts<'_, R>>,
) -> Result<String> {
    let mut base = String::with_capacity(256);
    for id in components {
        if id.other_params {
            return Err(Error::with_detail(ErrorKind::SignatureMalformed, format!("unsupported parameters on {id}")));
        }
        let value = match (response, id.req) {
            (Some(res), false) => match id.name.as_str() {
                "@status" => res.status.to_string(),
                name if name.starts_with('@') => {
                    return Err(Error::with_detail(ErrorKind::SignatureMalformed, format!("{id} in a response")));
                }
                name => field_value(res.headers, name)?.ok_or_else(|| missing(id))?,
            },
            (Some(_), true) | (None, false) => {
                let req = request.ok_or_else(|| missing(id))?;
                if id.name == "@status" {
                    return Err(Error::with_detail(ErrorKind::SignatureMalformed, "@status in a request"));
                }
                request_component(req, id)?
            }
            (None, true) => {
                return Err(Error::with_detail(ErrorKind::SignatureMalformed, "`req` in a request signature"));
            }
        };
        // Values with a newline would let one component forge another's line.
        if value.contains(['\n', '\r']) {
            return Err(Error::new(ErrorKind::InvalidHeaderValue));
        }
        let _ = writeln!(base, "{id}: {value}");
    }
    let _ = write!(base, "\"@signature-params\": {signature_params}");
    Ok(base)
}

/// `@authority` of a request. RFC 9421 §2.2.3 normalizes the authority of an http(s) URI
/// (origin- or absolute-form targets): lower-cased, the scheme's default port dropped. A CONNECT
/// target is in authority-form (RFC 9110 §9.3.6), which is not a URI and must carry its port: it
/// is covered as sent, lower-cased, port included (`CONNECT ledger.example:443` covers
/// `ledger.example:443`, as independent implementations sign it).
fn authority_component<H: ?Sized>(req: &RequestParts<'_, H>) -> String {
    if req.method.eq_ignore_ascii_case("CONNECT") {
        req.authority.to_ascii_lowercase()
    } else {
        normalized_authority(req.scheme, req.authority)
    }
}

/// RFC 9421 §2.2.3: the authority of an http(s) URI, lower-cased, with the port only when it is
/// not the scheme's default (`api.example:443` over https is `api.example`).
pub(crate) fn normalized_authority(scheme: &str, authority: &str) -> String {
    let lower = authority.to_ascii_lowercase();
    let default = if scheme.eq_ignore_ascii_case("https") {
        ":443"
    } else if scheme.eq_ignore_ascii_case("http") {
        ":80"
    } else {
        return lower;
    };
    match lower.strip_suffix(default) {
        // Not `[::1]:8443` cut in the middle: what is left must end the host.
        Some(host) if !host.is_empty() && !host.ends_with(':') => host.to_owned(),
        _ => lower,
    }
}

#[cfg(test)]
mod authority_tests {
    use super::normalized_authority;

    #[test]
    fn default_ports_are_dropped_and_hosts_lower_cased() {
        assert_eq!(normalized_authority("https", "API.Example:443"), "api.example");
        assert_eq!(normalized_authority("http", "api.example:80"), "api.example");
        assert_eq!(normalized_authority("https", "api.example:8443"), "api.example:8443");
        assert_eq!(normalized_authority("https", "api.example:80"), "api.example:80");
        assert_eq!(normalized_authority("http", "api.example:443"), "api.example:443");
        assert_eq!(normalized_authority("https", "[::1]:443"), "[::1]");
        assert_eq!(normalized_authority("https", "api.example:1443"), "api.example:1443");
        assert_eq!(normalized_authority("https", "api.example"), "api.example");
    }
}
