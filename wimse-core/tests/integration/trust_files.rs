//! Trust anchors from files in each form they are published in, with errors that name the file.

use wimse_core::jose::{Algorithm, SigningKey};
use wimse_core::protocol::trust::TrustAnchors;

struct Dir(std::path::PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("wimse-trust-files-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, contents: &str) -> std::path::PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn one_jwk_a_jwks_and_a_spiffe_bundle_load_from_files() {
    let dir = Dir::new("forms");
    let a = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("a");
    let b = SigningKey::generate(Algorithm::EdDSA).unwrap().with_kid("b");
    let jwk = |k: &SigningKey| serde_json::to_value(k.public_jwk()).unwrap();

    let single = dir.write("issuer.pub.jwk", &jwk(&a).to_string());
    let anchors = TrustAnchors::from_file(&single).unwrap();
    assert_eq!(anchors.keys().iter().map(|k| k.kid()).collect::<Vec<_>>(), [Some("a")]);

    let jwks = dir.write("jwks.json", &serde_json::json!({"keys": [jwk(&a), jwk(&b)]}).to_string());
    assert_eq!(TrustAnchors::from_file(&jwks).unwrap().keys().len(), 2);

    // A SPIFFE bundle keeps only the WIT keys.
    let mut wit_key = jwk(&a);
    wit_key["use"] = "wit-svid".into();
    let mut x509_key = jwk(&b);
    x509_key["use"] = "x509-svid".into();
    let bundle = serde_json::json!({"keys": [wit_key, x509_key], "spiffe_sequence": 3, "spiffe_refresh_hint": 60});
    let path = dir.write("bundle.json", &bundle.to_string());
    let anchors = TrustAnchors::from_file(&path).unwrap();
    assert_eq!(anchors.keys().iter().map(|k| k.kid()).collect::<Vec<_>>(), [Some("a")]);
}

#[test]
fn bad_files_are_refused_naming_the_file() {
    let dir = Dir::new("bad");
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let private = serde_json::to_string(&key.to_private_jwk()).unwrap();
    let cases = [
        ("private.jwk", private.clone(), "private key material"),
        ("private-set.json", format!(r#"{{"keys":[{private}]}}"#), "private key material"),
        ("garbage.json", "not json".to_owned(), "trust anchors"),
        ("array.json", "[1,2]".to_owned(), "trust anchors"),
        ("neither.json", r#"{"hello":"world"}"#.to_owned(), "neither a JWK, a JWKS nor a SPIFFE bundle"),
        ("keys-not-array.json", r#"{"keys":{}}"#.to_owned(), "not an array"),
        ("empty-set.json", r#"{"keys":[]}"#.to_owned(), "no usable key"),
        ("huge.json", format!(r#"{{"keys":[],"pad":"{}"}}"#, "x".repeat(2 << 20)), "larger than"),
    ];
    for (name, contents, expected) in cases {
        let path = dir.write(name, &contents);
        let err = TrustAnchors::from_file(&path).unwrap_err();
        let detail = err.detail().unwrap();
        assert!(detail.starts_with(&path.display().to_string()), "{name}: {detail}");
        assert!(detail.contains(expected), "{name}: {detail}");
        assert!(!detail.contains(&private[20..60]), "no key material in errors");
    }
    let missing = dir.0.join("missing.json");
    assert!(TrustAnchors::from_file(&missing).unwrap_err().detail().unwrap().contains("missing.json"));
}
