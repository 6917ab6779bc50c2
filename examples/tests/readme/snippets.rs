// The README's Rust snippets, verbatim, one module each: `readme.rs` checks that every
// ```rust block of the README appears here, and compiling this file checks the code.

// `main` is the README's program; the test runs the service it builds, not the server.
#[allow(dead_code)]
mod server {
    use axum::{Router, routing::post};
    use wimse_axum::{Caller, WimseLayer};
    use wimse_core::prelude::*;

    #[tokio::main]
    async fn main() -> Result<(), Box<dyn std::error::Error>> {
        // Every refusal is logged with its reason (target `wimse::audit`, never a token): without a
        // subscriber it shows nowhere, and a signed request's 400 does not name the failed check.
        tracing_subscriber::fmt().with_env_filter("info").init();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
        Ok(axum::serve(listener, orders_service()?).await?)
    }

    fn orders_service() -> Result<Router, Box<dyn std::error::Error>> {
        // A JWK, a JWKS or a SPIFFE bundle; errors name the file.
        let anchors = TrustAnchors::from_file("/etc/wimse/prod.example.bundle.json")?;
        let trust = TrustStore::new().with("spiffe://prod.example".parse()?, anchors);
        let verifier = Verifier::new(trust, VerifierConfig::new().origin("https://orders.example"))?;
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

mod following_bundles {
    use wimse_core::prelude::*;
    use wimse_core::protocol::trust::TrustHandle;
    use wimse_reqwest::BundleSource;

    async fn following_verifier() -> Result<Verifier, Box<dyn std::error::Error>> {
        let domain: TrustDomain = "spiffe://prod.example".parse()?;
        let trust = TrustHandle::new(TrustStore::new());
        // Fetched now; then refreshed on the bundle's hint and at once on an unknown key id.
        let bundle = BundleSource::new(domain, "https://issuer.prod.example/v1/bundle/spiffe");
        bundle.refresh(&trust).await?;
        let _refresher = bundle.spawn(trust.clone());
        let config = VerifierConfig::new().origin("https://orders.prod.example");
        Ok(Verifier::new(TrustStore::new(), config)?.trust_handle(trust))
    }

    /// The example's identity server does not exist: the verifier is refused, naming the bundle.
    #[tokio::test]
    async fn runs_and_names_the_unreachable_bundle() {
        let err = following_verifier().await.unwrap_err();
        assert!(err.to_string().contains("bundle fetch"), "{err}");
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
    use wimse_core::protocol::txn::TxnTokenValidation;

    fn orders_verifier(trust: TrustStore) -> Result<(Verifier, Policy), Box<dyn std::error::Error>> {
        let domain: TrustDomain = "spiffe://prod.example".parse()?;
        // Required here; optional verifiers let requests without one pass, but refuse invalid ones.
        let txn = TxnTokenValidation::new(domain).required();
        let config = VerifierConfig::new().origin("https://orders.prod.example").txn_tokens(txn);
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

mod grpc {
    use tokio::net::TcpListener;
    use tonic::transport::server::TcpIncoming;
    use wimse_core::prelude::*;
    use wimse_examples::greeter::{Greeter, GreeterServer, HelloReply, HelloRequest};
    use wimse_tower::WimseLayer;

    struct MyGreeter;

    impl Greeter for MyGreeter {
        async fn hello(&self, request: tonic::Request<HelloRequest>) -> Result<tonic::Response<HelloReply>, tonic::Status> {
            // The caller WimseLayer verified and its policy let in.
            let caller = request.extensions().get::<VerifiedCaller>().ok_or_else(|| tonic::Status::internal("no caller"))?;
            Ok(tonic::Response::new(HelloReply { message: format!("hello {}", caller.id()) }))
        }
    }

    async fn serve_greeter(listener: TcpListener, verifier: Verifier, policy: Policy) -> Result<(), tonic::transport::Error> {
        // The verifier's origin is the server's (`VerifierConfig::origin("http://127.0.0.1:50051")`).
        tonic::transport::Server::builder()
            .layer(WimseLayer::new(verifier).policy(policy))
            .add_service(GreeterServer::new(MyGreeter))
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
    }

    mod client {
        use tower::ServiceBuilder;
        use wimse_core::prelude::*;
        use wimse_examples::greeter::{GreeterClient, HelloRequest};
        use wimse_tower::WimseSignLayer;

        async fn greet(signer: Signer, origin: &str) -> Result<String, Box<dyn std::error::Error>> {
            let channel = tonic::transport::Endpoint::from_shared(origin.to_owned())?.connect().await?;
            // The audience of each call: origin + `/wimse.example.Greeter/Hello`.
            let signed = ServiceBuilder::new().layer(WimseSignLayer::for_origin(signer, origin)?).service(channel);
            let reply = GreeterClient::new(signed).hello(HelloRequest { name: "orders".into() }).await?;
            Ok(reply.into_inner().message)
        }

        /// The server and client snippets together on loopback.
        #[tokio::test]
        async fn a_signed_call_is_answered_with_the_verified_caller() {
            let deployment = wimse_testkit::Deployment::new();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let origin = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(super::serve_greeter(listener, deployment.verifier(&origin), deployment.policy()));
            let answer = greet(deployment.signer(wimse_testkit::ALLOWED), &origin).await.unwrap();
            assert_eq!(answer, format!("hello {}", wimse_testkit::ALLOWED));
            let refused = greet(deployment.signer(wimse_testkit::DENIED), &origin).await.unwrap_err();
            let status = refused.downcast::<tonic::Status>().unwrap();
            assert_eq!((status.code(), status.message()), (tonic::Code::PermissionDenied, "policy_denied"));
        }
    }
}

mod grpc_route_policies {
    use wimse_core::prelude::*;
    use wimse_tower::WimseLayer;

    // For `Server::builder().layer(..)`, as above.
    fn orders_layer(verifier: Verifier, domain: TrustDomain) -> Result<WimseLayer, Box<dyn std::error::Error>> {
        Ok(WimseLayer::new(verifier)
            .policy(Policy::named("unlisted-methods")) // allows nobody
            .route_policy("/orders.v1.Orders/Get", Policy::named("readers").allow(Rule::trust_domain(domain)))
            .route_policy("/orders.v1.Orders/", Policy::named("writers").allow(Rule::exact("spiffe://prod.example/front")?)))
    }

    #[test]
    fn builds() {
        let deployment = wimse_testkit::Deployment::new();
        orders_layer(deployment.verifier("http://127.0.0.1:50051"), "spiffe://prod.example".parse().unwrap()).unwrap();
    }
}

mod txn_client {
    use wimse_core::prelude::*;
    use wimse_reqwest::{TxnTokenRequest, TxnTokenService};

    async fn purchase(signer: Signer, access_token: &str) -> Result<String, Box<dyn std::error::Error>> {
        let domain: TrustDomain = "spiffe://prod.example".parse()?;
        let tts = TxnTokenService::new(signer, "https://issuer.prod.example/v1/token", &domain)?;
        // For the user whose access token the edge received. A transaction this workload starts
        // itself (a batch job) is one call too: TxnTokenRequest::self_signed_for("batch-job-7", scope).
        let issued = tts.request(&TxnTokenRequest::for_access_token(access_token, "orders.purchase")).await?;
        Ok(issued.token)
    }

    /// The example's Transaction Token Service does not exist: the error names it.
    #[tokio::test]
    async fn runs_and_names_the_unreachable_service() {
        let (issuer, key) = (SigningKey::generate(Algorithm::ES256).unwrap(), SigningKey::generate(Algorithm::ES256).unwrap());
        let now = SystemClock.now();
        let wit = wimse_core::protocol::wit::WitIssuer::new(issuer)
            .issue(&"spiffe://prod.example/front".parse().unwrap(), key.public_jwk(), now)
            .unwrap();
        let signer = Signer::new(StaticCredentials::new(Credentials::new(wit, key).unwrap()));
        let err = purchase(signer, "eyJ...").await.unwrap_err();
        assert!(err.to_string().contains("Transaction Token Service"), "{err}");
    }
}

mod agents {
    use wimse_core::prelude::*;
    use wimse_reqwest::{TxnTokenRequest, TxnTokenService};

    async fn act_for_user(signer: Signer, access_token: &str) -> Result<String, Box<dyn std::error::Error>> {
        let domain: TrustDomain = "spiffe://prod.example".parse()?;
        let tts = TxnTokenService::new(signer, "https://issuer.prod.example/v1/token", &domain)?;
        // This agent acts for the user: its own WIT goes along as the actor token.
        let request = TxnTokenRequest::for_access_token(access_token, "travel.book").acting();
        Ok(tts.request(&request).await?.token)
    }

    /// The example's Transaction Token Service does not exist: the error names it.
    #[tokio::test]
    async fn runs_and_names_the_unreachable_service() {
        let (issuer, key) = (SigningKey::generate(Algorithm::ES256).unwrap(), SigningKey::generate(Algorithm::ES256).unwrap());
        let now = SystemClock.now();
        let wit = wimse_core::protocol::wit::WitIssuer::new(issuer)
            .issue(&"spiffe://prod.example/agents/planner".parse().unwrap(), key.public_jwk(), now)
            .unwrap();
        let signer = Signer::new(StaticCredentials::new(Credentials::new(wit, key).unwrap()));
        let err = act_for_user(signer, "eyJ...").await.unwrap_err();
        assert!(err.to_string().contains("Transaction Token Service"), "{err}");
    }

}

#[allow(dead_code)]
mod mcp {
    use rmcp::handler::server::tool::Extension;
    use rmcp::model::{CallToolRequestParams, ClientConfig};
    use rmcp::transport::streamable_http_server::StreamableHttpService;
    use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
    use rmcp::{ServiceExt, tool, tool_router};
    use wimse_axum::WimseLayer;
    use wimse_core::prelude::*;
    use wimse_core::protocol::txn::TxnToken;
    use wimse_mcp::{McpToolGuardLayer, SignedMcpClient, ToolPolicies, server_config, verified_caller};
    use wimse_reqwest::WimseSignMiddleware;

    #[derive(Clone)]
    struct Travel;

    #[tool_router(server_handler)]
    impl Travel {
        #[tool(description = "Finds flights")]
        fn search(&self, Extension(parts): Extension<http::request::Parts>) -> String {
            match verified_caller(&parts).and_then(|caller| Some((caller, caller.transaction()?))) {
                Some((agent, txn)) => format!("flights, for {} acting for {}", agent.id(), txn.subject()),
                None => "no delegated caller".into(),
            }
        }
    }

    fn travel_tools(verifier: Verifier) -> Result<axum::Router, Box<dyn std::error::Error>> {
        // An agent acting for a user whose delegation includes `travel.read`; other tools: refused.
        let search = Policy::named("search")
            .allow(Rule::path_prefix("spiffe://prod.example/agents")?)
            .require(Rule::txn_delegated())
            .require(Rule::txn_scope("travel.read"));
        let mcp = StreamableHttpService::new(|| Ok(Travel), NeverSessionManager::default().into(), server_config(["tools.prod.example"]));
        let service = tower::ServiceBuilder::new()
            .layer(WimseLayer::new(verifier))
            .layer(McpToolGuardLayer::new(ToolPolicies::new().tool("search", search)))
            .service(mcp);
        Ok(axum::Router::new().route_service("/mcp", service))
    }

    async fn agent(signing: WimseSignMiddleware, txn: String) -> Result<String, Box<dyn std::error::Error>> {
        // Redirects within the origin only: the WIT and the Txn-Token never follow one elsewhere.
        let client = SignedMcpClient::from_middleware(signing)?.txn_token(TxnToken(txn));
        let agent = ClientConfig::default().serve(client.transport("https://tools.prod.example/mcp")).await?;
        let found = agent.call_tool(CallToolRequestParams::new("search")).await?;
        Ok(format!("{:?}", found.content))
    }

    /// The service builds; the agent, pointed at a name that does not resolve, fails to start.
    #[tokio::test]
    async fn builds_and_the_agent_names_its_failure() {
        let trust = TrustStore::new();
        let verifier = Verifier::new(trust, VerifierConfig::new().origin("https://tools.prod.example")).unwrap();
        assert!(travel_tools(verifier).is_ok());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let key = SigningKey::generate(Algorithm::ES256).unwrap();
        let wit = wimse_core::protocol::wit::WitIssuer::new(SigningKey::generate(Algorithm::ES256).unwrap())
            .issue(&"spiffe://prod.example/agents/planner".parse().unwrap(), key.public_jwk(), now)
            .unwrap();
        let signer = Signer::new(StaticCredentials::new(Credentials::new(wit, key).unwrap()));
        assert!(agent(WimseSignMiddleware::new(signer), "eyJ...".into()).await.is_err());
    }
}
