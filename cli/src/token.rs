//! `logrelay token`: session tokens for testing and small deployments, signed with a key the
//! relay trusts through its JWKS (`--token-jwks-file`). See docs/security.md, "Session tokens".
//!
//! * `keygen` writes a new Ed25519 private key (PKCS#8 PEM, mode 0600) and a JWKS holding its
//!   public key, with `kid` = the key's RFC 7638 thumbprint.
//! * `jwks` prints the JWKS of an existing Ed25519 or P-256 PKCS#8 key (e.g. one made with
//!   `openssl genpkey -algorithm ed25519`).
//! * `mint` prints a signed token (EdDSA, or ES256 for a P-256 key) for an org, with at most one
//!   role binding, living `--ttl`.
//!
//! Nothing here is used by the relay; it only reads the JWKS.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};

/// `logrelay token …`
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Write a new Ed25519 signing key and the JWKS the relay reads (`--token-jwks-file`).
    Keygen(KeygenArgs),
    /// Print the JWKS (public key, `kid`) of an existing Ed25519 or P-256 PKCS#8 key.
    Jwks(JwksArgs),
    /// Print a signed session token.
    Mint(MintArgs),
}

#[derive(Debug, clap::Args)]
struct KeygenArgs {
    /// Where to write the private key (PKCS#8 PEM, mode 0600). Never overwritten.
    #[arg(long)]
    private_key_file: PathBuf,
    /// Where to write the JWKS with the public key. Never overwritten.
    #[arg(long)]
    jwks_file: PathBuf,
    /// Key id (`kid`); default: the key's RFC 7638 thumbprint, which `mint` computes too.
    #[arg(long)]
    kid: Option<String>,
}

#[derive(Debug, clap::Args)]
struct JwksArgs {
    /// The private key (PKCS#8 PEM, Ed25519 or P-256).
    #[arg(long)]
    key_file: PathBuf,
    /// Key id (`kid`); default: the key's RFC 7638 thumbprint.
    #[arg(long)]
    kid: Option<String>,
}

/// A role of the platform's RBAC model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Role {
    Viewer,
    Contributor,
    Admin,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Contributor => "contributor",
            Self::Admin => "admin",
        }
    }
}

#[derive(Debug, clap::Args)]
struct MintArgs {
    /// The signing key (PKCS#8 PEM, Ed25519 or P-256), e.g. from `logrelay token keygen`.
    #[arg(long)]
    key_file: PathBuf,
    /// Key id (`kid`) in the token's header; default: the key's RFC 7638 thumbprint.
    #[arg(long)]
    kid: Option<String>,
    /// The tenant (`org`): the only org the session may see.
    #[arg(long)]
    org: String,
    /// A role binding (`viewer`, `contributor`, `admin`: each may read logs and metrics);
    /// without it the token connects but may read nothing.
    #[arg(long, value_enum)]
    role: Option<Role>,
    /// Narrow the role to one domain (`scope.domain`).
    #[arg(long, requires = "role")]
    domain: Option<String>,
    /// Narrow the role to one project of `--domain` (`scope.project`).
    #[arg(long, requires = "domain")]
    project: Option<String>,
    /// Lifetime: seconds, or a number with `s`, `m`, `h` or `d` (`90s`, `15m`, `1h`, `7d`).
    /// Relays refuse tokens living longer than their `--max-token-lifetime-secs` (24 h by
    /// default).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: u64,
    /// Subject (`sub`): who the session is, as the audit trail names it.
    #[arg(long, default_value = "logrelay-cli")]
    sub: String,
    /// Issuer (`iss`), for relays started with `--token-issuer`.
    #[arg(long)]
    iss: Option<String>,
    /// Audience (`aud`), for relays started with `--token-audience`.
    #[arg(long)]
    aud: Option<String>,
}

/// Why a token command failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The key file holds no usable key.
    #[error("{path}: {reason}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A scope value is empty.
    #[error("--{0} must not be empty")]
    Empty(&'static str),
}

