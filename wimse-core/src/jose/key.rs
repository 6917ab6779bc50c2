//! Parsed public and private keys. Keys are parsed and checked once, when imported; signing and
//! verification then only run the algorithm.

use std::fmt;
use std::sync::OnceLock;

use jsonwebtoken::{DecodingKey, EncodingKey};
use rand_core::OsRng;

use super::prepared::{ParsedPublic, ParsedSecret, PreparedPublic, PreparedSecret};
use super::{Algorithm, Backend, Jwk, b64url_decode, b64url_encode};
use crate::error::{Error, ErrorKind, Result};

/// Smallest RSA modulus accepted, in bytes (2048 bits; RFC 7518 §3.3).
const MIN_RSA_MODULUS_BYTES: usize = 256;
/// Largest RSA modulus accepted, in bytes (8192 bits): bounds the cost of a hostile key.
const MAX_RSA_MODULUS_BYTES: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    P256,
    P384,
    Ed25519,
    Rsa,
}

impl KeyKind {
    fn accepts(self, alg: Algorithm) -> bool {
        match self {
            KeyKind::P256 => alg == Algorithm::ES256,
            KeyKind::P384 => alg == Algorithm::ES384,
            KeyKind::Ed25519 => alg == Algorithm::EdDSA,
            KeyKind::Rsa => alg.key_type() == "RSA",
        }
    }

    /// The one algorithm a key of this kind can be used with, if there is only one.
    fn only_algorithm(self) -> Option<Algorithm> {
        match self {
            KeyKind::P256 => Some(Algorithm::ES256),
            KeyKind::P384 => Some(Algorithm::ES384),
            KeyKind::Ed25519 => Some(Algorithm::EdDSA),
            KeyKind::Rsa => None,
        }
    }
}

fn invalid(detail: &'static str) -> Error {
    Error::with_detail(ErrorKind::InvalidKey, detail)
}

/// The uncompressed SEC1 point of an EC JWK whose coordinates are `len` bytes each.
fn ec_point(jwk: &Jwk, len: usize) -> Result<Vec<u8>> {
    let (x, y) = (decode_fixed(jwk.x.as_ref(), len, "EC x")?, decode_fixed(jwk.y.as_ref(), len, "EC y")?);
    Ok([&[4u8][..], &x, &y].concat())
}

fn decode_fixed(value: Option<&String>, len: usize, what: &'static str) -> Result<Vec<u8>> {
    let bytes = b64url_decode(value.ok_or_else(|| invalid(what))?).map_err(|_| invalid(what))?;
    if bytes.len() != len {
        return Err(invalid(what));
    }
    Ok(bytes)
}

/// How a public key verifies.
#[derive(Clone)]
enum Verifying {
    /// EC and Ed25519 keys, parsed for either backend.
    Prepared(PreparedPublic),
    /// RSA keys (issuers only), through jsonwebtoken.
    Rsa(DecodingKey),
}

/// How a private key signs.
#[derive(Clone)]
enum Signing {
    /// EC and Ed25519 keys, parsed for either backend.
    Prepared(Box<PreparedSecret>),
    /// RSA keys (issuers only), through jsonwebtoken.
    Rsa(EncodingKey),
}

/// A public key ready to verify signatures: an issuer's trust-anchor key or a workload's `cnf.jwk`.
#[derive(Clone)]
pub struct PublicKey {
    kind: KeyKind,
    alg: Option<Algorithm>,
    verifying: Verifying,
    jwk: Jwk,
    /// Computed on first use: a verifier needs it once per caller, not per request.
    thumbprint: OnceLock<String>,
}

