//! HTTP-signature mode end to end against a real actix-web server.

use actix_web::{App, HttpServer, web};
use wimse_actix::{Caller, Pipeline, WimseAuth};
use wimse_core::server::verify::Verifier;
use wimse_testkit::{
    Deployment, SERVER, SIGNATURE_BODY_BUDGET, SIGNATURE_BODY_DEADLINE, SIGNATURE_BODY_LIMIT, run_reveal_reasons_cases,
    run_signature_cases,
};

async fn echo(caller: Caller, body: String) -> String {
    format!("{} {} {body}", caller.id(), caller.method().name())
}

/// A response with a header value that is not ASCII (UTF-8 in a file name).
async fn file(_caller: Caller) -> actix_web::HttpResponse {
    let disposition =
        actix_web::http::header::HeaderValue::from_bytes("attachment; filename=\"naïve.txt\"".as_bytes()).unwrap();
    actix_web::HttpResponse::Ok().insert_header(("content-disposition", disposition)).body("contents")
}

fn serve(deployment: &Deployment, sign_responses: bool) -> (String, actix_web::dev::ServerHandle) {
    serve_with(deployment, sign_responses, Deployment::verifier)
}

fn serve_with(
    deployment: &Deployment,
    sign_responses: bool,
    verifier: impl Fn(&Deployment, &str) -> Verifier,
) -> (String, actix_web::dev::ServerHandle) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut config = Pipeline::new(verifier(deployment, &base))
        .body_limit(SIGNATURE_BODY_LIMIT)
        .body_budget(SIGNATURE_BODY_BUDGET)
        .body_deadline(SIGNATURE_BODY_DEADLINE);
    if sign_responses {
        config = config.sign_responses(deployment.signer(SERVER));
    }
    let server = HttpServer::new(move || {
        App::new()
            .wrap(WimseAuth::new(config.clone()))
            .route("/pay", web::post().to(echo))
            .route("/file", web::post().to(file))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    (base, handle)
}

#[actix_web::test]
async fn signature_cases() {
    let deployment = Deployment::new();
    let (signing, a) = serve(&deployment, true);
    let (plain, b) = serve(&deployment, false);
    run_signature_cases(&deployment, &signing, &plain).await;
    a.stop(true).await;
    b.stop(true).await;
}

#[actix_web::test]
async fn reasons_are_revealed_only_when_asked() {
    let deployment = Deployment::new();
    let (quiet, a) = serve(&deployment, false);
    let (revealing, b) = serve_with(&deployment, false, Deployment::revealing_verifier);
    run_reveal_reasons_cases(&deployment, &quiet, &revealing).await;
    a.stop(true).await;
    b.stop(true).await;
}

/// The signed response keeps every header value as signed, bytes included; and the authority
/// is the request's own, not one a client names in `X-Forwarded-Host`.
#[actix_web::test]
async fn signed_responses_keep_non_ascii_values_and_ignore_forwarded_hosts() {
    let deployment = Deployment::new();
    let (base, handle) = serve(&deployment, true);
    let client = wimse_testkit::signature_client(&deployment, wimse_testkit::ALLOWED, SERVER);
    let response = client.post(format!("{base}/file")).body("x").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-disposition"].as_bytes(), "attachment; filename=\"naïve.txt\"".as_bytes());
    assert_eq!(response.text().await.unwrap(), "contents");
    // A client-chosen forwarded host changes nothing: the request and its signed response are
    // checked against the authority the request was sent to.
    let forwarded = client
        .post(format!("{base}/pay"))
        .header("x-forwarded-host", "evil.example")
        .header("forwarded", "host=evil.example")
        .body("amount=1")
        .send()
        .await
        .unwrap();
    assert_eq!(forwarded.status(), 200);
    assert_eq!(forwarded.text().await.unwrap(), format!("{} http-signature amount=1", wimse_testkit::ALLOWED));
    handle.stop(true).await;
}
