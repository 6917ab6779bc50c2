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
/// layer is built for the server's origin and the audience is that origin + the method path.
fn signed_channel(
    channel: tonic::transport::Channel,
    signer: Signer,
    origin: &str,
) -> impl tonic::client::GrpcService<tonic::body::Body, ResponseBody = tonic::body::Body> + Clone {
    ServiceBuilder::new().layer(WimseSignLayer::for_origin(signer, origin).unwrap()).service(channel)
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

/// A layer that cannot name a call's audience (a Channel's path-only URI, no origin) refuses it
/// before it is sent, with a status whose code and message say what to fix, not `UNKNOWN`.
#[tokio::test]
async fn a_channel_without_the_origin_fails_with_a_status_naming_the_fix() {
    let deployment = Deployment::new();
    let origin = serve(&deployment).await;
    let channel = tonic::transport::Endpoint::from_shared(origin.clone()).unwrap().connect().await.unwrap();
    let unsigned =
        ServiceBuilder::new().layer(WimseSignLayer::new(deployment.signer(ALLOWED))).service(channel.clone());
    let status = hello(unsigned, "hi").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().starts_with("wimse: invalid_configuration: "), "{status:?}");
    assert!(status.message().contains("WimseSignLayer::for_origin(signer, \"http://host:port\")"), "{status:?}");
    // The wimse error stays reachable as the status's source.
    let source = std::error::Error::source(&status).and_then(|e| e.downcast_ref::<wimse_core::Error>());
    assert_eq!(source.map(|e| e.kind()), Some(&ErrorKind::InvalidConfiguration));

    // `.origin(..)` is the same as `for_origin`; an absolute URI keeps its own audience, and an
    // override still wins over the origin.
    let layer = WimseSignLayer::new(deployment.signer(ALLOWED)).origin(&format!("{origin}/")).unwrap();
    let signed = ServiceBuilder::new().layer(layer.clone()).service(channel.clone());
    assert_eq!(hello(signed, "hi").await.unwrap(), format!("hi, {ALLOWED}"));
    let elsewhere = {
        let origin = origin.clone();
        ServiceBuilder::new()
            .map_request(move |mut request: http::Request<tonic::body::Body>| {
                let aud = format!("{origin}/wimse.test.Greeter/Other");
                request.extensions_mut().insert(wimse_core::client::sign::AudienceOverride(aud));
                request
            })
            .layer(layer)
            .service(channel)
    };
    assert_eq!(hello(elsewhere, "hi").await.unwrap_err().code(), tonic::Code::Unauthenticated);

    // Only an origin is one: each of these is refused when the layer is built.
    for bad in ["127.0.0.1:50051", "http://host/path", "https://user@host", "ftp://host", "/path", "http://h?q=1", ""] {
        let err = WimseSignLayer::for_origin(deployment.signer(ALLOWED), bad).unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::InvalidConfiguration, "{bad}");
    }
}

/// A gRPC request with an HTTP message signature is refused at once with a clear status, not
/// buffered: its body is a stream the signature cannot cover.
#[tokio::test]
async fn http_signatures_are_refused_for_grpc() {
    let deployment = Deployment::new();
    let origin = serve(&deployment).await;
    let signer = deployment.signer(ALLOWED);
    let mut headers = http::HeaderMap::new();
    let request = wimse_core::protocol::httpsig::OutgoingRequest {
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

/// The message of `rpc Ticks(Hello) returns (stream Hello)`: one message every 50 ms, forever.
struct TicksMethod;

impl tonic::server::ServerStreamingService<Hello> for TicksMethod {
    type Response = Hello;
    type ResponseStream = Pin<Box<dyn futures_core::Stream<Item = Result<Hello, tonic::Status>> + Send>>;
    type Future = BoxFuture<Result<tonic::Response<Self::ResponseStream>, tonic::Status>>;

    fn call(&mut self, _: tonic::Request<Hello>) -> Self::Future {
        Box::pin(async move {
            let ticks = futures_util::stream::unfold(0u64, |n| async move {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                Some((Ok(Hello { text: n.to_string() }), n + 1))
            });
            Ok(tonic::Response::new(Box::pin(ticks) as Self::ResponseStream))
        })
    }
}

/// A service with `Hello` (unary), `Ticks` (server streaming) and `Other` (unary); `Other`
/// answers with the method name, so a test sees which calls got through.
#[derive(Clone)]
struct Streams;

impl tonic::server::NamedService for Streams {
    const NAME: &'static str = "wimse.test.Streams";
}

impl<B> tower::Service<http::Request<B>> for Streams
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
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(match request.uri().path() {
                "/wimse.test.Streams/Ticks" => grpc.server_streaming(TicksMethod, request).await,
                "/wimse.test.Streams/Hello" | "/wimse.test.Streams/Other" => grpc.unary(HelloMethod, request).await,
                _ => tonic::Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// A tonic server of [`Streams`] behind `layer` (which `make` builds for the server's origin),
/// accepting header lists up to 64 KiB.
async fn serve_streams(make: impl FnOnce(&str) -> WimseLayer) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let layer = make(&origin);
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .http2_max_header_list_size(64 * 1024)
            .layer(layer)
            .add_service(Streams)
            .serve_with_incoming(incoming)
            .await
            .unwrap()
    });
    origin
}

async fn call<S>(channel: S, method: &'static str) -> Result<String, tonic::Status>
where
    S: tonic::client::GrpcService<tonic::body::Body>,
    S::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.into().to_string()))?;
    let path = http::uri::PathAndQuery::from_static(method);
    let response: tonic::Response<Hello> =
        grpc.unary(tonic::Request::new(Hello { text: "hi".into() }), path, tonic_prost::ProstCodec::default()).await?;
    Ok(response.into_inner().text)
}

