//! Credentials of a scrape: the TLS client of an `https://` target and its bearer token, made
//! from a target's [`ScrapeAuth`].
//!
//! As Prometheus does with `tls_config.ca_file` and `authorization.credentials_file`, the files
//! are read at each scrape, so a rotated CA bundle or a projected service-account token (which
//! kubelet rewrites every hour) is used without a restart; [`check`] reads them once at start-up
//! so that a wrong path stops the agent at once instead of failing every scrape.
//!
//! TLS is rustls with the *ring* provider (TLS 1.2 and 1.3). The certificate must chain to one
//! of the target's CA files and carry the URL's host (or `server_name`) as a DNS or IP SAN. With
//! `insecure_skip_verify` any certificate is accepted (the handshake signature is still
//! checked, so the connection is encrypted, but the target is not authenticated); the agent
//! warns about it at start-up ([`warnings`]). There are no built-in roots: an `https://` target
//! needs a CA file or `insecure_skip_verify`.
//!
//! The token is never logged, never put in an error, and `Credentials`' `Debug` hides it.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::AsyncReadExt;

use super::http::{Credentials, Scheme, TlsClient, Url};
use super::target::ScrapeAuth;

/// The CA bundle of the cluster, mounted into every pod with a service account token
/// (`--scrape-ca-cluster`).
pub const CLUSTER_CA_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// Largest CA or token file read.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Why a scrape's credentials could not be made (the scrape fails with `up` 0, or the agent
/// does not start when found at start-up).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// A CA file could not be read, holds no certificate, or holds one rustls refuses.
    #[error("cannot load scrape CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The bearer token file could not be read, is empty, or holds characters an HTTP header
    /// cannot carry.
    #[error("cannot use bearer token file {path}: {reason}")]
    TokenFile {
        /// The file.
        path: String,
        /// Why (never the token).
        reason: String,
    },
    /// An `https://` target with no CA file and verification not skipped.
    #[error(
        "https target {url} has no CA to verify it: set ca_file=, --scrape-ca-file or --scrape-ca-cluster (or insecure_skip_verify=true)"
    )]
    NoCa {
        /// The target.
        url: String,
    },
    /// `server_name` (or the URL's host) is neither a DNS name nor an IP address.
    #[error("{0:?} is not a name a TLS certificate can carry")]
    ServerName(String),
}

/// The credentials of one scrape of `url`, reading the files `auth` names.
pub async fn load(url: &Url, auth: &ScrapeAuth) -> Result<Credentials, CredentialsError> {
    let mut cas = Vec::new();
    if url.scheme == Scheme::Https && !auth.insecure_skip_verify {
        for path in &auth.ca_files {
            let pem = read_async(path)
                .await
                .map_err(|reason| ca_error(path, reason))?;
            cas.push((path.as_path(), pem));
        }
    }
    let token = match &auth.bearer_token_file {
        Some(path) => Some((
            path.as_path(),
            read_async(path)
                .await
                .map_err(|reason| token_error(path, reason))?,
        )),
        None => None,
    };
    assemble(url, auth, &cas, token)
}

/// Makes the credentials of `url` once, reading the files with blocking I/O: a start-up check.
pub fn check(url: &Url, auth: &ScrapeAuth) -> Result<(), CredentialsError> {
    let mut cas = Vec::new();
    if url.scheme == Scheme::Https && !auth.insecure_skip_verify {
        for path in &auth.ca_files {
            let pem = read_blocking(path).map_err(|reason| ca_error(path, reason))?;
            cas.push((path.as_path(), pem));
        }
    }
    let token = match &auth.bearer_token_file {
        Some(path) => Some((
            path.as_path(),
            read_blocking(path).map_err(|reason| token_error(path, reason))?,
        )),
        None => None,
    };
    assemble(url, auth, &cas, token).map(drop)
}

/// Checks the CA files of `auth` that annotated pods would use (no URL yet).
pub fn check_ca_files(auth: &ScrapeAuth) -> Result<(), CredentialsError> {
    if auth.insecure_skip_verify {
        return Ok(());
    }
    let mut cas = Vec::new();
    for path in &auth.ca_files {
        let pem = read_blocking(path).map_err(|reason| ca_error(path, reason))?;
        cas.push((path.as_path(), pem));
    }
    verifying_config(&cas).map(drop)
}

