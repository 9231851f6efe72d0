//! TLS material for logrelay, always with rustls and its *ring* provider.
//!
//! * [`install_provider`] must run first in every `main` and test helper: another crate in the
//!   graph could otherwise make rustls pick a process-wide provider it cannot find.
//! * [`DevPki`] mints a throwaway CA, a relay certificate and agent certificates **in memory**
//!   (`--dev` mode and tests); nothing is ever written to disk.
//! * [`Identity::from_pem_files`] and [`roots_from_pem_file`] load production material.
//! * Agent identity lives in a URI SAN `spiffe://<org>/cluster/<cluster>` ([`AgentId`]).
//! * [`quic_server`] / [`quic_client`] configure the agent hop; [`quic_server_transport_with`]
//!   and [`quic_client_transport_with`] hold its QUIC transport settings (keep-alive, idle
//!   timeout: [`QuicTimers`]; stream limits), in one place for both ends;
//!   [`quic_endpoint_config`] gives the relay a stateless-reset key that survives a restart.
//! * [`reload`] watches the PEM files and re-runs a reload action when they change.
#![forbid(unsafe_code)]

pub mod reload;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Everything that can go wrong building TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("cannot load {what} from {path}: {reason}")]
    Load {
        /// Certificate, key or CA bundle.
        what: &'static str,
        /// File path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A file held no certificate or key.
    #[error("{path} contains no {what}")]
    Empty {
        /// Certificate, key or CA bundle.
        what: &'static str,
        /// File path.
        path: String,
    },
    /// rustls refused the configuration (bad key, unsupported algorithm, …).
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client certificate verifier could not be built (empty CA bundle, …).
    #[error("cannot build client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// QUIC needs TLS 1.3 with an initial cipher suite.
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(String),
    /// Minting a development certificate failed.
    #[error("cannot mint development certificate: {0}")]
    Mint(#[from] rcgen::Error),
}

/// The crypto provider logrelay uses everywhere.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs the *ring* provider as the process default. Idempotent; call first thing in `main`.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct Identity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// Loads a PEM certificate chain and a PEM private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let chain = certs_from_pem_file(cert, "certificate")?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Load {
            what: "private key",
            path: key.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Self { chain, key })
    }
}

fn certs_from_pem_file(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let load_err = |reason: String| TlsError::Load {
        what,
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| load_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| load_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

/// Loads a PEM CA bundle as a root store.
pub fn roots_from_pem_file(path: &Path) -> Result<RootCertStore, TlsError> {
    let certs = certs_from_pem_file(path, "CA certificate")?;
    roots_from_der(&certs).map_err(|e| TlsError::Load {
        what: "CA certificate",
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// A root store from DER certificates.
pub fn roots_from_der(certs: &[CertificateDer<'static>]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots.add(c.clone())?;
    }
    Ok(roots)
}

/// Who an agent is, as its certificate says.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AgentId {
    /// Tenant.
    pub org: String,
    /// Cluster within the tenant.
    pub cluster: String,
}

impl AgentId {
    /// The URI SAN naming this identity: `spiffe://<org>/cluster/<cluster>`.
    pub fn uri(&self) -> String {
        format!("spiffe://{}/cluster/{}", self.org, self.cluster)
    }

    /// Parses `spiffe://<org>/cluster/<cluster>`.
    pub fn parse_uri(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix("spiffe://")?;
        let (org, rest) = rest.split_once('/')?;
        let cluster = rest.strip_prefix("cluster/")?;
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        };
        (valid(org) && valid(cluster)).then(|| Self {
            org: org.to_owned(),
            cluster: cluster.to_owned(),
        })
    }

    /// Reads the identity from a (verified) agent certificate: the first URI SAN that parses.
    pub fn from_cert(cert: &CertificateDer<'_>) -> Option<Self> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
        let san = parsed.subject_alternative_name().ok()??;
        san.value.general_names.iter().find_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Self::parse_uri(u),
            _ => None,
        })
    }
}

/// A throwaway certificate authority held in memory only.
#[derive(Debug)]
pub struct DevPki {
    ca: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl DevPki {
    /// Mints a new CA.
    pub fn new() -> Result<Self, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "logrelay dev CA (in memory)");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let ca = params.self_signed(&key)?.der().clone();
        Ok(Self {
            ca,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate.
    pub fn ca(&self) -> CertificateDer<'static> {
        self.ca.clone()
    }

    /// The CA certificate as PEM (for tests that exercise file loading).
    pub fn ca_pem(&self) -> String {
        pem("CERTIFICATE", &self.ca)
    }

    /// A root store trusting this CA.
    pub fn roots(&self) -> RootCertStore {
        roots_from_der(&[self.ca()]).expect("a freshly minted CA is a valid root")
    }

    /// A server certificate for the given DNS names / IP addresses.
    pub fn server(&self, names: &[&str]) -> Result<Identity, TlsError> {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("relay"),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.leaf(params)
    }

    /// An agent (client) certificate naming `id` in a URI SAN.
    pub fn agent(&self, id: &AgentId) -> Result<Identity, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = vec![SanType::URI(id.uri().try_into()?)];
        params.distinguished_name.push(
            DnType::CommonName,
            format!("agent {}/{}", id.org, id.cluster),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.leaf(params)
    }

    fn leaf(&self, mut params: CertificateParams) -> Result<Identity, TlsError> {
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Identity {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::try_from(key.serialize_der())
                .map_err(|e| TlsError::Quic(e.to_string()))?,
        })
    }
}

/// PEM-encodes DER bytes (used only to hand material to tests and tools in memory).
pub fn pem(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len() * 4 / 3 + 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Relay side of the agent hop: TLS 1.3, ALPN `logrelay/1`, client certificates required and
/// verified against `agent_roots`.
pub fn quic_server(
    identity: Identity,
    agent_roots: RootCertStore,
) -> Result<quinn::ServerConfig, TlsError> {
    let provider = provider();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(agent_roots),
        provider.clone(),
    )
    .build()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain, identity.key)?;
    tls.alpn_protocols = vec![logrelay_alpn()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(tls))
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
}

