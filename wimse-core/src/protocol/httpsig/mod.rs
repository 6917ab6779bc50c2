//! HTTP Message Signatures (RFC 9421) as profiled by draft-ietf-wimse-http-signature-08.
//!
//! The profile in brief: the caller signs `@method`, `@path`, `@query` (CONNECT: `@method`,
//! `@authority`) and each of `content-type`, `content-digest`, `authorization`, `txn-token` and
//! `workload-identity-token` that is present, with the key of its WIT and `cnf.jwk.alg`.
//! Parameters `created`, `expires`, `nonce`, `tag="wimse-workload-to-workload"` and `wimse-aud`
//! are required, `keyid` and `alg` forbidden. A signed response covers `@status`, the request's
//! `@method`/`@path`/`@query` (`;req`), the responder's WIT and its content fields, and carries
//! `wimse-req-nonce`. The WIMSE signature is found by its tag, never by its label.
//!
//! A caller signs a request; the receiver checks the WIT against its trust anchors, then the
//! signature, the audience and the nonce (a second delivery is a replay):
//!
//! ```
//! use http::HeaderMap;
//! use wimse_core::protocol::httpsig::{self, OutgoingRequest, RequestParts, SignOptions, SignatureValidation};
//! use wimse_core::prelude::*;
//! use wimse_core::protocol::wit::{WitValidation, validate_wit};
//!
//! # use wimse_core::replay::ReplayClaim;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> { block_on(run()) }
//! # fn block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     let mut f = std::pin::pin!(f);
//! #     match f.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
//! #         std::task::Poll::Ready(out) => out,
//! #         std::task::Poll::Pending => unreachable!("the in-memory store answers at once"),
//! #     }
//! # }
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let now = 1_800_000_000;
//! let issuer = SigningKey::generate(Algorithm::ES256)?.with_kid("k1");
//! let workload_key = SigningKey::generate(Algorithm::ES256)?;
//! let id: WorkloadId = "spiffe://prod.example/orders".parse()?;
//! let wit = WitIssuer::new(issuer.clone()).issue(&id, workload_key.public_jwk(), now)?;
//!
//! // The caller.
//! let mut headers = HeaderMap::new();
//! let request = OutgoingRequest {
//!     method: "POST",
//!     scheme: "https",
//!     authority: "billing.example",
//!     path: "/charge",
//!     query: None,
//!     body: Some(b"amount=1"),
//!     aud: "https://billing.example/charge",
//!     sign_response: false,
//! };
//! httpsig::sign_request(&mut headers, &request, &wit, &workload_key, &SignOptions::default(), now)?;
//!
//! // The receiver: anchors and audience come from its configuration, never from the request.
//! let anchors = TrustAnchors::new().key(issuer.public_key().clone());
//! let trust = TrustStore::new().with(id.trust_domain(), anchors);
//! let caller_wit = validate_wit(headers["workload-identity-token"].to_str()?, &trust, &WitValidation::default(), now)?;
//! let parts = RequestParts {
//!     method: "POST",
//!     scheme: "https",
//!     authority: "billing.example",
//!     path: "/charge",
//!     query: None,
//!     headers: &headers,
//! };
//! let cfg = SignatureValidation::default();
//! let for_us = |aud: &str| aud == "https://billing.example/charge";
//! let signature = httpsig::verify_request(&parts, Some(b"amount=1"), &caller_wit, for_us, &cfg, now)?;
//! assert_eq!(caller_wit.subject(), &id);
//!
//! // The nonce is claimed once in a replay store (a `Verifier` does this for you).
//! let replay = InMemoryReplayStore::default();
//! let claim = ReplayClaim::signature_nonce(&signature.nonce, signature.expires + 30, signature.created - 30);
//! replay.claim(&claim, now).await?;
//! let again = replay.claim(&claim, now).await;
//! assert_eq!(again.unwrap_err().kind(), &ErrorKind::ReplayedProof);
//! # Ok(())
//! # }
//! ```

mod base;
mod digest;
mod sf;

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderValue};
use sfv::{BareItem, Parameters};

