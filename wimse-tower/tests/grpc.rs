//! gRPC: `WimseLayer` verifies the callers of a tonic server (WPT mode; the audience is the
//! origin + `/package.Service/Method`), and `WimseSignLayer` signs on a tonic channel; real
//! HTTP/2 on loopback. HTTP message signatures are refused for gRPC with a clear error.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower::ServiceBuilder;
use wimse_core::prelude::*;
use wimse_testkit::{ALLOWED, DENIED, Deployment};
use wimse_tower::{WimseLayer, WimseSignLayer};

/// The message of `rpc Hello(Hello) returns (Hello)` in package `wimse.test`, service `Greeter`.
#[derive(Clone, PartialEq, prost::Message)]
struct Hello {
    #[prost(string, tag = "1")]
    text: String,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What tonic-build generates for the service, by hand (no protoc needed).
#[derive(Clone)]
struct Greeter;

impl tonic::server::NamedService for Greeter {
    const NAME: &'static str = "wimse.test.Greeter";
}

struct HelloMethod;

impl tonic::server::UnaryService<Hello> for HelloMethod {
    type Response = Hello;
    type Future = BoxFuture<Result<tonic::Response<Hello>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<Hello>) -> Self::Future {
        // The caller WimseLayer verified, from the request extensions.
        let caller = request.extensions().get::<VerifiedCaller>().map(|c| c.id().to_string());
        let text = request.into_inner().text;
        Box::pin(async move {
            let caller = caller.ok_or_else(|| tonic::Status::unauthenticated("no verified caller"))?;
            Ok(tonic::Response::new(Hello { text: format!("{text}, {caller}") }))
        })
    }
}

impl<B> tower::Service<http::Request<B>> for Greeter
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        Box::pin(async move {
            if request.uri().path() != "/wimse.test.Greeter/Hello" {
                return Ok(tonic::Status::unimplemented("no such method").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(HelloMethod, request).await)
        })
    }
}

async fn serve(deployment: &Deployment) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let layer = WimseLayer::new(deployment.verifier(&origin)).policy(deployment.policy());
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(Greeter)
            .serve_with_incoming(incoming)
            .await
            .unwrap()
    });
    origin
}

/// Calls `Greeter/Hello` through `channel` (wrapped in whatever layers the caller chose).
async fn hello<S>(channel: S, text: &str) -> Result<String, tonic::Status>
where
    S: tonic::client::GrpcService<tonic::body::Body>,
    S::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.into().to_string()))?;
    let path = http::uri::PathAndQuery::from_static("/wimse.test.Greeter/Hello");
    let response: tonic::Response<Hello> = grpc
        .unary(tonic::Request::new(Hello { text: text.to_owned() }), path, tonic_prost::ProstCodec::default())
        .await?;
    Ok(response.into_inner().text)
}

/// The signing layer on a tonic channel: requests reach the layer with a path-only URI, so the
/// audience is the server's origin + the method path.
fn signed_channel(
    channel: tonic::transport::Channel,
    signer: Signer,
    origin: &str,
) -> impl tonic::client::GrpcService<tonic::body::Body, ResponseBody = tonic::body::Body> + Clone {
    let origin = origin.to_owned();
    ServiceBuilder::new()
        .layer(WimseSignLayer::new(signer).audience_alias(move |uri| Some(format!("{origin}{}", uri.path()))))
        .service(channel)
}

#[tokio::test]
async fn tonic_callers_are_verified_and_refused_with_grpc_statuses() {
    let deployment = Deployment::new();
    let origin = serve(&deployment).await;
    let channel = tonic::transport::Endpoint::from_shared(origin.clone()).unwrap().connect().await.unwrap();

    let allowed = signed_channel(channel.clone(), deployment.signer(ALLOWED), &origin);
    assert_eq!(hello(allowed.clone(), "hello").await.unwrap(), format!("hello, {ALLOWED}"));
    // Each call gets a fresh WPT (a replayed one would be refused).
    assert_eq!(hello(allowed, "again").await.unwrap(), format!("again, {ALLOWED}"));

    // The layer answers refusals over HTTP; tonic reports them as gRPC statuses.
    let denied = signed_channel(channel.clone(), deployment.signer(DENIED), &origin);
    let status = hello(denied, "hi").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let status = hello(channel.clone(), "hi").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    // A WPT for another method's audience is refused.
    let wrong = {
        let origin = origin.clone();
        ServiceBuilder::new()
            .layer(
                WimseSignLayer::new(deployment.signer(ALLOWED))
                    .audience_alias(move |_| Some(format!("{origin}/wimse.test.Greeter/Other"))),
            )
            .service(channel.clone())
    };
    assert_eq!(hello(wrong, "hi").await.unwrap_err().code(), tonic::Code::Unauthenticated);
}

/// A gRPC request with an HTTP message signature is refused at once with a clear status, not
/// buffered: its body is a stream the signature cannot cover.
#[tokio::test]
async fn http_signatures_are_refused_for_grpc() {
    let deployment = Deployment::new();
    let origin = serve(&deployment).await;
    let signer = deployment.signer(ALLOWED);
    let mut headers = http::HeaderMap::new();
    let request = wimse_core::httpsig::OutgoingRequest {
        method: "POST",
        scheme: "http",
        authority: origin.trim_start_matches("http://"),
        path: "/wimse.test.Greeter/Hello",
        query: None,
        body: None,
        aud: &format!("{origin}/wimse.test.Greeter/Hello"),
        sign_response: false,
    };
    signer.sign_request_signature(&mut headers, &request).unwrap();
    let channel = tonic::transport::Endpoint::from_shared(origin.clone()).unwrap().connect().await.unwrap();
    let with_signature = ServiceBuilder::new()
        .map_request(move |mut request: http::Request<tonic::body::Body>| {
            request.headers_mut().extend(headers.clone());
            request
        })
        .service(channel);
    let status = hello(with_signature, "hi").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(status.message(), "unsupported_proof");
}
