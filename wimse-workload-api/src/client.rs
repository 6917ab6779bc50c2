//! One-shot fetches and raw streams from a Workload API endpoint.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use tonic::transport::Channel;
use wimse_core::client::cred::Credentials;
use wimse_core::id::{TrustDomain, WorkloadId};
use wimse_core::jose::{Jwk, SigningKey, jws};
use wimse_core::protocol::trust::TrustAnchors;
use wimse_core::protocol::wic::WorkloadCertificate;

use crate::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use crate::proto::{WitBundlesRequest, WitsvidRequest, X509svidRequest};
use crate::{Endpoint, SECURITY_HEADER, WorkloadApiError};

pub(crate) const WIT_PROFILE: &str = "the WIT-SVID profile";
pub(crate) const X509_PROFILE: &str = "the X.509-SVID profile";

/// Responses larger than this are refused (a WIT-SVID response is a few kilobytes per identity).
const MAX_RESPONSE: usize = 4 * 1024 * 1024;

/// A WIT-SVID: the WIT of one identity with its private key, checked to belong together.
#[derive(Debug, Clone)]
pub struct WitSvid {
    /// The identity.
    pub spiffe_id: WorkloadId,
    /// The operator's hint (empty when none).
    pub hint: String,
    /// The WIT and its key, ready for a [`Signer`](wimse_core::client::sign::Signer).
    pub credentials: Arc<Credentials>,
}

/// An X.509-SVID: one identity's certificate chain and key, and its trust domain's CAs.
#[derive(Debug, Clone)]
pub struct X509Svid {
    /// The identity.
    pub spiffe_id: WorkloadId,
    /// The operator's hint (empty when none).
    pub hint: String,
    /// The certificate chain (leaf first) and its key.
    pub certificate: WorkloadCertificate,
    /// The CA certificates of its trust domain.
    pub bundle: Vec<CertificateDer<'static>>,
}

/// One complete `FetchX509SVID` message: the SVIDs and every trust domain's CA certificates
/// (the SVIDs' own and the federated ones).
#[derive(Debug, Clone)]
pub struct X509SvidUpdate {
    /// The SVIDs, in the server's order.
    pub svids: Vec<X509Svid>,
    /// CA certificates per trust domain.
    pub bundles: Vec<(TrustDomain, Vec<CertificateDer<'static>>)>,
}

/// A Workload API client: every request carries `workload.spiffe.io: true`.
#[derive(Debug, Clone)]
pub struct WorkloadApiClient {
    inner: SpiffeWorkloadApiClient<Channel>,
    endpoint: Endpoint,
}

fn invalid(detail: impl Into<String>) -> WorkloadApiError {
    WorkloadApiError::InvalidResponse(detail.into())
}

impl WorkloadApiClient {
    /// A client of `endpoint` (connected on first use).
    pub fn new(endpoint: Endpoint) -> Self {
        let inner = SpiffeWorkloadApiClient::new(endpoint.channel()).max_decoding_message_size(MAX_RESPONSE);
        Self { inner, endpoint }
    }