/// Agent side of the agent hop: TLS 1.3, ALPN `logrelay/1`, presenting `identity`, trusting
/// `relay_roots` only.
pub fn quic_client(
    identity: Identity,
    relay_roots: RootCertStore,
) -> Result<quinn::ClientConfig, TlsError> {
    quic_client_with_alpn(identity, relay_roots, vec![logrelay_alpn()])
}

/// Like [`quic_client`] with chosen ALPN protocols (tests use it to offer a wrong one).
pub fn quic_client_with_alpn(
    identity: Identity,
    relay_roots: RootCertStore,
    alpn: Vec<Vec<u8>>,
) -> Result<quinn::ClientConfig, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(relay_roots)
        .with_client_auth_cert(identity.chain, identity.key)?;
    tls.alpn_protocols = alpn;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

/// Default interval between QUIC keep-alive PINGs on the agent hop, both ends: a few per idle
/// timeout, so a quiet but healthy connection stays open and a dead one is noticed at once.
pub const QUIC_KEEP_ALIVE_MS: u64 = 400;
/// Default idle timeout of the agent hop: a connection that hears nothing for this long is
/// closed (the smaller of the two ends' values applies).
pub const QUIC_IDLE_TIMEOUT_MS: u64 = 1_200;
/// Unidirectional streams an agent may have open at once: one data stream per `open` demand.
pub const QUIC_MAX_CONCURRENT_UNI_STREAMS: u32 = 4096;
/// Bidirectional streams an agent may open: the control stream only.
pub const QUIC_MAX_CONCURRENT_BIDI_STREAMS: u32 = 1;
/// Flow-control window of one agent stream at the relay, in bytes.
pub const QUIC_STREAM_RECEIVE_WINDOW_BYTES: u32 = 4 * 1024 * 1024;
/// Flow-control window of one agent connection at the relay, in bytes.
pub const QUIC_RECEIVE_WINDOW_BYTES: u32 = 16 * 1024 * 1024;

/// How quickly the agent hop finds a dead peer: keep-alive PINGs every `keep_alive`, and a
/// connection that hears nothing for `idle_timeout` is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuicTimers {
    /// Interval between keep-alive PINGs.
    pub keep_alive: Duration,
    /// Silence after which the connection is closed.
    pub idle_timeout: Duration,
}

impl Default for QuicTimers {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_millis(QUIC_KEEP_ALIVE_MS),
            idle_timeout: Duration::from_millis(QUIC_IDLE_TIMEOUT_MS),
        }
    }
}

impl QuicTimers {
    /// From milliseconds; the keep-alive is kept under the idle timeout (at most half of it),
    /// and neither is below 10 ms.
    pub fn from_millis(keep_alive_ms: u64, idle_timeout_ms: u64) -> Self {
        let idle = idle_timeout_ms.clamp(10, 1 << 40);
        Self {
            keep_alive: Duration::from_millis(keep_alive_ms.clamp(5, idle / 2)),
            idle_timeout: Duration::from_millis(idle),
        }
    }
}

/// Transport settings of the agent side of the agent hop (use with [`quic_client`]) with the
/// default [`QuicTimers`].
pub fn quic_client_transport() -> quinn::TransportConfig {
    quic_client_transport_with(QuicTimers::default())
}

/// Transport settings of the agent side of the agent hop: keep-alive and idle timeout.
pub fn quic_client_transport_with(timers: QuicTimers) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(timers.keep_alive));
    transport.max_idle_timeout(Some(
        timers
            .idle_timeout
            .try_into()
            .expect("clamped to fit a VarInt"),
    ));
    transport
}

/// Transport settings of the relay side of the agent hop (use with [`quic_server`]) with the
/// default [`QuicTimers`].
pub fn quic_server_transport() -> quinn::TransportConfig {
    quic_server_transport_with(QuicTimers::default())
}