/// Runs `logrelay token …`: `mint` and `jwks` print what they make to stdout; `keygen` writes
/// its files and says so on stderr.
pub fn run(args: TokenArgs) -> Result<(), TokenError> {
    let out = match args.command {
        TokenCommand::Keygen(a) => {
            eprint!("{}", keygen(&a)?);
            return Ok(());
        }
        TokenCommand::Jwks(a) => {
            let key = SigningKey::load(&a.key_file)?;
            let kid = a.kid.unwrap_or_else(|| key.thumbprint());
            format!("{}\n", key.jwks(&kid))
        }
        TokenCommand::Mint(a) => format!("{}\n", mint(&a, now_unix_secs())?),
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|source| TokenError::Io {
            path: "stdout".into(),
            source,
        })
}

fn now_unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Parses a lifetime: `3600`, `90s`, `15m`, `1h`, `7d`.
fn parse_ttl(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}`: expected a number with s, m, h or d"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{text}`: the unit must be s, m, h or d")),
    };
    match n.checked_mul(scale) {
        Some(0) => Err("the lifetime must be positive".into()),
        Some(secs) => Ok(secs),
        None => Err(format!("`{text}` is too long")),
    }
}

fn keygen(a: &KeygenArgs) -> Result<String, TokenError> {
    let pkcs8 =
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| TokenError::Key {
            path: a.private_key_file.display().to_string(),
            reason: "no randomness to generate a key".into(),
        })?;
    let key = SigningKey::from_pkcs8(pkcs8.as_ref()).ok_or_else(|| TokenError::Key {
        path: a.private_key_file.display().to_string(),
        reason: "generated key unusable".into(),
    })?;
    let kid = a.kid.clone().unwrap_or_else(|| key.thumbprint());
    write_new(
        &a.private_key_file,
        &logrelay_tls::pem("PRIVATE KEY", pkcs8.as_ref()),
        0o600,
    )?;
    write_new(&a.jwks_file, &format!("{}\n", key.jwks(&kid)), 0o644)?;
    Ok(format!(
        "wrote {} (private key, keep it secret) and {} (kid {kid}): start the relay with \
         --token-jwks-file {}\n",
        a.private_key_file.display(),
        a.jwks_file.display(),
        a.jwks_file.display()
    ))
}

/// Creates `path` with `text`, refusing to replace an existing file.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), TokenError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| TokenError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)
}

/// The token `a` asks for, issued at `now`.
fn mint(a: &MintArgs, now: u64) -> Result<String, TokenError> {
    if a.org.is_empty() {
        return Err(TokenError::Empty("org"));
    }
    let key = SigningKey::load(&a.key_file)?;
    let kid = a.kid.clone().unwrap_or_else(|| key.thumbprint());
    let mut claims = json!({
        "sub": a.sub,
        "org": a.org,
        "iat": now,
        "exp": now.saturating_add(a.ttl),
    });
    if let Some(role) = a.role {
        let mut scope = serde_json::Map::new();
        if let Some(d) = &a.domain {
            if d.is_empty() {
                return Err(TokenError::Empty("domain"));
            }
            scope.insert("domain".into(), d.clone().into());
        }
        if let Some(p) = &a.project {
            if p.is_empty() {
                return Err(TokenError::Empty("project"));
            }
            scope.insert("project".into(), p.clone().into());
        }
        let mut binding = json!({ "role": role.name() });
        if !scope.is_empty() {
            binding["scope"] = Value::Object(scope);
        }
        claims["roles"] = json!([binding]);
    }
    if let Some(iss) = &a.iss {
        claims["iss"] = iss.clone().into();
    }
    if let Some(aud) = &a.aud {
        claims["aud"] = aud.clone().into();
    }
    Ok(key.sign_token(&kid, &claims))
}

/// A private key that signs session tokens.
enum SigningKey {
    Ed25519(Ed25519KeyPair),
    P256(EcdsaKeyPair),
}

impl SigningKey {
    fn load(path: &Path) -> Result<Self, TokenError> {
        let shown = path.display().to_string();
        let key = PrivateKeyDer::from_pem_file(path).map_err(|e| TokenError::Key {
            path: shown.clone(),
            reason: format!("not a PEM private key: {e}"),
        })?;
        let PrivateKeyDer::Pkcs8(der) = key else {
            return Err(TokenError::Key {
                path: shown,
                reason: "expected a PKCS#8 key (`BEGIN PRIVATE KEY`)".into(),
            });
        };
        Self::from_pkcs8(der.secret_pkcs8_der()).ok_or(TokenError::Key {
            path: shown,
            reason: "expected an Ed25519 or P-256 key".into(),
        })
    }