impl PublicKey {
    /// Imports a public JWK. Private members are refused. The key is pinned to its `alg` when the
    /// JWK has one; otherwise EC and OKP keys are pinned to their only algorithm and RSA keys may
    /// be used with any RSA algorithm.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self> {
        if jwk.has_private_members() {
            return Err(invalid("a public key must not contain private members"));
        }
        let alg =
            jwk.alg.as_deref().map(str::parse::<Algorithm>).transpose().map_err(|_| invalid("unsupported alg"))?;
        let prepared = |parsed| Verifying::Prepared(PreparedPublic::new(parsed));
        let (kind, verifying) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
            ("EC", Some("P-256")) => {
                let point = ec_point(jwk, 32)?;
                let key =
                    p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).map_err(|_| invalid("not a P-256 point"))?;
                (KeyKind::P256, prepared(ParsedPublic::P256(key)))
            }
            ("EC", Some("P-384")) => {
                let point = ec_point(jwk, 48)?;
                let key =
                    p384::ecdsa::VerifyingKey::from_sec1_bytes(&point).map_err(|_| invalid("not a P-384 point"))?;
                (KeyKind::P384, prepared(ParsedPublic::P384(key)))
            }
            ("OKP", Some("Ed25519")) => {
                let x = decode_fixed(jwk.x.as_ref(), 32, "OKP x")?;
                let bytes: [u8; 32] = x.as_slice().try_into().map_err(|_| invalid("OKP x"))?;
                let key =
                    ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| invalid("not an Ed25519 point"))?;
                (KeyKind::Ed25519, prepared(ParsedPublic::Ed25519(key)))
            }
            ("RSA", _) => {
                let n =
                    b64url_decode(jwk.n.as_deref().ok_or_else(|| invalid("RSA n"))?).map_err(|_| invalid("RSA n"))?;
                let e =
                    b64url_decode(jwk.e.as_deref().ok_or_else(|| invalid("RSA e"))?).map_err(|_| invalid("RSA e"))?;
                if n.first() == Some(&0) || !(MIN_RSA_MODULUS_BYTES..=MAX_RSA_MODULUS_BYTES).contains(&n.len()) {
                    return Err(invalid("RSA modulus must be 2048 to 8192 bits"));
                }
                if e.is_empty() || e.len() > 4 || e.first() == Some(&0) {
                    return Err(invalid("RSA exponent"));
                }
                (KeyKind::Rsa, Verifying::Rsa(DecodingKey::from_rsa_raw_components(&n, &e)))
            }
            _ => return Err(invalid("unsupported kty/crv")),
        };
        if alg.is_some_and(|alg| !kind.accepts(alg)) {
            return Err(invalid("alg does not fit the key type"));
        }
        Ok(Self {
            kind,
            alg: alg.or(kind.only_algorithm()),
            verifying,
            jwk: jwk.to_public(),
            thumbprint: OnceLock::new(),
        })
    }

    /// Imports an X.509 SubjectPublicKeyInfo (DER), as a workload sends it to have a certificate
    /// issued: EC P-256 or P-384 (an uncompressed point), Ed25519, or RSA (`rsaEncryption`).
    /// The key then goes through [`from_jwk`](Self::from_jwk)'s checks (the point is on its
    /// curve, an RSA modulus has 2048 to 8192 bits), so a certificate certifies only a key a
    /// WIT's `cnf` would accept: one key policy for both credentials. Other algorithms and
    /// curves, and trailing or malformed DER, are refused ([`ErrorKind::InvalidKey`]).
    #[cfg(feature = "mtls")]
    pub fn from_spki_der(der: &[u8]) -> Result<Self> {
        use x509_parser::oid_registry::{
            OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
        };
        use x509_parser::prelude::FromDer as _;
        use x509_parser::public_key::RSAPublicKey;
        use x509_parser::x509::SubjectPublicKeyInfo;

        let (rest, spki) = SubjectPublicKeyInfo::from_der(der).map_err(|_| invalid("not a SubjectPublicKeyInfo"))?;
        if !rest.is_empty() {
            return Err(invalid("data after the SubjectPublicKeyInfo"));
        }
        let (algorithm, parameters) = (&spki.algorithm.algorithm, spki.algorithm.parameters.as_ref());
        if spki.subject_public_key.unused_bits != 0 {
            return Err(invalid("the public key is not a whole number of bytes"));
        }
        let key: &[u8] = &spki.subject_public_key.data;
        let mut jwk = Jwk::default();
        if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve =
                parameters.and_then(|p| p.as_oid().ok()).ok_or_else(|| invalid("EC key without a named curve"))?;
            let (crv, len) = if curve == OID_EC_P256 {
                ("P-256", 32)
            } else if curve == OID_NIST_EC_P384 {
                ("P-384", 48)
            } else {
                return Err(invalid("unsupported EC curve (P-256 and P-384 are accepted)"));
            };
            if key.len() != 1 + 2 * len || key[0] != 4 {
                return Err(invalid("the EC point is not an uncompressed point of its curve"));
            }
            jwk.kty = "EC".into();
            jwk.crv = Some(crv.into());
            jwk.x = Some(b64url_encode(&key[1..=len]));
            jwk.y = Some(b64url_encode(&key[1 + len..]));
        } else if *algorithm == OID_SIG_ED25519 {
            // RFC 8410 §3: the parameters are absent.
            if parameters.is_some() {
                return Err(invalid("Ed25519 key with algorithm parameters"));
            }
            jwk.kty = "OKP".into();
            jwk.crv = Some("Ed25519".into());
            jwk.x = Some(b64url_encode(key));
        } else if *algorithm == OID_PKCS1_RSAENCRYPTION {
            // RFC 3279 §2.3.1: the parameters are NULL.
            if parameters.is_none_or(|p| p.as_null().is_err()) {
                return Err(invalid("RSA key whose algorithm parameters are not NULL"));
            }
            let (rest, rsa) = RSAPublicKey::from_der(key).map_err(|_| invalid("not an RSA public key"))?;
            if !rest.is_empty() {
                return Err(invalid("data after the RSA public key"));
            }
            if [rsa.modulus, rsa.exponent].iter().any(|int| int.first().is_none_or(|b| b & 0x80 != 0)) {
                return Err(invalid("RSA modulus or exponent is empty or negative"));
            }
            // DER integers carry a leading zero byte when their top bit is set; JWK values do not.
            let unsigned = |bytes: &[u8]| {
                let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
                b64url_encode(&bytes[start..])
            };
            jwk.kty = "RSA".into();
            jwk.n = Some(unsigned(rsa.modulus));
            jwk.e = Some(unsigned(rsa.exponent));
        } else {
            return Err(invalid("unsupported public key algorithm (EC P-256/P-384, Ed25519 or RSA)"));
        }
        Self::from_jwk(&jwk)
    }

    /// The algorithm this key is pinned to, if any (always set for EC and OKP keys).
    pub fn algorithm(&self) -> Option<Algorithm> {
        self.alg
    }

    /// Whether a signature made with `alg` may be checked with this key.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.kind.accepts(alg) && self.alg.is_none_or(|pinned| pinned == alg)
    }

    /// The key id, if the JWK has one.
    pub fn kid(&self) -> Option<&str> {
        self.jwk.kid.as_deref()
    }

    /// The public JWK.
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// RFC 7638 thumbprint of the key.
    pub fn thumbprint(&self) -> &str {
        // `from_jwk` checked every member the thumbprint needs; `kid` and `alg`, which may be
        // set later, are not part of it.
        self.thumbprint.get_or_init(|| self.jwk.thumbprint().unwrap_or_default())
    }

    /// Verifies `signature` over `message` with `alg`. Returns `false` for a wrong signature or
    /// an algorithm the key does not accept.
    pub fn verify(&self, backend: Backend, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        if !self.accepts(alg) {
            return false;
        }
        match &self.verifying {
            Verifying::Prepared(key) => key.verify(backend, message, signature),
            Verifying::Rsa(key) => match (backend.provider().verifier_factory)(&alg.to_jsonwebtoken(), key) {
                Ok(verifier) => verifier.verify(message, &signature.to_vec()).is_ok(),
                Err(_) => false,
            },
        }
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey").field("kind", &self.kind).field("alg", &self.alg).field("kid", &self.kid()).finish()
    }
}

