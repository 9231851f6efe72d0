//! JWS compact serialization ([RFC 7515 §7.1]) as JWTs use it ([RFC 7519]), verified against a
//! key set read from a JWKS document ([RFC 7517]).
//!
//! Only what logrelay accepts is implemented: `EdDSA` (Ed25519, [RFC 8037]; also spelled
//! `Ed25519`, [RFC 9864]) and `ES256` (P-256, the signature is `r || s`, 64 bytes, [RFC 7518
//! §3.4]) against public keys, and `HS256` against a shared secret only when one was installed
//! with [`KeySet::with_dev_hs256_secret`]. Everything else — `none`, RSA, unknown names, a
//! `crit` header, a JWE — is refused. Key-carrying headers (`jwk`, `jku`, `x5u`, `x5c`) are
//! ignored: keys come from configuration only.
//!
//! Algorithm confusion is closed by typing keys: an Ed25519 key only ever verifies `EdDSA`, a
//! P-256 key only `ES256`, and the HS256 secret is a separate, dev-only key that never holds a
//! public key's bytes.
//!
//! [RFC 7515 §7.1]: https://www.rfc-editor.org/rfc/rfc7515#section-7.1
//! [RFC 7519]: https://www.rfc-editor.org/rfc/rfc7519
//! [RFC 7517]: https://www.rfc-editor.org/rfc/rfc7517
//! [RFC 8037]: https://www.rfc-editor.org/rfc/rfc8037
//! [RFC 9864]: https://www.rfc-editor.org/rfc/rfc9864
//! [RFC 7518 §3.4]: https://www.rfc-editor.org/rfc/rfc7518#section-3.4

use std::collections::HashSet;
use std::fmt;

use ring::{hmac, signature};
use serde::Deserialize;

use super::AuthError;

/// Shortest HS256 secret accepted (RFC 7518 §3.2: at least the hash output size).
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// A signature algorithm logrelay accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// Ed25519 (`EdDSA` or `Ed25519` in the header).
    EdDsa,
    /// ECDSA on P-256 with SHA-256, fixed-size `r || s` signature.
    Es256,
    /// HMAC-SHA256 with a shared secret: development only.
    Hs256,
}

impl Alg {
    /// Reads a header `alg`; `none` and every other name are refused.
    pub fn from_name(name: &str) -> Result<Self, AuthError> {
        match name {
            "EdDSA" | "Ed25519" => Ok(Self::EdDsa),
            "ES256" => Ok(Self::Es256),
            "HS256" => Ok(Self::Hs256),
            other => Err(AuthError::alg_not_allowed(other)),
        }
    }

    /// The algorithm's name as written in headers.
    pub fn name(self) -> &'static str {
        match self {
            Self::EdDsa => "EdDSA",
            Self::Es256 => "ES256",
            Self::Hs256 => "HS256",
        }
    }
}

/// Why a key set document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySetError {
    /// The document is not a JWKS (`{"keys":[...]}`), or a key misses `kty`.
    #[error("key set is not a JWKS document: {0}")]
    Json(String),
    /// An Ed25519 or P-256 key has a missing, badly encoded or wrongly sized coordinate.
    #[error("key {index} ({kid}): {what}")]
    BadKey {
        /// Position of the key in `keys`.
        index: usize,
        /// Its `kid`, or `-`.
        kid: String,
        /// What is wrong.
        what: &'static str,
    },
    /// Two keys share a `kid`, so a token could not say which one signed it.
    #[error("two keys share the kid {0:?}")]
    DuplicateKid(String),
    /// No key of a supported type (Ed25519, P-256) is in the document.
    #[error("key set holds no Ed25519 or P-256 signing key ({skipped} skipped)")]
    Empty {
        /// Keys of other types or uses that were skipped.
        skipped: usize,
    },
    /// The HS256 secret is shorter than [`MIN_HS256_SECRET_BYTES`].
    #[error("HS256 secret must be at least {MIN_HS256_SECRET_BYTES} bytes")]
    ShortSecret,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Ed25519,
    P256,
}

impl KeyKind {
    fn alg(self) -> Alg {
        match self {
            Self::Ed25519 => Alg::EdDsa,
            Self::P256 => Alg::Es256,
        }
    }
}

struct PublicKey {
    kid: Option<String>,
    kind: KeyKind,
    /// Ed25519: the 32-byte key. P-256: the uncompressed point `04 || x || y`.
    bytes: Vec<u8>,
}