    /// A client of the endpoint in `SPIFFE_ENDPOINT_SOCKET`.
    pub fn from_env() -> Result<Self, WorkloadApiError> {
        Ok(Self::new(Endpoint::from_env()?))
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn request<T>(message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert(SECURITY_HEADER, tonic::metadata::MetadataValue::from_static("true"));
        request
    }

    /// Opens the `FetchWITSVID` stream (for `spiffe_id` only, or every identity of this process).
    pub async fn stream_wit_svids(
        &self,
        spiffe_id: Option<&WorkloadId>,
    ) -> Result<tonic::Streaming<crate::proto::WitsvidResponse>, WorkloadApiError> {
        let request = WitsvidRequest { spiffe_id: spiffe_id.map(|id| id.as_str().to_owned()).unwrap_or_default() };
        let response = self.inner.clone().fetch_witsvid(Self::request(request)).await;
        response.map(tonic::Response::into_inner).map_err(|s| WorkloadApiError::from_status(&s, WIT_PROFILE))
    }

    /// Opens the `FetchWITBundles` stream.
    pub async fn stream_wit_bundles(
        &self,
    ) -> Result<tonic::Streaming<crate::proto::WitBundlesResponse>, WorkloadApiError> {
        let response = self.inner.clone().fetch_wit_bundles(Self::request(WitBundlesRequest {})).await;
        response.map(tonic::Response::into_inner).map_err(|s| WorkloadApiError::from_status(&s, WIT_PROFILE))
    }

    /// Opens the `FetchX509SVID` stream.
    pub async fn stream_x509_svids(
        &self,
    ) -> Result<tonic::Streaming<crate::proto::X509svidResponse>, WorkloadApiError> {
        let response = self.inner.clone().fetch_x509svid(Self::request(X509svidRequest {})).await;
        response.map(tonic::Response::into_inner).map_err(|s| WorkloadApiError::from_status(&s, X509_PROFILE))
    }

    /// The current WIT-SVIDs (the first message of the stream), within `timeout`.
    pub async fn fetch_wit_svids(
        &self,
        spiffe_id: Option<&WorkloadId>,
        timeout: Duration,
    ) -> Result<Vec<WitSvid>, WorkloadApiError> {
        let stream = self.stream_wit_svids(spiffe_id);
        let message = first(stream, timeout, WIT_PROFILE).await?;
        parse_wit_svids(message)
    }

    /// The current WIT bundles (the first message of the stream), within `timeout`.
    pub async fn fetch_wit_bundles(
        &self,
        timeout: Duration,
    ) -> Result<Vec<(TrustDomain, TrustAnchors)>, WorkloadApiError> {
        let message = first(self.stream_wit_bundles(), timeout, WIT_PROFILE).await?;
        parse_wit_bundles(message)
    }

    /// The current X.509-SVIDs and bundles (the first message of the stream), within `timeout`.
    pub async fn fetch_x509_svids(&self, timeout: Duration) -> Result<X509SvidUpdate, WorkloadApiError> {
        let message = first(self.stream_x509_svids(), timeout, X509_PROFILE).await?;
        parse_x509_svids(message)
    }
}

/// Opens a stream and reads its first message.
pub(crate) async fn open_first<M>(
    open: impl Future<Output = Result<tonic::Streaming<M>, WorkloadApiError>>,
    profile: &'static str,
) -> Result<(M, tonic::Streaming<M>), WorkloadApiError> {
    let mut stream = open.await?;
    match stream.message().await {
        Ok(Some(message)) => Ok((message, stream)),
        Ok(None) => Err(WorkloadApiError::NoAnswer("the stream ended before its first message".into())),
        Err(status) => Err(WorkloadApiError::from_status(&status, profile)),
    }
}

async fn first<M>(
    open: impl Future<Output = Result<tonic::Streaming<M>, WorkloadApiError>>,
    timeout: Duration,
    profile: &'static str,
) -> Result<M, WorkloadApiError> {
    match tokio::time::timeout(timeout, open_first(open, profile)).await {
        Ok(outcome) => outcome.map(|(message, _)| message),
        Err(_) => Err(WorkloadApiError::NoAnswer(format!("nothing within {timeout:?}"))),
    }
}

/// Clock leeway for a WIT-SVID's `nbf`, in seconds.
const NBF_LEEWAY: u64 = 60;

/// Checks every WIT-SVID of a message against the profile (see [`parse_wit_svid`]).
pub(crate) fn parse_wit_svids(message: crate::proto::WitsvidResponse) -> Result<Vec<WitSvid>, WorkloadApiError> {
    if message.svids.is_empty() {
        return Err(invalid("a WIT-SVID response without SVIDs"));
    }
    message.svids.into_iter().map(parse_wit_svid).collect()
}

/// Checks one WIT-SVID against the profile: the WIT parses, is typed `wit+jwt`, is signed with
/// an allowed algorithm, has a `kid` and no `aud`, is not valid only in the future, names the
/// SPIFFE ID it is delivered for, and its `cnf` is the delivered key (of an allowed algorithm).
pub(crate) fn parse_wit_svid(svid: crate::proto::Witsvid) -> Result<WitSvid, WorkloadApiError> {
    let spiffe_id = WorkloadId::parse(&svid.spiffe_id).map_err(|e| invalid(format!("spiffe_id: {e}")))?;
    let refuse = |what: &str| invalid(format!("WIT-SVID of {spiffe_id}: {what}"));
    let token = jws::parse(svid.wit_svid.trim(), wimse_core::protocol::wit::DEFAULT_MAX_TOKEN_LEN)
        .map_err(|e| invalid(format!("WIT-SVID of {spiffe_id}: {e}")))?;
    wimse_core::protocol::wit_svid::check_profile(&token).map_err(|e| refuse(&e.to_string()))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if token.claims.get("nbf").and_then(|v| v.as_u64()).is_some_and(|nbf| nbf > now + NBF_LEEWAY) {
        return Err(refuse("not valid yet (nbf)"));
    }
    let jwk = Jwk::from_json(&svid.wit_svid_key).map_err(|e| invalid(format!("key of {spiffe_id}: {e}")))?;
    let key = SigningKey::from_jwk(&jwk).map_err(|e| invalid(format!("key of {spiffe_id}: {e}")))?;
    if !wimse_core::protocol::wit_svid::ALGORITHMS.contains(&key.algorithm().as_str()) {
        return Err(refuse("the key's algorithm is not one the WIT-SVID profile allows"));
    }
    let iss = token.claims.get("iss").and_then(|v| v.as_str()).map(str::to_owned);
    let credentials =
        Credentials::new(svid.wit_svid, key).map_err(|e| invalid(format!("WIT-SVID of {spiffe_id}: {e}")))?;
    if credentials.subject() != &spiffe_id {
        return Err(invalid(format!("a WIT-SVID for {} delivered as {spiffe_id}", credentials.subject())));
    }
    if let Some(iss) = iss {
        warn_oidc_shaped_issuer(&spiffe_id, &iss);
    }
    Ok(WitSvid { spiffe_id, hint: svid.hint, credentials: Arc::new(credentials) })
}

/// How many distinct issuers [`warn_oidc_shaped_issuer`] remembers: a misconfigured issuer
/// gets one warning, and a hostile endpoint cannot grow the set without bound.
const WARNED_ISSUERS: usize = 64;

/// Warns, once per value, that a WIT-SVID's `iss` is compatible with OpenID Connect Discovery:
/// the WIT-SVID profile (§3.7) says it SHOULD NOT be, so that no relying party takes the
/// WIT-SVID for an ID token without a proof of possession. The SVID is still used (a SHOULD
/// NOT, and the issuer's to fix).
fn warn_oidc_shaped_issuer(spiffe_id: &WorkloadId, iss: &str) {
    static WARNED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    if !wimse_core::draft::oidc_discovery_compatible(iss) {
        return;
    }
    let mut warned = WARNED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if warned.len() >= WARNED_ISSUERS || warned.iter().any(|seen| seen == iss) {
        return;
    }
    warned.push(iss.to_owned());
    tracing::warn!(%spiffe_id, iss, "wimse: a WIT-SVID's iss is an https URL without query or fragment, a value compatible with OpenID Connect Discovery, which the SPIFFE WIT-SVID profile (section 3.7) says it SHOULD NOT be (a relying party could take it for an OIDC ID token without proof of possession); the issuer should omit iss or use another form");
}

/// Reads every trust domain's JWKS (see [`wit_bundle_anchors`](crate::wit_bundle_anchors)).
pub(crate) fn parse_wit_bundles(
    message: crate::proto::WitBundlesResponse,
) -> Result<Vec<(TrustDomain, TrustAnchors)>, WorkloadApiError> {
    let mut bundles: Vec<(TrustDomain, TrustAnchors)> = Vec::with_capacity(message.bundles.len());
    for (domain, jwks) in message.bundles {
        let domain = TrustDomain::parse(&domain).map_err(|e| invalid(format!("bundle key {domain:?}: {e}")))?;
        let anchors = crate::wit_bundle_anchors(&jwks).map_err(|e| invalid(format!("bundle of {domain}: {e}")))?;
        bundles.push((domain, anchors));
    }
    Ok(bundles)
}

/// Reads the SVIDs (leaf first, the key PKCS#8) and every trust domain's CA certificates.
pub(crate) fn parse_x509_svids(message: crate::proto::X509svidResponse) -> Result<X509SvidUpdate, WorkloadApiError> {
    if message.svids.is_empty() {
        return Err(invalid("an X.509-SVID response without SVIDs"));
    }
    let svids = message.svids.into_iter().map(parse_x509_svid).collect::<Result<Vec<_>, _>>()?;
    let bundles = x509_bundles(&svids, message.federated_bundles)?;
    Ok(X509SvidUpdate { svids, bundles })
}

/// Reads one X.509-SVID: its chain names the SPIFFE ID it is delivered for and its key is the
/// leaf's.
pub(crate) fn parse_x509_svid(svid: crate::proto::X509svid) -> Result<X509Svid, WorkloadApiError> {
    let spiffe_id = WorkloadId::parse(&svid.spiffe_id).map_err(|e| invalid(format!("spiffe_id: {e}")))?;
    let chain = crate::der::split_certificates(&svid.x509_svid)
        .map_err(|e| invalid(format!("certificate chain of {spiffe_id}: {e}")))?;
    let key = PrivatePkcs8KeyDer::from(svid.x509_svid_key);
    let certificate =
        WorkloadCertificate::new(chain, key).map_err(|e| invalid(format!("X.509-SVID of {spiffe_id}: {e}")))?;
    let named = certificate.workload_id().map_err(|e| invalid(format!("X.509-SVID of {spiffe_id}: {e}")))?;
    if named != spiffe_id {
        return Err(invalid(format!("an X.509-SVID for {named} delivered as {spiffe_id}")));
    }
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let certified =
        certificate.certified_key(&provider).map_err(|e| invalid(format!("X.509-SVID of {spiffe_id}: {e}")))?;
    certified
        .keys_match()
        .map_err(|e| invalid(format!("X.509-SVID of {spiffe_id}: the key is not the certificate's ({e})")))?;
    let bundle =
        crate::der::split_certificates(&svid.bundle).map_err(|e| invalid(format!("bundle of {spiffe_id}: {e}")))?;
    Ok(X509Svid { spiffe_id, hint: svid.hint, certificate, bundle })
}

/// Every trust domain's CA certificates: the SVIDs' own, then the federated ones.
pub(crate) fn x509_bundles(
    svids: &[X509Svid],
    federated: std::collections::HashMap<String, Vec<u8>>,
) -> Result<Vec<(TrustDomain, Vec<CertificateDer<'static>>)>, WorkloadApiError> {
    let mut bundles: Vec<(TrustDomain, Vec<CertificateDer<'static>>)> = Vec::new();
    for svid in svids {
        let domain = svid.spiffe_id.trust_domain();
        if !bundles.iter().any(|(d, _)| d == &domain) {
            bundles.push((domain, svid.bundle.clone()));
        }
    }
    for (domain, der) in federated {
        let domain =
            TrustDomain::parse(&domain).map_err(|e| invalid(format!("federated bundle key {domain:?}: {e}")))?;
        let cas = crate::der::split_certificates(&der).map_err(|e| invalid(format!("bundle of {domain}: {e}")))?;
        if !bundles.iter().any(|(d, _)| d == &domain) {
            bundles.push((domain, cas));
        }
    }
    Ok(bundles)
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use wimse_core::jose::{Algorithm, SigningKey, jws};

    use super::*;
    use crate::proto::{WitBundlesResponse, Witsvid, WitsvidResponse};

    const ID: &str = "spiffe://prod.example/ns/payments";

    struct Fixture {
        issuer: SigningKey,
        workload: SigningKey,
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                issuer: SigningKey::generate(Algorithm::ES256).unwrap().with_kid("issuer-1"),
                workload: SigningKey::generate(Algorithm::ES256).unwrap(),
            }
        }

        fn wit(&self, kid: Option<&str>, extra: serde_json::Value) -> String {
            let mut claims = json!({"sub": ID, "exp": 4_000_000_000u64, "cnf": {"jwk": self.workload.public_jwk()}});
            claims.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            jws::sign("wit+jwt", kid, &claims, &self.issuer, Default::default()).unwrap()
        }

        fn response(&self, spiffe_id: &str, wit: String, key: &SigningKey) -> WitsvidResponse {
            let wit_svid_key = serde_json::to_string(&key.to_private_jwk()).unwrap();
            WitsvidResponse {
                svids: vec![Witsvid {
                    spiffe_id: spiffe_id.into(),
                    wit_svid: wit,
                    wit_svid_key,
                    hint: "internal".into(),
                }],
            }
        }
    }

