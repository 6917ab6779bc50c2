//! What the adapter examples share: a throwaway trust domain on disk, laid out the way a
//! deployment lays it out (a trust-anchor file, a settings file, credential files a node agent
//! keeps current), so each example configures itself exactly as a real service would.

pub mod greeter;
pub mod mcp;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use wimse_core::client::cred::{Credentials, FileCredentials, write_credential_files};
use wimse_core::jose::{Algorithm, SigningKey};
use wimse_core::protocol::wit::WitIssuer;

/// The workload every example's policy lets in.
pub const ALLOWED: &str = "spiffe://prod.example/orders";
/// A workload of the same trust domain the policy refuses.
pub const DENIED: &str = "spiffe://prod.example/intruder";

/// A trust domain for one run of an example, in a temporary directory removed on drop.
#[derive(Debug)]
pub struct Demo {
    dir: PathBuf,
    issuer: SigningKey,
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

impl Demo {
    /// An identity-server key for `spiffe://prod.example`, its public key written as the trust
    /// anchor file `issuer.pub.jwk`.
    pub fn new(name: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("wimse-example-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let issuer = SigningKey::generate(Algorithm::ES256)?.with_kid("issuer-1");
        std::fs::write(dir.join("issuer.pub.jwk"), serde_json::to_string(issuer.public_jwk())?)?;
        Ok(Self { dir, issuer })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `service.toml`: verify callers of `origin` against the anchor file beside it (a
    /// relative path, which is relative to the settings file), let only [`ALLOWED`] in.
    /// Returns its path.
    pub fn settings(&self, origin: &str) -> Result<PathBuf> {
        let path = self.dir.join("service.toml");
        std::fs::write(
            &path,
            format!(
                "[verifier]\norigins = [\"{origin}\"]\n\n[[verifier.trust]]\ntrust_domain = \"spiffe://prod.example\"\nfile = \"issuer.pub.jwk\"\n\n[policy]\nname = \"example\"\nallow = {{ workloads = [\"{ALLOWED}\"] }}\n"
            ),
        )?;
        Ok(path)
    }

    /// Issues a WIT for `id` (a fresh key), writes `<name>.wit.jwt` and `<name>.key.jwk` as an
    /// agent would, and reads them back as [`FileCredentials`].
    pub fn credentials(&self, id: &str) -> Result<FileCredentials> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let key = SigningKey::generate(Algorithm::ES256)?;
        let wit = WitIssuer::new(self.issuer.clone()).lifetime(600).issue(&id.parse()?, key.public_jwk(), now)?;
        let name = id.rsplit('/').next().unwrap_or("workload");
        let (wit_path, key_path) = (self.dir.join(format!("{name}.wit.jwt")), self.dir.join(format!("{name}.key.jwk")));
        write_credential_files(&wit_path, &key_path, &Credentials::new(wit, key)?)?;
        Ok(FileCredentials::new(wit_path, key_path)?)
    }
}

impl Demo {
    /// A verifier for `origin` trusting this trust domain's identity server, which is also its
    /// Transaction Token Service: it validates the Txn-Tokens requests carry.
    pub fn txn_verifier(&self, origin: &str) -> Result<wimse_core::server::verify::Verifier> {
        use wimse_core::prelude::*;
        let domain: TrustDomain = "spiffe://prod.example".parse()?;
        let trust = TrustStore::new().with(domain.clone(), TrustAnchors::new().key(self.issuer.public_key().clone()));
        let txn = wimse_core::protocol::txn::TxnTokenValidation::new(domain);
        Ok(Verifier::new(trust, VerifierConfig::new().origin(origin).txn_tokens(txn))?)
    }

    /// Writes `<file>`: a Txn-Token of this trust domain for the user `subject` with the purpose
    /// `scope`, `actors` acting for them (the current one first), as the Transaction Token
    /// Service would issue it to the first actor.
    pub fn txn_token(&self, file: &str, subject: &str, scope: &str, actors: &[&str]) -> Result<PathBuf> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let tts =
            wimse_core::protocol::txn::TxnTokenIssuer::new(self.issuer.clone(), &"spiffe://prod.example".parse()?);
        let mut token = wimse_core::protocol::txn::NewTxnToken::new(subject, scope);
        if let Some(first) = actors.first() {
            token = token.requested_by(*first);
        }
        token.actors = actors.iter().map(|a| a.parse()).collect::<std::result::Result<_, _>>()?;
        let path = self.dir.join(file);
        std::fs::write(&path, tts.issue(&token, now)?)?;
        Ok(path)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Prints one exchange and checks its status; the examples exit non-zero on a surprise.
pub fn expect(label: &str, status: u16, body: &str, expected: u16) -> Result<()> {
    let body: String = body.chars().take(140).collect();
    println!("{label:<34} -> {status} {body}");
    if status != expected {
        return Err(format!("{label}: expected {expected}, got {status}").into());
    }
    Ok(())
}
