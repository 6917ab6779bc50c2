//! Workload Identity Certificates and mutual TLS (workload-creds-02 §6.1, mutual-tls-03).
//!
//! A WIC is an X.509 certificate naming its workload in exactly one URI SAN. Peers verify each
//! other in the TLS handshake: the chain against the anchors of the trust domain named by that
//! URI (never another domain's), the extended key usage, the validity period, and on the client
//! the expected server identity. The rustls verifiers here do that; the anchors and the local
//! certificate can be swapped while running, and new handshakes use the new material.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::{Error, ErrorKind, Result};
use crate::id::{TrustDomain, WorkloadId};
use crate::jose::b64url_encode;

fn cert_error(kind: ErrorKind, detail: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::with_detail(kind, detail)
}

fn tls_error(error: Error) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
}

/// The WIMSE error behind a rustls certificate error, if there is one.
pub fn wimse_error(error: &rustls::Error) -> Option<&Error> {
    match error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => inner.downcast_ref::<Error>(),
        _ => None,
    }
}

/// The single Workload Identifier of a certificate: its one URI SAN, parsed strictly.
/// A certificate with no URI SAN, or more than one, names no workload.
pub fn workload_id_of(cert: &CertificateDer<'_>) -> Result<WorkloadId> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref())
        .map_err(|_| cert_error(ErrorKind::InvalidCertificate, "not an X.509 certificate"))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|_| cert_error(ErrorKind::InvalidCertificate, "malformed subjectAltName"))?
        .ok_or_else(|| cert_error(ErrorKind::InvalidCertificate, "no subjectAltName"))?;
    let mut uris = san.value.general_names.iter().filter_map(|name| match name {
        GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    match (uris.next(), uris.next()) {
        (Some(uri), None) => {
            WorkloadId::parse(uri).map_err(|e| cert_error(ErrorKind::InvalidCertificate, format!("URI SAN: {e}")))
        }
        (None, _) => Err(cert_error(ErrorKind::InvalidCertificate, "no URI SAN")),
        (Some(_), Some(_)) => Err(cert_error(ErrorKind::InvalidCertificate, "more than one URI SAN")),
    }
}

/// A certificate's `notBefore`, in seconds since the epoch (`None`: unreadable, or before
/// 1970).
pub fn not_before_of(cert: &CertificateDer<'_>) -> Option<u64> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    u64::try_from(parsed.validity().not_before.timestamp()).ok()
}

/// What a WIC may be used for (its extended key usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WicUsage {
    /// `id-kp-clientAuth`.
    Client,
    /// `id-kp-serverAuth`.
    Server,
    /// Both.
    ClientAndServer,
}

/// Options for issuing a WIC.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WicOptions {
    /// Extended key usage.
    pub usage: WicUsage,
    /// Start of validity (seconds since the epoch).
    pub not_before: u64,
    /// End of validity (seconds since the epoch).
    pub not_after: u64,
    /// DNS names for a server certificate (clients connecting by name check them); each must
    /// pass [`check_dns_name`].
    pub dns_names: Vec<String>,
    /// IP addresses for a server certificate; each must pass [`check_ip_address`].
    pub ip_addresses: Vec<IpAddr>,
}

impl WicOptions {
    /// Valid from `now` for `lifetime` seconds, for `usage`.
    pub fn new(usage: WicUsage, now: u64, lifetime: u64) -> Self {
        Self {
            usage,
            not_before: now.saturating_sub(60),
            not_after: now.saturating_add(lifetime),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
        }
    }

    /// Adds a DNS name SAN.
    pub fn dns_name(mut self, name: impl Into<String>) -> Self {
        self.dns_names.push(name.into());
        self
    }

    /// Adds an IP address SAN.
    pub fn ip_address(mut self, ip: IpAddr) -> Self {
        self.ip_addresses.push(ip);
        self
    }
}

/// The longest DNS name accepted, in bytes (RFC 1035 §2.3.4, without the root's trailing dot).
const MAX_DNS_NAME: usize = 253;
/// The longest DNS label, in bytes (RFC 1035 §2.3.4).
const MAX_DNS_LABEL: usize = 63;

