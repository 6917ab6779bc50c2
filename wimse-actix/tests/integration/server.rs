//! A real actix-web server on loopback, called by real reqwest clients.

use actix_web::{App, HttpServer, web};
use wimse_actix::{Caller, Pipeline, WimseAuth};
use wimse_testkit::{ALLOWED, Deployment, run_cases};

async fn whoami(caller: Caller) -> String {
    caller.id().to_string()
}

async fn maybe(caller: Option<Caller>) -> String {
    caller.map(|c| c.id().to_string()).unwrap_or_else(|| "anonymous".into())
}

fn listener() -> (std::net::TcpListener, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    (listener, base)
}

#[actix_web::test]
async fn case_table_with_config_in_app_data() {
    let deployment = Deployment::new();
    let (listener, base) = listener();
    let config = Pipeline::new(deployment.verifier(&base)).policy(deployment.policy());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(config.clone()))
            .wrap(WimseAuth::from_app_data())
            .route("/whoami", web::get().to(whoami))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    run_cases(&deployment, &base).await;
    handle.stop(true).await;
}

#[actix_web::test]
async fn optional_authentication_and_missing_config() {
    let logs = wimse_testkit::logs::Logs::global();
    let deployment = Deployment::new();
    let (listener, base) = listener();
    let config = Pipeline::new(deployment.verifier(&base)).optional();
    let server = HttpServer::new(move || {
        App::new()
            .service(
                web::scope("/opt")
                    .wrap(WimseAuth::new(config.clone()))
                    .route("/maybe", web::get().to(maybe))
                    .route("/who", web::get().to(whoami)),
            )
            .service(web::scope("/unconfigured").wrap(WimseAuth::from_app_data()).route("/who", web::get().to(whoami)))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    actix_web::rt::spawn(server);

    let plain = reqwest::Client::new();
    assert_eq!(plain.get(format!("{base}/opt/maybe")).send().await.unwrap().text().await.unwrap(), "anonymous");
    let bearer = plain.get(format!("{base}/opt/maybe")).bearer_auth("t").send().await.unwrap();
    assert_eq!(bearer.text().await.unwrap(), "anonymous");
    let signed = deployment.client(ALLOWED).get(format!("{base}/opt/maybe")).send().await.unwrap();
    assert_eq!(signed.text().await.unwrap(), ALLOWED);
    let anonymous = plain.get(format!("{base}/opt/who")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.headers()["www-authenticate"], "WPT");
    let bad = plain.get(format!("{base}/opt/maybe")).header("authorization", "WPT x.y.z").send().await.unwrap();
    assert_eq!(bad.status(), 401);
    // No configuration anywhere: fail closed.
    let unconfigured = deployment.client(ALLOWED).get(format!("{base}/unconfigured/who")).send().await.unwrap();
    assert_eq!(unconfigured.status(), 500);
    // Said in the logs: what is missing, and the refusal on the audit target.
    assert!(!logs.lines_with(&["ERROR", "no web::Data<Pipeline>"]).is_empty(), "{}", logs.text());
    let audit = logs.lines_with(&["wimse::audit", r#"reason="invalid_configuration""#, "no Pipeline in app data"]);
    assert_eq!(audit.len(), 1, "{}", logs.text());
    handle.stop(true).await;
}

/// A policy per scope, as easy as axum's `route_layer`: the app verifies callers (optionally),
/// `/admin` lets only the allowed workload in, public routes stay open.
#[actix_web::test]
async fn per_scope_policy() {
    use wimse_actix::RequirePolicy;
    use wimse_testkit::DENIED;
    let logs = wimse_testkit::logs::Logs::global();
    let deployment = Deployment::new();
    let (listener, base) = listener();
    let guard = Pipeline::new(deployment.verifier(&base)).optional();
    let policy = deployment.policy();
    let server = HttpServer::new(move || {
        App::new()
            .wrap(WimseAuth::new(guard.clone()))
            .route("/public", web::get().to(maybe))
            .service(web::scope("/admin").wrap(RequirePolicy::new(policy.clone())).route("/who", web::get().to(whoami)))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    actix_web::rt::spawn(server);

    let allowed = deployment.client(ALLOWED).get(format!("{base}/admin/who")).send().await.unwrap();
    assert_eq!((allowed.status().as_u16(), allowed.text().await.unwrap()), (200, ALLOWED.to_owned()));
    let denied = deployment.client(DENIED).get(format!("{base}/admin/who")).send().await.unwrap();
    assert_eq!(denied.status(), 403);
    let body: serde_json::Value = serde_json::from_str(&denied.text().await.unwrap()).unwrap();
    assert_eq!(body["reason"], "policy_denied");
    let anonymous = reqwest::get(format!("{base}/admin/who")).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.headers()["www-authenticate"], "WPT");
    let public = reqwest::get(format!("{base}/public")).await.unwrap();
    assert_eq!(public.text().await.unwrap(), "anonymous");
    assert!(!logs.lines_with(&["wimse::audit", "scope requires a verified caller"]).is_empty());
    let probe = "spiffe://prod.example/scope-probe";
    assert_eq!(deployment.client(probe).get(format!("{base}/admin/who")).send().await.unwrap().status(), 403);
    let rejected = logs.lines_with(&["wimse::audit", probe, r#"decision="reject""#, "policy `testkit`"]);
    assert_eq!(rejected.len(), 1, "{}", logs.text());
    handle.stop(true).await;
}

/// actix-web decodes `%61` to `a` before routing, so a route policy compared byte for byte
/// would choose the general policy for `/%61dmin/users` while actix runs the `/admin/` handler.
#[actix_web::test]
async fn route_policies_refuse_paths_actix_would_route_elsewhere() {
    use wimse_core::server::policy::{Policy, Rule};
    let deployment = Deployment::new();
    let (listener, base) = listener();
    let config = Pipeline::new(deployment.verifier(&base))
        .policy(deployment.policy())
        .route_policy("/admin/", Policy::named("admins").allow(Rule::exact("spiffe://prod.example/admin").unwrap()));
    let server = HttpServer::new(move || {
        App::new()
            .wrap(WimseAuth::new(config.clone()))
            .route("/admin/users", web::get().to(whoami))
            .route("/admin", web::get().to(whoami))
            .route("/public", web::get().to(whoami))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    actix_web::rt::spawn(server);

    let client = deployment.client(ALLOWED);
    let get = |path: &str| client.get(format!("{base}{path}")).send();
    assert_eq!(get("/public").await.unwrap().text().await.unwrap(), ALLOWED);
    for path in ["/admin/users", "/admin"] {
        let denied = get(path).await.unwrap();
        assert_eq!(denied.status(), 403, "{path}");
        assert!(denied.text().await.unwrap().contains("policy_denied"), "{path}");
    }
    for path in ["/%61dmin/users", "/adm%69n", "//admin/users"] {
        let refused = get(path).await.unwrap();
        assert_eq!(refused.status(), 400, "{path}");
        assert!(refused.text().await.unwrap().contains("non_canonical_path"), "{path}");
    }
    handle.stop(true).await;
}