/// A private key that signs WITs (issuers) or WPTs (workloads). `Debug` never prints key material.
#[derive(Clone)]
pub struct SigningKey {
    alg: Algorithm,
    signing: Signing,
    public: PublicKey,
    private_jwk: Jwk,
}

impl SigningKey {
    /// Generates a fresh key for `alg` from the operating system's CSPRNG. RSA keys are not
    /// generated here: import them with [`SigningKey::from_jwk`].
    pub fn generate(alg: Algorithm) -> Result<Self> {
        let jwk = match alg {
            Algorithm::ES256 => {
                let secret = p256::SecretKey::random(&mut OsRng);
                ec_private_jwk("P-256", &secret.to_bytes(), &secret.public_key().to_sec1_bytes())
            }
            Algorithm::ES384 => {
                let secret = p384::SecretKey::random(&mut OsRng);
                ec_private_jwk("P-384", &secret.to_bytes(), &secret.public_key().to_sec1_bytes())
            }
            Algorithm::EdDSA => okp_private_jwk(&ed25519_dalek::SigningKey::generate(&mut OsRng)),
            _ => return Err(invalid("RSA key generation is not supported; import an RSA JWK")),
        };
        let mut jwk = jwk;
        jwk.alg = Some(alg.as_str().into());
        Self::from_jwk(&jwk)
    }