/// A stream opened with a WIT that expires 2 s later ends with `UNAUTHENTICATED`
/// (`credentials_expired`) at that moment (the verifier's leeway is 0 here), instead of living on.
#[tokio::test]
async fn a_stream_ends_when_the_credentials_that_opened_it_expire() {
    stream_ends_at_expiry(false).await;
}

/// The caller whose stream is bounded does not get to unbound it: a gRPC call without
/// `te: trailers` (which tonic's server does not check, and proxies may drop) ends the same way.
#[tokio::test]
async fn a_stream_without_te_trailers_ends_too() {
    stream_ends_at_expiry(true).await;
}

async fn stream_ends_at_expiry(strip_te: bool) {
    let deployment = Deployment::new();
    let origin = serve_streams(|origin| {
        let config = VerifierConfig::new().origin(origin).leeway(0);
        WimseLayer::new(Verifier::new(deployment.trust(), config).unwrap())
    })
    .await;
    // Issued an hour minus two seconds ago by an issuer of one-hour WITs.
    let expiring = Signer::new(StaticCredentials::new(deployment.credentials(ALLOWED, false, 3600 - 2)));
    let channel = tonic::transport::Endpoint::from_shared(origin.clone()).unwrap().connect().await.unwrap();
    let channel = ServiceBuilder::new()
        .map_request(move |mut request: http::Request<tonic::body::Body>| {
            if strip_te {
                request.headers_mut().remove("te");
            }
            request
        })
        .layer(WimseSignLayer::for_origin(expiring, &origin).unwrap())
        .service(channel);
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| e.to_string()).unwrap();
    let path = http::uri::PathAndQuery::from_static("/wimse.test.Streams/Ticks");
    let response = grpc
        .server_streaming(tonic::Request::new(Hello { text: String::new() }), path, tonic_prost::ProstCodec::default())
        .await
        .unwrap();
    let mut stream: tonic::Streaming<Hello> = response.into_inner();
    let mut received = 0;
    // Bounded only so a regression fails rather than hangs; the stream ends on its own.
    let end = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => received += 1,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the stream ends when the WIT expires");
    let status = end.expect("ended with a status, not cleanly");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert_eq!(status.message(), "credentials_expired");
    assert!(received > 0, "the stream ran until then");
}

/// Authorization per gRPC method: a general policy that allows nobody, a method-level policy
/// for `Hello`; `Other` (unlisted) is refused before the handler, even for an allowed caller.
#[tokio::test]
async fn per_method_policies() {
    let deployment = Deployment::new();
    let origin = serve_streams(|origin| {
        let readers = Policy::named("hello-callers").allow(Rule::exact(ALLOWED).unwrap());
        WimseLayer::new(deployment.verifier(origin))
            .policy(Policy::named("unlisted-methods"))
            .route_policy("/wimse.test.Streams/Hello", readers)
    })
    .await;
    let channel = tonic::transport::Endpoint::from_shared(origin.clone()).unwrap().connect().await.unwrap();
    let allowed = signed_channel(channel.clone(), deployment.signer(ALLOWED), &origin);
    assert_eq!(call(allowed.clone(), "/wimse.test.Streams/Hello").await.unwrap(), format!("hi, {ALLOWED}"));
    let status = call(allowed, "/wimse.test.Streams/Other").await.unwrap_err();
    assert_eq!((status.code(), status.message()), (tonic::Code::PermissionDenied, "policy_denied"));
    let denied = signed_channel(channel, deployment.signer(DENIED), &origin);
    let status = call(denied, "/wimse.test.Streams/Hello").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
}

