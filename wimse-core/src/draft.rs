//! Every protocol constant that depends on a draft revision, in one place.
//!
//! When a new draft revision renames a header, a `typ` value or a tag, the change is one line here.

/// The draft revisions this crate implements (digest section 0).
pub mod revisions {
    /// Workload Identifier rules.
    pub const IDENTIFIER: &str = "draft-ietf-wimse-identifier-03";
    /// Workload Identity Token (and, later, WIC).
    pub const WORKLOAD_CREDS: &str = "draft-ietf-wimse-workload-creds-02";
    /// Workload Proof Token.
    pub const WPT: &str = "draft-ietf-wimse-wpt-02";
    /// HTTP Message Signatures profile.
    pub const HTTP_SIGNATURE: &str = "draft-ietf-wimse-http-signature-08";
    /// Transaction Tokens (OAuth WG): format, validation, the TTS's RFC 8693 profile.
    pub const TXN_TOKENS: &str = "draft-ietf-oauth-transaction-tokens-11";
}

/// Header field carrying the WIT (workload-creds-02 §5.1.1).
pub const WIT_HEADER: &str = "workload-identity-token";
/// Header field carrying the WPT since wpt-02, with the [`WPT_AUTH_SCHEME`] scheme.
pub const AUTHORIZATION_HEADER: &str = "authorization";
/// HTTP authentication scheme of the WPT (wpt-02); compared case-insensitively.
pub const WPT_AUTH_SCHEME: &str = "WPT";
/// Challenge sent with `401` responses about WPT credentials (wpt-02: no parameters defined).
pub const WPT_CHALLENGE: &str = "WPT";
/// Header field of a Transaction Token, bound by the WPT `tth` claim.
pub const TXN_TOKEN_HEADER: &str = "txn-token";
/// Header field naming the request that caused this one: the proof id (WPT `jti`, signature
/// `nonce`) of the request the caller was serving when it made this call. Not a draft field:
/// this implementation's, so that audit records link the hops of a call chain. Bound like a
/// context token (the WPT's `oth`; covered by an HTTP signature when present), so a verifier
/// records it only as the authenticated caller's own statement. See
/// `wimse_core::client::exchange::ContextTokens::parent_request`.
pub const PARENT_REQUEST_HEADER: &str = "wimse-parent-request";

/// JOSE `typ` of a WIT, as emitted (the short form; see [`typ_is`] for what is accepted).
pub const WIT_TYP: &str = "wit+jwt";
/// JOSE `typ` of a WPT, as emitted (the short form).
pub const WPT_TYP: &str = "wpt+jwt";

/// Whether a received `typ` names the media type whose short form is `short` (`wit+jwt`):
/// RFC 7515 §4.1.9 has a recipient treat a value without `/` as if `application/` were
/// prepended, and media types compare case-insensitively. So `wit+jwt`, `application/wit+jwt`
/// and `WIT+JWT` match; anything else (surrounding spaces, parameters, legacy names) does not.
pub fn typ_is(typ: &str, short: &str) -> bool {
    let full = match typ.split_once('/') {
        None => typ,
        Some((kind, subtype)) if kind.eq_ignore_ascii_case("application") => subtype,
        Some(_) => return false,
    };
    full.eq_ignore_ascii_case(short)
}
/// Media type of a WIT.
pub const WIT_MEDIA_TYPE: &str = "application/wit+jwt";
/// Media type of a WPT.
pub const WPT_MEDIA_TYPE: &str = "application/wpt+jwt";

/// Base of the RFC 9457 problem `type` URIs this project answers with. The drafts register none,
/// so the project names its own; the part after the colon is [`crate::ErrorKind::reason`].
pub const PROBLEM_TYPE_BASE: &str = "urn:wimse-rs:problem:";

/// `use` value of WIT signing keys in a SPIFFE trust bundle (SPIFFE WIT-SVID).
pub const SPIFFE_BUNDLE_WIT_USE: &str = "wit-svid";

/// Whether `iss` is a value compatible with OpenID Connect Discovery, which the SPIFFE WIT-SVID
/// profile (§3.7) says a WIT-SVID's `iss` SHOULD NOT be, "to prevent the validation and
/// acceptance of the WIT-SVID as an OIDC ID Token without validation of a proof of possession".
/// The profile does not define the term; this reads it as OpenID Connect Core defines an Issuer
/// Identifier: an `https` URL with a host and no query or fragment (discovery then fetches
/// `<iss>/.well-known/openid-configuration`). A `spiffe://` or `http:` URI, a URN, or an `https`
/// URL with a query or fragment is not.
pub fn oidc_discovery_compatible(iss: &str) -> bool {
    let Ok(uri) = fluent_uri::Uri::parse(iss) else { return false };
    uri.scheme().as_str().eq_ignore_ascii_case("https")
        && uri.authority().is_some_and(|authority| !authority.host().is_empty())
        && uri.query().is_none()
        && uri.fragment().is_none()
}

/// `tag` of the WIMSE HTTP message signature (http-signature-08).
pub const HTTPSIG_TAG: &str = "wimse-workload-to-workload";
/// Label this crate gives its signatures (receivers find the signature by tag, not label).
pub const HTTPSIG_LABEL: &str = "wimse";
/// RFC 9421 `Signature-Input` field.
pub const SIGNATURE_INPUT_HEADER: &str = "signature-input";
/// RFC 9421 `Signature` field.
pub const SIGNATURE_HEADER: &str = "signature";
/// Problem type of every rejected signed request (http-signature-08; the body does not say
/// which check failed). The draft names the fragment; the base is this project's.
pub const SIGNATURE_INVALID_PROBLEM: &str = "urn:wimse-rs:problem:wimse-signature-invalid";
/// Problem type when a signed response was asked for and this server does not sign responses.
pub const SIGNED_RESPONSE_UNSUPPORTED_PROBLEM: &str = "urn:wimse-rs:problem:wimse-signed-response-unsupported";
/// Problem type when this server signs responses, but cannot sign this one.
pub const SIGNED_RESPONSE_UNAVAILABLE_PROBLEM: &str = "urn:wimse-rs:problem:wimse-signed-response-unavailable";

#[cfg(test)]
mod tests {
    #[test]
    fn oidc_discovery_compatible_issuers() {
        for yes in ["https://issuer.prod.example", "https://issuer.prod.example/", "HTTPS://a.example:8443/td/prod"] {
            assert!(super::oidc_discovery_compatible(yes), "{yes}");
        }
        for no in [
            "spiffe://prod.example",
            "http://issuer.prod.example",
            "urn:wimse:prod",
            "https://issuer.prod.example/?td=prod",
            "https://issuer.prod.example/#prod",
            "https:///path",
            "https:issuer",
            "issuer.prod.example",
            "",
        ] {
            assert!(!super::oidc_discovery_compatible(no), "{no}");
        }
    }
}