pub use base::{RequestParts, ResponseParts, signature_base};
pub use digest::{content_digest, verify_content_digest};
pub use sf::{ComponentId, ParsedSignature, parse_signatures};

use crate::draft::{HTTPSIG_LABEL, HTTPSIG_TAG, SIGNATURE_HEADER, SIGNATURE_INPUT_HEADER, WIT_HEADER};
use crate::error::{Error, ErrorKind, Result};
use crate::headers::HeaderSource;
use crate::jose::random_id;
use crate::jose::{Backend, SigningKey};
use crate::protocol::wit::VerifiedWit;
use crate::replay::MAX_PROOF_ID_LEN;
use sf::key;

/// Header fields covered whenever present: http-signature-08's five, and this
/// implementation's [`PARENT_REQUEST_HEADER`](crate::draft::PARENT_REQUEST_HEADER) (a signer
/// may cover more fields than a profile asks; a verifier that does not know it ignores it).
pub const COVERED_IF_PRESENT: [&str; 6] = [
    "content-type",
    "content-digest",
    "authorization",
    "txn-token",
    "workload-identity-token",
    crate::draft::PARENT_REQUEST_HEADER,
];

/// Whether a message carries a WIMSE HTTP signature: a `Signature-Input` member tagged
/// `wimse-workload-to-workload`. Signatures with other tags (a proxy's own, say) do not count,
/// so a WPT request may carry them. Free when there is no `Signature-Input`; otherwise a
/// substring test, and a parse only when the tag appears.
pub fn has_signature<H: HeaderSource + ?Sized>(headers: &H) -> bool {
    if headers.header_values(SIGNATURE_INPUT_HEADER).next().is_none() {
        return false;
    }
    // A field that is not text cannot be parsed; let the signature path say so.
    let Ok(inputs) = text_values(headers, SIGNATURE_INPUT_HEADER) else { return true };
    sf::has_tagged_signature(&inputs, HTTPSIG_TAG)
}

/// Why a message that carries `Signature-Input` has no WIMSE signature (`None` when it has no
/// `Signature-Input`, or has a WIMSE-tagged signature): the only signature has no `tag`
/// (`missing_parameter`) or another tag (`wrong_tag`), or none of several is tagged
/// (`no_wimse_signature`, naming the tags seen). Only labels and tags are read: a foreign
/// signature is never interpreted. A verifier says this instead of `missing_wpt` when a request
/// has neither a WPT nor a WIMSE signature, so the sender looks at its signature's tag.
pub fn why_no_wimse_signature<H: HeaderSource + ?Sized>(headers: &H) -> Option<Error> {
    if headers.header_values(SIGNATURE_INPUT_HEADER).next().is_none() || has_signature(headers) {
        return None;
    }
    Some(match text_values(headers, SIGNATURE_INPUT_HEADER) {
        Ok(inputs) => sf::why_untagged(&inputs, HTTPSIG_TAG),
        Err(error) => error,
    })
}

fn text_values<'h, H: HeaderSource + ?Sized>(headers: &'h H, name: &str) -> Result<Vec<&'h str>> {
    headers
        .header_values(name)
        .map(|v| std::str::from_utf8(v).map_err(|_| Error::new(ErrorKind::InvalidHeaderValue)))
        .collect()
}

/// Settings for checking signatures.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SignatureValidation {
    /// Clock leeway in seconds for `created` and `expires`. Defaults to 30.
    pub leeway: u64,
    /// Signatures created longer ago than this (seconds) are refused, even if unexpired. Defaults to 300.
    pub max_age: u64,
    /// `expires - created` may not exceed this (seconds). Defaults to 300.
    pub max_lifetime: u64,
    /// Components the signature must cover besides the profile's.
    pub required_components: Vec<String>,
    /// Crypto backend.
    pub backend: Backend,
}

impl Default for SignatureValidation {
    fn default() -> Self {
        Self {
            leeway: 30,
            max_age: 300,
            max_lifetime: 300,
            required_components: Vec::new(),
            backend: Backend::default(),
        }
    }
}