    /// Imports a private JWK (EC P-256/P-384, OKP Ed25519, or RSA with all CRT members).
    /// The private and public members must agree. RSA keys need `alg`.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self> {
        let d = b64url_decode(jwk.d.as_deref().ok_or_else(|| invalid("not a private key (no `d`)"))?)
            .map_err(|_| invalid("private member d"))?;
        let public = PublicKey::from_jwk(&jwk.to_public())?;
        let alg = public.alg.ok_or_else(|| invalid("an RSA signing key needs `alg`"))?;
        let signing = match public.kind {
            KeyKind::P256 => {
                let secret = p256::SecretKey::from_slice(&d).map_err(|_| invalid("P-256 d"))?;
                check_same_public(&secret.public_key().to_sec1_bytes(), &public)?;
                Signing::Prepared(Box::new(PreparedSecret::new(ParsedSecret::P256(secret.into()))?))
            }
            KeyKind::P384 => {
                let secret = p384::SecretKey::from_slice(&d).map_err(|_| invalid("P-384 d"))?;
                check_same_public(&secret.public_key().to_sec1_bytes(), &public)?;
                Signing::Prepared(Box::new(PreparedSecret::new(ParsedSecret::P384(secret.into()))?))
            }
            KeyKind::Ed25519 => {
                let seed: [u8; 32] = d.as_slice().try_into().map_err(|_| invalid("Ed25519 d"))?;
                let secret = ed25519_dalek::SigningKey::from_bytes(&seed);
                let x = public.jwk.x.as_deref().unwrap_or_default();
                if b64url_encode(secret.verifying_key().to_bytes()) != x {
                    return Err(invalid("private and public members disagree"));
                }
                Signing::Prepared(Box::new(PreparedSecret::new(ParsedSecret::Ed25519(secret))?))
            }
            KeyKind::Rsa => {
                let encoding = EncodingKey::from_rsa_der(&rsa_pkcs1_der(jwk, d)?);
                // Build a signer once so a broken key fails here, not on the first request.
                (Backend::default().provider().signer_factory)(&alg.to_jsonwebtoken(), &encoding)
                    .map_err(|_| invalid("the backend refused the private key"))?;
                Signing::Rsa(encoding)
            }
        };
        let mut private_jwk = jwk.clone();
        private_jwk.alg = Some(alg.as_str().into());
        let mut public = public;
        public.jwk.alg = Some(alg.as_str().into());
        Ok(Self { alg, signing, public, private_jwk })
    }

    /// Imports a PKCS#8 PEM private key for `alg` (ES256, ES384 or EdDSA).
    pub fn from_pkcs8_pem(pem: &str, alg: Algorithm) -> Result<Self> {
        use p256::pkcs8::DecodePrivateKey;
        let jwk = match alg {
            Algorithm::ES256 => {
                let s = p256::SecretKey::from_pkcs8_pem(pem).map_err(|_| invalid("not a P-256 PKCS#8 PEM key"))?;
                ec_private_jwk("P-256", &s.to_bytes(), &s.public_key().to_sec1_bytes())
            }
            Algorithm::ES384 => {
                let s = p384::SecretKey::from_pkcs8_pem(pem).map_err(|_| invalid("not a P-384 PKCS#8 PEM key"))?;
                ec_private_jwk("P-384", &s.to_bytes(), &s.public_key().to_sec1_bytes())
            }
            Algorithm::EdDSA => {
                let s = ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
                    .map_err(|_| invalid("not an Ed25519 PKCS#8 PEM key"))?;
                okp_private_jwk(&s)
            }
            _ => return Err(invalid("PEM import supports ES256, ES384 and EdDSA; import RSA keys as JWK")),
        };
        let mut jwk = jwk;
        jwk.alg = Some(alg.as_str().into());
        Self::from_jwk(&jwk)
    }

    /// Sets the key id carried by the public JWK (and the `kid` of tokens an issuer signs).
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        let kid = kid.into();
        self.private_jwk.kid = Some(kid.clone());
        self.public.jwk.kid = Some(kid);
        self
    }

    /// The algorithm this key signs with.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The key id.
    pub fn kid(&self) -> Option<&str> {
        self.public.kid()
    }

    /// The matching public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The public JWK (with `alg`, and `kid` if set): what goes into a WIT's `cnf.jwk` or a JWKS.
    pub fn public_jwk(&self) -> &Jwk {
        &self.public.jwk
    }

    /// The private JWK, for storing the key. Handle with care.
    pub fn to_private_jwk(&self) -> Jwk {
        self.private_jwk.clone()
    }

    /// Signs `message` with the key's algorithm.
    pub fn sign(&self, backend: Backend, message: &[u8]) -> Result<Vec<u8>> {
        let key = match &self.signing {
            Signing::Prepared(key) => return key.sign(backend, message),
            Signing::Rsa(key) => key,
        };
        let signer = (backend.provider().signer_factory)(&self.alg.to_jsonwebtoken(), key)
            .map_err(|_| Error::with_detail(ErrorKind::Crypto, "could not build a signer"))?;
        signer.try_sign(message).map_err(|_| Error::with_detail(ErrorKind::Crypto, "signing failed"))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("alg", &self.alg).field("kid", &self.kid()).finish_non_exhaustive()
    }
}

