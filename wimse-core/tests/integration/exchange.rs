//! The server side of a signed exchange (`wimse_core::server::exchange`): every header check before the
//! body is read, the body against `Content-Digest` after, the claim last, and no way to confirm a
//! caller whose body was never checked.

use crate::common::*;
use wimse_core::prelude::*;
use wimse_core::server::exchange::BodyFailure;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => unreachable!("the in-memory store answers at once"),
    }
}

fn view(headers: &http::HeaderMap) -> RequestView<'_, http::HeaderMap> {
    RequestView::new(PATH, headers).method("POST").authority("payments.example")
}

#[test]
fn the_body_is_checked_after_the_headers_and_before_the_claim() {
    let f = Fixture::new();
    let headers = f.signed_request("POST", Some(b"amount=1"), false);
    let guard = Pipeline::new(f.verifier());
    // Another body than the signed one: refused after the headers passed, nonce not claimed.
    let exchange = guard.signed_exchange(view(&headers), None).unwrap();
    let err = block_on(exchange.admit_body(b"amount=9")).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::ContentDigestMismatch);
    assert!(err.is_signature_mode());
    // The same request with its own body passes: the refused one claimed nothing.
    let exchange = guard.signed_exchange(view(&headers), None).unwrap();
    let admitted = block_on(exchange.admit_body(b"amount=1")).unwrap();
    assert_eq!(admitted.caller.unwrap().id(), &f.id);
    assert!(admitted.response.is_none(), "no signed response asked for");
    // And now its nonce is a replay.
    let exchange = guard.signed_exchange(view(&headers), None).unwrap();
    assert_eq!(block_on(exchange.admit_body(b"amount=1")).unwrap_err().kind(), &ErrorKind::ReplayedProof);
    // A body where the signature covers no Content-Digest is refused too.
    let bodiless = f.signed_request("POST", None, false);
    let exchange = guard.signed_exchange(view(&bodiless), None).unwrap();
    assert_eq!(block_on(exchange.admit_body(b"smuggled")).unwrap_err().kind(), &ErrorKind::MissingCoveredComponent);
}

#[test]
fn header_failures_come_before_the_body() {
    let f = Fixture::new();
    let headers = f.signed_request("POST", Some(b"amount=1"), false);
    // A verifier that takes only WPTs refuses the signed request from its headers.
    let only_wpt = Pipeline::new(f.verifier_with(f.config().only_wpt()));
    let err = only_wpt.signed_exchange(view(&headers), None).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::NoWimseSignature);
    // The policy too.
    let denying = Pipeline::new(f.verifier()).policy(Policy::named("nobody"));
    assert_eq!(denying.signed_exchange(view(&headers), None).unwrap_err().kind(), &ErrorKind::PolicyDenied);
    // A signed response asked of a guard that signs none: 501 before the body.
    let asking = f.signed_request("POST", Some(b"amount=1"), true);
    let guard = Pipeline::new(f.verifier());
    let err = guard.signed_exchange(view(&asking), None).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::SignedResponseUnsupported);
}

#[test]
fn body_failures_are_named() {
    let f = Fixture::new();
    let headers = f.signed_request("POST", Some(b"amount=1"), false);
    let guard = Pipeline::new(f.verifier()).body_limit(10).body_deadline(std::time::Duration::from_millis(250));
    let exchange = guard.signed_exchange(view(&headers), None).unwrap();
    assert_eq!(exchange.body_limit(), 10);
    assert_eq!(exchange.body_deadline(), std::time::Duration::from_millis(250));
    let status = |failure| Rejection::from_error(&exchange.refuse_body(failure)).status().as_u16();
    assert_eq!(status(BodyFailure::TooLarge), 413);
    assert_eq!(status(BodyFailure::TimedOut), 408);
    assert_eq!(exchange.refuse_body(BodyFailure::TimedOut).kind(), &ErrorKind::BodyTimeout);
    assert_eq!(status(BodyFailure::Unreadable), 400);
}

#[test]
fn a_caller_admitted_on_its_headers_cannot_be_confirmed_without_its_body() {
    let f = Fixture::new();
    let headers = f.signed_request("POST", Some(b"amount=1"), false);
    let verifier = f.verifier();
    let pending = verifier.authenticate(&view(&headers).body_follows()).unwrap();
    assert!(pending.awaits_body());
    let err = verifier.confirm(pending).take_ready().unwrap().unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::BodyNotSupplied);
    // Given its body, the same request confirms (the refused confirmation claimed nothing).
    let pending = verifier.authenticate(&view(&headers).body_follows()).unwrap();
    let pending = pending.body_received(b"amount=1").unwrap();
    assert!(!pending.awaits_body());
    verifier.confirm(pending).take_ready().unwrap().unwrap();
}

/// Bodies being read are held against one budget shared by the guard's clones: a second body
/// that would exceed it is refused (503, Retry-After) until the first exchange ends.
#[test]
fn bodies_read_at_once_share_one_budget() {
    let f = Fixture::new();
    let guard = Pipeline::new(f.verifier()).body_budget(100);
    let clone = guard.clone();
    let (first, second) = (f.signed_request("POST", Some(b"a"), false), f.signed_request("POST", Some(b"b"), false));
    let mut a = guard.signed_exchange(view(&first), None).unwrap();
    a.reserve_body(60).unwrap();
    assert_eq!(guard.body_bytes_in_use(), 60);
    let mut b = clone.signed_exchange(view(&second), None).unwrap();
    b.reserve_body(40).unwrap();
    assert_eq!(b.reserve_body(1), Err(BodyFailure::OverBudget), "the budget is the clones' together");
    let refused = b.refuse_body(BodyFailure::OverBudget);
    assert_eq!(refused.kind(), &ErrorKind::BodyBudgetExceeded);
    let rejection = wimse_core::server::framing::Rejection::from_error(&refused);
    assert_eq!(rejection.status(), 503);
    assert_eq!(rejection.retry_after(), Some(1));
    // An exchange gives its bytes back when it ends, admitted or not.
    block_on(a.admit_body(b"a")).unwrap();
    assert_eq!(guard.body_bytes_in_use(), 40);
    b.reserve_body(60).unwrap();
    drop(b);
    assert_eq!(clone.body_bytes_in_use(), 0);
}

