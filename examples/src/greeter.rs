//! The code tonic-build would generate for this service, written by hand in the same shape
//! (a `Greeter` trait, `GreeterServer` and `GreeterClient`), so the gRPC examples build without
//! `protoc`:
//!
//! ```proto
//! syntax = "proto3";
//! package wimse.example;
//! service Greeter { rpc Hello(HelloRequest) returns (HelloReply); }
//! message HelloRequest { string name = 1; }
//! message HelloReply { string message = 1; }
//! ```
//!
//! With a real `.proto`, use tonic-build's output instead: the WIMSE layers wrap it the same way.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// `wimse.example.HelloRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {
    /// Who to greet.
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `wimse.example.HelloReply`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    /// The greeting.
    #[prost(string, tag = "1")]
    pub message: String,
}

/// The method's path: what a WPT's audience names after the server's origin.
pub const HELLO_PATH: &str = "/wimse.example.Greeter/Hello";

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The service, as the server implements it.
pub trait Greeter: Send + Sync + 'static {
    /// `rpc Hello(HelloRequest) returns (HelloReply)`.
    fn hello(
        &self,
        request: tonic::Request<HelloRequest>,
    ) -> impl Future<Output = Result<tonic::Response<HelloReply>, tonic::Status>> + Send;
}

/// The server side: routes `/wimse.example.Greeter/Hello` to a [`Greeter`].
#[derive(Debug)]
pub struct GreeterServer<T>(Arc<T>);

impl<T> GreeterServer<T> {
    /// Serves `greeter`.
    pub fn new(greeter: T) -> Self {
        Self(Arc::new(greeter))
    }
}

impl<T> Clone for GreeterServer<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> tonic::server::NamedService for GreeterServer<T> {
    const NAME: &'static str = "wimse.example.Greeter";
}

struct HelloMethod<T>(Arc<T>);

impl<T: Greeter> tonic::server::UnaryService<HelloRequest> for HelloMethod<T> {
    type Response = HelloReply;
    type Future = BoxFuture<Result<tonic::Response<HelloReply>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<HelloRequest>) -> Self::Future {
        let greeter = self.0.clone();
        Box::pin(async move { greeter.hello(request).await })
    }
}

impl<T, B> tower::Service<http::Request<B>> for GreeterServer<T>
where
    T: Greeter,
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
        let greeter = self.0.clone();
        Box::pin(async move {
            if request.uri().path() != HELLO_PATH {
                return Ok(tonic::Status::unimplemented("no such method").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(HelloMethod(greeter), request).await)
        })
    }
}

/// The client side, over any gRPC transport: a tonic `Channel`, or one wrapped in layers.
#[derive(Debug, Clone)]
pub struct GreeterClient<T> {
    inner: tonic::client::Grpc<T>,
}

impl<T> GreeterClient<T>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    /// A client calling through `inner`.
    pub fn new(inner: T) -> Self {
        Self { inner: tonic::client::Grpc::new(inner) }
    }

    /// `rpc Hello(HelloRequest) returns (HelloReply)`.
    pub async fn hello(
        &mut self,
        request: impl tonic::IntoRequest<HelloRequest>,
    ) -> Result<tonic::Response<HelloReply>, tonic::Status> {
        self.inner.ready().await.map_err(|e| tonic::Status::unknown(format!("Service was not ready: {}", e.into())))?;
        let path = http::uri::PathAndQuery::from_static(HELLO_PATH);
        self.inner.unary(request.into_request(), path, tonic_prost::ProstCodec::default()).await
    }
}
