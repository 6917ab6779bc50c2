//! The README's first command: the call chain runs and every check holds.

#[test]
fn call_chain_runs_end_to_end() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_call-chain")).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("[orders]  verified caller spiffe://prod.example/front | txn-token txn.order-7d1f.purchase")
    );
    assert!(
        stdout.contains("[billing] verified caller spiffe://prod.example/orders | txn-token txn.order-7d1f.purchase")
    );
    assert!(stdout.contains("all hops behaved as expected"));
}