/// Transport settings of the relay side of the agent hop: those of
/// [`quic_client_transport_with`], plus the stream limits and receive windows granted to an
/// agent.
pub fn quic_server_transport_with(timers: QuicTimers) -> quinn::TransportConfig {
    let mut transport = quic_client_transport_with(timers);
    transport.max_concurrent_uni_streams(QUIC_MAX_CONCURRENT_UNI_STREAMS.into());
    transport.max_concurrent_bidi_streams(QUIC_MAX_CONCURRENT_BIDI_STREAMS.into());
    transport.stream_receive_window(QUIC_STREAM_RECEIVE_WINDOW_BYTES.into());
    transport.receive_window(QUIC_RECEIVE_WINDOW_BYTES.into());
    transport
}

/// The relay's QUIC endpoint settings, with a stateless-reset key derived from `secret` (the
/// DER of the relay's private key): a relay restarted with the same key answers packets of
/// connections it no longer knows with a stateless reset (RFC 9000, 10.3), so an agent learns
/// at its next packet that the connection is gone instead of waiting out the idle timeout.
/// The key is HMAC-SHA256 of `secret` under a fixed label; the secret itself never leaves.
pub fn quic_endpoint_config(secret: &[u8]) -> quinn::EndpointConfig {
    quinn::EndpointConfig::new(stateless_reset_key(secret))
}

/// The stateless-reset key of [`quic_endpoint_config`].
pub fn stateless_reset_key(secret: &[u8]) -> Arc<dyn quinn::crypto::HmacKey> {
    use ring::hmac;
    let label = hmac::Key::new(hmac::HMAC_SHA256, b"logrelay/1 QUIC stateless reset key");
    let derived = hmac::sign(&label, secret);
    Arc::new(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()))
}

fn logrelay_alpn() -> Vec<u8> {
    b"logrelay/1".to_vec()
}

/// Session side (WSS) of the relay: TLS 1.2 or 1.3, ALPN `http/1.1`.
pub fn https_server(identity: Identity) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// A client config trusting `roots` (the `tail` command and tests, for WSS).
pub fn https_client(roots: RootCertStore) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_identity_round_trips_through_a_certificate() {
        install_provider();
        let pki = DevPki::new().unwrap();
        let id = AgentId {
            org: "acme".into(),
            cluster: "prod-1".into(),
        };
        let ident = pki.agent(&id).unwrap();
        assert_eq!(AgentId::from_cert(&ident.chain[0]), Some(id));
        let server = pki.server(&["localhost"]).unwrap();
        assert_eq!(AgentId::from_cert(&server.chain[0]), None);
    }

    #[test]
    fn spiffe_uris_are_strict() {
        assert!(AgentId::parse_uri("spiffe://acme/cluster/c1").is_some());
        assert!(AgentId::parse_uri("spiffe://acme/cluster/").is_none());
        assert!(AgentId::parse_uri("spiffe://acme/node/c1").is_none());
        assert!(AgentId::parse_uri("https://acme/cluster/c1").is_none());
        assert!(AgentId::parse_uri("spiffe://ac me/cluster/c1").is_none());
    }

    #[test]
    fn pem_output_parses_back() {
        install_provider();
        let pki = DevPki::new().unwrap();
        let der = CertificateDer::from_pem_slice(pki.ca_pem().as_bytes()).unwrap();
        assert_eq!(der, pki.ca());
    }

    #[test]
    fn configs_build() {
        install_provider();
        let pki = DevPki::new().unwrap();
        let id = AgentId {
            org: "o".into(),
            cluster: "c".into(),
        };
        quic_server(pki.server(&["127.0.0.1"]).unwrap(), pki.roots()).unwrap();
        quic_client(pki.agent(&id).unwrap(), pki.roots()).unwrap();
        https_server(pki.server(&["localhost"]).unwrap()).unwrap();
    }

    #[test]
    fn transports_build() {
        // The idle timeout must fit a QUIC VarInt; the keep-alive must beat it.
        const { assert!(QUIC_KEEP_ALIVE_MS * 2 <= QUIC_IDLE_TIMEOUT_MS) };
        quic_client_transport();
        quic_server_transport();
        let t = QuicTimers::from_millis(5_000, 1_000);
        assert_eq!(
            t.keep_alive,
            Duration::from_millis(500),
            "kept under the idle timeout"
        );
        quic_server_transport_with(QuicTimers::from_millis(0, u64::MAX));
    }

    #[test]
    fn the_reset_key_is_a_function_of_the_secret() {
        let sign = |secret: &[u8]| {
            let key = stateless_reset_key(secret);
            let mut out = vec![0u8; key.signature_len()];
            key.sign(b"connection id", &mut out);
            out
        };
        quic_endpoint_config(b"key one");
        assert_eq!(sign(b"key one"), sign(b"key one"), "stable across restarts");
        assert_ne!(sign(b"key one"), sign(b"key two"));
    }
}
