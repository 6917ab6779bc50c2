//! Verifier, policy and credentials built from TOML and JSON files and `WIMSE_*` variables,
//! with errors that name the field.

mod common;

use common::*;
use wimse_core::config::{Proofs, Settings};
use wimse_core::prelude::*;

struct Dir(std::path::PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("wimse-settings-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_toml_file_builds_a_working_verifier_and_policy() {
    let f = Fixture::new();
    let dir = Dir::new("toml");
    let anchor = dir.write("issuer.pub.jwk", &serde_json::to_string(f.issuer_key.public_jwk()).unwrap());
    let toml = format!(
        r#"
[verifier]
origins = ["{ORIGIN}"]
leeway = 10
proofs = "wpt"

[[verifier.trust]]
trust_domain = "spiffe://prod.example"
file = "{}"

[policy]
name = "payments"
allow = {{ prefixes = ["spiffe://prod.example/ns"] }}
deny = {{ workloads = ["spiffe://prod.example/ns/legacy"] }}
"#,
        anchor.display()
    );
    let settings = Settings::from_file(dir.write("service.toml", &toml)).unwrap();
    assert_eq!(settings.verifier.proofs, Proofs::Wpt);
    let verifier = settings.verifier().unwrap().with_clock(FixedClock::new(NOW));
    assert_eq!(verifier.config().leeway, 10);
    assert!(!verifier.config().accept_http_signatures);
    let caller = verifier.verify_sync(&RequestView::new(PATH, &f.headers(&f.wit, &f.wpt()))).unwrap();
    let policy = settings.policy().unwrap();
    policy.check(&caller).unwrap();
    assert!(!policy.allows_id(&"spiffe://prod.example/ns/legacy".parse().unwrap()));
    assert!(!policy.allows_id(&"spiffe://prod.example/other".parse().unwrap()));
}

#[test]
fn environment_variables_override_the_file() {
    let f = Fixture::new();
    let dir = Dir::new("env");
    let anchor = dir.write(
        "bundle.json",
        &format!(r#"{{"keys":[{}]}}"#, serde_json::to_string(f.issuer_key.public_jwk()).unwrap()),
    );
    let trust = format!("spiffe://prod.example={}", anchor.display());
    let settings = Settings::from_json(r#"{"verifier": {"audiences": ["urn:old"]}}"#)
        .unwrap()
        .with_env_from([
            ("WIMSE_AUDIENCES", "urn:svc:a, urn:svc:b"),
            ("WIMSE_ORIGINS", ORIGIN),
            ("WIMSE_TRUST", trust.as_str()),
            ("WIMSE_LEEWAY", "5"),
            ("WIMSE_PROOFS", "http-signature"),
            ("WIMSE_POLICY_ALLOW", "spiffe://prod.example/ns/orders"),
            ("UNRELATED", "ignored"),
        ])
        .unwrap();
    assert_eq!(settings.verifier.audiences, ["urn:svc:a", "urn:svc:b"]);
    let verifier = settings.verifier().unwrap();
    assert_eq!(verifier.config().leeway, 5);
    assert!(!verifier.config().accept_wpt);
    assert!(settings.policy().unwrap().allows_id(&f.id));
    let err = Settings::default().with_env_from([("WIMSE_LEEWAY", "soon")]).unwrap_err();
    assert!(err.detail().unwrap().contains("WIMSE_LEEWAY (verifier.leeway)"), "{err:?}");
    let err = Settings::default().with_env_from([("WIMSE_TRUST", "spiffe://prod.example")]).unwrap_err();
    assert!(err.detail().unwrap().contains("DOMAIN=FILE"), "{err:?}");
    let err = Settings::default().with_env_from([("WIMSE_PROOFS", "magic")]).unwrap_err();
    assert!(err.detail().unwrap().contains("WIMSE_PROOFS"), "{err:?}");
}

#[test]
fn errors_name_the_field() {
    let dir = Dir::new("errors");
    let anchor = dir.write("a.jwk", &serde_json::to_string(Fixture::new().issuer_key.public_jwk()).unwrap());
    let trust = format!(r#""trust": [{{"trust_domain": "spiffe://prod.example", "file": "{}"}}]"#, anchor.display());
    let cases: Vec<(String, &str)> = vec![
        (r#"{"verifier": {"audiances": ["x"]}}"#.into(), "audiances"),
        (format!(r#"{{"verifier": {{"origins": ["127.0.0.1:8080"], {trust}}}}}"#), "scheme://authority"),
        (r#"{"verifier": {"origins": ["https://a.example"]}}"#.into(), "verifier.trust"),
        (
            r#"{"verifier": {"origins": ["https://a.example"], "trust": [{"trust_domain": "prod.example", "file": "x"}]}}"#
                .into(),
            "verifier.trust[0].trust_domain",
        ),
        (
            r#"{"verifier": {"origins": ["https://a.example"], "trust": [{"trust_domain": "spiffe://prod.example", "file": "/nonexistent/anchor.json"}]}}"#
                .into(),
            "verifier.trust[0].file: /nonexistent/anchor.json",
        ),
    ];
    for (json, field) in &cases {
        let err = Settings::from_json(json).and_then(|s| s.verifier().map(|_| ())).unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::InvalidConfiguration);
        assert!(err.detail().unwrap().contains(field), "{field}: {err:?}");
    }
    for (json, field) in [
        (r#"{"policy": {"name": "p", "allow": {"prefixes": ["spiffe://prod.example"]}}}"#, "policy.allow.prefixes[0]"),
        (r#"{"policy": {"name": "p", "allow": {"workloads": ["not an id"]}}}"#, "policy.allow.workloads[0]"),
        (r#"{"policy": {"name": "p"}}"#, "policy.allow"),
        (
            r#"{"policy": {"name": "p", "allow": {"workloads": ["spiffe://a.example/x"]}, "deny": {"trust_domains": ["x"]}}}"#,
            "policy.deny.trust_domains[0]",
        ),
        (r#"{}"#, "policy: missing"),
    ] {
        let err = Settings::from_json(json).unwrap().policy().unwrap_err();
        assert!(err.detail().unwrap().contains(field), "{field}: {err:?}");
    }
    let err =
        Settings::from_json(r#"{"credentials": {"wit_file": "/nonexistent/wit", "key_file": "/nonexistent/key"}}"#)
            .unwrap()
            .credentials()
            .unwrap_err();
    assert!(err.detail().unwrap().starts_with("credentials: /nonexistent/wit"), "{err:?}");
    // TOML errors name the file and the line.
    let bad = dir.write("bad.toml", "[verifier]\norigins = \"not a list\"\n");
    let err = Settings::from_file(&bad).unwrap_err();
    let detail = err.detail().unwrap();
    assert!(detail.contains("bad.toml") && detail.contains("line 2"), "{detail}");
}
