//! The verified identity as header fields for the application, and the removal of any field
//! of those names that arrived from outside (in every mode, before results are added), so an
//! application never sees a caller header the gateway did not write.

use http::{HeaderMap, HeaderName, HeaderValue};
use wimse_core::server::caller::VerifiedCaller;

use crate::config::IdentityHeaderNames;
use crate::error::GatewayError;

/// The identity header names, parsed once.
#[derive(Debug, Clone)]
pub(crate) struct IdentityHeaders {
    caller: HeaderName,
    proof: HeaderName,
    txn: HeaderName,
    txn_subject: HeaderName,
    txn_scope: HeaderName,
    txn_actors: HeaderName,
}

impl IdentityHeaders {
    /// Parses the configured names; they must be distinct and not a field WIMSE itself reads.
    pub(crate) fn new(names: &IdentityHeaderNames) -> Result<Self, GatewayError> {
        let parse = |field: &str, name: &str| -> Result<HeaderName, GatewayError> {
            let parsed = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                GatewayError::Config(format!("identity_headers.{field}: {name:?} is not a header name"))
            })?;
            let framing = ["host", "content-length", "transfer-encoding", "connection", "te", "upgrade"];
            if wimse_core::server::framing::is_protocol_field(parsed.as_str()) || framing.contains(&parsed.as_str()) {
                return Err(GatewayError::Config(format!(
                    "identity_headers.{field}: {name:?} is a field the protocol or HTTP itself uses"
                )));
            }
            Ok(parsed)
        };
        let headers = Self {
            caller: parse("caller", &names.caller)?,
            proof: parse("proof", &names.proof)?,
            txn: parse("txn", &names.txn)?,
            txn_subject: parse("txn_subject", &names.txn_subject)?,
            txn_scope: parse("txn_scope", &names.txn_scope)?,
            txn_actors: parse("txn_actors", &names.txn_actors)?,
        };
        let all = headers.names();
        if (1..all.len()).any(|i| all[..i].contains(&all[i])) {
            return Err(GatewayError::Config("identity_headers: two fields have the same name".into()));
        }
        Ok(headers)
    }

    /// The six field names.
    pub(crate) fn names(&self) -> [&HeaderName; 6] {
        [&self.caller, &self.proof, &self.txn, &self.txn_subject, &self.txn_scope, &self.txn_actors]
    }

    /// Whether a field arrived whose name is an identity field's with `_` for `-`
    /// (`X_Wimse_Caller`): CGI, WSGI, Rack and PHP applications read both as one variable
    /// (`HTTP_X_WIMSE_CALLER`), so such a field could stand in for the gateway's. Such
    /// requests are refused rather than cleaned: no honest client sends one.
    pub(crate) fn lookalike(&self, headers: &HeaderMap) -> Option<String> {
        headers.keys().filter(|name| name.as_str().contains('_')).find_map(|name| {
            let dashed = name.as_str().replace('_', "-");
            self.names().iter().any(|identity| identity.as_str() == dashed).then(|| name.as_str().to_owned())
        })
    }

    /// The refusal of a request that carries a [`lookalike`](Self::lookalike) field.
    pub(crate) fn refuse_lookalike(&self, headers: &HeaderMap) -> Result<(), wimse_core::Error> {
        match self.lookalike(headers) {
            Some(name) => Err(wimse_core::Error::with_detail(
                wimse_core::ErrorKind::InvalidHeaderValue,
                format!("the field {name} is an identity field's name with underscores"),
            )),
            None => Ok(()),
        }
    }

    /// Removes every identity field, however many times it arrived.
    pub(crate) fn strip(&self, headers: &mut HeaderMap) {
        for name in self.names() {
            headers.remove(name);
        }
    }

    /// Writes the verified identity (nothing for an anonymous request) onto a request for the
    /// application. A Txn-Token value that cannot be a header field (not visible ASCII) is left
    /// out, with a debug log.
    pub(crate) fn write(&self, caller: Option<&VerifiedCaller>, headers: &mut HeaderMap) {
        if let Some(caller) = caller {
            self.write_fields(caller, headers, false);
        }
    }

    /// Writes the verified identity onto a forward-auth answer: every field, empty when the
    /// caller has no such value. A proxy copies each field of the answer onto the request,
    /// and Caddy 2.6 copies an absent one as the literal text of its placeholder; an empty one
    /// it skips, and nginx removes.
    pub(crate) fn answer(&self, caller: &VerifiedCaller, headers: &mut HeaderMap) {
        self.write_fields(caller, headers, true);
    }

    fn write_fields(&self, caller: &VerifiedCaller, headers: &mut HeaderMap, every: bool) {
        set(headers, &self.caller, caller.id().as_str(), every);
        set(headers, &self.proof, caller.method().name(), every);
        let txn = caller.transaction();
        // Every verified request's identity passes here: onto the request's span too (exported
        // over OTLP by `wimse gateway serve` when configured).
        let span = tracing::Span::current();
        span.record("wimse.caller", caller.id().as_str());
        span.record("wimse.proof", caller.method().name());
        if let Some(txn) = txn {
            span.record("wimse.txn", txn.txn());
        }
        set(headers, &self.txn, txn.map_or("", |t| t.txn()), every);
        set(headers, &self.txn_subject, txn.map_or("", |t| t.subject()), every);
        set(headers, &self.txn_scope, txn.map_or("", |t| t.scope()), every);
        // The delegation chain, current actor first, space-separated (identifiers are URIs:
        // never a space in them).
        let actors = txn.map(|t| t.actors().iter().map(|a| a.as_str()).collect::<Vec<_>>().join(" "));
        set(headers, &self.txn_actors, actors.as_deref().unwrap_or(""), every);
    }
}