/// A verified WIMSE signature's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifiedSignature {
    /// `nonce`.
    pub nonce: String,
    /// `created`.
    pub created: u64,
    /// `expires`.
    pub expires: u64,
    /// `wimse-aud` (requests).
    pub aud: Option<String>,
    /// `wimse-sign-response` (requests): the caller requires a signed response.
    pub sign_response: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Request,
    Response,
}

/// Largest `Signature-Input` plus `Signature` accepted, in bytes: room for several signatures
/// (a proxy's beside the WIMSE one) while refusing megabyte parameters before parsing them.
pub const MAX_SIGNATURE_FIELDS_LEN: usize = 16 * 1024;

fn check_field_size(inputs: &[&str], values: &[&str]) -> Result<()> {
    let len: usize = inputs.iter().chain(values).map(|v| v.len()).sum();
    if len > MAX_SIGNATURE_FIELDS_LEN {
        return Err(Error::with_detail(
            ErrorKind::OversizedToken,
            format!("Signature-Input and Signature: {len} bytes > {MAX_SIGNATURE_FIELDS_LEN}"),
        ));
    }
    Ok(())
}

fn required<T>(value: Option<T>, name: &'static str) -> Result<T> {
    value.ok_or_else(|| Error::with_detail(ErrorKind::MissingSignatureParameter, name))
}

/// Parameter and time checks shared by requests and responses.
fn check_params(sig: &ParsedSignature, kind: Kind, cfg: &SignatureValidation, now: u64) -> Result<VerifiedSignature> {
    let forbidden: &[&str] = match kind {
        Kind::Request => &["keyid", "alg"],
        Kind::Response => &["keyid", "alg", "wimse-aud", "wimse-sign-response"],
    };
    if let Some(name) = forbidden.iter().find(|name| sig.params.contains_key(**name)) {
        return Err(Error::with_detail(ErrorKind::ForbiddenSignatureParameter, *name));
    }
    let created = required(sig.int_param("created")?, "created")?;
    let expires = required(sig.int_param("expires")?, "expires")?;
    let nonce = required(sig.str_param("nonce")?, "nonce")?;
    if nonce.is_empty() || nonce.len() > MAX_PROOF_ID_LEN {
        return Err(Error::with_detail(ErrorKind::SignatureMalformed, "nonce empty or longer than 256 bytes"));
    }
    let nonce = nonce.to_owned();
    required(sig.str_param("tag")?, "tag")?;
    let aud = sig.str_param("wimse-aud")?.map(str::to_owned);
    if kind == Kind::Request {
        required(aud.as_ref(), "wimse-aud")?;
    } else {
        required(sig.str_param("wimse-req-nonce")?, "wimse-req-nonce")?;
    }
    let (Ok(created), Ok(expires)) = (u64::try_from(created), u64::try_from(expires)) else {
        return Err(Error::with_detail(ErrorKind::SignatureMalformed, "negative time"));
    };
    if created > now.saturating_add(cfg.leeway) {
        return Err(ErrorKind::SignatureCreatedInFuture.into());
    }
    if now >= expires.saturating_add(cfg.leeway) {
        return Err(ErrorKind::SignatureExpired.into());
    }
    if now.saturating_sub(created) > cfg.max_age.saturating_add(cfg.leeway) {
        return Err(ErrorKind::SignatureTooOld.into());
    }
    if expires < created || expires - created > cfg.max_lifetime {
        return Err(ErrorKind::SignatureLifetimeTooLong.into());
    }
    Ok(VerifiedSignature {
        nonce,
        created,
        expires,
        aud,
        sign_response: sig.bool_param("wimse-sign-response")?.unwrap_or(false),
    })
}

