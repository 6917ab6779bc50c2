//! Compact JWS tokens with any header (a wrong `typ` or `alg` too), serialized deterministically.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use wimse_core::jose::{Backend, b64url_decode, b64url_encode};

use crate::keys::Key;

/// `value` with every object's members in sorted order, whatever map type serde_json is built
/// with: the JSON text (and so every signature) does not depend on a feature flag.
pub(crate) fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut names: Vec<&String> = map.keys().collect();
            names.sort();
            let mut sorted = Map::new();
            for name in names {
                sorted.insert(name.clone(), canonical(&map[name]));
            }
            Value::Object(sorted)
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// `header.claims.signature`, the signature by `key` (RFC 6979 ECDSA or Ed25519: deterministic)
/// over what the header says, whatever its `alg`.
pub(crate) fn jwt(header: &Value, claims: &Value, key: &Key) -> String {
    let encode = |v: &Value| b64url_encode(serde_json::to_vec(&canonical(v)).expect("JSON values serialize"));
    let input = format!("{}.{}", encode(header), encode(claims));
    let signature = key.signing.sign(Backend::RustCrypto, input.as_bytes()).expect("the key signs");
    format!("{input}.{}", b64url_encode(signature))
}

/// The header and the claims of a token, for the files.
pub(crate) fn decode(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let mut part = || -> Value {
        let bytes = b64url_decode(parts.next().expect("three parts")).expect("base64url");
        canonical(&serde_json::from_slice(&bytes).expect("a JSON object"))
    };
    let header = part();
    (header, part())
}

/// A fixed 128-bit identifier (`jti`, nonce) named by `label`: base64url of the first 16 bytes
/// of SHA-256("wimse-rs vectors v1 id " + label). Real ones come from a CSPRNG.
pub(crate) fn fixed_id(label: &str) -> String {
    let digest = Sha256::digest(format!("wimse-rs vectors v1 id {label}").as_bytes());
    b64url_encode(&digest[..16])
}

/// `{"alg": alg, "typ": typ}` plus `kid` when given.
pub(crate) fn header(alg: &str, typ: Option<&str>, kid: Option<&str>) -> Value {
    let mut map = Map::new();
    map.insert("alg".into(), alg.into());
    if let Some(kid) = kid {
        map.insert("kid".into(), kid.into());
    }
    if let Some(typ) = typ {
        map.insert("typ".into(), typ.into());
    }
    Value::Object(map)
}

/// Sets (or, with `Value::Null`, removes) a member of a JSON object.
pub(crate) fn set(object: &mut Value, name: &str, value: Value) {
    let map = object.as_object_mut().expect("a JSON object");
    match value {
        Value::Null => {
            map.remove(name);
        }
        value => {
            map.insert(name.into(), value);
        }
    }
}
