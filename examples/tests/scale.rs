//! The scale harness runs its scenarios end to end (scaled down to a handful of workloads):
//! each row is measured, none fails. The figures themselves are the README's, from a full run.

use std::process::Command;

#[test]
fn the_scale_harness_measures_its_rows() {
    let dir = std::env::temp_dir().join(format!("wimse-scale-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("scale.csv");
    let output = Command::new(env!("CARGO_BIN_EXE_scale"))
        .args(["--sizes", "4,8", "--only", "issuance,exchange,txn-token,agent-streams", "--csv"])
        .arg(&csv)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let csv = std::fs::read_to_string(&csv).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some(
            "scenario,n,rate_per_s,server_cpu_us_per_op,p99_ms_or_peak_over_mean,server_rss_mib,not_modified_share,kib_per_unit"
        )
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let scenarios: Vec<(&str, &str)> = rows.iter().map(|r| (r[0], r[1])).collect();
    assert_eq!(
        scenarios,
        [
            ("issuance", "4"),
            ("exchange", "4"),
            ("txn-token", "4"),
            ("agent-streams", "4"),
            ("issuance", "8"),
            ("exchange", "8"),
            ("txn-token", "8"),
            ("agent-streams", "8")
        ]
    );
    for row in &rows {
        let number = |i: usize| row[i].parse::<f64>().unwrap();
        assert!(number(2) > 0.0, "a rate: {row:?}");
        assert!(number(5) > 0.0, "the server's memory was read: {row:?}");
        if row[0] == "agent-streams" {
            // Every stream received a renewal while watched (else the harness fails).
            assert!(number(2) >= number(1) / 12.0, "renewals pushed to the streams: {row:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
