//! Workload Identity Certificates at the identity server's real HTTP endpoint (`POST /v1/wic`):
//! what a client may name in its subject alternative names (valid DNS names and unicast
//! addresses only, whatever its allowlist says), which keys it may have certified (the policy of
//! WIT confirmation keys), and how long a WIC lives (on the scale of the client's WITs).

use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use wimse_core::jose::{Backend, jws};
use wimse_core::prelude::*;
use wimse_core::protocol::wic::certificates_from_pem;
use wimse_issuer::{IdentityServer, IssuerConfig};

const PLATFORM_ISS: &str = "https://kubernetes.default.svc";
const SUB: &str = "spiffe://prod.example/ns/prod/sa/payments";
const ACCOUNT: &str = "system:serviceaccount:prod:payments";

struct Issuer {
    base: String,
    platform: SigningKey,
}

fn config(name: &str, platform: &SigningKey, client: Value) -> Value {
    let dir = std::env::temp_dir().join(format!("wimse-issuer-wic-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut payments =
        json!({"name": "payments", "platform": "cluster", "subject": ACCOUNT, "allowed": [SUB], "max_lifetime": 1800});
    payments.as_object_mut().unwrap().extend(client.as_object().unwrap().clone());
    json!({
        "trust_domain": "spiffe://prod.example",
        "key_store": dir.join("keys.json"),
        "platforms": [{"name": "cluster", "issuer": PLATFORM_ISS, "audience": "wimse-issuer",
                       "jwks": {"keys": [platform.public_jwk()]}}],
        "clients": [payments],
        // Each test asks many times; the limits are not what is tested here.
        "rate_limits": {"per_client": {"burst": 1000, "per_minute": 1000}, "per_source": {"burst": 1000, "per_minute": 1000}}
    })
}

impl Issuer {
    async fn start(name: &str, client: Value) -> Self {
        let platform = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("k8s-1");
        let config: IssuerConfig = serde_json::from_value(config(name, &platform, client)).unwrap();
        let server = Arc::new(IdentityServer::open(config, SystemClock).await.unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = wimse_issuer::router(server).into_make_service_with_connect_info::<std::net::SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base, platform }
    }

    fn token(&self) -> String {
        let now = wimse_testkit::now();
        let claims =
            json!({"iss": PLATFORM_ISS, "sub": ACCOUNT, "aud": ["wimse-issuer"], "exp": now + 600, "iat": now});
        jws::sign("JWT", Some("k8s-1"), &claims, &self.platform, Backend::default()).unwrap()
    }

    /// `POST /v1/wic` with `body` (the subject and the bearer token added): the status and the
    /// answer.
    async fn wic(&self, mut body: Value) -> (u16, Value) {
        body["sub"] = SUB.into();
        let response = reqwest::Client::new()
            .post(format!("{}/v1/wic", self.base))
            .bearer_auth(self.token())
            .json(&body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }
}

fn spki_of(key: &rcgen::KeyPair) -> String {
    base64::engine::general_purpose::STANDARD.encode(rcgen::PublicKeyData::subject_public_key_info(key))
}

fn p256_spki() -> String {
    spki_of(&rcgen::KeyPair::generate().unwrap())
}

/// The subject alternative names of the leaf of an issued chain, as x509-parser shows them.
fn sans(body: &Value) -> String {
    let chain = certificates_from_pem(body["chain_pem"].as_str().unwrap()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    format!("{:?}", cert.subject_alternative_name().unwrap().unwrap().value.general_names)
}

/// Red team, issue 23 item 8: a client allowed `*.svc.prod.example` obtained certificates for
/// names with NUL, `/`, `:`, `@`, spaces, newlines, empty and 300-byte labels, and a non-ASCII
/// name gave a 500. Every requested name must be a valid DNS name (400
/// `invalid_subject_alt_name` otherwise), and only then is the allowlist asked (403).
#[tokio::test]
async fn wic_dns_names_must_be_valid_dns_names() {
    let allowed = json!({"allowed_dns_names": ["*.svc.prod.example", "exact.prod.example"]});
    let issuer = Issuer::start("dns", allowed).await;
    let spki = p256_spki();
    let ask = |names: Vec<String>| issuer.wic(json!({"spki": spki, "usage": "server", "dns": names}));
    let label = |n: usize| "a".repeat(n);
    // 253 bytes: three 63-byte labels, one of 44, their dots and ".svc.prod.example" (17).
    let longest = format!("{0}.{0}.{0}.{1}.svc.prod.example", label(63), label(44));
    assert_eq!(longest.len(), 253);
    let too_long = format!("{0}.{0}.{0}.{1}.svc.prod.example", label(63), label(45));

    for bad in [
        "evil.example\u{0}.svc.prod.example".to_owned(),
        "evil.example/x.svc.prod.example".into(),
        "evil.example:443.svc.prod.example".into(),
        "user@evil.example.svc.prod.example".into(),
        "evil example.svc.prod.example".into(),
        "evil\nexample.svc.prod.example".into(),
        "evil..svc.prod.example".into(),
        ".svc.prod.example".into(),
        format!("{}.svc.prod.example", label(300)),
        format!("{}.svc.prod.example", label(64)),
        too_long,
        "a.svc.prod.example.".into(),
        "-a.svc.prod.example".into(),
        "a_b.svc.prod.example".into(),
        "a.*.svc.prod.example".into(),
        "**.svc.prod.example".into(),
        "bücher.svc.prod.example".into(),
        "ünïcode.example".into(),
    ] {
        let (status, body) = ask(vec![bad.clone()]).await;
        assert_eq!((status, body["reason"].as_str()), (400, Some("invalid_subject_alt_name")), "{bad:?}: {body}");
        // Valid names beside it do not carry it through.
        let (status, _) = ask(vec!["ok.svc.prod.example".into(), bad.clone()]).await;
        assert_eq!(status, 400, "{bad:?} after a valid name");
    }
    // Raw Unicode: the answer says what to send instead.
    let (_, body) = ask(vec!["bücher.svc.prod.example".into()]).await;
    assert!(body["detail"].as_str().unwrap().contains("A-labels (xn--"), "{body}");

    // Valid, and granted: at the limits, in any case, as A-labels, the listed pattern itself.
    for good in [
        format!("{}.svc.prod.example", label(63)),
        longest,
        "API-1.Svc.Prod.Example".into(),
        "xn--bcher-kva.svc.prod.example".into(),
        "a.b.svc.prod.example".into(),
        "*.svc.prod.example".into(),
        "exact.prod.example".into(),
    ] {
        let (status, body) = ask(vec![good.clone()]).await;
        assert_eq!(status, 200, "{good}: {body}");
        assert!(sans(&body).contains(&format!("DNSName(\"{good}\")")), "{good}: {}", sans(&body));
    }
    // Valid but not granted: the pattern's neighbour, a narrower wildcard, another name.
    for denied in
        ["svc.prod.example", "*.a.svc.prod.example", "prod.example", "other.prod.example", "evilsvc.prod.example"]
    {
        let (status, body) = ask(vec![denied.into()]).await;
        assert_eq!((status, body["reason"].as_str()), (403, Some("issuance_denied")), "{denied}: {body}");
    }
}

/// IP addresses likewise: only unicast host addresses, even when listed; a malformed one is a
/// 400 naming it; the configuration may not list the others.
#[tokio::test]
async fn wic_ip_addresses_must_be_unicast_host_addresses() {
    let issuer = Issuer::start("ip", json!({"allowed_ip_addresses": ["10.0.0.7", "2001:db8::7"]})).await;
    let spki = p256_spki();
    let ask = |ips: Vec<&str>| issuer.wic(json!({"spki": spki, "usage": "server", "ip": ips}));
    for bad in [
        "0.0.0.0",
        "0.1.2.3",
        "255.255.255.255",
        "240.0.0.1",
        "224.0.0.1",
        "::",
        "ff02::1",
        "::ffff:10.0.0.7",
        "10.0.0",
        "10.0.0.7\n",
        "x",
    ] {
        let (status, body) = ask(vec![bad]).await;
        assert_eq!((status, body["reason"].as_str()), (400, Some("invalid_subject_alt_name")), "{bad:?}: {body}");
    }
    for denied in ["10.0.0.8", "127.0.0.1", "2001:db8::8"] {
        let (status, body) = ask(vec![denied]).await;
        assert_eq!((status, body["reason"].as_str()), (403, Some("issuance_denied")), "{denied}: {body}");
    }
    let (status, body) = ask(vec!["10.0.0.7", "2001:db8::7"]).await;
    assert_eq!(status, 200, "{body}");
    assert!(sans(&body).contains("IPAddress([10, 0, 0, 7])"), "{}", sans(&body));

    // Listing an address no server holds is a configuration error naming it.
    let platform = SigningKey::generate(Algorithm::ES256).unwrap();
    for (list, field) in [
        (json!({"allowed_ip_addresses": ["10.0.0.7", "0.0.0.0"]}), "clients[0].allowed_ip_addresses[1]"),
        (json!({"allowed_ip_addresses": ["ff02::1"]}), "clients[0].allowed_ip_addresses[0]"),
        (json!({"allowed_dns_names": ["bücher.example"]}), "clients[0].allowed_dns_names[0]"),
        (json!({"allowed_dns_names": ["*.svc.prod.example."]}), "clients[0].allowed_dns_names[0]"),
    ] {
        let config: IssuerConfig = serde_json::from_value(config("ip-config", &platform, list)).unwrap();
        let err = IdentityServer::open(config, SystemClock).await.unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::InvalidConfiguration);
        assert!(err.detail().unwrap().starts_with(field), "{err:?}");
    }
}

fn der(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match body.len() {
        len @ 0..0x80 => out.push(len as u8),
        len @ 0x80..0x100 => out.extend([0x81, len as u8]),
        len => out.extend([0x82, (len >> 8) as u8, len as u8]),
    }
    out.extend_from_slice(body);
    out
}

/// A SubjectPublicKeyInfo (base64): the algorithm OID and parameters (DER), the key.
fn spki(algorithm: &[u8], key: &[u8]) -> String {
    let der = der(0x30, &[der(0x30, algorithm), der(0x03, &[&[0u8][..], key].concat())].concat());
    base64::engine::general_purpose::STANDARD.encode(der)
}

const EC_PUBLIC_KEY: [u8; 9] = [0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const RSA_ENCRYPTION_NULL: [u8; 13] = [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00];

/// An RSA public key of `bits` bits (the modulus' value does not matter to issuance).
fn rsa_spki(bits: usize) -> String {
    let modulus = [&[0u8][..], &vec![0xc5u8; bits / 8]].concat();
    spki(&RSA_ENCRYPTION_NULL, &der(0x30, &[der(0x02, &modulus), der(0x02, &[1, 0, 1])].concat()))
}

/// Red team, issue 23 item 9: a WIC was issued for a 1024-bit RSA key, which the WIT path
/// refuses. One key policy for both: RSA 2048 to 8192 bits, P-256, P-384, Ed25519.
#[tokio::test]
async fn wic_keys_follow_the_wit_key_policy() {
    let issuer = Issuer::start("keys", json!({})).await;
    let ask = |spki: String| issuer.wic(json!({"spki": spki, "usage": "client"}));
    let ed25519 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    for (what, key) in [
        ("RSA-2048", rsa_spki(2048)),
        ("P-256", p256_spki()),
        ("P-384", spki_of(&p384)),
        ("Ed25519", spki_of(&ed25519)),
    ] {
        let (status, body) = ask(key).await;
        assert_eq!(status, 200, "{what}: {body}");
    }
    let p521 = [&EC_PUBLIC_KEY[..], &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23]].concat();
    let secp256k1 = [&EC_PUBLIC_KEY[..], &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a]].concat();
    let point = |len: usize| [&[4u8][..], &vec![7u8; 2 * len]].concat();
    for (what, key) in [
        ("RSA-1024", rsa_spki(1024)),
        ("RSA-2040", rsa_spki(2040)),
        ("P-521", spki(&p521, &point(66))),
        ("secp256k1", spki(&secp256k1, &point(32))),
        ("garbage", base64::engine::general_purpose::STANDARD.encode(b"not a key at all")),
        ("empty", String::new()),
        ("not base64", "***".into()),
    ] {
        let (status, body) = ask(key).await;
        assert_eq!((status, body["reason"].as_str()), (400, Some("invalid_key")), "{what}: {body}");
    }
    let (_, body) = ask(rsa_spki(1024)).await;
    assert!(body["detail"].as_str().unwrap().contains("2048 to 8192 bits"), "{body}");
}

/// workload-creds (next revision, PR #280): WIC lifetimes "on a similar scale to WITs", with no
/// reliance on revocation. By default a client's WIC lives as long as its WITs
/// (`max_lifetime`); a request may ask for less, never for more; `max_wic_lifetime` sets
/// another maximum.
#[tokio::test]
async fn wic_lifetimes_follow_the_wit_lifetime() {
    let not_after = |body: &Value| {
        let chain = certificates_from_pem(body["chain_pem"].as_str().unwrap()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
        cert.validity().not_after.timestamp() as u64
    };
    let issuer = Issuer::start("lifetime", json!({})).await;
    let spki = p256_spki();
    for (asked, lifetime) in [(None, 1800), (Some(300), 300), (Some(1800), 1800), (Some(86_400), 1800)] {
        let mut body = json!({"spki": spki, "usage": "client"});
        if let Some(asked) = asked {
            body["lifetime"] = asked.into();
        }
        let now = wimse_testkit::now();
        let (status, body) = issuer.wic(body).await;
        assert_eq!(status, 200, "{asked:?}: {body}");
        let expires_at = body["expires_at"].as_u64().unwrap();
        assert!((now + lifetime..=now + lifetime + 5).contains(&expires_at), "{asked:?}: {expires_at} - {now}");
        assert_eq!(not_after(&body), expires_at, "the certificate says the same");
    }
    let issuer = Issuer::start("lifetime-max", json!({"max_wic_lifetime": 600})).await;
    let now = wimse_testkit::now();
    let (_, body) = issuer.wic(json!({"spki": spki, "usage": "client", "lifetime": 3600})).await;
    assert!((now + 600..=now + 605).contains(&body["expires_at"].as_u64().unwrap()), "{body}");
}

/// A certificate asked for with a lifetime of 0 seconds would be dead on arrival: refused
/// (400 `invalid_lifetime`, saying what to send; it was issued for 1 second before).
#[tokio::test]
async fn a_zero_lifetime_is_refused() {
    let issuer = Issuer::start("zero-lifetime", json!({})).await;
    let (status, body) = issuer.wic(json!({"spki": p256_spki(), "usage": "client", "lifetime": 0})).await;
    assert_eq!((status, body["reason"].as_str()), (400, Some("invalid_lifetime")), "{body}");
    assert!(body["detail"].as_str().is_some_and(|d| d.contains("at least 1 second")), "{body}");
}

/// A body that is not the JSON an endpoint takes is refused with the same problem JSON as
/// every other refusal (400 `malformed_request`, the detail naming what is wrong), not with a
/// plain-text 415/422: at `/v1/wic` and at `/v1/wit`.
#[tokio::test]
async fn a_malformed_body_is_a_problem_json() {
    let issuer = Issuer::start("malformed", json!({})).await;
    let post = |path: &str, content_type: &'static str, body: &'static str| {
        reqwest::Client::new()
            .post(format!("{}{path}", issuer.base))
            .bearer_auth(issuer.token())
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    for (path, content_type, body, named) in [
        ("/v1/wic", "application/json", "{not json", "as JSON"),
        ("/v1/wic", "application/json", r#"{"sub": "x", "spki": "y", "extra": 1}"#, "extra"),
        ("/v1/wic", "text/plain", "{}", "Content-Type"),
        ("/v1/wit", "application/json", r#"{"sub": 7}"#, "invalid type"),
    ] {
        let response = post(path, content_type, body).await.unwrap();
        assert_eq!(response.status(), 400, "{path} {body}");
        assert_eq!(response.headers()["content-type"], "application/problem+json", "{path} {body}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["reason"], "malformed_request", "{problem}");
        assert!(problem["detail"].as_str().is_some_and(|d| d.contains(named)), "{named}: {problem}");
    }
    // The detail quotes the offending value, but never a huge one whole.
    let huge = format!(r#"{{"sub": "x", "spki": "y", "lifetime": "{}"}}"#, "9".repeat(3_000));
    let response = reqwest::Client::new()
        .post(format!("{}/v1/wic", issuer.base))
        .bearer_auth(issuer.token())
        .json(&serde_json::from_str::<Value>(&huge).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("invalid type") && detail.len() < 300, "{} bytes: {detail}", detail.len());
}