fn ec_private_jwk(crv: &str, d: &[u8], sec1_uncompressed: &[u8]) -> Jwk {
    let coords = &sec1_uncompressed[1..];
    let (x, y) = coords.split_at(coords.len() / 2);
    Jwk {
        kty: "EC".into(),
        crv: Some(crv.into()),
        x: Some(b64url_encode(x)),
        y: Some(b64url_encode(y)),
        d: Some(b64url_encode(d)),
        ..Jwk::default()
    }
}

fn okp_private_jwk(secret: &ed25519_dalek::SigningKey) -> Jwk {
    Jwk {
        kty: "OKP".into(),
        crv: Some("Ed25519".into()),
        x: Some(b64url_encode(secret.verifying_key().to_bytes())),
        d: Some(b64url_encode(secret.to_bytes())),
        ..Jwk::default()
    }
}

fn check_same_public(sec1_uncompressed: &[u8], public: &PublicKey) -> Result<()> {
    let derived = ec_private_jwk("", &[], sec1_uncompressed);
    if derived.x != public.jwk.x || derived.y != public.jwk.y {
        return Err(invalid("private and public members disagree"));
    }
    Ok(())
}

/// Builds a PKCS#1 `RSAPrivateKey` (RFC 8017 A.1.2) from the JWK's members: both backends take
/// this form, and building it by hand avoids depending on the `rsa` crate with aws-lc-rs.
fn rsa_pkcs1_der(jwk: &Jwk, d: Vec<u8>) -> Result<Vec<u8>> {
    let member = |m: &Option<String>, name: &'static str| -> Result<Vec<u8>> {
        b64url_decode(m.as_deref().ok_or_else(|| invalid(name))?).map_err(|_| invalid(name))
    };
    let ints = [
        vec![0u8],
        member(&jwk.n, "RSA n")?,
        member(&jwk.e, "RSA e")?,
        d,
        member(&jwk.p, "RSA p")?,
        member(&jwk.q, "RSA q")?,
        member(&jwk.dp, "RSA dp")?,
        member(&jwk.dq, "RSA dq")?,
        member(&jwk.qi, "RSA qi")?,
    ];
    let mut body = Vec::new();
    for int in &ints {
        let trimmed = match int.iter().position(|&b| b != 0) {
            Some(i) => &int[i..],
            None => &[0u8][..],
        };
        let pad = trimmed[0] & 0x80 != 0;
        body.push(0x02);
        der_len(&mut body, trimmed.len() + usize::from(pad));
        if pad {
            body.push(0);
        }
        body.extend_from_slice(trimmed);
    }
    let mut der = vec![0x30];
    der_len(&mut der, body.len());
    der.extend_from_slice(&body);
    Ok(der)
}

