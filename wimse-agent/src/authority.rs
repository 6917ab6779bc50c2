//! Lets the agent serve gRPC clients that send the Unix socket's path as HTTP/2 `:authority`.
//!
//! gRPC's C core (Python's `grpcio`, hence the PyPI `spiffe` package; C++, Ruby) sends the
//! socket path without its leading `/`, percent-encoded (`run%2Fwimse%2Fagent.sock`),
//! grpc-java the raw path (`/run/wimse/agent.sock`), grpc-swift `%2Frun%2F…`. None of these is an
//! authority, and h2 (under hyper and tonic) resets such a stream with `PROTOCOL_ERROR` before
//! the service sees it; h2 has no option to accept them, and upstream will not relax the check
//! (hyperium/h2#487 has been open since 2020). A Workload API server must serve these clients.
//!
//! So the agent rewrites the client-to-server half of each accepted Unix connection before h2
//! reads it: every header block (HEADERS and its CONTINUATIONs) is HPACK-decoded with a decoder
//! that follows the client's dynamic table, an `:authority` that `http::uri::Authority` refuses
//! becomes `localhost` (what grpc-go sends), and the whole block is written again as literals
//! without indexing, which leave h2's dynamic table empty: h2's decoder and the client's encoder
//! can never get out of step. Everything else is unchanged: names, values, order, duplicates,
//! pseudo-headers, END_STREAM, PRIORITY and every other frame (DATA, SETTINGS, ... streamed
//! through as they come, so flow control is untouched). h2 still checks all of it.
//!
//! Limits are h2's as tonic runs it, so that no client h2 would serve is refused and nothing h2
//! would refuse gets through: a header frame over 16 KiB, more than 5 CONTINUATION frames without
//! END_HEADERS, a compressed block or a decoded header list over 64 KiB (hyper's 16 KiB list
//! limit times h2's abuse factor of 4; below it h2 answers oversized lists itself), a frame of
//! another type inside a header block, a CONTINUATION without a block, a PUSH_PROMISE, or any
//! HPACK error end the connection, as they do in h2 (which also sends a GOAWAY). Memory per
//! connection is bounded by these limits. A client that does not start with the HTTP/2 preface is
//! passed through untouched, for h2 to refuse.

use bytes::{Buf, BytesMut};

use crate::hpack::{self, HpackError};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// The server's SETTINGS_MAX_FRAME_SIZE (tonic leaves it at the protocol's minimum): a longer
/// header frame is a connection error in h2 too. The frames written are never longer.
const MAX_FRAME: usize = 16_384;
/// Largest decoded header list (RFC 7541 sizes): hyper's SETTINGS_MAX_HEADER_LIST_SIZE (16 KiB)
/// times h2's abuse multiplier (4), above which h2 closes the connection.
pub(crate) const MAX_LIST: usize = 4 * 16_384;
/// Largest compressed header block buffered.
const MAX_BLOCK: usize = MAX_LIST;
/// CONTINUATION frames without END_HEADERS in one block: h2's limit with these settings.
const MAX_CONTINUATIONS: usize = 5;
/// The server's SETTINGS_HEADER_TABLE_SIZE (h2's default; tonic does not change it).
const HEADER_TABLE_SIZE: usize = 4096;
/// What replaces an `:authority` that is not one.
const REPLACEMENT: &[u8] = b"localhost";

/// Why a client's byte stream is not acceptable HTTP/2 (the connection is closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProtocolError {
    #[error("a frame of type {0:#x} inside a header block")]
    InterleavedFrame(u8),
    #[error("a CONTINUATION frame without a header block open on its stream")]
    UnexpectedContinuation,
    #[error("HEADERS on stream 0")]
    HeadersOnStreamZero,
    #[error("a PUSH_PROMISE from a client")]
    PushPromise,
    #[error("a header frame of {0} bytes, over SETTINGS_MAX_FRAME_SIZE")]
    FrameTooLarge(usize),
    #[error("padding or priority longer than its HEADERS frame")]
    BadPadding,
    #[error("more than {MAX_CONTINUATIONS} CONTINUATION frames in one header block")]
    TooManyContinuations,
    #[error("a compressed header block over {MAX_BLOCK} bytes")]
    BlockTooLarge,
    #[error(transparent)]
    Hpack(#[from] HpackError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// This many bytes of the preface seen so far.
    Preface(usize),
    Frames,
    /// Not HTTP/2: everything goes through untouched.
    Passthrough,
}