    fn refused(response: WitsvidResponse, expected: &str) {
        match parse_wit_svids(response) {
            Err(WorkloadApiError::InvalidResponse(detail)) => assert!(detail.contains(expected), "{detail}"),
            other => panic!("expected a refusal with {expected:?}, got {other:?}"),
        }
    }

    #[test]
    fn wit_svids_are_checked_against_the_profile() {
        let f = Fixture::new();
        let svids = parse_wit_svids(f.response(ID, f.wit(Some("issuer-1"), json!({})), &f.workload)).unwrap();
        assert_eq!((svids[0].spiffe_id.as_str(), svids[0].hint.as_str()), (ID, "internal"));
        assert_eq!(svids[0].credentials.subject().as_str(), ID);

        refused(f.response(ID, f.wit(None, json!({})), &f.workload), "has no kid");
        refused(f.response(ID, f.wit(Some("issuer-1"), json!({"aud": "x"})), &f.workload), "forbids: aud");
        let other_key = SigningKey::generate(Algorithm::ES256).unwrap();
        refused(f.response(ID, f.wit(Some("issuer-1"), json!({})), &other_key), "confirmation key");
        refused(
            f.response("spiffe://prod.example/ns/admin", f.wit(Some("issuer-1"), json!({})), &f.workload),
            "delivered as",
        );
        refused(f.response("not a spiffe id", f.wit(Some("issuer-1"), json!({})), &f.workload), "spiffe_id");
        refused(f.response(ID, "not.a.token".into(), &f.workload), "WIT-SVID of");
        refused(WitsvidResponse { svids: Vec::new() }, "without SVIDs");
        refused(f.response(ID, f.wit(Some("issuer-1"), json!({"nbf": 4_000_000_000u64})), &f.workload), "nbf");
        let claims = json!({"sub": ID, "exp": 4_000_000_000u64, "cnf": {"jwk": f.workload.public_jwk()}});
        let untyped = jws::sign("JWT", Some("issuer-1"), &claims, &f.issuer, Default::default()).unwrap();
        refused(f.response(ID, untyped, &f.workload), "typ");
        // EdDSA is not in the profile's list, for the issuer's signature or the workload's key.
        let ed_issuer = SigningKey::generate(Algorithm::EdDSA).unwrap();
        let ed_signed = jws::sign("wit+jwt", Some("ed-1"), &claims, &ed_issuer, Default::default()).unwrap();
        refused(f.response(ID, ed_signed, &f.workload), "alg");
        let ed_workload = SigningKey::generate(Algorithm::EdDSA).unwrap();
        let ed_claims = json!({"sub": ID, "exp": 4_000_000_000u64, "cnf": {"jwk": ed_workload.public_jwk()}});
        let ed_cnf = jws::sign("wit+jwt", Some("issuer-1"), &ed_claims, &f.issuer, Default::default()).unwrap();
        refused(f.response(ID, ed_cnf, &ed_workload), "cnf.jwk.alg is not one the WIT-SVID profile allows");
    }