/// What an operator should be warned about in a target's settings, one sentence each.
pub fn warnings(url: &Url, auth: &ScrapeAuth) -> Vec<&'static str> {
    let mut out = Vec::new();
    if url.scheme == Scheme::Https && auth.insecure_skip_verify {
        out.push(
            "TLS certificate of the scrape target is NOT verified (insecure_skip_verify): \
             anyone who can answer on its address can pose as it",
        );
    }
    if url.scheme == Scheme::Http && auth.bearer_token_file.is_some() {
        out.push("the bearer token is sent to the scrape target over plain http, unencrypted");
    }
    out
}

/// The credentials from file contents (pure but for building the rustls configuration).
fn assemble(
    url: &Url,
    auth: &ScrapeAuth,
    cas: &[(&Path, Vec<u8>)],
    token: Option<(&Path, Vec<u8>)>,
) -> Result<Credentials, CredentialsError> {
    let authorization = match token {
        Some((path, bytes)) => Some(format!(
            "Bearer {}",
            bearer_token(&bytes).map_err(|reason| token_error(path, reason.to_owned()))?
        )),
        None => None,
    };
    let tls = match url.scheme {
        Scheme::Http => None,
        Scheme::Https => {
            let name = auth.server_name.as_deref().unwrap_or(&url.host);
            let server_name = ServerName::try_from(name.to_owned())
                .map_err(|_| CredentialsError::ServerName(name.to_owned()))?;
            let config = if auth.insecure_skip_verify {
                unverified_config()
            } else if cas.is_empty() {
                return Err(CredentialsError::NoCa {
                    url: url.to_string(),
                });
            } else {
                verifying_config(cas)?
            };
            Some(TlsClient {
                config,
                server_name,
            })
        }
    };
    Ok(Credentials { tls, authorization })
}

/// The token in a token file: surrounding blanks trimmed; it must be non-empty visible ASCII,
/// so it cannot break out of its header.
fn bearer_token(bytes: &[u8]) -> Result<&str, &'static str> {
    let token = bytes.trim_ascii();
    if token.is_empty() {
        return Err("the file is empty");
    }
    if !token.iter().all(|b| b.is_ascii_graphic()) {
        return Err("the token holds characters an HTTP header cannot carry");
    }
    Ok(std::str::from_utf8(token).expect("ASCII is UTF-8"))
}

/// A client configuration trusting exactly the certificates in `cas`.
fn verifying_config(
    cas: &[(&Path, Vec<u8>)],
) -> Result<Arc<rustls::ClientConfig>, CredentialsError> {
    let mut roots = rustls::RootCertStore::empty();
    for (path, pem) in cas {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ca_error(path, e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_error(path, "no PEM certificate in it".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| ca_error(path, e.to_string()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(logrelay_tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(with_alpn(config)))
}

/// A client configuration that accepts any certificate (`insecure_skip_verify`).
fn unverified_config() -> Arc<rustls::ClientConfig> {
    let provider = logrelay_tls::provider();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SkipVerify(provider)))
        .with_no_client_auth();
    Arc::new(with_alpn(config))
}

/// Offers `http/1.1` (a server that also speaks HTTP/2 then knows which to use).
fn with_alpn(mut config: rustls::ClientConfig) -> rustls::ClientConfig {
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// Accepts any server certificate, but checks that the server holds its key (the handshake
/// signature), as Go's `InsecureSkipVerify` does.
#[derive(Debug)]
struct SkipVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn ca_error(path: &Path, reason: String) -> CredentialsError {
    CredentialsError::CaFile {
        path: path.display().to_string(),
        reason,
    }
}

fn token_error(path: &Path, reason: String) -> CredentialsError {
    CredentialsError::TokenFile {
        path: path.display().to_string(),
        reason,
    }
}

fn too_large() -> String {
    format!("larger than {MAX_FILE_BYTES} bytes")
}

async fn read_async(path: &Path) -> Result<Vec<u8>, String> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut out)
        .await
        .map_err(|e| e.to_string())?;
    if out.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large());
    }
    Ok(out)
}

