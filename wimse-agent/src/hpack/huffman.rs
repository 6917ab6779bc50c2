//! The HPACK Huffman code (RFC 7541 Appendix B), decoded as the canonical code it is: each
//! symbol's code follows from the code lengths alone (codes of one length are consecutive, in
//! symbol order, and shorter codes come first), so only the 257 lengths are written down and
//! the decoding tables are computed at compile time.

use super::HpackError;

/// Code length in bits of each symbol 0 to 255 and of EOS (256), RFC 7541 Appendix B.
const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, //
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, //
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, //
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, //
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, //
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, //
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, //
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, //
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, //
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, //
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, //
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, //
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, //
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, //
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, //
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, //
    30,
];

const EOS: u16 = 256;
const MAX_LENGTH: usize = 30;

/// The canonical code: for each length, its first code, how many codes it has, and where its
/// symbols start in `symbols` (all symbols ordered by length, then value).
struct Canonical {
    first: [u32; MAX_LENGTH + 1],
    count: [u16; MAX_LENGTH + 1],
    offset: [u16; MAX_LENGTH + 1],
    symbols: [u16; 257],
}

const CODE: Canonical = canonical();

const fn canonical() -> Canonical {
    let mut count = [0u16; MAX_LENGTH + 1];
    let mut symbol = 0;
    while symbol < 257 {
        count[LENGTHS[symbol] as usize] += 1;
        symbol += 1;
    }
    let (mut first, mut offset) = ([0u32; MAX_LENGTH + 1], [0u16; MAX_LENGTH + 1]);
    let (mut code, mut position, mut length) = (0u32, 0u16, 1);
    while length <= MAX_LENGTH {
        first[length] = code;
        offset[length] = position;
        code = (code + count[length] as u32) << 1;
        position += count[length];
        length += 1;
    }
    let mut symbols = [0u16; 257];
    let mut next = offset;
    let mut symbol = 0;
    while symbol < 257 {
        let length = LENGTHS[symbol] as usize;
        symbols[next[length] as usize] = symbol as u16;
        next[length] += 1;
        symbol += 1;
    }
    Canonical { first, count, offset, symbols }
}

/// Decodes a Huffman-coded string: EOS inside it, or padding that is longer than 7 bits or not
/// the most significant bits of EOS (all ones), is an error (RFC 7541 §5.2).
pub(super) fn decode(bytes: &[u8]) -> Result<Vec<u8>, HpackError> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 2);
    let (mut code, mut length) = (0u32, 0usize);
    for byte in bytes {
        for bit in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> bit) & 1);
            length += 1;
            // A prefix of a longer code is above every code of its own length.
            let index = code.wrapping_sub(CODE.first[length]);
            if index < u32::from(CODE.count[length]) {
                match CODE.symbols[usize::from(CODE.offset[length]) + index as usize] {
                    EOS => return Err(HpackError::BadHuffman),
                    symbol => out.push(symbol as u8),
                }
                (code, length) = (0, 0);
            } else if length == MAX_LENGTH {
                return Err(HpackError::BadHuffman);
            }
        }
    }
    if length > 7 || code != (1 << length) - 1 {
        return Err(HpackError::BadHuffman);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The code of `symbol`, from the canonical tables.
    fn code_of(symbol: u16) -> (u32, usize) {
        let length = usize::from(LENGTHS[usize::from(symbol)]);
        let start = usize::from(CODE.offset[length]);
        let rank =
            CODE.symbols[start..start + usize::from(CODE.count[length])].iter().position(|s| *s == symbol).unwrap();
        (CODE.first[length] + rank as u32, length)
    }

    /// A test encoder: the symbols' codes, then padding with ones.
    fn encode(text: &[u8]) -> Vec<u8> {
        let (mut out, mut bits, mut pending) = (Vec::new(), 0u64, 0usize);
        for &byte in text {
            let (code, length) = code_of(u16::from(byte));
            bits = (bits << length) | u64::from(code);
            pending += length;
            while pending >= 8 {
                out.push((bits >> (pending - 8)) as u8);
                pending -= 8;
            }
        }
        if pending > 0 {
            out.push(((bits << (8 - pending)) as u8) | ((1u8 << (8 - pending)) - 1));
        }
        out
    }

    /// The lengths make a complete prefix code (Kraft sum exactly 1), and the canonical codes are
    /// the RFC's.
    #[test]
    fn canonical_codes_are_those_of_rfc_7541() {
        let kraft: u64 = LENGTHS.iter().map(|l| 1u64 << (MAX_LENGTH - usize::from(*l))).sum();
        assert_eq!(kraft, 1 << MAX_LENGTH);
        // Spot checks against Appendix B, across lengths 5 to 30.
        for (symbol, code, length) in [
            (b'0' as u16, 0x0, 5),
            (b'a' as u16, 0x3, 5),
            (b' ' as u16, 0x14, 6),
            (b'/' as u16, 0x18, 6),
            (b'%' as u16, 0x15, 6),
            (b':' as u16, 0x5c, 7),
            (b'&' as u16, 0xf8, 8),
            (b'!' as u16, 0x3f8, 10),
            (b'#' as u16, 0xffa, 12),
            (0, 0x1ff8, 13),
            (b'<' as u16, 0x7ffc, 15),
            (b'\\' as u16, 0x7fff0, 19),
            (128, 0xfffe6, 20),
            (1, 0x7fffd8, 23),
            (9, 0xffffea, 24),
            (255, 0x3ffffee, 26),
            (2, 0xfffffe2, 28),
            (10, 0x3ffffffc, 30),
            (EOS, 0x3fffffff, 30),
        ] {
            assert_eq!(code_of(symbol), (code, length), "symbol {symbol}");
        }
    }

    #[test]
    fn every_byte_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&encode(&all)), Ok(all.clone()));
        for byte in 0..=255u8 {
            assert_eq!(decode(&encode(&[byte, byte, b'a'])), Ok(vec![byte, byte, b'a']));
        }
        assert_eq!(decode(&[]), Ok(Vec::new()));
        // RFC 7541 C.4.1.
        assert_eq!(
            decode(&[0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff]).unwrap(),
            b"www.example.com"
        );
    }

    #[test]
    fn refuses_bad_padding_and_eos() {
        // 'a' is 00011; padding 110 is not all ones.
        assert_eq!(decode(&[0b0001_1110]), Err(HpackError::BadHuffman));
        assert_eq!(decode(&[0b0001_1111]), Ok(b"a".to_vec()));
        // Eight bits of padding (a whole byte of ones) is too long.
        assert_eq!(decode(&[0b0001_1111, 0xff]), Err(HpackError::BadHuffman));
        // EOS itself (30 ones) inside the string.
        assert_eq!(decode(&[0xff, 0xff, 0xff, 0xfc]), Err(HpackError::BadHuffman));
        assert_eq!(decode(&[0xff, 0xff, 0xff, 0xff]), Err(HpackError::BadHuffman));
    }
}