    /// WIT-SVID profile §3.7: an OIDC-Discovery-shaped `iss` is warned about once per value
    /// (the SVID is still accepted); other forms are not.
    #[test]
    fn an_oidc_discovery_shaped_issuer_is_warned_about_once() {
        let logs = wimse_testkit::logs::Logs::global();
        let f = Fixture::new();
        let warned =
            |iss: &str| logs.lines_with(&["WARN", "OpenID Connect Discovery", &format!("iss=\"{iss}\"")]).len();
        let shaped = "https://oidc-shaped.prod.example/wit-svid";
        for _ in 0..3 {
            let wit = f.wit(Some("issuer-1"), json!({"iss": shaped}));
            parse_wit_svids(f.response(ID, wit, &f.workload)).unwrap();
        }
        assert_eq!(warned(shaped), 1, "{}", logs.text());
        let other = "https://oidc-shaped.prod.example/other";
        parse_wit_svids(f.response(ID, f.wit(Some("issuer-1"), json!({"iss": other})), &f.workload)).unwrap();
        assert_eq!(warned(other), 1, "once per value");
        for fine in ["spiffe://prod.example", "https://oidc-shaped.prod.example/wit-svid?td=prod", "urn:prod"] {
            parse_wit_svids(f.response(ID, f.wit(Some("issuer-1"), json!({"iss": fine})), &f.workload)).unwrap();
            assert_eq!(warned(fine), 0, "{fine}");
        }
    }

