//! An HPACK decoder (RFC 7541) for the client-to-server header blocks of one HTTP/2 connection,
//! and the one encoding the agent writes back: literals without indexing.
//!
//! It keeps the client's dynamic table, so it decodes what the client's encoder sends, indexed
//! references included. Every input is bounded by the caller's limits: a bad index, a bad
//! Huffman code, an integer over 2^28, a table size update above the advertised limit or after
//! the first field, or a header list over `max_list` bytes is an error, never a panic.
//! h2's own decoder is private, so the agent carries this small one (see `authority.rs`).

mod huffman;

use std::collections::VecDeque;

/// One decoded header field: name and value, as bytes.
pub(crate) type Field = (Vec<u8>, Vec<u8>);

/// Why a header block could not be decoded (HTTP/2 calls all of these `COMPRESSION_ERROR`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HpackError {
    #[error("HPACK: the header block ends inside a representation")]
    Truncated,
    #[error("HPACK: an integer longer than 5 octets")]
    IntegerOverflow,
    #[error("HPACK: index {0} is in neither table")]
    BadIndex(usize),
    #[error("HPACK: invalid Huffman code")]
    BadHuffman,
    #[error("HPACK: dynamic table size update above the advertised {0} bytes")]
    TableSizeTooLarge(usize),
    #[error("HPACK: dynamic table size update after a header field")]
    TableSizeUpdateNotFirst,
    #[error("HPACK: decoded header list over {0} bytes")]
    ListTooLarge(usize),
}

/// The size of an entry or field as RFC 7541 §4.1 counts it.
pub(crate) fn field_size(name: &[u8], value: &[u8]) -> usize {
    name.len() + value.len() + 32
}

/// A decoder for one connection's client-to-server direction.
#[derive(Debug)]
pub(crate) struct Decoder {
    /// Newest first: index 62 is `dynamic[0]`.
    dynamic: VecDeque<Field>,
    size: usize,
    /// The current maximum, set by the encoder's size updates.
    max_size: usize,
    /// What the server advertised (SETTINGS_HEADER_TABLE_SIZE): no update may exceed it.
    limit: usize,
}

impl Decoder {
    /// A decoder for a server that advertised `header_table_size`.
    pub(crate) fn new(header_table_size: usize) -> Self {
        Self { dynamic: VecDeque::new(), size: 0, max_size: header_table_size, limit: header_table_size }
    }

    /// Decodes one complete header block. Fails once the decoded list exceeds `max_list` bytes
    /// (RFC 7541 sizes). After an error the table is out of step with the client's: the
    /// connection must end.
    pub(crate) fn decode(&mut self, block: &[u8], max_list: usize) -> Result<Vec<Field>, HpackError> {
        let mut input = Input(block);
        let mut fields = Vec::new();
        let mut list_size = 0usize;
        while let Some(&first) = input.0.first() {
            let field = match first {
                // Indexed field (§6.1).
                0x80..=0xff => {
                    let index = input.integer(7)?;
                    let (name, value) = self.get(index)?;
                    check_size(&mut list_size, name, value, max_list)?;
                    (name.to_vec(), value.to_vec())
                }
                // Literal with incremental indexing (§6.2.1).
                0x40..=0x7f => {
                    let (name, value) = self.literal(&mut input, 6, &mut list_size, max_list)?;
                    self.insert(name.clone(), value.clone());
                    (name, value)
                }
                // Dynamic table size update (§6.3): only before the first field, as h2 requires.
                0x20..=0x3f => {
                    let size = input.integer(5)?;
                    if !fields.is_empty() {
                        return Err(HpackError::TableSizeUpdateNotFirst);
                    }
                    if size > self.limit {
                        return Err(HpackError::TableSizeTooLarge(self.limit));
                    }
                    self.max_size = size;
                    self.evict(0);
                    continue;
                }
                // Literal without indexing (§6.2.2) or never indexed (§6.2.3).
                0x00..=0x1f => self.literal(&mut input, 4, &mut list_size, max_list)?,
            };
            fields.push(field);
        }
        Ok(fields)
    }

