//! Concatenated DER certificates, as the Workload API carries chains and bundles.

use rustls::pki_types::CertificateDer;

/// Splits concatenated DER values (each a definite-length SEQUENCE, as X.509 certificates are).
/// Fails on anything else: an indefinite or overlong length, a truncated value, trailing bytes.
pub fn split_certificates(mut bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, &'static str> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = der_len(bytes)?;
        out.push(CertificateDer::from(bytes[..len].to_vec()));
        bytes = &bytes[len..];
    }
    Ok(out)
}

/// The total length (header included) of the DER SEQUENCE at the start of `bytes`.
fn der_len(bytes: &[u8]) -> Result<usize, &'static str> {
    if bytes.first() != Some(&0x30) {
        return Err("not a DER SEQUENCE");
    }
    let first = *bytes.get(1).ok_or("truncated DER header")?;
    let (header, content) = if first < 0x80 {
        (2, first as usize)
    } else {
        let count = (first & 0x7f) as usize;
        // 0x80 is the indefinite form (BER, not DER); more than 4 length bytes is not a certificate.
        if count == 0 || count > 4 {
            return Err("unsupported DER length");
        }
        let len_bytes = bytes.get(2..2 + count).ok_or("truncated DER header")?;
        let len = len_bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
        // DER uses the shortest form: no leading zero byte, no long form below 128.
        if len_bytes[0] == 0 || len < 0x80 {
            return Err("non-minimal DER length");
        }
        (2 + count, len)
    };
    let total = header.checked_add(content).ok_or("DER length overflows")?;
    if total > bytes.len() {
        return Err("truncated DER value");
    }
    Ok(total)
}

/// Concatenates DER certificates.
pub fn concat_certificates<'a>(certificates: impl IntoIterator<Item = &'a CertificateDer<'a>>) -> Vec<u8> {
    certificates.into_iter().flat_map(|c| c.as_ref().iter().copied()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_refuses_malformed_input() {
        let short = [0x30, 0x02, 0x05, 0x00];
        let long: Vec<u8> = [0x30, 0x81, 0x80].into_iter().chain(std::iter::repeat_n(7, 0x80)).collect();
        let both: Vec<u8> = short.iter().chain(long.iter()).copied().collect();
        let split = split_certificates(&both).unwrap();
        assert_eq!(split.len(), 2);
        assert_eq!(split[1].as_ref(), &long[..]);
        assert_eq!(concat_certificates(&split), both);
        assert!(split_certificates(&[]).unwrap().is_empty());
        for bad in [
            &[0x31, 0x00][..],
            &[0x30],
            &[0x30, 0x80],
            &[0x30, 0x85, 1, 1, 1, 1, 1],
            &[0x30, 0x05, 0x00],
            &[0x30, 0x82, 0xff],
        ] {
            assert!(split_certificates(bad).is_err(), "{bad:?}");
        }
        // A length near usize::MAX must not overflow.
        assert!(split_certificates(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
