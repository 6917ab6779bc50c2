//! Streamed responses that end when the caller's credentials do.
//!
//! A gRPC stream (server or bidirectional streaming) is authorized once, when it opens; left
//! alone it would outlive the WIT that opened it by as long as the client keeps it open. The
//! layer bounds it by [`Pipeline::stream_deadline`](wimse_core::server::pipeline::Pipeline::stream_deadline):
//! at the deadline the response ends with the trailers of a gRPC `UNAUTHENTICATED` status
//! (`grpc-message: credentials_expired`), as a new call with those credentials would be refused.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

pin_project! {
    /// The inner service's response body, ended at a deadline when there is one (gRPC calls of
    /// callers whose credentials expire); otherwise passed through untouched.
    pub struct ExpiringBody<B> {
        #[pin]
        inner: B,
        deadline: Option<Pin<Box<Sleep>>>,
        ended: bool,
    }
}

impl<B> ExpiringBody<B> {
    /// `inner`, ended at `deadline` if one is given.
    pub fn new(inner: B, deadline: Option<Instant>) -> Self {
        Self { inner, deadline: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))), ended: false }
    }

    /// The body without a deadline.
    pub fn unbounded(inner: B) -> Self {
        Self { inner, deadline: None, ended: false }
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for ExpiringBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpiringBody").field("inner", &self.inner).field("bounded", &self.deadline.is_some()).finish()
    }
}

/// The trailers that end an expired stream.
fn expired() -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("16"));
    trailers.insert("grpc-message", HeaderValue::from_static("credentials_expired"));
    trailers
}

impl<B: Body<Data = Bytes>> Body for ExpiringBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        if let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            *this.ended = true;
            tracing::info!(target: "wimse::audit", "wimse: stream ended: the caller's credentials expired");
            return Poll::Ready(Some(Ok(Frame::trailers(expired()))));
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(None) => {
                *this.ended = true;
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // A bounded body may end early: promise no exact length then.
        match self.deadline {
            None => self.inner.size_hint(),
            Some(_) => SizeHint::new(),
        }
    }
}