/// The keys tokens are verified against: the Ed25519 and P-256 keys of a JWKS document, and in
/// development mode an HS256 secret. `Debug` shows key ids and types, never key material.
pub struct KeySet {
    keys: Vec<PublicKey>,
    hs256: Option<hmac::Key>,
    skipped: usize,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<_> = self
            .keys
            .iter()
            .map(|k| (k.kid.as_deref().unwrap_or("-"), k.kind.alg().name()))
            .collect();
        f.debug_struct("KeySet")
            .field("keys", &keys)
            .field("dev_hs256", &self.hs256.is_some())
            .field("skipped", &self.skipped)
            .finish()
    }
}

/// One entry of a JWKS document; members logrelay does not use are ignored.
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    alg: Option<String>,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

impl KeySet {
    /// Reads a JWKS document (`{"keys":[{"kty":"OKP","crv":"Ed25519","x":..,"kid":..},
    /// {"kty":"EC","crv":"P-256","x":..,"y":..,"kid":..}]}`).
    ///
    /// Keys of other types (RSA, `oct`, other curves), keys whose `use` is not `sig`, and keys
    /// whose `alg` names another algorithm are skipped ([`KeySet::skipped`] counts them): a
    /// shared secret is never taken from a JWKS. A supported key with a bad coordinate, a
    /// duplicate `kid`, or a document without any usable key is an error.
    pub fn from_jwks(json: &[u8]) -> Result<Self, KeySetError> {
        let doc: Jwks =
            serde_json::from_slice(json).map_err(|e| KeySetError::Json(e.to_string()))?;
        let mut keys = Vec::new();
        let mut skipped = 0;
        let mut kids = HashSet::new();
        for (index, jwk) in doc.keys.into_iter().enumerate() {
            let kind = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
                ("OKP", Some("Ed25519")) => KeyKind::Ed25519,
                ("EC", Some("P-256")) => KeyKind::P256,
                _ => {
                    skipped += 1;
                    continue;
                }
            };
            let use_ok = jwk.use_.as_deref().is_none_or(|u| u == "sig");
            let alg_ok = jwk
                .alg
                .as_deref()
                .is_none_or(|a| Alg::from_name(a).is_ok_and(|a| a == kind.alg()));
            if !use_ok || !alg_ok {
                skipped += 1;
                continue;
            }
            let bad = |what| KeySetError::BadKey {
                index,
                kid: jwk.kid.clone().unwrap_or_else(|| "-".into()),
                what,
            };
            let coord = |c: &Option<String>, name| -> Result<Vec<u8>, KeySetError> {
                let c = c.as_deref().ok_or_else(|| bad(name))?;
                let bytes = base64url_decode(c.as_bytes()).ok_or_else(|| bad(name))?;
                if bytes.len() == 32 {
                    Ok(bytes)
                } else {
                    Err(bad(name))
                }
            };
            let bytes = match kind {
                KeyKind::Ed25519 => coord(&jwk.x, "x must be 32 bytes of base64url")?,
                KeyKind::P256 => {
                    let mut point = vec![4u8];
                    point.extend(coord(&jwk.x, "x must be 32 bytes of base64url")?);
                    point.extend(coord(&jwk.y, "y must be 32 bytes of base64url")?);
                    point
                }
            };
            if let Some(kid) = &jwk.kid
                && !kids.insert(kid.clone())
            {
                return Err(KeySetError::DuplicateKid(kid.clone()));
            }
            keys.push(PublicKey {
                kid: jwk.kid,
                kind,
                bytes,
            });
        }
        if keys.is_empty() {
            return Err(KeySetError::Empty { skipped });
        }
        Ok(Self {
            keys,
            hs256: None,
            skipped,
        })
    }

    /// A key set holding only an HS256 secret (development mode).
    pub fn dev_hs256_only(secret: &[u8]) -> Result<Self, KeySetError> {
        Self {
            keys: Vec::new(),
            hs256: None,
            skipped: 0,
        }
        .with_dev_hs256_secret(secret)
    }

    /// Development mode: also accept `HS256` tokens signed with `secret`. Without this call no
    /// HS256 token is ever accepted.
    pub fn with_dev_hs256_secret(mut self, secret: &[u8]) -> Result<Self, KeySetError> {
        if secret.len() < MIN_HS256_SECRET_BYTES {
            return Err(KeySetError::ShortSecret);
        }
        self.hs256 = Some(hmac::Key::new(hmac::HMAC_SHA256, secret));
        Ok(self)
    }

    /// Number of usable public keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when the set holds no public key (an HS256-only development set).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Keys of the document that were skipped (unsupported type, use or algorithm).
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// Checks `signature` over `signing_input` for a token whose header says `alg` and `kid`.
    fn verify(
        &self,
        alg: Alg,
        kid: Option<&str>,
        signing_input: &[u8],
        sig: &[u8],
    ) -> Result<(), AuthError> {
        let named = kid.and_then(|kid| self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)));
        let key = match alg {
            Alg::Hs256 => {
                let Some(secret) = &self.hs256 else {
                    return Err(AuthError::alg_not_allowed(alg.name()));
                };
                // A kid naming a public key means someone hopes its bytes are our secret.
                if named.is_some() {
                    return Err(AuthError::alg_not_allowed(alg.name()));
                }
                return hmac::verify(secret, signing_input, sig)
                    .map_err(|_| AuthError::BadSignature);
            }
            Alg::EdDsa | Alg::Es256 => match (kid, named) {
                (Some(_), Some(key)) if key.kind.alg() == alg => key,
                (Some(_), Some(_)) => return Err(AuthError::alg_not_allowed(alg.name())),
                (Some(_), None) => return Err(AuthError::UnknownKey),
                (None, _) => {
                    let mut fitting = self.keys.iter().filter(|k| k.kind.alg() == alg);
                    match (fitting.next(), fitting.next()) {
                        (Some(key), None) => key,
                        _ => return Err(AuthError::UnknownKey),
                    }
                }
            },
        };
        let algorithm: &dyn signature::VerificationAlgorithm = match key.kind {
            KeyKind::Ed25519 => &signature::ED25519,
            KeyKind::P256 => &signature::ECDSA_P256_SHA256_FIXED,
        };
        signature::UnparsedPublicKey::new(algorithm, &key.bytes)
            .verify(signing_input, sig)
            .map_err(|_| AuthError::BadSignature)
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