fn der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len() - 1);
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_and_verify_on_every_backend() {
        for alg in [Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA] {
            let key = SigningKey::generate(alg).unwrap();
            let jwk = key.to_private_jwk();
            let reimported = SigningKey::from_jwk(&jwk).unwrap();
            assert_eq!(reimported.public_jwk(), key.public_jwk());
            for signer in Backend::available() {
                let sig = key.sign(signer, b"msg").unwrap();
                for verifier in Backend::available() {
                    assert!(key.public_key().verify(verifier, alg, b"msg", &sig), "{alg} {signer:?}->{verifier:?}");
                    assert!(!key.public_key().verify(verifier, alg, b"msh", &sig));
                }
            }
        }
    }

    /// The keys prepared once per key must decide exactly as jsonwebtoken's providers, which
    /// parse the key on every call, on valid, altered and foreign signatures.
    #[test]
    fn prepared_keys_agree_with_jsonwebtoken() {
        let reference = |key: &PublicKey, backend: Backend, alg: Algorithm, message: &[u8], signature: &[u8]| {
            let jwk = key.jwk();
            let decoding = match alg {
                Algorithm::EdDSA => DecodingKey::from_ed_der(&b64url_decode(jwk.x.as_deref().unwrap()).unwrap()),
                _ => DecodingKey::from_ec_der(&ec_point(jwk, if alg == Algorithm::ES256 { 32 } else { 48 }).unwrap()),
            };
            (backend.provider().verifier_factory)(&alg.to_jsonwebtoken(), &decoding)
                .unwrap()
                .verify(message, &signature.to_vec())
                .is_ok()
        };
        for alg in [Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA] {
            let key = SigningKey::generate(alg).unwrap();
            let other = SigningKey::generate(alg).unwrap();
            for backend in Backend::available() {
                let good = key.sign(backend, b"message").unwrap();
                let mut flipped = good.clone();
                flipped[5] ^= 1;
                let cases: [(&[u8], Vec<u8>, bool); 6] = [
                    (b"message", good.clone(), true),
                    (b"messagf", good.clone(), false),
                    (b"message", flipped, false),
                    (b"message", good[..good.len() - 1].to_vec(), false),
                    (b"message", Vec::new(), false),
                    (b"message", other.sign(backend, b"message").unwrap(), false),
                ];
                for verifier in Backend::available() {
                    for (i, (message, signature, expected)) in cases.iter().enumerate() {
                        let ours = key.public_key().verify(verifier, alg, message, signature);
                        assert_eq!(ours, *expected, "{alg} case {i} {backend:?}->{verifier:?}");
                        assert_eq!(ours, reference(key.public_key(), verifier, alg, message, signature), "case {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn thumbprint_is_computed_once_and_ignores_kid() {
        let key = SigningKey::generate(Algorithm::ES256).unwrap();
        let before = key.public_key().thumbprint().to_owned();
        assert_eq!(before, key.public_jwk().thumbprint().unwrap());
        let named = key.with_kid("k1");
        assert_eq!(named.public_key().thumbprint(), before);
    }

    #[test]
    fn rsa_keys_are_not_generated() {
        assert_eq!(SigningKey::generate(Algorithm::RS256).unwrap_err().kind(), &ErrorKind::InvalidKey);
    }

    #[test]
    fn mismatched_private_and_public_members_are_refused() {
        let a = SigningKey::generate(Algorithm::ES256).unwrap().to_private_jwk();
        let b = SigningKey::generate(Algorithm::ES256).unwrap().to_private_jwk();
        let mixed = Jwk { d: b.d.clone(), ..a.clone() };
        assert_eq!(SigningKey::from_jwk(&mixed).unwrap_err().kind(), &ErrorKind::InvalidKey);
        let a = SigningKey::generate(Algorithm::EdDSA).unwrap().to_private_jwk();
        let b = SigningKey::generate(Algorithm::EdDSA).unwrap().to_private_jwk();
        assert!(SigningKey::from_jwk(&Jwk { d: b.d.clone(), ..a }).is_err());
    }

    #[test]
    fn public_key_pins_algorithm() {
        let key = SigningKey::generate(Algorithm::ES256).unwrap();
        let public = key.public_key();
        assert!(public.accepts(Algorithm::ES256));
        assert!(!public.accepts(Algorithm::ES384));
        assert!(!public.accepts(Algorithm::RS256));
        let sig = key.sign(Backend::default(), b"m").unwrap();
        assert!(!public.verify(Backend::default(), Algorithm::ES384, b"m", &sig));
    }

    #[test]
    fn bad_points_and_sizes_are_refused() {
        let mut jwk = SigningKey::generate(Algorithm::ES256).unwrap().public_jwk().clone();
        jwk.y = Some(b64url_encode([1u8; 32]));
        assert!(PublicKey::from_jwk(&jwk).is_err());
        jwk.y = Some(b64url_encode([1u8; 31]));
        assert!(PublicKey::from_jwk(&jwk).is_err());
        let rsa_small =
            Jwk { kty: "RSA".into(), n: Some(b64url_encode([0xc5u8; 128])), e: Some("AQAB".into()), ..Jwk::default() };
        assert!(PublicKey::from_jwk(&rsa_small).is_err());
    }

    #[test]
    fn pkcs8_pem_import_matches_the_key() {
        use p256::pkcs8::{EncodePrivateKey, LineEnding};
        let p256 = p256::SecretKey::random(&mut OsRng);
        let pem = p256.to_pkcs8_pem(LineEnding::LF).unwrap();
        let key = SigningKey::from_pkcs8_pem(&pem, Algorithm::ES256).unwrap();
        assert_eq!(key.public_jwk().x, ec_private_jwk("", &[], &p256.public_key().to_sec1_bytes()).x);
        let p384 = p384::SecretKey::random(&mut OsRng);
        let pem = p384.to_pkcs8_pem(LineEnding::LF).unwrap();
        assert_eq!(SigningKey::from_pkcs8_pem(&pem, Algorithm::ES384).unwrap().algorithm(), Algorithm::ES384);
        let ed = ed25519_dalek::SigningKey::generate(&mut OsRng);
        let pem = ed.to_pkcs8_pem(LineEnding::LF).unwrap();
        let key = SigningKey::from_pkcs8_pem(&pem, Algorithm::EdDSA).unwrap();
        assert_eq!(key.public_jwk().x.as_deref(), Some(b64url_encode(ed.verifying_key().to_bytes()).as_str()));
        // A key of another curve, or RSA, is refused.
        assert!(SigningKey::from_pkcs8_pem(&pem, Algorithm::ES256).is_err());
        assert!(SigningKey::from_pkcs8_pem(&pem, Algorithm::RS256).is_err());
    }

    #[test]
    fn der_lengths() {
        let mut v = Vec::new();
        der_len(&mut v, 5);
        der_len(&mut v, 200);
        der_len(&mut v, 1000);
        assert_eq!(v, [5, 0x81, 200, 0x82, 0x03, 0xe8]);
    }
}

#[cfg(all(test, feature = "mtls"))]
mod spki_tests {
    use super::*;

    fn der(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        der_len(&mut out, body.len());
        out.extend_from_slice(body);
        out
    }

    /// A SubjectPublicKeyInfo: the algorithm OID (DER, with its tag), its parameters, the key.
    fn spki(algorithm: &[u8], parameters: Option<&[u8]>, key: &[u8]) -> Vec<u8> {
        let identifier = der(0x30, &[algorithm, parameters.unwrap_or_default()].concat());
        der(0x30, &[identifier, der(0x03, &[&[0u8][..], key].concat())].concat())
    }

    const EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const P521: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23];
    const SECP256K1: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a];
    const RSA_ENCRYPTION: &[u8] = &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    const ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
    const NULL: &[u8] = &[0x05, 0x00];

    /// An RSA public key whose modulus has `bits` bits (its value does not matter here).
    fn rsa(bits: usize) -> Vec<u8> {
        let modulus = [&[0u8][..], &vec![0xc5u8; bits / 8]].concat();
        let key = der(0x30, &[der(0x02, &modulus), der(0x02, &[1, 0, 1])].concat());
        spki(RSA_ENCRYPTION, Some(NULL), &key)
    }

    fn refused(der: &[u8], what: &str) {
        let err = PublicKey::from_spki_der(der).unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::InvalidKey, "{what}: {err:?}");
    }

    #[test]
    fn spki_keys_get_the_jwk_key_policy() {
        for (alg, rcgen_alg) in [
            (Algorithm::ES256, &rcgen::PKCS_ECDSA_P256_SHA256),
            (Algorithm::ES384, &rcgen::PKCS_ECDSA_P384_SHA384),
            (Algorithm::EdDSA, &rcgen::PKCS_ED25519),
        ] {
            let pair = rcgen::KeyPair::generate_for(rcgen_alg).unwrap();
            let key = PublicKey::from_spki_der(&rcgen::PublicKeyData::subject_public_key_info(&pair)).unwrap();
            assert_eq!(key.algorithm(), Some(alg));
            // The same key as the workload would put in a WIT's cnf.
            let raw = pair.public_key_raw();
            let x = match alg {
                Algorithm::EdDSA => raw.to_vec(),
                _ => raw[1..=(raw.len() - 1) / 2].to_vec(),
            };
            assert_eq!(key.jwk().x.as_deref(), Some(b64url_encode(x).as_str()), "{alg}");
        }
        let rsa_2048 = PublicKey::from_spki_der(&rsa(2048)).unwrap();
        assert!(rsa_2048.accepts(Algorithm::RS256) && rsa_2048.accepts(Algorithm::PS256));
        assert_eq!(rsa_2048.jwk().n.as_deref(), Some(b64url_encode([0xc5u8; 256]).as_str()), "no DER sign byte");
        PublicKey::from_spki_der(&rsa(8192)).unwrap();

        refused(&rsa(1024), "RSA-1024");
        refused(&rsa(2040), "RSA just under 2048 bits");
        refused(&rsa(8200), "RSA over 8192 bits");
        let point = [&[4u8][..], &[7u8; 64]].concat();
        refused(&spki(EC_PUBLIC_KEY, Some(P521), &[&[4u8][..], &[7u8; 132]].concat()), "P-521");
        refused(&spki(EC_PUBLIC_KEY, Some(SECP256K1), &point), "secp256k1");
        refused(&spki(EC_PUBLIC_KEY, None, &point), "no curve");
        refused(&spki(EC_PUBLIC_KEY, Some(P256), &point), "a point off the curve");
        let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = p256.public_key_raw();
        let compressed = [&[2 + (raw[64] & 1)][..], &raw[1..33]].concat();
        refused(&spki(EC_PUBLIC_KEY, Some(P256), &compressed), "a compressed point");
        refused(&spki(ED25519, Some(NULL), &[9u8; 32]), "Ed25519 with parameters");
        refused(&spki(ED25519, None, &[9u8; 31]), "a short Ed25519 key");
        refused(
            &spki(RSA_ENCRYPTION, None, &der(0x30, &[der(0x02, &[1; 256]), der(0x02, &[3])].concat())),
            "RSA, no NULL",
        );
        refused(&[rcgen::PublicKeyData::subject_public_key_info(&p256), vec![0]].concat(), "trailing data");
        refused(b"not DER at all", "garbage");
        refused(&[], "empty");
        refused(&rcgen::PublicKeyData::subject_public_key_info(&p256)[..40], "truncated");
    }
}