fn check_coverage<H: HeaderSource + ?Sized>(
    sig: &ParsedSignature,
    must: &[ComponentId],
    headers: &H,
    extra: &[String],
) -> Result<()> {
    let covered = |id: &ComponentId| sig.components.contains(id);
    let missing = |id: &ComponentId| Error::with_detail(ErrorKind::MissingCoveredComponent, id.to_string());
    for id in must {
        if !covered(id) {
            return Err(missing(id));
        }
    }
    for name in COVERED_IF_PRESENT.iter().copied().chain(extra.iter().map(String::as_str)) {
        let id = ComponentId::new(name);
        let present = headers.header_values(name).next().is_some();
        let required_anyway = extra.iter().any(|e| e == name);
        if (present || required_anyway) && !covered(&id) {
            return Err(missing(&id));
        }
    }
    Ok(())
}

/// A CONNECT target has no path or query: a signature of the request or of its response that
/// covers them (`@path`, `@query`, or `;req`) is refused.
fn refuse_connect_path<H: ?Sized>(req: &RequestParts<'_, H>, sig: &ParsedSignature) -> Result<()> {
    if req.method.eq_ignore_ascii_case("CONNECT")
        && sig.components.iter().any(|c| c.name == "@path" || c.name == "@query")
    {
        return Err(Error::with_detail(ErrorKind::ForbiddenComponent, "CONNECT must not cover @path or @query"));
    }
    Ok(())
}

fn request_must_cover<H: ?Sized>(req: &RequestParts<'_, H>, response: bool) -> Vec<ComponentId> {
    let make = |name: &str| if response { ComponentId::req(name) } else { ComponentId::new(name) };
    if req.method.eq_ignore_ascii_case("CONNECT") {
        vec![make("@method"), make("@authority")]
    } else {
        vec![make("@method"), make("@path"), make("@query")]
    }
}

/// Checks the content against `Content-Digest`. `body` is `None` only when the message has no
/// content: a message that announces one (`Content-Digest`, a non-zero `Content-Length`, or a
/// `Transfer-Encoding`) while the caller supplied none fails closed, so a digest can never go
/// unchecked because an integration forgot to hand the body over.
fn check_body<H: HeaderSource + ?Sized>(headers: &H, body: Option<&[u8]>) -> Result<()> {
    let digests = text_values(headers, "content-digest")?;
    let Some(body) = body else {
        let announced_length = headers
            .header_values("content-length")
            .any(|v| std::str::from_utf8(v).map(str::trim).is_ok_and(|v| v != "0"));
        let chunked = headers.header_values("transfer-encoding").next().is_some();
        if !digests.is_empty() || announced_length || chunked {
            return Err(Error::with_detail(
                ErrorKind::BodyNotSupplied,
                "the message has content (or a Content-Digest) but it was not given to the verifier",
            ));
        }
        return Ok(());
    };
    check_content(&digests, body)
}

fn verify_bytes(sig: &ParsedSignature, base: &str, wit: &VerifiedWit, backend: Backend) -> Result<()> {
    if wit.cnf_key().verify(backend, wit.cnf_algorithm(), base.as_bytes(), &sig.value) {
        Ok(())
    } else {
        Err(ErrorKind::InvalidHttpSignature.into())
    }
}

fn no_headers() -> &'static HeaderMap {
    static EMPTY: std::sync::OnceLock<HeaderMap> = std::sync::OnceLock::new();
    EMPTY.get_or_init(HeaderMap::new)
}

/// Verifies the WIMSE signature of a request whose WIT (`wit`, from the same request) was
/// already validated. `body` is the received content when the request has one; it is checked
/// against `Content-Digest`. The nonce is not claimed here: claim
/// [`ReplayClaim::signature_nonce`](crate::replay::ReplayClaim::signature_nonce) in a
/// [`ReplayStore`](crate::replay::ReplayStore) afterwards (a [`Verifier`](crate::server::verify::Verifier)
/// does, after the policy).
pub fn verify_request<H: HeaderSource + ?Sized>(
    req: &RequestParts<'_, H>,
    body: Option<&[u8]>,
    wit: &VerifiedWit,
    audience_ok: impl Fn(&str) -> bool,
    cfg: &SignatureValidation,
    now: u64,
) -> Result<VerifiedSignature> {
    let verified = verify_request_headers(req, wit, audience_ok, cfg, now)?;
    if body.is_none() && !without_content(req.method) {
        // HTTP/2 and HTTP/3 carry content in DATA frames with no header announcing it: for a
        // method that usually has content, only the caller knows there is none.
        return Err(Error::with_detail(
            ErrorKind::BodyNotSupplied,
            "a signed request of a method with content must be given its body (empty if it has none)",
        ));
    }
    check_body(req.headers, body)?;
    Ok(verified)
}