fn san_error(detail: String) -> Error {
    cert_error(ErrorKind::InvalidSubjectAltName, detail)
}

/// A name as it may appear in a log line: at most 64 characters, control characters escaped.
fn shown(name: &str) -> String {
    let head: String = name.chars().take(64).collect();
    let ellipsis = if head.len() < name.len() { "…" } else { "" };
    format!("{:?}{ellipsis}", head)
}

/// Checks a DNS name for a certificate's subject alternative names: RFC 5280 §4.2.1.6 asks for
/// the preferred name syntax (RFC 1034 §3.5, with RFC 1123's leading digits), so labels of 1 to
/// 63 ASCII letters, digits and hyphens, neither starting nor ending with a hyphen, at most 253
/// bytes in all, and no trailing dot. An internationalized name is sent as its A-labels
/// (`xn--…`, RFC 5890); raw Unicode is refused with a message saying so. The last label may not
/// be all digits (such a name is an IP address: send it as one). A wildcard is only a whole
/// leftmost `*` label followed by at least two labels (`*.svc.example`). Letters keep their
/// case (names compare case-insensitively). Errors are [`ErrorKind::InvalidSubjectAltName`].
pub fn check_dns_name(name: &str) -> Result<()> {
    let refuse = |why: &str| Err(san_error(format!("DNS name {}: {why}", shown(name))));
    if !name.is_ascii() {
        return refuse("not ASCII; send an internationalized name as its A-labels (xn--…, RFC 5890)");
    }
    if name.is_empty() {
        return refuse("empty");
    }
    if name.len() > MAX_DNS_NAME {
        return refuse("longer than 253 bytes");
    }
    if name.ends_with('.') {
        return refuse("ends with a dot (send the name without the root's trailing dot)");
    }
    let labels: Vec<&str> = name.split('.').collect();
    let (first, rest) = match labels.split_first() {
        Some((&"*", rest)) if rest.len() >= 2 => (None, rest),
        Some((&"*", _)) => return refuse("a wildcard needs at least two labels after it"),
        _ => (Some(labels[0]), &labels[1..]),
    };
    for label in first.into_iter().chain(rest.iter().copied()) {
        if label.is_empty() {
            return refuse("has an empty label");
        }
        if label.len() > MAX_DNS_LABEL {
            return refuse("has a label longer than 63 bytes");
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return refuse("a label has a character other than a letter, digit or hyphen");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return refuse("a label starts or ends with a hyphen");
        }
    }
    if labels.last().is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit())) {
        return refuse("the last label is all digits (an IP address is sent as one)");
    }
    Ok(())
}

/// Checks an IP address for a certificate's subject alternative names: a unicast address a
/// server can hold. Refused: unspecified (`0.0.0.0`, `::`), IPv4 "this network" (`0.0.0.0/8`),
/// the limited broadcast and the reserved `240.0.0.0/4`, multicast, and IPv4-mapped IPv6
/// addresses (`::ffff:a.b.c.d`: send the IPv4 address). Errors are
/// [`ErrorKind::InvalidSubjectAltName`].
pub fn check_ip_address(ip: IpAddr) -> Result<()> {
    let why = match ip {
        IpAddr::V4(v4) if v4.is_unspecified() || v4.octets()[0] == 0 => Some("unspecified or \"this network\""),
        IpAddr::V4(v4) if v4.is_broadcast() || v4.octets()[0] >= 240 => Some("broadcast or reserved"),
        IpAddr::V4(v4) if v4.is_multicast() => Some("multicast"),
        IpAddr::V6(v6) if v6.is_unspecified() => Some("unspecified"),
        IpAddr::V6(v6) if v6.is_multicast() => Some("multicast"),
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => Some("IPv4-mapped (send the IPv4 address)"),
        _ => None,
    };
    match why {
        Some(why) => Err(san_error(format!("IP address {ip}: {why}, not a server's address"))),
        None => Ok(()),
    }
}

fn offset_time(secs: u64) -> Result<time::OffsetDateTime> {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or_else(|| cert_error(ErrorKind::InvalidConfiguration, "time out of range"))
}