type Chunk = Result<bytes::Bytes, std::io::Error>;

fn chunks(parts: &[&'static [u8]]) -> futures_util::stream::Iter<std::vec::IntoIter<Chunk>> {
    futures_util::stream::iter(parts.iter().map(|p| Ok(bytes::Bytes::from_static(p))).collect::<Vec<_>>())
}

/// The whole signed path as the adapters drive it: the body read from a stream of chunks
/// (joined into one buffer, the digest checked over all of it), the caller, then the response
/// buffered from a stream and signed.
#[tokio::test]
async fn admit_signed_reads_a_stream_and_sign_body_signs_one() {
    let f = Fixture::new();
    let signer = Signer::new(StaticCredentials::new(Credentials::new(f.wit.clone(), f.workload_key.clone()).unwrap()))
        .clock(FixedClock::new(NOW));
    let guard = Pipeline::new(f.verifier()).sign_responses(signer).body_limit(16);
    let headers = f.signed_request("POST", Some(b"amount=1"), true);
    let admitted = guard.admit_signed(view(&headers), None, chunks(&[b"amo", b"", b"unt=1"])).await.unwrap();
    assert_eq!(&admitted.body[..], b"amount=1");
    assert_eq!(admitted.caller.unwrap().id(), &f.id);
    assert_eq!(guard.body_bytes_in_use(), 0, "the budget is given back once the body is admitted");
    let signer = admitted.response.expect("a signed response was asked for");
    let mut response_headers = http::HeaderMap::new();
    let body = signer.sign_body(200, &mut response_headers, chunks(&[b"paid", b" 1"])).await.unwrap();
    assert_eq!(&body[..], b"paid 1");
    for name in ["signature", "signature-input", "content-digest", "workload-identity-token"] {
        assert!(response_headers.contains_key(name), "{name}");
    }
    // A response over the body limit is never sent unsigned: the signer refuses it.
    let err = signer.sign_body(200, &mut http::HeaderMap::new(), chunks(&[&[b'x'; 17]])).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::SignedResponseUnavailable);
    // Same for a response body that fails while it is read.
    let failing = futures_util::stream::iter(vec![Chunk::Err(std::io::ErrorKind::BrokenPipe.into())]);
    let err = signer.sign_body(200, &mut http::HeaderMap::new(), failing).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::SignedResponseUnavailable);
}

/// Each way a body stream can fail has its own refusal, and none keeps budget bytes held.
#[tokio::test]
async fn admit_signed_names_each_body_failure() {
    use futures_util::StreamExt as _;
    let f = Fixture::new();
    let deadline = std::time::Duration::from_millis(50);
    let guard = Pipeline::new(f.verifier()).body_limit(10).body_deadline(deadline).body_budget(12);
    let refusal = |headers: http::HeaderMap, body| {
        let guard = guard.clone();
        async move { guard.admit_signed(view(&headers), None, body).await.unwrap_err() }
    };
    let request = || f.signed_request("POST", Some(b"amount=1"), false);
    // Over the limit, counted over the chunks together.
    let err = refusal(request(), chunks(&[b"amount", b"=12345"]).boxed()).await;
    assert_eq!(err.kind(), &ErrorKind::BodyTooLarge);
    // A failing connection: a malformed signed request (400).
    let failing = chunks(&[b"amo"])
        .chain(futures_util::stream::iter(vec![Chunk::Err(std::io::ErrorKind::ConnectionReset.into())]));
    let err = refusal(request(), failing.boxed()).await;
    assert_eq!(err.kind(), &ErrorKind::SignatureMalformed);
    // A body that stops coming: refused at the deadline (408).
    let stalled = chunks(&[b"amo"]).chain(futures_util::stream::pending());
    let err = refusal(request(), stalled.boxed()).await;
    assert_eq!(err.kind(), &ErrorKind::BodyTimeout);
    assert_eq!(guard.body_bytes_in_use(), 0, "a refused body gives its bytes back");
    // The header fields are checked before the stream is touched: a denied caller's body is
    // never polled (this one would fail if it were).
    let denying = Pipeline::new(f.verifier()).policy(Policy::named("nobody"));
    let untouched = futures_util::stream::poll_fn(|_| -> std::task::Poll<Option<Chunk>> { panic!("polled") });
    let headers = request();
    let err = denying.admit_signed(view(&headers), None, untouched).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::PolicyDenied);
    // Over the budget shared by the guard's clones: 503.
    let held = guard.clone();
    let first = f.signed_request("POST", Some(b"a"), false);
    let mut holding = held.signed_exchange(view(&first), None).unwrap();
    holding.reserve_body(8).unwrap();
    let err = refusal(request(), chunks(&[b"amount=1"]).boxed()).await;
    assert_eq!(err.kind(), &ErrorKind::BodyBudgetExceeded);
    drop(holding);
    assert_eq!(guard.body_bytes_in_use(), 0);
}
