//! grpc-java's `:authority` (the socket's raw path) in hand-written HTTP/2 frames, with no
//! client library in between: served, on first sight and as a dynamic-table reference; a
//! broken header block still ends the connection.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::{DOMAIN, Issuer, entry_for_me, start_agent};
use prost::Message as _;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use wimse_workload_api::proto::X509svidResponse;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A string literal, no Huffman coding (RFC 7541 §5.2; every length here is under 127).
fn string(value: &str) -> Vec<u8> {
    assert!(value.len() < 127);
    [&[value.len() as u8][..], value.as_bytes()].concat()
}

/// How a call ended.
#[derive(Debug, PartialEq)]
enum Outcome {
    Served(Vec<String>),
    Reset(u32),
}

/// Reads frames until every stream of `streams` has a complete gRPC message or a RST_STREAM;
/// `None` when the agent closed the connection first.
async fn outcomes(socket: &mut UnixStream, streams: &[u32]) -> Option<HashMap<u32, Outcome>> {
    let mut bodies: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut done = HashMap::new();
    while done.len() < streams.len() {
        let mut header = [0u8; 9];
        if socket.read_exact(&mut header).await.is_err() {
            return None;
        }
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let stream = u32::from_be_bytes(header[5..9].try_into().unwrap()) & 0x7fff_ffff;
        let mut payload = vec![0; length];
        if socket.read_exact(&mut payload).await.is_err() {
            return None;
        }
        match header[3] {
            0x0 => {
                let body = bodies.entry(stream).or_default();
                body.extend_from_slice(&payload);
                if body.len() >= 5 && body.len() >= 5 + u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize {
                    let response = X509svidResponse::decode(&body[5..]).unwrap();
                    done.insert(stream, Outcome::Served(response.svids.into_iter().map(|s| s.spiffe_id).collect()));
                }
            }
            0x3 => {
                done.insert(stream, Outcome::Reset(u32::from_be_bytes(payload[..4].try_into().unwrap())));
            }
            0x4 if header[4] & 0x1 == 0 => {
                // An acknowledgement; the agent may have closed the connection already.
                let _ = socket.write_all(&frame(0x4, 0x1, 0, &[])).await;
            }
            0x7 => panic!("GOAWAY {payload:?}"),
            _ => {}
        }
    }
    Some(done)
}

#[tokio::test]
async fn raw_socket_path_authority_is_served_first_literal_then_indexed() {
    let issuer = Issuer::start(600).await;
    let agent = start_agent(&issuer, json!([entry_for_me("/ns/payments", "")]), json!({})).await;
    let path = agent.socket.display().to_string();
    assert!(path.starts_with('/'));

    // Stream 1: literals with incremental indexing, as grpc-java's encoder sends them. The
    // client's dynamic table then holds, newest first: 62 workload.spiffe.io, 63 te,
    // 64 content-type, 65 :authority, 66 :path.
    let mut first = vec![0x83, 0x86]; // :method POST, :scheme http
    first.push(0x44); // :path, name from the static table
    first.extend(string("/SpiffeWorkloadAPI/FetchX509SVID"));
    first.push(0x41); // :authority
    first.extend(string(&path));
    first.push(0x5f); // content-type
    first.extend(string("application/grpc"));
    first.push(0x40);
    first.extend(string("te"));
    first.extend(string("trailers"));
    first.push(0x40);
    first.extend(string("workload.spiffe.io"));
    first.extend(string("true"));
    // Stream 3: the same call, every field but the static ones a dynamic-table reference.
    let second = [0x83, 0x86, 0xc2, 0xc1, 0xc0, 0xbf, 0xbe];

    let mut socket = UnixStream::connect(&agent.socket).await.unwrap();
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(0x4, 0, 0, &[]));
    bytes.extend(frame(0x1, 0x4, 1, &first));
    bytes.extend(frame(0x0, 0x1, 1, &[0; 5]));
    bytes.extend(frame(0x1, 0x4, 3, &second));
    bytes.extend(frame(0x0, 0x1, 3, &[0; 5]));
    socket.write_all(&bytes).await.unwrap();
    let outcomes = tokio::time::timeout(Duration::from_secs(10), outcomes(&mut socket, &[1, 3])).await.unwrap();
    let served = || Outcome::Served(vec![format!("{DOMAIN}/ns/payments")]);
    assert_eq!(outcomes, Some(HashMap::from([(1, served()), (3, served())])));
}

/// A header block the client's table cannot explain (index 70 of an empty dynamic table) ends
/// the connection, as h2 itself would; the next connection is served.
#[tokio::test]
async fn a_broken_header_block_ends_the_connection() {
    let logs = wimse_testkit::logs::Logs::global();
    let issuer = Issuer::start(600).await;
    let agent = start_agent(&issuer, json!([entry_for_me("/ns/payments", "")]), json!({})).await;
    let mut socket = UnixStream::connect(&agent.socket).await.unwrap();
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(0x4, 0, 0, &[]));
    bytes.extend(frame(0x1, 0x5, 1, &[0x83, 0x86, 0xc6]));
    socket.write_all(&bytes).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), outcomes(&mut socket, &[1])).await.unwrap();
    assert_eq!(closed, None, "the connection is closed");
    assert!(!logs.lines_with(&["HTTP/2 protocol error", "index 70 is in neither table"]).is_empty(), "{}", logs.text());

    let client = wimse_workload_api::WorkloadApiClient::new(agent.endpoint.clone());
    assert_eq!(client.fetch_wit_svids(None, Duration::from_secs(5)).await.unwrap().len(), 1);
}
