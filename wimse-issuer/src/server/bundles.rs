//! The published trust bundles (JWKS, SPIFFE) and the key state they come from.

use super::*;

impl IdentityServer {
    /// The public signing keys as a JWKS.
    pub fn jwks(&self) -> Value {
        json!({ "keys": self.read_keys(|loaded| loaded.state.public_keys()) })
    }

    /// The public signing keys as a SPIFFE trust bundle, with sequence number, refresh hint,
    /// and the key store's epoch ([`STORE_EPOCH_MEMBER`]).
    pub fn spiffe_bundle(&self) -> Value {
        self.read_keys(|loaded| self.spiffe_bundle_of(loaded))
    }

    pub(crate) fn spiffe_bundle_of(&self, loaded: &Loaded) -> Value {
        json!({
            "keys": loaded.state.public_keys(),
            "spiffe_sequence": loaded.state.sequence(),
            "spiffe_refresh_hint": self.config.refresh_hint,
            STORE_EPOCH_MEMBER: loaded.state.epoch(),
        })
    }

    /// The stored state's epoch and sequence, as this replica last read them.
    pub fn key_state(&self) -> (String, u64) {
        self.read_keys(|loaded| (loaded.state.epoch().to_owned(), loaded.state.sequence()))
    }

    /// The current anchors, as a verifier in the same process would configure them.
    pub fn anchors(&self) -> Result<TrustAnchors> {
        TrustAnchors::from_spiffe_bundle_json(&self.spiffe_bundle().to_string())
    }
}
