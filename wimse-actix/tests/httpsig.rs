//! HTTP-signature mode end to end against a real actix-web server.

use actix_web::{App, HttpServer, web};
use wimse_actix::{Caller, Guard, WimseAuth};
use wimse_core::verify::Verifier;
use wimse_testkit::{
    Deployment, SERVER, SIGNATURE_BODY_DEADLINE, SIGNATURE_BODY_LIMIT, run_reveal_reasons_cases, run_signature_cases,
};

async fn echo(caller: Caller, body: String) -> String {
    format!("{} {} {body}", caller.id(), caller.method().name())
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
    let mut config =
        Guard::new(verifier(deployment, &base)).body_limit(SIGNATURE_BODY_LIMIT).body_deadline(SIGNATURE_BODY_DEADLINE);
    if sign_responses {
        config = config.sign_responses(deployment.signer(SERVER));
    }
    let server =
        HttpServer::new(move || App::new().wrap(WimseAuth::new(config.clone())).route("/pay", web::post().to(echo)))
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