fn rcgen_error(e: rcgen::Error) -> Error {
    cert_error(ErrorKind::Crypto, format!("certificate generation: {e}"))
}

/// A workload's certificate chain and private key.
pub struct WorkloadCertificate {
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl WorkloadCertificate {
    /// From a chain (leaf first) and a PKCS#8 private key.
    pub fn new(chain: Vec<CertificateDer<'static>>, key: PrivatePkcs8KeyDer<'static>) -> Result<Self> {
        let leaf = chain.first().ok_or_else(|| cert_error(ErrorKind::InvalidCertificate, "empty chain"))?;
        workload_id_of(leaf)?;
        Ok(Self { chain, key })
    }

    /// The chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The workload it names.
    pub fn workload_id(&self) -> Result<WorkloadId> {
        workload_id_of(&self.chain[0])
    }

    /// The private key (PKCS#8 DER).
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// The chain and key as rustls signs with them.
    pub fn certified_key(&self, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>> {
        let signing_key = provider
            .key_provider
            .load_private_key(self.private_key())
            .map_err(|_| cert_error(ErrorKind::InvalidKey, "unusable certificate key"))?;
        Ok(Arc::new(CertifiedKey::new(self.chain.clone(), signing_key)))
    }
}

impl WorkloadCertificate {
    /// The chain and the PKCS#8 private key as PEM.
    pub fn to_pem(&self) -> (String, String) {
        let chain = self.chain.iter().map(|c| pem("CERTIFICATE", c.as_ref())).collect::<String>();
        (chain, pem("PRIVATE KEY", self.key.secret_pkcs8_der()))
    }

    /// Loads a chain (leaf first) and a PKCS#8 private key from PEM.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self> {
        use rustls::pki_types::pem::PemObject;
        let key = PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|_| cert_error(ErrorKind::InvalidKey, "not a PKCS#8 PEM private key"))?;
        Self::new(certificates_from_pem(chain_pem)?, key)
    }
}

/// Every certificate in a PEM text, in order.
pub fn certificates_from_pem(text: &str) -> Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| cert_error(ErrorKind::InvalidCertificate, "malformed PEM certificate"))
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl Clone for WorkloadCertificate {
    fn clone(&self) -> Self {
        Self { chain: self.chain.clone(), key: self.key.clone_key() }
    }
}

impl fmt::Debug for WorkloadCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCertificate").field("id", &self.workload_id().ok()).finish_non_exhaustive()
    }
}

/// A certificate authority for one trust domain: what an identity server issues WICs with.
pub struct WicAuthority {
    domain: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    certificate: CertificateDer<'static>,
}

impl fmt::Debug for WicAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WicAuthority").field("domain", &self.domain).finish_non_exhaustive()
    }
}

impl WicAuthority {
    /// A new self-signed CA for `domain`, valid from `now` for `lifetime` seconds.
    pub fn new(domain: TrustDomain, now: u64, lifetime: u64) -> Result<Self> {
        let key = KeyPair::generate().map_err(rcgen_error)?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, format!("WIMSE CA {domain}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = offset_time(now.saturating_sub(60))?;
        params.not_after = offset_time(now.saturating_add(lifetime))?;
        let certificate = params.self_signed(&key).map_err(rcgen_error)?.der().clone();
        Ok(Self { domain, issuer: Issuer::new(params, key), certificate })
    }

    /// Loads a CA from its certificate and private key (PEM), for `domain`.
    pub fn from_pem(domain: TrustDomain, certificate_pem: &str, key_pem: &str) -> Result<Self> {
        let certificate = certificates_from_pem(certificate_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| cert_error(ErrorKind::InvalidCertificate, "no CA certificate in the PEM"))?;
        let key = KeyPair::from_pem(key_pem).map_err(|_| cert_error(ErrorKind::InvalidKey, "not a PEM private key"))?;
        let issuer = Issuer::from_ca_cert_der(&certificate, key).map_err(rcgen_error)?;
        Ok(Self { domain, issuer, certificate })
    }

    /// The CA certificate and private key as PEM, to store the CA.
    pub fn to_pem(&self) -> (String, String) {
        (pem("CERTIFICATE", self.certificate.as_ref()), self.issuer.key().serialize_pem())
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.domain
    }

    /// The CA certificate: the trust anchor to distribute.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.certificate
    }