fn set(headers: &mut HeaderMap, name: &HeaderName, value: &str, even_empty: bool) {
    match HeaderValue::from_str(value) {
        Ok(value) if even_empty || !value.is_empty() => {
            headers.insert(name.clone(), value);
        }
        Ok(_) => {}
        Err(_) => {
            tracing::debug!(field = %name, "wimse gateway: a verified value is not a valid header value; left out");
            if even_empty {
                headers.insert(name.clone(), HeaderValue::from_static(""));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_distinct_valid_and_not_protocol_fields() {
        assert!(IdentityHeaders::new(&IdentityHeaderNames::default()).is_ok());
        let same = IdentityHeaderNames { proof: "X-Wimse-Caller".into(), ..Default::default() };
        assert!(IdentityHeaders::new(&same).is_err());
        let invalid = IdentityHeaderNames { caller: "x caller".into(), ..Default::default() };
        assert!(IdentityHeaders::new(&invalid).is_err());
        let protocol = IdentityHeaderNames { caller: "Txn-Token".into(), ..Default::default() };
        assert!(IdentityHeaders::new(&protocol).is_err());
    }

    #[test]
    fn underscore_lookalikes_of_identity_fields_are_found() {
        let headers = IdentityHeaders::new(&IdentityHeaderNames::default()).unwrap();
        let mut map = HeaderMap::new();
        map.append("x_wimse_caller", HeaderValue::from_static("spiffe://evil/a"));
        assert_eq!(headers.lookalike(&map).as_deref(), Some("x_wimse_caller"));
        let mut fine = HeaderMap::new();
        fine.append("x_request_id", HeaderValue::from_static("1"));
        fine.append("x-wimse-caller", HeaderValue::from_static("stripped elsewhere"));
        assert_eq!(headers.lookalike(&fine), None);
        assert!(headers.refuse_lookalike(&map).is_err_and(|e| e.kind() == &wimse_core::ErrorKind::InvalidHeaderValue));
    }

    #[test]
    fn every_copy_of_an_identity_field_is_removed() {
        let headers = IdentityHeaders::new(&IdentityHeaderNames::default()).unwrap();
        let mut map = HeaderMap::new();
        map.append("x-wimse-caller", HeaderValue::from_static("spiffe://evil/a"));
        map.append("X-Wimse-Caller", HeaderValue::from_static("spiffe://evil/b"));
        map.append("x-wimse-txn-subject", HeaderValue::from_static("admin"));
        map.append("accept", HeaderValue::from_static("*/*"));
        headers.strip(&mut map);
        assert_eq!(map.len(), 1);
        headers.write(None, &mut map);
        assert_eq!(map.len(), 1, "nothing is written for an anonymous request");
    }
}