/// A header block being collected.
#[derive(Debug)]
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    continuations: usize,
}

/// The rewriter of one connection's client-to-server bytes.
#[derive(Debug)]
pub(crate) struct Rewriter {
    phase: Phase,
    /// Bytes received and not processed yet: at most one header frame and one read.
    input: BytesMut,
    /// Payload bytes of the current non-header frame still to pass through.
    passing: usize,
    block: Option<Block>,
    decoder: hpack::Decoder,
    /// How many `:authority` values were replaced.
    pub(crate) rewritten: u64,
    /// The first error: every later call returns it again.
    failed: Option<ProtocolError>,
}

impl Default for Rewriter {
    fn default() -> Self {
        Self {
            phase: Phase::Preface(0),
            input: BytesMut::new(),
            passing: 0,
            block: None,
            decoder: hpack::Decoder::new(HEADER_TABLE_SIZE),
            rewritten: 0,
            failed: None,
        }
    }
}

impl Rewriter {
    /// Takes bytes read from the client and appends what h2 should read to `out`. After an
    /// error the connection must be closed (the decoder is out of step).
    pub(crate) fn feed(&mut self, data: &[u8], out: &mut BytesMut) -> Result<(), ProtocolError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        self.input.extend_from_slice(data);
        let result = self.process(out);
        if let Err(error) = &result {
            self.failed = Some(error.clone());
            (self.input, self.block) = (BytesMut::new(), None);
        }
        result
    }

    fn process(&mut self, out: &mut BytesMut) -> Result<(), ProtocolError> {
        loop {
            match self.phase {
                Phase::Passthrough => {
                    out.extend_from_slice(&self.input.split());
                    return Ok(());
                }
                Phase::Preface(seen) => {
                    let n = self.input.len().min(PREFACE.len() - seen);
                    if self.input[..n] != PREFACE[seen..seen + n] {
                        self.phase = Phase::Passthrough;
                        continue;
                    }
                    out.extend_from_slice(&self.input.split_to(n));
                    if seen + n < PREFACE.len() {
                        self.phase = Phase::Preface(seen + n);
                        return Ok(());
                    }
                    self.phase = Phase::Frames;
                }
                Phase::Frames if self.passing > 0 => {
                    let n = self.passing.min(self.input.len());
                    if n == 0 {
                        return Ok(());
                    }
                    out.extend_from_slice(&self.input.split_to(n));
                    self.passing -= n;
                }
                Phase::Frames => {
                    if !self.frame(out)? {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Processes the frame at the start of `input`; false when more bytes are needed.
    fn frame(&mut self, out: &mut BytesMut) -> Result<bool, ProtocolError> {
        let Some(header) = self.input.get(..FRAME_HEADER) else { return Ok(false) };
        let length = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let (kind, flags) = (header[3], header[4]);
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        match kind {
            HEADERS | CONTINUATION => {}
            PUSH_PROMISE => return Err(ProtocolError::PushPromise),
            _ if self.block.is_some() => return Err(ProtocolError::InterleavedFrame(kind)),
            _ => {
                // Any other frame passes through as it arrives, never buffered whole.
                out.extend_from_slice(&self.input.split_to(FRAME_HEADER));
                self.passing = length;
                return Ok(true);
            }
        }
        if length > MAX_FRAME {
            return Err(ProtocolError::FrameTooLarge(length));
        }
        if self.input.len() < FRAME_HEADER + length {
            return Ok(false);
        }
        self.input.advance(FRAME_HEADER);
        let payload = self.input.split_to(length);
        let end_headers = flags & END_HEADERS != 0;
        if kind == HEADERS {
            if self.block.is_some() {
                return Err(ProtocolError::InterleavedFrame(HEADERS));
            }
            if stream == 0 {
                return Err(ProtocolError::HeadersOnStreamZero);
            }
            let (priority, fragment) = headers_payload(&payload, flags)?;
            self.block = Some(Block {
                stream,
                end_stream: flags & END_STREAM != 0,
                priority,
                fragment: fragment.to_vec(),
                continuations: 0,
            });
        } else {
            let block = self.block.as_mut().filter(|b| b.stream == stream && stream != 0);
            let block = block.ok_or(ProtocolError::UnexpectedContinuation)?;
            if !end_headers {
                block.continuations += 1;
                if block.continuations > MAX_CONTINUATIONS {
                    return Err(ProtocolError::TooManyContinuations);
                }
            }
            if block.fragment.len() + payload.len() > MAX_BLOCK {
                return Err(ProtocolError::BlockTooLarge);
            }
            block.fragment.extend_from_slice(&payload);
        }
        if end_headers && let Some(block) = self.block.take() {
            self.rewrite(block, out)?;
        }
        Ok(true)
    }

    /// Decodes a complete block, replaces an invalid `:authority`, and writes it as HEADERS and
    /// CONTINUATION frames of literals without indexing.
    fn rewrite(&mut self, block: Block, out: &mut BytesMut) -> Result<(), ProtocolError> {
        let fields = self.decoder.decode(&block.fragment, MAX_LIST)?;
        let mut encoded = Vec::with_capacity(fields.iter().map(|(n, v)| hpack::field_size(n, v)).sum());
        for (name, value) in &fields {
            let value = if name == b":authority" && http::uri::Authority::try_from(value.as_slice()).is_err() {
                self.rewritten += 1;
                REPLACEMENT
            } else {
                value.as_slice()
            };
            hpack::encode_literal(&mut encoded, name, value);
        }
        let priority = block.priority.as_ref().map_or(&[][..], |p| &p[..]);
        let first_room = MAX_FRAME - priority.len();
        let (first, mut rest) = encoded.split_at(encoded.len().min(first_room));
        let mut flags = if block.end_stream { END_STREAM } else { 0 };
        if block.priority.is_some() {
            flags |= PRIORITY;
        }
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        write_frame(out, HEADERS, flags, block.stream, &[priority, first]);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
            let flags = if tail.is_empty() { END_HEADERS } else { 0 };
            write_frame(out, CONTINUATION, flags, block.stream, &[chunk]);
            rest = tail;
        }
        Ok(())
    }
}

/// A HEADERS payload's priority fields and header block fragment, without the padding.
fn headers_payload(payload: &[u8], flags: u8) -> Result<(Option<[u8; 5]>, &[u8]), ProtocolError> {
    let mut rest = payload;
    let mut padding = 0;
    if flags & PADDED != 0 {
        let (&length, after) = rest.split_first().ok_or(ProtocolError::BadPadding)?;
        padding = usize::from(length);
        rest = after;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        let (fields, after) = rest.split_first_chunk::<5>().ok_or(ProtocolError::BadPadding)?;
        priority = Some(*fields);
        rest = after;
    }
    let end = rest.len().checked_sub(padding).ok_or(ProtocolError::BadPadding)?;
    Ok((priority, &rest[..end]))
}

fn write_frame(out: &mut BytesMut, kind: u8, flags: u8, stream: u32, parts: &[&[u8]]) {
    let length: usize = parts.iter().map(|p| p.len()).sum();
    out.extend_from_slice(&(length as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    parts.iter().for_each(|part| out.extend_from_slice(part));
}

/// The fuzz target's entry (feature `fuzzing`; not an API). The first byte sets the size of the
/// pieces the rest is fed in, after the preface. Then what h2 would read is checked: frames
/// within 16 KiB, no padding, and header blocks that decode without the dynamic table and
/// carry only valid authorities. Panics when a check fails.
#[cfg(any(test, feature = "fuzzing"))]
#[allow(unreachable_pub)] // public for the fuzz target only
pub fn fuzz(data: &[u8]) {
    let Some((&piece, data)) = data.split_first() else { return };
    let input = [PREFACE, data].concat();
    let mut rewriter = Rewriter::default();
    let mut out = BytesMut::new();
    for chunk in input.chunks(usize::from(piece).max(1)) {
        if rewriter.feed(chunk, &mut out).is_err() {
            break;
        }
    }
    let mut rest = out.strip_prefix(PREFACE).expect("the preface first");
    let mut decoder = hpack::Decoder::new(HEADER_TABLE_SIZE);
    let mut block = Vec::new();
    while rest.len() >= FRAME_HEADER {
        let length = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let Some(payload) = rest.get(FRAME_HEADER..FRAME_HEADER + length) else { break };
        let (kind, flags) = (rest[3], rest[4]);
        rest = &rest[FRAME_HEADER + length..];
        match kind {
            HEADERS => {
                assert!(length <= MAX_FRAME && flags & PADDED == 0);
                block = payload[if flags & PRIORITY != 0 { 5 } else { 0 }..].to_vec();
            }
            CONTINUATION => {
                assert!(length <= MAX_FRAME);
                block.extend_from_slice(payload);
            }
            _ => continue,
        }
        if flags & END_HEADERS != 0 {
            // An empty authority made `localhost` grows the list a little: room for that.
            let fields = decoder.decode(&block, 2 * MAX_LIST).expect("the rewritten block decodes");
            for (name, value) in fields {
                assert!(name != b":authority" || http::uri::Authority::try_from(value.as_slice()).is_ok());
            }
            assert_eq!(decoder.decode(&[0xbe], MAX_LIST), Err(HpackError::BadIndex(62)), "no indexing");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first HEADERS block grpcio 1.85.3 sent for `unix:/tmp/h2probe/x.sock` (observed):
    /// `:authority: tmp%2Fh2probe%2Fx.sock`, every field a literal with incremental indexing.
    const GRPCIO_FIRST: &str = "40053a70617468102f746573742e5376632f4d6574686f64400a3a617574686f7269747916746d702532\
        46683270726f6265253246782e736f636b8386400c636f6e74656e742d74797065106170706c69636174696f6e2f6772706340027465\
        08747261696c6572734014677270632d6163636570742d656e636f64696e67176964656e746974792c206465666c6174652c20677a69\
        70400c677270632d74696d656f7574023553400a757365722d6167656e7430677270632d707974686f6e2f312e38352e3320677270632d\
        632f35382e302e3020286c696e75783b2063687474703229";
    /// Its second call on the channel: every field but one a dynamic-table reference
    /// (`:authority` is 0xc3).
    const GRPCIO_SECOND: &str = "c4c38386c2c1c0400c677270632d74696d656f757405353031306dbf";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        write_frame(&mut out, kind, flags, stream, &[payload]);
        out.to_vec()
    }

    fn with_preface(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut bytes = PREFACE.to_vec();
        frames.iter().for_each(|f| bytes.extend_from_slice(f));
        bytes
    }

    /// (type, flags, stream, payload) of each frame after the preface.
    fn frames(out: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut rest = out.strip_prefix(PREFACE).expect("the preface first");
        let mut frames = Vec::new();
        while !rest.is_empty() {
            let length = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let stream = u32::from_be_bytes(rest[5..9].try_into().unwrap());
            frames.push((rest[3], rest[4], stream, rest[9..9 + length].to_vec()));
            rest = &rest[9 + length..];
        }
        frames
    }

    fn feed_all(input: &[u8]) -> (Rewriter, Result<Vec<u8>, ProtocolError>) {
        let mut rewriter = Rewriter::default();
        let mut out = BytesMut::new();
        let result = rewriter.feed(input, &mut out).map(|()| out.to_vec());
        (rewriter, result)
    }

    /// The header lists h2 decodes from `out` (a fresh decoder: the rewriter's output never
    /// indexes, which `decoded_without_indexing` checks).
    fn header_lists(out: &[u8]) -> Vec<Vec<(String, String)>> {
        let mut decoder = hpack::Decoder::new(HEADER_TABLE_SIZE);
        let mut lists = Vec::new();
        let mut block = Vec::new();
        for (kind, flags, _, payload) in frames(out) {
            match kind {
                HEADERS => {
                    let start = if flags & PRIORITY != 0 { 5 } else { 0 };
                    assert_eq!(flags & PADDED, 0, "padding is dropped");
                    block = payload[start..].to_vec();
                }
                CONTINUATION => block.extend_from_slice(&payload),
                _ => continue,
            }
            if flags & END_HEADERS != 0 {
                let fields = decoder.decode(&block, MAX_LIST).unwrap();
                lists.push(
                    fields
                        .into_iter()
                        .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
                        .collect(),
                );
                assert_eq!(decoder.decode(&[0xbe], MAX_LIST), Err(HpackError::BadIndex(62)), "no indexing");
            }
        }
        lists
    }

    fn authority_of(list: &[(String, String)]) -> &str {
        &list.iter().find(|(n, _)| n == ":authority").unwrap().1
    }

    #[test]
    fn grpcio_socket_path_becomes_localhost_and_the_rest_is_unchanged() {
        let input = with_preface(&[
            frame(0x4, 0, 0, &[]),
            frame(HEADERS, END_HEADERS, 1, &hex(GRPCIO_FIRST)),
            frame(0x0, END_STREAM, 1, &[0, 0, 0, 0, 0]),
            frame(HEADERS, END_HEADERS, 3, &hex(GRPCIO_SECOND)),
        ]);
        let (rewriter, out) = feed_all(&input);
        let out = out.unwrap();
        assert_eq!(rewriter.rewritten, 2);
        let lists = header_lists(&out);
        let expected = |timeout: &str| {
            [
                (":path", "/test.Svc/Method"),
                (":authority", "localhost"),
                (":method", "POST"),
                (":scheme", "http"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                ("grpc-accept-encoding", "identity, deflate, gzip"),
                ("grpc-timeout", timeout),
                ("user-agent", "grpc-python/1.85.3 grpc-c/58.0.0 (linux; chttp2)"),
            ]
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .to_vec()
        };
        assert_eq!(lists, [expected("5S"), expected("5010m")]);
        // SETTINGS and DATA are passed through byte for byte.
        let frames = frames(&out);
        assert_eq!(frames[0], (0x4, 0, 0, vec![]));
        assert_eq!(frames[2], (0x0, END_STREAM, 1, vec![0, 0, 0, 0, 0]));
        assert_eq!(frames[1].1, END_HEADERS);
    }

    /// Each form the clients send is replaced; authorities h2 accepts are left alone.
    #[test]
    fn only_invalid_authorities_are_replaced() {
        for (authority, kept) in [
            ("/run/wimse/agent.sock", false),       // grpc-java
            ("%2Frun%2Fwimse%2Fagent.sock", false), // grpc-swift
            ("run%2Fwimse%2Fagent.sock", false),    // gRPC C core
            ("", false),
            ("localhost", true),
            ("example.com:8443", true),
            ("agent.sock", true),
            ("[fe80::1%25eth0]", true),
            ("user%20@localhost", true),
        ] {
            let mut block = Vec::new();
            hpack::encode_literal(&mut block, b":method", b"POST");
            hpack::encode_literal(&mut block, b":authority", authority.as_bytes());
            let (rewriter, out) = feed_all(&with_preface(&[frame(HEADERS, END_HEADERS, 1, &block)]));
            let lists = header_lists(&out.unwrap());
            assert_eq!(authority_of(&lists[0]), if kept { authority } else { "localhost" }, "{authority:?}");
            assert_eq!(rewriter.rewritten, u64::from(!kept));
        }
        // `host` and names that only look alike are not touched.
        let mut block = Vec::new();
        hpack::encode_literal(&mut block, b"host", b"/run/x.sock");
        hpack::encode_literal(&mut block, b":Authority", b"/run/x.sock");
        let (_, out) = feed_all(&with_preface(&[frame(HEADERS, END_HEADERS, 1, &block)]));
        assert_eq!(
            header_lists(&out.unwrap())[0],
            [("host", "/run/x.sock"), (":Authority", "/run/x.sock")].map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
    }

    /// PADDED, PRIORITY and a split into CONTINUATIONs arrive as one unpadded HEADERS frame
    /// that keeps its PRIORITY fields and END_STREAM.
    #[test]
    fn padding_priority_and_continuations() {
        let block = hex(GRPCIO_FIRST);
        let (a, b) = block.split_at(40);
        let (b, c) = b.split_at(30);
        let mut headers = vec![9];
        headers.extend_from_slice(&[0x80, 0, 0, 0, 200]);
        headers.extend_from_slice(a);
        headers.extend_from_slice(&[0; 9]);
        let input = with_preface(&[
            frame(HEADERS, PADDED | PRIORITY | END_STREAM, 5, &headers),
            frame(CONTINUATION, 0, 5, b),
            frame(CONTINUATION, END_HEADERS, 5, c),
        ]);
        let (_, out) = feed_all(&input);
        let out = out.unwrap();
        let frames = frames(&out);
        assert_eq!(frames.len(), 1);
        let (kind, flags, stream, payload) = &frames[0];
        assert_eq!((*kind, *flags, *stream), (HEADERS, PRIORITY | END_STREAM | END_HEADERS, 5));
        assert_eq!(payload[..5], [0x80, 0, 0, 0, 200]);
        assert_eq!(authority_of(&header_lists(&out)[0]), "localhost");
    }

    /// A block larger than one frame is written as HEADERS and CONTINUATIONs within 16 KiB.
    #[test]
    fn large_blocks_are_split_within_the_frame_size() {
        let mut block = Vec::new();
        hpack::encode_literal(&mut block, b":authority", b"/run/x.sock");
        for i in 0..3 {
            hpack::encode_literal(&mut block, format!("x-big-{i}").as_bytes(), &[b'v'; 12_000]);
        }
        let (first, rest) = block.split_at(MAX_FRAME - 5);
        let pieces: Vec<&[u8]> = rest.chunks(MAX_FRAME).collect();
        let mut input = vec![frame(HEADERS, PRIORITY, 1, &[&[0, 0, 0, 3, 16][..], first].concat())];
        for (i, piece) in pieces.iter().enumerate() {
            input.push(frame(CONTINUATION, if i + 1 == pieces.len() { END_HEADERS } else { 0 }, 1, piece));
        }
        let (_, out) = feed_all(&with_preface(&input));
        let out = out.unwrap();
        let frames = frames(&out);
        assert!(frames.len() >= 3 && frames.iter().all(|f| f.3.len() <= MAX_FRAME));
        assert_eq!(frames.iter().filter(|f| f.1 & END_HEADERS != 0).count(), 1);
        assert!(frames.last().unwrap().1 & END_HEADERS != 0);
        let list = &header_lists(&out)[0];
        assert_eq!(list.len(), 4);
        assert_eq!(authority_of(list), "localhost");
        assert!(list[1..].iter().all(|(_, v)| v.len() == 12_000));
    }

    /// Byte by byte or all at once, the output is the same; DATA is streamed before its frame
    /// is complete.
    #[test]
    fn chunking_does_not_matter() {
        let input = with_preface(&[
            frame(0x4, 0, 0, &[0, 4, 0, 1, 0, 0]),
            frame(HEADERS, END_HEADERS, 1, &hex(GRPCIO_FIRST)),
            frame(0x0, 0, 1, &[7; 100]),
            frame(HEADERS, END_HEADERS | END_STREAM, 3, &hex(GRPCIO_SECOND)),
            frame(0x8, 0, 0, &[0, 0, 1, 0]),
        ]);
        let (_, whole) = feed_all(&input);
        let whole = whole.unwrap();
        let mut rewriter = Rewriter::default();
        let mut out = BytesMut::new();
        for byte in &input {
            rewriter.feed(&[*byte], &mut out).unwrap();
        }
        assert_eq!(out.to_vec(), whole);
        // The DATA frame's header and first payload byte are out before the rest arrives.
        let mut rewriter = Rewriter::default();
        let mut out = BytesMut::new();
        let data_start = input.windows(4).position(|w| w == [0, 0, 100, 0]).unwrap();
        rewriter.feed(&input[..data_start + 10], &mut out).unwrap();
        assert!(out.ends_with(&[0, 0, 100, 0, 0, 0, 0, 0, 1, 7]));
    }

    #[test]
    fn not_http2_passes_through() {
        let request = b"GET / HTTP/1.1\r\nHost: /run/x.sock\r\n\r\n";
        let (_, out) = feed_all(request);
        assert_eq!(out.unwrap(), request);
        let (_, out) = feed_all(b"PRI * HTTP/2.0\r\n\r\nXX");
        assert_eq!(out.unwrap(), b"PRI * HTTP/2.0\r\n\r\nXX");
    }

    #[test]
    fn protocol_errors_end_the_connection() {
        let headers = |stream, flags, block: &[u8]| frame(HEADERS, flags, stream, block);
        let ok_block = hex(GRPCIO_FIRST);
        let cases: Vec<(Vec<Vec<u8>>, ProtocolError)> = vec![
            (vec![headers(1, 0, &ok_block[..10]), frame(0x0, 0, 1, &[])], ProtocolError::InterleavedFrame(0x0)),
            (vec![headers(1, 0, &ok_block[..10]), headers(3, END_HEADERS, &[])], ProtocolError::InterleavedFrame(1)),
            (vec![frame(CONTINUATION, END_HEADERS, 1, &[])], ProtocolError::UnexpectedContinuation),
            (
                vec![headers(1, 0, &ok_block[..10]), frame(CONTINUATION, END_HEADERS, 3, &[])],
                ProtocolError::UnexpectedContinuation,
            ),
            (vec![headers(0, END_HEADERS, &[0x82])], ProtocolError::HeadersOnStreamZero),
            (vec![frame(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2, 0x82])], ProtocolError::PushPromise),
            (vec![headers(1, END_HEADERS, &[0x82; MAX_FRAME + 1])], ProtocolError::FrameTooLarge(MAX_FRAME + 1)),
            (vec![headers(1, END_HEADERS | PADDED, &[])], ProtocolError::BadPadding),
            (vec![headers(1, END_HEADERS | PADDED, &[3, 0x82, 0])], ProtocolError::BadPadding),
            (vec![headers(1, END_HEADERS | PRIORITY, &[0, 0, 0, 0])], ProtocolError::BadPadding),
            (vec![headers(1, END_HEADERS, &[0xbe])], ProtocolError::Hpack(HpackError::BadIndex(62))),
            (
                vec![headers(1, END_HEADERS, &[0x3f, 0xe2, 0x1f])],
                ProtocolError::Hpack(HpackError::TableSizeTooLarge(4096)),
            ),
            (vec![headers(1, END_HEADERS, &[0x00, 0x05])], ProtocolError::Hpack(HpackError::Truncated)),
        ];
        for (frames, expected) in cases {
            let (mut rewriter, result) = feed_all(&with_preface(&frames));
            assert_eq!(result, Err(expected.clone()));
            // It stays failed.
            assert_eq!(rewriter.feed(&[], &mut BytesMut::new()), Err(expected));
        }
        // A padding length equal to what remains is allowed (an empty fragment).
        let (_, result) = feed_all(&with_preface(&[headers(1, END_HEADERS | PADDED, &[2, 0, 0])]));
        assert!(result.is_ok());
    }

    /// Five CONTINUATIONs without END_HEADERS and 64 KiB are allowed; one more of either is not.
    #[test]
    fn continuation_and_size_limits_are_h2s() {
        let mut input = vec![frame(HEADERS, 0, 1, &[0x82])];
        input.extend((0..MAX_CONTINUATIONS).map(|_| frame(CONTINUATION, 0, 1, &[0x82])));
        input.push(frame(CONTINUATION, END_HEADERS, 1, &[0x82]));
        let (_, out) = feed_all(&with_preface(&input));
        assert_eq!(header_lists(&out.unwrap())[0].len(), MAX_CONTINUATIONS + 2);
        input.insert(1, frame(CONTINUATION, 0, 1, &[0x82]));
        assert_eq!(feed_all(&with_preface(&input)).1, Err(ProtocolError::TooManyContinuations));

        // A compressed block over 64 KiB.
        let piece = vec![0x82; MAX_FRAME];
        let mut input = vec![frame(HEADERS, 0, 1, &piece)];
        input.extend((0..3).map(|_| frame(CONTINUATION, 0, 1, &piece)));
        input.push(frame(CONTINUATION, END_HEADERS, 1, &[0x82]));
        assert_eq!(feed_all(&with_preface(&input)).1, Err(ProtocolError::BlockTooLarge));

        // A small block that expands over 64 KiB through the dynamic table: a 4000-byte entry
        // referenced 17 times.
        let mut block = Vec::new();
        block.extend_from_slice(&[0x40, 1, b'x', 0x7f, 0xa1, 0x1e]);
        block.extend_from_slice(&[b'v'; 4000]);
        let (_, out) = feed_all(&with_preface(&[frame(HEADERS, END_HEADERS, 1, &block)]));
        assert_eq!(header_lists(&out.unwrap())[0][0].1.len(), 4000);
        let mut input = vec![frame(HEADERS, END_HEADERS, 1, &block)];
        input.push(frame(HEADERS, END_HEADERS, 3, &[0xbe; 15]));
        assert!(feed_all(&with_preface(&input)).1.is_ok(), "15 x 4033 bytes");
        input.push(frame(HEADERS, END_HEADERS, 5, &[0xbe; 17]));
        assert_eq!(feed_all(&with_preface(&input)).1, Err(ProtocolError::Hpack(HpackError::ListTooLarge(MAX_LIST))));
    }

    /// Random and mutated frame sequences, fed in random pieces: an answer, never a panic, and
    /// never more output than the limits allow.
    #[test]
    fn random_and_mutated_input_never_panics() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let seeds = [hex(GRPCIO_FIRST), hex(GRPCIO_SECOND)];
        let (mut accepted, mut refused) = (0, 0);
        for round in 0..20_000 {
            let mut input = PREFACE.to_vec();
            for _ in 0..1 + random() % 5 {
                let mut payload = if round % 2 == 0 {
                    seeds[(random() % 2) as usize].clone()
                } else {
                    (0..random() % 300).map(|_| random() as u8).collect()
                };
                for _ in 0..random() % 6 {
                    if !payload.is_empty() {
                        let at = random() as usize % payload.len();
                        payload[at] = random() as u8;
                    }
                }
                let kind = [HEADERS, HEADERS, CONTINUATION, 0x0, 0x4, 0x3, PUSH_PROMISE][(random() % 7) as usize];
                let flags = random() as u8 & (END_STREAM | END_HEADERS | PADDED | PRIORITY);
                let stream = [0, 1, 3][(random() % 3) as usize];
                input.extend_from_slice(&frame(kind, flags, stream, &payload));
            }
            if random() % 4 == 0 {
                let at = random() as usize % input.len();
                input[at] = random() as u8;
            }
            let mut rewriter = Rewriter::default();
            let mut out = BytesMut::new();
            let mut rest = &input[..];
            let mut result = Ok(());
            while !rest.is_empty() && result.is_ok() {
                let (piece, tail) = rest.split_at(rest.len().min(1 + random() as usize % 64));
                result = rewriter.feed(piece, &mut out);
                rest = tail;
            }
            assert!(out.len() <= input.len() + 5 * (MAX_LIST + 2 * FRAME_HEADER));
            if result.is_ok() { accepted += 1 } else { refused += 1 }
        }
        assert!(accepted > 1000 && refused > 1000, "{accepted} accepted, {refused} refused");
    }

    /// The fuzz target's seeds and mutations of them pass the target's checks (what h2 reads
    /// is well-formed), so `cargo test` runs them too.
    #[test]
    fn fuzz_seeds_and_their_mutations_pass_the_checks() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/authority_rewriter");
        let seeds: Vec<Vec<u8>> =
            std::fs::read_dir(&dir).unwrap().map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect();
        assert!(seeds.len() >= 5);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for seed in &seeds {
            fuzz(seed);
            for _ in 0..2_000 {
                let mut input = seed.clone();
                for _ in 0..1 + random() % 4 {
                    let at = random() as usize % input.len();
                    input[at] = random() as u8;
                }
                fuzz(&input);
            }
        }
    }
}