    /// Issues a WIC for `id` with a fresh P-256 key. `id` must be in this authority's trust
    /// domain: an identity server issues only its own identifiers.
    pub fn issue(&self, id: &WorkloadId, options: &WicOptions) -> Result<WorkloadCertificate> {
        if !id.is_in(&self.domain) {
            return Err(cert_error(ErrorKind::InvalidConfiguration, format!("{id} is not in {}", self.domain)));
        }
        self.issue_with_uris(&[id.as_str()], options)
    }

    /// Issues a WIC for `id` certifying a key the workload holds (its SubjectPublicKeyInfo, DER):
    /// what an identity server does, since the private key never leaves the workload. Returns
    /// the chain, leaf first. The key must pass [`PublicKey::from_spki_der`](crate::jose::PublicKey::from_spki_der)
    /// (the policy of WIT confirmation keys; [`ErrorKind::InvalidKey`] otherwise), and every DNS
    /// name and IP address [`check_dns_name`] and [`check_ip_address`].
    pub fn issue_for_key(
        &self,
        id: &WorkloadId,
        spki_der: &[u8],
        options: &WicOptions,
    ) -> Result<Vec<CertificateDer<'static>>> {
        if !id.is_in(&self.domain) {
            return Err(cert_error(ErrorKind::InvalidConfiguration, format!("{id} is not in {}", self.domain)));
        }
        // The key policy of WITs' `cnf` keys (curves, RSA sizes): one policy for both credentials.
        crate::jose::PublicKey::from_spki_der(spki_der)?;
        let public = rcgen::SubjectPublicKeyInfo::from_der(spki_der)
            .map_err(|_| cert_error(ErrorKind::InvalidKey, "not a SubjectPublicKeyInfo"))?;
        let params = leaf_params(&[id.as_str()], options)?;
        let cert = params.signed_by(&public, &self.issuer).map_err(rcgen_error)?;
        Ok(vec![cert.der().clone(), self.certificate.clone()])
    }

    /// Issues a certificate with exactly these URI SANs. For tests of peers that must refuse
    /// malformed certificates; use [`issue`](Self::issue) otherwise.
    pub fn issue_with_uris(&self, uris: &[&str], options: &WicOptions) -> Result<WorkloadCertificate> {
        let key = KeyPair::generate().map_err(rcgen_error)?;
        let params = leaf_params(uris, options)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(rcgen_error)?;
        let key = PrivatePkcs8KeyDer::from(key.serialize_der());
        Ok(WorkloadCertificate { chain: vec![cert.der().clone(), self.certificate.clone()], key })
    }
}

fn leaf_params(uris: &[&str], options: &WicOptions) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, uris.first().copied().unwrap_or("workload"));
    for uri in uris {
        let uri = rcgen::string::Ia5String::try_from(*uri).map_err(rcgen_error)?;
        params.subject_alt_names.push(SanType::URI(uri));
    }
    for name in &options.dns_names {
        check_dns_name(name)?;
        let name = rcgen::string::Ia5String::try_from(name.as_str()).map_err(rcgen_error)?;
        params.subject_alt_names.push(SanType::DnsName(name));
    }
    for ip in &options.ip_addresses {
        check_ip_address(*ip)?;
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match options.usage {
        WicUsage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        WicUsage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        WicUsage::ClientAndServer => vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth],
    };
    params.not_before = offset_time(options.not_before)?;
    params.not_after = offset_time(options.not_after)?;
    Ok(params)
}

/// Every certificate of a chain as PEM.
pub fn chain_to_pem(chain: &[CertificateDer<'_>]) -> String {
    chain.iter().map(|c| pem("CERTIFICATE", c.as_ref())).collect()
}

/// Per-trust-domain CA anchors, shared by verifiers and replaceable at run time.
#[derive(Clone)]
pub struct WicAnchors {
    provider: Arc<CryptoProvider>,
    domains: Arc<RwLock<HashMap<TrustDomain, DomainVerifiers>>>,
}

#[derive(Clone)]
struct DomainVerifiers {
    client: Arc<dyn ClientCertVerifier>,
    server: Arc<WebPkiServerVerifier>,
}

impl fmt::Debug for WicAnchors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let domains: Vec<String> =
            self.domains.read().map(|d| d.keys().map(ToString::to_string).collect()).unwrap_or_default();
        f.debug_struct("WicAnchors").field("domains", &domains).finish()
    }
}