/// Methods whose requests have no content in practice (RFC 9110 gives content of GET, HEAD,
/// DELETE, OPTIONS no meaning; TRACE and CONNECT have none): without a body, a request of one of
/// these is taken as empty unless its header fields announce content.
fn without_content(method: &str) -> bool {
    ["GET", "HEAD", "DELETE", "OPTIONS", "TRACE", "CONNECT"].iter().any(|m| m.eq_ignore_ascii_case(method))
}

/// [`verify_request`] without the content: everything the header fields can tell (parameters,
/// coverage, audience, the signature over its base, which covers `Content-Digest`). A server
/// checks this before it reads a byte of the body, then the body with [`check_content`].
pub fn verify_request_headers<H: HeaderSource + ?Sized>(
    req: &RequestParts<'_, H>,
    wit: &VerifiedWit,
    audience_ok: impl Fn(&str) -> bool,
    cfg: &SignatureValidation,
    now: u64,
) -> Result<VerifiedSignature> {
    let inputs = text_values(req.headers, SIGNATURE_INPUT_HEADER)?;
    let values = text_values(req.headers, SIGNATURE_HEADER)?;
    if inputs.is_empty() {
        return Err(ErrorKind::NoWimseSignature.into());
    }
    check_field_size(&inputs, &values)?;
    let sig = sf::tagged_signature(&inputs, &values, HTTPSIG_TAG)?;
    let verified = check_params(&sig, Kind::Request, cfg, now)?;
    check_coverage(&sig, &request_must_cover(req, false), req.headers, &cfg.required_components)?;
    refuse_connect_path(req, &sig)?;
    match verified.aud.as_deref() {
        Some(aud) if audience_ok(aud) => {}
        Some(aud) => return Err(crate::protocol::wpt::audience_mismatch("wimse-aud", aud)),
        None => return Err(Error::with_detail(ErrorKind::AudienceMismatch, "no wimse-aud parameter")),
    }
    let base = signature_base::<H, HeaderMap>(&sig.components, &sig.signature_params, Some(req), None)?;
    verify_bytes(&sig, &base, wit, cfg.backend)?;
    Ok(verified)
}

/// Checks a received body against the `Content-Digest` values of its message (all field lines,
/// as sent): a body needs a digest, and the digest must match; an empty body needs none.
pub fn check_content(digests: &[&str], body: &[u8]) -> Result<()> {
    if body.is_empty() && digests.is_empty() {
        return Ok(());
    }
    if digests.is_empty() {
        return Err(Error::with_detail(ErrorKind::MissingCoveredComponent, "a body without Content-Digest"));
    }
    verify_content_digest(digests, body)
}

/// Verifies a signed response against the request it answers. `server_wit` is the responder's
/// WIT (from the response's `Workload-Identity-Token`, validated by the caller) and
/// `request_nonce` the nonce of the request's signature.
pub fn verify_response<Q: HeaderSource + ?Sized, R: HeaderSource + ?Sized>(
    req: &RequestParts<'_, Q>,
    res: &ResponseParts<'_, R>,
    body: Option<&[u8]>,
    server_wit: &VerifiedWit,
    request_nonce: &str,
    cfg: &SignatureValidation,
    now: u64,
) -> Result<VerifiedSignature> {
    let inputs = text_values(res.headers, SIGNATURE_INPUT_HEADER)?;
    let values = text_values(res.headers, SIGNATURE_HEADER)?;
    if inputs.is_empty() {
        return Err(ErrorKind::NoWimseSignature.into());
    }
    check_field_size(&inputs, &values)?;
    let sig = sf::tagged_signature(&inputs, &values, HTTPSIG_TAG)?;
    let verified = check_params(&sig, Kind::Response, cfg, now)?;
    let mut must = vec![ComponentId::new("@status")];
    must.extend(request_must_cover(req, true));
    check_coverage(&sig, &must, res.headers, &cfg.required_components)?;
    refuse_connect_path(req, &sig)?;
    if sig.str_param("wimse-req-nonce")? != Some(request_nonce) {
        return Err(ErrorKind::RequestNonceMismatch.into());
    }
    let base = signature_base(&sig.components, &sig.signature_params, Some(req), Some(res))?;
    verify_bytes(&sig, &base, server_wit, cfg.backend)?;
    check_body(res.headers, body)?;
    Ok(verified)
}

