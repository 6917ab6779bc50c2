//! The README's first command must keep working.

#[test]
fn demo_runs_and_reports_each_step() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wimse-demo")).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("verified caller: spiffe://prod.example/orders"));
    assert!(stdout.contains("refused: replayed_proof -> HTTP 401"));
    assert!(stdout.contains("refused: invalid_wit_signature -> HTTP 401"));
}