fn read_blocking(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    if out.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        s.parse().unwrap()
    }

    fn ca_pem() -> Vec<u8> {
        logrelay_tls::install_provider();
        logrelay_tls::DevPki::new().unwrap().ca_pem().into_bytes()
    }

    #[test]
    fn tokens_are_trimmed_and_refused_when_they_could_break_a_header() {
        assert_eq!(bearer_token(b"  abc.def-ghi_\n"), Ok("abc.def-ghi_"));
        assert!(bearer_token(b"\n \t").is_err());
        assert!(bearer_token(b"abc\r\nX-Injected: 1").is_err());
        assert!(bearer_token("tök".as_bytes()).is_err());
    }

    #[test]
    fn https_needs_a_ca_unless_verification_is_skipped() {
        let u = url("https://10.0.0.7:8443/metrics");
        let err = assemble(&u, &ScrapeAuth::default(), &[], None).unwrap_err();
        assert_eq!(
            err,
            CredentialsError::NoCa {
                url: "https://10.0.0.7:8443/metrics".into()
            }
        );
        let pem = ca_pem();
        let c = assemble(
            &u,
            &ScrapeAuth::default(),
            &[(Path::new("ca.pem"), pem)],
            None,
        )
        .unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(
            tls.server_name,
            ServerName::try_from("10.0.0.7").unwrap(),
            "the URL's IP is what the certificate must carry"
        );
        let skip = ScrapeAuth {
            insecure_skip_verify: true,
            server_name: Some("exporter.internal".into()),
            ..ScrapeAuth::default()
        };
        let tls = assemble(&u, &skip, &[], None).unwrap().tls.unwrap();
        assert_eq!(
            tls.server_name,
            ServerName::try_from("exporter.internal").unwrap()
        );
    }

    #[test]
    fn bad_files_say_which_and_why_without_the_token() {
        let u = url("https://h/metrics");
        let err = assemble(
            &u,
            &ScrapeAuth::default(),
            &[(Path::new("/etc/ca.pem"), b"not a certificate".to_vec())],
            None,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot load scrape CA file /etc/ca.pem: "),
            "{err}"
        );
        let err = assemble(
            &url("http://h/metrics"),
            &ScrapeAuth::default(),
            &[],
            Some((Path::new("/run/token"), b"secret\x07value".to_vec())),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot use bearer token file /run/token: the token holds characters an HTTP header cannot carry"
        );
        assert!(!err.to_string().contains("secret"));
    }

    #[test]
    fn plain_http_gets_no_tls_but_its_token_and_a_warning() {
        let auth = ScrapeAuth {
            bearer_token_file: Some("/run/token".into()),
            ..ScrapeAuth::default()
        };
        let u = url("http://h:9100/metrics");
        let c = assemble(
            &u,
            &auth,
            &[],
            Some((Path::new("/run/token"), b"t0k\n".to_vec())),
        )
        .unwrap();
        assert!(c.tls.is_none());
        assert_eq!(c.authorization.as_deref(), Some("Bearer t0k"));
        assert_eq!(warnings(&u, &auth).len(), 1);
        let skip = ScrapeAuth {
            insecure_skip_verify: true,
            ..ScrapeAuth::default()
        };
        assert!(warnings(&url("https://h/"), &skip)[0].contains("NOT verified"));
        assert!(warnings(&url("http://h/"), &skip).is_empty());
    }

    #[test]
    fn files_are_read_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; MAX_FILE_BYTES as usize + 1]).unwrap();
        assert_eq!(read_blocking(&big), Err(too_large()));
        let missing = dir.path().join("missing");
        let auth = ScrapeAuth {
            ca_files: vec![missing.clone()],
            ..ScrapeAuth::default()
        };
        let err = check(&url("https://h/"), &auth).unwrap_err();
        assert!(matches!(err, CredentialsError::CaFile { .. }), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
        // A plain http target does not need the CA file at all.
        check(&url("http://h/"), &auth).unwrap();
    }
}