/// How to sign a message.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SignOptions {
    /// Signature lifetime in seconds (`expires - created`). Defaults to 60.
    pub lifetime: u64,
    /// Crypto backend.
    pub backend: Backend,
}

impl Default for SignOptions {
    fn default() -> Self {
        Self { lifetime: 60, backend: Backend::default() }
    }
}

/// What a request signature needs to be remembered for its response.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestSignature {
    /// The request's `nonce`, which a signed response must carry back.
    pub nonce: String,
    /// Whether a signed response was required.
    pub sign_response: bool,
}

impl fmt::Debug for RequestSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestSignature").field("sign_response", &self.sign_response).finish_non_exhaustive()
    }
}

fn params(created: u64, lifetime: u64, nonce: &str) -> Result<Parameters> {
    let string = |s: &str| {
        sfv::String::from_string(s.to_owned())
            .map(BareItem::String)
            .map_err(|_| Error::new(ErrorKind::InvalidHeaderValue))
    };
    let int = |v: u64| {
        i64::try_from(v)
            .ok()
            .and_then(|v| sfv::Integer::try_from(v).ok())
            .map(BareItem::Integer)
            .ok_or_else(|| Error::new(ErrorKind::Crypto))
    };
    let mut p = Parameters::new();
    p.insert(key("created"), int(created)?);
    p.insert(key("expires"), int(created.saturating_add(lifetime))?);
    p.insert(key("nonce"), string(nonce)?);
    p.insert(key("tag"), string(HTTPSIG_TAG)?);
    Ok(p)
}

fn covered_fields(headers: &HeaderMap) -> impl Iterator<Item = ComponentId> + '_ {
    COVERED_IF_PRESENT.into_iter().filter(|name| headers.contains_key(*name)).map(ComponentId::new)
}

fn attach(headers: &mut HeaderMap, signature_params: &str, signature: &[u8]) -> Result<()> {
    let invalid = |_| Error::new(ErrorKind::InvalidHeaderValue);
    let input = HeaderValue::from_str(&format!("{HTTPSIG_LABEL}={signature_params}")).map_err(invalid)?;
    let value = HeaderValue::from_str(&format!("{HTTPSIG_LABEL}=:{}:", STANDARD.encode(signature))).map_err(invalid)?;
    headers.insert(SIGNATURE_INPUT_HEADER, input);
    headers.insert(SIGNATURE_HEADER, value);
    Ok(())
}

fn set_wit_and_digest(headers: &mut HeaderMap, wit: &str, body: Option<&[u8]>) -> Result<()> {
    let invalid = |_| Error::new(ErrorKind::InvalidHeaderValue);
    let mut wit = HeaderValue::from_str(wit).map_err(invalid)?;
    wit.set_sensitive(true);
    headers.insert(WIT_HEADER, wit);
    headers.remove("content-digest");
    if let Some(body) = body.filter(|b| !b.is_empty()) {
        headers.insert("content-digest", HeaderValue::from_str(&content_digest(body)).map_err(invalid)?);
    }
    Ok(())
}

