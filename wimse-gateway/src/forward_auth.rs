//! The forward-auth endpoint: a proxy (nginx `auth_request`, Caddy `forward_auth`, Traefik
//! `forwardAuth`) sends it a copy of each request's header fields, without the body, and the
//! original method, URI and host in fields of its own; the gateway checks the request as the
//! service would (WIT + WPT or HTTP signature, Txn-Token, policy, replay claim) and answers 200
//! with the verified identity in header fields the proxy copies onto the upstream request, or
//! the refusal (401/403 with `WWW-Authenticate` and a problem body) the proxy returns as is.

use std::net::IpAddr;

use http::{HeaderMap, Request, Response, StatusCode};
use wimse_core::server::verify::RequestView;
use wimse_core::{Error, ErrorKind};

use crate::config::{ForwardAuthSettings, OriginalRequestFields};
use crate::live::Live;
use crate::server::{GatewayBody, full, rejection};

/// The longest original method, URI or host accepted (nginx's default header buffer is 8 KiB).
const MAX_ORIGINAL_FIELD: usize = 8 << 10;

/// The original request as the proxy describes it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct OriginalRequest<'a> {
    pub(crate) method: &'a str,
    pub(crate) uri: &'a str,
    pub(crate) host: &'a str,
    /// The scheme, when the proxy sends it: then only routes of that scheme match.
    pub(crate) proto: Option<&'a str>,
}

impl<'a> OriginalRequest<'a> {
    /// Reads the configured family of fields; each exactly once.
    pub(crate) fn read(headers: &'a HeaderMap, fields: OriginalRequestFields) -> Result<Self, Error> {
        let [method, uri, host, proto] = match fields {
            OriginalRequestFields::XOriginal => {
                ["x-original-method", "x-original-uri", "x-original-host", "x-original-proto"]
            }
            OriginalRequestFields::XForwarded => {
                ["x-forwarded-method", "x-forwarded-uri", "x-forwarded-host", "x-forwarded-proto"]
            }
        };
        let read = |name: &str| -> Result<&'a str, Error> {
            let refused =
                |problem: &str| Error::with_detail(ErrorKind::OriginalRequestMissing, format!("{name} {problem}"));
            let mut values = headers.get_all(name).iter();
            let (Some(value), None) = (values.next(), values.next()) else {
                return Err(refused("is missing or repeated"));
            };
            if value.len() > MAX_ORIGINAL_FIELD {
                return Err(refused("is too long"));
            }
            match value.to_str() {
                Ok(value) if !value.trim().is_empty() => Ok(value.trim()),
                _ => Err(refused("is empty or not visible ASCII")),
            }
        };
        let proto = if headers.contains_key(proto) { Some(read(proto)?) } else { None };
        Ok(Self { method: read(method)?, uri: read(uri)?, host: read(host)?, proto })
    }
}

/// Checks one forward-auth subrequest from `peer`.
pub(crate) async fn check<B>(
    live: &Live,
    settings: &ForwardAuthSettings,
    peer: IpAddr,
    request: Request<B>,
) -> Response<GatewayBody> {
    // An IPv4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d.
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    if !settings.trusted_proxies.contains(&peer) {
        tracing::warn!(%peer, "wimse gateway: forward-auth request from an address that is not a trusted proxy");
        return rejection(None, &Error::new(ErrorKind::UntrustedForwarder));
    }
    let headers = request.headers();
    let original = match OriginalRequest::read(headers, settings.original_request) {
        Ok(original) => original,
        Err(error) => {
            tracing::warn!(
                reason = error.kind().reason(),
                detail = error.detail().unwrap_or(""),
                "wimse gateway: forward-auth request refused"
            );
            return rejection(None, &error);
        }
    };
    if let Err(error) = live.identity.refuse_lookalike(headers) {
        tracing::warn!(reason = error.kind().reason(), "wimse gateway: refused");
        return rejection(None, &error);
    }
    let route = match live.routes.find(original.host, original.uri, original.proto) {
        Ok((_, route)) => route,
        Err(error) => {
            tracing::info!(reason = error.kind().reason(), method = original.method, "wimse gateway: refused");
            return rejection(None, &error);
        }
    };
    let view = RequestView::new(original.uri, headers).method(original.method).authority(original.host);
    match route.pipeline().check(&view, None).await {
        Ok(caller) => {
            let mut response = Response::new(full(Vec::new()));
            *response.status_mut() = StatusCode::OK;
            if let Some(caller) = &caller {
                live.identity.answer(caller, response.headers_mut());
            }
            response
        }
        Err(error) => {
            // The proxy does not send the body: a signature covering it cannot be checked here.
            let error = if error.kind() == &ErrorKind::BodyNotSupplied {
                Error::with_detail(
                    ErrorKind::BodyNotForwarded,
                    "send a WPT, or call through the gateway's reverse proxy",
                )
            } else {
                error
            };
            tracing::info!(route = route.origin(), reason = error.kind().reason(), "wimse gateway: refused");
            rejection(Some(route.pipeline()), &error)
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn only_the_configured_family_names_the_original_request() {
        let nginx = headers(&[
            ("x-original-method", "POST"),
            ("x-original-uri", "/charge?x=1"),
            ("x-original-host", "a.example"),
        ]);
        let read = OriginalRequest::read(&nginx, OriginalRequestFields::XOriginal).unwrap();
        assert_eq!(read, OriginalRequest { method: "POST", uri: "/charge?x=1", host: "a.example", proto: None });
        let refused = OriginalRequest::read(&nginx, OriginalRequestFields::XForwarded).unwrap_err();
        assert_eq!(refused.kind(), &ErrorKind::OriginalRequestMissing);
    }

    #[test]
    fn a_missing_empty_or_repeated_field_is_refused() {
        for fields in [
            &[("x-forwarded-method", "GET"), ("x-forwarded-uri", "/")][..],
            &[("x-forwarded-method", "GET"), ("x-forwarded-uri", ""), ("x-forwarded-host", "a.example")][..],
            &[
                ("x-forwarded-method", "GET"),
                ("x-forwarded-uri", "/a"),
                ("x-forwarded-uri", "/b"),
                ("x-forwarded-host", "a"),
            ][..],
        ] {
            let error = OriginalRequest::read(&headers(fields), OriginalRequestFields::XForwarded).unwrap_err();
            assert_eq!(error.kind(), &ErrorKind::OriginalRequestMissing, "{fields:?}");
        }
    }
}
