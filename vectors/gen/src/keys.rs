//! The vectors' keys, each derived from a fixed seed named in the files.

use serde::Serialize;
use sha2::{Digest, Sha256};
use wimse_core::jose::{Jwk, SigningKey, b64url_encode};

/// How a key's 32 secret bytes are made: SHA-256 of this prefix and the key's name.
pub(crate) const SEED_PREFIX: &str = "wimse-rs vectors v1 key ";

/// A key of the vectors: its name, what it stands for, and the key itself.
#[derive(Debug, Clone)]
pub(crate) struct Key {
    pub(crate) name: &'static str,
    pub(crate) role: &'static str,
    pub(crate) signing: SigningKey,
}

/// A key as written in a file: the seed's recipe, then the private and public JWKs.
#[derive(Debug, Serialize)]
pub(crate) struct KeyEntry {
    name: &'static str,
    role: &'static str,
    seed: String,
    private_jwk: Jwk,
    public_jwk: Jwk,
}

impl Key {
    pub(crate) fn entry(&self) -> KeyEntry {
        KeyEntry {
            name: self.name,
            role: self.role,
            seed: format!("SHA-256(\"{SEED_PREFIX}{}\"): the JWK's `d`", self.name),
            private_jwk: self.signing.to_private_jwk(),
            public_jwk: self.signing.public_jwk().clone(),
        }
    }

    /// The public JWK, as a trust anchor or `cnf.jwk`.
    pub(crate) fn public(&self) -> &Jwk {
        self.signing.public_jwk()
    }

    /// The JWS algorithm the key signs with.
    pub(crate) fn alg(&self) -> &'static str {
        self.signing.algorithm().as_str()
    }
}

fn seed(name: &str) -> [u8; 32] {
    Sha256::digest(format!("{SEED_PREFIX}{name}").as_bytes()).into()
}

/// A P-256 key (ES256) from its seed, used as the scalar.
fn es256(name: &'static str, kid: Option<&str>, role: &'static str) -> Key {
    let secret = p256::SecretKey::from_slice(&seed(name)).expect("a SHA-256 output is a valid P-256 scalar");
    let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&secret.public_key(), false);
    let (x, y) = (point.x().expect("uncompressed point"), point.y().expect("uncompressed point"));
    let jwk = serde_json::json!({
        "kty": "EC", "crv": "P-256", "alg": "ES256",
        "x": b64url_encode(x), "y": b64url_encode(y), "d": b64url_encode(secret.to_bytes()),
    });
    key(name, kid, role, &jwk)
}

/// An Ed25519 key (EdDSA) from its seed.
fn eddsa(name: &'static str, kid: Option<&str>, role: &'static str) -> Key {
    let seed = seed(name);
    let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
    let jwk = serde_json::json!({
        "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA",
        "x": b64url_encode(public.as_bytes()), "d": b64url_encode(seed),
    });
    key(name, kid, role, &jwk)
}

fn key(name: &'static str, kid: Option<&str>, role: &'static str, jwk: &serde_json::Value) -> Key {
    let jwk = Jwk::from_json(&jwk.to_string()).expect("a well-formed private JWK");
    let signing = SigningKey::from_jwk(&jwk).expect("the JWK's members agree");
    let signing = match kid {
        Some(kid) => signing.with_kid(kid),
        None => signing,
    };
    Key { name, role, signing }
}

/// Every key of every suite.
#[derive(Debug)]
pub(crate) struct Keys {
    pub(crate) issuer_es256: Key,
    pub(crate) issuer_eddsa: Key,
    pub(crate) client_es256: Key,
    pub(crate) client_eddsa: Key,
    pub(crate) server_es256: Key,
    pub(crate) tts_es256: Key,
    pub(crate) rogue_es256: Key,
    pub(crate) rogue_eddsa: Key,
    pub(crate) wit_svid_es256: Key,
    pub(crate) wit_svid_eddsa: Key,
    pub(crate) jwt_svid_es256: Key,
}

impl Keys {
    pub(crate) fn new() -> Self {
        Self {
            issuer_es256: es256(
                "issuer-es256",
                Some("issuer-es256"),
                "identity server of spiffe://vectors.example: signs WITs (trust anchor)",
            ),
            issuer_eddsa: eddsa(
                "issuer-eddsa",
                Some("issuer-eddsa"),
                "second identity server key of spiffe://vectors.example: signs WITs (trust anchor)",
            ),
            client_es256: es256(
                "client-es256",
                None,
                "workload key of spiffe://vectors.example/client (its WIT's cnf.jwk)",
            ),
            client_eddsa: eddsa(
                "client-eddsa",
                None,
                "workload key of spiffe://vectors.example/batch (its WIT's cnf.jwk)",
            ),
            server_es256: es256(
                "server-es256",
                None,
                "workload key of spiffe://vectors.example/ledger, the responder (its WIT's cnf.jwk)",
            ),
            tts_es256: es256(
                "tts-es256",
                Some("tts-1"),
                "Transaction Token Service of spiffe://vectors.example: signs Txn-Tokens",
            ),
            rogue_es256: es256("rogue-es256", None, "trusted by nobody: signs the forgeries"),
            rogue_eddsa: eddsa("rogue-eddsa", None, "trusted by nobody: signs the forgeries"),
            wit_svid_es256: es256(
                "wit-svid-es256",
                Some("wit-es256"),
                "WIT-SVID signing key of spiffe://vectors.example (bundle `use`: wit-svid)",
            ),
            wit_svid_eddsa: eddsa(
                "wit-svid-eddsa",
                Some("wit-eddsa"),
                "EdDSA key in the bundle as a WIT-SVID key (bundle `use`: wit-svid); the profile does not allow EdDSA",
            ),
            jwt_svid_es256: es256(
                "jwt-svid-es256",
                Some("jwt-es256"),
                "JWT-SVID key of spiffe://vectors.example (bundle `use`: jwt-svid): not a WIT anchor",
            ),
        }
    }
}