/// Verifies a compact JWS of at most `max_bytes` against `keys` and returns its decoded
/// payload. The claims are not looked at.
///
/// Order of checks: size, shape (three base64url parts), header, algorithm, key, signature.
pub fn verify_compact(token: &str, keys: &KeySet, max_bytes: usize) -> Result<Vec<u8>, AuthError> {
    if token.len() > max_bytes {
        return Err(AuthError::TooLarge {
            len: token.len(),
            max: max_bytes,
        });
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed(
            "a token is three base64url parts joined by dots",
        ));
    };
    let header = base64url_decode(header_b64.as_bytes())
        .ok_or(AuthError::Malformed("header is not base64url"))?;
    let header: Header = json_object(&header).ok_or(AuthError::Malformed(
        "header is not a JSON object with an `alg`",
    ))?;
    if header.crit.is_some() {
        return Err(AuthError::Malformed("header names critical extensions"));
    }
    let alg = Alg::from_name(&header.alg)?;
    let sig = base64url_decode(sig.as_bytes())
        .ok_or(AuthError::Malformed("signature is not base64url"))?;
    let signing_input = &token.as_bytes()[..header_b64.len() + 1 + payload.len()];
    keys.verify(alg, header.kid.as_deref(), signing_input, &sig)?;
    base64url_decode(payload.as_bytes()).ok_or(AuthError::Malformed("payload is not base64url"))
}

/// Parses a JSON object into `T`. serde also fills structs from arrays, positionally; a JOSE
/// header or claims set is an object, and nothing else is accepted.
pub(super) fn json_object<'a, T: Deserialize<'a>>(json: &'a [u8]) -> Option<T> {
    let first = json.iter().find(|b| !b" \t\r\n".contains(b))?;
    if *first != b'{' {
        return None;
    }
    serde_json::from_slice(json).ok()
}

