//! Identifier parsing against third-party cases, with our own (strict) verdicts where theirs is lenient.

use serde_json::Value;
use wimse_core::id::{IdentifierError, TrustDomain, WorkloadId};

/// sanguinehost/wimse `spiffe-id` cases. Their crate canonicalises (lower-cases, percent-decodes);
/// we refuse every non-canonical spelling instead, and a trust-domain-only ID is not a workload.
#[test]
fn sanguinehost_spiffe_id_cases() {
    let cases: Value =
        serde_json::from_str(&crate::common::testdata("identifiers/sanguinehost-spiffe-id-parse-cases.json")).unwrap();
    let mut checked = 0;
    for case in cases["cases"].as_array().unwrap() {
        let input = case["input"].as_str().unwrap();
        let theirs = case["sanguinehost"].as_str().unwrap();
        let strict_reject = case.get("strict_note").is_some();
        // Ours: a SPIFFE ID naming only a trust domain is not a Workload Identifier.
        let trust_domain_only = !input["spiffe://".len().min(input.len())..].contains('/');
        let expect_accept = theirs.starts_with("accept") && !strict_reject && !trust_domain_only;
        let result = WorkloadId::parse(input);
        if theirs.contains("BadScheme") {
            // Not a SPIFFE ID, but WIMSE identifiers are not limited to one scheme.
            assert_ne!(result.unwrap().scheme(), "spiffe");
            continue;
        }
        assert_eq!(result.is_ok(), expect_accept, "{input:.60}: theirs `{theirs}`, ours {result:?}");
        checked += 1;
    }
    assert!(checked >= 30);
}

#[test]
fn our_verdicts_name_the_rule() {
    use IdentifierError::*;
    let cases = [
        ("spiffe://twn.network", MissingPath),
        ("spiffe://TWN.Network/x", InvalidTrustDomain),
        ("SPIFFE://twn.network/x", NonCanonicalScheme),
        ("spiffe://twn.network/a%2Db", PercentEncoded),
        ("https://user@twn.network/x", Userinfo),
        ("spiffe://twn.network:8080/x", Port),
        ("spiffe://twn.network:/x", Port),
        ("spiffe://twn.network/x?y=1", Query),
        ("spiffe://twn.network/x?", Query),
        ("spiffe://twn.network/x#y", Fragment),
        ("spiffe:///x", EmptyTrustDomain),
        ("spiffe:twn.network/x", MissingAuthority),
        ("spiffe://twn+network/x", InvalidTrustDomain),
        ("spiffe://twn.network/x/", EmptySegment),
        ("spiffe://twn.network/", EmptySegment),
        ("spiffe://twn.network/x//y", EmptySegment),
        ("spiffe://twn.network/x y", NotAUri),
        ("spiffe://twn.network/a/./b", DotSegment),
        ("spiffe://twn.network/~a", InvalidPathChar),
        ("spiffe://twn.network/a:b", InvalidPathChar),
        ("spiffe://twn.network/a@b", InvalidPathChar),
        ("wimse://twn.network/a%3Ab", PercentEncoded),
        ("wimse://twn.network/a/../b", DotSegment),
        ("wimse://twn.network/a[b", NotAUri),
        ("", Empty),
        ("wimse://ex.org/ü", NotAUri),
    ];
    for (input, expected) in cases {
        assert_eq!(WorkloadId::parse(input), Err(expected), "{input}");
    }
    assert_eq!(WorkloadId::parse(&format!("spiffe://{}/x", "a".repeat(256))), Err(TrustDomainTooLong));
    assert_eq!(WorkloadId::parse(&format!("spiffe://a/{}", "x".repeat(2040))), Err(TooLong));
    // identifier-03 §4: outside the spiffe scheme, every RFC 3986 path character (`pchar`) is
    // allowed: unreserved (`~`), sub-delims, `:` and `@`.
    for ok in [
        "wimse://twn.network/~a",
        "wimse://twn.network/ns:payments",
        "wimse://twn.network/team@payments",
        "wimse://twn.network/a!$&'()*+,;=b",
        "urn-like://twn.network/k8s:ns=prod;sa=api",
    ] {
        assert_eq!(WorkloadId::parse(ok).map(|id| id.as_str().to_owned()).as_deref(), Ok(ok), "{ok}");
    }
}

/// fkautz/wimse-security-counterexamples: canonicalization, issuer origin binding and
/// hierarchical-matching attacks, evaluated on what the identifier layer decides.
#[test]
fn fkautz_counterexamples() {
    let cases: Value =
        serde_json::from_str(&crate::common::testdata("identifiers/fkautz-identifier-policy-cases.json")).unwrap();

    let privileged = WorkloadId::parse(cases["canonicalization"]["privileged_subject"].as_str().unwrap()).unwrap();
    for case in cases["canonicalization"]["cases"].as_array().unwrap() {
        let presented = case["presented_subject"].as_str().unwrap();
        assert_eq!(WorkloadId::parse(presented), Err(IdentifierError::PercentEncoded));
        assert_ne!(privileged.as_str(), presented);
    }

    // Issuers are bound to trust domains (scheme + authority). DENY = the subject is not in any
    // of the issuer's domains.
    let binding = &cases["issuer_origin_binding"];
    for case in binding["cases"].as_array().unwrap() {
        let origins: Vec<TrustDomain> = binding["authorized_origins_by_issuer"][case["issuer"].as_str().unwrap()]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap().parse().unwrap())
            .collect();
        let subject = WorkloadId::parse(case["subject"].as_str().unwrap()).unwrap();
        let allowed = origins.iter().any(|o| subject.is_in(o));
        assert_eq!(allowed, case["expect"].as_str().unwrap().starts_with("ALLOW"), "{case}");
    }

    // Dot segments, encoded or not, never parse, so a prefix policy never sees them.
    for case in cases["hierarchical_matching"]["cases"].as_array().unwrap() {
        let subject = case["subject"].as_str().unwrap();
        if subject.contains("/../") || subject.contains("%2e") {
            assert!(WorkloadId::parse(subject).is_err(), "{subject}");
        } else {
            // Different workloads compare unequal as complete URIs.
            let id = WorkloadId::parse(subject).unwrap();
            assert_ne!(id.as_str(), cases["hierarchical_matching"]["policy_root"].as_str().unwrap());
        }
    }
    let regex = &cases["canonical_profile_regex_used_by_strict_check"];
    assert_eq!(regex["ascii_only"], true);
}
