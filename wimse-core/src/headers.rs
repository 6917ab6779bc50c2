//! Read access to header fields, below everything that reads them: the signature code
//! (`httpsig`) and the request framing (`http`) both build on it.

use http::{HeaderMap, HeaderValue};

use crate::error::{Error, ErrorKind, Result};

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

/// Fields the protocol itself reads and writes (credentials, proofs, the Txn-Token), which a
/// context token or a gateway's identity header may not be named.
const PROTOCOL_FIELDS: &[&str] =
    &["txn-token", "workload-identity-token", "authorization", "signature", "signature-input", "content-digest"];

/// Whether the lower-case field `name` is one the protocol itself uses.
pub fn is_protocol_field(name: &str) -> bool {
    PROTOCOL_FIELDS.contains(&name)
}

/// A field value checked to be visible ASCII (spaces and tabs allowed), trimmed, and whether
/// it holds a comma: one pass without early exit, so it vectorises (tokens are a few hundred
/// bytes to 8 KiB).
pub(crate) fn scan_visible_ascii(value: &[u8]) -> Result<(&str, bool)> {
    let (visible, comma) = value.iter().fold((true, false), |(ok, comma), &b| {
        (ok & (matches!(b, b'!'..=b'~') | (b == b' ') | (b == b'\t')), comma | (b == b','))
    });
    if !visible {
        return Err(ErrorKind::InvalidHeaderValue.into());
    }
    // Visible ASCII is valid UTF-8.
    let text = std::str::from_utf8(value).map_err(|_| Error::new(ErrorKind::InvalidHeaderValue))?;
    Ok((text.trim_matches([' ', '\t']), comma))
}

pub(crate) fn as_visible_ascii(value: &[u8]) -> Result<&str> {
    scan_visible_ascii(value).map(|(text, _)| text)
}

pub(crate) fn oversized(name: &str, len: usize, max: usize) -> Error {
    Error::with_detail(ErrorKind::OversizedToken, format!("{name}: {len} bytes > {max}"))
}

/// The value of a field that may appear at most once. `duplicate` is the error for a repeat or a
/// comma-joined list.
pub fn single_value<'a, H: HeaderSource + ?Sized>(
    headers: &'a H,
    name: &str,
    max_len: usize,
    duplicate: ErrorKind,
) -> Result<Option<&'a str>> {
    let mut values = headers.header_values(name);
    let Some(first) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(duplicate.into());
    }
    if first.len() > max_len {
        return Err(oversized(name, first.len(), max_len));
    }
    let (value, comma) = scan_visible_ascii(first)?;
    if comma {
        return Err(Error::with_detail(duplicate, "comma-joined values"));
    }
    Ok(Some(value))
}
