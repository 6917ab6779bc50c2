//! Why the agent cannot start: mistakes that no retry fixes. An outage of the identity server
//! is not one of them: the agent waits it out, serving what it holds.

use wimse_core::id::WorkloadId;

/// An identity the identity server refused to issue at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The identity.
    pub spiffe_id: WorkloadId,
    /// The part refused: `WIT` or `X.509-SVID`.
    pub part: &'static str,
    /// The reason (`issuance_denied`, `bootstrap_token_invalid`).
    pub reason: &'static str,
    /// What the identity server answered (status and its reason).
    pub detail: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} of {}: {}", self.part, self.spiffe_id, self.detail)
    }
}

/// Why [`Agent::start`](crate::Agent::start) or
/// [`Agent::check_issuance`](crate::Agent::check_issuance) failed. Each variant is a
/// configuration mistake, here or at the identity server; `wimse agent serve` exits with its
/// own code for each (see the README's agent section).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid, or `/proc` cannot be read.
    #[error("{0}")]
    Configuration(#[from] wimse_core::Error),
    /// The agent has no token to present: `issuer.token_env`'s variable is unset or empty, or
    /// `issuer.token_file` cannot be read or is empty.
    #[error("no token for the identity server: {0}")]
    NoToken(String),
    /// The identity server refuses the agent's token (401 `bootstrap_token_invalid`): a wrong
    /// dev secret, an expired or foreign platform token.
    #[error(
        "the identity server at {url} refuses the agent's token ({detail}): check the token in {source_name} against the identity server's client entry for the agent"
    )]
    TokenRefused {
        /// The identity server's URL.
        url: String,
        /// Where the token comes from (`issuer.token_file /path`, `issuer.token_env NAME`).
        source_name: String,
        /// What the identity server answered.
        detail: String,
    },
    /// The identity server refuses every identity of the entries (403 `issuance_denied`): its
    /// client entry for the agent does not allow them.
    #[error(
        "the identity server at {url} refuses every identity of the entries ({}): its client entry for the agent must allow them (allowed, allowed_prefixes; allowed_dns_names for their dns_names)",
        list(.refusals)
    )]
    IdentitiesRefused {
        /// The identity server's URL.
        url: String,
        /// Each identity and part refused.
        refusals: Vec<Refusal>,
    },
}

fn list(refusals: &[Refusal]) -> String {
    refusals.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}