impl WicAnchors {
    /// No trusted domains yet, with rustls' aws-lc-rs provider.
    pub fn new() -> Self {
        Self::with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
    }

    /// No trusted domains yet, with this crypto provider.
    pub fn with_provider(provider: Arc<CryptoProvider>) -> Self {
        Self { provider, domains: Arc::new(RwLock::new(HashMap::new())) }
    }

    /// The crypto provider.
    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    /// Sets (or replaces) the CA certificates of `domain`. Handshakes after this use them.
    pub fn set(&self, domain: TrustDomain, cas: impl IntoIterator<Item = CertificateDer<'static>>) -> Result<()> {
        let mut roots = RootCertStore::empty();
        for ca in cas {
            roots.add(ca).map_err(|e| cert_error(ErrorKind::InvalidConfiguration, format!("trust anchor: {e}")))?;
        }
        let roots = Arc::new(roots);
        let config =
            |e: rustls::server::VerifierBuilderError| cert_error(ErrorKind::InvalidConfiguration, e.to_string());
        let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), self.provider.clone())
            .build()
            .map_err(config)?;
        let server =
            WebPkiServerVerifier::builder_with_provider(roots, self.provider.clone()).build().map_err(config)?;
        let mut domains =
            self.domains.write().map_err(|_| cert_error(ErrorKind::InvalidConfiguration, "anchor store poisoned"))?;
        domains.insert(domain, DomainVerifiers { client, server });
        Ok(())
    }

    /// Stops trusting `domain`.
    pub fn remove(&self, domain: &TrustDomain) {
        if let Ok(mut domains) = self.domains.write() {
            domains.remove(domain);
        }
    }

    fn for_peer(
        &self,
        end_entity: &CertificateDer<'_>,
    ) -> std::result::Result<(WorkloadId, DomainVerifiers), rustls::Error> {
        let id = workload_id_of(end_entity).map_err(tls_error)?;
        let domains = self.domains.read().map_err(|_| rustls::Error::General("anchor store poisoned".into()))?;
        let verifiers = domains
            .get(&id.trust_domain())
            .cloned()
            .ok_or_else(|| tls_error(cert_error(ErrorKind::UntrustedTrustDomain, id.trust_domain().to_string())))?;
        Ok((id, verifiers))
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }

    fn verify12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
}

impl Default for WicAnchors {
    fn default() -> Self {
        Self::new()
    }
}

/// Verifies client WICs on a server: one URI SAN, chain to that trust domain's anchors,
/// `clientAuth` EKU, validity. Client certificates are required unless
/// [`optional`](Self::optional).
#[derive(Debug, Clone)]
pub struct WicClientVerifier {
    anchors: WicAnchors,
    optional: bool,
}

impl WicClientVerifier {
    /// Verifies against `anchors`.
    pub fn new(anchors: WicAnchors) -> Self {
        Self { anchors, optional: false }
    }

    /// Lets clients connect without a certificate (they then prove who they are per request,
    /// with a WIT and a WPT or an HTTP signature); a certificate a client does present must
    /// still verify.
    pub fn optional(mut self) -> Self {
        self.optional = true;
        self
    }
}

impl ClientCertVerifier for WicClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        !self.optional
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        let (id, verifiers) = self.anchors.for_peer(end_entity)?;
        let verified = verifiers.client.verify_client_cert(end_entity, intermediates, now);
        if let Err(e) = &verified {
            tracing::warn!(peer = %id, error = %e, "wimse: client certificate refused");
        }
        verified
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.anchors.verify12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.anchors.verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.anchors.schemes()
    }
}