/// Decodes unpadded base64url ([RFC 4648 §5], as JOSE uses it, [RFC 7515 §2]). Strict: no
/// padding, no whitespace, no other alphabet, and unused trailing bits must be zero, so every
/// byte string has exactly one accepted encoding.
///
/// [RFC 4648 §5]: https://www.rfc-editor.org/rfc/rfc4648#section-5
/// [RFC 7515 §2]: https://www.rfc-editor.org/rfc/rfc7515#section-2
pub fn base64url_decode(input: &[u8]) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        }))
    }
    let mut out = Vec::with_capacity(input.len() / 4 * 3 + 2);
    let mut chunks = input.chunks_exact(4);
    for chunk in &mut chunks {
        let mut n = 0u32;
        for &c in chunk {
            n = n << 6 | value(c)?;
        }
        out.extend_from_slice(&n.to_be_bytes()[1..]);
    }
    let rest = chunks.remainder();
    let mut n = 0u32;
    for &c in rest {
        n = n << 6 | value(c)?;
    }
    match rest.len() {
        0 => {}
        2 if n & 0xf == 0 => out.push((n >> 4) as u8),
        3 if n & 0x3 == 0 => out.extend_from_slice(&((n >> 2) as u16).to_be_bytes()),
        _ => return None,
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{Signer, b64};
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn base64url_rfc4648_vectors_unpadded() {
        for (enc, dec) in [
            ("", ""),
            ("Zg", "f"),
            ("Zm8", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYg", "foob"),
            ("Zm9vYmE", "fooba"),
            ("Zm9vYmFy", "foobar"),
        ] {
            assert_eq!(base64url_decode(enc.as_bytes()).unwrap(), dec.as_bytes());
        }
        assert_eq!(base64url_decode(b"-_8").unwrap(), [0xfb, 0xff]);
    }

    #[test]
    fn base64url_refuses_padding_other_alphabets_and_stray_bits() {
        for bad in [
            "Zg==", "Zm9v+", "Zm9v/", "Z", "Zm9vY", "Zh", "Zm9", "Zm 9v", "Zm9\n",
        ] {
            assert_eq!(base64url_decode(bad.as_bytes()), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn base64url_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            prop_assert_eq!(base64url_decode(b64(&bytes).as_bytes()), Some(bytes));
        }

        #[test]
        fn base64url_never_panics(s in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = base64url_decode(&s);
        }
    }

    #[test]
    fn jwks_skips_what_it_cannot_use_and_refuses_what_is_broken() {
        let ed = Signer::ed25519(Some("ed"));
        let es = Signer::es256(Some("es"));
        let doc = format!(
            r#"{{"keys":[{},{},
                {{"kty":"RSA","n":"AQAB","e":"AQAB","kid":"rsa"}},
                {{"kty":"oct","k":"c2VjcmV0","kid":"hmac"}},
                {{"kty":"OKP","crv":"X25519","x":"AAAA","kid":"x"}},
                {{"kty":"OKP","crv":"Ed25519","x":"{}","use":"enc","kid":"enc"}},
                {{"kty":"EC","crv":"P-256","x":"{}","y":"{}","alg":"ES384","kid":"es384"}}]}}"#,
            ed.jwk(),
            es.jwk(),
            b64(&[1; 32]),
            b64(&[1; 32]),
            b64(&[1; 32])
        );
        let set = KeySet::from_jwks(doc.as_bytes()).unwrap();
        assert_eq!((set.len(), set.skipped()), (2, 5));
        let dbg = format!("{set:?}");
        assert!(
            dbg.contains("\"ed\"") && !dbg.contains(&ed.jwk_x()),
            "{dbg}"
        );

        assert!(matches!(
            KeySet::from_jwks(br#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AAAA"}]}"#),
            Err(KeySetError::BadKey { index: 0, .. })
        ));
        let no_y = format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-256","x":"{}"}}]}}"#,
            b64(&[4; 32])
        );
        assert!(matches!(
            KeySet::from_jwks(no_y.as_bytes()),
            Err(KeySetError::BadKey { index: 0, .. })
        ));
        let dup = format!(
            r#"{{"keys":[{},{}]}}"#,
            ed.jwk(),
            Signer::ed25519(Some("ed")).jwk()
        );
        assert_eq!(
            KeySet::from_jwks(dup.as_bytes()).unwrap_err(),
            KeySetError::DuplicateKid("ed".into())
        );
        assert_eq!(
            KeySet::from_jwks(br#"{"keys":[{"kty":"RSA"}]}"#).unwrap_err(),
            KeySetError::Empty { skipped: 1 }
        );
        assert!(matches!(
            KeySet::from_jwks(b"[]"),
            Err(KeySetError::Json(_))
        ));
        assert_eq!(
            KeySet::dev_hs256_only(b"short").unwrap_err(),
            KeySetError::ShortSecret
        );
    }
}
