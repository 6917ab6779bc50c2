//! An actix-web service that verifies its callers, configured from a settings file, with a
//! public route and a scope only the allowed workload may enter; called by real clients.
//!
//! Run with `cargo run -p wimse-examples --bin actix-service`.

use actix_web::{App, HttpServer, web};
use reqwest_middleware::ClientBuilder;
use wimse_actix::prelude::*;
use wimse_core::config::Settings;
use wimse_examples::{ALLOWED, DENIED, Demo, expect};
use wimse_reqwest::WimseSignMiddleware;

async fn whoami(caller: Caller) -> String {
    format!("hello {}", caller.id())
}

async fn public(caller: Option<Caller>) -> String {
    caller.map_or_else(|| "hello anonymous".to_owned(), |c| format!("hello {}", c.id()))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    actix_web::rt::System::new().block_on(run())
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let demo = Demo::new("actix")?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let origin = format!("http://{}", listener.local_addr()?);

    // Verify every caller that presents credentials (optional: `/public` stays open), and
    // let only what the settings' policy allows into `/admin`. `verifier_from_settings` also
    // follows trust entries that name an identity server's `bundle_url` (here: a file).
    let settings = Settings::load(demo.settings(&origin)?)?;
    let guard = Pipeline::new(wimse_reqwest::verifier_from_settings(&settings.verifier).await?).optional();
    let policy = settings.policy()?;
    let server = HttpServer::new(move || {
        App::new()
            .wrap(WimseAuth::new(guard.clone()))
            .route("/public", web::get().to(public))
            .service(web::scope("/admin").wrap(RequirePolicy::new(policy.clone())).route("/who", web::get().to(whoami)))
    })
    .workers(1)
    .listen(listener)?
    .run();
    let handle = server.handle();
    actix_web::rt::spawn(server);

    for (id, expected) in [(ALLOWED, 200), (DENIED, 403)] {
        let signer = Signer::new(demo.credentials(id)?);
        let client = ClientBuilder::new(reqwest::Client::new()).with(WimseSignMiddleware::new(signer)).build();
        let response = client.get(format!("{origin}/admin/who")).send().await?;
        let status = response.status().as_u16();
        expect(&format!("GET /admin/who as {id}"), status, &response.text().await?, expected)?;
    }
    let response = reqwest::get(format!("{origin}/admin/who")).await?;
    let status = response.status().as_u16();
    expect("GET /admin/who unsigned", status, &response.text().await?, 401)?;
    let response = reqwest::get(format!("{origin}/public")).await?;
    let status = response.status().as_u16();
    expect("GET /public unsigned", status, &response.text().await?, 200)?;
    handle.stop(true).await;
    println!("actix-service: every request behaved as expected");
    Ok(())
}
