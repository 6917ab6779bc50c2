// The README's Rust snippets, verbatim, one module each: `readme.rs` checks that every
// ```rust block of the README appears here, and compiling this file checks the code.

mod server {
    use axum::{Router, routing::post};
    use wimse_axum::{Caller, WimseLayer};
    use wimse_core::prelude::*;

    fn orders_service() -> Result<Router, Box<dyn std::error::Error>> {
        // A JWK, a JWKS or a SPIFFE bundle; errors name the file.
        let anchors = TrustAnchors::from_file("/etc/wimse/prod.example.bundle.json")?;
        let trust = TrustStore::new().with("spiffe://prod.example".parse()?, anchors);
        let verifier = Verifier::new(trust, VerifierConfig::new().with_origin("https://orders.example"))?;
        let policy = Policy::named("orders").allow(Rule::exact("spiffe://prod.example/front")?);
        Ok(Router::new()
            .route("/orders", post(|Caller(caller): Caller| async move { format!("hello {}", caller.id()) }))
            .layer(WimseLayer::new(verifier).policy(policy)))
    }

    #[test]
    fn runs_and_names_the_missing_file() {
        let err = orders_service().unwrap_err();
        assert!(err.to_string().contains("/etc/wimse/prod.example.bundle.json"), "{err}");
    }
}

mod settings {
    use wimse_axum::WimseLayer;
    use wimse_core::config::Settings;

    fn layer_from_settings() -> Result<WimseLayer, wimse_core::Error> {
        // [verifier] origins, audiences, trust files; [policy] allow / deny.
        let settings = Settings::load("/etc/wimse/service.toml")?;
        Ok(WimseLayer::new(settings.verifier()?).policy(settings.policy()?))
    }

    #[test]
    fn runs_and_names_the_missing_file() {
        let err = layer_from_settings().unwrap_err();
        assert!(err.detail().unwrap().contains("/etc/wimse/service.toml"), "{err:?}");
    }
}

mod client {
    use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
    use wimse_core::prelude::*;
    use wimse_reqwest::WimseSignMiddleware;

    fn workload_client() -> Result<ClientWithMiddleware, wimse_core::Error> {
        let signer = Signer::new(FileCredentials::new("/run/wimse/wit.jwt", "/run/wimse/key.jwk")?);
        Ok(ClientBuilder::new(reqwest::Client::new()).with(WimseSignMiddleware::new(signer)).build())
    }

    #[test]
    fn runs_and_names_the_missing_file() {
        let err = workload_client().unwrap_err();
        assert!(err.detail().unwrap().contains("/run/wimse/wit.jwt"), "{err:?}");
    }
}

mod transactions {
    use wimse_core::prelude::*;
    use wimse_core::txn::TxnTokenValidation;

    fn orders_verifier(trust: TrustStore) -> Result<(Verifier, Policy), Box<dyn std::error::Error>> {
        let domain: TrustDomain = "spiffe://prod.example".parse()?;
        // Required here; optional verifiers let requests without one pass, but refuse invalid ones.
        let txn = TxnTokenValidation::new(domain).required();
        let config = VerifierConfig::new().with_origin("https://orders.prod.example").with_txn_tokens(txn);
        let verifier = Verifier::new(trust, config)?;
        // The purpose; also Rule::txn_subject and Rule::transaction.
        let refunds = Policy::named("refunds")
            .allow(Rule::exact("spiffe://prod.example/front")?)
            .require(Rule::txn_scope("orders.refund"));
        Ok((verifier, refunds))
    }

    #[test]
    fn builds() {
        let (verifier, policy) = orders_verifier(TrustStore::new()).unwrap();
        assert!(verifier.config().txn_tokens.as_ref().is_some_and(|t| t.required));
        assert_eq!(policy.name(), "refunds");
    }
}

mod grpc_methods {
    use wimse_core::prelude::*;
    use wimse_tower::WimseLayer;

    fn per_method(verifier: Verifier, domain: TrustDomain) -> Result<WimseLayer, Box<dyn std::error::Error>> {
        let layer = WimseLayer::new(verifier)
            .policy(Policy::named("unlisted-methods")) // allows nobody
            .route_policy("/orders.v1.Orders/Get", Policy::named("readers").allow(Rule::trust_domain(domain)))
            .route_policy("/orders.v1.Orders/", Policy::named("writers").allow(Rule::exact("spiffe://prod.example/front")?));
        // tonic: Server::builder().layer(layer).add_service(OrdersServer::new(orders))
        Ok(layer)
    }

    #[test]
    fn builds() {
        let verifier = Verifier::new(TrustStore::new(), VerifierConfig::new().with_audience("a")).unwrap();
        per_method(verifier, "spiffe://prod.example".parse().unwrap()).unwrap();
    }
}