type ExpectedFn = dyn Fn(&ServerName<'_>) -> Option<WorkloadId> + Send + Sync;

/// Verifies server WICs on a client: one URI SAN, chain to that trust domain's anchors,
/// `serverAuth` EKU, validity, the name the client connected to (DNS-ID or IP per RFC 9525),
/// and the workload expected for that name.
///
/// By default a server is accepted only when [`expect`](Self::expect) names the workload that
/// must serve the name the client connects to: a DNS name in a WIC proves only that some
/// trusted workload obtained it, so without the mapping any workload of a trusted domain could
/// impersonate any server. [`any_trusted_workload`](Self::any_trusted_workload) is the weaker,
/// explicit choice.
#[derive(Clone)]
pub struct WicServerVerifier {
    anchors: WicAnchors,
    expected: Option<Arc<ExpectedFn>>,
    any_workload: bool,
}

impl fmt::Debug for WicServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WicServerVerifier").field("anchors", &self.anchors).finish_non_exhaustive()
    }
}

impl WicServerVerifier {
    /// Verifies against `anchors`; add [`expect`](Self::expect) (or, knowingly,
    /// [`any_trusted_workload`](Self::any_trusted_workload)): until then every server is
    /// refused ([`ErrorKind::UnexpectedPeer`]).
    pub fn new(anchors: WicAnchors) -> Self {
        Self { anchors, expected: None, any_workload: false }
    }

    /// Maps the server name the client connects to onto the workload it must be. A name the map
    /// does not know (`None`) is refused unless [`any_trusted_workload`](Self::any_trusted_workload)
    /// was chosen.
    pub fn expect(mut self, map: impl Fn(&ServerName<'_>) -> Option<WorkloadId> + Send + Sync + 'static) -> Self {
        self.expected = Some(Arc::new(map));
        self
    }

    /// Accepts any workload of a trusted domain for a server name [`expect`](Self::expect) does
    /// not map: only where every workload that can obtain a WIC naming a server is trusted to
    /// serve it (the identity server's per-client `allowed_dns_names` is then the only guard).
    pub fn any_trusted_workload(mut self) -> Self {
        self.any_workload = true;
        self
    }
}

impl ServerCertVerifier for WicServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let (id, verifiers) = self.anchors.for_peer(end_entity)?;
        verifiers.server.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        match self.expected.as_ref().and_then(|map| map(server_name)) {
            Some(expected) if expected != id => {
                Err(tls_error(cert_error(ErrorKind::UnexpectedPeer, format!("{server_name:?} presented {id}"))))
            }
            Some(_) => Ok(ServerCertVerified::assertion()),
            None if self.any_workload => Ok(ServerCertVerified::assertion()),
            None => Err(tls_error(cert_error(
                ErrorKind::UnexpectedPeer,
                format!("no workload is expected for {server_name:?} (WicServerVerifier::expect)"),
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.anchors.verify12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.anchors.verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.anchors.schemes()
    }
}

/// This workload's current certificate, for both ends of rustls, replaceable at run time
/// (rotation: new handshakes present the new certificate).
#[derive(Clone)]
pub struct CurrentCertificate {
    provider: Arc<CryptoProvider>,
    current: Arc<RwLock<Arc<CertifiedKey>>>,
}

impl fmt::Debug for CurrentCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CurrentCertificate").finish_non_exhaustive()
    }
}

impl CurrentCertificate {
    /// Starts with `certificate`.
    pub fn new(certificate: &WorkloadCertificate, provider: Arc<CryptoProvider>) -> Result<Self> {
        let current = certificate.certified_key(&provider)?;
        Ok(Self { provider, current: Arc::new(RwLock::new(current)) })
    }

    /// Replaces the certificate.
    pub fn set(&self, certificate: &WorkloadCertificate) -> Result<()> {
        let key = certificate.certified_key(&self.provider)?;
        *self
            .current
            .write()
            .map_err(|_| cert_error(ErrorKind::InvalidConfiguration, "certificate store poisoned"))? = key;
        Ok(())
    }

    fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

impl ResolvesClientCert for CurrentCertificate {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.get()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A server config that requires and verifies client WICs and presents `certificate`.
/// Session resumption is off, so every connection is verified against current anchors.
pub fn server_config(anchors: &WicAnchors, certificate: CurrentCertificate) -> Result<rustls::ServerConfig> {
    server_config_with(WicClientVerifier::new(anchors.clone()), certificate)
}

/// [`server_config`] with `verifier` for client certificates (say, an
/// [`optional`](WicClientVerifier::optional) one).
pub fn server_config_with(
    verifier: WicClientVerifier,
    certificate: CurrentCertificate,
) -> Result<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(verifier.anchors.provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| cert_error(ErrorKind::InvalidConfiguration, e.to_string()))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(certificate));
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// A client config that presents `certificate` and verifies the server with `verifier`.
/// Session resumption is off.
pub fn client_config(verifier: WicServerVerifier, certificate: CurrentCertificate) -> Result<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(verifier.anchors.provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| cert_error(ErrorKind::InvalidConfiguration, e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(certificate));
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// The identity of a peer whose chain rustls has verified with a [`WicClientVerifier`] or
/// [`WicServerVerifier`]: its workload identifier and a SHA-256 fingerprint of its leaf.
pub fn verified_peer(peer_certificates: &[CertificateDer<'_>]) -> Result<(WorkloadId, String)> {
    let leaf =
        peer_certificates.first().ok_or_else(|| cert_error(ErrorKind::InvalidCertificate, "no peer certificate"))?;
    Ok((workload_id_of(leaf)?, b64url_encode(Sha256::digest(leaf.as_ref()))))
}

#[cfg(test)]
mod tests {
    use super::{check_dns_name, check_ip_address};
    use crate::error::ErrorKind;

    fn refused(name: &str) {
        let err = check_dns_name(name).unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::InvalidSubjectAltName, "{name:?}");
    }

    #[test]
    fn dns_names_are_ldh_labels_within_their_limits() {
        let label = |n: usize| "a".repeat(n);
        for ok in [
            "a.svc.prod.example",
            "API-1.Svc.Prod.Example",
            "xn--bcher-kva.svc.prod.example",
            "*.svc.prod.example",
            "1a.example",
            "localhost",
        ] {
            check_dns_name(ok).unwrap();
        }
        check_dns_name(&format!("{}.example", label(63))).unwrap();
        // 253 bytes: 3 labels of 63, one of 61, and 3 dots.
        let longest = format!("{0}.{0}.{0}.{1}", label(63), label(61));
        assert_eq!(longest.len(), 253);
        check_dns_name(&longest).unwrap();
        for bad in [
            "",
            ".",
            "a..b.example",
            ".a.example",
            "a.example.",
            "evil.example\u{0}.svc.prod.example",
            "a/b.example",
            "a:443.example",
            "user@a.example",
            "a b.example",
            "a\nb.example",
            "-a.example",
            "a-.example",
            "a_b.example",
            "bücher.example",
            "*.example",
            "*",
            "a.*.example.com",
            "*a.example.com",
            "**.example.com",
            "10.0.0.1",
            "a.123",
        ] {
            refused(bad);
        }
        refused(&format!("{}.example", label(64)));
        refused(&format!("{}.example", label(300)));
        refused(&format!("{0}.{0}.{0}.{1}", label(63), label(62)));
        let err = check_dns_name("bücher.example").unwrap_err();
        assert!(err.detail().unwrap().contains("A-labels (xn--"), "{err:?}");
        let err = check_dns_name("a\nb.example").unwrap_err();
        assert!(!err.detail().unwrap().contains('\n'), "control characters are escaped in the detail");
    }

    #[test]
    fn ip_addresses_are_unicast_host_addresses() {
        for ok in ["10.1.2.3", "127.0.0.1", "192.0.2.7", "223.255.255.254", "::1", "2001:db8::7", "fe80::1"] {
            check_ip_address(ok.parse().unwrap()).unwrap();
        }
        for bad in [
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "240.0.0.1",
            "224.0.0.1",
            "239.1.2.3",
            "::",
            "ff02::1",
            "::ffff:10.1.2.3",
        ] {
            let err = check_ip_address(bad.parse().unwrap()).unwrap_err();
            assert_eq!(err.kind(), &ErrorKind::InvalidSubjectAltName, "{bad}");
        }
    }
}
