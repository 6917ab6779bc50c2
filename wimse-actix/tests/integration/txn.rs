//! Txn-Tokens through the actix-web adapter on loopback: the `Transaction` extractor, a
//! required Txn-Token, and forged tokens refused with their own reason.

use actix_web::{App, HttpServer, web};
use reqwest_middleware::ClientBuilder;
use wimse_actix::{Caller, Pipeline, Transaction, WimseAuth};
use wimse_reqwest::{TxnToken, WimseSignMiddleware};
use wimse_testkit::{ALLOWED, Deployment};

async fn purchase(caller: Caller, txn: Transaction) -> String {
    format!("{} for {} purpose {}", caller.id(), txn.subject(), txn.scope())
}

async fn reason(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap_or_default();
    (status, body["reason"].as_str().unwrap_or_default().to_owned())
}

#[actix_web::test]
async fn transactions_at_an_actix_service() {
    let deployment = Deployment::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let guard = Pipeline::new(deployment.txn_verifier(&base, true));
    let server = HttpServer::new(move || {
        App::new().wrap(WimseAuth::new(guard.clone())).route("/purchase", web::post().to(purchase))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    actix_web::rt::spawn(server);

    let client = ClientBuilder::new(reqwest::Client::new())
        .with(WimseSignMiddleware::new(deployment.signer(ALLOWED)).trust_domain_origins([base.clone()]))
        .build();
    let url = format!("{base}/purchase");
    let token = deployment.txn_token("user-1842", "orders.purchase", false);
    let response = client.post(&url).with_extension(TxnToken(token)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), format!("{ALLOWED} for user-1842 purpose orders.purchase"));

    assert_eq!(reason(client.post(&url).send().await.unwrap()).await, (403, "missing_txn_token".to_owned()));
    let forged = deployment.txn_token("user-1842", "orders.purchase", true);
    let refused = client.post(&url).with_extension(TxnToken(forged)).send().await.unwrap();
    assert_eq!(reason(refused).await, (400, "invalid_txn_token_signature".to_owned()));
    let bad_signature = {
        let mut t = deployment
            .txn_token("user-1842", "orders.purchase", false)
            .split('.')
            .map(str::to_owned)
            .collect::<Vec<_>>();
        t[2] = "AAAA".into();
        t.join(".")
    };
    let refused = client.post(&url).with_extension(TxnToken(bad_signature)).send().await.unwrap();
    assert_eq!(reason(refused).await, (400, "invalid_txn_token_signature".to_owned()));
    handle.stop(true).await;
}
