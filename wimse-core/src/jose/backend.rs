//! Selection of the crypto backend that computes and checks signatures.

use jsonwebtoken::crypto::CryptoProvider;

#[cfg(not(any(feature = "aws-lc-rs", feature = "rust-crypto")))]
compile_error!("wimse-core needs a crypto backend: enable the `aws-lc-rs` (default) or `rust-crypto` feature");

/// A crypto backend compiled into this build.
///
/// With both features enabled, [`Backend::default`] is aws-lc-rs and the other stays available
/// for comparison; nothing panics, and no process-wide state is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Backend {
    /// aws-lc-rs (feature `aws-lc-rs`).
    #[cfg(feature = "aws-lc-rs")]
    #[default]
    AwsLc,
    /// RustCrypto: p256, p384, ed25519-dalek, rsa (feature `rust-crypto`).
    #[cfg(feature = "rust-crypto")]
    #[cfg_attr(not(feature = "aws-lc-rs"), default)]
    RustCrypto,
}

impl Backend {
    /// Every backend compiled in, default first.
    pub fn available() -> Vec<Backend> {
        vec![
            #[cfg(feature = "aws-lc-rs")]
            Backend::AwsLc,
            #[cfg(feature = "rust-crypto")]
            Backend::RustCrypto,
        ]
    }

    /// A short name for logs and benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            #[cfg(feature = "aws-lc-rs")]
            Backend::AwsLc => "aws-lc-rs",
            #[cfg(feature = "rust-crypto")]
            Backend::RustCrypto => "rust-crypto",
        }
    }

    pub(crate) fn provider(self) -> &'static CryptoProvider {
        match self {
            #[cfg(feature = "aws-lc-rs")]
            Backend::AwsLc => &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
            #[cfg(feature = "rust-crypto")]
            Backend::RustCrypto => &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER,
        }
    }
}
