//! Token exchange (RFC 8693: a platform's tokens for WITs) and the Transaction Token Service
//! (users' access tokens for Txn-Tokens) at saturation, with N distinct external subjects.

use std::sync::Arc;

use serde_json::json;
use wimse_core::client::sign::Signer;
use wimse_core::jose::{Algorithm, Backend, SigningKey, jws};
use wimse_core::time::Clock as _;
use wimse_reqwest::{Bootstrap, IssuerCredentials, TxnTokenRequest, TxnTokenService};

use crate::server::ServerProcess;
use crate::{DOMAIN, Error, MIN_OPERATIONS, Row, SECRET, saturate};

/// The platform whose tokens are exchanged (a CI system or a Kubernetes cluster's issuer).
const PLATFORM: &str = "https://platform.prod.example";
/// The users' identity provider, and the API its access tokens are for.
const IDP: &str = "https://idp.prod.example";
const API: &str = "https://api.prod.example";
/// Edge workloads asking for Txn-Tokens: each its own WIT, signer and connection.
const EDGES: usize = 64;

/// Token exchanges per second: N workloads' platform tokens (`kind: jwt`) exchanged for WITs,
/// at least [`MIN_OPERATIONS`], 64 at a time.
pub(crate) async fn exchange(size: usize) -> Result<Row, Error> {
    let platform = SigningKey::generate(Algorithm::ES256)?.with_kid("platform-1");
    let server = ServerProcess::start(json!({"refresh_hint": 300, "rotation_period": 86400,
        "exchange": [{"name": "platform", "kind": "jwt", "issuer": PLATFORM, "audience": "wimse-issuer",
                      "jwks": {"keys": [platform.public_jwk()]}, "subject_template": format!("{DOMAIN}/platform/{{sub}}"),
                      "max_lifetime": 600}]}))?;
    let now = wimse_core::time::SystemClock.now();
    let tokens: Vec<String> = (0..size)
        .map(|i| {
            let claims =
                json!({"iss": PLATFORM, "sub": format!("w{i}"), "aud": "wimse-issuer", "iat": now, "exp": now + 900});
            jws::sign("JWT", Some("platform-1"), &claims, &platform, Backend::default())
        })
        .collect::<Result<_, _>>()?;
    let jwk = SigningKey::generate(Algorithm::ES256)?.public_jwk().to_json();
    let (tokens, endpoint) = (Arc::new(tokens), format!("{}/v1/token", server.base));
    let client = reqwest::Client::new();
    let operations = size.max(MIN_OPERATIONS);
    let cpu_before = server.cpu_time();
    let measured = saturate(operations, 64, move |_, n| {
        let (client, tokens, endpoint, jwk) = (client.clone(), tokens.clone(), endpoint.clone(), jwk.clone());
        async move {
            let form = [
                ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
                ("subject_token", tokens[n % tokens.len()].as_str()),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
                ("wimse_jwk", jwk.as_str()),
            ];
            let response = client.post(&endpoint).form(&form).send().await?;
            if response.status() != 200 {
                return Err(format!("the exchange answered {}: {}", response.status(), response.text().await?).into());
            }
            response.bytes().await?;
            Ok(())
        }
    })
    .await?;
    let cpu = server.cpu_time().saturating_sub(cpu_before);
    Ok(Row::saturated("exchange", size, operations, measured, cpu, server.rss_mib()))
}

/// Txn-Tokens per second: 64 edge workloads (WIT + WPT each request) exchange the access tokens
/// of N users for Txn-Tokens, at least [`MIN_OPERATIONS`].
pub(crate) async fn txn_tokens(size: usize) -> Result<Row, Error> {
    let idp = SigningKey::generate(Algorithm::ES256)?.with_kid("idp-1");
    let server = ServerProcess::start(json!({"refresh_hint": 300, "rotation_period": 86400,
        "txn_tokens": {
            "subject_issuers": [{"name": "users", "kind": "access-token", "issuer": IDP, "audience": API,
                                 "jwks": {"keys": [idp.public_jwk()]}, "subject_prefix": "users:"}],
            "requesters": [{"prefixes": [format!("{DOMAIN}/ns")], "scopes": ["orders.read"],
                            "subject_token_types": ["access_token"], "subject_issuers": ["users"]}],
            "rate_limit": {"burst": 1000000, "per_minute": 100000000}}}))?;
    let now = wimse_core::time::SystemClock.now();
    let tokens: Vec<String> = (0..size)
        .map(|i| {
            let claims = json!({"iss": IDP, "sub": format!("user-{i}"), "aud": API, "scope": "orders.read",
                                "iat": now, "exp": now + 900, "client_id": "shop-web"});
            jws::sign("at+jwt", Some("idp-1"), &claims, &idp, Backend::default())
        })
        .collect::<Result<_, _>>()?;
    let domain = DOMAIN.parse()?;
    let endpoint = format!("{}/v1/token", server.base);
    let mut edges = Vec::new();
    for edge in 0..EDGES {
        let credentials = IssuerCredentials::connect(
            &server.base,
            format!("{DOMAIN}/ns/edge-{edge}"),
            Bootstrap::Token(SECRET.into()),
        )
        .await?;
        edges.push(TxnTokenService::new(Signer::new(credentials), &endpoint, &domain)?);
    }
    let (edges, tokens) = (Arc::new(edges), Arc::new(tokens));
    let operations = size.max(MIN_OPERATIONS);
    let cpu_before = server.cpu_time();
    let measured = saturate(operations, EDGES, move |edge, n| {
        let (edges, tokens) = (edges.clone(), tokens.clone());
        async move {
            let request = TxnTokenRequest::for_access_token(tokens[n % tokens.len()].clone(), "orders.read");
            edges[edge].request(&request).await?;
            Ok(())
        }
    })
    .await?;
    let cpu = server.cpu_time().saturating_sub(cpu_before);
    Ok(Row::saturated("txn-token", size, operations, measured, cpu, server.rss_mib()))
}
