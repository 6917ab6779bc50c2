//! Read access to header fields, below everything that reads them: the signature code
//! (`httpsig`) and the request framing (`http`) both build on it.

use http::{HeaderMap, HeaderValue};

/// Read access to request header fields, so the core works with any framework's header map
/// (`http` 1.x here; actix-web's `http` 0.2 map in its adapter).
pub trait HeaderSource {
    /// Every value of the field `name` (lower case), in order.
    fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]>;
}

impl HeaderSource for HeaderMap {
    fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> {
        self.get_all(name).iter().map(HeaderValue::as_bytes)
    }
}
