//! Workload Identity Certificates: issuance and the CA bundle.

use super::*;

impl IdentityServer {
    /// The WIC authority's certificate (PEM): the X.509 trust anchor of this trust domain.
    pub fn wic_bundle_pem(&self) -> Result<String> {
        self.read_keys(|loaded| loaded.state.wic_ca.as_ref().map(|(cert, _)| cert.clone()))
            .ok_or_else(|| crate::store::unavailable("no WIC authority"))
    }

    /// Issues a Workload Identity Certificate for the request's `sub` certifying the workload's
    /// public key, under the same per-client authority as WITs. The key must satisfy the policy
    /// of WIT confirmation keys (`invalid_key`); DNS names and IP addresses must be valid server
    /// names (`invalid_subject_alt_name`, 400) and granted by the client's `allowed_dns_names`
    /// and `allowed_ip_addresses` (`issuance_denied`, 403). The lifetime is the one asked for,
    /// capped at the client's maximum. Returns the chain (leaf first) and its expiry.
    pub async fn issue_wic<'a>(
        &self,
        presented: impl Into<ClientAuthentication<'a>>,
        request: &WicRequest<'_>,
    ) -> Result<(Vec<rustls::pki_types::CertificateDer<'static>>, u64)> {
        let (client, id) = self.authorize(presented.into(), request.sub)?;
        let refuse = |error: Error| {
            tracing::warn!(target: "wimse::audit", client = %client.config.name, sub = %id, reason = error.reason(), detail = error.detail(), "WIC refused");
            error
        };
        // Only names a TLS client can match: whatever the allowlist says.
        for name in request.dns_names {
            wimse_core::protocol::wic::check_dns_name(name).map_err(refuse)?;
        }
        for ip in request.ip_addresses {
            wimse_core::protocol::wic::check_ip_address(*ip).map_err(refuse)?;
        }
        // Server names go into certificates that mTLS clients trust for those names: a client
        // may name only what its configuration grants.
        let denied = |what: String| {
            refuse(Error::with_detail(ErrorKind::IssuanceDenied, format!("{what} is not allowed for this client")))
        };
        if let Some(name) = request.dns_names.iter().find(|n| !dns_name_allowed(&client.config.allowed_dns_names, n)) {
            return Err(denied(format!("DNS name `{name}`")));
        }
        if let Some(ip) = request.ip_addresses.iter().find(|ip| !client.config.allowed_ip_addresses.contains(ip)) {
            return Err(denied(format!("IP address {ip}")));
        }
        let now = self.clock.now();
        let max = client.wic_lifetime();
        super::wit::refuse_zero_lifetime(request.lifetime)?;
        let lifetime = request.lifetime.unwrap_or(max).min(max);
        let mut options = wimse_core::protocol::wic::WicOptions::new(request.usage, now, lifetime);
        options.dns_names = request.dns_names.to_vec();
        options.ip_addresses = request.ip_addresses.to_vec();
        let chain = self
            .read_keys(|loaded| loaded.wic_authority()?.issue_for_key(&id, request.spki_der, &options))
            .map_err(|error| match error.kind() {
                ErrorKind::InvalidKey | ErrorKind::InvalidSubjectAltName => refuse(error),
                _ => error,
            })?;
        self.record("wic", &client.config.name, &id, lifetime, "wic-authority".to_owned(), now, Default::default())
            .await?;
        tracing::info!(target: "wimse::audit", client = %client.config.name, sub = %id, lifetime, "WIC issued");
        Ok((chain, options.not_after))
    }
}