    /// The entry at `index`: 1 to 61 static, then the dynamic table, newest first.
    fn get(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        match index {
            1..=61 => {
                let (name, value) = STATIC_TABLE[index - 1];
                Ok((name.as_bytes(), value.as_bytes()))
            }
            _ => index
                .checked_sub(62)
                .and_then(|i| self.dynamic.get(i))
                .map(|(name, value)| (name.as_slice(), value.as_slice()))
                .ok_or(HpackError::BadIndex(index)),
        }
    }

    /// A literal field whose name index has a `prefix`-bit prefix (0: a literal name follows).
    fn literal(
        &self,
        input: &mut Input<'_>,
        prefix: u8,
        list_size: &mut usize,
        max_list: usize,
    ) -> Result<Field, HpackError> {
        let name = match input.integer(prefix)? {
            0 => input.string()?,
            index => self.get(index)?.0.to_vec(),
        };
        let value = input.string()?;
        check_size(list_size, &name, &value, max_list)?;
        Ok((name, value))
    }

    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let size = field_size(&name, &value);
        // An entry larger than the table empties it and is not added (§4.4).
        self.evict(size);
        if size <= self.max_size {
            self.size += size;
            self.dynamic.push_front((name, value));
        }
    }

    /// Evicts the oldest entries until `room` more bytes fit, or the table is empty.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            let Some((name, value)) = self.dynamic.pop_back() else { break };
            self.size -= field_size(&name, &value);
        }
    }
}

fn check_size(list_size: &mut usize, name: &[u8], value: &[u8], max_list: usize) -> Result<(), HpackError> {
    *list_size = list_size.saturating_add(field_size(name, value));
    if *list_size > max_list { Err(HpackError::ListTooLarge(max_list)) } else { Ok(()) }
}

/// The unread rest of a header block.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Result<u8, HpackError> {
        let (&byte, rest) = self.0.split_first().ok_or(HpackError::Truncated)?;
        self.0 = rest;
        Ok(byte)
    }

    /// An integer with a `prefix`-bit prefix (§5.1), at most 5 octets like h2's (values below
    /// 2^28 plus the prefix).
    fn integer(&mut self, prefix: u8) -> Result<usize, HpackError> {
        let mask = (1usize << prefix) - 1;
        let mut value = usize::from(self.byte()?) & mask;
        if value < mask {
            return Ok(value);
        }
        for shift in [0, 7, 14, 21] {
            let byte = self.byte()?;
            value += usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(HpackError::IntegerOverflow)
    }

    /// A string literal (§5.2), Huffman-decoded when flagged.
    fn string(&mut self) -> Result<Vec<u8>, HpackError> {
        let huffman = self.0.first().is_some_and(|b| b & 0x80 != 0);
        let len = self.integer(7)?;
        if len > self.0.len() {
            return Err(HpackError::Truncated);
        }
        let (bytes, rest) = self.0.split_at(len);
        self.0 = rest;
        if huffman { huffman::decode(bytes) } else { Ok(bytes.to_vec()) }
    }
}

/// Appends `name: value` to `block` as a literal field without indexing, with a literal name and
/// no Huffman coding (RFC 7541 §6.2.2): it leaves the receiver's dynamic table untouched.
/// It takes at most `field_size(name, value)` bytes.
pub(crate) fn encode_literal(block: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    block.push(0x00);
    encode_integer(block, 7, name.len());
    block.extend_from_slice(name);
    encode_integer(block, 7, value.len());
    block.extend_from_slice(value);
}

/// An integer with a `prefix`-bit prefix whose other bits are 0 (§5.1).
fn encode_integer(block: &mut Vec<u8>, prefix: u8, mut value: usize) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        block.push(value as u8);
        return;
    }
    block.push(mask as u8);
    value -= mask;
    while value >= 0x80 {
        block.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    block.push(value as u8);
}

