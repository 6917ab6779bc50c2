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

/// JOSE `typ` of a WIT (exact match; see the crate docs for why `application/wit+jwt` is refused).
pub const WIT_TYP: &str = "wit+jwt";
/// JOSE `typ` of a WPT (exact match).
pub const WPT_TYP: &str = "wpt+jwt";
/// Media type of a WIT.
pub const WIT_MEDIA_TYPE: &str = "application/wit+jwt";
/// Media type of a WPT.
pub const WPT_MEDIA_TYPE: &str = "application/wpt+jwt";

/// Base of the RFC 9457 problem `type` URIs this project answers with. The drafts register none,
/// so the project names its own; the part after the colon is [`crate::ErrorKind::reason`].
pub const PROBLEM_TYPE_BASE: &str = "urn:wimse-rs:problem:";

/// `use` value of WIT signing keys in a SPIFFE trust bundle (SPIFFE WIT-SVID).
pub const SPIFFE_BUNDLE_WIT_USE: &str = "wit-svid";
