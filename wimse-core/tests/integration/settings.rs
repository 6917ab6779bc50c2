//! Verifier, policy and credentials built from TOML and JSON files and `WIMSE_*` variables,
//! with errors that name the field.

use crate::common::*;
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
    let verifier = settings.verifier().unwrap().clock(FixedClock::new(NOW));
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
        .apply_env_from([
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
    let err = Settings::default().apply_env_from([("WIMSE_LEEWAY", "soon")]).unwrap_err();
    assert!(err.detail().unwrap().contains("WIMSE_LEEWAY (verifier.leeway)"), "{err:?}");
    let err = Settings::default().apply_env_from([("WIMSE_TRUST", "spiffe://prod.example")]).unwrap_err();
    assert!(err.detail().unwrap().contains("DOMAIN=FILE"), "{err:?}");
    let err = Settings::default().apply_env_from([("WIMSE_PROOFS", "magic")]).unwrap_err();
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

/// Relative paths in a settings file are relative to the file's directory, wherever the service
/// is started; paths from the environment stay relative to the working directory.
#[test]
fn relative_paths_in_a_file_follow_the_file() {
    let f = Fixture::new();
    let dir = Dir::new("relative");
    std::fs::create_dir_all(dir.0.join("trust")).unwrap();
    let jwk = serde_json::to_string(f.issuer_key.public_jwk()).unwrap();
    dir.write("trust/issuer.pub.jwk", &jwk);
    dir.write("trust/tts.jwk", &jwk);
    let toml = format!(
        r#"
[verifier]
origins = ["{ORIGIN}"]

[[verifier.trust]]
trust_domain = "spiffe://prod.example"
file = "trust/issuer.pub.jwk"

[verifier.txn_tokens]
trust_domain = "spiffe://prod.example"
keys_file = "trust/tts.jwk"

[credentials]
wit_file = "wit.jwt"
key_file = "/run/wimse/key.jwk"
"#
    );
    let path = dir.write("service.toml", &toml);
    assert_ne!(std::env::current_dir().unwrap(), dir.0, "the test runs elsewhere");
    let settings = Settings::from_file(&path).unwrap();
    assert_eq!(settings.verifier.trust[0].file.as_deref(), Some(dir.0.join("trust/issuer.pub.jwk").as_path()));
    let txn = settings.verifier.txn_tokens.as_ref().unwrap();
    assert_eq!(txn.keys_file.as_deref(), Some(dir.0.join("trust/tts.jwk").as_path()));
    let credentials = settings.credentials.as_ref().unwrap();
    assert_eq!(credentials.wit_file, dir.0.join("wit.jwt"));
    assert_eq!(credentials.key_file, std::path::Path::new("/run/wimse/key.jwk"), "absolute paths stay");
    let verifier = settings.verifier().unwrap().clock(FixedClock::new(NOW));
    verifier.verify_sync(&RequestView::new(PATH, &f.headers(&f.wit, &f.wpt()))).unwrap();
    // From the environment: relative to the working directory, as on a command line.
    let env = Settings::from_file(&path)
        .unwrap()
        .apply_env_from([("WIMSE_TRUST", "spiffe://prod.example=trust/issuer.pub.jwk"), ("WIMSE_WIT_FILE", "wit.jwt")])
        .unwrap();
    assert_eq!(env.verifier.trust[0].file.as_deref(), Some(std::path::Path::new("trust/issuer.pub.jwk")));
    assert_eq!(env.credentials.unwrap().wit_file, std::path::Path::new("wit.jwt"));
    // JSON settings alike.
    let json = dir.write(
        "service.json",
        r#"{"verifier": {"origins": ["https://a.example"], "trust": [{"trust_domain": "spiffe://prod.example", "file": "trust/issuer.pub.jwk"}]}}"#,
    );
    Settings::from_file(json).unwrap().verifier().unwrap();
}

/// A trust entry names a file or a bundle URL (with refresh options); wimse-core reads files
/// only and says where bundle URLs are followed.
#[test]
fn a_trust_entry_is_a_file_or_a_bundle_url() {
    let dir = Dir::new("sources");
    let anchor = dir.write("a.jwk", &serde_json::to_string(Fixture::new().issuer_key.public_jwk()).unwrap());
    let file = format!(r#"{{"trust_domain": "spiffe://prod.example", "file": "{}"}}"#, anchor.display());
    let url = r#"{"trust_domain": "spiffe://prod.example", "bundle_url": "https://issuer.prod.example/v1/bundle/spiffe", "max_stale": 900}"#;
    let settings = |trust: &str| {
        Settings::from_json(&format!(r#"{{"verifier": {{"origins": ["https://a.example"], "trust": [{trust}]}}}}"#))
            .unwrap()
    };
    let both = format!(
        r#"{{"trust_domain": "spiffe://prod.example", "file": "{}", "bundle_url": "https://i.example/b"}}"#,
        anchor.display()
    );
    let stale_file =
        format!(r#"{{"trust_domain": "spiffe://prod.example", "file": "{}", "max_stale": 60}}"#, anchor.display());
    for (trust, field) in [
        (both.as_str(), "verifier.trust[0]: file and bundle_url are exclusive"),
        (r#"{"trust_domain": "spiffe://prod.example"}"#, "verifier.trust[0]: set file or bundle_url"),
        (stale_file.as_str(), "apply to a bundle_url only"),
        (&format!("{file}, {url}"), "verifier.trust[1].bundle_url: spiffe://prod.example has other trust entries"),
        (&format!("{url}, {url}"), "verifier.trust[1].bundle_url"),
        (url, "verifier.trust[0].bundle_url: a bundle URL is fetched by wimse_reqwest::verifier_from_settings"),
    ] {
        let err = settings(trust).verifier().unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::InvalidConfiguration);
        assert!(err.detail().unwrap().contains(field), "{field}: {err:?}");
    }
    // The file entries alone are read; a followed domain is left to whoever follows it.
    let mixed = settings(&format!(
        r#"{file}, {{"trust_domain": "spiffe://partner.example", "bundle_url": "https://issuer.partner.example/b"}}"#
    ));
    let store = mixed.verifier.trust_store().unwrap();
    assert!(store.get(&"spiffe://prod.example".parse().unwrap()).is_some());
    assert!(store.get(&"spiffe://partner.example".parse().unwrap()).is_none());
}

/// Revealing reasons (development only) is off unless the file or the environment asks.
#[test]
fn reveal_reasons_is_off_unless_asked() {
    let base = r#"{"verifier": {"origins": ["https://a.example"]}}"#;
    assert!(!Settings::from_json(base).unwrap().verifier.config().reveal_reasons);
    assert!(!VerifierConfig::new().reveal_reasons);
    let on =
        Settings::from_json(r#"{"verifier": {"origins": ["https://a.example"], "reveal_reasons": true}}"#).unwrap();
    assert!(on.verifier.config().reveal_reasons);
    let env = Settings::from_json(base).unwrap().apply_env_from([("WIMSE_REVEAL_REASONS", "1")]).unwrap();
    assert!(env.verifier.config().reveal_reasons);
    assert!(!on.apply_env_from([("WIMSE_REVEAL_REASONS", "0")]).unwrap().verifier.config().reveal_reasons);
    let err = Settings::default().apply_env_from([("WIMSE_REVEAL_REASONS", "yes")]).unwrap_err();
    assert!(err.detail().unwrap().contains("WIMSE_REVEAL_REASONS"), "{err:?}");
}

/// `[signals]`: the verifier the settings build and a receiver from the same settings share one
/// state (a SET the receiver applies refuses the caller at once); built again once nothing holds
/// the old state, the settings read the state file; a missing key file is named.
#[test]
fn signal_settings_share_one_state_and_a_rebuilt_service_reads_its_file() {
    use wimse_core::jose::{Algorithm, Backend, SigningKey, jws};
    let f = Fixture::new();
    let dir = Dir::new("signals");
    let transmitter = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("ssf-1");
    dir.write("issuer.pub.jwk", &serde_json::to_string(f.issuer_key.public_jwk()).unwrap());
    dir.write("ssf.jwks.json", &serde_json::json!({"keys": [transmitter.public_jwk()]}).to_string());
    let settings = serde_json::json!({
        "verifier": {"origins": [ORIGIN], "trust": [{"trust_domain": "spiffe://prod.example", "file": "issuer.pub.jwk"}]},
        "signals": {"issuer": "https://ssf.example", "audience": "https://payments.example",
                    "jwks_file": "ssf.jwks.json", "state_file": "revocations.json"}
    });
    let path = dir.write("service.json", &settings.to_string());
    let settings = Settings::from_file(&path).unwrap();
    let verifier = settings.verifier().unwrap().clock(FixedClock::new(NOW));
    let request = || f.headers(&f.wit, &f.wpt());
    verifier.verify_sync(&RequestView::new(PATH, &request())).unwrap();

    let receiver = settings.signals.as_ref().unwrap().receiver().unwrap();
    let set = serde_json::json!({"iss": "https://ssf.example", "aud": "https://payments.example", "iat": NOW, "jti": "set-1",
        "events": {wimse_core::server::signals::ACCOUNT_DISABLED: {"subject": {"format": "uri", "uri": f.id.as_str()}}}});
    let token = jws::sign("secevent+jwt", Some("ssf-1"), &set, &transmitter, Backend::default()).unwrap();
    receiver.receive(&token, NOW).unwrap();
    let refused = verifier.verify_sync(&RequestView::new(PATH, &request())).unwrap_err();
    assert_eq!(refused.kind(), &ErrorKind::WorkloadRevoked, "the verifier shares the receiver's state");
    // Another receiver from the same settings (a reload, a push route) knows the SET.
    let again = settings.signals.as_ref().unwrap().receiver().unwrap();
    assert!(again.receive(&token, NOW).is_err(), "a SET is applied once, whichever receiver gets it");
    drop(again);
    // The same state file for another stream: refused.
    let mut other = settings.signals.clone().unwrap();
    other.audience = "https://billing.example".into();
    let error = other.receiver().unwrap_err();
    assert!(error.to_string().contains("signals.state_file"), "{error}");

    drop((verifier, receiver));
    let rebuilt = Settings::from_file(&path).unwrap().verifier().unwrap().clock(FixedClock::new(NOW));
    let refused = rebuilt.verify_sync(&RequestView::new(PATH, &request())).unwrap_err();
    assert_eq!(refused.kind(), &ErrorKind::WorkloadRevoked, "read from the state file");
    // Nothing holds that state any more: built again without the file, nothing is revoked
    // (so the refusal above came from the file, not from a state kept alive in the process).
    drop(rebuilt);
    std::fs::remove_file(dir.0.join("revocations.json")).unwrap();
    let fresh = Settings::from_file(&path).unwrap().verifier().unwrap().clock(FixedClock::new(NOW));
    fresh.verify_sync(&RequestView::new(PATH, &request())).unwrap();

    std::fs::remove_file(dir.0.join("ssf.jwks.json")).unwrap();
    let error = Settings::from_file(&path).unwrap().signals.unwrap().receiver().unwrap_err();
    assert!(error.to_string().contains("signals.jwks_file"), "{error}");
}