/// RFC 7541 Appendix A.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn fields(list: &[(&str, &str)]) -> Vec<Field> {
        list.iter().map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
    }

    fn table(decoder: &Decoder) -> Vec<(String, String)> {
        decoder
            .dynamic
            .iter()
            .map(|(n, v)| (String::from_utf8(n.clone()).unwrap(), String::from_utf8(v.clone()).unwrap()))
            .collect()
    }

    /// RFC 7541 C.1: integers.
    #[test]
    fn integers_of_appendix_c1() {
        assert_eq!(Input(&[0b0000_1010]).integer(5), Ok(10));
        assert_eq!(Input(&[0b0001_1111, 0b1001_1010, 0b0000_1010]).integer(5), Ok(1337));
        assert_eq!(Input(&[42]).integer(8), Ok(42));
        for (value, prefix) in [(10, 5), (1337, 5), (42, 8), (127, 7), (126, 7), (1 << 20, 4)] {
            let mut out = Vec::new();
            encode_integer(&mut out, prefix, value);
            assert_eq!(Input(&out).integer(prefix), Ok(value));
        }
        // Five octets at most, and none missing.
        assert_eq!(Input(&[0x1f, 0xff, 0xff, 0xff, 0x7f]).integer(5), Ok(31 + (1 << 28) - 1));
        assert_eq!(Input(&[0x1f, 0xff, 0xff, 0xff, 0xff, 0x01]).integer(5), Err(HpackError::IntegerOverflow));
        assert_eq!(Input(&[0x1f, 0xff]).integer(5), Err(HpackError::Truncated));
    }

    /// RFC 7541 C.2: single representations.
    #[test]
    fn representations_of_appendix_c2() {
        let mut decoder = Decoder::new(4096);
        let block = hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572");
        assert_eq!(decoder.decode(&block, 1 << 16), Ok(fields(&[("custom-key", "custom-header")])));
        assert_eq!(decoder.size, 55);
        let mut decoder = Decoder::new(4096);
        let block = hex("040c 2f73 616d 706c 652f 7061 7468");
        assert_eq!(decoder.decode(&block, 1 << 16), Ok(fields(&[(":path", "/sample/path")])));
        assert!(decoder.dynamic.is_empty());
        let block = hex("1008 7061 7373 776f 7264 0673 6563 7265 74");
        assert_eq!(decoder.decode(&block, 1 << 16), Ok(fields(&[("password", "secret")])));
        assert!(decoder.dynamic.is_empty());
        assert_eq!(decoder.decode(&[0x82], 1 << 16), Ok(fields(&[(":method", "GET")])));
    }

    fn requests(blocks: [&str; 3], decoder: &mut Decoder) {
        let expected = [
            fields(&[(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")]),
            fields(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache"),
            ]),
            fields(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ]),
        ];
        for (block, expected) in blocks.iter().zip(expected) {
            assert_eq!(decoder.decode(&hex(block), 1 << 16), Ok(expected));
        }
        assert_eq!(
            table(decoder),
            [("custom-key", "custom-value"), ("cache-control", "no-cache"), (":authority", "www.example.com")]
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
        assert_eq!(decoder.size, 164);
    }

    /// RFC 7541 C.3 (plain strings) and C.4 (Huffman): three requests on one connection.
    #[test]
    fn requests_of_appendix_c3_and_c4() {
        requests(
            [
                "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                "8286 84be 5808 6e6f 2d63 6163 6865",
                "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
            ],
            &mut Decoder::new(4096),
        );
        requests(
            [
                "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
                "8286 84be 5886 a8eb 1064 9cbf",
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ],
            &mut Decoder::new(4096),
        );
    }

    fn responses(blocks: [&str; 3], decoder: &mut Decoder) {
        let date1 = "Mon, 21 Oct 2013 20:13:21 GMT";
        let date2 = "Mon, 21 Oct 2013 20:13:22 GMT";
        let location = "https://www.example.com";
        let cookie = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
        let expected = [
            fields(&[(":status", "302"), ("cache-control", "private"), ("date", date1), ("location", location)]),
            fields(&[(":status", "307"), ("cache-control", "private"), ("date", date1), ("location", location)]),
            fields(&[
                (":status", "200"),
                ("cache-control", "private"),
                ("date", date2),
                ("location", location),
                ("content-encoding", "gzip"),
                ("set-cookie", cookie),
            ]),
        ];
        for (block, expected) in blocks.iter().zip(expected) {
            assert_eq!(decoder.decode(&hex(block), 1 << 16), Ok(expected));
        }
        assert_eq!(
            table(decoder),
            [("set-cookie", cookie), ("content-encoding", "gzip"), ("date", date2)]
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
        assert_eq!(decoder.size, 215);
    }

    /// RFC 7541 C.5 (plain strings) and C.6 (Huffman): responses with a 256-byte table, so
    /// entries are evicted.
    #[test]
    fn responses_of_appendix_c5_and_c6_evict() {
        let mut decoder = Decoder::new(256);
        responses(
            [
                "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 \
                 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                "4803 3330 37c1 c0bf",
                "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04 677a 6970 \
                 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61 \
                 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31",
            ],
            &mut decoder,
        );
        let mut decoder = Decoder::new(256);
        responses(
            [
                "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad \
                 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
                "4883 640e ffc1 c0bf",
                "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2 \
                 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
            ],
            &mut decoder,
        );
    }

    #[test]
    fn refuses_bad_blocks() {
        let mut decoder = Decoder::new(4096);
        assert_eq!(decoder.decode(&[0x80], 1 << 16), Err(HpackError::BadIndex(0)));
        assert_eq!(decoder.decode(&[0xbe], 1 << 16), Err(HpackError::BadIndex(62)), "empty dynamic table");
        assert_eq!(decoder.decode(&[0x7e, 0x00], 1 << 16), Err(HpackError::BadIndex(62)), "name index");
        assert_eq!(decoder.decode(&[0x00, 0x05, b'a'], 1 << 16), Err(HpackError::Truncated));
        assert_eq!(decoder.decode(&[0x00, 0x01, b'a'], 1 << 16), Err(HpackError::Truncated), "no value");
        // Size updates: up to the advertised limit, before the first field only.
        assert_eq!(decoder.decode(&[0x3f, 0xe2, 0x1f], 1 << 16), Err(HpackError::TableSizeTooLarge(4096)));
        assert_eq!(decoder.decode(&[0x3f, 0xe1, 0x1f, 0x20, 0x82], 1 << 16), Ok(fields(&[(":method", "GET")])));
        assert_eq!(decoder.decode(&[0x82, 0x20], 1 << 16), Err(HpackError::TableSizeUpdateNotFirst));
        // The list limit counts RFC 7541 sizes: ":method" + "GET" + 32 = 42.
        assert_eq!(decoder.decode(&[0x82, 0x82], 84), Ok(fields(&[(":method", "GET"), (":method", "GET")])));
        assert_eq!(decoder.decode(&[0x82, 0x82], 83), Err(HpackError::ListTooLarge(83)));
    }

    #[test]
    fn table_size_updates_evict_and_oversized_entries_empty_the_table() {
        let mut decoder = Decoder::new(4096);
        decoder.decode(&hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572"), 1 << 16).unwrap();
        assert_eq!(decoder.size, 55);
        // Size 0 then 100: evicted, and still empty.
        decoder.decode(&[0x20, 0x3f, 0x45], 1 << 16).unwrap();
        assert!(decoder.dynamic.is_empty() && decoder.size == 0 && decoder.max_size == 100);
        // An entry of 32 + 10 + 60 bytes does not fit a 100-byte table: not added.
        let mut block = vec![0x40, 10];
        block.extend_from_slice(b"custom-key");
        block.push(60);
        block.extend_from_slice(&[b'v'; 60]);
        decoder.decode(&block, 1 << 16).unwrap();
        assert!(decoder.dynamic.is_empty());
        assert_eq!(decoder.decode(&[0xbe], 1 << 16), Err(HpackError::BadIndex(62)));
    }

    #[test]
    fn literal_encoding_round_trips_and_stays_within_the_field_size() {
        for (name, value) in [("a", ""), (":authority", "localhost"), ("x-long", &"v".repeat(300)[..])] {
            let mut block = Vec::new();
            encode_literal(&mut block, name.as_bytes(), value.as_bytes());
            assert!(block.len() <= field_size(name.as_bytes(), value.as_bytes()));
            let mut decoder = Decoder::new(4096);
            assert_eq!(decoder.decode(&block, 1 << 16), Ok(fields(&[(name, value)])));
            assert!(decoder.dynamic.is_empty(), "without indexing");
        }
    }
}
