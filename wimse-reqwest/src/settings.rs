//! Verifiers from settings whose trust entries follow an identity server's bundle URL
//! (`bundle_url` in [`VerifierSettings`]): wimse-core reads settings but fetches nothing, so
//! the fetching and the refresh live here.

use std::sync::Arc;
use std::time::Duration;

use wimse_core::config::{TrustSource, VerifierSettings};
use wimse_core::protocol::trust::TrustHandle;
use wimse_core::server::verify::Verifier;
use wimse_core::time::{Clock, SystemClock};
use wimse_core::{Error, ErrorKind};

use crate::{BundleSource, secure_or_loopback};

/// The verifier `settings` describe: its `file` trust entries read, each `bundle_url` entry
/// fetched now (a failure is an error naming the entry) and then kept current by a
/// [`BundleSource`] in the background, on the current Tokio runtime for as long as it runs:
/// refreshed on the bundle's hint and early on an unknown key id, so a service configured
/// from a file alone follows the identity server's key rotation. It reads the verifier section
/// only: `Settings::complete` adds the `[audit]` log and the `[signals]` revocations.
///
/// ```no_run
/// # async fn run() -> Result<(), wimse_core::Error> {
/// // [[verifier.trust]] trust_domain = "spiffe://prod.example"
/// //                    bundle_url = "https://issuer.prod.example/v1/bundle/spiffe"
/// let settings = wimse_core::config::Settings::load("/etc/wimse/service.toml")?;
/// let verifier = settings.complete(wimse_reqwest::verifier_from_settings(&settings.verifier).await?)?;
/// # let _ = verifier;
/// # Ok(())
/// # }
/// ```
pub async fn verifier_from_settings(settings: &VerifierSettings) -> Result<Verifier, Error> {
    let trust = TrustHandle::new(settings.trust_store()?);
    let sources = fetch_bundles(settings, &trust, Arc::new(SystemClock)).await?;
    let verifier = settings.build_on(trust.clone())?;
    for source in sources {
        // Detached: refreshing ends with the runtime.
        drop(source.spawn(trust.clone()));
    }
    Ok(verifier)
}

/// Fetches the bundle of every `bundle_url` entry of `settings` once into `trust`, and returns
/// their sources (to [`spawn`](BundleSource::spawn) for refreshing, or drop for a one-off
/// check). The sources run on `clock` (fetched keys stay usable `max_stale` seconds from its
/// now: a tool verifying as of another time gives that time). Errors name the entry.
pub async fn fetch_bundles(
    settings: &VerifierSettings,
    trust: &TrustHandle,
    clock: Arc<dyn Clock>,
) -> Result<Vec<BundleSource>, Error> {
    let mut sources = Vec::new();
    for (i, entry) in settings.trust.iter().enumerate() {
        let (domain, TrustSource::BundleUrl(url)) = entry.source(i)? else { continue };
        let field = format!("verifier.trust[{i}].bundle_url");
        if !secure_or_loopback(url) {
            // Keys fetched over plaintext could be anyone's.
            return Err(Error::with_detail(
                ErrorKind::InvalidConfiguration,
                format!("{field}: {url:?} is not https (http only on loopback)"),
            ));
        }
        let mut source = BundleSource::new(domain, url).clock(clock.clone());
        if let Some(secs) = entry.max_stale {
            source = source.max_stale(secs);
        }
        if let Some(secs) = entry.min_refresh_interval {
            source = source.min_interval(secs);
        }
        if let Some(ms) = entry.fetch_timeout_ms {
            source = source.timeout(Duration::from_millis(ms));
        }
        source.refresh(trust).await.map_err(|e| {
            Error::with_detail(e.kind().clone(), format!("{field} {url}: {}", e.detail().unwrap_or(e.reason())))
        })?;
        sources.push(source);
    }
    Ok(sources)
}