    /// WIT-SVID profile §6.2: only `wit-svid` keys of a SPIFFE bundle are WIT anchors; JWT-SVID
    /// and X.509-SVID authorities, unknown uses and untyped keys are ignored; a bundle with
    /// none is refused.
    #[test]
    fn wit_bundles_take_only_wit_svid_keys() {
        let typed = |kid: &str, key_use: Option<&str>| {
            let mut jwk =
                serde_json::to_value(SigningKey::generate(Algorithm::ES256).unwrap().with_kid(kid).public_jwk())
                    .unwrap();
            if let Some(key_use) = key_use {
                jwk["use"] = key_use.into();
            }
            jwk
        };
        let bundle = |keys: Vec<serde_json::Value>| WitBundlesResponse {
            bundles: [("spiffe://prod.example".to_owned(), json!({"keys": keys}).to_string())].into(),
        };
        let others = vec![
            typed("jwt", Some("jwt-svid")),
            typed("x509", Some("x509-svid")),
            typed("unknown", Some("future-svid")),
            typed("untyped", None),
        ];
        let mut all = others.clone();
        all.push(typed("wit", Some("wit-svid")));
        let parsed = parse_wit_bundles(bundle(all)).unwrap();
        assert_eq!(parsed[0].1.keys().iter().map(|k| k.kid().unwrap()).collect::<Vec<_>>(), ["wit"]);
        match parse_wit_bundles(bundle(others)) {
            Err(WorkloadApiError::InvalidResponse(detail)) => assert!(detail.contains("no usable key"), "{detail}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wit_bundles_need_unique_kids() {
        let a = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("a");
        let b = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("b");
        let unnamed = SigningKey::generate(Algorithm::ES256).unwrap();
        let bundle = |keys: Vec<&SigningKey>| {
            let keys: Vec<_> = keys.into_iter().map(|k| k.public_jwk().clone()).collect();
            WitBundlesResponse {
                bundles: [("spiffe://prod.example".to_owned(), json!({"keys": keys}).to_string())].into(),
            }
        };
        let parsed = parse_wit_bundles(bundle(vec![&a, &b])).unwrap();
        assert_eq!(parsed[0].0.as_str(), "spiffe://prod.example");
        assert_eq!(parsed[0].1.keys().len(), 2);
        for (keys, expected) in [(vec![&a, &unnamed], "has no kid"), (vec![&a, &a], "repeated")] {
            match parse_wit_bundles(bundle(keys)) {
                Err(WorkloadApiError::InvalidResponse(detail)) => assert!(detail.contains(expected), "{detail}"),
                other => panic!("{other:?}"),
            }
        }
        let bad_domain = WitBundlesResponse {
            bundles: [("https://prod.example".to_owned(), json!({"keys": []}).to_string())].into(),
        };
        assert!(parse_wit_bundles(bad_domain).is_err());
    }
}
