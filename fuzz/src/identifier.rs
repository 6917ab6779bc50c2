//! Workload identifier and trust domain parsing; a parsed identifier must round-trip.

use wimse_core::id::{TrustDomain, WorkloadId};

/// One input: UTF-8 text as an identifier and as a trust domain.
pub fn run(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(id) = WorkloadId::parse(text) {
            assert_eq!(id.as_str(), text);
            assert!(id.is_in(&id.trust_domain()));
            assert_eq!(WorkloadId::parse(id.as_str()).as_ref(), Ok(&id));
        }
        let _ = TrustDomain::parse(text);
    }
}
