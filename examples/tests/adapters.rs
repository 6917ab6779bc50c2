//! Each adapter's example binary (named in the README) runs and reports every exchange.

fn run(binary: &str) -> String {
    let out = std::process::Command::new(binary).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{binary}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[test]
fn axum_service() {
    let out = run(env!("CARGO_BIN_EXE_axum-service"));
    assert!(out.contains("GET /orders as spiffe://prod.example/orders -> 200 hello spiffe://prod.example/orders"));
    assert!(out.contains("-> 403") && out.contains("policy_denied"));
    assert!(out.contains("GET /orders unsigned") && out.contains("-> 401"));
}

#[test]
fn actix_service() {
    let out = run(env!("CARGO_BIN_EXE_actix-service"));
    assert!(out.contains("GET /admin/who as spiffe://prod.example/orders -> 200"));
    assert!(out.contains("GET /public unsigned") && out.contains("-> 200 hello anonymous"));
}

#[test]
fn reqwest_client() {
    let out = run(env!("CARGO_BIN_EXE_reqwest-client"));
    assert!(out.contains("paid 5 EUR (wpt)") && out.contains("paid 7 EUR (http-signature)"), "{out}");
}

#[test]
fn tower_client() {
    let out = run(env!("CARGO_BIN_EXE_tower-client"));
    assert!(out.contains("GET /whoami as spiffe://prod.example/orders -> 200"), "{out}");
    assert!(out.contains("tower-client: every request behaved as expected"));
}
