//! Test helpers: keys, JWKS entries and signed tokens, made with ring.

use ring::hmac;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};

/// Unpadded base64url.
pub fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let mut n = [0u8; 3];
        n[..chunk.len()].copy_from_slice(chunk);
        let n = u32::from(n[0]) << 16 | u32::from(n[1]) << 8 | u32::from(n[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A signing key and the `kid` it announces.
pub enum Signer {
    /// EdDSA.
    Ed25519(Ed25519KeyPair, Option<String>),
    /// ES256.
    Es256(EcdsaKeyPair, Option<String>),
    /// HS256 with this secret.
    Hs256(Vec<u8>, Option<String>),
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.alg())
    }
}

impl Signer {
    pub fn ed25519(kid: Option<&str>) -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Self::Ed25519(
            Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(),
            kid.map(Into::into),
        )
    }

    pub fn es256(kid: Option<&str>) -> Self {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        Self::Es256(
            EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap(),
            kid.map(Into::into),
        )
    }

    pub fn hs256(secret: &[u8], kid: Option<&str>) -> Self {
        Self::Hs256(secret.to_vec(), kid.map(Into::into))
    }

    pub fn alg(&self) -> &'static str {
        match self {
            Self::Ed25519(..) => "EdDSA",
            Self::Es256(..) => "ES256",
            Self::Hs256(..) => "HS256",
        }
    }

    fn kid(&self) -> Option<&str> {
        match self {
            Self::Ed25519(_, k) | Self::Es256(_, k) | Self::Hs256(_, k) => k.as_deref(),
        }
    }

    /// The public key bytes (Ed25519: 32 bytes; P-256: `04 || x || y`).
    pub fn public_key(&self) -> Vec<u8> {
        match self {
            Self::Ed25519(k, _) => k.public_key().as_ref().to_vec(),
            Self::Es256(k, _) => k.public_key().as_ref().to_vec(),
            Self::Hs256(..) => panic!("no public key"),
        }
    }

    pub fn jwk_x(&self) -> String {
        let pk = self.public_key();
        match self {
            Self::Es256(..) => b64(&pk[1..33]),
            _ => b64(&pk),
        }
    }

    /// The public JWK of this key.
    pub fn jwk(&self) -> String {
        let kid = self
            .kid()
            .map(|k| format!(r#","kid":"{k}""#))
            .unwrap_or_default();
        let pk = self.public_key();
        match self {
            Self::Ed25519(..) => {
                format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{}"{kid}}}"#, b64(&pk))
            }
            Self::Es256(..) => format!(
                r#"{{"kty":"EC","crv":"P-256","x":"{}","y":"{}"{kid}}}"#,
                b64(&pk[1..33]),
                b64(&pk[33..])
            ),
            Self::Hs256(..) => panic!("no public JWK"),
        }
    }

    /// Signs `header.payload` as given (raw JSON texts).
    pub fn sign_raw(&self, header: &str, payload: &str) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let sig = match self {
            Self::Ed25519(k, _) => k.sign(input.as_bytes()).as_ref().to_vec(),
            Self::Es256(k, _) => k
                .sign(&SystemRandom::new(), input.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec(),
            Self::Hs256(secret, _) => {
                let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
                hmac::sign(&key, input.as_bytes()).as_ref().to_vec()
            }
        };
        format!("{input}.{}", b64(&sig))
    }

    /// A token with the standard header (`alg`, and `kid` when set) and these claims.
    pub fn token(&self, claims: &serde_json::Value) -> String {
        let mut header = serde_json::json!({ "alg": self.alg(), "typ": "JWT" });
        if let Some(kid) = self.kid() {
            header["kid"] = kid.into();
        }
        self.sign_raw(&header.to_string(), &claims.to_string())
    }
}

/// A JWKS document holding these keys.
pub fn jwks(signers: &[&Signer]) -> String {
    let keys: Vec<String> = signers.iter().map(|s| s.jwk()).collect();
    format!(r#"{{"keys":[{}]}}"#, keys.join(","))
}
