//! The client layer for HTTP-signature mode: signs method, path, query, body and fields, and
//! verifies signed responses.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full, Limited};
use tower_layer::Layer;
use tower_service::Service;
use wimse_core::client::response::ResponseVerifier;
use wimse_core::client::sign::{AudienceOverride, Signer, audience_for};
use wimse_core::id::WorkloadId;
use wimse_core::protocol::httpsig::{OutgoingRequest, RequestParts, ResponseParts, has_signature};
use wimse_core::protocol::trust::TrustStore;
use wimse_core::server::pipeline::DEFAULT_BODY_LIMIT;
use wimse_core::{Error, ErrorKind};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type UriFn<T> = dyn Fn(&Uri) -> Option<T> + Send + Sync;

/// Signs each request with an HTTP message signature (http-signature-08) for tower-based HTTP
/// clients. The request body is buffered (up to a limit) so its `Content-Digest` can be signed;
/// the inner client receives `Request<Full<Bytes>>`. With
/// [`signed_responses`](Self::signed_responses), the layer asks servers to sign their responses
/// and verifies them (any signed response is verified; an unsigned one is then an error).
#[derive(Clone)]
pub struct WimseSignatureLayer {
    signer: Signer,
    alias: Option<Arc<UriFn<String>>>,
    expected: Option<Arc<UriFn<WorkloadId>>>,
    responses: Option<ResponseVerifier>,
    body_limit: usize,
}

impl std::fmt::Debug for WimseSignatureLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WimseSignatureLayer")
            .field("signer", &self.signer)
            .field("body_limit", &self.body_limit)
            .finish_non_exhaustive()
    }
}

impl WimseSignatureLayer {
    /// Signs with `signer`; responses are not required to be signed.
    pub fn new(signer: Signer) -> Self {
        Self { signer, alias: None, expected: None, responses: None, body_limit: DEFAULT_BODY_LIMIT }
    }

    /// Asks every server for a signed response and verifies it with these trust anchors.
    pub fn signed_responses(mut self, trust: TrustStore) -> Self {
        self.responses = Some(ResponseVerifier::new(trust));
        self
    }

    /// Uses another response verifier (for instance with a test clock).
    pub fn response_verifier(mut self, verifier: ResponseVerifier) -> Self {
        self.responses = Some(verifier);
        self
    }

    /// Maps a URI to the identity its server must have; a response signed by another workload is refused.
    pub fn expected_identity(mut self, map: impl Fn(&Uri) -> Option<WorkloadId> + Send + Sync + 'static) -> Self {
        self.expected = Some(Arc::new(map));
        self
    }

    /// Maps a URI to the audience (`wimse-aud`) its server expects; `None` uses the URI.
    pub fn audience_alias(mut self, alias: impl Fn(&Uri) -> Option<String> + Send + Sync + 'static) -> Self {
        self.alias = Some(Arc::new(alias));
        self
    }

    /// The largest request or response body buffered (default 1 MiB).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }
}

impl<S> Layer<S> for WimseSignatureLayer {
    type Service = WimseSignature<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WimseSignature { inner, layer: self.clone() }
    }
}

/// The service made by [`WimseSignatureLayer`].
#[derive(Debug, Clone)]
pub struct WimseSignature<S> {
    inner: S,
    layer: WimseSignatureLayer,
}

/// Response future of [`WimseSignature`].
pub type SignatureFuture<B> = Pin<Box<dyn Future<Output = Result<Response<Either<B, Full<Bytes>>>, BoxError>> + Send>>;

impl<S, B, ResBody> Service<Request<B>> for WimseSignature<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Either<ResBody, Full<Bytes>>>;
    type Error = BoxError;
    type Future = SignatureFuture<ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(sign_and_send(self.layer.clone(), inner, req))
    }
}

async fn sign_and_send<S, B, ResBody>(
    layer: WimseSignatureLayer,
    mut inner: S,
    req: Request<B>,
) -> Result<Response<Either<ResBody, Full<Bytes>>>, BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let (mut parts, body) = req.into_parts();
    let body = Limited::new(body, layer.body_limit)
        .collect()
        .await
        .map_err(|_| Error::with_detail(ErrorKind::BodyTooLarge, "the request body could not be buffered for signing"))?
        .to_bytes();
    let aud = match parts.extensions.get::<AudienceOverride>() {
        Some(AudienceOverride(aud)) => aud.clone(),
        None => {
            layer.alias.as_ref().and_then(|alias| alias(&parts.uri)).or_else(|| audience_for(&parts.uri)).ok_or_else(
                || Error::with_detail(ErrorKind::InvalidConfiguration, "relative request URI and no audience"),
            )?
        }
    };
    let uri = parts.uri.clone();
    let scheme = uri.scheme_str().unwrap_or("https");
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    let (path, query) = (uri.path(), uri.query());
    let request = OutgoingRequest {
        method: parts.method.as_str(),
        scheme,
        authority,
        path,
        query,
        body: Some(&body),
        aud: &aud,
        sign_response: layer.responses.is_some(),
    };
    let signature = layer.signer.sign_request_signature(&mut parts.headers, &request)?;
    let (method, req_headers) = (parts.method.clone(), parts.headers.clone());
    let response = inner.call(Request::from_parts(parts, Full::new(body))).await.map_err(Into::into)?;
    // A server MAY sign a response it was not asked to sign; without trust anchors for
    // responses this client cannot check it and leaves it alone (http-signature-08).
    let Some(verifier) = layer.responses.as_ref() else {
        return Ok(response.map(Either::Left));
    };
    if !has_signature(response.headers()) {
        return Err(Box::new(Error::with_detail(ErrorKind::NoWimseSignature, "the response is not signed")));
    }
    let (res_parts, res_body) = response.into_parts();
    let res_body = Limited::new(res_body, layer.body_limit)
        .collect()
        .await
        .map_err(|_| {
            Error::with_detail(
                ErrorKind::BodyTooLarge,
                "the response body could not be buffered to check its signature",
            )
        })?
        .to_bytes();
    let req = RequestParts { method: method.as_str(), scheme, authority, path, query, headers: &req_headers };
    let res = ResponseParts { status: res_parts.status.as_u16(), headers: &res_parts.headers };
    let expected = layer.expected.as_ref().and_then(|map| map(&uri));
    verifier.verify(&req, &res, &res_body, &signature.nonce, expected.as_ref())?;
    Ok(Response::from_parts(res_parts, Either::Right(Full::new(res_body))))
}
