//! The load benchmark program runs every configuration end to end (a short run: the numbers of
//! a debug build mean nothing, but each server must authenticate and answer every request).

use std::process::Command;

fn load_bench(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_load-bench")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_configuration_runs_and_is_tabulated() {
    let (ok, stdout, stderr) = load_bench(&["--requests", "200", "--warmup", "20", "--concurrency", "4"]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("one bare ES256 signature verification"), "{stdout}");
    // The Redis rows run where redis-server is installed (always in CI).
    let redis = wimse_testkit::servers::find_binary("redis-server").is_some();
    let mut expected =
        vec![("none", "-"), ("wpt", "memory"), ("wpt", "hand-off"), ("http-signature", "memory"), ("mtls", "-")];
    if redis {
        expected.extend([("wpt", "redis"), ("wpt", "redis-cluster")]);
    } else {
        assert!(stdout.contains("skipped: the Redis rows (redis-server not found)"), "{stdout}");
    }
    for framework in ["axum", "actix-web"] {
        for (mode, store) in &expected {
            let row = stdout
                .lines()
                .find(|l| l.starts_with(&format!("| {framework} | {mode} | {store} |")))
                .unwrap_or_else(|| panic!("no row for {framework} {mode} {store} in\n{stdout}"));
            let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
            assert_eq!(cells.len(), 10, "{row}");
            let rps: f64 = cells[3].parse().unwrap_or_else(|_| panic!("requests/s in {row}"));
            assert!(rps > 0.0, "{row}");
            for latency in &cells[4..6] {
                assert!(latency.ends_with(" ms"), "{row}");
            }
            // CPU time comes from /proc on Linux.
            assert!(cells[6].ends_with(" µs") && cells[7].ends_with('x'), "{row}");
            assert!(cells[9].parse::<f64>().is_ok_and(|switches| switches >= 0.0), "{row}");
        }
        assert!(stdout.contains(&format!("{framework} WPT server (memory store): CPU per request")), "{stdout}");
    }
    // The gateway rows run where nginx is installed (always in CI).
    let nginx =
        wimse_testkit::servers::find_binary("nginx").is_some() || std::path::Path::new("/usr/sbin/nginx").is_file();
    if !nginx {
        assert!(stdout.contains("skipped: the gateway rows (nginx not found)"), "{stdout}");
        return;
    }
    for path in [
        "nginx -> app",
        "nginx + auth_request + gateway -> app",
        "gateway reverse proxy -> app",
        "gateway forward-auth, verified",
        "gateway forward-auth, no credentials",
    ] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {path} |")))
            .unwrap_or_else(|| panic!("no row for {path} in\n{stdout}"));
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 6, "{row}");
        assert!(cells[1].parse::<f64>().is_ok_and(|rps| rps > 0.0), "{row}");
        assert!(cells[2].ends_with(" ms") && cells[3].ends_with(" ms"), "{row}");
        assert!(cells[4].ends_with(" µs") || cells[5].ends_with(" µs"), "{row}");
    }
    assert!(stdout.contains("gateway CPU per verified request (nginx + auth_request + gateway -> app): "), "{stdout}");
}

#[test]
fn a_filter_runs_only_matching_configurations() {
    let (ok, stdout, stderr) =
        load_bench(&["--requests", "50", "--warmup", "5", "--alg", "EdDSA", "--only", "axum wpt memory"]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("one bare EdDSA signature verification"), "{stdout}");
    let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with("| axum") || l.starts_with("| actix")).collect();
    assert_eq!(rows.len(), 1, "{stdout}");
    assert!(rows[0].starts_with("| axum | wpt | memory |"), "{stdout}");
}

/// `--pin`: the server on half the CPUs (here with two workers, whatever that half holds), the
/// driver on the others (a one-CPU machine is refused with a message).
#[test]
fn pinning_puts_the_server_on_cpus_of_its_own() {
    let (ok, stdout, stderr) =
        load_bench(&["--requests", "50", "--warmup", "5", "--only", "axum wpt memory", "--pin", "--workers", "2"]);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        assert!(!ok && stderr.contains("--pin needs at least two CPUs"), "{stderr}");
        return;
    }
    assert!(ok, "{stdout}\n{stderr}");
    let pinned = stdout.lines().find_map(|l| l.strip_prefix("pinned: server on CPUs ")).expect("the split is printed");
    let (server, others) = pinned.split_once("; driver, Redis and nginx on CPUs ").expect("both halves");
    assert!(!server.is_empty() && !others.is_empty() && server != others, "{pinned}");
    assert_eq!(stdout.lines().filter(|l| l.starts_with("| axum | wpt | memory |")).count(), 1, "{stdout}");
}

#[test]
fn bad_options_are_refused_with_a_message() {
    let (ok, _, stderr) = load_bench(&["--requests", "0"]);
    assert!(!ok && stderr.contains("--requests: not a positive number"), "{stderr}");
    let (ok, _, stderr) = load_bench(&["--workers", "0"]);
    assert!(!ok && stderr.contains("--workers: not a positive number"), "{stderr}");
    let (ok, _, stderr) = load_bench(&["--alg", "RS256"]);
    assert!(!ok && stderr.contains("ES256, ES384 or EdDSA"), "{stderr}");
    let (ok, _, stderr) = load_bench(&["--backend", "openssl"]);
    assert!(!ok && stderr.contains("backend openssl is not compiled in"), "{stderr}");
    let (ok, _, stderr) = load_bench(&["--only", "nothing-matches"]);
    assert!(!ok && stderr.contains("matched no configuration"), "{stderr}");
    let (ok, stdout, _) = load_bench(&["--help"]);
    assert!(ok && stdout.contains("usage: load-bench"), "{stdout}");
    let (ok, _, stderr) = load_bench(&["serve", "nginx", "wpt"]);
    assert!(!ok && stderr.contains("usage: load-bench serve"), "{stderr}");
    let (ok, _, stderr) = load_bench(&["claims", "--store", "memcached"]);
    assert!(!ok && stderr.contains("--store takes redis or redis-cluster"), "{stderr}");
    let (ok, _, stderr) = load_bench(&["claims", "--runtime", "green-threads"]);
    assert!(!ok && stderr.contains("--runtime takes multi-thread or per-thread"), "{stderr}");
}

/// `claims --store --runtime` measures one row: the claim's client CPU through the real store.
#[test]
fn the_claims_benchmark_runs_one_chosen_row() {
    let (ok, stdout, stderr) =
        load_bench(&["claims", "--claims", "200", "--rounds", "1", "--store", "redis", "--runtime", "per-thread"]);
    assert!(ok, "{stdout}\n{stderr}");
    if wimse_testkit::servers::find_binary("redis-server").is_none() {
        assert!(stdout.contains("skipped: redis-server not found"), "{stdout}");
        return;
    }
    let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with("| redis")).collect();
    assert_eq!(rows.len(), 1, "{stdout}");
    assert!(rows[0].starts_with("| redis | per-thread (actix-web) |") && rows[0].contains(" µs ("), "{stdout}");
}
