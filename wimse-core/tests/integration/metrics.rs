//! Metrics through the `metrics` facade: verifications by mode, result and bounded reason;
//! WIT-cache and replay-cache activity; credential expiry.

use crate::common::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use wimse_core::prelude::*;

/// A recorded metric: name, labels, value.
type Recorded = (String, Vec<(String, String)>, DebugValue);

/// The value of the counter `name` whose labels include all of `labels`.
fn counter(snapshot: &[Recorded], name: &str, labels: &[(&str, &str)]) -> u64 {
    snapshot
        .iter()
        .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v)))
        .map(|(_, _, v)| match v {
            DebugValue::Counter(c) => *c,
            _ => 0,
        })
        .sum()
}

#[test]
fn verifications_and_caches_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let f = Fixture::new();
        let verifier = f.verifier();
        let headers = f.headers(&f.wit, &f.wpt());
        verifier.verify_sync(&RequestView::new(PATH, &headers)).unwrap();
        verifier.verify_sync(&RequestView::new(PATH, &headers)).unwrap_err();
        verifier.verify_sync(&RequestView::new(PATH, &f.headers(&f.wit, &f.wpt()))).unwrap();
        wimse_core::client::cred::record_expiry(&Credentials::new(f.wit.clone(), f.workload_key.clone()).unwrap());
    });
    let snapshot: Vec<Recorded> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let labels = key.labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect();
            (key.name().to_owned(), labels, value)
        })
        .collect();
    assert_eq!(counter(&snapshot, "wimse_verifications_total", &[("mode", "wpt"), ("result", "allow")]), 2);
    assert_eq!(
        counter(&snapshot, "wimse_verifications_total", &[("result", "reject"), ("reason", "replayed_proof")]),
        1
    );
    assert_eq!(counter(&snapshot, "wimse_replay_cache_hits_total", &[]), 1);
    assert_eq!(counter(&snapshot, "wimse_wit_cache_total", &[("result", "miss")]), 1);
    assert_eq!(counter(&snapshot, "wimse_wit_cache_total", &[("result", "hit")]), 2);
    let expiry = snapshot.iter().find(|(n, _, _)| n == "wimse_credential_expires_at_seconds").expect("expiry gauge");
    assert!(matches!(expiry.2, DebugValue::Gauge(g) if g.into_inner() == (NOW - 60 + 3600) as f64));
}
