//! The raw HTTP/1.1 reader of the CLI: parse, and a parsed request must survive a round trip.

use wimse_core::raw::{RawRequest, RawResponse};

/// One input: bytes as a raw request and as a raw response.
pub fn run(data: &[u8]) {
    if let Ok(request) = RawRequest::parse(data) {
        let _ = request.path();
        let _ = request.header_map();
        if let Ok(again) = RawRequest::parse(&request.to_bytes()) {
            assert_eq!(again.method, request.method);
        }
    }
    if let Ok(response) = RawResponse::parse(data) {
        let _ = response.header_map();
    }
}