/// A request to sign: what its derived components come from, its body and its recipient.
#[derive(Debug, Clone, Copy)]
pub struct OutgoingRequest<'a> {
    /// Method (`@method`).
    pub method: &'a str,
    /// Scheme the client uses (`https`).
    pub scheme: &'a str,
    /// Host and port as the client dials them (`@authority`).
    pub authority: &'a str,
    /// Path (`@path`).
    pub path: &'a str,
    /// Query without `?` (`@query`), if any.
    pub query: Option<&'a str>,
    /// The content, when the request has one: `Content-Digest` is set for it.
    pub body: Option<&'a [u8]>,
    /// The recipient (`wimse-aud`).
    pub aud: &'a str,
    /// Asks the server to sign its response (`wimse-sign-response`).
    pub sign_response: bool,
}

/// Signs a request: sets `Workload-Identity-Token`, `Content-Digest` (when there is a body),
/// `Signature-Input` and `Signature` in `headers`. Signatures already present (an inbound
/// request's) are replaced.
pub fn sign_request(
    headers: &mut HeaderMap,
    request: &OutgoingRequest<'_>,
    wit: &str,
    key: &SigningKey,
    options: &SignOptions,
    now: u64,
) -> Result<RequestSignature> {
    let OutgoingRequest { method, scheme, authority, path, query, body, aud, sign_response } = *request;
    set_wit_and_digest(headers, wit, body)?;
    let req = RequestParts { method, scheme, authority, path, query, headers: no_headers() };
    let mut components = request_must_cover(&req, false);
    components.extend(covered_fields(headers));
    let nonce = random_id();
    let mut p = params(now, options.lifetime, &nonce)?;
    p.insert(
        key_of("wimse-aud"),
        sfv::String::from_string(aud.to_owned())
            .map(BareItem::String)
            .map_err(|_| Error::new(ErrorKind::InvalidHeaderValue))?,
    );
    if sign_response {
        p.insert(key_of("wimse-sign-response"), BareItem::Boolean(true));
    }
    let signature_params = sf::serialize_inner_list(&sf::inner_list(&components, p)?);
    let req = RequestParts { headers: &*headers, ..req };
    let base = signature_base::<HeaderMap, HeaderMap>(&components, &signature_params, Some(&req), None)?;
    let signature = key.sign(options.backend, base.as_bytes())?;
    attach(headers, &signature_params, &signature)?;
    Ok(RequestSignature { nonce, sign_response })
}

fn key_of(name: &str) -> sfv::Key {
    key(name)
}

/// A response to sign, and the nonce of the signed request it answers.
#[derive(Debug, Clone, Copy)]
pub struct OutgoingResponse<'a> {
    /// Status code (`@status`).
    pub status: u16,
    /// The content, when the response has one: `Content-Digest` is set for it.
    pub body: Option<&'a [u8]>,
    /// The request signature's `nonce` (`wimse-req-nonce`).
    pub request_nonce: &'a str,
}

/// Signs a response to `req`: sets the responder's `Workload-Identity-Token`, `Content-Digest`
/// (when there is a body), `Signature-Input` and `Signature` in `headers`.
pub fn sign_response<Q: HeaderSource + ?Sized>(
    headers: &mut HeaderMap,
    response: &OutgoingResponse<'_>,
    req: &RequestParts<'_, Q>,
    wit: &str,
    key: &SigningKey,
    options: &SignOptions,
    now: u64,
) -> Result<()> {
    let OutgoingResponse { status, body, request_nonce } = *response;
    set_wit_and_digest(headers, wit, body)?;
    let mut components = vec![ComponentId::new("@status")];
    components.extend(request_must_cover(req, true));
    components.extend(covered_fields(headers).filter(|c| c.name != "authorization" && c.name != "txn-token"));
    let mut p = params(now, options.lifetime, &random_id())?;
    p.insert(
        key_of("wimse-req-nonce"),
        sfv::String::from_string(request_nonce.to_owned())
            .map(BareItem::String)
            .map_err(|_| Error::new(ErrorKind::InvalidHeaderValue))?,
    );
    let signature_params = sf::serialize_inner_list(&sf::inner_list(&components, p)?);
    let res = ResponseParts { status, headers: &*headers };
    let base = signature_base(&components, &signature_params, Some(req), Some(&res))?;
    let signature = key.sign(options.backend, base.as_bytes())?;
    attach(headers, &signature_params, &signature)
}