    fn from_pkcs8(der: &[u8]) -> Option<Self> {
        if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            return Some(Self::Ed25519(k));
        }
        EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            der,
            &SystemRandom::new(),
        )
        .ok()
        .map(Self::P256)
    }

    fn alg(&self) -> &'static str {
        match self {
            Self::Ed25519(_) => "EdDSA",
            Self::P256(_) => "ES256",
        }
    }

    /// The public JWK's members, in RFC 7638's lexicographic order (`kid` excluded).
    fn jwk_members(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::Ed25519(k) => vec![
                ("crv", "Ed25519".into()),
                ("kty", "OKP".into()),
                ("x", b64url(k.public_key().as_ref())),
            ],
            Self::P256(k) => {
                // Uncompressed point: 04 || x || y.
                let p = k.public_key().as_ref();
                vec![
                    ("crv", "P-256".into()),
                    ("kty", "EC".into()),
                    ("x", b64url(&p[1..33])),
                    ("y", b64url(&p[33..65])),
                ]
            }
        }
    }

    /// RFC 7638 thumbprint: base64url(SHA-256(the required members, sorted, no spaces)).
    fn thumbprint(&self) -> String {
        let canonical = serde_json::Value::Object(
            self.jwk_members()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), Value::String(v)))
                .collect(),
        );
        // serde_json's map keeps keys sorted, which is the order RFC 7638 asks for.
        let digest = ring::digest::digest(&ring::digest::SHA256, canonical.to_string().as_bytes());
        b64url(digest.as_ref())
    }

    /// A JWKS document holding this key's public part.
    fn jwks(&self, kid: &str) -> String {
        let mut jwk: serde_json::Map<String, Value> = self
            .jwk_members()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Value::String(v)))
            .collect();
        jwk.insert("kid".into(), kid.into());
        jwk.insert("alg".into(), self.alg().into());
        jwk.insert("use".into(), "sig".into());
        json!({ "keys": [jwk] }).to_string()
    }

    /// A JWS compact token over `claims`.
    fn sign_token(&self, kid: &str, claims: &Value) -> String {
        let header = json!({ "alg": self.alg(), "typ": "JWT", "kid": kid });
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let sig = match self {
            Self::Ed25519(k) => k.sign(input.as_bytes()).as_ref().to_vec(),
            Self::P256(k) => k
                .sign(&SystemRandom::new(), input.as_bytes())
                .map(|s| s.as_ref().to_vec())
                .unwrap_or_default(),
        };
        format!("{input}.{}", b64url(&sig))
    }
}

/// Unpadded base64url (RFC 4648 §5).
fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            let _ = out.write_char(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_parse_with_units() {
        assert_eq!(parse_ttl("3600"), Ok(3600));
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("15m"), Ok(900));
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("7d"), Ok(604_800));
        for bad in [
            "",
            "0",
            "0h",
            "1w",
            "h",
            "1.5h",
            "-1",
            "99999999999999999999d",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn base64url_matches_rfc_4648_vectors() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(b64url(raw.as_bytes()), enc);
        }
        assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn the_thumbprint_follows_rfc_8037_appendix_a3() {
        // RFC 8037 A.1: the Ed25519 key, and A.3: its thumbprint.
        let public = [
            0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64,
            0x07, 0x3a, 0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68,
            0xf7, 0x07, 0x51, 0x1a,
        ];
        let seed = [
            0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec,
            0x2c, 0xc4, 0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03,
            0x1c, 0xae, 0x7f, 0x60,
        ];
        let key =
            SigningKey::Ed25519(Ed25519KeyPair::from_seed_and_public_key(&seed, &public).unwrap());
        assert_eq!(
            key.thumbprint(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
        assert_eq!(
            key.jwk_members()[2].1,
            "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        );
    }
}