/// gRPC is recognised by its media type whatever its case, so a signature cannot slip a
/// stream past the layer as `Application/gRPC`; refusals are gRPC statuses only for gRPC calls
/// (HTTP/2 with `te: trailers`): a plain HTTP/1.1 request borrowing the content type gets its
/// HTTP status, never a 200.
#[tokio::test]
async fn grpc_is_told_by_its_media_type_and_protocol() {
    let deployment = Deployment::new();
    let origin = serve_streams(|origin| WimseLayer::new(deployment.verifier(origin))).await;
    let signer = deployment.signer(ALLOWED);
    let mut headers = http::HeaderMap::new();
    let request = wimse_core::protocol::httpsig::OutgoingRequest {
        method: "POST",
        scheme: "http",
        authority: origin.trim_start_matches("http://"),
        path: "/wimse.test.Streams/Hello",
        query: None,
        body: None,
        aud: &format!("{origin}/wimse.test.Streams/Hello"),
        sign_response: false,
    };
    signer.sign_request_signature(&mut headers, &request).unwrap();
    let channel = tonic::transport::Endpoint::from_shared(origin.clone()).unwrap().connect().await.unwrap();
    let shouting = ServiceBuilder::new()
        .map_request(move |mut request: http::Request<tonic::body::Body>| {
            request.headers_mut().extend(headers.clone());
            request.headers_mut().insert("content-type", http::HeaderValue::from_static("Application/gRPC+proto"));
            request
        })
        .service(channel);
    let status = call(shouting, "/wimse.test.Streams/Hello").await.unwrap_err();
    assert_eq!((status.code(), status.message()), (tonic::Code::InvalidArgument, "unsupported_proof"));

    // HTTP/1.1 with a gRPC content type is no gRPC call: 401, not a trailers-only 200. (The
    // server speaks HTTP/2 only, so this goes to a plain hyper server with the same layer.)
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let layer = WimseLayer::new(deployment.verifier(&base));
    tokio::spawn(async move {
        let app = ServiceBuilder::new().layer(layer).service(tower::service_fn(|_: http::Request<_>| async {
            Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"rest"))))
        }));
        let (stream, _) = listener.accept().await.unwrap();
        let service = hyper_util::service::TowerToHyperService::new(app);
        hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .await
            .unwrap();
    });
    let response = reqwest::Client::new()
        .post(format!("{base}/orders"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers().get("grpc-status").is_none());
}

/// Header lists beyond h2's default 16 KiB reach the layer when the server allows them (tonic:
/// `http2_max_header_list_size`), which then answers with gRPC statuses: three fields of 8 KiB
/// are read (and this junk WIT refused as `malformed_token`), a 9 KiB token is `oversized_token`.
#[tokio::test]
async fn large_credentials_get_grpc_statuses() {
    let deployment = Deployment::new();
    let origin = serve_streams(|origin| WimseLayer::new(deployment.verifier(origin))).await;
    let channel = tonic::transport::Endpoint::from_shared(origin.clone()).unwrap().connect().await.unwrap();
    let with = |fields: Vec<(&'static str, String)>| {
        ServiceBuilder::new()
            .map_request(move |mut request: http::Request<tonic::body::Body>| {
                for (name, value) in &fields {
                    request.headers_mut().insert(*name, http::HeaderValue::from_str(value).unwrap());
                }
                request
            })
            .service(channel.clone())
    };
    let eight_k = "a".repeat(8000);
    let three = with(vec![
        ("workload-identity-token", format!("{eight_k}.b.c")),
        ("authorization", format!("WPT {eight_k}.b.c")),
        ("txn-token", eight_k.clone()),
    ]);
    let status = call(three, "/wimse.test.Streams/Hello").await.unwrap_err();
    assert_eq!((status.code(), status.message()), (tonic::Code::Unauthenticated, "malformed_token"));
    let nine_k = with(vec![("workload-identity-token", "a".repeat(9000))]);
    let status = call(nine_k, "/wimse.test.Streams/Hello").await.unwrap_err();
    assert_eq!((status.code(), status.message()), (tonic::Code::InvalidArgument, "oversized_token"));
}
